"""Defense-aware attack machinery: the margin loss, PGD restarts and loss curve, BPDA, EOT, Square.

Library pieces run on ``test_attacks``'s tiny seeded conv net (32x32 -> 10 logits); Square also on
EfficientNet-Lite0 and the sample images; one subprocess repeats a BPDA + margin + restarts PGD
and Square on the JAX backend. The submissions (``attacks/adaptive_pgd``,
``attacks/adaptive_pgd_targeted``, ``attacks/square``) are copied the way the runner copies them
and run against a defense config with a tiny random DUNET (conftest's ``dunet_weights``) in front
of Lite0, with few steps.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hgd import attacks
from hgd.attacks import BPDA, EOT, KerasModel, Model, losses
from hgd.runner.submissions import load_submission
from hgd.defenses.transforms import BitDepthReduction, GaussianNoise, JPEGCompression
from submission_process import Launched, run_submission
from tiny_attack_model import NUM_CLASSES, cross_entropy, in_box, logits_of

REPO = pathlib.Path(__file__).resolve().parents[1]
ATTACKS = REPO / "attacks"
SAMPLE_IMAGES = REPO / "sample_data" / "images"
ADAPTIVE = ("adaptive_pgd", "adaptive_pgd_targeted", "square")


class Counting(Model):
    """Wraps a model; counts the images each method is asked about."""

    def __init__(self, model) -> None:
        self.model = attacks.as_model(model)
        self.forward_images = 0
        self.gradient_images = 0

    @property
    def num_classes(self):
        return self.model.num_classes

    def logits(self, images):
        self.forward_images += len(images)
        return self.model.logits(images)

    def objective_gradient(self, images, classes, targeted, loss="ce"):
        self.gradient_images += len(images)
        return self.model.objective_gradient(images, classes, targeted, loss)


# ----------------------------------------------------------------------------------------------- losses


def test_margin_loss_values():
    logits = np.array([[1.0, 5.0, 2.0], [3.0, -1.0, 0.5]], np.float32)
    classes = np.array([1, 2])
    # untargeted: max other - own; targeted: the negative
    np.testing.assert_allclose(losses.objective_numpy(logits, classes, False, "margin"), [2.0 - 5.0, 3.0 - 0.5])
    np.testing.assert_allclose(losses.objective_numpy(logits, classes, True, "margin"), [3.0, -2.5])
    np.testing.assert_array_equal(losses.succeeded(logits, classes, False), [False, True])
    np.testing.assert_array_equal(losses.succeeded(logits, classes, True), [True, False])


@pytest.mark.parametrize("loss", ["ce", "margin"])
@pytest.mark.parametrize("targeted", [False, True])
def test_keras_and_numpy_objectives_agree(model, images, loss, targeted):
    classes = np.arange(len(images)) % NUM_CLASSES
    values, gradient = KerasModel(model).objective_gradient(images.astype(np.float32), classes, targeted, loss)
    expected = losses.objective_numpy(logits_of(model, images), classes, targeted, loss)
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-5)
    if loss == "ce":
        np.testing.assert_allclose(values, (-1 if targeted else 1) * cross_entropy(model, images, classes), rtol=1e-5)
    assert gradient.shape == images.shape and np.abs(gradient).max() > 0


def test_margin_gradient_is_the_logit_difference_gradient(model, images):
    """d(max_other - own)/dx = d z_j*/dx - d z_c/dx, checked against gradients of single logits."""
    import keras

    from hgd.backend import input_gradient

    x = images[:1].astype(np.float32)
    z = logits_of(model, images[:1])[0]
    own = 3
    other = int(np.argmax(np.where(np.arange(NUM_CLASSES) == own, -np.inf, z)))
    _, expected = input_gradient(lambda t: keras.ops.sum(model(t)[:, other] - model(t)[:, own]), x)
    _, gradient = KerasModel(model).objective_gradient(x, np.array([own]), False, "margin")
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls", [attacks.FGSM, attacks.BIM, attacks.PGD, attacks.MIFGSM], ids=lambda c: c.__name__)
def test_margin_attacks_raise_the_margin_loss(model, images, cls):
    labels = logits_of(model, images).argmax(1)
    kwargs = {"seed": 0} if cls is attacks.PGD else {}
    adv = cls(loss="margin", **kwargs)(model, images, epsilon=4)
    before = losses.objective_numpy(logits_of(model, images), labels, False, "margin")
    after = losses.objective_numpy(logits_of(model, adv), labels, False, "margin")
    assert np.all(after > before), (before, after)


def test_bad_loss_is_refused():
    with pytest.raises(ValueError, match="loss must be one of"):
        attacks.PGD(loss="hinge")
    with pytest.raises(ValueError, match="loss"):
        attacks.SquareAttack(loss="l2")


# ---------------------------------------------------------------------------------- restarts, loss curve


def test_restarts_keep_per_image_the_success_or_the_best_loss(model, images):
    eps, steps = 1, 2  # weak enough that some images survive a restart
    pgd = attacks.PGD(steps=steps, seed=3, loss="margin", restarts=4, record_loss=True)
    labels = logits_of(model, images).argmax(1)
    adv = pgd.perturb(model, images, labels, epsilon=eps)
    curve = pgd.loss_curve
    assert curve.shape == (4, steps + 1, len(images)) and curve.dtype == np.float32
    assert not np.isnan(curve[0]).any()  # the first restart runs every image
    final = losses.objective_numpy(logits_of(model, adv), labels, False, "margin")
    broken = final > 0
    for i in range(len(images)):
        ran = np.flatnonzero(~np.isnan(curve[:, -1, i]))
        assert list(ran) == list(range(len(ran)))  # restarts run in order, and stop once the image is broken
        results = curve[ran, -1, i]
        if broken[i]:
            assert results[-1] > 0 and np.all(results[:-1] <= 0)  # the first success is kept
            np.testing.assert_allclose(final[i], results[-1], rtol=1e-5, atol=1e-5)
        else:
            assert len(ran) == 4
            np.testing.assert_allclose(final[i], results.max(), rtol=1e-5, atol=1e-5)  # the best of the four
    assert (~np.isnan(curve[1:, -1])).any() and not broken.all(), "the test needs images that survive a restart"
    single = attacks.PGD(steps=steps, seed=3, loss="margin").perturb(model, images, labels, epsilon=eps)
    single_value = losses.objective_numpy(logits_of(model, single), labels, False, "margin")
    np.testing.assert_allclose(single_value, curve[0, -1], rtol=1e-5, atol=1e-5)  # restart 0 = the plain run
    assert np.all(final >= single_value - 1e-5)


def test_restarts_stop_when_every_image_is_broken(model, images):
    counting = Counting(model)
    pgd = attacks.PGD(steps=5, seed=0, restarts=3, record_loss=True)
    adv = pgd(counting, images, epsilon=32)
    assert np.all(logits_of(model, adv).argmax(1) != logits_of(model, images).argmax(1))
    assert counting.gradient_images == 5 * len(images)  # one restart was enough
    assert np.isnan(pgd.loss_curve[1:]).all()


def test_the_loss_curve_rises(model, images):
    pgd = attacks.PGD(steps=10, alpha=0.5, seed=0, loss="margin", record_loss=True)
    labels = (logits_of(model, images).argmax(1) + 1) % NUM_CLASSES  # a class that is not the top one: no early end
    pgd(model, images, labels, epsilon=8)
    mean = pgd.loss_curve[0].mean(axis=1)
    assert mean[-1] > mean[0] and np.mean(np.diff(mean) > 0) >= 0.8, mean


@pytest.mark.parametrize("targeted", [False, True])
def test_early_stop_ends_each_image_at_its_first_saved_success(model, images, targeted):
    labels = logits_of(model, images).argmax(1)
    classes = (labels + 1) % NUM_CLASSES if targeted else labels
    criterion = attacks.TargetedMisclassification(classes) if targeted else classes
    steps = 40
    counting = Counting(model)
    early = attacks.PGD(steps=steps, alpha=0.5, seed=0, loss="margin", early_stop=True, record_loss=True)
    adv = early(counting, images, criterion, epsilon=16)
    fooled = losses.succeeded(logits_of(model, adv), classes, targeted)
    assert fooled.all() and in_box(adv, images, 16)  # every saved image fools the model
    assert counting.gradient_images < steps * len(images)  # and cost fewer steps than the full run
    curve = early.loss_curve[0]
    stopped = np.flatnonzero(curve[:-1].max(axis=0) > 0)  # fooled before the last step
    assert stopped.size >= 2
    for i in stopped:  # from its first "fooled" iterate on, a stopped image keeps its result's objective
        step = np.argmax(curve[:-1, i] > 0)
        assert np.all(curve[step + 1:-1, i] == curve[step, i])
    full = attacks.PGD(steps=steps, alpha=0.5, seed=0, loss="margin")(model, images, criterion, epsilon=16)
    assert np.mean(losses.succeeded(logits_of(model, full), classes, targeted)) <= np.mean(fooled)


def test_early_stop_checks_the_rounded_image_before_stopping(model, images):
    """An iterate that fools the model only before rounding is not a result: the attack goes on."""
    labels = logits_of(model, images).argmax(1)

    class FooledUnlessRounded(Counting):
        def objective_gradient(self, x, classes, targeted, loss="ce"):
            value, gradient = super().objective_gradient(x, classes, targeted, loss)
            return np.full_like(value, 1.0), gradient  # "fooled" at every float iterate

    liar = FooledUnlessRounded(model)
    adv = attacks.PGD(steps=6, alpha=0.5, seed=0, loss="margin", early_stop=True)(liar, images, labels, epsilon=1)
    still_correct = ~losses.succeeded(logits_of(model, adv), labels, False)
    assert still_correct.any(), "the test needs images that eps 1 does not break"
    assert liar.gradient_images > len(images)  # the images the rounding check refused went on stepping
    assert liar.forward_images >= len(images)  # every candidate was checked once rounded


def test_early_stop_needs_the_margin_loss():
    with pytest.raises(ValueError, match="margin"):
        attacks.PGD(early_stop=True)
    assert "early_stop=True" in repr(attacks.PGD(loss="margin", early_stop=True))


def test_restarts_are_checked():
    with pytest.raises(ValueError, match="restarts"):
        attacks.PGD(restarts=0)
    with pytest.raises(ValueError, match="random start"):
        attacks.IterativeGradientSignAttack(steps=2, restarts=2)
    assert attacks.PGD(restarts=2).loss_curve is None


# ------------------------------------------------------------------------------------------- BPDA, EOT


def test_bpda_gradient_is_the_model_gradient_at_the_transformed_input(model, images):
    squeeze = BitDepthReduction(bits=3)
    x = images.astype(np.float32) + np.float32(0.3)  # not integers: BPDA rounds first, as the saved PNG will be
    classes = np.arange(len(images)) % NUM_CLASSES
    values, gradient = BPDA(model, squeeze).objective_gradient(x, classes, False, "ce")
    transformed = squeeze(images).astype(np.float32)
    expected_values, expected = KerasModel(model).objective_gradient(transformed, classes, False, "ce")
    np.testing.assert_array_equal(gradient, expected)
    np.testing.assert_array_equal(values, expected_values)
    np.testing.assert_array_equal(BPDA(model, squeeze).logits(x), logits_of(model, squeeze(images)))
    assert not np.allclose(gradient, KerasModel(model).objective_gradient(x, classes, False, "ce")[1])


def test_bpda_with_an_approximation_pulls_the_gradient_back_through_it(model, images):
    squeeze = BitDepthReduction(bits=3)
    classes = np.zeros(len(images), int)
    x = images.astype(np.float32)
    _, identity = BPDA(model, squeeze).objective_gradient(x, classes, True, "margin")
    _, scaled = BPDA(model, squeeze, approximation=lambda z: 0.5 * z + 7.0).objective_gradient(x, classes, True,
                                                                                              "margin")
    np.testing.assert_allclose(scaled, 0.5 * identity, rtol=1e-6, atol=1e-9)


def test_eot_averages_the_draws(model, images):
    x = images.astype(np.float32)
    classes = np.arange(len(images)) % NUM_CLASSES
    eot = EOT(BPDA(model, GaussianNoise(sigma=20, seed=5)), draws=3)
    values, gradient = eot.objective_gradient(x, classes, False, "margin")
    single = BPDA(model, GaussianNoise(sigma=20, seed=5))  # the same stream of draws, one at a time
    draws = [single.objective_gradient(x, classes, False, "margin") for _ in range(3)]
    np.testing.assert_allclose(values, np.mean([v for v, _ in draws], axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gradient, np.mean([g for _, g in draws], axis=0), rtol=1e-5, atol=1e-9)
    assert not np.allclose(draws[0][1], draws[1][1])  # the draws differ: there is something to average
    eot_logits = EOT(BPDA(model, GaussianNoise(sigma=20, seed=5)), draws=3).logits(x)
    single = BPDA(model, GaussianNoise(sigma=20, seed=5))
    np.testing.assert_allclose(eot_logits, np.mean([single.logits(x) for _ in range(3)], axis=0), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="draws"):
        EOT(model, draws=0)


def test_every_sign_gradient_attack_goes_through_bpda_and_eot(model, images):
    jpeg = JPEGCompression(quality=75)
    defended = BPDA(model, jpeg)
    labels = logits_of(model, jpeg(images)).argmax(1)  # what the defense predicts on the clean images
    for attack in (attacks.FGSM(), attacks.BIM(steps=5), attacks.PGD(steps=5, seed=0, restarts=2),
                   attacks.MIFGSM(steps=5, loss="margin")):
        adv = attack(defended, images, epsilon=8)
        assert in_box(adv, images, 8)
        before = losses.objective_numpy(logits_of(model, jpeg(images)), labels, False, "ce")
        after = losses.objective_numpy(logits_of(model, jpeg(adv)), labels, False, "ce")
        assert after.mean() > before.mean(), attack
    noisy = EOT(BPDA(model, GaussianNoise(sigma=4, seed=0)), draws=2)
    adv = attacks.PGD(steps=3, seed=0)(noisy, images, epsilon=8)
    assert in_box(adv, images, 8)


def test_criteria_and_attacks_accept_attack_models(model, images):
    defended = BPDA(model, BitDepthReduction(bits=4))
    goal = attacks.Misclassification().goal(defended, images.astype(np.float32))
    np.testing.assert_array_equal(goal.classes, logits_of(model, BitDepthReduction(bits=4)(images)).argmax(1))
    with pytest.raises(ValueError, match="0-based"):
        attacks.FGSM()(defended, images, np.full(len(images), NUM_CLASSES), epsilon=4)  # num_classes passes through
    assert attacks.as_model(defended) is defended and attacks.as_model(None) is None


# ----------------------------------------------------------------------------------------------- Square


@pytest.mark.parametrize("epsilon", [1, 4, 16])
def test_square_stays_in_the_box_on_integer_pixels(model, images, epsilon):
    floats = attacks.SquareAttack(queries=50, seed=0).perturb(model, images, epsilon=epsilon)
    assert in_box(floats, images, epsilon)
    np.testing.assert_array_equal(floats, np.rint(floats))  # clean +- eps, clipped: nothing to round
    adv = attacks.SquareAttack(queries=50, seed=0)(model, images, epsilon=epsilon)
    np.testing.assert_array_equal(adv, floats.astype(np.uint8))
    assert np.abs(adv.astype(int) - images).max() == epsilon


@pytest.mark.parametrize("queries", [1, 7, 40])
def test_square_respects_its_query_budget(model, images, queries):
    counting = Counting(model)
    labels = (logits_of(model, images).argmax(1) + 1) % NUM_CLASSES  # given labels: no clean-prediction query
    square = attacks.SquareAttack(queries=queries, seed=0, loss="margin")
    square(counting, images, labels, epsilon=8)
    assert counting.gradient_images == 0
    assert counting.forward_images == square.queries_used.sum() <= queries * len(images)
    assert np.all(square.queries_used <= queries) and np.all(square.queries_used >= 1)


def test_square_is_greedy_and_seeded(model, images):
    labels = (logits_of(model, images).argmax(1) + 1) % NUM_CLASSES
    before = losses.objective_numpy(logits_of(model, attacks.SquareAttack(queries=1, seed=2)(
        model, images, labels, epsilon=4)), labels, False, "margin")
    adv = attacks.SquareAttack(queries=60, seed=2)(model, images, labels, epsilon=4)
    after = losses.objective_numpy(logits_of(model, adv), labels, False, "margin")
    assert np.all(after >= before)  # only improvements are accepted
    np.testing.assert_array_equal(adv, attacks.SquareAttack(queries=60, seed=2)(model, images, labels, epsilon=4))


def test_square_schedule():
    from hgd.attacks.square import square_fraction

    assert [square_fraction(0.05, i, 10000) for i in (0, 10, 11, 50, 51, 8001, 9999)] == [
        0.05, 0.05, 0.025, 0.025, 0.0125, 0.05 / 512, 0.05 / 512]
    # rescaled to the budget: iteration 5 of 1000 is 50 of 10000, 500 of 1000 is 5000
    assert (square_fraction(0.1, 5, 1000), square_fraction(0.1, 500, 1000)) == (0.1 / 2, 0.1 / 128)


def test_square_works_through_a_non_differentiable_transform(model, images):
    jpeg = JPEGCompression(quality=75)
    counting = Counting(BPDA(model, jpeg))
    adv = attacks.SquareAttack(queries=30, seed=0)(counting, images, epsilon=8)
    assert counting.gradient_images == 0 and in_box(adv, images, 8)
    clean = logits_of(model, jpeg(images)).argmax(1)

    def margin(x):
        return losses.objective_numpy(logits_of(model, jpeg(x)), clean, False, "margin")

    start = attacks.SquareAttack(queries=1, seed=0)(BPDA(model, jpeg), images, epsilon=8)  # the stripes alone
    assert np.all(margin(adv) >= margin(start))  # greedy from its start, on the defense's own output
    assert margin(adv).mean() > margin(images).mean()


def test_square_lowers_lite0_accuracy_on_sample_images():
    from hgd.defenses.defended import Member, build_defended_model
    from hgd.io.competition_csv import read_dataset_csv
    from hgd.io.images import load_image
    from hgd.zoo import get_model

    dataset = read_dataset_csv(REPO / "sample_data" / "dev_dataset.csv")
    ids = sorted(dataset)[:4]
    images = np.stack([load_image(SAMPLE_IMAGES / f"{i}.png")[0] for i in ids])
    labels = np.array([dataset[i][0] - 1 for i in ids])
    lite0 = build_defended_model([Member(get_model("efficientnet_lite0"))])
    clean = logits_of(lite0, images).argmax(1) == labels
    square = attacks.SquareAttack(queries=200, seed=0)  # broken images stop early: ~10 s on a CPU
    adv = square(lite0, images, labels, epsilon=16)
    attacked = logits_of(lite0, adv).argmax(1) == labels
    assert clean.sum() >= 3 and in_box(adv, images, 16)
    assert attacked.sum() <= clean.sum() - 2, (clean, attacked, square.queries_used)


# -------------------------------------------------------------------------------------------------- JAX

JAX_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import keras
import numpy as np
import tiny_attack_model as t
from hgd import attacks
from hgd.defenses.transforms import BitDepthReduction
model, images = t.tiny_model(), t.tiny_images()
pgd = attacks.PGD(steps=4, seed=0, loss="margin", restarts=2, record_loss=True)
adv = pgd(attacks.BPDA(model, BitDepthReduction(bits=5)), images, epsilon=8)
square = attacks.SquareAttack(queries=20, seed=0)(model, images, epsilon=8)
np.savez(sys.argv[2], backend=keras.backend.backend(), pgd=adv, curve=pgd.loss_curve, square=square)
"""


