"""The four-model competition defense (``defense/profiles/competition4.json``) end to end, on stand-ins.

The real classifiers' weights can only be fetched over the network (``test_fetch.py`` covers that
path with files written in their publishers' formats), so here ``HGD_TINY_STANDINS=1`` replaces each
by a tiny random-weight network with its contract (:mod:`hgd.zoo.standins`): the profile then runs
exactly as a user's GPU run would, through ``run_defense.sh`` in a fresh process, with the
denoisers narrowed to width 0.25 in the test's copy of the profile (random weights) to keep it cheap.
"""

from __future__ import annotations

import json
import logging
import pathlib
import shutil

import keras
import numpy as np
import pytest

from hgd.defenses.defended import MissingWeights, load_config
from hgd.io.competition_csv import read_predictions_csv
from hgd.defenses.packaging import package_defense
from hgd.train.recipe import load_recipe, train_defense
from hgd.zoo import COMPETITION_ENSEMBLE, ModelName, get_model, standins
from submission_process import Launched

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFENSE = REPO / "defense"
PROFILE = DEFENSE / "profiles" / "competition4.json"
SAMPLE_IMAGES = REPO / "sample_data" / "images"

# The real guide maps at 299x299 (test_competition_models.py checks them on the real architectures).
GUIDE_SHAPES = {
    ModelName.ENS3_ADV_INCEPTION_V3: (8, 8, 2048),
    ModelName.ENS_ADV_INCEPTION_RESNET_V2: (8, 8, 1536),
    ModelName.RESNET152: (10, 10, 2048),
    ModelName.RESNEXT101_64X4D: (10, 10, 2048),
}


# ------------------------------------------------------------------------------ stand-ins


