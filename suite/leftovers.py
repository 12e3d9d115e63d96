"""Temporary files a worker leaves behind, found and removed even after a `kill -9`.

Each worker runs in a job folder `<tmp>/mlsuite-job-<runner pid>-<random>` that its runner
made. The worker notes there every temporary file or folder it (or any technique it runs)
creates directly in the temp dir (`tempfile`'s creating functions are wrapped), so nothing
in the techniques has to cooperate. The runner removes what is noted when the worker ends; when
the runner itself was killed, the next run's start sweeps the job folders of dead runners.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

JOB_PREFIX = "mlsuite-job-"
LEDGER = "made.txt"


@contextmanager
def job_folder() -> Iterator[Path]:
    """A job folder whose name carries this (the runner's) pid, so a sweep can tell whose
    it is; on leaving, it goes with everything its worker noted."""
    folder = Path(tempfile.mkdtemp(prefix=f"{JOB_PREFIX}{os.getpid()}-"))
    try:
        yield folder
    finally:
        remove_noted(folder)
        shutil.rmtree(folder, ignore_errors=True)


def note_temporary_paths(ledger: Path) -> None:
    """From now on, append to `ledger` every path `tempfile` creates directly in the temp
    dir (one write per path, to a file opened for appending: it survives a SIGKILL).
    `tempfile`'s two creating functions are wrapped rather than watched with an audit hook:
    a hook runs on every audited event (`id()` included, ~0.5 us each), inside timed code too."""
    root = tempfile.gettempdir()
    handle = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def note(path: str | bytes) -> None:
        text = os.fsdecode(path)
        if os.path.dirname(text) == root:
            os.write(handle, f"{text}\n".encode())

    make_folder, make_file = tempfile.mkdtemp, tempfile._mkstemp_inner  # type: ignore[attr-defined]

    def mkdtemp(*args: Any, **kwargs: Any) -> Any:
        path = make_folder(*args, **kwargs)
        note(path)
        return path

    def mkstemp_inner(*args: Any, **kwargs: Any) -> Any:  # behind mkstemp, NamedTemporaryFile, TemporaryFile
        fd, path = make_file(*args, **kwargs)
        note(path)
        return fd, path

    tempfile.mkdtemp, tempfile._mkstemp_inner = mkdtemp, mkstemp_inner  # type: ignore[attr-defined]


def remove_noted(folder: Path) -> list[Path]:
    """Remove what the worker of job folder `folder` noted in the temp dir (the folder's
    parent, nothing else); returns what was still there."""
    ledger = folder / LEDGER
    if not ledger.exists():
        return []
    removed = []
    for line in ledger.read_text(errors="replace").splitlines():
        path = Path(line)
        if path.parent != folder.parent or not (path.exists() or path.is_symlink()):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead: it only waits for its parent to read its exit status
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def sweep(root: Path | None = None) -> list[Path]:
    """Remove the job folders (and what their workers noted) of runners that are dead;
    returns the paths removed. A live runner's folders are never touched."""
    root = Path(root or tempfile.gettempdir())
    removed: list[Path] = []
    for folder in sorted(root.glob(f"{JOB_PREFIX}*")):
        owner = folder.name[len(JOB_PREFIX):].split("-", 1)[0]
        if not owner.isdigit() or _alive(int(owner)) or not folder.is_dir():
            continue
        removed += remove_noted(folder)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
