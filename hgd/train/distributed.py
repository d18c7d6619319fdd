"""Data-parallel training over several devices and hosts, with Keras' own distribution API.

The paper trained on six GPUs. ``python -m hgd.cli.train fit --devices N|all`` splits every global
batch over N devices of this host; with a coordinator (``--coordinator HOST:PORT --num-processes P
--process-id I``, or the environment a launcher sets: ``HGD_COORDINATOR``, ``HGD_NUM_PROCESSES``,
``HGD_PROCESS_ID``) it spans every device of P processes, one per host. Nothing here averages
gradients by hand: on the JAX backend ``keras.distribution.DataParallel`` shards the batch and
replicates the weights, and XLA reduces the gradients (over ``jax.distributed`` between processes; on
CPUs with gloo). Keras' distribution API does not cover the TensorFlow backend: there ``--devices N``
uses ``tf.distribute.MirroredStrategy`` over N devices of this host (its GPUs, else its logical CPU
devices), and several hosts are refused with the reason (use the JAX backend).

With several processes each loads only its own part of the global batch (:attr:`Placement.shard`),
every process runs the same schedule on the same (globally reduced) losses, and only process 0 writes
checkpoints, history and state (:attr:`Placement.writes`); all read the run folder to resume, so on
several hosts it lies on a file system they share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

ENVIRONMENT = ("HGD_COORDINATOR", "HGD_NUM_PROCESSES", "HGD_PROCESS_ID")
"""Where a launcher (a Ray job, a batch system) passes the multi-host settings, if not as flags."""

HEARTBEAT_SECONDS = 30
"""How long the other processes wait for a silent one before the job fails (JAX's default: 100 s)."""


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where this process trains.

    Attributes:
        devices: devices the global batch is split over (all processes together).
        process_id, num_processes: this process among the job's.
        strategy: TensorFlow's ``MirroredStrategy`` (``None`` on JAX, whose distribution is global).
    """

    devices: int = 1
    process_id: int = 0
    num_processes: int = 1
    strategy: Any = None

    def scope(self) -> contextlib.AbstractContextManager:
        """Where the model and its optimizer must be built (TensorFlow's strategy; JAX's is global)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    @property
    def writes(self) -> bool:
        """Only process 0 writes checkpoints, history and state."""
        return self.process_id == 0

    @property
    def shard(self) -> tuple[int, int]:
        """(index, count): this process loads the index-th of count equal parts of each global batch."""
        return self.process_id, self.num_processes

    def check_batch(self, batch_size: int) -> None:
        """The global batch must split evenly over the devices."""
        if batch_size % self.devices:
            raise ValueError(f"the batch of {batch_size} does not split evenly over {self.devices} devices; "
                             "use a multiple of the device count")


def place(devices: str | int | None = None, *, coordinator: str | None = None, num_processes: int | None = None,
          process_id: int | None = None) -> Placement:
    """Sets Keras' distribution for this process (before any model is built) and says where it trains.

    Args:
        devices: ``None`` or 1: one device, no distribution; N: N devices of this host; ``"all"``: every
            device of this host. With several processes, every process uses the same count.
        coordinator, num_processes, process_id: the multi-host job (default: ``HGD_*`` from the
            environment; none: this process alone). The coordinator is process 0's ``HOST:PORT``; it
            binds that address only.

    Raises:
        ValueError: an impossible request (more devices than the host has, a half-given job), several
            hosts on TensorFlow, or a backend with neither distribution.
    """
    coordinator_var, processes_var, id_var = ENVIRONMENT
    coordinator = coordinator or os.environ.get(coordinator_var)
    num_processes = num_processes or int(os.environ.get(processes_var, "1"))
    process_id = process_id if process_id is not None else int(os.environ.get(id_var, "0"))
    if num_processes > 1 and not coordinator:
        raise ValueError("several processes need a coordinator (--coordinator HOST:PORT or HGD_COORDINATOR)")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} is not in 0..{num_processes - 1}")
    if num_processes == 1 and devices in (None, 1, "1"):
        return Placement()
    import keras

    if keras.backend.backend() == "tensorflow":
        return _mirrored(devices, num_processes)
    if keras.backend.backend() != "jax":
        raise ValueError(f"data-parallel training needs the JAX or TensorFlow backend, not {keras.backend.backend()}")
    if num_processes > 1:
        _join(coordinator, num_processes, process_id)
    local = _local_devices()
    if devices == "all" or (devices is None and num_processes > 1):
        wanted = len(local)
    else:
        wanted = int(devices or 1)
    if not 1 <= wanted <= len(local):
        raise ValueError(f"{wanted} devices asked for, this host has {len(local)}: {local}")
    chosen = _chosen_devices(wanted, num_processes)
    # Each process loads its own share of every batch (PairBatches' shard): Keras must not shard again.
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=chosen, auto_shard_dataset=False))
    log.info("data parallel over %d device(s) (%d per process, %d process(es)): %s", len(chosen), wanted,
             num_processes, chosen)
    return Placement(devices=len(chosen), process_id=process_id, num_processes=num_processes)


def _mirrored(devices: str | int | None, num_processes: int) -> Placement:
    """TensorFlow: ``MirroredStrategy`` over devices of this host (GPUs, else logical CPU devices)."""
    if num_processes > 1:
        raise ValueError("several hosts need the JAX backend (KERAS_BACKEND=jax): Keras' distribution API covers "
                         "JAX only, and the toolkit does not set up TensorFlow's multi-worker strategy")
    import tensorflow as tf

    local = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    wanted = len(local) if devices in (None, "all") else int(devices)
    if not 1 <= wanted <= len(local):
        raise ValueError(f"{wanted} devices asked for, this host has {len(local)}: {[d.name for d in local]}")
    strategy = tf.distribute.MirroredStrategy([d.name for d in local[:wanted]])
    log.info("data parallel (tf.distribute) over %d device(s): %s", wanted, [d.name for d in local[:wanted]])
    return Placement(devices=wanted, strategy=strategy)


def _join(coordinator: str, num_processes: int, process_id: int) -> None:
    """Joins the job through JAX's coordinator (CPU devices reduce over gloo)."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                               coordinator_bind_address=coordinator, heartbeat_timeout_seconds=HEARTBEAT_SECONDS)


def _local_devices() -> list[str]:
    import jax

    return [f"{d.platform}:{d.id}" for d in jax.local_devices()]


def _chosen_devices(per_process: int, num_processes: int) -> list[str]:
    """The first ``per_process`` local devices of every process, in process order (the batch's order)."""
    import jax

    by_process: dict[int, list] = {}
    for device in jax.devices():
        by_process.setdefault(device.process_index, []).append(device)
    return [f"{d.platform}:{d.id}" for p in sorted(by_process) for d in by_process[p][:per_process]]
