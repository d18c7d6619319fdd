"""Pixel I/O: the PNG folder <-> uint8 batches end of the pipeline.

Everything a defense or an attack reads or writes on disk passes through here, so
the rules of the competition (see ``docs/reference/competition-contract.md``) live in one
place:

* Inputs are 299x299 RGB 8-bit PNGs, but a robust reader must not trust that. Any
  image Pillow can decode is accepted; alpha is dropped the way the organizers did
  (``convert("RGB")``); 16-bit data is scaled to 8 bits by rounding ``v / 257``;
  a wrong size is bicubic-resized (what EVAL did with wrong-sized attack outputs)
  with a warning. A file that cannot be decoded raises :class:`ImageError`, so a
  caller can still account for it (a defense must write one line per input file).
* Outputs are written as exact uint8 PNGs and never rescaled: the old samples'
  float ``imsave`` min-max stretched images and silently broke attacks, so
  quantization is the caller's explicit job. Files are written atomically (:mod:`hgd.io.files`), so an
  attack or defense killed at the time limit never leaves a half-written file.

This module is pure numpy + Pillow on purpose: it is imported by data tooling and
by the harness, which must not pay for (or depend on) a deep-learning framework.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import logging
import operator
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from hgd.io.files import write_atomically

IMAGE_SIZE = 299
"""Side of the competition's square input images, in pixels."""

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

# Modes holding one 16-bit (or wider integer) channel. Scaled by us, because
# Pillow's convert() clips values above 255 instead of scaling them.
_WIDE_GRAY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})

# 16-bit colour PNGs: Pillow keeps only the high byte of each sample (truncating
# instead of rounding). Decoding the same file again with a raw mode that picks
# the low bytes recovers the full value. Pillow raw mode -> (raw mode giving the
# high bytes, raw mode giving the low bytes).
_PNG16_COLOUR_RAWMODES = {
    "RGB;16B": ("RGB;16B", "RGB;16L"),
    "RGBA;16B": ("RGBA;16B", "RGBA;16L"),
}
# 16-bit grey + alpha has no such pair; its 4 bytes per pixel (Lhi Llo Ahi Alo)
# are read verbatim as 8-bit RGBA instead.
_PNG16_LA_RAWMODE = "LA;16B"

class ImageError(Exception):
    """An input file that cannot be read as an image.

    Carries the file name and the reason separately, so a batch can report
    ``(name, reason)`` and a defense can still write a line for the file.

    Attributes:
        name: The file's base name.
        reason: What went wrong, in words.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Batch:
    """Up to ``batch_size`` consecutive input files, decoded.

    Attributes:
        names: Base names of the readable files, in folder order.
        images: ``(len(names), size, size, 3)`` uint8 RGB pixels, row i for names[i].
        failed: ``(name, reason)`` for each file of the batch that could not be
            read, in folder order. Kept so no input goes unaccounted for.
    """

    names: list[str]
    images: np.ndarray
    failed: list[tuple[str, str]]


# --------------------------------------------------------------------------- files


def check_images(images: Any) -> np.ndarray:
    """Validates a batch of images: a uint8 array of shape ``(N, H, W, 3)``."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        dtype = getattr(images, "dtype", type(images).__name__)
        raise ValueError(f"images must be a uint8 numpy array (N, H, W, 3) of pixels, got {dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), got {images.shape}")
    return images


