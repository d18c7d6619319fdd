"""Safe reader for legacy (non-zip) PyTorch ``.pth`` state dicts, without torch.

The only offline ImageNet weights this toolkit can reach ship as legacy torch
files (``docs/results/models.md``). ``torch.load`` would unpickle
arbitrary code, and torch is not a dependency, so this module re-implements
the format with an allow-list unpickler that resolves exactly four globals
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
``torch.FloatStorage``, ``torch.LongStorage``) and refuses everything else.

Format: five consecutive pickles (magic number, protocol version, sys info,
the state dict, the list of storage keys), then for every storage key, in
that order, an int64 element count followed by the raw little-endian bytes.
Tensors are views ``(storage, offset, size, stride)``; the strides are
honoured, because the conv and dense weights in these files are
non-contiguous views whose buffers are already in Keras layout.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import struct
from typing import IO, Any

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {"FloatStorage": np.dtype("<f4"), "LongStorage": np.dtype("<i8")}


class UnsafePickleError(pickle.UnpicklingError):
    """The file references a global outside the allow-list: it is refused, never executed."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` / ``torch.LongStorage``: only its dtype matters."""

    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _StorageRef:
    """A storage named by the pickle; its bytes follow the pickles in the file."""

    key: str
    dtype: np.dtype
    numel: int


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    """A strided view of a storage, resolved into a numpy array once the bytes are read."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _StorageRef, offset: int, size: tuple, stride: tuple, *_: Any
) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _AllowListUnpickler(pickle.Unpickler):
    """Resolves only the four globals a legacy state dict needs."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing global {module}.{name!s}: only {sorted(f'{m}.{n}' for m, n in _ALLOWED_GLOBALS)} "
                "may appear in a legacy torch state dict"
            ) from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"unexpected storage type {storage_type!r}")
        return _StorageRef(str(key), storage_type.dtype, int(numel))


def _load_pickle(f: IO[bytes]) -> Any:
    try:
        return _AllowListUnpickler(f).load()
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError) as exc:  # also a zip-format (torch >= 1.6) file
        raise ValueError(f"not a legacy torch file, or truncated ({exc})") from exc


def _collect_storages(obj: Any) -> dict[str, _StorageRef]:
    return {v.storage.key: v.storage for v in obj.values() if isinstance(v, _TensorRef)}


def _read_storage_bytes(f: IO[bytes], ref: _StorageRef) -> np.ndarray:
    header = f.read(8)
    if len(header) != 8:
        raise ValueError(f"storage {ref.key}: file truncated (no element count)")
    (numel,) = struct.unpack("<q", header)
    if numel != ref.numel:
        raise ValueError(f"storage {ref.key}: header says {numel} elements, pickle says {ref.numel}")
    nbytes = numel * ref.dtype.itemsize
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"storage {ref.key}: file truncated ({len(data)} of {nbytes} bytes)")
    return np.frombuffer(data, dtype=ref.dtype)


def _materialize(ref: _TensorRef, buffer: np.ndarray) -> np.ndarray:
    """Apply the tensor's offset, size and element strides to its storage buffer."""
    itemsize = buffer.dtype.itemsize
    extent = ref.offset + 1 + sum((s - 1) * st for s, st in zip(ref.size, ref.stride) if s > 0)
    if any(s == 0 for s in ref.size):
        return np.zeros(ref.size, dtype=buffer.dtype)
    if extent > buffer.size:
        raise ValueError(f"tensor view {ref.size}/{ref.stride} at offset {ref.offset} exceeds its storage")
    view = np.lib.stride_tricks.as_strided(
        buffer[ref.offset :],
        shape=ref.size,
        strides=tuple(st * itemsize for st in ref.stride),
        writeable=False,
    )
    return np.array(view)  # a contiguous copy in logical (PyTorch) order


def load_legacy_state_dict(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
    """Read a legacy torch state dict into numpy arrays in logical PyTorch shape.

    Args:
        path: a ``.pth`` file written by ``torch.save`` with the legacy (non-zip) serializer.

    Returns:
        The state dict, tensor name -> numpy array with the tensor's logical size.

    Raises:
        UnsafePickleError: the file references anything outside the allow-list.
        ValueError: the file is not a legacy torch file or is truncated.
    """
    with open(path, "rb") as f:
        if _load_pickle(f) != MAGIC_NUMBER:
            raise ValueError(f"{path}: not a legacy torch file (bad magic number)")
        if _load_pickle(f) != PROTOCOL_VERSION:
            raise ValueError(f"{path}: unsupported torch protocol version")
        _load_pickle(f)  # sys info: endianness and type sizes, fixed for these files
        obj = _load_pickle(f)
        keys = _load_pickle(f)
        if not isinstance(obj, collections.OrderedDict) or not isinstance(keys, list):
            raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
        storages = _collect_storages(obj)
        if set(map(str, keys)) != set(storages):
            raise ValueError(f"{path}: the storage key list does not match the tensors' storages")
        buffers = {str(k): _read_storage_bytes(f, storages[str(k)]) for k in keys}
    return collections.OrderedDict(
        (name, _materialize(v, buffers[v.storage.key]) if isinstance(v, _TensorRef) else v)
        for name, v in obj.items()
    )
