"""The attack library (``hgd.attacks``): the box, the quantization, the criteria, each attack's defining property.

Most tests run on a tiny seeded conv net (32x32 pixels -> 10 logits) so that every exported attack
is checked at every epsilon in a few seconds; the attack classes are discovered from
``hgd.attacks.__all__``, so a new attack is put under test by exporting it. The transfer options
(DI, TI, SI, NI) are checked one by one and together on the same model. One test attacks the
real EfficientNet-Lite0 on the sample images, and two run attacks (FGSM, SI-NI-TI-DIM) on the JAX
backend (in one subprocess: Keras fixes its backend at import) and compare with TensorFlow.
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
from hgd.attacks import Attack, IterativeGradientSignAttack, quantize, transfer
from tiny_attack_model import NUM_CLASSES, SIZE, cross_entropy, in_box, logits_of

REPO = pathlib.Path(__file__).resolve().parents[1]
EPSILONS = (0, 1, 4, 16)

ATTACK_CLASSES = sorted(
    {obj for obj in (getattr(attacks, name) for name in attacks.__all__)
     if inspect.isclass(obj) and issubclass(obj, Attack) and not inspect.isabstract(obj)
     and obj is not IterativeGradientSignAttack},
    key=lambda cls: cls.__name__,
)
GRADIENT_CLASSES = [cls for cls in ATTACK_CLASSES if issubclass(cls, IterativeGradientSignAttack)]
TRANSFER_CLASSES = [attacks.DIMIFGSM, attacks.TIDIMIFGSM, attacks.SINITIDIM]

# Each transfer option alone on MI-FGSM's settings, and all of them (the ti kernel fits the 32-pixel images).
TRANSFER_VARIANTS = {
    "di": {"diversity_prob": 0.5},
    "ti": {"ti_kernel": 7},
    "si": {"scale_copies": 5},
    "ni": {"nesterov": True},
    "si_ni_ti_di": {"nesterov": True, "scale_copies": 5, "diversity_prob": 0.5, "ti_kernel": 7},
}


def variant(name: str, **kwargs) -> IterativeGradientSignAttack:
    """MI-FGSM's settings (10 steps, mu = 1) with one of :data:`TRANSFER_VARIANTS`, seeded."""
    return IterativeGradientSignAttack(**{"steps": 10, "mu": 1.0, "seed": 0, **TRANSFER_VARIANTS[name], **kwargs})


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
    assert attacks.DIMIFGSM is attacks.DiverseInputsMomentumIterativeMethod
    assert attacks.TIDIMIFGSM is attacks.TranslationInvariantDiverseInputsMethod
    assert attacks.SINITIDIM is attacks.ScaleInvariantNesterovMethod
    assert all(hasattr(attacks, name) for name in attacks.__all__)
    assert {attacks.NoOp, attacks.RandomNoise, attacks.FGSM, attacks.BIM, attacks.PGD, attacks.MIFGSM,
            *TRANSFER_CLASSES} <= set(ATTACK_CLASSES)


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
    assert repr(attacks.SINITIDIM(seed=3)) == (
        "ScaleInvariantNesterovMethod(steps=10, alpha=None, mu=1.0, nesterov=True, scale_copies=5, "
        "diversity_prob=0.5, ti_kernel=7, ti_sigma=None, seed=3, loss='ce', random_start=False, restarts=1, "
        "record_loss=False, early_stop=False)")


def test_published_transfer_defaults():
    di, ti, si = attacks.DIMIFGSM(), attacks.TIDIMIFGSM(), attacks.SINITIDIM()
    assert (di.steps, di.mu, di.diversity_prob, di.ti_kernel, di.scale_copies, di.nesterov) == (
        10, 1.0, 0.5, None, 1, False)
    assert (ti.diversity_prob, ti.ti_kernel, ti.ti_sigma, ti.scale_copies, ti.nesterov) == (0.5, 15, None, 1, False)
    assert (si.diversity_prob, si.ti_kernel, si.scale_copies, si.nesterov, si.mu) == (0.5, 7, 5, True, 1.0)
    assert di.schedule(16) == ti.schedule(16) == si.schedule(16) == (10, 1.6)
    # Every transfer option is off in the existing attacks.
    for attack in (attacks.FGSM(), attacks.BIM(), attacks.PGD(), attacks.MIFGSM()):
        assert not attack.transfers


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


