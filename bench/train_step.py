"""Denoiser training speed (pairs/s) by DUNET width and crop side, with the guided loss.

Why: the whole recipe (pairs + training) must fit in 6 hours on this 2-core CPU, and the issue
allows a narrower DUNET and random crops if their cost in accuracy is measured; this script
measures their gain in speed. Each configuration is one ``hgd.train.fit.build_training_model``
compiled as ``fit`` compiles it (Adam, the guided loss through the frozen target models); steps
run on random pixels (speed does not depend on the content) after two warm-up steps, the
configurations interleaved over ``--rounds`` rounds, medians reported. The CPU column divides by
process CPU time (less disturbed by other load than wall time).

    python bench/train_step.py --models efficientnet_lite0 efficientnet_lite1 efficientnet_lite2
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from _common import interleaved, log, median, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guidance", default="fgd")
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0"])
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--crops", type=int, nargs="+", default=[299, 192, 128])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed call")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import keras

    from hgd.train.fit import FitConfig, build_training_model

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 1000, args.batch).astype("int32")
    variants = {}
    for width, crop in itertools.product(args.widths, args.crops):
        config = FitConfig(guidance=args.guidance, models=tuple(args.models), width=width)
        model = build_training_model(config)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        pixels = {key: rng.uniform(0, 255, (args.batch, crop, crop, 3)).astype("float32")
                  for key in ("adversarial", "clean")}
        for _ in range(2):
            model.train_on_batch(pixels, labels)
        log(f"width {width} crop {crop}: warmed up")
        variants[f"{width}/{crop}"] = (lambda m=model, x=pixels: [m.train_on_batch(x, labels)
                                                                 for _ in range(args.steps)])
    times = interleaved(variants, args.rounds)
    pairs = args.batch * args.steps
    rows = []
    for name, samples in times.items():
        width, crop = name.split("/")
        wall, cpu = median([s[0] for s in samples]), median([s[1] for s in samples])
        rows.append([width, crop, f"{pairs / wall:.2f}", f"{pairs / cpu:.2f}", f"{wall / pairs:.3f}"])
    print(f"{args.guidance} guided by {' + '.join(args.models)}, batch {args.batch}, "
          f"backend {keras.backend.backend()}\n")
    print(table(["width", "crop", "pairs/s (wall)", "pairs/CPU-s", "s/pair"], rows))


if __name__ == "__main__":
    main()
