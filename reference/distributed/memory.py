"""Bytes a rank actually holds, counted from the tensors it keeps, not estimated from
parameter counts.

A sharded tensor counts only its local shard: a DTensor (FSDP2) its `to_local()`, a
DeepSpeed ZeRO-3 parameter its `ds_tensor` partition (the module's own tensor is empty
between steps). Optimizer state is what the torch optimizer doing the update keeps in
`.state` (Adam's moments and step). Master weights are parameter copies the optimizer
updates that are not the module's parameters (DeepSpeed ZeRO keeps fp32 partitions even
when the model is fp32).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class HeldBytes:
    parameters: int
    optimizer_state: int
    master_weights: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The part of a possibly sharded tensor that lives on this rank."""
    partition = getattr(tensor, "ds_tensor", None)
    if partition is not None:
        return partition
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(local.numel() * local.element_size() for local in map(local_tensor, tensors))


def parameter_bytes(module: nn.Module) -> int:
    return tensor_bytes(module.parameters())


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return tensor_bytes(value for state in optimizer.state.values() for value in state.values()
                        if isinstance(value, torch.Tensor))


def master_weight_bytes(optimizer: torch.optim.Optimizer, module: nn.Module) -> int:
    """Bytes of the tensors the optimizer updates that do not share storage with the
    module's parameters (or their ZeRO-3 partitions)."""
    module_storages = {local_tensor(p).untyped_storage().data_ptr() for p in module.parameters()}
    owned = [p for group in optimizer.param_groups for p in group["params"]
             if local_tensor(p).untyped_storage().data_ptr() not in module_storages]
    return tensor_bytes(owned)


def held_bytes(module: nn.Module, optimizer: torch.optim.Optimizer) -> HeldBytes:
    """`optimizer` is the torch optimizer that performs the update on this rank."""
    return HeldBytes(parameters=parameter_bytes(module), optimizer_state=optimizer_state_bytes(optimizer),
                     master_weights=master_weight_bytes(optimizer, module))
