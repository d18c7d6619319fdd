"""The attack library (``hgd.attacks``): the box, the quantization, the criteria, each attack's defining property.

Most tests run on a tiny seeded conv net (32x32 pixels -> 10 logits) so that every exported attack
is checked at every epsilon in a few seconds; the attack classes are discovered from
``hgd.attacks.__all__``, so a new attack is put under test by exporting it. One test attacks the
real EfficientNet-Lite0 on the sample images, and one runs FGSM on the JAX backend (in a
subprocess: Keras fixes its backend at import) and compares with TensorFlow.
"""

from __future__ import annotations

import inspect
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from hgd import attacks
from hgd.attacks import Attack, IterativeGradientSignAttack, quantize
from tiny_attack_model import NUM_CLASSES, cross_entropy, in_box, logits_of

REPO = pathlib.Path(__file__).resolve().parents[1]
EPSILONS = (0, 1, 4, 16)

ATTACK_CLASSES = sorted(
    {obj for obj in (getattr(attacks, name) for name in attacks.__all__)
     if inspect.isclass(obj) and issubclass(obj, Attack) and not inspect.isabstract(obj)
     and obj is not IterativeGradientSignAttack},
    key=lambda cls: cls.__name__,
)
GRADIENT_CLASSES = [cls for cls in ATTACK_CLASSES if issubclass(cls, IterativeGradientSignAttack)]


def make(cls: type[Attack], **kwargs) -> Attack:
    """An instance with its defaults; seeded if the attack is random (so two instances agree)."""
    if "seed" in inspect.signature(cls).parameters:
        kwargs.setdefault("seed", 0)
    return cls(**kwargs)


# ----------------------------------------------------------------------------------- the public surface


def test_aliases_and_exports():
    assert attacks.FGSM is attacks.FastGradientSignMethod
    assert attacks.BIM is attacks.IFGSM is attacks.BasicIterativeMethod
    assert attacks.PGD is attacks.ProjectedGradientDescent
    assert attacks.MIFGSM is attacks.MomentumIterativeMethod
    assert all(hasattr(attacks, name) for name in attacks.__all__)
    assert {attacks.NoOp, attacks.RandomNoise, attacks.FGSM, attacks.BIM, attacks.PGD, attacks.MIFGSM} <= set(ATTACK_CLASSES)


@pytest.mark.parametrize("cls", ATTACK_CLASSES, ids=lambda c: c.__name__)
def test_constructor_is_keyword_only_and_repr_shows_hyperparameters(cls):
    parameters = inspect.signature(cls).parameters.values()
    assert all(p.kind == p.KEYWORD_ONLY for p in parameters)
    attack = make(cls)
    text = repr(attack)
    assert text.startswith(f"{cls.__name__}(")
    for p in parameters:
        assert f"{p.name}=" in text
    if parameters:
        with pytest.raises(TypeError):
            cls(1)


def test_repr_values():
    assert repr(attacks.MIFGSM(steps=5, mu=0.5)) == "MomentumIterativeMethod(steps=5, alpha=None, mu=0.5, loss='ce')"
    assert repr(attacks.PGD(steps=3, alpha=2, seed=7)) == (
        "ProjectedGradientDescent(steps=3, alpha=2.0, seed=7, loss='ce', restarts=1, record_loss=False, "
        "early_stop=False)")
    assert repr(attacks.FGSM()) == "FastGradientSignMethod(loss='ce')"
    assert repr(attacks.FGSM(loss=attacks.Loss.MARGIN)) == "FastGradientSignMethod(loss='margin')"


def test_default_schedules():
    # Kurakin et al. 2016: 1-pixel steps, floor(min(eps + 4, 1.25 eps)) of them.
    assert [attacks.kurakin_steps(e) for e in (0, 1, 4, 8, 12, 16, 32)] == [0, 1, 5, 10, 15, 20, 36]
    assert attacks.BIM().schedule(16) == (20, 1.0)
    assert attacks.PGD().schedule(4) == (5, 1.0)
    assert attacks.BIM(steps=10).schedule(16) == (10, 1.6)  # explicit steps: eps spread evenly
    assert attacks.BIM(steps=20, alpha=1).schedule(4) == (20, 1.0)
    assert attacks.MIFGSM().schedule(16) == (10, 1.6)  # Dong et al. 2018
    assert attacks.FGSM().schedule(8) == (1, 8.0)


@pytest.mark.parametrize("bad", [{"steps": 0}, {"steps": 2.5}, {"alpha": 0}, {"alpha": -1.0}, {"alpha": float("nan")}],
                         ids=str)
