"""The dataset, its batches, and the work pieces' stored records.

As in EVAL, the dataset is cut into batches of ``batch_size`` images (sorted by
ImageId; batch ``i`` gets its own epsilon), and the work is split into pieces:
one per (attack x batch), then one per (defense x adversarial batch). Every
finished piece is written as one small JSON file under ``OUTPUT/pieces/``
(atomically), so an interrupted run loses no finished piece and a rerun skips
them. A stored record is reused only if it still describes the same piece: the
same images, epsilon and submission fingerprint (and, for a defense piece, the
same attack record, by its token), and it did not end in an executor error.

Names the submissions see (EVAL's anonymization): the attack of batch ``i``
sees ``IMG000123.png`` (the image's index in the sorted dataset); a defense sees
``ADVBATCH012_IMG000123.png`` (``ADVBATCH`` numbers one attack's one batch).
The records keep the mapping back to ImageIds.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

from hgd.io.files import read_json, write_json_atomic

EVAL_EPSILONS = (4, 8, 12, 16)
"""EVAL's epsilon schedule: batch ``i`` gets ``EVAL_EPSILONS[i % 4]``."""

RECORD_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ImageBatch:
    """One batch of the dataset.

    Attributes:
        index: 0-based batch number.
        image_ids: its ImageIds, in dataset order.
        first: the dataset index of its first image (names are ``IMG{first + k:06d}``).
        epsilon: the batch's MAX_EPSILON.
    """

    index: int
    image_ids: tuple[str, ...]
    first: int
    epsilon: int

    @property
    def label(self) -> str:
        return f"batch{self.index:04d}"

    def attack_names(self) -> dict[str, str]:
        """Anonymized file name the attack sees -> ImageId."""
        return {f"IMG{self.first + k:06d}.png": image_id for k, image_id in enumerate(self.image_ids)}


def make_batches(image_ids: Sequence[str], batch_size: int, epsilon: int | str) -> list[ImageBatch]:
    """Cuts the dataset into batches; ``epsilon`` is one value for all (DEV) or ``"cycle"`` (EVAL)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    batches = []
    for index, first in enumerate(range(0, len(image_ids), batch_size)):
        eps = EVAL_EPSILONS[index % len(EVAL_EPSILONS)] if epsilon == "cycle" else int(epsilon)
        batches.append(ImageBatch(index=index, image_ids=tuple(image_ids[first:first + batch_size]),
                                  first=first, epsilon=eps))
    return batches


def adv_batch_id(attack_index: int, batch: ImageBatch, num_batches: int) -> str:
    """EVAL-style id of one attack's one batch (``ADVBATCH012``), numbered attack-major."""
    return f"ADVBATCH{attack_index * num_batches + batch.index:03d}"


@dataclasses.dataclass
class AttackRecord:
    """A finished (attack x batch) piece.

    Attributes:
        produced: ImageIds with an adversarial image (after the eps box), stored as
            ``OUTPUT/adv/<attack>/<ImageId>.png``.
        names: the anonymized input name -> ImageId mapping the attack saw.
        problems: what went wrong with the attack's outputs or run, one line each.
        infra_error: the executor itself failed (not the submission); rerun on resume.
        token: identifies this record; defense pieces built on it store it.
    """

    attack: str
    targeted: bool
    batch: int
    epsilon: int
    image_ids: list[str]
    names: dict[str, str]
    produced: list[str]
    exit_code: int | None
    timed_out: bool
    seconds: float
    problems: list[str]
    fingerprint: str
    token: str
    infra_error: str | None = None
    version: int = RECORD_VERSION


@dataclasses.dataclass
class DefenseRecord:
    """A finished (defense x adversarial batch) piece.

    Attributes:
        given: ImageIds whose adversarial image the defense was given (the attack's ``produced``).
        predictions: ImageId -> label, for given images with a parsable prediction.
        ran: ``False`` when there was nothing to classify (the attack produced no image).
        error: why the batch is *errored* (ignored for scoring): no readable ``result.csv``,
            or the executor failed. ``None`` otherwise, even after a crash or time-out that
            left a result file (what it wrote counts).
        attack_token: the token of the :class:`AttackRecord` it classified.
    """

    defense: str
    attack: str
    batch: int
    adv_batch: str
    given: list[str]
    names: dict[str, str]
    predictions: dict[str, int]
    ran: bool
    exit_code: int | None
    timed_out: bool
    seconds: float
    error: str | None
    problems: list[str]
    fingerprint: str
    attack_token: str
    infra_error: str | None = None
    version: int = RECORD_VERSION


def _from_json(cls, data: Any):
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
        return None
    fields = {f.name for f in dataclasses.fields(cls)}
    if set(data) != fields:
        return None
    try:
        return cls(**data)
    except TypeError:
        return None


class PieceStore:
    """The finished pieces of one output folder (``OUTPUT/pieces/``) and their logs (``OUTPUT/logs/``)."""

    def __init__(self, output_dir: pathlib.Path) -> None:
        self.root = output_dir / "pieces"
        self.logs = output_dir / "logs"

    def attack_path(self, attack: str, batch: int) -> pathlib.Path:
        return self.root / "attacks" / attack / f"batch{batch:04d}.json"

    def defense_path(self, defense: str, attack: str, batch: int) -> pathlib.Path:
        return self.root / "defenses" / defense / attack / f"batch{batch:04d}.json"

    def load_attack(self, attack: str, batch: int) -> AttackRecord | None:
        return _from_json(AttackRecord, read_json(self.attack_path(attack, batch)))

    def load_defense(self, defense: str, attack: str, batch: int) -> DefenseRecord | None:
        return _from_json(DefenseRecord, read_json(self.defense_path(defense, attack, batch)))

    def save_attack(self, record: AttackRecord) -> None:
        write_json_atomic(self.attack_path(record.attack, record.batch), dataclasses.asdict(record))

    def save_defense(self, record: DefenseRecord) -> None:
        write_json_atomic(self.defense_path(record.defense, record.attack, record.batch),
                          dataclasses.asdict(record))

    def attack_log(self, attack: str, batch: int) -> pathlib.Path:
        return self.logs / "attacks" / attack / f"batch{batch:04d}.log"

    def defense_log(self, defense: str, attack: str, batch: int) -> pathlib.Path:
        return self.logs / "defenses" / defense / attack / f"batch{batch:04d}.log"