@pytest.mark.parametrize("bad, message", [
    ({"diversity_prob": 1.5}, "diversity_prob"), ({"diversity_prob": -0.1}, "diversity_prob"),
    ({"diversity_prob": True}, "diversity_prob"), ({"ti_kernel": 4}, "ti_kernel"), ({"ti_kernel": 0}, "ti_kernel"),
    ({"ti_kernel": 7.0}, "ti_kernel"), ({"ti_kernel": None, "ti_sigma": 2.0}, "ti_sigma"),
    ({"ti_sigma": 0}, "ti_sigma"),
    ({"scale_copies": 0}, "scale_copies"), ({"scale_copies": 2.5}, "scale_copies"), ({"nesterov": 1}, "nesterov"),
    ({"nesterov": True, "mu": 0.0}, "nesterov"),
], ids=str)
def test_bad_transfer_options_raise(bad, message):
    with pytest.raises(ValueError, match=message):
        attacks.SINITIDIM(**bad)


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


# ------------------------------------------------------------------------------- transfer attacks


@pytest.mark.parametrize("cls", TRANSFER_CLASSES, ids=lambda c: c.__name__)
def test_transfer_attacks_are_reproducible_with_a_seed(model, images, cls):
    attack = cls(seed=5)
    first = attack(model, images, epsilon=8)
    assert in_box(first, images, 8) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, cls(seed=5)(model, images, epsilon=8))
    assert not np.array_equal(first, cls(seed=6)(model, images, epsilon=8))  # other input-diversity draws
    assert not np.array_equal(first, attack(model, images, epsilon=8))  # the draws go on between calls


@pytest.mark.parametrize("name", TRANSFER_VARIANTS)
def test_each_transfer_variant_raises_the_untargeted_loss(model, images, name):
    labels = logits_of(model, images).argmax(1)
    adv = variant(name)(model, images, epsilon=8)
    assert in_box(adv, images, 8)
    before, after = cross_entropy(model, images, labels), cross_entropy(model, adv, labels)
    assert np.all(after > before), (before, after)


@pytest.mark.parametrize("name", TRANSFER_VARIANTS)
def test_each_transfer_variant_lowers_the_targeted_cross_entropy(model, images, name):
    targets = (logits_of(model, images).argmax(1) + 5) % NUM_CLASSES
    adv = variant(name)(model, images, attacks.TargetedMisclassification(targets), epsilon=8)
    before, after = cross_entropy(model, images, targets), cross_entropy(model, adv, targets)
    assert np.all(after < before), (before, after)


@pytest.mark.parametrize("name", TRANSFER_VARIANTS)
def test_each_transfer_variant_changes_mifgsm(model, images, name):
    mi = attacks.MIFGSM().perturb(model, images, epsilon=8)
    assert not np.array_equal(variant(name).perturb(model, images, epsilon=8), mi)


def test_input_diversity_off_is_the_plain_attack(model, images):
    for kwargs in ({}, {"steps": 4, "alpha": 3.0, "mu": 0.5}):
        plain = attacks.MIFGSM(**kwargs).perturb(model, images, epsilon=8)
        np.testing.assert_array_equal(attacks.DIMIFGSM(diversity_prob=0.0, seed=1, **kwargs).perturb(
            model, images, epsilon=8), plain)
    pgd = attacks.PGD(steps=4, seed=2).perturb(model, images, epsilon=8)
    with_di_off = IterativeGradientSignAttack(steps=4, random_start=True, seed=2, diversity_prob=0.0)
    np.testing.assert_array_equal(with_di_off.perturb(model, images, epsilon=8), pgd)


def test_one_scale_copy_without_nesterov_is_mifgsm(model, images):
    mi = attacks.MIFGSM().perturb(model, images, epsilon=8)
    si = attacks.SINITIDIM(nesterov=False, scale_copies=1, diversity_prob=0.0, ti_kernel=None, seed=0)
    np.testing.assert_array_equal(si.perturb(model, images, epsilon=8), mi)
    assert not si.transfers


