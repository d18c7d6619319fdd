"""Command line: ``python -m hgd.cli.runner [run options]`` and ``python -m hgd.cli.runner validate PATH``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pathlib
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from hgd.cli.run_attack import parse_epsilon
from hgd.runner.executors import ExecutorUnavailable, make_executor
from hgd.io.datasets import DatasetError, read_dataset
from hgd.runner.pieces import EVAL_EPSILONS, make_batches
from hgd.runner.submissions import SubmissionError, SubmissionType, load_submission, subfolders

if TYPE_CHECKING:
    from hgd.io.datasets import Dataset
    from hgd.runner.dispatch import Dispatch
    from hgd.runner.harness import Outcome
    from hgd.runner.results import Problem
    from hgd.runner.submissions import AttackSubmission, DefenseSubmission, Discovery

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
"""The checkout this package lives in: the shipped submissions and ``sample_data/`` are found here."""

DEFAULT_OUTPUT = pathlib.Path("competition-output")

TOUR_ATTACKS = ("noop", "fgsm", "step_target_class")
"""The attacks of attacks/ that the no-argument run uses: the clean baseline, one gradient step and one
targeted step, so that a first run shows every part of the harness and scoring in a few minutes (every
run of a submission pays its start-up: an iterative attack and its defense pieces would double it)."""

TOUR_DEFENSES = ("defense", "baselines/undefended")
"""The defenses the no-argument run uses: the shipped HGD defense beside the ensemble it defends."""

RUN_DESCRIPTION = """\
Run attack submissions against defense submissions the way the NIPS 2017 competition did, and score them.

