"""The harness's work pieces as Ray tasks, on whichever node of a cluster has room.

Each piece becomes one task that asks for what the piece needs (``cpus`` per piece, optional memory,
one GPU where the piece needs one, so a node without a GPU never gets a GPU piece); Ray places it, and
how many run at once on a node follows that node's resources. The task runs the submission on its node
with that node's executor (``local`` or ``docker``: each node has its own engine and the toolkit's
image) by the same rule as on one machine (:func:`hgd.runner.dispatch.run_in_scratch`), and returns
what the submission wrote. The driver keeps everything else: inputs go out and outputs come back
through the object store (a batch's inputs are sent once for all the pieces that read them, a
submission's code once per run), and the harness checks and stores each piece on the driver as it
arrives, exactly as on one machine.

Faults: a node that dies under a piece is Ray's to handle; the task is started again elsewhere (up to
``max_retries`` times) and the retry is counted: every start is written to a small ledger actor on the
driver's node, which outlives the worker nodes. A submission that crashes or times out is not a fault:
its task returns normally with the exit status, and is never retried. A piece the cluster gives up on
is an executor error, stored as such and run again when the same command is rerun.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

from hgd.cluster import cluster_cpus, import_ray, node_names
from hgd.cluster.bundles import Bundle, pack, unpack
from hgd.runner.dispatch import PieceJob, PieceRun, run_in_scratch
from hgd.runner.executors import Executor, RunRequest, RunResult, make_executor
from hgd.runner.workdirs import force_rmtree

log = logging.getLogger(__name__)

MAX_OUTPUT_FILE_BYTES = 64 * 1024 * 1024
"""A file a submission wrote that is larger than this does not travel back; the driver gets a sparse file
of the same size in its place (a defense's ``result.csv`` that large is refused by size either way)."""

PROGRESS_EVERY = 30.0
"""Seconds between the driver's per-node progress lines."""


@dataclasses.dataclass(frozen=True)
class OutputFile:
    """One entry of a submission's output folder, as it travels back to the driver.

    Attributes:
        data: the bytes of a regular file up to :data:`MAX_OUTPUT_FILE_BYTES`; ``None`` otherwise.
        size: the file's size; ``-1`` for what is not a regular file (a folder, a link, a device).
    """

    data: bytes | None
    size: int


@dataclasses.dataclass(frozen=True)
class RemoteRun:
    """What a piece's task returns: the run, what the submission wrote, and the node it ran on."""

    result: RunResult
    infra_error: str | None
    outputs: dict[str, OutputFile]
    node_id: str


class AttemptLedger:
    """Counts the starts of every running piece (a Ray actor on the driver's node).

    A task writes its start here before it runs the submission, so a piece whose node died and which Ray
    started again elsewhere shows two starts. The driver takes each piece's count when it finishes.
    """

    def __init__(self) -> None:
        self.starts: dict[str, int] = {}
        self.where: dict[str, str] = {}

    def started(self, key: str, node_id: str) -> None:
        self.starts[key] = self.starts.get(key, 0) + 1
        self.where[key] = node_id

    def finish(self, keys: list[str]) -> dict[str, int]:
        """Forgets the pieces; returns how many times each was started."""
        counts = {key: self.starts.pop(key, 1) for key in keys}
        for key in keys:
            self.where.pop(key, None)
        return counts

    def running(self) -> dict[str, int]:
        """Node id -> pieces started there and not yet finished."""
        counts: dict[str, int] = {}
        for node_id in self.where.values():
            counts[node_id] = counts.get(node_id, 0) + 1
        return counts


_EXECUTORS: dict[str, Executor] = {}


def run_piece_on_node(key: str, bundle: Bundle, request: RunRequest, inputs: dict[str, bytes],
                      executor_name: str, ledger: Any) -> RemoteRun:
    """A piece's task body (runs on a worker node): unpack the code once, run, collect the outputs."""
    ray = import_ray()
    node_id = ray.get_runtime_context().get_node_id()
    ray.get(ledger.started.remote(key, node_id))
    if executor_name not in _EXECUTORS:  # one per worker process: the Docker one pings its engine
        _EXECUTORS[executor_name] = make_executor(executor_name)
    request = dataclasses.replace(request, code_dir=unpack(bundle))
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="hgd-piece-"))
    try:
        result, infra_error, output_dir = run_in_scratch(_EXECUTORS[executor_name], request,
                                                         lambda into: write_files(inputs, into), scratch)
        return RemoteRun(result=result, infra_error=infra_error, outputs=collect_outputs(output_dir),
                         node_id=node_id)
    finally:
        force_rmtree(scratch)


