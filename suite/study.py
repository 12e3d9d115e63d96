"""How often `mlsuite ab` cries wolf, and how often it catches a real regression, on this host.

A scratch clone of the repository gets planted commits on top of HEAD (never committed to
the real repository): timed, a training step doing 10% more CPU work; counted (`--count
instructions`), training steps doing a fixed loop worth ~1% and ~3% more instructions (a
spin on the clock would count differently in every run). Then `mlsuite ab HEAD HEAD` (A/A)
and `mlsuite ab HEAD PLANT` decide again and again, without and with a bounded CPU hog on one
core (`stress-ng`), and every decision, its verdicts and the host's load are written to
results/studies/. `nox -s study-ab`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reference.lifeline import preexec, unwind_on_sigterm
from suite.instructions import METRIC
from suite.runner import REPO_ROOT


@dataclass(frozen=True)
class Plant:
    """Code appended to reference/training/loop.py: a slower train_step, same result."""

    name: str
    code: str


# The timed step spins for a tenth of its own CPU time: 10% more work, whatever the load.
TIME_PLANT = Plant("time+10%", '''

_unplanted_train_step = train_step


def train_step(*args, **kwargs):  # planted by suite.study: 10% more CPU work, same result
    import time

    started = time.process_time()
    result = _unplanted_train_step(*args, **kwargs)
    until = time.process_time() + 0.1 * (time.process_time() - started)
    while time.process_time() < until:
        pass
    return result
''')


def loop_plant(percent: int, iterations: int) -> Plant:
    """A fixed Python loop before the step: the same extra instructions in every run."""
    return Plant(f"loop+{percent}%", f'''

_unplanted_train_step = train_step


def train_step(*args, **kwargs):  # planted by suite.study: ~{percent}% more instructions, same result
    total = 0
    for i in range({iterations}):
        total += i * i
    return _unplanted_train_step(*args, **kwargs)
''')


# Sized on the digits MLP AdamW step (~7.94M instructions per call, ~460 per iteration).
COUNT_PLANTS = (loop_plant(1, 175), loop_plant(3, 520))

SCENARIOS = {  # the selection of each decision: a training step, an optimize latency, a drift step
    "training.baseline": ["model=mlp"],
    "optimize.eager": [],
    "monitoring.drift": ["rows=2000"],
}
PLANTED_IN = "training.baseline"  # the scenario whose step the plants slow down
FAST_BUDGET = "[profiles.quick]\nwarmup_s = 0.1\nmax_time_s = 0.3\n"


def scratch_clone(parent: Path, plants: tuple[Plant, ...] = (TIME_PLANT,)) -> tuple[Path, dict[str, str]]:
    """A clone of HEAD with one commit per plant on top of it; the commits by plant name."""
    clone = parent / "clone"
    subprocess.run(["git", "clone", "-q", "--no-local", str(REPO_ROOT), str(clone)], check=True, timeout=300)
    git = ["git", "-C", str(clone), "-c", "user.name=study", "-c", "user.email=study@localhost"]
    loop = clone / "reference" / "training" / "loop.py"
    unplanted = loop.read_text()
    base = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    commits = {}
    for plant in plants:
        subprocess.run([*git, "checkout", "-q", "--detach", base], check=True)
        loop.write_text(unplanted + plant.code)
        subprocess.run([*git, "commit", "-qam", f"planted: {plant.name} in the training step"], check=True)
        commits[plant.name] = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                                             text=True).stdout.strip()
    subprocess.run([*git, "checkout", "-q", "--detach", base], check=True)  # HEAD is the unplanted commit
    return clone, commits


@contextmanager
def cpu_hog(on: bool, seconds: int) -> Iterator[None]:
    """A bounded hog on one core: stress-ng stops by itself after `seconds` at the latest."""
    if not on:
        yield
        return
    if shutil.which("stress-ng") is None:
        raise SystemExit("stress-ng is not installed (apt-get install stress-ng)")
    hog = subprocess.Popen(["stress-ng", "--cpu", "1", "--timeout", f"{seconds}s", "--quiet"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=preexec())
    try:
        yield
    finally:
        hog.terminate()
        hog.wait(timeout=30)


def decide(clone: Path, base: str, head: str, only: str, where: list[str], rounds: int, config: Path,
           out: Path, count: bool = False) -> dict[str, Any]:
    load_before = os.getloadavg()
    args = [sys.executable, "-m", "suite", "ab", base, head, "--only", only, "--rounds", str(rounds),
            "--config", str(config), "--out", str(out)]
    for item in where:
        args += ["--where", item]
    if count:
        args += ["--count", "instructions"]
    started = time.monotonic()
    done = subprocess.run(args, cwd=clone, capture_output=True, text=True, timeout=3600, preexec_fn=preexec())
    verdicts_file = sorted(out.glob("*-verdicts.json"))[-1] if done.returncode in (0, 1, 3) else None
    verdicts = json.loads(verdicts_file.read_text()) if verdicts_file else {}
    if verdicts_file:
        verdicts_file.unlink()
    rows = verdicts.get("comparisons", [])
    headline = METRIC if count else "step_time"
    return {
        "scenario": only, "where": where, "exit": done.returncode, "seconds": round(time.monotonic() - started, 1),
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "verdicts": {f"{r['metric']}.{r['stat']}": r["verdict"] for r in rows},
        headline: next(({k: r[k] for k in ("baseline", "current", "ratio", "verdict", "threshold", "detectable")}
                        for r in rows if r["metric"] == headline), None),
        "oversubscribed_runs": verdicts.get("oversubscribed_runs"),
        "error": "" if verdicts_file else done.stderr[-500:],
    }


def rate(outcomes: list[bool]) -> dict[str, Any]:
    from scipy.stats import binomtest

    hits, n = sum(outcomes), len(outcomes)
    if not n:
        return {"k": 0, "n": 0}
    ci = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="exact")
    return {"k": hits, "n": n, "rate": hits / n, "ci95": [round(ci.low, 3), round(ci.high, 3)]}


def summarize(decisions: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for kind in dict.fromkeys(d["kind"] for d in decisions):
        for hog in (False, True):
            picked = [d for d in decisions if d["kind"] == kind and d["hog"] == hog and not d["error"]]
            if not picked:
                continue
            key = f"{kind}{' hog' if hog else ''}"
            summary[key] = {verdict: rate([d["exit"] == code for d in picked])
                            for verdict, code in (("regressed", 1), ("inconclusive", 3), ("pass", 0))}
            summary[key]["load_before_1min"] = sorted(d["load_before"][0] for d in picked)
            summary[key]["seconds_per_decision"] = sorted(d["seconds"] for d in picked)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--aa", type=int, default=7, help="A/A decisions per scenario and condition")
    parser.add_argument("--planted", type=int, default=20, help="decisions per plant and condition")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--count", choices=["instructions"], help="decide on instruction counts (loop plants)")
    parser.add_argument("--conditions", default="quiet,hog", help="quiet, hog or both")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "studies")
    args = parser.parse_args(argv)
    unwind_on_sigterm()  # the hog and the running decision stop too
    args.out.mkdir(parents=True, exist_ok=True)
    count = args.count is not None
    plants = COUNT_PLANTS if count else (TIME_PLANT,)
    scenarios = {PLANTED_IN: SCENARIOS[PLANTED_IN]} if count else SCENARIOS  # a counted decision costs minutes
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = args.out / f"ab-reliability-{'count-' if count else ''}{stamp}.json"
    decisions: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mlsuite-study-") as tmp:
        clone, commits = scratch_clone(Path(tmp), plants)
        config = Path(tmp, "fast.toml")
        config.write_text(FAST_BUDGET)
        # Interleaved (A/A, each plant, A/A, ..., quiet and hog in turn): a study stopped
        # early is still balanced.
        plan = [decision for i in range(max(args.aa, args.planted)) for condition in args.conditions.split(",")
                for decision in [
                    *((condition, "aa", "HEAD", s, w) for s, w in scenarios.items() if i < args.aa),
                    *((condition, plant.name, commits[plant.name], PLANTED_IN, SCENARIOS[PLANTED_IN])
                      for plant in plants if i < args.planted)]]
        for condition, kind, head, only, where in plan:
            hog = condition == "hog"
            with cpu_hog(hog, 3600):
                found = decide(clone, "HEAD", head, only, where, args.rounds, config, Path(tmp, "ab"), count)
            if found["exit"] == 2:  # refused (--rounds 1 on an uncalibrated machine, say): so would every decision be
                print(f"mlsuite ab refused the study's decision: {found['error'].strip()}", file=sys.stderr)
                return 2
            decisions.append({"kind": kind, "hog": hog, **found})
            target.write_text(json.dumps({
                "host": {"cpu": open("/proc/cpuinfo").read().count("processor"), "uname": os.uname().release},
                "rounds": args.rounds, "count": args.count, "budget": FAST_BUDGET,
                "plants": {plant.name: plant.code for plant in plants},
                "summary": summarize(decisions), "decisions": decisions}, indent=1) + "\n")
            print(f"{kind:8} hog={hog} {only:20} exit {found['exit']} in {found['seconds']}s "
                  f"load {found['load_before'][0]}", flush=True)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
