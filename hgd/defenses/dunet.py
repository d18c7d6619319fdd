"""DUNET: the denoising U-Net of HGD (Liao et al., CVPR 2018), and its DAE baseline.

The high-level representation guided denoiser does not predict the clean image
directly: it predicts the adversarial perturbation ``dx_hat`` and subtracts it,
``x_hat = x* - dx_hat`` (paper, Sec. 3). Predicting a residual is far easier than
re-synthesising the image, because the perturbation is small and the image is
already available at the input. Here the sign is folded into the last 1x1
convolution, so the network reads ``x_hat = x + conv(features)``; a freshly
initialised or zeroed output convolution therefore starts from the identity.
No clamp follows the addition.

Layout (channels at ``width=1.0``; spatial sizes for a 299x299 input):

* Encoder: ``enc0`` = 2 conv blocks at 64 ch (299); ``enc1``..``enc4`` = 3 conv
  blocks at 128, 256, 256, 256 ch, the first with stride 2 (150, 75, 38, 19).
* Decoder, ``dec3``..``dec0``: bilinear upsampling to the exact size of the
  matching encoder output, concatenation ``[upsampled, skip]`` (the lateral
  connection, which carries back the fine detail lost by down-sampling), then
  3, 3, 3, 2 conv blocks at 256, 256, 128, 64 ch.
* Output: a 1x1 convolution back to the input channels, added to the input.

A conv block is 3x3 conv (no bias) -> BatchNorm -> ReLU, with PyTorch's
BatchNorm settings of the reference (eps 1e-5, momentum 0.1, i.e. Keras 0.9).
``lateral=False`` removes the lateral connections, giving the paper's
denoising-autoencoder (DAE) baseline.

The denoiser works in whatever space its input is given in, which is the
guided classifier's normalized input space; it knows nothing about pixels.
Inputs are NHWC of any spatial size, known at build time or not.

Two details follow the reference only as far as training from scratch needs:
upsampling aligns corners like the reference (``align_corners=True``), while a
stride-2 "same" convolution on an even-sized map pads bottom/right only where
PyTorch pads symmetrically, so the authors' weights would not port unchanged.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import keras
from keras import ops

from hgd.backend import fast_bfloat16

_ENCODER_CHANNELS = (64, 128, 256, 256, 256)
_ENCODER_BLOCKS = (2, 3, 3, 3, 3)
_DECODER_CHANNELS = (64, 128, 256, 256)  # indexed by decoder stage 0..3
_DECODER_BLOCKS = (2, 3, 3, 3)
_MIN_CHANNELS = 8
_BN_EPSILON = 1e-5
_BN_MOMENTUM = 0.9
_DATA_FORMAT = "channels_last"
DTYPE_POLICIES = ("float32", "mixed_bfloat16", "auto")
"""The precisions a DUNET body may compute in; weights, the output convolution and the residual
addition stay float32 in both (a bfloat16 output would be rounded to ~1/2 pixel level). ``"auto"``
is ``mixed_bfloat16`` where the hardware computes bfloat16 fast, else float32
(:func:`resolve_dtype_policy`)."""

log = logging.getLogger("hgd.defenses.dunet")

Tensor = Any  # a backend tensor (tf.Tensor, jax.Array, ...) at run time


def _resize_axis(x: Tensor, size: int | Tensor, axis: int) -> Tensor:
    """Linearly resamples ``x`` along one spatial axis, corners aligned.

    Args:
        x: NHWC tensor.
        size: Number of output samples along ``axis`` (an int or a scalar tensor).
        axis: 1 (height) or 2 (width).

    Returns:
        ``x`` with ``size`` samples along ``axis``; the first and last samples
        coincide with the input's first and last.
    """
    in_size = ops.shape(x)[axis]
    steps = ops.cast(ops.arange(size), "float32")
    # Multiply before dividing so that positions landing on input samples are exact.
    position = steps * ops.cast(in_size - 1, "float32")
    position = position / ops.cast(ops.maximum(size - 1, 1), "float32")
    lower = ops.floor(position)
    lower_index = ops.cast(lower, "int32")
    upper_index = ops.minimum(lower_index + 1, in_size - 1)
    weight_shape = [1, 1, 1, 1]
    weight_shape[axis] = -1
    weight = ops.reshape(ops.cast(position - lower, x.dtype), weight_shape)
    below = ops.take(x, lower_index, axis=axis)
    above = ops.take(x, upper_index, axis=axis)
    return below + (above - below) * weight


@keras.saving.register_keras_serializable(package="hgd")
class ResizeLike(keras.layers.Layer):
    """Bilinearly resizes ``source`` to the spatial size of ``target`` (NHWC).

    The target size is read at run time, so the layer works for sizes unknown
    when the model is built. Corners are aligned, as in the reference DUNET.
    ``keras.ops.image.resize`` is not used: it validates the size with Python
    comparisons, which fail when the size is a symbolic tensor (TensorFlow
    graph mode, e.g. ``Model.predict`` on varying input sizes).
    """

    def call(self, source: Tensor, target: Tensor) -> Tensor:
        """Resizes ``source`` to ``target``'s height and width.

        Args:
            source: NHWC tensor to resize.
            target: NHWC tensor whose height and width are matched.

        Returns:
            ``source`` resampled to ``target``'s spatial size.
        """
        target_shape = ops.shape(target)
        resized = _resize_axis(source, target_shape[1], axis=1)
        return _resize_axis(resized, target_shape[2], axis=2)

    def compute_output_shape(
        self, source_shape: tuple[int | None, ...], target_shape: tuple[int | None, ...]
    ) -> tuple[int | None, ...]:
        """Returns ``source``'s batch and channels with ``target``'s height and width."""
        return (source_shape[0], target_shape[1], target_shape[2], source_shape[3])


def _scaled(channels: int, width: float) -> int:
    """Scales a channel count by ``width``, rounding half up, at least 8."""
    return max(_MIN_CHANNELS, math.floor(channels * width + 0.5))


def _conv_blocks(
    x: keras.KerasTensor, *, channels: int, blocks: int, first_stride: int, prefix: str,
    dtype: str = "float32",
) -> keras.KerasTensor:
    """Applies ``blocks`` conv blocks (3x3 conv, no bias -> BatchNorm -> ReLU).

    Args:
        x: NHWC input.
        channels: Output channels of every conv.
        blocks: Number of conv blocks.
        first_stride: Stride of the first conv (2 down-samples).
        prefix: Layer name prefix, e.g. ``"enc1"``; layers are named
            ``{prefix}_conv{k}``, ``{prefix}_bn{k}``, ``{prefix}_relu{k}``, k from 1.
        dtype: The layers' dtype policy (one of :data:`DTYPE_POLICIES`).

    Returns:
        The output of the last block.
    """
    for k in range(1, blocks + 1):
        x = keras.layers.Conv2D(
            channels,
            3,
            strides=first_stride if k == 1 else 1,
            padding="same",
            use_bias=False,
            data_format=_DATA_FORMAT,
            name=f"{prefix}_conv{k}",
            dtype=dtype,
        )(x)
        # synchronized: under tf.distribute, the statistics of the whole batch, not of each device's part (as
        # JAX's DataParallel computes them; Keras accepts the flag on TensorFlow only), so that data-parallel
        # training takes the single-device step.
        x = keras.layers.BatchNormalization(
            momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, synchronized=keras.backend.backend() == "tensorflow",
            name=f"{prefix}_bn{k}", dtype=dtype
        )(x)
        x = keras.layers.ReLU(name=f"{prefix}_relu{k}", dtype=dtype)(x)
    return x


def _encoder(x: keras.KerasTensor, width: float, dtype: str) -> list[keras.KerasTensor]:
    """Runs the encoder; returns the outputs of stages 0..4, finest first."""
    outputs = []
    for stage, (channels, blocks) in enumerate(zip(_ENCODER_CHANNELS, _ENCODER_BLOCKS)):
        x = _conv_blocks(
            x,
            channels=_scaled(channels, width),
            blocks=blocks,
            first_stride=1 if stage == 0 else 2,
            prefix=f"enc{stage}",
            dtype=dtype,
        )
        outputs.append(x)
    return outputs


def _decoder(
    skips: list[keras.KerasTensor], width: float, lateral: bool, dtype: str
) -> keras.KerasTensor:
    """Runs the decoder from the coarsest encoder output back to full resolution.

    Args:
        skips: Encoder outputs of stages 0..4, finest first.
        width: Channel multiplier.
        lateral: Whether to concatenate ``[upsampled, skip]`` (DUNET) or to
            continue from the upsampled map alone (DAE).
        dtype: The layers' dtype policy.

    Returns:
        The full-resolution output of decoder stage 0.
    """
    x = skips[-1]
    for stage in reversed(range(len(_DECODER_CHANNELS))):
        skip = skips[stage]
        x = ResizeLike(name=f"dec{stage}_up", dtype=dtype)(x, skip)
        if lateral:
            x = keras.layers.Concatenate(axis=-1, name=f"dec{stage}_concat", dtype=dtype)([x, skip])
        x = _conv_blocks(
            x,
            channels=_scaled(_DECODER_CHANNELS[stage], width),
            blocks=_DECODER_BLOCKS[stage],
            first_stride=1,
            prefix=f"dec{stage}",
            dtype=dtype,
        )
    return x


def _is_positive_int(value: object) -> bool:
    """Whether ``value`` is an int (not a bool) greater than zero."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _validate(width: float, lateral: bool, input_shape: tuple[int | None, int | None, int], name: str) -> None:
    """Raises ``ValueError`` quoting the received value if an argument is invalid."""
    is_number = isinstance(width, (int, float)) and not isinstance(width, bool)
    if not (is_number and math.isfinite(width) and width > 0):
        raise ValueError(f"`width` must be a positive finite number. Received: width={width!r}")
    if not isinstance(lateral, bool):
        raise ValueError(f"`lateral` must be a bool. Received: lateral={lateral!r}")
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError(
            "`input_shape` must be (height, width, channels). "
            f"Received: input_shape={input_shape!r}"
        )
    spatial_ok = all(dim is None or _is_positive_int(dim) for dim in input_shape[:2])
    if not (spatial_ok and _is_positive_int(input_shape[2])):
        raise ValueError(
            "`input_shape` needs positive int (or None) height and width and positive "
            f"int channels. Received: input_shape={input_shape!r}"
        )
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string. Received: name={name!r}")


