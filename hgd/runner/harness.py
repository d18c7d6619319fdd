"""Runs the work pieces: every attack on every batch, then every defense on every adversarial batch.

One attack piece (EVAL's worker, ``run_attack_work``):

1. a fresh input folder with the batch's images under anonymized names
   (``IMG000123.png``) and, for a targeted attack, ``target_class.csv``
   (``IMG000123.png,<target>`` lines, no header); read-only where permissions apply;
2. the attack runs with the batch's epsilon under the time limit;
3. the harness enforces the rules on each expected output: a missing, corrupt or
   non-regular file counts as missing (the attack earns nothing for it), a
   wrong size is bicubic-resized to 299x299 (by :func:`hgd.io.images.load_image`),
   alpha is dropped, files with other names are ignored, and every pixel is
   projected into the box ``clip(adv, clip(x - eps, 0, 255), clip(x + eps, 0, 255))``
   around the clean uint8 image ``x``; the result is saved as
   ``OUTPUT/adv/<attack>/<ImageId>.png``. Each deviation is logged in the piece's problems.

One defense piece (``run_defense_work``): a fresh input folder with the adversarial
images of one attack's one batch, named ``ADVBATCH012_IMG000123.png``; the defense
writes ``result.csv``; it is parsed with :func:`hgd.io.competition_csv.read_predictions_csv`
(rows without an integer label are skipped; names that were not given are
ignored) and mapped back to ImageIds. A batch without a readable ``result.csv``
is *errored*; a defense that crashed or hit the time limit after writing one
keeps its predictions. An adversarial batch with no image is not given to the
defenses (there is nothing to classify).

Every finished piece is stored as it finishes (:class:`~hgd.runner.pieces.PieceStore`). Where a piece
runs is the dispatch's business (:mod:`hgd.runner.dispatch`): here, one after another, or on a Ray
cluster; its inputs are prepared and its outputs checked here either way, so the rules above hold
unchanged wherever it ran.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import pathlib
import sys
import time
import uuid
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from hgd.attacks.base import Box
from hgd.io.competition_csv import read_predictions_csv
from hgd.io.images import ImageError, load_image, save_png
from hgd.io.labels import NUM_LABELS
from hgd.io.datasets import Dataset
from hgd.io.files import write_text_atomic
from hgd.runner.dispatch import THIS_MACHINE, Dispatch, PieceJob, PieceRun, SequentialDispatch, last_line
from hgd.runner.executors import Executor, RunResult
from hgd.runner.workdirs import force_rmtree
from hgd.runner.pieces import (AttackRecord, DefenseRecord, ImageBatch, PieceStore, adv_batch_id,
                               make_batches)
from hgd.runner.submissions import DEFENSE_OUTPUT_FILE, AttackSubmission, DefenseSubmission

log = logging.getLogger(__name__)

MAX_RESULT_BYTES = 10 * 1024 * 1024
"""A defense's ``result.csv`` above this size is not read (the batch is errored)."""

LISTED = 5
"""How many file names a problem line lists before it says "and N more"."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the run is cut and limited.

    Attributes:
        batch_size: images per batch (EVAL: 100).
        epsilon: one MAX_EPSILON for every batch (DEV) or ``"cycle"`` (EVAL: 4, 8, 12, 16 by batch).
        time_limit: seconds per run of a submission on one batch (EVAL: 500).
        gpu: ask the executor for GPUs (and use ``container_gpu``).
        progress: show tqdm progress bars on stderr.
        keep_attacks: reuse a stored attack piece even where its attack's folder changed since (another
            fingerprint), so that new defenses are scored on the very adversarial images the earlier
            defenses saw, as EVAL ran each attack once; the count is reported.
    """

    batch_size: int = 100
    epsilon: int | str = 16
    time_limit: float = 500.0
    gpu: bool = False
    progress: bool = True
    keep_attacks: bool = False


