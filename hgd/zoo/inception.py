"""The competition's ens-adv Inception v3 and Inception-ResNet-v2, as TF-Slim defines them.

Two of the four classifiers the winning NIPS 2017 defense protected
(HGD paper, section 5.5), with weights from Tramer et al.'s ensemble adversarial
training, published as TF-Slim checkpoints of 1001 classes. The builders follow
``tensorflow/models`` ``research/slim/nets/inception_v3.py`` and ``inception_resnet_v2.py``
layer for layer, naming every layer after its slim scope (:mod:`hgd.zoo.slim`), so
:func:`hgd.zoo.slim.load_slim_checkpoint` fills them by name. Both read 299x299 inputs in
[-1, 1] (``pixels / 127.5 - 1``) and return 1000 logits in the standard 0-based order.

Deviation from slim, equal at 299x299: the final 8x8 VALID average pool is a global average
pool, so that crops (denoiser training) run too. The auxiliary head (``aux_logits=True``),
only used in training, needs 299x299 inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import keras

from hgd.zoo.slim import AUX_SCOPE, SLIM_CLASSES, DropBackground, conv, conv_bn, dense, keras_name

INCEPTION_V3_SCOPE = "InceptionV3"
INCEPTION_RESNET_V2_SCOPE = "InceptionResnetV2"
INCEPTION_V3_GUIDE_LAYER = "Mixed_7c"
INCEPTION_RESNET_V2_GUIDE_LAYER = "Conv2d_7b_1x1"
LOGITS_LAYER = "logits"
AUX_LOGITS_LAYER = "aux_logits"
DROPOUT = 0.2  # slim's dropout_keep_prob 0.8; inactive at inference

ENS3_ADV_INCEPTION_V3_URL = "https://download.tensorflow.org/models/ens3_adv_inception_v3_2017_08_18.tar.gz"
ENS_ADV_INCEPTION_RESNET_V2_URL = "https://download.tensorflow.org/models/ens_adv_inception_resnet_v2_2017_08_18.tar.gz"


class ConvBN(NamedTuple):
    """One slim.conv2d + BatchNorm + ReLU of a branch: scope leaf name, filters, kernel, stride, padding."""

    name: str
    filters: int
    kernel: int | tuple[int, int]
    strides: int = 1
    padding: str = "same"


def _tower(x: keras.KerasTensor, scope: str, *convs: ConvBN) -> keras.KerasTensor:
    for c in convs:
        x = conv_bn(x, c.filters, c.kernel, f"{scope}/{c.name}" if scope else c.name, strides=c.strides,
                    padding=c.padding)
    return x


def _max_pool(x: keras.KerasTensor, scope: str, padding: str = "valid") -> keras.KerasTensor:
    return keras.layers.MaxPooling2D(3, strides=2, padding=padding, name=keras_name(scope))(x)


def _avg_pool_3x3(x: keras.KerasTensor, scope: str) -> keras.KerasTensor:
    """Branch_3's 3x3 stride-1 SAME average pool (TF's: padding is left out of the mean)."""
    return keras.layers.AveragePooling2D(3, strides=1, padding="same", name=keras_name(scope))(x)


def _concat(branches: list[keras.KerasTensor], scope: str) -> keras.KerasTensor:
    return keras.layers.Concatenate(name=keras_name(scope))(branches)


def _stem(x: keras.KerasTensor) -> keras.KerasTensor:
    """299x299x3 -> 35x35x192, identical (names included) in both slim nets."""
    x = _tower(x, "", ConvBN("Conv2d_1a_3x3", 32, 3, 2, "valid"), ConvBN("Conv2d_2a_3x3", 32, 3, 1, "valid"),
               ConvBN("Conv2d_2b_3x3", 64, 3))
    x = _max_pool(x, "MaxPool_3a_3x3")
    x = _tower(x, "", ConvBN("Conv2d_3b_1x1", 80, 1, 1, "valid"), ConvBN("Conv2d_4a_3x3", 192, 3, 1, "valid"))
    return _max_pool(x, "MaxPool_5a_3x3")


def _logits(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """Slim's 1001 logits -> the toolkit's 1000."""
    return DropBackground(name=name)(x)


# ----------------------------------------------------------------------------------- Inception v3


def _v3_mixed_5(x: keras.KerasTensor, scope: str, pool_filters: int, branch_1: tuple[str, str]) -> keras.KerasTensor:
    """35x35 block; ``branch_1`` holds its scope names (Mixed_5c's differ: ``Conv2d_0b_1x1``, ``Conv_1_0c_5x5``)."""
    b0 = _tower(x, f"{scope}/Branch_0", ConvBN("Conv2d_0a_1x1", 64, 1))
    b1 = _tower(x, f"{scope}/Branch_1", ConvBN(branch_1[0], 48, 1), ConvBN(branch_1[1], 64, 5))
    b2 = _tower(x, f"{scope}/Branch_2", ConvBN("Conv2d_0a_1x1", 64, 1), ConvBN("Conv2d_0b_3x3", 96, 3),
                ConvBN("Conv2d_0c_3x3", 96, 3))
    b3 = _tower(_avg_pool_3x3(x, f"{scope}/Branch_3/AvgPool_0a_3x3"), f"{scope}/Branch_3",
                ConvBN("Conv2d_0b_1x1", pool_filters, 1))
    return _concat([b0, b1, b2, b3], scope)


def _v3_mixed_6a(x: keras.KerasTensor) -> keras.KerasTensor:
    scope = "Mixed_6a"
    b0 = _tower(x, f"{scope}/Branch_0", ConvBN("Conv2d_1a_1x1", 384, 3, 2, "valid"))
    b1 = _tower(x, f"{scope}/Branch_1", ConvBN("Conv2d_0a_1x1", 64, 1), ConvBN("Conv2d_0b_3x3", 96, 3),
                ConvBN("Conv2d_1a_1x1", 96, 3, 2, "valid"))
    return _concat([b0, b1, _max_pool(x, f"{scope}/Branch_2/MaxPool_1a_3x3")], scope)


def _v3_mixed_6(x: keras.KerasTensor, scope: str, mid: int) -> keras.KerasTensor:
    """17x17 block with factorized 7x7 convs; ``mid`` is its inner width (128, 160, 160, 192)."""
    b0 = _tower(x, f"{scope}/Branch_0", ConvBN("Conv2d_0a_1x1", 192, 1))
    b1 = _tower(x, f"{scope}/Branch_1", ConvBN("Conv2d_0a_1x1", mid, 1), ConvBN("Conv2d_0b_1x7", mid, (1, 7)),
                ConvBN("Conv2d_0c_7x1", 192, (7, 1)))
    b2 = _tower(x, f"{scope}/Branch_2", ConvBN("Conv2d_0a_1x1", mid, 1), ConvBN("Conv2d_0b_7x1", mid, (7, 1)),
                ConvBN("Conv2d_0c_1x7", mid, (1, 7)), ConvBN("Conv2d_0d_7x1", mid, (7, 1)),
                ConvBN("Conv2d_0e_1x7", 192, (1, 7)))
    b3 = _tower(_avg_pool_3x3(x, f"{scope}/Branch_3/AvgPool_0a_3x3"), f"{scope}/Branch_3",
                ConvBN("Conv2d_0b_1x1", 192, 1))
    return _concat([b0, b1, b2, b3], scope)


def _v3_mixed_7a(x: keras.KerasTensor) -> keras.KerasTensor:
    scope = "Mixed_7a"
    b0 = _tower(x, f"{scope}/Branch_0", ConvBN("Conv2d_0a_1x1", 192, 1), ConvBN("Conv2d_1a_3x3", 320, 3, 2, "valid"))
    b1 = _tower(x, f"{scope}/Branch_1", ConvBN("Conv2d_0a_1x1", 192, 1), ConvBN("Conv2d_0b_1x7", 192, (1, 7)),
                ConvBN("Conv2d_0c_7x1", 192, (7, 1)), ConvBN("Conv2d_1a_3x3", 192, 3, 2, "valid"))
    return _concat([b0, b1, _max_pool(x, f"{scope}/Branch_2/MaxPool_1a_3x3")], scope)


def _split(x: keras.KerasTensor, scope: str, first: str, second: str) -> keras.KerasTensor:
    """Parallel 1x3 and 3x1 convs (384 each), concatenated."""
    return _concat([_tower(x, scope, ConvBN(first, 384, (1, 3))), _tower(x, scope, ConvBN(second, 384, (3, 1)))],
                   f"{scope}/concat")


def _v3_mixed_7(x: keras.KerasTensor, scope: str, branch_1_3x1: str) -> keras.KerasTensor:
    """8x8 block; Branch_1's 3x1 conv is ``Conv2d_0b_3x1`` in Mixed_7b, ``Conv2d_0c_3x1`` in Mixed_7c."""
    b1 = _tower(x, f"{scope}/Branch_1", ConvBN("Conv2d_0a_1x1", 384, 1))
    b2 = _tower(x, f"{scope}/Branch_2", ConvBN("Conv2d_0a_1x1", 448, 1), ConvBN("Conv2d_0b_3x3", 384, 3))
    b3 = _tower(_avg_pool_3x3(x, f"{scope}/Branch_3/AvgPool_0a_3x3"), f"{scope}/Branch_3",
                ConvBN("Conv2d_0b_1x1", 192, 1))
    return _concat([_tower(x, f"{scope}/Branch_0", ConvBN("Conv2d_0a_1x1", 320, 1)),
                    _split(b1, f"{scope}/Branch_1", "Conv2d_0b_1x3", branch_1_3x1),
                    _split(b2, f"{scope}/Branch_2", "Conv2d_0c_1x3", "Conv2d_0d_3x1"), b3], scope)


def _v3_aux_logits(x: keras.KerasTensor) -> keras.KerasTensor:
    x = keras.layers.AveragePooling2D(5, strides=3, name=keras_name(f"{AUX_SCOPE}/AvgPool_1a_5x5"))(x)
    x = _tower(x, AUX_SCOPE, ConvBN("Conv2d_1b_1x1", 128, 1), ConvBN("Conv2d_2a_5x5", 768, 5, 1, "valid"))
    x = conv(x, SLIM_CLASSES, 1, f"{AUX_SCOPE}/Conv2d_2b_1x1")
    x = keras.layers.Reshape((SLIM_CLASSES,), name=keras_name(f"{AUX_SCOPE}/SpatialSqueeze"))(x)
    return _logits(x, AUX_LOGITS_LAYER)


def build_inception_v3(*, input_shape: tuple = (None, None, 3), aux_logits: bool = False) -> keras.Model:
    """TF-Slim ``inception_v3`` (1001 classes) returning 1000 logits; guide layer ``Mixed_7c`` (8x8x2048).

    Args:
        input_shape: HWC; the checkpoints were trained at 299x299 on inputs in [-1, 1].
        aux_logits: also build slim's auxiliary head on ``Mixed_6e`` (its weights are in the
            checkpoint); the model then returns ``[logits, aux_logits]``.
    """
    inputs = keras.Input(input_shape, name="input")
    x = _v3_mixed_5(_stem(inputs), "Mixed_5b", 32, ("Conv2d_0a_1x1", "Conv2d_0b_5x5"))
    x = _v3_mixed_5(x, "Mixed_5c", 64, ("Conv2d_0b_1x1", "Conv_1_0c_5x5"))
    x = _v3_mixed_5(x, "Mixed_5d", 64, ("Conv2d_0a_1x1", "Conv2d_0b_5x5"))
    x = _v3_mixed_6a(x)
    for scope, mid in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        x = _v3_mixed_6(x, scope, mid)
    aux = _v3_aux_logits(x) if aux_logits else None
    x = _v3_mixed_7(_v3_mixed_7a(x), "Mixed_7b", "Conv2d_0b_3x1")
    x = _v3_mixed_7(x, INCEPTION_V3_GUIDE_LAYER, "Conv2d_0c_3x1")
    x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="Logits_AvgPool_1a_8x8")(x)
    x = keras.layers.Dropout(DROPOUT, name="Logits_Dropout_1b")(x)
    x = conv(x, SLIM_CLASSES, 1, "Logits/Conv2d_1c_1x1")
    logits = _logits(keras.layers.Reshape((SLIM_CLASSES,), name="Logits_SpatialSqueeze")(x), LOGITS_LAYER)
    return keras.Model(inputs, [logits, aux] if aux_logits else logits, name="ens3_adv_inception_v3")


