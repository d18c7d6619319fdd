"""A defense's whole training recipe, read from its own ``config.json`` (``python -m hgd.cli.train defense``).

A defense configuration names its denoisers' weight files; its ``training`` section says how they are
made. Training a defense is then one resumable command: build the Table 1 pairs with the recipe's
attack models, train every denoiser the configuration runs (a shared denoiser is guided by all the
members, a member's own denoiser by its member only, as in the winning NIPS 2017 submission), and
install each best checkpoint where the configuration reads it. The shipped Lite defense and the
four-model competition profile are trained by the same code::

    "training": {"attack_models": ["efficientnet_lite0", "efficientnet_lite1"], "attacks_per_image": 2,
                 "warm_start": {"guidance": "pgd", "max_epochs": 3},
                 "guidance": "fgd", "crop": 128, "batch_size": 16, "steps_per_epoch": 100,
                 "validation_pairs": 64, "max_epochs": 4, "max_hours": 2,
                 "fine_tune": {"crop": 299, "max_epochs": 3}, "float16_weights": true}

Every key is optional: ``attack_models`` defaults to the members, ``attacks_per_image`` to every
training attack on every image, ``attack_set`` to ``table1`` (``competition`` adds the harness's
10-step I-FGSM and MI-FGSM: :data:`hgd.train.pairs.ATTACK_SETS`), ``float16_weights`` (install the
weights as float16) to false, the rest to :class:`FitConfig`'s defaults (the paper's full-image
training). ``warm_start`` (e.g. ``{"guidance": "pgd", "max_epochs": 3}``) trains each denoiser first
with those options replacing the recipe's, in its own run (``runs/NAME_warm_start``), and starts the recipe's training from that run's
best checkpoint: on this CPU FGD from the identity did not move in an hour while the pixel loss did,
and FGD from a 3-epoch PGD start did (``docs/results/paper-tables.md``). ``fine_tune`` (e.g. ``{"crop": 299,
"max_epochs": 2}``) goes on from the recipe's best checkpoint with those options, in its own run
(``runs/NAME_fine_tune``), and that run's best checkpoint is what gets installed: crops are cheap steps,
but what a denoiser learns on a crop carries over poorly to the whole images it is used on.
``continue`` (e.g. ``{"crop": 299, "steps_per_epoch": 50}``) is not part of training from scratch: it
is how ``python -m hgd.cli.train continue`` goes on from the installed weights, a chunk at a time
(:mod:`hgd.train.continued`), with those options over the last stage's; its ``attack_models``,
``attack_set`` and ``attacks_per_image`` (each optional) choose another pair set for the chunks than the
one the recipe started on, e.g. when the first one's loss has stopped falling; its ``pair_slices``
(default 1) cuts the chunks' training pairs into that many seeded slices, each chunk building only
the next one and the validation pairs, for a work folder that does not outlive its machine.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import shutil
from typing import IO

import numpy as np

from hgd.defenses.defended import DefenseConfig, DenoiserSpec, load_config
from hgd.io.files import write_atomically
from hgd.train.fit import BEST_WEIGHTS, FitConfig, RunState, fit
from hgd.train.distributed import Placement
from hgd.train.pairs import PairSpec, build_pairs

log = logging.getLogger("hgd.train.recipe")

STAGE_KEYS = ("warm_start", "fine_tune")
CONTINUE_KEY = "continue"
PATH_KEYS = ("init_weights", "teacher_weights")
"""Fit options that name a file: relative to the configuration in a recipe."""
PAIR_KEYS = frozenset({"attack_models", "attacks_per_image", "attack_set"})
"""The keys that choose a pair set (:class:`PairChoice`): the recipe's, or ``continue``'s for the chunks."""
CHUNK_KEYS = frozenset({"pair_slices"})
"""``continue``-only keys that are not fit options: how much of the pair set a chunk builds."""
RECIPE_ONLY_KEYS = PAIR_KEYS | {"float16_weights", *STAGE_KEYS, CONTINUE_KEY}
RECIPE_KEYS = RECIPE_ONLY_KEYS | (frozenset(f.name for f in dataclasses.fields(FitConfig)) - {
    "models", "width", "lateral"})
"""What a ``training`` section may set: the pair set (attack models, attack set, attacks drawn per image),
whether the installed weights are stored as float16, and the fit options that the denoiser entries of
the configuration do not already fix."""


@dataclasses.dataclass(frozen=True)
class PairChoice:
    """Which training pairs a recipe trains on: the attacks' models, the attack set, the attacks per image."""

    attack_models: tuple[str, ...]
    attacks_per_image: int | None = None
    attack_set: str = "table1"

    def __post_init__(self) -> None:
        self._spec("-")  # refuses an unknown model or attack set, or a k out of range, when the recipe is read

    def spec(self, source: pathlib.Path) -> PairSpec:
        """The pair set: ``source`` attacked as chosen (the rest is :class:`PairSpec`'s seeded defaults)."""
        return self._spec(str(source.resolve()))

    def _spec(self, source: str) -> PairSpec:
        return PairSpec(source=source, models=tuple(self.attack_models), attacks_per_image=self.attacks_per_image,
                        attack_set=self.attack_set)

    def folder(self, work_dir: pathlib.Path) -> pathlib.Path:
        """Where the pair set lives in ``work_dir``: one folder per pair set, shared by the recipes that use it."""
        k = "" if self.attacks_per_image is None else f"_k{self.attacks_per_image}"
        attack_set = "" if self.attack_set == "table1" else f"_{self.attack_set}"
        return work_dir / f"pairs_{'+'.join(self.attack_models)}{k}{attack_set}"

    def replaced(self, raw: dict) -> PairChoice:
        """This choice with the pair keys of ``raw`` (a ``training`` or ``continue`` section) over it."""
        chosen = {key: raw[key] for key in PAIR_KEYS if key in raw}
        if "attack_models" in chosen:
            chosen["attack_models"] = tuple(chosen["attack_models"])
        return dataclasses.replace(self, **chosen)


