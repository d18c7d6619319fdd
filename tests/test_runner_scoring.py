"""Scoring rules on hand-made classification records: EVAL's eligibility and normalization, DEV's counts."""

from __future__ import annotations

import pytest

from hgd.runner.scoring import (Classification, EpsilonCounts, PieceRun, WorstCase, count_by_epsilon, dev_scores,
                                epsilons, eval_scores, ranking, run_stats)

N = 4
LABELS = {f"img{k}": (10 + k, 20 + k) for k in range(N)}  # TrueLabel, TargetClass


def rows_for(attack, defense, predictions, targeted=False, epsilon=16):
    """predictions: ImageId -> label or None (no usable prediction); absent ImageIds were not produced."""
    return [Classification(attack, targeted, defense, i, p, *LABELS[i], epsilon) for i, p in predictions.items()]


def all_images(value):
    return {i: value(i) for i in LABELS}


def true(i):
    return LABELS[i][0]


def target(i):
    return LABELS[i][1]


@pytest.fixture
def scenario():
    """Attacks: full (all 4 images), partial (3), aim (targeted, all 4). Defenses: good, leaky, gappy."""
    rows = []
    partial = {i: None for i in list(LABELS)[:3]}
    # good: labels everything; right on full's images, right on 2 of partial's, hit by aim on 3.
    rows += rows_for("full", "good", all_images(true))
    rows += rows_for("partial", "good", {i: true(i) if k < 2 else 0 for k, i in enumerate(partial)})
    rows += rows_for("aim", "good", {i: target(i) if k < 3 else true(i) for k, i in enumerate(LABELS)}, True)
    # leaky: labels everything, always wrong (label 999), never the target.
    rows += rows_for("full", "leaky", all_images(lambda i: 999))
    rows += rows_for("partial", "leaky", {i: 999 for i in partial})
    rows += rows_for("aim", "leaky", all_images(lambda i: 999), True)
    # gappy: one prediction missing (under full), otherwise right.
    rows += rows_for("full", "gappy", {i: (None if i == "img0" else true(i)) for i in LABELS})
    rows += rows_for("partial", "gappy", {i: true(i) for i in partial})
    rows += rows_for("aim", "gappy", all_images(true), True)
    attacks = {"full": False, "partial": False, "aim": True}
    produced = {"full": 4, "partial": 3, "aim": 4}
    return rows, attacks, ["good", "leaky", "gappy"], produced


def test_eligibility(scenario):
    rows, attacks, defenses, produced = scenario
    scores = eval_scores(rows, num_images=N, attacks=attacks, defenses=defenses, produced=produced)
    assert scores.eligible_attacks == ["full", "aim"]  # partial did not produce all N images
    assert scores.eligible_defenses == ["good", "leaky"]  # gappy missed one of the 11 images produced
    assert scores.counts.processed == {"good": 11, "leaky": 11, "gappy": 10}


def test_normalized_scores(scenario):
    rows, attacks, defenses, produced = scenario
    s = eval_scores(rows, num_images=N, attacks=attacks, defenses=defenses, produced=produced)
    # Defenses, over A = {full, aim}: correct / (2 * 4).
    assert s.defense == pytest.approx({"good": (4 + 1) / 8, "leaky": 0.0, "gappy": (3 + 4) / 8})
    # Attacks, over D = {good, leaky}: wrong (targeted: hits) / (2 * 4). partial's missing image earns nothing.
    assert s.attack == pytest.approx({"full": (0 + 4) / 8, "partial": (1 + 3) / 8})
    assert s.targeted_attack == pytest.approx({"aim": (3 + 0) / 8})
    assert s.worst_defense["good"].score == pytest.approx(1 / 4) and s.worst_defense["good"].opponent == "aim"
    assert s.worst_attack["full"].score == 0.0 and s.worst_attack["full"].opponent == "good"
    assert s.worst_targeted_attack["aim"].score == 0.0 and s.worst_targeted_attack["aim"].opponent == "leaky"


