"""Work cut into shards, each run on whichever node of a Ray cluster has a free worker, results in order.

For the evaluations and pair building: each worker is a Ray actor that builds its models once
(``factory``, called on the node) and then takes one shard after another; :func:`map_shards` yields
the results in the order of the shards, so the caller stores them exactly as it would have on one
machine (and a caller that saves after each can resume). The shards are the very units the
single-machine loop uses, each with its own seed, so where a shard ran changes nothing in its result.
A worker whose node dies is started again elsewhere and its shard retried (``max_restarts``,
``max_task_retries``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from hgd.cluster import cluster_cpus, import_ray


class ShardWorker:
    """A Ray actor's body: ``factory()`` built once on its node, then ``call(method, *args)`` per shard."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.target = factory()

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.target, method)(*args)


def map_shards(factory: Callable[[], Any], method: str, shards: Iterable[tuple], *, cpus: float = 1.0,
               workers: int | None = None, memory_gib: float | None = None) -> Iterator[Any]:
    """``factory().method(*shard)`` for every shard, on the cluster this process joined; results in order.

    Args:
        factory: a picklable callable (a module-level function or a ``functools.partial`` of one) that
            builds the worker's object on its node.
        method: the object's method each shard calls.
        shards: argument tuples, one per shard (numpy arrays travel through the object store).
        cpus: CPUs each worker asks for.
        workers: how many workers (default: as many as the cluster's CPUs allow).
        memory_gib: memory each worker asks for (``None``: not reserved).
    """
    ray = import_ray()
    from ray.util import ActorPool

    count = workers or max(1, int(cluster_cpus() // cpus))
    options: dict[str, Any] = {"num_cpus": cpus, "max_restarts": 3, "max_task_retries": 3}
    if memory_gib:
        options["memory"] = int(memory_gib * 1024 ** 3)
    actor = ray.remote(ShardWorker).options(**options)
    actors = [actor.remote(factory) for _ in range(count)]
    pool = ActorPool(actors)
    try:
        for shard in shards:  # one shard in flight per worker: the driver holds no more than that in memory
            while not pool.has_free():
                yield pool.get_next()
            pool.submit(lambda worker, args: worker.call.remote(method, *args), shard)
        while pool.has_next():
            yield pool.get_next()
    finally:
        for worker in actors:  # their models hold memory on the nodes: gone with the map
            ray.kill(worker)
