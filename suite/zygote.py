"""One process under Valgrind that pays a counted worker's start-up once per session and
forks a worker for every counted run.

Under Valgrind a counted worker spent most of its life starting: importing torch took 15 s
(Valgrind reads the symbols of the 434 MB libtorch_cpu.so, then runs its relocations), the
first optimizer step's import of torch._dynamo 9 s more, the harness's own imports a few.
The zygote does that once; each run is a fork of it, which inherits the imports and the
code Valgrind has already translated, and starts from the same state every time: forks of
one replicate (the same layout shift, `instructions.shift_layout`) count the same.

Runner side: `started(root, env)` starts it; `fork(job, result, log)` returns a
`ForkedWorker`, which waits and polls like a `subprocess.Popen`. Zygote side: `python -m
suite.zygote RUNNER_PID REQUESTS_FD` forks a child for every byte on its stdin; the child
takes one JSON request from the requests pipe, forks the worker, answers with its pid on
stdout, and writes its exit status beside its result (`exit`).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path
from typing import NoReturn

from reference.lifeline import Lifeline, die_with_parent

# Imported before the first fork, where installed: the imports a counted worker pays most
# for under Valgrind. Anything else a scenario imports, its worker imports itself.
PRELOAD = ("suite.worker", "torch", "torch._dynamo")
EXIT_NAME = "exit"  # the file beside a worker's result that holds its exit status
POLL_S = 0.2
# How long its imports may take under Valgrind (~25 s on an idle host; a niced worker under
# load was seen to need several times its native share), and a fork once it has them.
READY_TIMEOUT_S = 900.0
FORK_TIMEOUT_S = 120.0
READY = b"ready"


class ForkedWorker:
    """A worker forked by the zygote, in a session of its own (its pid is its group):
    `poll`, `wait` and `returncode` as a `Popen` has them (a signal's death is -signum)."""

    def __init__(self, pid: int, exit_file: Path, zygote: subprocess.Popen[bytes]) -> None:
        self.pid, self._exit_file, self._zygote = pid, exit_file, zygote
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            if self._exit_file.exists():
                self.returncode = int(self._exit_file.read_text())
            elif self._zygote.poll() is not None:
                self.returncode = -signal.SIGKILL  # its parent died, so did it (a parent-death signal)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            time.sleep(POLL_S)
        return code


class Zygote:
    """The zygote of one session's counted runs (one code tree: `root`), under callgrind,
    its workers' dumps written to `folder` named by their pids. Dies with this process."""

    def __init__(self, root: Path, env: dict[str, str], folder: Path) -> None:
        from suite import instructions

        self.folder = folder
        self.log = folder / "zygote.log"
        read, self._requests = os.pipe()
        command = instructions.valgrind_command(
            [sys.executable, "-m", "suite.zygote", str(os.getpid()), str(read)],
            folder / f"{instructions.OUT_NAME}.%p")
        self._lifeline = Lifeline()
        try:
            with self.log.open("w") as log:
                self.process = subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, pass_fds=(read,),
                    start_new_session=True, env=env, cwd=root, preexec_fn=self._lifeline.announce)
        except BaseException:
            self._lifeline.cut()
            os.close(self._requests)
            raise
        finally:
            os.close(read)

    def _answer(self, timeout_s: float, waiting_for: str) -> bytes:
        """Its next line on stdout, or SuiteError (with its log) if none comes in time."""
        from suite.errors import SuiteError

        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        answer = self.process.stdout.readline().strip() if ready else b""
        if not answer:
            tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            raise SuiteError(f"the counting zygote did not {waiting_for} within {timeout_s:.0f} s: {tail}")
        return answer

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until it has its imports (tens of seconds under Valgrind)."""
        from suite.errors import SuiteError

        if (said := self._answer(timeout_s, "import what it preloads")) != READY:
            raise SuiteError(f"the counting zygote said {said[:80]!r} instead of being ready")

    def fork(self, job: Path, result: Path, log: Path) -> ForkedWorker:
        """A worker for `job`, in a session of its own, out of the zygote's group: its
        caller ties it to itself (`Lifeline.watch`)."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(b"f")  # fork one
            self.process.stdin.flush()
            # Its child takes this request; the next is put in only once it has answered.
            os.write(self._requests, json.dumps({"job": str(job), "result": str(result), "log": str(log)}).encode())
        except BrokenPipeError:
            pass  # it died: no answer comes
        return ForkedWorker(int(self._answer(FORK_TIMEOUT_S, "fork a worker")), result.with_name(EXIT_NAME),
                            self.process)

    def stop(self) -> None:
        """Close its requests (it exits at end of input) and kill what is left."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self._lifeline.cut()  # kills what is left of its group
        self.process.wait()
        os.close(self._requests)


@contextmanager
def started(root: Path, env: dict[str, str]) -> Iterator[Zygote]:
    """A zygote for the code in `root`, stopped on leaving, with its folder."""
    from suite import leftovers

    with leftovers.job_folder() as folder:
        zygote = Zygote(root, env, folder)
        try:
            zygote.wait_ready()
            yield zygote
        finally:
            zygote.stop()


def _preload() -> None:
    import gc
    import importlib

    for name in PRELOAD:
        if find_spec(name.split(".")[0]) is not None:
            importlib.import_module(name)
    gc.collect()


def _worker(request: dict[str, str], parent: int) -> NoReturn:
    """The forked worker: its own session and log, then the worker's main."""
    code = 1
    try:
        os.setsid()
        die_with_parent()
        if os.getppid() != parent:
            os._exit(code)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        from suite import worker

        code = worker.main([request["job"], request["result"]])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - reported in the worker's log, like a crash
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve_one(requests: int, answers: int) -> NoReturn:
    """A child of the zygote: takes the one request the runner has put in the pipe, forks
    the worker, tells the runner its pid, waits for it and writes its exit status."""
    code = 1
    try:
        die_with_parent()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        request = json.loads(os.read(requests, 65536))
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            _worker(request, me)
        os.write(answers, f"{pid}\n".encode())
        status = os.waitpid(pid, 0)[1]
        exit_file = Path(request["result"]).with_name(EXIT_NAME)
        partial = exit_file.with_suffix(".tmp")
        partial.write_text(str(os.waitstatus_to_exitcode(status)))
        partial.replace(exit_file)
        code = 0
    finally:
        os._exit(code)


def main(argv: list[str]) -> int:
    """Fork a child per byte on stdin, and do nothing else between forks: whatever the
    zygote did between two forks (parsing a request, reaping a child) would leave its heap
    unlike the last fork's, and counts of MLP steps forked that way drifted by 0.06% from
    one fork to the next. Its children reap themselves (SIGCHLD ignored)."""
    die_with_parent()
    runner, requests = int(argv[0]), int(argv[1])
    if os.getppid() != runner:
        return 1  # the runner is already gone
    answers = os.dup(1)  # the pids go here; whatever an import prints goes to the log
    os.dup2(2, 1)
    _preload()
    os.write(answers, READY + b"\n")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while os.read(0, 1):
        if os.fork() == 0:
            _serve_one(requests, answers)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