The dataset (images/<ImageId>.png + dev_dataset.csv) is cut into batches. Every attack runs on every
batch (a fresh input folder with the images renamed IMG000123.png; targeted attacks also get
target_class.csv); the harness then enforces the rules on its outputs: missing or corrupt files are
missing, wrong sizes are bicubic-resized to 299x299, other names are ignored, and every pixel is clipped
into the eps box around the clean image. Every defense then runs on every adversarial batch (one
attack's one batch, names ADVBATCH012_IMG000123.png) and its result.csv is mapped back to ImageIds.

Scores: EVAL's official normalized scores (with its eligibility rules) and DEV's counts, as CSV files,
plus report.md / report.html with an accuracy heatmap, rankings, timing and every problem logged.
Every finished work piece is stored under OUTPUT/pieces/: rerunning the same command resumes (finished
pieces are skipped, all scores recomputed); Ctrl-C loses no finished piece.

With no arguments, a tour of a few minutes: the attacks noop, fgsm and step_target_class against
defense/ and baselines/undefended on sample_data/, local executor, into ./competition-output/.
--all: every oblivious attack in attacks/ (not the defense-aware ones) against defense/ and every
baselines/*/. To check one submission: %(prog)s validate PATH."""

VALIDATE_DESCRIPTION = """\
Check one submission (a folder or a .zip/.tar/.tar.gz archive, extracted safely) the way the
competition's validator did: metadata.json (type, container, container_gpu, an executable
entry_point), then one run on random-noise 299x299 PNGs (IMG0000.png...) with a random eps from
{4, 8, 12, 16} and, for targeted attacks, random target classes. Valid if it exits 0 within the time
limit; missing or malformed outputs only warn. Exit status 0 = valid, 1 = invalid."""


def _epsilon(text: str) -> int | str:
    if text == "cycle":
        return text
    try:
        return parse_epsilon(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (or 'cycle')") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def _prog() -> str:
    return os.environ.get("HGD_RUNNER_PROG", "python -m hgd.cli.runner")


def _executor_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=("local", "docker"), default="local",
                        help="how submissions run: 'local' = a subprocess on this machine in a fresh copy of the "
                             "submission's folder (no isolation; fine for your own code), 'docker' = in the "
                             "submission's container with EVAL's limits (--network=none, 24g memory, 3.75 CPUs), "
                             "needs a Docker engine (default: %(default)s)")
    parser.add_argument("--gpu", action="store_true",
                        help="run with GPUs: the Docker executor uses container_gpu and requests the GPUs; "
                             "no effect with the local executor")
    parser.add_argument("--time-limit", type=_positive_float, default=500.0, metavar="SECONDS",
                        help="seconds per run of a submission on one batch; at the limit it is stopped "
                             "(SIGTERM, then SIGKILL) and what it wrote counts (default: %(default)g, EVAL's limit "
                             "per batch of 100 images)")


def run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_prog(), description=RUN_DESCRIPTION,
                                     usage="%(prog)s [options]   (run; see below)\n       %(prog)s validate PATH "
                                           "[--executor local|docker] [--gpu] [--time-limit S] [--num-images N]",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_argument_group("submissions (each flag may be repeated)")
    sub.add_argument("--attacks-dir", type=pathlib.Path, action="append", default=[], metavar="DIR",
                     help="a folder with one attack submission per subfolder; targeted or not is read from each "
                          "metadata.json (default, when no attack flag is given: the tour's attacks of attacks/ of "
                          "this checkout, or with --all its oblivious ones; the defense-aware ones belong to "
                          "`python -m hgd.cli.security`)")
    sub.add_argument("--targeted-attacks-dir", type=pathlib.Path, action="append", default=[], metavar="DIR",
                     help="a folder with one targeted attack submission per subfolder")
    sub.add_argument("--attack", type=pathlib.Path, action="append", default=[], metavar="DIR",
                     help="one attack submission folder")
    sub.add_argument("--defenses-dir", type=pathlib.Path, action="append", default=[], metavar="DIR",
                     help="a folder with one defense submission per subfolder")
    sub.add_argument("--defense", type=pathlib.Path, action="append", default=[], metavar="DIR",
                     help="one defense submission folder, e.g. defense/ or baselines/undefended (default, when "
                          "no defense flag is given: defense/ and baselines/undefended of this checkout, or with "
                          "--all defense/ and every baselines/*/)")
    sub.add_argument("--all", action="store_true",
                     help="where no attack (defense) flag is given, every oblivious attack of attacks/ (defense/ and "
                          "every baselines/*/) instead of the tour's few: the full competition of this checkout")
    data = parser.add_argument_group("data and output")
    data.add_argument("--dataset-dir", type=pathlib.Path, default=PROJECT_ROOT / "sample_data", metavar="DIR",
                      help="images/<ImageId>.png + dev_dataset.csv (default: sample_data/ of this checkout)")
    data.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                      help="use only the first N images (sorted by ImageId), for quick runs")
    data.add_argument("--output-dir", type=pathlib.Path, default=DEFAULT_OUTPUT, metavar="DIR",
                      help="where results, adversarial images (adv/), finished pieces (pieces/) and logs (logs/) "
                           "go; rerunning with the same folder resumes (default: ./%(default)s)")
    data.add_argument("--keep-attacks", action="store_true",
                      help="reuse the finished attack pieces in the output folder even where an attack's folder "
                           "changed since (normally they run again): new defenses are then scored on the same "
                           "adversarial images as the earlier ones, as EVAL ran each attack once; the report "
                           "counts such pieces")
    rules = parser.add_argument_group("competition rules")
    rules.add_argument("--batch-size", type=_positive_int, default=100, metavar="N",
                       help="images per batch, i.e. per run of a submission (default: %(default)s, as EVAL)")
    rules.add_argument("--eps", type=_epsilon, default=16, metavar="EPS|cycle",
                       help="MAX_EPSILON in pixel levels: one value for every batch (DEV style), or 'cycle' for "
                            f"EVAL's schedule (batch i gets {list(EVAL_EPSILONS)}[i %% 4]) (default: %(default)s)")
    _executor_options(rules)
    cluster = parser.add_argument_group("on a Ray cluster (pip install -e \".[cluster]\"; docs/guide/cluster.md)")
    cluster.add_argument("--cluster", metavar="ADDRESS", default=None,
                         help="run every piece as a Ray task on the cluster at ADDRESS (HOST:PORT, ray://HOST:PORT, "
                              "or 'auto' for the cluster started on this machine), with --executor on each node; "
                              "this machine prepares the inputs, checks and stores every piece")
    cluster.add_argument("--piece-cpus", type=_positive_float, default=1.0, metavar="N",
                         help="CPUs one piece asks the cluster for; a node runs as many pieces at once as its CPUs "
                              "allow (default: %(default)g)")
    cluster.add_argument("--piece-memory", type=_positive_float, default=None, metavar="GIB",
                         help="memory one piece asks the cluster for, in GiB (default: none reserved)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def validate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{_prog()} validate", description=VALIDATE_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=pathlib.Path, metavar="PATH",
                        help="the submission: a folder, or a .zip / .tar / .tar.gz / .tgz archive")
    _executor_options(parser)
    parser.add_argument("--num-images", type=_positive_int, default=100, metavar="N",
                        help="random-noise images to run it on (default: %(default)s, as the competition)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the noise, eps and targets")
    return parser


