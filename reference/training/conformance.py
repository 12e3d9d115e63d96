"""Conformance checks for the training techniques. Each takes the implementation under test
as an argument, so a test can hand it a deliberately broken one and watch it fail."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

from reference.training import data, loop, workloads
from reference.training.amp import AmpTrainer
from suite import checks
from suite.schema import Check

# Every check id this family emits (suite.checks: `<part>` is filled in at run time); each
# one has a planted-bug test marked `breaks(id)`.
CHECK_IDS = (
    "baseline.digits_eval_accuracy",
    "accumulation.gradients_equal_full_batch",
    "accumulation.parameters_equal_full_batch",
    "amp.loss_curve_tracks_fp32",
    "amp.eval_accuracy_tracks_fp32",
    "amp.inf_gradient_skips_step",
    "amp.inf_gradient_lowers_scale",
    "amp.bf16_uses_no_scaler",
)

SGD_LR = 0.1  # plain SGD in equivalence checks: Adam's first step hides a scaled gradient
RECIPE_LR, RECIPE_BATCH = 2e-3, 64
DIGITS_ACCURACY_BOUND = 0.95  # fp32 baseline on the pinned digits eval split (measured ~0.98)
AMP_LOSS_BOUND = 0.05  # |AMP - fp32| per-epoch mean loss, nats
AMP_ACCURACY_BOUND = 0.02  # |AMP - fp32| eval accuracy, absolute

AccumulationStep = Callable[..., torch.Tensor]
TrainerFactory = Callable[[torch.nn.Module, torch.optim.Optimizer], AmpTrainer]


def uneven_batch(workload: workloads.Workload, micro_batches: int,
                 micro_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch whose size is not a multiple of micro_batches, so the last one is short."""
    n = micro_batches * micro_size - 1
    return workload.split.x_train[:n], workload.split.y_train[:n]


def accumulation_matches_full_batch(accumulate: AccumulationStep, model_name: str, micro_batches: int,
                                    micro_size: int = 16, size: str = "tiny") -> list[Check]:
    """k micro-batches must give the gradients and parameters of one batch of k*b, checked
    against an fp64 golden run of the full batch (fp32 tier)."""
    workload = workloads.build(model_name, size)
    x, y = uneven_batch(workload, micro_batches, micro_size)
    golden = copy.deepcopy(workload.model).double()
    baseline = copy.deepcopy(workload.model)
    candidate = workload.model
    golden_x = x.double() if x.is_floating_point() else x
    loop.train_step(golden, torch.optim.SGD(golden.parameters(), lr=SGD_LR), workloads.loss_fn, golden_x, y)
    loop.train_step(baseline, torch.optim.SGD(baseline.parameters(), lr=SGD_LR), workloads.loss_fn, x, y)
    accumulate(candidate, torch.optim.SGD(candidate.parameters(), lr=SGD_LR), workloads.loss_fn, x, y, micro_batches)
    where = f"{model_name}, {micro_batches} micro-batches over a batch of {len(x)}"
    grads = checks.all_close_to_golden(
        "accumulation.gradients_equal_full_batch",
        [(c.grad, g.grad) for c, g in zip(candidate.parameters(), golden.parameters())], "fp32")
    params = checks.all_close_to_golden(
        "accumulation.parameters_equal_full_batch",
        zip(candidate.parameters(), golden.parameters()), "fp32")
    baseline_error = max(checks.relative_error(b, g)
                         for b, g in zip(baseline.parameters(), golden.parameters()))
    for check in (grads, params):
        check.detail += f"; {where}; fp32 full-batch baseline error {baseline_error:.3g}"
    return [grads, params]


@dataclass(frozen=True)
class Convergence:
    loss_curve: list[float]
    correct: torch.Tensor  # per eval example