@dataclasses.dataclass
class Outcome:
    """Everything a run produced, for scoring and reporting.

    Attributes:
        attack_records: (attack, batch index) -> record.
        defense_records: (defense, attack, batch index) -> record.
        pieces_run / pieces_reused: pieces run now / taken from an earlier run of the same output folder.
        attacks_kept: the reused attack pieces whose attack folder has changed since (``keep_attacks``).
        wall_seconds: the harness's own wall time (both phases).
        submission_seconds: the summed run time of the submissions run now (as their executor measured).
        nodes: where the pieces run now ran (``local`` without a cluster) -> what each node did.
    """

    dataset: Dataset
    batches: list[ImageBatch]
    attacks: list[AttackSubmission]
    defenses: list[DefenseSubmission]
    attack_records: dict[tuple[str, int], AttackRecord]
    defense_records: dict[tuple[str, str, int], DefenseRecord]
    pieces_run: int = 0
    pieces_reused: int = 0
    attacks_kept: int = 0
    wall_seconds: float = 0.0
    submission_seconds: float = 0.0
    nodes: dict[str, NodeWork] = dataclasses.field(default_factory=dict)

    def note_run(self, seconds: float, run: PieceRun) -> None:
        """Counts one piece run now, and where it ran."""
        self.pieces_run += 1
        self.submission_seconds += seconds
        work = self.nodes.setdefault(run.node, NodeWork())
        work.pieces += 1
        work.busy_seconds += seconds
        work.retried += run.attempts > 1

    @property
    def on_cluster(self) -> bool:
        """Whether the pieces run now ran on cluster nodes rather than on this machine."""
        return any(node != THIS_MACHINE for node in self.nodes)

    @property
    def pieces_retried(self) -> int:
        """Pieces started more than once because a node died under them."""
        return sum(work.retried for work in self.nodes.values())


@dataclasses.dataclass
class NodeWork:
    """What one node did in a run: pieces finished there, their summed run time, and how many of them
    had been started before on a node that died."""

    pieces: int = 0
    busy_seconds: float = 0.0
    retried: int = 0


