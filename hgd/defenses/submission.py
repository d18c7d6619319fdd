"""What a defense submission does: classify a folder of images, write ``filename,label`` lines.

``defense/run_defense.sh`` and ``baselines/*/run_defense.sh`` run :func:`classify_folder` through
``python -m hgd.cli.run_defense --config <their config.json> INPUT_DIR OUTPUT_FILE``.
The competition contract (``docs/reference/competition-contract.md``): one line
per input file, no header, labels 1..1000. A file that cannot be read gets
label 0 (never correct) and an error line on stderr; the run goes on. The
output is rewritten atomically after every batch, so a run stopped at the
time limit keeps every finished batch and never leaves a half-written line.
"""

from __future__ import annotations

import logging
import pathlib
import sys
import time
from collections.abc import Sequence

from tqdm import tqdm

from hgd.io.competition_csv import write_predictions_csv
from hgd.io.images import Batch, iter_batches, list_input_files

UNREADABLE_LABEL = 0

log = logging.getLogger(__name__)


def _rows(batch: Batch, labels: Sequence[int]) -> list[tuple[str, int]]:
    rows = list(zip(batch.names, (int(v) for v in labels)))
    for name, reason in batch.failed:
        print(f"ERROR: {name}: {reason}; written with label {UNREADABLE_LABEL}", file=sys.stderr)
        rows.append((name, UNREADABLE_LABEL))
    return rows


def classify_folder(config_path: pathlib.Path, input_dir: pathlib.Path, output_file: pathlib.Path,
                    batch_size: int | None = None) -> int:
    """Run the defense described by ``config_path``; returns how many predictions it wrote.

    Raises :class:`hgd.defenses.MissingWeights` before reading any image when the defense's denoiser
    weights do not exist."""
    from hgd.defenses.defended import load_config

    config = load_config(config_path)
    config.require_weights()
    files = list_input_files(input_dir)
    batch_size = batch_size or config.batch_size
    rows: list[tuple[str, int]] = []
    write_predictions_csv(output_file, rows)  # an empty folder still yields an (empty) result file
    if files:
        rows = _classify(config, files, batch_size, output_file)
    print(f"wrote {len(rows)} predictions to {output_file}", file=sys.stderr)
    return len(rows)


def _classify(config, files: list[pathlib.Path], batch_size: int, output_file: pathlib.Path) -> list[tuple[str, int]]:
    from hgd.backend import forward_fn
    from hgd.io.labels import competition_labels

    start = time.perf_counter()
    predict = forward_fn(config.build())
    log.info("model ready in %.1f s%s", time.perf_counter() - start,
             "" if config.transform is None else f"; input transformation {config.transform!r} first")
    rows: list[tuple[str, int]] = []
    with tqdm(total=len(files), unit="img", desc="defense", file=sys.stderr) as progress:
        for batch in iter_batches(files, batch_size):
            # uint8 straight in: the model casts inside its compiled graph, cheaper than a numpy astype.
            # A defense's input transformation (JPEG, bit depth, ...) runs first, on the uint8 images.
            labels = competition_labels(predict(config.preprocess(batch.images))) if batch.names else []
            rows += _rows(batch, labels)
            write_predictions_csv(output_file, rows)
            progress.update(len(batch.names) + len(batch.failed))
    return rows
