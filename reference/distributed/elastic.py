"""Elastic training: torchrun with c10d rendezvous, a node lost mid-training, the job
restarted from the last rank-0 checkpoint on the nodes that remain.

    torchrun --nnodes=1:2 --nproc-per-node=1 --max-restarts=3 --rdzv-backend=c10d \\
        --rdzv-endpoint=HOST:29400 --rdzv-id=job1 -m reference.distributed.elastic -- --checkpoint-dir /shared/ckpt

on each node (the endpoint's node hosts the rendezvous store, so it must be the one that
survives; etcd removes that single point of failure). When a node dies its peers' collective
fails, each surviving agent restarts its workers, the rendezvous closes with the nodes that
are left, and every worker resumes from the newest checkpoint.

Resuming on fewer nodes gives the same parameters as an uninterrupted run because a step's
global batch is a function of (seed, step) only: each of W ranks takes 1/W of it and DDP
averages the gradients, so W changes the summation order (fp32 rounding), not the update.
(`checkpoint.py` pins the world size instead, because a DistributedSampler's shards depend
on it.) Rank 0 writes `events.jsonl` next to the checkpoints: every (re)start and every
step, with wall-clock times, so a restart's cost can be measured from outside.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from reference.distributed.data import Batching, rank_micro_batches
from reference.distributed.rankjob import exit_with
from reference.distributed.runtime import process_group
from reference.training.models import build

CHECKPOINT = "latest.pt"
EVENTS = "events.jsonl"
COLLECTIVE_TIMEOUT_S = 60.0  # a peer that vanished without closing its sockets fails a step within this


@dataclass(frozen=True)
class ElasticConfig:
    steps: int = 30
    global_batch: int = 32  # divisible by every world size the job may run at
    size: str = "tiny"
    seed: int = 0
    lr: float = 1e-2
    step_sleep_s: float = 0.0  # per step: gives a test time to kill a node mid-training
    checkpoint_dir: str | None = None
    save_optimizer: bool = True  # resuming without the AdamW moments diverges (see the tests)


def global_batching(config: ElasticConfig, world_size: int) -> Batching:
    if config.global_batch % world_size:
        raise ValueError(f"global batch {config.global_batch} is not divisible by world size {world_size}")
    return Batching(world_size=world_size, micro_batch=config.global_batch // world_size, accumulation=1)


def save_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, next_step: int,
                    with_optimizer: bool = True) -> None:
    """Rank 0 only; written to a temporary name and renamed, so a kill never leaves half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "next_step": next_step,
             "optimizer": optimizer.state_dict() if with_optimizer else None}
    partial = directory / (CHECKPOINT + ".partial")
    torch.save(state, partial)
    os.replace(partial, directory / CHECKPOINT)


def load_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore in place; the step to continue from (0 without a checkpoint)."""
    path = directory / CHECKPOINT
    if not path.exists():
        return 0
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    if state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    return int(state["next_step"])


def record(directory: Path | None, **event: Any) -> None:
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / EVENTS).open("a") as log:
            log.write(json.dumps({"time": time.time(), **event}) + "\n")


def read_events(directory: Path) -> list[dict[str, Any]]:
    path = directory / EVENTS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def train(config: ElasticConfig, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
    """Train to `config.steps`, resuming from the checkpoint if there is one. Inside a
    process group the model is wrapped in DDP; without one this is the single-process run
    every elastic run must equal."""
    model = build("mlp", config.size, config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    directory = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    start = load_checkpoint(directory, model, optimizer) if directory else 0
    main = rank == 0
    log_to = directory if main else None
    record(log_to, event="start", from_step=start, world_size=world_size,
           restart=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)))
    wrapped = DistributedDataParallel(model) if dist.is_initialized() else model
    batching = global_batching(config, world_size)
    for step in range(start, config.steps):
        [(x, y)] = rank_micro_batches(step, batching, config.seed, rank, torch.device("cpu"))
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(wrapped(x), y).backward()
        optimizer.step()
        if main and directory:
            save_checkpoint(directory, model, optimizer, step + 1, config.save_optimizer)
        if dist.is_initialized():
            dist.barrier()  # nobody runs ahead of the checkpoint it would resume from
        record(log_to, event="step", step=step, world_size=world_size)
        time.sleep(config.step_sleep_s)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def parse_args(argv: list[str]) -> tuple[ElasticConfig, Path | None]:
    defaults = ElasticConfig()
    parser = argparse.ArgumentParser(description="Elastic DDP training that resumes from rank 0's checkpoint.")
    for field in dataclasses.fields(ElasticConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=getattr(defaults, field.name))
        else:
            kind = {"int": int, "float": float}.get(str(field.type), str)
            parser.add_argument(flag, type=kind, default=getattr(defaults, field.name))
    parser.add_argument("--out", type=Path, default=None, help="rank 0 saves the final parameters here")
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    return ElasticConfig(**args), out


def main(argv: list[str] | None = None) -> int:
    config, out = parse_args(sys.argv[1:] if argv is None else argv)
    exit_with(os.getppid())  # torchrun starts workers in their own session: leave with the agent
    with process_group("gloo", "cpu", timeout_s=COLLECTIVE_TIMEOUT_S) as session:
        torch.set_num_threads(1)
        parameters = train(config, session.rank, session.world_size)
        if session.is_main and out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"parameters": parameters, "world_size": session.world_size}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
