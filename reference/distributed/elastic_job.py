"""Drive an elastic torchrun job from outside, as a cluster would: start one agent per node
(c10d rendezvous on loopback), kill a node in the middle of training, and collect what the
survivors did (events, final parameters, exit codes).

A node is an agent and its workers: torchrun starts workers in sessions of their own, so a
node is killed by SIGKILLing the agent's whole process tree at once (a machine losing power),
and every tree is killed on the way out whatever happens. Workers also exit by themselves
once their agent is gone (`rankjob.exit_with`).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from reference.distributed import elastic, launch
from reference.lifeline import preexec

ENTRY = "reference.distributed.elastic"
MONITOR_INTERVAL_S = 0.5
LAST_CALL_S = 2  # after the minimum number of nodes joined, wait this long for more
# A node that misses this many keep-alives, this far apart, is dropped from the rendezvous
# (torch's defaults, 5 s x 3, put 15 s of waiting into every restart after a node loss).
KEEP_ALIVE_S, KEEP_ALIVE_MISSES = 1, 3
LOG_TAIL = 3000


def agent_command(endpoint: str, rdzv_id: str, *, hosts_store: bool, nnodes: str = "1:2", max_restarts: int = 3,
                  nproc_per_node: int = 1, entry: str = ENTRY, entry_args: Sequence[str] = ()) -> list[str]:
    """One node's torchrun. `hosts_store` pins which node hosts the c10d store (on one host
    every agent could, and the first to bind would); on a cluster every node runs the same
    command with the endpoint of a node that outlives the others."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc-per-node={nproc_per_node}",
            f"--max-restarts={max_restarts}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={rdzv_id}", f"--rdzv-conf=is_host={int(hosts_store)},last_call_timeout={LAST_CALL_S},"
            f"keep_alive_interval={KEEP_ALIVE_S},keep_alive_max_attempt={KEEP_ALIVE_MISSES}",
            f"--local-addr={launch.LOOPBACK}", f"--monitor-interval={MONITOR_INTERVAL_S}", "-m", entry, *entry_args]


def entry_args(config: elastic.ElasticConfig, out: Path) -> list[str]:
    args = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            args += [flag, str(value)]
    return [*args, "--out", str(out)]


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process and every descendant at once, then reap it."""
    try:
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(tree, timeout=10)
    process.wait()


@dataclass
class ElasticRun:
    events: list[dict[str, Any]]
    returncodes: list[int | None]
    parameters: dict[str, Any]
    killed_at: float | None  # wall-clock time the node was killed
    steps_before_kill: int
    logs: list[str]

    def starts(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "start"]

    def restart_s(self) -> float | None:
        """From the kill to the first step finished after it (the job's downtime)."""
        if self.killed_at is None:
            return None
        after = [e["time"] for e in self.events if e["event"] == "step" and e["time"] > self.killed_at]
        return min(after) - self.killed_at if after else None


def _environment() -> dict[str, str]:
    # gloo between the workers over loopback; one thread per worker on a shared host
    return {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_elastic(config: elastic.ElasticConfig, workdir: Path, *, nodes: int = 2, kill_after_step: int | None = None,
                entry: str = ENTRY, timeout_s: float = 300.0, cwd: Path | None = None) -> ElasticRun:
    """Start `nodes` agents (node 0 hosts the store), optionally kill the last node once
    `kill_after_step` steps are done, wait for the survivors to finish."""
    if config.checkpoint_dir is None:
        raise ValueError("an elastic run needs a checkpoint_dir to resume from")
    directory = Path(config.checkpoint_dir)
    out = workdir / "parameters.pt"
    endpoint, rdzv_id = f"{launch.LOOPBACK}:{launch.free_port()}", f"mlsuite-{uuid.uuid4().hex[:8]}"
    logs = [workdir / f"node{i}.log" for i in range(nodes)]
    agents: list[subprocess.Popen[bytes]] = []
    killed_at, steps_before = None, 0
    deadline = time.monotonic() + timeout_s
    try:
        for index, log in enumerate(logs):
            with log.open("wb") as sink:
                agents.append(subprocess.Popen(
                    agent_command(endpoint, rdzv_id, hosts_store=index == 0, nnodes=f"1:{nodes}", entry=entry,
                                  entry_args=entry_args(config, out)),
                    stdout=sink, stderr=subprocess.STDOUT, env=_environment(), cwd=cwd, preexec_fn=preexec()))
        if kill_after_step is not None:
            while (steps_before := sum(e["event"] == "step" for e in elastic.read_events(directory))) < kill_after_step:
                if time.monotonic() > deadline or any(a.poll() is not None for a in agents):
                    raise RuntimeError(f"the job never reached step {kill_after_step}: {_tails(logs)}")
                time.sleep(0.05)
            killed_at = time.time()
            kill_tree(agents[-1])
        for agent in agents[: nodes - 1 if kill_after_step is not None else nodes]:
            agent.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the elastic job did not finish in {timeout_s:.0f}s: {_tails(logs)}") from None
    finally:
        for agent in agents:
            kill_tree(agent)
    import torch

    if not out.exists():
        raise RuntimeError(f"the elastic job wrote no parameters (exit codes {[a.returncode for a in agents]}): "
                           f"{_tails(logs)}")
    return ElasticRun(events=elastic.read_events(directory), returncodes=[a.returncode for a in agents],
                      parameters=torch.load(out, weights_only=True)["parameters"], killed_at=killed_at,
                      steps_before_kill=steps_before, logs=[log.read_text(errors="replace") for log in logs])


def _tails(logs: list[Path]) -> str:
    return " | ".join(f"{log.name}: {log.read_text(errors='replace')[-LOG_TAIL:]}" for log in logs if log.exists())
