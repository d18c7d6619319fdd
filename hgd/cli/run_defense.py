"""``python -m hgd.cli.run_defense --config CONFIG INPUT_DIR OUTPUT_FILE``: a defense submission's command
(``defense/run_defense.sh``, ``baselines/*/run_defense.sh``); what it does is
:func:`hgd.defenses.submission.classify_folder`."""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

from hgd.cli import run_main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hgd.cli.run_defense",
        description="Classify every file in INPUT_DIR and write competition-format predictions.",
    )
    parser.add_argument("input_dir", type=pathlib.Path, help="folder of 299x299 RGB PNGs")
    parser.add_argument("output_file", type=pathlib.Path, help="CSV to write: filename,label (labels 1..1000)")
    parser.add_argument("--config", type=pathlib.Path, required=True, help="the submission's config.json")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: config)")
    return parser.parse_args(argv)


def run(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    args = parse_args(argv)

    def body() -> int:
        from hgd.defenses.submission import classify_folder  # deferred: keras start-up is not needed for --help

        classify_folder(args.config, args.input_dir, args.output_file, args.batch_size)
        return 0

    run_main(body)


if __name__ == "__main__":
    run()
