"""Stand-ins for the torch globals a torch checkpoint's pickle names, so tests write real ``.pth`` files
(legacy and zip formats) without torch: the pickler records ``module.name`` of these objects."""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator

import numpy as np


def _torch_global(module: str, name: str, obj):
    """Make ``obj`` pickle as the global ``module.name`` (the pickler checks ``sys.modules[module].name is obj``)."""
    obj.__module__, obj.__qualname__, obj.__name__ = module, name, name
    return obj


FloatStorage = _torch_global("torch", "FloatStorage", type("FloatStorage", (), {}))
LongStorage = _torch_global("torch", "LongStorage", type("LongStorage", (), {}))
rebuild_tensor_v2 = _torch_global("torch._utils", "_rebuild_tensor_v2", lambda *args: None)
STORAGE_TYPES = {np.dtype("float32"): FloatStorage, np.dtype("int64"): LongStorage}


@contextlib.contextmanager
def fake_torch_modules(monkeypatch) -> Iterator[None]:
    """``torch`` and ``torch._utils`` in ``sys.modules`` holding the stand-ins, while pickling."""
    fake_torch, fake_utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    fake_torch.FloatStorage, fake_torch.LongStorage = FloatStorage, LongStorage
    fake_utils._rebuild_tensor_v2 = rebuild_tensor_v2
    with monkeypatch.context() as mp:
        mp.setitem(sys.modules, "torch", fake_torch)
        mp.setitem(sys.modules, "torch._utils", fake_utils)
        yield
