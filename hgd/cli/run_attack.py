"""``python -m hgd.cli.run_attack --config CONFIG INPUT_DIR OUTPUT_DIR MAX_EPSILON``: an attack submission's
command (``attacks/<name>/run_attack.sh``); what it does is :func:`hgd.attacks.submission.attack_folder`."""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

from hgd.cli import parse_epsilon, run_main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hgd.cli.run_attack",
        description="Write an adversarial PNG, within MAX_EPSILON, for every image in INPUT_DIR.",
    )
    parser.add_argument("input_dir", type=pathlib.Path, help="folder of 299x299 RGB PNGs (and target_class.csv)")
    parser.add_argument("output_dir", type=pathlib.Path, help="folder to write the adversarial PNGs to")
    parser.add_argument("max_epsilon", metavar="MAX_EPSILON", type=parse_epsilon,
                        help="L-infinity bound in pixel levels, an integer 0..255")
    parser.add_argument("--config", type=pathlib.Path, required=True, help="the submission's config.json")
    parser.add_argument("--batch-size", type=int, default=None, help="images per attack call (default: config)")
    return parser.parse_args(argv)


def run(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    args = parse_args(argv)

    def body() -> int:
        from hgd.attacks.submission import attack_folder  # deferred: keras start-up is not needed for --help

        attack_folder(args.config, args.input_dir, args.output_dir, args.max_epsilon, args.batch_size)
        return 0

    run_main(body)


if __name__ == "__main__":
    run()
