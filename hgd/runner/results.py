"""The result files of a run, all computed from the stored pieces and written atomically.

DEV's files (``dev_toolkit``), rows = attacks, first line ``,<defense1>,<defense2>,...``:

* ``accuracy_on_attacks.csv``, ``accuracy_on_targeted_attacks.csv``: images labelled correctly;
* ``hit_target_class.csv``: images labelled as the target class (targeted attacks);
* ``defense_ranking.csv`` (``DefenseName,Score``), ``attack_ranking.csv`` and
  ``targeted_attack_ranking.csv`` (``AttackName,Score``): DEV's count scores, best first.

EVAL's files (``master.py``), rows = defenses, columns = all attacks (non-targeted, then targeted):

* ``accuracy_matrix.csv``, ``error_matrix.csv``, ``hit_target_class_matrix.csv``;
* ``defense_results.csv``, ``attack_results.csv``, ``targeted_attack_results.csv`` with the columns
  :data:`RESULTS_HEADER`: ``SubmissionID`` is the submission's name (as in every other file),
  ``ExternalSubmissionId`` its folder, ``Score`` the official normalized score (empty when no
  opponent is eligible), times in whole seconds per batch over batches without error (as EVAL).
  Rows are sorted by score, best first.

And: ``all_classification.csv`` (:data:`CLASSIFICATION_HEADER`; ``PredictedLabel`` empty when the
defense gave no usable label), ``worst_case_scores.csv``, ``defense_aware_scores.csv`` (each defense's
competition score over the oblivious attacks next to its worst accuracy under the defense-aware ones),
``accuracy_by_epsilon.csv`` (:data:`EPSILON_HEADER`: per defense, attack and epsilon, the images the
attack made at that epsilon and the defense's correct and target-class labels among them),
``eligibility.csv``, ``timing.csv`` (seconds per batch and per 100 images), ``problems.csv`` and
``run_summary.json``.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

from hgd.io.files import write_csv_atomic, write_json_atomic
from hgd.runner.harness import Outcome
from hgd.runner.scoring import (Classification, DevScores, EvalScores, RunStats, attack_run, classifications,
                                EpsilonCounts, count_by_epsilon, defense_run, dev_scores, epsilons, eval_scores,
                                ranking, run_stats)

RESULTS_HEADER = ("SubmissionID", "ExternalSubmissionId", "Score", "CompletedBatches", "BatchesWithError",
                  "ProcessedImages", "MinEvalTime", "MaxEvalTime", "MedianEvalTime", "MeanEvalTime", "ErrorMsg")
CLASSIFICATION_HEADER = ("AttackName", "IsTargeted", "DefenseName", "ImageId", "PredictedLabel", "TrueLabel",
                         "TargetClass")
EPSILON_HEADER = ("DefenseName", "AttackName", "IsTargeted", "Epsilon", "Images", "Correct", "HitTargetClass")
TIMING_HEADER = ("SubmissionType", "SubmissionName", "CompletedBatches", "CleanBatches", "TimedOut",
                 "MinSeconds", "MedianSeconds", "MeanSeconds", "MaxSeconds",
                 "MinPer100Images", "MedianPer100Images", "MeanPer100Images", "MaxPer100Images")
PROBLEMS_HEADER = ("SubmissionType", "SubmissionName", "Piece", "Problem")
DEFENSE_AWARE_HEADER = ("DefenseName", "ObliviousScore", "WorstObliviousAccuracy", "WorstObliviousAttack",
                        "WorstDefenseAwareAccuracy", "WorstDefenseAwareAttack")

ATTACK, TARGETED_ATTACK, DEFENSE = "attack", "targeted_attack", "defense"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One logged problem: which submission (or ``dataset`` / a folder), which piece, what."""

    kind: str
    submission: str
    piece: str
    message: str


