"""Throughput of each Lite classifier bare vs through the toolkit's full inference pipeline.

Why: the project's target is that the pipeline a defense actually runs (PNG decode in
``hgd.io.images.iter_batches``'s background threads -> the uint8 batch as it is, like
``hgd.cli.run_defense`` -> ``build_classifier()``, which casts to float32, scales pixels to the input
space and bicubic-resizes 299 -> native in the graph) keeps
>= 90% of the bare model's images/s at batch 32. "Bare" is ``build_backbone()`` fed a pre-made
float32 batch already at native resolution in its input space. Both are compiled with
``hgd.backend.forward_fn`` and warmed up (one batch) so tracing is excluded; the variants are
interleaved over ``--rounds`` rounds and the median of each is reported, so the ratio is taken
side by side on a shared, noisy machine.

``--breakdown`` adds, in the same interleaved rounds, the parts of the pipeline on their own:
decoding alone (iter_batches, no model), the classifier on already-decoded pixels (in-graph
scaling + resize + backbone, no decode), the input-space layer alone (scaling + bicubic resize)
and a numpy uint8 -> float32 conversion, to show where the time goes; and the pipeline as it
was before feeding uint8 (``batch.images.astype(float32)`` before the call; same logits), which
costs ~1 ms/img more.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from _common import DEFAULT_IMAGES, image_folder, interleaved, log, median, table, temp_workdir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=pathlib.Path, default=DEFAULT_IMAGES, help="PNG folder (first --n files)")
    parser.add_argument("--n", type=int, default=256, help="images per timed pass (rounded down to a multiple of --batch)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
    parser.add_argument("--breakdown", action="store_true", help="also time decode, resize and conversion alone")
    args = parser.parse_args()

    import keras

    from hgd.backend import forward_fn
    from hgd.io.images import iter_batches, list_input_files
    from hgd.zoo import get_model

    n = max(args.batch, args.n - args.n % args.batch)  # full batches only: one traced shape
    with temp_workdir("pipeline") as tmp:
        files = list_input_files(image_folder(args.images, n, pathlib.Path(tmp)))
        n = len(files) - len(files) % args.batch  # a short --images folder: whole batches of it
        files = files[:n]
        decoded = np.concatenate([b.images for b in iter_batches(files, args.batch)])  # for --breakdown
        rows, details = [], []
        for name in args.models:
            target = get_model(name)
            res = target.native_resolution
            log(f"{name}: building (native {res})")
            bare = forward_fn(target.build_backbone())
            classifier = forward_fn(target.build_classifier())
            rng = np.random.default_rng(0)
            native = rng.uniform(-1, 1, (args.batch, res, res, 3)).astype(np.float32)

            variants = {  # each does n images
                "bare": lambda: [bare(native) for _ in range(n // args.batch)],
                "pipeline": lambda: [classifier(b.images) for b in iter_batches(files, args.batch)],
            }
            if args.breakdown:
                to_input = forward_fn(keras.Sequential([keras.Input((299, 299, 3)), target.to_input_space()]))
                chunks = [decoded[i : i + args.batch] for i in range(0, n, args.batch)]
                floats = [c.astype(np.float32) for c in chunks]
                to_input(floats[0])
                classifier(floats[0])  # traces the float32 signature
                variants |= {
                    "pipeline, astype float32": lambda: [
                        classifier(b.images.astype(np.float32)) for b in iter_batches(files, args.batch)],
                    "decode only": lambda: [b.images for b in iter_batches(files, args.batch)],
                    "astype only": lambda: [c.astype(np.float32) for c in chunks],
                    "input space only": lambda: [to_input(f) for f in floats],
                    "classifier, pre-decoded": lambda: [classifier(f) for f in floats],
                }
            log(f"{name}: warm-up")
            bare(native)
            classifier(decoded[: args.batch])
            times = interleaved(variants, args.rounds)
            wall = {k: median([w for w, _ in v]) for k, v in times.items()}
            cpu = {k: median([c for _, c in v]) for k, v in times.items()}
            rows.append([name, f"{n / wall['bare']:.1f}", f"{n / wall['pipeline']:.1f}",
                         f"{100 * wall['bare'] / wall['pipeline']:.1f}", f"{100 * cpu['bare'] / cpu['pipeline']:.1f}"])
            if args.breakdown:
                parts = ["bare", "decode only", "input space only"]
                details.append([name] + [f"{1000 * wall[k] / n:.2f} / {1000 * cpu[k] / n:.2f}" for k in variants]
                               + [f"{1000 * sum(wall[k] for k in parts) / n:.2f} / {1000 * sum(cpu[k] for k in parts) / n:.2f}"])
            keras.backend.clear_session()

    print(f"Batch {args.batch}, {n} images per pass, median of {args.rounds} interleaved rounds.\n")
    print("Last column: the same ratio in process CPU time per image (all threads), which other load disturbs "
          "far less; when both variants keep all cores busy it predicts the wall ratio on an idle machine.\n")
    print(table(["model", "bare img/s", "pipeline img/s", "pipeline/bare %", "same, by CPU time %"], rows))
    if details:
        print("\nBreakdown, ms per image as wall / process CPU (all threads), medians; last column: bare + decode "
              "+ input space, the pipeline's cost if nothing overlapped.\n")
        print(table(["model"] + [f"{k}" for k in variants] + ["sum of parts"], details))


if __name__ == "__main__":
    main()
