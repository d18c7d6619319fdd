"""Attack speed (images/s) of the shipped attacks' configurations, start-up excluded.

Why: the competition allowed 500 s per 100-image batch, and an attack's cost decides what it can
afford (steps, ensemble size) on this 2-core CPU. Each variant is the library attack the submission
runs (``attacks/*/config.json``) on the model it attacks, compiled and warmed up once on a batch;
then each timed call attacks one batch of real images at eps 16. Variants are interleaved over
``--rounds`` rounds and medians reported; the CPU column divides by process CPU time (less
disturbed by other load than wall time). ``run_attacks_and_defenses.sh`` reports the same attacks'
seconds per 100-image batch *with* start-up (model build, tracing) in its timing table.

    python bench/attack_speed.py --rounds 3
"""

from __future__ import annotations

import argparse
import pathlib

from _common import DEFAULT_IMAGES, interleaved, log, median, table

LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=pathlib.Path, default=DEFAULT_IMAGES)
    parser.add_argument("--batch", type=int, default=16, help="images per call (the submissions' batch size)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from hgd import attacks
    from hgd.defenses.defended import Member, build_defended_model
    from hgd.io.images import iter_batches, list_input_files
    from hgd.zoo import get_model

    files = list_input_files(args.images if args.images.is_dir() else pathlib.Path("sample_data/images"))
    images = next(iter_batches(files[: args.batch], args.batch)).images
    lite0 = build_defended_model([Member(get_model(LITE[0]))])
    ensemble = build_defended_model([Member(get_model(name)) for name in LITE])
    variants = {
        "fgsm (Lite0)": (attacks.FGSM(), lite0),
        "fgsm (ensemble)": (attacks.FGSM(), ensemble),
        "ifgsm, 10 steps (ensemble)": (attacks.IFGSM(steps=10), ensemble),
    }
    calls = {}
    for name, (attack, model) in variants.items():
        attack(model, images, epsilon=16)  # compile and warm up
        log(f"{name}: warmed up")
        calls[name] = lambda a=attack, m=model: a(m, images, epsilon=16)
    times = interleaved(calls, args.rounds)
    rows = []
    for name, samples in times.items():
        wall, cpu = median([s[0] for s in samples]), median([s[1] for s in samples])
        rows.append([name, f"{len(images) / wall:.2f}", f"{len(images) / cpu:.2f}", f"{100 * wall / len(images):.0f}"])
    print(f"batch {len(images)}, eps 16, {args.rounds} rounds, medians\n")
    print(table(["attack", "images/s (wall)", "images/CPU-s", "s per 100 images"], rows))


if __name__ == "__main__":
    main()
