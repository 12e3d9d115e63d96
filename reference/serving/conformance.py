"""Conformance checks for model servers. Each takes the parts under test (adapters, a
metrics scrape, a request sender) as arguments, so a test can hand it a broken server or
a broken counter and watch it fail.

Served outputs are fp32 and are judged against the eager model run in fp64 with the fp32
tier of `suite.checks`: max |served - golden| / max |golden| <= 1e-5.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from reference.serving.deployments import BadCase, Deployment
from suite import checks, loadgen
from suite.schema import Check, Metric

# Every check id this family emits (suite.checks: `<part>` is filled in at run time); each
# one has a planted-bug test marked `breaks(id)`.
CHECK_IDS = (
    "serving.outputs_match_eager",
    "serving.batching_no_crosstalk",
    "serving.batch_equals_individual",
    "serving.bad_input_4xx",
    "serving.metrics_match_client",
    "serving.warmup_ran",
    "serving.no_warmup_when_off",
    "loadgen.<quantity>_agrees_with_<tool>",
    "loadgen.<quantity>_not_behind_<tool>",
    "loadgen.not_the_bottleneck",
    "inprocess.outputs_match_eager",
)

T = TypeVar("T")
AdapterFactory = Callable[[], loadgen.Adapter]
TIER = "fp32"
METRIC_REQUESTS = 200
LOADGEN_HEADROOM = 2.0  # the generator must be able to issue 2x what it measured
EXTERNAL_TOLERANCE = 0.10
AGREEMENT_CONFIDENCE = 0.95  # of the ratio's CI, when it is looked at once


def with_adapter(factory: AdapterFactory, work: Callable[[loadgen.Adapter], Awaitable[T]]) -> T:
    """Run `work` with a fresh adapter on a fresh event loop (clients such as aiohttp must
    be made inside the loop that uses them), closing the adapter after."""

    async def main() -> T:
        adapter = factory()
        try:
            return await work(adapter)
        finally:
            await adapter.aclose()

    return loadgen.run(main)


def served_outputs(factory: AdapterFactory, requests: Sequence[Any], concurrency: int = 1) -> np.ndarray:
    outputs = with_adapter(factory, lambda a: loadgen.fetch_outputs(a, requests, concurrency))
    return np.stack([np.reshape(o, (-1,)) if np.ndim(r) == 1 else o for o, r in zip(outputs, requests, strict=True)])


def outputs_match_eager(factory: AdapterFactory, rows: np.ndarray, golden: np.ndarray, eager: np.ndarray) -> Check:
    """One request per row, one at a time: the served outputs are the model's outputs."""
    served = served_outputs(factory, list(rows))
    check = checks.close_to_golden("serving.outputs_match_eager", served, golden, TIER, baseline=eager)
    check.detail += f"; {len(rows)} rows, one request each"
    return check


def no_crosstalk(factory: AdapterFactory, rows: np.ndarray, golden: np.ndarray, concurrency: int) -> Check:
    """Distinct rows sent concurrently, so the dynamic batcher mixes them: every caller
    must get its own row's outputs back."""
    served = served_outputs(factory, list(rows), concurrency)
    errors = [checks.relative_error(s, g) for s, g in zip(served, golden, strict=True)]
    worst = max(errors)
    tolerance = checks.TIERS[TIER]
    mixed = sum(e > tolerance for e in errors)
    return Check(name="serving.batching_no_crosstalk", passed=worst <= tolerance, observed=worst,
                 tolerance=tolerance, reference="fp64 golden of each caller's own row",
                 detail=f"{len(rows)} distinct rows at concurrency {concurrency}; {mixed} callers got "
                        f"outputs that are not their own")


def batch_equals_individual(batch: AdapterFactory, single: AdapterFactory, rows: np.ndarray) -> Check:
    """One request holding every row answers as the rows sent one by one."""
    together = served_outputs(batch, [rows])[0]
    apart = served_outputs(single, list(rows))
    error = checks.relative_error(together, apart)
    tolerance = checks.TIERS[TIER]
    return Check(name="serving.batch_equals_individual", passed=error <= tolerance, observed=error,
                 tolerance=tolerance, reference="the same rows sent as individual requests",
                 detail=f"{len(rows)} rows in one batch request vs one request each")


Sender = Callable[[BadCase], Awaitable[int]]
Probe = Callable[[], Awaitable[bool]]


def bad_input_rejected(cases: Sequence[BadCase], send: Sender, probe: Probe) -> Check:
    """Every bad request gets a 4xx (never a 5xx, never a 2xx), and after each one a good
    request still succeeds."""

    async def main() -> tuple[dict[str, int], list[str]]:
        statuses, dead = {}, []
        for case in cases:
            statuses[case.name] = await send(case)
            if not await probe():
                dead.append(case.name)
        return statuses, dead

    statuses, dead = loadgen.run(main)
    wrong = [name for name, status in statuses.items() if not 400 <= status < 500]
    detail = "; ".join(f"{name}: {status}" for name, status in statuses.items())
    if dead:
        detail += f"; server stopped answering after: {', '.join(dead)}"
    return Check(name="serving.bad_input_4xx", passed=not wrong and not dead, observed=len(wrong) + len(dead),
                 tolerance=0, reference="4xx for each bad request, then a good request answered",
                 detail=detail)


