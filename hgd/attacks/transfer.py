"""What the transfer attacks do to a model's input and to its gradient: DI, TI and SI, in numpy.

The sign-gradient family (:class:`hgd.attacks.IterativeGradientSignAttack`) uses these through its
``diversity_prob``, ``ti_kernel`` / ``ti_sigma`` and ``scale_copies`` parameters:

* **Input diversity** (DI; Xie et al., CVPR 2019, "Improving Transferability of Adversarial Examples
  with Input Diversity"): with probability ``p`` per gradient, the image is resized (nearest
  neighbour) to a random ``rnd`` in ``[size, upper)``, zero-padded at a random offset to ``upper``
  and resized (nearest neighbour) back to ``size``, the input the model takes. ``upper`` is
  ``round(size * 330 / 299)``: 330 for the competition's 299 images, the paper's setting. Both
  resizes and the padding act on rows and columns separately, so a draw is a list of source rows
  and one of source columns (:func:`diversity_rows`); the transform copies pixels, and its gradient
  is exactly the transpose: each pixel's gradient added to the pixel it was copied from, in numpy,
  with no framework in between. Conventions of the published code
  (``cihangxie/DI-2-FGSM``, and ``JHL-HUST/SI-NI-FGSM``, which adds the resize back):
  ``rnd`` and the offsets are drawn as ``tf.random_uniform`` draws them (upper bounds excluded),
  one draw per gradient for the whole batch, nearest neighbour as TF1's ``resize_images``
  (``src = floor(dst * in / out)``), and the padding is 0 *in the model's [-1, 1] input*, i.e. mid
  grey, :data:`PAD_VALUE` = 127.5 pixel levels (the Lite models' ``(x - 127) / 128`` maps it to ~0 too).
* **Translation invariance** (TI; Dong et al., CVPR 2019, "Evading Defenses to Transferable
  Adversarial Examples by Translation-Invariant Attacks"): the gradient is convolved, channel by
  channel with zero ('SAME') padding, with a normalized Gaussian kernel before the sign step
  (:func:`smooth_gradient`). The released code builds the kernel as ``gkern(kernlen, nsig=3)``:
  the standard normal density sampled at ``linspace(-3, 3, kernlen)`` and normalized, i.e. a
  Gaussian of ``sigma = (kernlen - 1) / 6`` pixels whose radius is 3 sigma: 7/3 for the paper's
  15x15 kernel. That is the default here (:func:`ti_sigma`). The kernel is the outer product of
  a normalized 1-D one, so the convolution runs along rows and then columns.
* **Scale copies** (SI; Lin et al., ICLR 2020, "Nesterov Accelerated Gradient and Scale Invariance
  for Adversarial Attacks"): gradients at ``S_i(x) = x / 2^i``, ``i = 0..m-1``, averaged. The
  paper's code scales the Inception input, which lives in [-1, 1]: ``x / 2^i`` there shrinks the
  image towards mid grey, not towards black. In pixels that is ``127.5 + (p - 127.5) / 2^i``
  (:func:`scale_copy`, :data:`SCALE_CENTER`), which is what it means for the Lite models (their
  input ``(p - 127) / 128`` is the same [-1, 1] convention). Scaling 0..255 pixels towards 0 would
  be the [0, 1] convention of the PyTorch re-implementations: a darker image, not the published
  one. The gradient is taken with respect to ``x``, so copy ``i`` carries the chain rule's
  ``1 / 2^i`` as in the paper's code.

Nesterov's look-ahead (NI, same paper) needs the attack's momentum and lives in the attack itself.
"""

from __future__ import annotations

import functools
import math

import numpy as np

DIVERSITY_RESIZE = 330 / 299
"""DI's padded size over the image size: the paper resizes 299 images into [299, 330) and pads to 330."""

PAD_VALUE = 127.5
"""DI's padding, in pixel levels: 0 in the [-1, 1] model input of the published code (mid grey)."""

SCALE_CENTER = 127.5
"""The pixel value SI's copies shrink towards: 0 in the [-1, 1] model input of the published code."""

TI_NSIG = 3
"""The released TI code's ``gkern(kernlen, nsig=3)``: the kernel's radius is ``nsig`` standard deviations."""


def diversity_size(size: int) -> int:
    """DI's padded size for ``size``-pixel images: ``round(size * 330 / 299)`` (330 for 299), at least ``size + 1``."""
    return max(int(round(size * DIVERSITY_RESIZE)), size + 1)


