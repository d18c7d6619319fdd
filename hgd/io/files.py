"""Atomic files: the one rule for every file the toolkit must never leave half-written.

Checkpoints, caches, predictions, run records: a writer killed midway (a time limit, a dead node)
leaves either the old file or the complete new one, never a torn one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any


def replace_atomically(path: pathlib.Path, write: Callable[[pathlib.Path], None], *, suffix: str = ".tmp") -> None:
    """Writes ``path`` as ``write(temporary)`` into a temporary file of the same folder, then renames it.

    The one rule for every file the toolkit must never leave half-written (checkpoints, caches, state,
    predictions): ``os.replace`` is atomic on one file system, so readers see either the old file or
    the complete new one, even if the writer is killed midway; a failed write leaves no temporary file.
    ``suffix`` ends the temporary name, for writers that insist on one (Keras: ``.weights.h5``). The
    file gets the usual umask-based permissions (``tempfile`` would make it 0600).
    """
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomically(path: pathlib.Path, mode: str, write: Callable[[IO[Any]], None]) -> None:
    """:func:`replace_atomically` for a writer of an open file (``mode``: ``"w"`` text, ``"wb"`` bytes)."""
    def to_file(temporary: pathlib.Path) -> None:
        binary = "b" in mode
        with open(temporary, mode, newline=None if binary else "", encoding=None if binary else "utf-8") as f:
            write(f)

    replace_atomically(path, to_file)


def write_bytes_atomic(path: pathlib.Path, data: bytes) -> None:
    """Writes ``data`` atomically (:func:`write_atomically`), creating missing folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, "wb", lambda f: f.write(data))


def write_text_atomic(path: pathlib.Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: pathlib.Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def write_csv_atomic(path: pathlib.Path, header: Sequence[str] | None, rows: Iterable[Sequence[Any]]) -> None:
    """Writes a CSV (``\\n`` line ends) atomically; ``header=None`` writes no header line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def read_json(path: pathlib.Path) -> Any | None:
    """The JSON value in ``path``, or ``None`` if it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def digest_folder(digest: Any, folder: pathlib.Path) -> None:
    """Adds every file's relative name, size and mtime under ``folder`` (``__pycache__``, ``*.pyc`` left out)."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".pyc"):
                continue
            file = pathlib.Path(root, name)
            try:
                stat = file.lstat()
            except OSError:
                continue
            rel = file.relative_to(folder).as_posix()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
