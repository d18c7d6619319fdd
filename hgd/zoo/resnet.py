"""The competition's ResNet152 and ResNeXt101-64x4d, run at 299x299 with global average pooling.

Two of the four classifiers the winning NIPS 2017 defense protected
(HGD paper, section 5.5); both guide layers are the last stage's output,
``conv5_block3_out`` (10x10x2048 at 299x299), and both return 1000 logits (``predictions``).

- ResNet152 is Keras applications' own model and weight file
  (``resnet152_weights_tf_dim_ordering_tf_kernels.h5``, Caffe-converted, loaded by
  ``model.load_weights``). The weights want BGR inputs minus the BGR ImageNet mean; the model
  flips RGB to BGR itself (``rgb_to_bgr``), so its input space is per-channel:
  ``pixels - RESNET152_OFFSET`` (RGB order), scale 1.
- ResNeXt101-64x4d takes torchvision's ``IMAGENET1K_V1`` weights (a zip-format torch file,
  read by :mod:`hgd.zoo.torch_zip`): torchvision's ResNet v1.5 layout (stride on the 3x3 conv,
  64 groups, PyTorch's symmetric padding made explicit, BatchNorm epsilon 1e-5) with Keras
  ResNet layer names. Input space: ``(pixels - RESNEXT101_OFFSET) / RESNEXT101_SCALE``, the
  ImageNet mean and std in RGB order, times 255.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import keras
import numpy as np

from hgd.zoo.efficientnet_lite import assign_weights
from hgd.zoo.torch_zip import load_zip_state_dict

NUM_CLASSES = 1000
GUIDE_LAYER = "conv5_block3_out"
LOGITS_LAYER = "predictions"

RESNET152_WEIGHTS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
                         "resnet152_weights_tf_dim_ordering_tf_kernels.h5")
RESNET152_WEIGHTS_MD5 = "100835be76be38e30d865e96f2aaae62"  # keras.applications.resnet.WEIGHTS_HASHES
RESNET152_OFFSET = (123.68, 116.779, 103.939)  # Keras' "caffe" preprocessing mean, in RGB order
RESNET152_SCALE = (1.0, 1.0, 1.0)

# torchvision names its files after the first 8 hex digits of their SHA-256 (checked by torch.hub).
RESNEXT101_WEIGHTS_URL = "https://download.pytorch.org/models/resnext101_64x4d-173b62eb.pth"
RESNEXT101_OFFSET = (123.675, 116.28, 103.53)  # 255 * (0.485, 0.456, 0.406)
RESNEXT101_SCALE = (58.395, 57.12, 57.375)  # 255 * (0.229, 0.224, 0.225)
RESNEXT101_GROUPS = 64
RESNEXT101_BN_EPSILON = 1e-5
# (blocks, bottleneck width = output width) of torchvision's layer1..layer4 = Keras' conv2..conv5.
RESNEXT101_STAGES = ((3, 256), (4, 512), (23, 1024), (3, 2048))


@keras.saving.register_keras_serializable(package="hgd")
class ReverseChannels(keras.layers.Layer):
    """RGB <-> BGR: the last axis reversed."""

    def call(self, x):
        return keras.ops.flip(x, axis=-1)


def build_resnet152(*, input_shape: tuple = (None, None, 3)) -> keras.Model:
    """Keras applications' ResNet152 on RGB inputs minus the mean (``RESNET152_OFFSET``), returning logits.

    Keras' own layers (``conv1_conv`` ... ``conv5_block3_out``, ``avg_pool``, ``predictions``) in
    Keras' order, so the published ``.h5`` loads with ``model.load_weights``; the top is split off
    (``include_top=False, pooling="avg"`` + Dense) only so that any input size runs.
    """
    inputs = keras.Input(input_shape, name="input")
    bgr = ReverseChannels(name="rgb_to_bgr")(inputs)
    base = keras.applications.ResNet152(include_top=False, weights=None, input_tensor=bgr, pooling="avg")
    logits = keras.layers.Dense(NUM_CLASSES, name=LOGITS_LAYER)(base.output)
    return keras.Model(inputs, logits, name="resnet152")


def _conv_bn(x: keras.KerasTensor, filters: int, kernel: int, name: str, *, strides: int = 1,
             groups: int = 1) -> keras.KerasTensor:
    """PyTorch's conv (padding ``kernel // 2`` on every side, no bias) -> BatchNorm."""
    if kernel > 1:
        x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    x = keras.layers.Conv2D(filters, kernel, strides=strides, groups=groups, use_bias=False, name=f"{name}_conv")(x)
    return keras.layers.BatchNormalization(epsilon=RESNEXT101_BN_EPSILON, name=f"{name}_bn")(x)


