"""The Square attack (Andriushchenko et al. 2020), L-infinity: gradient-free, a fixed query budget.

Only the model's logits are used, never a gradient: a defense that masks gradients (a
non-differentiable or random transform, a shattered or saturated loss) does not stop it, so a
defense that holds against PGD but not against Square is masking gradients rather than being
robust. It works on any model of :mod:`hgd.attacks.models` — a Keras model, or a defense with a
non-differentiable transform as :class:`~hgd.attacks.models.BPDA` (whose forward pass is the
defense's own computation; its approximate backward pass is never called).

The algorithm (the paper's Algorithm 1 and its public reference code):

1. Start from vertical stripes: every column of every channel moved by ``+eps`` or ``-eps``
   (uniformly), clipped into the box. One query.
2. Repeat for ``queries - 1`` iterations, only for the images not broken yet: pick a square window
   of side ``s = round(sqrt(p * H * W))`` (at least 1, at most ``H - 1``) at a uniform position;
   set the perturbation inside it to ``+eps`` or ``-eps`` per channel (drawn again if that would
   change nothing); keep the candidate if the loss improves. One query per image per iteration.
   ``p`` starts at ``p_init`` and is halved at the paper's fixed fractions of the budget (10, 50,
   200, 500, 1000, 2000, 4000, 6000, 8000 out of 10000).

Every iterate is ``clean +- eps`` clipped to the box: integers, so quantization changes nothing
and the images the attack queried are exactly the images it returns. The loss is the margin loss
by default (the paper's for untargeted attacks; :mod:`hgd.attacks.losses`), ``"ce"`` optionally.
The criterion's clean prediction (untargeted without labels) costs one more forward pass, not
counted in the budget.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hgd.attacks import losses
from hgd.attacks.base import Attack, Box, check_seed
from hgd.attacks.criteria import Criterion
from hgd.attacks.losses import check_loss
from hgd.attacks.models import Model

_BOUNDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000, 10000)
"""Iterations (out of 10000) at which the reference code halves ``p``."""

_MAX_REDRAWS = 16


def square_fraction(p_init: float, iteration: int, budget: int) -> float:
    """The fraction ``p`` of pixels the square covers at ``iteration`` (0-based) of a ``budget``-query run.

    The reference code's schedule on the iteration rescaled to 10000: ``p_init`` up to 10, then
    halved after each bound of ``_BOUNDS`` (``p_init / 512`` from 8000 on).
    """
    scaled = int(iteration / budget * 10000)
    if scaled <= _BOUNDS[0] or scaled > _BOUNDS[-1]:
        return p_init
    halvings = next(k for k, bound in enumerate(_BOUNDS) if scaled <= bound)
    return p_init / 2**halvings


class SquareAttack(Attack):
    """Square attack, L-infinity (Andriushchenko et al. 2020): random square updates, greedy on the loss.

    Args:
        queries: the query budget per image (>= 1): model evaluations of perturbed images,
            the initial one included. An image stops using queries once it is broken.
        p_init: initial fraction of the image the square covers (default 0.05, the paper's for
            ImageNet, L-infinity).
        loss: ``"margin"`` (default, the paper's) or ``"ce"``.
        seed: seeds every random choice (``None``: fresh entropy).

    Attributes:
        queries_used: after a call, ``(N,)`` queries each image used (``<= queries``).
    """

    def __init__(self, *, queries: int = 1000, p_init: float = 0.05, loss: str = "margin",
                 seed: int | None = None) -> None:
        if isinstance(queries, bool) or not isinstance(queries, int | np.integer) or queries < 1:
            raise ValueError(f"queries must be an integer >= 1, got {queries!r}")
        if (isinstance(p_init, bool) or not isinstance(p_init, int | float) or not math.isfinite(p_init)
                or not 0 < p_init <= 1):
            raise ValueError(f"p_init must be a fraction in (0, 1], got {p_init!r}")
        self.queries = int(queries)
        self.p_init = float(p_init)
        self.loss = check_loss(loss)
        self.seed = check_seed(seed)
        self.queries_used: np.ndarray | None = None
        self._rng = np.random.default_rng(self.seed)

    def hyperparameters(self) -> dict[str, Any]:
        return {"queries": self.queries, "p_init": self.p_init, "loss": self.loss, "seed": self.seed}

    def _evaluate(self, model: Model, images: np.ndarray, classes: np.ndarray,
                  targeted: bool) -> tuple[np.ndarray, np.ndarray]:
        logits = model.logits(images)
        return (losses.objective_numpy(logits, classes, targeted, self.loss),
                losses.succeeded(logits, classes, targeted))

    def _perturb(self, model: Model, x: np.ndarray, box: Box, criterion: Criterion) -> np.ndarray:
        goal = criterion.goal(model, x)
        count, height, width, channels = x.shape
        eps = np.float32(box.epsilon)
        rng = self._rng
        stripes = rng.choice(np.array([-eps, eps], np.float32), size=(count, 1, width, channels))
        best = box.project(x + stripes)
        value, success = self._evaluate(model, best, goal.classes, goal.targeted)
        used = np.ones(count, np.int64)
        for iteration in range(self.queries - 1):
            active = np.flatnonzero(~success)
            if active.size == 0:
                break
            p = square_fraction(self.p_init, iteration, self.queries)
            side = min(max(int(round(math.sqrt(p * height * width))), 1), max(height - 1, 1))
            candidates = best[active].copy()
            for row, image in enumerate(active):
                self._update_window(candidates[row], x[image], box.lo[image], box.hi[image], side, eps, rng)
            new_value, new_success = self._evaluate(model, candidates, goal.classes[active], goal.targeted)
            used[active] += 1
            improved = new_value > value[active]
            chosen = active[improved]
            best[chosen] = candidates[improved]
            value[chosen] = new_value[improved]
            success[chosen] = new_success[improved]
        self.queries_used = used
        return best

    @staticmethod
    def _update_window(candidate: np.ndarray, clean: np.ndarray, lo: np.ndarray, hi: np.ndarray, side: int,
                       eps: np.float32, rng: np.random.Generator) -> None:
        """In place: one square of ``candidate`` set to ``clean +- eps`` per channel (clipped to the box)."""
        height, width, channels = candidate.shape
        top = int(rng.integers(0, max(height - side, 0) + 1))
        left = int(rng.integers(0, max(width - side, 0) + 1))
        window = (slice(top, top + side), slice(left, left + side))
        current = candidate[window].copy()
        for _ in range(_MAX_REDRAWS):  # the reference code redraws while the window would not change
            signs = rng.choice(np.array([-eps, eps], np.float32), size=(1, 1, channels))
            proposal = np.clip(clean[window] + signs, lo[window], hi[window])
            if np.any(proposal != current):
                break
        candidate[window] = proposal
