"""``python -m hgd.cli.train {data,fit,defense,continue,validate,install,curves}``: build training pairs,
train a denoiser, train a whole defense (all resume), go on training a defense's installed denoisers by one chunk,
score any weights on a run's validation pairs, install a run's checkpoint, compare runs' validation curves.

Examples (the data sets are described in ``docs/reference/datasets.md``)::

    python -m hgd.cli.train data ../shared/datasets/imagenet_pool ~/hgd-work/pairs
    python -m hgd.cli.train fit ~/hgd-work/pairs ~/hgd-work/runs/fgd_lite0 --guidance fgd --models efficientnet_lite0
    python -m hgd.cli.train defense defense/config.json ../shared/datasets/imagenet_pool ~/hgd-work
    python -m hgd.cli.train continue defense/config.json ../shared/datasets/imagenet_pool ~/hgd-work \
        --max-hours 2 --history-dir docs/results/training
    python -m hgd.cli.train curves FGD=~/hgd-work/runs/fgd_lite0 --out docs/results/training.png

Rerunning a command with the same folders and options goes on where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

from hgd.cli import add_cluster_option, join_cluster, named_path, run_main
from hgd.defenses.dunet import DTYPE_POLICIES
from hgd.train.fit import SELECTIONS
from hgd.train.guidance import Guidance
from hgd.train.pairs import ATTACK_KINDS, ATTACK_SETS, EPSILON_WEIGHTINGS, check_attack_weights
from hgd.zoo import ModelName


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hgd.cli.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    models = [m.value for m in ModelName]

    data = commands.add_parser("data", help="attack clean labelled images into (adversarial, clean) pairs")
    data.add_argument("source", type=pathlib.Path, help="folder with images/ and labels.csv or dev_dataset.csv")
    data.add_argument("out_dir", type=pathlib.Path, help="where the pairs go (keep it outside the checkout)")
    data.add_argument("--models", nargs="+", choices=models, default=["efficientnet_lite0", "efficientnet_lite1"],
                      help="the training attacks' models (default: Lite0 Lite1; Lite2 stays unseen)")
    data.add_argument("--attacks-per-image", type=int, default=None,
                      help="draw this many of the set's attacks per image (default: all of them)")
    data.add_argument("--attack-set", choices=sorted(ATTACK_SETS), default="table1",
                      help="the training attacks: the paper's Table 1 (default), or 'competition': those and the "
                           "harness's 10-step I-FGSM and MI-FGSM on the models' ensemble")
    data.add_argument("--validation-fraction", type=float, default=0.1)
    data.add_argument("--max-epsilon", type=int, default=16, help="eps is drawn per pair from 1..this")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--batch-size", type=int, default=16, help="images per attack call")
    add_cluster_option(data, "the attack calls")
    data.add_argument("--no-progress", action="store_true")

    fit = commands.add_parser("fit", help="train a denoiser on pairs (resumes in RUN_DIR)")
    fit.add_argument("pairs_dir", type=pathlib.Path, help="a folder made by `data`")
    fit.add_argument("run_dir", type=pathlib.Path, help="checkpoints, state and history (outside the checkout)")
    _run_arguments(fit, models)
    fit.add_argument("--crop", type=int, default=None, help="train on random crops of this side (default: 299)")
    fit.add_argument("--steps-per-epoch", type=int, default=None, help="default: one pass over the pairs")
    fit.add_argument("--max-epochs", type=int, default=30)
    fit.add_argument("--max-hours", type=float, default=None,
                     help="stop after this many hours of training (no epoch starts that would pass them)")
    fit.add_argument("--learning-rate", type=float, default=1e-3)
    fit.add_argument("--final-learning-rate", type=float, default=1e-4)
    fit.add_argument("--patience", type=int, default=2, help="epochs without improvement before lowering the rate")
    fit.add_argument("--epsilon-weighting", choices=EPSILON_WEIGHTINGS, default="uniform",
                     help="how often a pair is drawn by its eps: uniform (as built, default) or bound (as often as "
                          "its competition bound: eps 1-4 once ... 13-16 four times)")
    fit.add_argument("--attack-weights", nargs="+", type=_attack_weight, default=[], metavar="KIND=N",
                     help=f"draw the pairs of these attack kinds N times as often ({', '.join(ATTACK_KINDS)}; "
                          "e.g. mifgsm=3), on top of --epsilon-weighting; the others once")
    fit.add_argument("--selection", choices=SELECTIONS, default="loss",
                     help="what makes an epoch the best: loss (the lowest validation loss, default) or accuracy "
                          "(the most validation labels right by the guiding models' ensemble, the loss breaking ties)")
    fit.add_argument("--holdout-classes", type=int, default=0, help="classes kept out of training (Table 5)")
    fit.add_argument("--adaptive-fraction", type=float, default=0.0,
                     help="share of every batch attacked afresh by PGD through the current denoiser (defense-aware "
                          "adversarial training of the denoiser; default 0: the paper's oblivious pairs only)")
    fit.add_argument("--adaptive-epsilon", type=int, default=4, help="that attack's eps in pixel levels (default 4)")
    fit.add_argument("--adaptive-steps", type=int, default=4, help="that attack's PGD steps (default 4)")
    fit.add_argument("--adaptive-loss", choices=["ce", "margin"], default="ce", help="that attack's loss (default ce)")
    fit.add_argument("--init-weights", type=pathlib.Path, default=None,
                     help="start from these denoiser weights (fine-tuning, e.g. defense/weights/...) instead of a "
                          "fresh DUNET")
    fit.add_argument("--teacher", type=pathlib.Path, default=None,
                     help="distil: train on the pixel loss against this trained denoiser's output (validation keeps "
                          "--guidance); copy it out of defense/weights/ first, every session of the run reads it")
    fit.add_argument("--teacher-width", type=float, default=0.5, help="the teacher's DUNET width (default 0.5)")
    fit.add_argument("--built-only", action="store_true",
                     help="train on the pairs built so far while `data` goes on (the mix is then not Table 1's)")
    fit.add_argument("--no-progress", action="store_true", help="one log line per epoch instead of a bar")
    _parallel_arguments(fit)

    defense = commands.add_parser("defense", help="train every denoiser of a defense configuration by its "
                                  "'training' recipe and install the weights where the configuration reads them")
    _recipe_arguments(defense)
    defense.add_argument("--built-only", action="store_true",
                         help="train on the pairs built so far instead of finishing them first")
    defense.add_argument("--no-progress", action="store_true")
    _parallel_arguments(defense)
    more = commands.add_parser("continue", help="more chunks of a defense's training from its installed weights "
                               "(the 'continue' section of its recipe); each installs its result if it is better")
    _recipe_arguments(more)
    more.add_argument("--max-hours", type=float, required=True,
                      help="train at most this long (no epoch starts that, as long as the last, would pass it); "
                           "with --chunks, wall time for all of them")
    more.add_argument("--chunks", type=int, default=1,
                      help="chunks one after another within --max-hours: the next starts where one plateaus "
                           "(default 1)")
    more.add_argument("--history-dir", type=pathlib.Path, default=None,
                      help="append the chunk to NAME.csv here and redraw NAME.png (e.g. docs/results/training)")
    more.add_argument("--no-progress", action="store_true")
    _parallel_arguments(more)
    validate = commands.add_parser("validate", help="the validation loss a run of these options reports, for any "
                                   "denoiser weights (e.g. a bfloat16-trained checkpoint scored in float32)")
    validate.add_argument("pairs_dir", type=pathlib.Path, help="a folder made by `data`")
    validate.add_argument("weights", type=pathlib.Path, help="denoiser weights (.weights.h5)")
    validate.add_argument("--accuracy", action="store_true",
                          help="also the ensemble's accuracy on the denoised validation images (in the same pass), "
                               "in total and by attack kind and competition eps bound")
    validate.add_argument("--save", type=pathlib.Path, default=None,
                          help="also write the weights with the BatchNorm statistics they were scored with (those "
                               "re-estimated by --batch-norm-batches): e.g. to install better-estimated statistics")
    _run_arguments(validate, models)
    install = commands.add_parser("install", help="copy a run's best checkpoint to where a defense reads it")
    install.add_argument("run_dir", type=pathlib.Path, help="a `fit` run")
    install.add_argument("weights", type=pathlib.Path, help="the weights file a defense config names")
    install.add_argument("--float16", action="store_true", help="store float16 (half the size)")
    curves = commands.add_parser("curves", help="table and plot of runs' validation loss relative to their start")
    curves.add_argument("runs", nargs="+", type=named_path, help="NAME=RUN_DIR of `fit` runs")
    curves.add_argument("--out", type=pathlib.Path, required=True, help="the plot (PNG)")
    curves.add_argument("--x", choices=["steps", "cpu-hours"], default="steps",
                        help="the plot's x axis (cpu-hours: runs recorded since the history has cpu_seconds)")
    return parser


def _run_arguments(parser: argparse.ArgumentParser, models: list[str]) -> None:
    """The options that decide a run's network, loss and validation pairs (``fit`` and ``validate``)."""
    parser.add_argument("--guidance", choices=[g.value for g in Guidance], default="fgd", help="the loss (default fgd)")
    parser.add_argument("--models", nargs="+", choices=models, default=["efficientnet_lite0"],
                        help="guiding target models; several sum their losses (default: Lite0)")
    parser.add_argument("--width", type=float, default=1.0, help="DUNET width multiplier (default 1.0, the paper's)")
    parser.add_argument("--dae", action="store_true", help="no lateral connections: the paper's DAE baseline")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--validation-pairs", type=int, default=256, help="validation pairs scored per epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype-policy", choices=DTYPE_POLICIES, default="float32",
                        help="the DUNET body's precision (weights stay float32; default float32; auto: "
                             "mixed_bfloat16 on a GPU or a CPU with AVX512_BF16/AMX, else float32)")
    parser.add_argument("--batch-norm-batches", type=int, default=0,
                        help="before validating, re-estimate the denoiser's BatchNorm statistics on this many seeded "
                             "batches of whole training images (default 0: the statistics the weights hold)")


