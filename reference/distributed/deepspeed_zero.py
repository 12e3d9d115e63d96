"""DeepSpeed ZeRO stages 0-3 and stage 2 with the optimizer offloaded to CPU, driven by a
real ds_config JSON (`ds_config.json` next to this file: AdamW, gradient accumulation,
zero_optimization).

Pitfalls handled here:
- Rendezvous: deepspeed.init_distributed() without RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT
  tries MPI discovery (and fails without mpi4py). We join the process group ourselves from
  the launcher's variables (torchrun and the deepspeed launcher both export them) and
  DeepSpeed adopts it.
- The deepspeed launcher appends `--local_rank=N`; the entry point accepts it (and the
  environment's LOCAL_RANK wins, as torchrun sets only that).
- `"torch_adam": true` makes stages 0-3 use torch.optim.AdamW, so they can be compared with
  single-process AdamW; the offload variant drops it, because ZeRO-Offload means
  DeepSpeedCPUAdam, a C++ op that is JIT-compiled on first use (30-60 s) and cached in
  ~/.cache/torch_extensions (TORCH_EXTENSIONS_DIR moves it).
- train_batch_size must equal micro batch x accumulation x world size; it is derived here
  from the launch rather than hard-coded in the JSON.

Run it: `deepspeed --num_gpus 2 reference/distributed/deepspeed_zero.py --stage stage2` (on a
CPU host with LOCAL_SIZE=2 exported, see launch.deepspeed_environment) or
`torchrun --nproc-per-node 2 -m reference.distributed.deepspeed_zero --stage stage3`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reference.distributed.data import Batching, rank_micro_batches
from reference.distributed.ddp import MicroBatches
from reference.distributed.memory import HeldBytes, held_bytes
from reference.distributed.runtime import DEFAULT_BACKEND, Session, mean_over_ranks, process_group
from reference.distributed.strategies import ModelFactory, Strategy
from reference.distributed.zero_stages import SHARDED, STAGES

DS_CONFIG = Path(__file__).with_name("ds_config.json")


def sharded_state_of(stage_name: str) -> frozenset[str]:
    if stage_name not in STAGES:
        raise ValueError(f"unknown ZeRO variant {stage_name!r}; choose from {', '.join(STAGES)}")
    return SHARDED[STAGES[stage_name][0]]


def load_config(path: Path = DS_CONFIG) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read ds_config {path}: {exc}") from None
    for key in ("optimizer", "zero_optimization", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if key not in config:
            raise ValueError(f"ds_config {path} has no {key!r}")
    if config["optimizer"].get("type", "").lower() != "adamw":
        raise ValueError(f"ds_config {path}: optimizer must be AdamW (the equivalence reference)")
    return config


def batching_of(config: dict[str, Any], world_size: int) -> Batching:
    return Batching(world_size=world_size, micro_batch=int(config["train_micro_batch_size_per_gpu"]),
                    accumulation=int(config["gradient_accumulation_steps"]))


def for_stage(config: dict[str, Any], stage_name: str, world_size: int) -> dict[str, Any]:
    """The config with this stage's zero_optimization and the batch size of this launch."""
    sharded_state_of(stage_name)  # validates the name
    stage, offload = STAGES[stage_name]
    resolved = copy.deepcopy(config)
    resolved["zero_optimization"]["stage"] = stage
    resolved["zero_optimization"].pop("offload_optimizer", None)
    if offload:
        resolved["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        resolved["optimizer"]["params"].pop("torch_adam", None)
    resolved["train_batch_size"] = batching_of(config, world_size).global_batch
    return resolved


def jit_cache() -> dict[str, Any]:
    """Where DeepSpeed's JIT-built ops live and which are built already (a cold cache puts
    a 30-60 s compile into the first set-up that needs one)."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    built = sorted({library.parent.name for library in root.glob("*/*/*.so")})
    return {"dir": str(root), "built": built}


class DeepSpeedStrategy(Strategy):
    """One DeepSpeed engine per ZeRO variant, over a process group we joined ourselves."""

    def __init__(self, session: Session, make_model: ModelFactory, config: dict[str, Any], *,
                 stage_name: str) -> None:
        super().__init__(session, make_model, config)
        import deepspeed

        self.config = for_stage(config, stage_name, session.world_size)  # validates stage_name
        self.name = f"deepspeed.{stage_name}"  # type: ignore[misc]
        self.shards = sharded_state_of(stage_name)  # type: ignore[misc]
        model = make_model().to(session.device)
        self.engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                                    config=self.config, dist_init_required=False)

    def train_step(self, micro_batches: MicroBatches) -> torch.Tensor:
        """The engine scales each micro-step's loss by 1/accumulation and steps the
        optimiser only at the accumulation boundary."""
        if len(micro_batches) != self.engine.gradient_accumulation_steps():
            raise ValueError(f"{len(micro_batches)} micro-batches for a config accumulating "
                             f"{self.engine.gradient_accumulation_steps()}")
        total = torch.zeros((), device=self.session.device)
        for x, y in micro_batches:
            loss = nn.functional.cross_entropy(self.engine(x), y)
            self.engine.backward(loss)
            self.engine.step()
            total += loss.detach() / len(micro_batches)
        return total

    def full_parameters(self) -> dict[str, torch.Tensor]:
        import deepspeed

        named = list(self.engine.module.named_parameters())
        with deepspeed.zero.GatheredParameters([p for _, p in named], enabled=self.config_stage == 3):
            return {n: p.detach().cpu().clone() for n, p in named}

    @property
    def config_stage(self) -> int:
        return int(self.config["zero_optimization"]["stage"])

    def held(self) -> HeldBytes:
        return held_bytes(self.engine.module, self.engine.basic_optimizer)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train with DeepSpeed ZeRO from a ds_config JSON.")
    parser.add_argument("--deepspeed_config", type=Path, default=DS_CONFIG)
    parser.add_argument("--stage", default="stage2", choices=sorted(STAGES))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--backend", default=None, help="default: gloo on cpu, nccl on cuda")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--model-size", default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None, help="rank 0 writes parameters.pt here")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="passed by the deepspeed launcher; LOCAL_RANK in the environment is used")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from reference.training.models import build

    args = parse_args(sys.argv[1:] if argv is None else argv)
    config = load_config(args.deepspeed_config)
    with process_group(args.backend or DEFAULT_BACKEND[args.device], args.device) as session:
        strategy = DeepSpeedStrategy(session, lambda: build("mlp", args.model_size, args.seed), config,
                                     stage_name=args.stage)
        batching = batching_of(config, session.world_size)
        losses = [mean_over_ranks(strategy.train_step(rank_micro_batches(step, batching, args.seed, session.rank,
                                                                          session.device)))
                  for step in range(args.steps)]
        parameters = strategy.full_parameters()
        if session.is_main and args.out_dir is not None:
            args.out_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"parameters": parameters, "losses": losses, "world_size": session.world_size},
                       args.out_dir / "parameters.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
