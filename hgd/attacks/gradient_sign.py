"""The L-infinity sign-gradient family: FGSM, I-FGSM / BIM, PGD, MI-FGSM and the transfer attacks.

All of them repeat one step, ``x <- project(x + alpha * sign(direction))``, where ``direction`` is
the gradient of the attack objective (the ``loss`` of the criterion's class — cross-entropy by
default, or the margin (CW) loss, :mod:`hgd.attacks.losses` — ascended when untargeted,
descended when targeted) and ``project`` clips onto the epsilon box around the clean image
intersected with [0, 255]. They differ only in what :class:`IterativeGradientSignAttack` lets a
subclass override: the schedule (steps, alpha), the start (clean or random) and the direction
(the gradient, or a momentum of normalized gradients).

The transfer attacks are the same loop with a different gradient, made for adversarial images that
fool models other than the one attacked (:mod:`hgd.attacks.transfer` has the transforms):

* input diversity, ``diversity_prob`` (DI; Xie et al., CVPR 2019): the gradient through a random
  resize-and-pad of the input, drawn anew for each gradient;
* translation invariance, ``ti_kernel`` / ``ti_sigma`` (TI; Dong et al., CVPR 2019): the gradient
  smoothed by a Gaussian kernel, per channel, before the step;
* scale invariance, ``scale_copies`` (SI; Lin et al., ICLR 2020): the gradient averaged over the
  copies ``x / 2^i`` (in the model's [-1, 1] convention: towards mid grey);
* Nesterov's look-ahead, ``nesterov`` (NI; Lin et al., ICLR 2020): the gradient taken at
  ``x + alpha * mu * g``, ``g`` the momentum.

Per step: look ahead (NI), for each scale copy (SI) the gradient through a fresh DI draw, the copies
averaged, smoothed (TI), then the momentum and the sign step. Every option is off by default, so
FGSM, BIM, PGD and MI-FGSM are unchanged; they are parameters of the base class, and combine with
momentum, targeted criteria, both losses, restarts and early stop. Presets with the published
settings: :class:`DiverseInputsMomentumIterativeMethod` (M-DI²-FGSM, "DI-MI-FGSM"),
:class:`TranslationInvariantDiverseInputsMethod` (TI-DIM) and
:class:`ScaleInvariantNesterovMethod` (SI-NI-TI-DIM).

The model is anything :func:`hgd.attacks.models.as_model` takes: a Keras model (its compiled
gradient), or :class:`~hgd.attacks.models.BPDA` / :class:`~hgd.attacks.models.EOT` around a
defense whose input transformation is not differentiable or not deterministic.

PGD also takes ``restarts`` (Madry et al. 2018): each restart from a fresh random point of the box,
run only for the images no earlier restart has broken; per image the result is the first restart
that succeeds, else the one with the highest final objective. ``record_loss`` keeps the objective
of every iterate (:attr:`IterativeGradientSignAttack.loss_curve`): the loss curve that shows
whether the steps were enough to converge.

Defaults, in pixel units (``eps`` is the call's epsilon):

=========================  =======================================  =====================================
attack                     steps                                    alpha (step size)
=========================  =======================================  =====================================
FGSM                       1                                        ``eps``
BIM / I-FGSM, PGD          ``floor(min(eps + 4, 1.25 eps))``        1 pixel level
                           (Kurakin et al. 2016)                    (Kurakin et al. 2016)
any, ``steps`` given       ``steps``                                ``eps / steps`` (Dong et al. 2018)
MI-FGSM                    10 (Dong et al. 2018)                    ``eps / steps`` = ``eps / 10``
DI-MI, TI-DIM, SI-NI-TI    10 (the TI and SI-NI papers' code)       ``eps / steps`` = ``eps / 10``
=========================  =======================================  =====================================

Kurakin's schedule takes 1-pixel steps, ``1.25 eps`` of them (``eps + 4`` from eps 16 up), so
every pixel can reach either face of the box and then some. An explicit step count without an
explicit ``alpha`` spreads ``eps`` evenly over the steps, so exactly ``steps`` sign steps reach a
face of the box (the convention of the MI-FGSM paper and of most ensemble attacks).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hgd.attacks import losses, transfer
from hgd.attacks.base import Attack, Box, check_seed, quantize
from hgd.attacks.criteria import Criterion
from hgd.attacks.losses import check_loss
from hgd.attacks.models import InputDiversity, Model


def kurakin_steps(epsilon: int) -> int:
    """Kurakin et al. 2016's iteration count for 1-pixel steps: ``floor(min(eps + 4, 1.25 eps))``."""
    return int(math.floor(min(epsilon + 4, 1.25 * epsilon)))


