"""The attack submissions (``attacks/*``), run the way the competition runs them.

``./run_attack.sh INPUT_DIR OUTPUT_DIR MAX_EPSILON`` in a fresh process; then the outputs and
stderr are checked against the contract (``docs/reference/competition-contract.md``): a same-named 299x299
RGB uint8 PNG for each readable input, inside the epsilon box of the (converted) input; an
``ERROR`` line per unreadable file; ``target_class.csv`` never taken for an image; a bad
MAX_EPSILON refused with exit 2. Runs that load models cost seconds each, so the few of them
start at once (module fixture) and each test waits for the one it checks.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from hgd.io.images import load_image
from submission_process import Launched, run_submission

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO / "sample_data" / "images"
ATTACKS = REPO / "attacks"
SUBMISSIONS = sorted(p for p in ATTACKS.iterdir() if (p / "metadata.json").is_file())
EPSILON = 8

SAMPLES = ["28b7b933c8028c6e", "5f03b0c74dff01b5", "ccef0734c1a65549"]
READABLE = [f"{i}.png" for i in SAMPLES] + ["name with spaces.png", "rgba.png", "wrong_size.png"]
UNREADABLE = ["truncated.png", "notes.txt"]
TARGETED_IMAGES = ["c7f0b2f1e9ee39d8", "a7f62f3c1d214de4", "8a449436c61da867", "fb061102a4e58b3e"]
TARGETS = {"c7f0b2f1e9ee39d8": 1, "a7f62f3c1d214de4": 500, "8a449436c61da867": 1000, "fb061102a4e58b3e": 42}


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory) -> pathlib.Path:
    """Sample images plus every odd case: spaces, RGBA, a wrong size, a truncated PNG, a text file,
    and a ``target_class.csv`` (not an image, even for an untargeted attack)."""
    folder = tmp_path_factory.mktemp("mixed-input")
    for image_id in SAMPLES:
        shutil.copyfile(SAMPLE_IMAGES / f"{image_id}.png", folder / f"{image_id}.png")
    shutil.copyfile(SAMPLE_IMAGES / "52ed0e738b90d27a.png", folder / "name with spaces.png")
    rgb = np.asarray(Image.open(SAMPLE_IMAGES / "fb061102a4e58b3e.png").convert("RGB"))
    alpha = np.random.default_rng(0).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(folder / "rgba.png")
    Image.open(SAMPLE_IMAGES / "f325c71d9f4290ee.png").resize((320, 240)).save(folder / "wrong_size.png")
    png = (SAMPLE_IMAGES / "6c256e17545b25bb.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "target_class.csv").write_text("".join(f"{i}.png,7\n" for i in SAMPLES))
    return folder


@pytest.fixture(scope="module")
def targeted_dir(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("targeted-input")
    for image_id in TARGETED_IMAGES:
        shutil.copyfile(SAMPLE_IMAGES / f"{image_id}.png", folder / f"{image_id}.png")
    (folder / "target_class.csv").write_text("".join(f"{i}.png,{t}\n" for i, t in TARGETS.items()))
    return folder


@pytest.fixture(scope="module")
def runs(mixed_dir, targeted_dir, tmp_path_factory):
    """Every model-loading run of this module, started at once. Name -> ``(Launched, output dir)``."""
    root = tmp_path_factory.mktemp("runs")
    plan = {
        "noop": (ATTACKS / "noop", mixed_dir, root / "noop" / "not" / "yet"),
        "fgsm": (ATTACKS / "fgsm", mixed_dir, root / "fgsm"),
        "targeted": (ATTACKS / "step_target_class", targeted_dir, root / "targeted"),
    }
    launched = {}
    try:
        for name, (submission, input_dir, output) in plan.items():
            eps = 16 if name == "targeted" else EPSILON
            launched[name] = (Launched(root / name, submission, input_dir, output, eps), output)
        yield launched
    finally:
        for run, _ in launched.values():
            run.stop()


@pytest.fixture(scope="module", autouse=True)
def _start_runs_first(runs):
    """The runs start before the module's first test, so the cheap tests overlap with them."""


def finished(runs, name: str) -> tuple[subprocess.CompletedProcess, pathlib.Path]:
    run, output = runs[name]
    result = run.result()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result, output


# --------------------------------------------------------------------------------- untargeted runs