def test_ti_kernel_is_the_released_codes_normalized_gaussian():
    for size in (1, 7, 15):
        kernel = transfer.gaussian_kernel(size)
        assert kernel.shape == (size, size)
        assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(kernel, kernel.T)
        np.testing.assert_allclose(kernel, kernel[::-1, ::-1])
        assert kernel.argmax() == (size * size) // 2
        # gkern(size, nsig=3): the standard normal density at linspace(-3, 3, size), normalized.
        density = np.exp(-np.linspace(-3, 3, size) ** 2 / 2)
        np.testing.assert_allclose(kernel, np.outer(density, density) / np.outer(density, density).sum(), atol=1e-12)
    assert transfer.ti_sigma(15) == pytest.approx(7 / 3)
    wide = transfer.gaussian_kernel(7, sigma=100.0)
    np.testing.assert_allclose(wide, np.full((7, 7), 1 / 49), rtol=1e-3)  # a huge sigma: the box filter


def test_ti_smooths_each_channel_with_the_kernel(model, images):
    impulse = np.zeros((1, 21, 21, 3), np.float32)
    impulse[0, 10, 10, 0] = 1.0
    smoothed = transfer.smooth_gradient(impulse, 7)
    np.testing.assert_allclose(smoothed[0, 7:14, 7:14, 0], transfer.gaussian_kernel(7), atol=1e-7)
    assert smoothed[..., 1:].max() == 0 and smoothed[0, :7].max() == 0  # per channel, the kernel's support only
    corner = np.zeros((1, 21, 21, 1), np.float32)
    corner[0, 0, 0, 0] = 1.0  # zero padding ('SAME'): the mass that falls outside the image is lost
    assert transfer.smooth_gradient(corner, 7).sum() == pytest.approx(transfer.gaussian_kernel(7)[3:, 3:].sum())
    labels = logits_of(model, images).argmax(1)
    _, raw = attacks.as_model(model).objective_gradient(images.astype(np.float32), labels, False)
    smooth = transfer.smooth_gradient(raw, 7)
    assert smooth.shape == raw.shape and not np.allclose(smooth, raw)
    assert np.abs(np.diff(smooth, axis=1)).mean() < np.abs(np.diff(raw, axis=1)).mean()  # smoother
    np.testing.assert_allclose(transfer.smooth_gradient(raw, 1), raw)  # a 1x1 kernel is the identity