def _parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """Data parallelism (:mod:`hgd.train.distributed`, the JAX backend): devices of this host, and a
    multi-host job (or ``HGD_COORDINATOR``, ``HGD_NUM_PROCESSES``, ``HGD_PROCESS_ID`` from a launcher)."""
    group = parser.add_argument_group("data parallel (KERAS_BACKEND=jax; docs/guide/training.md)")
    group.add_argument("--devices", default=None, metavar="N|all",
                       help="split every batch over N devices of this host, or all of them (default: one; with "
                            "several processes: all)")
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="several hosts: process 0's address, which it binds (every process gives the same)")
    group.add_argument("--num-processes", type=int, default=None, help="several hosts: how many processes, one per host")
    group.add_argument("--process-id", type=int, default=None, help="several hosts: this process's id, 0..N-1 "
                       "(process 0 writes checkpoints, history and installed weights)")
    group.add_argument("--cluster", metavar="ADDRESS", default=None,
                       help="launch the job on the Ray cluster at ADDRESS: --num-processes processes on as many "
                            "distinct nodes, the coordinator found for them (docs/guide/cluster.md)")
    group.add_argument("--process-cpus", type=float, default=1.0, help="with --cluster: CPUs each process reserves")
    group.add_argument("--process-gpus", type=float, default=0.0, help="with --cluster: GPUs each process reserves")