@pytest.mark.parametrize("name", COMPETITION_ENSEMBLE, ids=lambda m: m.value)
def test_standin_keeps_the_models_contract(name, monkeypatch, caplog):
    target = get_model(name)
    monkeypatch.delenv(standins.STANDINS_ENV, raising=False)
    assert not target.weights_available()  # nothing fetched in the tests' cache
    monkeypatch.setenv(standins.STANDINS_ENV, "1")
    assert target.weights_available()
    with caplog.at_level(logging.WARNING, logger=standins.__name__):
        head = target.build_from_normalized(guide=True)  # what FGD training and the defense build on
    assert any(name.value in r.getMessage() and "meaningless" in r.getMessage() for r in caplog.records)
    x = np.random.default_rng(0).normal(size=(2, 299, 299, 3)).astype("float32")
    guide, logits = (keras.ops.convert_to_numpy(t) for t in head(x, training=False))
    assert guide.shape == (2, *GUIDE_SHAPES[name]) and (guide >= 0).all() and guide.max() > 0
    assert logits.shape == (2, 1000) and np.isfinite(logits).all() and logits.std() > 0
    again = target.build_backbone()  # every process sees the same stand-in
    for a, b in zip(head.layers[-1].get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_standins_only_when_asked(monkeypatch):
    for value in ("", "0"):
        monkeypatch.setenv(standins.STANDINS_ENV, value)
        assert not standins.standins_enabled()
    assert get_model(ModelName.LITE0).weights_available()  # the Lite models are never stood in for


# ------------------------------------------------------------------------------ the profile


def test_profile_is_the_four_model_submission():
    config = load_config(PROFILE)
    assert tuple(m.target.name for m in config.members) == COMPETITION_ENSEMBLE
    assert config.batch_size == 8 and config.shared_denoiser is None
    for member in config.members:
        spec = member.denoiser
        assert (spec.width, spec.lateral) == (1.0, True)  # the paper's full-width DUNET
        assert spec.weights.resolve() == DEFENSE / "weights" / f"fgd_{member.target.name.value}.weights.h5"


@pytest.fixture(scope="module")
def submission_copy(tmp_path_factory, dunet_weights) -> pathlib.Path:
    """``defense/`` as shipped, but the profile's denoisers at width 0.25 with random weights."""
    copy = tmp_path_factory.mktemp("submission") / "defense"
    (copy / "profiles").mkdir(parents=True)
    (copy / "weights").mkdir()
    for name in ("run_defense.sh", "metadata.json", "config.json"):
        shutil.copy2(DEFENSE / name, copy / name)
    profile = json.loads(PROFILE.read_text())
    for member in profile["members"]:
        member["denoiser"]["width"] = dunet_weights["width"]
        shutil.copyfile(dunet_weights["small"], copy / "profiles" / member["denoiser"]["weights"])
    (copy / "profiles" / PROFILE.name).write_text(json.dumps(profile))
    return copy


@pytest.fixture(scope="module")
def two_images(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("two-images")
    for path in sorted(SAMPLE_IMAGES.glob("*.png"))[:2]:
        shutil.copy(path, folder)
    return folder


def test_profile_runs_end_to_end_on_standins(submission_copy, two_images, tmp_path):
    """``HGD_DEFENSE_PROFILE=competition4 ./run_defense.sh IN OUT``: four members, each denoised, one label per
    image. Without stand-ins and without fetched weights the same run stops with the fetch command."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HGD_DEFENSE_PROFILE", "competition4")
        mp.setenv(standins.STANDINS_ENV, "1")
        run = Launched(tmp_path / "standins", submission_copy, two_images, tmp_path / "standins.csv")
        mp.delenv(standins.STANDINS_ENV)
        unfetched = Launched(tmp_path / "unfetched", submission_copy, two_images, tmp_path / "unfetched.csv")
        mp.setenv("HGD_DEFENSE_PROFILE", "no_such_profile")
        unknown = Launched(tmp_path / "unknown", submission_copy, two_images, tmp_path / "unknown.csv")
    try:
        result = run.result()
        assert result.returncode == 0, result.stderr[-3000:]
        predictions = read_predictions_csv(tmp_path / "standins.csv")
        assert sorted(predictions) == sorted(p.stem for p in two_images.iterdir())
        assert all(1 <= label <= 1000 for label in predictions.values())
        for name in COMPETITION_ENSEMBLE:
            assert f"{name.value} is a tiny random-weight stand-in" in result.stderr

        failed = unfetched.result()
        assert failed.returncode == 2
        assert "python -m hgd.cli.fetch ens3_adv_inception_v3" in failed.stderr

        refused = unknown.result()
        assert refused.returncode == 2 and "known: competition4" in refused.stderr
    finally:
        for launched in (run, unfetched, unknown):
            launched.stop()


# ------------------------------------------------------------------------------ attacks


def _attack_submission(folder: pathlib.Path, config: dict) -> pathlib.Path:
    folder.mkdir()
    for name in ("run_attack.sh", "metadata.json"):
        shutil.copy2(REPO / "attacks" / "adaptive_pgd" / name, folder / name)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.slow
def test_attacks_on_the_four_models_on_standins(submission_copy, two_images, tmp_path):
    """Attack submissions select the competition models by name: an oblivious I-FGSM on the four
    classifiers, and a defense-aware PGD through the whole four-model profile (denoisers included)."""
    members = [m.value for m in COMPETITION_ENSEMBLE]
    oblivious = _attack_submission(tmp_path / "ifgsm", {"attack": "ifgsm", "steps": 2, "model": {"members": members}})
    aware = _attack_submission(tmp_path / "adaptive", {
        "attack": "pgd", "steps": 2, "alpha": 4.0, "loss": "margin", "restarts": 1, "seed": 0,
        "model": {"defense_config": str(submission_copy / "profiles" / PROFILE.name)}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(standins.STANDINS_ENV, "1")
        runs = {name: Launched(tmp_path / f"{name}-log", folder, two_images, tmp_path / f"{name}-out", 16)
                for name, folder in (("ifgsm", oblivious), ("adaptive", aware))}
    try:
        for name, run in runs.items():
            result = run.result()
            assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
            for clean_path in sorted(two_images.iterdir()):
                clean = np.asarray(keras.utils.load_img(clean_path), dtype=int)
                adversarial = np.asarray(keras.utils.load_img(tmp_path / f"{name}-out" / clean_path.name), dtype=int)
                distance = np.abs(adversarial - clean).max()
                assert 0 < distance <= 16, f"{name} moved {clean_path.name} by {distance}"
    finally:
        for run in runs.values():
            run.stop()


# ------------------------------------------------------------------------------ packaging


@pytest.mark.slow
def test_packaged_profile_runs_without_the_environment(submission_copy, two_images, tmp_path):
    """``python -m hgd.cli.package defense/profiles/competition4.json OUT``: a folder whose run_defense.sh runs
    the four-model ensemble with no HGD_DEFENSE_PROFILE, carrying exactly the profile's weights."""
    out = tmp_path / "competition4"
    package_defense(submission_copy / "profiles" / PROFILE.name, out)
    assert sorted(p.name for p in (out / "weights").iterdir()) == sorted(
        f"fgd_{m.value}.weights.h5" for m in COMPETITION_ENSEMBLE)
    packaged = load_config(out / "config.json")
    assert [m.target.name for m in packaged.members] == list(COMPETITION_ENSEMBLE)
    assert "training" in json.loads(PROFILE.read_text())
    assert not {"training", "notes"} & set(json.loads((out / "config.json").read_text()))  # they stay at home
    for member in packaged.members:
        original = submission_copy / "weights" / member.denoiser.weights.name
        assert member.denoiser.weights.read_bytes() == original.read_bytes() and member.denoiser.width == 0.25
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(standins.STANDINS_ENV, "1")
        mp.delenv("HGD_DEFENSE_PROFILE", raising=False)
        run = Launched(tmp_path / "run", out, two_images, tmp_path / "out.csv")
    try:
        result = run.result()
        assert result.returncode == 0, result.stderr[-3000:]
        assert sorted(read_predictions_csv(tmp_path / "out.csv")) == sorted(p.stem for p in two_images.iterdir())
        assert "ens3_adv_inception_v3 is a tiny random-weight stand-in" in result.stderr
    finally:
        run.stop()
    with pytest.raises(ValueError, match="not empty"):
        package_defense(submission_copy / "profiles" / PROFILE.name, out)


def test_packaging_refuses_missing_weights(tmp_path):
    with pytest.raises(MissingWeights, match="names trained denoiser weights that do not exist"):
        package_defense(PROFILE, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ training recipe


def test_profile_recipe_trains_one_fgd_per_model():
    recipe = load_recipe(PROFILE)
    assert recipe.pairs.attack_models == tuple(m.value for m in COMPETITION_ENSEMBLE)
    assert [job.config.models for job in recipe.jobs] == [(m.value,) for m in COMPETITION_ENSEMBLE]
    for job, member in zip(recipe.jobs, load_config(PROFILE).members):
        assert job.spec == member.denoiser and job.name == f"fgd_{member.target.name.value}"
        assert (job.config.guidance.value, job.config.width, job.config.crop, job.config.batch_size) == (
            "fgd", 1.0, None, 32)


@pytest.mark.slow
def test_profile_recipe_runs_end_to_end_on_standins(small_source, tmp_path, monkeypatch):
    """``python -m hgd.cli.train defense``: Table 1 pairs on the four models, four denoisers trained, installed
    where the profile reads them, and the profile then classifies with them (stand-ins, one tiny step each)."""
    monkeypatch.setenv(standins.STANDINS_ENV, "1")
    profile = json.loads(PROFILE.read_text())
    for member in profile["members"]:
        member["denoiser"]["width"] = 0.25
    profile["training"].update(crop=64, batch_size=2, steps_per_epoch=1, max_epochs=1, validation_pairs=2)
    config = tmp_path / "defense" / "profiles" / "competition4.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps(profile))

    trained = train_defense(config, small_source, tmp_path / "work", progress=False)

    assert [job.name for job, _ in trained] == [f"fgd_{m.value}" for m in COMPETITION_ENSEMBLE]
    assert all(state.epoch == 1 and np.isfinite(state.best_val_loss) for _, state in trained)
    pairs = sorted((tmp_path / "work").glob("pairs_*"))
    assert [p.name for p in pairs] == [f"pairs_{'+'.join(m.value for m in COMPETITION_ENSEMBLE)}"]
    defense = load_config(config)
    assert defense.missing_weights() == []
    images = np.stack([np.asarray(keras.utils.load_img(p)) for p in sorted(SAMPLE_IMAGES.glob("*.png"))[:2]])
    logits = keras.ops.convert_to_numpy(defense.build()(images.astype("float32")))
    assert logits.shape == (2, 1000) and np.isfinite(logits).all()


@pytest.mark.slow
def test_recipe_warm_start_trains_its_own_run_first_and_starts_the_recipe_from_it(small_source, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setenv(standins.STANDINS_ENV, "1")
    profile = json.loads(PROFILE.read_text())
    profile["members"] = profile["members"][:1]
    profile["members"][0]["denoiser"]["width"] = 0.25
    profile["training"].update(crop=64, batch_size=2, steps_per_epoch=1, max_epochs=1, validation_pairs=2,
                               attack_models=[profile["members"][0]["model"]], warm_start={"guidance": "pgd"})
    config = tmp_path / "defense" / "profiles" / "competition4.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps(profile))

    ((job, state),) = train_defense(config, small_source, tmp_path / "work", progress=False)

    runs = tmp_path / "work" / "runs"
    start = json.loads((runs / f"{job.name}_warm_start" / "config.json").read_text())
    recipe = json.loads((runs / job.name / "config.json").read_text())
    assert (start["guidance"], start["init_weights"]) == ("pgd", None)
    assert recipe["guidance"] == "fgd"
    assert recipe["init_weights"] == str(runs / f"{job.name}_warm_start" / "best.weights.h5")
    assert state.epoch == 1 and load_config(config).missing_weights() == []


@pytest.mark.slow
def test_recipe_fine_tune_goes_on_from_the_recipe_and_is_what_gets_installed(small_source, tmp_path, monkeypatch):
    """``fine_tune``: a third run from the recipe's best checkpoint with its options replacing the
    recipe's; its best checkpoint, not the recipe's, is the installed denoiser."""
    monkeypatch.setenv(standins.STANDINS_ENV, "1")
    profile = json.loads(PROFILE.read_text())
    profile["members"] = profile["members"][:1]
    profile["members"][0]["denoiser"]["width"] = 0.25
    profile["training"].update(crop=64, batch_size=2, steps_per_epoch=1, max_epochs=1, validation_pairs=2,
                               attack_models=[profile["members"][0]["model"]], warm_start={"guidance": "pgd"},
                               fine_tune={"crop": 96, "learning_rate": 1e-4})
    config = tmp_path / "defense" / "profiles" / "competition4.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps(profile))

    ((job, state),) = train_defense(config, small_source, tmp_path / "work", progress=False)

    runs = tmp_path / "work" / "runs"
    assert [name for name, _ in job.stages()] == [f"{job.name}_warm_start", job.name, f"{job.name}_fine_tune"]
    recipe = json.loads((runs / job.name / "config.json").read_text())
    tune = json.loads((runs / f"{job.name}_fine_tune" / "config.json").read_text())
    assert (recipe["crop"], tune["crop"], tune["learning_rate"], tune["guidance"]) == (64, 96, 1e-4, "fgd")
    assert tune["init_weights"] == str(runs / job.name / "best.weights.h5")
    installed = load_config(config).shared_denoiser or load_config(config).members[0].denoiser
    assert installed.weights.read_bytes() == (runs / f"{job.name}_fine_tune" / "best.weights.h5").read_bytes()
    assert state.epoch == 1


def test_recipe_refuses_a_warm_start_beside_init_weights(tmp_path):
    profile = json.loads(PROFILE.read_text())
    profile["training"].update(warm_start={"guidance": "pgd"}, init_weights="start.weights.h5")
    config = tmp_path / "competition4.json"
    config.write_text(json.dumps(profile))
    with pytest.raises(ValueError, match="'warm_start' and 'init_weights' both give the start"):
        load_recipe(config)
    profile["training"] = {"warm_start": {"guidance": "pgd", "models": ["efficientnet_lite0"]}}
    config.write_text(json.dumps(profile))
    with pytest.raises(ValueError, match=r"unknown 'warm_start' keys \['models'\]"):
        load_recipe(config)
    profile["training"] = {"fine_tune": {"init_weights": "start.weights.h5"}}
    config.write_text(json.dumps(profile))
    with pytest.raises(ValueError, match=r"unknown 'fine_tune' keys \['init_weights'\]"):
        load_recipe(config)


def test_recipe_refuses_unknown_training_keys(tmp_path):
    profile = json.loads(PROFILE.read_text())
    profile["training"]["epochs"] = 3
    config = tmp_path / "competition4.json"
    config.write_text(json.dumps(profile))
    with pytest.raises(ValueError, match=r"unknown 'training' keys \['epochs'\]"):
        load_recipe(config)
