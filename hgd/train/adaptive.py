"""Defense-aware training examples: attack the denoiser being trained, batch by batch.

HGD's denoiser is trained on attacks that never saw it (Table 1's pairs), and an attacker who
differentiates through it breaks it at eps 4 (Athalye & Carlini 2018; the break is reproduced by
``python -m hgd.cli.security``). Adversarial training of the denoiser alone tries to close that gap:
part of every training batch gets fresh adversarial images from PGD through the *current*
denoiser and the frozen guiding classifiers (logits averaged: the defended model as the defense
runs it), at a fixed eps; the loss (FGD, CGD, ...) then teaches the denoiser to undo them. The
classifiers never change.

The attack runs in the data pipeline (:class:`hgd.train.fit.PairBatches`) on the training crops,
between training steps, through the same compiled attack code as the submissions
(:mod:`hgd.attacks`, which reads the denoiser's weights at every call). The pipeline prefetches, so
an example may come from a denoiser one or two steps older than the one it trains: delayed
adversarial examples, which the denoiser's small per-step change makes harmless. On JAX, Keras keeps
the current weights outside the model during ``fit`` and ``evaluate``; :class:`SyncWeights` puts
them back after every step so that the attack sees them (and the training model keeps its
variables attached: ``DenoiserTraining._purge_model_variables``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import numpy as np

from hgd import attacks


@dataclasses.dataclass(frozen=True)
class Adversary:
    """PGD through a defended model, for a share of every batch of training images.

    Attributes:
        model: pixels (float32 0..255) -> logits: the denoiser being trained and its classifiers.
        fraction: the share of a batch :meth:`replace` attacks.
        epsilon: the L-infinity radius in pixel levels.
        steps: PGD steps (random start; step size ``2.5 * epsilon / steps``, Madry et al.'s rule).
        loss: ``"ce"`` or ``"margin"``.
    """

    model: keras.Model
    fraction: float
    epsilon: int
    steps: int
    loss: str = "ce"

    def replace(self, adversarial: np.ndarray, clean: np.ndarray, labels: np.ndarray, seed: Sequence[int]) -> None:
        """Replace, in place, the adversarial images of a seeded ``fraction`` of a batch by attacks on the clean ones."""
        count = round(self.fraction * len(labels))
        if count == 0:
            return
        chosen = np.sort(np.random.default_rng(list(seed)).choice(len(labels), count, replace=False))
        adversarial[chosen] = self(clean[chosen].astype(np.uint8), labels[chosen], seed)

    def __call__(self, clean: np.ndarray, labels: np.ndarray, seed: Sequence[int]) -> np.ndarray:
        """uint8 adversarial images of uint8 ``clean`` (any size) against their 0-based ``labels``."""
        seed = int(np.random.default_rng(list(seed)).integers(2**31))
        attack = attacks.PGD(steps=self.steps, alpha=2.5 * self.epsilon / self.steps, seed=seed, loss=self.loss)
        return attack(self.model, clean, attacks.Misclassification(labels), epsilon=self.epsilon)


def build_attacked_model(denoiser: keras.Model, normalize: keras.layers.Layer,
                         heads: Sequence[keras.Model]) -> keras.Model:
    """Pixels -> the heads' averaged logits behind ``denoiser``: what the defense-aware attack sees.

    ``heads`` map the normalized image to ``[guide map, logits]`` (the training heads); the layers
    are shared with the training model, so the attack always sees the denoiser's current weights.
    """
    pixels = keras.Input((None, None, 3), name="pixels")
    denoised = denoiser(normalize(pixels), training=False)
    logits = [head(denoised, training=False)[1] for head in heads]
    averaged = logits[0] if len(logits) == 1 else keras.layers.Average(name="ensemble_logits")(logits)
    return keras.Model(pixels, averaged, name="attacked_defense")


class SyncWeights(keras.callbacks.Callback):
    """On JAX, writes the weights back into the model after every step (see the module doc)."""

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self._sync()

    def on_test_batch_end(self, batch: int, logs=None) -> None:
        self._sync()

    def _sync(self) -> None:
        if keras.backend.backend() == "jax":
            self.model.jax_state_sync()