@pytest.mark.parametrize("size", [SIZE, 299])
def test_input_diversity_draws_the_published_resize_and_pad(size):
    upper = transfer.diversity_size(size)
    assert upper == (330 if size == 299 else 35)
    rng = np.random.default_rng(0)
    assert all(transfer.draw_diversity(size, 0.0, rng) is None for _ in range(20))
    draws = [transfer.draw_diversity(size, 0.5, rng) for _ in range(400)]
    assert 0.4 < np.mean([d is None for d in draws]) < 0.6
    drawn = [d for d in draws if d is not None]
    for rows in np.concatenate(drawn):
        assert rows.shape == (size,) and rows.min() >= -1 and rows.max() < size
        assert np.all(np.diff(rows[rows >= 0]) >= 0)  # a resize keeps the order of the rows
    assert any((d < 0).any() for d in drawn)  # padding shows in some draws
    # The published example: 299 resized to 310 and placed 5 rows down in 330 rows.
    rows = transfer.diversity_rows(299, 310, 5) if size == 299 else transfer.diversity_rows(size, size + 1, 1)
    padded = np.arange(size) * upper // size
    resized = 310 if size == 299 else size + 1
    offset = 5 if size == 299 else 1
    expected = np.where((padded >= offset) & (padded < offset + resized), (padded - offset) * size // resized, -1)
    np.testing.assert_array_equal(rows, expected)
    with pytest.raises(ValueError, match="DI draw"):
        transfer.diversity_rows(size, upper, 0)


def test_input_diversity_gradient_is_exact(model, images):
    import keras

    from hgd.attacks import losses
    from hgd.backend import input_gradient

    x = images.astype(np.float32)
    labels = logits_of(model, images).argmax(1)
    draw = transfer.draw_diversity(SIZE, 1.0, np.random.default_rng(3))
    wrapped = attacks.InputDiversity(model, probability=1.0, seed=np.random.default_rng(3))
    values, gradient = wrapped.objective_gradient(x, labels, False)
    rows, cols = (keras.ops.convert_to_tensor(transfer.diversity_matrix(d)) for d in draw)

    def objective(z):  # the same transform as matrices in keras.ops, differentiated by the backend
        moved = keras.ops.einsum("hi,nijc,wj->nhwc", rows, z - transfer.PAD_VALUE, cols) + transfer.PAD_VALUE
        return keras.ops.sum(losses.objective(model(moved, training=False), labels, 1.0, "ce"))

    value, expected = input_gradient(objective, x)
    assert values.sum() == pytest.approx(float(value), rel=1e-5)
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    moved = transfer.diversify(x, draw)
    np.testing.assert_allclose(moved, np.einsum("hi,nijc,wj->nhwc", transfer.diversity_matrix(draw[0]),
                                                x - transfer.PAD_VALUE, transfer.diversity_matrix(draw[1]))
                               + transfer.PAD_VALUE)
    assert (moved == transfer.PAD_VALUE).any()  # mid-grey padding
    with pytest.raises(ValueError, match="square"):
        wrapped.draw(np.zeros((1, 8, 9, 3), np.float32))


def test_scale_copies_shrink_towards_mid_grey():
    x = np.array([[[[0.0, 127.5, 255.0]]]], np.float32)
    assert transfer.scale_copy(x, 0) is x
    np.testing.assert_allclose(transfer.scale_copy(x, 1), [[[[63.75, 127.5, 191.25]]]])
    np.testing.assert_allclose(transfer.scale_copy(x, 4), [[[[127.5 - 127.5 / 16, 127.5, 127.5 + 127.5 / 16]]]])
    assert transfer.scale_factor(4) == 1 / 16


def test_transfer_options_combine_with_margin_restarts_and_early_stop(model, images):
    attack = attacks.SINITIDIM(steps=6, loss="margin", random_start=True, restarts=2, record_loss=True,
                               early_stop=True, seed=4)
    adv = attack(model, images, epsilon=16)
    assert in_box(adv, images, 16)
    curve = attack.loss_curve
    assert curve.shape == (2, 7, len(images))
    assert np.isfinite(curve[0]).all()  # the objective at the iterate itself, not NaN, although DI and NI are on
    labels = logits_of(model, images).argmax(1)
    fooled = logits_of(model, adv).argmax(1) != labels
    assert fooled.any()


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
targets = (np.asarray(model(images.astype("float32"))).argmax(1) + 5) % t.NUM_CLASSES
np.savez(sys.argv[2], backend=keras.backend.backend(), fgsm=attacks.FGSM()(model, images, epsilon=8),
         ll=attacks.LeastLikelyClass().goal(model, images.astype("float32")).classes,
         si_ni_ti_dim=attacks.SINITIDIM(steps=5, seed=0)(model, images, attacks.TargetedMisclassification(targets),
                                                         epsilon=8))
"""


@pytest.fixture(scope="module")
def jax_results(tmp_path_factory):
    """The attacks of :data:`JAX_PROBE`, run once on the JAX backend (in a subprocess)."""
    pytest.importorskip("jax", reason="the JAX backend is tested where jax is installed (the dev extras install it)")
    import keras

    assert keras.backend.backend() == "tensorflow"
    out = tmp_path_factory.mktemp("jax") / "jax.npz"
    result = subprocess.run([sys.executable, "-c", JAX_PROBE, str(REPO / "tests"), str(out)], cwd=REPO,
                            env={**os.environ, "KERAS_BACKEND": "jax"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    jax_out = np.load(out)
    assert str(jax_out["backend"]) == "jax"
    return jax_out


def test_fgsm_on_jax_matches_tensorflow(model, images, jax_results):
    np.testing.assert_array_equal(jax_results["ll"], logits_of(model, images).argmin(1))
    tf_adv = attacks.FGSM()(model, images, epsilon=8)
    differing = np.mean(jax_results["fgsm"] != tf_adv)
    assert differing < 0.01, f"{differing:.2%} of the pixels differ between JAX and TensorFlow"
    assert in_box(jax_results["fgsm"], images, 8)


def test_si_ni_ti_dim_on_jax_matches_tensorflow(model, images, jax_results):
    """The transfer transforms are numpy, seeded the same: only the model's gradient differs by backend."""
    targets = (logits_of(model, images).argmax(1) + 5) % NUM_CLASSES
    tf_adv = attacks.SINITIDIM(steps=5, seed=0)(model, images, attacks.TargetedMisclassification(targets), epsilon=8)
    jax_adv = jax_results["si_ni_ti_dim"]
    assert in_box(jax_adv, images, 8)
    differing = np.mean(jax_adv != tf_adv)
    assert differing < 0.01, f"{differing:.2%} of the pixels differ between JAX and TensorFlow"
    assert np.all(cross_entropy(model, jax_adv, targets) < cross_entropy(model, images, targets))
