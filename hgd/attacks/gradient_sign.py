"""The L-infinity sign-gradient family: FGSM, I-FGSM / BIM, PGD and MI-FGSM.

All of them repeat one step, ``x <- project(x + alpha * sign(direction))``, where ``direction`` is
the gradient of the attack objective (cross-entropy of the criterion's class: ascended when
untargeted, descended when targeted) and ``project`` clips onto the epsilon box around the clean
image intersected with [0, 255]. They differ only in what :class:`IterativeGradientSignAttack`
lets a subclass override: the schedule (steps, alpha), the start (clean or random) and the
direction (the gradient, or a momentum of normalized gradients).

Defaults, in pixel units (``eps`` is the call's epsilon):

=========================  =======================================  =====================================
attack                     steps                                    alpha (step size)
=========================  =======================================  =====================================
FGSM                       1                                        ``eps``
BIM / I-FGSM, PGD          ``floor(min(eps + 4, 1.25 eps))``        1 pixel level
                           (Kurakin et al. 2016)                    (Kurakin et al. 2016)
any, ``steps`` given       ``steps``                                ``eps / steps`` (Dong et al. 2018)
MI-FGSM                    10 (Dong et al. 2018)                    ``eps / steps`` = ``eps / 10``
=========================  =======================================  =====================================

Kurakin's schedule takes 1-pixel steps, ``1.25 eps`` of them (``eps + 4`` from eps 16 up), so
every pixel can reach either face of the box and then some. An explicit step count without an
explicit ``alpha`` spreads ``eps`` evenly over the steps, so exactly ``steps`` sign steps reach a
face of the box (the convention of the MI-FGSM paper and of most ensemble attacks).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hgd.attacks._compiled import objective_gradient
from hgd.attacks.base import Attack, Box, check_seed
from hgd.attacks.criteria import Criterion


def kurakin_steps(epsilon: int) -> int:
    """Kurakin et al. 2016's iteration count for 1-pixel steps: ``floor(min(eps + 4, 1.25 eps))``."""
    return int(math.floor(min(epsilon + 4, 1.25 * epsilon)))


def _check_steps(steps: Any) -> int | None:
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1):
        raise ValueError(f"steps must be an integer >= 1 or None (the default schedule), got {steps!r}")
    return None if steps is None else int(steps)


def _check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


class IterativeGradientSignAttack(Attack):
    """Base of the family: ``steps`` projected steps of ``alpha * sign(direction)``.

    Args:
        steps: number of steps; ``None``: Kurakin's ``floor(min(eps + 4, 1.25 eps))``.
        alpha: step size in pixel levels; ``None``: 1 if ``steps`` is ``None``, else ``eps / steps``.
        random_start: start from a uniform random point of the box instead of the clean image.
        seed: seeds the random start; a fixed seed makes the sequence of calls of one attack
            object reproducible.
    """

    def __init__(self, *, steps: int | None = None, alpha: float | None = None, random_start: bool = False,
                 seed: int | None = None) -> None:
        self.steps = _check_steps(steps)
        self.alpha = _check_positive("alpha", alpha)
        self.random_start = bool(random_start)
        self.seed = check_seed(seed)
        self._rng = np.random.default_rng(self.seed)

    def schedule(self, epsilon: int) -> tuple[int, float]:
        """``(steps, alpha)`` for a call at ``epsilon`` (see the module's table)."""
        steps = self.steps if self.steps is not None else kurakin_steps(epsilon)
        if self.alpha is not None:
            alpha = self.alpha
        elif self.steps is None:
            alpha = 1.0
        else:
            alpha = epsilon / steps
        return steps, alpha

    def get_random_start(self, x: np.ndarray, box: Box) -> np.ndarray:
        """A uniform random point of the box (``x + U(-eps, eps)``, clipped to [0, 255])."""
        noise = self._rng.uniform(-box.epsilon, box.epsilon, size=x.shape).astype(np.float32)
        return box.project(x + noise)

    def direction(self, previous: np.ndarray | None, gradient: np.ndarray) -> np.ndarray:
        """What the step takes the sign of; ``previous`` is the last step's direction (``None`` at first)."""
        return gradient

    def _perturb(self, model: Any, x: np.ndarray, box: Box, criterion: Criterion) -> np.ndarray:
        goal = criterion.goal(model, x)
        steps, alpha = self.schedule(box.epsilon)
        adversarial = self.get_random_start(x, box) if self.random_start else x
        direction = None
        for _ in range(steps):
            _, gradient = objective_gradient(model, adversarial, goal.classes, goal.targeted)
            direction = self.direction(direction, gradient)
            adversarial = box.project(adversarial + np.float32(alpha) * np.sign(direction))
        return adversarial


