"""``python -m hgd.cli.security_compare NAME=OUT_DIR ... --out DIR``: several security evaluations side by
side (:mod:`hgd.evaluation.security_comparison`)."""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

from hgd.cli import named_path, run_main
from hgd.evaluation.security_comparison import compare


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hgd.cli.security_compare",
                                     description="Several security evaluations side by side: one table, one plot.")
    parser.add_argument("runs", nargs="+", type=named_path, help="NAME=OUT_DIR of a python -m hgd.cli.security run")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="where comparison.md and .png go")
    parser.add_argument("--runner-output", type=pathlib.Path, default=None,
                        help="a runner output folder: the defenses' normalized (oblivious) scores")
    args = parser.parse_args(argv)
    run_main(lambda: print(compare(dict(args.runs), args.out, args.runner_output)) or 0)


if __name__ == "__main__":
    main(sys.argv[1:])
