"""Training a DUNET on (adversarial, clean) pairs: ``model.fit`` with the guided loss, resumable.

Only the denoiser trains; the target models are frozen and run in inference mode (their
BatchNorm uses its ImageNet statistics), and gradients flow through them into the denoiser.
The recipe (paper section 4.2): Adam at ``learning_rate``
until the validation loss stops improving for ``patience`` epochs, then ``final_learning_rate``
until it stops again; the checkpoint with the lowest validation loss is the result. A run may choose its
checkpoints by the validation labels instead (``selection="accuracy"``): how many denoised validation
adversarial images the guiding models' ensemble classifies right, the loss breaking ties.

Cheaper than the paper on purpose, both measured in ``docs/results/paper-tables.md``: a width multiplier for
the DUNET and random square crops of the 299 images for training (the same crop and horizontal
flip for both images of a pair; validation always on the full 299 images, as deployed).

A trained denoiser may teach a cheaper one (``teacher_weights``; knowledge distillation, Hinton, Vinyals
and Dean, "Distilling the Knowledge in a Neural Network", 2015): the training loss is then the pixel
loss between the student's output and the teacher's for the same adversarial image, which runs no
target model, while validation keeps the run's guidance loss, so the student's checkpoints are
selected, and compare with the teacher's, on the scale the teacher was trained on.

Everything lives in one run folder (outside the checkout)::

    config.json         the FitConfig (resuming with another one is refused)
    state.json          epoch, learning rate, best validation loss, plateau count, hours spent
    last.weights.h5     the denoiser after the last finished epoch (+ optimizer.npz: Adam's moments)
    best.weights.h5     the denoiser the selection rule rates best: the result
    history.csv         one row per epoch (wall and process CPU seconds, validation accuracy included)

An epoch is ``steps_per_epoch`` batches (default: one pass over the training pairs), so a long
pass can be cut into checkpointed pieces; successive epochs walk through successive shuffles of
the pairs, so every pair is seen once per pass whatever the epoch length.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import json
import logging
import math
import pathlib
import time
from collections.abc import Iterable, Sequence

import keras
import numpy as np

from hgd.attacks.losses import check_loss
from hgd.backend import replica_share
from hgd.defenses.dunet import DTYPE_POLICIES, build_dunet
from hgd.io.files import replace_atomically, write_atomically
from hgd.io.images import IMAGE_SIZE, load_image
from hgd.train.adaptive import Adversary, SyncWeights, build_attacked_model
from hgd.train.distributed import Placement
from hgd.train.guidance import Guidance, guidance_loss
from hgd.train.pairs import (TRAIN, VALIDATION, Pair, check_attack_weights, check_weighting, read_pairs, read_plan,
                             weight_by_attack, weight_by_epsilon)
from hgd.zoo import NUM_CLASSES, get_model

log = logging.getLogger("hgd.train.fit")

CONFIG_FILE, STATE_FILE, HISTORY_FILE = "config.json", "state.json", "history.csv"
LAST_WEIGHTS, BEST_WEIGHTS, OPTIMIZER_FILE = "last.weights.h5", "best.weights.h5", "optimizer.npz"
HISTORY_FIELDS = ("epoch", "learning_rate", "loss", "val_loss", "seconds", "cpu_seconds", "val_accuracy")
SELECTIONS = ("loss", "accuracy")
"""What rates a checkpoint (:attr:`FitConfig.selection`)."""
ACCURACY_METRIC = "ensemble_accuracy"
"""The share of a batch's denoised adversarial images the guiding models' ensemble classifies right."""
# Options that may change between the sessions of one run: how long to go on, where the starting
# weights were read from (only the first session reads them; a checkout moves between sessions), and
# the DUNET body's precision (checkpoints are float32 under every policy; the next session's machine
# may compute bfloat16 fast or not).
RESUMABLE_CHANGES = ("max_epochs", "max_hours", "init_weights", "dtype_policy")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """What to train, and how.

    Attributes:
        guidance: the loss (PGD needs no target model).
        models: the guiding target models; several sum their losses (an ensemble-guided denoiser).
        width, lateral: the DUNET (``lateral=False`` is the paper's DAE).
        crop: side of the random training crops; ``None``: full 299 images.
        batch_size: pairs per step.
        steps_per_epoch: batches per epoch; ``None``: one pass over the training pairs.
        validation_pairs: how many validation pairs (a fixed random subset) each epoch scores.
        max_epochs, max_hours: stop after this many epochs / hours of training (``None``: no limit); a
            run does not start an epoch that, as long as its last, would pass ``max_hours``.
        learning_rate, final_learning_rate, patience: the schedule (see the module doc).
        holdout_classes: leave this many classes (seeded) out of training entirely (Table 5).
        seed: seeds the shuffles, crops, flips, the held-out classes and the adaptive attacks' starts.
        adaptive_fraction: the share of every training and validation batch whose adversarial image
            is replaced by a defense-aware one: PGD through the current denoiser and the guiding
            models (:mod:`hgd.train.adaptive`); 0 = the paper's oblivious training on the pairs only.
        adaptive_epsilon, adaptive_steps, adaptive_loss: that attack's eps (pixel levels), PGD
            steps and loss (``"ce"`` or ``"margin"``).
        init_weights: start the denoiser from these weights instead of a fresh DUNET (a run without
            a checkpoint yet): fine-tuning a trained denoiser, e.g. defense-aware training of the
            shipped one, spends no epochs relearning what it already does.
        dtype_policy: the DUNET body's precision (:data:`hgd.defenses.dunet.DTYPE_POLICIES`); weights and
            checkpoints are float32 either way. ``"auto"`` resolves on the machine that trains (a run
            resumed on another machine may compute in the other precision).
        teacher_weights, teacher_width: a trained DUNET (lateral, this width) whose output on the
            adversarial image is the training target instead (see the module doc); it runs in
            ``dtype_policy`` too. The file is read by every session of the run, so keep it where it
            stays unchanged (not the ``defense/weights/`` that training chunks replace).
        batch_norm_batches: before every validation (the start's included), set the denoiser's BatchNorm
            statistics to the mean of their values over this many batches of whole training images, always
            the same ones (:func:`statistics_pairs`, :func:`reestimate_batch_norm`); 0 keeps the moving
            averages of training. Checkpoints carry the statistics they were scored with.
        epsilon_weighting: how often training draws a pair by its eps (:func:`hgd.train.pairs.weight_by_epsilon`:
            ``uniform`` or ``bound``); validation and the BatchNorm statistics' pairs stay as built.
        attack_weights: how often training draws a pair by its attack's kind, on top of ``epsilon_weighting``
            (:func:`hgd.train.pairs.weight_by_attack`; e.g. ``{"mifgsm": 3}``; a kind not named: once).
        selection: what makes an epoch the best so far, and what the patience counts (:func:`improves`):
            ``loss`` (the paper's: the lowest validation loss) or ``accuracy`` (the most validation labels
            right, the loss breaking ties). Why the labels: late in training the loss stopped tracking them
            (``docs/results/training.md``), and the labels are what a defense is scored on.
    """

    guidance: Guidance = Guidance.FGD
    models: tuple[str, ...] = ("efficientnet_lite0",)
    width: float = 1.0
    lateral: bool = True
    crop: int | None = None
    batch_size: int = 16
    steps_per_epoch: int | None = None
    validation_pairs: int = 256
    max_epochs: int = 30
    max_hours: float | None = None
    learning_rate: float = 1e-3
    final_learning_rate: float = 1e-4
    patience: int = 2
    holdout_classes: int = 0
    seed: int = 0
    adaptive_fraction: float = 0.0
    adaptive_epsilon: int = 4
    adaptive_steps: int = 4
    adaptive_loss: str = "ce"
    init_weights: str | None = None
    dtype_policy: str = "float32"
    teacher_weights: str | None = None
    teacher_width: float = 0.5
    batch_norm_batches: int = 0
    epsilon_weighting: str = "uniform"
    attack_weights: dict[str, int] = dataclasses.field(default_factory=dict)
    selection: str = "loss"

    def __post_init__(self) -> None:
        object.__setattr__(self, "guidance", Guidance(self.guidance))
        object.__setattr__(self, "models", tuple(get_model(m).name.value for m in self.models))
        if self.guidance.needs_models and not self.models:
            raise ValueError(f"{self.guidance.value} needs at least one guiding target model")
        if self.crop is not None and not 32 <= self.crop <= IMAGE_SIZE:
            raise ValueError(f"crop must be in 32..{IMAGE_SIZE} or None, got {self.crop}")
        if not 0 <= self.holdout_classes < NUM_CLASSES:
            raise ValueError(f"holdout_classes must be in 0..{NUM_CLASSES - 1}, got {self.holdout_classes}")
        for name in ("batch_size", "validation_pairs", "max_epochs", "patience", "adaptive_epsilon", "adaptive_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.adaptive_fraction <= 1.0:
            raise ValueError(f"adaptive_fraction must be in [0, 1], got {self.adaptive_fraction}")
        if self.adaptive_fraction and not self.models:
            raise ValueError("defense-aware examples (adaptive_fraction > 0) need the target models to attack")
        object.__setattr__(self, "adaptive_loss", check_loss(self.adaptive_loss))
        if self.dtype_policy not in DTYPE_POLICIES:
            raise ValueError(f"dtype_policy must be one of {DTYPE_POLICIES}, got {self.dtype_policy!r}")
        if self.batch_norm_batches < 0:
            raise ValueError(f"batch_norm_batches must be >= 0, got {self.batch_norm_batches}")
        check_weighting(self.epsilon_weighting)
        object.__setattr__(self, "attack_weights", dict(check_attack_weights(self.attack_weights)))
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.selection == "accuracy" and not self.models:
            raise ValueError("selection 'accuracy' needs guiding target models to classify with")
        for name in ("width", "teacher_width"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "guidance": self.guidance.value}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> FitConfig:
        raw = json.loads(text)
        return cls(**{**raw, "models": tuple(raw["models"])})

    def heldout(self) -> frozenset[int]:
        """The classes left out of training (Table 5's unseen classes)."""
        rng = np.random.default_rng([self.seed, 5])
        return frozenset(int(c) for c in rng.choice(NUM_CLASSES, self.holdout_classes, replace=False))


@dataclasses.dataclass
class RunState:
    """What a resumed run needs besides the weights (``state.json``)."""

    epoch: int = 0
    learning_rate: float = 0.0
    best_val_loss: float = math.inf
    epochs_without_improvement: int = 0
    hours: float = 0.0
    last_epoch_hours: float = 0.0  # how long the last epoch took: whether another fits max_hours
    finished: str = ""  # why training stopped, once it has
    initial_val_loss: float | None = None  # the starting denoiser's (untrained or init_weights): the bar to clear
    best_val_accuracy: float | None = None  # the best epoch's (None: the run scores no labels)
    initial_val_accuracy: float | None = None

    def summary(self) -> str:
        """One line for a person: where the run stands."""
        start = "" if self.initial_val_loss is None else f" (at the start: {self.initial_val_loss:.5f})"
        if self.best_val_accuracy is not None:
            start += f", its validation accuracy {self.best_val_accuracy:.4f}"
            if self.initial_val_accuracy is not None:
                start += f" (at the start: {self.initial_val_accuracy:.4f})"
        return (f"epoch {self.epoch}, best validation loss {self.best_val_loss:.5f}{start}, {self.hours:.2f} h"
                f"{'; finished: ' + self.finished if self.finished else ''}")

    def beats_start(self, selection: str) -> bool:
        """Whether the best epoch improves on the starting denoiser by ``selection`` (the bar to install)."""
        if self.initial_val_loss is None or math.isinf(self.best_val_loss):
            return False
        return improves(selection, (self.best_val_loss, self.best_val_accuracy),
                        (self.initial_val_loss, self.initial_val_accuracy))


def improves(selection: str, new: tuple[float, float | None], old: tuple[float, float | None]) -> bool:
    """Whether validation scores ``new`` = (loss, accuracy) beat ``old`` by ``selection`` (:data:`SELECTIONS`).

    ``accuracy``: more labels right, or as many at a lower loss; a side without an accuracy (a run that
    scored none, e.g. one resumed from before the labels were scored) is rated by the loss alone.
    """
    (loss, accuracy), (old_loss, old_accuracy) = new, old
    if selection == "accuracy" and accuracy is not None and old_accuracy is not None and accuracy != old_accuracy:
        return accuracy > old_accuracy
    return loss < old_loss


class PairBatches(keras.utils.PyDataset):
    """Batches of ``({"adversarial", "clean"}: float32 pixels 0..255, labels)``.

    Training (``shuffle=True``): batch ``i`` of epoch ``e`` is position ``e * len(self) + i`` of an
    endless stream made of successive seeded shuffles of the pairs, cropped and flipped at random
    (one crop and flip per pair, shared by both images). Validation: the pairs in order, whole.
    With an ``adversary``, a seeded share of every batch has its adversarial image replaced by the
    adversary's attack on the clean one (:meth:`Adversary.replace`; validation: the same images and
    random starts every epoch, against the denoiser of that epoch).
    """

    def __init__(self, pairs: Sequence[Pair], batch_size: int, *, crop: int | None, shuffle: bool, seed: int,
                 steps: int | None = None, adversary: Adversary | None = None, shard: tuple[int, int] = (0, 1)) -> None:
        super().__init__()
        if not pairs:
            raise ValueError("no pairs to train or validate on")
        self.pairs, self.batch_size, self.crop, self.shuffle, self.seed = list(pairs), batch_size, crop, shuffle, seed
        self.adversary = adversary
        self.shard = shard
        self.steps = steps or math.ceil(len(self.pairs) / batch_size)
        self.epoch = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(4)
        self._shuffle: tuple[int, np.ndarray] = (-1, np.arange(0))

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        if not self.shuffle:
            chosen = self.pairs[index * self.batch_size:(index + 1) * self.batch_size]
        else:
            start = (self.epoch * self.steps + index) * self.batch_size
            chosen = [self.pairs[self._order(position)] for position in range(start, start + self.batch_size)]
        part, parts = self.shard
        first, last = part * len(chosen) // parts, (part + 1) * len(chosen) // parts  # this process's share
        loaded = list(self._pool.map(lambda pair: (load_image(pair.adversarial)[0], load_image(pair.clean)[0]),
                                     chosen[first:last]))
        adversarial, clean = (np.stack(images).astype(np.float32) for images in zip(*loaded))
        if self.shuffle:
            adversarial, clean = self._augment(adversarial, clean, index, first, len(chosen))
        labels = np.array([pair.label0 for pair in chosen[first:last]], dtype=np.int32)
        if self.adversary is not None:
            seed = (self.seed, 7, self.epoch, index) + ((part,) if parts > 1 else ())
            self.adversary.replace(adversarial, clean, labels, seed)
        return {"adversarial": adversarial, "clean": clean}, labels

    def _order(self, position: int) -> int:
        shuffle_index, offset = divmod(position, len(self.pairs))
        if self._shuffle[0] != shuffle_index:
            self._shuffle = (shuffle_index, np.random.default_rng([self.seed, shuffle_index]).permutation(len(self.pairs)))
        return int(self._shuffle[1][offset])

    def _augment(self, adversarial: np.ndarray, clean: np.ndarray, index: int, first: int,
                 total: int) -> tuple[np.ndarray, np.ndarray]:
        """Crops and flips drawn for the whole global batch of ``total`` (so a process's share gets the
        draws it would get in one process), applied to the images from position ``first`` on."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        side = self.crop or IMAGE_SIZE
        draws = [(*rng.integers(0, IMAGE_SIZE - side + 1, size=2), rng.random() < 0.5) for _ in range(total)]
        out = [np.empty((len(adversarial), side, side, 3), np.float32) for _ in range(2)]
        for i in range(len(adversarial)):
            top, left, flip = draws[first + i]
            for source, target in zip((adversarial, clean), out):
                window = source[i, top:top + side, left:left + side]
                target[i] = window[:, ::-1] if flip else window
        return out[0], out[1]


class DenoiserTraining(keras.Model):
    """The denoiser with its loss: ``fit`` trains ``denoiser`` only, the heads (and a teacher) are frozen."""

    def __init__(self, denoiser: keras.Model, normalize: keras.layers.Layer, heads: Sequence[keras.Model],
                 guidance: Guidance, teacher: keras.Model | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.denoiser, self.normalize, self.heads, self.guidance = denoiser, normalize, list(heads), guidance
        self.teacher = teacher
        self.weights_attached = False
        # the denoised images' ensemble labels (the heads' inference: a few % of an FGD step)
        self.ensemble_accuracy = keras.metrics.SparseCategoricalAccuracy(name=ACCURACY_METRIC) if heads else None
        for frozen in [*self.heads, *([teacher] if teacher is not None else [])]:
            frozen.trainable = False

    def adversary(self, config: FitConfig) -> Adversary:
        """The defense-aware attack of ``config`` on this denoiser and its guiding models.

        The attack runs in the data pipeline and reads the model's weights, so they stay attached
        to it during training (see :meth:`_purge_model_variables`).
        """
        self.weights_attached = True
        return Adversary(build_attacked_model(self.denoiser, self.normalize, self.heads),
                         fraction=config.adaptive_fraction, epsilon=config.adaptive_epsilon,
                         steps=config.adaptive_steps, loss=config.adaptive_loss)

    def _purge_model_variables(self, *args, **kwargs) -> None:
        """JAX only: Keras detaches the weights from the model during ``fit``/``evaluate`` to save memory
        (the step is stateless); the defense-aware attack needs them where it reads them."""
        if not self.weights_attached:
            super()._purge_model_variables(*args, **kwargs)

    def call(self, inputs, training: bool = False):
        return self.denoiser(self.normalize(inputs["adversarial"]), training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training: bool = True):
        """The guidance loss; in training steps with a teacher, the pixel loss against its output instead.

        It also counts the denoised images' ensemble labels (:data:`ACCURACY_METRIC`): here, not in
        ``compute_metrics``, because JAX runs that without the model's weights (the heads could not run);
        not in a distillation step, whose point is to run no classifier (its training accuracy reads 0).
        """
        distilling = training and self.teacher is not None
        if self.ensemble_accuracy is not None and not distilling:
            self.ensemble_accuracy.update_state(y, self.ensemble_logits(y_pred))
        if distilling:
            taught = keras.ops.stop_gradient(self.teacher(self.normalize(x["adversarial"]), training=False))
            return replica_share(guidance_loss(Guidance.PGD, y_pred, taught, y, ()))
        return replica_share(guidance_loss(self.guidance, y_pred, self.normalize(x["clean"]), y, self.heads))

    def ensemble_logits(self, denoised):
        """The guiding models' mean logits for normalized denoised images."""
        return keras.ops.mean(keras.ops.stack([head(denoised, training=False)[1] for head in self.heads]), axis=0)


def build_training_model(config: FitConfig) -> DenoiserTraining:
    """The DUNET of ``config`` and frozen guide heads of its target models, any image size."""
    from hgd.defenses.defended import Member, shared_normalization

    targets = [get_model(name) for name in config.models]
    normalize = (targets[0] if targets else get_model("efficientnet_lite0")).normalize()
    if targets:
        shared_normalization([Member(t) for t in targets])
    needs_heads = config.guidance.needs_models or config.adaptive_fraction > 0 or config.selection == "accuracy"
    heads = [t.build_from_normalized(None, guide=True) for t in targets] if needs_heads else []
    denoiser = build_dunet(width=config.width, lateral=config.lateral, dtype_policy=config.dtype_policy)
    return DenoiserTraining(denoiser, normalize, heads, config.guidance, teacher=_teacher(config),
                            name=f"{config.guidance.value}_training")


def _teacher(config: FitConfig) -> keras.Model | None:
    """The trained DUNET of ``config.teacher_weights``, or ``None``."""
    if config.teacher_weights is None:
        return None
    if not pathlib.Path(config.teacher_weights).is_file():
        raise FileNotFoundError(f"teacher_weights: no such file {config.teacher_weights}")
    teacher = build_dunet(width=config.teacher_width, dtype_policy=config.dtype_policy, name="teacher")
    teacher.load_weights(config.teacher_weights)
    return teacher


def fit(pairs_dir: pathlib.Path, run_dir: pathlib.Path, config: FitConfig, *, verbose: int | str = "auto",
        built_only: bool = False, only: Sequence[Pair] | None = None,
        placement: Placement = Placement()) -> RunState:
    """Train (or go on training) ``config`` on the pairs of ``pairs_dir``, in ``run_dir``.

    ``built_only`` trains on the pairs built so far of an unfinished pair folder (see ``read_pairs``), and
    validates on those of the run's validation pairs (:func:`split_pairs`) that are built. ``only``: train
    and validate on those of the folder's pairs only (a chunk's slice: :func:`hgd.train.continued.chunk_pairs`).
    ``placement``: the devices and processes of a data-parallel run (:func:`hgd.train.distributed.place`,
    called before this); each process loads its share of every global batch, only process 0 writes.
    Returns the final state; ``run_dir / best.weights.h5`` holds the trained denoiser.
    """
    placement.check_batch(config.batch_size)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = _claim(run_dir, config, write=placement.writes)
    state = _load_state(run_dir, config)
    if state.finished:
        log.info("%s: already finished (%s)", run_dir, state.finished)
        return state
    train_pairs, val_pairs = _split(pairs_dir, config, built_only, only)
    log.info("%d training pairs%s, %d validation pairs scored per epoch", len(set(train_pairs)),
             "" if len(train_pairs) == len(set(train_pairs)) else
             f" ({len(train_pairs)} draws by epsilon_weighting {config.epsilon_weighting}"
             f"{', attack_weights ' + json.dumps(config.attack_weights) if config.attack_weights else ''})",
             len(val_pairs))
    if placement.num_processes > 1:
        keras.utils.set_random_seed(config.seed)  # every process starts from the same fresh weights
    with placement.scope():  # TensorFlow: the model's variables mirrored over the devices
        model = build_training_model(config)
    adversary = model.adversary(config) if config.adaptive_fraction else None
    if adversary is not None:
        log.info("defense-aware examples: %.0f%% of every batch, %d-step PGD at eps %d through the current denoiser",
                 100 * config.adaptive_fraction, config.adaptive_steps, config.adaptive_epsilon)
    train = PairBatches(train_pairs, config.batch_size, crop=config.crop, shuffle=True, seed=config.seed,
                        steps=config.steps_per_epoch, adversary=adversary, shard=placement.shard)
    validation = PairBatches(_whole_batches(val_pairs, config.batch_size, placement), config.batch_size, crop=None,
                             shuffle=False, seed=config.seed, adversary=adversary, shard=placement.shard)
    with placement.scope():
        model.compile(optimizer=keras.optimizers.Adam(state.learning_rate))
        _restore(run_dir, model, config.init_weights)
    hooks = [SyncWeights()] if adversary is not None else []  # callbacks of every evaluation too
    if config.batch_norm_batches:
        hooks.append(BatchNormStatistics(model, _built_statistics_pairs(pairs_dir, config), config))
    if state.epoch == 0 and state.initial_val_loss is None:
        scores = model.evaluate(validation, verbose=0, callbacks=hooks, return_dict=True)
        state.initial_val_loss, state.initial_val_accuracy = float(scores["loss"]), _accuracy(scores)
        log.info("validation loss of the starting denoiser (%s): %.5f%s", config.init_weights or "untrained",
                 state.initial_val_loss, _accuracy_note(state.initial_val_accuracy))
        if placement.writes:
            _save_state(run_dir, state)
    checkpointer = Checkpointer(run_dir, config, state, train, writes=placement.writes)
    model.fit(train, validation_data=validation, epochs=config.max_epochs, initial_epoch=state.epoch,
              callbacks=[*hooks, checkpointer], verbose=verbose)
    if not state.finished and state.epoch >= config.max_epochs:
        state.finished = f"reached max_epochs={config.max_epochs}"
        if placement.writes:
            _save_state(run_dir, state)
    return state


def _whole_batches(pairs: list[Pair], batch_size: int, placement: Placement) -> list[Pair]:
    """Data parallel: the validation pairs cut to whole batches (every batch must split over the devices)."""
    if placement.devices == 1:
        return pairs
    kept = len(pairs) - len(pairs) % batch_size
    if not kept:
        raise ValueError(f"{len(pairs)} validation pairs do not fill one batch of {batch_size}")
    return pairs[:kept]


def validation_loss(pairs_dir: pathlib.Path, weights: pathlib.Path, config: FitConfig,
                    save: pathlib.Path | None = None) -> float:
    """The loss of ``config`` for the denoiser ``weights`` on the validation pairs a run of ``config`` scores.

    What ``fit`` reports as ``val_loss``, for any checkpoint: e.g. one trained in ``mixed_bfloat16`` scored in
    ``float32`` (``config.dtype_policy``), so runs validated under different policies compare on one scale.
    With ``config.batch_norm_batches`` the BatchNorm statistics are re-estimated first, on the same images as
    ``fit`` re-estimates them on (:func:`statistics_pairs`); ``save`` keeps the weights with the statistics they
    were scored with (what a checkpoint of ``fit`` holds).
    """
    model, validation = _validation(pairs_dir, weights, config, save)
    return float(model.evaluate(validation, verbose=0, return_dict=True)["loss"])


def validation_scores(pairs_dir: pathlib.Path, weights: pathlib.Path, config: FitConfig,
                      save: pathlib.Path | None = None) -> tuple[float, list[tuple[Pair, bool]]]:
    """:func:`validation_loss`, and each of its validation pairs with whether the guiding models' ensemble
    classifies its denoised adversarial image right (the members' logits averaged, as the defense combines
    them), in one pass over the pairs (the BatchNorm statistics re-estimated once).

    Why the labels beside the loss: the loss is what training lowers, the label is what the harness scores;
    on the training pool's validation pairs (never the test images) this says whether a lower loss is a
    better defense, and, per pair, at which attacks and eps it is (:func:`hgd.train.pairs.accuracy_by_bound`).
    """
    model, validation = _validation(pairs_dir, weights, config, save)
    if not model.heads:
        raise ValueError(f"{config.guidance.value} runs no target models to classify with")
    total, correct = 0.0, []
    for k in range(len(validation)):
        inputs, labels = validation[k]
        denoised = model(inputs, training=False)
        loss = model.compute_loss(x=inputs, y=labels, y_pred=denoised, training=False)
        total += float(keras.ops.convert_to_numpy(loss)) * len(labels)
        logits = model.ensemble_logits(denoised)
        correct += (np.argmax(keras.ops.convert_to_numpy(logits), axis=-1) == labels).tolist()
    return total / len(correct), list(zip(validation.pairs, correct))


def _validation(pairs_dir: pathlib.Path, weights: pathlib.Path, config: FitConfig,
                save: pathlib.Path | None) -> tuple[DenoiserTraining, PairBatches]:
    """The compiled model of ``config`` with the denoiser ``weights``, its BatchNorm statistics re-estimated as
    ``config`` asks (then saved to ``save``, if given), and its validation batches."""
    plan = read_plan(pairs_dir)[1]
    _, val_pairs = split_pairs(plan, config)
    _require_built(pairs_dir, val_pairs, "validation pairs")
    model = build_training_model(dataclasses.replace(config, teacher_weights=None))  # validation runs no teacher
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    model.denoiser.load_weights(weights)
    if config.batch_norm_batches:
        BatchNormStatistics(model, _built_statistics_pairs(pairs_dir, config), config).on_test_begin()
    if save is not None:
        _save_weights(model.denoiser, save)
    return model, PairBatches(val_pairs, config.batch_size, crop=None, shuffle=False, seed=config.seed)


def reestimate_batch_norm(denoiser: keras.Model, inputs: Iterable[np.ndarray]) -> None:
    """Sets the moving statistics of ``denoiser``'s BatchNorm layers to the mean of its batch statistics over
    ``inputs`` (batches of the denoiser's input).

    Why: with the reference's momentum (0.9) the moving statistics that training leaves are those of its last
    ten or so batches, and their noise moves the validation loss of the same trained weights by more than a
    training chunk gains (the shipped denoiser: 0.27781 with its training statistics, 0.29192 with them
    re-estimated on 256 training images), so a best checkpoint chosen by that loss is partly chosen for the
    luck of its statistics. Re-estimated on the same batches before every validation, the loss compares
    the weights.
    """
    layers = [layer for layer in denoiser.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    try:
        for k, batch in enumerate(inputs):
            for layer in layers:
                layer.momentum = k / (k + 1)  # the running mean of the batches' statistics so far
            denoiser(batch, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


class BatchNormStatistics(keras.callbacks.Callback):
    """Re-estimates the denoiser's BatchNorm statistics (:func:`reestimate_batch_norm`) before every validation,
    on the whole adversarial images of ``pairs`` (:func:`statistics_pairs`) in batches of the run's size: the
    same images each time (every process of a data-parallel run loads whole batches, so all get the same)."""

    def __init__(self, model: DenoiserTraining, pairs: Sequence[Pair], config: FitConfig) -> None:
        super().__init__()
        self.training_model = model
        self.batches = PairBatches(pairs, config.batch_size, crop=None, shuffle=False, seed=config.seed)

    def on_test_begin(self, logs=None) -> None:
        normalize = self.training_model.normalize
        reestimate_batch_norm(self.training_model.denoiser,
                              (normalize(self.batches[k][0]["adversarial"]) for k in range(len(self.batches))))


class Checkpointer(keras.callbacks.Callback):
    """Per epoch: the learning-rate schedule, the best and last checkpoints, the history, the stop."""

    def __init__(self, run_dir: pathlib.Path, config: FitConfig, state: RunState, train: PairBatches,
                 writes: bool = True) -> None:
        super().__init__()
        self.run_dir, self.config, self.state, self.train = run_dir, config, state, train
        self.writes = writes  # several processes: all keep the schedule, only process 0 writes
        self._started = self._cpu_started = 0.0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.train.epoch = epoch
        self.model.optimizer.learning_rate = self.state.learning_rate
        self._started, self._cpu_started = time.monotonic(), time.process_time()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        seconds, cpu_seconds = time.monotonic() - self._started, time.process_time() - self._cpu_started
        state, config = self.state, self.config
        val_loss, val_accuracy = float(logs["val_loss"]), _accuracy(logs, "val_")
        denoiser = self.model.denoiser
        if improves(config.selection, (val_loss, val_accuracy), (state.best_val_loss, state.best_val_accuracy)):
            state.best_val_loss, state.best_val_accuracy, state.epochs_without_improvement = val_loss, val_accuracy, 0
            if self.writes:
                _save_weights(denoiser, self.run_dir / BEST_WEIGHTS)
        else:
            state.epochs_without_improvement += 1
        if self.writes:
            _append_history(self.run_dir / HISTORY_FILE,
                            [epoch + 1, state.learning_rate, float(logs["loss"]), val_loss, round(seconds, 1),
                             round(cpu_seconds, 1), "" if val_accuracy is None else f"{val_accuracy:.5f}"])
        log.info("epoch %d: loss %.5f, val_loss %.5f%s (best %.5f%s by %s), lr %g, %.0f s", epoch + 1, logs["loss"],
                 val_loss, _accuracy_note(val_accuracy), state.best_val_loss, _accuracy_note(state.best_val_accuracy),
                 config.selection, state.learning_rate, seconds)
        if state.epochs_without_improvement >= config.patience:
            if state.learning_rate > config.final_learning_rate:
                state.learning_rate, state.epochs_without_improvement = config.final_learning_rate, 0
            else:
                state.finished = f"validation {config.selection} plateaued at the final learning rate (epoch {epoch + 1})"
        state.last_epoch_hours = seconds / 3600
        state.epoch, state.hours = epoch + 1, state.hours + state.last_epoch_hours
        if not state.finished:
            state.finished = _out_of_hours(config.max_hours, state)
        if self.writes:
            _save_weights(denoiser, self.run_dir / LAST_WEIGHTS)
            _save_optimizer(self.model.optimizer, self.run_dir / OPTIMIZER_FILE)
            _save_state(self.run_dir, state)
        if state.finished:
            self.model.stop_training = True


def _out_of_hours(max_hours: float | None, state: RunState) -> str:
    """Why the run stops for its hours, or "" while another epoch as long as the last one fits them.

    Why: ``max_hours`` is a session's budget; checked only after the fact, it let a run overrun it by
    one whole epoch (a quarter hour and more on a CPU), time the session's measurements needed.
    """
    if max_hours is None:
        return ""
    if state.hours >= max_hours:
        return f"reached max_hours={max_hours} ({state.hours:.2f} h)"
    if state.hours + state.last_epoch_hours > max_hours:
        return (f"reached max_hours={max_hours}: another epoch as long as the last ({state.last_epoch_hours:.2f} h) "
                f"would pass it ({state.hours:.2f} h done)")
    return ""


def split_pairs(plan: Sequence[Pair], config: FitConfig) -> tuple[list[Pair], list[Pair]]:
    """A run's training pairs and the fixed random subset of validation pairs it scores, chosen from a pair
    folder's whole plan (built or not), so the validation pairs stay the same however much is built."""
    heldout = config.heldout()
    seen = [pair for pair in plan if pair.label0 not in heldout]
    train = [pair for pair in seen if pair.split == TRAIN]
    validation = [pair for pair in seen if pair.split == VALIDATION]
    rng = np.random.default_rng([config.seed, 1])
    keep = sorted(rng.permutation(len(validation))[: config.validation_pairs])
    return train, [validation[i] for i in keep]


def statistics_pairs(plan: Sequence[Pair], config: FitConfig) -> list[Pair]:
    """The training pairs whose adversarial images the BatchNorm statistics are re-estimated on before every
    validation: ``config.batch_norm_batches`` batches of a seeded draw from the whole plan's training pairs.

    Why fixed, and drawn from the whole plan rather than from the pairs a run trains on: the same weights
    scored 0.278 to 0.293 on the same validation pairs with their statistics re-estimated on three different
    sets of 256 training images, more than a training chunk gains; chunks that train on different slices
    of the pairs (:func:`hgd.train.continued.chunk_pairs`) compare on one footing only if every one of them
    re-estimates on the same images.
    """
    train, _ = split_pairs(plan, config)
    count = min(config.batch_norm_batches * config.batch_size, len(train))
    order = np.random.default_rng([config.seed, 3]).permutation(len(train))
    return [train[i] for i in sorted(order[:count])]


def _built_statistics_pairs(pairs_dir: pathlib.Path, config: FitConfig) -> list[Pair]:
    """:func:`statistics_pairs` of the folder, all of them built (a chunk builds them with its slice)."""
    pairs = statistics_pairs(read_plan(pairs_dir)[1], config)
    _require_built(pairs_dir, pairs, "pairs the BatchNorm statistics are re-estimated on")
    return pairs


def _require_built(pairs_dir: pathlib.Path, pairs: Sequence[Pair], what: str) -> None:
    """Refuses ``pairs`` (``what`` they are for) unless every adversarial image of theirs is built."""
    missing = [pair.adversarial for pair in pairs if not pair.adversarial.is_file()]
    if missing:
        raise FileNotFoundError(f"{pairs_dir}: {len(missing)} of the {len(pairs)} {what} are not built "
                                f"(e.g. {missing[0]})")


def _split(pairs_dir: pathlib.Path, config: FitConfig, built_only: bool,
           only: Sequence[Pair] | None = None) -> tuple[list[Pair], list[Pair]]:
    """:func:`split_pairs` of the folder's plan, kept to its built pairs (``built_only``) or to ``only``, the
    training pairs weighted by ``config.epsilon_weighting`` and ``config.attack_weights``."""
    if only is None:
        _, built = read_pairs(pairs_dir, built_only=built_only)  # refuses an unfinished folder unless built_only
    else:
        built = list(only)
        _require_built(pairs_dir, built, "pairs to train on")
    spec, plan = read_plan(pairs_dir)
    train, validation = split_pairs(plan, config)
    there = set(built)
    train, validation = [p for p in train if p in there], [p for p in validation if p in there]
    if not train or not validation:
        raise ValueError(f"{pairs_dir}: {len(train)} training and {len(validation)} validation pairs; need both")
    weighted = weight_by_attack(weight_by_epsilon(train, config.epsilon_weighting), config.attack_weights,
                                spec.attacks())
    return weighted, validation


def _claim(run_dir: pathlib.Path, config: FitConfig, write: bool = True) -> FitConfig:
    path = run_dir / CONFIG_FILE
    if path.is_file():
        existing = FitConfig.from_json(path.read_text())
        fixed = {k: v for k, v in dataclasses.asdict(config).items() if k not in RESUMABLE_CHANGES}
        if {k: v for k, v in dataclasses.asdict(existing).items() if k not in RESUMABLE_CHANGES} != fixed:
            raise ValueError(f"{run_dir} trains another configuration:\n{existing}\nasked:\n{config}\n"
                             f"only {', '.join(RESUMABLE_CHANGES)} may change when resuming")
    if write:
        write_atomically(path, "w", lambda f: f.write(config.to_json()))
    return config


def _load_state(run_dir: pathlib.Path, config: FitConfig) -> RunState:
    path = run_dir / STATE_FILE
    if not path.is_file():
        return RunState(learning_rate=config.learning_rate)
    state = RunState(**json.loads(path.read_text()))
    if state.finished.startswith("reached max_") and not _still_limited(state, config):
        state.finished = ""  # a raised limit lets a stopped run go on
    elif not state.finished and _still_limited(state, config):
        state.finished = f"reached max_epochs={config.max_epochs} or max_hours={config.max_hours} before a killed epoch"
    return state


def _still_limited(state: RunState, config: FitConfig) -> bool:
    return state.epoch >= config.max_epochs or bool(_out_of_hours(config.max_hours, state))


def _save_state(run_dir: pathlib.Path, state: RunState) -> None:
    write_atomically(run_dir / STATE_FILE, "w", lambda f: json.dump(dataclasses.asdict(state), f, indent=1))


def _save_weights(model: keras.Model, path: pathlib.Path) -> None:
    replace_atomically(path, model.save_weights, suffix=".weights.h5")


def _save_optimizer(optimizer: keras.optimizers.Optimizer, path: pathlib.Path) -> None:
    values = {f"v{i:04d}": keras.ops.convert_to_numpy(v) for i, v in enumerate(optimizer.variables)}
    write_atomically(path, "wb", lambda f: np.savez(f, **values))


def _restore(run_dir: pathlib.Path, model: DenoiserTraining, init_weights: str | None) -> None:
    """Load the last epoch's denoiser and Adam state, if a previous session left them; else ``init_weights``."""
    if not (run_dir / LAST_WEIGHTS).is_file():
        if init_weights is not None:
            if not pathlib.Path(init_weights).is_file():
                raise FileNotFoundError(f"init_weights: no such file {init_weights}")
            model.denoiser.load_weights(init_weights)
            log.info("starting from %s", init_weights)
        return
    model.denoiser.load_weights(run_dir / LAST_WEIGHTS)
    optimizer = model.optimizer
    optimizer.build(model.denoiser.trainable_variables)
    with np.load(run_dir / OPTIMIZER_FILE) as saved:
        values = [saved[key] for key in sorted(saved.files)]
    if len(values) != len(optimizer.variables):
        raise ValueError(f"{run_dir / OPTIMIZER_FILE}: {len(values)} arrays for {len(optimizer.variables)} variables")
    for variable, value in zip(optimizer.variables, values):
        variable.assign(value)
    log.info("resumed from %s", run_dir / LAST_WEIGHTS)


def _accuracy(logs: dict, prefix: str = "") -> float | None:
    """The :data:`ACCURACY_METRIC` of Keras' ``logs`` (``None``: a run without guiding models scores none)."""
    value = logs.get(prefix + ACCURACY_METRIC)
    return None if value is None else float(value)


def _accuracy_note(accuracy: float | None) -> str:
    return "" if accuracy is None else f", accuracy {accuracy:.4f}"


def _append_history(path: pathlib.Path, row: list) -> None:
    """One epoch's row; a history begun before the last column was added gets the new header, its rows an
    empty last column (a run resumed across versions)."""
    rows = []
    if path.is_file():
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    if rows and tuple(rows[0]) == HISTORY_FIELDS:
        with open(path, "a", newline="") as f:
            csv.writer(f).writerow(row)
        return
    padded = [old + [""] * (len(HISTORY_FIELDS) - len(old)) for old in rows[1:]]
    write_atomically(path, "w", lambda f: csv.writer(f).writerows([HISTORY_FIELDS, *padded, row]))
