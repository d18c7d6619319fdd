"""The runner's working folders: read-only inputs, writable outputs for a sandboxed user, clean-up."""

from __future__ import annotations

import os
import pathlib
import shutil
import stat



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