@dataclasses.dataclass
class Results:
    """Scores, statistics and problems of a run (what the CSV files and the report show)."""

    outcome: Outcome
    rows: list[Classification]
    eval: EvalScores
    dev: DevScores
    stats: dict[str, RunStats]
    problems: list[Problem]
    settings: dict[str, Any]
    by_epsilon: dict[tuple[str, str, int], EpsilonCounts]  # count_by_epsilon(rows), for the CSV and the report

    @property
    def attacks(self) -> list[str]:
        return [a.name for a in self.outcome.attacks if not a.targeted]

    @property
    def targeted_attacks(self) -> list[str]:
        return [a.name for a in self.outcome.attacks if a.targeted]

    @property
    def all_attacks(self) -> list[str]:
        return [*self.attacks, *self.targeted_attacks]

    @property
    def defenses(self) -> list[str]:
        return [d.name for d in self.outcome.defenses]

    @property
    def num_images(self) -> int:
        return len(self.outcome.dataset.image_ids)


def compute(outcome: Outcome, problems: Sequence[Problem] = (), settings: dict[str, Any] | None = None) -> Results:
    """Scores a run's records; ``problems`` are those found before it (submissions, dataset)."""
    attacks = {a.name: a.targeted for a in outcome.attacks}
    attacks = {**{a: t for a, t in attacks.items() if not t}, **{a: t for a, t in attacks.items() if t}}
    defenses = [d.name for d in outcome.defenses]
    aware = {a.name for a in outcome.attacks if a.defense_aware}
    attack_records = [outcome.attack_records[a, b.index] for a in attacks for b in outcome.batches]
    rows = classifications(outcome.dataset, attack_records, outcome.defense_records, defenses)
    produced = {a: 0 for a in attacks}
    for record in attack_records:
        produced[record.attack] += len(record.produced)
    n = len(outcome.dataset.image_ids)
    stats = {a: run_stats(attack_run(r) for r in attack_records if r.attack == a) for a in attacks}
    for d in defenses:
        stats[d] = run_stats(defense_run(outcome.defense_records[d, a, b.index])
                             for a in attacks for b in outcome.batches)
    return Results(outcome=outcome, rows=rows,
                   eval=eval_scores(rows, num_images=n, attacks=attacks, defenses=defenses, produced=produced,
                                    defense_aware=aware),
                   dev=dev_scores(rows, num_images=n, attacks=attacks, defenses=defenses, defense_aware=aware),
                   stats=stats, problems=[*problems, *_piece_problems(outcome)], settings=dict(settings or {}),
                   by_epsilon=count_by_epsilon(rows))


def _piece_problems(outcome: Outcome) -> list[Problem]:
    problems = []
    for attack in outcome.attacks:
        kind = TARGETED_ATTACK if attack.targeted else ATTACK
        for batch in outcome.batches:
            record = outcome.attack_records[attack.name, batch.index]
            piece = f"{batch.label} (eps {record.epsilon})"
            problems += [Problem(kind, attack.name, piece, m) for m in record.problems]
    for defense in outcome.defenses:
        for attack in outcome.attacks:
            for batch in outcome.batches:
                record = outcome.defense_records[defense.name, attack.name, batch.index]
                piece = f"{record.adv_batch} ({attack.name} {batch.label})"
                messages = [f"errored batch, ignored for scoring: {record.error}"] if record.error else []
                messages += [m for m in record.problems if not (record.error and m in record.error)]
                problems += [Problem(DEFENSE, defense.name, piece, m) for m in messages]
    return problems


def _cell(value: float | int | None) -> str | float | int:
    return "" if value is None else value


def _matrix_rows(rows: Sequence[str], columns: Sequence[str], value) -> list[list[Any]]:
    return [[r, *(value(r, c) for c in columns)] for r in rows]


def _eval_times(stats: RunStats) -> list[Any]:
    """EVAL's Min/Max/Median/Mean EvalTime: whole seconds per batch without error."""
    summary = stats.summary([float(int(s)) for s in stats.seconds])
    if summary is None:
        return ["", "", "", ""]
    low, median, mean, high = summary
    return [int(low), int(high), median, round(mean, 3)]


