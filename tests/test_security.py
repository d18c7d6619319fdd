"""The security evaluation (``python -m hgd.cli.security``): runs, resumes, reports, and flags what is suspicious."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from hgd.cli import security as security_cli
from hgd.evaluation import security
from hgd.evaluation.security import SecuritySpec, sanity_checks


def test_sanity_checks_flag_masked_gradients_and_rising_curves():
    spec = SecuritySpec(epsilons=(4, 8), check_epsilon=4, tolerance=0.02)
    honest = {"fgsm": {4: 0.5, 8: 0.3}, "pgd": {4: 0.1, 8: 0.0}, "transfer": {4: 0.6, 8: 0.4},
              "transfer_di_mifgsm": {4: 0.5, 8: 0.3}, "square": {4: 0.4, 8: 0.2}, "pgd_stronger": {4: 0.1}}
    assert all(ok for _, ok, _ in sanity_checks(honest, spec))
    beaten = {**honest, "transfer_di_mifgsm": {4: 0.05, 8: 0.0}}  # an oblivious attack beats defense-aware PGD
    assert [name for name, ok, _ in sanity_checks(beaten, spec) if not ok] == [
        "white-box >= transfer (di_mifgsm) (eps 4)"]
    one_image = {"fgsm": {4: 0.12, 8: 0.14}}  # one image of 50 up: exactly the tolerance, not beyond it
    assert all(ok for _, ok, _ in sanity_checks(one_image, spec))
    # Gradient masking: the gradient-free and transfer attacks beat PGD; more steps help; PGD never reaches 0.
    masked = {"fgsm": {4: 0.5, 8: 0.6}, "pgd": {4: 0.5, 8: 0.45}, "transfer": {4: 0.3, 8: 0.2},
              "square": {4: 0.2, 8: 0.1}, "pgd_stronger": {4: 0.3}}
    failed = {name for name, ok, _ in sanity_checks(masked, spec) if not ok}
    assert failed == {"white-box >= transfer (eps 4)", "white-box >= transfer (eps 8)",
                      "white-box >= gradient-free (eps 4)", "white-box >= gradient-free (eps 8)",
                      "fgsm: accuracy falls with eps (4 -> 8)", "more steps/restarts do not help (eps 4)",
                      "pgd reaches 0 accuracy"}


@pytest.mark.slow
def test_evaluation_runs_resumes_and_reports(defense_dir, small_source, tmp_path):
    out = tmp_path / "out"
    cache = tmp_path / "transfer_cache"
    args = [str(defense_dir), str(small_source), str(out), "--epsilons", "2", "8", "--steps", "2", "--restarts", "1",
            "--transfer-steps", "2", "--transfer-attacks", "di_mifgsm", "--queries", "3", "--check-epsilon", "2",
            "--batch-size", "2", "--transfer-cache", str(cache)]
    with pytest.raises(SystemExit) as exit_info:
        security_cli.main(args)
    assert exit_info.value.code == 0
    results = json.loads((out / security.RESULTS_FILE).read_text())
    assert len(results["images"]) == 4 and len(results["clean"]) == 4
    runs = results["runs"]
    for key in ("fgsm@2", "pgd@2", "transfer@2", "transfer_di_mifgsm@2", "square@2", "fgsm@8", "pgd@8", "transfer@8",
                "transfer_di_mifgsm@8", "pgd_stronger@2"):
        assert len(runs[key]) == 4, key
    assert "square@8" not in runs and not any(k.startswith("transfer_ti") for k in runs)  # only what was asked
    cached = sorted(cache.iterdir())
    assert [c.name.split("-")[:2] for c in cached] == [["efficientnet_lite0", "transfer"],
                                                       ["efficientnet_lite0", "transfer_di_mifgsm"]]
    assert all(len(list(c.glob("*.npy"))) == 4 for c in cached)  # 2 eps x 2 batches each
    # pgd goes on doubling eps past 8 until accuracy 0 (or 255).
    beyond = sorted(int(k.split("@")[1]) for k in runs if k.startswith("pgd@"))
    assert beyond[:2] == [2, 8] and all(b == min(2 * a, 255) for a, b in zip(beyond[1:], beyond[2:]))
    assert sum(runs[f"pgd@{beyond[-1]}"]) == 0 or beyond[-1] == 255
    assert len(results["loss_curves"]["pgd@2"]) == 2 and len(results["loss_curves"]["pgd@2"][0]) == 3  # 2 batches, 3 iterates
    report = (out / security.REPORT_FILE).read_text()
    assert "## Accuracy vs epsilon" in report and "**worst case**" in report and "## Sanity checks" in report
    assert "| transfer_di_mifgsm |" in report and "white-box >= transfer (di_mifgsm) (eps 8)" in report
    per_example = (out / security.PER_EXAMPLE_FILE).read_text().splitlines()
    assert per_example[0].startswith("ImageId,Clean,WorstEps2,WorstEps8") and len(per_example) == 5
    for name in (security.CURVES_FILE, security.LOSS_CURVE_FILE):
        assert (out / name).stat().st_size > 0

    stamp = (out / security.RESULTS_FILE).stat().st_mtime_ns
    with pytest.raises(SystemExit):
        security_cli.main(args)  # everything finished: nothing is attacked again
    assert (out / security.RESULTS_FILE).stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit) as exit_info:
        security_cli.main([*args, "--seed", "1"])
    assert exit_info.value.code == 2  # another evaluation in the same folder is refused


def test_a_runner_output_without_the_defense_is_refused_before_any_attack(defense_dir, small_source, tmp_path):
    runner_output = tmp_path / "runner"
    runner_output.mkdir()
    (runner_output / "defense_results.csv").write_text("SubmissionID,Score\nundefended,0.384\ndefense,\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        security_cli.main([str(defense_dir), str(small_source), str(out), "--runner-output", str(runner_output)])
    assert exit_info.value.code == 2 and not out.exists()  # nothing was attacked, nothing written
    assert security.read_oblivious_score(runner_output, "undefended")[1] == 0.384


def test_transfer_examples_are_shared_by_defenses_over_the_same_classifiers(defense_dir, small_source, tmp_path):
    """A second defense over Lite0 reads the first one's transfer examples, each row's in its own folder; an
    undefended one has no transfer row."""
    spec = SecuritySpec(epsilons=(4,), steps=1, restarts=1, transfer_steps=1, transfer_attacks=("di_mifgsm",),
                        queries=0, limit=2)
    cache = tmp_path / "cache"
    first = security.Evaluation(defense_dir, small_source, tmp_path / "first", spec, 2, cache)
    kinds = ("transfer", "transfer_di_mifgsm")
    accuracy = [first.run(kind, 4) for kind in kinds]
    written = sorted(cache.glob("*/*.npy"))
    assert [path.parent for path in written] == [first.transfer_dir(kind) for kind in kinds]
    other = tmp_path / "other_defense"
    shutil.copytree(defense_dir, other)
    second = security.Evaluation(other, small_source, tmp_path / "second", spec, 2, cache)
    assert [second.transfer_dir(kind) for kind in kinds] == [first.transfer_dir(kind) for kind in kinds]
    assert second.kinds(4) == ("fgsm", "pgd", *kinds)
    second.models.surrogate = None  # attacking it would fail: the examples must come from the cache
    assert [second.run(kind, 4) for kind in kinds] == accuracy and sorted(cache.glob("*/*.npy")) == written
    assert all(np.load(path).dtype == np.uint8 for path in written)
    undefended = tmp_path / "undefended"
    undefended.mkdir()
    (undefended / "config.json").write_text(json.dumps({"members": [{"model": "efficientnet_lite0"}]}))
    assert security.Evaluation(undefended, small_source, tmp_path / "third", spec, 2).kinds(4) == ("fgsm", "pgd")


def test_pgd_through_the_defense_stops_each_image_at_its_first_saved_success():
    spec = SecuritySpec(steps=10, restarts=2, transfer_steps=5)
    pgd, stronger, transfer = spec.attack("pgd", 4), spec.attack("pgd", 4, stronger=True), spec.attack("transfer", 4)
    assert pgd.early_stop and stronger.early_stop and not transfer.early_stop
    assert (stronger.steps, stronger.restarts) == (20, 3) and (transfer.steps, transfer.restarts) == (5, 1)
    assert pgd.loss == transfer.loss == "margin"


def test_the_transfer_rows_run_the_shipped_attacks_seeded_per_batch():
    from hgd.attacks.factory import SHIPPED_TRANSFER_ATTACKS

    spec = SecuritySpec()
    assert spec.transfer_kinds() == ("transfer", "transfer_di_mifgsm", "transfer_ti_di_mifgsm",
                                     "transfer_si_ni_ti_di_fgsm")
    attack = spec.attack("transfer_si_ni_ti_di_fgsm", 16, seed=7)
    shipped = SHIPPED_TRANSFER_ATTACKS["si_ni_ti_di_fgsm"]
    assert type(attack).__name__ == "ScaleInvariantNesterovMethod"
    assert (attack.steps, attack.scale_copies, attack.ti_kernel, attack.seed) == (
        shipped["steps"], shipped["scale_copies"], shipped["ti_kernel"], 7)
    assert spec.transfer_settings("transfer_di_mifgsm") != spec.transfer_settings("transfer_ti_di_mifgsm")
    with pytest.raises(ValueError, match="unknown transfer attack.*shipped"):
        SecuritySpec(transfer_attacks=("ti_mifgsm",))
    assert SecuritySpec(transfer_attacks=("di_mifgsm", "di_mifgsm")).transfer_kinds() == ("transfer",
                                                                                         "transfer_di_mifgsm")
    with pytest.raises(ValueError, match="check_epsilon"):
        SecuritySpec(epsilons=(2, 8), check_epsilon=4)


def _results(defense: str, runs: dict[str, list[bool]], images=("a", "b", "c", "d")) -> dict:
    spec = dataclasses.asdict(SecuritySpec(epsilons=(2, 4), check_epsilon=4, queries=0))
    return {"defense": f"/x/{defense}", "dataset": "/x/dev", "spec": spec, "images": list(images),
            "clean": [True, True, True, False], "runs": runs, "loss_curves": {}}


def test_comparison_tables_defenses_side_by_side_and_refuses_other_images(tmp_path):
    from hgd.evaluation import security_comparison as security_compare

    runs = {"undefended": {"fgsm@2": [True, False, False, False], "pgd@2": [False] * 4, "pgd@4": [False] * 4},
            "hgd": {"fgsm@2": [True, True, False, False], "pgd@2": [True, False, False, True],
                    "pgd@4": [True, False, False, False], "transfer@4": [True, True, True, False],
                    "transfer_di_mifgsm@4": [True, True, False, False], "square@4": [False]}}  # interrupted after one image: no column, no part in the worst case
    named = {}
    for name, run in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / security.RESULTS_FILE).write_text(json.dumps(_results(name, run)))
        named[name] = tmp_path / name
    runner = tmp_path / "runner"
    runner.mkdir()
    (runner / "defense_results.csv").write_text("SubmissionID,Score\nhgd,0.39\n")
    table = security_compare.compare(named, tmp_path / "out", runner).splitlines()
    assert table[0].startswith("| defense | clean | oblivious score | PGD eps 2 | PGD eps 4 | worst eps 2 | worst eps 4")
    undefended, hgd = ([cell.strip() for cell in line.strip("|").split("|")] for line in table[2:4])
    assert undefended[1:7] == ["0.75", "-", "0.00", "0.00", "0.00", "0.00"]
    # hgd: image d is wrong clean, so its pgd@2 success does not count in the worst case
    assert hgd[1:7] == ["0.75", "0.390", "0.50", "0.25", "0.25", "0.25"]
    assert table[0].endswith("| fgsm eps 4 | transfer eps 4 | transfer_di_mifgsm eps 4 | square eps 4 "
                             "| pgd_stronger eps 4 | flagged |")
    assert hgd[7:] == ["-", "0.75", "0.50", "-", "-", "pgd reaches 0 accuracy"]  # fgsm .. stronger at eps 4
    assert undefended[-1] == "none"
    assert (tmp_path / "out" / security_compare.PLOT_FILE).stat().st_size > 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / security.RESULTS_FILE).write_text(
        json.dumps(_results("other", runs["hgd"], images=("a", "b", "c", "e"))))
    with pytest.raises(ValueError, match="other images"):
        security_compare.compare({**named, "other": tmp_path / "other"}, tmp_path / "out2", None)
