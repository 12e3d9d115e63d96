"""Processes that die with the process that started them, however it dies.

A server or launcher started in a session of its own (so that stopping it can signal its
whole process group) is out of reach of whoever kills its owner's group, and a SIGKILL
runs no cleanup. Two mechanisms close that gap without any code running in the owner:

- `die_with_parent` (a `preexec_fn`): the kernel sends the child SIGKILL when the thread
  that forked it exits (Linux `PR_SET_PDEATHSIG`);
- `Lifeline`: a tiny watcher process holds the read end of a pipe whose only write end
  is the owner's; when the owner dies the kernel closes it, the watcher reads EOF and
  kills the whole group (Java workers, Triton stubs, torchrun ranks included). It is
  made before the child, which names its group down the pipe before it execs: there is
  no moment when the child runs and nothing watches it (a worker killed right after
  starting a server once left the server's own children behind that way).

Standard library only, so a user can copy it along with the module that needs it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
WATCHER = """
import os, signal, sys
fd, said = int(sys.argv[1]), b""
while chunk := os.read(fd, 64):
    said += chunk
for group in said.split():
    try:
        os.killpg(int(group), signal.SIGKILL)
    except ProcessLookupError:
        pass
"""


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> None:
    """Ask a process to stop with `sig` (its own clean shutdown), kill it if it has not
    within `timeout_s`, and reap it."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent thread exits. For use as a
    `preexec_fn` (cheap: one system call) or at the start of a child's own main()."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def unwind_on_sigterm() -> None:
    """SIGTERM (a CI cancel, `timeout`) unwinds this process like Ctrl-C, so its `finally`
    blocks and context managers stop what it started."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def preexec(*steps: Callable[[], None] | None) -> Callable[[], None] | None:
    """A `preexec_fn` that ties the child to this process, then runs each step given. The
    tie only from the main thread: the death signal follows the forking *thread*, so a
    child started from a worker thread would die when that thread ends."""
    wanted = [step for step in steps if step is not None]
    if threading.current_thread() is threading.main_thread():
        wanted.insert(0, die_with_parent)
    if not wanted:
        return None

    def prepare() -> None:
        for step in wanted:
            step()

    return prepare


class Lifeline:
    """Kill the process group of a child started in a session of its own when this process
    dies. Make it before starting the child and run `announce` in the child (a preexec_fn
    step); `cut()` after stopping the group lets the watcher go."""

    def __init__(self) -> None:
        read, self._write = os.pipe()  # both ends close-on-exec: no other child keeps them past exec
        try:
            self.watcher = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", WATCHER, str(read)], pass_fds=(read,),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
        finally:
            os.close(read)

    def announce(self) -> None:
        """In the child, between fork and exec, after it made its own session: its group
        is its pid. The write end closes at exec, so the owner's stays the only one."""
        self.watch(os.getpid())

    def watch(self, group: int) -> None:
        """Kill group `group` too when this process dies (one another process started)."""
        os.write(self._write, f"{group} ".encode())

    def cut(self) -> None:
        """Close this end: the watcher kills whatever is left of the group and exits."""
        if self._write >= 0:
            os.close(self._write)
            self._write = -1
            self.watcher.wait()
