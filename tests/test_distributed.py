"""Data-parallel denoiser training (``hgd.train.distributed``) on simulated CPU devices and CPU processes.

Everything runs in subprocesses: on the JAX backend, two simulated devices of one process
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``) and two processes with one device each,
joined over 127.0.0.1 by JAX's coordinator and reducing over gloo; on the TensorFlow backend, two
logical CPU devices under ``tf.distribute.MirroredStrategy``.

Tolerance for "the same weights": the runs differ only in the order in which a gradient's per-example
terms are summed (per device, then across devices). In float32 (epsilon 1.2e-7) over the few thousand
terms of each weight's gradient that moves a weight by well under 1e-6 per step at learning rate 0.1;
three steps stay far below the 1e-5 asserted (measured: about 1e-7). Two processes of one job hold
bitwise-identical weights: each applies the same reduced gradient.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("jax", reason="data parallelism runs on the JAX backend (the dev extras install jax)")

pytestmark = [pytest.mark.slow, pytest.mark.jax]

REPO = pathlib.Path(__file__).resolve().parents[1]
PROBE = REPO / "tests" / "distributed_probe.py"
STEPS = 3


def _env(devices: int | None = None) -> dict[str, str]:
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)}
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(command: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _two_processes(args: list[str], logs: pathlib.Path, extra: list[list[str]] | None = None):
    """Starts processes 0 and 1 of one job (``args`` + the job flags + ``extra[i]``), their output in files
    under ``logs`` (pipes could fill and stall a process mid-collective); returns both Popens."""
    coordinator = f"127.0.0.1:{_free_port()}"
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    for i in range(2):
        with open(logs / f"p{i}.out", "w") as out, open(logs / f"p{i}.err", "w") as err:
            processes.append(subprocess.Popen(
                [*args, "--coordinator", coordinator, "--num-processes", "2", "--process-id", str(i),
                 *(extra[i] if extra else [])], cwd=REPO, env=_env(), stdout=out, stderr=err,
                start_new_session=True))
        processes[-1].logs = logs / f"p{i}"
    return processes


def _finish(processes, timeout: float = 600) -> list[tuple[int, str, str]]:
    """Each process's exit status, stdout and stderr."""
    for p in processes:
        p.wait(timeout=timeout)
    return [(p.returncode, p.logs.with_suffix(".out").read_text(), p.logs.with_suffix(".err").read_text()[-3000:])
            for p in processes]


def _weights(folder: pathlib.Path, process: int, step: int) -> np.ndarray:
    return np.load(folder / f"p{process}_step{step}.npy")


def test_two_devices_train_as_one_device_with_the_same_global_batch(tmp_path):
    _run([sys.executable, str(PROBE), str(tmp_path / "one"), "--devices", "1"], _env(1))
    _run([sys.executable, str(PROBE), str(tmp_path / "two"), "--devices", "2"], _env(2))
    for step in range(STEPS):
        one, two = _weights(tmp_path / "one", 0, step), _weights(tmp_path / "two", 0, step)
        np.testing.assert_allclose(two, one, rtol=0, atol=1e-5)
    assert not np.array_equal(_weights(tmp_path / "one", 0, 0), _weights(tmp_path / "one", 0, STEPS - 1))  # it trained


def test_tensorflow_mirrored_over_two_devices_trains_as_one_device(tmp_path):
    """The TensorFlow backend's path (tf.distribute over two logical CPU devices): the loss is each
    replica's share and batch normalization takes the whole batch's statistics, as on one device."""
    tf_env = {**_env(), "KERAS_BACKEND": "tensorflow"}
    _run([sys.executable, str(PROBE), str(tmp_path / "one"), "--devices", "1", "--backend", "tensorflow"], tf_env)
    _run([sys.executable, str(PROBE), str(tmp_path / "two"), "--devices", "2", "--backend", "tensorflow"], tf_env)
    for step in range(STEPS):
        np.testing.assert_allclose(_weights(tmp_path / "two", 0, step), _weights(tmp_path / "one", 0, step),
                                   rtol=0, atol=1e-5)