# -------------------------------------------------------------------------------- Inception-ResNet-v2


@keras.saving.register_keras_serializable(package="hgd")
class ScaledResidual(keras.layers.Layer):
    """``net + scale * up``: the Inception-ResNet residual with its fixed (not learned) scale."""

    def __init__(self, scale: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, inputs):
        net, up = inputs
        return net + self.scale * up

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale}


def _residual_block(x: keras.KerasTensor, scope: str, branches: tuple[tuple[ConvBN, ...], ...], scale: float,
                    activation: bool = True) -> keras.KerasTensor:
    """slim's block35 / block17 / block8: concat the branches, a biased 1x1 conv back to the input's width,
    ``net += scale * up``, then ReLU (the last Block8 has none)."""
    mixed = _concat([_tower(x, f"{scope}/Branch_{i}", *convs) for i, convs in enumerate(branches)], f"{scope}/concat")
    up = conv(mixed, x.shape[-1], 1, f"{scope}/Conv2d_1x1")
    if not activation:
        return ScaledResidual(scale, name=keras_name(scope))([x, up])
    x = ScaledResidual(scale, name=keras_name(f"{scope}/residual"))([x, up])
    return keras.layers.ReLU(name=keras_name(scope))(x)


BLOCK35 = ((ConvBN("Conv2d_1x1", 32, 1),),
           (ConvBN("Conv2d_0a_1x1", 32, 1), ConvBN("Conv2d_0b_3x3", 32, 3)),
           (ConvBN("Conv2d_0a_1x1", 32, 1), ConvBN("Conv2d_0b_3x3", 48, 3), ConvBN("Conv2d_0c_3x3", 64, 3)))