def list_input_files(input_dir: StrPath) -> list[pathlib.Path]:
    """Lists every regular file directly inside ``input_dir``, sorted by name.

    Every file counts, whatever its extension: a defense must answer for each
    input, so filtering by ``.png`` here would silently drop some. Sub-folders
    are ignored (the competition's input folders are flat).

    Args:
        input_dir: The folder to list.

    Returns:
        The files' paths, sorted by base name; ``[]`` for an empty folder.

    Raises:
        FileNotFoundError: ``input_dir`` does not exist.
        NotADirectoryError: ``input_dir`` is not a folder.
    """
    folder = pathlib.Path(input_dir)
    if not folder.exists():
        raise FileNotFoundError(f"input folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"input folder {str(folder)!r} is not a directory")
    with os.scandir(folder) as entries:
        files = [folder / entry.name for entry in entries if entry.is_file()]
    return sorted(files, key=lambda path: path.name)


# -------------------------------------------------------------------------- decode


def load_image(path: StrPath, size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[str]]:
    """Reads one image file as ``(size, size, 3)`` uint8 RGB.

    Accepts whatever Pillow can decode (the content decides, not the file name),
    normalizes it to 8-bit RGB and resizes it if needed, reporting each deviation
    from the competition's format as a warning rather than failing on it.

    Args:
        path: The image file.
        size: Side of the square output, in pixels.

    Returns:
        The pixels and a list of human-readable warnings, each naming the file.

    Raises:
        ValueError: ``size`` is below 1.
        ImageError: The file is missing, empty, not an image, truncated,
            corrupt, or too large to decode safely.
    """
    _check_at_least("size", size, 1)
    path = pathlib.Path(path)
    pixels, notes = _decode(path, size)
    return pixels, [f"{path.name}: {note}" for note in notes]


def _decode(path: pathlib.Path, size: int) -> tuple[np.ndarray, list[str]]:
    """Does :func:`load_image`'s work; its notes do not repeat the file name."""
    try:
        if path.stat().st_size == 0:
            raise ImageError(path.name, "empty file (0 bytes)")
        with Image.open(path) as im:
            notes = _format_notes(im)
            _check_pixel_count(im, path.name)
            pixels = _png16_colour_pixels(path, im)
            if pixels is None:
                im.load()
                pixels = _to_rgb(im)
    except ImageError:
        raise
    except Exception as error:  # Pillow's plugins raise many types on bad input.
        raise ImageError(path.name, _describe(error)) from error
    return _fit(pixels, size, notes)


def _describe(error: Exception) -> str:
    """Turns a decoding exception into a reason a person can act on."""
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image Pillow can identify"
    if isinstance(error, Image.DecompressionBombError):
        return f"decompression bomb refused ({error})"
    if isinstance(error, OSError):  # e.g. truncated, vanished, unreadable
        return error.strerror or str(error)
    return f"{type(error).__name__}: {error}"


def _format_notes(im: Image.Image) -> list[str]:
    """Notes what differs from a single-frame PNG (the format is only a hint)."""
    notes = []
    if im.format != "PNG":
        notes.append(f"decoded as {im.format}, not PNG")
    if getattr(im, "is_animated", False):
        notes.append("animated; only the first frame is used")
    return notes


def _check_pixel_count(im: Image.Image, name: str) -> None:
    """Refuses images over Pillow's MAX_IMAGE_PIXELS before decoding them.

    Pillow itself only warns between 1x and 2x the limit; a harness decoding
    untrusted attack outputs should refuse instead. Checking the size here
    (instead of turning the warning into an error) needs no process-wide
    warnings filter, which would not be thread-safe.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and im.width * im.height > limit:
        raise ImageError(
            name,
            f"decompression bomb refused ({im.width}x{im.height} pixels, "
            f"limit {limit})",
        )


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Converts a decoded image of any mode to (h, w, 3) uint8, dropping alpha."""
    if im.mode in _WIDE_GRAY_MODES:
        gray = _scale_16_to_8(np.asarray(im))
        return np.repeat(gray[:, :, np.newaxis], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        # Same pixels as convert("RGB"), without Pillow's UserWarning about
        # palette transparency given as bytes.
        im = im.convert("RGBA")
    return np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy


def _scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """Maps 0..65535 to 0..255 as ``round(v / 257)``, exactly, in integers.

    ``(v + 128) // 257`` equals ``round(v / 257)`` because ``v / 257`` is never
    halfway between two integers. Values outside 0..65535 (32-bit mode ``I``)
    are clipped first.
    """
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide + 128) // 257).astype(np.uint8)


def _png16_colour_pixels(path: pathlib.Path, im: Image.Image) -> np.ndarray | None:
    """Reads a 16-bit colour PNG at full precision; ``None`` for any other file.

    Pillow 13 opens 16-bit RGB / RGBA / grey+alpha PNGs as 8-bit modes holding
    only each sample's high byte (``v >> 8``), which is off by one from
    ``round(v / 257)`` for a third of the values. The same decoder, given a raw
    mode that picks the low bytes, returns the rest of each sample.
    """
    if im.format != "PNG" or len(im.tile) != 1:
        return None
    rawmode = im.tile[0].args
    if rawmode == _PNG16_LA_RAWMODE:
        raw = _decode_png_as(path, "RGBA")  # bytes Lhi, Llo, Ahi, Alo
        high, low = raw[:, :, 0:1], raw[:, :, 1:2]
    elif rawmode in _PNG16_COLOUR_RAWMODES:
        high_mode, low_mode = _PNG16_COLOUR_RAWMODES[rawmode]
        high = _decode_png_as(path, high_mode)[:, :, :3]
        low = _decode_png_as(path, low_mode)[:, :, :3]
    else:
        return None
    values = high.astype(np.int64) * 256 + low
    return np.broadcast_to(_scale_16_to_8(values), high.shape[:2] + (3,)).copy()


def _decode_png_as(path: pathlib.Path, rawmode: str) -> np.ndarray:
    """Decodes a one-tile PNG with another raw mode of the same bits per pixel."""
    with Image.open(path) as im:
        im.tile = [im.tile[0]._replace(args=rawmode)]
        im.load()
        return np.asarray(im, dtype=np.uint8)


def _fit(pixels: np.ndarray, size: int, notes: list[str]) -> tuple[np.ndarray, list[str]]:
    """Bicubic-resizes to ``size`` x ``size`` if needed, noting the original size."""
    height, width = pixels.shape[:2]
    if (height, width) == (size, size):
        return pixels, notes
    resized = Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC)
    note = f"resized from {width}x{height} to {size}x{size} (bicubic)"
    return np.array(resized, dtype=np.uint8), [*notes, note]


