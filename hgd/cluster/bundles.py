"""A submission's code as one archive that a node without the driver's file system can unpack.

The bundle holds the submission's folder and the folders its ``metadata.json`` ``reads`` (e.g. an
attack on the shipped defense reads ``../../defense``), at the same places relative to each other, so
the relative paths a submission uses still resolve on the node. A node unpacks each bundle once into
its own cache (keyed by the submission's fingerprint and layout) and runs copies of it from there, as
the executors always do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pathlib
import shutil
import tarfile
import tempfile
from collections.abc import Sequence

from hgd.io.files import digest_folder

CACHE_FOLDER = "hgd-cluster-code"
"""The node's bundle cache, under its temporary folder."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    """An archive of a submission's code.

    Attributes:
        key: names the content: the same key means the same files at the same places.
        archive: the uncompressed tar (weights do not compress; unpacking should be fast).
        entry: the submission's folder inside the archive (POSIX, relative).
    """

    key: str
    archive: bytes
    entry: str


def pack(folder: pathlib.Path, reads: Sequence[pathlib.Path] = ()) -> Bundle:
    """Archives ``folder`` and ``reads`` relative to their common parent (``__pycache__``, ``*.pyc`` left out);
    the key digests their files' names, sizes and modification times (as a submission's fingerprint does)."""
    folders = [pathlib.Path(p).resolve() for p in (folder, *reads)]
    root = pathlib.Path(os.path.commonpath(folders)) if len(folders) > 1 else folders[0].parent
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in folders:
            tar.add(path, arcname=path.relative_to(root).as_posix(), filter=_leave_out_caches)
    entry = folders[0].relative_to(root).as_posix()
    digest = hashlib.sha256()
    for path in folders:
        digest.update(f"{path.relative_to(root).as_posix()}\n".encode())
        digest_folder(digest, path)
    key = digest.hexdigest()[:20]
    return Bundle(key=key, archive=buffer.getvalue(), entry=entry)


def _leave_out_caches(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    name = pathlib.PurePosixPath(member.name)
    if "__pycache__" in name.parts or name.suffix == ".pyc":
        return None
    return member


def unpack(bundle: Bundle, cache: pathlib.Path | None = None) -> pathlib.Path:
    """The submission's folder on this node, unpacked once per bundle key (concurrent callers are safe:
    each unpacks into its own folder and the first rename wins)."""
    cache = cache or pathlib.Path(tempfile.gettempdir()) / CACHE_FOLDER
    target = cache / bundle.key
    if not target.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{bundle.key}-", dir=cache))
        with tarfile.open(fileobj=io.BytesIO(bundle.archive), mode="r") as tar:
            tar.extractall(staging, filter="tar")
        try:
            staging.rename(target)
        except OSError:  # another worker of this node got there first
            shutil.rmtree(staging, ignore_errors=True)
    return target / bundle.entry
