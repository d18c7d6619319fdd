"""``python -m hgd.cli.evaluate``: score a predictions file, and measure clean top-1 of the zoo.

``python -m hgd.cli.evaluate score --predictions OUT.csv --dataset-csv dev_dataset.csv``
prints the accuracy of a defense's output (a missing prediction is wrong, as in
the competition). ``python -m hgd.cli.evaluate clean --dataset DIR`` prints a
Markdown table of each target model's clean top-1/top-5 (:mod:`hgd.evaluation.clean`).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

from hgd.evaluation.clean import clean_table, score_line
from hgd.io.competition_csv import read_dataset_csv, read_predictions_csv


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hgd.cli.evaluate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="accuracy of a defense's predictions CSV")
    score.add_argument("--predictions", type=pathlib.Path, required=True)
    score.add_argument("--dataset-csv", type=pathlib.Path, required=True)
    clean = sub.add_parser("clean", help="clean top-1/top-5 of target models on a competition-format folder")
    clean.add_argument("--dataset", type=pathlib.Path, required=True, help="folder with images/ and dev_dataset.csv")
    clean.add_argument("--models", nargs="+", default=None, help="model ids (default: the default ensemble)")
    clean.add_argument("--batch-size", type=int, default=32)
    clean.add_argument("--limit", type=int, default=None, help="only the first N images (sorted by ImageId)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "score":
        labels = read_dataset_csv(args.dataset_csv)
        predictions = read_predictions_csv(args.predictions)
        print(score_line(args.predictions, predictions, labels))
        return 0
    from hgd.zoo import DEFAULT_ENSEMBLE

    models = args.models or [m.value for m in DEFAULT_ENSEMBLE]
    print(clean_table(args.dataset, models, args.batch_size, args.limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
