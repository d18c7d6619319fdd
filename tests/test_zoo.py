"""The target-model registry contract (``hgd.zoo``), for every registered model, and the weights cache.

Every ``ModelName`` is under test automatically; the architecture numbers come from
``docs/results/models.md`` and the publishers' figures, and must be added to ``EXPECTED`` for
a new model. Tests that need a model's weights run for the models whose weights are here
(``TargetModel.weights_available()``) and are skipped, saying how to fetch them, for the others:
the competition's four classifiers, whose weights only ``python -m hgd.cli.fetch`` downloads. To
run the whole contract (top-1 on the sample images included) on fetched weights, point
``HGD_TEST_WEIGHTS_CACHE`` at the cache that command filled.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import pathlib
import threading
from typing import NamedTuple

import keras
import numpy as np
import pytest

from hgd.io import images
from hgd.io.competition_csv import read_dataset_csv
from hgd.zoo import (NUM_CLASSES, REGISTRY, ModelName, Normalize, ScaleToNative, TargetModel, cache, efficientnet_lite,
                     get_model)
from hgd.zoo.slim import DropBackground

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO / "sample_data" / "images"
SAMPLE_CSV = REPO / "sample_data" / "dev_dataset.csv"
IMAGE_SIZE = 299
MIN_SAMPLE_TOP1 = 0.70

# TF 2.21 tensors under numpy 2.x warn on every weight read (thousands per run, and slow to record).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


class Expected(NamedTuple):
    native_resolution: int
    trainable_params: int
    top_feature_map: tuple[int, int, int]  # at the native resolution
    input_space: dict[float, tuple[float, float, float]]  # pixel value -> the model's input, per RGB channel
    activation_cap: float | None = None  # the guide layer's ReLU cap (ReLU6), if any


def _per_channel(f) -> tuple[float, float, float]:
    return tuple(f(c) for c in range(3))


LITE_INPUT = {127.0: (0.0,) * 3, 255.0: (1.0,) * 3, 0.0: (-127.0 / 128.0,) * 3}  # (x - 127) / 128
SLIM_INPUT = {0.0: (-1.0,) * 3, 127.5: (0.0,) * 3, 255.0: (1.0,) * 3}  # TF-Slim inception_preprocessing: [-1, 1]
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # Keras applications' "caffe" mode, subtracted after RGB -> BGR
CAFFE_INPUT = {0.0: _per_channel(lambda c: -CAFFE_MEAN_BGR[2 - c]), 255.0: _per_channel(lambda c: 255 - CAFFE_MEAN_BGR[2 - c])}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision, on x / 255
TORCH_INPUT = {p: _per_channel(lambda c, p=p: (p / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]) for p in (0.0, 255.0)}

# Keras applications' InceptionV3 / InceptionResNetV2 (ports of the same slim nets, 1000 classes) have
# 23,817,352 / 55,813,192 trainable parameters; slim's checkpoints add the background class (2048 + 1 / 1536 + 1).
TRAINABLE_V3, TRAINABLE_IRV2 = 23_817_352 + 2_049, 55_813_192 + 1_537

# From lite-models.md and the publishers (test_competition_models.py derives the competition models'
# counts). A model missing here fails its tests: add its numbers when registering it.
EXPECTED: dict[str, Expected] = {
    "efficientnet_lite0": Expected(224, 4_652_008, (7, 7, 1280), LITE_INPUT, 6.0),
    "efficientnet_lite1": Expected(240, 5_416_680, (8, 8, 1280), LITE_INPUT, 6.0),
    "efficientnet_lite2": Expected(260, 6_092_072, (9, 9, 1280), LITE_INPUT, 6.0),
    "ens3_adv_inception_v3": Expected(299, TRAINABLE_V3, (8, 8, 2048), SLIM_INPUT),
    "ens_adv_inception_resnet_v2": Expected(299, TRAINABLE_IRV2, (8, 8, 1536), SLIM_INPUT),
    "resnet152": Expected(299, 60_268_520, (10, 10, 2048), CAFFE_INPUT),
    "resnext101_64x4d": Expected(299, 83_455_272, (10, 10, 2048), TORCH_INPUT),
}


def expected(name: ModelName) -> Expected:
    if name.value not in EXPECTED:
        pytest.fail(f"no expected architecture numbers for {name.value}: add them to EXPECTED in {__file__}")
    return EXPECTED[name.value]


def as_numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


# ------------------------------------------------------------------------- fixtures (one build per model)


@pytest.fixture(scope="module", params=list(ModelName), ids=lambda m: m.value)
def name(request) -> ModelName:
    return request.param


@pytest.fixture(scope="module")
def target(name) -> TargetModel:
    return get_model(name)


@pytest.fixture(scope="module")
def weights_cache():
    """``HGD_TEST_WEIGHTS_CACHE`` (a cache filled by ``python -m hgd.cli.fetch``) for this module, if set."""
    with pytest.MonkeyPatch.context() as mp:
        if os.environ.get("HGD_TEST_WEIGHTS_CACHE"):
            mp.setenv(cache.CACHE_ENV, os.environ["HGD_TEST_WEIGHTS_CACHE"])
        yield


@pytest.fixture(scope="module")
def usable(target, weights_cache) -> TargetModel:
    """The target, if its weights are here (else the test is skipped, saying how to fetch them)."""
    if not target.weights_available():
        pytest.skip(f"{target.name.value}: weights not fetched (python -m hgd.cli.fetch {target.name.value})")
    return target


@pytest.fixture(scope="module")
def backbone(usable) -> keras.Model:
    return usable.build_backbone()


@pytest.fixture(scope="module")
def classifier(usable) -> keras.Model:
    return usable.build_classifier(IMAGE_SIZE)


@pytest.fixture(scope="module")
def sample_batch() -> tuple[np.ndarray, np.ndarray]:
    """The committed sample images as a float pixel batch, and their 0-based labels."""
    labels = read_dataset_csv(SAMPLE_CSV)
    assert len(labels) == 22
    pixels = np.stack([images.load_image(SAMPLE_IMAGES / f"{image_id}.png")[0] for image_id in labels])
    return pixels.astype("float32"), np.array([true_label - 1 for true_label, _ in labels.values()])


# ------------------------------------------------------------------------------------------ registry


def test_every_name_is_registered():
    assert set(REGISTRY) == set(ModelName)


def test_get_model_by_enum_and_by_string(name):
    model = get_model(name)
    assert model.name is name
    assert get_model(name.value) is model


@pytest.mark.parametrize("unknown", ["efficientnet_b0", "EFFICIENTNET_LITE0", ""])
def test_unknown_name_lists_known_names(unknown):
    with pytest.raises(ValueError, match="unknown target model") as info:
        get_model(unknown)
    for known in ModelName:
        assert known.value in str(info.value)


def test_resolutions(name, target):
    assert target.native_resolution == expected(name).native_resolution
    assert target.input_resolution in (None, target.native_resolution)


# ------------------------------------------------------------------------------------------ backbone


def test_trainable_parameter_count(name, backbone):
    trainable = sum(int(np.prod(w.shape)) for w in backbone.trainable_weights)
    assert trainable == expected(name).trainable_params


def test_guide_layer_is_the_top_feature_map(name, target, backbone):
    guide = keras.Model(backbone.input, backbone.get_layer(target.guide_layer).output)
    res = target.native_resolution
    x = np.random.default_rng(0).uniform(-1.0, 1.0, (1, res, res, 3)).astype("float32")
    features = as_numpy(guide(x, training=False))
    assert features.shape == (1, *expected(name).top_feature_map)
    assert features.min() >= 0.0  # after the ReLU, not the raw BN output
    cap = expected(name).activation_cap
    assert cap is None or features.max() <= cap
    assert features.max() > 0.0


def test_logits_layer_is_linear_1000_way_output(target, backbone):
    logits = backbone.get_layer(target.logits_layer)
    assert backbone.layers[-1] is logits  # nothing (such as a softmax) after it
    assert tuple(logits.output.shape) == (None, NUM_CLASSES)
    # The last weighted layer is linear (logits, no softmax); after it only reshapes / slim's background drop.
    last = [layer for layer in backbone.layers if layer.weights][-1]
    assert isinstance(last, keras.layers.Dense | keras.layers.Conv2D)
    assert last.activation is keras.activations.linear
    after = backbone.layers[backbone.layers.index(last) + 1:]
    assert all(isinstance(layer, keras.layers.Reshape | DropBackground) for layer in after)
    x = np.random.default_rng(1).uniform(-1.0, 1.0, (1, 64, 64, 3)).astype("float32")
    out = as_numpy(backbone(x, training=False))
    assert out.shape == (1, NUM_CLASSES)
    assert out.min() < 0.0 or not np.isclose(out.sum(), 1.0)


def test_layer_names_unique_and_deterministic(target, backbone, classifier):
    names = [layer.name for layer in backbone.layers]
    assert len(names) == len(set(names))
    outer = [layer.name for layer in classifier.layers]
    assert len(outer) == len(set(outer))
    # The classifier built its own backbone: a second, independent build must name every layer alike.
    (second_build,) = [layer for layer in classifier.layers
                        if isinstance(layer, keras.Model) and not isinstance(layer, keras.Sequential)]
    assert second_build is not backbone
    assert [layer.name for layer in second_build.layers] == names


# ---------------------------------------------------------------------------------------- classifier


def test_classifier_maps_pixels_to_logits(target, backbone, classifier):
    pixels = np.random.default_rng(2).uniform(0.0, 255.0, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    logits = as_numpy(classifier(pixels, training=False))
    assert logits.shape == (2, NUM_CLASSES)
    assert np.isfinite(logits).all()
    # It is exactly backbone(to_input_space(pixels)): the one documented conversion, nothing else.
    direct = as_numpy(backbone(target.to_input_space()(pixels), training=False))
    np.testing.assert_allclose(logits, direct, rtol=1e-4, atol=1e-4)


def test_to_input_space(name, target):
    """The publisher's preprocessing, from its own constants (not the registry's)."""
    side = target.input_resolution or IMAGE_SIZE
    for pixel, value in expected(name).input_space.items():
        out = as_numpy(target.to_input_space()(np.full((1, IMAGE_SIZE, IMAGE_SIZE, 3), pixel, dtype="float32")))
        assert out.shape == (1, side, side, 3)
        np.testing.assert_allclose(out, np.broadcast_to(value, out.shape), atol=1e-4, err_msg=f"pixel {pixel}")


def test_top1_on_sample_images(name, classifier, sample_batch):
    """Proves the weights are loaded right: a scrambled conversion scores about 0%."""
    pixels, labels = sample_batch
    predictions = as_numpy(classifier(pixels, training=False)).argmax(axis=1)
    top1 = float(np.mean(predictions == labels))
    assert top1 >= MIN_SAMPLE_TOP1, f"{name.value}: top-1 {top1:.0%} on the {len(labels)} sample images"


# --------------------------------------------------------------------------------- cache (lite0 only)

LITE0 = efficientnet_lite.VARIANTS[ModelName.LITE0.value]


@pytest.fixture(scope="module")
def lite0_reference(tmp_path_factory) -> tuple[list[np.ndarray], bytes]:
    """Converted straight from the .pth file, no cache involved: (weights, a valid cache file's bytes)."""
    model = efficientnet_lite.build_efficientnet_lite(LITE0)
    efficientnet_lite.convert_weights(LITE0, model)
    path = tmp_path_factory.mktemp("lite0") / "lite0.weights.h5"
    model.save_weights(path)
    return model.get_weights(), path.read_bytes()


@pytest.fixture(scope="module")
def lite0_weights(lite0_reference) -> list[np.ndarray]:
    return lite0_reference[0]


@pytest.fixture
def cache_file(cache_dir) -> pathlib.Path:
    return cache.cached_weights_path(LITE0, pathlib.Path(LITE0.weights_path()), cache_dir)


@pytest.fixture
def no_conversion(monkeypatch):
    """Calling this forbids conversion from then on: a model must come from the cache."""

    def forbid():
        def convert(*_args, **_kwargs):
            raise AssertionError("converted from .pth although a valid cache file exists")

        monkeypatch.setattr(cache, "convert_weights", convert)

    return forbid


def assert_weights_equal(model: keras.Model, reference: list[np.ndarray]) -> None:
    weights = model.get_weights()
    assert len(weights) == len(reference)
    for got, want in zip(weights, reference):
        np.testing.assert_array_equal(got, want)


def test_tests_never_use_the_real_cache():
    if os.environ.get("HGD_TEST_WEIGHTS_CACHE"):
        pytest.skip("HGD_TEST_WEIGHTS_CACHE: this run reads a real cache on purpose")
    default = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "hgd-toolkit"
    assert os.environ.get(cache.CACHE_ENV)
    assert cache.cache_dir() != default


def test_first_run_writes_exactly_one_file(cache_dir, cache_file, lite0_weights):
    assert_weights_equal(cache.load_or_convert(LITE0), lite0_weights)
    assert sorted(cache_dir.iterdir()) == [cache_file]  # no temp leftovers
    assert cache_file.name.endswith(".weights.h5")


def test_second_run_loads_from_cache(cache_dir, cache_file, lite0_weights, no_conversion):
    cache.load_or_convert(LITE0)
    before = cache_file.stat()
    no_conversion()
    assert_weights_equal(cache.load_or_convert(LITE0), lite0_weights)
    after = cache_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(cache_dir.iterdir()) == [cache_file]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_cache_file_is_replaced(cache_dir, cache_file, lite0_reference, no_conversion, caplog, damage):
    lite0_weights, good = lite0_reference
    bad = {"garbage": b"not an HDF5 file\0" * 4096, "truncated": good[: len(good) // 2], "empty": b""}[damage]
    cache_dir.mkdir()
    cache_file.write_bytes(bad)
    with caplog.at_level(logging.WARNING, logger=cache.__name__):
        assert_weights_equal(cache.load_or_convert(LITE0), lite0_weights)
    assert any(r.levelno == logging.WARNING and str(cache_file) in r.getMessage() for r in caplog.records)
    assert sorted(cache_dir.iterdir()) == [cache_file]
    assert cache_file.read_bytes() != bad
    no_conversion()  # the replacement is a valid cache file
    assert_weights_equal(cache.load_or_convert(LITE0), lite0_weights)


def test_concurrent_first_runs(cache_dir, cache_file, lite0_weights, monkeypatch, no_conversion):
    """Both threads convert before either stores (a barrier forces the race); both succeed, one valid file."""
    convert, both_converted = cache.convert_weights, threading.Barrier(2, timeout=120)

    def convert_then_wait(*args, **kwargs):
        convert(*args, **kwargs)
        both_converted.wait()

    monkeypatch.setattr(cache, "convert_weights", convert_then_wait)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        models = [f.result(timeout=300) for f in [pool.submit(cache.load_or_convert, LITE0) for _ in range(2)]]
    for model in models:
        assert_weights_equal(model, lite0_weights)
    assert sorted(cache_dir.iterdir()) == [cache_file]
    no_conversion()
    assert_weights_equal(cache.load_or_convert(LITE0), lite0_weights)


@pytest.mark.parametrize("how", ["read-only-dir", "path-under-a-file"])
def test_unwritable_cache_only_warns(tmp_path, monkeypatch, caplog, lite0_weights, how):
    if how == "read-only-dir":
        directory = tmp_path / "read-only"
        directory.mkdir()
        directory.chmod(0o500)
        try:
            (directory / "probe").touch()
        except PermissionError:
            pass
        else:  # root ignores the mode bits; the other variant covers this case
            (directory / "probe").unlink()
            directory.chmod(0o700)
            pytest.skip("file permissions are not enforced for this user (root)")
    else:
        (tmp_path / "a-file").write_bytes(b"")
        directory = tmp_path / "a-file" / "cache"  # mkdir fails: a parent is a regular file
    monkeypatch.setenv(cache.CACHE_ENV, str(directory))
    try:
        with caplog.at_level(logging.WARNING, logger=cache.__name__):
            model = cache.load_or_convert(LITE0)
    finally:
        if directory.is_dir():
            directory.chmod(0o700)
    assert_weights_equal(model, lite0_weights)
    assert any(r.levelno == logging.WARNING and "cannot cache" in r.getMessage() for r in caplog.records)
    assert not directory.is_dir() or not any(directory.iterdir())


# ------------------------------------------------------------------------ normalized space (denoisers)


@pytest.mark.parametrize("side", [IMAGE_SIZE, 128])
def test_scale_to_native_keeps_the_deployment_scale_for_crops(side):
    layer = ScaleToNative(224)
    out = layer(np.zeros((1, side, side, 3), "float32"))
    expected = round(side * 224 / IMAGE_SIZE)
    assert tuple(out.shape) == (1, expected, expected, 3)
    assert layer.compute_output_shape((None, None, None, 3)) == (None, None, None, 3)


def test_build_from_normalized_is_the_classifier_after_normalization(target, classifier):
    pixels = np.random.default_rng(3).uniform(0.0, 255.0, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")
    head = target.build_from_normalized(guide=True)
    guide, logits = (as_numpy(t) for t in head(as_numpy(target.normalize()(pixels)), training=False))
    np.testing.assert_allclose(logits, as_numpy(classifier(pixels, training=False)), rtol=1e-4, atol=1e-4)
    assert guide.shape[:3] == (2, *expected(target.name).top_feature_map[:2]) and (guide >= 0).all()


def test_normalize_per_channel():
    """ImageNet mean/std models (the competition's ResNets) normalize each RGB channel on its own."""
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    pixels = np.full((1, 2, 2, 3), 200.0, "float32")
    out = as_numpy(Normalize(mean, std)(pixels))
    np.testing.assert_allclose(out[0, 0, 0], [(200.0 - m) / s for m, s in zip(mean, std)], rtol=1e-6)
    assert Normalize.from_config(Normalize(mean, std).get_config()).offset == mean
