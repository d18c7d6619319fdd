"""What an attack needs of a model, and the wrappers that let a sign-gradient attack go through any defense.

An attack talks to a :class:`Model`: float32 pixels (0..255, NHWC) -> logits, and the per-image
value and input gradient of the attack objective (:mod:`hgd.attacks.losses`). Anything else an
attack is given is taken for a Keras model and wrapped in a :class:`KerasModel` by
:func:`as_model` (the attacks do it themselves: pass a Keras model as before).

* :class:`KerasModel` — a differentiable Keras model (a classifier, or HGD's whole defended model:
  denoisers + classifiers). Gradients come from the model's compiled objective
  (:mod:`hgd.attacks._compiled`), on TensorFlow or JAX.
* :class:`BPDA` — a model behind a transform that is not differentiable (JPEG, bit-depth
  reduction: :mod:`hgd.defenses.transforms`). Forward: ``model(transform(x))``, exactly what the defense
  computes. Backward (Athalye et al. 2018's Backward Pass Differentiable Approximation): the
  gradient of the model at the transformed input, i.e. the transform's Jacobian replaced by the
  identity; or, given a differentiable ``approximation`` ``g ~ transform``, that gradient pulled
  back through ``g``'s Jacobian at ``x``.
* :class:`EOT` — expectation over transformation (Athalye et al. 2018): logits, objective and
  gradient averaged over ``draws`` evaluations of a random model (e.g. ``BPDA`` of a random
  transform): the gradient of the expected objective.
* :class:`InputDiversity` — a model behind input diversity (DI, Xie et al. 2019): each call
  randomly resizes and pads its input (:mod:`hgd.attacks.transfer`), and the gradient is taken
  through that transform exactly. The sign-gradient attacks wrap their model in it for the
  gradient when ``diversity_prob > 0``.

They compose: ``EOT(BPDA(keras_model, GaussianNoise(sigma=8)), draws=10)``, and every attack of
:mod:`hgd.attacks` takes any of them where it takes a Keras model.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import numpy as np

from hgd.attacks import losses, transfer

Transform = Callable[[np.ndarray], np.ndarray]
"""uint8 images (N, H, W, 3) -> uint8 images of the same shape (e.g. an :class:`hgd.defenses.transforms.Transform`)."""


class Model(abc.ABC):
    """The model protocol of :mod:`hgd.attacks`: pixels (float32 0..255, NHWC) -> logits (0-based classes)."""

    @property
    def num_classes(self) -> int | None:
        """The number of logits, if known without running the model (used to validate classes)."""
        return None

    @abc.abstractmethod
    def logits(self, images: np.ndarray) -> np.ndarray:
        """float32 ``(N, H, W, 3)`` pixels -> float32 ``(N, K)`` logits, as numpy."""

    @abc.abstractmethod
    def objective_gradient(self, images: np.ndarray, classes: np.ndarray, targeted: bool,
                           loss: str = "ce") -> tuple[np.ndarray, np.ndarray]:
        """Per-image objective (``(N,)``) and its gradient with respect to ``images`` (see
        :mod:`hgd.attacks.losses`: the objective an attack ascends)."""

    def objective(self, images: np.ndarray, classes: np.ndarray, targeted: bool, loss: str = "ce") -> np.ndarray:
        """Per-image objective from one forward pass (no gradient)."""
        return losses.objective_numpy(self.logits(images), classes, targeted, loss)


class KerasModel(Model):
    """A differentiable Keras model; forward pass and gradient compiled once per model (weakly cached).

    Args:
        model: a Keras model, pixels (float32 0..255) -> logits.
    """

    def __init__(self, model: Any) -> None:
        if isinstance(model, Model):
            raise TypeError(f"{model!r} is already an attack model; KerasModel wraps a Keras model")
        self.model = model

    @property
    def num_classes(self) -> int | None:
        shape = getattr(self.model, "output_shape", None)
        return shape[-1] if isinstance(shape, tuple) and isinstance(shape[-1], int) else None

    def logits(self, images: np.ndarray) -> np.ndarray:
        from hgd.attacks import _compiled

        return _compiled.logits(self.model, images)

    def objective_gradient(self, images: np.ndarray, classes: np.ndarray, targeted: bool,
                           loss: str = "ce") -> tuple[np.ndarray, np.ndarray]:
        from hgd.attacks import _compiled

        return _compiled.objective_gradient(self.model, images, classes, targeted, loss)

    def __repr__(self) -> str:
        return f"KerasModel({getattr(self.model, 'name', type(self.model).__name__)!r})"


def as_model(model: Any) -> Model | None:
    """``None`` stays ``None``; a :class:`Model` as is; anything else is taken for a Keras model."""
    if model is None or isinstance(model, Model):
        return model
    return KerasModel(model)


def _pixels(x: np.ndarray) -> np.ndarray:
    """float pixels -> the uint8 image a defense receives (rounded, clipped to 0..255)."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class BPDA(Model):
    """A model behind a non-differentiable transform, attacked with BPDA (Athalye et al. 2018).

    Forward: ``model(transform(round(x)))`` — the defense's own computation on the image it would
    receive (the iterate rounded to uint8, as it will be saved). Backward: the model's gradient at
    ``t = transform(round(x))``; with ``approximation`` (a differentiable ``keras.ops`` function
    of float pixels, ``g(x) ~ transform(x)``), that gradient is pulled back through ``g``:
    ``J_g(x)^T grad_model(t)`` (the straight-through estimator ``g(x) + stop_gradient(t - g(x))``).

    Args:
        model: the model after the transform (a :class:`Model` or a Keras model).
        transform: uint8 images -> uint8 images (e.g. :class:`hgd.defenses.transforms.JPEGCompression`).
        approximation: the backward pass's differentiable stand-in; ``None`` (default): the identity.
    """

    def __init__(self, model: Any, transform: Transform, *,
                 approximation: Callable[[Any], Any] | None = None) -> None:
        if not callable(transform):
            raise ValueError(f"transform must map uint8 images to uint8 images, got {transform!r}")
        self.model = as_model(model)
        self.transform = transform
        self.approximation = approximation

    @property
    def num_classes(self) -> int | None:
        return self.model.num_classes

    def transformed(self, images: np.ndarray) -> np.ndarray:
        """What the model behind the transform sees: float32 ``transform(round(images))``."""
        return self.transform(_pixels(images)).astype(np.float32)

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.model.logits(self.transformed(images))

    def objective_gradient(self, images: np.ndarray, classes: np.ndarray, targeted: bool,
                           loss: str = "ce") -> tuple[np.ndarray, np.ndarray]:
        values, gradient = self.model.objective_gradient(self.transformed(images), classes, targeted, loss)
        if self.approximation is None:
            return values, gradient
        import keras

        from hgd.backend import input_gradient

        cotangent = keras.ops.convert_to_tensor(gradient)
        approximation = self.approximation
        _, pulled_back = input_gradient(lambda z: keras.ops.sum(approximation(z) * cotangent), images)
        return values, pulled_back

    def __repr__(self) -> str:
        backward = "identity" if self.approximation is None else getattr(self.approximation, "__name__", "custom")
        return f"BPDA({self.model!r}, {self.transform!r}, backward={backward})"