class Harness:
    """Runs attacks against defenses on a dataset, writing into ``output_dir``.

    Args:
        dataset: the images and labels.
        attacks: non-targeted and targeted attacks (their order numbers the ADVBATCH ids).
        defenses: the defenses.
        executor: how each submission runs (on this machine, when no ``dispatch`` is given).
        output_dir: results, adversarial images, stored pieces and logs.
        settings: batch size, epsilon, time limit, GPU, progress bars.
        dispatch: where the pieces run (default: here, one after another, with ``executor``;
            :class:`hgd.runner.ray_dispatch.RayDispatch` for a cluster). Either way the harness prepares
            every piece's inputs and checks its outputs on this machine.
    """

    def __init__(self, *, dataset: Dataset, attacks: Sequence[AttackSubmission], defenses: Sequence[DefenseSubmission],
                 executor: Executor | None = None, output_dir: pathlib.Path, settings: Settings = Settings(),
                 dispatch: Dispatch | None = None) -> None:
        if dispatch is None:
            if executor is None:
                raise ValueError("give an executor or a dispatch")
            dispatch = SequentialDispatch(executor)
        self.dataset = dataset
        self.attacks = list(attacks)
        self.defenses = list(defenses)
        self.dispatch = dispatch
        self.output_dir = output_dir.resolve()  # submissions run elsewhere: every path they get is absolute
        self.settings = settings
        self.store = PieceStore(self.output_dir)
        self.batches = make_batches(dataset.image_ids, settings.batch_size, settings.epsilon)

    def adv_dir(self, attack: str) -> pathlib.Path:
        return self.output_dir / "adv" / attack

    def run(self) -> Outcome:
        """Runs (or reuses) every piece; returns the records. Ctrl-C keeps every finished piece."""
        outcome = Outcome(dataset=self.dataset, batches=self.batches, attacks=self.attacks,
                          defenses=self.defenses, attack_records={}, defense_records={})
        start = time.monotonic()
        work = self.output_dir / "work"
        work.mkdir(parents=True, exist_ok=True)
        fingerprints = {s.name: s.fingerprint() for s in [*self.attacks, *self.defenses]}
        try:
            self._attack_phase(outcome, fingerprints, work)
            self._defense_phase(outcome, fingerprints, work)
        finally:
            force_rmtree(work)
            outcome.wall_seconds = time.monotonic() - start
        return outcome

    # ------------------------------------------------------------------ attacks

    def _attack_phase(self, outcome: Outcome, fingerprints: dict[str, str], work: pathlib.Path) -> None:
        planned: dict[str, tuple[AttackSubmission, ImageBatch]] = {}
        with self._bar(len(self.attacks) * len(self.batches), "attack pieces") as bar:
            for attack in self.attacks:
                for batch in self.batches:
                    record = self.store.load_attack(attack.name, batch.index)
                    if self._attack_reusable(record, attack, batch, fingerprints[attack.name]):
                        outcome.pieces_reused += 1
                        outcome.attacks_kept += record.fingerprint != fingerprints[attack.name]
                        outcome.attack_records[attack.name, batch.index] = record
                        bar.update()
                    else:
                        planned[attack_key(attack.name, batch.index)] = attack, batch
            jobs = (self.attack_job(attack, batch, work) for attack, batch in planned.values())
            for job, run in self.dispatch.run(jobs, work):
                attack, batch = planned[job.key]
                record = self.attack_record(attack, batch, fingerprints[attack.name], run)
                self.store.save_attack(record)
                outcome.note_run(record.seconds, run)
                outcome.attack_records[attack.name, batch.index] = record
                bar.set_postfix_str(f"{attack.name} {batch.label}", refresh=False)
                bar.update()

    def _attack_reusable(self, record: AttackRecord | None, attack: AttackSubmission, batch: ImageBatch,
                         fingerprint: str) -> bool:
        return (record is not None and record.infra_error is None and record.epsilon == batch.epsilon
                and record.image_ids == list(batch.image_ids) and record.targeted == attack.targeted
                and (record.fingerprint == fingerprint or self.settings.keep_attacks)
                and record.names == batch.attack_names()
                and all((self.adv_dir(attack.name) / f"{i}.png").is_file() for i in record.produced))

    def attack_job(self, attack: AttackSubmission, batch: ImageBatch, work: pathlib.Path) -> PieceJob:
        """The run of one attack on one batch: the batch's clean images under anonymized names (and, for a
        targeted attack, ``target_class.csv``: ``IMG000123.png,<target>`` lines, no header)."""
        names = batch.attack_names()
        inputs = {anonymized: self.dataset.image_path(image_id) for anonymized, image_id in names.items()}
        if attack.targeted:
            targets = work / "targets" / f"{batch.label}.csv"
            if not targets.exists():
                lines = "".join(f"{a},{self.dataset.target_class(i)}\n" for a, i in names.items())
                write_text_atomic(targets, lines)
            inputs["target_class.csv"] = targets
        request = attack.request(work, work, batch.epsilon, time_limit=self.settings.time_limit,
                                 gpu=self.settings.gpu)
        return PieceJob(key=attack_key(attack.name, batch.index), submission=attack, request=request,
                        inputs=inputs, inputs_key=f"clean/{batch.label}/{'targeted' if attack.targeted else 'plain'}",
                        needs_gpu=self._needs_gpu(attack))

    def attack_record(self, attack: AttackSubmission, batch: ImageBatch, fingerprint: str,
                      run: PieceRun) -> AttackRecord:
        """Enforces the rules on what one attack piece wrote; the piece's record."""
        names = batch.attack_names()
        problems = run_problems(run.result, self.settings.time_limit, run.infra_error)
        produced, output_problems = enforce_epsilon(run.output_dir, names, self.dataset, batch.epsilon,
                                                    self.adv_dir(attack.name))
        write_text_atomic(self.store.attack_log(attack.name, batch.index), run.result.log)
        return AttackRecord(attack=attack.name, targeted=attack.targeted, batch=batch.index,
                            epsilon=batch.epsilon, image_ids=list(batch.image_ids), names=names,
                            produced=produced, exit_code=run.result.exit_code, timed_out=run.result.timed_out,
                            seconds=round(run.result.seconds, 3), problems=problems + output_problems,
                            fingerprint=fingerprint, token=uuid.uuid4().hex, infra_error=run.infra_error)

    # ----------------------------------------------------------------- defenses

    def _defense_phase(self, outcome: Outcome, fingerprints: dict[str, str], work: pathlib.Path) -> None:
        """Every defense on every adversarial batch, planned batch by batch so that a remote dispatch
        sends each adversarial batch once for all the defenses."""
        planned: dict[str, tuple[DefenseSubmission, AttackRecord, str]] = {}
        total = len(self.defenses) * len(self.attacks) * len(self.batches)
        with self._bar(total, "defense pieces") as bar:
            for attack_index, attack in enumerate(self.attacks):
                for batch in self.batches:
                    attack_record = outcome.attack_records[attack.name, batch.index]
                    adv_id = adv_batch_id(attack_index, batch, len(self.batches))
                    for defense in self.defenses:
                        record = self.store.load_defense(defense.name, attack.name, batch.index)
                        if (record is not None and record.infra_error is None
                                and record.attack_token == attack_record.token
                                and record.fingerprint == fingerprints[defense.name]):
                            outcome.pieces_reused += 1
                        elif not attack_record.produced:  # nothing to classify
                            record = self.empty_defense_record(defense, attack_record, adv_id,
                                                               fingerprints[defense.name])
                            self.store.save_defense(record)
                            outcome.pieces_run += 1
                        else:
                            planned[defense_key(defense.name, attack.name, batch.index)] = (
                                defense, attack_record, adv_id)
                            continue
                        outcome.defense_records[defense.name, attack.name, batch.index] = record
                        bar.update()
            jobs = (self.defense_job(defense, attack_record, adv_id, work)
                    for defense, attack_record, adv_id in planned.values())
            for job, run in self.dispatch.run(jobs, work):
                defense, attack_record, adv_id = planned[job.key]
                record = self.defense_record(defense, attack_record, adv_id, fingerprints[defense.name], run)
                self.store.save_defense(record)
                outcome.note_run(record.seconds, run)
                outcome.defense_records[defense.name, attack_record.attack, attack_record.batch] = record
                bar.set_postfix_str(f"{defense.name} on {attack_record.attack} batch{attack_record.batch:04d}",
                                    refresh=False)
                bar.update()

    @staticmethod
    def defense_names(attack_record: AttackRecord, adv_id: str) -> dict[str, str]:
        """The names a defense sees for one adversarial batch (``ADVBATCH012_IMG000123.png``) -> ImageId."""
        produced = set(attack_record.produced)
        return {f"{adv_id}_{anonymized}": image_id for anonymized, image_id in attack_record.names.items()
                if image_id in produced}

    def empty_defense_record(self, defense: DefenseSubmission, attack_record: AttackRecord, adv_id: str,
                             fingerprint: str) -> DefenseRecord:
        """The record of a defense piece with nothing to classify (or before its run is read)."""
        names = self.defense_names(attack_record, adv_id)
        return DefenseRecord(defense=defense.name, attack=attack_record.attack, batch=attack_record.batch,
                             adv_batch=adv_id, given=list(names.values()), names=names, predictions={},
                             ran=False, exit_code=None, timed_out=False, seconds=0.0, error=None,
                             problems=[], fingerprint=fingerprint, attack_token=attack_record.token)

    def defense_job(self, defense: DefenseSubmission, attack_record: AttackRecord, adv_id: str,
                    work: pathlib.Path) -> PieceJob:
        """The run of one defense on one attack's adversarial batch."""
        adv_dir = self.adv_dir(attack_record.attack)
        inputs = {name: adv_dir / f"{image_id}.png"
                  for name, image_id in self.defense_names(attack_record, adv_id).items()}
        request = defense.request(work, work, time_limit=self.settings.time_limit, gpu=self.settings.gpu)
        return PieceJob(key=defense_key(defense.name, attack_record.attack, attack_record.batch),
                        submission=defense, request=request, inputs=inputs,
                        inputs_key=f"adv/{attack_record.attack}/{attack_record.token}",
                        needs_gpu=self._needs_gpu(defense))

    def defense_record(self, defense: DefenseSubmission, attack_record: AttackRecord, adv_id: str, fingerprint: str,
                       run: PieceRun) -> DefenseRecord:
        """Reads one defense piece's predictions; the piece's record."""
        record = self.empty_defense_record(defense, attack_record, adv_id, fingerprint)
        problems = run_problems(run.result, self.settings.time_limit, run.infra_error)
        predictions, error, parse_problems = read_defense_output(run.output_dir / DEFENSE_OUTPUT_FILE, record.names)
        write_text_atomic(self.store.defense_log(defense.name, attack_record.attack, attack_record.batch),
                          run.result.log)
        if run.infra_error:
            error = f"executor error: {run.infra_error}"
        elif error and problems:
            error = f"{error} ({problems[0]})"
        return dataclasses.replace(record, predictions=predictions, ran=True, exit_code=run.result.exit_code,
                                   timed_out=run.result.timed_out, seconds=round(run.result.seconds, 3), error=error,
                                   problems=problems + parse_problems, infra_error=run.infra_error)

    # ------------------------------------------------------------------ helpers

    def _needs_gpu(self, submission: AttackSubmission | DefenseSubmission) -> bool:
        return self.settings.gpu and submission.container_gpu is not None

    def _bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit="piece", file=sys.stderr, disable=not self.settings.progress,
                    dynamic_ncols=True)


