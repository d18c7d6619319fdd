"""DUNET forward speed at 299x299, as images/s and as a fraction of the machine's fp32 matmul rate.

Why: the denoiser costs more than the classifiers it protects (~139 GFLOP per image at width
1.0, ``docs/results/benchmarks.md``), so it sets the defense's speed. FLOPs per image are
counted analytically from the model's Conv2D layers (2 * H_out * W_out * k_h * k_w * C_in * C_out,
with each layer's actual output shape for a 299 input); BatchNorm, ReLU, the resizes and the
residual add are left out (a few % at most). The reference rate is a large fp32 matmul run by
the same backend (``keras.ops.matmul`` on TensorFlow tensors, eager): 2 * m^3 FLOPs per product.
Each model is compiled with ``hgd.backend.forward_fn`` and warmed up; the configurations and the
matmul are interleaved over ``--rounds`` rounds and medians are reported. The last column divides
by process CPU time instead of wall time: less disturbed by other load, and on an idle machine
about the per-core rate (times the cores used gives GFLOP/s).
"""

from __future__ import annotations

import argparse

import numpy as np

from _common import conv_flops, interleaved, log, median, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--size", type=int, default=299)
    parser.add_argument("--reps", type=int, default=1, help="forward calls per timing")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    parser.add_argument("--matmul", type=int, default=4096, help="side m of the m x m @ m x m reference matmul")
    args = parser.parse_args()

    import keras

    from hgd.backend import forward_fn
    from hgd.defenses.dunet import build_dunet

    x = np.random.default_rng(0).uniform(-1, 1, (args.batch, args.size, args.size, 3)).astype(np.float32)
    variants, flops = {}, {}
    for width in args.widths:
        model = build_dunet(width=width, input_shape=(args.size, args.size, 3))
        flops[width] = conv_flops(model)
        log(f"width {width}: {model.count_params():,} params, {flops[width] / 1e9:.1f} GFLOP/img "
            f"({flops[width] / 2e9:.1f} GMAC); warm-up")
        forward = forward_fn(model)
        forward(x)
        variants[f"DUNET width {width}"] = lambda f=forward: [f(x) for _ in range(args.reps)]
    m = args.matmul
    a, b = (keras.ops.convert_to_tensor(np.random.default_rng(i).standard_normal((m, m), np.float32)) for i in (1, 2))
    matmul = lambda: keras.ops.convert_to_numpy(keras.ops.matmul(a, b))  # noqa: E731
    matmul()
    variants["matmul"] = lambda: [matmul() for _ in range(args.reps)]

    times = interleaved(variants, args.rounds)
    wall = {k: median([w for w, _ in v]) for k, v in times.items()}
    cpu = {k: median([c for _, c in v]) for k, v in times.items()}
    matmul_rate = args.reps * 2 * m**3 / wall["matmul"] / 1e9
    rows = []
    for width in args.widths:
        name = f"DUNET width {width}"
        images_per_s = args.reps * args.batch / wall[name]
        rate = images_per_s * flops[width] / 1e9
        rows.append([f"{name}, batch {args.batch}, {args.size}x{args.size}", f"{images_per_s:.2f}",
                     f"{flops[width] / 1e9:.1f}", f"{rate:.0f}", f"{100 * rate / matmul_rate:.0f}",
                     f"{args.reps * args.batch * flops[width] / cpu[name] / 1e9:.0f}"])
    rows.append([f"fp32 matmul {m}x{m} @ {m}x{m} ({keras.backend.backend()}, keras.ops.matmul)", "",
                 f"{2 * m**3 / 1e9:.1f} per product", f"{matmul_rate:.0f}", "100",
                 f"{args.reps * 2 * m**3 / cpu['matmul'] / 1e9:.0f}"])
    print(f"Median of {args.rounds} interleaved rounds, {args.reps} call(s) per timing.\n")
    print(table(["config", "img/s", "GFLOP/img", "GFLOP/s", "% of matmul", "GFLOP per CPU-s"], rows))


if __name__ == "__main__":
    main()
