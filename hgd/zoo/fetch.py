"""``fetch-weights``: download the competition classifiers' public weights, verify them, convert to Keras, cache.

The toolkit's only network access, and only when run explicitly::

    python -m hgd.cli.fetch [MODEL ...] [--cache-dir DIR] [--source-dir DIR] [--force]
    hgd-fetch-weights ...                      # the same, as a console script

Nothing here runs on import, and building a model never downloads: without fetched weights
``get_model(...).build_backbone()`` raises :class:`~hgd.zoo.cache.WeightsNotFetched` naming this
command. Where the network is elsewhere, download the files listed by ``--list`` there and pass
their folder as ``--source-dir`` (the files keep the URLs' base names).

The published files (:data:`SOURCES`), with what their publishers give to check them:

- ``ens3_adv_inception_v3``: ``ens3_adv_inception_v3_2017_08_18.tar.gz`` (TF-Slim checkpoint); no hash.
- ``ens_adv_inception_resnet_v2``: ``ens_adv_inception_resnet_v2_2017_08_18.tar.gz`` (TF-Slim); no hash.
- ``resnet152``: ``resnet152_weights_tf_dim_ordering_tf_kernels.h5`` (Keras 2 weights); an MD5.
- ``resnext101_64x4d``: ``resnext101_64x4d-173b62eb.pth`` (torchvision, zip format); a SHA-256 prefix.

No publisher gives a full SHA-256: download.tensorflow.org publishes no hash for the TF-Slim
tarballs; Keras applications checks ``resnet152`` against an MD5 only
(``keras.applications.resnet.WEIGHTS_HASHES``); torchvision names its files after the first 8 hex
digits of their SHA-256, which ``torch.hub`` checks. So every file is checked against what its
publisher gives, and its full SHA-256 is recorded in the cache's ledger at the first download
(or first ``--source-dir`` use) and enforced on every later download or use; a mismatch is
refused with both hashes. A :class:`Source` with a full ``sha256`` would be checked against it
from the first download on.

Per model: reuse the converted weights if the ledger vouches for them (their SHA-256 is checked);
else take the file from ``--source-dir``, from an earlier download kept in the cache
(``downloads/``), or download it (urllib, to a private temporary folder, with the length the
server announced checked); verify; convert (TF-Slim checkpoint -> Keras by variable name,
:mod:`hgd.zoo.slim`; Keras 2 ``.h5`` by layer order; torchvision zip by state-dict name,
:mod:`hgd.zoo.resnet`); store the Keras weights atomically; only then record the hashes and keep
the download. A download that fails a check or does not convert is deleted and nothing is
recorded, so a corrupt first download never poisons the ledger. Finished models are skipped
when the command runs again (``--force`` converts again).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import os
import pathlib
import shutil
import sys
import tarfile
import tempfile
import urllib.request

import keras
from tqdm import tqdm

from hgd.zoo import ARCHITECTURES, COMPETITION_ENSEMBLE, ModelName, cache, inception, resnet, slim
from hgd.zoo.cache import HashMismatch

DOWNLOADS = "downloads"
TIMEOUT_S = 60
CHUNK = 1 << 20

log = logging.getLogger(__name__)


class ConversionError(ValueError):
    """A verified file that is not what its format promises (a corrupt or foreign download)."""


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one model's public weights are, how to check them, and how they convert.

    Attributes:
        model: the registry id whose architecture (:data:`hgd.zoo.ARCHITECTURES`) they fill.
        url: the publisher's URL (``http(s)://`` or, for tests and mirrors, ``file://``).
        format: ``"slim-tarball"`` (a ``.tar.gz`` holding a TF1 name-based checkpoint),
            ``"keras2-h5"`` (Keras 2 ``save_weights``) or ``"torch-zip"`` (torchvision state dict).
        checkpoint: slim only: the checkpoint prefix inside the tarball (``*.ckpt``).
        scope: slim only: the model's top variable scope.
        sha256, sha256_prefix, md5: what the publisher gives to check the file against.
    """

    model: ModelName
    url: str
    format: str
    checkpoint: str | None = None
    scope: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    md5: str | None = None

    @property
    def filename(self) -> str:
        """The file's name: the URL's base name (also its name in ``--source-dir`` and the ledger's key)."""
        return self.url.rsplit("/", 1)[-1]

    def publisher_check(self) -> str:
        """What the publisher's own check is, in words."""
        if self.sha256:
            return f"SHA-256 {self.sha256}"
        checks = [f"SHA-256 prefix {self.sha256_prefix}"] if self.sha256_prefix else []
        checks += [f"MD5 {self.md5}"] if self.md5 else []
        return ", ".join(checks) or "none published"


