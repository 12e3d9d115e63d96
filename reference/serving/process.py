"""A server process the caller owns: started in a session (process group) of its own,
polled until ready within a time bound, and stopped by signalling the whole group, so
workers it spawned (TorchServe's Java frontend and Python workers, Triton's backend stubs)
go with it. Servers still running when the interpreter exits are killed then; if the owner
dies without exiting (SIGKILL, a runner's timeout), the server gets the kernel's parent-death
signal and a lifeline watcher kills its group (`reference.lifeline`), since the owner's own
process group no longer contains the server."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from reference.lifeline import Lifeline, preexec

LOG_TAIL = 2000
_LIVE: set[ManagedServer] = set()
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def with_threads(env: Mapping[str, str], threads: int) -> dict[str, str]:
    """`env` with every native thread pool sized to `threads`. A server inherits its
    starter's variables, and a suite worker's name the worker's CPUs (2), not the server's:
    setting only OMP_NUM_THREADS left MKL_NUM_THREADS=2 in every server's environment."""
    return {**env, **dict.fromkeys(THREAD_VARIABLES, str(threads))}


class ServerFailed(RuntimeError):
    """The server exited or did not become ready; the message carries its own log."""


def http_ok(url: str, headers: Mapping[str, str] | None = None, timeout_s: float = 1.0) -> bool:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


class ManagedServer:
    def __init__(self, name: str, command: Sequence[str], log_path: Path, ready: Callable[[], bool],
                 env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 stop_signal: int = signal.SIGTERM, fatal_log_lines: Sequence[str] = (),
                 cpus: set[int] | None = None) -> None:
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.ready = ready
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.fatal_log_lines = tuple(fatal_log_lines)  # log text meaning it will never become ready
        self.cpus = cpus  # the server and every process it starts run on these CPUs (None: anywhere)
        self.process: subprocess.Popen[bytes] | None = None
        self.lifeline: Lifeline | None = None
        self.exit_code: int | None = None

    def start(self, timeout_s: float = 60.0) -> float:
        """Start and wait until ready; returns seconds from process start to ready."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            started = time.perf_counter()
            cpus = self.cpus
            pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
            self.lifeline = Lifeline()
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            cwd=self.cwd, start_new_session=True,
                                            preexec_fn=preexec(pin, self.lifeline.announce))
        _LIVE.add(self)
        polls = 0
        while time.perf_counter() - started < timeout_s:
            polls += 1
            if self.process.poll() is not None:
                self.stop()
                raise ServerFailed(f"{self.name} exited with code {self.process.returncode} before it was "
                                   f"ready: {self.log_tail()}")
            if self.ready():
                return time.perf_counter() - started
            if polls % 10 == 0 and (fatal := self._fatal_line()) is not None:
                self.stop()
                raise ServerFailed(f"{self.name} failed while starting: {fatal}")
            time.sleep(0.05)
        self.stop()
        raise ServerFailed(f"{self.name} was not ready after {timeout_s:.0f}s: {self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """Signal the group, wait up to timeout_s for the server to exit, then kill the
        group (workers that ignored the signal included). Returns the server's exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self._signal_group(self.stop_signal)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # whatever the group left behind
        self.exit_code = self.process.wait()
        if self.lifeline is not None:
            self.lifeline.cut()
        _LIVE.discard(self)
        return self.exit_code

    def _signal_group(self, sig: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self) -> str:
        return self.log_text()[-LOG_TAIL:].strip()

    def _fatal_line(self) -> str | None:
        """The first log line that says the server will never become ready."""
        if not self.fatal_log_lines:
            return None
        return next((line.strip() for line in self.log_text().splitlines()
                     if any(marker in line for marker in self.fatal_log_lines)), None)

    def __enter__(self) -> ManagedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.stop(timeout_s=2.0)
