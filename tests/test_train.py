"""HGD training: Table 1 pairs, the guided losses, and the resumable fit (tiny real runs on sample images)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from hgd.defenses.dunet import build_dunet
from hgd.io.images import IMAGE_SIZE, load_image
from hgd.train import fit as fit_module
from hgd.train.adaptive import Adversary
from hgd.train.fit import FitConfig, PairBatches, RunState, build_training_model, fit
from hgd.train.guidance import Guidance, guidance_loss
from hgd.train.pairs import (
    TRAIN,
    VALIDATION,
    Pair,
    PairSpec,
    accuracy_by_bound,
    bound_of,
    build_pairs,
    plan_pairs,
    read_pairs,
    read_plan,
    table1_attacks,
    weight_by_attack,
    weight_by_epsilon,
)
from hgd.io.datasets import read_dataset
from hgd.train.recipe import PairChoice, install, load_recipe
from hgd.zoo import ModelName, get_model

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
LITE0 = ModelName.LITE0.value


# ------------------------------------------------------------------------------------------ pairs


def test_table1_attacks_for_two_models():
    names = [a.name for a in table1_attacks([ModelName.LITE0, ModelName.LITE1])]
    assert names == ["noop", "random_noise", "fgsm_efficientnet_lite0", "fgsm_efficientnet_lite1",
                     "fgsm_ensemble", "ifgsm2_ensemble", "ifgsm4_ensemble", "ifgsm8_ensemble"]
    ifgsm8 = table1_attacks([ModelName.LITE0, ModelName.LITE1])[-1]
    assert ifgsm8.steps == 8 and ifgsm8.models == (ModelName.LITE0, ModelName.LITE1)


def test_table1_attacks_for_one_model_name_it():
    names = [a.name for a in table1_attacks([ModelName.LITE0])]
    assert names[-1] == "ifgsm8_efficientnet_lite0" and "fgsm_ensemble" not in names


def test_plan_is_deterministic_split_by_image_and_eps_in_range(tmp_path):
    images = list(read_dataset(SAMPLE).images)
    spec = PairSpec(source="x", max_epsilon=16, validation_fraction=0.25)
    plan = plan_pairs(images, spec, tmp_path)
    assert plan == plan_pairs(images, spec, tmp_path)
    assert len(plan) == len(images) * len(spec.attacks())
    splits: dict[str, set[str]] = {}
    for pair in plan:
        splits.setdefault(pair.image, set()).add(pair.split)
    assert all(len(s) == 1 for s in splits.values()), "an image's pairs straddle the split"
    assert sum(s == {VALIDATION} for s in splits.values()) == round(0.25 * len(images))
    epsilons = [pair.epsilon for pair in plan]
    assert min(epsilons) >= 1 and max(epsilons) <= 16 and len(set(epsilons)) > 8
    assert all(pair.adversarial == pair.clean for pair in plan if pair.attack == "noop")
    other = plan_pairs(images, dataclasses.replace(spec, seed=1), tmp_path)
    assert [p.epsilon for p in other] != epsilons


def test_attacks_per_image_draws_that_many(tmp_path):
    images = list(read_dataset(SAMPLE).images)
    plan = plan_pairs(images, PairSpec(source="x", attacks_per_image=3), tmp_path)
    per_image: dict[str, int] = {}
    for pair in plan:
        per_image[pair.image] = per_image.get(pair.image, 0) + 1
    assert set(per_image.values()) == {3}
    assert len({pair.attack for pair in plan}) > 3


def test_pairs_are_attacked_cheapest_first(small_source, tmp_path):
    from hgd.train.pairs import _work_units

    spec = PairSpec(source=str(small_source))
    attacks = {attack.name: attack for attack in spec.attacks()}
    plan = plan_pairs(list(read_dataset(small_source).images), spec, tmp_path)
    order = list(dict.fromkeys(name for name, _, _ in _work_units(plan, attacks, batch_size=2)))
    assert order == ["noop", "random_noise", "fgsm_efficientnet_lite0", "fgsm_efficientnet_lite1", "fgsm_ensemble",
                     "ifgsm2_ensemble", "ifgsm4_ensemble", "ifgsm8_ensemble"]
    assert [attacks[name].cost for name in order] == [0, 0, 1, 1, 2, 4, 8, 16]


def test_the_competition_set_adds_the_harness_10_step_attacks_on_the_ensemble(tmp_path):
    """Table 1's attacks first (a plan's earlier draws stay as they were), then the harness's I-FGSM and
    MI-FGSM as attacks/ ships them: 10 steps of eps/10, momentum 1.0."""
    models = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
    table1, competition = (PairSpec(source="x", models=models, attack_set=name).attacks()
                           for name in ("table1", "competition"))
    assert competition[:len(table1)] == table1
    added = competition[len(table1):]
    assert [(a.name, a.cost) for a in added] == [("ifgsm10_ensemble", 30), ("mifgsm10_ensemble", 30)]
    ifgsm, mifgsm = (a.build(seed=0) for a in added)
    assert (ifgsm.steps, mifgsm.steps, mifgsm.mu) == (10, 10, 1.0) and type(mifgsm).__name__ == "MomentumIterativeMethod"
    assert PairSpec.from_json(PairSpec(source="x").to_json()).attack_set == "table1"
    with pytest.raises(ValueError, match="attack_set"):
        PairSpec(source="x", attack_set="Table1")


@pytest.mark.parametrize("bad", [{"validation_fraction": 0.0}, {"max_epsilon": 0}, {"attacks_per_image": 9}])
def test_spec_validation(bad):
    with pytest.raises(ValueError):
        PairSpec(source="x", **bad)


@pytest.fixture(scope="module")
def pairs_dir(small_source, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("pairs")
    spec = PairSpec(source=str(small_source), models=(LITE0,), validation_fraction=0.25)
    build_pairs(small_source, out, spec, progress=False)
    return out


def test_built_pairs_are_inside_the_eps_box(pairs_dir):
    spec, plan = read_pairs(pairs_dir)
    assert len(plan) == 4 * len(spec.attacks())
    changed = 0
    for pair in plan:
        clean, adversarial = load_image(pair.clean)[0].astype(int), load_image(pair.adversarial)[0].astype(int)
        distance = np.abs(adversarial - clean).max()
        assert distance <= pair.epsilon, f"{pair.attack} at eps {pair.epsilon} moved a pixel by {distance}"
        changed += distance > 0
    assert changed >= len([p for p in plan if p.attack != "noop"]) - 1


def test_fgsm_pairs_fool_the_attacked_model(pairs_dir):
    classifier = get_model(LITE0).build_classifier()
    _, plan = read_pairs(pairs_dir)
    fgsm = [pair for pair in plan if pair.attack == "ifgsm8_efficientnet_lite0" and pair.epsilon >= 4]
    if not fgsm:
        pytest.skip("the seeded plan drew no eps >= 4 for ifgsm8 here")
    clean = np.stack([load_image(p.clean)[0] for p in fgsm]).astype("float32")
    adversarial = np.stack([load_image(p.adversarial)[0] for p in fgsm]).astype("float32")
    before = keras.ops.convert_to_numpy(classifier(clean)).argmax(1)
    after = keras.ops.convert_to_numpy(classifier(adversarial)).argmax(1)
    assert (before != after).mean() >= 0.5


def test_build_pairs_resumes_without_redoing_and_refuses_another_spec(small_source, pairs_dir):
    spec, plan = read_pairs(pairs_dir)
    victim = next(p for p in plan if p.attack == "random_noise")
    victim.adversarial.unlink()
    untouched = next(p for p in plan if p.attack == "fgsm_efficientnet_lite0")
    stamp = untouched.adversarial.stat().st_mtime_ns
    with pytest.raises(FileNotFoundError, match="not built yet"):
        read_pairs(pairs_dir)
    _, built = read_pairs(pairs_dir, built_only=True)
    assert victim not in built and len(built) == len(plan) - 1
    build_pairs(small_source, pairs_dir, spec, progress=False)
    assert victim.adversarial.is_file() and untouched.adversarial.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="another spec"):
        build_pairs(small_source, pairs_dir, dataclasses.replace(spec, seed=3), progress=False)


# ----------------------------------------------------------------------------------------- losses


@pytest.fixture(scope="module")
def lite0_head():
    return get_model(LITE0).build_from_normalized(None, guide=True)


def test_head_outputs_guide_map_and_logits_at_any_size(lite0_head):
    for side, grid in ((IMAGE_SIZE, 7), (128, 3)):  # 299 -> 224 native -> 7x7; a 128 crop -> 96 -> 3x3
        guide, logits = lite0_head(np.zeros((1, side, side, 3), "float32"))
        assert tuple(guide.shape) == (1, grid, grid, 1280) and tuple(logits.shape) == (1, 1000)


def test_pixel_loss_is_mean_absolute_difference():
    a, b = np.zeros((2, 8, 8, 3), "float32"), np.full((2, 8, 8, 3), 0.5, "float32")
    assert float(guidance_loss(Guidance.PGD, a, b, None, [])) == pytest.approx(0.5)


@pytest.mark.parametrize("guidance", [Guidance.FGD, Guidance.LGD])
def test_feature_and_logit_losses_vanish_on_the_clean_image_and_sum_over_models(guidance, lite0_head):
    rng = np.random.default_rng(0)
    clean = rng.uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    noisy = (clean + rng.normal(0, 0.3, clean.shape)).astype("float32")
    assert float(guidance_loss(guidance, clean, clean, None, [lite0_head])) == pytest.approx(0.0, abs=1e-6)
    one = float(guidance_loss(guidance, noisy, clean, None, [lite0_head]))
    assert one > 0
    assert float(guidance_loss(guidance, noisy, clean, None, [lite0_head, lite0_head])) == pytest.approx(2 * one)


def test_class_loss_is_cross_entropy_of_the_label(lite0_head):
    x = np.random.default_rng(1).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    labels = np.array([3, 500], "int32")
    logits = keras.ops.convert_to_numpy(lite0_head(x)[1])
    shifted = logits - logits.max(1, keepdims=True)
    expected = np.mean(np.log(np.exp(shifted).sum(1)) - shifted[np.arange(2), labels])
    assert float(guidance_loss(Guidance.CGD, x, None, labels, [lite0_head])) == pytest.approx(expected, rel=1e-4)


def test_guided_losses_need_a_model():
    with pytest.raises(ValueError, match="at least one"):
        guidance_loss(Guidance.FGD, np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)), None, [])


# ------------------------------------------------------------------------------------------- data


def _noop_pairs(count: int) -> list[Pair]:
    """Pairs whose adversarial image is the clean one: augmentation must keep them equal."""
    images = list(read_dataset(SAMPLE).images)[:count]
    return [Pair(i.path.stem, TRAIN, i.label0, "noop", 1, i.path, i.path) for i in images]


def test_training_batches_crop_and_flip_both_images_alike():
    batches = PairBatches(_noop_pairs(5), 4, crop=64, shuffle=True, seed=0, steps=3)
    inputs, labels = batches[1]
    assert inputs["adversarial"].shape == (4, 64, 64, 3) and labels.shape == (4,)
    np.testing.assert_array_equal(inputs["adversarial"], inputs["clean"])


def test_training_batches_walk_through_successive_shuffles():
    pairs = _noop_pairs(6)
    batches = PairBatches(pairs, 2, crop=32, shuffle=True, seed=0, steps=3)  # one epoch = one pass
    seen = []
    for epoch in range(2):
        batches.epoch = epoch
        seen.append(sorted(int(label) for i in range(3) for label in batches[i][1]))
    assert seen[0] == seen[1] == sorted(p.label0 for p in pairs)
    again = PairBatches(pairs, 2, crop=32, shuffle=True, seed=0, steps=3)
    again.epoch = 1  # batches are a function of (seed, epoch, index) alone
    np.testing.assert_array_equal(again[2][0]["clean"], batches[2][0]["clean"])


def test_validation_batches_are_whole_and_in_order():
    pairs = _noop_pairs(5)
    batches = PairBatches(pairs, 2, crop=64, shuffle=False, seed=0)
    assert len(batches) == 3
    inputs, labels = batches[2]
    assert inputs["clean"].shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and labels.tolist() == [pairs[4].label0]


# -------------------------------------------------------------------------------------------- fit


def _tiny(**changes) -> FitConfig:
    return FitConfig(**{"guidance": Guidance.FGD, "models": (LITE0,), "width": 0.125, "crop": 64, "batch_size": 2,
                        "steps_per_epoch": 2, "validation_pairs": 2, "max_epochs": 1, **changes})


def test_config_validation_and_round_trip():
    config = _tiny(holdout_classes=250, attack_weights={"mifgsm": 3})
    assert FitConfig.from_json(config.to_json()) == config
    assert len(config.heldout()) == 250 and config.heldout() == _tiny(holdout_classes=250).heldout()
    for bad in ({"crop": 16}, {"batch_size": 0}, {"models": ()}, {"models": ("resnet_9000",)},
                {"epsilon_weighting": "linear"}, {"selection": "labels"}, {"attack_weights": {"pgd": 2}},
                {"attack_weights": {"mifgsm": 0}}, {"attack_weights": {"mifgsm": 1.5}},
                {"attack_weights": ["mifgsm"]},
                {"selection": "accuracy", "guidance": Guidance.PGD, "models": ()}):
        with pytest.raises(ValueError):
            _tiny(**bad)
    assert _tiny(guidance=Guidance.PGD, models=()).models == ()


def test_only_the_denoiser_trains():
    model = build_training_model(_tiny(models=(LITE0, ModelName.LITE1.value)))
    trainable = {id(v) for v in model.trainable_variables}
    assert trainable == {id(v) for v in model.denoiser.trainable_variables}
    assert len(model.heads) == 2 and not any(head.trainable for head in model.heads)
    # a pixel-loss run selecting by the labels runs the heads to count them, and only then
    assert build_training_model(_tiny(guidance=Guidance.PGD, selection="accuracy")).ensemble_accuracy is not None
    assert build_training_model(_tiny(guidance=Guidance.PGD)).heads == []


def _random_teacher(path: pathlib.Path, width: float = 0.125) -> str:
    """A DUNET that is not the identity (a fresh one is: its last convolution starts at zero), saved."""
    teacher = build_dunet(width=width)
    rng = np.random.default_rng(3)
    teacher.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) if w.ndim == 4 else w
                         for w in teacher.get_weights()])
    teacher.save_weights(path)
    return str(path)


def test_a_teacher_sets_the_training_loss_and_validation_keeps_the_guidance(tmp_path):
    teacher_weights = _random_teacher(tmp_path / "teacher.weights.h5", width=0.25)
    model = build_training_model(_tiny(teacher_weights=teacher_weights, teacher_width=0.25))
    assert not model.teacher.trainable
    assert {id(v) for v in model.trainable_variables} == {id(v) for v in model.denoiser.trainable_variables}
    rng = np.random.default_rng(0)
    clean = rng.uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    x = {"adversarial": np.clip(clean + rng.choice([-8.0, 8.0], clean.shape), 0, 255).astype(np.float32), "clean": clean}
    y = np.array([1, 2], np.int32)
    y_pred = model(x)
    taught = model.teacher(model.normalize(x["adversarial"]))
    train_loss = float(model.compute_loss(x, y, y_pred, training=True))
    assert train_loss == pytest.approx(float(np.mean(np.abs(np.asarray(y_pred) - np.asarray(taught)))), rel=1e-5)
    assert train_loss > 1e-3  # the teacher is not the (untrained, identity) student
    fgd = float(guidance_loss(Guidance.FGD, y_pred, model.normalize(clean), y, model.heads))
    assert float(model.compute_loss(x, y, y_pred, training=False)) == pytest.approx(fgd, rel=1e-5)
    with pytest.raises(FileNotFoundError, match="teacher_weights: no such file"):
        build_training_model(_tiny(teacher_weights=str(tmp_path / "missing.weights.h5")))
    with pytest.raises(ValueError, match="teacher_width"):
        _tiny(teacher_width=0)


@pytest.mark.slow
def test_a_distilled_student_moves_towards_its_teacher(pairs_dir, tmp_path):
    teacher_weights = _random_teacher(tmp_path / "teacher.weights.h5")
    config = _tiny(teacher_weights=teacher_weights, teacher_width=0.125, steps_per_epoch=4, learning_rate=1e-3)
    state = fit(pairs_dir, tmp_path / "run", config, verbose=0)
    assert state.epoch == 1
    model = build_training_model(config)
    batch = next(iter(PairBatches(fit_module._split(pairs_dir, config, False)[1], 2, crop=None, shuffle=False,
                                  seed=0)))[0]
    taught = np.asarray(model.teacher(model.normalize(batch["adversarial"])))

    def distance() -> float:
        return float(np.mean(np.abs(np.asarray(model(batch)) - taught)))

    before = distance()  # the untrained student: the identity
    model.denoiser.load_weights(tmp_path / "run" / "last.weights.h5")
    assert distance() < before
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()[1].split(",")
    val_loss = fit_module.validation_loss(pairs_dir, tmp_path / "run" / "best.weights.h5", config)
    assert float(history[3]) == pytest.approx(val_loss, rel=1e-4)  # validated with FGD, not the teacher's loss


@pytest.mark.slow
def test_fit_trains_checkpoints_and_resumes(pairs_dir, tmp_path):
    run = tmp_path / "run"
    state = fit(pairs_dir, run, _tiny(), verbose=0)
    assert state.epoch == 1 and state.finished.startswith("reached max_epochs")
    assert np.isfinite(state.initial_val_loss) and "(at the start: " in state.summary()
    for name in ("config.json", "state.json", "best.weights.h5", "last.weights.h5", "optimizer.npz", "history.csv"):
        assert (run / name).is_file(), name
    denoiser = build_dunet(width=0.125)
    denoiser.load_weights(run / "best.weights.h5")  # the result loads into a plain DUNET
    before = [w.copy() for w in denoiser.get_weights()]
    assert any(np.abs(w).sum() > 0 for w in before)

    # a raised limit goes on from epoch 1, in whichever precision this machine computes fast
    state = fit(pairs_dir, run, _tiny(max_epochs=2, dtype_policy="auto"), verbose=0)
    assert state.epoch == 2
    history = (run / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history] == ["epoch", "1", "2"]
    denoiser.load_weights(run / "last.weights.h5")
    assert any(not np.array_equal(a, b) for a, b in zip(before, denoiser.get_weights()))
    _check_curves(run, state)

    with pytest.raises(ValueError, match="another configuration"):
        fit(pairs_dir, run, _tiny(max_epochs=2, guidance=Guidance.LGD), verbose=0)


def _check_curves(run: pathlib.Path, state: RunState) -> None:
    """``python -m hgd.cli.train curves`` reads the run: losses relative to the start, a table row, a plot."""
    from hgd.train import curves

    curve = curves.read_run(run)
    val_losses = [float(line.split(",")[3]) for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert curve.val_loss == tuple(val_losses) and curve.initial == state.initial_val_loss
    assert curve.best == pytest.approx(min(val_losses) / state.initial_val_loss)
    row = curves.markdown_table({"FGD": curve}).splitlines()[2]
    assert row.startswith("| FGD | fgd | 4 |") and row.endswith(f"| {curve.best:.3f} |")
    curves.plot({"FGD": curve}, run / "curves.png")
    assert (run / "curves.png").stat().st_size > 10_000
    assert curve.x("steps") == [0, 2, 4] and len(curve.x("cpu-hours")) == 3
    assert 0 < curve.x("cpu-hours")[1] < curve.x("cpu-hours")[2]  # from the history's cpu_seconds, summed
    curves.plot({"FGD": curve}, run / "cpu.png", x="cpu-hours")
    assert (run / "cpu.png").stat().st_size > 10_000


@pytest.mark.slow
def test_fit_can_start_from_trained_weights(pairs_dir, tmp_path):
    """init_weights: a fine-tuning run starts where the given denoiser is (same validation pairs, same loss)."""
    first = fit(pairs_dir, tmp_path / "first", _tiny(), verbose=0)
    weights = str(tmp_path / "first" / "best.weights.h5")
    second = fit(pairs_dir, tmp_path / "second", _tiny(init_weights=weights), verbose=0)
    assert second.initial_val_loss == pytest.approx(first.best_val_loss, rel=1e-5)
    assert first.initial_val_loss != pytest.approx(first.best_val_loss, rel=1e-5)  # the first run did move
    moved = fit(pairs_dir, tmp_path / "second", _tiny(init_weights="/elsewhere/moved.weights.h5", max_epochs=2),
                verbose=0)  # read only at the start: a resumed run does not need the file any more
    assert moved.epoch == 2
    with pytest.raises(FileNotFoundError, match="no such file"):
        fit(pairs_dir, tmp_path / "third", _tiny(init_weights=str(tmp_path / "missing.weights.h5")), verbose=0)


def test_reestimated_batch_norm_statistics_are_the_mean_over_the_batches():
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.9)(inputs))
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc, scale, (3, 4, 4, 2)).astype(np.float32) for loc, scale in [(1.0, 1.0), (5.0, 3.0)]]
    fit_module.reestimate_batch_norm(model, batches)
    layer = model.layers[-1]
    assert layer.momentum == 0.9  # restored for training
    means = [batch.mean(axis=(0, 1, 2)) for batch in batches]
    variances = [batch.var(axis=(0, 1, 2)) for batch in batches]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), np.mean(means, axis=0), rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_variance), np.mean(variances, axis=0),
                               rtol=1e-4)


@pytest.mark.slow
def test_validation_with_reestimated_statistics_scores_the_weights_not_their_statistics(pairs_dir, tmp_path):
    """batch_norm_batches: the start's score does not depend on the moving statistics it came with, and a
    checkpoint carries the statistics it was scored with (``validate`` gives the history's number)."""
    keras.utils.set_random_seed(3)
    denoiser = build_dunet(width=0.125)
    output = [layer for layer in denoiser.layers if isinstance(layer, keras.layers.Conv2D)][-1]
    for variable in output.weights:  # a fresh DUNET is the identity: give its body's features a say
        variable.assign(np.random.default_rng(0).normal(0, 0.05, variable.shape).astype(np.float32))
    start, skewed = tmp_path / "start.weights.h5", tmp_path / "skewed.weights.h5"
    denoiser.save_weights(start)
    for layer in denoiser.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(layer.moving_mean + 0.5)
            layer.moving_variance.assign(layer.moving_variance * 3.0)
    denoiser.save_weights(skewed)
    as_trained = [fit_module.validation_loss(pairs_dir, weights, _tiny()) for weights in (start, skewed)]
    assert as_trained[0] != pytest.approx(as_trained[1], rel=1e-3)  # the statistics matter to this denoiser

    config = _tiny(batch_norm_batches=2, init_weights=str(start))
    plain = fit(pairs_dir, tmp_path / "plain", config, verbose=0)
    from_skewed = fit(pairs_dir, tmp_path / "skewed", dataclasses.replace(config, init_weights=str(skewed)), verbose=0)
    assert plain.initial_val_loss == pytest.approx(from_skewed.initial_val_loss, rel=1e-5)
    last = tmp_path / "plain" / "last.weights.h5"
    history = float((tmp_path / "plain" / "history.csv").read_text().splitlines()[-1].split(",")[3])
    assert fit_module.validation_loss(pairs_dir, last, _tiny()) == pytest.approx(history, rel=1e-5)  # as stored
    # validate --batch-norm-batches re-estimates on the same batches as fit (the folder is fully built)
    assert fit_module.validation_loss(pairs_dir, last, config) == pytest.approx(history, rel=1e-5)
    assert fit_module.validation_loss(pairs_dir, skewed, config) == pytest.approx(plain.initial_val_loss, rel=1e-5)
    with pytest.raises(ValueError, match="batch_norm_batches"):
        _tiny(batch_norm_batches=-1)


@pytest.mark.slow
def test_validation_scores_are_the_loss_and_the_ensembles_labels_on_the_denoised_validation_images(pairs_dir, tmp_path):
    """A fresh DUNET is the identity: the labels are the models' own, computed apart, on the adversarial images;
    the loss of the same pass is what ``validation_loss`` (Keras' evaluate) reports, BatchNorm re-estimation on."""
    from hgd.train.fit import split_pairs, validation_loss, validation_scores

    identity = tmp_path / "identity.weights.h5"
    build_dunet(width=0.125).save_weights(identity)
    config = _tiny(models=(LITE0, "efficientnet_lite1"), validation_pairs=5, batch_norm_batches=1)
    _, validation = split_pairs(read_plan(pairs_dir)[1], config)
    images = np.stack([load_image(pair.adversarial)[0] for pair in validation]).astype("float32")
    logits = np.mean([keras.ops.convert_to_numpy(get_model(name).build_classifier()(images)) for name in config.models],
                     axis=0)
    expected = (logits.argmax(1) == np.array([pair.label0 for pair in validation])).tolist()
    loss, outcomes = validation_scores(pairs_dir, identity, config)
    assert outcomes == list(zip(validation, expected))
    assert loss == pytest.approx(validation_loss(pairs_dir, identity, config), rel=1e-5)
    with pytest.raises(ValueError, match="no target models"):
        validation_scores(pairs_dir, identity, _tiny(guidance=Guidance.PGD, models=()))


@pytest.mark.slow
def test_validate_cli_prints_the_loss_the_accuracy_and_the_table_by_bound(pairs_dir, tmp_path):
    identity = tmp_path / "identity.weights.h5"
    build_dunet(width=0.125).save_weights(identity)
    result = subprocess.run([sys.executable, "-m", "hgd.cli.train", "validate", str(pairs_dir), str(identity),
                             "--models", LITE0, "--width", "0.125", "--batch-size", "2", "--validation-pairs", "4",
                             "--accuracy"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "validation loss" in lines[0] and "ensemble accuracy on the denoised validation images" in lines[1]
    correct, total = (int(n) for n in lines[1].split()[-3].split("/"))
    assert total == 4 and lines[2].startswith("| attack kind | eps <= ")
    cells = [cell.strip() for cell in lines[4].strip("|").split("|")]
    assert cells[0] == "all"
    counts = [tuple(int(n) for n in cell.split("/")) for cell in cells[1:] if cell != "-"]
    assert sum(c for c, _ in counts) == correct and sum(n for _, n in counts) == total


@pytest.mark.slow
def test_validation_saves_the_weights_with_the_statistics_it_scored_them_with(pairs_dir, tmp_path):
    """`validate --batch-norm-batches N --save FILE`: FILE scores, as it stands, what the weights scored with their
    statistics re-estimated; the identity's statistics (mean 0, variance 1) did move."""
    from hgd.train.fit import validation_loss

    identity, saved = tmp_path / "identity.weights.h5", tmp_path / "saved.weights.h5"
    build_dunet(width=0.125).save_weights(identity)
    config = _tiny(validation_pairs=4, batch_norm_batches=2)
    loss = validation_loss(pairs_dir, identity, config, save=saved)
    assert validation_loss(pairs_dir, saved, _tiny(validation_pairs=4)) == pytest.approx(loss, rel=1e-5)
    fresh, calibrated = build_dunet(width=0.125), build_dunet(width=0.125)
    fresh.load_weights(identity)
    calibrated.load_weights(saved)
    moved = [not np.allclose(a.numpy(), b.numpy()) for a, b in zip(fresh.non_trainable_weights,
                                                                   calibrated.non_trainable_weights)]
    assert moved and all(moved)
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(fresh.trainable_weights,
                                                                   calibrated.trainable_weights))


def _pair(attack: str, epsilon: int, name: str = "x") -> Pair:
    return Pair(name, "train", 0, attack, epsilon, pathlib.Path("c.png"), pathlib.Path(f"{attack}{epsilon}{name}.png"))


def test_bound_weighting_draws_a_pair_as_often_as_its_competition_bound():
    pairs = [_pair("fgsm_ensemble", eps) for eps in (1, 4, 5, 8, 9, 12, 13, 16)]
    assert weight_by_epsilon(pairs, "uniform") == pairs
    weighted = weight_by_epsilon(pairs, "bound")
    assert [weighted.count(pair) for pair in pairs] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert [bound_of(eps) for eps in (1, 4, 5, 16, 17)] == [4, 4, 8, 16, 20]
    with pytest.raises(ValueError, match="uniform"):
        weight_by_epsilon(pairs, "linear")


def test_attack_weights_draw_a_pair_as_often_as_its_kind_is_weighted():
    attacks = PairSpec(source="s", models=(LITE0, ModelName.LITE1.value), attack_set="competition").attacks()
    pairs = [_pair("mifgsm10_ensemble", 3), _pair("ifgsm2_ensemble", 9), _pair("noop", 1), _pair("fgsm_ensemble", 16)]
    weighted = weight_by_attack(pairs, {"mifgsm": 3, "ifgsm": 2}, attacks)
    assert [weighted.count(pair) for pair in pairs] == [3, 2, 1, 1]
    assert weight_by_attack(pairs, {}, attacks) == pairs
    with pytest.raises(ValueError, match="mifgsm"):
        weight_by_attack(pairs, {"mi-fgsm": 3}, attacks)


def test_training_pairs_are_weighted_and_validation_pairs_are_not(pairs_dir):
    plain_train, plain_validation = fit_module._split(pairs_dir, _tiny(), False)
    train, validation = fit_module._split(pairs_dir, _tiny(epsilon_weighting="bound"), False)
    assert validation == plain_validation
    assert sorted(train, key=str) == sorted(weight_by_epsilon(plain_train, "bound"), key=str)
    assert len(train) > len(plain_train)
    both, validation = fit_module._split(pairs_dir, _tiny(epsilon_weighting="bound", attack_weights={"fgsm": 3}), False)
    assert validation == plain_validation
    fgsm = [pair for pair in train if pair.attack.startswith("fgsm")]
    assert fgsm and len(both) == len(train) + 2 * len(fgsm)


def test_accuracy_by_bound_counts_every_pair_under_its_kind_and_all():
    spec = PairSpec(source="s", models=(LITE0, ModelName.LITE1.value), attack_set="competition")
    outcomes = [(_pair("ifgsm10_ensemble", 3), True), (_pair("ifgsm2_ensemble", 4), False),
                (_pair("mifgsm10_ensemble", 16), False), (_pair("mifgsm10_ensemble", 14, "y"), True),
                (_pair("noop", 7), True)]
    counts = accuracy_by_bound(outcomes, spec.attacks())
    assert list(counts) == ["all", "ifgsm", "mifgsm", "noop"]
    assert counts["all"] == {4: (1, 2), 8: (1, 1), 16: (1, 2)}
    assert counts["ifgsm"] == {4: (1, 2)} and counts["mifgsm"] == {16: (1, 2)} and counts["noop"] == {8: (1, 1)}


class _FakeOptimizer:
    learning_rate = 1e-3
    variables: list = []


class _FakeModel:
    def __init__(self) -> None:
        self.optimizer, self.stop_training = _FakeOptimizer(), False
        self.denoiser = build_dunet(width=0.125)


@pytest.mark.parametrize("max_hours, expected", [(None, ""), (1e-15, "reached max_hours")])
def test_checkpointer_lowers_the_rate_on_plateau_then_stops(tmp_path, max_hours, expected):
    config = _tiny(patience=2, max_epochs=10, max_hours=max_hours)
    state = RunState(learning_rate=config.learning_rate)
    checkpointer = fit_module.Checkpointer(tmp_path, config, state, PairBatches(_noop_pairs(2), 2, crop=32,
                                                                                 shuffle=True, seed=0))
    checkpointer.set_model(_FakeModel())
    rates = []
    for epoch, val_loss in enumerate([1.0, 0.5, 0.6, 0.7, 0.6, 0.55]):
        checkpointer.on_epoch_begin(epoch)
        checkpointer.on_epoch_end(epoch, {"loss": 1.0, "val_loss": val_loss})
        rates.append(state.learning_rate)
        if state.finished:
            break
    if expected:
        assert state.finished.startswith(expected) and state.epoch == 1
        return
    assert rates == [1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-4]
    assert state.best_val_loss == 0.5 and state.finished.startswith("validation loss plateaued")
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 6


def test_a_run_starts_no_epoch_that_would_pass_its_hours(tmp_path, monkeypatch):
    """Epochs of 0.4 h under max_hours 1: two fit, a third would end at 1.2 h, so the run stops at 0.8 h; the
    stop holds when the run is resumed with the same limit, and a raised limit lets it go on."""
    clock = iter(range(0, 10**6, 1440))  # every call 1440 s later: an epoch (begin to end) takes 0.4 h
    monkeypatch.setattr(fit_module.time, "monotonic", lambda: float(next(clock)))
    config = _tiny(patience=5, max_epochs=10, max_hours=1.0)
    state = RunState(learning_rate=config.learning_rate)
    checkpointer = fit_module.Checkpointer(tmp_path, config, state, PairBatches(_noop_pairs(2), 2, crop=32,
                                                                                 shuffle=True, seed=0))
    checkpointer.set_model(_FakeModel())
    for epoch in range(3):
        checkpointer.on_epoch_begin(epoch)
        checkpointer.on_epoch_end(epoch, {"loss": 1.0, "val_loss": 1.0 - epoch / 10})
        if state.finished:
            break
    assert state.epoch == 2 and state.hours == pytest.approx(0.8) and state.last_epoch_hours == pytest.approx(0.4)
    assert state.finished.startswith("reached max_hours=1.0: another epoch as long as the last (0.40 h)")
    assert fit_module._load_state(tmp_path, config).finished == state.finished
    assert fit_module._load_state(tmp_path, _tiny(max_epochs=10, max_hours=1.3)).finished == ""


def test_a_further_chunk_needs_the_last_ones_start_and_longest_epoch():
    from hgd.train.continued import MIN_CHUNK_HOURS, ChunkResult, _chunk_needs

    def chunk(hours: float, last: float) -> ChunkResult:
        return ChunkResult(job=None, chunk=1, state=RunState(hours=hours, last_epoch_hours=last), installed=False)

    start_up, needed = _chunk_needs([chunk(1.0, 0.3)], wall_hours=1.2)
    assert start_up == pytest.approx(0.2) and needed == pytest.approx(0.5)
    assert _chunk_needs([chunk(0.1, 0.05)], wall_hours=0.12)[1] == MIN_CHUNK_HOURS  # never under the floor
    assert _chunk_needs([chunk(2.0, 0.3)], wall_hours=1.0)[0] == 0.0  # a resumed chunk's hours outrun its wall
    assert _chunk_needs([chunk(0.5, 0.1), chunk(0.5, 0.4)], wall_hours=1.5)[1] == pytest.approx(0.9)


def test_selection_by_accuracy_rates_the_labels_first_and_the_loss_on_a_tie():
    from hgd.train.fit import improves

    assert improves("accuracy", (0.40, 0.71), (0.30, 0.70))  # more labels right, at a higher loss
    assert not improves("accuracy", (0.20, 0.69), (0.30, 0.70))
    assert improves("accuracy", (0.29, 0.70), (0.30, 0.70)) and not improves("accuracy", (0.31, 0.70), (0.30, 0.70))
    assert improves("accuracy", (0.29, None), (0.30, 0.70))  # a side without labels: the loss alone
    assert improves("loss", (0.29, 0.60), (0.30, 0.70)) and not improves("loss", (0.31, 0.90), (0.30, 0.70))
    assert improves("accuracy", (0.9, 0.1), (float("inf"), None))  # the first epoch beats no epoch
    assert RunState(best_val_loss=0.31, initial_val_loss=0.30, best_val_accuracy=0.8,
                    initial_val_accuracy=0.7).beats_start("accuracy")
    assert not RunState(initial_val_loss=0.30, initial_val_accuracy=0.7).beats_start("accuracy")  # no epoch yet


def test_checkpointer_by_accuracy_keeps_the_most_labels_and_counts_its_patience_on_them(tmp_path):
    config = _tiny(patience=2, max_epochs=10, selection="accuracy", learning_rate=1e-4)
    state = RunState(learning_rate=config.learning_rate)
    checkpointer = fit_module.Checkpointer(tmp_path, config, state, PairBatches(_noop_pairs(2), 2, crop=32,
                                                                                 shuffle=True, seed=0))
    checkpointer.set_model(_FakeModel())
    # the loss falls throughout; the labels peak at epoch 2
    for epoch, (val_loss, accuracy) in enumerate([(0.5, 0.6), (0.4, 0.8), (0.3, 0.7), (0.45, 0.8), (0.2, 0.9)]):
        checkpointer.on_epoch_begin(epoch)
        checkpointer.on_epoch_end(epoch, {"loss": 1.0, "val_loss": val_loss, "val_ensemble_accuracy": accuracy})
        if state.finished:
            break
    assert (state.best_val_loss, state.best_val_accuracy, state.epoch) == (0.4, 0.8, 4)
    assert state.finished.startswith("validation accuracy plateaued")  # epoch 3 fewer, 4 as many at a higher loss
    history = (tmp_path / "history.csv").read_text().splitlines()
    assert history[0].endswith(",val_accuracy") and [line.split(",")[-1] for line in history[1:]] == \
        ["0.60000", "0.80000", "0.70000", "0.80000"]


def test_a_run_history_from_before_the_accuracy_column_gets_it(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("epoch,learning_rate,loss,val_loss,seconds,cpu_seconds\n1,0.001,0.5,0.4,10.0,9.0\n")
    fit_module._append_history(history, [2, 0.001, 0.45, 0.35, 10.0, 9.0, "0.70000"])
    with open(history, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["val_accuracy"]) for r in rows] == [("1", ""), ("2", "0.70000")]


def test_a_committed_history_from_before_the_accuracy_column_reads_and_grows(tmp_path):
    from hgd.train import continued

    history = tmp_path / "d.csv"
    old = continued.HISTORY_FIELDS[:-1]
    history.write_text(",".join(old) + "\n" + "1,0,0,0,0.00000,0.00000,,,0.30000\n")
    assert continued.read_history(history)[0]["val_accuracy"] == ""
    run = tmp_path / "run"
    run.mkdir()
    fit_module._append_history(run / "history.csv", [1, 0.001, 0.5, 0.29, 36.0, 36.0, "0.71000"])
    state = RunState(epoch=1, best_val_loss=0.29, initial_val_loss=0.30, initial_val_accuracy=0.7)
    continued._append_chunk(history, 2, run, state, batch_size=16, steps_per_epoch=40)
    rows = continued.read_history(history)
    assert history.read_text().splitlines()[0] == ",".join(continued.HISTORY_FIELDS)
    assert [(r["chunk"], r["epoch"], r["val_accuracy"]) for r in rows] == \
        [("1", "0", ""), ("2", "0", "0.70000"), ("2", "1", "0.71000")]
    continued.plot_history(history, tmp_path / "d.png")  # the accuracy panel shows the chunks that scored it
    assert (tmp_path / "d.png").stat().st_size > 10_000


def test_the_history_plot_draws_the_measured_harness_scores_and_refuses_a_bad_row(tmp_path):
    from matplotlib import image

    from hgd.train import continued

    history = tmp_path / "d.csv"
    history.write_text(",".join(continued.HISTORY_FIELDS) + "\n" + "1,0,0,0,0.00000,0.00000,,,0.30000,0.70000\n"
                       "1,1,40,640,0.20000,0.25000,0.0001,0.31000,0.29000,0.71000\n"
                       "2,0,40,640,0.20000,0.25000,,,0.29000,0.71000\n"
                       "2,1,80,1280,0.40000,0.50000,0.0001,0.30000,0.28000,0.72000\n")
    continued.plot_history(history, tmp_path / "two.png")
    scores = continued.scores_path(history)
    assert scores.name == "d_harness.csv"
    scores.write_text("chunk,score\n0,0.679\n2,0.772\n")
    assert continued.read_scores(scores, {1, 2}) == [(0, 0.679), (2, 0.772)]
    continued.plot_history(history, tmp_path / "three.png")
    two, three = (image.imread(tmp_path / name).shape[0] for name in ("two.png", "three.png"))
    assert three > two * 1.3  # a third panel, the harness score's
    for bad, message in [("chunk,scores\n0,0.5\n", "columns"), ("chunk,score\n3,0.5\n", "chunk 3 is not in the history"),
                         ("chunk,score\n1,84.3\n", "not a normalized score"), ("chunk,score\n1,x\n", "line 2"),
                         ("chunk,score\n1,0.5\n1,0.6\n", "scored twice")]:
        scores.write_text(bad)
        with pytest.raises(ValueError, match=message):
            continued.plot_history(history, tmp_path / "bad.png")


def test_fit_runs_on_the_jax_backend(pairs_dir, tmp_path):
    pytest.importorskip("jax", reason="the JAX backend is tested where jax is installed (the dev extras install it)")
    command = [sys.executable, "-m", "hgd.cli.train", "fit", str(pairs_dir), str(tmp_path / "run"), "--guidance", "cgd",
               "--width", "0.125", "--crop", "64", "--batch-size", "2", "--steps-per-epoch", "2",
               "--validation-pairs", "2", "--max-epochs", "1", "--batch-norm-batches", "1", "--no-progress",
               "--attack-weights", "ifgsm=2"]
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "KERAS_BACKEND": "jax"}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished: reached max_epochs=1" in result.stdout
    assert (tmp_path / "run" / "best.weights.h5").is_file()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["attack_weights"] == {"ifgsm": 2}


def test_cli_refuses_an_unknown_attack_kind_to_weight(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hgd.cli.train", "fit", str(tmp_path / "pairs"), str(tmp_path / "run"),
                             "--attack-weights", "mi-fgsm=3"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "KIND one of noop, random_noise, fgsm, ifgsm, mifgsm" in result.stderr
    assert not (tmp_path / "run").exists()


def test_cli_refuses_unfinished_pairs_with_a_clear_line(tmp_path):
    (tmp_path / "pairs").mkdir()
    result = subprocess.run([sys.executable, "-m", "hgd.cli.train", "fit", str(tmp_path / "pairs"), str(tmp_path / "run")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "ERROR:" in result.stderr


def test_shipped_defense_recipe_trains_the_denoiser_it_runs():
    """defense/config.json's 'training' section trains exactly the denoiser the defense runs: one shared
    DUNET of the configured width, FGD-guided by every member it protects, on pairs attacked on some of
    those members; a pixel-loss warm start of the same denoiser, then a fine-tune on whole images."""
    recipe = load_recipe(REPO / "defense" / "config.json")
    (job,) = recipe.jobs
    shared = recipe.defense.shared_denoiser
    assert job.spec == shared and job.config.width == shared.width
    assert set(job.config.models) == {member.target.name.value for member in recipe.defense.members}
    assert set(recipe.pairs.attack_models) <= set(job.config.models)
    assert set(recipe.continue_pairs.attack_models) <= set(job.config.models)
    assert job.config.guidance == Guidance.FGD and job.warm_start.guidance == Guidance.PGD
    assert dataclasses.replace(job.warm_start, guidance=Guidance.FGD, max_epochs=job.config.max_epochs) == job.config
    assert job.fine_tune.crop in (None, 299) and job.fine_tune.guidance == Guidance.FGD


def test_pixel_profile_recipe_trains_on_the_table2_pair_set_and_installs_float16(tmp_path):
    """defense/profiles/lite_pgd_pixel.json: the Table 2 PGD row's recipe (k=2 pairs, pixel loss) trains
    the denoiser the profile runs; its pairs are the shipped recipe's (one folder, built once)."""
    recipe = load_recipe(REPO / "defense" / "profiles" / "lite_pgd_pixel.json")
    (job,) = recipe.jobs
    assert recipe.pairs.spec(SAMPLE).attacks_per_image == 2 and recipe.float16_weights
    assert recipe.pairs.folder(tmp_path).name == "pairs_efficientnet_lite0+efficientnet_lite1_k2"
    assert load_recipe(REPO / "defense" / "config.json").pairs == recipe.pairs  # one folder
    assert job.config.guidance == Guidance.PGD and job.config.width == job.spec.width


def test_install_float16_halves_the_file_and_keeps_the_denoiser(tmp_path):
    rng = np.random.default_rng(0)
    denoiser = build_dunet(width=0.25)
    for w in denoiser.trainable_weights:  # away from the fresh DUNET's identity, so a lost weight shows
        w.assign(w + rng.normal(0, 0.05, w.shape).astype("float32"))
    x = rng.uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    denoiser.save_weights(tmp_path / "run.weights.h5")
    install(tmp_path / "run.weights.h5", tmp_path / "full" / "d.weights.h5")
    install(tmp_path / "run.weights.h5", tmp_path / "half" / "d.weights.h5", float16=True)
    full, half = (os.path.getsize(tmp_path / k / "d.weights.h5") for k in ("full", "half"))
    assert half < 0.6 * full
    loaded = build_dunet(width=0.25)
    loaded.load_weights(tmp_path / "half" / "d.weights.h5")
    assert all(w.dtype == "float32" for w in loaded.weights)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(denoiser(x)), atol=5e-3)
    assert not np.allclose(np.asarray(build_dunet(width=0.25)(x)), np.asarray(denoiser(x)), atol=5e-3)


# ------------------------------------------------------------------ defense-aware (adaptive) training


@dataclasses.dataclass(frozen=True)
class _RecordingAdversary(Adversary):
    """Stands in for PGD in the pipeline's bookkeeping test: marks the images it was given."""

    calls: list = dataclasses.field(default_factory=list)

    def __call__(self, clean: np.ndarray, labels: np.ndarray, seed) -> np.ndarray:
        assert clean.dtype == np.uint8
        self.calls.append((len(clean), tuple(seed)))
        return np.full_like(clean, 7)


def test_adaptive_batches_replace_a_seeded_fraction_of_the_adversarial_images():
    adversary = _RecordingAdversary(model=None, fraction=0.5, epsilon=4, steps=1)
    batches = PairBatches(_noop_pairs(6), 4, crop=32, shuffle=True, seed=0, steps=2, adversary=adversary)
    inputs, _ = batches[1]
    replaced = np.all(inputs["adversarial"] == 7, axis=(1, 2, 3))
    assert replaced.sum() == 2 and adversary.calls == [(2, (0, 7, 0, 1))]
    np.testing.assert_array_equal(inputs["adversarial"][~replaced], inputs["clean"][~replaced])
    again, _ = PairBatches(_noop_pairs(6), 4, crop=32, shuffle=True, seed=0, steps=2, adversary=adversary)[1]
    np.testing.assert_array_equal(np.all(again["adversarial"] == 7, axis=(1, 2, 3)), replaced)
    whole, _ = PairBatches(_noop_pairs(3), 4, crop=None, shuffle=False, seed=0,
                           adversary=dataclasses.replace(adversary, fraction=1.0))[0]
    assert np.all(whole["adversarial"] == 7)


def test_adaptive_config_validation():
    assert FitConfig.from_json(_tiny(adaptive_fraction=0.5, adaptive_loss="margin").to_json()).adaptive_fraction == 0.5
    for bad in ({"adaptive_fraction": 1.5}, {"adaptive_fraction": -0.1}, {"adaptive_epsilon": 0},
                {"adaptive_steps": 0}, {"adaptive_loss": "l2"},
                {"guidance": Guidance.PGD, "models": (), "adaptive_fraction": 0.5}):
        with pytest.raises(ValueError):
            _tiny(**bad)


def test_adversary_attacks_the_current_denoiser_inside_the_box(small_source):
    model = build_training_model(_tiny(guidance=Guidance.PGD, adaptive_fraction=1.0))
    assert len(model.heads) == 1  # the pixel loss needs no model, the attack does
    adversary = model.adversary(_tiny(adaptive_fraction=1.0, adaptive_epsilon=8, adaptive_steps=3))
    images = np.stack([load_image(i.path)[0][:96, :96] for i in list(read_dataset(small_source).images)])
    labels = np.array([i.label0 for i in list(read_dataset(small_source).images)])
    adversarial = adversary(images, labels, (0, 1))
    delta = adversarial.astype(int) - images
    assert adversarial.dtype == np.uint8 and np.abs(delta).max() <= 8 and np.abs(delta).max() > 0
    from hgd.attacks import KerasModel

    attacked = KerasModel(adversary.model)
    loss_clean = attacked.objective(images.astype(np.float32), labels, False)
    loss_adversarial = attacked.objective(adversarial.astype(np.float32), labels, False)
    assert np.all(loss_adversarial > loss_clean)
    np.testing.assert_array_equal(adversary(images, labels, (0, 1)), adversarial)  # seeded
    before = attacked.logits(images.astype(np.float32))
    output = model.denoiser.get_layer("out_conv")
    output.set_weights([np.full_like(w, 0.5) for w in output.get_weights()])  # the identity denoiser no more
    assert not np.allclose(attacked.logits(images.astype(np.float32)), before, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_adaptive_fit_runs_on_both_backends(pairs_dir, tmp_path, backend):
    if backend == "jax":
        pytest.importorskip("jax", reason="the JAX backend is tested where jax is installed (the dev extras install it)")
    command = [sys.executable, "-m", "hgd.cli.train", "fit", str(pairs_dir), str(tmp_path / "run"), "--guidance", "fgd",
               "--width", "0.125", "--crop", "64", "--batch-size", "2", "--steps-per-epoch", "2",
               "--validation-pairs", "2", "--max-epochs", "2", "--no-progress", "--adaptive-fraction", "0.5",
               "--adaptive-steps", "2"]
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished: reached max_epochs=2" in result.stdout
    assert "defense-aware examples: 50% of every batch, 2-step PGD at eps 4" in result.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["adaptive_fraction"] == 0.5 and config["adaptive_steps"] == 2
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 3 and all(np.isfinite(float(row.split(",")[3])) for row in history[1:])


def test_adaptive_profile_trains_the_shipped_denoiser_against_defense_aware_examples():
    """defense/profiles/lite_adaptive.json: the shipped denoiser fine-tuned by FGD with half of every batch
    attacked through the denoiser being trained; same network and guides, so the shipped weights load."""
    shipped, adaptive = (load_recipe(path) for path in (REPO / "defense" / "config.json",
                                                         REPO / "defense" / "profiles" / "lite_adaptive.json"))
    (job,), (shipped_job,) = adaptive.jobs, shipped.jobs
    assert adaptive.pairs.attack_models == shipped.pairs.attack_models
    assert job.name == "fgd_lite_ensemble_adaptive" and job.spec.weights.parent.resolve() == shipped_job.spec.weights.parent
    assert (job.config.adaptive_fraction, job.config.adaptive_epsilon, job.config.adaptive_steps) == (0.5, 4, 4)
    assert job.config.init_weights == str(shipped_job.spec.weights)  # fine-tunes the shipped denoiser
    assert job.warm_start is None  # its start is the shipped denoiser
    assert adaptive.float16_weights  # installed as float16, like the shipped file
    for field in ("guidance", "models", "width", "lateral", "crop", "batch_size"):
        assert getattr(job.config, field) == getattr(shipped_job.config, field), field


def test_distilled_profile_learns_from_the_shipped_denoiser_and_is_scored_as_its_chunks_are(tmp_path):
    """defense/profiles/lite_distilled.json: a width-0.25 student of the shipped denoiser, selected on the
    shipped chunks' validation pairs as they are, so its numbers and the shipped ones compare."""
    shipped, distilled = (load_recipe(path) for path in (REPO / "defense" / "config.json",
                                                          REPO / "defense" / "profiles" / "lite_distilled.json"))
    (job,), (shipped_job,) = distilled.jobs, shipped.jobs
    assert job.config.teacher_weights == str(shipped_job.spec.weights)
    assert (job.config.width, job.config.teacher_width) == (0.25, shipped_job.config.width)
    assert job.name != shipped_job.name  # its own weights file and history
    assert distilled.pairs.folder(tmp_path) == shipped.continue_pairs.folder(tmp_path)  # the chunks' pairs, built once
    assert distilled.continue_pairs == shipped.continue_pairs and distilled.pair_slices == shipped.pair_slices
    for field in ("guidance", "models", "validation_pairs", "batch_norm_batches", "selection", "seed", "batch_size"):
        assert getattr(job.continued, field) == getattr(shipped_job.continued, field), field
    assert job.continued.teacher_weights == job.config.teacher_weights  # the chunks go on distilling


def test_install_cli_refuses_a_folder_without_a_best_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hgd.cli.train", "install", str(tmp_path), str(tmp_path / "w.weights.h5")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no best.weights.h5" in result.stderr and not (tmp_path / "w.weights.h5").exists()


# ------------------------------------------------------------------ training continued across machines


def _continuable_defense(folder: pathlib.Path, continue_options: dict | None = None) -> pathlib.Path:
    """A one-denoiser defense whose recipe has a 'continue' section, and trained-looking weights to go on from."""
    training = {"attack_models": [LITE0], "attacks_per_image": 1, "crop": 64, "batch_size": 2, "steps_per_epoch": 2,
                "validation_pairs": 2, "max_epochs": 1}
    if continue_options is not None:
        training["continue"] = continue_options
    config = {"denoiser": {"weights": "weights/d.weights.h5", "width": 0.125}, "members": [{"model": LITE0}],
              "training": training}
    (folder / "weights").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    denoiser = build_dunet(width=0.125)
    rng = np.random.default_rng(1)
    for w in denoiser.trainable_weights:  # a denoiser training can still improve on
        w.assign(w + rng.normal(0, 0.02, w.shape).astype("float32"))
    denoiser.save_weights(folder / "weights" / "d.weights.h5")
    return folder / "config.json"


def test_continue_section_layers_its_options_over_the_last_stage(tmp_path):
    config = _continuable_defense(tmp_path, {"max_epochs": 3, "learning_rate": 1e-4})
    (job,) = load_recipe(config).jobs
    assert job.continued == dataclasses.replace(job.config, max_epochs=3, learning_rate=1e-4)
    raw = json.loads(config.read_text())
    raw["training"]["continue"] = {"init_weights": "x.h5"}  # it starts from the installed weights, nothing else
    config.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="unknown 'continue' keys"):
        load_recipe(config)


def test_a_recipe_reads_a_teacher_relative_to_the_configuration(tmp_path):
    config = _continuable_defense(tmp_path, {"teacher_weights": "weights/teacher.weights.h5", "teacher_width": 0.5})
    (job,) = load_recipe(config).jobs
    assert job.continued.teacher_weights == str((tmp_path / "weights" / "teacher.weights.h5").resolve())
    assert job.continued.teacher_width == 0.5 and job.config.teacher_weights is None  # only the chunks distil


def test_continue_section_may_choose_another_pair_set_for_the_chunks(tmp_path):
    config = _continuable_defense(tmp_path, {"max_epochs": 3, "attack_set": "competition", "attacks_per_image": 2})
    recipe = load_recipe(config)
    assert recipe.pairs == PairChoice((LITE0,), 1, "table1")  # the recipe's own stages keep theirs
    assert recipe.continue_pairs == PairChoice((LITE0,), 2, "competition")
    assert recipe.continue_pairs.folder(tmp_path).name == f"pairs_{LITE0}_k2_competition"
    assert recipe.jobs[0].continued.max_epochs == 3  # the pair keys are not fit options
    raw = json.loads(config.read_text())
    for bad, message in (({"attack_set": "table2"}, "attack_set must be one of"),
                         ({"attack_models": ["resnet18"]}, "resnet18"), ({"attacks_per_image": 99}, "attacks_per_image")):
        raw["training"]["continue"] = bad
        config.write_text(json.dumps(raw))
        with pytest.raises(ValueError, match=message):
            load_recipe(config)


def test_continue_section_may_cut_the_chunks_pairs_into_slices(tmp_path):
    config = _continuable_defense(tmp_path, {"max_epochs": 3, "pair_slices": 2})
    recipe = load_recipe(config)
    assert recipe.pair_slices == 2 and recipe.jobs[0].continued.max_epochs == 3  # not a fit option
    assert load_recipe(_continuable_defense(tmp_path / "plain", {"max_epochs": 3})).pair_slices == 1
    raw = json.loads(config.read_text())
    for bad in (0, 1.5, "2", True):
        raw["training"]["continue"] = {"pair_slices": bad}
        config.write_text(json.dumps(raw))
        with pytest.raises(ValueError, match="'pair_slices' is a whole number"):
            load_recipe(config)
    raw["training"] = {"pair_slices": 2}  # a chunk option, not the recipe's
    config.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="unknown 'training' keys"):
        load_recipe(config)


def test_continue_section_may_weight_the_attack_kinds(tmp_path):
    config = _continuable_defense(tmp_path, {"attack_weights": {"mifgsm": 3}})
    assert load_recipe(config).jobs[0].continued.attack_weights == {"mifgsm": 3}
    raw = json.loads(config.read_text())
    raw["training"]["continue"] = {"attack_weights": {"momentum": 3}}
    config.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="unknown attack kinds \\['momentum'\\]"):
        load_recipe(config)


def test_chunk_pairs_take_the_training_slices_in_turn_and_always_the_same_validation_pairs(tmp_path):
    from hgd.train.continued import chunk_pairs
    from hgd.train.fit import split_pairs

    plan = plan_pairs(list(read_dataset(SAMPLE).images), PairSpec(source="x", validation_fraction=0.25), tmp_path)
    config = FitConfig(models=(LITE0,), validation_pairs=3)
    train, validation = split_pairs(plan, config)
    assert len(validation) == 3 and len(train) > 6
    chunks = [chunk_pairs(plan, config=config, slices=3, chunk=chunk) for chunk in (1, 2, 3, 4)]
    assert all(chunk[-3:] == validation for chunk in chunks)
    slices = [chunk[:-3] for chunk in chunks]
    assert sorted(map(len, slices[:3])) in ([len(train) // 3] * 3, [len(train) // 3, *[-(-len(train) // 3)] * 2],
                                            [len(train) // 3] * 2 + [-(-len(train) // 3)])
    assert sorted(sum(slices[:3], []), key=plan.index) == train  # disjoint, and together every training pair
    assert slices[3] == slices[0] and slices[1] != slices[0]  # the turns come round again
    assert {pair.image for pair in slices[0]} != {pair.image for pair in train[:len(slices[0])]}  # shuffled
    with pytest.raises(ValueError, match="pair_slices must be in 1.."):
        chunk_pairs(plan, config=config, slices=len(train) + 1, chunk=1)


def test_every_chunk_reestimates_the_batch_norm_statistics_on_the_same_training_images(tmp_path):
    from hgd.train.continued import chunk_pairs
    from hgd.train.fit import split_pairs, statistics_pairs

    plan = plan_pairs(list(read_dataset(SAMPLE).images), PairSpec(source="x", validation_fraction=0.25), tmp_path)
    config = FitConfig(models=(LITE0,), validation_pairs=3, batch_size=2, batch_norm_batches=2)
    train, validation = split_pairs(plan, config)
    statistics = statistics_pairs(plan, config)
    assert len(statistics) == 4 and set(statistics) <= set(train) and statistics != train[:4]  # a seeded draw
    assert statistics_pairs(plan, dataclasses.replace(config, validation_pairs=2)) == statistics  # not the run's
    chunks = [chunk_pairs(plan, config=config, slices=3, chunk=chunk) for chunk in (1, 2, 3)]
    assert all(set(statistics) <= set(chunk) and chunk[-3:] == validation for chunk in chunks)
    assert len({pair for chunk in chunks for pair in chunk[:-3]}) == len(train)  # the slices still cover them
    assert statistics_pairs(plan, dataclasses.replace(config, batch_norm_batches=0)) == []
    assert len(statistics_pairs(plan, dataclasses.replace(config, batch_norm_batches=99))) == len(train)


def test_a_chunk_goes_on_at_the_last_rate_but_never_below_the_recipes_final_rate(tmp_path):
    from hgd.train.continued import HISTORY_FIELDS, _starting_rate

    config = FitConfig(models=(LITE0,), learning_rate=1e-3, final_learning_rate=1e-4)
    history = tmp_path / "d.csv"
    assert _starting_rate(history, config) == 1e-3  # the first chunk: the recipe's first rate
    row = dict.fromkeys(HISTORY_FIELDS, "0")
    for rate, expected in (("0.0005", 5e-4), ("1e-05", 1e-4)):  # 1e-5: a recipe whose final rate was raised
        history.write_text(",".join(HISTORY_FIELDS) + "\n" + ",".join({**row, "learning_rate": rate}.values()) + "\n")
        assert _starting_rate(history, config) == expected


@pytest.mark.slow
def test_a_sliced_chunk_builds_only_its_slice_and_the_validation_pairs(small_source, tmp_path):
    from hgd.train import continued

    config = _continuable_defense(tmp_path / "defense", {"max_epochs": 1, "pair_slices": 3})
    start = tmp_path / "start.weights.h5"
    shutil.copy(tmp_path / "defense" / "weights" / "d.weights.h5", start)
    work = tmp_path / "work"
    (result,) = continued.continue_training(config, small_source, work, max_hours=1.0, progress=False)
    assert result.state.epoch == 1
    pairs_dir = load_recipe(config).continue_pairs.folder(work)
    spec, plan = read_plan(pairs_dir)
    fit_config = FitConfig.from_json((work / "runs" / "d_continue1" / "config.json").read_text())
    first = continued.chunk_pairs(plan, config=fit_config, slices=3, chunk=1)
    built = {pair for pair in plan if pair.adversarial.is_file() and pair.attack != "noop"}
    assert built == {pair for pair in first if pair.attack != "noop"} and len(first) < len(plan)
    second = continued.chunk_pairs(plan, config=fit_config, slices=3, chunk=2)
    build_pairs(small_source, pairs_dir, spec, progress=False, select=lambda plan: second)
    # more of the folder built: the validation pairs, and so the start's loss, are what chunk 1 scored
    assert fit_module.validation_loss(pairs_dir, start, fit_config) == pytest.approx(result.state.initial_val_loss,
                                                                                      abs=1e-4)


@pytest.mark.slow
def test_chunks_go_on_from_the_installed_weights_and_append_one_history(small_source, tmp_path):
    """Two chunks: each starts from the weights the configuration reads, installs its best checkpoint if it beats
    them (float32: a small file), and appends its epochs to the committed history, the counters going on."""
    from hgd.train import continued

    config = _continuable_defense(tmp_path / "defense", {"max_epochs": 2})
    weights = tmp_path / "defense" / "weights" / "d.weights.h5"
    history_dir = tmp_path / "history"
    first = continued.continue_training(config, small_source, tmp_path / "work", max_hours=1.0,
                                        history_dir=history_dir, progress=False)
    (result,) = first
    assert result.chunk == 1 and result.state.epoch == 2
    assert result.installed == (result.state.best_val_loss < result.state.initial_val_loss)
    run_best = tmp_path / "work" / "runs" / "d_continue1" / "best.weights.h5"
    if result.installed:
        assert weights.read_bytes() == run_best.read_bytes()  # float32, as trained
    rows = continued.read_history(history_dir / "d.csv")
    assert [(r["chunk"], r["epoch"]) for r in rows] == [("1", "0"), ("1", "1"), ("1", "2")]
    assert [int(r["steps"]) for r in rows] == [0, 2, 4] and [int(r["images"]) for r in rows] == [0, 4, 8]
    assert float(rows[0]["val_loss"]) == pytest.approx(result.state.initial_val_loss, abs=1e-5)
    assert float(rows[2]["cpu_hours"]) > float(rows[1]["cpu_hours"]) > 0
    assert (history_dir / "d.png").stat().st_size > 0

    history = history_dir / "d.csv"  # as if chunk 1 had lowered the rate in its last epoch
    history.write_text(history.read_text().replace(f",{rows[-1]['learning_rate']},", ",0.0005,"))
    (second,) = continued.continue_training(config, small_source, tmp_path / "work", max_hours=1.0,
                                            history_dir=history_dir, progress=False)
    assert second.chunk == 2 and (tmp_path / "work" / "runs" / "d_continue2" / "state.json").is_file()
    chunk2 = json.loads((tmp_path / "work" / "runs" / "d_continue2" / "config.json").read_text())
    assert chunk2["learning_rate"] == 0.0005  # the schedule goes on from chunk 1's last rate
    start = build_dunet(width=0.125)
    start.load_weights(tmp_path / "work" / "runs" / "d_continue2" / "last.weights.h5")  # it trained on
    rows = continued.read_history(history_dir / "d.csv")
    assert [int(r["steps"]) for r in rows if r["chunk"] == "2"] == [4, 6, 8]
    # chunk 2 started from what chunk 1 left installed: its starting loss is chunk 1's best (or start)
    chunk1_left = min(float(r["val_loss"]) for r in rows if r["chunk"] == "1") if result.installed else \
        float(rows[0]["val_loss"])
    assert float(rows[3]["val_loss"]) == pytest.approx(chunk1_left, abs=1e-4)


@pytest.mark.slow
def test_a_chunk_selecting_by_accuracy_records_the_labels_and_installs_by_them(small_source, tmp_path):
    """selection 'accuracy' (the shipped recipe's): the history's val_accuracy is the run's, epoch 0's the start's,
    and the chunk installs exactly when its best epoch gets more labels right (or as many at a lower loss)."""
    from hgd.train import continued

    config = _continuable_defense(tmp_path / "defense", {"max_epochs": 2, "selection": "accuracy",
                                                         "validation_pairs": 4})
    weights = tmp_path / "defense" / "weights" / "d.weights.h5"
    before = weights.read_bytes()
    (result,) = continued.continue_training(config, small_source, tmp_path / "work", max_hours=1.0,
                                            history_dir=tmp_path / "history", progress=False)
    state = result.state
    rows = continued.read_history(tmp_path / "history" / "d.csv")
    accuracies = [float(r["val_accuracy"]) for r in rows]
    assert accuracies[0] == pytest.approx(state.initial_val_accuracy, abs=1e-5)
    assert state.best_val_accuracy == pytest.approx(max(accuracies[1:]), abs=1e-5)
    assert all(a * 4 == pytest.approx(round(a * 4)) for a in accuracies)  # shares of the 4 validation pairs
    assert result.installed == state.beats_start("accuracy") == (weights.read_bytes() != before)


@pytest.mark.slow
def test_chunks_follow_one_another_while_a_quarter_hour_is_left(small_source, tmp_path):
    """A chunk that ends early leaves the session's time to the next one; with too little time left, none starts."""
    from hgd.train import continued

    config = _continuable_defense(tmp_path / "defense", {"max_epochs": 1})
    history_dir = tmp_path / "history"
    both = continued.continue_chunks(config, small_source, tmp_path / "work", max_hours=1.0, chunks=2,
                                     history_dir=history_dir, progress=False)
    assert [(result.chunk, result.state.epoch) for result in both] == [(1, 1), (2, 1)]
    rows = continued.read_history(history_dir / "d.csv")
    assert [(r["chunk"], r["epoch"]) for r in rows] == [("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")]
    # chunk 2 went on from what chunk 1 left installed
    chunk1_left = min(float(rows[0]["val_loss"]), float(rows[1]["val_loss"]))
    assert float(rows[2]["val_loss"]) == pytest.approx(chunk1_left, abs=1e-4)
    # a quarter hour in all: the first chunk runs, and what it leaves is under a quarter hour
    (third,) = continued.continue_chunks(config, small_source, tmp_path / "work", max_hours=continued.MIN_CHUNK_HOURS,
                                         chunks=3, history_dir=history_dir, progress=False)
    assert third.chunk == 3 and not (tmp_path / "work" / "runs" / "d_continue4").exists()


def test_several_chunks_need_a_history_one_process_and_a_count(small_source, tmp_path):
    from hgd.train import continued
    from hgd.train.distributed import Placement

    config = _continuable_defense(tmp_path / "defense", {"max_epochs": 1})
    work = tmp_path / "work"
    with pytest.raises(ValueError, match="need a history directory"):
        continued.continue_chunks(config, small_source, work, max_hours=1.0, chunks=2)
    with pytest.raises(ValueError, match="need one process, not 2"):
        continued.continue_chunks(config, small_source, work, max_hours=1.0, chunks=2, history_dir=tmp_path,
                                  placement=Placement(devices=2, process_id=0, num_processes=2))
    with pytest.raises(ValueError, match="at least 1, got 0"):
        continued.continue_chunks(config, small_source, work, max_hours=1.0, chunks=0)
    assert not work.exists()  # refused before building anything


def test_a_chunk_installs_its_best_only_if_it_beats_the_start_float32_while_small(tmp_path):
    from hgd.train import continued

    (tmp_path / "run").mkdir()
    build_dunet(width=0.125).save_weights(tmp_path / "run" / "best.weights.h5")
    installed = tmp_path / "installed.weights.h5"
    installed.write_bytes(b"old")
    worse = RunState(epoch=2, best_val_loss=0.31, initial_val_loss=0.30)
    assert not continued._install_if_better(tmp_path / "run", worse, installed, "loss")
    assert installed.read_bytes() == b"old"
    # by the labels: a lower loss with fewer labels right is no better
    fewer = RunState(epoch=2, best_val_loss=0.29, initial_val_loss=0.30, best_val_accuracy=0.6, initial_val_accuracy=0.7)
    assert not continued._install_if_better(tmp_path / "run", fewer, installed, "accuracy")
    assert installed.read_bytes() == b"old"
    better = RunState(epoch=2, best_val_loss=0.29, initial_val_loss=0.30)
    assert continued._install_if_better(tmp_path / "run", better, installed, "loss")
    assert installed.read_bytes() == (tmp_path / "run" / "best.weights.h5").read_bytes()  # float32, unrounded
    big = continued.FLOAT32_LIMIT_BYTES
    try:
        continued.FLOAT32_LIMIT_BYTES = 1000  # a file over the limit is stored float16
        assert continued._install_if_better(tmp_path / "run", better, installed, "loss")
    finally:
        continued.FLOAT32_LIMIT_BYTES = big
    assert installed.stat().st_size < 0.8 * (tmp_path / "run" / "best.weights.h5").stat().st_size


def test_continue_refuses_a_recipe_without_its_section_or_weights(small_source, tmp_path):
    from hgd.train import continued

    config = _continuable_defense(tmp_path / "a")
    with pytest.raises(ValueError, match="no 'continue' section"):
        continued.continue_training(config, small_source, tmp_path / "work", max_hours=1.0)
    config = _continuable_defense(tmp_path / "b", {"max_epochs": 2})
    (tmp_path / "b" / "weights" / "d.weights.h5").unlink()
    with pytest.raises(FileNotFoundError, match="names trained denoiser weights that do not exist"):
        continued.continue_training(config, small_source, tmp_path / "work", max_hours=1.0)


@pytest.mark.slow
def test_a_rerun_past_its_limit_trains_no_further_epoch(pairs_dir, tmp_path):
    """A session killed mid-epoch after its hour limit was reached: rerunning it only reports the state."""
    run = tmp_path / "run"
    fit(pairs_dir, run, _tiny(), verbose=0)
    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**state, "finished": "", "hours": 2.0}))  # killed, over the limit
    history = (run / "history.csv").read_text()
    state = fit(pairs_dir, run, _tiny(max_epochs=3, max_hours=1.0), verbose=0)
    assert state.finished.startswith("reached max_") and (run / "history.csv").read_text() == history


def _script_commands(script: str, *args: str, **env: str) -> list[str]:
    """A shell script of scripts/ run with PYTHON=echo: the Python commands it would run, one per line."""
    result = subprocess.run([str(REPO / "scripts" / script), *args], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "PYTHON": "echo", **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_measure_shipped_scores_the_defense_on_the_kept_attack_pieces(tmp_path):
    """The after-chunk measurements: every oblivious attack against the defense and every baseline, reusing
    the stored attack pieces; the defense's run cost; Table 3."""
    harness, bench = _script_commands("measure_shipped.sh", str(tmp_path))
    assert "-m hgd.cli.runner --all --keep-attacks" in harness and "--eps cycle" in harness
    assert "--attack " not in harness and "--defense " not in harness  # --all: every oblivious attack, every defense
    assert str(tmp_path / "harness") in harness and "--time-limit 500" in harness  # EVAL's limit by default
    assert "bench/defense_run.py" in bench and "--trained" in bench
    slower, _ = _script_commands("measure_shipped.sh", str(tmp_path), TIME_LIMIT="900")
    assert "--time-limit 900" in slower
    *_, testsets, table3 = _script_commands("measure_shipped.sh", str(tmp_path), TABLE3="1")
    assert "hgd.cli.experiments testsets" in testsets and "HGD shipped=defense/config.json" in table3


def test_continue_training_script_appends_to_the_committed_history(tmp_path):
    (command, *_) = _script_commands("continue_training.sh", "1.5", str(tmp_path))
    assert command.startswith("-m hgd.cli.train continue") and str(REPO / "defense" / "config.json") in command
    assert "--max-hours 1.5" in command and f"--history-dir {REPO / 'docs' / 'results' / 'training'}" in command
    assert "--chunks 3" in command  # one pass over the pair slices, time allowing
    (one, *_) = _script_commands("continue_training.sh", "1.5", str(tmp_path), CHUNKS="1")
    assert "--chunks 1" in one


@pytest.mark.slow
def test_validation_loss_of_a_checkpoint_is_what_its_run_reported(pairs_dir, tmp_path):
    """`hgd.train validate` scores any weights on a run's validation pairs: the run's best checkpoint gets the
    run's best validation loss and accuracy back, and the bfloat16 policy moves the loss only a little."""
    from hgd.train.fit import validation_loss, validation_scores

    config = _tiny(validation_pairs=5)
    state = fit(pairs_dir, tmp_path / "run", config, verbose=0)
    best = tmp_path / "run" / "best.weights.h5"
    assert validation_loss(pairs_dir, best, config) == pytest.approx(state.best_val_loss, rel=1e-5)
    _, outcomes = validation_scores(pairs_dir, best, config)
    assert state.best_val_accuracy == pytest.approx(np.mean([right for _, right in outcomes]))
    assert state.initial_val_accuracy is not None
    rounded = validation_loss(pairs_dir, best, _tiny(validation_pairs=5, dtype_policy="mixed_bfloat16"))
    assert rounded == pytest.approx(state.best_val_loss, rel=0.05)
