"""Automatic mixed precision: autocast, plus a GradScaler for fp16 only.

bf16 has fp32's exponent range, so its gradients do not underflow and it needs no loss
scaling; fp16 does. The device is always passed explicitly: `torch.amp.GradScaler()` with
no device means CUDA, and on a CPU host it silently disables itself.
"""

from __future__ import annotations

import torch
from torch import nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class AmpTrainer:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, *,  # type: ignore[no-untyped-def]
                 device_type: str, dtype: str) -> None:
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.device_type = device_type
        self.dtype = DTYPES[dtype]
        self.scaler = torch.amp.GradScaler(device_type) if self.dtype == torch.float16 else None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            loss = self.loss_fn(self.model(x), y)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)  # skipped when a gradient is inf/nan
            self.scaler.update()  # lowers the scale after a skipped step
        return loss.detach().float()
