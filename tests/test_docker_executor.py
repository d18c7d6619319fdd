"""The Docker executor against a real engine: sandbox proofs and one end-to-end run of a real submission.

No mocks. The session needs a Docker engine: ``DOCKER_HOST`` if it answers, else the engine of
``docker/start_engine.sh`` (started here when running as root; it installs Debian's docker.io with apt
if missing). Without one the tests SKIP with the reason — unless ``HGD_REQUIRE_DOCKER=1`` (CI sets it),
which turns the skip into a failure. The sandbox tests use a small base image (the debootstrapped
``local/python:3.11-bookworm`` or ``python:3.11-slim``; ``docker/build_image.sh --base-only`` makes it);
the end-to-end test uses ``hgd-toolkit:cpu``, built once by ``docker/build_image.sh`` when missing
(3-5 minutes the first time).
"""

from __future__ import annotations

import csv
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ENGINE_SOCKET = "unix:///tmp/dockerd/docker.sock"
TOOLKIT_IMAGE = "hgd-toolkit:cpu"
BASE_IMAGES = ("local/python:3.11-bookworm", "python:3.11-slim")

try:
    import docker
except ImportError:  # the SDK is installed by .ci/run; without it these tests cannot run
    if os.environ.get("HGD_REQUIRE_DOCKER") == "1":
        raise
    pytest.skip("the Docker SDK for Python is not installed (pip install docker)", allow_module_level=True)


def _unavailable(reason: str):
    if os.environ.get("HGD_REQUIRE_DOCKER") == "1":
        pytest.fail(f"HGD_REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)


def _answers(host: str | None) -> bool:
    try:
        client = docker.DockerClient(base_url=host) if host else docker.from_env()
        client.ping()
        client.close()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def docker_engine():
    """Sets ``DOCKER_HOST`` to an engine that answers for the whole session; skips when there is none.

    An engine this fixture started itself is stopped again (by its pid file, docker/stop_engine.sh) when
    the session ends; one that already answered is left as it was found.
    """
    host = os.environ.get("DOCKER_HOST")
    started = False
    if not (host and _answers(host)):
        if not _answers(ENGINE_SOCKET):
            if os.geteuid() != 0:
                _unavailable("no Docker engine answers (DOCKER_HOST) and starting one needs root "
                             "(docker/start_engine.sh)")
            proc = subprocess.run([str(REPO / "docker/start_engine.sh")], capture_output=True, text=True,
                                  timeout=600)
            if proc.returncode != 0 or not _answers(ENGINE_SOCKET):
                _unavailable("no Docker engine answers and docker/start_engine.sh could not start one "
                             f"(apt unreachable?): {proc.stderr[-800:]}")
            started = True
        host = ENGINE_SOCKET
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DOCKER_HOST", host)
            yield host
    finally:
        if started:
            subprocess.run([str(REPO / "docker/stop_engine.sh")], capture_output=True, text=True, timeout=120)


def _has_image(name: str) -> bool:
    client = docker.from_env()
    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def base_image(docker_engine) -> str:
    """A small image with python3 for the sandbox tests."""
    for name in BASE_IMAGES:
        if _has_image(name):
            return name
    proc = subprocess.run([str(REPO / "docker/build_image.sh"), "--base-only"], capture_output=True, text=True,
                          timeout=1200)
    lines = proc.stdout.split()
    if proc.returncode != 0 or not lines or not _has_image(lines[-1]):
        _unavailable(f"no base image and docker/build_image.sh --base-only failed: {proc.stderr[-800:]}")
    return lines[-1]


@pytest.fixture(scope="session")
def toolkit_image(docker_engine) -> str:
    if not _has_image(TOOLKIT_IMAGE):
        proc = subprocess.run([str(REPO / "docker/build_image.sh")], capture_output=True, text=True, timeout=2400)
        if proc.returncode != 0 or not _has_image(TOOLKIT_IMAGE):
            _unavailable(f"{TOOLKIT_IMAGE} is missing and docker/build_image.sh failed: {proc.stderr[-1500:]}")
    return TOOLKIT_IMAGE


@pytest.fixture(scope="session")
def executor(docker_engine):
    from hgd.runner.docker_executor import DockerExecutor

    return DockerExecutor()


# -- helpers -----------------------------------------------------------------------------------------


def make_submission(root: pathlib.Path, script: str, *, name: str = "run.sh") -> pathlib.Path:
    """A submission folder whose entry point is ``script`` (with its own shebang)."""
    root.mkdir(parents=True, exist_ok=True)
    entry = root / name
    entry.write_text(textwrap.dedent(script).lstrip())
    entry.chmod(0o755)
    return root


def make_inputs(root: pathlib.Path, n: int = 3) -> pathlib.Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"IMG{i:04d}.png").write_bytes(bytes([i]) * 100)
    return root


