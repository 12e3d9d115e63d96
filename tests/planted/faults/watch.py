"""Finding a test's processes: every process started for it carries a marker in its
environment (children inherit it), so none escapes the count, whatever its session."""

from __future__ import annotations

import os
from pathlib import Path


def processes_with(marker: str) -> dict[int, str]:
    """{pid: command line} of live processes (zombies excluded) whose environment holds `marker`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() not in (entry / "environ").read_bytes():
                continue
            if (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z":
                continue
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
    return found