def test_adaptive_attacks_on_jax_match_tensorflow(model, images, tmp_path):
    out = tmp_path / "jax.npz"
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", JAX_PROBE, str(REPO / "tests"), str(out)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    jax_out = np.load(out)
    assert str(jax_out["backend"]) == "jax"
    pgd = attacks.PGD(steps=4, seed=0, loss="margin", restarts=2, record_loss=True)
    tf_adv = pgd(BPDA(model, BitDepthReduction(bits=5)), images, epsilon=8)
    assert np.mean(jax_out["pgd"] != tf_adv) < 0.01
    np.testing.assert_allclose(jax_out["curve"][0], pgd.loss_curve[0], rtol=1e-3, atol=1e-3)
    assert in_box(jax_out["square"], images, 8) and np.abs(jax_out["square"].astype(int) - images).max() == 8


# ------------------------------------------------------------------------------------------ submissions


def test_adaptive_submissions_attack_the_shipped_defense_without_a_copy_of_it():
    from hgd.attacks.config import defense_config_path, load_attack_config

    for name in ADAPTIVE:
        folder = ATTACKS / name
        metadata = json.loads((folder / "metadata.json").read_text())
        assert metadata["defense_aware"] is True and metadata["reads"] == ["../../defense"]
        assert not (folder / "defense").exists(), "each weights file is committed once, in defense/"
        config = load_attack_config(folder / "config.json")
        assert config.model["defense"] == "hgd_lite"
        assert defense_config_path(config).resolve() == (REPO / "defense" / "config.json").resolve()
        assert (REPO / "defense").resolve() in load_submission(folder).reads  # retrained weights re-run its pieces
    targeted = load_attack_config(ATTACKS / "adaptive_pgd_targeted" / "config.json")
    untargeted = load_attack_config(ATTACKS / "adaptive_pgd" / "config.json")
    assert targeted.targeted and not untargeted.targeted
    assert {targeted.attack.loss, untargeted.attack.loss} == {"ce", "margin"}
    assert min(targeted.attack.steps, untargeted.attack.steps) >= 100
    assert targeted.attack.restarts > 1 and untargeted.attack.restarts > 1
    assert isinstance(load_attack_config(ATTACKS / "square" / "config.json").attack, attacks.SquareAttack)


