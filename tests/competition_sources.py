"""Writers of the competition classifiers' published weight files, in their publishers' exact formats.

Shared by the converter tests (``test_competition_models.py``) and the fetch-weights tests
(``test_fetch.py``): a TF1 name-based checkpoint as TF-Slim's ``Saver`` writes it (and the
``.tar.gz`` download.tensorflow.org serves it in), Keras 2 ``save_weights`` ``.h5`` as Keras
applications publishes it, and a zip-format torch state dict as ``torch.save`` writes it (without
torch, through :mod:`torch_pickle`'s stand-ins).
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import tarfile
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np

from torch_pickle import STORAGE_TYPES, fake_torch_modules, rebuild_tensor_v2

_SCOPE_SPLIT = re.compile(r"_(?=Branch_|Conv|block|Logits)")

def slim_variables(model: keras.Model, scope: str) -> dict[str, keras.Variable]:
    """The slim checkpoint's variable names for ``model`` -> its Keras variables, by the test's own inverse of
    the layer naming (scope tokens re-split at ``Branch_``, ``Conv``, ``block``, ``Logits``)."""
    out = {}
    for layer in model.layers:
        for v in layer.weights:
            base = layer.name.rsplit("_", 1)[0]  # drop _conv / _fc / _bn
            leaf = {"kernel": "weights", "bias": "biases"}.get(v.name, f"BatchNorm/{v.name}")
            out[f"{scope}/{'/'.join(_SCOPE_SPLIT.split(base))}/{leaf}"] = v
    return out


def write_tf1_checkpoint(prefix: Path, tensors: dict[str, np.ndarray]) -> None:
    """A TF1 name-based checkpoint (``.index`` + ``.data-00000-of-00001``), as ``tf.compat.v1.train.Saver`` writes."""
    import tensorflow as tf

    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])


def random_checkpoint(model: keras.Model, scope: str, folder: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Random tensors under every real variable name of ``model``'s checkpoint, plus ``global_step``."""
    rng = np.random.default_rng(0)
    tensors = {name: rng.normal(size=v.shape).astype(np.float32) for name, v in slim_variables(model, scope).items()}
    for name in tensors:
        if name.endswith("moving_variance"):
            tensors[name] = np.abs(tensors[name]) + 0.5
    prefix = folder / f"{scope}.ckpt"
    write_tf1_checkpoint(prefix, {**tensors, "global_step": np.array(12345, np.int64)})
    return prefix, tensors

def write_keras2_h5(path: Path, model: keras.Model, values: dict[str, list[np.ndarray]]) -> None:
    """The layout of keras-applications' ``resnet152_weights_tf_dim_ordering_tf_kernels.h5`` (Keras 2's
    ``save_weights``): all layer names in order, a group per layer listing its ``<layer>/<weight>:0`` datasets."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = f.create_group(layer.name)
            names = [f"{layer.name}/{v.name}:0".encode() for v in layer.weights]
            group.attrs["weight_names"] = names
            for name, value in zip(names, values.get(layer.name, [])):
                group.create_dataset(name.decode(), data=value)

BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def torchvision_resnext101_64x4d() -> dict[str, tuple[tuple[int, ...], str]]:
    """torchvision's ``resnext101_64x4d`` state dict: name -> (shape, dtype), from its ResNet/Bottleneck code
    (layers [3, 4, 23, 3], groups 64, width_per_group 4)."""
    spec: dict[str, tuple[tuple[int, ...], str]] = {}

    def bn(name: str, c: int) -> None:
        spec.update({f"{name}.{k}": ((c,), "float32") for k in BN_TENSORS})
        spec[f"{name}.num_batches_tracked"] = ((), "int64")

    spec["conv1.weight"] = ((64, 3, 7, 7), "float32")
    bn("bn1", 64)
    inplanes = 64
    for i, (blocks, planes) in enumerate(zip((3, 4, 23, 3), (64, 128, 256, 512)), start=1):
        width, out = planes * 4 // 64 * 64, planes * 4
        for b in range(blocks):
            p = f"layer{i}.{b}"
            spec[f"{p}.conv1.weight"] = ((width, inplanes, 1, 1), "float32")
            bn(f"{p}.bn1", width)
            spec[f"{p}.conv2.weight"] = ((width, width // 64, 3, 3), "float32")
            bn(f"{p}.bn2", width)
            spec[f"{p}.conv3.weight"] = ((out, width, 1, 1), "float32")
            bn(f"{p}.bn3", out)
            if b == 0:
                spec[f"{p}.downsample.0.weight"] = ((out, inplanes, 1, 1), "float32")
                bn(f"{p}.downsample.1", out)
            inplanes = out
    spec["fc.weight"] = ((1000, 2048), "float32")
    spec["fc.bias"] = ((1000,), "float32")
    return spec

class _Storage:
    """A tensor's storage: pickled by persistent id ``("storage", type, key, "cpu", numel)``."""

    def __init__(self, key: str, value: np.ndarray) -> None:
        self.key, self.value = key, np.ascontiguousarray(value)


