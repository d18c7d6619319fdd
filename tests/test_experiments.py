"""The paper's evaluation (``hgd.cli.experiments``): oblivious test sets and rows of denoisers, on sample images."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hgd.evaluation import layerwise as analysis
from hgd.cli.experiments import _parse_row
from hgd.evaluation import paper_tables as experiments
from hgd.defenses.defended import DenoiserSpec
from hgd.evaluation.paper_tables import BLACK, CLEAN, WHITE, ObliviousSpec, build_test_sets, markdown_table, plan_test_sets
from hgd.io.images import load_image
from hgd.train.fit import FitConfig
from hgd.zoo import ModelName, get_model

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


@pytest.mark.slow
def test_test_images_stay_in_their_box(testsets):
    plan = plan_test_sets(experiments.read_test_spec(testsets), testsets)
    for pair in plan:
        moved = np.abs(load_image(pair.adversarial)[0].astype(int) - load_image(pair.clean)[0].astype(int)).max()
        assert 0 < moved <= pair.epsilon


def test_another_spec_is_refused(testsets, small_source):
    with pytest.raises(ValueError, match="another spec"):
        build_test_sets(ObliviousSpec(source=str(small_source), black_model="efficientnet_lite1"), testsets)


@pytest.mark.slow
def test_evaluate_cli_scores_rows_and_keeps_finished_ones(testsets, tmp_path):
    out = tmp_path / "table.json"
    command = [sys.executable, "-m", "hgd.cli.experiments", "evaluate", str(testsets), "--row", "NA=none",
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
    fewer = subprocess.run([*command, "--images", "2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert fewer.returncode == 2 and "scored on [4] images, not 2" in fewer.stderr


def test_first_images_keeps_every_test_image_of_a_prefix(testsets):
    plan = plan_test_sets(experiments.read_test_spec(testsets), testsets)
    kept = experiments.first_images(plan, 2)
    assert len(kept) == 2 * 5 * 2 and {p.image for p in kept} == set(sorted({p.image for p in plan})[:2])
    assert experiments.first_images(plan, None) == plan
    with pytest.raises(ValueError, match="must be in 1..4"):
        experiments.first_images(plan, 5)


def test_unseen_classes_keep_the_held_out_classes_images_only(testsets, tmp_path):
    plan = plan_test_sets(experiments.read_test_spec(testsets), testsets)
    labels = {p.label0 for p in plan}
    config = next(c for c in (FitConfig(holdout_classes=500, seed=s) for s in range(100))
                  if 0 < len(labels & c.heldout()) < len(labels))  # some of the images' classes held out, not all
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(config.to_json())
    kept = experiments.unseen_class_images(plan, run)
    assert {p.label0 for p in kept} == labels & config.heldout()
    assert len({p.image for p in kept}) * 5 * 2 == len(kept)  # every test image of a kept clean image
    (run / "config.json").write_text(FitConfig().to_json())
    with pytest.raises(ValueError, match="trained on every class"):
        experiments.unseen_class_images(plan, run)


def test_a_row_needs_a_finished_run(testsets, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"width": 0.5, "lateral": True}))
    result = subprocess.run([sys.executable, "-m", "hgd.cli.experiments", "evaluate", str(testsets), "--row",
                             f"FGD={tmp_path / 'run'}", "--json", str(tmp_path / "t.json")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no best.weights.h5" in result.stderr


def test_a_row_reads_a_defense_configs_shared_denoiser(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"denoiser": {"weights": "w/fgd.weights.h5", "width": 0.5},
                                  "members": [{"model": "efficientnet_lite0"}]}))
    spec = experiments.denoiser_of_run(config)
    assert spec.weights == tmp_path / "w" / "fgd.weights.h5" and spec.width == 0.5 and spec.lateral
    config.write_text(json.dumps({"members": [{"model": "efficientnet_lite0"}]}))
    with pytest.raises(ValueError, match="no shared 'denoiser'"):
        experiments.denoiser_of_run(config)


def test_a_row_puts_one_denoiser_before_all_targets_or_one_before_each():
    targets = ["efficientnet_lite0", "efficientnet_lite1"]
    first, second = DenoiserSpec(pathlib.Path("a.weights.h5")), DenoiserSpec(pathlib.Path("b.weights.h5"))
    members, shared = experiments.defended_targets(targets, [first, second])
    assert [m.denoiser for m in members] == [first, second] and shared is None
    assert [m.target.name.value for m in members] == targets
    members, shared = experiments.defended_targets(targets, [first])
    assert [m.denoiser for m in members] == [None, None] and shared == first
    members, shared = experiments.defended_targets(targets, [])
    assert [m.denoiser for m in members] == [None, None] and shared is None
    with pytest.raises(ValueError, match="3 denoisers for 2 targets"):
        experiments.defended_targets(targets, [first, second, first])
    assert _parse_row("per-model=~/a,/b") == ("per-model", [pathlib.Path("~/a").expanduser(),
                                                                        pathlib.Path("/b")])
    assert _parse_row("NA=none") == ("NA", [])


@pytest.mark.slow
def test_identity_denoisers_shared_or_per_target_score_as_the_bare_targets(testsets, dunet_weights):
    plan = experiments.first_images(plan_test_sets(experiments.read_test_spec(testsets), testsets), 1)
    targets = ["efficientnet_lite0", "efficientnet_lite1"]
    identity = DenoiserSpec(dunet_weights["identity"], width=dunet_weights["width"])
    bare = experiments.evaluate(plan, targets, [], progress=False)
    assert experiments.evaluate(plan, targets, [identity], progress=False) == bare
    assert experiments.evaluate(plan, targets, [identity, identity], progress=False) == bare
    large = DenoiserSpec(dunet_weights["large"], width=dunet_weights["width"])
    assert experiments.evaluate(plan, targets, [large], progress=False)[CLEAN] < bare[CLEAN]


def test_markdown_table():
    row = {c: 50.0 for c in experiments.SUMMARY_COLUMNS}
    lines = markdown_table({"FGD": row}).splitlines()
    assert lines[0].startswith("| defense | clean |") and lines[2] == "| FGD | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 |"


# -------------------------------------------------------------------------------------------- figures


def test_perturbation_slopes():
    rng = np.random.default_rng(0)
    clean = rng.uniform(-1, 1, (3, 8, 8, 3))
    adversarial = clean + rng.uniform(-0.1, 0.1, clean.shape)
    np.testing.assert_allclose(analysis.perturbation_slopes(clean, adversarial, clean), 1.0)  # removes it all
    np.testing.assert_allclose(analysis.perturbation_slopes(clean, adversarial, adversarial), 0.0)  # nothing
    overshoot = adversarial - 1.5 * (adversarial - clean)
    np.testing.assert_allclose(analysis.perturbation_slopes(clean, adversarial, overshoot), 1.5)


def test_block_outputs_run_from_input_to_logits():
    target = get_model(ModelName.LITE0)
    names = analysis.block_outputs(target.build_backbone(), target)
    assert names[0].startswith("block1") and names[-2:] == [target.guide_layer, target.logits_layer]
    assert len(names) == 16 + 2  # EfficientNet-Lite0 has 16 blocks


def _run_dir(folder: pathlib.Path, weights: pathlib.Path, width: float) -> pathlib.Path:
    folder.mkdir()
    shutil.copy(weights, folder / "best.weights.h5")
    (folder / "config.json").write_text(json.dumps({"width": width, "lateral": True}))
    return folder


def test_figures_cli(testsets, dunet_weights, tmp_path):
    identity = _run_dir(tmp_path / "identity", dunet_weights["identity"], dunet_weights["width"])
    out = tmp_path / "figures"
    result = subprocess.run([sys.executable, "-m", "hgd.cli.experiments", "figures", str(testsets), "--row",
                             f"ID={identity}", "--images", "4", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "figure5_layerwise_perturbation.png").stat().st_size > 10_000
    assert (out / "figure7_perturbation_slopes.png").stat().st_size > 10_000
    numbers = json.loads((out / "figures.json").read_text())
    assert numbers["images"] == 4 and numbers["slope_median"]["ID"] == pytest.approx(0.0, abs=1e-6)
    curves = numbers["E_l"]
    np.testing.assert_allclose(curves["ID output"], curves["adversarial"], rtol=1e-4)  # x + 0 changes nothing
    assert curves["adversarial"][-1] > curves["random noise (eps 16)"][-1]  # FGSM moves the logits more
    assert "| adversarial |" in result.stdout


def test_add_result_keeps_rows_another_run_wrote_meanwhile(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "table.json"
    experiments.add_result(path, "NA -> m", {"images": 2, "accuracy": {}})
    # A second evaluate run, going side by side, writes its row while this one scores the next.
    other = json.loads(path.read_text()) | {"PGD -> m": {"images": 2, "accuracy": {}}}
    path.write_text(json.dumps(other))
    rows = experiments.add_result(path, "FGD -> m", {"images": 2, "accuracy": {}})
    assert sorted(rows) == sorted(json.loads(path.read_text())) == ["FGD -> m", "NA -> m", "PGD -> m"]


def _table_script(tmp_path: pathlib.Path, **env: str) -> subprocess.CompletedProcess:
    """scripts/paper_table2.sh with PYTHON=echo: the commands it would run, one per line."""
    return subprocess.run([str(REPO / "scripts" / "paper_table2.sh"), str(tmp_path)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": "echo", "BUILT_ONLY": "1", **env}, timeout=60)


def test_table5_script_holds_the_classes_out_of_the_start_too_and_scores_beside_all_classes(tmp_path):
    result = _table_script(tmp_path, HOLDOUT="250", ROWS="FGD_FROM_PGD", HOURS="0.4")
    assert result.returncode == 0, result.stderr
    start, fine_tune, score = [line for line in result.stdout.splitlines() if " fit " in line or " evaluate " in line]
    assert "runs/table2_pgd_3epochs_holdout250 " in start and "--holdout-classes 250" in start
    assert "--max-epochs 3" in start and "--max-hours 2" in start
    assert "runs/table2_fgd_from_pgd_holdout250 " in fine_tune and "--holdout-classes 250" in fine_tune
    assert "--init-weights " + str(tmp_path / "runs/table2_pgd_3epochs_holdout250/best.weights.h5") in fine_tune
    assert f"FGD_FROM_PGD, 750 classes={tmp_path}/runs/table2_fgd_from_pgd_holdout250 " in score
    assert f"FGD_FROM_PGD, all classes={tmp_path}/runs/table2_fgd_from_pgd " in score
    assert f"--unseen-classes-of {tmp_path}/runs/table2_fgd_from_pgd_holdout250 " in score
    assert score.rstrip().endswith("docs/results/table5.json --no-progress") and "HGD shipped" not in score
    refused = _table_script(tmp_path, HOLDOUT="250", ROWS="FGD_FROM_PGD", INIT="/start.weights.h5")
    assert refused.returncode == 2 and "INIT was trained on every class" in refused.stderr


def test_table2_script_guides_the_ensemble_row_by_all_three_models(tmp_path):
    result = _table_script(tmp_path, ROWS="FGD_ENSEMBLE_FROM_PGD", INIT="/start.weights.h5", EPOCHS="4")
    assert result.returncode == 0, result.stderr
    (fit,) = [line for line in result.stdout.splitlines() if " fit " in line]
    assert "--models efficientnet_lite0 efficientnet_lite1 efficientnet_lite2 --init-weights /start.weights.h5" in fit
    assert "--max-epochs 4" in fit and "--holdout-classes" not in fit
    assert _table_script(tmp_path, ROWS="XGD").returncode == 2


def test_table2_script_trains_and_names_whole_image_rows_apart(tmp_path):
    result = _table_script(tmp_path, ROWS="FGD_FROM_PGD", INIT="/start.weights.h5", CROP="299")
    assert result.returncode == 0, result.stderr
    (fit,) = [line for line in result.stdout.splitlines() if " fit " in line]
    (score,) = [line for line in result.stdout.splitlines() if " evaluate " in line]
    assert "runs/table2_fgd_from_pgd_crop299 " in fit and "--crop 299 " in fit
    assert f"FGD_FROM_PGD, crop 299={tmp_path}/runs/table2_fgd_from_pgd_crop299 " in score
    assert "--crop 128 " in _table_script(tmp_path, ROWS="PGD").stdout
    refused = _table_script(tmp_path, ROWS="PGD", HOLDOUT="250", CROP="299")
    assert refused.returncode == 2 and "CROP would mix" in refused.stderr
