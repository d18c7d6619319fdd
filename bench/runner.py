"""The competition runner's own overhead, local executor, and the Docker executor's cost per work piece.

Why: the runner must stay out of the way. Target: everything but the submissions' own run time is
<= 5% of the runner's wall time with the local executor; and the Docker executor (EVAL's sandbox)
starts a container per work piece, whose cost per piece is wanted. Both are measured on real runs of
``run_attacks_and_defenses.sh`` (``python3 -m hgd.cli.runner``) with the shipped attacks ``attacks/noop``,
``attacks/random_noise`` and ``attacks/fgsm`` against ``baselines/undefended`` on the first
``--images`` images of ``../shared/datasets/nips17_dev`` (copies of ``sample_data/`` under new names,
with their originals' labels, when it is absent), batch size 100 and eps 16 unless told otherwise;
each executor runs once, into a fresh output folder, so no piece is reused.

Overhead: read from the run's ``run_summary.json`` (``hgd.runner.results.overhead``:
``wall_seconds`` is ``Harness.run`` only; ``submission_seconds`` sums what the executor measured per
piece), and again against this script's own wall time of the whole command (python start-up,
dataset loading, scoring and the report included).

Per piece: the runner stores only each piece's submission seconds (``OUTPUT/pieces/**.json``; the
Docker executor counts from ``container.start()`` returning to the container's exit: the code copy,
create, start and remove fall outside). A piece's wall time is therefore taken as the gap between
the modification times of consecutive piece files (pieces run one after another; the first counts
from the runner's "... work pieces" line on stdout) and covers the whole piece: input copies,
the run, the eps-box enforcement or result parsing, the record. Container overhead per piece:
(a) its wall time under Docker minus the submission's own time under the local executor (it also
holds the harness's own per-piece work, and the difference between the submission's run times in
the image and on the host, which a loaded machine makes swing by tens of seconds either way), and
(b) the time the Docker piece spends outside the submission's measured run minus the same for the
local piece: what the executor adds around each container (code copy and chmod, create, start,
log read, remove), free of that noise. The Docker engine
(``docker/start_engine.sh``; ``DOCKER_HOST`` defaults to its socket) and the submissions' image
(``docker/build_image.sh``) must already be there; if not, that part is skipped with the reason.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

from _common import REPO, image_folder, log, median, table, temp_workdir

DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "nips17_dev"
SAMPLE_DATASET = REPO / "sample_data"
ATTACKS = ("attacks/noop", "attacks/random_noise", "attacks/fgsm")
DEFENSE = "baselines/undefended"
ENGINE_SOCKET = pathlib.Path("/tmp/dockerd/docker.sock")  # docker/start_engine.sh's
HARNESS_START = "work pieces"  # in the line the runner prints just before Harness.run


@dataclasses.dataclass(frozen=True)
class Piece:
    """One finished work piece: the submission's own seconds and the piece's wall seconds."""

    seconds: float
    wall: float
    ok: bool


@dataclasses.dataclass(frozen=True)
class Run:
    """One runner invocation: this script's wall time of it, its exit status, summary and pieces."""

    outside_wall: float
    exit_code: int
    summary: dict
    pieces: dict[str, Piece]


