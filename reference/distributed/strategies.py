"""Data-parallel training strategies behind one interface, so the same step, the same
equivalence check and the same memory count apply to each:

- `ddp`: DistributedDataParallel + AdamW (everything replicated),
- `torch.zero1`: DDP + ZeroRedundancyOptimizer (optimizer state sharded, ZeRO-1),
- `torch.fsdp2`: `fully_shard` per layer (parameters, gradients and state sharded, ZeRO-3-like),
- `deepspeed.stage0` .. `deepspeed.stage3`, `deepspeed.stage2_offload`: see deepspeed_zero.

Every strategy takes its AdamW settings and accumulation from the ds_config JSON, so all
of them train the same model the same way and only the parallelism differs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from reference.distributed.ddp import MicroBatches, accumulate_and_step
from reference.distributed.memory import HeldBytes, held_bytes
from reference.distributed.runtime import Session

ModelFactory = Callable[[], nn.Module]


class Strategy(ABC):
    """Owns a model and its optimiser on this rank."""

    name: ClassVar[str]
    shards: ClassVar[frozenset[str]] = frozenset()  # which of parameters/optimizer_state shrink with ranks

    def __init__(self, session: Session, make_model: ModelFactory, config: dict[str, Any]) -> None:
        self.session = session

    @abstractmethod
    def train_step(self, micro_batches: MicroBatches) -> torch.Tensor:
        """One optimiser step over this rank's micro-batches; returns this rank's mean loss."""

    @abstractmethod
    def full_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter, whole, on the CPU. A collective: every rank must call it."""

    @abstractmethod
    def held(self) -> HeldBytes:
        """What this rank holds right now (call after a step, once optimiser state exists)."""


def adamw_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The AdamW hyperparameters of a ds_config, as torch.optim.AdamW takes them."""
    params = config["optimizer"]["params"]
    return {"lr": params["lr"], "betas": tuple(params["betas"]), "eps": params["eps"],
            "weight_decay": params["weight_decay"]}


def _device_ids(session: Session) -> list[int] | None:
    return [session.device.index] if session.device.type == "cuda" else None


class DDPStrategy(Strategy):
    name = "ddp"

    def __init__(self, session: Session, make_model: ModelFactory, config: dict[str, Any]) -> None:
        super().__init__(session, make_model, config)
        self.module = make_model().to(session.device)
        self.model = DistributedDataParallel(self.module, device_ids=_device_ids(session))
        self.optimizer = self.make_optimizer(config)

    def make_optimizer(self, config: dict[str, Any]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.module.parameters(), **adamw_settings(config))

    def train_step(self, micro_batches: MicroBatches) -> torch.Tensor:
        return accumulate_and_step(self.model, self.optimizer, micro_batches, self.model.no_sync)

    def full_parameters(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.module.named_parameters()}

    def held(self) -> HeldBytes:
        return held_bytes(self.module, self.optimizer)


class ZeroTorchStrategy(DDPStrategy):
    """ZeRO-1 without DeepSpeed: each rank keeps AdamW state for its shard of the
    parameters, updates that shard, and broadcasts it after the step."""

    name = "torch.zero1"
    shards = frozenset({"optimizer_state"})

    def make_optimizer(self, config: dict[str, Any]) -> torch.optim.Optimizer:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(self.module.parameters(), optimizer_class=torch.optim.AdamW,
                                       **adamw_settings(config))

    def held(self) -> HeldBytes:
        return held_bytes(self.module, self.optimizer.optim)  # type: ignore[attr-defined]  # this rank's shard


class FSDP2Strategy(Strategy):
    """`fully_shard` on every Linear layer, then on the root: each rank keeps a dim-0 shard
    of every parameter (a DTensor), all-gathers a layer for its forward and backward, and
    reduce-scatters its gradients. Accumulation turns gradient sync off until the last
    micro-step (FSDP2's counterpart of no_sync)."""

    name = "torch.fsdp2"
    shards = frozenset({"parameters", "optimizer_state"})

    def __init__(self, session: Session, make_model: ModelFactory, config: dict[str, Any]) -> None:
        super().__init__(session, make_model, config)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(session.device.type, (session.world_size,))
        self.model = make_model().to(session.device)
        for layer in self.model.modules():
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.model, mesh=mesh)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), **adamw_settings(config))

    @contextmanager
    def _without_gradient_sync(self) -> Iterator[None]:
        self.model.set_requires_gradient_sync(False)  # type: ignore[operator]
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)  # type: ignore[operator]

    def train_step(self, micro_batches: MicroBatches) -> torch.Tensor:
        return accumulate_and_step(self.model, self.optimizer, micro_batches, self._without_gradient_sync)

    def full_parameters(self) -> dict[str, torch.Tensor]:
        return {n: p.full_tensor().detach().cpu().clone()  # type: ignore[attr-defined]  # DTensor parameters
                for n, p in self.model.named_parameters()}

    def held(self) -> HeldBytes:
        return held_bytes(self.model, self.optimizer)


TORCH_STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (DDPStrategy, ZeroTorchStrategy, FSDP2Strategy)
}


def sharded_state(name: str) -> frozenset[str]:
    """Which bytes a strategy claims to shard across ranks, without building it."""
    if name in TORCH_STRATEGIES:
        return TORCH_STRATEGIES[name].shards
    if name.startswith("deepspeed."):
        from reference.distributed.deepspeed_zero import sharded_state_of

        return sharded_state_of(name.removeprefix("deepspeed."))
    raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(names())}")


def names() -> list[str]:
    from reference.distributed.zero_stages import STAGES

    return [*TORCH_STRATEGIES, *(f"deepspeed.{stage}" for stage in STAGES)]


def build(name: str, session: Session, make_model: ModelFactory, config: dict[str, Any]) -> Strategy:
    """`config` is a ds_config dict (see deepspeed_zero.load_config); DeepSpeed is imported
    only when a deepspeed strategy is asked for."""
    if name in TORCH_STRATEGIES:
        return TORCH_STRATEGIES[name](session, make_model, config)
    if name.startswith("deepspeed."):
        from reference.distributed.deepspeed_zero import DeepSpeedStrategy

        return DeepSpeedStrategy(session, make_model, config, stage_name=name.removeprefix("deepspeed."))
    raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(names())}")

