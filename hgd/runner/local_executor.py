"""The local executor: a submission runs as a subprocess of this machine, no container.

What EVAL's worker did with Docker, done with a process group: a fresh copy of
the submission's code per run (a submission may modify its own folder; nothing
carries over between runs), the working directory set to that copy, the
competition's command line with host paths (``./<entry_point> INPUT OUTPUT
[EPSILON]``), stdout and stderr captured to a log, and the time limit enforced
by stopping the whole process group: SIGTERM, then SIGKILL after a grace period
(``docker stop`` does the same). Whatever the submission wrote before it was
stopped stays. No network or memory isolation: use the Docker executor for
submissions you do not trust.

``PYTHON`` is set to the running interpreter, so a submission's
``exec "${PYTHON:-python3}" ...`` uses the same environment as the runner.
"""

from __future__ import annotations

import os
import pathlib
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from hgd.runner.executors import RunRequest, RunResult
from hgd.runner.workdirs import force_rmtree

LOG_TAIL_CHARS = 20_000
"""How much of the end of a run's output :attr:`RunResult.log` keeps."""


class LocalExecutor:
    """Runs submissions as local subprocesses (implements :class:`~hgd.runner.executors.Executor`).

    Args:
        grace: seconds between SIGTERM and SIGKILL when the time limit stops a run.
        temp_dir: where the per-run copies of the code go (default: the system's temp folder).
    """

    name = "local"

    def __init__(self, *, grace: float = 5.0, temp_dir: str | os.PathLike[str] | None = None) -> None:
        if not grace >= 0:
            raise ValueError(f"grace must be >= 0 seconds, got {grace!r}")
        self.grace = grace
        self.temp_dir = temp_dir

    def __repr__(self) -> str:
        return f"LocalExecutor(grace={self.grace!r})"

    def run(self, request: RunRequest) -> RunResult:
        """Runs one submission on one work piece; never raises for a failing submission.

        Raises:
            KeyboardInterrupt: re-raised after the submission's process group is killed.
        """
        scratch = pathlib.Path(tempfile.mkdtemp(prefix="hgd-run-", dir=self.temp_dir))
        try:
            return self._run(request, scratch)
        finally:
            force_rmtree(scratch)

    def _run(self, request: RunRequest, scratch: pathlib.Path) -> RunResult:
        code = scratch / "code"
        try:
            shutil.copytree(request.code_dir, code, symlinks=True)
        except (OSError, shutil.Error) as error:
            return RunResult(exit_code=None, timed_out=False, seconds=0.0,
                             log=f"cannot copy the submission's code: {error}")
        # The submission runs in its copy: relative paths would point into it.
        input_dir, output_dir = pathlib.Path(request.input_dir).resolve(), pathlib.Path(request.output_dir).resolve()
        output_dir.mkdir(parents=True, exist_ok=True)
        output = output_dir / request.output_file if request.output_file else output_dir
        command = [str(code / request.entry_point), str(input_dir), str(output), *request.extra_args]
        env = {**os.environ, "PYTHON": sys.executable}
        log_path = scratch / "log.txt"
        with open(log_path, "wb") as log:
            start = time.monotonic()
            try:
                process = subprocess.Popen(command, cwd=code, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as error:  # not executable, bad shebang, vanished...
                code_ = 126 if isinstance(error, PermissionError) else 127
                return RunResult(exit_code=code_, timed_out=False, seconds=time.monotonic() - start,
                                 log=f"cannot start {request.entry_point}: {error}")
            try:
                timed_out = not _wait(process, max(request.time_limit, 0.0))
                if timed_out:
                    self._stop(process)
                seconds = time.monotonic() - start
            except BaseException:  # Ctrl-C: leave nothing running
                _kill_group(process.pid, signal.SIGKILL)
                process.wait()
                raise
            # Background children the entry point left behind must not write after the run ended.
            _kill_group(process.pid, signal.SIGKILL)
        tail = _tail(log_path)
        if timed_out:
            tail += f"\n[hgd.runner] stopped at the time limit of {request.time_limit:g} s"
        return RunResult(exit_code=process.returncode, timed_out=timed_out, seconds=seconds, log=tail)

    def _stop(self, process: subprocess.Popen) -> None:
        """SIGTERM to the process group, SIGKILL after the grace period."""
        _kill_group(process.pid, signal.SIGTERM)
        if not _wait(process, self.grace):
            _kill_group(process.pid, signal.SIGKILL)
            process.wait()


def _wait(process: subprocess.Popen, timeout: float) -> bool:
    """Waits up to ``timeout`` seconds for the process to exit; ``True`` if it did.

    Sleeps on a pidfd where Linux has them, so the run's end is seen at once
    (``Popen.wait(timeout)`` polls with sleeps of up to 50 ms, which adds up over
    thousands of pieces); falls back to ``Popen.wait`` elsewhere.
    """
    try:
        fd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        try:
            process.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if ready:
        process.wait()
        return True
    return False


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: pathlib.Path, chars: int = LOG_TAIL_CHARS) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 4 * chars))
        text = f.read().decode("utf-8", errors="replace")
    return text[-chars:]
