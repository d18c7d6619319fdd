"""File helpers of the runner: atomic writes (a killed run never leaves half a file) and clean-up."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import shutil
import stat
from collections.abc import Iterable, Sequence
from typing import Any

from hgd.images import write_atomically


def write_bytes_atomic(path: pathlib.Path, data: bytes) -> None:
    """Writes ``data`` atomically (:func:`hgd.images.write_atomically`), creating missing folders."""
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


def force_rmtree(path: pathlib.Path) -> None:
    """Removes a tree even where a submission made files or folders read-only; never raises."""

    def retry(function, failed_path, _excinfo):
        try:
            parent = os.path.dirname(failed_path)
            os.chmod(parent, stat.S_IRWXU | os.stat(parent).st_mode)
            if os.path.isdir(failed_path) and not os.path.islink(failed_path):
                os.chmod(failed_path, stat.S_IRWXU)
            function(failed_path)
        except OSError:
            pass

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=retry)


def make_read_only(folder: pathlib.Path) -> None:
    """Best effort ``a-w`` on a flat input folder and its files (a root process is not stopped by it)."""
    for entry in folder.iterdir():
        entry.chmod(0o444)
    folder.chmod(0o555)


def make_world_writable(folder: pathlib.Path) -> None:
    """An output folder a container running as another user can write into."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o777)
