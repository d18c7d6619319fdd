"""How a submission is run: the executor interface shared by the local and Docker executors.

The runner never starts a submission itself; it hands an executor the
submission's folder, a fresh input folder and an output folder, and gets back
what happened. Inside a container the competition's fixed paths apply
(``/code``, ``/input_images``, ``/output_images`` or ``/output_data``); the
local executor substitutes the host paths.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """One run of one submission on one work piece.

    Attributes:
        code_dir: the submission's folder (with ``metadata.json``); executors run a fresh copy of it.
        entry_point: the path of the executable, relative to ``code_dir``.
        input_dir: the images the submission sees (a fresh copy made by the runner); read-only.
        output_dir: where the submission writes (images for attacks, ``result.csv`` for defenses).
        output_file: for defenses, the file name inside ``output_dir`` passed as the output argument
            (``result.csv``); ``None`` for attacks, which get ``output_dir`` itself.
        extra_args: further arguments after input and output (an attack's MAX_EPSILON).
        time_limit: seconds from the start of the run after which it is stopped; what it wrote counts.
        gpu: ask for GPUs (Docker: a device request; local: no effect).
        image: the container image (``metadata.json``'s ``container`` or ``container_gpu``); local: ignored.
    """

    code_dir: pathlib.Path
    entry_point: str
    input_dir: pathlib.Path
    output_dir: pathlib.Path
    output_file: str | None
    extra_args: tuple[str, ...]
    time_limit: float
    gpu: bool = False
    image: str | None = None


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What happened: exit status, whether the time limit stopped it, wall seconds, and its log's tail."""

    exit_code: int | None
    timed_out: bool
    seconds: float
    log: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class Executor(Protocol):
    """Runs one submission on one work piece. Never raises for a failing submission: reports it."""

    name: str

    def run(self, request: RunRequest) -> RunResult: ...


class ExecutorUnavailable(Exception):
    """The requested executor cannot be used here (e.g. no Docker engine)."""


def make_executor(name: str) -> Executor:
    """The executor called ``name``; the Docker one is imported only when asked for.

    Raises:
        ExecutorUnavailable: Docker was asked for and cannot be used; the message says why.
    """
    if name == "local":
        from hgd.runner.local_executor import LocalExecutor

        return LocalExecutor()
    try:
        from hgd.runner.docker_executor import DockerExecutor
    except ImportError as error:
        raise ExecutorUnavailable(f"the Docker executor cannot be loaded ({error}); is the 'docker' package "
                                  "installed (pip install docker)?") from None
    try:
        return DockerExecutor()
    except Exception as error:  # noqa: BLE001 - the engine's errors vary; the message is what matters
        raise ExecutorUnavailable(f"cannot use Docker: {error}. (Or use --executor local.)") from None
