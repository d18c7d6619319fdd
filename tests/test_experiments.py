"""The paper's evaluation (``hgd.experiments``): oblivious test sets and rows of denoisers, on sample images."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from hgd import experiments
from hgd.experiments import BLACK, CLEAN, WHITE, ObliviousSpec, build_test_sets, markdown_table, plan_test_sets
from hgd.images import load_image

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def testsets(small_source, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("testsets")
    build_test_sets(ObliviousSpec(source=str(small_source)), out, progress=False)
    return out


def test_test_sets_follow_the_paper(small_source, tmp_path):
    attacks = ObliviousSpec(source=str(small_source)).attacks()
    assert [a.name for a in attacks[WHITE]] == ["fgsm_efficientnet_lite0", "ifgsm4_ensemble"]
    assert [a.name for a in attacks[BLACK]] == ["fgsm_efficientnet_lite2", "ifgsm2_efficientnet_lite2",
                                                "ifgsm4_efficientnet_lite2"]
    assert all("efficientnet_lite2" not in {m.value for m in a.models} for a in attacks[WHITE])
    plan = plan_test_sets(ObliviousSpec(source=str(small_source)), tmp_path)
    assert len(plan) == 4 * 5 * 2 and {p.epsilon for p in plan} == {4, 16}


def test_test_images_stay_in_their_box(testsets):
    plan = plan_test_sets(experiments.read_test_spec(testsets), testsets)
    for pair in plan:
        moved = np.abs(load_image(pair.adversarial)[0].astype(int) - load_image(pair.clean)[0].astype(int)).max()
        assert 0 < moved <= pair.epsilon


def test_another_spec_is_refused(testsets, small_source):
    with pytest.raises(ValueError, match="another spec"):
        build_test_sets(ObliviousSpec(source=str(small_source), black_model="efficientnet_lite1"), testsets)


def test_evaluate_cli_scores_rows_and_keeps_finished_ones(testsets, tmp_path):
    out = tmp_path / "table.json"
    command = [sys.executable, "-m", "hgd.experiments", "evaluate", str(testsets), "--row", "NA=none",
               "--json", str(out), "--no-progress"]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    accuracy = json.loads(out.read_text())["NA -> efficientnet_lite0"]["accuracy"]
    assert accuracy[CLEAN] >= 75.0
    assert accuracy[f"{WHITE}/eps16"] < accuracy[CLEAN]  # the white-box attacks work on the bare target
    assert accuracy[f"{WHITE}/eps4"] == pytest.approx(np.mean([accuracy[f"{WHITE}/fgsm_efficientnet_lite0/eps4"],
                                                               accuracy[f"{WHITE}/ifgsm4_ensemble/eps4"]]))
    assert "| NA -> efficientnet_lite0 |" in first.stdout
    stamp = out.stat().st_mtime_ns
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "kept from" in again.stderr and out.stat().st_mtime_ns == stamp


def test_a_row_needs_a_finished_run(testsets, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"width": 0.5, "lateral": True}))
    result = subprocess.run([sys.executable, "-m", "hgd.experiments", "evaluate", str(testsets), "--row",
                             f"FGD={tmp_path / 'run'}", "--json", str(tmp_path / "t.json")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no best.weights.h5" in result.stderr


def test_markdown_table():
    row = {c: 50.0 for c in experiments.SUMMARY_COLUMNS}
    lines = markdown_table({"FGD": row}).splitlines()
    assert lines[0].startswith("| defense | clean |") and lines[2] == "| FGD | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 |"
