"""The competition harness end to end, with the tiny real submissions of ``tests/submissions/``.

One run (module fixture) of six attacks and four defenses on 12 sample images in batches of 4 with
EVAL's epsilon cycle (4, 8, 12), through the real local executor. The test dataset is labelled so the
``pixel`` defense (label = 2 + red value of pixel (0, 0)) is right on clean images, and the targeted
``pixel_target`` attack can steer it; see ``tests/submissions/*/``.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from hgd.cli import runner as cli

from runner_dataset import ROOT, SAMPLE, SUBMISSIONS, make_dataset
ATTACKS = ["noop", "shift", "messy", "crasher", "vandal"]
TARGETED = ["pixel_target"]
DEFENSES = ["pixel", "constant", "malformed"]
N, BATCH, EPS = 12, 4, [4, 8, 12]

RESULTS_HEADER = ("SubmissionID,ExternalSubmissionId,Score,CompletedBatches,BatchesWithError,ProcessedImages,"
                  "MinEvalTime,MaxEvalTime,MedianEvalTime,MeanEvalTime,ErrorMsg")
CLASSIFICATION_HEADER = "AttackName,IsTargeted,DefenseName,ImageId,PredictedLabel,TrueLabel,TargetClass"


def read_csv(path: pathlib.Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_lines(path: pathlib.Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The main run; returns its folders, marker lines, dataset labels and exit status."""
    tmp = tmp_path_factory.mktemp("runner")
    labels = make_dataset(tmp / "data", N)
    attacks, defenses = tmp / "attacks", tmp / "defenses"
    for name in ATTACKS + TARGETED:
        shutil.copytree(SUBMISSIONS / name, attacks / name)
    for name in DEFENSES:
        shutil.copytree(SUBMISSIONS / name, defenses / name)
    # Folders that are not usable submissions: reported and skipped, never fatal.
    (attacks / "no_metadata").mkdir()
    shutil.copytree(SUBMISSIONS / "noop", attacks / "bad_json")
    (attacks / "bad_json" / "metadata.json").write_text('{"type": "attack", ')
    shutil.copytree(SUBMISSIONS / "noop", attacks / "no_entry")
    (attacks / "no_entry" / "run_attack.sh").unlink()
    shutil.copytree(SUBMISSIONS / "noop", attacks / "not_executable")
    (attacks / "not_executable" / "run_attack.sh").chmod(0o644)
    marker = tmp / "marker.txt"
    out = tmp / "out"
    args = ["--attacks-dir", str(attacks), "--defenses-dir", str(defenses),
            "--defense", str(SUBMISSIONS / "crasher_defense"), "--dataset-dir", str(tmp / "data"),
            "--output-dir", str(out), "--batch-size", str(BATCH), "--eps", "cycle", "--no-progress"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HGD_TEST_MARKER", str(marker))
        status = cli.main(args)
    return {"tmp": tmp, "out": out, "args": args, "status": status, "marker": read_lines(marker),
            "labels": labels, "ids": sorted(labels)}


def test_run_completes_despite_broken_submissions(run):
    assert run["status"] == 0
    out = run["out"]
    for name in ("accuracy_on_attacks.csv", "accuracy_on_targeted_attacks.csv", "hit_target_class.csv",
                 "defense_ranking.csv", "attack_ranking.csv", "targeted_attack_ranking.csv", "accuracy_matrix.csv",
                 "error_matrix.csv", "hit_target_class_matrix.csv", "defense_results.csv", "attack_results.csv",
                 "targeted_attack_results.csv", "all_classification.csv", "timing.csv", "problems.csv",
                 "report.md", "report.html", "accuracy_matrix.png"):
        assert (out / name).is_file(), name
    skipped = {row["SubmissionName"].rsplit("/", 1)[-1]: row["Problem"] for row in read_csv(out / "problems.csv")
               if row["SubmissionType"] == "submission"}
    assert set(skipped) == {"no_metadata", "bad_json", "no_entry", "not_executable"}
    assert "no metadata.json" in skipped["no_metadata"]
    assert "malformed metadata.json" in skipped["bad_json"]
    assert "does not exist" in skipped["no_entry"]
    assert "not executable" in skipped["not_executable"]
    assert not (out / "work").exists()  # scratch folders are cleaned up


def test_headers_exactly_as_specified(run):
    out = run["out"]
    for name in ("defense_results.csv", "attack_results.csv", "targeted_attack_results.csv"):
        assert read_lines(out / name)[0] == RESULTS_HEADER
    assert read_lines(out / "all_classification.csv")[0] == CLASSIFICATION_HEADER
    assert read_lines(out / "defense_ranking.csv")[0] == "DefenseName,Score"
    assert read_lines(out / "attack_ranking.csv")[0] == "AttackName,Score"
    assert read_lines(out / "targeted_attack_ranking.csv")[0] == "AttackName,Score"
    defenses = sorted(DEFENSES + ["crasher_defense"])
    all_attacks = sorted(ATTACKS) + TARGETED
    for name in ("accuracy_on_attacks.csv", "accuracy_on_targeted_attacks.csv", "hit_target_class.csv"):
        assert read_lines(out / name)[0] == "," + ",".join(defenses)
    assert [line.split(",")[0] for line in read_lines(out / "accuracy_on_attacks.csv")[1:]] == sorted(ATTACKS)
    for name in ("accuracy_matrix.csv", "error_matrix.csv", "hit_target_class_matrix.csv"):
        lines = read_lines(out / name)
        assert lines[0] == "," + ",".join(all_attacks)
        assert [line.split(",")[0] for line in lines[1:]] == defenses


def test_accuracy_by_epsilon_splits_the_matrix_by_each_batchs_bound(run):
    """Per (defense, attack) the cells add up to the accuracy matrix; each epsilon holds its batch's images."""
    out = run["out"]
    assert read_lines(out / "accuracy_by_epsilon.csv")[0] == \
        "DefenseName,AttackName,IsTargeted,Epsilon,Images,Correct,HitTargetClass"
    cells = read_csv(out / "accuracy_by_epsilon.csv")
    matrix = read_csv(out / "accuracy_matrix.csv")
    for row in matrix:
        for attack in ATTACKS + TARGETED:
            mine = [c for c in cells if c["DefenseName"] == row[""] and c["AttackName"] == attack]
            assert sum(int(c["Correct"]) for c in mine) == int(row[attack]), (row[""], attack)
    hits = {r[""]: r for r in read_csv(out / "hit_target_class_matrix.csv")}
    pixel_target = [c for c in cells if c["DefenseName"] == "pixel" and c["AttackName"] == "pixel_target"]
    assert sum(int(c["HitTargetClass"]) for c in pixel_target) == int(hits["pixel"]["pixel_target"])
    assert {c["IsTargeted"] for c in pixel_target} == {"True"}
    noop = [c for c in cells if c["DefenseName"] == "pixel" and c["AttackName"] == "noop"]
    assert [(int(c["Epsilon"]), int(c["Images"])) for c in noop] == [(eps, BATCH) for eps in EPS]
    report = (out / "report.md").read_text()
    section = report[report.index("## Accuracy by epsilon"):report.index("## Timing")]
    assert f"| noop | {EPS[0]} | {BATCH} |" in section


def _clean(run, image_id):
    with Image.open(run["tmp"] / "data" / "images" / f"{image_id}.png") as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def _adv(run, attack, image_id):
    with Image.open(run["out"] / "adv" / attack / f"{image_id}.png") as im:
        assert im.size == (299, 299) and im.mode == "RGB"
        return np.asarray(im, dtype=np.int16)


def test_eps_box_enforced_per_batch(run):
    """shift adds 100 to every pixel; the harness clips it to exactly min(x + eps, 255), eps by batch."""
    for k, image_id in enumerate(run["ids"]):
        eps = EPS[k // BATCH]
        np.testing.assert_array_equal(_adv(run, "shift", image_id), np.minimum(_clean(run, image_id) + eps, 255))


def test_broken_attack_outputs(run):
    """messy: k%4 == 0 wrong size (resized, then clipped), 1 corrupt (missing), 2 absent, 3 exact copy."""
    produced = sorted(p.stem for p in (run["out"] / "adv" / "messy").iterdir())
    expected = sorted(i for k, i in enumerate(run["ids"]) if k % 4 in (0, 3))
    assert produced == expected
    for k, image_id in enumerate(run["ids"]):
        if k % 4 == 0:
            diff = np.abs(_adv(run, "messy", image_id) - _clean(run, image_id))
            assert diff.max() <= EPS[k // BATCH]
        elif k % 4 == 3:
            np.testing.assert_array_equal(_adv(run, "messy", image_id), _clean(run, image_id))
    problems = [r["Problem"] for r in read_csv(run["out"] / "problems.csv") if r["SubmissionName"] == "messy"]
    text = "\n".join(problems)
    assert "IMG000000.png: resized from 150x150 to 299x299" in text
    assert "IMG000001.png: unreadable" in text and "counted as missing" in text
    assert "1 of 4 images missing: IMG000002.png" in text
    assert "foreign.png" in text and "IMG999999.png" in text and "notes.txt" in text
    record = json.loads((run["out"] / "pieces" / "attacks" / "messy" / "batch0000.json").read_text())
    assert record["produced"] == [run["ids"][0], run["ids"][3]]


def test_crashing_attack_keeps_what_it_wrote(run):
    produced = sorted(p.stem for p in (run["out"] / "adv" / "crasher").iterdir())
    assert produced == sorted(run["ids"][0::BATCH])
    rows = {r["SubmissionID"]: r for r in read_csv(run["out"] / "attack_results.csv")}
    assert rows["crasher"]["BatchesWithError"] == "3" and "exit code 3" in rows["crasher"]["ErrorMsg"]
    assert rows["crasher"]["ProcessedImages"] == "3"


def test_crashing_and_malformed_defenses(run):
    rows = {r["SubmissionID"]: r for r in read_csv(run["out"] / "defense_results.csv")}
    batches = len(ATTACKS + TARGETED) * (N // BATCH)
    assert rows["crasher_defense"]["CompletedBatches"] == str(batches)
    assert rows["crasher_defense"]["BatchesWithError"] == str(batches)
    assert rows["crasher_defense"]["ProcessedImages"] == "0"
    assert "exit code 1" in rows["crasher_defense"]["ErrorMsg"]
    # malformed labels the first half of each batch: 0 of crasher's 1, 1 of messy's 2, 2 of the other 4s.
    assert rows["malformed"]["ProcessedImages"] == str(3 * 0 + 3 * 1 + 12 * 2)
    assert rows["malformed"]["BatchesWithError"] == "0"
    problems = "\n".join(r["Problem"] for r in read_csv(run["out"] / "problems.csv")
                         if r["SubmissionName"] == "malformed")
    assert "skipped 3 row(s) without an integer label" in problems
    assert "not given: ghost" in problems


def test_submissions_see_anonymized_names(run):
    lines = run["marker"]
    noop = [line.split() for line in lines if line.startswith("noop ")]
    assert [words[1] for words in noop] == [f"eps={e}" for e in EPS]
    for b, words in enumerate(noop):
        assert words[2:] == [f"IMG{b * BATCH + k:06d}.png" for k in range(BATCH)]
    targeted = [line.split() for line in lines if line.startswith("pixel_target ")]
    assert len(targeted) == N // BATCH
    for b, words in enumerate(targeted):
        assert words[2:-1] == [f"IMG{b * BATCH + k:06d}.png" for k in range(BATCH)] + ["target_class.csv"]
        targets = dict(item.split(":") for item in words[-1][len("targets="):].split(";"))
        for name, target in targets.items():
            image_id = run["ids"][int(name[3:9])]
            assert int(target) == run["labels"][image_id][1]
    defense_names = [name for line in lines if line.startswith("pixel ") for name in line.split()[1:]]
    assert defense_names and all(re.fullmatch(r"ADVBATCH\d{3}_IMG\d{6}\.png", n) for n in defense_names)
    # Each defense run sees one attack's one batch.
    for line in lines:
        if line.startswith("pixel "):
            assert len({name.split("_")[0] for name in line.split()[1:]}) == 1


def test_each_run_gets_fresh_inputs_and_code(run):
    vandal = [line for line in run["marker"] if line.startswith("vandal ")]
    assert vandal == ["vandal inputs=4 state=fresh"] * (N // BATCH)
    assert not (SUBMISSIONS / "vandal" / "state.txt").exists()
    assert not (run["tmp"] / "attacks" / "vandal" / "state.txt").exists()
    assert len(list((run["tmp"] / "data" / "images").iterdir())) == N
    # vandal deleted its inputs; the attacks after it (pixel_target) still saw all of theirs.
    assert len(list((run["out"] / "adv" / "pixel_target").iterdir())) == N


def _independent_scores(rows, labels, attacks, targeted, defenses):
    """EVAL's and DEV's scores recomputed from all_classification.csv, without hgd.runner.scoring."""
    n = len(labels)
    produced = defaultdict(set)
    labelled = defaultdict(int)
    correct, wrong, hit = defaultdict(int), defaultdict(int), defaultdict(int)
    for r in rows:
        produced[r["AttackName"]].add(r["ImageId"])
        if r["PredictedLabel"] == "":
            continue
        p = int(r["PredictedLabel"])
        key = (r["DefenseName"], r["AttackName"])
        labelled[r["DefenseName"]] += 1
        correct[key] += p == int(r["TrueLabel"])
        wrong[key] += p != int(r["TrueLabel"])
        hit[key] += p == int(r["TargetClass"])
    all_attacks = attacks + targeted
    good_attacks = [a for a in all_attacks if len(produced[a]) == n]
    total = sum(len(produced[a]) for a in all_attacks)
    good_defenses = [d for d in defenses if labelled[d] == total]
    scores = {d: sum(correct[d, a] for a in good_attacks) / (len(good_attacks) * n) for d in defenses}
    scores |= {a: sum(wrong[d, a] for d in good_defenses) / (len(good_defenses) * n) for a in attacks}
    scores |= {t: sum(hit[d, t] for d in good_defenses) / (len(good_defenses) * n) for t in targeted}
    dev = {d: sum(correct[d, a] for a in all_attacks) for d in defenses}
    dev |= {a: n * len(defenses) - sum(correct[d, a] for d in defenses) for a in attacks}
    dev |= {t: sum(hit[d, t] for d in defenses) for t in targeted}
    return scores, dev, good_attacks, good_defenses, correct


def test_scores_recomputed_from_all_classification(run):
    out = run["out"]
    rows = read_csv(out / "all_classification.csv")
    defenses = DEFENSES + ["crasher_defense"]
    scores, dev, good_attacks, good_defenses, correct = _independent_scores(rows, run["labels"], ATTACKS,
                                                                             TARGETED, defenses)
    written = {}
    for name in ("defense_results.csv", "attack_results.csv", "targeted_attack_results.csv"):
        for r in read_csv(out / name):
            written[r["SubmissionID"]] = float(r["Score"])
    assert written == pytest.approx(scores, abs=1e-12)
    dev_written = {}
    for name in ("defense_ranking.csv", "attack_ranking.csv", "targeted_attack_ranking.csv"):
        ranking = read_csv(out / name)
        values = [int(r["Score"]) for r in ranking]
        assert values == sorted(values, reverse=True)
        dev_written |= {r.get("DefenseName") or r["AttackName"]: int(r["Score"]) for r in ranking}
    assert dev_written == dev
    matrix = read_csv(out / "accuracy_matrix.csv")
    for r in matrix:
        for attack in ATTACKS + TARGETED:
            assert int(r[attack]) == correct[r[""], attack]
    # The expected eligibility, by construction of the test submissions.
    assert sorted(good_attacks) == sorted(["noop", "shift", "vandal", "pixel_target"])
    assert sorted(good_defenses) == ["constant", "pixel"]


def test_eligibility_rules_applied(run):
    out = run["out"]
    eligible = {r["SubmissionName"]: r["Eligible"] == "True" for r in read_csv(out / "eligibility.csv")}
    assert eligible == {"crasher": False, "messy": False, "noop": True, "shift": True, "vandal": True,
                        "pixel_target": True, "constant": True, "crasher_defense": False, "malformed": False,
                        "pixel": True}
    scores = {r["SubmissionID"]: float(r["Score"]) for r in read_csv(out / "defense_results.csv")}
    # pixel: right on noop and vandal (12 each), wrong on shift and pixel_target; messy and crasher
    # (where it is right on 3 each) are ignored because they did not produce all 12 images.
    assert scores["pixel"] == pytest.approx((12 + 12) / (4 * N))
    attack = {r["SubmissionID"]: float(r["Score"]) for r in read_csv(out / "attack_results.csv")}
    # Scored by pixel and constant only (malformed and crasher_defense did not label every image).
    assert attack["noop"] == pytest.approx(12 / (2 * N))
    assert attack["shift"] == pytest.approx(24 / (2 * N))
    targeted = {r["SubmissionID"]: float(r["Score"]) for r in read_csv(out / "targeted_attack_results.csv")}
    assert targeted["pixel_target"] == pytest.approx(12 / (2 * N))
    worst = {r["SubmissionName"]: r for r in read_csv(out / "worst_case_scores.csv")}
    assert float(worst["pixel"]["WorstCaseScore"]) == 0.0 and worst["noop"]["WorstCaseOpponent"] == "pixel"


def test_report_and_timing(run):
    out = run["out"]
    markdown = (out / "report.md").read_text()
    assert "![accuracy matrix heatmap](accuracy_matrix.png)" in markdown
    assert "python -m hgd.cli.runner" in markdown and "--eps cycle" in markdown
    assert "crasher_defense" in markdown and "errored batch" in markdown
    assert "<img src=\"accuracy_matrix.png\"" in (out / "report.html").read_text()
    with Image.open(out / "accuracy_matrix.png") as im:
        assert im.format == "PNG" and im.size[0] > 200
    timing = {r["SubmissionName"]: r for r in read_csv(out / "timing.csv")}
    assert timing["noop"]["CompletedBatches"] == "3" and float(timing["noop"]["MedianSeconds"]) >= 0
    assert float(timing["noop"]["MedianPer100Images"]) == pytest.approx(
        float(timing["noop"]["MedianSeconds"]) * 100 / BATCH, abs=0.01)
    assert timing["crasher_defense"]["MedianSeconds"] == ""  # no clean batch
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["pieces_run"] == 6 * 3 + 4 * 6 * 3 and 0 <= summary["harness_overhead_percent"] <= 100


def test_resume_skips_finished_pieces(run, tmp_path, capsys):
    """A rerun with the same output folder runs nothing; a deleted piece (and what depends on it) reruns."""
    out = tmp_path / "out"
    shutil.copytree(run["out"], out)  # the fixture's folder stays untouched for the other tests
    args = [*run["args"]]
    args[args.index("--output-dir") + 1] = str(out)
    marker = tmp_path / "marker.txt"
    marker.touch()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HGD_TEST_MARKER", str(marker))
        capsys.readouterr()
        assert cli.main(args) == 0
        assert "0 piece(s) run, 90 reused" in capsys.readouterr().out
        assert read_lines(marker) == []
        for name in ("all_classification.csv", "defense_results.csv", "accuracy_matrix.csv"):
            assert (out / name).read_text() == (run["out"] / name).read_text()
        (out / "pieces" / "attacks" / "noop" / "batch0001.json").unlink()
        assert cli.main(args) == 0
        assert "5 piece(s) run, 85 reused" in capsys.readouterr().out  # the attack piece + 4 defenses on it
    lines = read_lines(marker)
    assert [line.split()[:2] for line in lines if line.startswith("noop")] == [["noop", "eps=8"]]
    assert [line for line in lines if line.startswith("pixel ")] == [
        "pixel " + " ".join(f"ADVBATCH{2 * 3 + 1:03d}_IMG{k:06d}.png" for k in range(4, 8))]


@pytest.mark.parametrize("signal_name", ["INT", "TERM"])
def test_interrupt_keeps_finished_pieces(tmp_path, signal_name):
    """Ctrl-C or SIGTERM (from a submission to the runner) loses no finished piece, leaves the interrupted
    submission running nowhere, and the rerun resumes."""
    make_dataset(tmp_path / "data", 4)
    marker = tmp_path / "marker.txt"
    args = [sys.executable, "-m", "hgd.cli.runner", "--attack", str(SUBMISSIONS / "interrupter"),
            "--defense", str(SUBMISSIONS / "constant"), "--dataset-dir", str(tmp_path / "data"),
            "--output-dir", str(tmp_path / "out"), "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "HGD_TEST_MARKER": str(marker), "HGD_TEST_SIGNAL": signal_name}
    # A runner started from a backgrounded shell (nohup, CI) inherits SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: give it the default disposition, as a terminal would.
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert first.returncode == 130, first.stderr
    assert "interrupted" in first.stderr
    assert not _processes_with(str(tmp_path / "out")), "the interrupted submission is still running"
    pieces = tmp_path / "out" / "pieces" / "attacks" / "interrupter"
    assert (pieces / "batch0000.json").is_file() and not (pieces / "batch0001.json").exists()
    env["HGD_TEST_NO_INTERRUPT"] = "1"
    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    runs = [line.split()[1] for line in read_lines(marker)]
    assert runs == ["IMG000000.png", "IMG000002.png", "IMG000002.png"]  # batch 0 ran once
    assert "3 piece(s) run, 1 reused" in second.stdout


def _processes_with(text: str) -> list[int]:
    """Pids of the running processes whose command line mentions ``text`` (Linux's /proc)."""
    pids = []
    for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # ended while we looked
            continue
    return pids


def test_timeout_keeps_what_was_written(tmp_path, monkeypatch):
    """sleepy writes half of its outputs and sleeps: stopped at the limit, its half counts.

    Relative paths on purpose: submissions run in a copy of their folder, so the harness must hand
    them absolute ones."""
    make_dataset(tmp_path / "data", 4)
    shutil.copytree(SUBMISSIONS / "sleepy", tmp_path / "sleepy")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    status = cli.main(["--attack", "sleepy", "--defense", str(SUBMISSIONS / "constant"),
                       "--dataset-dir", "data", "--output-dir", "out", "--batch-size", "4",
                       "--time-limit", "3", "--no-progress"])
    assert status == 0
    record = json.loads((out / "pieces" / "attacks" / "sleepy" / "batch0000.json").read_text())
    assert record["timed_out"] and 3 <= record["seconds"] < 15
    assert len(record["produced"]) == 2 and len(list((out / "adv" / "sleepy").iterdir())) == 2
    assert any("time limit" in p for p in record["problems"])
    timing = {r["SubmissionName"]: r for r in read_csv(out / "timing.csv")}
    assert timing["sleepy"]["TimedOut"] == "1"
    classified = read_csv(out / "all_classification.csv")
    assert len(classified) == 2 and all(r["PredictedLabel"] == "1" for r in classified)


def test_nothing_to_run_is_an_error(tmp_path, capsys):
    make_dataset(tmp_path / "data", 2)
    (tmp_path / "empty").mkdir()
    status = cli.main(["--attacks-dir", str(tmp_path / "empty"), "--defense", str(SUBMISSIONS / "constant"),
                       "--dataset-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")])
    assert status == 1
    assert "no usable attack" in capsys.readouterr().err
    assert cli.main(["--attack", str(tmp_path / "missing"), "--dataset-dir", str(tmp_path / "data")]) == 2
    assert cli.main(["--attack", str(SUBMISSIONS / "noop"), "--dataset-dir", str(tmp_path / "nothing")]) == 2


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--attacks-dir", "--targeted-attacks-dir", "--defenses-dir", "--defense", "--attack",
                 "--dataset-dir", "--output-dir", "--batch-size", "--eps", "--time-limit", "--executor", "--gpu",
                 "--limit", "--keep-attacks", "validate PATH"):
        assert flag in text


class FlakyExecutor:
    """The local executor behind an 'engine' that fails on its first defense run (an infrastructure
    error, not the submission's): the piece is recorded as errored and run again on resume."""

    name = "flaky"

    def __init__(self) -> None:
        from hgd.runner.local_executor import LocalExecutor

        self.inner = LocalExecutor()
        self.failed = False

    def run(self, request):
        if request.output_file and not self.failed:
            self.failed = True
            raise RuntimeError("engine went away")
        return self.inner.run(request)


def test_executor_errors_are_errored_pieces_retried_on_resume(tmp_path):
    from hgd.runner.harness import Harness, Settings
    from hgd.runner.local_executor import LocalExecutor
    from hgd.io.datasets import read_dataset as load_dataset
    from hgd.runner.submissions import load_submission

    make_dataset(tmp_path / "data", 2)
    dataset = load_dataset(tmp_path / "data")
    kwargs = dict(dataset=dataset, attacks=[load_submission(SUBMISSIONS / "noop")],
                  defenses=[load_submission(SUBMISSIONS / "constant")], output_dir=tmp_path / "out",
                  settings=Settings(batch_size=2, progress=False))
    first = Harness(executor=FlakyExecutor(), **kwargs).run()
    record = first.defense_records["constant", "noop", 0]
    assert record.infra_error == "RuntimeError: engine went away" and record.error.startswith("executor error")
    second = Harness(executor=LocalExecutor(), **kwargs).run()
    assert (second.pieces_run, second.pieces_reused) == (1, 1)
    record = second.defense_records["constant", "noop", 0]
    assert record.infra_error is None and record.error is None and len(record.predictions) == 2


def test_keep_attacks_scores_a_new_defense_on_the_stored_adversarial_images(tmp_path):
    """An edited attack normally runs again; with keep_attacks its stored piece (and the defense pieces
    on it) is reused and counted, so an added defense sees the same images as the earlier ones."""
    from hgd.runner import report, results
    from hgd.runner.harness import Harness, Settings
    from hgd.runner.local_executor import LocalExecutor
    from hgd.io.datasets import read_dataset as load_dataset
    from hgd.runner.submissions import load_submission

    make_dataset(tmp_path / "data", 2)
    shutil.copytree(SUBMISSIONS / "noop", tmp_path / "noop")

    def run(keep: bool, *defenses: str):
        return Harness(dataset=load_dataset(tmp_path / "data"), attacks=[load_submission(tmp_path / "noop")],
                       defenses=[load_submission(SUBMISSIONS / name) for name in defenses],
                       executor=LocalExecutor(), output_dir=tmp_path / "out",
                       settings=Settings(batch_size=2, progress=False, keep_attacks=keep)).run()

    first = run(False, "constant")
    with (tmp_path / "noop" / "metadata.json").open("a") as file:
        file.write("\n")  # an edit: another fingerprint
    kept = run(True, "constant", "pixel")
    assert (kept.pieces_run, kept.pieces_reused, kept.attacks_kept) == (1, 2, 1)  # only the new defense ran
    assert kept.attack_records["noop", 0].token == first.attack_records["noop", 0].token
    assert kept.defense_records["pixel", "noop", 0].attack_token == first.attack_records["noop", 0].token
    report.write(results.compute(kept, [], {}), tmp_path / "out", command="(test)")
    assert "1 reused attack piece(s) were made by an earlier version" in (tmp_path / "out" / "report.md").read_text()
    rerun = run(False, "constant", "pixel")
    assert (rerun.pieces_run, rerun.pieces_reused, rerun.attacks_kept) == (3, 0, 0)
    assert rerun.attack_records["noop", 0].token != first.attack_records["noop", 0].token


def test_docker_executor_without_engine_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")  # whatever engine this machine has
    make_dataset(tmp_path / "data", 1)
    status = cli.main(["--executor", "docker", "--attack", str(SUBMISSIONS / "noop"), "--defense",
                       str(SUBMISSIONS / "constant"), "--dataset-dir", str(tmp_path / "data"),
                       "--output-dir", str(tmp_path / "out")])
    assert status == 2
    assert "cannot use Docker" in capsys.readouterr().err


def test_defense_aware_attacks_are_reported_beside_the_score(tmp_path):
    """An attack marked defense-aware leaves the defenses' competition score and gets its own column."""
    make_dataset(tmp_path / "data", 4)
    aware = tmp_path / "aware_shift"
    shutil.copytree(SUBMISSIONS / "shift", aware)
    meta = json.loads((aware / "metadata.json").read_text())
    (aware / "metadata.json").write_text(json.dumps({**meta, "defense_aware": True}))
    out = tmp_path / "out"
    status = cli.main(["--attack", str(SUBMISSIONS / "noop"), "--attack", str(aware),
                       "--defense", str(SUBMISSIONS / "pixel"), "--dataset-dir", str(tmp_path / "data"),
                       "--output-dir", str(out), "--no-progress"])
    assert status == 0
    (row,) = read_csv(out / "defense_aware_scores.csv")
    # pixel is right on every noop image and wrong on every shifted one (see test_eligibility_rules_applied).
    assert (row["DefenseName"], row["ObliviousScore"], row["WorstObliviousAttack"]) == ("pixel", "1.0", "noop")
    assert (row["WorstDefenseAwareAccuracy"], row["WorstDefenseAwareAttack"]) == ("0.0", "aware_shift")
    assert {r["SubmissionID"]: float(r["Score"]) for r in read_csv(out / "defense_results.csv")} == {"pixel": 1.0}
    report = (out / "report.md").read_text()
    assert "Oblivious score vs defense-aware accuracy" in report and "aware_shift (defense-aware)" in report
    assert json.loads((out / "run_summary.json").read_text())["defense_aware"] == ["aware_shift"]


def test_the_default_run_is_the_tour_and_all_leaves_out_the_defense_aware_attacks(capsys):
    """No flag: the tour's few attacks against defense/ and baselines/undefended. ``--all``: every oblivious
    attack of attacks/ (the competition's kind) against every defense, none of the defense-aware attacks
    (they belong to the security evaluation and run far past the 500 s limit on a CPU)."""
    folders, absent = cli._submission_folders(cli.run_parser().parse_args([]))
    assert not absent
    assert [path.name for path, _ in folders] == [*cli.TOUR_ATTACKS, "defense", "undefended"]
    assert "the tour" in capsys.readouterr().out

    folders, absent = cli._submission_folders(cli.run_parser().parse_args(["--all"]))
    names = {path.name for path, _ in folders}
    shipped = {path.name for path in (cli.PROJECT_ROOT / "attacks").iterdir() if (path / "metadata.json").is_file()}
    aware = {name for name in shipped if json.loads((cli.PROJECT_ROOT / "attacks" / name / "metadata.json")
                                                    .read_text()).get("defense_aware")}
    assert not absent and aware >= {"adaptive_pgd", "adaptive_pgd_targeted", "square"}
    assert names >= shipped - aware and not names & aware
    assert {"defense", "undefended", "jpeg", "bit_depth"} <= names
    assert "left out (defense-aware" in capsys.readouterr().out
    asked = cli.run_parser().parse_args(["--all", "--attack", str(cli.PROJECT_ROOT / "attacks" / "adaptive_pgd")])
    folders, _ = cli._submission_folders(asked)
    assert "adaptive_pgd" in {path.name for path, _ in folders}  # asked for by name: it runs
