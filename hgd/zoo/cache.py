"""A per-user cache of converted Keras weights.

The published weights are legacy torch files; converting them is quick but
needs the whole state dict in memory, so each model is converted once and its
Keras weights are kept in a cache directory. Writes go to a private temporary
file that is atomically renamed into place, so concurrent first runs never
see or leave a half-written file (the last rename wins with identical bytes).
A cache that cannot be written (a read-only container) only costs a warning.
"""

from __future__ import annotations

import logging
import os
import pathlib
import tempfile

import keras

from hgd.zoo.efficientnet_lite import LiteVariant, build_efficientnet_lite, convert_weights

CACHE_ENV = "HGD_CACHE_DIR"
CONVERTER_VERSION = 1

log = logging.getLogger(__name__)


def cache_dir() -> pathlib.Path:
    """``$HGD_CACHE_DIR``, else ``$XDG_CACHE_HOME/hgd-toolkit``, else ``~/.cache/hgd-toolkit``."""
    if os.environ.get(CACHE_ENV):
        return pathlib.Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "hgd-toolkit"


def cached_weights_path(variant: LiteVariant, source: pathlib.Path, directory: pathlib.Path) -> pathlib.Path:
    """Cache key: model, source file name (it embeds the publisher's hash prefix) and size, converter version."""
    return directory / f"{variant.name}-{source.stem}-{source.stat().st_size}-v{CONVERTER_VERSION}.weights.h5"


def load_or_convert(variant: LiteVariant, directory: pathlib.Path | None = None) -> keras.Model:
    """Build the variant with pretrained weights, from the cache when it holds them."""
    model = build_efficientnet_lite(variant)
    source = pathlib.Path(variant.weights_path())
    target = cached_weights_path(variant, source, directory or cache_dir())
    if target.exists():
        try:
            model.load_weights(target)
            return model
        except Exception as exc:  # a corrupt or foreign file: reconvert and replace it
            log.warning("cached weights %s unreadable (%s); converting again", target, exc)
    convert_weights(variant, model, source)
    _store(model, target)
    return model


def _store(model: keras.Model, target: pathlib.Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".weights.h5")
        os.close(fd)
        try:
            model.save_weights(tmp, overwrite=True)
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a cache baked as root from a non-root container user
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        log.warning("cannot cache converted weights in %s (%s); converting on every run", target.parent, exc)
