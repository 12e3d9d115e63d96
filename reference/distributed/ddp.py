"""DDP training entry point, in the shape of pytorch/examples: setup, objects, loop, main.

Launch with torchrun (`torchrun --nproc-per-node 2 -m reference.distributed.ddp --epochs 3`)
or from Python through `launch.spawn`. Backend and device are arguments. Every epoch calls
`sampler.set_epoch(epoch)` (without it every epoch repeats the first one's order); rank 0
alone writes a checkpoint after each epoch; `--resume-from` continues from one exactly;
with `--accumulation k` the first k-1 micro-steps run under `no_sync()`, so gradients are
all-reduced once per optimiser step instead of k times.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from reference.distributed import checkpoint, comm
from reference.distributed.data import classification_dataset
from reference.distributed.runtime import Session, mean_over_ranks, process_group
from reference.training.models import build

MicroBatches = list[tuple[torch.Tensor, torch.Tensor]]
SkipSync = Callable[[], AbstractContextManager[Any]]


@dataclass(frozen=True)
class TrainConfig:
    backend: str = "gloo"
    device: str = "cpu"
    size: str = "tiny"  # of reference.training's MLP, which the seeded data is shaped for
    dataset_size: int = 200
    micro_batch: int = 8  # per rank
    accumulation: int = 1  # micro-batches per optimiser step
    epochs: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    drop_last: bool = False
    use_no_sync: bool = True  # False all-reduces every micro-step: the baseline no_sync must equal
    checkpoint_dir: str | None = None
    resume_from: str | None = None
    out_dir: str | None = None  # each rank writes rank<r>.pt there


def accumulate_and_step(model: nn.Module, optimizer: torch.optim.Optimizer, micro_batches: MicroBatches,
                        skip_sync: SkipSync) -> torch.Tensor:
    """One optimiser step over micro-batches; every micro-step but the last runs (forward
    and backward) inside `skip_sync()`. Each micro-batch's mean loss is weighted by its
    share of the examples, so the step equals one step on their concatenation. Returns
    this rank's mean loss."""
    optimizer.zero_grad(set_to_none=True)
    examples = sum(len(x) for x, _ in micro_batches)
    total = torch.zeros((), device=micro_batches[0][0].device)
    for index, (x, y) in enumerate(micro_batches):
        boundary = index == len(micro_batches) - 1
        with nullcontext() if boundary else skip_sync():
            loss = nn.functional.cross_entropy(model(x), y) * (len(x) / examples)
            loss.backward()
        total += loss.detach()
    optimizer.step()
    return total


def grouped(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], size: int,
            device: torch.device) -> Iterator[MicroBatches]:
    """Consecutive micro-batches, `size` at a time (the epoch's last group may be shorter)."""
    group: MicroBatches = []
    for x, y in batches:
        group.append((x.to(device), y.to(device)))
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def make_sampler(config: TrainConfig, dataset_size: int, rank: int, world_size: int) -> DistributedSampler:
    """The sampler every rank builds alike; the single-process reference builds it too."""
    return DistributedSampler(range(dataset_size), num_replicas=world_size, rank=rank,  # type: ignore[arg-type]
                              shuffle=True, seed=config.seed, drop_last=config.drop_last)  # (it needs only len())


def train(session: Session, config: TrainConfig, *, comm_hook: Callable[..., Any] | None = None
          ) -> dict[str, Any]:
    """Train for config.epochs; returns what this rank saw (losses, the first step's
    gradients, final parameters, all-reduce counts). `comm_hook` replaces the counting
    all-reduce hook (tests plant broken ones)."""
    dataset = classification_dataset(config.dataset_size, config.seed)
    sampler = make_sampler(config, len(dataset), session.rank, session.world_size)
    loader = DataLoader(dataset, batch_size=config.micro_batch, sampler=sampler)
    model = build("mlp", config.size, config.seed).to(session.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start_epoch = 0
    if config.resume_from:
        start_epoch = checkpoint.load(Path(config.resume_from), model, optimizer, device=session.device,
                                      sampler_seed=config.seed, world_size=session.world_size)
    ddp_model = DistributedDataParallel(
        model, device_ids=[session.device.index] if session.device.type == "cuda" else None)
    counter = comm.AllReduceCounter()
    ddp_model.register_comm_hook(counter, comm_hook or comm.counting_allreduce_hook)
    skip_sync: SkipSync = ddp_model.no_sync if config.use_no_sync else nullcontext

    losses: list[float] = []
    first_gradients: dict[str, torch.Tensor] = {}
    micro_steps = 0
    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        for micro_batches in grouped(loader, config.accumulation, session.device):
            loss = accumulate_and_step(ddp_model, optimizer, micro_batches, skip_sync)
            losses.append(mean_over_ranks(loss))  # for the log only: the global mean loss of this step
            micro_steps += len(micro_batches)
            if not first_gradients:
                first_gradients = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters()
                                   if p.grad is not None}
        if config.checkpoint_dir:
            checkpoint.save(checkpoint.path_for(Path(config.checkpoint_dir), epoch + 1), ddp_model, optimizer,
                            next_epoch=epoch + 1, sampler_seed=config.seed, world_size=session.world_size,
                            is_main=session.is_main)
    return {
        "rank": session.rank, "world_size": session.world_size, "start_epoch": start_epoch,
        "losses": losses, "first_gradients": first_gradients,
        "parameters": {n: p.detach().cpu().clone() for n, p in model.named_parameters()},
        "optimizer_steps": len(losses), "micro_steps": micro_steps,
        "syncs": counter.syncs, "bucket_allreduces": counter.bucket_allreduces,
    }


def write_result(result: dict[str, Any], out_dir: str | None) -> None:
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        torch.save(result, Path(out_dir) / f"rank{result['rank']}.pt")


def run(config: TrainConfig) -> dict[str, Any]:
    """One rank's whole life: join, train, report, leave (on error too)."""
    with process_group(config.backend, config.device) as session:
        result = train(session, config)
        write_result(result, config.out_dir)
        return result


def parse_args(argv: list[str]) -> TrainConfig:
    """Every TrainConfig field is a flag (--micro-batch 8, --use-no-sync / --no-use-no-sync)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            kind = {"int": int, "float": float}.get(str(field.type), str)
            parser.add_argument(flag, type=kind, default=field.default)
    return TrainConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    run(parse_args(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