SOURCES: dict[ModelName, Source] = {
    ModelName.ENS3_ADV_INCEPTION_V3: Source(
        ModelName.ENS3_ADV_INCEPTION_V3, inception.ENS3_ADV_INCEPTION_V3_URL, "slim-tarball",
        checkpoint="ens3_adv_inception_v3.ckpt", scope=inception.INCEPTION_V3_SCOPE),
    ModelName.ENS_ADV_INCEPTION_RESNET_V2: Source(
        ModelName.ENS_ADV_INCEPTION_RESNET_V2, inception.ENS_ADV_INCEPTION_RESNET_V2_URL, "slim-tarball",
        checkpoint="ens_adv_inception_resnet_v2.ckpt", scope=inception.INCEPTION_RESNET_V2_SCOPE),
    ModelName.RESNET152: Source(
        ModelName.RESNET152, resnet.RESNET152_WEIGHTS_URL, "keras2-h5", md5=resnet.RESNET152_WEIGHTS_MD5),
    ModelName.RESNEXT101_64X4D: Source(
        ModelName.RESNEXT101_64X4D, resnet.RESNEXT101_WEIGHTS_URL, "torch-zip", sha256_prefix="173b62eb"),
}
assert set(SOURCES) == set(COMPETITION_ENSEMBLE) == set(ARCHITECTURES)


# ----------------------------------------------------------------------------- checks


def check_publisher(source: Source, hashes: dict[str, str], where: str) -> None:
    """Raise :class:`HashMismatch` unless ``hashes`` agree with every check the publisher gives."""
    wrong = []
    if source.sha256 and hashes["sha256"] != source.sha256:
        wrong.append(f"SHA-256 {hashes['sha256']}, the publisher's is {source.sha256}")
    if source.sha256_prefix and not hashes["sha256"].startswith(source.sha256_prefix):
        wrong.append(f"SHA-256 {hashes['sha256']} does not start with the publisher's {source.sha256_prefix}")
    if source.md5 and hashes["md5"] != source.md5:
        wrong.append(f"MD5 {hashes['md5']}, the publisher's is {source.md5}")
    if wrong:
        raise HashMismatch(f"{where}: refused, {'; '.join(wrong)}")


def check_ledger(source: Source, hashes: dict[str, str], where: str, directory: pathlib.Path) -> dict | None:
    """Raise :class:`HashMismatch` if the ledger recorded another SHA-256 for this file; returns its entry."""
    entry = cache.read_ledger(directory)["downloads"].get(source.filename)
    if entry and entry["sha256"] != hashes["sha256"]:
        raise HashMismatch(
            f"{where}: refused, SHA-256 {hashes['sha256']} differs from {entry['sha256']} recorded for "
            f"{source.filename} on {entry.get('recorded', '?')} ({entry.get('origin', '?')}) in "
            f"{cache.ledger_path(directory)}. If the publisher really replaced the file, delete that entry to "
            "accept the new one")
    return entry


# ----------------------------------------------------------------------------- download


def download(url: str, dest: pathlib.Path, *, timeout: float = TIMEOUT_S) -> dict[str, str]:
    """Stream ``url`` into ``dest`` (a private path), returning its hashes; a short read is an error.

    Raises:
        OSError: the transfer failed or ended before the length the server announced (``dest`` removed).
    """
    sha256, md5, received = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length else None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr) as progress:
                while block := response.read(CHUNK):
                    out.write(block)
                    sha256.update(block)
                    md5.update(block)
                    received += len(block)
                    progress.update(len(block))
        if total is not None and received != total:
            raise OSError(f"{url}: received {received} bytes, the server announced {total}")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return {"sha256": sha256.hexdigest(), "md5": md5.hexdigest()}


# ----------------------------------------------------------------------------- conversion


