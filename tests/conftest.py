"""Shared test fixtures, and the environment every Ray process the tests start must have.

Ray reads its node address rule when it is imported: with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` every
node of a test cluster binds and talks to 127.0.0.1 only (by default Ray takes the machine's external
interface); ``RAY_USAGE_STATS_ENABLED=0`` keeps it from reporting usage over the network. Set here, before
any test module imports Ray, and inherited by the nodes and drivers the tests start.
"""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest

RAY_LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
os.environ.update(RAY_LOOPBACK)

SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "sample_data"


@pytest.fixture(scope="session", autouse=True)
def _private_weights_cache(tmp_path_factory):
    """Point the converted-weights cache (``HGD_CACHE_DIR``) at a session temp dir: tests never write
    into the user's real cache. A test may still override it with ``monkeypatch.setenv``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HGD_CACHE_DIR", str(tmp_path_factory.mktemp("hgd-cache")))
        yield


@pytest.fixture(scope="module")
def model():
    """The tiny 10-class attack target (``tests/tiny_attack_model.py``); a module may define its own."""
    from tiny_attack_model import tiny_model

    return tiny_model()


@pytest.fixture(scope="module")
def images():
    """Four 32x32 uint8 images for the tiny attack target, with saturated patches."""
    from tiny_attack_model import tiny_images

    return tiny_images()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> pathlib.Path:
    """A fresh, empty converted-weights cache for one test (``HGD_CACHE_DIR``)."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("HGD_CACHE_DIR", str(directory))
    return directory


@pytest.fixture(scope="session")
def dunet_weights(tmp_path_factory):
    """Weight files of one small DUNET (width ``0.25``) with three choices of its ``out_conv`` kernel.

    Returns a dict: ``"width"`` -> 0.25; ``"identity"`` -> kernel zeroed, so the denoiser is exactly
    ``x + 0``; ``"small"`` -> small random kernel (a non-trivial denoiser that keeps the image);
    ``"large"`` -> large random kernel (destroys the image). Built once per session.
    """
    import keras
    import numpy as np

    from hgd.defenses.dunet import build_dunet

    folder = tmp_path_factory.mktemp("dunet-weights")
    width = 0.25
    keras.utils.set_random_seed(0)  # the other layers' initial weights: the same every session
    denoiser = build_dunet(width=width)
    out_conv = denoiser.get_layer("out_conv")
    (shape,) = [w.shape for w in out_conv.get_weights()]  # the kernel only (no bias)
    rng = np.random.default_rng(0)
    kernels = {
        "identity": np.zeros(shape, np.float32),
        "small": rng.normal(0.0, 0.05, shape).astype(np.float32),
        "large": rng.normal(0.0, 10.0, shape).astype(np.float32),
    }
    paths = {}
    for name, kernel in kernels.items():
        out_conv.set_weights([kernel])
        paths[name] = folder / f"dunet_{name}.weights.h5"
        denoiser.save_weights(paths[name])
    return {"width": width, **paths}


@pytest.fixture
def defense_dir(tmp_path, dunet_weights) -> pathlib.Path:
    """A one-member HGD defense folder (Lite0 behind a small random-weight DUNET)."""
    import json

    folder = tmp_path / "defense"
    (folder / "weights").mkdir(parents=True)
    shutil.copyfile(dunet_weights["small"], folder / "weights" / "dunet.weights.h5")
    (folder / "config.json").write_text(json.dumps({
        "members": [{"model": "efficientnet_lite0",
                     "denoiser": {"weights": "weights/dunet.weights.h5", "width": dunet_weights["width"]}}]}))
    return folder


@pytest.fixture(scope="session")
def small_source(tmp_path_factory) -> pathlib.Path:
    """Four sample images in the competition's format (``images/`` + ``dev_dataset.csv``)."""
    folder = tmp_path_factory.mktemp("source")
    (folder / "images").mkdir()
    lines = (SAMPLE / "dev_dataset.csv").read_text().splitlines()
    kept = lines[:5]
    for line in kept[1:]:
        shutil.copy(SAMPLE / "images" / f"{line.split(',')[0]}.png", folder / "images")
    (folder / "dev_dataset.csv").write_text("\n".join(kept) + "\n")
    return folder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``docker`` and ``jax`` markers by one rule each (``slow`` is written on the tests themselves):
    every test of a ``test_docker*`` module needs a Docker engine; a test whose name or parameters say
    ``jax`` runs the JAX backend in a subprocess."""
    for item in items:
        if item.path.name.startswith("test_docker"):
            item.add_marker(pytest.mark.docker)
        if "jax" in item.name:
            item.add_marker(pytest.mark.jax)
