"""fetch-weights (``python -m hgd.cli.fetch``): download, verify, record, convert, cache; against files written here.

Nothing can be downloaded here, so sources are served from ``file://`` URLs (urllib's own handler:
the download code path is the real one) or taken from ``--source-dir``, and written by the tests in
the publishers' exact formats (:mod:`competition_sources`). The checks and the ledger run through
the real ``resnet152`` registry entry and its Keras 2 ``.h5`` format with the architecture swapped
for a tiny one (same format, same code path, 60M parameters fewer); then each of the four real
architectures goes through one whole fetch at full size (built once, reused for the conversion
and the load, so each costs one build).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from competition_sources import (random_keras_values, random_resnext_state, slim_variables, write_keras2_h5,
                                 write_slim_tarball, write_torch_zip)
from hgd import zoo
from hgd.cli import fetch as fetch_cli
from hgd.zoo import ModelName, cache, fetch, get_model, resnet
from hgd.zoo.cache import HashMismatch, WeightsNotFetched, file_hashes

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

RESNET = ModelName.RESNET152
H5_NAME = "resnet152_weights_tf_dim_ordering_tf_kernels.h5"
REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_architecture() -> keras.Model:
    inputs = keras.Input((None, None, 3), name="input")
    x = keras.layers.Conv2D(4, 3, strides=2, name="conv1_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, keras.layers.Dense(1000, name="predictions")(x), name="tiny")


class Served:
    """resnet152's published file, served from a ``file://`` URL: a Keras 2 ``.h5`` of :func:`tiny_architecture`,
    with the publisher's MD5 set to the file's own (as for the real file) unless told otherwise."""

    def __init__(self, folder: pathlib.Path, monkeypatch) -> None:
        self.folder, self.monkeypatch = folder, monkeypatch
        folder.mkdir()
        self.path = folder / H5_NAME
        monkeypatch.setitem(zoo.ARCHITECTURES, RESNET, tiny_architecture)
        self.write(seed=0)

    def write(self, seed: int, *, md5: str | None = "own") -> None:
        model = tiny_architecture()
        self.values = random_keras_values(model, seed)
        write_keras2_h5(self.path, model, self.values)
        self.publish(md5=file_hashes(self.path)["md5"] if md5 == "own" else md5)

    def publish(self, **changes) -> None:
        source = dataclasses.replace(fetch.SOURCES[RESNET], **{"url": self.path.as_uri(), **changes})
        self.monkeypatch.setitem(fetch.SOURCES, RESNET, source)


@pytest.fixture
def served(tmp_path, monkeypatch) -> Served:
    return Served(tmp_path / "www", monkeypatch)


def assert_backbone_holds(values: dict[str, list[np.ndarray]]) -> None:
    """The registry's resnet152 backbone, built from the cache, carries exactly ``values``."""
    model = get_model(RESNET).build_backbone()
    for name, expected in values.items():
        for got, want in zip(model.get_layer(name).get_weights(), expected, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=name)


def assert_nothing_cached(directory: pathlib.Path) -> None:
    assert not list(directory.glob("*.weights.h5")), "converted weights were stored"
    assert not (directory / fetch.DOWNLOADS).exists() or not any((directory / fetch.DOWNLOADS).iterdir())
    assert not list(directory.glob(".fetch-*")), "temporary files were left"
    if cache.ledger_path(directory).exists():
        ledger = cache.read_ledger(directory)
        assert H5_NAME not in ledger["downloads"] and RESNET.value not in ledger["converted"]
    assert not get_model(RESNET).weights_available()


def forbid(*_args, **_kwargs):
    raise AssertionError("must not be called")


# ------------------------------------------------------------------------------ the first fetch and later ones


def test_first_fetch_downloads_verifies_records_and_converts(served, cache_dir):
    assert not get_model(RESNET).weights_available()
    done = fetch.fetch(RESNET)
    assert (done.action, done.origin) == ("converted", "first-download")
    ledger = cache.read_ledger()
    recorded = ledger["downloads"][H5_NAME]
    assert recorded["sha256"] == file_hashes(served.path)["sha256"] == done.source_sha256
    assert recorded["url"] == served.path.as_uri() and recorded["origin"] == "first-download"
    assert recorded["publisher_check"] == f"MD5 {file_hashes(served.path)['md5']}"
    converted = ledger["converted"][RESNET.value]
    assert converted["file"] == done.weights.name and converted["sha256"] == file_hashes(done.weights)["sha256"]
    assert (cache_dir / fetch.DOWNLOADS / H5_NAME).read_bytes() == served.path.read_bytes()  # kept: no re-download
    assert not list(cache_dir.glob(".fetch-*"))
    assert get_model(RESNET).weights_available()
    assert_backbone_holds(served.values)