def write_files(files: dict[str, bytes], into: pathlib.Path) -> None:
    for name, data in files.items():
        (into / name).write_bytes(data)


def collect_outputs(folder: pathlib.Path) -> dict[str, OutputFile]:
    """Every entry of ``folder`` (flat: the contract has no subfolders), as :class:`OutputFile`."""
    outputs: dict[str, OutputFile] = {}
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return outputs
    for entry in entries:
        if not entry.is_file(follow_symlinks=False):
            outputs[entry.name] = OutputFile(data=None, size=-1)
            continue
        try:
            size = entry.stat(follow_symlinks=False).st_size
            data = pathlib.Path(entry.path).read_bytes() if size <= MAX_OUTPUT_FILE_BYTES else None
        except OSError:
            continue  # vanished or unreadable: as if it had not been written
        outputs[entry.name] = OutputFile(data=data, size=size)
    return outputs


def recreate_outputs(outputs: dict[str, OutputFile], folder: pathlib.Path) -> None:
    """Writes what travelled back into ``folder`` so the harness reads it as it would have on the node."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, entry in outputs.items():
        path = folder / name
        if entry.size < 0:
            path.mkdir()  # not a regular file there: not one here either
        elif entry.data is None:
            with open(path, "wb") as f:
                f.truncate(entry.size)
        else:
            path.write_bytes(entry.data)


class RayDispatch:
    """Runs the harness's pieces as Ray tasks (see the module doc). The process must have joined a cluster
    (:func:`hgd.cluster.connect`).

    Args:
        executor_name: ``local`` or ``docker``, made on each node.
        cpus: CPUs one piece asks for.
        memory_gib: memory one piece asks for (``None``: not reserved).
        max_retries: how often Ray starts a piece again after its node died.
        max_in_flight: pieces handed to Ray at once (default: twice the cluster's CPUs over ``cpus``,
            so every node has its next piece waiting while the driver's memory stays bounded).
        progress: print a line per node now and then (pieces done, running, retried).
    """

    def __init__(self, executor_name: str, *, cpus: float = 1.0, memory_gib: float | None = None,
                 max_retries: int = 3, max_in_flight: int | None = None, progress: bool = True) -> None:
        ray = import_ray()
        if not ray.is_initialized():
            raise RuntimeError("join a cluster first (hgd.cluster.connect)")
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._ray = ray
        self.name = executor_name  # the executor each node makes
        self.cpus = cpus
        self.memory_bytes = None if memory_gib is None else int(memory_gib * 1024 ** 3)
        self.max_retries = max_retries
        self.max_in_flight = max_in_flight or max(2, int(2 * cluster_cpus() / cpus))
        self.progress = progress
        driver_node = ray.get_runtime_context().get_node_id()
        self._ledger = ray.remote(AttemptLedger).options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(driver_node, soft=False)).remote()
        self._task = ray.remote(run_piece_on_node)
        self._bundles: dict[str, Any] = {}
        self._done: dict[str, int] = {}
        self._retried: dict[str, int] = {}
        self._names: dict[str, str] = {}
        self._last_progress = time.monotonic()

    def run(self, jobs: Iterable[PieceJob], scratch: pathlib.Path) -> Iterator[tuple[PieceJob, PieceRun]]:
        ray = self._ray
        jobs = iter(jobs)
        pending: dict[Any, PieceJob] = {}
        inputs: dict[str, list[Any]] = {}  # inputs_key -> [object ref, pieces in flight that read it]
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < self.max_in_flight:
                job = next(jobs, None)
                if job is None:
                    exhausted = True
                    break
                pending[self._submit(job, inputs)] = job
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=PROGRESS_EVERY)
            if ready:  # take whatever else finished meanwhile too
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            finished = [(ref, pending.pop(ref)) for ref in ready]
            attempts = ray.get(self._ledger.finish.remote([job.key for _, job in finished])) if finished else {}
            for ref, job in finished:
                self._release(job.inputs_key, inputs)
                run = self._collect(ref, job, attempts.get(job.key, 1), scratch)
                try:
                    yield job, run
                finally:
                    force_rmtree(run.output_dir.parent)
            self._say_progress()

    def running_by_node(self) -> dict[str, int]:
        """Node id -> pieces started there and not finished yet (a piece whose node died counts where it
        last started until Ray starts it again)."""
        return self._ray.get(self._ledger.running.remote())

    def _submit(self, job: PieceJob, inputs: dict[str, list[Any]]) -> Any:
        ray = self._ray
        if job.inputs_key not in inputs:
            files = {name: path.read_bytes() for name, path in job.inputs.items()}
            inputs[job.inputs_key] = [ray.put(files), 0]
        inputs[job.inputs_key][1] += 1
        name = job.submission.name
        if name not in self._bundles:
            self._bundles[name] = ray.put(pack(job.submission.path, job.submission.reads))
        options: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": 1 if job.needs_gpu else 0,
                                   "max_retries": self.max_retries, "retry_exceptions": False}
        if self.memory_bytes:
            options["memory"] = self.memory_bytes
        return self._task.options(**options).remote(job.key, self._bundles[name], job.request,
                                                    inputs[job.inputs_key][0], self.name, self._ledger)

    @staticmethod
    def _release(inputs_key: str, inputs: dict[str, list[Any]]) -> None:
        """Drops a batch's inputs from the object store once no piece in flight reads them."""
        entry = inputs[inputs_key]
        entry[1] -= 1
        if entry[1] == 0:
            del inputs[inputs_key]

    def _collect(self, ref: Any, job: PieceJob, attempts: int, scratch: pathlib.Path) -> PieceRun:
        """The finished task's run, its outputs written under ``scratch``; a lost piece is an infra error."""
        folder = pathlib.Path(tempfile.mkdtemp(prefix="piece-", dir=scratch))
        output_dir = folder / "output"
        try:
            remote: RemoteRun = self._ray.get(ref)
        except self._ray.exceptions.RayError as error:
            message = f"the cluster lost the piece after {attempts} start(s): {type(error).__name__}: " + \
                      str(error).strip().splitlines()[0][:300]
            log.warning("%s: %s", job.key, message)
            output_dir.mkdir()
            return PieceRun(result=RunResult(exit_code=None, timed_out=False, seconds=0.0, log=message),
                            infra_error=message, output_dir=output_dir, node="lost", attempts=attempts)
        recreate_outputs(remote.outputs, output_dir)
        node = self._node_name(remote.node_id)
        self._done[node] = self._done.get(node, 0) + 1
        self._retried[node] = self._retried.get(node, 0) + (attempts > 1)
        return PieceRun(result=remote.result, infra_error=remote.infra_error, output_dir=output_dir, node=node,
                        attempts=attempts)

    def _node_name(self, node_id: str) -> str:
        if node_id not in self._names:
            self._names = node_names()
        return self._names.get(node_id, node_id[:8])

    def _say_progress(self) -> None:
        """One line per node (pieces done, running, retried) every :data:`PROGRESS_EVERY` seconds."""
        if not self.progress or time.monotonic() - self._last_progress < PROGRESS_EVERY:
            return
        self._last_progress = time.monotonic()
        running = {self._node_name(n): c for n, c in self.running_by_node().items()}
        nodes = sorted(set(self._done) | set(running))
        parts = [f"{n}: {self._done.get(n, 0)} done, {running.get(n, 0)} running, {self._retried.get(n, 0)} retried"
                 for n in nodes]
        print("cluster: " + "; ".join(parts), file=sys.stderr, flush=True)