def attack_key(attack: str, batch: int) -> str:
    """The piece key of one attack's one batch."""
    return f"attack/{attack}/batch{batch:04d}"


def defense_key(defense: str, attack: str, batch: int) -> str:
    """The piece key of one defense on one attack's one batch."""
    return f"defense/{defense}/{attack}/batch{batch:04d}"


def run_problems(result: RunResult, time_limit: float, infra_error: str | None) -> list[str]:
    """One line per way a run did not end cleanly (exit status, time limit, executor failure)."""
    if infra_error:
        return [f"executor error: {infra_error}"]
    problems = []
    if result.timed_out:
        problems.append(f"stopped at the time limit ({time_limit:g} s); what it wrote counts")
    elif result.exit_code != 0:
        last = last_line(result.log)
        status = "no exit status" if result.exit_code is None else f"exit code {result.exit_code}"
        problems.append(f"{status}" + (f": {last}" if last else ""))
    return problems


def listed(names: Sequence[str]) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 7 more``."""
    shown = ", ".join(names[:LISTED])
    return shown if len(names) <= LISTED else f"{shown} and {len(names) - LISTED} more"


def project(adv: np.ndarray, clean: np.ndarray, epsilon: int) -> np.ndarray:
    """The competition's eps box: ``clip(adv, clip(x - eps, 0, 255), clip(x + eps, 0, 255))``, uint8."""
    box = Box.around(clean, epsilon)
    return np.clip(adv, box.lo, box.hi)


