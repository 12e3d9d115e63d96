"""Conformance checks for distributed training, as `Check`s the harness records.

Each check compares what the ranks did with a single-process run on the same global
batch, or states a property (shards disjoint, one all-reduce per optimiser step, bytes held
shrinking with the world size). Tolerances are relative errors (max|x - ref| / max|ref|);
`0.0` means bit-for-bit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from reference.distributed.data import Batching, classification_dataset, global_batch
from reference.distributed.ddp import TrainConfig, make_sampler
from reference.distributed.strategies import adamw_settings
from reference.training.loop import train_step
from reference.training.models import build
from suite import checks
from suite.schema import Check

# Every check id this family emits (suite.checks: `<part>` is filled in at run time); each
# one has a planted-bug test marked `breaks(id)`.
CHECK_IDS = (
    "ddp.trainer.gradients_match_single_process",
    "ddp.trainer.parameters_identical_across_ranks",
    "ddp.trainer.loss_curve_matches_single_process",
    "ddp.trainer.no_sync_one_allreduce_per_step",
    "ddp.trainer.no_sync_matches_sync_every_step",
    "ddp.trainer.resume_is_exact",
    "sampler.equal_shards",
    "sampler.total_size",
    "sampler.repeats_only_padding",
    "sampler.in_range",
    "sampler.covers_dataset",
    "sampler.set_epoch_changes_order",
    "sampler.without_set_epoch_order_repeats",
    "<strategy>.parameters_match_single_process",
    "<strategy>.loss_curve_matches_single_process",
    "<strategy>.<state>_bytes_shrink",
    "distributed.elastic.node_lost_mid_training",
    "distributed.elastic.resumed_from_checkpoint",
    "distributed.elastic.survivors_finished",
    "distributed.elastic.parameters_match_uninterrupted",
    "distributed.deepspeed.hostfile.ranks_from_slots",
)

# fp32 throughout. Same-order arithmetic must be exact (the ranks of one DDP job; a resumed
# run). A different summation order (all-reduce vs one batch, sharded vs whole updates) is
# held to the fp32 tier: gradients and loss curves by max-abs relative error (observed ~1e-7),
# parameters after AdamW steps by the relative L2 error of each tensor (observed 1e-7 for
# torch AdamW, 3e-7 for DeepSpeed's CPU Adam). Not max-abs for parameters: where a gradient
# element sits at fp32 rounding noise, Adam's m/(sqrt(v)+eps) turns a noise-level difference
# into an update difference of order lr in that one element (observed 0.6*lr), whatever the
# implementation; over a tensor that is negligible, and a real bug (Adam's coupled weight
# decay instead of AdamW's, a missing gradient average) moves the L2 error by orders of
# magnitude.
EXACT = 0.0
FP32 = checks.TIERS["fp32"]
SHARD_SLACK = 0.10  # sharded bytes per rank may exceed replicated/world by padding, up to 10%

Parameters = dict[str, torch.Tensor]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def worst_relative_error(candidate: Parameters, reference: Parameters) -> float:
    if candidate.keys() != reference.keys():
        raise ValueError(f"parameter names differ: {sorted(candidate.keys() ^ reference.keys())}")
    return max(checks.relative_error(candidate[name], reference[name]) for name in reference)


def worst_relative_l2_error(candidate: Parameters, reference: Parameters) -> float:
    """max over tensors of ||candidate - reference|| / ||reference|| (in float64)."""
    if candidate.keys() != reference.keys():
        raise ValueError(f"parameter names differ: {sorted(candidate.keys() ^ reference.keys())}")
    worst = 0.0
    for name, golden in reference.items():
        c, g = candidate[name].detach().cpu().double(), golden.detach().cpu().double()
        if not torch.isfinite(c).all():
            return float("inf")
        worst = max(worst, float((c - g).norm() / g.norm().clamp_min(torch.finfo(torch.float64).tiny)))
    return worst


def max_abs_difference(a: Parameters, b: Parameters) -> float:
    return max(float((a[name] - b[name]).abs().max()) for name in a)


# ------------------------------------------------------------------------------- DDP

def ddp_single_process_reference(config: TrainConfig, world_size: int) -> dict[str, Any]:
    """Single process, same model and seed; each optimiser step on the concatenation of the
    micro-batches every rank's DistributedSampler hands out for that step."""
    dataset = classification_dataset(config.dataset_size, config.seed)
    model = build("mlp", config.size, config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    losses: list[float] = []
    first_gradients: Parameters = {}
    for epoch in range(config.epochs):
        per_rank_steps = []
        for rank in range(world_size):
            sampler = make_sampler(config, len(dataset), rank, world_size)
            sampler.set_epoch(epoch)
            order = list(sampler)
            micro = [order[i:i + config.micro_batch] for i in range(0, len(order), config.micro_batch)]
            per_rank_steps.append([micro[i:i + config.accumulation] for i in range(0, len(micro), config.accumulation)])
        for step in zip(*per_rank_steps, strict=True):
            indices = [index for rank_step in step for micro_batch in rank_step for index in micro_batch]
            x, y = dataset[indices]
            losses.append(float(train_step(model, optimizer, nn.functional.cross_entropy, x, y)))
            if not first_gradients:
                first_gradients = {n: p.grad.detach().clone() for n, p in model.named_parameters()
                                   if p.grad is not None}
    return {"losses": losses, "first_gradients": first_gradients,
            "parameters": {n: p.detach().clone() for n, p in model.named_parameters()}}


def ddp_checks(ranks: Sequence[dict[str, Any]], reference: dict[str, Any]) -> list[Check]:
    """Gradients after the first step's backward, parameters across ranks, loss curve."""
    main = ranks[0]
    spread = max((max_abs_difference(r["parameters"], main["parameters"]) for r in ranks[1:]), default=0.0)
    curve_error = checks.relative_error(torch.tensor(main["losses"]), torch.tensor(reference["losses"]))
    return [
        checks.at_most("ddp.trainer.gradients_match_single_process",
                       worst_relative_error(main["first_gradients"], reference["first_gradients"]),
                       FP32, "single process on the concatenated batch",
                       f"first optimiser step, {len(ranks)} ranks, worst max-abs relative error over tensors"),
        checks.at_most("ddp.trainer.parameters_identical_across_ranks", spread, EXACT, "rank 0",
                       f"max |difference| of final parameters over {len(ranks)} ranks"),
        checks.at_most("ddp.trainer.loss_curve_matches_single_process", curve_error, FP32,
                       "single process on the concatenated batch",
                       f"{len(main['losses'])} optimiser steps, relative error of the curve"),
    ]


def no_sync_checks(with_no_sync: dict[str, Any], every_step: dict[str, Any]) -> list[Check]:
    """One all-reduce per optimiser step with no_sync, and the same parameters as
    all-reducing every micro-step."""
    return [
        checks.at_most("ddp.trainer.no_sync_one_allreduce_per_step",
                       abs(with_no_sync["syncs"] - with_no_sync["optimizer_steps"]), 0,
                       "optimiser steps",
                       f"{with_no_sync['syncs']} synchronising backwards for {with_no_sync['optimizer_steps']} "
                       f"steps of {with_no_sync['micro_steps']} micro-steps (counted by a comm hook)"),
        checks.at_most("ddp.trainer.no_sync_matches_sync_every_step",
                       worst_relative_l2_error(with_no_sync["parameters"], every_step["parameters"]),
                       FP32, "all-reduce on every micro-step",
                       f"relative L2 error of final parameters; the every-step run synchronised "
                       f"{every_step['syncs']} times"),
    ]


def resume_check(uninterrupted: Parameters, resumed: Parameters, resumed_at: int) -> Check:
    return checks.at_most("ddp.trainer.resume_is_exact", max_abs_difference(resumed, uninterrupted), EXACT,
                          "uninterrupted run", f"resumed from the checkpoint written after epoch {resumed_at}")


# --------------------------------------------------------------------------- sampler

def sampler_checks(shards: Sequence[Sequence[int]], dataset_size: int, drop_last: bool) -> list[Check]:
    """DistributedSampler's documented contract: equal shard lengths; without drop_last the
    shards cover every index, padded by repeating the first indices up to a multiple of the
    world size; with drop_last fewer than world-size indices are dropped; no other repeats."""
    world = len(shards)
    lengths = {len(s) for s in shards}
    every = [index for shard in shards for index in shard]
    counts = Counter(every)
    repeats = sum(c - 1 for c in counts.values())
    expected_total = (dataset_size // world if drop_last else -(-dataset_size // world)) * world
    found = [
        checks.holds("sampler.equal_shards", len(lengths) == 1,
                     "DistributedSampler docs", f"shard lengths {sorted(lengths)}"),
        checks.at_most("sampler.total_size", abs(len(every) - expected_total), 0, "DistributedSampler docs",
                       f"{len(every)} indices for {dataset_size} examples, expected {expected_total}"),
        checks.at_most("sampler.repeats_only_padding", repeats, max(expected_total - dataset_size, 0),
                       "padding = total size - dataset size", f"{repeats} repeated indices"),
        checks.holds("sampler.in_range", all(0 <= i < dataset_size for i in every), "dataset indices"),
    ]
    if not drop_last:
        found.append(checks.at_most("sampler.covers_dataset", dataset_size - len(counts), 0, "every index",
                                    f"{dataset_size - len(counts)} indices never sampled"))
    return found


def epoch_order_checks(orders_with_set_epoch: Sequence[Sequence[int]],
                       orders_without: Sequence[Sequence[int]]) -> list[Check]:
    """set_epoch reshuffles; forgetting it replays the first epoch's order every epoch."""
    return [
        checks.holds("sampler.set_epoch_changes_order",
                     len({tuple(o) for o in orders_with_set_epoch}) == len(orders_with_set_epoch),
                     "distinct order per epoch", f"{len(orders_with_set_epoch)} epochs"),
        checks.holds("sampler.without_set_epoch_order_repeats",
                     len({tuple(o) for o in orders_without}) == 1,
                     "the same order every epoch", "shows why set_epoch is needed"),
    ]


# ---------------------------------------------------------------------- ZeRO / FSDP2

def single_process_training(make_model: Callable[[], nn.Module], config: dict[str, Any], batching: Batching,
                            steps: int, seed: int, optimizer: OptimizerFactory | None = None,
                            device: str = "cpu") -> dict[str, Any]:
    """The run every strategy must equal: one process, the whole global batch per step,
    AdamW with the ds_config's settings, on the device the strategy ran on."""
    model = make_model().to(device)
    make_optimizer = optimizer or (lambda params: torch.optim.AdamW(params, **adamw_settings(config)))
    opt = make_optimizer(model.parameters())
    losses = []
    for step in range(steps):
        x, y = global_batch(step, batching, seed)
        losses.append(float(train_step(model, opt, nn.functional.cross_entropy, x.to(device), y.to(device))))
    return {"parameters": {n: p.detach().cpu().clone() for n, p in model.named_parameters()}, "losses": losses}


def equivalence_checks(strategy: str, candidate: dict[str, Any], reference: dict[str, Any],
                       steps: int, world_size: int) -> list[Check]:
    curve_error = checks.relative_error(torch.tensor(candidate["losses"]), torch.tensor(reference["losses"]))
    max_abs = worst_relative_error(candidate["parameters"], reference["parameters"])
    return [
        checks.at_most(f"{strategy}.parameters_match_single_process",
                       worst_relative_l2_error(candidate["parameters"], reference["parameters"]),
                       FP32, "single-process AdamW on the same global batch",
                       f"after {steps} AdamW steps on {world_size} ranks, fp32, worst tensor's relative L2 error; "
                       f"max-abs relative error {max_abs:.3g}"),
        checks.at_most(f"{strategy}.loss_curve_matches_single_process", curve_error, FP32,
                       "single-process AdamW on the same global batch", f"{steps} steps"),
    ]


def memory_checks(strategy: str, shards: Iterable[str], candidate: Sequence[dict[str, int]],
                  replicated: Sequence[dict[str, int]]) -> list[Check]:
    """For each kind of state the strategy claims to shard, the bytes a rank holds (mean
    over ranks, so uneven shards still count) must be about the replicated bytes / world."""
    world = len(candidate)
    found = []
    for kind in sorted(shards):
        mean_held = sum(r[kind] for r in candidate) / world
        ratio = mean_held / replicated[0][kind]
        found.append(checks.at_most(
            f"{strategy}.{kind}_bytes_shrink", ratio, (1 + SHARD_SLACK) / world, "DDP (replicated) bytes",
            f"mean per-rank {kind} bytes / replicated bytes on {world} ranks (1/{world} is perfect sharding); "
            f"per rank {[r[kind] for r in candidate]} vs {replicated[0][kind]}"))
    return found


# ------------------------------------------------------------------- elastic torchrun

def elastic_checks(run: Any, uninterrupted: Parameters, steps: int, nodes: int) -> list[Check]:
    """A node killed mid-training (an `elastic_job.ElasticRun`): the job restarted on fewer
    nodes, resumed from the step of the last checkpoint (losing at most the step in flight),
    ran every remaining step once, the survivors exited cleanly, and the final parameters
    equal an uninterrupted single-process run on the same global batches."""
    restarts = [s for s in run.starts() if s["restart"] > 0]
    first = restarts[0] if restarts else None
    before = [e["step"] for e in run.events if e["event"] == "step" and (first is None or e["time"] < first["time"])]
    after = [e["step"] for e in run.events if e["event"] == "step" and first is not None and e["time"] > first["time"]]
    last_done = max(before, default=-1)
    resumed = first is not None and 0 < first["from_step"] and last_done + 1 <= first["from_step"] <= last_done + 2
    survivors = run.returncodes[: nodes - 1]
    return [
        checks.holds("distributed.elastic.node_lost_mid_training",
                     first is not None and first["world_size"] < nodes and 0 < run.steps_before_kill < steps,
                     f"a restart at a smaller world size than {nodes}",
                     f"killed after {run.steps_before_kill} of {steps} steps; (restart, world, from step) of each "
                     f"start: {[(s['restart'], s['world_size'], s['from_step']) for s in run.starts()]}"),
        checks.holds("distributed.elastic.resumed_from_checkpoint",
                     first is not None and resumed and after == list(range(first["from_step"], steps)),
                     "rank 0's checkpoint after the last finished step",
                     f"last step finished before the restart {last_done}; resumed at "
                     f"{first['from_step'] if first else None}; steps after: {after[:3]}..{after[-1:]}"),
        checks.holds("distributed.elastic.survivors_finished", survivors == [0] * (nodes - 1),
                     "exit code 0 on every surviving node", f"exit codes {run.returncodes}"),
        checks.at_most("distributed.elastic.parameters_match_uninterrupted",
                       worst_relative_l2_error(run.parameters, uninterrupted), FP32,
                       "an uninterrupted single-process run on the same global batches",
                       f"{steps} AdamW steps, world size {nodes} then "
                       f"{first['world_size'] if first else '?'}; worst tensor's relative L2 error; "
                       f"max |difference| {max_abs_difference(run.parameters, uninterrupted):.3g}"),
    ]


def ranks_from_hostfile(world_size: int, slots: dict[str, int]) -> Check:
    """The launcher started one rank per slot of the hostfile."""
    return checks.holds("distributed.deepspeed.hostfile.ranks_from_slots", world_size == sum(slots.values()),
                        f"hostfile slots {slots}", f"the job ran at world size {world_size}")
