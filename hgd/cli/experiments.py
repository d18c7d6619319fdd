"""``python -m hgd.cli.experiments``: the paper's evaluation on real images (:mod:`hgd.evaluation.paper_tables`).

The White and Black test sets, the accuracy of rows of denoisers on them, and Figures 5 and 7
(``docs/results/paper-tables.md``)::

    python -m hgd.cli.experiments testsets ../shared/datasets/nips17_dev ~/hgd-work/testsets
    python -m hgd.cli.experiments evaluate ~/hgd-work/testsets --row NA=none --row FGD=~/hgd-work/runs/fgd_lite0 \\
        --json docs/results/table2.json
    python -m hgd.cli.experiments figures ~/hgd-work/testsets --row PGD=... --row FGD=... --out docs/results/figures

A row is ``NAME=none`` (the undefended target), ``NAME=RUN_DIR`` (a ``python -m hgd.cli.train fit`` run:
its ``best.weights.h5`` with the width and layout of its ``config.json``) or ``NAME=CONFIG.json`` (a
defense config's shared denoiser, e.g. the shipped ``defense/config.json``), shared in front of every
``--target`` model (several targets: an ensemble, logits averaged), or ``NAME=RUN_DIR,RUN_DIR,...``: one
denoiser per target, in ``--target`` order (the per-model structure of the winning NIPS 2017 entry;
a shared denoiser costs a third of its denoising). Rows already in ``--json`` are
kept, so an interrupted evaluation resumes row by row. ``--unseen-classes-of RUN_DIR`` scores only
the images of the classes that run held out of training (Table 5: ``fit --holdout-classes``).
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys

from hgd.cli import run_main
from hgd.evaluation.paper_tables import (
    TEST_EPSILONS,
    WHITE,
    ObliviousSpec,
    add_result,
    build_test_sets,
    denoiser_of_run,
    evaluate,
    figures,
    first_images,
    markdown_table,
    plan_test_sets,
    read_test_spec,
    unseen_class_images,
)
from hgd.io.files import write_atomically
from hgd.zoo import ModelName

log = logging.getLogger(__name__)


def _parse_row(text: str) -> tuple[str, list[pathlib.Path]]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise ValueError(f"--row takes NAME=none, NAME=RUN_DIR, NAME=CONFIG.json or NAME=RUN_DIR,RUN_DIR,..., "
                         f"got {text!r}")
    return name, [] if value == "none" else [pathlib.Path(run).expanduser() for run in value.split(",")]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hgd.cli.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    models = [m.value for m in ModelName]
    build = commands.add_parser("testsets", help="build the White and Black test sets (resumes)")
    build.add_argument("source", type=pathlib.Path, help="labelled folder (nips17_dev)")
    build.add_argument("out_dir", type=pathlib.Path)
    build.add_argument("--target", choices=models, default=ModelName.LITE0.value)
    build.add_argument("--training-models", nargs="+", choices=models, default=[m.value for m in
                                                                               (ModelName.LITE0, ModelName.LITE1)])
    build.add_argument("--black-model", choices=models, default=ModelName.LITE2.value)
    build.add_argument("--no-progress", action="store_true")
    score = commands.add_parser("evaluate", help="accuracy of rows of denoisers on the test sets")
    score.add_argument("testsets", type=pathlib.Path, help="a folder made by `testsets`")
    score.add_argument("--row", action="append", required=True,
                       help="NAME=none, NAME=RUN_DIR, NAME=CONFIG.json (shared in front of the targets) or "
                            "NAME=RUN_DIR,RUN_DIR,... (one per target) (repeatable)")
    score.add_argument("--target", nargs="+", choices=models, default=None,
                       help="protected model(s) (default: the test sets' target)")
    score.add_argument("--json", type=pathlib.Path, required=True, help="results file (rows in it are kept)")
    score.add_argument("--images", type=int, default=None,
                       help="score the first N clean images and their test images (default: all)")
    score.add_argument("--unseen-classes-of", type=pathlib.Path, default=None, metavar="RUN_DIR",
                       help="score only the images of the classes this fit run held out of training (Table 5)")
    score.add_argument("--batch-size", type=int, default=16)
    score.add_argument("--no-progress", action="store_true")
    draw = commands.add_parser("figures", help="Figure 5 (layer-wise perturbation) and Figure 7 (slopes)")
    draw.add_argument("testsets", type=pathlib.Path, help="a folder made by `testsets`")
    draw.add_argument("--row", action="append", default=[], help="NAME=RUN_DIR of a denoiser to show (repeatable)")
    draw.add_argument("--attack", default=None, help="SET/ATTACK (default: white FGSM on the target)")
    draw.add_argument("--eps", type=int, default=16, choices=TEST_EPSILONS)
    draw.add_argument("--images", type=int, default=100, help="how many test images")
    draw.add_argument("--out", type=pathlib.Path, required=True, help="folder for the PNGs and figures.json")
    transfer = commands.add_parser("held-out", help="transfer to a held-out member: each shipped transfer attack "
                                                    "against plain MI-FGSM (resumes attack by attack)")
    transfer.add_argument("source", type=pathlib.Path, help="labelled folder (nips17_dev)")
    transfer.add_argument("--json", type=pathlib.Path, required=True, help="results file (attacks in it are kept)")
    transfer.add_argument("--craft", nargs="+", choices=models, default=[m.value for m in
                                                                        (ModelName.LITE0, ModelName.LITE1)])
    transfer.add_argument("--held-out", choices=models, default=ModelName.LITE2.value)
    transfer.add_argument("--eps", type=int, default=16)
    transfer.add_argument("--limit", type=int, default=None, help="only the first N images (sorted by ImageId)")
    transfer.add_argument("--batch-size", type=int, default=16)
    return parser


def _held_out(args: argparse.Namespace) -> int:
    from hgd.evaluation.held_out import held_out_transfer, markdown

    results = held_out_transfer(args.source, args.json, craft=args.craft, held_out=args.held_out,
                                epsilon=args.eps, limit=args.limit, batch_size=args.batch_size)
    print(markdown(results))
    return 0


def _testsets(args: argparse.Namespace) -> int:
    spec = ObliviousSpec(source=str(args.source.resolve()), target=args.target,
                       training_models=tuple(args.training_models), black_model=args.black_model)
    plan = build_test_sets(spec, args.out_dir, progress=not args.no_progress)
    print(f"{len(plan)} test images in {args.out_dir}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    spec = read_test_spec(args.testsets)
    plan = plan_test_sets(spec, args.testsets)
    if args.unseen_classes_of:
        plan = unseen_class_images(plan, args.unseen_classes_of.expanduser())
    plan = first_images(plan, args.images)
    missing = [p.adversarial for p in plan if not p.adversarial.is_file()]
    if missing:
        raise FileNotFoundError(f"{args.testsets}: {len(missing)} test images missing; rerun `testsets`")
    targets = args.target or [spec.target]
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    images = len({pair.image for pair in plan})
    other = sorted({row.get("images") for row in results.values()} - {images}, key=str)
    if other:
        raise ValueError(f"{args.json} holds rows scored on {other} images, not {images}: use another --json")
    for name, runs in map(_parse_row, args.row):
        key = f"{name} -> {'+'.join(targets)}"
        if key in results:
            log.info("%s: kept from %s", key, args.json)
            continue
        row = {"run": ",".join(map(str, runs)) or None, "images": images,
               "accuracy": evaluate(plan, targets, [denoiser_of_run(run) for run in runs],
                                    batch_size=args.batch_size, progress=not args.no_progress)}
        results = add_result(args.json, key, row)
    print(markdown_table({key: row["accuracy"] for key, row in results.items()}))
    return 0


def _figures(args: argparse.Namespace) -> int:
    spec = read_test_spec(args.testsets)
    rows = [_parse_row(text) for text in args.row]
    if any(len(runs) > 1 for _, runs in rows):
        raise ValueError("figures draws one denoiser per row (NAME=RUN_DIR)")
    denoisers = {name: denoiser_of_run(runs[0]) for name, runs in rows if runs}
    numbers = figures(plan_test_sets(spec, args.testsets), spec.target, denoisers, args.out,
                      attack=args.attack or f"{WHITE}/fgsm_{spec.target}", epsilon=args.eps, count=args.images)
    write_atomically(args.out / "figures.json", "w", lambda f: json.dump(numbers, f, indent=1))
    print("| image | E_l at the guide layer | E_l at the logits | slope (median) |\n|---|---:|---:|---:|")
    for name, curve in numbers["E_l"].items():
        slope = numbers["slope_median"].get(name.removesuffix(" output"))
        print(f"| {name} | {curve[-2]:.3f} | {curve[-1]:.3f} | {'-' if slope is None else f'{slope:.2f}'} |")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.getLogger("hgd").setLevel(logging.INFO)
    run_main(lambda: {"testsets": _testsets, "evaluate": _evaluate, "figures": _figures,
                      "held-out": _held_out}[args.command](args))


if __name__ == "__main__":
    main(sys.argv[1:])
