"""Submission folders: ``metadata.json`` + an entry point, read into AttackSubmission / DefenseSubmission objects.

A submission is a directory with ``metadata.json`` at its root (see
``docs/reference/competition-contract.md``)::

    {"type": "attack" | "targeted_attack" | "defense",
     "container": "<image for CPU runs>", "container_gpu": "<image for GPU runs>",
     "entry_point": "run_attack.sh"}

An attack may add ``"defense_aware": true``: it knows a defense (it attacks it end to end), which the
competition's attacks never did, so scores keep it apart from the oblivious attacks. A submission that
reads files outside its folder (an attack on a shipped defense reads that defense's weights) names
those folders, relative to its own, in ``"reads"``: a change there runs its pieces again, as a change
of its own files does. Any other key is refused, so a misspelled one is not silently ignored.

Each object knows how to run itself through an executor (the original toolkit's
``Attack.run`` / ``Defense.run``); the runner adds time limits, fresh inputs and
resumability around it. A folder that is not a usable submission raises
:class:`SubmissionError` with the reason, so a caller can report it and go on.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import pathlib
from collections.abc import Iterable, Sequence

from hgd.io.files import digest_folder
from hgd.runner.executors import Executor, RunRequest, RunResult

METADATA_FILE = "metadata.json"
DEFENSE_OUTPUT_FILE = "result.csv"


class SubmissionType(enum.Enum):
    """The ``type`` field of ``metadata.json``."""

    ATTACK = "attack"
    TARGETED_ATTACK = "targeted_attack"
    DEFENSE = "defense"


class SubmissionError(Exception):
    """A folder that cannot be used as a submission (no/malformed metadata, bad entry point)."""


@dataclasses.dataclass(frozen=True)
class Submission:
    """A submission folder as ``metadata.json`` describes it.

    Attributes:
        name: how results name it (the folder's name, made unique by :func:`unique_names`).
        path: the folder (absolute).
        type: attack, targeted attack or defense.
        entry_point: the executable, relative to ``path``.
        container: image for CPU runs (``None`` if absent: fine for the local executor).
        container_gpu: image for GPU runs (``None`` if absent).
        defense_aware: an attack that knows a defense (``"defense_aware": true``); the defenses'
            competition score leaves it out and reports it beside (:mod:`hgd.runner.scoring`).
        reads: folders outside ``path`` whose files the submission reads (``"reads"``), resolved.
    """

    name: str
    path: pathlib.Path
    type: SubmissionType
    entry_point: str
    container: str | None = None
    container_gpu: str | None = None
    defense_aware: bool = False
    reads: tuple[pathlib.Path, ...] = ()

    def image(self, gpu: bool) -> str | None:
        """The container image for a CPU or GPU run."""
        return self.container_gpu if gpu else self.container

    def fingerprint(self) -> str:
        """A cheap digest of the folder (file names, sizes, mtimes): finished pieces of an edited
        submission are run again on resume. ``__pycache__`` and ``*.pyc`` are left out."""
        digest = hashlib.sha256(self.type.value.encode())
        digest.update(self.entry_point.encode())
        for index, folder in enumerate((self.path, *self.reads)):
            digest.update(f"folder {index}\n".encode())
            digest_folder(digest, folder)
        return digest.hexdigest()[:16]

    def _request(self, input_dir: pathlib.Path, output_dir: pathlib.Path, output_file: str | None,
                 extra_args: tuple[str, ...], time_limit: float, gpu: bool) -> RunRequest:
        return RunRequest(code_dir=self.path, entry_point=self.entry_point, input_dir=input_dir,
                          output_dir=output_dir, output_file=output_file, extra_args=extra_args,
                          time_limit=time_limit, gpu=gpu, image=self.image(gpu))


@dataclasses.dataclass(frozen=True)
class AttackSubmission(Submission):
    """A non-targeted or targeted attack: ``./<entry_point> INPUT_DIR OUTPUT_DIR MAX_EPSILON``."""

    @property
    def targeted(self) -> bool:
        return self.type is SubmissionType.TARGETED_ATTACK

    def request(self, input_dir: pathlib.Path, output_dir: pathlib.Path, epsilon: int, *, time_limit: float,
                gpu: bool = False) -> RunRequest:
        """The run on one batch; a targeted attack finds ``target_class.csv`` in ``input_dir``."""
        return self._request(input_dir, output_dir, None, (str(epsilon),), time_limit, gpu)

    def run(self, executor: Executor, input_dir: pathlib.Path, output_dir: pathlib.Path, epsilon: int,
            *, time_limit: float, gpu: bool = False) -> RunResult:
        """Runs the attack on one batch."""
        return executor.run(self.request(input_dir, output_dir, epsilon, time_limit=time_limit, gpu=gpu))


@dataclasses.dataclass(frozen=True)
class DefenseSubmission(Submission):
    """A defense: ``./<entry_point> INPUT_DIR OUTPUT_DIR/result.csv``."""

    def request(self, input_dir: pathlib.Path, output_dir: pathlib.Path, *, time_limit: float,
                gpu: bool = False) -> RunRequest:
        """The run on one batch; it writes ``output_dir/result.csv``."""
        return self._request(input_dir, output_dir, DEFENSE_OUTPUT_FILE, (), time_limit, gpu)

    def run(self, executor: Executor, input_dir: pathlib.Path, output_dir: pathlib.Path,
            *, time_limit: float, gpu: bool = False) -> RunResult:
        """Runs the defense on one batch."""
        return executor.run(self.request(input_dir, output_dir, time_limit=time_limit, gpu=gpu))


METADATA_KEYS = frozenset({"type", "container", "container_gpu", "entry_point", "defense_aware", "reads"})


def read_metadata(folder: pathlib.Path) -> dict:
    """Reads and checks ``folder/metadata.json``'s shape (not the entry point).

    Raises:
        SubmissionError: missing or unreadable file, not a JSON object, unknown ``type``, or an
            ``entry_point`` that is not a non-empty relative path inside the folder.
    """
    path = folder / METADATA_FILE
    if not path.is_file():
        raise SubmissionError(f"no {METADATA_FILE}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SubmissionError(f"malformed {METADATA_FILE}: {error}") from None
    if not isinstance(meta, dict):
        raise SubmissionError(f"malformed {METADATA_FILE}: not a JSON object")
    unknown = sorted(set(meta) - METADATA_KEYS)
    if unknown:
        raise SubmissionError(f"{METADATA_FILE}: unknown key(s) {unknown}; known: {sorted(METADATA_KEYS)}")
    types = ", ".join(t.value for t in SubmissionType)
    if meta.get("type") not in {t.value for t in SubmissionType}:
        raise SubmissionError(f"{METADATA_FILE}: type {meta.get('type')!r} is not one of {types}")
    entry = meta.get("entry_point")
    if not isinstance(entry, str) or not entry.strip():
        raise SubmissionError(f"{METADATA_FILE}: entry_point {entry!r} is not a non-empty string")
    entry_path = pathlib.PurePosixPath(entry)
    if entry_path.is_absolute() or ".." in entry_path.parts:
        raise SubmissionError(f"{METADATA_FILE}: entry_point {entry!r} must be a path inside the submission")
    for key in ("container", "container_gpu"):
        if key in meta and not isinstance(meta[key], str):
            raise SubmissionError(f"{METADATA_FILE}: {key} {meta[key]!r} is not a string")
    if not isinstance(meta.get("defense_aware", False), bool):
        raise SubmissionError(f"{METADATA_FILE}: defense_aware {meta['defense_aware']!r} is not true or false")
    if meta.get("defense_aware") and meta["type"] == SubmissionType.DEFENSE.value:
        raise SubmissionError(f"{METADATA_FILE}: defense_aware is for attacks, not a defense")
    reads = meta.get("reads", [])
    if not isinstance(reads, list) or not all(isinstance(r, str) and r.strip() for r in reads):
        raise SubmissionError(f"{METADATA_FILE}: reads {reads!r} is not a list of folder paths")
    missing = [r for r in reads if not (folder / r).is_dir()]
    if missing:
        raise SubmissionError(f"{METADATA_FILE}: reads {missing} (relative to the submission) are not folders")
    return meta


def check_entry_point(folder: pathlib.Path, entry_point: str) -> None:
    """Raises :class:`SubmissionError` unless the entry point is a regular, executable file."""
    path = folder / entry_point
    if not path.exists():
        raise SubmissionError(f"entry point {entry_point!r} does not exist")
    if not path.is_file():
        raise SubmissionError(f"entry point {entry_point!r} is not a regular file")
    if not path.stat().st_mode & 0o111:
        raise SubmissionError(f"entry point {entry_point!r} is not executable (chmod +x)")


def load_submission(folder: str | os.PathLike[str], name: str | None = None) -> AttackSubmission | DefenseSubmission:
    """Reads one submission folder.

    Args:
        folder: the folder with ``metadata.json``.
        name: its name in results (default: the folder's name).

    Returns:
        An :class:`Attack` (``attack`` / ``targeted_attack``) or a :class:`Defense`.

    Raises:
        SubmissionError: not a usable submission; the message says why.
    """
    path = pathlib.Path(folder).resolve()
    if not path.is_dir():
        raise SubmissionError("not a folder")
    meta = read_metadata(path)
    entry_point = meta["entry_point"].strip()
    check_entry_point(path, entry_point)
    kind = SubmissionType(meta["type"])
    cls = DefenseSubmission if kind is SubmissionType.DEFENSE else AttackSubmission
    return cls(name=name or path.name, path=path, type=kind, entry_point=entry_point,
               container=meta.get("container") or None, container_gpu=meta.get("container_gpu") or None,
               defense_aware=meta.get("defense_aware", False),
               reads=tuple((path / r).resolve() for r in meta.get("reads", [])))


@dataclasses.dataclass
class Discovery:
    """What :func:`discover` found: usable submissions by kind, and folders it skipped (and why)."""

    attacks: list[AttackSubmission] = dataclasses.field(default_factory=list)
    targeted_attacks: list[AttackSubmission] = dataclasses.field(default_factory=list)
    defenses: list[DefenseSubmission] = dataclasses.field(default_factory=list)
    problems: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (folder, reason)

    @property
    def all_attacks(self) -> list[AttackSubmission]:
        return [*self.attacks, *self.targeted_attacks]


def subfolders(parent: pathlib.Path) -> list[pathlib.Path]:
    """The candidate submission folders of a directory: its subfolders, hidden and ``__*`` ones left out."""
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def discover(folders: Iterable[tuple[pathlib.Path, SubmissionType | None]]) -> Discovery:
    """Loads submission folders; each pair is (folder, the kind its source directory expects).

    The kind comes from ``metadata.json``; a submission found where another kind was expected
    (e.g. an attack in ``--defenses-dir``) is used by its metadata and noted. A folder that is
    not a usable submission is noted and skipped, never fatal. The same folder given twice is used
    once; two folders with the same name get ``-2``, ``-3``... suffixes.
    """
    found = Discovery()
    seen: set[pathlib.Path] = set()
    loaded: list[AttackSubmission | DefenseSubmission] = []
    for folder, expected in folders:
        resolved = folder.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        try:
            submission = load_submission(folder)
        except SubmissionError as error:
            found.problems.append((str(folder), f"skipped: {error}"))
            continue
        if expected is not None and submission.type is not expected:
            found.problems.append((str(folder), f"metadata type is {submission.type.value!r}, "
                                   f"found where a {expected.value} was expected; used as {submission.type.value}"))
        loaded.append(submission)
    names = unique_names([s.name for s in loaded])
    for submission, name in zip(loaded, names):
        if name != submission.name:
            found.problems.append((str(submission.path), f"name {submission.name!r} already used; named {name!r}"))
            submission = dataclasses.replace(submission, name=name)
        if isinstance(submission, DefenseSubmission):
            found.defenses.append(submission)
        elif submission.targeted:
            found.targeted_attacks.append(submission)
        else:
            found.attacks.append(submission)
    for group in (found.attacks, found.targeted_attacks, found.defenses):
        group.sort(key=lambda s: s.name)
    return found


def unique_names(names: Sequence[str]) -> list[str]:
    """Makes names unique by appending ``-2``, ``-3``... to repeats, in order."""
    taken = set(names)
    used: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 1
        while candidate in used or (candidate != name and candidate in taken):
            n += 1
            candidate = f"{name}-{n}"
        used.add(candidate)
        out.append(candidate)
    return out
