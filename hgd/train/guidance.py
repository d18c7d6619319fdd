"""The denoiser's training losses (paper section 3.2).

* PGD, pixel guided: ``mean |x_hat - x|`` in the normalized image space.
* FGD, feature guided: ``mean |f(x_hat) - f(x)|`` on the guide layer (the topmost conv feature
  map, the one global pooling reads).
* LGD, logits guided: the same L1 on the 1000 logits.
* CGD, class-label guided: cross-entropy of ``x_hat``'s logits against the true label.

``f`` is a frozen target model, run in inference mode; the clean target ``f(x)`` carries no
gradient. Several target models (a denoiser guided by the whole ensemble) sum their losses.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

import keras

Tensor = Any


class Guidance(str, enum.Enum):
    """What the denoiser's loss compares: pixels, guide features, logits or the class label."""

    PGD = "pgd"
    FGD = "fgd"
    LGD = "lgd"
    CGD = "cgd"

    @property
    def needs_models(self) -> bool:
        """Whether the loss runs target models (all but the pixel loss)."""
        return self is not Guidance.PGD


def guidance_loss(guidance: Guidance, denoised: Tensor, clean: Tensor, labels: Tensor,
                  heads: Sequence[keras.Model]) -> Tensor:
    """The scalar loss of ``denoised`` against ``clean`` (both normalized, same size).

    Args:
        guidance: which loss.
        denoised: the denoiser's output for the adversarial images.
        clean: the clean images.
        labels: 0-based true classes (only CGD reads them).
        heads: frozen target models, normalized image -> ``[guide map, logits]``
            (:meth:`hgd.zoo.TargetModel.build_from_normalized` with ``guide=True``).
    """
    if guidance is Guidance.PGD:
        return keras.ops.mean(keras.ops.abs(denoised - clean))
    if not heads:
        raise ValueError(f"{guidance.value} needs at least one target model")
    total = 0.0
    for head in heads:
        guide_hat, logits_hat = head(denoised, training=False)
        if guidance is Guidance.CGD:
            total += keras.ops.mean(keras.ops.sparse_categorical_crossentropy(labels, logits_hat, from_logits=True))
            continue
        guide, logits = (keras.ops.stop_gradient(t) for t in head(clean, training=False))
        hat, target = (guide_hat, guide) if guidance is Guidance.FGD else (logits_hat, logits)
        total += keras.ops.mean(keras.ops.abs(hat - target))
    return total