def test_later_fetches_use_the_cache(served, cache_dir, monkeypatch):
    fetch.fetch(RESNET)
    served.path.unlink()  # the network is gone
    monkeypatch.setattr(fetch, "download", forbid)
    with monkeypatch.context() as mp:
        mp.setattr(fetch, "convert", forbid)
        assert fetch.fetch(RESNET).action == "cached"
    # --force converts again, from the kept download
    assert fetch.fetch(RESNET, force=True).action == "converted"
    assert_backbone_holds(served.values)


def test_not_fetched_names_the_command(cache_dir):
    with pytest.raises(WeightsNotFetched, match=f"python -m hgd.cli.fetch {RESNET.value}"):
        get_model(RESNET).build_backbone()


# ------------------------------------------------------------------------------ refusals


def test_publisher_hash_mismatch_is_refused(served, cache_dir):
    actual = file_hashes(served.path)["md5"]
    served.publish(md5="0" * 32)
    with pytest.raises(HashMismatch, match="refused") as info:
        fetch.fetch(RESNET)
    assert actual in str(info.value) and "0" * 32 in str(info.value) and served.path.as_uri() in str(info.value)
    assert_nothing_cached(cache_dir)


def test_sha256_prefix_and_full_sha256_are_checked(served, cache_dir):
    sha = file_hashes(served.path)["sha256"]
    served.publish(md5=None, sha256_prefix="ffffffff" if not sha.startswith("ffffffff") else "00000000")
    with pytest.raises(HashMismatch, match="does not start with"):
        fetch.fetch(RESNET)
    served.publish(md5=None, sha256_prefix=None, sha256="f" * 64)
    with pytest.raises(HashMismatch, match="the publisher's is f{64}"):
        fetch.fetch(RESNET)
    assert_nothing_cached(cache_dir)
    served.publish(md5=None, sha256_prefix=sha[:8], sha256=sha)
    done = fetch.fetch(RESNET)
    assert done.origin == "publisher" and cache.read_ledger()["downloads"][H5_NAME]["origin"] == "publisher"


def test_ledger_records_the_first_hash_and_enforces_it(served, cache_dir):
    fetch.fetch(RESNET)
    first, ledger_before = served.values, cache.ledger_path().read_bytes()
    served.write(seed=1)  # the same URL now serves other bytes, even with a matching publisher MD5
    shutil.rmtree(cache_dir / fetch.DOWNLOADS)
    with pytest.raises(HashMismatch, match="recorded for " + H5_NAME) as info:
        fetch.fetch(RESNET, force=True)
    assert cache.read_ledger()["downloads"][H5_NAME]["sha256"] in str(info.value)
    with pytest.raises(HashMismatch, match="recorded"):  # the same file handed over through --source-dir
        fetch.fetch(RESNET, force=True, source_dir=served.folder)
    assert cache.ledger_path().read_bytes() == ledger_before
    assert not (cache_dir / fetch.DOWNLOADS).exists() or not any((cache_dir / fetch.DOWNLOADS).iterdir())
    assert_backbone_holds(first)  # what was converted from the recorded file stays in use


def test_corrupt_download_is_not_cached(served, cache_dir):
    served.path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 64)  # no publisher hash to catch it
    served.publish(md5=None)
    with pytest.raises(fetch.ConversionError, match="not a valid keras2-h5 file for resnet152"):
        fetch.fetch(RESNET)
    assert_nothing_cached(cache_dir)
    served.write(seed=0, md5=None)  # the ledger was not poisoned: the good file is accepted afterwards
    assert fetch.fetch(RESNET).action == "converted"
    assert_backbone_holds(served.values)


def test_short_download_is_an_error(tmp_path, monkeypatch):
    class Response:
        headers = {"Content-Length": "10"}
        chunks = [b"12345", b""]

        def read(self, _size):
            return self.chunks.pop(0)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(fetch.urllib.request, "urlopen", lambda *a, **k: Response())
    dest = tmp_path / "file.h5"
    with pytest.raises(OSError, match="received 5 bytes, the server announced 10"):
        fetch.download("https://example.invalid/file.h5", dest)
    assert not dest.exists()


