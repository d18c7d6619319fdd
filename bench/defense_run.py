"""Wall time (start-up included) and peak memory of whole ``run_defense.sh`` runs.

Why: a submission is judged as a process: how long ``run_defense.sh INPUT_DIR OUTPUT_FILE``
takes from launch to exit on a folder of images, and its peak memory (the project's goal:
<= 4 GiB). Measured for (a) ``baselines/undefended``, (b) the HGD defense with the
denoisers that ``defense/config.json`` names and, with ``--which ... hgd-bf16``, (c) the same with
its denoisers computed in ``mixed_bfloat16`` (then the share of (c)'s labels equal to (b)'s is
printed: the bfloat16 lever is only worth taking where it changes no label). Peak memory is the
child's max RSS, read with ``os.wait4`` from this parent process (the shell ``exec``s python, so it
is python's).

Both submission folders are copied to a temporary folder and the copies are run (so
``--batch-size`` can override their config.json). The trained denoiser weights may not exist
yet, and ``defense/run_defense.sh`` refuses to run without them: for timing only, RANDOMLY
INITIALISED DUNET weights (``build_dunet(...).save_weights``, width/lateral from the config)
are written where the copy's config.json points. Its predictions are meaningless: (b) measures
cost only. With ``--trained`` the real weights (copied along) are used instead.

``--width W`` measures a cheaper (or dearer) denoiser in the same defense: the copy's denoisers are
built at width ``W``; with ``--weights FILE`` (trained weights of that width, e.g. a distilled
student) they are real, else untrained as above.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

from hgd.defenses.packaging import denoiser_entries

from _common import DEFAULT_IMAGES, REPO, image_folder, log, median, table, temp_workdir

UNTRAINED_WARNING = ("WARNING: (b) HGD RUNS WITH RANDOMLY INITIALISED, UNTRAINED DENOISER WEIGHTS. "
                     "IT MEASURES COST (TIME, MEMORY) ONLY; ITS PREDICTIONS ARE MEANINGLESS.")


def submission_copy(source: pathlib.Path, workdir: pathlib.Path, batch_size: int | None,
                    dtype_policy: str | None = None, width: float | None = None) -> pathlib.Path:
    """``source`` (a submission folder) copied under ``workdir`` (a folder per ``dtype_policy``), its config's
    batch size and its denoisers' dtype policy and width overridden where given."""
    copy = workdir / (dtype_policy or "as-configured") / source.relative_to(REPO)
    shutil.copytree(source, copy)
    config = json.loads((copy / "config.json").read_text())
    if batch_size:
        config["batch_size"] = batch_size
    if dtype_policy:
        for spec in denoiser_entries(config):
            spec["dtype_policy"] = dtype_policy
    if width:
        for spec in denoiser_entries(config):
            spec["width"] = width
    (copy / "config.json").write_text(json.dumps(config, indent=1))
    return copy


def write_weights(copy: pathlib.Path, trained: pathlib.Path) -> None:
    """Writes ``trained`` (a denoiser weights file) at every path ``copy/config.json`` names."""
    config = json.loads((copy / "config.json").read_text())
    for spec in denoiser_entries(config):
        path = copy / spec["weights"]
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trained, path)
        log(f"copied {trained} to {path}")


def write_random_weights(copy: pathlib.Path) -> None:
    """Writes randomly initialised DUNET weights at the paths ``copy/config.json`` names."""
    import keras

    from hgd.defenses.dunet import build_dunet

    keras.utils.set_random_seed(0)
    config = json.loads((copy / "config.json").read_text())
    for spec in denoiser_entries(config):
        path = copy / spec["weights"]
        path.parent.mkdir(parents=True, exist_ok=True)
        build_dunet(width=float(spec.get("width", 1.0)), lateral=bool(spec.get("lateral", True))).save_weights(path)
        log(f"wrote untrained weights {path}")
    keras.backend.clear_session()