def write(results: Results, output_dir: pathlib.Path) -> list[pathlib.Path]:
    """Writes every result CSV (and ``run_summary.json``) into ``output_dir``; returns their paths."""
    out: list[pathlib.Path] = []

    def csv_file(name: str, header: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> None:
        path = output_dir / name
        write_csv_atomic(path, header, rows)
        out.append(path)

    ev, dev = results.eval, results.dev
    defenses, attacks, targeted = results.defenses, results.attacks, results.targeted_attacks
    all_attacks = results.all_attacks

    # DEV: rows = attacks, columns = defenses.
    csv_file("accuracy_on_attacks.csv", ["", *defenses],
             _matrix_rows(attacks, defenses, lambda a, d: dev.accuracy_on_attacks[d, a]))
    csv_file("accuracy_on_targeted_attacks.csv", ["", *defenses],
             _matrix_rows(targeted, defenses, lambda a, d: dev.accuracy_on_targeted_attacks[d, a]))
    csv_file("hit_target_class.csv", ["", *defenses],
             _matrix_rows(targeted, defenses, lambda a, d: dev.hit_target_class[d, a]))
    csv_file("defense_ranking.csv", ["DefenseName", "Score"], ranking(dev.defense))
    csv_file("attack_ranking.csv", ["AttackName", "Score"], ranking(dev.attack))
    csv_file("targeted_attack_ranking.csv", ["AttackName", "Score"], ranking(dev.targeted_attack))

    # EVAL: rows = defenses, columns = all attacks.
    counts = ev.counts
    for name, matrix in (("accuracy_matrix.csv", counts.correct), ("error_matrix.csv", counts.wrong),
                         ("hit_target_class_matrix.csv", counts.hit)):
        csv_file(name, ["", *all_attacks], _matrix_rows(defenses, all_attacks, lambda d, a, m=matrix: m[d, a]))
    folders = {s.name: str(s.path) for s in [*results.outcome.attacks, *results.outcome.defenses]}
    for name, scores, processed in (("defense_results.csv", ev.defense, counts.processed),
                                    ("attack_results.csv", ev.attack, ev.produced),
                                    ("targeted_attack_results.csv", ev.targeted_attack, ev.produced)):
        rows = []
        for submission, score in ranking(scores):
            stats = results.stats[submission]
            rows.append([submission, folders[submission], _cell(score), stats.completed, stats.with_error,
                         processed.get(submission, 0), *_eval_times(stats), stats.error_message])
        csv_file(name, RESULTS_HEADER, rows)

    csv_file("all_classification.csv", CLASSIFICATION_HEADER,
             [[r.attack, r.targeted, r.defense, r.image_id, _cell(r.predicted), r.true_label, r.target_class]
              for r in results.rows])

    worst = [[DEFENSE, d, _cell(ev.worst_defense[d].score), _cell(ev.worst_defense[d].opponent)]
             for d, _ in ranking(ev.defense)]
    worst += [[ATTACK, a, _cell(ev.worst_attack[a].score), _cell(ev.worst_attack[a].opponent)]
              for a, _ in ranking(ev.attack)]
    worst += [[TARGETED_ATTACK, a, _cell(ev.worst_targeted_attack[a].score),
               _cell(ev.worst_targeted_attack[a].opponent)] for a, _ in ranking(ev.targeted_attack)]
    by_epsilon = results.by_epsilon
    csv_file("accuracy_by_epsilon.csv", EPSILON_HEADER,
             [[d, a, a in targeted, eps, by_epsilon[d, a, eps].images, by_epsilon[d, a, eps].correct,
               by_epsilon[d, a, eps].hit] for d in defenses for a in all_attacks for eps in epsilons(by_epsilon)
              if (d, a, eps) in by_epsilon])
    csv_file("worst_case_scores.csv", ["SubmissionType", "SubmissionName", "WorstCaseScore", "WorstCaseOpponent"],
             worst)
    csv_file("defense_aware_scores.csv", DEFENSE_AWARE_HEADER,
             [[d, _cell(score), _cell(ev.worst_defense[d].score), _cell(ev.worst_defense[d].opponent),
               _cell(ev.worst_defense_aware[d].score), _cell(ev.worst_defense_aware[d].opponent)]
              for d, score in ranking(ev.defense)])

    required = sum(ev.produced.values())
    eligibility = [[TARGETED_ATTACK if a in targeted else ATTACK, a, a in ev.eligible_attacks, ev.produced[a],
                    results.num_images] for a in all_attacks]
    eligibility += [[DEFENSE, d, d in ev.eligible_defenses, counts.processed.get(d, 0), required]
                    for d in defenses]
    csv_file("eligibility.csv", ["SubmissionType", "SubmissionName", "Eligible", "Images", "Required"],
             eligibility)

    csv_file("timing.csv", TIMING_HEADER, timing_rows(results))
    csv_file("problems.csv", PROBLEMS_HEADER,
             [[p.kind, p.submission, p.piece, p.message] for p in results.problems])

    summary = dict(results.settings)
    summary.update(overhead(results.outcome))
    summary.update(images=results.num_images, batches=len(results.outcome.batches),
                   attacks=attacks, targeted_attacks=targeted, defenses=defenses, defense_aware=ev.defense_aware,
                   pieces_run=results.outcome.pieces_run, pieces_reused=results.outcome.pieces_reused,
                   attacks_kept=results.outcome.attacks_kept, problems=len(results.problems),
                   pieces_retried=results.outcome.pieces_retried,
                   nodes={name: dataclasses.asdict(work) for name, work in sorted(results.outcome.nodes.items())})
    write_json_atomic(output_dir / "run_summary.json", summary)
    out.append(output_dir / "run_summary.json")
    return out


def timing_rows(results: Results) -> list[list[Any]]:
    """``timing.csv``'s rows: per submission, seconds per clean batch and per 100 images."""
    rows = []
    kinds = [(ATTACK, results.attacks), (TARGETED_ATTACK, results.targeted_attacks), (DEFENSE, results.defenses)]
    for kind, names in kinds:
        for name in names:
            stats = results.stats[name]
            cells: list[Any] = []
            for values in (stats.seconds, stats.per_100):
                summary = stats.summary(values)
                cells += [""] * 4 if summary is None else [round(v, 3) for v in summary]
            rows.append([kind, name, stats.completed, stats.completed - stats.with_error, stats.timed_out, *cells])
    return rows


def overhead(outcome: Outcome) -> dict[str, float]:
    """The harness's own share of this invocation's wall time (preparing inputs, enforcing, parsing), and how
    many pieces ran at once on average (``parallelism``: the submissions' summed time over the wall time; on
    one machine about 1, and then the rest of the wall time is the harness's own)."""
    wall, own = outcome.wall_seconds, outcome.wall_seconds - outcome.submission_seconds
    return {"wall_seconds": round(wall, 3), "submission_seconds": round(outcome.submission_seconds, 3),
            "harness_overhead_seconds": round(own, 3),
            "harness_overhead_percent": round(100 * own / wall, 2) if wall > 0 else 0.0,
            "parallelism": round(outcome.submission_seconds / wall, 2) if wall > 0 else 0.0}


def cost_sentence(outcome: Outcome) -> str:
    """This invocation's wall time and where it went, in words (empty when it ran nothing)."""
    if not outcome.pieces_run:
        return ""
    cost = overhead(outcome)
    if outcome.on_cluster:
        return (f"wall {cost['wall_seconds']:.1f} s; the submissions ran {cost['submission_seconds']:.1f} s in all on "
                f"{len(outcome.nodes)} node(s), {cost['parallelism']:.2f} at a time on average")
    return (f"wall {cost['wall_seconds']:.1f} s, of which the submissions ran {cost['submission_seconds']:.1f} s "
            f"(harness overhead {cost['harness_overhead_percent']:.1f}%)")