def _placement(args: argparse.Namespace):
    from hgd.train.distributed import place

    return place(args.devices, coordinator=args.coordinator, num_processes=args.num_processes,
                 process_id=args.process_id)


def _attack_weight(text: str) -> tuple[str, int]:
    """An argparse type for ``KIND=N``: a training attack kind and how many times its pairs are drawn (the
    rule is :func:`hgd.train.pairs.check_attack_weights`; this only parses)."""
    kind, sep, count = text.partition("=")
    try:
        if not sep or not count.isdigit():
            raise ValueError(text)
        check_attack_weights({kind: int(count)})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KIND=N with KIND one of {', '.join(ATTACK_KINDS)} and N >= 1, "
                                         f"got {text!r}") from None
    return kind, int(count)


def _recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """What every recipe command reads: the defense configuration, the clean images, the work folder."""
    parser.add_argument("config", type=pathlib.Path, help="a defense config.json (or profile) with a 'training' section")
    parser.add_argument("source", type=pathlib.Path, help="clean labelled images (images/ + labels.csv)")
    parser.add_argument("work_dir", type=pathlib.Path, help="pairs and runs (keep it outside the checkout)")


def _data(args: argparse.Namespace) -> int:
    from hgd.train.pairs import PairSpec, build_pairs

    spec = PairSpec(source=str(args.source.resolve()), models=tuple(args.models), seed=args.seed,
                    validation_fraction=args.validation_fraction, max_epsilon=args.max_epsilon,
                    attacks_per_image=args.attacks_per_image, attack_set=args.attack_set)
    plan = build_pairs(args.source, args.out_dir, spec, batch_size=args.batch_size, progress=not args.no_progress,
                       cluster=join_cluster(args.cluster))
    print(f"{len(plan)} pairs in {args.out_dir}")
    return 0