class EOT(Model):
    """Expectation over transformation (Athalye et al. 2018): averages over ``draws`` calls of a random model.

    Logits, per-image objective and gradient are the means over ``draws`` independent evaluations
    (each draws the randomness anew): estimates of their expectations, and the gradient one is
    the gradient of the expected objective. Deterministic models gain nothing from it.

    Args:
        model: a random :class:`Model` (typically ``BPDA(model, random_transform)``).
        draws: evaluations averaged per call (>= 1).
    """

    def __init__(self, model: Any, *, draws: int = 10) -> None:
        if isinstance(draws, bool) or not isinstance(draws, int | np.integer) or draws < 1:
            raise ValueError(f"draws must be an integer >= 1, got {draws!r}")
        self.model = as_model(model)
        self.draws = int(draws)

    @property
    def num_classes(self) -> int | None:
        return self.model.num_classes

    def logits(self, images: np.ndarray) -> np.ndarray:
        return np.mean([self.model.logits(images) for _ in range(self.draws)], axis=0, dtype=np.float64
                       ).astype(np.float32)

    def objective_gradient(self, images: np.ndarray, classes: np.ndarray, targeted: bool,
                           loss: str = "ce") -> tuple[np.ndarray, np.ndarray]:
        values, gradient = self.model.objective_gradient(images, classes, targeted, loss)
        values, gradient = values.astype(np.float64), gradient.astype(np.float64)
        for _ in range(self.draws - 1):
            v, g = self.model.objective_gradient(images, classes, targeted, loss)
            values += v
            gradient += g
        return (values / self.draws).astype(np.float32), (gradient / self.draws).astype(np.float32)

    def objective(self, images: np.ndarray, classes: np.ndarray, targeted: bool, loss: str = "ce") -> np.ndarray:
        """The mean of the per-draw objectives (not the objective of the mean logits)."""
        draws = [self.model.objective(images, classes, targeted, loss) for _ in range(self.draws)]
        return np.mean(draws, axis=0, dtype=np.float64).astype(np.float32)

    def __repr__(self) -> str:
        return f"EOT({self.model!r}, draws={self.draws})"


