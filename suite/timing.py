"""The harness's clock. Warm-up (by count *and* time) is kept out of the samples; on CUDA
each sample is bracketed by CUDA events so it is device time, not launch time.

A sample is one call, unless the clock's own cost would exceed OVERHEAD_TARGET of a call
(CUDA events cost ~20 us of host time, a launch-bound step ~1 ms): then a sample is the mean
of the fewest consecutive calls that brings it under, as timeit and asv do, and its
percentiles are flagged as not claimed (they describe means, not single calls)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

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


def _host_samples(fn: Callable[[], Any], budget: Budget, calls: int = 1) -> list[float]:
    clock = time.perf_counter
    times: list[float] = []
    started = clock()
    while not _enough(len(times), started, budget):
        t0 = clock()
        for _ in range(calls):
            fn()
        times.append((clock() - t0) / calls)
    return times


def _device_samples(fn: Callable[[], Any], budget: Budget, calls: int = 1) -> list[float]:
    import torch

    pairs: list[tuple[Any, Any]] = []
    started = time.perf_counter()
    while not _enough(len(pairs), started, budget):
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
    budget = Budget(warmup_calls=100, warmup_s=0.0, min_samples=_OVERHEAD_CALLS,
                    max_samples=_OVERHEAD_CALLS, max_time_s=60.0)
    times = sorted(_host_samples(_noop, budget))
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
    on_cuda = device.startswith("cuda")
    if on_cuda:
        import torch

        sync: Callable[[], None] = torch.cuda.synchronize
    else:
        sync = _noop
    warm_calls, warm_s = _warm_up(fn, budget, sync)
    clock = "device" if on_cuda else "host"
    overhead = timer_overhead(clock)
    calls = _calls_per_sample(fn, overhead, sync)
    times = (_device_samples if on_cuda else _host_samples)(fn, budget, calls)
    return Timed(times=times, clock=clock, overhead=overhead / calls, calls_per_sample=calls,
                 warmup_calls=warm_calls, warmup_s=warm_s)


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