class _Tensor:
    """Pickles as torch's ``_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)``."""

    def __init__(self, storage: _Storage) -> None:
        self.storage = storage

    def __reduce__(self):
        value = self.storage.value
        stride = tuple(s // value.itemsize for s in value.strides)
        return rebuild_tensor_v2, (self.storage, 0, value.shape, stride, False, collections.OrderedDict())


class _ZipPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if not isinstance(obj, _Storage):
            return None
        storage = STORAGE_TYPES[obj.value.dtype]
        return ("storage", storage, obj.key, "cpu", obj.value.size)


def write_torch_zip(path: Path, state: dict[str, np.ndarray], monkeypatch, *, archive: str = "archive") -> None:
    """A state dict as ``torch.save`` (zip serializer) writes it: ``archive/data.pkl``, ``archive/data/<key>``,
    ``byteorder``, ``version``; with the ``_metadata`` attribute ``Module.state_dict()`` attaches."""
    tensors = collections.OrderedDict((name, _Tensor(_Storage(str(i), v))) for i, (name, v) in enumerate(state.items()))
    tensors._metadata = collections.OrderedDict([("", {"version": 1})])
    buf = io.BytesIO()
    with fake_torch_modules(monkeypatch):
        _ZipPickler(buf, protocol=2).dump(tensors)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", buf.getvalue())
        z.writestr(f"{archive}/byteorder", "little")
        for t in tensors.values():
            z.writestr(f"{archive}/data/{t.storage.key}", t.storage.value.tobytes())
        z.writestr(f"{archive}/version", "3\n")


def write_slim_tarball(path: Path, checkpoint: str, tensors: dict[str, np.ndarray], folder: Path) -> None:
    """A ``.tar.gz`` as download.tensorflow.org serves the ens-adv checkpoints: ``<checkpoint>.index``,
    ``.data-00000-of-00001`` and ``.meta`` (here junk: a graph the converter must not need) at the top level.
    Stored uncompressed inside the gzip stream (level 0): a valid ``.tar.gz``, fast to write."""
    write_tf1_checkpoint(folder / checkpoint, tensors)
    (folder / f"{checkpoint}.meta").write_bytes(b"a MetaGraphDef the converter never reads")
    with tarfile.open(path, "w:gz", compresslevel=0) as archive:
        for suffix in (".data-00000-of-00001", ".index", ".meta"):
            archive.add(folder / f"{checkpoint}{suffix}", arcname=f"{checkpoint}{suffix}")


def random_keras_values(model: keras.Model, seed: int) -> dict[str, list[np.ndarray]]:
    """Random values for every weighted layer of ``model`` (variances positive), by layer name."""
    rng = np.random.default_rng(seed)
    return {layer.name: [(np.abs(rng.normal(size=v.shape)) + 0.5 if "variance" in v.name else rng.normal(size=v.shape))
                         .astype(np.float32) for v in layer.weights]
            for layer in model.layers if layer.weights}


def random_resnext_state(seed: int) -> dict[str, np.ndarray]:
    """torchvision's ``resnext101_64x4d`` state dict with random values."""
    rng = np.random.default_rng(seed)
    return {name: (rng.normal(size=shape).astype(dtype) if dtype == "float32" else np.array(7, np.int64))
            for name, (shape, dtype) in torchvision_resnext101_64x4d().items()}
