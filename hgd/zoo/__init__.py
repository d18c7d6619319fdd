"""Target-model zoo: the classifiers a defense protects, each with its full contract.

A :class:`TargetModel` knows how to build its classifier with pretrained
weights, its native resolution, the one conversion from pixels (float 0..255,
299x299) into its input space, its FGD guide layer and its logits layer (1000
classes, standard 0-based order). Models are keyed by :class:`ModelName`, an
``Enum`` with string values, so a CLI string and Python code take one path.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable

import keras

from hgd.zoo import efficientnet_lite
from hgd.zoo.cache import load_or_convert

NUM_CLASSES = 1000


class ModelName(str, enum.Enum):
    """Stable ids of the registered target models."""

    LITE0 = "efficientnet_lite0"
    LITE1 = "efficientnet_lite1"
    LITE2 = "efficientnet_lite2"


@keras.saving.register_keras_serializable(package="hgd")
class PixelsToInputSpace(keras.layers.Layer):
    """Pixels (float, 0..255, any size) -> a classifier's input space: affine scaling, then resize.

    The resize (bicubic, no antialiasing) runs inside the graph so attacks
    back-propagate through it; ``resolution=None`` feeds the image as it is.
    """

    def __init__(self, offset: float, scale: float, resolution: int | None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.offset, self.scale, self.resolution = offset, scale, resolution

    def call(self, pixels):
        x = (keras.ops.cast(pixels, "float32") - self.offset) / self.scale
        if self.resolution is None:
            return x
        return keras.ops.image.resize(x, (self.resolution, self.resolution), interpolation="bicubic")

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        if self.resolution is None:
            return input_shape
        return (input_shape[0], self.resolution, self.resolution, input_shape[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "offset": self.offset, "scale": self.scale, "resolution": self.resolution}


@dataclasses.dataclass(frozen=True)
class TargetModel:
    """Everything a defense, an attack or FGD training needs to know about one classifier.

    Attributes:
        name: the registry id.
        build_backbone: builds the classifier on its input space, pretrained, returning logits.
        native_resolution: the resolution the weights were trained at.
        input_resolution: what the backbone is fed: ``native_resolution`` (the 299 image is
            resized in the graph) or ``None`` (the 299 image directly). Chosen by measurement,
            see ``docs/MODELS.md``.
        offset, scale: input space = ``(pixels - offset) / scale``.
        guide_layer: the topmost conv feature map (FGD's guide, before pooling).
        logits_layer: the 1000-way logits layer.
    """

    name: ModelName
    build_backbone: Callable[[], keras.Model]
    native_resolution: int
    input_resolution: int | None
    offset: float
    scale: float
    guide_layer: str
    logits_layer: str

    def to_input_space(self, name: str | None = None) -> PixelsToInputSpace:
        """The one conversion from pixels to this model's input space, as a layer."""
        return PixelsToInputSpace(
            self.offset, self.scale, self.input_resolution, name=name or f"{self.name.value}_input_space"
        )

    def build_classifier(self, image_size: int | None = None) -> keras.Model:
        """Pixels (float 0..255) -> logits: the undefended classifier as attacks and defenses see it."""
        pixels = keras.Input((image_size, image_size, 3), name="pixels")
        backbone = self.build_backbone()
        return keras.Model(pixels, backbone(self.to_input_space()(pixels)), name=f"{self.name.value}_classifier")


def _lite(name: ModelName, resize_to_native: bool) -> TargetModel:
    variant = efficientnet_lite.VARIANTS[name.value]
    return TargetModel(
        name=name,
        build_backbone=lambda: load_or_convert(variant),
        native_resolution=variant.resolution,
        input_resolution=variant.resolution if resize_to_native else None,
        offset=127.0,
        scale=128.0,
        guide_layer=efficientnet_lite.GUIDE_LAYER,
        logits_layer=efficientnet_lite.LOGITS_LAYER,
    )


REGISTRY: dict[ModelName, TargetModel] = {
    ModelName.LITE0: _lite(ModelName.LITE0, resize_to_native=True),
    ModelName.LITE1: _lite(ModelName.LITE1, resize_to_native=True),
    ModelName.LITE2: _lite(ModelName.LITE2, resize_to_native=True),
}

DEFAULT_ENSEMBLE: tuple[ModelName, ...] = (ModelName.LITE0, ModelName.LITE1, ModelName.LITE2)


def get_model(name: str | ModelName) -> TargetModel:
    """Look a target model up by id; unknown ids raise with the list of known ones."""
    try:
        return REGISTRY[ModelName(name)]
    except ValueError:
        raise ValueError(f"unknown target model {name!r}; known: {[m.value for m in ModelName]}") from None