class FastGradientSignMethod(IterativeGradientSignAttack):
    """FGSM (Goodfellow et al. 2015): one step of size ``eps`` along the sign of the gradient."""

    def __init__(self) -> None:
        super().__init__(steps=1)

    def schedule(self, epsilon: int) -> tuple[int, float]:
        return 1, float(epsilon)


class BasicIterativeMethod(IterativeGradientSignAttack):
    """I-FGSM / BIM (Kurakin et al. 2016): iterated FGSM with small steps, projected after each.

    Args:
        steps: number of steps; ``None`` (default): ``floor(min(eps + 4, 1.25 eps))``.
        alpha: step size in pixel levels; ``None`` (default): 1 with the default steps, else
            ``eps / steps``.
    """

    def __init__(self, *, steps: int | None = None, alpha: float | None = None) -> None:
        super().__init__(steps=steps, alpha=alpha)

    def hyperparameters(self) -> dict[str, Any]:
        return {"steps": self.steps, "alpha": self.alpha}


class ProjectedGradientDescent(IterativeGradientSignAttack):
    """PGD (Madry et al. 2018) in its L-infinity form: BIM from a uniform random point of the box.

    Args:
        steps, alpha: as :class:`BasicIterativeMethod` (same defaults).
        seed: seeds the random start (``None``: fresh entropy).
    """

    def __init__(self, *, steps: int | None = None, alpha: float | None = None, seed: int | None = None) -> None:
        super().__init__(steps=steps, alpha=alpha, random_start=True, seed=seed)

    def hyperparameters(self) -> dict[str, Any]:
        return {"steps": self.steps, "alpha": self.alpha, "seed": self.seed}


class MomentumIterativeMethod(IterativeGradientSignAttack):
    """MI-FGSM (Dong et al. 2018, winner of the NIPS 2017 attack tracks).

    ``g <- mu * g + grad / mean(|grad|)`` per image, then a step of ``alpha * sign(g)``. The paper
    divides by the L1 norm; the mean absolute value differs by a constant factor (the image size),
    which leaves every sign unchanged. With ``mu = 0`` it is exactly BIM with the same steps and alpha.

    Args:
        steps: number of steps (default 10, the paper's).
        alpha: step size in pixel levels; ``None`` (default): ``eps / steps``.
        mu: the momentum's decay factor (default 1.0, the paper's).
    """

    def __init__(self, *, steps: int = 10, alpha: float | None = None, mu: float = 1.0) -> None:
        if steps is None:
            raise ValueError("MomentumIterativeMethod needs an explicit number of steps")
        super().__init__(steps=steps, alpha=alpha)
        self.mu = _check_positive("mu", mu, allow_zero=True)

    def direction(self, previous: np.ndarray | None, gradient: np.ndarray) -> np.ndarray:
        scale = np.mean(np.abs(gradient), axis=tuple(range(1, gradient.ndim)), keepdims=True)
        normalized = gradient / np.maximum(scale, np.finfo(np.float32).tiny)
        return normalized if previous is None else np.float32(self.mu) * previous + normalized

    def hyperparameters(self) -> dict[str, Any]:
        return {"steps": self.steps, "alpha": self.alpha, "mu": self.mu}
