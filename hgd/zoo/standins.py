"""Tiny random-weight stand-ins for the competition's four classifiers, for tests and dry runs only.

The four real classifiers have ~230M parameters and need ~68 GMAC per 299x299 image; their
weights must be fetched over the network (:mod:`hgd.zoo.fetch`). To run the four-model defense,
attacks and FGD training end to end on a machine without them (CI, this repository's tests),
set ``HGD_TINY_STANDINS=1``: every competition model's ``build_backbone`` then returns a tiny
network with the same contract instead of loading the cache — same input space, the guide
layer under the same name and of the same shape at 299x299 (8x8x2048, 8x8x1536, 10x10x2048,
10x10x2048), 1000 logits from a ``Dense`` named like the real logits layer — and weights drawn
from a generator seeded by the model id, so every process (defense, attack, training) sees the
same stand-in. It costs ~20 MMAC per image instead of 6-29 GMAC. Its predictions are
meaningless; a warning says so each time one is built. The EfficientNet-Lite models are never
replaced (their weights are always here).
"""

from __future__ import annotations

import logging
import os
import zlib

import keras
import numpy as np

STANDINS_ENV = "HGD_TINY_STANDINS"
NUM_CLASSES = 1000
WIDTHS = (8, 16, 16, 32, 32)  # five stride-2 3x3 convs: 299 -> 8 ("valid") or 10 ("same")

log = logging.getLogger(__name__)


def standins_enabled() -> bool:
    """``HGD_TINY_STANDINS`` is set to anything but empty or ``0``."""
    return os.environ.get(STANDINS_ENV, "") not in ("", "0")


def build_standin(model_id: str, *, guide_layer: str, guide_channels: int, logits_layer: str,
                  padding: str) -> keras.Model:
    """A tiny stand-in for ``model_id``: five stride-2 3x3 convs (``padding``), a 1x1 conv to ``guide_channels``
    whose ReLU is named ``guide_layer``, global average pooling and the ``logits_layer`` Dense (1000)."""
    log.warning("%s=%s: %s is a tiny random-weight stand-in, not the real classifier; its predictions are "
                "meaningless", STANDINS_ENV, os.environ.get(STANDINS_ENV), model_id)
    inputs = keras.Input((None, None, 3), name="input")
    x = inputs
    for i, width in enumerate(WIDTHS):
        x = keras.layers.Conv2D(width, 3, strides=2, padding=padding, name=f"standin_conv{i}")(x)
        x = keras.layers.ReLU(name=f"standin_relu{i}")(x)
    x = keras.layers.Conv2D(guide_channels, 1, name=f"{guide_layer}_conv")(x)
    x = keras.layers.ReLU(name=guide_layer)(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = keras.layers.Dense(NUM_CLASSES, name=logits_layer)(x)
    model = keras.Model(inputs, logits, name=f"{model_id}_standin")
    rng = np.random.default_rng(zlib.crc32(model_id.encode()))
    for layer in model.layers:
        if layer.weights:
            kernel = layer.weights[0]
            fan_in = int(np.prod(kernel.shape[:-1]))
            values = [rng.normal(0.0, np.sqrt(2.0 / fan_in), kernel.shape).astype("float32")]
            values += [rng.normal(0.0, 0.1, w.shape).astype("float32") for w in layer.weights[1:]]
            layer.set_weights(values)
    return model