def _say(text: str) -> None:
    print(text, flush=True)


def _error(text: str) -> None:
    print(f"{_prog()}: error: {text}", file=sys.stderr, flush=True)


def _submission_folders(args: argparse.Namespace) -> tuple[list[tuple[pathlib.Path, SubmissionType | None]],
                                                           list[str]]:
    """(folder, expected kind) pairs from the flags (or the defaults), and folders that do not exist."""
    folders: list[tuple[pathlib.Path, SubmissionType | None]] = []
    absent: list[str] = []

    def parent(path: pathlib.Path, kind: SubmissionType | None, default: bool = False) -> None:
        if not path.is_dir():
            if not default:
                absent.append(str(path))
            return
        folders.extend((p, kind) for p in subfolders(path))

    def single(path: pathlib.Path, kind: SubmissionType | None) -> None:
        if not path.is_dir():
            absent.append(str(path))
            return
        folders.append((path, kind))

    if not (args.attacks_dir or args.targeted_attacks_dir or args.attack):
        if args.all:
            parent(PROJECT_ROOT / "attacks", None, default=True)
            aware = [path for path, _ in folders if _declares_defense_aware(path)]
            folders[:] = [(path, kind) for path, kind in folders if path not in aware]
            if aware:
                _say(f"--all runs the oblivious attacks; left out (defense-aware, for `python -m hgd.cli.security` "
                     f"or --attack): {', '.join(path.name for path in aware)}")
        else:
            for name in TOUR_ATTACKS:
                single(PROJECT_ROOT / "attacks" / name, None)
            _say("the tour: a few attacks against defense/ and baselines/undefended (--all: every oblivious attack "
                 "against every defense of this checkout)")
    for path in args.attacks_dir:
        parent(path, None)
    for path in args.targeted_attacks_dir:
        parent(path, SubmissionType.TARGETED_ATTACK)
    for path in args.attack:
        single(path, None)
    if not (args.defenses_dir or args.defense):
        if args.all:
            single(PROJECT_ROOT / "defense", SubmissionType.DEFENSE)
            parent(PROJECT_ROOT / "baselines", SubmissionType.DEFENSE, default=True)
        else:
            for name in TOUR_DEFENSES:
                single(PROJECT_ROOT / name, SubmissionType.DEFENSE)
    for path in args.defenses_dir:
        parent(path, SubmissionType.DEFENSE)
    for path in args.defense:
        single(path, SubmissionType.DEFENSE)
    return folders, absent


def _declares_defense_aware(folder: pathlib.Path) -> bool:
    """Whether the submission in ``folder`` is a defense-aware attack (unusable: no; ``discover`` reports it)."""
    try:
        return load_submission(folder).defense_aware
    except SubmissionError:
        return False


def run_main(argv: Sequence[str]) -> int:
    """``python -m hgd.cli.runner [run options]``; returns the exit status."""
    args = run_parser().parse_args(argv)
    command = " ".join([_prog(), *map(shlex.quote, argv)])
    dataset = _load_dataset(args)
    if dataset is None:
        return 2
    found = _discover_submissions(args)
    if found is None:
        return 2
    dispatch = _dispatch_or_none(args)
    if dispatch is None:
        return 2
    problems = _early_problems(args, dataset, found)
    attacks, defenses = _runnable(found, args.executor, args.gpu, problems)
    for p in problems:
        _say(f"note: {p.submission}: {p.message}")
    if not attacks or not defenses:
        _error_nothing_to_run(attacks, defenses)
        return 1
    _announce(args, dataset, found, attacks, defenses)
    outcome = _run_harness(args, dataset, attacks, defenses, dispatch)
    if outcome is None:
        return 130
    _write_results(args, command, outcome, problems)
    return 0