def diversity_rows(size: int, resized: int, offset: int) -> np.ndarray:
    """One DI draw along one axis: for each of the ``size`` output rows, the input row it copies, or
    -1 for padding. Resize ``size -> resized`` (nearest), place at ``offset`` among
    ``diversity_size(size)`` rows of padding, resize back to ``size`` (nearest, TF1's
    ``src = floor(dst * in / out)``)."""
    upper = diversity_size(size)
    if not size <= resized < upper or not 0 <= offset <= upper - resized:
        raise ValueError(f"a DI draw resizes {size} into [{size}, {upper}) and pads it at an offset that fits, "
                         f"got resized={resized}, offset={offset}")
    padded = (np.arange(size) * upper) // size - offset  # the row of the resized image, if inside it
    inside = (padded >= 0) & (padded < resized)
    return np.where(inside, (np.clip(padded, 0, resized - 1) * size) // resized, -1)


def diversity_matrix(rows: np.ndarray) -> np.ndarray:
    """The ``(size, size)`` 0/1 matrix of :func:`diversity_rows`' map (for checking it; the attack gathers)."""
    matrix = np.zeros((len(rows), len(rows)), np.float32)
    copied = np.flatnonzero(rows >= 0)
    matrix[copied, rows[copied]] = 1.0
    return matrix


def draw_diversity(size: int, probability: float, rng: np.random.Generator) -> np.ndarray | None:
    """One DI draw for ``size x size`` images: ``(2, size)`` source rows and columns
    (:func:`diversity_rows`), or ``None`` (the image unchanged, probability ``1 - probability``).
    Drawn as the published code draws: ``rnd`` uniform in ``[size, upper)``, the top and left
    offsets each uniform in ``[0, upper - rnd)``."""
    if not rng.random() < probability:
        return None
    upper = diversity_size(size)
    resized = int(rng.integers(size, upper))
    top, left = (int(rng.integers(0, upper - resized)) for _ in range(2))
    return np.stack([diversity_rows(size, resized, top), diversity_rows(size, resized, left)])


def diversify(x: np.ndarray, draw: np.ndarray) -> np.ndarray:
    """DI's transform of NHWC pixels ``x`` for one draw: copied pixels, and :data:`PAD_VALUE` elsewhere."""
    rows, cols = draw
    out = np.asarray(x, np.float32)[:, np.maximum(rows, 0)][:, :, np.maximum(cols, 0)]
    out[:, rows < 0] = PAD_VALUE
    out[:, :, cols < 0] = PAD_VALUE
    return out


def diversify_gradient(gradient: np.ndarray, draw: np.ndarray) -> np.ndarray:
    """The gradient with respect to ``x`` of an objective of ``diversify(x, draw)``, given its gradient
    with respect to ``diversify(x, draw)``: each output pixel's gradient added to the pixel it copies
    (the transpose of the map; padding receives nothing)."""
    rows, cols = draw
    gradient = np.asarray(gradient, np.float32)
    by_rows = np.zeros_like(gradient)
    np.add.at(by_rows, (slice(None), rows[rows >= 0]), gradient[:, rows >= 0])
    out = np.zeros_like(gradient)
    np.add.at(out, (slice(None), slice(None), cols[cols >= 0]), by_rows[:, :, cols >= 0])
    return out


def ti_sigma(kernel: int, sigma: float | None = None) -> float:
    """The Gaussian's standard deviation in pixels: ``sigma``, or the released code's ``(kernel - 1) / 6``."""
    if sigma is not None:
        return float(sigma)
    return max((kernel - 1) / (2 * TI_NSIG), np.finfo(np.float32).tiny)


@functools.lru_cache(maxsize=32)
def _gaussian_1d(kernel: int, sigma: float) -> np.ndarray:
    offsets = np.arange(kernel, dtype=np.float64) - (kernel - 1) / 2
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    weights.flags.writeable = False
    return weights


def gaussian_kernel(kernel: int, sigma: float | None = None) -> np.ndarray:
    """TI's ``(kernel, kernel)`` Gaussian, normalized to sum 1 (float64). ``sigma`` in pixels;
    ``None``: ``(kernel - 1) / 6`` (the released code's ``gkern(kernel, 3)``)."""
    weights = _gaussian_1d(kernel, ti_sigma(kernel, sigma))
    return np.outer(weights, weights)


def _convolve_axis(x: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """``x`` correlated along ``axis`` with the odd-length symmetric ``weights``, zero ('SAME') padding."""
    radius = len(weights) // 2
    widths = [(0, 0)] * x.ndim
    widths[axis] = (radius, radius)
    padded = np.pad(x, widths)
    length = x.shape[axis]
    out = np.zeros_like(x)
    for shift, weight in enumerate(weights.astype(np.float32)):
        out += weight * np.take(padded, np.arange(shift, shift + length), axis=axis)
    return out


def smooth_gradient(gradient: np.ndarray, kernel: int, sigma: float | None = None) -> np.ndarray:
    """TI: the NHWC ``gradient`` convolved per channel with :func:`gaussian_kernel` (zero padding),
    as the released code's ``depthwise_conv2d(noise, stack_kernel, padding='SAME')``; the kernel is
    separable, so along rows and then columns."""
    weights = _gaussian_1d(kernel, ti_sigma(kernel, sigma))
    gradient = np.asarray(gradient, np.float32)
    return _convolve_axis(_convolve_axis(gradient, weights, 1), weights, 2)


def scale_copy(x: np.ndarray, index: int) -> np.ndarray:
    """SI's copy ``index`` of NHWC pixels ``x``: ``SCALE_CENTER + (x - SCALE_CENTER) / 2^index``
    (``x`` itself for index 0). Its gradient factor is ``scale_factor(index)``."""
    if index == 0:
        return x
    return (np.float32(SCALE_CENTER) + (x - np.float32(SCALE_CENTER)) * np.float32(scale_factor(index))).astype(
        np.float32, copy=False)


def scale_factor(index: int) -> float:
    """``1 / 2^index``: SI's scale of copy ``index``, and the chain rule's factor on its gradient."""
    return math.ldexp(1.0, -index)