BLOCK17 = ((ConvBN("Conv2d_1x1", 192, 1),),
           (ConvBN("Conv2d_0a_1x1", 128, 1), ConvBN("Conv2d_0b_1x7", 160, (1, 7)),
            ConvBN("Conv2d_0c_7x1", 192, (7, 1))))
BLOCK8 = ((ConvBN("Conv2d_1x1", 192, 1),),
          (ConvBN("Conv2d_0a_1x1", 192, 1), ConvBN("Conv2d_0b_1x3", 224, (1, 3)), ConvBN("Conv2d_0c_3x1", 256, (3, 1))))


def _irv2_mixed_5b(x: keras.KerasTensor) -> keras.KerasTensor:
    scope = "Mixed_5b"
    b0 = _tower(x, f"{scope}/Branch_0", ConvBN("Conv2d_1x1", 96, 1))
    b1 = _tower(x, f"{scope}/Branch_1", ConvBN("Conv2d_0a_1x1", 48, 1), ConvBN("Conv2d_0b_5x5", 64, 5))
    b2 = _tower(x, f"{scope}/Branch_2", ConvBN("Conv2d_0a_1x1", 64, 1), ConvBN("Conv2d_0b_3x3", 96, 3),
                ConvBN("Conv2d_0c_3x3", 96, 3))
    b3 = _tower(_avg_pool_3x3(x, f"{scope}/Branch_3/AvgPool_0a_3x3"), f"{scope}/Branch_3",
                ConvBN("Conv2d_0b_1x1", 64, 1))
    return _concat([b0, b1, b2, b3], scope)


