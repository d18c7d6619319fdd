"""The defense submission contract, exercised the way the competition runs it.

``./run_defense.sh INPUT_DIR OUTPUT_FILE`` in a fresh process, then the output and stderr are checked
(``docs/reference/competition-contract.md``): one ``filename,label`` line per input file, no header, labels
1..1000, label 0 and an ``ERROR`` line for a file that cannot be read. Each run of the undefended
baseline costs seconds (TensorFlow start-up and three models), so a few runs, started together
on folders crafted to hold every case, are shared by many tests. A defense with a denoiser is
checked in-process through ``hgd.defenses.submission.classify_folder``.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hgd.cli import EXIT_REFUSED
from hgd.defenses.submission import classify_folder
from hgd.evaluation.clean import accuracy
from hgd.io.competition_csv import read_dataset_csv, read_predictions_csv
from hgd.io.images import load_image
from submission_process import Launched, run_submission

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO / "sample_data" / "images"
DATASET_CSV = REPO / "sample_data" / "dev_dataset.csv"
UNDEFENDED = REPO / "baselines" / "undefended"
HGD = REPO / "defense"
SUBMISSIONS = [UNDEFENDED, HGD]

# Renamed copies of sample images: new name -> ImageId of the original (identical bytes).
COPIES = {
    "28b7b933c8028c6e.png": "28b7b933c8028c6e",
    "name with spaces.png": "5f03b0c74dff01b5",
    "chat_été.png": "ccef0734c1a65549",
    "photo.jpg": "c7f0b2f1e9ee39d8",  # PNG bytes behind a .jpg name
    "comma,in,name.png": "a7f62f3c1d214de4",
    "no_extension": "8a449436c61da867",
}
RGBA = ("rgba.png", "fb061102a4e58b3e")  # the original's RGB with a random alpha: same pixels once alpha is dropped
GRAY, GRAY16 = "gray.png", "gray16.png"  # the same grey image, 8-bit and 16-bit (v * 257): decode identically
PALETTE = "palette.png"
WRONG_SIZE = "wrong_size.png"  # 320x240: resized, with a warning
UNREADABLE = ("truncated.png", "zero_bytes.png", "notes.txt")


def read_rows(path: pathlib.Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory) -> pathlib.Path:
    """One input folder holding every case a defense must survive (see the constants above)."""
    folder = tmp_path_factory.mktemp("mixed-input")
    for name, image_id in COPIES.items():
        shutil.copyfile(SAMPLE_IMAGES / f"{image_id}.png", folder / name)
    rgb = load_image(SAMPLE_IMAGES / f"{RGBA[1]}.png")[0]
    alpha = np.random.default_rng(0).integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(folder / RGBA[0])
    gray = Image.open(SAMPLE_IMAGES / "c6a3411a3987799f.png").convert("L")
    gray.save(folder / GRAY)
    Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(folder / GRAY16)
    Image.open(SAMPLE_IMAGES / "ace3716b60ac5843.png").convert("P", palette=Image.Palette.ADAPTIVE).save(
        folder / PALETTE)
    Image.open(SAMPLE_IMAGES / "f325c71d9f4290ee.png").resize((320, 240)).save(folder / WRONG_SIZE)
    png = (SAMPLE_IMAGES / "6c256e17545b25bb.png").read_bytes()
    (folder / UNREADABLE[0]).write_bytes(png[: len(png) // 2])
    (folder / UNREADABLE[1]).write_bytes(b"")
    (folder / UNREADABLE[2]).write_text("not an image\n")
    (folder / "a_subfolder").mkdir()  # must be ignored, and so must what it holds
    shutil.copyfile(SAMPLE_IMAGES / "52ed0e738b90d27a.png", folder / "a_subfolder" / "inside.png")

    # The fixture's own premises: the variants really decode to the same pixels as what they copy.
    def mode(name: str) -> str:
        with Image.open(folder / name) as im:
            return im.mode

    assert mode(GRAY16).startswith("I;16") and mode(RGBA[0]) == "RGBA" and mode(PALETTE) == "P"
    np.testing.assert_array_equal(load_image(folder / GRAY16)[0], load_image(folder / GRAY)[0])
    np.testing.assert_array_equal(load_image(folder / RGBA[0])[0], rgb)
    return folder


@pytest.fixture(scope="module")
def runs(mixed_dir, tmp_path_factory):
    """Every subprocess run of this module, started at once; each test waits for the one it checks.

    * ``mixed``: the undefended baseline on ``mixed_dir``, writing into folders that do not exist yet;
    * ``sample``: the undefended baseline on the sample dataset's images;
    * ``empty``: on an empty folder; ``missing``: on a folder that does not exist;
    * ``hgd``: the shipped HGD defense on the sample images (its trained weights are committed);
    * ``refused``: a copy of the HGD defense without its trained weights.

    Returns name -> ``(Launched, output path)``.
    """
    from hgd.defenses.defended import load_config

    root = tmp_path_factory.mktemp("runs")
    (root / "empty-input").mkdir()
    plan = {
        "mixed": (UNDEFENDED, mixed_dir, root / "mixed" / "not" / "yet" / "result.csv"),
        "sample": (UNDEFENDED, SAMPLE_IMAGES, root / "sample" / "result.csv"),
        "empty": (UNDEFENDED, root / "empty-input", root / "empty" / "result.csv"),
        "missing": (UNDEFENDED, root / "no such folder", root / "missing" / "result.csv"),
    }
    unweighted = root / "hgd-without-weights"
    shutil.copytree(HGD, unweighted, ignore=shutil.ignore_patterns("weights"))
    plan["refused"] = (unweighted, SAMPLE_IMAGES, root / "refused" / "out" / "result.csv")
    assert not load_config(HGD / "config.json").missing_weights(), "the shipped denoiser's weights are committed"
    plan["hgd"] = (HGD, SAMPLE_IMAGES, root / "hgd" / "result.csv")
    launched = {}
    try:
        for name, (submission, input_dir, output) in plan.items():
            assert not output.parent.exists()
            launched[name] = (Launched(root / name, submission, input_dir, output), output)
        yield launched
    finally:
        for run, _ in launched.values():
            run.stop()


@pytest.fixture(scope="module")
def mixed_run(runs) -> tuple[subprocess.CompletedProcess, pathlib.Path]:
    run, output = runs["mixed"]
    return run.result(), output


@pytest.fixture(scope="module")
def sample_run(runs) -> tuple[subprocess.CompletedProcess, pathlib.Path]:
    run, output = runs["sample"]
    return run.result(), output


@pytest.fixture(scope="module")
def sample_predictions(sample_run) -> dict[str, int]:
    result, output = sample_run
    assert result.returncode == 0, result.stderr
    return read_predictions_csv(output)


@pytest.fixture(scope="module")
def mixed_labels(mixed_run) -> dict[str, int]:
    """File name -> label from the mixed run's output (names kept verbatim)."""
    result, output = mixed_run
    assert result.returncode == 0, result.stderr
    return {name: int(label) for name, label in read_rows(output)}


