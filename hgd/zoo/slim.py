"""TF-Slim conventions in Keras: layer names from variable scopes, conv + BatchNorm, checkpoint loading.

The ens-adv Inception models of the NIPS 2017 competition are published as TF1 name-based
checkpoints written by TF-Slim (``ens3_adv_inception_v3_2017_08_18``,
``ens_adv_inception_resnet_v2_2017_08_18``). Keras names cannot hold ``/``, so a slim scope
such as ``Mixed_7c/Branch_0/Conv2d_0a_1x1`` (below the model's top scope) names these layers,
with ``_`` for ``/``:

- ``<scope>_conv`` (Conv2D) or ``<scope>_fc`` (Dense): slim's ``weights`` and ``biases``;
- ``<scope>_bn``: ``BatchNorm/beta``, ``moving_mean``, ``moving_variance``. The inception arg
  scopes use slim's default ``scale=False`` (no gamma) and epsilon 0.001;
- ``<scope>``: the ReLU output, which is slim's end point of that name (``Conv2d_7b_1x1``).

The converter maps each checkpoint variable forward (slim name -> Keras layer and variable), so
the mapping can never be ambiguous, and every Keras weight must be filled exactly once.
The checkpoints classify into 1001 classes, index 0 being "background":
:class:`DropBackground` turns them into the toolkit's 1000 logits in the standard 0-based order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import keras
import numpy as np

from hgd.zoo.efficientnet_lite import assign_weights

BN_EPSILON = 1e-3
SLIM_CLASSES = 1001
NON_MODEL_VARIABLES = frozenset({"global_step"})
AUX_SCOPE = "AuxLogits"

_BN_VARIABLES = ("beta", "moving_mean", "moving_variance")
_LINEAR_VARIABLES = {"weights": "kernel", "biases": "bias"}
_KERAS_ORDER = ("kernel", "bias", *_BN_VARIABLES)  # each layer's variable order in get_weights()


def keras_name(scope: str) -> str:
    """A slim scope below the model scope -> its Keras layer name (``/`` -> ``_``)."""
    return scope.replace("/", "_")


@keras.saving.register_keras_serializable(package="hgd")
class DropBackground(keras.layers.Layer):
    """1001 slim logits -> 1000 logits in the standard 0-based ImageNet order (drops index 0)."""

    def call(self, logits):
        return logits[:, 1:]

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], input_shape[1] - 1)


def conv_bn(x: keras.KerasTensor, filters: int, kernel: int | tuple[int, int], scope: str, *,
            strides: int = 1, padding: str = "same") -> keras.KerasTensor:
    """slim.conv2d under the inception arg scope: conv (no bias) -> BatchNorm (no gamma) -> ReLU."""
    name = keras_name(scope)
    x = keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False,
                            name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, scale=False, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=name)(x)


def conv(x: keras.KerasTensor, filters: int, kernel: int | tuple[int, int], scope: str, *,
         padding: str = "same") -> keras.KerasTensor:
    """slim.conv2d with ``normalizer_fn=None, activation_fn=None``: a biased linear conv."""
    return keras.layers.Conv2D(filters, kernel, padding=padding, name=f"{keras_name(scope)}_conv")(x)


def dense(x: keras.KerasTensor, units: int, scope: str) -> keras.KerasTensor:
    """slim.fully_connected with ``activation_fn=None``."""
    return keras.layers.Dense(units, name=f"{keras_name(scope)}_fc")(x)


def variable_target(name: str, shapes: Mapping[str, list[int]]) -> tuple[str, str]:
    """A slim variable name (top scope stripped) -> (Keras layer name, Keras variable name).

    ``shapes`` (the checkpoint's name -> shape map, top scope stripped) tells a conv's
    4-D ``weights`` from a fully connected layer's 2-D ones, biases included.
    """
    scope, _, leaf = name.rpartition("/")
    if scope.endswith("/BatchNorm") and leaf in _BN_VARIABLES:
        return f"{keras_name(scope.removesuffix('/BatchNorm'))}_bn", leaf
    if leaf not in _LINEAR_VARIABLES or f"{scope}/weights" not in shapes:
        raise ValueError(f"unexpected slim variable {name!r}: not a conv's or fully connected layer's weights or "
                         "biases, nor a BatchNorm beta, moving_mean or moving_variance")
    kind = "conv" if len(shapes[f"{scope}/weights"]) == 4 else "fc"
    return f"{keras_name(scope)}_{kind}", _LINEAR_VARIABLES[leaf]


def load_slim_checkpoint(model: keras.Model, checkpoint: str | os.PathLike, scope: str) -> None:
    """Fill every weight of ``model`` from a TF-Slim checkpoint whose variables live under ``scope``.

    Args:
        model: built by :mod:`hgd.zoo.inception`; with or without its ``AuxLogits`` head (the
            head's variables are skipped when the model does not have it).
        checkpoint: the checkpoint prefix (``.../ens3_adv_inception_v3.ckpt``), or a folder whose
            ``checkpoint`` file names it.
        scope: the model's top scope, ``InceptionV3`` or ``InceptionResnetV2``.

    Raises:
        ValueError: a variable outside ``scope`` (other than ``global_step``), one the model has
            no place for, or a Keras weight left unfilled or of another shape.
    """
    import tensorflow as tf  # only the converter needs TF's checkpoint reader, not the model (JAX runs it too)

    reader = tf.train.load_checkpoint(os.fspath(checkpoint))
    all_shapes = {name: shape for name, shape in reader.get_variable_to_shape_map().items()
                  if name not in NON_MODEL_VARIABLES}
    outside = sorted(name for name in all_shapes if not name.startswith(f"{scope}/"))
    if outside:
        raise ValueError(f"{checkpoint}: variables outside scope {scope!r}: {outside[:5]}")
    shapes = {name.removeprefix(f"{scope}/"): shape for name, shape in all_shapes.items()}
    has_aux = any(layer.name.startswith(f"{AUX_SCOPE}_") for layer in model.layers)
    values: dict[str, dict[str, np.ndarray]] = {}
    for name in sorted(shapes):
        if name.startswith(f"{AUX_SCOPE}/") and not has_aux:
            continue
        layer, variable = variable_target(name, shapes)
        values.setdefault(layer, {})[variable] = reader.get_tensor(f"{scope}/{name}")
    wanted = {(layer.name, v.name) for layer in model.layers for v in layer.weights}
    found = {(layer, variable) for layer, variables in values.items() for variable in variables}
    if wanted != found:
        raise ValueError(f"{checkpoint}: Keras weights without a checkpoint variable {sorted(wanted - found)[:5]}, "
                         f"checkpoint variables without a Keras weight {sorted(found - wanted)[:5]}")
    assign_weights(model, {layer: [v[k] for k in _KERAS_ORDER if k in v] for layer, v in values.items()})
