"""Tests of the defended model (``hgd.defenses.defended``): one differentiable Keras graph from pixels to logits."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import keras
import numpy as np
import pytest

from hgd.backend import forward_fn, input_gradient
from hgd.defenses.defended import DefenseConfig, DenoiserSpec, Member, build_defended_model, build_member, load_config
from hgd.io.labels import competition_labels
from hgd.io.competition_csv import read_dataset_csv
from hgd.io.images import load_image
from hgd.zoo import ModelName, get_model

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
IMAGE_IDS = ("28b7b933c8028c6e", "4b588649cd835d4c")  # two sample images the lite models classify right


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    """(2, 299, 299, 3) float32 pixels of two sample images and their 0-based true classes."""
    labels = read_dataset_csv(SAMPLE / "dev_dataset.csv")
    images = np.stack([load_image(SAMPLE / "images" / f"{i}.png")[0] for i in IMAGE_IDS]).astype(np.float32)
    return images, np.array([labels[i][0] - 1 for i in IMAGE_IDS])


@pytest.fixture(scope="module")
def members(dunet_weights) -> dict[str, Member]:
    """lite0 undefended (``plain``), behind an identity DUNET (``identity``: ``out_conv`` zeroed, so exactly
    ``x + 0``) and behind a non-trivial DUNET (``small``: small random ``out_conv``)."""
    lite0 = get_model(ModelName.LITE0)
    width = dunet_weights["width"]
    return {"plain": Member(lite0),
            "identity": Member(lite0, DenoiserSpec(dunet_weights["identity"], width=width)),
            "small": Member(lite0, DenoiserSpec(dunet_weights["small"], width=width))}


@pytest.fixture(scope="module")
def ensemble(members) -> keras.Model:
    """plain + small. Not plain + identity: members with equal logits could not tell a mean from either one."""
    return build_defended_model([members["plain"], members["small"]])


@pytest.fixture(scope="module")
def ensemble_logits(ensemble, batch) -> np.ndarray:
    return forward_fn(ensemble)(batch[0])


@pytest.fixture(scope="module")
def member_models(members) -> dict[str, keras.Model]:
    return {name: build_member(member) for name, member in members.items()}


@pytest.fixture(scope="module")
def member_logits(member_models, batch) -> dict[str, np.ndarray]:
    return {name: forward_fn(model)(batch[0]) for name, model in member_models.items()}


# ------------------------------------------------------------------------------------------ the ensemble


def test_ensemble_logits_shape(ensemble_logits):
    assert ensemble_logits.shape == (2, 1000)
    assert ensemble_logits.dtype == np.float32
    assert np.all(np.isfinite(ensemble_logits))


def test_ensemble_is_the_mean_of_its_members(ensemble_logits, member_logits):
    plain, small = member_logits["plain"], member_logits["small"]
    assert plain.shape == small.shape == (2, 1000)
    assert np.abs(small - plain).max() > 1e-2  # 100x the tolerance: the mean is not either member's logits
    np.testing.assert_allclose(ensemble_logits, (plain + small) / 2, atol=1e-4, rtol=0)


def test_identity_denoiser_changes_nothing(member_logits):
    np.testing.assert_allclose(member_logits["identity"], member_logits["plain"], atol=1e-4, rtol=0)


def test_ensemble_classifies_the_sample_images(ensemble_logits, batch):
    np.testing.assert_array_equal(np.argmax(ensemble_logits, axis=-1), batch[1])


def test_denoisers_are_in_the_graph(member_models, ensemble):
    """A member with a denoiser contains the DUNET with the loaded weights; one without does not."""
    def layer_names(model):
        return {layer.name for layer in model.layers}

    plain = member_models["plain"]
    assert "dunet" not in layer_names(plain) and plain.name.endswith("_undefended")
    for name, kernel_is_zero in (("identity", True), ("small", False)):
        model = member_models[name]
        assert "dunet" in layer_names(model) and model.name.endswith("_hgd")
        kernel = model.get_layer("dunet").get_layer("out_conv").get_weights()[0]
        assert np.all(kernel == 0) == kernel_is_zero and np.abs(kernel).max() < 1  # loaded, not a fresh init
    inner = [layer for layer in ensemble.layers if isinstance(layer, keras.Model)]
    assert ["dunet" in layer_names(model) for model in inner] == [False, True]


# ------------------------------------------------------------------------------------- differentiability


def test_input_gradient_through_the_denoisers(ensemble, batch):
    images, classes = batch
    onehot = keras.ops.convert_to_tensor(np.eye(1000, dtype=np.float32)[classes])

    def loss(x):
        return keras.ops.sum(ensemble(x, training=False) * onehot)

    value, grad = input_gradient(loss, images)
    assert grad.shape == images.shape and grad.dtype == np.float32
    assert np.all(np.isfinite(grad)) and np.isfinite(value)
    assert np.abs(grad).max() > 0
    assert np.count_nonzero(grad) > grad.size // 2  # every pixel reaches the logits

    # Central difference along the gradient: (f(x + h d) - f(x - h d)) / 2h ~ <g, d>. With d scaled to a
    # largest component of 1, the step moves no pixel by more than h (float32 rounding stays ~0.1%).
    direction = grad / np.abs(grad).max()
    h = 1e-2  # pixel units
    f = forward_fn(ensemble)
    offsets = [f(images + s * h * direction) for s in (1, -1)]
    plus, minus = (float(np.sum(o[np.arange(len(classes)), classes], dtype=np.float64)) for o in offsets)
    numeric = (plus - minus) / (2 * h)
    analytic = float(np.sum(grad.astype(np.float64) * direction))
    assert analytic > 0
    assert abs(numeric - analytic) < 0.1 * analytic, (numeric, analytic)


# ------------------------------------------------------------------------------------------------ labels


def test_competition_labels_are_one_based():
    logits = np.zeros((3, 1000), np.float32)
    logits[0, 0] = logits[1, 999] = logits[2, 437] = 1.0
    np.testing.assert_array_equal(competition_labels(logits), [1, 1000, 438])
    assert competition_labels(logits[1]) == 1000


# ------------------------------------------------------------------------------------------------ config


def _write(path: pathlib.Path, config: dict) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


def test_load_config_resolves_denoiser_paths_against_the_config_folder(tmp_path, monkeypatch):
    config = {"members": [{"model": "efficientnet_lite0"},
                          {"model": "efficientnet_lite1",
                           "denoiser": {"weights": "weights/a.weights.h5", "width": 0.5, "lateral": False}}],
              "batch_size": 7}
    path = _write(tmp_path / "submission" / "config.json", config)
    (tmp_path / "submission" / "weights").mkdir()
    (tmp_path / "submission" / "weights" / "a.weights.h5").write_bytes(b"")
    monkeypatch.chdir(tmp_path / "submission" / "weights")  # elsewhere: the cwd must not matter
    loaded = load_config(path)
    assert loaded.batch_size == 7
    plain, hgd = loaded.members
    assert plain.target.name is ModelName.LITE0 and plain.denoiser is None
    assert hgd.target.name is ModelName.LITE1
    assert hgd.denoiser == DenoiserSpec(tmp_path / "submission" / "weights" / "a.weights.h5", 0.5, False)
    assert loaded.missing_weights() == []

    # A relative config path: the weights resolve against its folder, not against the cwd.
    monkeypatch.chdir(tmp_path)
    relative = load_config(pathlib.Path("submission/config.json"))
    assert relative.members[1].denoiser.weights.resolve() == (tmp_path / "submission/weights/a.weights.h5")
    assert relative.missing_weights() == []
    assert relative.batch_size == 7


def test_load_config_defaults(tmp_path):
    path = _write(tmp_path / "c.json", {"members": [{"model": "efficientnet_lite2", "denoiser": {"weights": "w.h5"}}]})
    loaded = load_config(path)
    assert loaded.batch_size == 32
    assert loaded.members[0].denoiser == DenoiserSpec(tmp_path / "w.h5", 1.0, True)


@pytest.mark.parametrize("config", [{"members": []}, {}, {"batch_size": 4}], ids=["empty", "absent", "no-members"])
def test_load_config_needs_members(tmp_path, config):
    with pytest.raises(ValueError, match="members"):
        load_config(_write(tmp_path / "c.json", config))


_LITE0 = {"model": "efficientnet_lite0"}


@pytest.mark.parametrize("config, quoted", [
    ({"denoisr": {"weights": "w.h5", "width": 0.5}, "members": [_LITE0]}, "denoisr"),  # would run undefended
    ({"members": [{"model": "efficientnet_lite0", "denosier": {"weights": "w.h5"}}]}, "denosier"),
    ({"denoiser": {"weights": "w.h5", "widht": 0.5}, "members": [_LITE0]}, "widht"),
    ({"members": [_LITE0], "batchsize": 8}, "batchsize"),
    ({"members": [_LITE0], "batch_size": "8"}, "batch_size"),
    ({"members": [_LITE0], "batch_size": 0}, "batch_size"),
    ({"denoiser": {"weights": "w.h5", "width": "0.5"}, "members": [_LITE0]}, "width"),
    ({"denoiser": {"weights": "w.h5", "lateral": "no"}, "members": [_LITE0]}, "lateral"),
    ({"denoiser": {"width": 0.5}, "members": [_LITE0]}, "weights"),
    ({"members": [{"denoiser": {"weights": "w.h5"}}]}, "model"),
    ({"members": ["efficientnet_lite0"]}, "JSON object"),
], ids=["denoiser-misspelled", "member-key", "denoiser-key", "top-key", "batch-type", "batch-zero", "width-type",
        "lateral-type", "no-weights", "no-model", "member-not-object"])
def test_load_config_refuses_unknown_keys_and_wrong_types_quoting_key_and_file(tmp_path, config, quoted):
    path = _write(tmp_path / "c.json", config)
    with pytest.raises(ValueError, match=quoted) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_load_config_refuses_broken_json_naming_the_file(tmp_path):
    (tmp_path / "c.json").write_text('{"members": [')
    with pytest.raises(ValueError, match="not valid JSON") as info:
        load_config(tmp_path / "c.json")
    assert str(tmp_path / "c.json") in str(info.value)


def test_load_config_unknown_model_lists_known_ones(tmp_path):
    path = _write(tmp_path / "c.json", {"members": [{"model": "efficientnet_lite0"}, {"model": "resnet50"}]})
    with pytest.raises(ValueError, match="resnet50") as info:
        load_config(path)
    for name in ModelName:
        assert name.value in str(info.value)


def test_missing_weights_lists_exactly_the_missing_files(tmp_path):
    (tmp_path / "present.weights.h5").write_bytes(b"x")
    (tmp_path / "a_folder.weights.h5").mkdir()  # not a file: counts as missing
    config = {"members": [{"model": "efficientnet_lite0"},
                          {"model": "efficientnet_lite0", "denoiser": {"weights": "present.weights.h5"}},
                          {"model": "efficientnet_lite1", "denoiser": {"weights": "absent.weights.h5"}},
                          {"model": "efficientnet_lite2", "denoiser": {"weights": "a_folder.weights.h5"}}]}
    loaded = load_config(_write(tmp_path / "c.json", config))
    assert loaded.missing_weights() == [tmp_path / "absent.weights.h5", tmp_path / "a_folder.weights.h5"]
    (tmp_path / "absent.weights.h5").write_bytes(b"x")
    assert loaded.missing_weights() == [tmp_path / "a_folder.weights.h5"]


def test_one_target_model_may_appear_twice(members, batch, member_logits) -> None:
    """Two denoisers in front of the same classifier (an experiment's ensemble) build and average."""
    twice = build_defended_model([members["identity"], members["small"]])
    expected = (member_logits["identity"] + member_logits["small"]) / 2
    np.testing.assert_allclose(forward_fn(twice)(batch[0]), expected, atol=1e-4)


# ----------------------------------------------------------------------------------- shared denoiser


def test_shared_denoiser_runs_once_for_every_member(dunet_weights, batch, member_logits):
    """One denoiser in front of the ensemble = each member behind that same denoiser, averaged."""
    small = DenoiserSpec(dunet_weights["small"], width=dunet_weights["width"])
    lite0 = get_model(ModelName.LITE0)
    shared = build_defended_model([Member(lite0), Member(get_model(ModelName.LITE1))], shared_denoiser=small)
    assert sum(layer.name.startswith("dunet") for layer in shared.layers) == 1
    lite1_behind_small = forward_fn(build_member(Member(get_model(ModelName.LITE1), small)))(batch[0])
    expected = (member_logits["small"] + lite1_behind_small) / 2
    np.testing.assert_allclose(forward_fn(shared)(batch[0]), expected, atol=1e-4)


def test_load_config_with_a_shared_denoiser(tmp_path):
    config = {"denoiser": {"weights": "w/fgd.weights.h5", "width": 0.5},
              "members": [{"model": "efficientnet_lite0"}, {"model": "efficientnet_lite2"}]}
    loaded = load_config(_write(tmp_path / "c.json", config))
    assert loaded.shared_denoiser == DenoiserSpec(tmp_path / "w/fgd.weights.h5", 0.5, True)
    assert loaded.missing_weights() == [tmp_path / "w/fgd.weights.h5"]


def test_shared_and_per_member_denoisers_do_not_mix(tmp_path):
    config = {"denoiser": {"weights": "a.h5"},
              "members": [{"model": "efficientnet_lite0", "denoiser": {"weights": "b.h5"}}]}
    with pytest.raises(ValueError, match="not both"):
        load_config(_write(tmp_path / "c.json", config))


def test_a_shared_denoiser_needs_one_normalization(tmp_path):
    lite0 = get_model(ModelName.LITE0)
    other = dataclasses.replace(get_model(ModelName.LITE1), offset=0.0, scale=255.0)
    with pytest.raises(ValueError, match="one normalization"):
        DefenseConfig(members=(Member(lite0), Member(other)), shared_denoiser=DenoiserSpec(tmp_path / "w.h5"))