def _irv2_mixed_6a(x: keras.KerasTensor) -> keras.KerasTensor:
    scope = "Mixed_6a"
    b0 = _tower(x, f"{scope}/Branch_0", ConvBN("Conv2d_1a_3x3", 384, 3, 2, "valid"))
    b1 = _tower(x, f"{scope}/Branch_1", ConvBN("Conv2d_0a_1x1", 256, 1), ConvBN("Conv2d_0b_3x3", 256, 3),
                ConvBN("Conv2d_1a_3x3", 384, 3, 2, "valid"))
    return _concat([b0, b1, _max_pool(x, f"{scope}/Branch_2/MaxPool_1a_3x3")], scope)


def _irv2_mixed_7a(x: keras.KerasTensor) -> keras.KerasTensor:
    scope = "Mixed_7a"
    b0 = _tower(x, f"{scope}/Branch_0", ConvBN("Conv2d_0a_1x1", 256, 1), ConvBN("Conv2d_1a_3x3", 384, 3, 2, "valid"))
    b1 = _tower(x, f"{scope}/Branch_1", ConvBN("Conv2d_0a_1x1", 256, 1), ConvBN("Conv2d_1a_3x3", 288, 3, 2, "valid"))
    b2 = _tower(x, f"{scope}/Branch_2", ConvBN("Conv2d_0a_1x1", 256, 1), ConvBN("Conv2d_0b_3x3", 288, 3),
                ConvBN("Conv2d_1a_3x3", 320, 3, 2, "valid"))
    return _concat([b0, b1, b2, _max_pool(x, f"{scope}/Branch_3/MaxPool_1a_3x3")], scope)


