"""A long-lived multi-process job that a launcher drives step by step, so the launching
process (a benchmark harness) owns the schedule while the ranks do the work.

The launcher starts torchrun as a subprocess in a session of its own and hosts a TCPStore
on a free loopback port; every rank connects to it, and on command `n` (key `cmd/<n>`)
all ranks perform the same operation, and rank 0 answers (key `reply/<n>`). Operations:

- `build`: build the job's strategies (timed: the set-up cost of each),
- `step`: run training steps of one strategy; each step starts at a barrier and its time is
  the slowest rank's, so a sample is the time the job took for that step,
- `train`: a fresh copy of a strategy trained N steps on the seeded global batches; rank 0
  saves the full parameters and the loss curve (for the equivalence checks),
- `memory`: the bytes each rank holds for a strategy,
- `ddp_train`: the DDP entry point (`ddp.train`) with a given config, inside this job,
- `stop`: leave the process group and exit.

A rank that fails answers with its traceback; a job that dies answers through a watcher
thread in the launcher, so a request never waits out its timeout for a dead job. The job
runs in a session of its own (so `close` can kill all of it), and its ranks exit by
themselves within a second of the launcher's death, even from a hung collective: a
launcher killed outright (a runner's timeout) takes its job down with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from reference.distributed import launch, strategies
from reference.distributed.data import Batching, rank_micro_batches
from reference.distributed.ddp import TrainConfig, train, write_result
from reference.distributed.deepspeed_zero import DS_CONFIG, batching_of, load_config
from reference.distributed.runtime import DEFAULT_BACKEND, Session, mean_over_ranks, process_group
from reference.training.models import build

TIMING_BATCHES = 4  # distinct pre-built step batches the timed steps cycle through
LOG_TAIL = 3000


@dataclass(frozen=True)
class JobSpec:
    strategies: tuple[str, ...]
    device: str = "cpu"
    backend: str | None = None  # default: gloo on cpu, nccl on cuda
    size: str = "tiny"  # of reference.training's MLP
    seed: int = 0
    ds_config: str = str(DS_CONFIG)
    threads_per_rank: int = 1

    @property
    def resolved_backend(self) -> str:
        return self.backend or DEFAULT_BACKEND[self.device]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        raw = json.loads(text)
        return cls(**{**raw, "strategies": tuple(raw["strategies"])})


# --------------------------------------------------------------------------- rank side

def _slowest(seconds: float, device: torch.device) -> float:
    """The largest of every rank's value (on the device: NCCL reduces only CUDA tensors)."""
    value = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value)


