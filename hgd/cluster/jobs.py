"""One process per node: a multi-host command (data-parallel training) launched on a Ray cluster.

A data-parallel job (:mod:`hgd.train.distributed`) needs one process per host, each told the job's
coordinator (process 0's address), the process count and its own id. :func:`run_per_node` reserves one
bundle of ``cpus`` (and ``gpus``) on each of ``processes`` distinct nodes (a ``STRICT_SPREAD``
placement group: no two processes share a node), asks the first node for a free port there, and then
starts the command on every node with ``HGD_COORDINATOR``, ``HGD_NUM_PROCESSES`` and
``HGD_PROCESS_ID`` set. The command's output stays on its node's log; each process's exit status and
last lines come back. Files the command writes land on its node: the run folder must be on a file
system the nodes share (as any multi-host training needs).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import Sequence

from hgd.cluster import ClusterUnavailable, import_ray
from hgd.train.distributed import ENVIRONMENT as JOB_ENVIRONMENT

TAIL_CHARS = 4000


@dataclasses.dataclass(frozen=True)
class ProcessResult:
    """How one process of the job ended: its id, node address, exit status and the end of its output."""

    process_id: int
    node: str
    exit_code: int
    tail: str


def _free_port() -> tuple[str, int]:
    """This node's address and a port free on it now."""
    import ray

    address = ray.util.get_node_ip_address()
    with socket.socket() as s:
        s.bind((address, 0))
        return address, s.getsockname()[1]


def _run_process(command: Sequence[str], env: dict[str, str], process_id: int) -> ProcessResult:
    import ray

    result = subprocess.run(list(command), env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return ProcessResult(process_id=process_id, node=ray.util.get_node_ip_address(), exit_code=result.returncode,
                         tail=result.stdout[-TAIL_CHARS:])


def run_per_node(arguments: Sequence[str], processes: int, *, cpus: float = 1.0, gpus: float = 0.0,
                 env: dict[str, str] | None = None, timeout: float | None = None) -> list[ProcessResult]:
    """Runs ``python ARGUMENTS`` once on each of ``processes`` distinct nodes of the cluster this process
    joined, as one multi-host job (see the module doc), with ``env`` added to the node's environment;
    returns every process's result, in id order.

    Raises:
        ClusterUnavailable: the cluster does not have ``processes`` nodes with that much room.
    """
    ray = import_ray()
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    group = placement_group([bundle] * processes, strategy="STRICT_SPREAD")
    try:
        if not group.wait(timeout_seconds=60):
            raise ClusterUnavailable(f"the cluster has no {processes} distinct nodes with {bundle} free each")

        def on(index: int, function):
            return ray.remote(function).options(num_cpus=cpus, num_gpus=gpus, scheduling_strategy=(
                PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)))

        host, port = ray.get(on(0, _free_port).remote())
        coordinator = f"{host}:{port}"
        command = [sys.executable, *arguments]
        coordinator_var, processes_var, id_var = JOB_ENVIRONMENT
        futures = [on(i, _run_process).remote(command, {**(env or {}), coordinator_var: coordinator,
                                                        processes_var: str(processes), id_var: str(i)}, i)
                   for i in range(processes)]
        return ray.get(futures, timeout=timeout)
    finally:
        remove_placement_group(group)
