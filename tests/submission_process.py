"""Running a submission folder the way the competition does, for the submission-contract tests.

``<submission>/<entry_point> ARGS...`` (the entry point from its ``metadata.json``) with this
interpreter as ``$PYTHON`` and ``/`` as the working directory: a script must not depend on the
caller's cwd. ``HGD_CACHE_DIR`` comes from conftest's session fixture.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

TIMEOUT_S = 600


def command(submission: pathlib.Path, *args: object) -> dict:
    """``subprocess`` keyword arguments that run the submission's entry point with ``args``."""
    entry_point = json.loads((submission / "metadata.json").read_text())["entry_point"]
    return dict(args=[str(submission / entry_point), *map(str, args)],
                env={**os.environ, "PYTHON": sys.executable}, cwd=pathlib.Path("/"))


def run_submission(submission: pathlib.Path, *args: object) -> subprocess.CompletedProcess:
    """Runs a submission and waits for it."""
    return subprocess.run(**command(submission, *args), capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=TIMEOUT_S)


class Launched:
    """A submission run started in the background; ``result()`` waits for it. Runs started together
    overlap instead of queueing."""

    def __init__(self, logs: pathlib.Path, submission: pathlib.Path, *args: object) -> None:
        self._out, self._err = logs.with_suffix(".stdout"), logs.with_suffix(".stderr")
        with open(self._out, "wb") as out, open(self._err, "wb") as err:  # files: a full pipe cannot block it
            self.process = subprocess.Popen(**command(submission, *args), stdout=out, stderr=err)
        self._result: subprocess.CompletedProcess | None = None

    def result(self) -> subprocess.CompletedProcess:
        if self._result is None:
            code = self.process.wait(timeout=TIMEOUT_S)
            text = [f.read_text(encoding="utf-8", errors="replace") for f in (self._out, self._err)]
            self._result = subprocess.CompletedProcess(self.process.args, code, *text)
        return self._result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
