"""First-run demo: run the shipped defense submissions on ``sample_data/`` and score them.

Each submission runs exactly as the competition runs it (its ``run_defense.sh``
in a subprocess); the demo prints where its predictions went and their
accuracy. A submission that refuses (the HGD defense before its denoisers are
trained) or crashes is reported with its message, and the demo goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Sequence

from hgd.evaluation.clean import accuracy
from hgd.io.competition_csv import read_dataset_csv, read_predictions_csv

REPO = pathlib.Path(__file__).resolve().parents[1]
STDERR_TAIL_LINES = 4  # enough for a refusal or a traceback's last frame, past TensorFlow's start-up notices


def run_submission(submission: pathlib.Path, images: pathlib.Path, output: pathlib.Path) -> subprocess.CompletedProcess:
    """Run a defense submission's entry point with this interpreter; stderr is passed through."""
    entry_point = json.loads((submission / "metadata.json").read_text())["entry_point"]
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run([str(submission / entry_point), str(images), str(output)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hgd.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--submissions", nargs="+", type=pathlib.Path,
                        default=[REPO / "defense", REPO / "baselines" / "undefended"])
    parser.add_argument("--dataset", type=pathlib.Path, default=REPO / "sample_data")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("hgd-demo-output"))
    args = parser.parse_args(argv)
    labels = read_dataset_csv(args.dataset / "dev_dataset.csv")
    for submission in args.submissions:
        output = args.out.resolve() / f"{submission.name}.csv"
        print(f"== {submission.relative_to(REPO) if submission.is_relative_to(REPO) else submission}", flush=True)
        result = run_submission(submission, args.dataset / "images", output)
        if result.returncode != 0:
            tail = result.stderr.strip().splitlines()[-STDERR_TAIL_LINES:]
            print(f"   did not run (exit {result.returncode}); the end of its stderr:\n   " + "\n   ".join(tail))
            continue
        acc = accuracy(read_predictions_csv(output), labels)
        print(f"   predictions: {output}\n   accuracy: {100 * acc:.1f}% on {len(labels)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
