"""Attack losses: cross-entropy and the margin (CW) loss, as the objective an attack *ascends*.

For a class ``c`` (a :class:`~hgd.attacks.criteria.Goal`'s) and logits ``z``:

* ``ce``: ``L = CE(z, c) = logsumexp(z) - z_c``;
* ``margin``: ``L = max_{j != c} z_j - z_c`` (Carlini & Wagner 2017's loss without its ``-kappa``
  floor; the "difference of logits" loss of Croce & Hein 2020). Positive exactly when ``c`` is not
  the top class. It does not saturate: a confident model's cross-entropy gradient vanishes where
  the softmax does (``p_c`` ~ 1), the margin's never does — the usual reason robust evaluations
  use it.

The objective is ``+L`` untargeted (push away from ``c``) and ``-L`` targeted (pull towards ``c``),
so every attack ascends it and a larger value is always better for the attacker. One definition
in ``keras.ops`` (:func:`objective`, what gradients are taken of) and one in numpy
(:func:`objective_numpy`, for gradient-free attacks and for picking the best restart); a test keeps
them equal.
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np


class Loss(str, enum.Enum):
    """The loss an attack's objective is made of (config strings: ``"ce"``, ``"margin"``)."""

    CROSS_ENTROPY = "ce"
    MARGIN = "margin"


def check_loss(loss: Any) -> str:
    """A :class:`Loss` or its string -> the string (what an attack stores and shows in its repr)."""
    try:
        return Loss(loss).value
    except ValueError:
        raise ValueError(f"loss must be one of {[item.value for item in Loss]}, got {loss!r}") from None


def objective(logits, classes, targeted_sign, loss: str):
    """Per-image objective in ``keras.ops``: ``sign * L(logits, classes)`` (shape ``(N,)``).

    Args:
        logits: ``(N, K)`` float32 tensor.
        classes: ``(N,)`` int32 classes.
        targeted_sign: +1 untargeted, -1 targeted (a float32 scalar tensor or number).
        loss: a :class:`Loss` value.
    """
    import keras

    logits = keras.ops.cast(logits, "float32")
    if loss == Loss.CROSS_ENTROPY.value:
        value = keras.ops.sparse_categorical_crossentropy(classes, logits, from_logits=True)
    elif loss == Loss.MARGIN.value:
        onehot = keras.ops.one_hot(classes, keras.ops.shape(logits)[-1], dtype="float32")
        own = keras.ops.sum(logits * onehot, axis=-1)
        others = keras.ops.max(keras.ops.where(onehot > 0, -np.inf, logits), axis=-1)
        value = others - own
    else:
        raise ValueError(f"unknown loss {loss!r}")
    return targeted_sign * value


def objective_numpy(logits: np.ndarray, classes: np.ndarray, targeted: bool, loss: str) -> np.ndarray:
    """The same per-image objective in numpy (float64 inside, float32 out)."""
    z = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(z))
    classes = np.asarray(classes, dtype=np.int64)
    own = z[rows, classes]
    if loss == Loss.CROSS_ENTROPY.value:
        top = z.max(axis=-1)
        value = top + np.log(np.exp(z - top[:, None]).sum(axis=-1)) - own
    elif loss == Loss.MARGIN.value:
        others = z.copy()
        others[rows, classes] = -np.inf
        value = others.max(axis=-1) - own
    else:
        raise ValueError(f"unknown loss {loss!r}")
    return (-value if targeted else value).astype(np.float32)


def succeeded(logits: np.ndarray, classes: np.ndarray, targeted: bool) -> np.ndarray:
    """Per image: untargeted, the top class is not ``classes``; targeted, it is."""
    top = np.asarray(logits).argmax(axis=-1)
    return top == classes if targeted else top != classes
