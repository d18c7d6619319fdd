"""Denoiser training speed: where a step's time goes, and what each cheaper option buys.

Why: the shipped denoiser is trained on this 2-core CPU, a few hours per session, so every lever
on pairs per CPU-second counts. Each configuration is one ``hgd.train.fit.build_training_model``
compiled as ``fit`` compiles it (Adam, the guided loss through the frozen target models); steps
run on random pixels (speed does not depend on the content) after two warm-up steps, the
configurations interleaved over ``--rounds`` rounds, medians reported. The CPU column divides by
process CPU time (less disturbed by other load than wall time).

What it can vary, each a list: the loss (``--guidances``: ``pgd``, the pixel loss, runs the DUNET
alone, so ``fgd`` minus ``pgd`` is the target models' share of a step), the DUNET width, the crop
side (299: whole images; a smaller side is also what a lower working resolution costs), the batch,
the DUNET's dtype policy (``mixed_bfloat16``), and the share of defense-aware examples
(``--adaptive-fractions``: PGD through the current denoiser before the step, as the data pipeline
does). ``--threads N`` limits the process to N threads (run it once per N, in one shell loop, to
compare). ``--devices 1 2`` splits each batch over that many devices with Keras' ``DataParallel``
(the JAX backend: ``KERAS_BACKEND=jax``; on a CPU the devices are simulated, XLA's host platform cut
into that many, so they share the same cores: a correctness and overhead figure, not a speed-up; on a
GPU machine they are its GPUs). ``--flops`` adds the analytic forward GFLOP per image of the DUNET and of each model up to
its guide layer, the numbers a step's time should follow.

    python bench/train_step.py --models efficientnet_lite0 efficientnet_lite1 efficientnet_lite2 \\
        --guidances pgd fgd --widths 0.5 --crops 299 --flops
    python bench/train_step.py --models efficientnet_lite0 efficientnet_lite1 efficientnet_lite2 \\
        --widths 0.25 0.5 --crops 299 224 --dtype-policies float32 mixed_bfloat16 --batches 8 16
    KERAS_BACKEND=jax python bench/train_step.py --models efficientnet_lite0 efficientnet_lite1 \\
        efficientnet_lite2 --widths 0.5 --batches 16 --devices 1 2
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os

import numpy as np

from _common import conv_flops, interleaved, log, median, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guidances", nargs="+", default=["fgd"])
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0"])
    parser.add_argument("--widths", type=float, nargs="+", default=[0.5])
    parser.add_argument("--crops", type=int, nargs="+", default=[299])
    parser.add_argument("--batches", type=int, nargs="+", default=[16])
    parser.add_argument("--dtype-policies", nargs="+", default=["float32"],
                        help="float32, mixed_bfloat16 or auto (FitConfig refuses others)")
    parser.add_argument("--adaptive-fractions", type=float, nargs="+", default=[0.0],
                        help="shares of each batch attacked through the current denoiser (0: oblivious pairs)")
    parser.add_argument("--adaptive-steps", type=int, default=4, help="PGD steps of that attack")
    parser.add_argument("--threads", type=int, default=None, help="limit the process to this many threads")
    parser.add_argument("--devices", type=int, nargs="+", default=[1],
                        help="devices each batch is split over (DataParallel, KERAS_BACKEND=jax; simulated on a CPU)")
    parser.add_argument("--steps", type=int, default=2, help="steps per timed call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flops", action="store_true", help="also print the analytic GFLOP per image")
    args = parser.parse_args()
    if args.threads:
        limit_threads(args.threads)
    if max(args.devices) > 1:
        if os.environ.get("KERAS_BACKEND") != "jax":
            parser.error("--devices above 1 needs KERAS_BACKEND=jax (Keras' DataParallel)")
        os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "
                                   f"--xla_force_host_platform_device_count={max(args.devices)}").strip()

    import keras

    from hgd.train.fit import FitConfig, build_training_model

    rng = np.random.default_rng(0)
    variants = {}
    grid = itertools.product(args.guidances, args.widths, args.crops, args.batches, args.dtype_policies,
                             args.adaptive_fractions, args.devices)
    for guidance, width, crop, batch, policy, fraction, devices in grid:
        config = FitConfig(guidance=guidance, models=tuple(args.models), width=width, adaptive_fraction=fraction,
                           adaptive_steps=args.adaptive_steps, dtype_policy=policy)
        scope = _devices_scope(devices)
        with scope():
            model = build_training_model(config)
            model.compile(optimizer=keras.optimizers.Adam(1e-3))
        pixels = {key: rng.uniform(0, 255, (batch, crop, crop, 3)).astype("float32")
                  for key in ("adversarial", "clean")}
        labels = rng.integers(0, 1000, batch).astype("int32")
        step = _step(model, config, pixels, labels, scope)
        for _ in range(2):
            step()
        name = f"{guidance}/{width}/{crop}/{batch}/{policy}/{fraction}/{devices}"
        log(f"{name}: warmed up")
        variants[name] = lambda s=step: [s() for _ in range(args.steps)]
    times = interleaved(variants, args.rounds)
    rows = []
    for name, samples in times.items():
        batch = int(name.split("/")[3])
        wall, cpu = median([s[0] for s in samples]), median([s[1] for s in samples])
        pairs = batch * args.steps
        rows.append([*name.split("/"), f"{pairs / wall:.2f}", f"{pairs / cpu:.3f}", f"{wall / args.steps:.2f}"])
    print(f"guided by {' + '.join(args.models)}, threads {args.threads or 'all'}, defense-aware examples: "
          f"{args.adaptive_steps}-step PGD, backend {keras.backend.backend()}\n")
    print(table(["loss", "width", "crop", "batch", "dtype policy", "adaptive share", "devices", "pairs/s (wall)",
                 "pairs/CPU-s", "s/step (wall)"], rows))
    if args.flops:
        print()
        print(flops_table(args.models, args.widths, args.crops))


def limit_threads(threads: int) -> None:
    """Both backends' CPU thread pools at ``threads`` (before either starts)."""
    os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false "
                               f"intra_op_parallelism_threads={threads}").strip()
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def flops_table(models: list[str], widths: list[float], crops: list[int]) -> str:
    """Forward GFLOP per image: the DUNET per width and crop, each model up to its guide layer at the
    size a crop reaches it (a crop is scaled by native/299, as training feeds it)."""
    import keras

    from hgd.defenses.dunet import build_dunet
    from hgd.io.images import IMAGE_SIZE
    from hgd.zoo import ARCHITECTURES, efficientnet_lite, get_model

    rows = []
    for width, crop in itertools.product(widths, crops):
        dunet = build_dunet(width=width, input_shape=(crop, crop, 3))
        rows.append([f"DUNET width {width:g}", crop, f"{conv_flops(dunet) / 1e9:.2f}"])
    for name, crop in itertools.product(models, crops):
        target = get_model(name)
        side = round(crop * (target.input_resolution or IMAGE_SIZE) / IMAGE_SIZE)
        if target.name in ARCHITECTURES:
            model = ARCHITECTURES[target.name](input_shape=(side, side, 3))
        else:
            model = efficientnet_lite.build_efficientnet_lite(efficientnet_lite.VARIANTS[name],
                                                              input_shape=(side, side, 3))
        guide = keras.Model(model.inputs, model.get_layer(target.guide_layer).output)
        rows.append([f"{name} to its guide layer ({side}x{side})", crop, f"{conv_flops(guide) / 1e9:.2f}"])
    return ("Forward GFLOP per image (a training step costs about 3x the DUNET's, forward and backward, plus "
            "4x each model's: the clean image forward, the denoised one forward and backward):\n\n"
            + table(["part", "crop", "GFLOP/image"], rows))


def _devices_scope(devices: int):
    """A context for building and stepping a model on ``devices`` devices (nothing for one)."""
    if devices == 1:
        return contextlib.nullcontext
    import keras

    available = keras.distribution.list_devices()
    if devices > len(available):
        raise SystemExit(f"{devices} devices asked for, {len(available)} here: {available}")
    return keras.distribution.DataParallel(devices=available[:devices]).scope


def _step(model, config, pixels: dict, labels: np.ndarray, scope=contextlib.nullcontext):
    """One training step as ``fit`` takes it: the batch's defense-aware share attacked first."""
    adversary = model.adversary(config) if config.adaptive_fraction else None

    def step():
        if adversary is not None:
            adversary.replace(pixels["adversarial"], pixels["clean"], labels, (0,))
        with scope():
            return model.train_on_batch(pixels, labels)

    return step


if __name__ == "__main__":
    main()