# ------------------------------------------------------------------------- batches


def iter_batches(
    files: Sequence[pathlib.Path],
    batch_size: int,
    size: int = IMAGE_SIZE,
    *,
    prefetch: int = 2,
    workers: int = 2,
) -> Iterator[Batch]:
    """Decodes ``files`` in order, ``batch_size`` files at a time, ahead of use.

    Decoding runs in a thread pool (Pillow releases the GIL while it decodes),
    ``prefetch`` batches ahead of the one the caller holds, so reading the next
    images overlaps with the model's work on the current ones. Unreadable files
    count towards ``batch_size`` and are reported in :attr:`Batch.failed`, so
    batch boundaries depend only on the file list. Warnings and failures are
    logged on the ``hgd.io.images`` logger, one line per file.

    Args:
        files: The input files, e.g. from :func:`list_input_files`.
        batch_size: Files per batch (the last batch may be smaller).
        size: Side of the square images, in pixels.
        prefetch: Batches decoded ahead of the one being consumed (0: none).
        workers: Decoding threads.

    Returns:
        An iterator of batches; empty for an empty file list.

    Raises:
        ValueError: ``batch_size``, ``size`` or ``workers`` is below 1, or ``prefetch``
            is negative (raised at the call, not at the first ``next``).
    """
    _check_at_least("batch_size", batch_size, 1)
    _check_at_least("size", size, 1)
    _check_at_least("prefetch", prefetch, 0)
    _check_at_least("workers", workers, 1)
    chunks = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    return _prefetched_batches(chunks, size, prefetch, workers)


def _check_at_least(name: str, value: int, minimum: int) -> None:
    """Validates an integer argument up front, quoting the received value."""
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


_Pending = list[tuple[str, concurrent.futures.Future]]


def _prefetched_batches(
    chunks: list[Sequence[pathlib.Path]], size: int, prefetch: int, workers: int
) -> Iterator[Batch]:
    """Keeps ``prefetch`` chunks decoding while the caller holds a batch."""
    if not chunks:
        return
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="hgd-images")
    remaining = iter(chunks)

    def submit(count: int) -> Iterator[_Pending]:
        for chunk in itertools.islice(remaining, count):
            yield [(path.name, pool.submit(_decode, path, size)) for path in chunk]

    try:
        pending = collections.deque(submit(prefetch + 1))
        while pending:
            batch = _collect(pending.popleft(), size)
            yield batch
            pending.extend(submit(1))
    finally:
        # A caller that stops early should not wait for batches it will not use.
        pool.shutdown(wait=True, cancel_futures=True)


def _collect(pending: _Pending, size: int) -> Batch:
    """Waits for one chunk's decodes, logging each file's warnings in order."""
    names: list[str] = []
    images: list[np.ndarray] = []
    failed: list[tuple[str, str]] = []
    for name, future in pending:
        try:
            pixels, notes = future.result()
        except ImageError as error:
            logger.warning("%s: cannot be read: %s", name, error.reason)
            failed.append((name, error.reason))
            continue
        if notes:
            logger.warning("%s: %s", name, "; ".join(notes))
        names.append(name)
        images.append(pixels)
    stacked = np.stack(images) if images else np.empty((0, size, size, 3), np.uint8)
    return Batch(names=names, images=stacked, failed=failed)


# --------------------------------------------------------------------------- write


def save_png(path: StrPath, image: np.ndarray, *, compress_level: int = 6) -> None:
    """Writes a ``(H, W, 3)`` uint8 array as an RGB PNG, atomically (the one PNG writer).

    Refuses anything else instead of converting it: rescaling a float image
    to 0..255 (what the competition's old samples did by accident) changes
    the pixels an attack computed, so the caller quantizes explicitly.

    Args:
        path: Destination file; its folder must exist.
        image: The pixels.
        compress_level: zlib level, 0..9 (lossless at every level; 1 encodes several times faster than
            Pillow's default 6 for files ~10% larger: the runner's choice for adversarial images).

    Raises:
        ValueError: ``image`` is not a uint8 array of shape ``(H, W, 3)``.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"save_png needs a uint8 array, got {dtype}; quantize first")
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"save_png needs shape (H, W, 3), got {image.shape}")
    picture = Image.fromarray(np.ascontiguousarray(image))
    write_atomically(pathlib.Path(path), "wb", lambda f: picture.save(f, format="PNG", compress_level=compress_level))