# ------------------------------------------------------------------------------------ the mixed folder


@pytest.mark.slow
def test_mixed_run_exits_zero(mixed_run):
    result, output = mixed_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert output.is_file()
    assert "Traceback" not in result.stderr


def test_mixed_run_writes_one_line_per_regular_file(mixed_run, mixed_dir):
    _, output = mixed_run
    files = sorted(p.name for p in mixed_dir.iterdir() if p.is_file())
    assert len(files) == len(COPIES) + 5 + len(UNREADABLE)
    text = output.read_text(encoding="utf-8")
    assert text.endswith("\n") and text.count("\n") == len(files)  # no header, no blank or extra lines
    rows = read_rows(output)
    assert all(len(row) == 2 for row in rows), rows
    assert sorted(row[0] for row in rows) == files  # each file once; the sub-folder and its content: none
    assert all(row[1].isdigit() for row in rows), rows  # no header row, integer labels


def test_mixed_run_labels(mixed_labels):
    unreadable = {name: mixed_labels[name] for name in UNREADABLE}
    assert unreadable == dict.fromkeys(UNREADABLE, 0)
    readable = {name: label for name, label in mixed_labels.items() if name not in UNREADABLE}
    assert {*COPIES, RGBA[0], GRAY, GRAY16, PALETTE, WRONG_SIZE} == set(readable)
    assert all(1 <= label <= 1000 for label in readable.values()), readable


def test_mixed_run_reports_each_unreadable_file(mixed_run):
    result, _ = mixed_run
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    for name in UNREADABLE:
        assert [line for line in errors if name in line], (name, errors)
    assert len(errors) == len(UNREADABLE), errors  # readable files raise no error
    assert "Traceback" not in result.stderr


