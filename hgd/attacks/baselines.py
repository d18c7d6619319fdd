"""The competition's two baseline "attacks" that never look at the model: no-op and random noise."""

from __future__ import annotations

from typing import Any

import numpy as np

from hgd.attacks.base import Attack, Box, check_seed
from hgd.attacks.criteria import Criterion


class NoOp(Attack):
    """Returns the clean images unchanged (the dev toolkit's ``noop``): a floor for attack scores."""

    requires_model = False

    def _perturb(self, model: Any, x: np.ndarray, box: Box, criterion: Criterion) -> np.ndarray:
        return x


class RandomNoise(Attack):
    """Adds uniform noise in ``[-eps, eps]`` per pixel and channel (the dev toolkit's ``random_noise``).

    The noisy image is clipped into the box and, like every attack's output, rounded to uint8.

    Args:
        seed: seeds the noise; a fixed seed makes the sequence of calls of one attack object
            reproducible (``None``: fresh entropy).
    """

    requires_model = False

    def __init__(self, *, seed: int | None = None) -> None:
        self.seed = check_seed(seed)
        self._rng = np.random.default_rng(self.seed)

    def _perturb(self, model: Any, x: np.ndarray, box: Box, criterion: Criterion) -> np.ndarray:
        noise = self._rng.uniform(-box.epsilon, box.epsilon, size=x.shape).astype(np.float32)
        return box.project(x + noise)

    def hyperparameters(self) -> dict[str, Any]:
        return {"seed": self.seed}
