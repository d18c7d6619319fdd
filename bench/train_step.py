"""Denoiser training speed (pairs/s) by DUNET width, crop side and share of defense-aware examples.

Why: the whole recipe (pairs + training) must fit in 6 hours on this 2-core CPU, and the issue
allows a narrower DUNET and random crops if their cost in accuracy is measured; this script
measures their gain in speed. Each configuration is one ``hgd.train.fit.build_training_model``
compiled as ``fit`` compiles it (Adam, the guided loss through the frozen target models); steps
run on random pixels (speed does not depend on the content) after two warm-up steps, the
configurations interleaved over ``--rounds`` rounds, medians reported. The CPU column divides by
process CPU time (less disturbed by other load than wall time). ``--adaptive-fractions`` adds the
defense-aware training of ``hgd.train.adaptive`` (that share of every batch attacked by PGD through
the current denoiser before the step, as the data pipeline does): its cost is the attack's.

    python bench/train_step.py --models efficientnet_lite0 efficientnet_lite1 efficientnet_lite2
    python bench/train_step.py --models efficientnet_lite0 efficientnet_lite1 efficientnet_lite2 \
        --widths 0.5 --crops 128 --adaptive-fractions 0 0.5 1
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
    parser.add_argument("--adaptive-fractions", type=float, nargs="+", default=[0.0],
                        help="shares of each batch attacked through the current denoiser (0: oblivious pairs)")
    parser.add_argument("--adaptive-steps", type=int, default=4, help="PGD steps of that attack")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed call")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import keras

    from hgd.train.fit import FitConfig, build_training_model

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 1000, args.batch).astype("int32")
    variants = {}
    for width, crop, fraction in itertools.product(args.widths, args.crops, args.adaptive_fractions):
        config = FitConfig(guidance=args.guidance, models=tuple(args.models), width=width,
                           adaptive_fraction=fraction, adaptive_steps=args.adaptive_steps)
        model = build_training_model(config)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        pixels = {key: rng.uniform(0, 255, (args.batch, crop, crop, 3)).astype("float32")
                  for key in ("adversarial", "clean")}
        step = _step(model, config, pixels, labels)
        for _ in range(2):
            step()
        log(f"width {width} crop {crop} adaptive {fraction}: warmed up")
        variants[f"{width}/{crop}/{fraction}"] = lambda s=step: [s() for _ in range(args.steps)]
    times = interleaved(variants, args.rounds)
    pairs = args.batch * args.steps
    rows = []
    for name, samples in times.items():
        wall, cpu = median([s[0] for s in samples]), median([s[1] for s in samples])
        rows.append([*name.split("/"), f"{pairs / wall:.2f}", f"{pairs / cpu:.2f}", f"{wall / pairs:.3f}"])
    print(f"{args.guidance} guided by {' + '.join(args.models)}, batch {args.batch}, "
          f"defense-aware examples: {args.adaptive_steps}-step PGD, backend {keras.backend.backend()}\n")
    print(table(["width", "crop", "adaptive share", "pairs/s (wall)", "pairs/CPU-s", "s/pair"], rows))


def _step(model, config, pixels: dict, labels: np.ndarray):
    """One training step as ``fit`` takes it: the batch's defense-aware share attacked first."""
    adversary = model.adversary(config) if config.adaptive_fraction else None

    def step():
        if adversary is not None:
            adversary.replace(pixels["adversarial"], pixels["clean"], labels, (0,))
        return model.train_on_batch(pixels, labels)

    return step


if __name__ == "__main__":
    main()
