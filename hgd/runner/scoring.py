"""Scores, eligibility and timing: pure functions over classification records.

The input is one :class:`Classification` per (attack, defense, adversarial image
the attack produced) -- exactly the rows of ``all_classification.csv`` -- plus
how many images each attack produced. ``predicted`` is ``None`` when the defense
gave no usable prediction for the image (no row, an unparsable row, or the batch
was *errored*: no readable ``result.csv``). Images an attack did not produce
have no row: they were never given to a defense.

EVAL (official; the report's eqs. 6-10 and ``master.py``), N = dataset images:

* ``produced(a)``: adversarial images attack ``a`` produced (after the eps box;
  corrupt files count as missing).
* ``processed(d)``: images defense ``d`` labelled, over all attacks, in
  non-errored batches (errored batches are ignored: they add nothing).
* Eligible attacks **A**: ``produced(a) == N`` (targeted attacks included).
  Only they score defenses.
* Eligible defenses **D**: ``processed(d) == sum_a produced(a)`` over *all*
  attacks (eligible or not): the defense labelled every adversarial image
  produced, i.e. every image it was given. Only they score attacks.
* Defense ``d``: ``1/(|A| N) sum_{a in A} correct(d, a)``.
* Non-targeted attack ``a``: ``1/(|D| N) sum_{d in D} wrong(d, a)``, where
  ``wrong`` counts labelled images whose label is not the true one (a missing
  adversarial image earns the attack nothing).
* Targeted attack ``t``: ``1/(|D| N) sum_{d in D} hit(d, t)`` (label == TargetClass).
* Worst case (reported, not ranked): defense ``min_{a in A} correct / N``,
  attack ``min_{d in D} wrong / N``, targeted ``min_{d in D} hit / N``.
* A score with no eligible opponent is ``None`` (written as an empty cell).
* Defense-aware attacks (``"defense_aware": true`` in their metadata; never in the competition):
  **A** above is the eligible *oblivious* attacks only, so the defense score stays the competition's;
  beside it, each defense's worst case over the eligible defense-aware attacks
  ``min_{a in A_aware} correct / N``, its accuracy against an attacker who knows it.

DEV (``dev_toolkit/run_attacks_and_defenses.py``), no eligibility, no normalization:
attack ``N * |defenses| - sum_d correct(d, a)`` (missing images and predictions
count for the attacker), targeted attack ``sum_d hit(d, t)``, defense
``sum_a correct(d, a)`` over all oblivious attacks including targeted ones.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Collection, Iterable, Mapping, Sequence

from hgd.io.datasets import Dataset
from hgd.runner.pieces import AttackRecord, DefenseRecord


@dataclasses.dataclass(frozen=True)
class Classification:
    """One row of ``all_classification.csv``: a defense's label for one attack's adversarial image."""

    attack: str
    targeted: bool
    defense: str
    image_id: str
    predicted: int | None
    true_label: int
    target_class: int
    epsilon: int  # the max-norm bound the attack's batch was given


def classifications(dataset: Dataset, attack_records: Iterable[AttackRecord],
                    defense_records: Mapping[tuple[str, str, int], DefenseRecord],
                    defenses: Sequence[str]) -> list[Classification]:
    """The classification records of a run: for each defense, attack record and produced image."""
    rows = []
    attack_records = list(attack_records)
    for defense in defenses:
        for record in attack_records:
            piece = defense_records.get((defense, record.attack, record.batch))
            for image_id in record.produced:
                predicted = None
                if piece is not None and piece.error is None:
                    predicted = piece.predictions.get(image_id)
                true_label, target_class = dataset.true_label(image_id), dataset.target_class(image_id)
                rows.append(Classification(record.attack, record.targeted, defense, image_id, predicted,
                                           true_label, target_class, record.epsilon))
    return rows


Matrix = dict[tuple[str, str], int]
"""Counts keyed by (defense, attack)."""


@dataclasses.dataclass(frozen=True)
class Counts:
    """Per (defense, attack) counts of EVAL's matrices, and images labelled per defense."""

    correct: Matrix
    wrong: Matrix
    hit: Matrix
    processed: dict[str, int]


def count(rows: Iterable[Classification], defenses: Sequence[str], attacks: Sequence[str]) -> Counts:
    """EVAL's accuracy, error and hit-target-class matrices (every cell present, 0 if empty)."""
    correct = {(d, a): 0 for d in defenses for a in attacks}
    wrong, hit = dict(correct), dict(correct)
    processed = {d: 0 for d in defenses}
    for row in rows:
        key = (row.defense, row.attack)
        if row.predicted is None:
            continue
        processed[row.defense] = processed.get(row.defense, 0) + 1
        if row.predicted == row.true_label:
            correct[key] = correct.get(key, 0) + 1
        else:
            wrong[key] = wrong.get(key, 0) + 1
        if row.predicted == row.target_class:
            hit[key] = hit.get(key, 0) + 1
    return Counts(correct, wrong, hit, processed)