def test_bad_hyperparameters_raise(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        attacks.BIM(**bad)


def test_bad_mu_and_seed_raise():
    with pytest.raises(ValueError, match="mu"):
        attacks.MIFGSM(mu=-0.5)
    with pytest.raises(ValueError, match="seed"):
        attacks.RandomNoise(seed=-1)


@pytest.mark.parametrize("epsilon", ["8", -1, 256, 2.5, None])
def test_bad_epsilon_raises(model, images, epsilon):
    with pytest.raises(ValueError, match="epsilon"):
        attacks.FGSM()(model, images, epsilon=epsilon)


def test_bad_inputs_raise(model, images):
    with pytest.raises(ValueError, match="uint8"):
        attacks.FGSM()(model, images.astype(np.float32), epsilon=4)
    with pytest.raises(ValueError, match="shape"):
        attacks.FGSM()(model, images[0], epsilon=4)
    with pytest.raises(ValueError, match="one class per image"):
        attacks.FGSM()(model, images, np.zeros(len(images) + 1, int), epsilon=4)
    with pytest.raises(ValueError, match="0-based"):
        attacks.FGSM()(model, images, np.full(len(images), NUM_CLASSES), epsilon=4)
    with pytest.raises(ValueError, match="targets"):
        attacks.TargetedMisclassification(None)


def test_epsilon_accepts_numpy_and_integral_floats(model, images):
    a = attacks.FGSM()(model, images, epsilon=np.int64(4))
    np.testing.assert_array_equal(a, attacks.FGSM()(model, images, epsilon=4.0))


# --------------------------------------------------------------------- every attack, every epsilon


@pytest.mark.parametrize("epsilon", EPSILONS)
@pytest.mark.parametrize("cls", ATTACK_CLASSES, ids=lambda c: c.__name__)
def test_output_is_uint8_in_the_box_and_rounded(model, images, cls, epsilon):
    adv = make(cls)(model, images, epsilon=epsilon)
    assert adv.dtype == np.uint8 and adv.shape == images.shape
    distance = np.abs(adv.astype(np.int16) - images).max()
    assert distance <= epsilon
    assert in_box(adv, images, epsilon)  # includes the saturated patches: no uint8 wrap-around
    if epsilon == 0 or cls is attacks.NoOp:
        np.testing.assert_array_equal(adv, images)
    else:
        assert distance > 0
    # The float path (same seed): inside the box, and the uint8 result is exactly its rounding.
    floats = make(cls).perturb(model, images, epsilon=epsilon)
    assert floats.dtype == np.float32 and in_box(floats, images, epsilon)
    np.testing.assert_array_equal(adv, np.rint(floats).astype(np.uint8))


def test_quantize_rounds_and_never_stretches():
    lo, hi = np.array([0, 0, 10, 250], np.uint8), np.array([5, 5, 20, 255], np.uint8)
    x = np.array([0.4, 4.6, 12.5, 254.49], np.float32)
    np.testing.assert_array_equal(quantize(x, lo, hi), [0, 5, 12, 254])  # half to even; no rescaling
    narrow = np.array([100.2, 100.7, 101.4], np.float32)  # a min-max stretch would give 0..255
    np.testing.assert_array_equal(quantize(narrow), [100, 101, 101])
    np.testing.assert_array_equal(quantize(np.array([-3.0, 300.0])), [0, 255])


def test_model_free_attacks_need_no_model(images):
    np.testing.assert_array_equal(attacks.NoOp()(None, images, epsilon=8), images)
    noisy = attacks.RandomNoise(seed=3)(None, images, epsilon=8)
    assert in_box(noisy, images, 8) and np.abs(noisy.astype(int) - images).max() == 8
    with pytest.raises(ValueError, match="needs a model"):
        attacks.FGSM()(None, images, epsilon=8)


def test_random_noise_is_seeded_and_roughly_uniform(images):
    a, b = attacks.RandomNoise(seed=5), attacks.RandomNoise(seed=5)
    first = a(None, images, epsilon=16)
    np.testing.assert_array_equal(first, b(None, images, epsilon=16))
    assert not np.array_equal(first, a(None, images, epsilon=16))  # the generator moves on between calls
    middle = (images > 16) & (images < 239)
    delta = first.astype(int) - images
    assert abs(delta[middle].mean()) < 0.5 and delta[middle].std() > 8


# --------------------------------------------------------------------------------- what each attack does


def test_fgsm_increases_the_loss(model, images):
    labels = logits_of(model, images).argmax(1)
    adv = attacks.FGSM()(model, images, epsilon=4)
    before, after = cross_entropy(model, images, labels), cross_entropy(model, adv, labels)
    assert np.all(after > before), (before, after)


@pytest.mark.parametrize("cls", GRADIENT_CLASSES, ids=lambda c: c.__name__)
def test_untargeted_uses_given_labels(model, images, cls):
    prediction = logits_of(model, images).argmax(1)
    labels = (prediction + 3) % NUM_CLASSES  # not the prediction: only the given labels say what to push away from
    adv = make(cls)(model, images, labels, epsilon=4)
    assert np.mean(cross_entropy(model, adv, labels)) > np.mean(cross_entropy(model, images, labels))


@pytest.mark.parametrize("cls", GRADIENT_CLASSES, ids=lambda c: c.__name__)
def test_targeted_decreases_the_target_cross_entropy(model, images, cls):
    targets = (logits_of(model, images).argmax(1) + 5) % NUM_CLASSES
    adv = make(cls)(model, images, attacks.TargetedMisclassification(targets), epsilon=8)
    before, after = cross_entropy(model, images, targets), cross_entropy(model, adv, targets)
    assert np.all(after < before), (before, after)


def test_least_likely_targets_the_argmin_of_the_clean_logits(model, images):
    logits = logits_of(model, images)
    goal = attacks.LeastLikelyClass().goal(model, images.astype(np.float32))
    assert goal.targeted
    np.testing.assert_array_equal(goal.classes, logits.argmin(1))
    default = attacks.Misclassification().goal(model, images.astype(np.float32))
    assert not default.targeted
    np.testing.assert_array_equal(default.classes, logits.argmax(1))
    adv = attacks.BIM()(model, images, attacks.LeastLikelyClass(), epsilon=8)
    ll = logits.argmin(1)
    assert np.all(cross_entropy(model, adv, ll) < cross_entropy(model, images, ll))


def test_pgd_is_reproducible_with_a_seed_and_differs_from_bim(model, images):
    first = attacks.PGD(steps=3, seed=11)(model, images, epsilon=8)
    np.testing.assert_array_equal(first, attacks.PGD(steps=3, seed=11)(model, images, epsilon=8))
    assert not np.array_equal(first, attacks.PGD(steps=3, seed=12)(model, images, epsilon=8))
    assert not np.array_equal(first, attacks.BIM(steps=3)(model, images, epsilon=8))


def test_mifgsm_without_momentum_is_bim(model, images):
    for epsilon, steps, alpha in ((8, 5, None), (16, 4, 3.0)):
        mi = attacks.MIFGSM(steps=steps, alpha=alpha, mu=0.0).perturb(model, images, epsilon=epsilon)
        bim = attacks.BIM(steps=steps, alpha=alpha).perturb(model, images, epsilon=epsilon)
        np.testing.assert_array_equal(mi, bim)
    with_momentum = attacks.MIFGSM(steps=5, mu=1.0).perturb(model, images, epsilon=8)
    assert not np.array_equal(with_momentum, attacks.BIM(steps=5).perturb(model, images, epsilon=8))


def test_each_image_is_attacked_independently_of_its_batch(model, images):
    whole = attacks.BIM(steps=3)(model, images, epsilon=4)
    halves = np.concatenate([attacks.BIM(steps=3)(model, images[:2], epsilon=4),
                             attacks.BIM(steps=3)(model, images[2:], epsilon=4)])
    assert np.mean(whole != halves) < 1e-3  # summed loss: per-image gradients; only float noise may differ


# ------------------------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def lite0_and_samples():
    from hgd.defenses.defended import Member, build_defended_model
    from hgd.io.competition_csv import read_dataset_csv
    from hgd.io.images import iter_batches
    from hgd.zoo import get_model

    dataset = read_dataset_csv(REPO / "sample_data" / "dev_dataset.csv")
    ids = sorted(dataset)
    files = [REPO / "sample_data" / "images" / f"{i}.png" for i in ids]
    (batch,) = list(iter_batches(files, batch_size=len(files)))
    labels = np.array([dataset[i][0] - 1 for i in ids])
    return build_defended_model([Member(get_model("efficientnet_lite0"))]), batch.images, labels


def test_fgsm_breaks_lite0_on_the_sample_images(lite0_and_samples):
    from hgd.attacks import _compiled

    model, images, labels = lite0_and_samples
    fgsm = attacks.FGSM()
    adv = np.concatenate([fgsm(model, images[i : i + 11], epsilon=16) for i in range(0, len(images), 11)])
    assert in_box(adv, images, 16) and np.abs(adv.astype(int) - images).max() == 16
    clean = np.mean(_compiled.logits(model, images).argmax(1) == labels)
    attacked = np.mean(_compiled.logits(model, adv).argmax(1) == labels)
    assert clean >= 0.8, clean
    assert attacked <= 0.5, (clean, attacked)


# ------------------------------------------------------------------------------------------------- JAX

JAX_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import keras
import numpy as np
import tiny_attack_model as t
from hgd import attacks
model, images = t.tiny_model(), t.tiny_images()
np.savez(sys.argv[2], backend=keras.backend.backend(), fgsm=attacks.FGSM()(model, images, epsilon=8),
         ll=attacks.LeastLikelyClass().goal(model, images.astype("float32")).classes)
"""


def test_fgsm_on_jax_matches_tensorflow(model, images, tmp_path):
    pytest.importorskip("jax", reason="the JAX backend is tested where jax is installed (the dev extras install it)")
    import keras

    assert keras.backend.backend() == "tensorflow"
    out = tmp_path / "jax.npz"
    result = subprocess.run([sys.executable, "-c", JAX_PROBE, str(REPO / "tests"), str(out)], cwd=REPO,
                            env={**os.environ, "KERAS_BACKEND": "jax"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    jax_out = np.load(out)
    assert str(jax_out["backend"]) == "jax"
    np.testing.assert_array_equal(jax_out["ll"], logits_of(model, images).argmin(1))
    tf_adv = attacks.FGSM()(model, images, epsilon=8)
    differing = np.mean(jax_out["fgsm"] != tf_adv)
    assert differing < 0.01, f"{differing:.2%} of the pixels differ between JAX and TensorFlow"
    assert in_box(jax_out["fgsm"], images, 8)