def test_two_processes_hold_identical_weights_equal_to_one_process(tmp_path):
    _run([sys.executable, str(PROBE), str(tmp_path / "alone")], _env())
    results = _finish(_two_processes([sys.executable, str(PROBE), str(tmp_path / "job")], tmp_path / "logs"))
    assert all(code == 0 for code, _, _ in results), [err[-2000:] for _, _, err in results]
    for step in range(STEPS):
        first, second = _weights(tmp_path / "job", 0, step), _weights(tmp_path / "job", 1, step)
        np.testing.assert_array_equal(first, second)
        np.testing.assert_allclose(first, _weights(tmp_path / "alone", 0, step), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def pairs_dir(small_source, tmp_path_factory) -> pathlib.Path:
    from hgd.train.pairs import PairSpec, build_pairs

    out = tmp_path_factory.mktemp("pairs")
    spec = PairSpec(source=str(small_source), models=("efficientnet_lite0",), attacks_per_image=2,
                    validation_fraction=0.5)
    build_pairs(small_source, out, spec, progress=False)
    return out


FIT = ["--guidance", "pgd", "--width", "0.125", "--crop", "64", "--batch-size", "2", "--steps-per-epoch", "2",
       "--validation-pairs", "2", "--no-progress"]


def test_fit_on_two_simulated_devices_gives_a_checkpoint_the_defense_runs(pairs_dir, tmp_path):
    run = tmp_path / "run"
    result = _run([sys.executable, "-m", "hgd.cli.train", "fit", str(pairs_dir), str(run), *FIT, "--max-epochs", "1",
                   "--devices", "2", "--batch-norm-batches", "1"], _env(2))  # re-estimated on both devices too
    assert "finished: reached max_epochs=1" in result.stdout
    assert "data parallel over 2 device(s)" in result.stderr
    from hgd.defenses.defended import load_config
    from hgd.io.images import iter_batches, list_input_files

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"members": [{"model": "efficientnet_lite0", "denoiser": {
        "weights": str(run / "best.weights.h5"), "width": 0.125}}]}))
    defended = load_config(config).build()
    images = next(iter_batches(list_input_files(REPO / "sample_data" / "images")[:2], 2)).images
    logits = np.asarray(defended(images))
    assert logits.shape == (2, 1000) and np.isfinite(logits).all()


def test_defense_aware_fit_runs_on_two_simulated_devices(pairs_dir, tmp_path):
    """The adversary's PGD (input gradients through the current denoiser, in the data pipeline) works
    under the distribution: each process attacks its share of the batch."""
    run = tmp_path / "run"
    result = _run([sys.executable, "-m", "hgd.cli.train", "fit", str(pairs_dir), str(run), "--guidance", "fgd",
                   "--models", "efficientnet_lite0", "--width", "0.125", "--crop", "64", "--batch-size", "2",
                   "--steps-per-epoch", "1", "--validation-pairs", "2", "--max-epochs", "1", "--adaptive-fraction",
                   "0.5", "--adaptive-steps", "1", "--devices", "2", "--no-progress"], _env(2))
    assert "finished: reached max_epochs=1" in result.stdout and "defense-aware examples: 50%" in result.stderr
    assert (run / "best.weights.h5").is_file()


def test_fit_in_two_processes_only_process_0_writes(pairs_dir, tmp_path):
    command = [sys.executable, "-m", "hgd.cli.train", "fit", str(pairs_dir)]
    processes = _two_processes(command, tmp_path / "logs", extra=[[str(tmp_path / "run0"), *FIT, "--max-epochs", "1"],
                                                                   [str(tmp_path / "run1"), *FIT, "--max-epochs", "1"]])
    results = _finish(processes)
    assert all(code == 0 for code, _, _ in results), [err[-2000:] for _, _, err in results]
    assert (tmp_path / "run0" / "best.weights.h5").is_file() and (tmp_path / "run0" / "history.csv").is_file()
    assert list((tmp_path / "run1").iterdir()) == []  # process 1 trained the same epoch and wrote nothing


def test_a_killed_process_fails_the_job_clearly_and_a_rerun_resumes(pairs_dir, tmp_path):
    run = tmp_path / "run"  # one folder both read: a shared file system in a real job
    command = [sys.executable, "-m", "hgd.cli.train", "fit", str(pairs_dir), str(run), *FIT, "--max-epochs", "1"]
    results = _finish(_two_processes(command, tmp_path / "first"))
    assert all(code == 0 for code, _, _ in results), [err[-2000:] for _, _, err in results]
    assert json.loads((run / "state.json").read_text())["epoch"] == 1

    processes = _two_processes([*command[:-1], "3"], tmp_path / "killed")  # two more epochs
    deadline = time.monotonic() + 300
    while json.loads((run / "state.json").read_text())["epoch"] < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(processes[1].pid, signal.SIGKILL)
    (code0, _, err0), _ = _finish(processes, timeout=300)
    assert code0 != 0, "the surviving process must fail, not hang or pretend to finish"
    assert err0.strip(), "and say why"
    epoch = json.loads((run / "state.json").read_text())["epoch"]
    assert epoch >= 2

    results = _finish(_two_processes([*command[:-1], "3"], tmp_path / "rerun"))
    assert all(code == 0 for code, _, _ in results), [err[-2000:] for _, _, err in results]
    assert json.loads((run / "state.json").read_text())["epoch"] == 3
    assert f"resumed from {run / 'last.weights.h5'}" in results[0][2] or epoch == 3