def save_adversarial_png(path: pathlib.Path, image: np.ndarray) -> None:
    """Writes a projected uint8 RGB image as PNG, atomically, with fast (lossless) compression.

    zlib level 1 instead of Pillow's default 6: the pixels are the same, files are ~10% larger and
    encoding is several times faster, which is most of the harness's own time per attack piece.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(path, image, compress_level=1)


def enforce_epsilon(output_dir: pathlib.Path, names: dict[str, str], dataset: Dataset, epsilon: int,
                    adv_dir: pathlib.Path) -> tuple[list[str], list[str]]:
    """Checks, projects and stores an attack's outputs.

    Args:
        output_dir: what the attack wrote.
        names: anonymized input name -> ImageId.
        dataset: for the clean images.
        epsilon: the batch's MAX_EPSILON.
        adv_dir: where ``<ImageId>.png`` goes; this batch's earlier images there are removed first.

    Returns:
        The ImageIds that got an adversarial image (dataset order), and the problems, one line each.
    """
    adv_dir.mkdir(parents=True, exist_ok=True)
    for image_id in names.values():
        (adv_dir / f"{image_id}.png").unlink(missing_ok=True)
    try:
        with os.scandir(output_dir) as scan:
            entries = {entry.name: entry for entry in scan}
    except OSError:
        entries = {}
    problems: list[str] = []
    foreign = sorted(name for name in entries if name not in names)
    if foreign:
        problems.append(f"ignored {len(foreign)} output file(s) not named like an input: {listed(foreign)}")
    produced, missing, clipped = [], [], []
    for anonymized, image_id in names.items():
        entry = entries.get(anonymized)
        if entry is None:
            missing.append(anonymized)
            continue
        if not entry.is_file(follow_symlinks=False):
            problems.append(f"{anonymized}: not a regular file; counted as missing")
            continue
        try:
            adv, notes = load_image(entry.path)
        except ImageError as error:
            problems.append(f"{anonymized}: unreadable ({error.reason}); counted as missing")
            continue
        problems.extend(notes)
        try:
            clean, _ = load_image(dataset.image_path(image_id))
        except ImageError as error:
            problems.append(f"{anonymized}: the clean image {image_id}.png is unreadable ({error.reason}); "
                            "counted as missing")
            continue
        projected = project(adv, clean, epsilon)
        if not np.array_equal(projected, adv):
            clipped.append(anonymized)
        save_adversarial_png(adv_dir / f"{image_id}.png", projected)
        produced.append(image_id)
    if missing:
        problems.append(f"{len(missing)} of {len(names)} images missing: {listed(missing)}")
    if clipped:
        problems.append(f"{len(clipped)} image(s) had pixels outside the eps={epsilon} box (clipped): "
                        f"{listed(clipped)}")
    return produced, problems


def read_defense_output(path: pathlib.Path, names: dict[str, str]) -> tuple[dict[str, int], str | None, list[str]]:
    """Reads a defense's ``result.csv`` for the images it was given.

    Returns:
        ImageId -> label for the given images it labelled, the batch's error (no readable file) or
        ``None``, and the problems (skipped rows, unknown names, missing predictions, labels out of range).
    """
    if not os.path.lexists(path):
        return {}, f"no {path.name} written", []
    if not path.is_file() or path.is_symlink():
        return {}, f"{path.name} is not a regular file", []
    if path.stat().st_size > MAX_RESULT_BYTES:
        return {}, f"{path.name} is larger than {MAX_RESULT_BYTES} bytes; not read", []
    try:
        raw = read_predictions_csv(path)
        rows = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        return {}, f"{path.name} unreadable: {error}", []
    problems = []
    skipped = len([row for row in rows if row.strip()]) - _parsable_rows(rows)
    if skipped:
        problems.append(f"{path.name}: skipped {skipped} row(s) without an integer label")
    by_stem = {name[: -len(".png")]: image_id for name, image_id in names.items()}
    predictions = {by_stem[stem]: label for stem, label in raw.items() if stem in by_stem}
    unknown = sorted(stem for stem in raw if stem not in by_stem)
    if unknown:
        problems.append(f"{path.name}: ignored predictions for {len(unknown)} name(s) that were not given: "
                        f"{listed(unknown)}")
    unlabelled = [name for name, image_id in names.items() if image_id not in predictions]
    if unlabelled:
        problems.append(f"{path.name}: no prediction for {len(unlabelled)} of {len(names)} images: "
                        f"{listed(unlabelled)}")
    out_of_range = sorted({label for label in predictions.values() if not 1 <= label <= NUM_LABELS})
    if out_of_range:
        problems.append(f"{path.name}: label(s) outside 1..{NUM_LABELS} (never correct): "
                        f"{listed([str(v) for v in out_of_range])}")
    ordered = {image_id: predictions[image_id] for image_id in names.values() if image_id in predictions}
    return ordered, None, problems


def _parsable_rows(lines: list[str]) -> int:
    """How many CSV rows :func:`read_predictions_csv` would accept (a name and an integer label)."""
    count = 0
    for row in csv.reader(lines):
        if len(row) >= 2:
            try:
                int(row[1])
            except ValueError:
                continue
            count += 1
    return count
