"""Attack speed (images/s) of the shipped attack submissions, start-up excluded.

Why: the competition allowed 500 s per 100-image batch, and an attack's cost decides what it can
afford (steps, ensemble size, input copies) on this 2-core CPU. Each variant is what a submission runs:
its ``config.json`` read by the library (``hgd.attacks.config``), on the model it names (models shared
between submissions are built once), with its criterion (a targeted attack towards random targets,
as ``target_class.csv`` would give). Each is warmed up once on a batch (tracing), then each timed call
attacks one batch of real images at eps 16. Variants are interleaved over ``--rounds`` rounds and
medians reported; the CPU column divides by process CPU time (less disturbed by other load than wall
time). ``run_attacks_and_defenses.sh`` reports the same attacks' seconds per 100-image batch *with*
start-up (model build, tracing) in its timing table.

    python bench/attack_speed.py --rounds 3                       # every oblivious attack in attacks/
    python bench/attack_speed.py --attacks fgsm ifgsm di_mifgsm    # some of them
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from _common import DEFAULT_IMAGES, REPO, interleaved, log, median, table

ATTACKS_DIR = REPO / "attacks"
LIMIT_S_PER_100 = 500.0


def oblivious_attacks() -> list[str]:
    """The attack submissions in attacks/ that attack a model and are not defense-aware."""
    names = []
    for folder in sorted(p for p in ATTACKS_DIR.iterdir() if (p / "metadata.json").is_file()):
        meta = json.loads((folder / "metadata.json").read_text())
        config = json.loads((folder / "config.json").read_text())
        if not meta.get("defense_aware") and "model" in config:
            names.append(folder.name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=pathlib.Path, default=DEFAULT_IMAGES)
    parser.add_argument("--batch", type=int, default=16, help="images per call (the submissions' batch size)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--attacks", nargs="+", default=None,
                        help="submission folders' names in attacks/ (default: every oblivious one with a model)")
    args = parser.parse_args()

    from hgd.attacks import TargetedMisclassification
    from hgd.attacks.config import build_model, load_attack_config
    from hgd.io.images import iter_batches, list_input_files

    files = list_input_files(args.images if args.images.is_dir() else pathlib.Path("sample_data/images"))
    images = next(iter_batches(files[: args.batch], args.batch)).images
    targets = np.random.default_rng(0).integers(0, 1000, len(images))
    models: dict[str, object] = {}
    calls = {}
    for name in args.attacks or oblivious_attacks():
        config = load_attack_config(ATTACKS_DIR / name / "config.json")
        key = json.dumps(config.model, sort_keys=True)
        if key not in models:
            models[key] = build_model(config)
        model = models[key]
        criterion = TargetedMisclassification(targets) if config.targeted else None
        config.attack(model, images, criterion, epsilon=16)  # compile and warm up
        log(f"{name}: warmed up")
        calls[name] = lambda a=config.attack, m=model, c=criterion: a(m, images, c, epsilon=16)
    times = interleaved(calls, args.rounds)
    rows = []
    for name, samples in times.items():
        wall, cpu = median([s[0] for s in samples]), median([s[1] for s in samples])
        per_100 = 100 * wall / len(images)
        rows.append([name, f"{len(images) / wall:.2f}", f"{len(images) / cpu:.2f}", f"{per_100:.0f}",
                     "yes" if per_100 <= LIMIT_S_PER_100 else "NO"])
    print(f"batch {len(images)}, eps 16, {args.rounds} rounds, medians\n")
    print(table(["attack submission", "images/s (wall)", "images/CPU-s", "s per 100 images",
                 f"within {LIMIT_S_PER_100:g} s / 100"], rows))


if __name__ == "__main__":
    main()