def resolve_dtype_policy(policy: str) -> str:
    """The policy a DUNET computes in: ``"auto"`` becomes ``mixed_bfloat16`` where the hardware computes
    bfloat16 fast (:func:`hgd.backend.fast_bfloat16`), else ``float32``; an explicit ``mixed_bfloat16``
    where it is slow is kept but warned about (it can make a training epoch take hours).

    Why: a recipe runs on whichever machine a session gets; one that asked for bfloat16 everywhere
    trained no epoch in 2 h 20 min on a CPU without bfloat16 instructions.
    """
    if policy not in DTYPE_POLICIES:
        raise ValueError(f"`dtype_policy` must be one of {DTYPE_POLICIES}. Received: dtype_policy={policy!r}")
    if policy == "auto":
        chosen = "mixed_bfloat16" if fast_bfloat16() else "float32"
        log.info("dtype_policy auto: %s (%s)", chosen, "fast bfloat16 here" if chosen != "float32"
                 else "no GPU, no AVX512_BF16/AMX bfloat16 on this CPU")
        return chosen
    if policy == "mixed_bfloat16" and not fast_bfloat16():
        log.warning("dtype_policy mixed_bfloat16 on hardware without fast bfloat16 (no GPU, no AVX512_BF16/AMX): "
                    "the DUNET runs several times slower than in float32; 'auto' chooses for the machine")
    return policy


