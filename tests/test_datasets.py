"""The one dataset reader (``hgd.io.datasets``): both label formats, and one rule for what does not match."""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest

from hgd.io.datasets import DatasetError, load_pixels, read_dataset

SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "sample_data"


def test_competition_format_reads_labels_and_targets_in_id_order():
    dataset = read_dataset(SAMPLE)
    assert len(dataset.images) == 22 and list(dataset.image_ids) == sorted(dataset.image_ids)
    assert dataset.problems == () and dataset.competition_format() is dataset
    first = dataset.image_ids[0]
    assert dataset.true_label(first) == dataset.images[0].label0 + 1  # 1..1000 in the CSV, 0-based in code
    assert 1 <= dataset.target_class(first) <= 1000
    assert dataset.image_path(first) == SAMPLE / "images" / f"{first}.png"


def _pool(tmp_path: pathlib.Path, rows: str, files: list[str]) -> pathlib.Path:
    pool = tmp_path / "pool"
    (pool / "images").mkdir(parents=True)
    source = sorted((SAMPLE / "images").glob("*.png"))[0]
    for name in files:
        shutil.copy(source, pool / "images" / name)
    (pool / "labels.csv").write_text("filename,label0,wnid,source\n" + rows)
    return pool


def test_pool_format_has_no_targets_and_the_runner_refuses_it(tmp_path):
    dataset = read_dataset(_pool(tmp_path, "b.png,7,n0,t\na.png,3,n0,t\n", ["a.png", "b.png"]))
    assert [(i.image_id, i.label0, i.target0) for i in dataset.images] == [("a", 3, None), ("b", 7, None)]
    with pytest.raises(DatasetError, match="dev_dataset.csv"):
        dataset.competition_format()
    with pytest.raises(DatasetError, match="no target class"):
        dataset.target_class("a")


def test_what_does_not_match_is_left_out_and_named(tmp_path):
    dataset = read_dataset(_pool(tmp_path, "a.png,3,n0,t\ngone.png,4,n0,t\n", ["a.png", "stray.png"]))
    assert dataset.image_ids == ("a",)
    assert len(dataset.problems) == 2
    assert "gone.png has no image file" in dataset.problems[0] and "stray.png has no row" in dataset.problems[1]


@pytest.mark.parametrize("labels, files, message", [
    (None, ["a.png"], "neither dev_dataset.csv nor labels.csv"),
    ("gone.png,4,n0,t\n", ["a.png"], "no usable image"),
    ("a.png,not-a-class,n0,t\n", ["a.png"], "unreadable labels"),
])
def test_an_unusable_folder_is_a_clear_error(tmp_path, labels, files, message):
    pool = _pool(tmp_path, labels or "", files)
    if labels is None:
        (pool / "labels.csv").unlink()
    with pytest.raises(DatasetError, match=message):
        read_dataset(pool)
    with pytest.raises(DatasetError, match="is not a folder"):
        read_dataset(tmp_path / "nowhere")


def test_limit_and_pixels(tmp_path):
    ids, images, labels0 = load_pixels(read_dataset(SAMPLE, limit=3))
    assert len(ids) == 3 and images.shape == (3, 299, 299, 3) and images.dtype == np.uint8
    assert labels0.tolist() == [read_dataset(SAMPLE).images[k].label0 for k in range(3)]
    pool = _pool(tmp_path, "a.png,3,n0,t\n", [])
    (pool / "images" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="unreadable images"):
        load_pixels(read_dataset(pool))