class RankHost:
    """What one rank keeps between commands: its session, its strategies, its batches."""

    def __init__(self, session: Session, spec: JobSpec) -> None:
        self.session, self.spec = session, spec
        self.config = load_config(Path(spec.ds_config))
        self.strategies: dict[str, strategies.Strategy] = {}
        self.batches: dict[tuple[str, int], list[Any]] = {}
        self.steps_taken: dict[str, int] = {}

    def _strategy(self, name: str) -> strategies.Strategy:
        if name not in self.strategies:
            raise ValueError(f"strategy {name!r} is not in this job ({', '.join(self.strategies)})")
        return self.strategies[name]

    def make_model(self) -> torch.nn.Module:
        return build("mlp", self.spec.size, self.spec.seed)

    def _sync(self) -> None:
        if self.session.device.type == "cuda":
            torch.cuda.synchronize()

    def build(self) -> dict[str, Any]:
        seconds = {}
        for name in self.spec.strategies:
            dist.barrier()
            start = time.perf_counter()
            self.strategies[name] = strategies.build(name, self.session, self.make_model, self.config)
            self._sync()
            seconds[name] = _slowest(time.perf_counter() - start, self.session.device)
        return {"setup_s": seconds}

    def _batching(self, micro_batch: int | None) -> Batching:
        base = batching_of(self.config, self.session.world_size)
        return dataclasses.replace(base, micro_batch=micro_batch or base.micro_batch)

    def step(self, strategy: str, count: int, micro_batch: int | None = None) -> dict[str, Any]:
        batching = self._batching(micro_batch)
        key = (strategy, batching.micro_batch)
        if key not in self.batches:
            self.batches[key] = [rank_micro_batches(i, batching, self.spec.seed, self.session.rank,
                                                    self.session.device) for i in range(TIMING_BATCHES)]
        target = self._strategy(strategy)
        times = []
        for _ in range(count):
            batch = self.batches[key][self.steps_taken.get(strategy, 0) % TIMING_BATCHES]
            self._sync()
            dist.barrier()
            start = time.perf_counter()
            target.train_step(batch)
            self._sync()
            times.append(_slowest(time.perf_counter() - start, self.session.device))
            self.steps_taken[strategy] = self.steps_taken.get(strategy, 0) + 1
        return {"seconds": times, "per_rank_batch": batching.per_rank, "global_batch": batching.global_batch}

    def train(self, strategy: str, steps: int, out: str, micro_batch: int | None = None) -> dict[str, Any]:
        fresh = strategies.build(strategy, self.session, self.make_model, self.config)
        batching = self._batching(micro_batch)
        losses = []
        for step in range(steps):
            losses.append(mean_over_ranks(fresh.train_step(
                rank_micro_batches(step, batching, self.spec.seed, self.session.rank, self.session.device))))
        parameters = fresh.full_parameters()
        if self.session.is_main:
            torch.save({"parameters": parameters, "losses": losses}, out)
        return {"path": out, "losses": losses, "global_batch": batching.global_batch}

    def memory(self, strategy: str) -> dict[str, Any]:
        held: list[Any] = [None] * self.session.world_size
        dist.all_gather_object(held, self._strategy(strategy).held().as_dict())
        return {"ranks": held}

    def ddp_train(self, config: dict[str, Any]) -> dict[str, Any]:
        result = train(self.session, TrainConfig(**config))
        write_result(result, config.get("out_dir"))
        dist.barrier()  # every rank's file is complete before rank 0 answers
        return {"optimizer_steps": result["optimizer_steps"]}

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command.pop("op")
        handlers: dict[str, Callable[..., dict[str, Any]]] = {
            "build": self.build, "step": self.step, "train": self.train, "memory": self.memory,
            "ddp_train": self.ddp_train}
        if op not in handlers:
            raise ValueError(f"unknown operation {op!r}")
        return handlers[op](**command)


def exit_with(launcher_pid: int, poll_s: float = 1.0) -> None:
    """Leave as soon as the launcher is gone, even from inside a hung collective (a daemon
    thread: os._exit does not wait for the main thread)."""

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            try:
                os.kill(launcher_pid, 0)
            except ProcessLookupError:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def serve(spec: JobSpec, control: str, idle_timeout_s: float) -> None:
    """One rank: join, then answer commands until `stop` (or until the launcher is gone)."""
    host, port = control.rsplit(":", 1)
    store = dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=idle_timeout_s))
    torch.set_num_threads(spec.threads_per_rank)
    init_begin = time.monotonic()
    with process_group(spec.resolved_backend, spec.device) as session:
        init_end = time.monotonic()
        stamps: list[Any] = [None] * session.world_size
        dist.all_gather_object(stamps, {"init_begin": init_begin, "init_end": init_end})
        if session.is_main:
            store.set("reply/0", json.dumps({"ranks": stamps, "world_size": session.world_size,
                                             "threads": torch.get_num_threads()}))
        rank_host = RankHost(session, spec)
        number = 0
        while True:
            number += 1
            command = json.loads(store.get(f"cmd/{number}"))
            if command["op"] == "stop":
                break
            try:
                reply = rank_host.handle(command)
            except Exception:  # noqa: BLE001 - the launcher gets the traceback, then the rank dies
                store.set(f"reply/{number}", json.dumps({"error": f"rank {session.rank}: {traceback.format_exc()}"}))
                raise
            if session.is_main:
                store.compare_set(f"reply/{number}", "", json.dumps(reply))  # never hide a peer's error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A rank of a job driven through a TCPStore.")
    parser.add_argument("--control", required=True, help="host:port of the launcher's TCPStore")
    parser.add_argument("--spec", required=True, help="JobSpec as JSON")
    parser.add_argument("--idle-timeout", type=float, default=3600.0)
    parser.add_argument("--launcher-pid", type=int, default=None, help="exit when this process is gone")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.launcher_pid is not None:
        exit_with(args.launcher_pid)
    serve(JobSpec.from_json(args.spec), args.control, args.idle_timeout)
    return 0