def _fit(args: argparse.Namespace) -> int:
    placement = _placement(args)  # before any model is built
    from hgd.train.fit import BEST_WEIGHTS, FitConfig, fit

    config = FitConfig(guidance=Guidance(args.guidance), models=tuple(args.models), width=args.width,
                       lateral=not args.dae, crop=args.crop, batch_size=args.batch_size,
                       steps_per_epoch=args.steps_per_epoch, validation_pairs=args.validation_pairs,
                       max_epochs=args.max_epochs, max_hours=args.max_hours, learning_rate=args.learning_rate,
                       final_learning_rate=args.final_learning_rate, patience=args.patience,
                       holdout_classes=args.holdout_classes, seed=args.seed,
                       adaptive_fraction=args.adaptive_fraction, adaptive_epsilon=args.adaptive_epsilon,
                       adaptive_steps=args.adaptive_steps, adaptive_loss=args.adaptive_loss,
                       init_weights=None if args.init_weights is None else str(args.init_weights.resolve()),
                       dtype_policy=args.dtype_policy,
                       teacher_weights=None if args.teacher is None else str(args.teacher.resolve()),
                       teacher_width=args.teacher_width, batch_norm_batches=args.batch_norm_batches,
                       epsilon_weighting=args.epsilon_weighting, attack_weights=dict(args.attack_weights),
                       selection=args.selection)
    state = fit(args.pairs_dir, args.run_dir, config, verbose=2 if args.no_progress else "auto",
                built_only=args.built_only, placement=placement)
    print(f"{state.summary()} -> {args.run_dir / BEST_WEIGHTS}")
    return 0


def _defense(args: argparse.Namespace) -> int:
    from hgd.train.recipe import train_defense

    trained = train_defense(args.config, args.source, args.work_dir, built_only=args.built_only,
                            progress=not args.no_progress, placement=_placement(args))
    for job, state in trained:
        print(f"{job.name}: {state.summary()} -> {job.spec.weights}")
    return 0


