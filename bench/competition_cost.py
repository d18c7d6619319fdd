"""What the four-model competition submission costs: FLOPs, activations, and the GPU run they imply.

Why: the four classifiers' weights cannot be fetched here, so their training and inference cannot be
timed on this machine; this estimates them from the architectures themselves (random weights, built
at 299x299). Per part: parameters, forward GFLOP per image (Conv2D incl. grouped, DepthwiseConv2D,
Dense; ``_common.conv_flops``), and float32 activation MB per image (the sum of every layer's output,
an upper bound on what backprop keeps). The training pairs' attacks (~3x forward per step and model).
Then, per denoiser of ``defense/profiles/competition4.json``:
training FLOPs per pair (DUNET forward and backward ~3x its forward, the frozen classifier up to its
guide layer on the clean image once and on the denoised image forward and backward ~3x), the whole
recipe's FLOPs (pairs per epoch x epochs), and the hours at ``--tflops`` sustained (a user's measured
rate replaces the assumption: ``bench/train_step.py`` on their GPU). Inference: GFLOP per image of
the whole defense (four DUNETs + four classifiers).
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from _common import REPO, conv_flops, log, table


def activation_mb(model, until: str | None = None) -> float:
    """float32 MB of one image's layer outputs, over all layers or up to (and including) ``until``."""
    total = 0
    for layer in model.layers:
        for output in (layer.output if isinstance(layer.output, list) else [layer.output]):
            total += int(np.prod(output.shape[1:]))
        if layer.name == until:
            break
    return 4 * total / 2**20


def guide_flops(model, guide: str) -> float:
    """Forward FLOPs of one image up to the guide layer (the part FGD backpropagates through)."""
    import keras

    return conv_flops(keras.Model(model.inputs, model.get_layer(guide).output))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", type=pathlib.Path, default=REPO / "defense" / "profiles" / "competition4.json")
    parser.add_argument("--images", type=int, default=3300, help="clean training images (the ImageNet pool: 3300)")
    parser.add_argument("--tflops", type=float, default=100.0,
                        help="sustained TFLOP/s assumed for training (H100 TF32 dense peak ~495; 20%% of it)")
    args = parser.parse_args()

    from hgd.defenses.dunet import build_dunet
    from hgd.io.images import IMAGE_SIZE
    from hgd.train.pairs import PairSpec
    from hgd.train.recipe import load_recipe
    from hgd.zoo import ARCHITECTURES, get_model

    recipe = load_recipe(args.profile)
    spec = PairSpec(source="-", models=recipe.pairs.attack_models, attack_set=recipe.pairs.attack_set)
    pairs_per_epoch = round(args.images * (1 - spec.validation_fraction)) * len(spec.attacks())
    parts: dict[str, tuple[int, float, float]] = {}  # params, forward FLOPs, activation MB per image
    rows, inference = [], 0.0
    for job in recipe.jobs:
        dunet_name = f"DUNET width {job.spec.width:g}{'' if job.spec.lateral else ' (DAE)'}"
        if dunet_name not in parts:
            dunet = build_dunet(width=job.spec.width, lateral=job.spec.lateral, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
            parts[dunet_name] = (dunet.count_params(), conv_flops(dunet), activation_mb(dunet))
        (name,) = job.config.models
        log(f"building {name}")
        target = get_model(name)
        model = ARCHITECTURES[target.name](input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
        parts[name] = (model.count_params(), conv_flops(model), activation_mb(model))
        _, dunet_flops, dunet_mb = parts[dunet_name]
        to_guide = guide_flops(model, target.guide_layer)
        per_pair = 3 * dunet_flops + to_guide + 3 * to_guide
        total = per_pair * pairs_per_epoch * job.config.max_epochs
        batch_gib = job.config.batch_size * (dunet_mb + activation_mb(model, target.guide_layer)) / 1024
        rows.append([job.name, f"{per_pair / 1e9:.0f}", f"{pairs_per_epoch:,}", job.config.max_epochs,
                     f"{total / 1e15:.0f}", f"{total / (args.tflops * 1e12) / 3600:.1f}",
                     f"{job.config.batch_size}: {batch_gib:.1f}"])
        inference += dunet_flops + parts[name][1]
    print(table(["part", "params", "GFLOP/img forward", "activations MB/img"],
                [[k, f"{p:,}", f"{f / 1e9:.1f}", f"{a:.0f}"] for k, (p, f, a) in parts.items()]))
    print()
    print(table(["denoiser", "GFLOP/pair (training)", "pairs/epoch", "epochs", "PFLOP in all",
                 f"hours at {args.tflops:g} TFLOP/s", "batch: activations GiB"], rows))
    # Each attack step is a forward and backward pass (~3x forward) through the models it attacks.
    data = args.images * sum(3 * a.steps * sum(parts[m.value][1] for m in a.models) for a in spec.attacks())
    print(f"\ntraining pairs: {len(spec.attacks())} Table 1 attacks on {', '.join(spec.models)} per image, "
          f"{data / 1e15:.0f} PFLOP for {args.images} images ({data / (args.tflops * 1e12) / 3600:.2f} h at "
          f"{args.tflops:g} TFLOP/s)\ninference: {inference / 1e9:.0f} GFLOP per image for the whole defense "
          f"({len(recipe.jobs)} denoisers + {len(recipe.jobs)} classifiers)")


if __name__ == "__main__":
    main()
