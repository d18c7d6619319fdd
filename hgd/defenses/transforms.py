"""Input transformations a defense may apply before its (possibly denoised) ensemble: uint8 images -> uint8 images.

A small vocabulary (one idea each), named by :class:`TransformName` so a ``config.json`` string and
Python code take one path::

    from hgd.defenses import transforms
    jpeg = transforms.JPEGCompression(quality=75)
    cleaned = jpeg(images)                                   # uint8 (N, H, W, 3) -> uint8, same shape
    transforms.from_config({"name": "bit_depth", "bits": 4})  # -> BitDepthReduction(bits=4)

* :class:`JPEGCompression` — re-encode each image as a baseline JPEG with Pillow and decode it back
  (Dziugaite et al. 2016; Das et al. 2017; Guo et al. 2018). Deterministic: the same pixels and the
  same Pillow/libjpeg give the same bytes, so the same output.
* :class:`BitDepthReduction` — keep ``bits`` bits per channel (Xu et al. 2018, feature squeezing):
  ``v -> round(round(v / 255 * L) * 255 / L)`` with ``L = 2**bits - 1`` levels above 0.
* :class:`GaussianNoise` — add ``N(0, sigma^2)`` noise and round: a cheap randomized transform, the
  kind that expectation over transformation (EOT, Athalye et al. 2018) exists for.

Every transform says whether it is ``differentiable`` (none of these is: each output is rounded to
uint8, piecewise constant in its input) and ``random``. An attack on a defense that uses one
approximates its gradient (:class:`hgd.attacks.BPDA`: identity on the backward pass, a good
approximation for all three since each keeps the image close to itself) and, for a random one,
averages over draws (:class:`hgd.attacks.EOT`).

This module needs only numpy and Pillow: a defense applies the transform before its Keras model.
"""

from __future__ import annotations

import abc
import enum
import io
import math
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from hgd.io.images import check_images


class TransformName(str, enum.Enum):
    """Transform ids a defense ``config.json`` may name (``{"name": ..., <parameters>}``)."""

    JPEG = "jpeg"
    BIT_DEPTH = "bit_depth"
    GAUSSIAN_NOISE = "gaussian_noise"

    def transform_class(self) -> type[Transform]:
        return {
            TransformName.JPEG: JPEGCompression,
            TransformName.BIT_DEPTH: BitDepthReduction,
            TransformName.GAUSSIAN_NOISE: GaussianNoise,
        }[self]


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    return int(value)


class Transform(abc.ABC):
    """uint8 images ``(N, H, W, 3)`` -> uint8 images of the same shape. Calling it applies it.

    Attributes:
        name: the config id.
        differentiable: whether the output is a differentiable function of the input (an attack
            can then back-propagate through it as it is).
        random: whether two calls on the same images may differ.
    """

    name: ClassVar[TransformName]
    differentiable: ClassVar[bool] = False
    random: ClassVar[bool] = False

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = check_images(images)
        if len(images) == 0:
            return images.copy()
        out = self._apply(images)
        assert out.dtype == np.uint8 and out.shape == images.shape
        return out

    @abc.abstractmethod
    def _apply(self, images: np.ndarray) -> np.ndarray:
        """The transform on a non-empty, validated batch."""

    @abc.abstractmethod
    def parameters(self) -> dict[str, Any]:
        """The constructor arguments (what ``config.json`` holds beside ``name``)."""

    def to_config(self) -> dict[str, Any]:
        """``{"name": ..., **parameters}``: :func:`from_config` inverts it."""
        return {"name": self.name.value, **self.parameters()}

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.parameters().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.parameters() == other.parameters()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.parameters().items()))))