def _extract_checkpoint(tarball: pathlib.Path, prefix: str, scratch: pathlib.Path) -> pathlib.Path:
    """Copy the checkpoint's ``.index`` and ``.data-*`` files out of the tarball (any folder inside it) into
    ``scratch``; returns the checkpoint prefix there. Nothing else is extracted, so member paths never matter."""
    wanted = (f"{prefix}.index", f"{prefix}.data-")
    found = []
    with tarfile.open(tarball, "r:*") as archive:
        for member in archive:
            name = pathlib.PurePosixPath(member.name).name
            if member.isfile() and (name == wanted[0] or name.startswith(wanted[1])):
                with archive.extractfile(member) as src, open(scratch / name, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                found.append(name)
    if wanted[0] not in found or not any(n.startswith(wanted[1]) for n in found):
        raise ConversionError(f"{tarball}: no TF checkpoint {prefix} (.index and .data-*) inside, found {found}")
    return scratch / prefix


def convert(source: Source, path: pathlib.Path, scratch: pathlib.Path) -> keras.Model:
    """Build ``source.model``'s architecture and fill it from the published file at ``path``.

    Raises:
        ConversionError: the file is not a valid ``source.format`` file for this architecture.
    """
    model = ARCHITECTURES[source.model]()
    try:
        if source.format == "slim-tarball":
            slim.load_slim_checkpoint(model, _extract_checkpoint(path, source.checkpoint, scratch), source.scope)
        elif source.format == "keras2-h5":
            model.load_weights(path)
        elif source.format == "torch-zip":
            resnet.load_torchvision_resnext(model, path)
        else:
            raise ValueError(f"unknown source format {source.format!r}")
    except ConversionError:
        raise
    except Exception as exc:  # every reader has its own exceptions; all mean "not this model's weights"
        raise ConversionError(f"{path}: not a valid {source.format} file for {source.model.value} "
                              f"({type(exc).__name__}: {exc})") from exc
    return model


# ----------------------------------------------------------------------------- one model


@dataclasses.dataclass(frozen=True)
class Fetched:
    """What :func:`fetch` did for one model."""

    model: ModelName
    action: str  # "cached" (already converted), "converted"
    weights: pathlib.Path
    source_sha256: str
    origin: str  # how the source's SHA-256 is vouched for


def fetch(name: ModelName | str, *, directory: pathlib.Path | None = None, source_dir: pathlib.Path | None = None,
          force: bool = False, keep_download: bool = True, timeout: float = TIMEOUT_S) -> Fetched:
    """Make ``name``'s converted weights available in the cache: verify, download, convert as needed.

    Args:
        name: a competition model id (see :data:`SOURCES`).
        directory: the cache (default :func:`hgd.zoo.cache.cache_dir`).
        source_dir: take the published file from this folder (same base name as the URL) instead of
            downloading it.
        force: convert again even if the cache holds verified converted weights.
        keep_download: keep a downloaded file in ``<cache>/downloads/`` (reconverting needs no network).
        timeout: seconds without data before a download fails.

    Raises:
        HashMismatch: a file differs from its publisher's hash or the ledger's.
        ConversionError: the file does not convert (a corrupt or foreign file); nothing is cached.
        FileNotFoundError: ``source_dir`` lacks the file.
        OSError: the download failed.
    """
    name = ModelName(name)
    _require_published(name)
    source, directory = SOURCES[name], pathlib.Path(directory or cache.cache_dir())
    if not force:
        cached = _reuse_converted(name, directory)
        if cached is not None:
            return cached
    directory.mkdir(parents=True, exist_ok=True)
    kept = directory / DOWNLOADS / source.filename
    with tempfile.TemporaryDirectory(dir=directory, prefix=".fetch-") as tmp:
        scratch = pathlib.Path(tmp)
        path, hashes, where, downloaded = _obtain(name, source, source_dir, kept, scratch, timeout)
        recorded = _verify(source, hashes, where, directory, path, kept)
        weights = _convert_and_store(name, source, path, hashes, scratch, directory)
        origin = "publisher" if source.sha256 else "first-download"
        if recorded is None:
            _record_download(source, path, hashes, origin, directory)
        _record_conversion(name, source, weights, hashes, directory)
        if downloaded and keep_download:
            kept.parent.mkdir(exist_ok=True)
            os.replace(path, kept)
    return Fetched(name, "converted", weights, hashes["sha256"], recorded["origin"] if recorded else origin)


def _require_published(name: ModelName) -> None:
    """Refuse a model without public weights up front, naming the ones that can be fetched."""
    if name not in SOURCES:
        raise ValueError(f"{name.value} has no published weights to fetch; fetchable: "
                         f"{[m.value for m in SOURCES]}")


def _reuse_converted(name: ModelName, directory: pathlib.Path) -> Fetched | None:
    """The cached conversion if the ledger still vouches for it (nothing to do), else ``None``."""
    try:
        weights = cache.verify_converted(name.value, directory)
        ledger = cache.read_ledger(directory)
        entry = ledger["converted"][name.value]
        origin = ledger["downloads"].get(entry["source"], {}).get("origin", "ledger")
        return Fetched(name, "cached", weights, entry["source_sha256"], origin)
    except cache.WeightsNotFetched:
        pass
    except HashMismatch as exc:
        log.warning("%s; converting again", exc)
    return None


def _obtain(name: ModelName, source: Source, source_dir: pathlib.Path | None, kept: pathlib.Path,
            scratch: pathlib.Path, timeout: float) -> tuple[pathlib.Path, dict[str, str], str, bool]:
    """The published file from ``source_dir``, the cache's kept download or the network, with its hashes.

    Returns (path, hashes, where it came from for messages, whether it was downloaded now).
    """
    downloaded = False
    if source_dir is not None:
        path = pathlib.Path(source_dir) / source.filename
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; download {source.url} there first")
        hashes, where = cache.file_hashes(path), str(path)
    elif kept.is_file():
        path, where = kept, str(kept)
        hashes = cache.file_hashes(path)
    else:
        log.info("%s: downloading %s", name.value, source.url)
        (scratch / "download").mkdir()
        path = scratch / "download" / source.filename  # the real name: readers may go by its suffix
        hashes, where, downloaded = download(source.url, path, timeout=timeout), source.url, True
    return path, hashes, where, downloaded


def _verify(source: Source, hashes: dict[str, str], where: str, directory: pathlib.Path, path: pathlib.Path,
            kept: pathlib.Path) -> dict | None:
    """Check the file against the publisher and the ledger (returns the ledger's entry); drop a damaged kept copy."""
    try:
        check_publisher(source, hashes, where)
        return check_ledger(source, hashes, where, directory)
    except HashMismatch as exc:
        if path == kept:  # the cache's own copy is damaged: drop it, the next run downloads it anew
            kept.unlink()
            raise HashMismatch(f"{exc}; deleted the cached download, run again to download it anew") from None
        raise


def _convert_and_store(name: ModelName, source: Source, path: pathlib.Path, hashes: dict[str, str],
                       scratch: pathlib.Path, directory: pathlib.Path) -> pathlib.Path:
    """Convert the verified file to Keras weights and store them in the cache; returns their path."""
    log.info("%s: converting %s (SHA-256 %s)", name.value, source.filename, hashes["sha256"])
    model = convert(source, path, scratch)
    weights = cache.converted_weights_path(name.value, hashes["sha256"], directory)
    cache.store_weights(model, weights)
    return weights


def _record_download(source: Source, path: pathlib.Path, hashes: dict[str, str], origin: str,
                     directory: pathlib.Path) -> None:
    """Record a first-seen file's hashes in the ledger, so later downloads and uses are held to them."""
    cache.record("downloads", source.filename, {
        "sha256": hashes["sha256"], "md5": hashes["md5"], "bytes": path.stat().st_size, "url": source.url,
        "origin": origin, "publisher_check": source.publisher_check(),
        "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }, directory)


def _record_conversion(name: ModelName, source: Source, weights: pathlib.Path, hashes: dict[str, str],
                       directory: pathlib.Path) -> None:
    """Record the converted weights in the ledger, so a later fetch can reuse them after checking them."""
    cache.record("converted", name.value, {
        "file": weights.name, "sha256": cache.file_hashes(weights)["sha256"], "source": source.filename,
        "source_sha256": hashes["sha256"], "converter_version": cache.CONVERTER_VERSION,
    }, directory)


def cache_status(directory: pathlib.Path) -> str:
    """Each fetchable model's URL, checks and whether ``directory`` holds it converted."""
    ledger = cache.read_ledger(directory)
    lines = [f"cache: {directory}"]
    for name, source in SOURCES.items():
        done = "converted" if cache.has_converted(name.value, directory) else "not fetched"
        recorded = ledger["downloads"].get(source.filename, {}).get("sha256", "not recorded yet")
        lines += [f"{name.value}: {done}", f"  url: {source.url}", f"  publisher's check: {source.publisher_check()}",
                  f"  recorded SHA-256: {recorded}"]
    return "\n".join(lines)