def make_dataset(source: pathlib.Path, n: int, workdir: pathlib.Path) -> pathlib.Path:
    """A competition-format folder ``workdir`` of ``n`` images (``_common.image_folder``'s pick) and
    their ``dev_dataset.csv`` rows; a copy ``000_<id>.png`` of sample_data gets ``<id>``'s labels."""
    workdir.mkdir()
    images = image_folder(source / "images", n, workdir)
    labels = source if (source / "images").is_dir() else SAMPLE_DATASET
    with open(labels / "dev_dataset.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, {row["ImageId"]: row for row in reader}
    with open(workdir / "dev_dataset.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        for path in sorted(images.iterdir()):
            row = rows[path.stem] if path.stem in rows else rows[path.stem.split("_", 1)[1]]
            writer.writerow({**row, "ImageId": path.stem})
    return workdir


def runner_env() -> dict[str, str]:
    """The runner's environment: this interpreter for it and the local submissions, and the engine of
    ``docker/start_engine.sh`` when ``DOCKER_HOST`` is unset (as ``docker/build_image.sh`` does)."""
    env = {**os.environ, "PYTHON": sys.executable}
    if "DOCKER_HOST" not in env and ENGINE_SOCKET.is_socket():
        env["DOCKER_HOST"] = f"unix://{ENGINE_SOCKET}"
    return env


def docker_problem(env: dict[str, str]) -> str | None:
    """Why the Docker executor cannot run the submissions here (no SDK, engine or image), or ``None``."""
    try:
        import docker

        client = docker.from_env(environment=env)
        client.ping()
    except Exception as error:  # noqa: BLE001 - any failure means: no engine to measure
        return (f"cannot reach a Docker engine at {env.get('DOCKER_HOST', 'the default socket')} ({error}); "
                "start one as root: docker/start_engine.sh")
    for folder in [*ATTACKS, DEFENSE]:
        image = json.loads((REPO / folder / "metadata.json").read_text())["container"]
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            return f"image {image} (named by {folder}/metadata.json) is missing; build it: docker/build_image.sh"
    return None


def read_pieces(output: pathlib.Path, harness_start: float) -> dict[str, Piece]:
    """Every stored piece by label, its wall time the gap since the previous piece file was written."""
    records = sorted((path.stat().st_mtime_ns / 1e9, json.loads(path.read_text()))
                     for path in (output / "pieces").rglob("*.json"))
    pieces, previous = {}, harness_start
    for written, record in records:
        label = (f"{record['defense']} on {record['attack']} b{record['batch']}" if "defense" in record
                 else f"{record['attack']} b{record['batch']}")
        ok = record["exit_code"] == 0 and not record["timed_out"] and not record["infra_error"]
        pieces[label] = Piece(seconds=record["seconds"], wall=written - previous, ok=ok)
        previous = written
    return pieces


def run_runner(executor: str, dataset: pathlib.Path, batch_size: int, eps: int, output: pathlib.Path,
               env: dict[str, str]) -> Run:
    """Runs ``run_attacks_and_defenses.sh`` once; its stdout lines are timed on arrival (the harness's
    start) and passed on to stderr with its own stderr."""
    command = ["sh", str(REPO / "run_attacks_and_defenses.sh"), *(a for path in ATTACKS for a in ("--attack", path)),
               "--defense", DEFENSE, "--dataset-dir", str(dataset), "--output-dir", str(output),
               "--batch-size", str(batch_size), "--eps", str(eps), "--executor", executor, "--no-progress"]
    log(f"{executor}: {' '.join(command)}")
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    harness_start = time.time()
    for line in proc.stdout:
        if HARNESS_START in line:
            harness_start = time.time()
        log(f"  {line.rstrip()}")
    exit_code = proc.wait()
    outside = time.perf_counter() - start
    summary_path = output / "run_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return Run(outside_wall=outside, exit_code=exit_code, summary=summary,
               pieces=read_pieces(output, harness_start) if summary else {})


def overhead_row(executor: str, run: Run) -> list[object]:
    """One row of the overhead table: the runner's own accounting, and against the outside wall time."""
    s = run.summary
    if not s:
        return [executor, "-", "-", f"{run.outside_wall:.1f}", *["-"] * 5, f"FAILED (exit {run.exit_code})"]
    outside_percent = 100 * (run.outside_wall - s["submission_seconds"]) / run.outside_wall
    failed = sum(not p.ok for p in run.pieces.values())
    status = "ok" if run.exit_code == 0 and not failed else f"exit {run.exit_code}, {failed} piece(s) failed"
    return [executor, s["images"], s["pieces_run"], f"{run.outside_wall:.1f}", f"{s['wall_seconds']:.1f}",
            f"{s['submission_seconds']:.1f}", f"{s['harness_overhead_seconds']:.1f}",
            f"{s['harness_overhead_percent']:.1f}", f"{outside_percent:.1f}", status]


def container_overheads(local: Run, docker: Run) -> dict[str, tuple[float, float]]:
    """Per piece present in both runs: container overhead (a) docker wall - local submission s, and
    (b) docker wall - docker submission s - (local wall - local submission s)."""
    return {label: (there.wall - here.seconds, (there.wall - there.seconds) - (here.wall - here.seconds))
            for label, here in local.pieces.items() if (there := docker.pieces.get(label)) is not None}


def piece_rows(local: Run, docker: Run) -> list[list[object]]:
    """Per piece: times under each executor and the container overhead (a), (b)."""
    rows = []
    for label, (a, b) in container_overheads(local, docker).items():
        here, there = local.pieces[label], docker.pieces[label]
        rows.append([label, f"{here.seconds:.2f}", f"{here.wall:.2f}", f"{there.seconds:.2f}", f"{there.wall:.2f}",
                     f"{a:.2f}", f"{b:.2f}", "ok" if here.ok and there.ok else "FAILED"])
    return rows


def spread_rows(local: Run, docker: Run) -> list[list[object]]:
    """Min / median / max of (a) and (b) over attack pieces, defense pieces and all pieces."""
    overheads = container_overheads(local, docker)
    kinds = {"attack pieces": [x for x in overheads if " on " not in x],
             "defense pieces": [x for x in overheads if " on " in x], "all pieces": list(overheads)}
    rows = []
    for index, name in enumerate(["(a) docker wall - local submission s", "(b) docker - local, outside the "
                                  "submission's run"]):
        for kind, members in kinds.items():
            if members:
                values = [overheads[x][index] for x in members]
                rows.append([name, kind, len(values), f"{min(values):.2f}", f"{median(values):.2f}",
                             f"{max(values):.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=pathlib.Path, default=DEFAULT_DATASET,
                        help="competition-format folder (images/ + dev_dataset.csv); its first --images images")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100, help="the runner's --batch-size (EVAL: 100)")
    parser.add_argument("--eps", type=int, default=16)
    parser.add_argument("--executors", nargs="+", choices=["local", "docker"], default=["local", "docker"])
    args = parser.parse_args()

    env = runner_env()
    runs: dict[str, Run] = {}
    skipped = docker_problem(env) if "docker" in args.executors else None
    if skipped:
        log(f"docker: skipped: {skipped}")
    with temp_workdir("runner") as tmp:
        tmp = pathlib.Path(tmp)
        dataset = make_dataset(args.dataset, args.images, tmp / "dataset")
        for executor in args.executors:
            if not (executor == "docker" and skipped):
                runs[executor] = run_runner(executor, dataset, args.batch_size, args.eps, tmp / executor, env)

    print(f"{', '.join(ATTACKS)} against {DEFENSE}; batch size {args.batch_size}, eps {args.eps}; one run per "
          "executor, fresh output folder. Runner overhead = wall - submission seconds (the runner's "
          "run_summary.json: wall = Harness.run only); last % column: the same against this script's wall "
          "time of the whole command (start-up, scoring and report included). Target (local): <= 5%.\n")
    print(table(["executor", "images", "pieces", "command wall s", "runner wall s", "submission s",
                 "overhead s", "overhead % (runner)", "overhead % (command wall)", "status"],
                [overhead_row(name, run) for name, run in runs.items()]))
    if skipped:
        print(f"\n**Docker executor not measured: {skipped}**")
    elif "local" in runs and "docker" in runs and container_overheads(runs["local"], runs["docker"]):
        print("\nPer piece, seconds. Submission s = what the executor measured (Docker: from container start "
              "to exit); wall = gap between consecutive piece files. Container overhead (a) = docker wall - "
              "local submission s; (b) = (docker wall - docker submission s) - (local wall - local submission s): "
              "code copy, create, start, remove, without the submissions' own run-time differences.\n")
        print(table(["piece", "local submission s", "local wall s", "docker submission s", "docker wall s",
                     "overhead (a) s", "overhead (b) s", "status"], piece_rows(runs["local"], runs["docker"])))
        print("\nContainer overhead per piece, seconds.\n")
        print(table(["definition", "pieces", "n", "min", "median", "max"],
                    spread_rows(runs["local"], runs["docker"])))


if __name__ == "__main__":
    main()
