"""Input transformations (``hgd.defenses.transforms``) and defenses that apply one (``baselines/jpeg``, ``baselines/bit_depth``).

The transforms are checked against independent computations (Pillow's own file round trip for
JPEG, the feature-squeezing formula in float64 for bit depth); defenses with a transform run
in-process on EfficientNet-Lite0 only (the shipped baselines use the Lite0/1/2 ensemble: their
configs are checked, not run).
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from hgd.defenses import transforms
from hgd.io.competition_csv import read_predictions_csv
from hgd.io.images import load_image
from hgd.defenses.transforms import BitDepthReduction, GaussianNoise, JPEGCompression, TransformName

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO / "sample_data" / "images"
BASELINES = {"jpeg": JPEGCompression(quality=75), "bit_depth": BitDepthReduction(bits=4)}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Three sample images (299x299) and one random-noise image."""
    paths = sorted(SAMPLE_IMAGES.glob("*.png"))[:3]
    natural = [load_image(p)[0] for p in paths]
    noise = np.random.default_rng(0).integers(0, 256, (299, 299, 3), dtype=np.uint8)
    return np.stack([*natural, noise])


# ------------------------------------------------------------------------------------------------- JPEG


def test_jpeg_is_pillows_file_round_trip(images, tmp_path):
    out = JPEGCompression(quality=75)(images)
    assert out.dtype == np.uint8 and out.shape == images.shape
    for i, image in enumerate(images):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(image).save(path, quality=75, subsampling="4:2:0")  # what a user would write
        with Image.open(path) as im:
            assert im.format == "JPEG"
            np.testing.assert_array_equal(out[i], np.asarray(im.convert("RGB")))


def test_jpeg_is_deterministic_and_lossy(images):
    jpeg = JPEGCompression(quality=75)
    first = jpeg(images)
    np.testing.assert_array_equal(first, jpeg(images))
    np.testing.assert_array_equal(first[1:2], jpeg(images[1:2]))  # per image: the batch does not matter
    difference = np.abs(first.astype(int) - images)
    assert 0 < difference[:3].mean() < 8  # natural images: changed, but close
    assert difference[3].mean() > difference[:3].mean()  # noise is what JPEG throws away
    low = np.abs(JPEGCompression(quality=10)(images).astype(int) - images)[:3].mean()
    assert low > difference[:3].mean()  # lower quality, larger change


def test_jpeg_encode_is_a_baseline_jpeg_at_that_quality(images):
    data = JPEGCompression(quality=75).encode(images[0])
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and not im.info.get("progressive")


def test_constant_image_survives_jpeg():
    flat = np.full((1, 64, 64, 3), (120, 40, 200), np.uint8)
    assert np.abs(JPEGCompression(quality=75)(flat).astype(int) - flat).max() <= 2


# -------------------------------------------------------------------------------------------- bit depth


@pytest.mark.parametrize("bits", range(1, 9))
def test_bit_depth_matches_the_feature_squeezing_formula(bits):
    values = np.arange(256, dtype=np.uint8)
    out = BitDepthReduction(bits=bits)(np.broadcast_to(values[None, :, None, None], (1, 256, 1, 3)).copy())
    levels = 2**bits - 1
    squeezed = np.rint(values / 255.0 * levels) / levels  # Xu et al.: round(x * L) / L with x in [0, 1]
    np.testing.assert_array_equal(out[0, :, 0, 0], np.rint(squeezed * 255).astype(np.uint8))
    assert len(np.unique(out)) == 2**bits == len(BitDepthReduction(bits=bits).levels())
    assert np.abs(out[0, :, 0, 0].astype(int) - values).max() <= int(np.ceil(255 / levels / 2))


def test_bit_depth_4_levels_are_exact_multiples_of_17_and_idempotent(images):
    four = BitDepthReduction(bits=4)
    out = four(images)
    np.testing.assert_array_equal(four.levels(), np.arange(16) * 17)
    assert np.all(out % 17 == 0)
    np.testing.assert_array_equal(four(out), out)
    np.testing.assert_array_equal(BitDepthReduction(bits=8)(images), images)


# ------------------------------------------------------------------------------------------ random noise


def test_gaussian_noise_is_random_seeded_and_in_range(images):
    a, b = GaussianNoise(sigma=4, seed=1), GaussianNoise(sigma=4, seed=1)
    first = a(images)
    np.testing.assert_array_equal(first, b(images))
    assert not np.array_equal(first, a(images))  # the generator moves on
    delta = first.astype(int) - images
    middle = (images > 20) & (images < 235)
    assert abs(delta[middle].mean()) < 0.1 and 3.5 < delta[middle].std() < 4.5
    assert GaussianNoise.random and not JPEGCompression.random and not BitDepthReduction.random