@dataclasses.dataclass(frozen=True)
class EpsilonCounts:
    """One (defense, attack, epsilon) cell: the adversarial images made at that epsilon, and the defense's
    correct labels and target-class labels among them (a missing label is neither)."""

    images: int = 0
    correct: int = 0
    hit: int = 0


def count_by_epsilon(rows: Iterable[Classification]) -> dict[tuple[str, str, int], EpsilonCounts]:
    """The accuracy matrix split by epsilon, keyed (defense, attack, epsilon), only the cells with images.

    Why: with ``--eps cycle`` each batch has its own bound, and one count per attack hides how a defense
    fails as the bound grows."""
    cells: dict[tuple[str, str, int], EpsilonCounts] = {}
    for row in rows:
        key = (row.defense, row.attack, row.epsilon)
        cell = cells.get(key, EpsilonCounts())
        labelled = row.predicted is not None
        cells[key] = EpsilonCounts(cell.images + 1, cell.correct + (labelled and row.predicted == row.true_label),
                                   cell.hit + (labelled and row.predicted == row.target_class))
    return cells


def epsilons(cells: Mapping[tuple[str, str, int], EpsilonCounts]) -> list[int]:
    """The epsilons a run's cells hold, smallest first."""
    return sorted({eps for _, _, eps in cells})


@dataclasses.dataclass(frozen=True)
class WorstCase:
    """A worst-case score and the opponent it came from."""

    score: float | None
    opponent: str | None


@dataclasses.dataclass(frozen=True)
class EvalScores:
    """EVAL's normalized scores and what went into them (see the module docstring)."""

    num_images: int
    counts: Counts
    produced: dict[str, int]
    eligible_attacks: list[str]
    eligible_defenses: list[str]
    defense: dict[str, float | None]
    attack: dict[str, float | None]
    targeted_attack: dict[str, float | None]
    worst_defense: dict[str, WorstCase]
    worst_attack: dict[str, WorstCase]
    worst_targeted_attack: dict[str, WorstCase]
    defense_aware: list[str] = dataclasses.field(default_factory=list)
    worst_defense_aware: dict[str, WorstCase] = dataclasses.field(default_factory=dict)


def eval_scores(rows: Sequence[Classification], *, num_images: int, attacks: Mapping[str, bool],
                defenses: Sequence[str], produced: Mapping[str, int],
                defense_aware: Collection[str] = ()) -> EvalScores:
    """EVAL's normalized scores.

    A defense's score and worst case are over the eligible *oblivious* attacks only, as in the
    competition, where no attack knew the defenses; the eligible ``defense_aware`` attacks give each
    defense a separate worst-case accuracy (:attr:`EvalScores.worst_defense_aware`). Attack scores
    are computed alike for both kinds.

    Args:
        rows: the classification records.
        num_images: N, the dataset's images.
        attacks: attack name -> targeted?
        defenses: defense names.
        produced: attack name -> adversarial images it produced.
        defense_aware: the attacks that know a defense.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images!r}")
    names = list(attacks)
    counts = count(rows, defenses, names)
    eligible_attacks = [a for a in names if produced.get(a, 0) == num_images]
    total = sum(produced.get(a, 0) for a in names)
    eligible_defenses = [d for d in defenses if counts.processed.get(d, 0) == total]
    n = num_images

    def normalized(values: list[int]) -> float | None:
        return sum(values) / (len(values) * n) if values else None

    def worst(pairs: list[tuple[int, str]]) -> WorstCase:
        if not pairs:
            return WorstCase(None, None)
        value, opponent = min(pairs)
        return WorstCase(value / n, opponent)

    oblivious = [a for a in eligible_attacks if a not in defense_aware]
    aware = [a for a in eligible_attacks if a in defense_aware]
    defense_score, worst_defense, worst_aware = {}, {}, {}
    for d in defenses:
        defense_score[d] = normalized([counts.correct[d, a] for a in oblivious])
        worst_defense[d] = worst([(counts.correct[d, a], a) for a in oblivious])
        worst_aware[d] = worst([(counts.correct[d, a], a) for a in aware])
    attack_score, worst_attack, targeted_score, worst_targeted = {}, {}, {}, {}
    for a, targeted in attacks.items():
        matrix = counts.hit if targeted else counts.wrong
        values = [matrix[d, a] for d in eligible_defenses]
        case = worst([(matrix[d, a], d) for d in eligible_defenses])
        if targeted:
            targeted_score[a], worst_targeted[a] = normalized(values), case
        else:
            attack_score[a], worst_attack[a] = normalized(values), case
    return EvalScores(num_images=n, counts=counts, produced={a: produced.get(a, 0) for a in names},
                      eligible_attacks=eligible_attacks, eligible_defenses=eligible_defenses,
                      defense=defense_score, attack=attack_score, targeted_attack=targeted_score,
                      worst_defense=worst_defense, worst_attack=worst_attack,
                      worst_targeted_attack=worst_targeted,
                      defense_aware=[a for a in names if a in defense_aware], worst_defense_aware=worst_aware)


@dataclasses.dataclass(frozen=True)
class DevScores:
    """DEV's count matrices (rows = attacks, columns = defenses) and scores."""

    accuracy_on_attacks: Matrix  # keyed (defense, attack), non-targeted attacks
    accuracy_on_targeted_attacks: Matrix
    hit_target_class: Matrix
    attack: dict[str, int]
    targeted_attack: dict[str, int]
    defense: dict[str, int]


