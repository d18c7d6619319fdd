"""``python -m hgd.cli.security DEFENSE_DIR DATASET_DIR OUT_DIR``: how robust a defense is, honestly
(:mod:`hgd.evaluation.security`: the attacks, the checks and the report)."""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
from collections.abc import Sequence

from hgd.attacks.factory import SHIPPED_TRANSFER_ATTACKS
from hgd.cli import add_cluster_option, join_cluster, run_main
from hgd.evaluation.security import REPORT_FILE, Evaluation, SecuritySpec, evaluate, read_oblivious_score, write_report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hgd.cli.security",
                                     description="Attack a defense as an adaptive attacker would, beside an oblivious one.")
    parser.add_argument("defense_dir", type=pathlib.Path, help="a defense submission folder (its config.json)")
    parser.add_argument("dataset_dir", type=pathlib.Path, help="images/ + dev_dataset.csv")
    parser.add_argument("out_dir", type=pathlib.Path, help="results (rerun the same command to resume)")
    defaults = SecuritySpec()
    parser.add_argument("--epsilons", type=int, nargs="+", default=list(defaults.epsilons))
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--restarts", type=int, default=defaults.restarts)
    parser.add_argument("--transfer-steps", type=int, default=defaults.transfer_steps)
    parser.add_argument("--transfer-attacks", nargs="*", choices=sorted(SHIPPED_TRANSFER_ATTACKS),
                        default=list(defaults.transfer_attacks), metavar="NAME",
                        help="shipped transfer attacks crafted on the undefended classifiers beside the PGD transfer "
                             f"(default: {' '.join(defaults.transfer_attacks)}; none: the flag alone); one of "
                             f"{', '.join(sorted(SHIPPED_TRANSFER_ATTACKS))}")
    parser.add_argument("--queries", type=int, default=defaults.queries, help="Square attack budget (0: none)")
    parser.add_argument("--check-epsilon", type=int, default=defaults.check_epsilon)
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--tolerance", type=float, default=defaults.tolerance)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--transfer-cache", type=pathlib.Path, default=None,
                        help="keep the transfer examples here, shared by evaluations of defenses over the same "
                             "classifiers (they do not depend on the defense)")
    add_cluster_option(parser, "each run's batches")
    parser.add_argument("--runner-output", type=pathlib.Path, default=None,
                        help="a runner output folder: its normalized (oblivious) score for this defense goes beside")
    args = parser.parse_args(argv)
    logging.getLogger("hgd").setLevel(logging.INFO)

    def body() -> int:
        # Read first: a missing score must not be found only after hours of attacks.
        score = (None if args.runner_output is None
                 else read_oblivious_score(args.runner_output, args.defense_dir.resolve().name))
        spec = SecuritySpec(epsilons=tuple(args.epsilons), steps=args.steps, restarts=args.restarts,
                            transfer_steps=args.transfer_steps, transfer_attacks=tuple(args.transfer_attacks),
                            queries=args.queries,
                            check_epsilon=args.check_epsilon, limit=args.limit, tolerance=args.tolerance,
                            seed=args.seed)
        evaluation = Evaluation(args.defense_dir, args.dataset_dir, args.out_dir, spec, args.batch_size,
                                args.transfer_cache, cluster=join_cluster(args.cluster))
        summary = evaluate(evaluation)
        command = " ".join(["python -m hgd.cli.security", *map(str, argv or sys.argv[1:])])
        write_report(evaluation, summary, command, score)
        suspicious = [name for name, ok, _ in summary["checks"] if not ok]
        print(f"{args.out_dir / REPORT_FILE}: clean {summary['clean']:.3f}, worst case "
              + ", ".join(f"eps {e} {v:.3f}" for e, v in summary["worst"].items())
              + (f"; SUSPICIOUS: {'; '.join(suspicious)}" if suspicious else "; every sanity check passed"))
        return 0

    run_main(body)


if __name__ == "__main__":
    main(sys.argv[1:])
