"""Run submissions in Docker containers, sandboxed the way the competition's EVAL infrastructure did.

One run = one fresh container from ``request.image`` (``metadata.json``'s ``container`` or
``container_gpu``; the toolkit's own is ``hgd-toolkit:cpu``, built by ``docker/build_image.sh``):

- ``/code``: a fresh temporary copy of the submission (a run never changes the submission, nor sees
  what an earlier run left); working directory ``/code``; command
  ``./<entry_point> /input_images <output> <extra args>``.
- ``/input_images``: the input folder, read-only.
- ``/output_images`` (attacks, ``output_file is None``; the output argument is ``/output_images``) or
  ``/output_data`` (defenses; the output argument is ``/output_data/<output_file>``): the host output
  folder, read-write.
- Sandbox: no network (``network_mode="none"``), memory (``24g``, no extra swap), CPUs (``3.75``,
  capped at what the engine has: Docker refuses more), a pids limit, a read-only root file system
  with a tmpfs ``/tmp``, all capabilities dropped, ``no-new-privileges``, and a non-root user
  (``65534:65534``, nobody:nogroup). GPUs through a device request when ``request.gpu``.
- Time limit: from the container's start; at the limit it is killed (SIGKILL) and the result says
  ``timed_out``; what it wrote before counts. An out-of-memory kill (exit 137 with ``OOMKilled``)
  is said in the log.

Permissions (the container user is not the host user): the output folder is made world-writable
(``chmod 0o777``) — chosen over ``chown 65534`` because it also works when the host runner is not
root. Files the submission writes belong to uid 65534 and are world-readable. The code copy's folders
are world-writable too (a submission may write scratch files beside its code, as in the
competition), and the code copy and the input are made world-readable where they are not. (A host
runner that is not root cannot delete folders the container user creates inside those; the executor
removes what it can and ignores the rest.)

Bind mounts need the engine on this machine (a local socket), which is what ``DOCKER_HOST`` points
at in CI (``docker/start_engine.sh``). Engine and image problems (image missing, engine gone) come
back as a :class:`RunResult` with ``exit_code=None`` and a log saying what went wrong; only the
constructor raises (:class:`DockerUnavailable`) when no engine answers at all.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import stat
import tempfile
import time
from typing import Any

from hgd.runner.executors import RunRequest, RunResult

LOG_TAIL_LINES = 200
LOG_TAIL_CHARS = 20_000
TMPFS_OPTIONS = "rw,exec,nosuid,nodev,mode=1777,size=2g"  # scratch space; it counts against the memory limit


class DockerUnavailable(RuntimeError):
    """No Docker engine can be reached (or the docker SDK is missing)."""


def _make_readable(root: pathlib.Path, *, writable_dirs: bool = False) -> None:
    """Give everyone read access (and traversal for folders) under ``root``; optionally write on folders."""
    dir_bits = stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    if writable_dirs:
        dir_bits |= stat.S_IWGRP | stat.S_IWOTH
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        if path.is_dir():
            wanted = mode | dir_bits
        else:
            wanted = mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
            if mode & stat.S_IXUSR:
                wanted |= stat.S_IXGRP | stat.S_IXOTH
        if wanted != mode:
            try:
                os.chmod(path, stat.S_IMODE(wanted))
            except OSError:
                pass  # not ours to change: the container will report what it cannot read


def _tail(text: str) -> str:
    lines = text.splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(lines)[-LOG_TAIL_CHARS:]


class DockerExecutor:
    """Executor that runs each submission in a fresh, sandboxed Docker container (see the module doc)."""

    name = "docker"

    def __init__(self, *, memory: str = "24g", cpus: float = 3.75, pids_limit: int = 512,
                 user: str = "65534:65534") -> None:
        try:
            import docker
        except ImportError as exc:  # pragma: no cover - the SDK is a test/runner dependency
            raise DockerUnavailable("the Docker SDK for Python is not installed (pip install docker)") from exc
        self._docker = docker
        try:
            self.client = docker.from_env()
            self.client.ping()
            engine_cpus = int(self.client.info().get("NCPU") or 0)
        except Exception as exc:
            host = os.environ.get("DOCKER_HOST", "the default socket")
            raise DockerUnavailable(
                f"no Docker engine answers at {host} ({exc}); start one (as root: docker/start_engine.sh, "
                "then export the DOCKER_HOST it prints)"
            ) from exc
        self.memory = memory
        self.requested_cpus = cpus
        # Docker refuses a CPU quota above the engine's CPU count; the limit cannot bind beyond it anyway.
        self.cpus = min(cpus, engine_cpus) if engine_cpus else cpus
        self.pids_limit = pids_limit
        self.user = user

    # -- helpers ---------------------------------------------------------------------------------

    def _container_args(self, request: RunRequest, code_copy: pathlib.Path) -> dict:
        if request.output_file is None:
            out_mount, out_arg = "/output_images", "/output_images"
        else:
            out_mount, out_arg = "/output_data", f"/output_data/{request.output_file}"
        args = dict(
            image=request.image,
            command=["./" + request.entry_point, "/input_images", out_arg, *map(str, request.extra_args)],
            working_dir="/code",
            volumes={
                str(code_copy): {"bind": "/code", "mode": "rw"},
                str(pathlib.Path(request.input_dir).resolve()): {"bind": "/input_images", "mode": "ro"},
                str(pathlib.Path(request.output_dir).resolve()): {"bind": out_mount, "mode": "rw"},
            },
            network_mode="none",
            mem_limit=self.memory,
            memswap_limit=self.memory,  # no swap on top of the memory limit: over it means killed
            nano_cpus=int(round(self.cpus * 1e9)),
            pids_limit=self.pids_limit,
            read_only=True,
            tmpfs={"/tmp": TMPFS_OPTIONS},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            user=self.user,
            # to find (and clean up) the toolkit's containers: docker ps -a --filter label=hgd-toolkit.executor
            labels={"hgd-toolkit.executor": self.name, "hgd-toolkit.code-dir": str(request.code_dir)},
        )
        if request.gpu:
            args["device_requests"] = [self._docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        return args

    def _logs(self, container) -> str:
        try:
            raw = container.logs(stdout=True, stderr=True, tail=LOG_TAIL_LINES)
            return raw.decode("utf-8", errors="replace")
        except Exception as exc:
            return f"[docker executor] could not read the container's log: {exc}"

    @staticmethod
    def _start_failure_code(message: str) -> int | None:
        """The submission's own fault at start (like the docker CLI: 126 not executable, 127 not found)."""
        lowered = message.lower()
        if "exec" not in lowered:
            return None
        if "permission denied" in lowered:
            return 126
        if "no such file or directory" in lowered or "executable file not found" in lowered:
            return 127
        return None

    # -- the Executor protocol -------------------------------------------------------------------

    def run(self, request: RunRequest) -> RunResult:
        t0 = time.perf_counter()
        if not request.image:
            return RunResult(None, False, 0.0, "[docker executor] the submission names no container image")
        state = _RunState()
        try:
            return self._run_container(request, state, t0)
        except self._docker.errors.ImageNotFound as exc:
            return RunResult(None, False, time.perf_counter() - t0, _tail("\n".join([
                *state.notes, f"[docker executor] image {request.image!r} not found ({exc}); "
                              "build it with docker/build_image.sh"])))
        except Exception as exc:  # engine gone, API errors, copying the code: never kill the whole run
            return self._failure_result(exc, state, t0)
        finally:
            _clean_up(state)

    # -- the steps of one run --------------------------------------------------------------------

    def _run_container(self, request: RunRequest, state: _RunState, t0: float) -> RunResult:
        """Prepare the folders, create, start and await the container; ``state`` records what to clean up."""
        _prepare_io_folders(request)
        state.code_copy = _new_code_copy_path()
        _copy_code(request.code_dir, state.code_copy)
        if self.cpus != self.requested_cpus:
            state.notes.append(f"[docker executor] cpus {self.requested_cpus} capped at the engine's {self.cpus:g}")
        state.container = self.client.containers.create(**self._container_args(request, state.code_copy))
        refused = self._start(state.container, state.notes, t0)
        if refused is not None:
            return refused
        state.started = time.perf_counter()  # the time limit counts from the container's start
        exit_code, timed_out = self._wait(state.container, request, state.notes)
        seconds = time.perf_counter() - state.started
        return self._finished_result(state.container, exit_code, timed_out, seconds, state.notes)

    def _start(self, container: Any, notes: list[str], t0: float) -> RunResult | None:
        """Start the container; a result (126/127) when the submission's entry point cannot run, else ``None``."""
        try:
            container.start()
        except self._docker.errors.APIError as exc:
            code = self._start_failure_code(str(exc))
            if code is None:
                raise
            return RunResult(code, False, time.perf_counter() - t0,
                             _tail("\n".join([*notes, f"[docker executor] the entry point cannot run: {exc}"])))
        return None

    def _wait(self, container: Any, request: RunRequest, notes: list[str]) -> tuple[int | None, bool]:
        """Wait for the exit within the time limit, killing the container at the limit; (exit code, timed out)."""
        timed_out = False
        exit_code: int | None
        try:
            status = container.wait(timeout=max(request.time_limit, 0.001))
            exit_code = int(status.get("StatusCode", -1))
        except Exception as exc:  # requests' ReadTimeout / ConnectionError: the limit was reached
            if not _is_timeout(exc):
                raise
            timed_out = True
            try:
                container.kill()
            except self._docker.errors.APIError:
                pass  # it exited on its own just now
            status = container.wait(timeout=60)
            exit_code = int(status.get("StatusCode", -1))
            notes.append(f"[docker executor] time limit {request.time_limit:g} s reached: container killed")
        return exit_code, timed_out

    def _finished_result(self, container: Any, exit_code: int | None, timed_out: bool, seconds: float,
                         notes: list[str]) -> RunResult:
        """The result of a run that ended: its log, plus a note when the memory limit killed it."""
        container.reload()
        state = container.attrs.get("State", {})
        if state.get("OOMKilled"):
            notes.append(f"[docker executor] out of memory: killed by the {self.memory} memory limit "
                         f"(exit {exit_code}, OOMKilled)")
        log = self._logs(container)
        return RunResult(exit_code, timed_out, seconds, _tail("\n".join(filter(None, [log.rstrip(), *notes]))))

    def _failure_result(self, exc: Exception, state: _RunState, t0: float) -> RunResult:
        """A run the engine could not carry out, as a result saying why, so one failure never ends the whole run."""
        import requests

        seconds = (time.perf_counter() - state.started) if state.started else time.perf_counter() - t0
        unreachable = isinstance(exc, requests.exceptions.ConnectionError)
        partial = self._logs(state.container) if state.container is not None and not unreachable else ""
        what = ("the Docker engine cannot be reached (is it running? docker/start_engine.sh)"
                if unreachable else "the run could not be carried out")
        return RunResult(None, False, seconds, _tail("\n".join(filter(None, [
            partial.rstrip(), *state.notes, f"[docker executor] {what}: {type(exc).__name__}: {exc}"]))))


