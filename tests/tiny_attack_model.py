"""A tiny attack target for the attack tests: a seeded 10-class conv net on 32x32 pixels, images with
saturated patches, and numpy references (logits, cross-entropy, the epsilon box). The fixtures
``model`` and ``images`` (``conftest.py``) are these; a JAX subprocess imports this module too."""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 10
SIZE = 32


def tiny_model():
    """A small conv net on 32x32 pixels (0..255) -> 10 logits, weights from a fixed numpy seed.

    The weights do not depend on the Keras backend, so the JAX subprocess builds the same model.
    """
    import keras

    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Rescaling(1 / 127.5, offset=-1.0),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(NUM_CLASSES),
    ], name="tiny")
    rng = np.random.RandomState(0)
    weights = []
    for w in model.get_weights():
        fan_in = int(np.prod(w.shape[:-1])) if w.ndim > 1 else 1
        scale = np.sqrt(2.0 / fan_in) if w.ndim > 1 else 0.1
        weights.append(rng.normal(0.0, scale, w.shape).astype("float32"))
    model.set_weights(weights)
    return model


def tiny_images(n: int = 4) -> np.ndarray:
    """Random uint8 images with saturated patches (pixels at 0 and 255) to test the [0, 255] edges."""
    images = np.random.RandomState(1).randint(0, 256, (n, SIZE, SIZE, 3)).astype(np.uint8)
    images[:, :8, :8] = 0
    images[:, -8:, -8:] = 255
    return images


def logits_of(model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model(images.astype(np.float32), training=False))


def cross_entropy(model, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Per-image CE of ``classes``, in float64 numpy (independent of the library's loss)."""
    z = logits_of(model, images).astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(classes)), classes]


def in_box(adv: np.ndarray, x: np.ndarray, eps: int) -> bool:
    lo = np.clip(x.astype(np.int16) - eps, 0, 255)
    hi = np.clip(x.astype(np.int16) + eps, 0, 255)
    return bool(np.all((adv >= lo) & (adv <= hi)))