def test_oblivious_submissions_are_not_marked_defense_aware():
    from hgd.attacks.config import defense_config_path, load_attack_config

    for folder in sorted(p for p in ATTACKS.iterdir() if (p / "metadata.json").is_file()):
        aware = defense_config_path(load_attack_config(folder / "config.json")) is not None
        assert load_submission(folder).defense_aware is aware, folder.name


def test_defense_aware_submissions_refuse_without_trained_weights(tmp_path):
    """Copies aimed at a copy of the shipped defense without its weights: adaptive_pgd run as the
    competition runs it (exit 2, REFUSED, nothing written); the other two in-process."""
    from hgd.attacks.config import defense_config_path, load_attack_config, require_defense_weights
    from hgd.defenses import MissingWeights
    from hgd.defenses.defended import load_config

    copies = {name: _copy_aware_of(name, tmp_path / "code", REPO / "defense" / "config.json") for name in ADAPTIVE}
    for other in ADAPTIVE[1:]:
        config_path = copies[other] / "config.json"
        with pytest.raises(MissingWeights, match="attacks a defense that cannot run"):
            require_defense_weights(load_attack_config(config_path), config_path)
    name = ADAPTIVE[0]
    missing = load_config(defense_config_path(load_attack_config(copies[name] / "config.json"))).missing_weights()
    assert missing
    (tmp_path / "in").mkdir()
    shutil.copyfile(SAMPLE_IMAGES / "28b7b933c8028c6e.png", tmp_path / "in" / "28b7b933c8028c6e.png")
    result = run_submission(copies[name], tmp_path / "in", tmp_path / "out", 8)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "REFUSED" in result.stderr and "Traceback" not in result.stderr
    assert all(str(path) in result.stderr for path in missing)
    assert not (tmp_path / "out").exists()


