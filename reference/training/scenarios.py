"""The training techniques as suite scenarios. Imports nothing heavy at module level, so
`mlsuite list` works with only the core installed."""

from __future__ import annotations

from typing import Any

from suite import stats
from suite.context import RunContext
from suite.registry import Scenario, scenario
from suite.requirements import Cuda, Package, Requirement
from suite.schema import Check, Metric

TORCH = (Package("torch"), Package("scikit-learn", module="sklearn"))
MODELS = ["mlp", "cnn", "transformer"]


def peak_memory(device: str) -> Metric:
    """Bytes actually held at peak: CUDA allocator peak on GPU, process peak RSS on CPU."""
    if device.startswith("cuda"):
        import torch

        return stats.scalar("peak_cuda_memory", "bytes", False, torch.cuda.max_memory_allocated())
    import resource

    return stats.scalar("peak_rss", "bytes", False, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


class TrainingScenario(Scenario):
    """Shared setup: the workload on the device, a fixed batch, and the timed step."""

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        return [*TORCH, *([Cuda()] if params["device"] == "cuda" else [])]

    def setup(self, ctx: RunContext) -> None:
        import copy

        import torch

        from reference.training import workloads

        p = ctx.params
        self.workload = workloads.build(p["model"], p["size"], ctx.seed).to(ctx.device)
        # Conformance trains from these untouched initial weights, never from a model the
        # timing loop has already trained for a machine-speed-dependent number of steps.
        self.initial = copy.deepcopy(self.workload)
        self.x = self.workload.split.x_train[: p["batch_size"]]
        self.y = self.workload.split.y_train[: p["batch_size"]]
        ctx.provenance.update(precision="fp32", device=ctx.device, optimizer="AdamW",
                              parameters=sum(t.numel() for t in self.workload.model.parameters()))
        if ctx.device.startswith("cuda"):
            ctx.provenance["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
            torch.cuda.reset_peak_memory_stats()

    def convergence(self, step_factory, epochs: int):  # type: ignore[no-untyped-def]
        from reference.training.conformance import train_to_convergence

        return train_to_convergence(self.initial, step_factory, epochs)


GRID = {"model": MODELS, "size": ["small"], "batch_size": [64, 256], "device": ["cpu"], "epochs": [15]}
GPU = {"size": ["base"], "batch_size": [256], "device": ["cuda"]}


@scenario("training.baseline", grid=GRID, requires=TORCH, timeout_s=900,
          profiles={"quick": {"size": ["small"], "batch_size": [64], "epochs": [10]}, "gpu": GPU})
class TrainBaseline(TrainingScenario):
    """fp32 training loop: throughput, step time, memory, and digits eval accuracy."""

    def setup(self, ctx: RunContext) -> None:
        import torch

        super().setup(ctx)
        model = self.workload.model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(self) -> None:
        from reference.training import loop, workloads

        loop.train_step(self.workload.model, self.optimizer, workloads.loss_fn, self.x, self.y)

    def measure(self, ctx: RunContext) -> list[Metric]:
        from reference.training.conformance import fp32_step_factory

        metrics, _ = ctx.time_steps(self.step, items_per_call=len(self.x))
        metrics.append(peak_memory(ctx.device))
        self.run = None
        if self.workload.has_eval_task and ctx.conformance:
            self.run = self.convergence(fp32_step_factory, ctx.params["epochs"])
            metrics.append(stats.proportion("eval_accuracy", self.run.correct.numpy()))
        return metrics

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.training.conformance import baseline_reaches_accuracy

        return [baseline_reaches_accuracy(self.run)] if self.run is not None else []


@scenario("training.amp", grid={**GRID, "dtype": ["bf16", "fp16"]}, requires=TORCH, timeout_s=1800,
          profiles={"quick": {"model": ["mlp"], "size": ["small"], "batch_size": [64], "epochs": [10]},
                    "gpu": GPU})
class TrainAmp(TrainingScenario):
    """Autocast bf16 / fp16 (+GradScaler) against fp32 from the same init, in one run."""

    def setup(self, ctx: RunContext) -> None:
        import copy

        import torch

        from reference.training import loop, workloads

        super().setup(ctx)
        self.dtype = ctx.params["dtype"]
        ctx.provenance["precision"] = f"autocast {self.dtype}"
        fp32_model = copy.deepcopy(self.workload.model)
        fp32_optimizer = torch.optim.AdamW(fp32_model.parameters(), lr=1e-3)
        self.fp32_step = lambda: loop.train_step(fp32_model, fp32_optimizer, workloads.loss_fn, self.x, self.y)
        model = self.workload.model
        self.trainer = self.make_trainer(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
        ctx.provenance["grad_scaler"] = self.trainer.scaler is not None

    def make_trainer(self, model, optimizer):  # type: ignore[no-untyped-def]
        from reference.training import workloads
        from reference.training.amp import AmpTrainer

        device_type = "cuda" if self.workload.split.x_train.is_cuda else "cpu"
        return AmpTrainer(model, optimizer, workloads.loss_fn, device_type=device_type, dtype=self.dtype)

    def step(self) -> None:
        self.trainer.step(self.x, self.y)

    def measure(self, ctx: RunContext) -> list[Metric]:
        from reference.training.conformance import fp32_step_factory

        found, times = ctx.time_interleaved({"": self.step, "fp32_": self.fp32_step}, items_per_call=len(self.x))
        metrics = [*found[""], stats.ratio_of_medians("amp_speedup", times["fp32_"], times[""]),
                   *found["fp32_"], peak_memory(ctx.device)]
        self.runs = None
        if self.workload.has_eval_task and ctx.conformance:
            epochs = ctx.params["epochs"]
            self.runs = (self.convergence(fp32_step_factory, epochs),
                         self.convergence(lambda m, o: self.make_trainer(m, o).step, epochs))
            metrics.append(stats.proportion("eval_accuracy", self.runs[1].correct.numpy()))
            metrics.append(stats.proportion("fp32_eval_accuracy", self.runs[0].correct.numpy()))
        return metrics

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.training import conformance

        found = conformance.amp_tracks_fp32(*self.runs) if self.runs else []
        if self.trainer.scaler is None:
            return [*found, conformance.bf16_uses_no_scaler(self.trainer)]
        return [*found, *conformance.scaler_skips_inf_step(self.make_trainer, ctx.device)]


@scenario("training.accumulation", grid={**GRID, "micro_batches": [2, 4, 8]}, requires=TORCH, timeout_s=900,
          profiles={"quick": {"model": ["mlp", "cnn"], "size": ["small"], "batch_size": [64], "micro_batches": [4]},
                    "gpu": {**GPU, "micro_batches": [4]}})
class TrainAccumulation(TrainingScenario):
    """k micro-batches per optimiser step vs one batch of the same global size."""

    def setup(self, ctx: RunContext) -> None:
        import copy

        import torch

        super().setup(ctx)
        self.micro_batches = ctx.params["micro_batches"]
        self.full_model = copy.deepcopy(self.workload.model)
        self.full_optimizer = torch.optim.AdamW(self.full_model.parameters(), lr=1e-3)
        self.optimizer = torch.optim.AdamW(self.workload.model.parameters(), lr=1e-3)
        ctx.provenance["micro_batch_size"] = -(-len(self.x) // self.micro_batches)

    def step(self) -> None:
        from reference.training import workloads
        from reference.training.accumulation import accumulation_step

        accumulation_step(self.workload.model, self.optimizer, workloads.loss_fn, self.x, self.y, self.micro_batches)

    def full_batch_step(self) -> None:
        from reference.training import loop, workloads

        loop.train_step(self.full_model, self.full_optimizer, workloads.loss_fn, self.x, self.y)

    def measure(self, ctx: RunContext) -> list[Metric]:
        found, times = ctx.time_interleaved({"": self.step, "full_batch_": self.full_batch_step},
                                            items_per_call=len(self.x))
        overhead = stats.ratio_of_medians("accumulation_time_ratio", times[""], times["full_batch_"],
                                          higher_is_better=False)
        return [*found[""], overhead, peak_memory(ctx.device)]

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.training.accumulation import accumulation_step
        from reference.training.conformance import accumulation_matches_full_batch

        return accumulation_matches_full_batch(accumulation_step, ctx.params["model"], self.micro_batches)
