"""Helpers shared by the bench scripts: input images, interleaved timing, Markdown tables."""

from __future__ import annotations

import pathlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = REPO.parent / "shared" / "datasets" / "nips17_dev" / "images"
SAMPLE_IMAGES = REPO / "sample_data" / "images"


def log(*args) -> None:
    """Progress goes to stderr, so stdout holds only the Markdown table."""
    print(*args, file=sys.stderr, flush=True)


def image_folder(images: pathlib.Path, n: int, workdir: pathlib.Path) -> pathlib.Path:
    """A folder of exactly ``n`` image files under ``workdir``: the first ``n`` of ``images``
    (copied, so a defense sees only those), else ``sample_data/images`` copied under several
    names until there are ``n``."""
    from hgd.io.images import list_input_files

    out = workdir / "images"
    out.mkdir()
    if images.is_dir():
        source = list_input_files(images)[:n]
        if len(source) < n:
            log(f"note: {images} holds only {len(source)} files; using those")
        for path in source:
            shutil.copyfile(path, out / path.name)
        log(f"images: first {len(source)} files of {images}")
        return out
    source = list_input_files(SAMPLE_IMAGES)
    for i in range(n):
        path = source[i % len(source)]
        shutil.copyfile(path, out / f"{i // len(source):03d}_{path.name}")
    log(f"images: {images} absent; {n} files copied (under new names) from the {len(source)} of {SAMPLE_IMAGES}")
    return out


def temp_workdir(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=f"hgd-bench-{prefix}-")


def interleaved(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Times each variant once per round, in turn (reversing the order every other round so no
    variant always follows the same one). Returns each variant's (wall s, CPU s) per round."""
    names = list(variants)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(timed(variants[name]))
            log(f"  round {r + 1}/{rounds} {name}: {times[name][-1][0]:.3f} s wall, {times[name][-1][1]:.3f} s CPU")
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds and process CPU seconds (all threads) of one call. CPU time is far less
    disturbed than wall time by other processes sharing the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def conv_flops(model) -> float:
    """FLOPs of one image through every Conv2D (grouped included), DepthwiseConv2D and Dense layer
    (multiply and add counted separately; each layer's actual output shape, so build the model at a
    fixed input size). BatchNorm, activations, pooling and adds are left out (a few % at most)."""
    import keras

    total = 0
    for layer in model.layers:
        # Kernels: Conv2D (k_h, k_w, C_in / groups, C_out); DepthwiseConv2D (k_h, k_w, C_in, multiplier).
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            _, h, w, _ = layer.output.shape
            total += 2 * h * w * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * int(np.prod(layer.kernel.shape))
    return float(total)