def build_dunet(
    *,
    width: float = 1.0,
    lateral: bool = True,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    name: str = "dunet",
    dtype_policy: str = "float32",
) -> keras.Model:
    """Builds the HGD denoiser: ``x_hat = x + conv1x1(decoder(encoder(x)))``.

    The final 1x1 convolution starts at zero, so an untrained denoiser is exactly the identity. With
    a random start instead, the shipped recipe's validation loss was still above the identity's after
    two epochs (0.4515 vs 0.4438): the network first had to learn to undo its own noise.

    At ``width=1.0`` and 3 input channels the model has 11,033,984 trainable
    parameters and 9,728 non-trainable ones (BatchNorm moving statistics).

    Args:
        width: Multiplier of every channel count; each count is rounded half up
            and kept at least 8 (``0.5`` gives 32-64-128-128-128).
        lateral: ``True`` for DUNET; ``False`` for the paper's DAE baseline, the
            same network without the lateral (skip) connections.
        input_shape: ``(height, width, channels)`` of one input; spatial sizes
            may be ``None`` (any size, odd ones included). The output has the
            input's shape.
        name: Model name.
        dtype_policy: ``"mixed_bfloat16"`` computes the encoder and decoder in bfloat16 (CPUs with
            AVX512_BF16 and GPUs run them faster; other CPUs several times slower); weights and
            the output stay float32, so weight files are the same for both policies. ``"auto"``:
            bfloat16 where it is fast (:func:`resolve_dtype_policy`).

    Returns:
        An uncompiled functional ``keras.Model`` mapping NHWC inputs in the
        guided classifier's input space to denoised inputs in the same space.
        Every layer has a deterministic name (``enc0_conv1``, ``dec3_up``,
        ``dec3_concat``, ``out_conv``, ``out_add``, ...).

    Raises:
        ValueError: If an argument is invalid; the message quotes its value.
    """
    _validate(width, lateral, input_shape, name)
    dtype_policy = resolve_dtype_policy(dtype_policy)  # validates it too
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    features = _decoder(_encoder(inputs, width, dtype_policy), width, lateral, dtype_policy)
    correction = keras.layers.Conv2D(
        input_shape[-1],
        1,
        use_bias=False,
        kernel_initializer="zeros",  # starts as the identity: training moves away from "do no harm"
        data_format=_DATA_FORMAT,
        name="out_conv",
        dtype="float32",
    )(features)
    outputs = keras.layers.Add(name="out_add")([inputs, correction])
    return keras.Model(inputs, outputs, name=name)
