"""The one label convention: the competition's labels are 1..1000, the models' classes 0..999.

CSV files (``TrueLabel``, ``TargetClass``, a defense's output) use the competition's 1..1000 (TF-Slim
order, where 0 was the unused background class); logits index the standard 0-based ImageNet classes.
Every conversion between the two goes through this module.
"""

from __future__ import annotations

import numpy as np

NUM_LABELS = 1000
"""Labels are 1..NUM_LABELS (TF-Slim order; 0 is the unused background class)."""


def to_label0(label):
    """The one label convention, read side: a competition label 1..1000 (CSV files, ``TrueLabel``,
    ``TargetClass``) -> the standard 0-based ImageNet class the models' logits index (int or array)."""
    return label - 1


def to_competition_label(label0):
    """The one label convention, write side: a 0-based ImageNet class -> the competition's 1..1000."""
    return label0 + 1


def competition_labels(logits: np.ndarray) -> np.ndarray:
    """1000-class, 0-based logits -> competition labels 1..1000 (the argmax)."""
    return to_competition_label(np.argmax(logits, axis=-1))
