"""The DeepSpeed ZeRO variants this suite runs, as plain data (no torch, no deepspeed), so
scenario grids, the asv benchmarks and the DeepSpeed strategy all read the one table."""

from __future__ import annotations

STAGES: dict[str, tuple[int, bool]] = {  # name: (ZeRO stage, optimizer offloaded to CPU)
    "stage0": (0, False),
    "stage1": (1, False),
    "stage2": (2, False),
    "stage2_offload": (2, True),
    "stage3": (3, False),
}
SHARDED = {0: frozenset(), 1: frozenset({"optimizer_state"}), 2: frozenset({"optimizer_state"}),
           3: frozenset({"parameters", "optimizer_state"})}