@pytest.mark.parametrize("name", ["noop", "fgsm"])
def test_writes_one_valid_png_per_readable_input(runs, mixed_dir, name):
    result, output = finished(runs, name)
    assert sorted(p.name for p in output.iterdir()) == sorted(READABLE)
    for file_name in READABLE:
        with Image.open(output / file_name) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (299, 299))
            adv = np.asarray(im)
        clean, _ = load_image(mixed_dir / file_name)  # the converted input (alpha dropped, resized)
        assert np.abs(adv.astype(np.int16) - clean).max() <= EPSILON, file_name
        if name == "noop":
            np.testing.assert_array_equal(adv, clean)
        else:
            assert np.abs(adv.astype(np.int16) - clean).max() == EPSILON, file_name


@pytest.mark.parametrize("name", ["noop", "fgsm"])
def test_reports_each_unreadable_file_and_only_those(runs, name):
    result, _ = finished(runs, name)
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ")]
    assert sorted(line.split(":")[1].strip() for line in errors) == sorted(UNREADABLE), errors
    assert "target_class.csv" not in "\n".join(errors)
    assert "wrong_size.png" in result.stderr and "resized" in result.stderr  # the conversion is reported


# ----------------------------------------------------------------------------------- targeted run


def test_targeted_run_writes_every_image(runs, targeted_dir):
    result, output = finished(runs, "targeted")
    assert sorted(p.name for p in output.iterdir()) == sorted(f"{i}.png" for i in TARGETED_IMAGES)
    for image_id in TARGETED_IMAGES:
        adv = np.asarray(Image.open(output / f"{image_id}.png"))
        clean, _ = load_image(targeted_dir / f"{image_id}.png")
        assert adv.shape == (299, 299, 3) and adv.dtype == np.uint8
        assert np.abs(adv.astype(np.int16) - clean).max() == 16
    assert "ERROR" not in result.stderr and "no target" not in result.stderr


def test_an_image_without_a_target_gets_its_least_likely_class(caplog):
    """In-process on a tiny model (a missing entry in the ensemble run would cost one more compilation)."""
    import keras

    from hgd.attacks.submission import choose_targets

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(5)])
    images = np.random.RandomState(0).randint(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    least_likely = np.asarray(model(images.astype(np.float32))).argmin(1)
    chosen = choose_targets(["a.png", "b.png", "IMG3.png"], {"a": 4, "IMG3": 0}, model, images)
    np.testing.assert_array_equal(chosen, [4, least_likely[1], 0])
    assert "b.png: no target in target_class.csv" in caplog.text


# ------------------------------------------------------------------------ refusals (no model loaded)


@pytest.mark.parametrize("epsilon", ["abc", "-1", "300", "4.5", ""])
def test_bad_max_epsilon_exits_2_without_traceback(mixed_dir, tmp_path, epsilon):
    result = run_submission(ATTACKS / "noop", mixed_dir, tmp_path / "out", epsilon)
    assert result.returncode == 2
    assert "MAX_EPSILON" in result.stderr and "0..255" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_wrong_argument_count_prints_usage(mixed_dir, tmp_path):
    result = run_submission(ATTACKS / "noop", mixed_dir, tmp_path / "out")
    assert result.returncode == 2 and "usage:" in result.stderr


def test_missing_input_folder_exits_2(tmp_path):
    result = run_submission(ATTACKS / "noop", tmp_path / "no such folder", tmp_path / "out", 8)
    assert result.returncode == 2 and "ERROR:" in result.stderr and "Traceback" not in result.stderr


def test_empty_input_folder_creates_the_output_folder(tmp_path):
    (tmp_path / "in").mkdir()
    result = run_submission(ATTACKS / "random_noise", tmp_path / "in", tmp_path / "out" / "deep", 8)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "deep").is_dir() and not any((tmp_path / "out" / "deep").iterdir())