def run_once(script: pathlib.Path, images: pathlib.Path, output: pathlib.Path) -> tuple[float, float, int, int]:
    """(wall s, peak RSS GiB, exit code, prediction lines) of one run; its stderr passes through."""
    env = {**os.environ, "PYTHON": sys.executable}
    output.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.Popen(["sh", str(script), str(images), str(output)], env=env, stdout=sys.stderr)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
    lines = len(output.read_text().splitlines()) if output.exists() else 0
    return wall, usage.ru_maxrss / 2**20, proc.returncode, lines  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=pathlib.Path, default=DEFAULT_IMAGES, help="PNG folder (first --n files)")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--which", nargs="+", choices=["undefended", "hgd", "hgd-bf16"], default=["undefended", "hgd"],
                        help="hgd-bf16: the HGD defense with its denoisers computed in mixed_bfloat16 (with hgd: "
                             "how many of its labels equal the float32 run's is printed)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each, alternating; medians are reported")
    parser.add_argument("--trained", action="store_true", help="use defense/'s real (trained) weights")
    parser.add_argument("--batch-size", type=int, default=None, help="override both configs' batch_size")
    parser.add_argument("--width", type=float, default=None, help="build HGD's denoisers at this width (default: "
                        "the config's); untrained unless --weights")
    parser.add_argument("--weights", type=pathlib.Path, default=None,
                        help="trained denoiser weights for HGD's denoisers (of --width where not the config's)")
    args = parser.parse_args()
    if args.weights and args.trained:
        parser.error("--weights replaces defense/'s weights: give it or --trained, not both")
    if args.width and args.trained:
        parser.error("--trained runs defense/'s weights at their width: give --weights FILE for another width")
    if args.weights and not args.weights.is_file():
        parser.error(f"--weights: no such file {args.weights}")
    trained = args.trained or args.weights is not None

    with temp_workdir("defense") as tmp:
        tmp = pathlib.Path(tmp)
        images = image_folder(args.images, args.n, tmp)
        n = len(os.listdir(images))
        scripts = {}
        if "undefended" in args.which:
            copy = submission_copy(REPO / "baselines" / "undefended", tmp, args.batch_size)
            scripts["(a) baselines/undefended"] = copy / "run_defense.sh"
        untrained = "" if trained else " -- UNTRAINED weights, cost only"
        width = f", denoiser width {args.width}" if args.width else ""
        for which, policy, label in (("hgd", None, "(b) HGD, defense/config.json"),
                                     ("hgd-bf16", "mixed_bfloat16", "(c) HGD, denoiser in mixed_bfloat16")):
            if which in args.which:
                copy = submission_copy(REPO / "defense", tmp, args.batch_size, policy, args.width)
                if args.weights:
                    write_weights(copy, args.weights)
                elif not trained:
                    log(UNTRAINED_WARNING)
                    write_random_weights(copy)
                scripts[label + width + untrained] = copy / "run_defense.sh"
        results: dict[str, list[tuple[float, float, int, int]]] = {name: [] for name in scripts}
        outputs = {name: tmp / f"result{i}.csv" for i, name in enumerate(scripts)}
        for r in range(args.rounds):
            for name in scripts if r % 2 == 0 else reversed(scripts):
                log(f"round {r + 1}/{args.rounds}: {name}")
                results[name].append(run_once(scripts[name], images, outputs[name]))
                wall, peak, code, lines = results[name][-1]
                log(f"  {wall:.1f} s, peak RSS {peak:.2f} GiB, exit {code}, {lines} prediction lines")
        agreement = _label_agreement([outputs[name] for name in scripts if name.startswith(("(b)", "(c)"))])

    rows = []
    for name, runs in results.items():
        wall, peak = median([w for w, *_ in runs]), max(p for _, p, *_ in runs)
        ok = all(code == 0 and lines == n for _, _, code, lines in runs)
        rows.append([name, n, f"{wall:.1f}", f"{n / wall:.2f}", f"{peak:.2f}", "ok" if ok else "FAILED"])
    if "hgd" in args.which and not trained:
        print(f"**{UNTRAINED_WARNING}**\n")
    batch = f"batch size {args.batch_size} (overridden)" if args.batch_size else "the configs' batch size"
    print(f"Median wall time of {args.rounds} run(s) each (launch to exit, start-up included), {batch}; peak = "
          f"max RSS of the process over all runs. Goal: peak <= 4 GiB.\n")
    print(table(["submission", "images", "wall s", "img/s", "peak RSS GiB", "exit / lines"], rows))
    if agreement:
        print(f"\nLabels of (c) equal to (b)'s on {agreement[0]} of {agreement[1]} images.")


def _label_agreement(outputs: list[pathlib.Path]) -> tuple[int, int] | None:
    """(equal labels, images) of the float32 and bfloat16 HGD runs' last outputs, when both ran."""
    from hgd.io.competition_csv import read_predictions_csv

    if len(outputs) != 2 or not all(path.is_file() for path in outputs):
        return None
    full, rounded = (read_predictions_csv(path) for path in outputs)
    return sum(rounded.get(image) == label for image, label in full.items()), len(full)


if __name__ == "__main__":
    main()
