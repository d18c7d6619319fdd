"""Ray clusters: joining one, and the rules every command that spreads work over one shares.

Ray is an optional dependency (``pip install -e ".[cluster]"``): everything here imports it when
called, so the rest of the toolkit runs without it, and a missing install is one clear error
(:class:`ClusterUnavailable`) naming the extra.

A cluster is started outside the toolkit (``ray start --head`` and ``ray start --address=...`` on
each machine, a Ray cluster launcher, KubeRay; ``docs/guide/cluster.md``); a command joins it with
``--cluster ADDRESS`` (``auto``: the cluster already started on this machine). Every node needs the
toolkit installed (or its Docker image, for ``--executor docker``); nodes share no file system: the
driver sends inputs and code through Ray's object store and stores every result itself.
"""

from __future__ import annotations

import logging
from typing import Any

INSTALL_HINT = 'pip install -e ".[cluster]"'
"""How to get Ray for the toolkit (from a checkout; ``pip install 'hgd-toolkit[cluster]'`` otherwise)."""


class ClusterUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be joined; the message says which and what to do."""


def import_ray() -> Any:
    """The ``ray`` module; :class:`ClusterUnavailable` naming the extra when it is not installed."""
    try:
        import ray
    except ImportError:
        raise ClusterUnavailable(f"--cluster needs Ray, an optional dependency: {INSTALL_HINT}") from None
    return ray


def connect(address: str) -> None:
    """Joins the Ray cluster at ``address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``), unless this
    process has already joined one (then that one is used, whatever ``address`` says).

    Raises:
        ClusterUnavailable: Ray is missing or no cluster answers at ``address``.
    """
    ray = import_ray()
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ClusterUnavailable(f"cannot join the Ray cluster at {address!r}: {error}") from None


def node_names() -> dict[str, str]:
    """Every node the cluster has known, alive or dead: node id -> ``ADDRESS/IDPREFIX`` for reports."""
    ray = import_ray()
    return {node["NodeID"]: f"{node['NodeManagerAddress']}/{node['NodeID'][:8]}" for node in ray.nodes()}


def cluster_cpus() -> float:
    """The CPUs of the nodes alive now (at least 1)."""
    ray = import_ray()
    return max(float(ray.cluster_resources().get("CPU", 0.0)), 1.0)