def test_mixed_run_warns_about_the_wrong_size(mixed_run):
    result, _ = mixed_run
    warnings = [line for line in result.stderr.splitlines() if WRONG_SIZE in line and "ERROR" not in line]
    assert any("320x240" in line for line in warnings), result.stderr[-3000:]


def test_identical_pixels_get_identical_labels(mixed_labels, sample_predictions):
    """Renaming a file, or storing the same pixels another way, does not change the prediction."""
    truth = read_dataset_csv(DATASET_CSV)
    copies = {**COPIES, RGBA[0]: RGBA[1]}
    right = {name: i for name, i in copies.items() if sample_predictions[i] == truth[i][0]}
    assert len(right) >= len(copies) - 1, "the undefended model should get (nearly) all these originals right"
    assert {name: mixed_labels[name] for name in right} == {name: sample_predictions[i] for name, i in right.items()}
    assert mixed_labels[GRAY16] == mixed_labels[GRAY]


# ------------------------------------------------------------------------------------- the sample data


def test_sample_run_accuracy(sample_run, sample_predictions):
    result, output = sample_run
    truth = read_dataset_csv(DATASET_CSV)
    assert set(sample_predictions) == set(truth)  # every ImageId has a line, and nothing else does
    assert len(read_rows(output)) == len(truth)
    assert accuracy(sample_predictions, truth) >= 0.8
    assert "ERROR" not in result.stderr


def test_shipped_hgd_defense_keeps_the_undefended_accuracy(runs, sample_predictions):
    """The trained denoiser in front of the same ensemble: at most one sample image lost to it."""
    run, output = runs["hgd"]
    result = run.result()
    assert result.returncode == 0, result.stderr[-3000:]
    truth = read_dataset_csv(DATASET_CSV)
    predictions = read_predictions_csv(output)
    assert set(predictions) == set(truth)
    assert accuracy(predictions, truth) >= accuracy(sample_predictions, truth) - 1 / len(truth)


# --------------------------------------------------------------------------------- folders and arguments


def test_empty_folder_gives_an_empty_result(runs):
    run, output = runs["empty"]
    result = run.result()
    assert result.returncode == 0, result.stderr[-3000:]
    assert output.read_bytes() == b""


def test_missing_input_folder_fails_cleanly(runs):
    run, output = runs["missing"]
    result = run.result()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    missing = run.process.args[1]
    message = [line for line in result.stderr.splitlines() if missing in line]
    assert message and "does not exist" in message[0], result.stderr[-3000:]
    assert not output.exists()


@pytest.mark.parametrize("args", [(), ("in",), ("in", "out.csv", "extra")], ids=["none", "one", "three"])
def test_wrong_number_of_arguments(args):
    result = run_submission(UNDEFENDED, *args)
    assert result.returncode == 2
    assert "usage" in result.stderr and "INPUT_DIR OUTPUT_FILE" in result.stderr
    assert result.stdout == ""


def test_hgd_defense_refuses_without_trained_weights(runs):
    from hgd.defenses.defended import load_config

    run, output = runs["refused"]
    config = load_config(pathlib.Path(run.process.args[0]).parent / "config.json")
    assert config.members and config.denoisers()
    weights = [spec.weights for spec in config.denoisers()]
    assert config.missing_weights() == weights
    result = run.result()
    assert result.returncode == EXIT_REFUSED == 2
    assert "REFUSED" in result.stderr and "Traceback" not in result.stderr
    for path in weights:
        assert str(path) in result.stderr
    assert not output.exists() and not output.parent.exists()


# ------------------------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("submission", SUBMISSIONS, ids=lambda p: p.name)
def test_metadata(submission):
    from hgd.defenses.defended import load_config

    metadata = json.loads((submission / "metadata.json").read_text())
    assert metadata["type"] == "defense"
    for key in ("container", "container_gpu", "entry_point"):
        assert isinstance(metadata[key], str) and metadata[key], key
    entry = submission / metadata["entry_point"]
    assert entry.is_file() and os.access(entry, os.X_OK)
    assert entry.read_bytes().startswith(b"#!")
    config = load_config(submission / "config.json")
    assert config.members and config.batch_size >= 1
    assert bool(config.denoisers()) == (submission == HGD)


# ------------------------------------------------------------------------------ a defense with a denoiser


@pytest.fixture(scope="module")
def few_images(tmp_path_factory) -> pathlib.Path:
    """Six of the sample images (in-process runs through a denoiser are slow on a CPU)."""
    folder = tmp_path_factory.mktemp("few-images")
    for path in sorted(SAMPLE_IMAGES.glob("*.png"))[:6]:
        shutil.copyfile(path, folder / path.name)
    return folder