# ------------------------------------------------------------------------- launcher side

class JobFailed(RuntimeError):
    pass


class RankJob:
    """Launch the ranks with torchrun, then send them commands. Use as a context manager
    (or call close()): the job is stopped, and killed if it will not stop."""

    def __init__(self, spec: JobSpec, nproc: int, *, timeout_s: float = 600.0) -> None:
        self.spec, self.nproc, self.timeout_s = spec, nproc, timeout_s
        self.store = dist.TCPStore(launch.LOOPBACK, 0, None, True, timedelta(seconds=timeout_s),
                                   wait_for_workers=False)
        self.number = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="mlsuite-rankjob-", suffix=".log", delete=False)
        self.startup: dict[str, Any] = {}

    def start(self) -> dict[str, Any]:
        """Launch and wait until every rank has joined. Returns the start-up costs: launch
        (torchrun, interpreters, imports, up to each rank's rendezvous call; the slowest
        rank), rendezvous (from the last rank's arrival to the group being formed)."""
        target = ["-m", "reference.distributed.rankjob", "--control", f"{launch.LOOPBACK}:{self.store.port}",
                  "--spec", self.spec.to_json(), "--idle-timeout", str(self.timeout_s),
                  "--launcher-pid", str(os.getpid())]
        env = {**os.environ, "OMP_NUM_THREADS": str(self.spec.threads_per_rank)}
        began = time.monotonic()
        self.process = subprocess.Popen(launch.torchrun_command(target, self.nproc), stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True, env=env)
        threading.Thread(target=self._watch, daemon=True).start()
        hello = self._reply(0)
        stamps = hello["ranks"]
        last_arrival = max(s["init_begin"] for s in stamps)
        self.startup = {
            "launch_s": last_arrival - began,
            "rendezvous_s": max(s["init_end"] for s in stamps) - last_arrival,
            "world_size": hello["world_size"], "threads_per_rank": hello["threads"],
        }
        return self.startup

    def _watch(self) -> None:
        """Answer the pending request with the job's exit, so nobody waits for a dead job."""
        assert self.process is not None
        code = self.process.wait()
        message = json.dumps({"error": f"the job exited with code {code}: {self.log_tail()}"})
        pending = self.number
        for number in (pending, pending + 1):  # the request in flight, or one about to be sent
            self.store.compare_set(f"reply/{number}", "", message)

    def log_tail(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-LOG_TAIL:]

    def _reply(self, number: int) -> dict[str, Any]:
        key = f"reply/{number}"
        try:
            self.store.wait([key], timedelta(seconds=self.timeout_s))
        except dist.DistStoreError:
            raise JobFailed(f"no answer to command {number} in {self.timeout_s:.0f}s; "
                            f"log: {self.log_tail()}") from None
        reply = json.loads(self.store.get(key))
        if "error" in reply:
            raise JobFailed(reply["error"])
        return reply

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        if self.process is None or self.process.poll() is not None:
            raise JobFailed(f"the job is not running; log: {self.log_tail() if self.process else ''}")
        self.number += 1
        self.store.set(f"cmd/{self.number}", json.dumps({"op": op, **fields}))
        return self._reply(self.number)

    def close(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.number += 1
            self.store.set(f"cmd/{self.number}", json.dumps({"op": "stop"}))
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        launch.kill_group(self.process)
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)

    def __enter__(self) -> RankJob:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