class JPEGCompression(Transform):
    """JPEG re-compression: encode with Pillow at ``quality``, decode back to RGB.

    Chroma subsampling is fixed to 4:2:0 (Pillow's and libjpeg's default below quality 95, made
    explicit so that the output does not depend on a library default).

    Args:
        quality: the JPEG quality, 1..100 (default 75: Guo et al. 2018's setting, also Pillow's and
            libjpeg's default; Pillow advises against values above 95).
    """

    name = TransformName.JPEG

    def __init__(self, *, quality: int = 75) -> None:
        self.quality = _check_int("quality", quality, 1, 100)

    def encode(self, image: np.ndarray) -> bytes:
        """One ``(H, W, 3)`` uint8 image -> the JPEG bytes this transform decodes."""
        buffer = io.BytesIO()
        Image.fromarray(image, "RGB").save(buffer, format="JPEG", quality=self.quality, subsampling="4:2:0",
                                           optimize=False, progressive=False)
        return buffer.getvalue()

    def _apply(self, images: np.ndarray) -> np.ndarray:
        out = np.empty_like(images)
        for i, image in enumerate(images):
            with Image.open(io.BytesIO(self.encode(image))) as decoded:
                out[i] = np.asarray(decoded.convert("RGB"))
        return out

    def parameters(self) -> dict[str, Any]:
        return {"quality": self.quality}


class BitDepthReduction(Transform):
    """Bit-depth reduction (Xu et al. 2018): ``bits`` bits per channel, as uint8 pixels.

    A pixel ``v`` becomes level ``k = round(v / 255 * L)``, ``L = 2**bits - 1``, stored as
    ``round(k * 255 / L)`` (rounding half to even). With 1, 2, 4 or 8 bits, ``L`` divides 255 and the
    levels are exact multiples of ``255 / L`` (17 for 4 bits); otherwise the second rounding moves a
    level by less than half a pixel level. Idempotent: a reduced image is reduced to itself.

    Args:
        bits: bits per channel, 1..8 (8 is the identity).
    """

    name = TransformName.BIT_DEPTH

    def __init__(self, *, bits: int = 4) -> None:
        self.bits = _check_int("bits", bits, 1, 8)
        levels = 2**self.bits - 1
        v = np.arange(256, dtype=np.float64)
        self._table = np.rint(np.rint(v / 255.0 * levels) * 255.0 / levels).astype(np.uint8)

    def levels(self) -> np.ndarray:
        """The ``2**bits`` uint8 values an output pixel can take."""
        return np.unique(self._table)

    def _apply(self, images: np.ndarray) -> np.ndarray:
        return self._table[images]

    def parameters(self) -> dict[str, Any]:
        return {"bits": self.bits}


class GaussianNoise(Transform):
    """Additive Gaussian noise, rounded and clipped to 0..255: a randomized transform (EOT's case).

    Args:
        sigma: the noise's standard deviation in pixel levels (> 0).
        seed: seeds the noise; a fixed seed makes the sequence of calls of one object reproducible
            (``None``: fresh entropy).
    """

    name = TransformName.GAUSSIAN_NOISE
    random = True

    def __init__(self, *, sigma: float = 8.0, seed: int | None = None) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a number > 0 (pixel levels), got {sigma!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.sigma = float(sigma)
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def _apply(self, images: np.ndarray) -> np.ndarray:
        noise = self._rng.normal(0.0, self.sigma, size=images.shape)
        return np.clip(np.rint(images + noise), 0, 255).astype(np.uint8)

    def parameters(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "seed": self.seed}


def from_config(entry: Any) -> Transform:
    """``{"name": <TransformName>, <keyword arguments>}`` -> the transform (errors quote what was given)."""
    if not isinstance(entry, dict) or "name" not in entry:
        raise ValueError(f"a transform is {{\"name\": one of {[t.value for t in TransformName]}, <parameters>}}, "
                         f"got {entry!r}")
    try:
        name = TransformName(entry["name"])
    except ValueError:
        raise ValueError(f"transform 'name' must be one of {[t.value for t in TransformName]}, "
                         f"got {entry['name']!r}") from None
    parameters = {key: value for key, value in entry.items() if key != "name"}
    cls = name.transform_class()
    try:
        return cls(**parameters)
    except TypeError:
        import inspect

        accepted = [p for p in inspect.signature(cls).parameters]
        raise ValueError(f"transform {name.value!r} takes {accepted}, got {sorted(parameters)}") from None
