"""The competition's CSV files: the dataset's labels (``dev_dataset.csv``) and a defense's predictions.

The readers follow the competition's parsers: columns by name for the dataset (strict: it is ground
truth); lenient ``filename,label`` rows for a defense's output (scored, not validated).
"""

from __future__ import annotations

import csv
import operator
import os
import pathlib
from typing import IO, Any
from collections.abc import Iterable

from hgd.io.files import write_atomically
from hgd.io.labels import NUM_LABELS

StrPath = str | os.PathLike[str]

_DATASET_COLUMNS = ("ImageId", "TrueLabel", "TargetClass")
_PREDICTION_SUFFIXES = (".png", ".jpg")

def read_dataset_csv(path: StrPath) -> dict[str, tuple[int, int]]:
    """Reads the competition's dataset CSV: ImageId -> (TrueLabel, TargetClass).

    Columns are found by name, like the organizers' code, so extra or
    reordered columns are fine. This is ground truth, so unlike the
    predictions reader it is strict: any malformed row is an error.

    Args:
        path: The CSV, with the header
            ``ImageId,URL,x1,y1,x2,y2,TrueLabel,TargetClass,...``.

    Returns:
        Labels (1..1000) by ImageId, in file order.

    Raises:
        ValueError: A required column is missing from the header, or a row
            lacks a value, has a non-integer or out-of-range label, or repeats
            an ImageId; the message gives the line number.
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _DATASET_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: header lacks column(s) {', '.join(missing)}")
        labels: dict[str, tuple[int, int]] = {}
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            image_id, labels_of_row = _parse_dataset_row(row, where)
            if image_id in labels:
                raise ValueError(f"{where}: ImageId {image_id!r} appears twice")
            labels[image_id] = labels_of_row
    return labels


def _parse_dataset_row(row: dict[str, str | None], where: str) -> tuple[str, tuple[int, int]]:
    """Validates one dataset row; ``where`` names the file and line for errors."""
    values = {column: row.get(column) for column in _DATASET_COLUMNS}
    absent = [column for column, value in values.items() if not (value or "").strip()]
    if absent:
        raise ValueError(f"{where}: missing value for {', '.join(absent)}")
    true_label = _parse_label(values["TrueLabel"], "TrueLabel", where)
    target_class = _parse_label(values["TargetClass"], "TargetClass", where)
    return str(values["ImageId"]).strip(), (true_label, target_class)


def _parse_label(text: str | None, column: str, where: str) -> int:
    """Parses a 1..1000 label, explaining what is wrong with a bad one."""
    try:
        label = int(str(text))
    except ValueError:
        raise ValueError(f"{where}: {column} {text!r} is not an integer") from None
    if not 1 <= label <= NUM_LABELS:
        raise ValueError(f"{where}: {column} {label} is outside 1..{NUM_LABELS}")
    return label


def read_predictions_csv(path: StrPath) -> dict[str, int]:
    """Reads a defense's ``filename,label`` output the way the competition did.

    Lenient on purpose, like the organizers' parser: a defense's output is
    scored, not validated. Rows whose second field is not an integer are
    skipped (so a header is harmless), a ``.png`` / ``.jpg`` suffix is
    stripped from the name, extra columns are ignored, and when a name
    repeats the last row wins. Undecodable bytes are replaced, not fatal.

    Args:
        path: The defense's result file.

    Returns:
        Label by image name without the suffix (e.g. ``"IMG000123"``).
    """
    predictions: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for row in csv.reader(f):
            if len(row) < 2:
                continue
            try:
                label = int(row[1])
            except ValueError:
                continue
            predictions[_strip_image_suffix(row[0])] = label
    return predictions


def _strip_image_suffix(filename: str) -> str:
    """Drops ``.png`` / ``.jpg`` (case-sensitive, like the original parser)."""
    if filename.endswith(_PREDICTION_SUFFIXES):
        return filename[: filename.rfind(".")]
    return filename


def write_predictions_csv(path: StrPath, rows: Iterable[tuple[str, int]]) -> None:
    """Writes a defense's output: ``filename,label`` lines, no header, atomically.

    Parent folders are created (``/output_data`` may not exist outside the
    container), and the file appears complete or not at all, so a defense
    killed at the time limit never leaves a half-written last line.

    Args:
        path: The result file, e.g. ``/output_data/result.csv``.
        rows: ``(filename, label)`` pairs; filenames with commas or quotes are
            quoted by the csv module.

    Raises:
        TypeError: A label is not an integer (numpy integers are fine).
    """
    path = pathlib.Path(path)
    lines = [(str(name), operator.index(label)) for name, label in rows]
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(f: IO[Any]) -> None:
        csv.writer(f, lineterminator="\n").writerows(lines)

    write_atomically(path, "w", write)