class InputDiversity(Model):
    """A model behind input diversity (DI; Xie et al., CVPR 2019): a random resize-and-pad per call.

    Each call (forward or gradient) draws once for the whole batch (as the published code does):
    with probability ``probability`` the images are resized to a random size in ``[size, upper)``
    (``upper = round(size * 330 / 299)``: 330 for 299 images), padded with mid grey at a random
    offset to ``upper`` and resized back to ``size``, the model's input; otherwise they pass
    unchanged (:func:`hgd.attacks.transfer.draw_diversity`). The transform is linear in
    ``x - 127.5`` (it copies pixels), so its gradient is exact: the model's gradient at the
    transformed images pulled back through the transform's transpose. Square images only (the
    competition's are 299x299).

    Its logits are those of a transformed batch too: an attack given this model should be given
    the labels (its own prediction would be of a random transform). The attacks' ``diversity_prob``
    uses it for the gradients only, and the model itself for everything else.

    Args:
        model: the model behind the transform (a :class:`Model` or a Keras model).
        probability: the chance a call transforms its input (the paper's default 0.5).
        seed: an integer, or a ``numpy.random.Generator`` to draw from (an attack passes its own,
            so that a seeded attack is reproducible); ``None``: fresh entropy.
    """

    def __init__(self, model: Any, *, probability: float = 0.5,
                 seed: int | np.random.Generator | None = None) -> None:
        if isinstance(probability, bool) or not isinstance(probability, int | float | np.integer | np.floating) \
                or not 0 <= probability <= 1:
            raise ValueError(f"probability must be a number in [0, 1], got {probability!r}")
        self.model = as_model(model)
        self.probability = float(probability)
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    @property
    def num_classes(self) -> int | None:
        return self.model.num_classes

    def draw(self, images: np.ndarray) -> np.ndarray | None:
        """This call's draw for ``images`` (NHWC): source rows and columns, or ``None`` (unchanged)."""
        _, height, width, _ = images.shape
        if height != width:
            raise ValueError(f"input diversity is defined for square images, got {height}x{width}")
        return transfer.draw_diversity(height, self.probability, self.rng)

    def logits(self, images: np.ndarray) -> np.ndarray:
        draw = self.draw(images)
        return self.model.logits(images if draw is None else transfer.diversify(images, draw))

    def objective_gradient(self, images: np.ndarray, classes: np.ndarray, targeted: bool,
                           loss: str = "ce") -> tuple[np.ndarray, np.ndarray]:
        draw = self.draw(images)
        if draw is None:
            return self.model.objective_gradient(images, classes, targeted, loss)
        values, gradient = self.model.objective_gradient(transfer.diversify(images, draw), classes, targeted, loss)
        return values, transfer.diversify_gradient(gradient, draw)

    def __repr__(self) -> str:
        return f"InputDiversity({self.model!r}, probability={self.probability})"
