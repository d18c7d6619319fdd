"""What an attack submission does: perturb every image of a folder within MAX_EPSILON, write same-named PNGs.

``attacks/<name>/run_attack.sh`` run :func:`attack_folder` through
``python -m hgd.cli.run_attack --config <their config.json> INPUT_DIR OUTPUT_DIR MAX_EPSILON``; the config
is :mod:`hgd.attacks.config`. The competition contract (``docs/reference/competition-contract.md``):

* every readable image of INPUT_DIR gets a PNG of the same file name in OUTPUT_DIR (created if
  missing), 299x299 RGB uint8, inside the MAX_EPSILON box of the input. MAX_EPSILON is an integer
  number of pixel levels, 0..255; anything else is refused (exit 2).
* A file that cannot be read is reported on stderr (``ERROR: <name>: <reason>``) and skipped: an
  attack has nothing to write for it. The run goes on.
* Odd inputs (RGBA, grey, palette, 16-bit, a wrong size) are converted by :mod:`hgd.io.images` the
  way the defense converts them (alpha dropped, 16-bit scaled, resized to 299 with a warning), and
  the attack works in the box of the *converted* image. The harness clips every output to the box
  of the ORIGINAL image anyway (and resizes a wrong-sized output back), so that is what counts.
* Targeted attacks (``"targeted": true`` in the config) read ``target_class.csv`` from INPUT_DIR
  (no header, ``<ImageId>.png,<target 1..1000>`` lines; target ``t`` is 0-based class ``t - 1``).
  An image without a valid entry is attacked towards its least likely class, with a warning.
  ``target_class.csv`` is never taken for an input image, targeted or not.
* Outputs are written batch by batch (atomically, by :func:`hgd.io.images.save_png`), so a run stopped
  at the time limit keeps every finished image.

With ``record_loss``, each batch's loss curve (the mean objective over the batch at a few steps)
is logged on stderr.
"""

from __future__ import annotations

import csv
import logging
import pathlib
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from hgd.attacks.config import AttackConfig, build_model, load_attack_config, require_defense_weights
from hgd.io.images import iter_batches, list_input_files, save_png
from hgd.io.labels import NUM_LABELS, to_label0

TARGET_CLASS_CSV = "target_class.csv"

log = logging.getLogger(__name__)


def read_targets(path: pathlib.Path) -> dict[str, int]:
    """``target_class.csv`` -> 0-based target by image name without ``.png``; bad rows warn and are skipped."""
    targets: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for number, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            try:
                target = int(row[1])
            except (IndexError, ValueError):
                target = 0
            if not 1 <= target <= NUM_LABELS:
                log.warning("%s, line %d: not <ImageId>.png,<target 1..%d>: %r; ignored", path.name, number,
                            NUM_LABELS, ",".join(row))
                continue
            targets[_stem(row[0].strip())] = to_label0(target)
    return targets


def _stem(name: str) -> str:
    return name[: -len(".png")] if name.endswith(".png") else name


def choose_targets(names: Sequence[str], targets: dict[str, int], model, images: np.ndarray) -> np.ndarray:
    """0-based targets for a batch: from ``targets`` (see :func:`read_targets`) by file name; an image
    without one gets its least likely class under ``model`` (with a warning)."""
    from hgd.attacks import LeastLikelyClass

    chosen = np.array([targets.get(_stem(name), -1) for name in names], dtype=np.int64)
    missing = chosen < 0
    if missing.any():
        for name in np.asarray(names)[missing]:
            log.warning("%s: no target in %s; attacking towards its least likely class", name, TARGET_CLASS_CSV)
        chosen[missing] = LeastLikelyClass().goal(model, images[missing].astype(np.float32)).classes
    return chosen


def _criterion(config: AttackConfig, model, names: list[str], images: np.ndarray, targets: dict[str, int]):
    from hgd.attacks import LeastLikelyClass, TargetedMisclassification

    if config.least_likely:
        return LeastLikelyClass()
    if not config.targeted:
        return None  # untargeted, away from the model's own prediction on the clean image
    return TargetedMisclassification(choose_targets(names, targets, model, images))


def attack_folder(config_path: pathlib.Path, input_dir: pathlib.Path, output_dir: pathlib.Path, epsilon: int,
                  batch_size: int | None = None) -> int:
    """Run the attack described by ``config_path``; returns how many adversarial images it wrote.

    Raises :class:`hgd.defenses.MissingWeights` before reading any image when the attack targets a
    defense whose denoiser weights do not exist."""
    config = load_attack_config(config_path)
    require_defense_weights(config, config_path)
    files = [f for f in list_input_files(input_dir) if f.name != TARGET_CLASS_CSV]
    targets: dict[str, int] = {}
    if config.targeted:
        target_file = input_dir / TARGET_CLASS_CSV
        if target_file.is_file():
            targets = read_targets(target_file)
        else:
            log.warning("%s: no %s; every image is attacked towards its least likely class",
                        input_dir, TARGET_CLASS_CSV)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    if files:
        written = _attack(config, files, output_dir, epsilon, batch_size or config.batch_size, targets)
    print(f"wrote {written} adversarial images to {output_dir}", file=sys.stderr)
    return written


def _log_loss_curve(attack: Any, names: list[str]) -> None:
    curve = getattr(attack, "loss_curve", None)
    if curve is None:
        return
    with warnings.catch_warnings():  # a restart that ran no image is all NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(curve, axis=-1)  # (restarts, steps + 1): the batch's mean objective per iterate
    for restart, row in enumerate(mean):
        if np.isnan(row).all():
            continue
        marks = sorted({0, *range(0, len(row), max(1, (len(row) - 1) // 10)), len(row) - 1})
        points = ", ".join(f"{i}: {row[i]:.3f}" for i in marks)
        log.info("loss curve (restart %d, mean over %d images, step: objective): %s", restart, len(names), points)


def _attack(config: AttackConfig, files: list[pathlib.Path], output_dir: pathlib.Path, epsilon: int,
            batch_size: int, targets: dict[str, int]) -> int:
    model = None
    if config.attack.requires_model:
        start = time.perf_counter()
        model = build_model(config)
        log.info("model ready in %.1f s: %s", time.perf_counter() - start, getattr(model, "name", None) or repr(model))
    log.info("%r at epsilon %d, batch size %d", config.attack, epsilon, batch_size)
    written = 0
    with tqdm(total=len(files), unit="img", desc="attack", file=sys.stderr) as progress:
        for batch in iter_batches(files, batch_size):
            for name, reason in batch.failed:
                print(f"ERROR: {name}: {reason}", file=sys.stderr)
            if batch.names:
                criterion = _criterion(config, model, batch.names, batch.images, targets)
                adversarial = config.attack(model, batch.images, criterion, epsilon=epsilon)
                _log_loss_curve(config.attack, batch.names)
                for name, image in zip(batch.names, adversarial):
                    save_png(output_dir / name, image)
                written += len(batch.names)
            progress.update(len(batch.names) + len(batch.failed))
    return written