@dataclasses.dataclass(frozen=True)
class DenoiserJob:
    """One denoiser of a defense to train: where its run lives and where its weights go.

    ``warm_start`` runs before ``config`` and ``fine_tune`` after it, each starting from the best
    checkpoint of the stage before it; ``continued`` is what later chunks train from the installed weights.
    """

    spec: DenoiserSpec
    config: FitConfig
    warm_start: FitConfig | None = None
    fine_tune: FitConfig | None = None
    continued: FitConfig | None = None

    @property
    def name(self) -> str:
        """The run's name: the weight file's name without ``.weights.h5`` (e.g. ``fgd_lite_ensemble``)."""
        return self.spec.weights.name.removesuffix(".h5").removesuffix(".weights")

    def stages(self) -> list[tuple[str, FitConfig]]:
        """The runs to train in order, as (run name, options): the last one's best checkpoint is the result."""
        named = [(f"{self.name}_warm_start", self.warm_start), (self.name, self.config),
                 (f"{self.name}_fine_tune", self.fine_tune)]
        return [(name, config) for name, config in named if config is not None]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A defense configuration and how to train it."""

    defense: DefenseConfig
    pairs: PairChoice
    jobs: tuple[DenoiserJob, ...]
    float16_weights: bool = False
    continue_pairs: PairChoice | None = None
    """The chunks' pair set (``continue``'s pair keys over the recipe's); ``None``: no ``continue`` section."""
    pair_slices: int = 1
    """The chunks' training pairs are cut into this many seeded slices; each chunk builds and trains on the
    next one (:func:`hgd.train.continued.chunk_pairs`); 1: every chunk builds them all."""


def load_recipe(config_path: pathlib.Path) -> Recipe:
    """The training recipe of the defense configuration at ``config_path`` (its ``training`` section)."""
    defense = load_config(config_path)
    raw = json.loads(config_path.read_text()).get("training", {})
    unknown = set(raw) - RECIPE_KEYS
    if unknown:
        raise ValueError(f"{config_path}: unknown 'training' keys {sorted(unknown)}; known: {sorted(RECIPE_KEYS)}")
    options = _relative_to(config_path, {k: v for k, v in raw.items() if k not in RECIPE_ONLY_KEYS})
    members = tuple(m.target.name.value for m in defense.members)
    if defense.shared_denoiser is not None:
        guided = [(defense.shared_denoiser, members)]
    else:
        guided = [(m.denoiser, (m.target.name.value,)) for m in defense.members if m.denoiser is not None]
    if not guided:
        raise ValueError(f"{config_path}: the defense runs no denoiser; there is nothing to train")
    try:
        stages = {key: _stage_options(key, raw.get(key), options) for key in STAGE_KEYS}
        stages = {key: None if stage is None else _relative_to(config_path, stage) for key, stage in stages.items()}
        continued_raw = raw.get(CONTINUE_KEY)
        continued = _stage_options(CONTINUE_KEY, continued_raw, options)
        if continued is not None:  # its pair and chunk keys choose the chunks' pairs; the rest are fit options
            continued = _relative_to(config_path, {k: v for k, v in continued.items()
                                                   if k not in PAIR_KEYS | CHUNK_KEYS})
        jobs = []
        for spec, models in guided:
            config = FitConfig(models=models, width=spec.width, lateral=spec.lateral, **options)
            job = DenoiserJob(spec, config, **{key: None if stage is None else dataclasses.replace(config, **stage)
                                               for key, stage in stages.items()})
            if continued is not None:
                last = job.stages()[-1][1]
                job = dataclasses.replace(job, continued=dataclasses.replace(last, **continued))
            jobs.append(job)
        pairs = PairChoice(attack_models=members).replaced(raw)
        continue_pairs = None if continued_raw is None else pairs.replaced(continued_raw)
        pair_slices = _pair_slices((continued_raw or {}).get("pair_slices", 1))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{config_path}: 'training': {error}") from None
    return Recipe(defense=defense, pairs=pairs, jobs=tuple(jobs), float16_weights=bool(raw.get("float16_weights")),
                  continue_pairs=continue_pairs, pair_slices=pair_slices)


