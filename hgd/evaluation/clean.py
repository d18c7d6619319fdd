"""Clean scoring: the accuracy of a defense's predictions file, and the zoo's clean top-1/top-5.

A missing prediction is wrong, as in the competition; :func:`score_line` also says how many there
were. :func:`clean_table` feeds each target model the 299 image resized in the graph to its native
resolution and the 299 image directly, and scores the ensembles (``docs/results/models.md``).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from hgd.io.datasets import load_pixels, read_dataset


def accuracy(predictions: Mapping[str, int], labels: Mapping[str, tuple[int, int]]) -> float:
    """Fraction of dataset images whose predicted label equals ``TrueLabel``; missing ones are wrong."""
    if not labels:
        raise ValueError("the dataset has no images")
    return sum(predictions.get(image_id) == true for image_id, (true, _) in labels.items()) / len(labels)


def score_line(source: pathlib.Path, predictions: Mapping[str, int], labels: Mapping[str, tuple[int, int]]) -> str:
    """What ``score`` prints: the accuracy over the whole dataset, and how many images had no prediction
    (each counted wrong, as in the competition) or were predicted but are not in the dataset."""
    missing = sum(image_id not in predictions for image_id in labels)
    extra = sum(image_id not in labels for image_id in predictions)
    line = f"{source}: accuracy {100 * accuracy(predictions, labels):.1f}% on {len(labels)} images"
    if missing == len(labels):
        line += "; none of them has a prediction"
    elif missing:
        predicted = {image_id: label for image_id, label in labels.items() if image_id in predictions}
        line += (f"; {missing} of them have no prediction and count as wrong "
                 f"({100 * accuracy(predictions, predicted):.1f}% on the {len(predicted)} predicted)")
    if extra:
        line += f"; {extra} predictions name images not in the dataset (ignored)"
    return line


def model_logits(model, images: np.ndarray, batch_size: int, desc: str) -> np.ndarray:
    """Logits of a pixels->logits Keras model over uint8 images, batched, with progress."""
    from hgd.backend import forward_fn

    predict = forward_fn(model)
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, file=sys.stderr, leave=False):
        out.append(predict(images[start : start + batch_size]))  # uint8: cast inside the graph
    return np.concatenate(out)


def topk(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Top-k accuracy of 0-based ``labels`` under ``logits``."""
    best = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(best == labels[:, None], axis=1)))


def clean_table(dataset_dir: pathlib.Path, model_names: Sequence[str], batch_size: int,
                limit: int | None = None) -> str:
    """Markdown table: clean top-1/top-5 of each model in both input modes, and of the ensembles."""
    from hgd.zoo import get_model

    _, images, labels = load_pixels(read_dataset(dataset_dir, limit))
    targets = [get_model(name) for name in model_names]
    modes = {"native": lambda t: dataclasses.replace(t, input_resolution=t.native_resolution),
             "direct 299": lambda t: dataclasses.replace(t, input_resolution=None)}
    logits: dict[tuple[str, str], np.ndarray] = {}
    for target in targets:
        for mode, variant in modes.items():
            model = variant(target).build_classifier()
            logits[target.name.value, mode] = model_logits(model, images, batch_size, f"{target.name.value} {mode}")
    chosen = {t.name.value: "native" if t.input_resolution else "direct 299" for t in targets}
    rows = [(name, mode, logits[name, mode]) for (name, mode) in logits]
    for mode in modes:
        rows.append(("ensemble (mean logits)", mode, np.mean([logits[t.name.value, mode] for t in targets], axis=0)))
    rows.append(("ensemble (mean logits)", "registry's choice", np.mean([logits[n, m] for n, m in chosen.items()], axis=0)))
    lines = [f"Clean accuracy on {len(labels)} images of `{dataset_dir.name}` "
             "(native = the 299 image resized in the graph, bicubic, to the model's native resolution).", "",
             "| model | input | top-1 % | top-5 % | registry uses |", "|---|---|---|---|---|"]
    for name, mode, lg in rows:
        used = "yes" if chosen.get(name) == mode or mode == "registry's choice" else ""
        lines.append(f"| {name} | {mode} | {100 * topk(lg, labels, 1):.1f} | {100 * topk(lg, labels, 5):.1f} | {used} |")
    return "\n".join(lines)