E2E_IMAGES = ["28b7b933c8028c6e", "4b588649cd835d4c"]
E2E_TARGETS = {"28b7b933c8028c6e": 7, "4b588649cd835d4c": 901}


def _copy_aware_of(name: str, root: pathlib.Path, defense_config: pathlib.Path, **overrides) -> pathlib.Path:
    """The submission copied as the runner copies it, aimed at a copy of ``defense_config`` (without its
    weights) in its own ``defense/`` folder instead of the shipped defense."""
    folder = root / name
    shutil.copytree(ATTACKS / name, folder, symlinks=True)
    (folder / "defense").mkdir()
    shutil.copyfile(defense_config, folder / "defense" / "config.json")
    config = json.loads((folder / "config.json").read_text())
    config["model"] = {"defense_config": "defense/config.json",
                       **{k: v for k, v in config["model"].items() if k != "defense"}}
    config.update(overrides)
    (folder / "config.json").write_text(json.dumps(config))
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata.pop("reads")
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def _copy_with_tiny_defense(name: str, root: pathlib.Path, dunet_weights: dict, transform: dict | None,
                            **overrides) -> pathlib.Path:
    """The submission copied as the runner copies it, its defense swapped for Lite0 behind a tiny DUNET."""
    folder = _copy_aware_of(name, root, REPO / "defense" / "config.json", **overrides)
    weights = folder / "defense" / "weights"
    weights.mkdir()
    shutil.copyfile(dunet_weights["small"], weights / "dunet.weights.h5")
    defense = {"members": [{"model": "efficientnet_lite0",
                            "denoiser": {"weights": "weights/dunet.weights.h5", "width": dunet_weights["width"]}}],
               "batch_size": 2}
    if transform:
        defense["transform"] = transform
    (folder / "defense" / "config.json").write_text(json.dumps(defense))
    return folder


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, dunet_weights):
    """The three adaptive submissions, shortened, started at once against Lite0 behind a tiny DUNET:
    adaptive_pgd through the plain HGD structure, the targeted one through a random transform (EOT),
    Square through JPEG. Name -> (Launched, input dir, output dir, submission copy)."""
    root = tmp_path_factory.mktemp("adaptive-e2e")
    inputs = root / "in"
    inputs.mkdir()
    for image_id in E2E_IMAGES:
        shutil.copyfile(SAMPLE_IMAGES / f"{image_id}.png", inputs / f"{image_id}.png")
    (inputs / "target_class.csv").write_text("".join(f"{i}.png,{t}\n" for i, t in E2E_TARGETS.items()))
    plan = {
        "adaptive_pgd": (None, {"steps": 3, "alpha": 2.0, "restarts": 2, "record_loss": True, "batch_size": 2}),
        "adaptive_pgd_targeted": ({"name": "gaussian_noise", "sigma": 2.0, "seed": 0},
                                  {"steps": 2, "alpha": 8.0, "restarts": 1, "batch_size": 2}),
        "square": ({"name": "jpeg", "quality": 75}, {"queries": 12, "batch_size": 2}),
    }
    launched = {}
    try:
        for name, (transform, overrides) in plan.items():
            folder = _copy_with_tiny_defense(name, root / "code", dunet_weights, transform, **overrides)
            if name == "adaptive_pgd_targeted":
                config = json.loads((folder / "config.json").read_text())
                config["model"]["eot_draws"] = 2
                (folder / "config.json").write_text(json.dumps(config))
            output = root / "out" / name
            launched[name] = (Launched(root / name, folder, inputs, output, 16), inputs, output, folder)
        yield launched
    finally:
        for run, *_ in launched.values():
            run.stop()