def _load_dataset(args: argparse.Namespace) -> Dataset | None:
    """The dataset in the competition's format; ``None`` (after saying why) when it cannot be read."""
    try:
        return read_dataset(args.dataset_dir, args.limit).competition_format()
    except DatasetError as error:
        _error(f"dataset: {error}")
        return None


def _discover_submissions(args: argparse.Namespace) -> Discovery | None:
    """The submissions in the folders the flags name; ``None`` (after saying which) if a folder is missing."""
    from hgd.runner.submissions import discover

    folders, absent = _submission_folders(args)
    if absent:
        _error(f"no such folder: {', '.join(absent)}")
        return None
    return discover(folders)


def _dispatch_or_none(args: argparse.Namespace) -> Dispatch | None:
    """Where the pieces run: here with the executor, or on the cluster; ``None`` (after saying why) when
    the executor or the cluster cannot be used."""
    from hgd.cluster import ClusterUnavailable, connect
    from hgd.runner.dispatch import SequentialDispatch

    if args.cluster is None:
        try:
            return SequentialDispatch(make_executor(args.executor))
        except ExecutorUnavailable as error:
            _error(str(error))
            return None
    try:
        connect(args.cluster)
        from hgd.runner.ray_dispatch import RayDispatch

        return RayDispatch(args.executor, cpus=args.piece_cpus, memory_gib=args.piece_memory,
                           progress=not args.no_progress)
    except ClusterUnavailable as error:
        _error(str(error))
        return None


def _early_problems(args: argparse.Namespace, dataset: Dataset, found: Discovery) -> list[Problem]:
    """The problems found before anything runs (dataset, submission folders): the results list them too."""
    from hgd.runner.results import Problem

    problems = [Problem("dataset", str(args.dataset_dir), "", m) for m in dataset.problems]
    problems += [Problem("submission", folder, "", reason) for folder, reason in found.problems]
    return problems


def _runnable(found: Discovery, executor: str, gpu: bool,
              problems: list[Problem]) -> tuple[list[AttackSubmission], list[DefenseSubmission]]:
    """The attacks and defenses ``executor`` can run: Docker needs an image; those without are added to ``problems``."""
    from hgd.runner.results import Problem

    attacks, defenses = found.all_attacks, found.defenses
    if executor == "docker":
        for s in [s for s in [*attacks, *defenses] if not s.image(gpu)]:
            key = "container_gpu" if gpu else "container"
            problems.append(Problem("submission", str(s.path), "", f"skipped: metadata.json has no {key}"))
        attacks = [s for s in attacks if s.image(gpu)]
        defenses = [s for s in defenses if s.image(gpu)]
    return attacks, defenses


def _error_nothing_to_run(attacks: list[AttackSubmission], defenses: list[DefenseSubmission]) -> None:
    """Say which side (attacks, defenses or both) has no usable submission, since a run needs both."""
    missing = " and ".join(k for k, v in (("attack", attacks), ("defense", defenses)) if not v)
    _error(f"no usable {missing} submission found (see --help for where they are looked for)")


def _announce(args: argparse.Namespace, dataset: Dataset, found: Discovery, attacks: list[AttackSubmission],
              defenses: list[DefenseSubmission]) -> None:
    """Say how much work the run is and where it goes, before the long part starts."""
    if args.gpu and args.executor == "local":
        _say("note: --gpu has no effect with the local executor")
    batches = make_batches(dataset.image_ids, args.batch_size, args.eps)
    pieces = len(attacks) * len(batches) * (1 + len(defenses))
    _say(f"{len(dataset.image_ids)} images in {len(batches)} batch(es); {len(found.attacks)} attack(s), "
         f"{len(found.targeted_attacks)} targeted attack(s), {len(defenses)} defense(s): {pieces} work pieces "
         f"({args.executor} executor{f' on the cluster at {args.cluster}' if args.cluster else ''}) -> "
         f"{args.output_dir}")


