"""The harness's clock. Warm-up (by count *and* time) is kept out of the samples; on CUDA
each sample is bracketed by CUDA events so it is device time, not launch time.

A sample is one call, unless the clock's own cost would exceed OVERHEAD_TARGET of a call
(CUDA events cost ~20 us of host time, a launch-bound step ~1 ms): then a sample is the mean
of the fewest consecutive calls that brings it under, as timeit and asv do, and its
percentiles are flagged as not claimed (they describe means, not single calls)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

from suite import instructions
from suite.profiles import Budget

_OVERHEAD_CALLS = 2000
OVERHEAD_TARGET = 0.005  # clock cost per sample / time per sample, with margin under the 1% check


@dataclass(frozen=True)
class Timed:
    times: list[float]  # seconds per call (the mean over calls_per_sample calls)
    clock: str  # "host" or "device"
    overhead: float  # seconds the timing itself adds per call (measured, shared by the sample's calls)
    calls_per_sample: int
    warmup_calls: int
    warmup_s: float
    cpu_times: list[float] | None = None  # process CPU seconds per call beside each host sample
    first_s: float | None = None  # the contender's first call (cold), when asked for


# A contender hands out samples: `run(n)` performs n more timed units and returns their
# seconds. In-process callables get one from `clocked`; a contender that times itself
# elsewhere (ranks of a distributed job, a server under load) passes its own.
SampleSource = Callable[[int], list[float]]


def _noop() -> None:
    return None


def _warm_up(fn: Callable[[], Any], budget: Budget, sync: Callable[[], None]) -> tuple[int, float]:
    calls, start = 0, time.perf_counter()
    while calls < budget.warmup_calls or time.perf_counter() - start < budget.warmup_s:
        fn()
        calls += 1
    sync()
    return calls, time.perf_counter() - start


def _enough(n: int, started: float, budget: Budget) -> bool:
    if n >= budget.max_samples:
        return True
    return n >= budget.min_samples and time.perf_counter() - started >= budget.max_time_s


def _device_samples(fn: Callable[[], Any], n: int, calls: int = 1) -> list[float]:
    import torch

    pairs: list[tuple[Any, Any]] = []
    while len(pairs) < n:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(calls):
            fn()
        end.record()
        pairs.append((begin, end))
    torch.cuda.synchronize()
    return [b.elapsed_time(e) / 1000.0 / calls for b, e in pairs]


def _event_record_cost() -> float:
    """Host time of recording a CUDA event pair: what the device clock adds to a launch-bound
    step. (The device interval of an empty pair measures launch latency on an idle GPU, not
    an addition to a busy stream's time, so it is not used.)"""
    import torch

    costs = []
    for _ in range(_OVERHEAD_CALLS):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        begin.record()
        end.record()
        costs.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    return sorted(costs)[len(costs) // 2]


@cache
def timer_overhead(clock: str) -> float:
    """Median cost the clock adds to one sample, in seconds."""
    if clock == "device":
        return _event_record_cost()
    _host_pairs(_noop, 100, 1)
    times = sorted(_host_pairs(_noop, _OVERHEAD_CALLS, 1)[0])
    return times[len(times) // 2]


def _calls_per_sample(fn: Callable[[], Any], overhead: float, sync: Callable[[], None]) -> int:
    """The fewest calls (a power of two) whose total time makes the clock's cost at most
    OVERHEAD_TARGET of it (timeit's autorange, on a warm function). Judged on the fastest of
    three tries, so one slow call (a page fault, a preemption) cannot pick too few."""
    calls = 1
    while True:
        tries = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            tries.append(time.perf_counter() - start)
        if overhead <= OVERHEAD_TARGET * min(tries):
            return calls
        calls *= 2


def time_calls(fn: Callable[[], Any], budget: Budget, device: str = "cpu") -> Timed:
    """Warm fn up, then time it call by call within the budget."""
    return time_interleaved({"": fn}, budget, device)[""]


def time_once(fn: Callable[[], Any], device: str = "cpu") -> tuple[float, Any]:
    """A cold-start cost (load, export, compile, first call): one wall-clock measurement."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
    else:
        start = time.perf_counter()
        result = fn()
    return time.perf_counter() - start, result


@dataclass
class _Clocked:
    """An in-process callable as a SampleSource on the harness's clock, keeping the CPU
    time of each host sample beside its wall time."""

    fn: Callable[[], Any]
    device: str
    calls: int = 1
    cpu_times: list[float] | None = None

    def __call__(self, n: int) -> list[float]:
        if self.device.startswith("cuda"):
            return _device_samples(self.fn, n, self.calls)
        times, cpu = _host_pairs(self.fn, n, self.calls)
        self.cpu_times = (self.cpu_times or []) + cpu
        return times


def _host_pairs(fn: Callable[[], Any], n: int, calls: int) -> tuple[list[float], list[float]]:
    wall, cpu = time.perf_counter, time.process_time
    times, cpu_times = [], []
    for _ in range(n):
        t0, c0 = wall(), cpu()
        for _ in range(calls):
            fn()
        c1, t1 = cpu(), wall()
        times.append((t1 - t0) / calls)
        cpu_times.append((c1 - c0) / calls)
    return times, cpu_times


INTERLEAVE_CHUNK = 5  # samples per contender per turn: small enough to share every stretch of time


def _next_chunk(have: int, budget: Budget, chunk: int) -> int:
    """Never past min_samples while below it, never past max_samples."""
    limit = budget.min_samples if have < budget.min_samples else budget.max_samples
    return min(chunk, limit - have)


# Looks at the samples so far ({contender: seconds}): true when they settle the question asked.
Settled = Callable[[Mapping[str, list[float]]], bool]


def time_interleaved(contenders: Mapping[str, Callable[[], Any] | SampleSource], budget: Budget,
                     device: str = "cpu", *, self_timed: bool = False, first_call: bool = False,
                     until: Settled | None = None) -> dict[str, Timed]:
    """Time several contenders side by side: each warmed up by count and time, then
    sampled a few at a time in turn until every one has enough under the budget's rules.
    Ratios between contenders (a speedup, an overhead) are then measured in the same
    stretch of time, so load that drifts on a shared host does not skew them.

    `contenders` are zero-argument callables timed on the harness's clock, or, with
    `self_timed`, SampleSources that time themselves (`run(n) -> n seconds`).
    `first_call` keeps each contender's first call apart as its cold time.
    `until` makes it sequential: it is asked each time every contender has another
    min_samples (a look), and sampling stops at the first look it calls settled. A caller
    that stops on a CI must widen it for the number of looks it may take."""
    on_cuda = device.startswith("cuda")
    sync: Callable[[], None] = _noop
    if on_cuda:
        import torch

        sync = torch.cuda.synchronize
    clock = "host" if self_timed or not on_cuda else "device"
    counting = instructions.active()  # under callgrind: count the sampled region, per contender
    if counting:
        budget = instructions.counting_budget(budget, self_timed)
    overhead = timer_overhead("host" if self_timed else clock)
    sources: dict[str, SampleSource] = {}
    calls: dict[str, int] = {}
    firsts: dict[str, float | None] = {}
    warm: dict[str, tuple[int, float]] = {}
    for name, contender in contenders.items():
        if self_timed:
            source: SampleSource = contender  # type: ignore[assignment]
            firsts[name] = source(1)[0] if first_call else None
            warm[name] = _warm_up(partial(source, 1), budget, _noop)
            calls[name] = 1
        else:
            fn: Callable[[], Any] = contender  # type: ignore[assignment]
            firsts[name] = time_once(fn, device)[0] if first_call else None
            # Counted, a sample is one call: calls sized by the clock would vary run to run.
            if counting:
                instructions.check_affordable(name, fn, calls=1, contenders=len(contenders))
            warm[name] = _warm_up(fn, budget, sync)
            calls[name] = 1 if counting else _calls_per_sample(fn, overhead, sync)
            source = _Clocked(fn, device, calls[name])
        sources[name] = source
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    started, look = time.perf_counter(), budget.min_samples
    while pending := [name for name, times in samples.items() if not _enough(len(times), started, budget)]:
        for name in pending:
            # A self-timed sample is a window of its own (a second of load): one per turn, ABAB,
            # since five seconds of wrk between two stretches of our generator moved the
            # generator's throughput by 25% (serving.loadgen, c16).
            chunk = _next_chunk(len(samples[name]), budget, 1 if self_timed else INTERLEAVE_CHUNK)
            with instructions.region(name, chunk * calls[name], counting):
                samples[name] += sources[name](chunk)
        if until is not None and min(map(len, samples.values())) >= look:
            if until(samples):
                break
            look += budget.min_samples
    return {
        name: Timed(times=samples[name], clock=clock, overhead=overhead / calls[name],
                    calls_per_sample=calls[name], warmup_calls=warm[name][0], warmup_s=warm[name][1],
                    cpu_times=getattr(sources[name], "cpu_times", None), first_s=firsts[name])
        for name in contenders
    }