def _defended_logits(folder: pathlib.Path, images: np.ndarray) -> np.ndarray:
    from hgd.defenses.defended import load_config

    defense = load_config(folder / "defense" / "config.json")
    return logits_of(defense.build(), defense.preprocess(images))


def _read(folder: pathlib.Path, names) -> np.ndarray:
    from hgd.io.images import load_image

    return np.stack([load_image(folder / f"{name}.png")[0] for name in names])


@pytest.mark.slow
@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_submission_end_to_end_against_a_tiny_defense(e2e, name):
    run, inputs, output, folder = e2e[name]
    result = run.result()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "ERROR" not in result.stderr
    assert sorted(p.name for p in output.iterdir()) == sorted(f"{i}.png" for i in E2E_IMAGES)
    clean, adv = _read(inputs, E2E_IMAGES), _read(output, E2E_IMAGES)
    assert in_box(adv, clean, 16) and np.abs(adv.astype(int) - clean).max() == 16
    if name == "adaptive_pgd":
        assert "loss curve (restart 0" in result.stderr  # record_loss: the curve is logged
        before, after = _defended_logits(folder, clean), _defended_logits(folder, adv)
        assert np.all(after.argmax(1) != before.argmax(1)), "untargeted PGD through the defense must break it"
    if name == "adaptive_pgd_targeted":
        assert "EOT(BPDA(" in result.stderr and "draws=2" in result.stderr  # the random transform: EOT
        targets = np.array([E2E_TARGETS[i] - 1 for i in E2E_IMAGES])
        before = losses.objective_numpy(_defended_logits(folder, clean), targets, True, "ce")
        after = losses.objective_numpy(_defended_logits(folder, adv), targets, True, "ce")
        assert np.all(after > before), (before, after)  # the target's cross-entropy went down
