"""The load generator checked against wrk and hey (Debian packages) on the same endpoint,
body, headers and concurrency: each tool run becomes a self-timed contender of
`suite.timing.time_interleaved`, so rounds of ours and theirs alternate and the ratio of
their throughputs comes with a bootstrap CI instead of resting on one run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

TOOLS = ("wrk", "hey")
# The tools ours must match both ways. wrk is C on one epoll loop, as ours is one event loop,
# and turns a response into the next request faster than ours does. hey is Go, a goroutine
# per connection, and slower than both where the generator's turnaround counts: at c1 ours
# measured 1.23x hey's throughput (wrk ~1.3x) on the same endpoint. Against hey, ours can
# only be shown not to fall behind.
BOTH_WAYS = frozenset({"wrk"})
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


class HttpTarget(Protocol):
    """What wrk and hey need of an adapter: where to POST, with which headers and body."""

    url: str
    headers: dict[str, str]

    def encode(self, request: Any) -> bytes: ...


@dataclass(frozen=True)
class ExternalResult:
    tool: str
    throughput: float  # requests/s
    p50_s: float
    non_2xx: int


def parse_wrk(text: str) -> ExternalResult:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    if rate is None or p50 is None:
        raise ValueError(f"cannot read wrk output: {text[-300:]!r}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return ExternalResult("wrk", float(rate.group(1)), float(p50.group(1)) * _UNITS[p50.group(2)],
                          int(bad.group(1)) if bad else 0)


def parse_hey(text: str) -> ExternalResult:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"50%+ in ([\d.]+) secs", text)
    if rate is None or p50 is None:
        raise ValueError(f"cannot read hey output: {text[-300:]!r}")
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
    return ExternalResult("hey", float(rate.group(1)), float(p50.group(1)),
                          sum(n for c, n in codes.items() if not 200 <= c < 300))


def _command(tool: str, adapter: HttpTarget, body_path: Path, concurrency: int, seconds: int) -> list[str]:
    if tool == "wrk":
        lines = ['wrk.method = "POST"', f'wrk.body = io.open("{body_path}", "rb"):read("*a")']
        lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in adapter.headers.items()]
        script = body_path.with_name("post.lua")
        script.write_text("\n".join(lines) + "\n")
        return ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script), adapter.url]
    command = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-D", str(body_path)]
    for k, v in adapter.headers.items():
        command += ["-T", v] if k.lower() == "content-type" else ["-H", f"{k}: {v}"]
    return [*command, adapter.url]


def run_external(tool: str, adapter: HttpTarget, request: Any, concurrency: int, duration_s: float,
                 cpus: set[int] | None = None) -> ExternalResult:
    """Drive the adapter's endpoint with wrk (one thread, like our one event loop) or hey,
    on `cpus` when given."""
    if tool not in TOOLS:
        raise ValueError(f"unknown external load generator {tool!r}; choose from {', '.join(TOOLS)}")
    if shutil.which(tool) is None:
        raise FileNotFoundError(f"{tool} is not on PATH (Debian: apt-get install {tool})")
    body = request if isinstance(request, bytes) else adapter.encode(request)
    seconds = max(1, round(duration_s))
    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
        body_path = Path(tmp, "body")
        body_path.write_bytes(body)
        done = subprocess.run(_command(tool, adapter, body_path, concurrency, seconds), capture_output=True,
                              text=True, timeout=seconds + 30, check=False,
                              preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    if done.returncode != 0:
        raise RuntimeError(f"{tool} exited with {done.returncode}: {done.stderr[-300:]}")
    return (parse_wrk if tool == "wrk" else parse_hey)(done.stdout)


@dataclass
class ExternalSource:
    """wrk or hey as a self-timed contender: `run(n)` makes n runs of `seconds` each and
    returns seconds per request (1 / throughput) of each; every run is kept."""

    tool: str
    adapter: HttpTarget
    request: Any
    concurrency: int
    seconds: float
    cpus: set[int] | None = None
    results: list[ExternalResult] = field(default_factory=list)

    def __call__(self, n: int) -> list[float]:
        runs = [run_external(self.tool, self.adapter, self.request, self.concurrency, self.seconds, self.cpus)
                for _ in range(n)]
        self.results += runs
        return [1.0 / r.throughput if r.throughput > 0 else float(self.seconds) for r in runs]
