"""The distributed techniques as suite scenarios. Imports nothing heavy at module level.

Each scenario launches its ranks itself: one torchrun job per world size (a subprocess in
the worker's session, so the runner's timeout kills it), hosting the DDP baseline and the
strategy under test. The ranks time their own steps (each step starts at a barrier; its
time is the slowest rank's) and the harness decides how many to take from its budget.

Scaling: weak = the same per-rank batch at 1 and 2 processes (the global batch doubles);
strong = the same global batch (the per-rank batch halves). Efficiency = T2 / (2 T1) with
T the throughput in samples/s, i.e. t1/t2 (weak) and t1/(2 t2) (strong) from step times.
On CPU each rank gets cores / processes threads at every world size, so 1 process has the
resources of one rank of 2.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reference.distributed.zero_stages import STAGES
from suite import stats, timing
from suite.context import RunContext
from suite.registry import Scenario, scenario
from suite.requirements import Cuda, Package, Processes, Requirement
from suite.schema import Check, Metric

# Two process runs per record: each run launches torchrun jobs (seconds of start-up), so the
# between-run spread is measured, but not at the quick profile's three runs.
MAX_REPLICATES = 2

TORCH = Package("torch")
DEEPSPEED = Package("deepspeed")
CHECK_STEPS = 5  # AdamW steps of the equivalence check
GRID: dict[str, list[Any]] = {"device": ["cpu"], "size": ["small"], "micro_batch": [32], "world_sizes": [[1, 2]]}
GPU: dict[str, list[Any]] = {"device": ["cuda"], "size": ["base"], "micro_batch": [256], "world_sizes": [[1, 2]]}


StepRunner = Callable[[int], list[float]]  # run n steps on the ranks, get their times


class DistributedScenario(Scenario):
    """Shared launch, timing, memory and equivalence logic; subclasses name the strategy."""

    def strategy(self, params: dict[str, Any]) -> str:
        raise NotImplementedError

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        world = max(params["world_sizes"])
        found: list[Requirement] = [TORCH]
        if self.strategy(params).startswith("deepspeed."):
            found.append(DEEPSPEED)
        found.append(Cuda(devices=world) if params["device"] == "cuda" else Processes(world))
        return found

    def setup(self, ctx: RunContext) -> None:
        from reference.distributed.deepspeed_zero import load_config
        from reference.distributed.rankjob import JobSpec, RankJob

        p = ctx.params
        self.accumulation = int(load_config()["gradient_accumulation_steps"])
        self.name = self.strategy(p)
        self.micro_batch = int(p["micro_batch"])
        self.world_sizes = sorted(int(w) for w in p["world_sizes"])
        self.hosted = ("ddp",) if self.name == "ddp" else ("ddp", self.name)
        threads = max(1, (os.cpu_count() or 1) // max(self.world_sizes))
        spec = JobSpec(strategies=self.hosted, device=p["device"], size=p["size"], seed=ctx.seed,
                       threads_per_rank=threads)
        self.jobs: dict[int, RankJob] = {}
        self.startup: dict[int, dict[str, Any]] = {}
        try:
            for world in self.world_sizes:  # one after the other, so launch costs do not overlap
                job = RankJob(spec, world, timeout_s=self.timeout_s)
                self.jobs[world] = job
                self.startup[world] = {**job.start(), **job.request("build")}
        except BaseException:
            self.teardown()
            raise
        ctx.provenance.update(
            launcher="torchrun --standalone (subprocess, c10d rendezvous on localhost)", backend=spec.resolved_backend,
            device=p["device"], precision="fp32", model=f"mlp/{p['size']}", optimizer="AdamW (ds_config)",
            ds_config=spec.ds_config, threads_per_rank=threads, strategy=self.name,
            timing="per-rank perf_counter from a barrier; sample = slowest rank"
                   + (", CUDA-synchronised" if p["device"] == "cuda" else ""),
        )

    def step(self) -> None:
        """One synchronised training step at the largest world size (with the launcher's
        round trip to the ranks, which the suite's own timing leaves out)."""
        self.jobs[self.world_sizes[-1]].request("step", strategy=self.name, count=1, micro_batch=self.micro_batch)

    def _runner(self, world: int, strategy: str, micro_batch: int) -> StepRunner:
        job = self.jobs[world]
        return lambda count: list(job.request("step", strategy=strategy, count=count,
                                              micro_batch=micro_batch)["seconds"])

    def measure(self, ctx: RunContext) -> list[Metric]:
        """Every world size, the strategy and its DDP baseline, and (when 1 and more
        processes run) the strong-scaling variant, all timed interleaved."""
        runners: dict[str, StepRunner] = {}
        for world in self.world_sizes:
            for strategy in self.hosted:
                label = f"p{world}." if strategy == self.name else f"p{world}.{strategy}."
                runners[label] = self._runner(world, strategy, self.micro_batch)
        largest = self.world_sizes[-1]
        scaling = self.world_sizes[0] == 1 and largest > 1
        if scaling:
            if self.micro_batch % largest:
                raise ValueError(f"strong scaling needs micro_batch {self.micro_batch} divisible by {largest}")
            runners[f"p{largest}.strong."] = self._runner(largest, self.name, self.micro_batch // largest)
        # Every target takes turns in the same stretch of time (the harness's one interleaving
        # primitive), so overhead vs DDP and scaling efficiency are not skewed by drifting load.
        timed = timing.time_interleaved(runners, ctx.budget, self_timed=True, first_call=True)
        overhead = timing.timer_overhead("host")  # what the ranks' perf_counter pair adds to a sample
        per_rank = self.micro_batch * self.accumulation
        metrics: list[Metric] = []
        for world in self.world_sizes:
            prefix, start = f"p{world}.", self.startup[world]
            metrics += [stats.scalar(prefix + "launch_s", "s", False, start["launch_s"], kind="cold"),
                        stats.scalar(prefix + "rendezvous_s", "s", False, start["rendezvous_s"], kind="cold"),
                        stats.scalar(prefix + "setup_s", "s", False, start["setup_s"][self.name], kind="cold")]
            for label, result in timed.items():
                first, samples = result.first_s, result.times
                if label.startswith(prefix):
                    global_batch = per_rank * (1 if label.endswith("strong.") else world)
                    metrics += [stats.scalar(label + "first_step_s", "s", False, first, kind="cold"),
                                stats.summarize(label + "step_time", "s", False, samples, overhead=overhead),
                                stats.throughput(label + "throughput", "samples/s", global_batch, samples)]
            if self.name != "ddp":
                metrics.append(stats.ratio_of_medians(prefix + "overhead_vs_ddp", timed[prefix].times,
                                                      timed[f"{prefix}ddp."].times, higher_is_better=False))
            metrics += self._memory_metrics(prefix, world)
        if scaling:
            one, many, strong = timed["p1."].times, timed[f"p{largest}."].times, timed[f"p{largest}.strong."].times
            metrics += [stats.ratio_of_medians("weak_scaling_efficiency", one, many),
                        stats.ratio_of_medians("strong_scaling_efficiency", one, [largest * t for t in strong])]
            ctx.provenance["scaling"] = {
                "weak": f"per-rank batch {per_rank} at 1 and {largest} processes (global {per_rank * largest})",
                "strong": f"global batch {per_rank}: per-rank {per_rank} at 1, {per_rank // largest} at {largest}",
            }
        ctx.provenance.update(per_rank_micro_batch=self.micro_batch, accumulation=self.accumulation,
                              startup={str(w): s for w, s in self.startup.items()})
        return metrics

    def held_bytes(self, world: int | None = None) -> list[dict[str, int]]:
        """Per rank: bytes of parameters, optimizer state and master weights it holds for
        the strategy under test (after at least one step)."""
        job = self.jobs[world or self.world_sizes[-1]]
        return list(job.request("memory", strategy=self.name)["ranks"])

    def _memory_metrics(self, prefix: str, world: int) -> list[Metric]:
        """The most any rank holds, and how uneven the optimizer-state shards are (max over
        mean: ZeroRedundancyOptimizer shards whole tensors, so one large tensor skews it)."""
        held = self.held_bytes(world)
        found = [stats.scalar(f"{prefix}{kind}_bytes", "bytes", False, max(rank[kind] for rank in held))
                 for kind in ("parameters", "optimizer_state", "master_weights")]
        states = [int(rank["optimizer_state"]) for rank in held]
        total = sum(states)
        if world > 1 and total > 0:
            found.append(stats.scalar(f"{prefix}optimizer_state_imbalance", "ratio", False,
                                      max(states) * world / total))
        return found

    def check(self, ctx: RunContext) -> list[Check]:
        try:
            return self.conformance(ctx)
        finally:
            self.teardown()

    def conformance(self, ctx: RunContext) -> list[Check]:
        return self._equivalence(ctx) + self._memory_checks()

    def _equivalence(self, ctx: RunContext) -> list[Check]:
        import torch

        from reference.distributed import conformance
        from reference.distributed.deepspeed_zero import batching_of, load_config
        from reference.training.models import build

        world = self.world_sizes[-1]
        config = load_config()
        with tempfile.TemporaryDirectory(prefix="mlsuite-dist-") as tmp:
            reply = self.jobs[world].request("train", strategy=self.name, steps=CHECK_STEPS,
                                             out=str(Path(tmp, "parameters.pt")))
            candidate = torch.load(reply["path"], weights_only=True)
        reference = conformance.single_process_training(lambda: build("mlp", ctx.params["size"], ctx.seed),
                                                        config, batching_of(config, world), CHECK_STEPS, ctx.seed,
                                                        device=ctx.device)
        return conformance.equivalence_checks(self.name, candidate, reference, CHECK_STEPS, world)

    def _memory_checks(self) -> list[Check]:
        from reference.distributed import conformance, strategies

        world = self.world_sizes[-1]
        if world < 2 or self.name == "ddp":
            return []
        job = self.jobs[world]
        shards = strategies.sharded_state(self.name)
        return conformance.memory_checks(self.name, shards, self.held_bytes(world),
                                         job.request("memory", strategy="ddp")["ranks"])

    def teardown(self) -> None:
        """Stop the ranks (the runner would kill them anyway; asv and tests call this)."""
        for job in getattr(self, "jobs", {}).values():
            job.close()
        self.jobs = {}


@scenario("distributed.ddp", grid=GRID, requires=(TORCH,), timeout_s=600,
          profiles={"quick": {}, "gpu": GPU})
class DistDDP(DistributedScenario):
    """DDP at 1 and 2 processes: step time, throughput, weak/strong scaling, start-up costs;
    checks: the DDP entry point (gradients, ranks, loss curve, no_sync, resume) and AdamW
    equivalence with a single process."""

    def strategy(self, params: dict[str, Any]) -> str:
        return "ddp"

    def conformance(self, ctx: RunContext) -> list[Check]:
        return self._equivalence(ctx) + self._ddp_entry_point_checks()

    def _ddp_entry_point_checks(self) -> list[Check]:
        """The epoch trainer (DistributedSampler, rank-0 checkpoints, no_sync) run inside the
        largest job: uninterrupted, every-micro-step all-reduce, and resumed after epoch 1."""
        import dataclasses

        import torch

        from reference.distributed import checkpoint, conformance
        from reference.distributed.ddp import TrainConfig

        world = self.world_sizes[-1]
        job = self.jobs[world]
        base = TrainConfig(size="tiny", epochs=3, accumulation=2)
        with tempfile.TemporaryDirectory(prefix="mlsuite-ddp-") as tmp:
            runs = {"no_sync": dataclasses.replace(base, checkpoint_dir=f"{tmp}/ckpt", out_dir=f"{tmp}/no_sync"),
                    "every_step": dataclasses.replace(base, use_no_sync=False, out_dir=f"{tmp}/every_step"),
                    "resumed": dataclasses.replace(base, resume_from=str(checkpoint.path_for(Path(tmp, "ckpt"), 1)),
                                                   out_dir=f"{tmp}/resumed")}
            results = {}
            for name, config in runs.items():
                job.request("ddp_train", config=dataclasses.asdict(config))
                results[name] = [torch.load(Path(config.out_dir or "", f"rank{r}.pt"), weights_only=True)
                                 for r in range(world)]
        reference = conformance.ddp_single_process_reference(base, world)
        return [*conformance.ddp_checks(results["no_sync"], reference),
                *conformance.no_sync_checks(results["no_sync"][0], results["every_step"][0]),
                conformance.resume_check(results["no_sync"][0]["parameters"], results["resumed"][0]["parameters"], 1)]


# The quick profile measures the sharded strategies at 2 processes only (overhead vs DDP,
# bytes, equivalence); the scaling table at 1 and 2 processes is distributed.ddp's. Each record
# pays a launch with its imports, so this keeps the family within its CPU budget.
SHARDED_QUICK: dict[str, list[Any]] = {"world_sizes": [[2]]}


@scenario("distributed.zero.torch", grid=GRID, requires=(TORCH,), timeout_s=600,
          profiles={"quick": SHARDED_QUICK, "gpu": GPU})
class DistZeroTorch(DistributedScenario):
    """ZeroRedundancyOptimizer (ZeRO-1 in torch): overhead vs DDP, optimizer-state bytes per
    rank, AdamW equivalence."""

    def strategy(self, params: dict[str, Any]) -> str:
        return "torch.zero1"


@scenario("distributed.fsdp2", grid=GRID, requires=(TORCH,), timeout_s=600,
          profiles={"quick": SHARDED_QUICK, "gpu": GPU})
class DistFSDP2(DistributedScenario):
    """FSDP2 `fully_shard` (ZeRO-3-like): overhead vs DDP, parameter and optimizer-state
    bytes per rank, AdamW equivalence."""

    def strategy(self, params: dict[str, Any]) -> str:
        return "torch.fsdp2"


@scenario("distributed.zero.deepspeed", grid={**GRID, "stage": list(STAGES)}, requires=(TORCH, DEEPSPEED),
          timeout_s=900, profiles={"quick": {**SHARDED_QUICK, "stage": ["stage2", "stage2_offload", "stage3"]},
                                   "gpu": GPU})
class DistZeroDeepSpeed(DistributedScenario):
    """DeepSpeed ZeRO 0/1/2/3 and 2+CPU offload from ds_config.json: overhead vs DDP, bytes
    per rank, AdamW equivalence. The offload variant JIT-compiles DeepSpeedCPUAdam on first
    use (cached in ~/.cache/torch_extensions), which counts in its set-up cost."""

    def strategy(self, params: dict[str, Any]) -> str:
        return f"deepspeed.{params['stage']}"

    def setup(self, ctx: RunContext) -> None:
        from reference.distributed.deepspeed_zero import jit_cache

        ctx.provenance["jit_ops_before_launch"] = jit_cache()
        super().setup(ctx)


@scenario("distributed.elastic", grid={"nodes": [2], "steps": [30], "kill_after_step": [10], "step_sleep_s": [0.2],
                                     "global_batch": [32]},
          profiles={"quick": {}}, requires=(TORCH,), timeout_s=600)
class DistElastic(Scenario):
    """Elastic torchrun (c10d rendezvous, --nnodes=1:N, --max-restarts) with one agent per
    node on loopback; the last node is SIGKILLed mid-training. Restart time (kill to the next
    finished step) and the final parameters' distance from an uninterrupted run."""

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        return [TORCH, Processes(params["nodes"])]

    def measure(self, ctx: RunContext) -> list[Metric]:
        from reference.distributed import conformance, elastic, elastic_job

        p = ctx.params
        with tempfile.TemporaryDirectory(prefix="mlsuite-elastic-") as tmp:
            self.config = elastic.ElasticConfig(steps=p["steps"], global_batch=p["global_batch"], seed=ctx.seed,
                                                step_sleep_s=p["step_sleep_s"], checkpoint_dir=f"{tmp}/ckpt")
            started = time.perf_counter()
            self.run = elastic_job.run_elastic(self.config, Path(tmp), nodes=p["nodes"],
                                               kill_after_step=p["kill_after_step"])
            wall = time.perf_counter() - started
        self.uninterrupted = elastic.train(dataclasses.replace(self.config, checkpoint_dir=None, step_sleep_s=0.0))
        restart = self.run.restart_s()
        ctx.provenance.update(launcher="torchrun --rdzv-backend=c10d --nnodes=1:N --max-restarts=3 (one agent per "
                                       "node, 127.0.0.1)", starts=self.run.starts(),
                              rendezvous={"last_call_s": elastic_job.LAST_CALL_S,
                                          "keep_alive_s": elastic_job.KEEP_ALIVE_S,
                                          "keep_alive_misses": elastic_job.KEEP_ALIVE_MISSES})
        return [
            stats.scalar("job_wall", "s", False, wall, kind="cold"),
            stats.scalar("restart_s", "s", False, restart if restart is not None else float("nan"), kind="cold"),
            stats.scalar("final_parameter_max_abs_diff", "abs", False,
                         conformance.max_abs_difference(self.run.parameters, self.uninterrupted)),
        ]

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.distributed import conformance

        return conformance.elastic_checks(self.run, self.uninterrupted, ctx.params["steps"], ctx.params["nodes"])


@scenario("distributed.deepspeed.hostfile", grid={"stage": ["stage2"], "slots": [2], "steps": [5]},
          profiles={"quick": {}}, requires=(TORCH, DEEPSPEED), timeout_s=900)
class DistDeepSpeedHostfile(Scenario):
    """The deepspeed launcher reading a hostfile (`localhost slots=N`): how long the launch
    takes end to end, and whether the ranks it started train like single-process AdamW."""

    def requirements(self, params: dict[str, Any]) -> list[Requirement]:
        return [TORCH, DEEPSPEED, Processes(params["slots"])]

    def measure(self, ctx: RunContext) -> list[Metric]:
        import torch

        from reference.distributed import deepspeed_zero, hostfile, launch

        p = ctx.params
        with tempfile.TemporaryDirectory(prefix="mlsuite-dshost-") as tmp:
            hosts = hostfile.write_hostfile(Path(tmp, "hostfile"), {"localhost": p["slots"]})
            args = ["--stage", p["stage"], "--steps", str(p["steps"]), "--seed", str(ctx.seed), "--out-dir", tmp]
            started = time.perf_counter()
            launch.run_command(hostfile.deepspeed_hostfile_command(deepspeed_zero.__file__, args, hosts),
                               self.timeout_s, env=launch.deepspeed_environment(p["slots"], "cpu"))
            wall = time.perf_counter() - started
            self.result = torch.load(Path(tmp, "parameters.pt"), weights_only=True)
        ctx.provenance.update(launcher="deepspeed --hostfile (localhost slots=N) --no_ssh_check", hosts=1)
        return [stats.scalar("launch_to_exit", "s", False, wall, kind="cold")]

    def check(self, ctx: RunContext) -> list[Check]:
        from reference.distributed import conformance
        from reference.distributed.deepspeed_zero import batching_of, load_config
        from reference.training.models import build

        p = ctx.params
        config = load_config()
        reference = conformance.single_process_training(lambda: build("mlp", "tiny", ctx.seed), config,
                                                        batching_of(config, p["slots"]), p["steps"], ctx.seed)
        return [conformance.ranks_from_hostfile(self.result["world_size"], {"localhost": p["slots"]}),
                *conformance.equivalence_checks(f"deepspeed.hostfile.{p['stage']}", self.result, reference,
                                                p["steps"], p["slots"])]