def test_no_eligible_opponent_gives_no_score():
    rows = rows_for("half", "d", {"img0": 10})
    s = eval_scores(rows, num_images=N, attacks={"half": False}, defenses=["d"], produced={"half": 1})
    assert s.eligible_attacks == [] and s.defense == {"d": None} and s.worst_defense["d"].score is None
    assert s.attack == {"half": 0.0}  # d labelled the one image produced: eligible


def test_dev_scores(scenario):
    rows, attacks, defenses, _ = scenario
    dev = dev_scores(rows, num_images=N, attacks=attacks, defenses=defenses)
    # Non-targeted: N * #defenses - correct; missing images and predictions count for the attacker.
    assert dev.attack == {"full": 12 - (4 + 0 + 3), "partial": 12 - (2 + 0 + 3)}
    assert dev.targeted_attack == {"aim": 3}
    assert dev.defense == {"good": 4 + 2 + 1, "leaky": 0, "gappy": 3 + 3 + 4}
    assert dev.accuracy_on_targeted_attacks[("good", "aim")] == 1
    assert dev.hit_target_class[("good", "aim")] == 3


def test_defense_aware_attacks_are_scored_apart(scenario):
    """A defense-aware attack (here: aim, as if it knew the defenses) leaves the defenses' competition
    score, EVAL and DEV alike, and gives each defense its own worst case; attack scores do not change."""
    rows, attacks, defenses, produced = scenario
    plain = eval_scores(rows, num_images=N, attacks=attacks, defenses=defenses, produced=produced)
    s = eval_scores(rows, num_images=N, attacks=attacks, defenses=defenses, produced=produced, defense_aware={"aim"})
    assert s.defense_aware == ["aim"]
    assert s.defense == pytest.approx({"good": 4 / 4, "leaky": 0.0, "gappy": 3 / 4})  # A = {full} only
    assert s.worst_defense["good"].opponent == "full"
    assert s.worst_defense_aware["good"] == WorstCase(1 / 4, "aim")
    assert s.worst_defense_aware["gappy"] == WorstCase(1.0, "aim")
    assert (s.attack, s.targeted_attack) == (plain.attack, plain.targeted_attack)
    assert plain.defense_aware == [] and plain.worst_defense_aware["good"] == WorstCase(None, None)
    dev = dev_scores(rows, num_images=N, attacks=attacks, defenses=defenses, defense_aware={"aim"})
    assert dev.defense == {"good": 4 + 2, "leaky": 0, "gappy": 3 + 3}


def test_counts_by_epsilon_split_images_correct_and_hits_by_bound():
    """img0-1 at eps 4, img2-3 at eps 16; a missing label counts as an image, neither correct nor a hit."""
    ids = list(LABELS)
    rows = rows_for("aim", "d", {ids[0]: true(ids[0]), ids[1]: target(ids[1])}, True, epsilon=4)
    rows += rows_for("aim", "d", {ids[2]: None, ids[3]: target(ids[3])}, True, epsilon=16)
    rows += rows_for("full", "d", {ids[0]: 999}, epsilon=4)
    cells = count_by_epsilon(rows)
    assert cells == {("d", "aim", 4): EpsilonCounts(images=2, correct=1, hit=1),
                     ("d", "aim", 16): EpsilonCounts(images=2, correct=0, hit=1),
                     ("d", "full", 4): EpsilonCounts(images=1, correct=0, hit=0)}
    assert epsilons(cells) == [4, 16]


def test_ranking_order():
    assert ranking({"b": 0.5, "a": 0.5, "c": None, "d": 0.9}) == [("d", 0.9), ("a", 0.5), ("b", 0.5), ("c", None)]


def test_run_stats():
    runs = [PieceRun(2.0, 100, True, False, ""), PieceRun(4.0, 50, True, False, ""),
            PieceRun(9.0, 100, False, True, "stopped at the time limit"), None]
    stats = run_stats(runs)
    assert (stats.completed, stats.with_error, stats.timed_out) == (3, 1, 1)
    assert stats.error_message == "stopped at the time limit"
    assert stats.summary(stats.seconds) == (2.0, 3.0, 3.0, 4.0)
    assert stats.summary(stats.per_100) == (2.0, 5.0, 5.0, 8.0)
    assert run_stats([]).summary([]) is None