def _irv2_aux_logits(x: keras.KerasTensor) -> keras.KerasTensor:
    x = keras.layers.AveragePooling2D(5, strides=3, name=keras_name(f"{AUX_SCOPE}/Conv2d_1a_3x3"))(x)  # slim's name
    x = _tower(x, AUX_SCOPE, ConvBN("Conv2d_1b_1x1", 128, 1), ConvBN("Conv2d_2a_5x5", 768, 5, 1, "valid"))
    x = keras.layers.Flatten(name=keras_name(f"{AUX_SCOPE}/Flatten"))(x)
    return _logits(dense(x, SLIM_CLASSES, f"{AUX_SCOPE}/Logits"), AUX_LOGITS_LAYER)


def build_inception_resnet_v2(*, input_shape: tuple = (None, None, 3), aux_logits: bool = False) -> keras.Model:
    """TF-Slim ``inception_resnet_v2`` (1001 classes) returning 1000 logits; guide layer ``Conv2d_7b_1x1`` (8x8x1536).

    Args:
        input_shape: HWC; the checkpoints were trained at 299x299 on inputs in [-1, 1].
        aux_logits: also build slim's auxiliary head on ``PreAuxLogits`` (the last block17); the
            model then returns ``[logits, aux_logits]``.
    """
    inputs = keras.Input(input_shape, name="input")
    x = _irv2_mixed_5b(_stem(inputs))
    for i in range(1, 11):
        x = _residual_block(x, f"Repeat/block35_{i}", BLOCK35, 0.17)
    x = _irv2_mixed_6a(x)
    for i in range(1, 21):
        x = _residual_block(x, f"Repeat_1/block17_{i}", BLOCK17, 0.10)
    aux = _irv2_aux_logits(x) if aux_logits else None
    x = _irv2_mixed_7a(x)
    for i in range(1, 10):
        x = _residual_block(x, f"Repeat_2/block8_{i}", BLOCK8, 0.20)
    x = _residual_block(x, "Block8", BLOCK8, 1.0, activation=False)
    x = conv_bn(x, 1536, 1, INCEPTION_RESNET_V2_GUIDE_LAYER)
    x = keras.layers.GlobalAveragePooling2D(name="Logits_AvgPool_1a_8x8")(x)
    x = keras.layers.Dropout(DROPOUT, name="Logits_Dropout")(x)
    logits = _logits(dense(x, SLIM_CLASSES, "Logits/Logits"), LOGITS_LAYER)
    return keras.Model(inputs, [logits, aux] if aux_logits else logits, name="ens_adv_inception_resnet_v2")
