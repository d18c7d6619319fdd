"""SLOW (about a minute on 2 CPU cores): the shipped submissions through the whole harness.

``attacks/noop`` against ``baselines/undefended`` (three EfficientNet-Lite models, ~25 s per run on
CPU) on 4 sample images in batches of 2, via ``./run_attacks_and_defenses.sh`` as a user runs it.
"""

from __future__ import annotations

import csv
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_slow_real_noop_attack_against_undefended_baseline(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [str(ROOT / "run_attacks_and_defenses.sh"), "--attack", str(ROOT / "attacks" / "noop"),
         "--defense", str(ROOT / "baselines" / "undefended"), "--limit", "4", "--batch-size", "2",
         "--output-dir", str(out), "--no-progress"],
        cwd=tmp_path, env={**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHON": sys.executable}, capture_output=True,
        text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 piece(s) run" in result.stdout and "report.md" in result.stdout
    with open(out / "defense_results.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["SubmissionID"] == "undefended" and row["CompletedBatches"] == "2"
    assert row["BatchesWithError"] == "0" and row["ProcessedImages"] == "4"
    # noop leaves the images clean: the undefended ensemble's clean accuracy on them (3 of 4 or better
    # on these sample images, which it classifies almost all correctly).
    assert float(row["Score"]) >= 0.5
    with open(out / "accuracy_matrix.csv", newline="") as f:
        lines = f.read().splitlines()
    assert lines[0] == ",noop" and lines[1].startswith("undefended,")