def _pair_slices(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"'pair_slices' is a whole number >= 1, got {value!r}")
    return value


def _relative_to(config_path: pathlib.Path, options: dict) -> dict:
    """Fit options with their file paths (the start, a teacher) read relative to the configuration, like
    its denoisers' weights."""
    return {key: str((config_path.parent / value).resolve()) if key in PATH_KEYS and value is not None else value
            for key, value in options.items()}


def _stage_options(key: str, stage: object, options: dict) -> dict | None:
    """A ``warm_start`` or ``fine_tune`` section, checked: fit options the denoiser entry does not fix,
    and no start of its own (the stage before gives it); the recipe's own ``init_weights`` would be a
    second start for a warm start."""
    if stage is None:
        return None
    if not isinstance(stage, dict):
        raise ValueError(f"'{key}' is a dict of fit options, e.g. {{\"guidance\": \"pgd\", \"max_epochs\": 3}}; "
                         f"got {stage!r}")
    if key == "warm_start" and "init_weights" in options:  # ("continue" starts from the installed weights)
        raise ValueError("'warm_start' and 'init_weights' both give the start; keep one")
    allowed = RECIPE_KEYS - RECIPE_ONLY_KEYS - {"init_weights"} | (PAIR_KEYS | CHUNK_KEYS if key == CONTINUE_KEY
                                                                   else set())
    unknown = set(stage) - allowed
    if unknown:
        raise ValueError(f"unknown '{key}' keys {sorted(unknown)}")
    return stage


def train_defense(config_path: pathlib.Path, source: pathlib.Path, work_dir: pathlib.Path, *,
                  built_only: bool = False, progress: bool = True,
                  placement: Placement = Placement()) -> list[tuple[DenoiserJob, RunState]]:
    """Run ``config_path``'s recipe in ``work_dir`` (pairs, runs) and install the trained denoisers.

    Resumes everything: finished pairs and epochs are kept. A denoiser whose run stopped early (a
    ``max_hours`` limit) is still installed: its best checkpoint is the result so far, and rerunning
    with a raised limit goes on. ``built_only`` trains on the pairs built so far instead of building
    the rest first (:func:`hgd.train.pairs.read_pairs`). ``placement``: a data-parallel run
    (:mod:`hgd.train.distributed`); only process 0 builds pairs and installs weights.
    """
    recipe = load_recipe(config_path)
    spec = recipe.pairs.spec(source)
    pairs_dir = recipe.pairs.folder(work_dir)
    if not built_only and placement.writes:
        build_pairs(source, pairs_dir, spec, progress=progress)
    trained = []
    for job in recipe.jobs:
        run_dir = work_dir / "runs" / job.name
        log.info("training %s (%s guided by %s) in %s", job.spec.weights.name, job.config.guidance.value,
                 "+".join(job.config.models), run_dir)
        start = None
        for name, config in job.stages():
            stage_dir = run_dir.with_name(name)
            if start is not None:
                config = dataclasses.replace(config, init_weights=str(start))
            log.info("stage %s: %s, crop %s, in %s", name, config.guidance.value, config.crop, stage_dir)
            state = fit(pairs_dir, stage_dir, config, verbose="auto" if progress else 2, built_only=built_only,
                        placement=placement)
            start = stage_dir / BEST_WEIGHTS
        if placement.writes:
            install(start, job.spec.weights, float16=recipe.float16_weights)
        trained.append((job, state))
    return trained


def install(trained: pathlib.Path, target: pathlib.Path, *, float16: bool = False) -> None:
    """Copy a best checkpoint to where the defense reads it; ``float16`` halves the file.

    Keras loads float16 values into the float32 DUNET (a cast on assignment), so a defense reads
    either file unchanged; the committed weights share a 40 MB budget, hence the option.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if float16:
        write_atomically(target, "wb", lambda f: _copy_as_float16(trained, f))
    else:
        shutil.copyfile(trained, target)
    log.info("installed %s -> %s%s", trained, target, " (float16)" if float16 else "")


def _copy_as_float16(source: pathlib.Path, out: IO[bytes]) -> None:
    """Write the Keras weights file ``source`` to ``out`` with every float32 array stored as float16."""
    import h5py  # deferred: a Keras dependency, needed only here

    def copy(src: h5py.Group, dst: h5py.Group) -> None:
        dst.attrs.update(src.attrs)
        for name, item in src.items():
            if isinstance(item, h5py.Group):
                copy(item, dst.create_group(name))
            else:
                data = item[()]
                dst.create_dataset(name, data=data.astype(np.float16) if data.dtype == np.float32 else data)
                dst[name].attrs.update(item.attrs)

    with h5py.File(source, "r") as src, h5py.File(out, "w") as dst:
        copy(src, dst)
