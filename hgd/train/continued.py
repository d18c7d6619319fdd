"""Training that accumulates across machines: each chunk goes on from the committed weights.

A CPU session is a few hours and its work folder does not survive it, so the shipped denoiser is
trained in chunks (``python -m hgd.cli.train continue``). A chunk

1. rebuilds the chunks' training pairs (the recipe's, or those its ``continue`` section chooses;
   seeded: the same pairs on every machine; resumes); with ``pair_slices`` > 1 only the chunk's
   slice of them, the pairs the BatchNorm statistics are re-estimated on and the validation pairs
   (:func:`chunk_pairs`), which it then trains on,
2. trains the denoiser from the weights the configuration reads (``defense/weights/...``) with the
   recipe's ``continue`` options, for at most ``max_hours``, checkpointed every epoch (a killed
   chunk resumes from its last epoch when rerun), at the learning rate the last chunk ended with, or
   the recipe's final rate if that is higher (a fresh Adam: its state is not committed),
3. installs the chunk's best checkpoint over those weights if it beats theirs by the recipe's
   ``selection`` (validation loss, or labels: measured by the same chunk on the same validation pairs
   before its first step), stored float32
   when the file is at most :data:`FLOAT32_LIMIT_BYTES`, else float16,
4. appends the chunk's epochs to a history CSV kept beside the results and redraws its plot.

:func:`continue_chunks` runs chunks one after another within a session's hours, so that the time a
chunk leaves when its validation loss plateaus still trains (the next chunk, on the next pair slice).

Committing the weights and the history is then all that carries the training to the next machine.
The shipped checkpoint is chosen on the training pool's validation pairs (their loss or their labels, by
the recipe's ``selection``), never by the test images' scores.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import logging
import pathlib
import time
from collections.abc import Sequence

import numpy as np

from hgd.io.files import write_atomically
from hgd.train.fit import BEST_WEIGHTS, HISTORY_FILE, FitConfig, RunState, fit, split_pairs, statistics_pairs
from hgd.train.distributed import Placement
from hgd.train.pairs import Pair, build_pairs, read_plan
from hgd.train.recipe import DenoiserJob, install, load_recipe

log = logging.getLogger("hgd.train.continued")

FLOAT32_LIMIT_BYTES = 12 * 2**20
"""Installed weights stay float32 (no rounding between chunks) while the file is at most this big."""

MIN_CHUNK_HOURS = 0.25
""":func:`continue_chunks` starts a further chunk only with at least this much wall time left, and only
with as much as the chunk before took to start (pairs, its first validation pass) plus its longest epoch."""

HISTORY_FIELDS = ("chunk", "epoch", "steps", "images", "hours", "cpu_hours", "learning_rate", "loss", "val_loss",
                  "val_accuracy")
"""The committed history: one row per epoch; ``epoch`` 0 is the chunk's starting weights' validation scores;
``steps``, ``images``, ``hours`` and ``cpu_hours`` count from the first chunk; ``val_accuracy`` is empty
for the chunks from before it was scored."""

SCORE_FIELDS = ("chunk", "score")
"""A history's measured harness scores (``NAME_harness.csv`` beside ``NAME.csv``, kept by hand: the harness
runs after some chunks, not every one): the chunk whose installed weights were scored (0: the weights
before the first chunk) and the normalized defense score."""


@dataclasses.dataclass(frozen=True)
class ChunkResult:
    """What one chunk did to one denoiser."""

    job: DenoiserJob
    chunk: int
    state: RunState
    installed: bool


def continue_training(config_path: pathlib.Path, source: pathlib.Path, work_dir: pathlib.Path, *,
                      max_hours: float, history_dir: pathlib.Path | None = None,
                      progress: bool = True, placement: Placement = Placement()) -> list[ChunkResult]:
    """One chunk of ``config_path``'s ``continue`` training for every denoiser it runs (see the module doc).

    ``history_dir`` holds ``NAME.csv`` and ``NAME.png`` per denoiser (e.g. ``docs/results/training``);
    without it, chunks are numbered from 1 and nothing is appended. ``placement``: a data-parallel run
    (:mod:`hgd.train.distributed`); only process 0 builds pairs, installs weights and appends history.
    """
    recipe = load_recipe(config_path)
    missing = [job.name for job in recipe.jobs if job.continued is None]
    if missing:
        raise ValueError(f"{config_path}: no 'continue' section in 'training' (denoisers {missing})")
    recipe.defense.require_weights()  # nothing to continue from: train the recipe first (hgd.train defense)
    pairs_dir = recipe.continue_pairs.folder(work_dir)
    sliced = recipe.pair_slices > 1
    results = []
    for job in recipe.jobs:
        history = None if history_dir is None else history_dir / f"{job.name}.csv"
        chunk = _next_chunk(history)
        run_dir = work_dir / "runs" / f"{job.name}_continue{chunk}"
        config = dataclasses.replace(job.continued, init_weights=str(job.spec.weights.resolve()), max_hours=max_hours,
                                     learning_rate=_starting_rate(history, job.continued))
        select = functools.partial(chunk_pairs, config=config, slices=recipe.pair_slices, chunk=chunk)
        if placement.writes:
            build_pairs(source, pairs_dir, recipe.continue_pairs.spec(source), progress=progress,
                        select=select if sliced else None)
        only = select(read_plan(pairs_dir)[1]) if sliced else None
        log.info("%s: chunk %d from %s in %s (%.2f h at most)%s", job.name, chunk, job.spec.weights, run_dir, max_hours,
                 f", on training-pair slice {(chunk - 1) % recipe.pair_slices + 1} of {recipe.pair_slices}"
                 if sliced else "")
        state = fit(pairs_dir, run_dir, config, verbose="auto" if progress else 2, only=only, placement=placement)
        installed = placement.writes and _install_if_better(run_dir, state, job.spec.weights, config.selection)
        if history is not None and placement.writes:
            _append_chunk(history, chunk, run_dir, state, config.batch_size, config.steps_per_epoch)
            plot_history(history, history.with_suffix(".png"))
        results.append(ChunkResult(job, chunk, state, installed))
    return results


def continue_chunks(config_path: pathlib.Path, source: pathlib.Path, work_dir: pathlib.Path, *,
                    max_hours: float, chunks: int, history_dir: pathlib.Path | None = None,
                    progress: bool = True, placement: Placement = Placement()) -> list[ChunkResult]:
    """Up to ``chunks`` chunks of :func:`continue_training`, each from what the one before installed.

    ``max_hours`` is wall time from the start: each chunk trains at most the hours left when it starts
    (the first chunk's pair building comes on top), so later chunks shrink to fit a session's budget.

    Why: a chunk ends when its validation loss plateaus, often an hour into a session; the next chunk goes
    on, on the next pair slice, instead of leaving the cores idle. A further chunk starts only when what
    is left holds what the chunk before took to start plus its longest epoch (and :data:`MIN_CHUNK_HOURS`),
    and trains for what is left after such a start: an epoch cut short is lost, and the session's
    measurements need the time after. The first always starts. Several chunks need the history (it
    numbers them) and one process (processes' clocks could disagree about starting another).
    """
    if chunks < 1:
        raise ValueError(f"chunks must be at least 1, got {chunks}")
    if chunks > 1 and history_dir is None:
        raise ValueError("several chunks need a history directory: it numbers the chunks")
    if chunks > 1 and placement.num_processes > 1:
        raise ValueError(f"several chunks need one process, not {placement.num_processes}: run one chunk per job")
    deadline = time.monotonic() + max_hours * 3600
    results: list[ChunkResult] = []
    start_up, needed = 0.0, MIN_CHUNK_HOURS
    for _ in range(chunks):
        started = time.monotonic()
        left = (deadline - started) / 3600
        if results and left < needed:
            log.info("%.2f h left, under the %.2f h a further chunk needs: stopping", left, needed)
            break
        chunk = continue_training(config_path, source, work_dir, max_hours=left - start_up if results else max_hours,
                                  history_dir=history_dir, progress=progress, placement=placement)
        results += chunk
        start_up, needed = _chunk_needs(chunk, (time.monotonic() - started) / 3600)
    return results


def _chunk_needs(chunk: Sequence[ChunkResult], wall_hours: float) -> tuple[float, float]:
    """The hours a chunk like ``chunk`` (which took ``wall_hours``) spends before its first epoch, and the
    least a further one needs: that start plus the longest last epoch, at least :data:`MIN_CHUNK_HOURS`."""
    start_up = max(0.0, wall_hours - sum(result.state.hours for result in chunk))
    epoch = max((result.state.last_epoch_hours for result in chunk), default=0.0)
    return start_up, max(MIN_CHUNK_HOURS, start_up + epoch)


def chunk_pairs(plan: Sequence[Pair], *, config: FitConfig, slices: int, chunk: int) -> list[Pair]:
    """The pairs chunk ``chunk`` builds when the training pairs are cut into ``slices``: its slice of a
    seeded shuffle of them, the slices taken in turn, those the BatchNorm statistics are re-estimated on
    (:func:`hgd.train.fit.statistics_pairs`, trained on too) and the run's validation pairs.

    Why: a work folder that does not outlive its machine rebuilds its pairs every session, and building
    all of them cost more time than a chunk could train on them; a slice leaves that time to training,
    the turns still cover the whole pool, and the validation pairs and the statistics' images, the same
    every chunk, keep the chunks' losses comparable.
    """
    train, validation = split_pairs(plan, config)
    if not 1 <= slices <= len(train):
        raise ValueError(f"pair_slices must be in 1..{len(train)} (the training pairs), got {slices}")
    order = np.random.default_rng([config.seed, 2]).permutation(len(train))
    size = -(-len(train) // slices)
    start = (chunk - 1) % slices * size
    mine = {train[i] for i in order[start:start + size]} | set(statistics_pairs(plan, config))
    return [pair for pair in train if pair in mine] + validation


def _next_chunk(history: pathlib.Path | None) -> int:
    if history is None or not history.is_file():
        return 1
    return max((int(row["chunk"]) for row in read_history(history)), default=0) + 1


def _starting_rate(history: pathlib.Path | None, config: FitConfig) -> float:
    """The rate the last chunk's last epoch trained at, never below the recipe's final rate: the schedule
    spans chunks (a chunk that had already lowered the rate to its final value goes on there, rather than
    relearn at the first rate), and a recipe whose final rate was raised goes on at the new one."""
    rates = [] if history is None or not history.is_file() else \
        [float(row["learning_rate"]) for row in read_history(history) if row["learning_rate"]]
    return max(rates[-1], config.final_learning_rate) if rates else config.learning_rate


def _install_if_better(run_dir: pathlib.Path, state: RunState, weights: pathlib.Path, selection: str) -> bool:
    """The chunk's best checkpoint over ``weights`` if it beats them on the validation pairs by ``selection``."""
    best = run_dir / BEST_WEIGHTS
    if not best.is_file() or not state.beats_start(selection):
        log.warning("%s: no epoch beat the starting weights (%s); %s unchanged", run_dir, state.summary(), weights)
        return False
    install(best, weights, float16=best.stat().st_size > FLOAT32_LIMIT_BYTES)
    return True


def read_history(path: pathlib.Path) -> list[dict[str, str]]:
    """The rows of a committed history CSV (checked against :data:`HISTORY_FIELDS`; one written before
    ``val_accuracy`` was a column reads with it empty)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = tuple(reader.fieldnames or ())
        if columns not in (HISTORY_FIELDS, HISTORY_FIELDS[:-1]):
            raise ValueError(f"{path}: columns {reader.fieldnames}, expected {list(HISTORY_FIELDS)}")
        return [{"val_accuracy": "", **row} for row in reader]


def _append_chunk(path: pathlib.Path, chunk: int, run_dir: pathlib.Path, state: RunState, batch_size: int,
                  steps_per_epoch: int | None) -> None:
    """Append the chunk's start and epochs to ``path``, the counters going on from its last row."""
    if steps_per_epoch is None:
        raise ValueError("a continued chunk needs steps_per_epoch (its counters count steps)")
    rows = read_history(path) if path.is_file() else []
    if any(int(row["chunk"]) == chunk for row in rows):
        raise ValueError(f"{path}: chunk {chunk} is there already")
    last = rows[-1] if rows else {"steps": 0, "images": 0, "hours": 0.0, "cpu_hours": 0.0}
    steps, images = int(last["steps"]), int(last["images"])
    hours, cpu_hours = float(last["hours"]), float(last["cpu_hours"])
    new = [[chunk, 0, steps, images, f"{hours:.5f}", f"{cpu_hours:.5f}", "", "", f"{state.initial_val_loss:.5f}",
            "" if state.initial_val_accuracy is None else f"{state.initial_val_accuracy:.5f}"]]
    with open(run_dir / HISTORY_FILE, newline="") as f:
        for epoch in csv.DictReader(f):
            steps += steps_per_epoch
            images += steps_per_epoch * batch_size
            hours += float(epoch["seconds"]) / 3600
            cpu_hours += float(epoch["cpu_seconds"]) / 3600
            new.append([chunk, int(epoch["epoch"]), steps, images, f"{hours:.5f}", f"{cpu_hours:.5f}",
                        epoch["learning_rate"], f"{float(epoch['loss']):.5f}", f"{float(epoch['val_loss']):.5f}",
                        epoch.get("val_accuracy") or ""])

    def write(f) -> None:
        writer = csv.writer(f)
        writer.writerow(HISTORY_FIELDS)
        writer.writerows([[row[key] for key in HISTORY_FIELDS] for row in rows] + new)

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, "w", write)


def scores_path(history: pathlib.Path) -> pathlib.Path:
    """Where a history's measured harness scores live (:data:`SCORE_FIELDS`)."""
    return history.with_name(f"{history.stem}_harness.csv")


def read_scores(path: pathlib.Path, chunks: set[int]) -> list[tuple[int, float]]:
    """The (chunk, score) rows of a harness-score CSV, checked: the columns, a score in [0, 1], a chunk the
    history has (or 0), each chunk once. Why: the file is kept by hand, and a typo would draw a false curve."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != SCORE_FIELDS:
            raise ValueError(f"{path}: columns {reader.fieldnames}, expected {list(SCORE_FIELDS)}")
        rows = [(line, row) for line, row in enumerate(reader, start=2)]
    scores: dict[int, float] = {}
    for line, row in rows:
        try:
            chunk, score = int(row["chunk"]), float(row["score"])
        except (TypeError, ValueError):
            raise ValueError(f"{path}, line {line}: chunk {row['chunk']!r} and score {row['score']!r} must be "
                             "a whole number and a number") from None
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"{path}, line {line}: score {score} is not a normalized score in [0, 1]")
        if chunk != 0 and chunk not in chunks:
            raise ValueError(f"{path}, line {line}: chunk {chunk} is not in the history (chunks {min(chunks)}-"
                             f"{max(chunks)}, or 0 before the first)")
        if chunk in scores:
            raise ValueError(f"{path}, line {line}: chunk {chunk} is scored twice")
        scores[chunk] = score
    return sorted(scores.items())


def plot_history(path: pathlib.Path, out: pathlib.Path) -> None:
    """Validation loss against CPU-hours of training, one colour per chunk (its start marked), below it
    the validation accuracy of the chunks that scored it and, where :func:`scores_path` exists, the
    harness score of the chunks it measured, at the CPU-hours each chunk ended (chunk 0 at 0); the legend
    beside the axes, so that it hides no chunk however many there are. Why the last panel: the training
    ends by the harness score's plateau, which the validation curves only suggest."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = read_history(path)
    chunks = sorted({int(row["chunk"]) for row in rows})
    scores = read_scores(scores_path(path), set(chunks)) if scores_path(path).is_file() else []
    panels = ["loss"] + (["accuracy"] if any(row["val_accuracy"] for row in rows) else []) + \
        (["harness"] if scores else [])
    figure, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False, layout="constrained",
                                figsize=(8.0, 1.0 + 3.0 * len(panels)))
    axis = {panel: axes[i, 0] for i, panel in enumerate(panels)}
    colours = plt.get_cmap("tab20")
    ended: dict[int, float] = {0: 0.0}  # the CPU-hours at which each chunk ended; chunk 0 before any
    for i, chunk in enumerate(chunks):
        mine = [row for row in rows if int(row["chunk"]) == chunk]
        ended[chunk] = max(float(r["cpu_hours"]) for r in mine)
        line, = axis["loss"].plot([float(r["cpu_hours"]) for r in mine], [float(r["val_loss"]) for r in mine],
                                  marker="o", markevery=[0], label=f"chunk {chunk}", color=colours(i % colours.N))
        if "accuracy" in axis and all(r["val_accuracy"] for r in mine):
            axis["accuracy"].plot([float(r["cpu_hours"]) for r in mine], [float(r["val_accuracy"]) for r in mine],
                                  marker="o", markevery=[0], color=line.get_color())
    if scores:
        hours = [ended[chunk] for chunk, _ in scores]
        axis["harness"].plot(hours, [score for _, score in scores], color="black", marker="o")
        for x, (chunk, score) in zip(hours, scores):
            axis["harness"].annotate(str(chunk), (x, score), textcoords="offset points", xytext=(0, 5),
                                     ha="center", fontsize=7)
        axis["harness"].set_ylabel("harness score (chunk)")
    axes[-1, 0].set_xlabel("CPU-hours of training (all chunks)")
    axis["loss"].set_ylabel("validation loss (FGD)")
    if "accuracy" in axis:
        axis["accuracy"].set_ylabel("validation accuracy (ensemble)")
    axis["loss"].set_title(f"{path.stem}: each chunk starts (marked) from the weights the one before installed",
                           fontsize=9)
    figure.legend(loc="outside right upper", fontsize=8, ncol=1 if len(axis["loss"].lines) <= 24 else 2)
    figure.savefig(out, dpi=120)
    plt.close(figure)