def digest(folder: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def request(tmp_path, code_dir, image, *, defense=True, time_limit=60.0, extra_args=(), entry_point="run.sh"):
    from hgd.runner.executors import RunRequest

    return RunRequest(
        code_dir=code_dir,
        entry_point=entry_point,
        input_dir=tmp_path / "in" if (tmp_path / "in").exists() else make_inputs(tmp_path / "in"),
        output_dir=tmp_path / "out",
        output_file="result.csv" if defense else None,
        extra_args=tuple(extra_args),
        time_limit=time_limit,
        image=image,
    )


# -- normal runs -------------------------------------------------------------------------------------


def test_defense_output_comes_back(tmp_path, executor, base_image):
    code = make_submission(tmp_path / "sub", """
        #!/bin/sh
        set -eu
        echo "args: $*"
        [ "$(pwd)" = /code ] || { echo "wrong cwd $(pwd)"; exit 3; }
        for f in "$1"/*; do echo "$(basename "$f"),7"; done > "$2"
        """)
    result = executor.run(request(tmp_path, code, base_image))
    assert result.ok, result.log
    assert "args: /input_images /output_data/result.csv" in result.log
    rows = (tmp_path / "out/result.csv").read_text().splitlines()
    assert rows == [f"IMG{i:04d}.png,7" for i in range(3)]
    assert executor.name == "docker"


def test_attack_output_images_and_epsilon(tmp_path, executor, base_image):
    code = make_submission(tmp_path / "sub", """
        #!/usr/bin/env python3
        import pathlib, shutil, sys
        src, dst, eps = sys.argv[1:]
        assert (src, dst) == ("/input_images", "/output_images"), sys.argv
        for p in pathlib.Path(src).iterdir():
            shutil.copy(p, pathlib.Path(dst) / p.name)
        (pathlib.Path(dst) / "eps.txt").write_text(eps)
        """)
    result = executor.run(request(tmp_path, code, base_image, defense=False, extra_args=("16",)))
    assert result.ok, result.log
    out = tmp_path / "out"
    assert (out / "eps.txt").read_text() == "16"
    assert digest(tmp_path / "in") == {k: v for k, v in digest(out).items() if k != "eps.txt"}


def test_failing_submission_is_reported_not_raised(tmp_path, executor, base_image):
    code = make_submission(tmp_path / "sub", """
        #!/bin/sh
        echo "about to fail" >&2
        exit 5
        """)
    result = executor.run(request(tmp_path, code, base_image))
    assert result.exit_code == 5 and not result.ok
    assert "about to fail" in result.log


def test_entry_point_not_executable(tmp_path, executor, base_image):
    code = make_submission(tmp_path / "sub", "#!/bin/sh\necho hi\n")
    (code / "run.sh").chmod(0o644)
    result = executor.run(request(tmp_path, code, base_image))
    assert result.exit_code == 126, result.log
    assert not result.ok


def test_missing_entry_point(tmp_path, executor, base_image):
    code = make_submission(tmp_path / "sub", "#!/bin/sh\necho hi\n")
    result = executor.run(request(tmp_path, code, base_image, entry_point="nope.sh"))
    assert result.exit_code == 127 and not result.ok, result.log


def test_fresh_code_copy_per_run(tmp_path, executor, base_image):
    code = make_submission(tmp_path / "sub", """
        #!/bin/sh
        if [ -e /code/marker ]; then echo "SEEN"; else echo "FRESH"; fi
        echo run > /code/marker
        : > "$2"
        """)
    before = digest(code)
    first = executor.run(request(tmp_path, code, base_image))
    second = executor.run(request(tmp_path, code, base_image))
    assert first.ok and second.ok, (first.log, second.log)
    assert "FRESH" in first.log and "FRESH" in second.log
    assert digest(code) == before  # the submission's own folder is never touched


def test_missing_image_is_a_result_not_an_exception(tmp_path, executor):
    code = make_submission(tmp_path / "sub", "#!/bin/sh\nexit 0\n")
    result = executor.run(request(tmp_path, code, "hgd-toolkit:no-such-tag"))
    assert result.exit_code is None and not result.ok
    assert "not found" in result.log and "docker/build_image.sh" in result.log


def test_engine_gone_is_a_result_not_an_exception(tmp_path, docker_engine, base_image):
    from hgd.runner.docker_executor import DockerExecutor

    gone = DockerExecutor()
    gone.client = docker.DockerClient(base_url=f"unix://{tmp_path}/no-engine.sock", version="1.41")  # gone
    code = make_submission(tmp_path / "sub", "#!/bin/sh\nexit 0\n")
    result = gone.run(request(tmp_path, code, base_image))
    assert result.exit_code is None and not result.ok
    assert "the Docker engine cannot be reached" in result.log, result.log


def test_no_engine_at_construction_is_a_clear_error(tmp_path, monkeypatch):
    from hgd.runner.docker_executor import DockerExecutor, DockerUnavailable

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(DockerUnavailable, match="start_engine.sh"):
        DockerExecutor()


# -- sandbox proofs ----------------------------------------------------------------------------------


def test_no_network(tmp_path, executor, base_image):
    code = make_submission(tmp_path / "sub", """
        #!/usr/bin/env python3
        import socket, sys
        outcomes = []
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=5).close()
            outcomes.append("connect: OPEN")
        except OSError as exc:
            outcomes.append(f"connect: blocked ({exc})")
        try:
            socket.getaddrinfo("pypi.org", 443)
            outcomes.append("dns: OPEN")
        except OSError as exc:
            outcomes.append(f"dns: blocked ({exc})")
        with open("/proc/net/dev") as f:
            interfaces = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
        outcomes.append(f"interfaces: {interfaces}")
        open(sys.argv[2], "w").write("\\n".join(outcomes) + "\\n")
        """)
    result = executor.run(request(tmp_path, code, base_image))
    assert result.ok, result.log  # the submission's network errors do not stop the run
    report = (tmp_path / "out/result.csv").read_text()
    assert "connect: blocked" in report and "dns: blocked" in report, report
    assert "interfaces: ['lo']" in report, report
    # and the run goes on: the next run works normally
    assert executor.run(request(tmp_path, make_submission(tmp_path / "ok", "#!/bin/sh\n: > \"$2\"\n"),
                                base_image)).ok


def test_input_is_read_only(tmp_path, executor, base_image):
    inputs = make_inputs(tmp_path / "in")
    before = digest(inputs)
    code = make_submission(tmp_path / "sub", """
        #!/bin/sh
        for action in "touch /input_images/new.png" "rm -f /input_images/IMG0000.png" \\
                      "cp /input_images/IMG0001.png /input_images/IMG0000.png"; do
            if sh -c "$action" 2>/dev/null; then echo "ALLOWED: $action"; else echo "denied: $action"; fi
        done
        """)
    result = executor.run(request(tmp_path, code, base_image))
    assert result.ok, result.log
    assert "ALLOWED" not in result.log and result.log.count("denied") == 3, result.log
    assert digest(inputs) == before


def test_out_of_memory_is_killed_and_reported(tmp_path, docker_engine, base_image):
    from hgd.runner.docker_executor import DockerExecutor

    small = DockerExecutor(memory="64m")
    code = make_submission(tmp_path / "sub", """
        #!/usr/bin/env python3
        import sys
        print("allocating 512 MiB", flush=True)
        hog = b"x" * (512 << 20)  # touches every page
        print("STILL ALIVE", len(hog), flush=True)
        """)
    result = small.run(request(tmp_path, code, base_image))
    assert result.exit_code == 137, result.log
    assert "out of memory" in result.log and "STILL ALIVE" not in result.log
    assert not result.timed_out


def test_non_root_without_capabilities(tmp_path, executor, base_image):
    code = make_submission(tmp_path / "sub", """
        #!/bin/sh
        {
          echo "uid=$(id -u) gid=$(id -g)"
          grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status
          if touch /etc/probe 2>/dev/null; then echo "rootfs: WRITABLE"; else echo "rootfs: read-only"; fi
          if touch /tmp/probe 2>/dev/null; then echo "tmp: writable"; else echo "tmp: NOT WRITABLE"; fi
        } > "$2"
        """)
    result = executor.run(request(tmp_path, code, base_image))
    assert result.ok, result.log
    lines = (tmp_path / "out/result.csv").read_text().splitlines()
    assert lines[0] == "uid=65534 gid=65534", lines
    status = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, (cap, status[cap])
    assert status["NoNewPrivs"] == "1"
    assert status["rootfs"] == "read-only" and status["tmp"] == "writable"
    # what the container wrote belongs to the container user and the host can read it
    assert (tmp_path / "out/result.csv").stat().st_uid == 65534


def test_time_limit_stops_the_run_and_partial_output_counts(tmp_path, executor, base_image):
    code = make_submission(tmp_path / "sub", """
        #!/bin/sh
        echo "IMG0000.png,1" > "$2"
        echo "first batch written"
        sleep 120
        echo "IMG0001.png,2" >> "$2"
        """)
    t0 = time.perf_counter()
    result = executor.run(request(tmp_path, code, base_image, time_limit=3))
    wall = time.perf_counter() - t0
    assert result.timed_out and not result.ok
    assert 2.5 <= result.seconds < 15 and wall < 30, (result.seconds, wall)
    assert "first batch written" in result.log and "time limit" in result.log
    assert (tmp_path / "out/result.csv").read_text() == "IMG0000.png,1\n"


def test_containers_and_code_copies_are_removed(tmp_path, executor, base_image, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the executor makes its code copies
    client = docker.from_env()
    subs = [make_submission(tmp_path / "slow", "#!/bin/sh\nsleep 30\n"),
            make_submission(tmp_path / "ok", "#!/bin/sh\nexit 0\n"),
            make_submission(tmp_path / "bad", "#!/bin/sh\nexit 3\n")]
    results = [executor.run(request(tmp_path, code, base_image, time_limit=1)) for code in subs]
    assert [(r.exit_code, r.timed_out) for r in results] == [(137, True), (0, False), (3, False)]
    for code in subs:
        left = client.containers.list(all=True, filters={"label": f"hgd-toolkit.code-dir={code}"})
        assert left == [], left
    assert list(scratch.iterdir()) == []


def test_trivial_run_overhead(tmp_path, executor, base_image):
    """Container create + start + wait + logs + remove and the code copy, for a submission doing nothing."""
    code = make_submission(tmp_path / "sub", "#!/bin/sh\n: > \"$2\"\n")
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        result = executor.run(request(tmp_path, code, base_image))
        walls.append(time.perf_counter() - t0)
        assert result.ok, result.log
    print(f"\ntrivial docker run: {', '.join(f'{w:.2f}' for w in walls)} s wall")
    assert min(walls) < 10


# -- end to end: the real image runs a real submission offline --------------------------------------


def read_labels(path: pathlib.Path) -> dict[str, int]:
    with open(path, newline="") as f:
        return {row[0]: int(row[1]) for row in csv.reader(f) if row}


def test_undefended_baseline_in_the_toolkit_image_matches_local(tmp_path, toolkit_image):
    """Slow-ish (~1 min): the real image, the real submission, four sample images, no network."""
    from hgd.runner.docker_executor import DockerExecutor
    from hgd.runner.executors import RunRequest

    images = sorted((REPO / "sample_data/images").glob("*.png"))[:4]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for p in images:
        shutil.copy(p, inputs / p.name)
    submission = REPO / "baselines/undefended"

    result = DockerExecutor().run(RunRequest(
        code_dir=submission, entry_point="run_defense.sh", input_dir=inputs, output_dir=tmp_path / "docker-out",
        output_file="result.csv", extra_args=(), time_limit=500, image=toolkit_image))
    assert result.ok, result.log
    in_docker = read_labels(tmp_path / "docker-out/result.csv")

    local_out = tmp_path / "local-out/result.csv"
    local_out.parent.mkdir()
    proc = subprocess.run([str(submission / "run_defense.sh"), str(inputs), str(local_out)],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    local = read_labels(local_out)

    assert set(in_docker) == {p.name for p in images}
    assert all(1 <= v <= 1000 for v in in_docker.values())
    assert in_docker == local, (in_docker, local)