def test_no_transform_is_differentiable():
    assert not any(cls.differentiable for cls in (JPEGCompression, BitDepthReduction, GaussianNoise))


# --------------------------------------------------------------------------------------- the vocabulary


@pytest.mark.parametrize("transform", [JPEGCompression(quality=30), BitDepthReduction(bits=3),
                                       GaussianNoise(sigma=2.5, seed=4)], ids=repr)
def test_config_round_trip(transform):
    config = transform.to_config()
    assert config["name"] in {t.value for t in TransformName}
    assert transforms.from_config(json.loads(json.dumps(config))) == transform
    assert repr(transform).startswith(type(transform).__name__ + "(")


@pytest.mark.parametrize("entry, message", [
    ({"name": "blur"}, "must be one of"),
    ({"quality": 75}, "name"),
    ("jpeg", "name"),
    ({"name": "jpeg", "quality": 0}, "quality"),
    ({"name": "jpeg", "quality": 75.0}, "quality"),
    ({"name": "jpeg", "qualty": 75}, "takes"),
    ({"name": "bit_depth", "bits": 9}, "bits"),
    ({"name": "gaussian_noise", "sigma": 0}, "sigma"),
])
def test_bad_transform_configs_are_refused(entry, message):
    with pytest.raises(ValueError, match=message):
        transforms.from_config(entry)


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        BitDepthReduction(bits=4)(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        JPEGCompression()(np.zeros((8, 8, 3), np.uint8))
    assert JPEGCompression()(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, 8, 8, 3)


# ---------------------------------------------------------------------------------------------- defenses


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_submissions(name):
    from hgd.defenses.defended import load_config

    folder = REPO / "baselines" / name
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata == json.loads((REPO / "baselines" / "undefended" / "metadata.json").read_text())
    entry = folder / metadata["entry_point"]
    assert os.access(entry, os.X_OK)
    assert entry.read_text() == (REPO / "baselines" / "undefended" / "run_defense.sh").read_text()
    config = load_config(folder / "config.json")
    undefended = load_config(REPO / "baselines" / "undefended" / "config.json")
    assert config.transform == BASELINES[name]
    assert [m.target.name for m in config.members] == [m.target.name for m in undefended.members]
    assert not config.denoisers()
    assert json.loads((folder / "config.json").read_text())["notes"]


def test_existing_configs_have_no_transform():
    from hgd.defenses.defended import load_config

    for folder in (REPO / "defense", REPO / "baselines" / "undefended"):
        config = load_config(folder / "config.json")
        assert config.transform is None
        images = np.zeros((1, 4, 4, 3), np.uint8)
        assert config.preprocess(images) is images


def test_bad_transform_in_a_defense_config_names_the_file(tmp_path):
    from hgd.defenses.defended import load_config

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"transform": {"name": "jpeg", "quality": 200},
                                "members": [{"model": "efficientnet_lite0"}]}))
    with pytest.raises(ValueError, match=r"config\.json.*quality"):
        load_config(path)


@pytest.fixture(scope="module")
def four_images(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("four-images")
    for path in sorted(SAMPLE_IMAGES.glob("*.png"))[:4]:
        shutil.copyfile(path, folder / path.name)
    return folder


def test_the_transform_is_in_the_defense_decision_path(tmp_path, four_images):
    """Lite0 behind 8 bits (the identity) labels as Lite0 alone; behind noise that drowns the image, differently."""
    from hgd.defenses.submission import classify_folder

    def classify(name: str, transform: dict | None) -> dict[str, int]:
        config = {"members": [{"model": "efficientnet_lite0"}], "batch_size": 4}
        if transform:
            config["transform"] = transform
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
        assert classify_folder(tmp_path / f"{name}.json", four_images, tmp_path / f"{name}.csv") == 4
        return read_predictions_csv(tmp_path / f"{name}.csv")

    plain = classify("plain", None)
    assert classify("eight_bits", {"name": "bit_depth", "bits": 8}) == plain
    drowned = classify("drowned", {"name": "gaussian_noise", "sigma": 150.0, "seed": 0})
    assert sum(drowned[k] != plain[k] for k in plain) >= 3, (plain, drowned)