def _check_steps(steps: Any) -> int | None:
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1):
        raise ValueError(f"steps must be an integer >= 1 or None (the default schedule), got {steps!r}")
    return None if steps is None else int(steps)


def _check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _check_probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_ti_kernel(kernel: Any) -> int | None:
    if kernel is not None and (isinstance(kernel, bool) or not isinstance(kernel, int | np.integer) or kernel < 1
                               or kernel % 2 == 0):
        raise ValueError(f"ti_kernel must be an odd integer >= 1 (the kernel's side in pixels) or None (no TI), "
                         f"got {kernel!r}")
    return None if kernel is None else int(kernel)


def _check_scale_copies(copies: Any) -> int:
    if isinstance(copies, bool) or not isinstance(copies, int | np.integer) or copies < 1:
        raise ValueError(f"scale_copies must be an integer >= 1 (1: no scale copies), got {copies!r}")
    return int(copies)


class IterativeGradientSignAttack(Attack):
    """Base of the family: ``steps`` projected steps of ``alpha * sign(direction)``.

    Args:
        steps: number of steps; ``None``: Kurakin's ``floor(min(eps + 4, 1.25 eps))``.
        alpha: step size in pixel levels; ``None``: 1 if ``steps`` is ``None``, else ``eps / steps``.
        random_start: start from a uniform random point of the box instead of the clean image.
        seed: seeds the random start; a fixed seed makes the sequence of calls of one attack
            object reproducible.
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (CW): :mod:`hgd.attacks.losses`.
        restarts: runs from independent random starts (needs ``random_start``); per image the
            first that succeeds is kept, else the one with the highest final objective.
        record_loss: keep :attr:`loss_curve` after each call.
        early_stop: stop iterating an image at the first iterate that fools the model once
            rounded to the uint8 image it would be saved as (that image is then its result), instead
            of running every step on it. Needs the margin loss, whose value tells success (> 0) at no
            extra cost; each candidate is confirmed by one forward pass on its rounded image. Never
            weaker (the last iterate of a run can fall back to the true class), and on a defense
            that breaks in a few steps a 100-step evaluation costs a few steps per image.
        mu: momentum decay (Dong et al. 2018): ``g <- mu * g + grad / mean(|grad|)``, the step
            follows ``sign(g)``; 0 (default): no momentum, the step follows the gradient.
        nesterov: NI (Lin et al. 2020): take the gradient at the look-ahead ``x + alpha * mu * g``
            (not projected, as in the paper's code). Needs ``mu > 0``.
        diversity_prob: DI (Xie et al. 2019): the chance that a gradient is taken through a random
            resize-and-pad of the input (the paper's 0.5); 0 (default): never. Seeded by ``seed``
            (a stream apart from the random starts').
        ti_kernel: TI (Dong et al. 2019): the side of the Gaussian kernel the gradient is smoothed
            with (odd; the paper's 15); ``None`` (default): no smoothing.
        ti_sigma: the kernel's standard deviation in pixels; ``None`` (default): ``(ti_kernel - 1)
            / 6``, the released TI code's ``gkern(ti_kernel, nsig=3)`` (7/3 for 15).
        scale_copies: SI (Lin et al. 2020): the gradient is the mean over the copies ``x / 2^i``,
            ``i < scale_copies``, scaled towards mid grey (the paper's 5); 1 (default): ``x`` only.

    With DI or NI the gradient is not taken at the iterate itself; the objective that
    :attr:`loss_curve` records and that ``early_stop`` reads is then the model's at the iterate
    (one more forward pass per step, only when one of them is on).

    Attributes:
        loss_curve: after a call with ``record_loss``: float32 ``(restarts, steps + 1, N)``, the
            per-image objective the attack ascends at each iterate (index 0: the start, index
            ``steps``: the result of that restart); NaN where a restart did not run an image (an
            earlier one had already succeeded); with ``early_stop``, an image stopped early keeps
            the objective of its result. ``None`` otherwise.
    """

    def __init__(self, *, steps: int | None = None, alpha: float | None = None, random_start: bool = False,
                 seed: int | None = None, loss: str = "ce", restarts: int = 1, record_loss: bool = False,
                 early_stop: bool = False, mu: float = 0.0, nesterov: bool = False, diversity_prob: float = 0.0,
                 ti_kernel: int | None = None, ti_sigma: float | None = None, scale_copies: int = 1) -> None:
        self.steps = _check_steps(steps)
        self.alpha = _check_positive("alpha", alpha)
        self.random_start = bool(random_start)
        self.seed = check_seed(seed)
        self.loss = check_loss(loss)
        if isinstance(restarts, bool) or not isinstance(restarts, int | np.integer) or restarts < 1:
            raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
        if restarts > 1 and not self.random_start:
            raise ValueError(f"restarts={restarts} repeat the same run without a random start")
        self.restarts = int(restarts)
        if not isinstance(record_loss, bool):
            raise ValueError(f"record_loss must be true or false, got {record_loss!r}")
        self.record_loss = record_loss
        if not isinstance(early_stop, bool):
            raise ValueError(f"early_stop must be true or false, got {early_stop!r}")
        if early_stop and self.loss != losses.Loss.MARGIN.value:
            raise ValueError("early_stop needs the margin loss (its value > 0 is success)")
        self.early_stop = early_stop
        self.mu = _check_positive("mu", mu, allow_zero=True)
        self.nesterov = _check_bool("nesterov", nesterov)
        if self.nesterov and not self.mu:
            raise ValueError("nesterov looks ahead along the momentum: it needs mu > 0")
        self.diversity_prob = _check_probability("diversity_prob", diversity_prob)
        self.ti_kernel = _check_ti_kernel(ti_kernel)
        self.ti_sigma = _check_positive("ti_sigma", ti_sigma)
        if self.ti_sigma is not None and self.ti_kernel is None:
            raise ValueError("ti_sigma is the TI kernel's: it needs ti_kernel")
        self.scale_copies = _check_scale_copies(scale_copies)
        self.loss_curve: np.ndarray | None = None
        self._rng = np.random.default_rng(self.seed)
        self._diversity_rng = np.random.default_rng(None if self.seed is None else [self.seed, 1])

    @property
    def transfers(self) -> bool:
        """Whether any transfer option (DI, TI, SI, NI) is on: the gradient is not the plain one."""
        return bool(self.nesterov or self.diversity_prob or self.ti_kernel is not None or self.scale_copies > 1)

    def schedule(self, epsilon: int) -> tuple[int, float]:
        """``(steps, alpha)`` for a call at ``epsilon`` (see the module's table)."""
        steps = self.steps if self.steps is not None else kurakin_steps(epsilon)
        if self.alpha is not None:
            alpha = self.alpha
        elif self.steps is None:
            alpha = 1.0
        else:
            alpha = epsilon / steps
        return steps, alpha

    def get_random_start(self, x: np.ndarray, box: Box) -> np.ndarray:
        """A uniform random point of the box (``x + U(-eps, eps)``, clipped to [0, 255])."""
        noise = self._rng.uniform(-box.epsilon, box.epsilon, size=x.shape).astype(np.float32)
        return box.project(x + noise)

    def direction(self, previous: np.ndarray | None, gradient: np.ndarray) -> np.ndarray:
        """What the step takes the sign of; ``previous`` is the last step's direction (``None`` at first).

        Without momentum the gradient itself; with ``mu > 0``, ``mu * previous + grad / mean(|grad|)``
        per image (Dong et al. 2018).
        """
        if not self.mu:
            return gradient
        scale = np.mean(np.abs(gradient), axis=tuple(range(1, gradient.ndim)), keepdims=True)
        normalized = gradient / np.maximum(scale, np.finfo(np.float32).tiny)
        return normalized if previous is None else np.float32(self.mu) * previous + normalized

    def objective_gradient(self, model: Model, x: np.ndarray, classes: np.ndarray, targeted: bool,
                           previous: np.ndarray | None, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """The per-image objective at ``x`` and the gradient a step follows, before the momentum.

        The model's gradient at ``x``; with the transfer options, the look-ahead (NI), the mean
        over scale copies (SI) of gradients through input diversity (DI, :meth:`gradient_model`),
        smoothed (TI); ``previous`` is the last step's direction (the momentum NI looks along).
        When the gradient is not taken at ``x`` itself (DI, NI), the objective is the model's at
        ``x``, from a forward pass, where :attr:`loss_curve` or ``early_stop`` needs it, else NaN.
        """
        if not self.transfers:
            return model.objective_gradient(x, classes, targeted, self.loss)
        point = x
        if self.nesterov and previous is not None:
            point = (x + np.float32(alpha * self.mu) * previous).astype(np.float32, copy=False)
        diverse = self.gradient_model(model)
        value, gradient = diverse.objective_gradient(point, classes, targeted, self.loss)
        for index in range(1, self.scale_copies):
            _, copy = diverse.objective_gradient(transfer.scale_copy(point, index), classes, targeted, self.loss)
            gradient = gradient + np.float32(transfer.scale_factor(index)) * copy
        if self.scale_copies > 1:
            gradient = gradient / np.float32(self.scale_copies)
        if self.ti_kernel is not None:
            gradient = transfer.smooth_gradient(gradient, self.ti_kernel, self.ti_sigma)
        if point is not x or diverse is not model:
            value = (model.objective(x, classes, targeted, self.loss) if self.early_stop or self.record_loss
                     else np.full(len(x), np.nan, np.float32))
        return value, gradient

    def gradient_model(self, model: Model) -> Model:
        """What gradients are taken of: ``model``, behind input diversity when ``diversity_prob > 0``
        (drawing from the attack's own seeded stream)."""
        if not self.diversity_prob:
            return model
        return InputDiversity(model, probability=self.diversity_prob, seed=self._diversity_rng)

    def hyperparameters(self) -> dict[str, Any]:
        return {"steps": self.steps, "alpha": self.alpha, "mu": self.mu, "nesterov": self.nesterov,
                "scale_copies": self.scale_copies, "diversity_prob": self.diversity_prob, "ti_kernel": self.ti_kernel,
                "ti_sigma": self.ti_sigma, "seed": self.seed, "loss": self.loss, "random_start": self.random_start,
                "restarts": self.restarts, "record_loss": self.record_loss, "early_stop": self.early_stop}

    def _perturb(self, model: Model, x: np.ndarray, box: Box, criterion: Criterion) -> np.ndarray:
        goal = criterion.goal(model, x)
        steps, alpha = self.schedule(box.epsilon)
        if self.restarts == 1 and not self.record_loss:
            self.loss_curve = None
            return self._descend(model, x, box, goal.classes, goal.targeted, steps, alpha)[0]
        count = len(x)
        curve = np.full((self.restarts, steps + 1, count), np.nan, np.float32)
        best = x.copy()
        best_value = np.full(count, -np.inf, np.float32)
        best_success = np.zeros(count, bool)
        for restart in range(self.restarts):
            active = np.flatnonzero(~best_success)
            if active.size == 0:
                break
            classes = goal.classes[active]
            adversarial, values = self._descend(model, x[active], box.take(active), classes, goal.targeted,
                                                steps, alpha)
            logits = model.logits(adversarial)
            final = losses.objective_numpy(logits, classes, goal.targeted, self.loss)
            success = losses.succeeded(logits, classes, goal.targeted)
            block = curve[restart]
            block[:steps, active] = values
            block[steps, active] = final
            better = success | (final > best_value[active])  # every active image has not succeeded yet
            chosen = active[better]
            best[chosen] = adversarial[better]
            best_value[chosen] = final[better]
            best_success[chosen] = success[better]
        self.loss_curve = curve if self.record_loss else None
        return best

    def _descend(self, model: Model, x: np.ndarray, box: Box, classes: np.ndarray, targeted: bool, steps: int,
                 alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """One run: the float32 result and the objective at each iterate before a step, ``(steps, N)``.

        With ``early_stop`` only the images not yet fooled take the next step; a stopped image keeps
        its result's objective in the later rows.
        """
        adversarial = (self.get_random_start(x, box) if self.random_start else x).copy()
        active, direction = np.arange(len(x)), None
        values = np.empty((steps, len(x)), np.float32)
        for step in range(steps):
            if step:
                values[step] = values[step - 1]
            value, gradient = self.objective_gradient(model, adversarial[active], classes[active], targeted, direction,
                                                      alpha)
            values[step, active] = value
            if self.early_stop:
                going = ~self._stop_fooled(model, adversarial, box, classes, targeted, active, value > 0)
                active, gradient = active[going], gradient[going]
                direction = None if direction is None else direction[going]
                if active.size == 0:
                    values[step + 1:] = values[step]
                    break
            direction = self.direction(direction, gradient)
            adversarial[active] = box.take(active).project(adversarial[active] + np.float32(alpha) * np.sign(direction))
        return adversarial, values

    def _stop_fooled(self, model: Model, adversarial: np.ndarray, box: Box, classes: np.ndarray, targeted: bool,
                     active: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Over ``active``: which candidates fool the model as saved (rounded); those become their rounded image."""
        stop = np.zeros(len(active), bool)
        if not candidates.any():
            return stop
        chosen = active[candidates]
        rounded = quantize(adversarial[chosen], box.lo[chosen], box.hi[chosen]).astype(np.float32)
        fooled = model.objective(rounded, classes[chosen], targeted, self.loss) > 0
        adversarial[chosen[fooled]] = rounded[fooled]
        stop[np.flatnonzero(candidates)[fooled]] = True
        return stop


class FastGradientSignMethod(IterativeGradientSignAttack):
    """FGSM (Goodfellow et al. 2015): one step of size ``eps`` along the sign of the gradient.

    Args:
        loss: ``"ce"`` (default) or ``"margin"``.
    """

    def __init__(self, *, loss: str = "ce") -> None:
        super().__init__(steps=1, loss=loss)

    def schedule(self, epsilon: int) -> tuple[int, float]:
        return 1, float(epsilon)

    def hyperparameters(self) -> dict[str, Any]:
        return {"loss": self.loss}


class BasicIterativeMethod(IterativeGradientSignAttack):
    """I-FGSM / BIM (Kurakin et al. 2016): iterated FGSM with small steps, projected after each.

    Args:
        steps: number of steps; ``None`` (default): ``floor(min(eps + 4, 1.25 eps))``.
        alpha: step size in pixel levels; ``None`` (default): 1 with the default steps, else
            ``eps / steps``.
        loss: ``"ce"`` (default) or ``"margin"``.
    """

    def __init__(self, *, steps: int | None = None, alpha: float | None = None, loss: str = "ce") -> None:
        super().__init__(steps=steps, alpha=alpha, loss=loss)

    def hyperparameters(self) -> dict[str, Any]:
        return {"steps": self.steps, "alpha": self.alpha, "loss": self.loss}


class ProjectedGradientDescent(IterativeGradientSignAttack):
    """PGD (Madry et al. 2018) in its L-infinity form: BIM from a uniform random point of the box.

    Args:
        steps, alpha: as :class:`BasicIterativeMethod` (same defaults).
        seed: seeds the random starts (``None``: fresh entropy).
        loss: ``"ce"`` (default) or ``"margin"``.
        restarts: independent random starts (default 1); an image broken by one is not run again.
        record_loss: keep the per-iterate objective in :attr:`loss_curve` after each call.
        early_stop: an image stops at its first iterate that fools the model as saved (margin loss
            only; see :class:`IterativeGradientSignAttack`).
    """

    def __init__(self, *, steps: int | None = None, alpha: float | None = None, seed: int | None = None,
                 loss: str = "ce", restarts: int = 1, record_loss: bool = False, early_stop: bool = False) -> None:
        super().__init__(steps=steps, alpha=alpha, random_start=True, seed=seed, loss=loss, restarts=restarts,
                         record_loss=record_loss, early_stop=early_stop)

    def hyperparameters(self) -> dict[str, Any]:
        return {"steps": self.steps, "alpha": self.alpha, "seed": self.seed, "loss": self.loss,
                "restarts": self.restarts, "record_loss": self.record_loss, "early_stop": self.early_stop}


class MomentumIterativeMethod(IterativeGradientSignAttack):
    """MI-FGSM (Dong et al. 2018, winner of the NIPS 2017 attack tracks).

    ``g <- mu * g + grad / mean(|grad|)`` per image, then a step of ``alpha * sign(g)``. The paper
    divides by the L1 norm; the mean absolute value differs by a constant factor (the image size),
    which leaves every sign unchanged. With ``mu = 0`` it is exactly BIM with the same steps and alpha.

    Args:
        steps: number of steps (default 10, the paper's).
        alpha: step size in pixel levels; ``None`` (default): ``eps / steps``.
        mu: the momentum's decay factor (default 1.0, the paper's).
        loss: ``"ce"`` (default, the paper's) or ``"margin"``.
    """

    def __init__(self, *, steps: int = 10, alpha: float | None = None, mu: float = 1.0, loss: str = "ce") -> None:
        if steps is None:
            raise ValueError("MomentumIterativeMethod needs an explicit number of steps")
        super().__init__(steps=steps, alpha=alpha, loss=loss, mu=mu)

    def hyperparameters(self) -> dict[str, Any]:
        return {"steps": self.steps, "alpha": self.alpha, "mu": self.mu, "loss": self.loss}


class DiverseInputsMomentumIterativeMethod(IterativeGradientSignAttack):
    """M-DI²-FGSM, "DI-MI-FGSM" (Xie et al., CVPR 2019, "Improving Transferability of Adversarial
    Examples with Input Diversity"): MI-FGSM whose every gradient goes, with probability
    ``diversity_prob``, through a random resize to ``[299, 330)`` and a random zero-padding to 330
    (resized back to the model's 299; :mod:`hgd.attacks.transfer`).

    Published defaults: ``diversity_prob`` 0.5, momentum 1.0. The paper's code ran Kurakin's
    schedule (1-pixel steps); the default here is MI-FGSM's 10 steps of ``eps / 10``, as the TI and
    SI-NI papers ran DIM. Every transfer option of :class:`IterativeGradientSignAttack` may be
    added (with TI it is TI-DIM).

    Args:
        steps, alpha, mu: as :class:`MomentumIterativeMethod` (10, ``eps / steps``, 1.0).
        diversity_prob: the chance a gradient goes through the transform (0.5, the paper's).
        seed: seeds the transform's draws (and the random starts); ``None``: fresh entropy.
        nesterov, scale_copies, ti_kernel, ti_sigma, loss, random_start, restarts, record_loss,
            early_stop: as :class:`IterativeGradientSignAttack` (off by default).
    """

    def __init__(self, *, steps: int | None = 10, alpha: float | None = None, mu: float = 1.0,
                 nesterov: bool = False, scale_copies: int = 1, diversity_prob: float = 0.5,
                 ti_kernel: int | None = None, ti_sigma: float | None = None, seed: int | None = None,
                 loss: str = "ce", random_start: bool = False, restarts: int = 1, record_loss: bool = False,
                 early_stop: bool = False) -> None:
        super().__init__(steps=steps, alpha=alpha, mu=mu, nesterov=nesterov, scale_copies=scale_copies,
                         diversity_prob=diversity_prob, ti_kernel=ti_kernel, ti_sigma=ti_sigma, seed=seed, loss=loss,
                         random_start=random_start, restarts=restarts, record_loss=record_loss, early_stop=early_stop)


class TranslationInvariantDiverseInputsMethod(IterativeGradientSignAttack):
    """TI-DIM, "TI-DI-MI-FGSM" (Dong et al., CVPR 2019, "Evading Defenses to Transferable Adversarial
    Examples by Translation-Invariant Attacks"): DI-MI-FGSM whose gradient is convolved with a
    normalized Gaussian kernel, per channel, before the momentum: the gradient of an ensemble of
    translated images, which transfers to defenses that look at other image regions.

    Published defaults: a 15x15 kernel (the paper's, for ImageNet 299 images; its code
    ``gkern(15, 3)``: ``sigma = (15 - 1) / 6 = 7/3`` pixels), ``diversity_prob`` 0.5 (DI's; the
    released TI script has 0.4), momentum 1.0, 10 steps of ``eps / 10``.

    Args:
        ti_kernel: the kernel's side in pixels (odd; 15, the paper's).
        ti_sigma: its standard deviation in pixels; ``None``: ``(ti_kernel - 1) / 6``, the code's.
        steps, alpha, mu, diversity_prob, seed: as :class:`DiverseInputsMomentumIterativeMethod`.
        nesterov, scale_copies, loss, random_start, restarts, record_loss, early_stop: as
            :class:`IterativeGradientSignAttack` (off by default).
    """

    def __init__(self, *, steps: int | None = 10, alpha: float | None = None, mu: float = 1.0,
                 nesterov: bool = False, scale_copies: int = 1, diversity_prob: float = 0.5,
                 ti_kernel: int | None = 15, ti_sigma: float | None = None, seed: int | None = None,
                 loss: str = "ce", random_start: bool = False, restarts: int = 1, record_loss: bool = False,
                 early_stop: bool = False) -> None:
        super().__init__(steps=steps, alpha=alpha, mu=mu, nesterov=nesterov, scale_copies=scale_copies,
                         diversity_prob=diversity_prob, ti_kernel=ti_kernel, ti_sigma=ti_sigma, seed=seed, loss=loss,
                         random_start=random_start, restarts=restarts, record_loss=record_loss, early_stop=early_stop)


class ScaleInvariantNesterovMethod(IterativeGradientSignAttack):
    """SI-NI-TI-DIM (Lin et al., ICLR 2020, "Nesterov Accelerated Gradient and Scale Invariance for
    Adversarial Attacks"): TI-DIM with Nesterov's look-ahead (the gradient at ``x + alpha * mu * g``)
    and the gradient averaged over ``scale_copies`` copies ``x / 2^i`` (scaled in the model's
    [-1, 1] convention, i.e. towards mid grey, as the paper's code scales Inception's input).

    Published defaults: 5 scale copies, momentum 1.0, 10 steps of ``eps / 10``, ``diversity_prob``
    0.5, and a 7x7 TI kernel (the paper's code: ``gkern(7, 3)``, ``sigma = 1`` pixel).
    ``nesterov=False, scale_copies=1`` with TI and DI off is exactly MI-FGSM.

    Args:
        nesterov: look ahead along the momentum (True, the paper's).
        scale_copies: copies ``x / 2^i`` averaged (5, the paper's).
        ti_kernel: TI kernel's side (7, the paper's code); ``None``: no TI (SI-NI-DIM).
        steps, alpha, mu, diversity_prob, ti_sigma, seed: as :class:`TranslationInvariantDiverseInputsMethod`.
        loss, random_start, restarts, record_loss, early_stop: as :class:`IterativeGradientSignAttack`.
    """

    def __init__(self, *, steps: int | None = 10, alpha: float | None = None, mu: float = 1.0,
                 nesterov: bool = True, scale_copies: int = 5, diversity_prob: float = 0.5,
                 ti_kernel: int | None = 7, ti_sigma: float | None = None, seed: int | None = None,
                 loss: str = "ce", random_start: bool = False, restarts: int = 1, record_loss: bool = False,
                 early_stop: bool = False) -> None:
        super().__init__(steps=steps, alpha=alpha, mu=mu, nesterov=nesterov, scale_copies=scale_copies,
                         diversity_prob=diversity_prob, ti_kernel=ti_kernel, ti_sigma=ti_sigma, seed=seed, loss=loss,
                         random_start=random_start, restarts=restarts, record_loss=record_loss, early_stop=early_stop)