def dev_scores(rows: Sequence[Classification], *, num_images: int, attacks: Mapping[str, bool],
               defenses: Sequence[str], defense_aware: Collection[str] = ()) -> DevScores:
    """DEV's scores (see the module docstring); ``defense_aware`` attacks do not count for defenses."""
    counts = count(rows, defenses, list(attacks))
    plain = [a for a, t in attacks.items() if not t]
    targeted = [a for a, t in attacks.items() if t]
    return DevScores(
        accuracy_on_attacks={(d, a): counts.correct[d, a] for d in defenses for a in plain},
        accuracy_on_targeted_attacks={(d, a): counts.correct[d, a] for d in defenses for a in targeted},
        hit_target_class={(d, a): counts.hit[d, a] for d in defenses for a in targeted},
        attack={a: num_images * len(defenses) - sum(counts.correct[d, a] for d in defenses) for a in plain},
        targeted_attack={a: sum(counts.hit[d, a] for d in defenses) for a in targeted},
        defense={d: sum(counts.correct[d, a] for a in attacks if a not in defense_aware) for d in defenses},
    )


def ranking(scores: Mapping[str, float | int | None]) -> list[tuple[str, float | int | None]]:
    """Names by score, best first; ties by name; ``None`` (no score) last."""
    return sorted(scores.items(), key=lambda item: (item[1] is None, -(item[1] or 0), item[0]))


# ----------------------------------------------------------------------------- run statistics


@dataclasses.dataclass(frozen=True)
class PieceRun:
    """What the statistics need from one piece that ran.

    Attributes:
        seconds: the run's wall time.
        images: images in its input.
        clean: exited 0 within the time limit (and, for a defense, left a readable result).
        message: why it was not clean (first problem), ``""`` if clean.
    """

    seconds: float
    images: int
    clean: bool
    timed_out: bool
    message: str


def attack_run(record: AttackRecord) -> PieceRun:
    clean = record.infra_error is None and record.exit_code == 0 and not record.timed_out
    return PieceRun(record.seconds, len(record.image_ids), clean, record.timed_out,
                    "" if clean else (record.problems[0] if record.problems else "failed"))


def defense_run(record: DefenseRecord) -> PieceRun | None:
    """``None`` for a piece that did not run (nothing to classify)."""
    if not record.ran:
        return None
    clean = record.error is None and record.exit_code == 0 and not record.timed_out
    message = "" if clean else (record.error or (record.problems[0] if record.problems else "failed"))
    return PieceRun(record.seconds, len(record.given), clean, record.timed_out, message)


@dataclasses.dataclass(frozen=True)
class RunStats:
    """Per-submission run statistics (EVAL's ``compute_work_statistics``, plus per-100-image times).

    Attributes:
        completed: pieces that ran.
        with_error: pieces that did not end cleanly (non-zero exit, time limit, executor error,
            for defenses also no readable result).
        timed_out: pieces stopped at the time limit.
        error_message: the first such piece's problem.
        seconds: wall seconds of the clean pieces (EVAL times only batches without error).
        per_100: the same, per 100 images.
    """

    completed: int
    with_error: int
    timed_out: int
    error_message: str
    seconds: list[float]
    per_100: list[float]

    def summary(self, values: Sequence[float]) -> tuple[float, float, float, float] | None:
        """(min, median, mean, max) or ``None`` without clean pieces."""
        if not values:
            return None
        return min(values), statistics.median(values), statistics.fmean(values), max(values)


def run_stats(runs: Iterable[PieceRun | None]) -> RunStats:
    done = [r for r in runs if r is not None]
    errors = [r for r in done if not r.clean]
    clean = [r for r in done if r.clean]
    return RunStats(completed=len(done), with_error=len(errors), timed_out=sum(r.timed_out for r in done),
                    error_message=errors[0].message if errors else "",
                    seconds=[r.seconds for r in clean],
                    per_100=[r.seconds * 100 / r.images for r in clean if r.images])