def _classify(tmp_path: pathlib.Path, name: str, member: dict, images: pathlib.Path) -> dict[str, int]:
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps({"members": [member], "batch_size": 6}))
    output = tmp_path / f"{name}.csv"
    assert classify_folder(config, images, output) == len(list(images.iterdir()))
    labels = read_predictions_csv(output)
    assert len(labels) == len(list(images.iterdir()))
    return labels


def test_denoiser_is_in_the_decision_path(tmp_path, dunet_weights, few_images):
    lite0 = {"model": "efficientnet_lite0"}

    def behind(kernel: str) -> dict:  # the weights are named relative to the config file's folder
        shutil.copyfile(dunet_weights[kernel], tmp_path / f"{kernel}.weights.h5")
        return {**lite0, "denoiser": {"weights": f"{kernel}.weights.h5", "width": dunet_weights["width"]}}

    plain = _classify(tmp_path, "plain", lite0, few_images)
    truth = read_dataset_csv(DATASET_CSV)
    assert sum(plain[i] == truth[i][0] for i in plain) >= len(plain) - 2, plain  # a working classifier
    identity = _classify(tmp_path, "identity", behind("identity"), few_images)
    assert identity == plain  # x + 0: exactly the undefended classifier
    scrambled = _classify(tmp_path, "large", behind("large"), few_images)
    changed = [name for name in plain if scrambled[name] != plain[name]]
    assert len(changed) >= len(plain) // 2, (plain, scrambled)  # the denoiser's output is what gets classified


def test_committed_weights_keep_to_the_40_mb_budget():
    """The training issue's budget counts each distinct weights file once (git stores one blob for the
    attacks' copies of the shipped denoiser); a new denoiser must fit in what is left (float16 halves one)."""
    listed = subprocess.run(["git", "ls-files", "-s", "*.h5"], cwd=REPO, capture_output=True, text=True, check=True)
    blobs = {line.split()[1]: line.split("\t")[1] for line in listed.stdout.splitlines()}
    assert "defense/weights/fgd_lite_ensemble.weights.h5" in blobs.values()
    assert sum((REPO / path).stat().st_size for path in blobs.values()) <= 40 * 1024 * 1024


def test_score_says_how_many_images_had_no_prediction(tmp_path):
    """Scoring predictions for a subset counts the rest wrong, and says so with the subset's own accuracy."""
    from hgd.evaluation.clean import score_line

    labels = {f"img{i}": (i + 1, 0) for i in range(5)}
    predictions = {"img0": 1, "img1": 2, "img2": 999, "stray": 4}
    line = score_line(tmp_path / "out.csv", predictions, labels)
    assert "accuracy 40.0% on 5 images" in line
    assert "2 of them have no prediction" in line and "66.7% on the 3 predicted" in line
    assert "1 predictions name images not in the dataset" in line
    assert "no prediction" not in score_line(tmp_path / "out.csv", {k: v[0] for k, v in labels.items()}, labels)
    assert "none of them has a prediction" in score_line(tmp_path / "out.csv", {}, labels)


@pytest.mark.slow
def test_demo_runs_the_shipped_defenses_and_goes_on_past_one_that_refuses(tmp_path):
    """`python -m hgd.demo`, the README's first command: each submission's predictions and accuracy on the
    sample images; a submission that refuses (here: the HGD defense without its weights) is reported and the
    demo goes on to the next."""
    unweighted = tmp_path / "hgd-without-weights"
    shutil.copytree(HGD, unweighted, ignore=shutil.ignore_patterns("weights"))
    result = subprocess.run([sys.executable, "-m", "hgd.demo", "--out", str(tmp_path / "out"), "--submissions",
                             str(unweighted), str(HGD), str(UNDEFENDED)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    blocks = result.stdout.split("== ")[1:]
    assert [block.splitlines()[0] for block in blocks] == [str(unweighted), "defense", "baselines/undefended"]
    assert "did not run (exit" in blocks[0]
    truth = read_dataset_csv(DATASET_CSV)
    for block, name in zip(blocks[1:], ("defense", "undefended")):
        predictions = read_predictions_csv(tmp_path / "out" / f"{name}.csv")
        assert set(predictions) == set(truth)
        assert f"accuracy: {100 * accuracy(predictions, truth):.1f}% on {len(truth)} images" in block
