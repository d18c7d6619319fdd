"""A few training steps of a small denoiser under data parallelism, run as its own process (JAX backend).

    python tests/distributed_probe.py OUT_DIR --devices N                        # N simulated devices, one process
    python tests/distributed_probe.py OUT_DIR --process-id I --num-processes P --coordinator 127.0.0.1:PORT
    python tests/distributed_probe.py OUT_DIR --devices N --backend tensorflow   # N logical CPU devices, tf.distribute

Each process trains on its share of the same global batches (SGD, so a step's update is the gradient
itself) and writes its denoiser's flattened weights after every step to ``OUT_DIR/p{I}_step{S}.npy``.
A helper of ``tests/test_distributed.py``, not a test module.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

GLOBAL_BATCH, STEPS = 4, 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--devices", default=None)
    parser.add_argument("--coordinator", default=None)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--backend", choices=["jax", "tensorflow"], default="jax")
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    if args.devices and args.backend == "jax":
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    if args.devices and args.backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]  # always two logical CPUs: the same setup for 1 and 2
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np

    from hgd.train.distributed import place
    from hgd.train.fit import FitConfig, build_training_model

    placement = place(args.devices, coordinator=args.coordinator, num_processes=args.num_processes,
                      process_id=args.process_id)
    keras.utils.set_random_seed(0)
    model = build_training_model(FitConfig(guidance="pgd", models=(), width=0.125, batch_size=GLOBAL_BATCH))
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    part, parts = placement.shard
    first, last = part * GLOBAL_BATCH // parts, (part + 1) * GLOBAL_BATCH // parts
    rng = np.random.default_rng(0)
    args.out.mkdir(parents=True, exist_ok=True)
    for step in range(STEPS):
        adversarial = rng.integers(0, 256, (GLOBAL_BATCH, 48, 48, 3)).astype("float32")
        clean = np.clip(adversarial + rng.integers(-8, 9, adversarial.shape), 0, 255).astype("float32")
        model.train_on_batch({"adversarial": adversarial[first:last], "clean": clean[first:last]},
                             np.zeros(last - first, np.int32))
        weights = np.concatenate([keras.ops.convert_to_numpy(w).ravel() for w in model.denoiser.weights])
        np.save(args.out / f"p{args.process_id}_step{step}.npy", weights)
    print(f"process {args.process_id}: {placement}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
