"""The competition runner on a Ray cluster: speed-up with nodes, the cluster path's cost per piece, the driver's rate.

Why: a cluster must buy speed in proportion to its nodes, cost little per piece, and its driver (which
prepares, checks and stores every piece) must not become the bottleneck of a competition-sized plan.
Everything runs on a loopback cluster on this machine: a head without CPUs and worker nodes of one CPU
each (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, set before Ray is imported, keeps every process on
127.0.0.1). Pieces are small purpose-built submissions written into a temporary folder, over copies of
``sample_data/`` images, through the real harness (``hgd.runner.harness.Harness``) and dispatches.

1. **Speed-up**: ``--pieces`` attack pieces of a CPU-bound attack (``--busy`` CPU-seconds each, then a
   copy) and a trivial defense, on 1 worker node vs 2, interleaved over ``--rounds``; goal >= 1.8x.
2. **Cost per piece**: the same do-nothing pieces (an attack that copies its inputs, a defense that
   labels every image 1) run one after another on this machine (``SequentialDispatch``, local executor)
   and on one worker node (``RayDispatch``), at 100 images per piece (the competition's batch) and at 4;
   the difference per piece is what the cluster path adds (sending inputs and code, the task, outputs
   back). Shown also as a share of a real 100-image piece (``--piece-seconds``: the fastest shipped
   defense's batch here); goal <= 5 %.
3. **Driver**: do-nothing pieces of 1 image each, attacks x defenses x batches, on 2 worker nodes: pieces
   per second through the whole harness, the driver's CPU seconds per piece (the rate it could sustain
   with nodes to spare) and its memory (peak RSS) at two plan sizes; extrapolated to the NIPS 2017 plan
   (156 attacks x 107 defenses x 50 batches = 842,400 pieces).

``python3 bench/cluster_runner.py``
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import shutil
import statistics
import sys
import textwrap
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from _common import SAMPLE_IMAGES, log, table, temp_workdir  # noqa: E402

NIPS2017_PIECES = 156 * 50 + 156 * 107 * 50  # attack pieces + defense pieces (targeted attacks included)

SUBMISSIONS = {
    "busy": ("attack", """\
        #!/bin/sh
        # Burns BUSY CPU-seconds, then copies its inputs.
        "${PYTHON:-python3}" -c "import time
        end = time.process_time() + float('$BUSY')
        while time.process_time() < end: pass"
        for f in "$1"/*.png; do cp "$f" "$2/"; done
        """),
    "copy": ("attack", """\
        #!/bin/sh
        for f in "$1"/*.png; do cp "$f" "$2/"; done
        """),
    "ones": ("defense", """\
        #!/bin/sh
        for f in "$1"/*.png; do echo "$(basename "$f"),1"; done > "$2"
        """),
}


def write_submissions(folder: pathlib.Path, busy: float) -> dict[str, pathlib.Path]:
    """The bench's submissions (``busy`` with its CPU-seconds written in), each in its own folder."""
    out = {}
    for name, (kind, script) in SUBMISSIONS.items():
        path = folder / name
        path.mkdir(parents=True)
        entry = "run.sh"
        (path / entry).write_text(textwrap.dedent(script).replace("$BUSY", str(busy)))
        (path / entry).chmod(0o755)
        (path / "metadata.json").write_text(f'{{"type": "{kind}", "entry_point": "{entry}"}}')
        out[name] = path
    return out


def write_dataset(folder: pathlib.Path, n: int) -> pathlib.Path:
    """``n`` copies of the sample images under new ids, in the competition's format (labels irrelevant)."""
    images = folder / "images"
    images.mkdir(parents=True)
    source = sorted(SAMPLE_IMAGES.glob("*.png"))
    lines = ["ImageId,URL,x1,y1,x2,y2,TrueLabel,TargetClass,OriginalLandingURL,License,Author,AuthorProfileURL"]
    for i in range(n):
        shutil.copyfile(source[i % len(source)], images / f"img{i:06d}.png")
        lines.append(f"img{i:06d},u,0,0,1,1,1,2,u,l,a,p")
    (folder / "dev_dataset.csv").write_text("\n".join(lines) + "\n")
    return folder


def run_harness(dataset: pathlib.Path, attacks: list[pathlib.Path], defenses: list[pathlib.Path], batch: int,
                dispatch, out: pathlib.Path):
    """One full harness run into a fresh ``out``; returns its outcome."""
    from hgd.io.datasets import read_dataset
    from hgd.runner.harness import Harness, Settings
    from hgd.runner.submissions import load_submission

    shutil.rmtree(out, ignore_errors=True)
    harness = Harness(dataset=read_dataset(dataset).competition_format(),
                      attacks=[load_submission(a) for a in attacks], defenses=[load_submission(d) for d in defenses],
                      dispatch=dispatch, output_dir=out,
                      settings=Settings(batch_size=batch, epsilon=16, time_limit=600, progress=False))
    return harness.run()


def speedup(cluster, subs, work: pathlib.Path, pieces: int, busy: float, rounds: int) -> list[list[object]]:
    """Wall time of ``pieces`` CPU-bound pieces on one worker node and on two, interleaved."""
    from hgd.runner.ray_dispatch import RayDispatch

    dataset = write_dataset(work / "speedup-data", pieces * 4)
    times: dict[int, list[float]] = {1: [], 2: []}
    second = None
    for r in range(rounds):
        for nodes in ((1, 2) if r % 2 == 0 else (2, 1)):
            if nodes == 2 and second is None:
                second = cluster.add_node(num_cpus=1)
                cluster.wait_for_nodes()
                warm_up()
            if nodes == 1 and second is not None:
                cluster.remove_node(second)
                second = None
                time.sleep(2)  # let the cluster see it gone
            start = time.perf_counter()
            outcome = run_harness(dataset, [subs["busy"]], [subs["ones"]], 4,
                                  RayDispatch("local", progress=False), work / "speedup-out")
            times[nodes].append(time.perf_counter() - start)
            log(f"  speed-up round {r + 1}: {nodes} node(s) {times[nodes][-1]:.2f} s, "
                f"{outcome.pieces_run} pieces on {sorted(outcome.nodes)}")
    if second is not None:
        cluster.remove_node(second)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    return [[f"{pieces} pieces of {busy:g} CPU-s ({rounds} rounds)", f"{one:.2f}", f"{two:.2f}", f"{one / two:.2f}x"]]


def warm_up() -> None:
    """One task per CPU, so the timed runs do not pay the nodes' first worker start."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    ray.get([ray.remote(lambda: time.sleep(0.5)).options(num_cpus=1).remote() for _ in range(cpus)])


def cost_per_piece(subs, work: pathlib.Path, images_per_piece: int, pieces: int, rounds: int,
                   piece_seconds: float) -> list[object]:
    """Per-piece wall time of do-nothing pieces here (sequential) and on one worker node (Ray)."""
    from hgd.runner.dispatch import SequentialDispatch
    from hgd.runner.local_executor import LocalExecutor
    from hgd.runner.ray_dispatch import RayDispatch

    dataset = write_dataset(work / f"cost-data-{images_per_piece}", images_per_piece * pieces)
    per_piece: dict[str, list[float]] = {"here": [], "cluster": []}
    for r in range(rounds):
        for name in (("here", "cluster") if r % 2 == 0 else ("cluster", "here")):
            dispatch = SequentialDispatch(LocalExecutor()) if name == "here" else RayDispatch("local", progress=False)
            start = time.perf_counter()
            outcome = run_harness(dataset, [subs["copy"]], [subs["ones"]], images_per_piece, dispatch,
                                  work / "cost-out")
            per_piece[name].append((time.perf_counter() - start) / outcome.pieces_run)
            log(f"  cost round {r + 1}, {images_per_piece} images: {name} {per_piece[name][-1] * 1000:.0f} ms/piece")
    here, cluster = statistics.median(per_piece["here"]), statistics.median(per_piece["cluster"])
    added = cluster - here
    return [images_per_piece, f"{here * 1000:.0f}", f"{cluster * 1000:.0f}", f"{added * 1000:+.0f}",
            f"{100 * added / piece_seconds:.2f} %"]


def driver_rate(subs, work: pathlib.Path, attacks: int, defenses: int, batches: int) -> list[object]:
    """Do-nothing 1-image pieces through the whole harness on the cluster: rate, driver CPU, driver memory."""
    from hgd.runner.ray_dispatch import RayDispatch

    dataset = write_dataset(work / f"driver-data-{batches}", batches)
    copies = work / f"driver-subs-{attacks}x{defenses}x{batches}"
    attack_dirs = [shutil.copytree(subs["copy"], copies / f"attack{i:03d}") for i in range(attacks)]
    defense_dirs = [shutil.copytree(subs["ones"], copies / f"defense{i:03d}") for i in range(defenses)]
    wall, cpu = time.perf_counter(), time.process_time()
    outcome = run_harness(dataset, attack_dirs, defense_dirs, 1, RayDispatch("local", progress=False),
                          work / "driver-out")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    pieces = outcome.pieces_run
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return [f"{attacks} x {defenses} x {batches}", pieces, f"{pieces / wall:.1f}", f"{1000 * cpu / pieces:.1f}",
            f"{pieces / cpu:.0f}", f"{peak_mib:.0f}", f"{NIPS2017_PIECES * cpu / pieces / 3600:.1f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pieces", type=int, default=12, help="CPU-bound pieces in the speed-up test")
    parser.add_argument("--busy", type=float, default=4.0, help="CPU-seconds of each CPU-bound piece")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--piece-seconds", type=float, default=21.4,
                        help="a real 100-image piece's seconds, for the cost's share (default: baselines/undefended "
                             "on 100 DEV images here, docs/results/training.md)")
    parser.add_argument("--driver-plans", nargs="+", default=["4x25x10", "4x25x40"],
                        help="ATTACKSxDEFENSESxBATCHES plans of 1-image pieces for the driver test")
    args = parser.parse_args(argv)

    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    cluster.wait_for_nodes()
    warm_up()
    try:
        with temp_workdir("cluster") as tmp:
            work = pathlib.Path(tmp)
            subs = write_submissions(work / "subs", args.busy)
            log("speed-up: 1 worker node vs 2")
            speed = speedup(cluster, subs, work, args.pieces, args.busy, args.rounds)
            log("cost per piece: here vs one worker node")
            costs = [cost_per_piece(subs, work, n, pieces, args.rounds, args.piece_seconds)
                     for n, pieces in ((100, 6), (4, 30))]
            second = cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            warm_up()
            log("driver: 1-image pieces on 2 worker nodes")
            drivers = [driver_rate(subs, work, *map(int, plan.split("x"))) for plan in args.driver_plans]
            cluster.remove_node(second)
    finally:
        ray.shutdown()
        cluster.shutdown()
    print("Speed-up of CPU-bound pieces (head without CPUs, worker nodes of one CPU each), median wall seconds:\n")
    print(table(["pieces", "1 node s", "2 nodes s", "speed-up"], speed))
    print(f"\nCost per piece of do-nothing pieces, here vs on one worker node (share: of a {args.piece_seconds:g} s "
          "100-image piece):\n")
    print(table(["images/piece", "here ms/piece", "cluster ms/piece", "added ms", "share"], costs))
    print("\nDriver: 1-image do-nothing pieces on two worker nodes through the whole harness "
          f"(NIPS 2017 plan: {NIPS2017_PIECES:,} pieces):\n")
    print(table(["attacks x defenses x batches", "pieces", "pieces/s", "driver CPU ms/piece",
                 "driver-bound pieces/s", "driver peak RSS MiB", "driver CPU h for NIPS 2017"], drivers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