def test_damaged_kept_download_is_dropped(served, cache_dir):
    fetch.fetch(RESNET)
    kept = cache_dir / fetch.DOWNLOADS / H5_NAME
    kept.write_bytes(kept.read_bytes() + b"\0")
    with pytest.raises(HashMismatch, match="deleted the cached download"):
        fetch.fetch(RESNET, force=True)
    assert not kept.exists()
    assert fetch.fetch(RESNET, force=True).action == "converted"  # downloaded anew
    assert kept.is_file()


def test_damaged_converted_weights_are_refused_then_reconverted(served, cache_dir, caplog):
    done = fetch.fetch(RESNET)
    damaged = bytearray(done.weights.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    done.weights.write_bytes(bytes(damaged))
    with pytest.raises(HashMismatch, match=f"python -m hgd.cli.fetch {RESNET.value}"):
        get_model(RESNET).build_backbone()
    assert fetch.fetch(RESNET).action == "converted"
    assert any("converting again" in r.getMessage() for r in caplog.records)
    assert_backbone_holds(served.values)


def test_unreadable_ledger_is_an_error(served, cache_dir):
    cache_dir.mkdir()
    cache.ledger_path().write_text("{not json")
    with pytest.raises(ValueError, match="unreadable weights ledger"):
        fetch.fetch(RESNET)
    assert not get_model(RESNET).weights_available()


# ------------------------------------------------------------------------------ --source-dir and the command line


def test_source_dir_takes_files_downloaded_elsewhere(served, cache_dir, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(served.path, elsewhere)
    served.publish(url=f"https://unreachable.invalid/{H5_NAME}")
    monkeypatch.setattr(fetch, "download", forbid)
    with pytest.raises(FileNotFoundError, match=f"download https://unreachable.invalid/{H5_NAME} there"):
        fetch.fetch(RESNET, source_dir=tmp_path)
    done = fetch.fetch(RESNET, source_dir=elsewhere)
    assert done.action == "converted"
    assert cache.read_ledger()["downloads"][H5_NAME]["sha256"] == file_hashes(served.path)["sha256"]
    assert not (cache_dir / fetch.DOWNLOADS).exists()  # the user's file is used in place, not copied
    assert (elsewhere / H5_NAME).is_file()
    assert_backbone_holds(served.values)


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as info:
        fetch_cli.main(list(args))
    return info.value.code


def test_command_line(served, cache_dir, capsys):
    assert run_cli("resnet152", "--cache-dir", str(cache_dir)) == 0
    assert f"resnet152: converted {cache_dir}" in capsys.readouterr().out
    assert run_cli("--list") == 0
    listing = capsys.readouterr().out
    for source in fetch.SOURCES.values():
        assert f"{source.model.value}: {'converted' if source.model is RESNET else 'not fetched'}" in listing
        assert source.filename in listing
    assert "SHA-256 prefix 173b62eb" in listing and "none published" in listing
    served.write(seed=1)
    shutil.rmtree(cache_dir / fetch.DOWNLOADS)
    assert run_cli("resnet152", "--force") == 1
    assert "ERROR: resnet152: " in capsys.readouterr().err
    assert run_cli("efficientnet_lite0") == 2
    assert "no published weights to fetch for ['efficientnet_lite0']" in capsys.readouterr().err


def test_nothing_touches_the_network_on_import_or_build(tmp_path):
    """Importing the zoo and the fetch module, asking what is available and building an unfetched model:
    no URL is opened and no connection or name lookup is made (Python's audit events would say so; TensorFlow's
    start-up creates a local socket, which is not network access)."""
    code = """
import sys
events = []
NETWORK = ("urllib.Request", "http.client.connect", "socket.connect", "socket.getaddrinfo", "socket.sendto")
sys.addaudithook(lambda event, args: events.append(event) if event in NETWORK else None)
import hgd.zoo, hgd.zoo.fetch
from hgd.zoo import COMPETITION_ENSEMBLE, WeightsNotFetched, available_models, get_model
assert not set(COMPETITION_ENSEMBLE) & set(available_models())
for name in COMPETITION_ENSEMBLE:
    try:
        get_model(name).build_backbone()
    except WeightsNotFetched as exc:
        assert f"python -m hgd.cli.fetch {name.value}" in str(exc), exc
    else:
        raise AssertionError(f"{name.value} built without fetched weights")
print("NETWORK EVENTS", sorted(set(events)))
"""
    env = {**os.environ, cache.CACHE_ENV: str(tmp_path / "empty-cache")}
    env.pop("HGD_TINY_STANDINS", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NETWORK EVENTS []" in result.stdout


def test_every_competition_model_has_a_source():
    assert set(fetch.SOURCES) == set(zoo.COMPETITION_ENSEMBLE) == set(zoo.ARCHITECTURES)
    for name, source in fetch.SOURCES.items():
        assert source.model is name and source.url.startswith("https://")  # no first download over plain http
    assert fetch.SOURCES[RESNET].md5 == "100835be76be38e30d865e96f2aaae62"  # keras.applications.resnet
    assert fetch.SOURCES[ModelName.RESNEXT101_64X4D].filename == "resnext101_64x4d-173b62eb.pth"


# ------------------------------------------------------------------------------ the four real architectures


def _zero(model: keras.Model) -> None:
    for v in model.weights:
        v.assign(np.zeros(v.shape, v.dtype))


def _write_source(name: ModelName, model: keras.Model, folder: pathlib.Path, monkeypatch) -> dict[str, np.ndarray]:
    """The published file of ``name`` with random values, in its format; returns the expected Keras variables
    (variable path -> value)."""
    source = fetch.SOURCES[name]
    path = folder / source.filename
    rng = np.random.default_rng(5)
    if source.format == "slim-tarball":
        variables = slim_variables(model, source.scope)
        tensors = {n: (np.abs(rng.normal(size=v.shape)) + 0.5 if n.endswith("moving_variance")
                       else rng.normal(size=v.shape)).astype(np.float32) for n, v in variables.items()}
        extra = {"global_step": np.array(12345, np.int64),  # and an aux head the deployed model does not have
                 f"{source.scope}/AuxLogits/Conv2d_1b_1x1/weights": np.ones((1, 1, 8, 128), np.float32)}
        scratch = folder / "scratch"
        scratch.mkdir()
        write_slim_tarball(path, source.checkpoint, {**tensors, **extra}, scratch)
        shutil.rmtree(scratch)
        expected = {variables[n].path: t for n, t in tensors.items()}
    elif source.format == "keras2-h5":
        values = random_keras_values(model, 5)
        write_keras2_h5(path, model, values)
        expected = {v.path: x for layer in model.layers for v, x in zip(layer.weights, values.get(layer.name, []))}
    else:
        state = random_resnext_state(5)
        write_torch_zip(path, state, monkeypatch, archive=path.stem)
        expected = {v.path: x for layer_name, values in resnet.keras_weights_from_torchvision(state).items()
                    for v, x in zip(model.get_layer(layer_name).weights, values, strict=True)}
    hashes = file_hashes(path)
    monkeypatch.setitem(fetch.SOURCES, name, dataclasses.replace(
        source, url=path.as_uri(), md5=source.md5 and hashes["md5"],
        sha256_prefix=source.sha256_prefix and hashes["sha256"][:8]))
    return expected


@pytest.mark.slow
@pytest.mark.parametrize("name", list(fetch.SOURCES), ids=lambda m: m.value)
def test_full_size_fetch(name, tmp_path, monkeypatch):
    """Published format -> fetch (download, verify, convert, store) -> the registry's backbone, at full size."""
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    model = zoo.ARCHITECTURES[name]()
    monkeypatch.setitem(zoo.ARCHITECTURES, name, lambda: model)  # conversion and loading reuse this one build
    (tmp_path / "www").mkdir()
    expected = _write_source(name, model, tmp_path / "www", monkeypatch)
    _zero(model)
    done = fetch.fetch(name, keep_download=False)
    shutil.rmtree(tmp_path / "www")
    assert done.action == "converted" and not (tmp_path / "cache" / fetch.DOWNLOADS).exists()
    _zero(model)
    backbone = get_model(name).build_backbone()
    assert backbone is model
    assert {v.path for v in model.weights} == set(expected)
    for v in model.weights:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), expected[v.path], err_msg=v.path)
