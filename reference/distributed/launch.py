"""Starting ranks: torchrun (one node or several), the deepspeed launcher, and
`torch.multiprocessing.spawn`, on loopback ports chosen at run time.

As a command, this module is the multi-node launcher: it turns --nnodes/--node-rank/
--rdzv-endpoint into a torchrun invocation and runs it. Two invocations on one machine
(`--node-rank 0` and `--node-rank 1`, same endpoint) act as two nodes:

    python -m reference.distributed.launch --nnodes 2 --node-rank 0 \
        --rdzv-endpoint 127.0.0.1:29400 --nproc-per-node 1 -m reference.distributed.ddp -- --epochs 2
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from reference.lifeline import Lifeline, preexec
from reference.ports import LOOPBACK, free_port


@dataclass(frozen=True)
class Nodes:
    """Where this invocation sits in a multi-node job. `static` rendezvous honours
    node_rank (node 0 hosts the store at the endpoint); `c10d` assigns ranks by arrival
    and tolerates nodes joining late."""

    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None  # host:port; None only for one node (torchrun --standalone)
    rdzv_backend: str = "static"
    rdzv_id: str = "mlsuite"

    def __post_init__(self) -> None:
        if self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node rank {self.node_rank} is outside 0..{self.nnodes - 1}")
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError("a multi-node job needs --rdzv-endpoint host:port shared by every node")
        if self.rdzv_backend not in ("static", "c10d"):
            raise ValueError(f"unknown rendezvous backend {self.rdzv_backend!r}; choose static or c10d")


def torchrun_command(target: Sequence[str], nproc_per_node: int, nodes: Nodes = Nodes()) -> list[str]:
    """`target` is `["-m", "package.module", args...]` or `["script.py", args...]`. One node
    without an endpoint runs `--standalone`: torchrun binds its rendezvous store to a port
    the OS picks, so no other process can take the port between choosing and binding it."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}",
                "--max-restarts=0"]
    if nodes.nnodes == 1 and nodes.rdzv_endpoint is None:
        return [*torchrun, "--standalone", *target]
    return [*torchrun, f"--nnodes={nodes.nnodes}", f"--node-rank={nodes.node_rank}",
            f"--rdzv-backend={nodes.rdzv_backend}", f"--rdzv-endpoint={nodes.rdzv_endpoint}",
            f"--rdzv-id={nodes.rdzv_id}", *target]


def deepspeed_command(script: str, script_args: Sequence[str], nproc: int) -> list[str]:
    """The deepspeed launcher on this host. It passes `--local_rank=N` to the script (which
    must accept it) and exports RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT. On a CPU host its
    accelerator count is LOCAL_SIZE (else the NUMA node count), so set that in the
    environment to nproc (`deepspeed_environment`)."""
    return [sys.executable, "-m", "deepspeed.launcher.runner", f"--num_gpus={nproc}",
            f"--master_addr={LOOPBACK}", f"--master_port={free_port()}", script, *script_args]


def deepspeed_environment(nproc: int, device: str) -> dict[str, str]:
    env = dict(os.environ)
    if device == "cpu":
        env["LOCAL_SIZE"] = str(nproc)
    return env


class LaunchFailed(subprocess.CalledProcessError):
    """A launcher that exited non-zero. Its message ends with the last lines the ranks
    printed, so a failed record or CI log says why, not only the exit status (the deepspeed
    launcher exits 250 when a rank aborts: -6 as an exit status)."""

    TAIL_LINES = 30

    def __str__(self) -> str:
        tail = "\n".join((self.output or "").splitlines()[-self.TAIL_LINES:])
        return f"{super().__str__()} Its last lines:\n{tail}" if tail else super().__str__()


def run_command(command: Sequence[str], timeout_s: float, env: dict[str, str] | None = None,
                capture: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a launcher in a session of its own; on timeout kill the whole group, so no rank
    outlives it, nor outlives this process if it is killed (`reference.lifeline`). Raises
    LaunchFailed (with the output, when captured) if it fails."""
    stream = subprocess.PIPE if capture else None
    lifeline = Lifeline()
    process = subprocess.Popen(list(command), stdout=stream, stderr=subprocess.STDOUT if capture else None,
                               text=True, start_new_session=True, env=env, preexec_fn=preexec(lifeline.announce))
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(process)
        output, _ = process.communicate()
        raise subprocess.TimeoutExpired(command, timeout_s, output=output) from None
    except BaseException:
        kill_group(process)
        raise
    finally:
        lifeline.cut()  # the ranks that outlived torchrun, if any, go now
    if process.returncode != 0:
        raise LaunchFailed(process.returncode, command, output=output)
    return subprocess.CompletedProcess(command, 0, stdout=output)


def kill_group(process: subprocess.Popen[Any]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _spawned(local_rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR=LOOPBACK, MASTER_PORT=str(port))
    fn(*args)


def spawn(fn: Callable[..., Any], nprocs: int, *args: Any) -> None:
    """Run fn(*args) in nprocs fresh processes with the variables torchrun would export,
    so the same entry point (`ddp.run`, say) serves both launchers. fn must be importable
    by name (a module-level function). Raises if any rank raises."""
    import torch.multiprocessing as mp

    mp.spawn(_spawned, args=(nprocs, free_port(), fn, args), nprocs=nprocs, join=True)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description="Launch a training entry point on this node of a job.")
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--rdzv-endpoint", default=None, help="host:port every node can reach")
    parser.add_argument("--rdzv-backend", default="static", choices=("static", "c10d"))
    parser.add_argument("--rdzv-id", default="mlsuite")
    parser.add_argument("--nproc-per-node", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3600.0, help="kill the node's ranks after this")
    parser.add_argument("-m", dest="module", required=True, help="the entry point module")
    items = list(argv)  # launcher flags before `--`, the entry point's flags after it
    split = items.index("--") if "--" in items else len(items)
    return parser.parse_args(items[:split]), items[split + 1:]


def main(argv: Sequence[str] | None = None) -> int:
    args, entry_args = parse_args(sys.argv[1:] if argv is None else argv)
    nodes = Nodes(nnodes=args.nnodes, node_rank=args.node_rank, rdzv_endpoint=args.rdzv_endpoint,
                  rdzv_backend=args.rdzv_backend, rdzv_id=args.rdzv_id)
    command = torchrun_command(["-m", args.module, *entry_args], args.nproc_per_node, nodes)
    try:
        run_command(command, args.timeout, capture=False)
    except subprocess.CalledProcessError as exc:
        return exc.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
