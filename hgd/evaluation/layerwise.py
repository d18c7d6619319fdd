"""The paper's two diagnostic figures: layer-wise perturbation (Figure 5), predicted vs true perturbation (Figure 7).

* **Figure 5.** ``E_l = ||f_l(x_p) - f_l(x)||_1 / ||f_l(x)||_1`` at the output of every block of the
  target model (then its guide layer and its logits), averaged over images, for ``x_p`` = the
  adversarial image, the clean image plus uniform noise of the same eps, and the adversarial image
  after each denoiser. The paper: the perturbation that PGD's output leaves grows with depth like an
  adversarial one, while a guided denoiser's stays near the random-noise level.
* **Figure 7.** Per image, the least-squares slope (through the origin) of the denoiser's predicted
  perturbation ``x_adv - D(x_adv)`` against the true one ``x_adv - x``. The paper: below 1 for
  PGD (it removes part of the noise), above 1 for LGD (it overshoots, in the direction that helps).

All of it in the target model's normalized space (where the denoisers work).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import numpy as np

from hgd.zoo import TargetModel


def block_outputs(backbone: keras.Model, target: TargetModel) -> list[str]:
    """The output layer of each ``block*`` stage (input to output), then the guide layer and the logits."""
    last: dict[str, str] = {}
    for layer in backbone.layers:
        if layer.name.startswith("block"):
            last[layer.name.split("_")[0]] = layer.name
    return [*last.values(), target.guide_layer, target.logits_layer]


def layer_probe(target: TargetModel) -> tuple[keras.Model, list[str]]:
    """Normalized 299 images -> the outputs of :func:`block_outputs`, and those names."""
    backbone = target.build_backbone()
    names = block_outputs(backbone, target)
    inner = keras.Model(backbone.inputs, [backbone.get_layer(n).output for n in names])
    x = keras.Input((None, None, 3))
    return keras.Model(x, inner(target.to_native()(x))), names


def layerwise_perturbation(probe: keras.Model, clean: np.ndarray, perturbed: np.ndarray,
                           batch_size: int = 8) -> np.ndarray:
    """``E_l`` per probed layer, averaged over the images, for normalized ``clean`` and ``perturbed``.

    Batched: the probe returns every block's activations, which for a whole set would not fit.
    """
    from hgd.backend import compile_fn

    run = compile_fn(lambda x: probe(x, training=False))
    totals = np.zeros(len(probe.outputs))
    for start in range(0, len(clean), batch_size):
        reference = run(clean[start:start + batch_size])
        moved = run(perturbed[start:start + batch_size])
        for layer, (f, g) in enumerate(zip(reference, moved)):
            f, g = keras.ops.convert_to_numpy(f), keras.ops.convert_to_numpy(g)
            axes = tuple(range(1, f.ndim))
            totals[layer] += np.sum(np.abs(g - f).sum(axis=axes) / np.maximum(np.abs(f).sum(axis=axes), 1e-12))
    return totals / len(clean)


def perturbation_slopes(clean: np.ndarray, adversarial: np.ndarray, denoised: np.ndarray) -> np.ndarray:
    """Per image, the slope ``k`` minimizing ``||(x_adv - D(x_adv)) - k (x_adv - x)||_2``."""
    true = (adversarial - clean).reshape(len(clean), -1)
    predicted = (adversarial - denoised).reshape(len(clean), -1)
    return (true * predicted).sum(axis=1) / np.maximum((true * true).sum(axis=1), 1e-12)


def plot_layerwise(curves: Mapping[str, np.ndarray], layers: Sequence[str], path, title: str) -> None:
    """Figure 5 as a PNG: one line per kind of perturbed image, layers from input to logits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for name, values in curves.items():
        axes.plot(range(len(layers)), values, marker="o", label=name)
    axes.set_xticks(range(len(layers)), [n.replace("_activation", "").replace("_", " ") for n in layers],
                    rotation=60, ha="right", fontsize=7)
    axes.set_yscale("log")
    axes.set_ylabel("E_l = |f_l(x_p) - f_l(x)|_1 / |f_l(x)|_1")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_slopes(samples: Mapping[str, tuple[np.ndarray, np.ndarray]], path, title: str) -> None:
    """Figure 7 as a PNG: predicted vs true perturbation (a sample of pixels) with each fitted slope."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, len(samples), figsize=(4.5 * len(samples), 4.2), squeeze=False)
    for axes, (name, (true, predicted)) in zip(panels[0], samples.items()):
        slope = float((true * predicted).sum() / max(float((true * true).sum()), 1e-12))
        axes.scatter(true, predicted, s=1, alpha=0.2)
        limit = float(np.abs(true).max())
        axes.plot([-limit, limit], [-slope * limit, slope * limit], color="red", label=f"fitted slope {slope:.2f}")
        axes.plot([-limit, limit], [-limit, limit], color="grey", linestyle=":", label="slope 1")
        axes.set_xlabel("true perturbation x_adv - x")
        axes.set_ylabel("predicted perturbation x_adv - D(x_adv)")
        axes.set_title(name)
        axes.legend(loc="upper left")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