def _continue(args: argparse.Namespace) -> int:
    from hgd.train.continued import continue_chunks

    for result in continue_chunks(args.config, args.source, args.work_dir, max_hours=args.max_hours,
                                  chunks=args.chunks, history_dir=args.history_dir, progress=not args.no_progress,
                                  placement=_placement(args)):
        outcome = "installed" if result.installed else "not better, not installed"
        print(f"{result.job.name} chunk {result.chunk}: {result.state.summary()} -> {result.job.spec.weights} "
              f"({outcome})")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from hgd.train.fit import FitConfig, validation_loss, validation_scores
    from hgd.train.pairs import accuracy_by_bound, read_plan

    config = FitConfig(guidance=Guidance(args.guidance), models=tuple(args.models), width=args.width,
                       lateral=not args.dae, batch_size=args.batch_size, validation_pairs=args.validation_pairs,
                       seed=args.seed, dtype_policy=args.dtype_policy, batch_norm_batches=args.batch_norm_batches)
    if not args.accuracy:
        loss = validation_loss(args.pairs_dir, args.weights, config, save=args.save)
    else:
        loss, outcomes = validation_scores(args.pairs_dir, args.weights, config, save=args.save)
    print(f"{args.weights}: validation loss {loss:.5f} ({config.guidance.value}, {config.dtype_policy})")
    if args.accuracy:
        correct = sum(right for _, right in outcomes)
        print(f"{args.weights}: ensemble accuracy on the denoised validation images {correct}/{len(outcomes)} "
              f"= {correct / len(outcomes):.4f}")
        print(_bound_table(accuracy_by_bound(outcomes, read_plan(args.pairs_dir)[0].attacks())))
    if args.save is not None:
        print(f"{args.weights} with the statistics it was scored with -> {args.save}")
    return 0


def _bound_table(counts: dict[str, dict[int, tuple[int, int]]]) -> str:
    """Correct / pairs by attack kind (rows) and competition bound (columns), as Markdown."""
    bounds = sorted({bound for cells in counts.values() for bound in cells})
    lines = ["| attack kind | " + " | ".join(f"eps <= {bound}" for bound in bounds) + " |",
             "|---|" + "---:|" * len(bounds)]
    for group, cells in counts.items():
        lines.append(f"| {group} | " + " | ".join(f"{cells[b][0]}/{cells[b][1]}" if b in cells else "-"
                                                   for b in bounds) + " |")
    return "\n".join(lines)


def _install(args: argparse.Namespace) -> int:
    from hgd.train.fit import BEST_WEIGHTS
    from hgd.train.recipe import install

    if not (args.run_dir / BEST_WEIGHTS).is_file():
        raise FileNotFoundError(f"{args.run_dir}: no {BEST_WEIGHTS} (not a `fit` run, or no epoch finished yet)")
    install(args.run_dir / BEST_WEIGHTS, args.weights, float16=args.float16)
    print(f"{args.run_dir / BEST_WEIGHTS} -> {args.weights}")
    return 0


def _curves(args: argparse.Namespace) -> int:
    from hgd.train import curves

    runs = {name: curves.read_run(folder) for name, folder in args.runs}
    curves.plot(runs, args.out, x=args.x)
    print(curves.markdown_table(runs))
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.getLogger("hgd").setLevel(logging.INFO)
    commands = {"data": _data, "fit": _fit, "defense": _defense, "continue": _continue, "validate": _validate,
                "install": _install, "curves": _curves}
    if getattr(args, "cluster", None) and args.command in ("fit", "defense", "continue"):
        run_main(lambda: _on_cluster(args, argv))
    run_main(lambda: commands[args.command](args))


JOB_FLAGS = ("--cluster", "--coordinator", "--num-processes", "--process-id")


def _on_cluster(args: argparse.Namespace, argv: list[str]) -> int:
    """The same command as a multi-host job on the Ray cluster: one process per node (``--num-processes``)."""
    from hgd.cluster.jobs import run_per_node

    if not args.num_processes or args.num_processes < 1:
        raise ValueError("--cluster needs --num-processes: how many nodes (one process each) train together")
    join_cluster(args.cluster)
    kept, skip = [], False
    for token in argv:  # the command as given, without the job's flags (each process gets them from HGD_*)
        if skip:
            skip = False
        elif token in JOB_FLAGS:
            skip = True
        elif not token.startswith(tuple(f"{flag}=" for flag in JOB_FLAGS)):
            kept.append(token)
    results = run_per_node(["-m", "hgd.cli.train", *kept], args.num_processes, cpus=args.process_cpus,
                           gpus=args.process_gpus, env={"KERAS_BACKEND": "jax"})  # the distribution API's backend
    for result in results:
        print(f"process {result.process_id} on {result.node}: exit {result.exit_code}\n{result.tail.rstrip()}")
    return max(result.exit_code for result in results)


if __name__ == "__main__":
    main(sys.argv[1:])