def _run_harness(args: argparse.Namespace, dataset: Dataset, attacks: list[AttackSubmission],
                 defenses: list[DefenseSubmission], dispatch: Dispatch) -> Outcome | None:
    """Run (or resume) every work piece; ``None`` (after saying how to resume) when interrupted."""
    from hgd.runner.harness import Harness, Settings

    args.output_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(batch_size=args.batch_size, epsilon=args.eps, time_limit=args.time_limit, gpu=args.gpu,
                        progress=not args.no_progress, keep_attacks=args.keep_attacks)
    harness = Harness(dataset=dataset, attacks=attacks, defenses=defenses, dispatch=dispatch,
                      output_dir=args.output_dir, settings=settings)
    try:
        with _sigterm_interrupts():
            return harness.run()
    except KeyboardInterrupt:
        _error(f"interrupted; finished pieces are kept in {args.output_dir / 'pieces'}: "
               "run the same command again to resume")
        return None


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``, a batch scheduler) stops a run as Ctrl-C does: the running
    submission's process group is killed and the finished pieces are kept. Python's default for SIGTERM
    ends the runner at once and leaves the submission running on its own."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_results(args: argparse.Namespace, command: str, outcome: Outcome, problems: list[Problem]) -> None:
    """Score the run, write the CSV files and the report, and print the rankings."""
    from hgd.runner import report, results

    summary = {"command": command, "dataset_dir": str(args.dataset_dir), "batch_size": args.batch_size,
               "epsilon": args.eps, "time_limit": args.time_limit, "executor": args.executor, "gpu": args.gpu,
               "limit": args.limit, "cluster": args.cluster}
    scored = results.compute(outcome, problems, summary)
    results.write(scored, args.output_dir)
    report.write(scored, args.output_dir, command=command)
    _print_summary(scored, args.output_dir)


def _print_summary(scored, output_dir: pathlib.Path) -> None:
    from hgd.runner.results import cost_sentence
    from hgd.runner.scoring import ranking

    def fmt(value) -> str:
        return "-" if value is None else f"{value:.4f}"

    for title, scores in (("defenses", scored.eval.defense), ("attacks", scored.eval.attack),
                          ("targeted attacks", scored.eval.targeted_attack)):
        if scores:
            _say(f"{title} (normalized score): " + ", ".join(f"{n} {fmt(s)}" for n, s in ranking(scores)))
    cost = cost_sentence(scored.outcome)
    timing = f"; {cost}" if cost else ""
    kept = (f" ({scored.outcome.attacks_kept} attack piece(s) kept from changed attacks)"
            if scored.outcome.attacks_kept else "")
    retried = f", {scored.outcome.pieces_retried} retried after a node died" if scored.outcome.pieces_retried else ""
    _say(f"{scored.outcome.pieces_run} piece(s) run{retried}, {scored.outcome.pieces_reused} reused{kept}; "
         f"{len(scored.problems)} problem(s) logged{timing}")
    _say(f"results: {output_dir / 'report.md'} (also report.html, *.csv) in {output_dir.resolve()}")


def validate_main(argv: Sequence[str]) -> int:
    """``python -m hgd.cli.runner validate PATH``; returns 0 (valid) or 1 (invalid), 2 for usage errors."""
    from hgd.runner.validate import validate

    args = validate_parser().parse_args(argv)
    if not args.path.exists():
        _error(f"{args.path} does not exist")
        return 1
    try:
        executor = make_executor(args.executor)
    except ExecutorUnavailable as error:
        _error(str(error))
        return 2
    ok = validate(args.path, executor=executor, time_limit=args.time_limit, gpu=args.gpu,
                  num_images=args.num_images, seed=args.seed, say=_say)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``validate`` as the first argument selects the validator, else a run (``run`` optional)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(name)s: %(message)s")
    if argv[:1] == ["validate"]:
        return validate_main(argv[1:])
    if argv[:1] == ["run"]:
        argv = argv[1:]
    return run_main(argv)


if __name__ == "__main__":
    sys.exit(main())