@dataclasses.dataclass
class _RunState:
    """What one run has set up so far: the cleanup and the failure report need it whenever the run stops."""

    container: Any = None
    code_copy: pathlib.Path | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    started: float | None = None


def _prepare_io_folders(request: RunRequest) -> None:
    """Open the input and output folders to the container user (uid 65534), who is not the host user."""
    output_dir = pathlib.Path(request.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(output_dir, 0o777)  # the container user (uid 65534) must be able to write
    _make_readable(pathlib.Path(request.input_dir))


def _new_code_copy_path() -> pathlib.Path:
    """A path for the code copy in a fresh private folder, so a run never sees what an earlier one left."""
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="hgd-code-"))
    return scratch / "code"


def _copy_code(code_dir: pathlib.Path, code_copy: pathlib.Path) -> None:
    """Copy the submission for the container to use, so a run never changes the submission itself."""
    shutil.copytree(code_dir, code_copy, symlinks=True)
    os.chmod(code_copy.parent, 0o755)
    _make_readable(code_copy, writable_dirs=True)


def _clean_up(state: _RunState) -> None:
    """Remove the container and the code copy, whatever happened to the run."""
    if state.container is not None:
        try:
            state.container.remove(force=True)
        except Exception:
            pass
    if state.code_copy is not None:
        shutil.rmtree(state.code_copy.parent, ignore_errors=True)


def _is_timeout(exc: BaseException) -> bool:
    """``container.wait(timeout=...)`` ends in requests' ReadTimeout (or a ConnectionError wrapping urllib3's)."""
    import requests

    if isinstance(exc, requests.exceptions.Timeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "timed out" in str(exc).lower() or "timeout" in str(exc).lower()
    return "timed out" in str(exc).lower()