def _bottleneck(x: keras.KerasTensor, width: int, strides: int, name: str, shortcut_conv: bool) -> keras.KerasTensor:
    shortcut = _conv_bn(x, width, 1, f"{name}_0", strides=strides) if shortcut_conv else x
    y = keras.layers.ReLU(name=f"{name}_1_relu")(_conv_bn(x, width, 1, f"{name}_1"))
    y = keras.layers.ReLU(name=f"{name}_2_relu")(_conv_bn(y, width, 3, f"{name}_2", strides=strides,
                                                          groups=RESNEXT101_GROUPS))
    y = _conv_bn(y, width, 1, f"{name}_3")
    return keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([shortcut, y]))


def _blocks() -> Iterator[tuple[str, str, int, int]]:
    """(Keras block prefix, torchvision module prefix, width, stride) in order: ``conv2_block1``, ``layer1.0``."""
    for s, (blocks, width) in enumerate(RESNEXT101_STAGES):
        for b in range(blocks):
            yield f"conv{s + 2}_block{b + 1}", f"layer{s + 1}.{b}", width, 2 if b == 0 and s > 0 else 1


def build_resnext101_64x4d(*, input_shape: tuple = (None, None, 3)) -> keras.Model:
    """torchvision's ``resnext101_64x4d`` on ``(pixels - RESNEXT101_OFFSET) / RESNEXT101_SCALE``, returning logits."""
    inputs = keras.Input(input_shape, name="input")
    x = keras.layers.ReLU(name="conv1_relu")(_conv_bn(inputs, 64, 7, "conv1", strides=2))
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)  # zeros act as PyTorch's -inf padding after a ReLU
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for name, _, width, strides in _blocks():
        x = _bottleneck(x, width, strides, name, shortcut_conv=name.endswith("_block1"))
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = keras.layers.Dense(NUM_CLASSES, name=LOGITS_LAYER)(x)
    return keras.Model(inputs, logits, name="resnext101_64x4d")


_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def _kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch OIHW (I per group) -> Keras HWIO (I per group); grouped outputs stay contiguous in both."""
    return weight.transpose(2, 3, 1, 0)


def _conv_bn_pairs() -> Iterator[tuple[str, str, str]]:
    """(Keras layer prefix, torchvision conv, torchvision BatchNorm) for every conv of the model."""
    yield "conv1", "conv1", "bn1"
    for keras_prefix, torch_prefix, _, _ in _blocks():
        if keras_prefix.endswith("_block1"):
            yield f"{keras_prefix}_0", f"{torch_prefix}.downsample.0", f"{torch_prefix}.downsample.1"
        for i in (1, 2, 3):
            yield f"{keras_prefix}_{i}", f"{torch_prefix}.conv{i}", f"{torch_prefix}.bn{i}"


def keras_weights_from_torchvision(state: Mapping[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Map torchvision's ``resnext101_64x4d`` state dict onto Keras layer names (layer name -> weight list).

    Raises:
        KeyError: a tensor the architecture needs is missing.
        ValueError: the state dict has tensors the architecture does not use.
    """
    weights = {LOGITS_LAYER: [state["fc.weight"].T, state["fc.bias"]]}
    used = {"fc.weight", "fc.bias"}
    for keras_prefix, conv, bn in _conv_bn_pairs():
        weights[f"{keras_prefix}_conv"] = [_kernel(state[f"{conv}.weight"])]
        weights[f"{keras_prefix}_bn"] = [state[f"{bn}.{k}"] for k in _BN_TENSORS]
        used |= {f"{conv}.weight", *(f"{bn}.{k}" for k in (*_BN_TENSORS, "num_batches_tracked"))}
    unused = set(state) - used
    if unused:
        raise ValueError(f"resnext101_64x4d: state dict has tensors the architecture does not use: "
                         f"{sorted(unused)[:5]}")
    return weights


def load_torchvision_resnext(model: keras.Model, pth_path: str | os.PathLike) -> None:
    """Load torchvision's zip-format ``resnext101_64x4d-173b62eb.pth`` into :func:`build_resnext101_64x4d`'s model."""
    assign_weights(model, keras_weights_from_torchvision(load_zip_state_dict(pth_path)))