StepFactory = Callable[[torch.nn.Module, torch.optim.Optimizer], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


def train_to_convergence(workload: workloads.Workload, step_factory: StepFactory, epochs: int,
                         seed: int = 0) -> Convergence:
    """The stated recipe (AdamW, batch 64) from the workload's initial weights."""
    model = copy.deepcopy(workload.model)
    step = step_factory(model, torch.optim.AdamW(model.parameters(), lr=RECIPE_LR))
    generator = torch.Generator().manual_seed(seed)
    split = workload.split
    curve = loop.train_epochs(step, (data.minibatches(split.x_train, split.y_train, RECIPE_BATCH, generator)
                                     for _ in range(epochs)))
    return Convergence(curve, loop.correct_predictions(model, split.x_eval, split.y_eval))


def fp32_step_factory(model: torch.nn.Module, optimizer: torch.optim.Optimizer):  # type: ignore[no-untyped-def]
    return lambda x, y: loop.train_step(model, optimizer, workloads.loss_fn, x, y)


def baseline_reaches_accuracy(run: Convergence, bound: float = DIGITS_ACCURACY_BOUND) -> Check:
    accuracy = float(run.correct.float().mean())
    return checks.at_least("baseline.digits_eval_accuracy", accuracy, bound, "pinned digits eval split",
                           f"{len(run.correct)} eval examples, final train loss {run.loss_curve[-1]:.4f}")


def amp_tracks_fp32(fp32: Convergence, amp: Convergence) -> list[Check]:
    """Per-epoch mean loss from the second epoch on, and final eval accuracy. The first
    epoch is reported but not bounded: fp16's GradScaler starts at scale 2**16 and skips
    steps whose gradients overflow while it backs off, which legitimately delays it."""
    gaps = [abs(a - b) for a, b in zip(fp32.loss_curve, amp.loss_curve)]
    accuracy_gap = abs(float(fp32.correct.float().mean()) - float(amp.correct.float().mean()))
    return [
        checks.at_most("amp.loss_curve_tracks_fp32", max(gaps[1:]), AMP_LOSS_BOUND,
                       "fp32 run, same init and batches",
                       f"largest per-epoch mean-loss gap over epochs 2-{len(gaps)} (nats); "
                       f"first-epoch gap {gaps[0]:.3g}"),
        checks.at_most("amp.eval_accuracy_tracks_fp32", accuracy_gap, AMP_ACCURACY_BOUND,
                       "fp32 run, same init and batches", "absolute eval accuracy gap"),
    ]


def scaler_skips_inf_step(make_trainer: TrainerFactory, device: str = "cpu") -> list[Check]:
    """An injected inf gradient must make GradScaler skip the optimiser step and lower
    its scale (fp16 only)."""
    workload = workloads.build("mlp", "tiny").to(device)
    model = workload.model
    trainer = make_trainer(model, torch.optim.SGD(model.parameters(), lr=SGD_LR))
    first = next(model.parameters())

    def poison(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad.view(-1)[0] = float("inf")
        return grad

    handle = first.register_hook(poison)
    before = [p.detach().clone() for p in model.parameters()]
    scale_before = trainer.scaler.get_scale() if trainer.scaler is not None else None
    trainer.step(workload.split.x_train[:32], workload.split.y_train[:32])
    handle.remove()
    unchanged = all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    scale_after = trainer.scaler.get_scale() if trainer.scaler is not None else None
    lowered = scale_before is not None and scale_after is not None and scale_after < scale_before
    return [
        checks.holds("amp.inf_gradient_skips_step", unchanged, "parameters before the step",
                     "an inf was planted in one gradient element"),
        checks.holds("amp.inf_gradient_lowers_scale", lowered, "scale before the step",
                     f"scale {scale_before} -> {scale_after}"),
    ]


def bf16_uses_no_scaler(trainer: AmpTrainer) -> Check:
    return checks.holds("amp.bf16_uses_no_scaler", trainer.scaler is None, "bf16 has fp32's exponent range",
                        f"scaler: {type(trainer.scaler).__name__}")
