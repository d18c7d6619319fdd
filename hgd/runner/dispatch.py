"""How the harness's work pieces get run: one after another on this machine, or spread over a Ray cluster.

The harness decides *what* a piece is (which submission, which input files under which names, which
arguments) and what its outputs mean (the eps box, the predictions); a dispatch decides *where* it
runs. Both dispatches share one rule for a single run (:func:`run_in_scratch`): a fresh input folder
made read-only, a fresh output folder a sandboxed user may write, the executor's run, and an executor
failure reported as an infra error rather than raised.

- :class:`SequentialDispatch` runs each piece here, in order (the competition's single worker).
- :class:`hgd.runner.ray_dispatch.RayDispatch` runs them as Ray tasks on whichever node has room and
  hands their outputs back to this machine, where the harness checks them exactly as it does here.

A dispatch yields ``(job, run)`` pairs in the order pieces finish; ``run.output_dir`` holds what the
submission wrote until the next pair is asked for.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from hgd.runner.executors import Executor, RunRequest, RunResult
from hgd.runner.submissions import Submission
from hgd.runner.workdirs import force_rmtree, make_read_only, make_world_writable

log = logging.getLogger(__name__)

THIS_MACHINE = "local"
"""The node name of a piece run by :class:`SequentialDispatch`."""


@dataclasses.dataclass(frozen=True)
class PieceJob:
    """One run of one submission on one work piece, as the harness plans it.

    Attributes:
        key: names the piece uniquely within a run (``attack/fgsm/batch0003``).
        submission: what runs (its folder, and the folders it ``reads``).
        request: the run's command line, limits and image; its input and output folders are filled in
            where the piece runs.
        inputs: file name in the input folder -> the file on this machine with its content.
        inputs_key: pieces with the same key get the same inputs (a remote dispatch sends them once).
        needs_gpu: the piece must run where a GPU is (``--gpu`` and the submission names ``container_gpu``).
    """

    key: str
    submission: Submission
    request: RunRequest
    inputs: dict[str, pathlib.Path]
    inputs_key: str
    needs_gpu: bool = False


@dataclasses.dataclass(frozen=True)
class PieceRun:
    """What one piece's run gave.

    Attributes:
        result: exit status, time-out, seconds and log tail of the submission's run.
        infra_error: the executor (or the node) failed, not the submission; the piece runs again on resume.
        output_dir: what the submission wrote (on this machine; valid until the next piece is asked for).
        node: where it ran (:data:`THIS_MACHINE`, or a cluster node's address and id).
        attempts: how many times it was started (more than 1: a node died under it and it ran again).
    """

    result: RunResult
    infra_error: str | None
    output_dir: pathlib.Path
    node: str = THIS_MACHINE
    attempts: int = 1


class Dispatch(Protocol):
    """Runs pieces somewhere and yields them as they finish (see the module doc)."""

    name: str

    def run(self, jobs: Iterable[PieceJob], scratch: pathlib.Path) -> Iterator[tuple[PieceJob, PieceRun]]: ...


def execute(run: Callable[[], RunResult]) -> tuple[RunResult, str | None]:
    """Runs a submission. The executor failing (it raised, or it reports no exit status: the code
    could not be copied, the engine or the image is missing) is an infra error: the piece is
    recorded, counted as errored, and run again on resume."""
    try:
        result = run()
    except Exception as error:  # noqa: BLE001 - reported, the piece is retried on resume
        log.warning("executor error: %s", error)
        message = f"{type(error).__name__}: {error}"
        return RunResult(exit_code=None, timed_out=False, seconds=0.0, log=message), message
    if result.exit_code is None and not result.timed_out:
        return result, last_line(result.log) or "the executor reported no exit status"
    return result, None


def run_in_scratch(executor: Executor, request: RunRequest, write_inputs: Callable[[pathlib.Path], None],
                   scratch: pathlib.Path) -> tuple[RunResult, str | None, pathlib.Path]:
    """One run in ``scratch``: fresh ``input`` (filled by ``write_inputs``, then read-only) and ``output``.

    Returns:
        The run's result, its infra error (or ``None``), and the output folder.
    """
    input_dir, output_dir = scratch / "input", scratch / "output"
    input_dir.mkdir(parents=True)
    write_inputs(input_dir)
    make_read_only(input_dir)
    make_world_writable(output_dir)
    request = dataclasses.replace(request, input_dir=input_dir, output_dir=output_dir)
    result, infra_error = execute(lambda: executor.run(request))
    return result, infra_error, output_dir


def last_line(text: str, limit: int = 300) -> str:
    """The last non-empty line of a log, shortened."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""


class SequentialDispatch:
    """Runs every piece on this machine, one after another, with ``executor``."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.name = executor.name

    def run(self, jobs: Iterable[PieceJob], scratch: pathlib.Path) -> Iterator[tuple[PieceJob, PieceRun]]:
        for job in jobs:
            folder = pathlib.Path(tempfile.mkdtemp(prefix="piece-", dir=scratch))
            try:
                result, infra_error, output_dir = run_in_scratch(
                    self.executor, job.request, lambda into: _copy_inputs(job.inputs, into), folder)
                yield job, PieceRun(result=result, infra_error=infra_error, output_dir=output_dir)
            finally:
                force_rmtree(folder)


def _copy_inputs(inputs: dict[str, pathlib.Path], into: pathlib.Path) -> None:
    for name, source in inputs.items():
        shutil.copyfile(source, into / name)
