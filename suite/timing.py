"""The harness's clock. Warm-up (by count *and* time) is kept out of the samples; on CUDA
each call is bracketed by CUDA events so the sample is device time, not launch time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from suite.profiles import Budget

_OVERHEAD_CALLS = 2000


@dataclass(frozen=True)
class Timed:
    times: list[float]  # seconds per call
    clock: str  # "host" or "device"
    overhead: float  # seconds the timing itself adds to one sample (measured)
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


def _host_samples(fn: Callable[[], Any], budget: Budget) -> list[float]:
    clock = time.perf_counter
    times: list[float] = []
    started = clock()
    while not _enough(len(times), started, budget):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return times


def _device_samples(fn: Callable[[], Any], budget: Budget) -> list[float]:
    import torch

    pairs: list[tuple[Any, Any]] = []
    started = time.perf_counter()
    while not _enough(len(pairs), started, budget):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        pairs.append((begin, end))
    torch.cuda.synchronize()
    return [b.elapsed_time(e) / 1000.0 for b, e in pairs]


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
    times = (_device_samples if on_cuda else _host_samples)(fn, budget)
    return Timed(times=times, clock=clock, overhead=timer_overhead(clock),
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