@pytest.mark.parametrize("config, message", [
    ({"attack": "deepfool"}, "'attack' must be one of"),
    ({"attack": "fgsm", "steps": 3, "model": {"members": ["efficientnet_lite0"]}}, "takes no parameter"),
    ({"attack": "ifgsm", "stpes": 3, "model": {"members": ["efficientnet_lite0"]}}, "unknown key"),
    ({"attack": "fgsm"}, "'model' must be"),
    ({"attack": "fgsm", "model": {"members": ["resnet50"]}}, "unknown target model"),
    ({"attack": "fgsm", "model": {"members": [{"model": "efficientnet_lite0", "denoiser": {}}]}}, "defense_config"),
    ({"attack": "bim", "steps": 0, "model": {"members": ["efficientnet_lite0"]}}, "steps"),
    ({"attack": "bim", "restarts": 2, "model": {"members": ["efficientnet_lite0"]}}, "takes no parameter"),
    ({"attack": "pgd", "loss": "hinge", "model": {"members": ["efficientnet_lite0"]}}, "loss must be one of"),
    ({"attack": "square", "queries": 0, "model": {"members": ["efficientnet_lite0"]}}, "queries"),
    ({"attack": "pgd", "model": {"members": ["efficientnet_lite0"], "eot_draws": 3}}, "'model' must be"),
    ({"attack": "pgd", "model": {"defense_config": "d.json", "eot_draws": 0}}, "eot_draws"),
    ({"attack": "mifgsm", "diversity_prob": 0.5, "model": {"members": ["efficientnet_lite0"]}}, "takes no parameter"),
    ({"attack": "ti_di_mifgsm", "ti_kernel": 4, "model": {"members": ["efficientnet_lite0"]}}, "ti_kernel"),
    ({"attack": "si_ni_ti_di_fgsm", "mu": 0.0, "model": {"members": ["efficientnet_lite0"]}}, "nesterov"),
])
def test_bad_config_is_refused_with_a_clear_message(tmp_path, config, message):
    from hgd.attacks.config import load_attack_config

    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load_attack_config(path)


def test_read_targets(tmp_path):
    from hgd.attacks.submission import read_targets

    path = tmp_path / "target_class.csv"
    path.write_text("a.png,1\nb.png,1000\nIMG000003,17\nc.png,0\nd.png,x\n\ne.png\n")
    assert read_targets(path) == {"a": 0, "b": 999, "IMG000003": 16}


# --------------------------------------------------------------------------------- the submissions


def test_submissions_are_the_expected_set():
    assert {p.name for p in SUBMISSIONS} == {"noop", "random_noise", "fgsm", "ifgsm", "mifgsm",
                                             "di_mifgsm", "ti_di_mifgsm", "si_ni_ti_di_fgsm",
                                             "step_target_class", "iter_target_class", "ti_di_iter_target_class",
                                             "adaptive_pgd", "adaptive_pgd_targeted", "square"}


@pytest.mark.parametrize("name", ["mifgsm", "di_mifgsm", "ti_di_mifgsm", "si_ni_ti_di_fgsm"])
def test_the_evaluations_transfer_attacks_are_the_shipped_submissions(name):
    """The security evaluation and the held-out check run these settings: they must be the submission's."""
    from hgd.attacks.factory import SHIPPED_TRANSFER_ATTACKS, all_parameters

    config = json.loads((ATTACKS / name / "config.json").read_text())
    assert {k: v for k, v in config.items() if k == "attack" or k in all_parameters()} == SHIPPED_TRANSFER_ATTACKS[name]
    assert config["model"] == {"members": ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]}
    assert sorted(SHIPPED_TRANSFER_ATTACKS) == sorted(["mifgsm", "di_mifgsm", "ti_di_mifgsm", "si_ni_ti_di_fgsm"])


@pytest.mark.parametrize("submission", SUBMISSIONS, ids=lambda p: p.name)
def test_submission_metadata_and_config_are_valid(submission):
    from hgd.attacks.config import load_attack_config

    metadata = json.loads((submission / "metadata.json").read_text())
    assert metadata["type"] in {"attack", "targeted_attack"}
    assert metadata["container"] and metadata["container_gpu"]
    entry = submission / metadata["entry_point"]
    assert entry.is_file() and os.access(entry, os.X_OK)
    assert entry.read_text().startswith("#!/bin/sh\n")
    assert entry.read_text() == (ATTACKS / "noop" / "run_attack.sh").read_text()  # one script, configs differ
    config = load_attack_config(submission / "config.json")
    assert config.targeted == (metadata["type"] == "targeted_attack")
    assert f"`{submission.name}`" in (ATTACKS / "README.md").read_text()
    # defense-aware = attacks a defense (reports keep those apart from the oblivious set)
    assert metadata.get("defense_aware", False) is bool({"defense", "defense_config"} & set(config.model or {}))
