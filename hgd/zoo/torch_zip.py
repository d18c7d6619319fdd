"""Safe reader for zip-format PyTorch state dicts (``torch.save`` since torch 1.6), without torch.

torchvision publishes its ImageNet weights in this format (the ResNeXt101-64x4d of the
competition ensemble among them). The archive holds one folder with ``data.pkl`` (the pickled
state dict, whose tensors name storages by key), ``data/<key>`` (each storage's raw bytes),
``byteorder`` (absent in files older than torch 1.10, which are little-endian) and ``version``.
The pickle is the legacy format's, so the allow-list unpickler, the tensor views and their
strided materialization are those of :mod:`hgd.zoo.pth`: nothing outside its four globals is
ever resolved.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile

import numpy as np

from hgd.zoo.pth import UnsafePickleError, _AllowListUnpickler, _collect_storages, _materialize, _StorageRef, _TensorRef


def _archive_prefix(names: list[str]) -> str:
    """The one top-level folder holding ``data.pkl`` (torch names it after the file, or ``archive``)."""
    prefixes = [n.removesuffix("data.pkl") for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(prefixes) != 1:
        raise ValueError(f"not a zip-format torch file: expected one <folder>/data.pkl, found {len(prefixes)}")
    return prefixes[0]


def _read_storage(archive: zipfile.ZipFile, prefix: str, ref: _StorageRef) -> np.ndarray:
    try:
        data = archive.read(f"{prefix}data/{ref.key}")
    except KeyError:
        raise ValueError(f"storage {ref.key}: no record {prefix}data/{ref.key} in the archive") from None
    if len(data) != ref.numel * ref.dtype.itemsize:
        raise ValueError(f"storage {ref.key}: {len(data)} bytes, the pickle says {ref.numel} elements")
    return np.frombuffer(data, dtype=ref.dtype)


def load_zip_state_dict(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    """Read a zip-format torch state dict into numpy arrays in logical PyTorch shape.

    Args:
        path: a ``.pth`` file written by ``torch.save`` with the zip serializer (the default since torch 1.6).

    Returns:
        The state dict, tensor name -> numpy array with the tensor's logical size.

    Raises:
        UnsafePickleError: the pickle references anything outside :mod:`hgd.zoo.pth`'s allow-list.
        ValueError: not a zip-format torch state dict, big-endian, or a storage record missing or truncated.
    """
    with zipfile.ZipFile(path) as archive:
        prefix = _archive_prefix(archive.namelist())
        if f"{prefix}byteorder" in archive.namelist() and archive.read(f"{prefix}byteorder") != b"little":
            raise ValueError(f"{path}: only little-endian torch files are supported")
        try:
            obj = _AllowListUnpickler(io.BytesIO(archive.read(f"{prefix}data.pkl"))).load()
        except UnsafePickleError:
            raise
        except (EOFError, pickle.UnpicklingError) as exc:
            raise ValueError(f"{path}: unreadable data.pkl ({exc})") from exc
        if not isinstance(obj, collections.OrderedDict):
            raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
        buffers = {key: _read_storage(archive, prefix, ref) for key, ref in _collect_storages(obj).items()}
    return collections.OrderedDict(
        (name, _materialize(v, buffers[v.storage.key]) if isinstance(v, _TensorRef) else v)
        for name, v in obj.items()
    )
