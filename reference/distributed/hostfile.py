"""The DeepSpeed launcher driven by a hostfile, as on a cluster: one line per host with its
slots (processes), e.g.

    node1 slots=8
    node2 slots=8

`deepspeed --hostfile=hostfile train.py` then starts the ranks on every host (over pdsh/ssh
when there are several). With a single `localhost slots=N` line the launcher starts the N
ranks itself, but it still checks passwordless ssh to the host first, which a CI machine
does not have: `--no_ssh_check` skips only that check. On a CPU host DeepSpeed counts
"devices" from LOCAL_SIZE (see `launch.deepspeed_environment`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from reference.distributed import launch

LINE = re.compile(r"^\s*(\S+)\s+slots=(\d+)\s*$")


def write_hostfile(path: Path, slots: dict[str, int]) -> Path:
    if not slots or any(n < 1 for n in slots.values()):
        raise ValueError(f"every host needs at least one slot, got {slots}")
    path.write_text("".join(f"{host} slots={n}\n" for host, n in slots.items()))
    return path


def read_hostfile(path: Path) -> dict[str, int]:
    """What the launcher will read: host -> slots (comments and blank lines skipped)."""
    found: dict[str, int] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = LINE.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: expected '<host> slots=<n>', got {line!r}")
        found[match.group(1)] = int(match.group(2))
    return found


def deepspeed_hostfile_command(script: str, script_args: Sequence[str], hostfile: Path) -> list[str]:
    """Launch `script` on the hostfile's slots; rank 0's host is the master on loopback
    here (on a cluster: the first host's address, and drop --no_ssh_check)."""
    hosts = read_hostfile(hostfile)
    check = ["--no_ssh_check"] if list(hosts) == ["localhost"] else []
    return [sys.executable, "-m", "deepspeed.launcher.runner", f"--hostfile={hostfile}", *check,
            f"--master_addr={launch.LOOPBACK}", f"--master_port={launch.free_port()}", script, *script_args]