def http_sender(auth: dict[str, str]) -> Sender:
    """Sends a BadCase with httpx, with the server's token unless the case says otherwise."""

    async def send(case: BadCase) -> int:
        import httpx

        headers = dict(auth) if case.authorized else {}
        async with httpx.AsyncClient(timeout=30) as client:
            if case.upload is not None:
                response = await client.post(case.url, files={"file": case.upload}, headers=headers)
            else:
                if case.content_type is not None:
                    headers["Content-Type"] = case.content_type
                response = await client.post(case.url, content=case.body, headers=headers)
        return response.status_code

    return send


def adapter_probe(factory: AdapterFactory, row: np.ndarray) -> Probe:
    async def probe() -> bool:
        adapter = factory()
        try:
            await adapter.issue(adapter.prepare(row))
        except Exception:  # noqa: BLE001 - any failure means the server is not serving
            return False
        finally:
            await adapter.aclose()
        return True

    return probe


def metrics_match_client(factory: AdapterFactory, rows: np.ndarray, count: Callable[[], float],
                         requests: int = METRIC_REQUESTS, concurrency: int = 16) -> Check:
    """The server's Prometheus request counter moves by exactly the number of requests the
    client sent (all answered) while nothing else talks to it."""
    before = count()
    sent = [rows[i % len(rows)] for i in range(requests)]
    served_outputs(factory, sent, concurrency)
    delta = count() - before
    return Check(name="serving.metrics_match_client", passed=delta == requests, observed=delta,
                 tolerance=float(requests), reference="client-side count of requests sent and answered",
                 detail=f"counter delta {delta:g} for {requests} requests at concurrency {concurrency}")


def warmup_reported(readiness: dict[str, Any], warmup_calls: float, expected: bool) -> Check:
    """/readyz says whether warm-up ran, and the warm-up counter agrees."""
    ran = bool(readiness.get("warmed_up")) and warmup_calls > 0
    return checks.holds("serving.warmup_ran" if expected else "serving.no_warmup_when_off", ran == expected,
                        "server settings", f"readyz warmed_up={readiness.get('warmed_up')}, "
                                           f"warm-up model calls {warmup_calls:g}")


def agrees_with_external(ratio: Metric, tool: str, concurrency: int, tolerance: float = EXTERNAL_TOLERANCE,
                         confidence: float = AGREEMENT_CONFIDENCE) -> Check:
    """Ours over theirs on the same endpoint and concurrency, from interleaved rounds: the
    whole CI of the ratio (at `confidence`, which it was computed at) lies within
    1 +- tolerance, so a larger disagreement is ruled out rather than merely not seen in one
    run; against a tool that is slower itself (external.BOTH_WAYS), only ours falling
    behind it counts. A CI that straddles the band's edge is inconclusive (on these hosts
    the CPU's own speed drifts by ~20% from second to second), not a disagreement."""
    from reference.serving.external import BOTH_WAYS

    what = ratio.name.rsplit("_over_", 1)[0].removeprefix("ours_")
    both_ways = tool in BOTH_WAYS
    return checks.ratio_within(f"loadgen.{what}_{'agrees_with' if both_ways else 'not_behind'}_{tool}", ratio.value,
                               ratio.ci_low, ratio.ci_high, ratio.n, tolerance, tool,
                               f"ours / {tool} = {ratio.value:.3f} ({confidence * 100:.3g}% CI "
                               f"{ratio.ci_low:.3f}-{ratio.ci_high:.3f}, "
                               f"{ratio.n} interleaved rounds each) at concurrency {concurrency}",
                               worse=None if both_ways else ("low" if ratio.higher_is_better else "high"))


def loadgen_headroom(results: Sequence[loadgen.LoadResult], factor: float = LOADGEN_HEADROOM) -> Check:
    """The generator could drive at least `factor` times what it measured (its CPU demand
    was at most 1/factor of the wall time)."""
    capacity = statistics.median(r.capacity for r in results)
    measured = statistics.median(r.throughput for r in results)
    return checks.at_least("loadgen.not_the_bottleneck", capacity / measured, factor, "measured throughput",
                           f"capacity {capacity:.0f} req/s vs {measured:.0f} req/s measured")


def server_checks(deployment: Deployment, rows: np.ndarray, golden: np.ndarray, eager: np.ndarray,
                  concurrency: int) -> list[Check]:
    """Every check that applies to a running deployment."""
    found = [
        outputs_match_eager(deployment.predict, rows, golden, eager),
        no_crosstalk(deployment.predict, rows, golden, concurrency),
    ]
    if deployment.batch is not None:
        found.append(batch_equals_individual(deployment.batch, deployment.predict, rows[:16]))
    found.append(bad_input_rejected(deployment.bad_cases, http_sender(deployment.auth),
                                    adapter_probe(deployment.predict, rows[0])))
    found.append(metrics_match_client(deployment.predict, rows, deployment.requests_counted))
    return found
