"""The one reader of a labelled image folder, for the competition runner, training and evaluation.

A folder holds ``images/`` and one of two label files (``docs/reference/datasets.md``):

* ``dev_dataset.csv``: the competition's (``ImageId``, ``TrueLabel`` 1..1000, ``TargetClass`` 1..1000)
  for images ``images/<ImageId>.png``;
* ``labels.csv``: ``filename,label0`` (0-based ImageNet class), the ImageNet pool's.

The rule for what does not match, the same for every caller: a labelled image without its file, or
an image file without a label, is left out and named in :attr:`Dataset.problems` (the caller reports
them and goes on with the rest). No label file, no ``images/`` folder, a malformed label file or no
usable image at all is a :class:`DatasetError`. Images are ordered by their id (the file name without
its extension), so a dataset's batches are the same on every machine.
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib

import numpy as np

from hgd.io.competition_csv import read_dataset_csv
from hgd.io.images import iter_batches
from hgd.io.labels import to_competition_label, to_label0

COMPETITION_LABELS = "dev_dataset.csv"
POOL_LABELS = "labels.csv"


class DatasetError(ValueError):
    """The folder is not a usable dataset (no label file or ``images/``, a malformed label file, no image)."""


@dataclasses.dataclass(frozen=True)
class LabelledImage:
    """One image file and its 0-based class (and, in the competition's format, its 0-based target class)."""

    path: pathlib.Path
    label0: int
    target0: int | None = None

    @property
    def image_id(self) -> str:
        return self.path.stem


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The usable images of a folder, ordered by id, and what was left out (see the module docstring)."""

    folder: pathlib.Path
    images: tuple[LabelledImage, ...]
    problems: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {image.image_id: image for image in self.images})

    @property
    def image_ids(self) -> tuple[str, ...]:
        return tuple(image.image_id for image in self.images)

    def competition_format(self) -> Dataset:
        """This dataset, if it is in the competition's format (target classes for targeted attacks), else
        a :class:`DatasetError`: what the competition runner needs."""
        if any(image.target0 is None for image in self.images):
            raise DatasetError(f"{self.folder}: the competition runner needs {COMPETITION_LABELS} (target classes)")
        return self

    def image_path(self, image_id: str) -> pathlib.Path:
        return self._by_id[image_id].path

    def true_label(self, image_id: str) -> int:
        """The competition's label (1..1000) of ``image_id``."""
        return to_competition_label(self._by_id[image_id].label0)

    def target_class(self, image_id: str) -> int:
        """The competition's target class (1..1000) of ``image_id``; only ``dev_dataset.csv`` has one."""
        target0 = self._by_id[image_id].target0
        if target0 is None:
            raise DatasetError(f"{self.folder}: {image_id} has no target class (only {COMPETITION_LABELS} has them)")
        return to_competition_label(target0)


def read_dataset(folder: str | pathlib.Path, limit: int | None = None) -> Dataset:
    """The dataset in ``folder``; ``limit`` keeps the first N images by id (see the module docstring)."""
    folder = pathlib.Path(folder)
    images_dir = folder / "images"
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir} is not a folder")
    listed, label_file = _read_labels(folder)
    on_disk = {p.name for p in images_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    problems = [f"{label_file}: {name} has no image file images/{name}; left out" for name in sorted(listed)
                if name not in on_disk]
    problems += [f"images/{name} has no row in {label_file}; left out" for name in sorted(on_disk - set(listed))]
    found = sorted((image for name, image in listed.items() if name in on_disk), key=lambda image: image.image_id)
    if not found:
        raise DatasetError(f"{folder} has no usable image (none listed in {label_file} has a file in images/)")
    return Dataset(folder=folder, images=tuple(found[:limit]), problems=tuple(problems))


def _read_labels(folder: pathlib.Path) -> tuple[dict[str, LabelledImage], str]:
    """File name -> labelled image, from whichever label file ``folder`` has, and that file's name."""
    images_dir = folder / "images"
    try:
        if (folder / COMPETITION_LABELS).is_file():
            rows = read_dataset_csv(folder / COMPETITION_LABELS)
            return {f"{i}.png": LabelledImage(images_dir / f"{i}.png", to_label0(true), to_label0(target))
                    for i, (true, target) in rows.items()}, COMPETITION_LABELS
        if (folder / POOL_LABELS).is_file():
            with open(folder / POOL_LABELS, newline="", encoding="utf-8") as f:
                return {row["filename"]: LabelledImage(images_dir / row["filename"], int(row["label0"]))
                        for row in csv.DictReader(f)}, POOL_LABELS
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise DatasetError(f"{folder}: unreadable labels: {error}") from None
    raise DatasetError(f"{folder}: neither {COMPETITION_LABELS} nor {POOL_LABELS} (see docs/reference/datasets.md)")


def load_pixels(dataset: Dataset) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Image ids, uint8 images (N, 299, 299, 3) and 0-based labels of ``dataset``, all in memory.

    An image that cannot be decoded is a :class:`DatasetError`: a score over fewer images than asked
    for would be silently wrong."""
    batches = list(iter_batches([image.path for image in dataset.images], batch_size=64))
    failed = [name for batch in batches for name, _ in batch.failed]
    if failed:
        raise DatasetError(f"{dataset.folder}: unreadable images {failed[:5]}")
    labels0 = np.array([image.label0 for image in dataset.images], dtype=np.int64)
    return list(dataset.image_ids), np.concatenate([batch.images for batch in batches]), labels0
