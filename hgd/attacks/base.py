"""The attack base class and the L-infinity box every attack lives in.

Conventions shared by every attack of :mod:`hgd.attacks`:

* **Pixel space.** Images are uint8 ``(N, H, W, 3)`` arrays; inside an attack they are float32 in
  0..255, which is what a model of this toolkit takes (``TargetModel.build_classifier``,
  ``hgd.defenses.defended.build_defended_model``). ``epsilon`` and step sizes are in pixel units.
* **The box.** ``lo = clip(x - eps, 0, 255)``, ``hi = clip(x + eps, 0, 255)`` per pixel and
  channel: the competition's enforcement (``docs/reference/competition-contract.md``). Every iterate is
  projected onto it, so an attack never leaves it.
* **Explicit quantization.** The float result is rounded, never rescaled:
  ``clip(rint(x), lo, hi).astype(uint8)`` (:func:`quantize`). The old competition samples min-max
  stretched their float output when saving and silently broke their own attacks; here the PNG
  written holds exactly the pixels the attack computed, and they are inside the box.
"""

from __future__ import annotations

import abc
import dataclasses
import operator
from typing import Any

import numpy as np

from hgd.attacks.criteria import Criterion, CriterionLike, as_criterion
from hgd.attacks.models import Model, as_model
from hgd.io.images import check_images

MAX_EPSILON = 255


@dataclasses.dataclass(frozen=True)
class Box:
    """The L-infinity ball of radius ``epsilon`` around ``images``, intersected with [0, 255].

    Attributes:
        epsilon: the radius, in pixel units.
        lo, hi: the uint8 bounds, per pixel and channel.
    """

    epsilon: int
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def around(cls, images: np.ndarray, epsilon: int) -> Box:
        """The box around uint8 ``images`` (computed in a wide integer type: no uint8 wrap-around)."""
        wide = images.astype(np.int16)
        lo = np.clip(wide - epsilon, 0, 255).astype(np.uint8)
        hi = np.clip(wide + epsilon, 0, 255).astype(np.uint8)
        return cls(epsilon=epsilon, lo=lo, hi=hi)

    def project(self, x: np.ndarray) -> np.ndarray:
        """``x`` (float) clipped into the box, as float32."""
        return np.clip(x, self.lo, self.hi).astype(np.float32, copy=False)

    def take(self, index: np.ndarray) -> Box:
        """The box of the images ``index`` selects (an index array or boolean mask over the batch)."""
        return Box(epsilon=self.epsilon, lo=self.lo[index], hi=self.hi[index])


def quantize(x: np.ndarray, lo: np.ndarray | int = 0, hi: np.ndarray | int = 255) -> np.ndarray:
    """Float pixels -> uint8 by rounding to the nearest integer (half to even), clipped to ``[lo, hi]``.

    Never a min-max stretch. With integer bounds and ``x`` already inside them, the clip only guards.
    """
    return np.clip(np.rint(x), lo, hi).astype(np.uint8)


def check_epsilon(epsilon: Any) -> int:
    """Validates ``epsilon``: an integer number of pixel levels in 0..255 (integral floats accepted)."""
    try:
        value = operator.index(epsilon)
    except TypeError:
        value = int(epsilon) if isinstance(epsilon, float) and epsilon.is_integer() else None
    if value is None or not 0 <= value <= MAX_EPSILON:
        raise ValueError(f"epsilon must be an integer number of pixel levels in 0..{MAX_EPSILON}, got {epsilon!r}")
    return value


class Attack(abc.ABC):
    """A fixed-epsilon L-infinity attack in pixel space.

    Subclasses implement :meth:`_perturb` (float32 in, float32 inside the box out); this class
    validates inputs, builds the box, resolves the criterion and quantizes. Calling the attack is
    the same as :meth:`run`.
    """

    requires_model: bool = True
    """False for attacks that never look at the model (``model`` may then be ``None``)."""

    def __call__(self, model: Any, images: np.ndarray, criterion: CriterionLike = None, *,
                 epsilon: int) -> np.ndarray:
        return self.run(model, images, criterion, epsilon=epsilon)

    def run(self, model: Any, images: np.ndarray, criterion: CriterionLike = None, *, epsilon: int) -> np.ndarray:
        """Attacks a batch.

        Args:
            model: pixels (float32, 0..255, NHWC) -> logits (0-based): a differentiable Keras model,
                or any :class:`~hgd.attacks.models.Model` (e.g. :class:`~hgd.attacks.models.BPDA`
                / :class:`~hgd.attacks.models.EOT` around a defense with an input transformation).
            images: uint8 ``(N, H, W, 3)`` clean images.
            criterion: what the attack aims at: a :class:`~hgd.attacks.criteria.Criterion`; an
                int array of 0-based labels (untargeted, same as ``Misclassification(labels)``);
                or ``None``: untargeted against the model's own prediction on the clean images.
            epsilon: the L-infinity radius, in pixel levels (0..255).

        Returns:
            uint8 adversarial images, same shape, inside the epsilon box of ``images``.
        """
        box, adversarial = self._run(model, images, criterion, epsilon)
        return quantize(adversarial, box.lo, box.hi)

    def perturb(self, model: Any, images: np.ndarray, criterion: CriterionLike = None, *,
                epsilon: int) -> np.ndarray:
        """Like :meth:`run`, but returns the float32 result before quantization (inside the box)."""
        return self._run(model, images, criterion, epsilon)[1]

    def _run(self, model: Any, images: np.ndarray, criterion: CriterionLike,
             epsilon: int) -> tuple[Box, np.ndarray]:
        images = check_images(images)
        box = Box.around(images, check_epsilon(epsilon))
        resolved = as_criterion(criterion)
        x = images.astype(np.float32)
        if box.epsilon == 0 or len(images) == 0:
            return box, x  # the box is the image itself: nothing to compute
        if self.requires_model and model is None:
            raise ValueError(f"{self!r} needs a model")
        return box, box.project(self._perturb(as_model(model), x, box, resolved))

    @abc.abstractmethod
    def _perturb(self, model: Model | None, x: np.ndarray, box: Box, criterion: Criterion) -> np.ndarray:
        """The attack proper: float32 clean images -> float32 adversarial images inside ``box``."""

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments, as given (``None`` = a default resolved at call time)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={value!r}" for name, value in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


def check_seed(seed: Any) -> int | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    return None if seed is None else int(seed)
