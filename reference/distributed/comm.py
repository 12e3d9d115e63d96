"""A DDP communication hook that counts gradient all-reduces, then performs the default one.

`syncs` counts backward passes that communicated (the hook sees a bucket flagged `is_last()`
once per synchronising backward); `bucket_allreduces` counts every bucket. With `no_sync`
on the non-boundary micro-steps of k-step accumulation, syncs == optimiser steps.
"""

# No `from __future__ import annotations` here: DDP checks the hook's annotations at run time.
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks


@dataclass
class AllReduceCounter:
    process_group: dist.ProcessGroup | None = None
    syncs: int = 0
    bucket_allreduces: int = 0


def counting_allreduce_hook(state: AllReduceCounter,
                            bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    state.bucket_allreduces += 1
    if bucket.is_last():
        state.syncs += 1
    return default_hooks.allreduce_hook(state.process_group, bucket)  # type: ignore[arg-type]  # None: default group
