"""Instruction counts of the timed region under Valgrind's callgrind: a measure that load on
a shared host cannot move (CodSpeed's answer for CI on shared runners).

The worker runs under `valgrind --tool=callgrind --instr-atstart=no`: nothing is counted
until the harness's clock (suite.timing) brackets a contender's samples with the client
requests of a tiny C shim (zero, start; stop, dump named after the contender and its number
of calls). The runner reads the dumps back and records `<prefix>instructions_per_call`, and
from callgrind's cache simulation `<prefix>estimated_cycles_per_call`.

Counts do not see memory stalls or parallel speedups: they measure the work a step asks of
the CPU, not how long the CPU takes to do it; the cycle estimate adds modelled cache misses,
still not this CPU's stalls. The instrumented region runs
some hundreds of times slower than natively, so only short steps are counted.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cache
from pathlib import Path

MODE_ENV = "MLSUITE_COUNT"  # set to "instructions" in the worker's environment to count
MODE = "instructions"
METRIC = "instructions_per_call"
UNIT = "instructions"
CYCLES_METRIC = "estimated_cycles_per_call"
CYCLES_UNIT = "cycles (estimated)"
# Callgrind's cycle estimate, as KCachegrind computes it from the cache simulation: an L1
# miss costs ~10 cycles and a last-level miss ~100 on top of the instruction. A model of a
# simple core with two cache levels, not of this CPU: it sees misses, not stalls or overlap.
L1_MISS_CYCLES, LL_MISS_CYCLES = 10, 100
# The gate's threshold for counts when no rule names them: a counted run does the same work
# every time (fixed calls, fixed warm-up, GC at the same phase), so counts agree to ~0.1%
# between runs and a 0.5% change is a verdict; a calibrated A/A floor still raises it.
DEFAULT_RULE = f"*{METRIC}:+0.5%"
OUT_NAME = "callgrind.out"
# Samples per contender per run under callgrind (two dumps of five): counts barely vary
# within a run, and every sample costs hundreds of times its native time.
SAMPLES = 10
# A contender whose counted region would take more CPU seconds than this (estimated from
# one warm call under Valgrind) is not counted: the run would outlast any sensible budget.
MAX_REGION_S = 300.0
# The instrumented region's slowdown over a call under Valgrind uninstrumented, with margin:
# measured 1.5x on the digits MLP AdamW step (0.66 s -> ~1.0 s CPU per call; Valgrind
# re-translates oneDNN's run-time code either way), more for plain Python.
INSTRUMENTED_SLOWDOWN = 10.0
# A call's slowdown under Valgrind uninstrumented over the same call natively, set well
# below what torch steps measured (440x: MLP AdamW 1.5 ms -> 0.66 s; ~800x: CNN 10.5 ms ->
# ~8.5 s), since Python-heavy steps slow down less (at 200x tuning.optuna's 15 ms trial
# step was refused, yet it counts in ~40 s). It only refuses steps far too long before
# Valgrind starts; the in-worker check decides the rest.
NATIVE_SLOWDOWN = 50.0
# A counted worker's time limit is the scenario's times this: startup alone (imports, setup)
# runs ~10x slower under Valgrind, and a starved niced worker was seen to need 4x its 900 s.
TIMEOUT_FACTOR = 6

SHIM_SOURCE = r"""
#include <valgrind/callgrind.h>
/* Bracket exactly the measured region: counts start at zero, stop before the dump. */
void mlsuite_count_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void mlsuite_count_stop(const char *name) { CALLGRIND_STOP_INSTRUMENTATION; CALLGRIND_DUMP_STATS_AT(name); }
int mlsuite_on_valgrind(void) { return RUNNING_ON_VALGRIND; }
"""

# Environment that makes the work of a run the same in every run: one malloc arena (no
# per-thread arenas chosen by timing), no malloc tunables left to chance, fixed hash seed,
# and no bytecode written: a run that compiles a module leaves its heap unlike a run that
# reads the cached bytecode (0.3% more instructions, seen in a fresh clone's first run).
STABLE_ENV = {"MALLOC_ARENA_MAX": "1", "PYTHONHASHSEED": "0", "GLIBC_TUNABLES": "glibc.malloc.arena_max=1",
              "PYTHONDONTWRITEBYTECODE": "1"}


# A counted run's heap is shifted by its replicate (`shift_layout`); kept alive for the run.
_PADDING: list[bytearray] = []
PADDING_OBJECTS = 512


def shift_layout(replicate: int) -> None:
    """Move where everything the run allocates lands, differently for each replicate.
    A count depends on the heap's layout (alignment, hash-table collisions, allocator
    paths): forks of one zygote count the same to the instruction, yet a docstring changed
    in the harness moved an optimize b1 latency's count by 1.2% and tuning.optuna's trial
    by 2%. Replicates that all saw one layout would put the spread between runs at 0 and
    let any unrelated change look like a regression; shifted, their spread includes it."""
    import random

    sizes = random.Random(replicate).choices(range(1, 1025), k=PADDING_OBJECTS)
    _PADDING[:] = [bytearray(size) for size in sizes]


def stretch_switch_interval() -> None:
    """Hand the GIL over about as often, in work done, as a native run does. Python forces
    a switch every 5 ms of wall time; under callgrind that is some hundreds of times less
    work, and where the switches fall depends on how fast the host runs Valgrind: the
    log step of MLflow's asynchronous logger (a writer thread beside it) moved 5.9% between
    two passes at loads 4 and 7, and 0.02% between two with the interval stretched."""
    sys.setswitchinterval(sys.getswitchinterval() * NATIVE_SLOWDOWN * INSTRUMENTED_SLOWDOWN)


def requested() -> bool:
    """Whether this process (the runner, or a worker under Valgrind) is in counting mode."""
    return os.environ.get(MODE_ENV) == MODE


def enable() -> None:
    """Counting mode for every worker this process starts."""
    os.environ[MODE_ENV] = MODE


def cache_dir() -> Path:
    return Path(os.environ.get("MLSUITE_CACHE", Path.home() / ".cache" / "mlsuite"))


def compiler() -> str | None:
    return next((found for name in ("cc", "gcc", "clang") if (found := shutil.which(name))), None)


def build_shim(folder: Path | None = None) -> Path:
    """Compile the shim once per source (named by its hash) into the cache folder; a
    concurrent build by another worker is harmless (atomic rename)."""
    from suite.errors import SuiteError

    folder = folder or cache_dir()
    digest = hashlib.sha256(SHIM_SOURCE.encode()).hexdigest()[:12]
    target = folder / f"callgrind-shim-{digest}.so"
    if target.exists():
        return target
    cc = compiler()
    if cc is None:
        raise SuiteError("no C compiler (cc, gcc or clang) on PATH to build the callgrind shim")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".shim-") as tmp:
        source, built = Path(tmp, "shim.c"), Path(tmp, "shim.so")
        source.write_text(SHIM_SOURCE)
        done = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(built), str(source)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise SuiteError(f"building the callgrind shim failed (is valgrind/callgrind.h installed?): "
                             f"{done.stderr.strip()[-400:]}")
        built.replace(target)
    return target


def unavailable() -> str | None:
    """None when counting can run here, else why not (the `skipped` reason)."""
    from suite.errors import SuiteError

    if shutil.which("valgrind") is None:
        return "instruction counts need valgrind (Debian: apt-get install valgrind); it is not on PATH"
    try:
        build_shim()
    except SuiteError as exc:
        return f"instruction counts need the callgrind shim: {exc}"
    return None


@cache
def _shim() -> ctypes.CDLL:
    shim = ctypes.CDLL(str(build_shim()))
    shim.mlsuite_count_stop.argtypes = [ctypes.c_char_p]
    return shim


def active() -> bool:
    """Counting mode asked for and this process runs under Valgrind."""
    return requested() and bool(_shim().mlsuite_on_valgrind())


def region_name(contender: str, calls: int) -> str:
    return f"mlsuite:{calls}:{contender}"


@contextmanager
def counted(contender: str, calls: int) -> Iterator[None]:
    """Count the instructions of the body as `calls` calls of `contender` (one dump). A full
    collection first, so the cyclic GC's allocation counter starts every region at zero:
    otherwise where its collections fall depends on everything the process did before."""
    shim = _shim()
    gc.collect()
    shim.mlsuite_count_start()
    try:
        yield
    finally:
        shim.mlsuite_count_stop(region_name(contender, calls).encode())


def counting_budget(budget, self_timed: bool):  # Budget -> Budget
    """The budget of a counted run: SAMPLES samples per contender and a warm-up of a fixed
    number of calls, whatever the profile: anything the clock decides (how many warm-up
    calls fit in warmup_s) would make one run's work differ from the next. A self-timed
    contender is refused: its work happens in other processes (ranks, a server) or on its
    own clock, and callgrind counts only this process's region."""
    from suite.registry import Skip

    if self_timed:
        raise Skip("instruction counts: this scenario's contenders time themselves (ranks of a job, a server "
                   "under load); callgrind counts only the worker process's own region")
    return budget.model_copy(update={"min_samples": SAMPLES, "max_samples": SAMPLES, "warmup_s": 0.0})


def check_affordable(contender: str, fn, calls: int, contenders: int = 1) -> None:
    """Skip a contender whose counted region would outlast its share of MAX_REGION_S (the
    run's `contenders` split it: three batch sizes of an LSTM at 300 s each kept a worker
    counting for over 9 minutes), estimated from one warm call's CPU time under Valgrind
    (uninstrumented) times the instrumented slowdown.
    Called before the warm-up, so a step too long to count costs two calls, not the whole
    warm-up (a CNN step took 4-5 minutes to be refused); the first call pays the one-time
    costs (oneDNN generating its kernels) and is not timed."""
    import time

    from suite.registry import Skip

    fn()
    start = time.process_time()  # CPU time: load on the host does not make a step look long
    fn()
    estimate = (time.process_time() - start) * calls * SAMPLES * INSTRUMENTED_SLOWDOWN
    if estimate > MAX_REGION_S / contenders:
        raise Skip(f"instruction counts: the step of {contender or 'the scenario'!r} is too long to count "
                   f"(~{estimate:.0f} CPU s under callgrind for {SAMPLES} samples; limit {MAX_REGION_S:.0f} s "
                   f"for the run's {contenders} contender{'s' if contenders > 1 else ''})")


def too_long_natively(step_s: float | None) -> str | None:
    """Why a step timed natively (CPU seconds of a warm call, by the runner's native
    set-up) is too long to count, or None; a transformer step of 0.14 s natively spent
    over five minutes under Valgrind before the in-worker check could refuse it."""
    if step_s is None:
        return None
    estimate = step_s * NATIVE_SLOWDOWN * INSTRUMENTED_SLOWDOWN * SAMPLES
    if estimate <= MAX_REGION_S:
        return None
    return (f"instruction counts: the step is too long to count ({step_s * 1000:.3g} ms natively, at least "
            f"~{estimate:.0f} CPU s under callgrind for {SAMPLES} samples; limit {MAX_REGION_S:.0f} s)")


def region(contender: str, calls: int, counting: bool):  # ContextManager
    """The timed region of one chunk of samples: counted when counting, else nothing."""
    return counted(contender, calls) if counting else nullcontext()


def not_countable(requirements: list) -> str | None:
    """Why a scenario cannot be counted, from its declared requirements: a multi-process
    scenario (its work is in processes callgrind does not follow)."""
    from suite.requirements import Processes

    for requirement in requirements:
        if isinstance(requirement, Processes) and requirement.count > 1:
            return (f"instruction counts: a {requirement.count}-process scenario; callgrind counts only "
                    f"the worker process's own region")
    return None


@cache
def compile_sources(root: Path, module: str) -> None:
    """Bytecode for the worker's own code (the harness, the references, the scenario's
    package) before the first counted run of a session, so every run reads the same cache
    and none compiles."""
    import compileall

    for package in dict.fromkeys(("suite", "reference", module.split(".")[0])):
        if (folder := root / package).is_dir():
            compileall.compile_dir(folder, quiet=1)


def worker_environment(env: dict[str, str]) -> dict[str, str]:
    """The worker's environment for a counted run: counting mode, one thread, STABLE_ENV."""
    return {**env, **STABLE_ENV, MODE_ENV: MODE, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1"}


def counted_outcome(outcome: dict, folder: Path) -> dict:
    """A counted worker's outcome: its times (taken under Valgrind, meaningless) replaced
    by instruction counts; no counted region at all is a `skipped` run with the reason."""
    found = metrics(read_dumps(folder))
    outcome = {**outcome, "metrics": [m.model_dump() for m in found],
               "checks": [c for c in outcome.get("checks", []) if c.get("name") != "harness.timer_overhead"]}
    if outcome.get("status") in ("ok", "failed"):
        failed = [c["name"] for c in outcome["checks"] if not c.get("passed")]
        outcome.update(status="failed" if failed else "ok",
                       reason=f"checks failed: {', '.join(failed)}" if failed else "")
    if not found and outcome.get("status") == "ok":
        outcome.update(status="skipped", reason="instruction counts: the scenario times nothing in-process on the "
                                                "harness clock (suite.timing), so there is no region to count")
    return outcome


def valgrind_command(command: list[str], out_file: Path) -> list[str]:
    """The worker command under callgrind, counting nothing until the shim says so, with
    the cache simulation on (it adds little to a region that is a small part of the run);
    address-space randomisation off where `setarch -R` is allowed. Threads are counted
    apart, and the shim's requests zero and dump the calling thread's counts only: the work
    another thread (MLflow's async logger, an interop pool) happens to do inside the region
    depends on how the host schedules it, and moved MLflow's counts by 60% under load."""
    prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--cache-sim=yes", "--separate-threads=yes",
              f"--callgrind-out-file={out_file}", "--dump-line=no", "--dump-instr=no", "--compress-strings=no",
              "--log-fd=2"]
    setarch = shutil.which("setarch")
    if setarch and subprocess.run([setarch, "-R", "true"], capture_output=True).returncode == 0:
        prefix = [setarch, "-R", *prefix]
    return [*prefix, *command]


@dataclass(frozen=True)
class Dump:
    contender: str
    calls: int
    instructions: int
    cycles: int | None = None  # estimated, when the dump has the cache simulation's events


_TRIGGER = re.compile(r"^desc: Trigger: Client Request: mlsuite:(\d+):(.*)$", re.M)
_EVENTS = re.compile(r"^events: (.+)$", re.M)
# "totals:" is the dump's sum, one number per event; callgrind 3.19 writes "summary: 0"
# after a zeroing request.
_TOTAL = re.compile(r"^totals: ([\d ]+)$", re.M)


def estimated_cycles(totals: dict[str, int]) -> int | None:
    """Instructions plus the modelled cost of cache misses; None without the simulation."""
    if "I1mr" not in totals:
        return None
    l1 = sum(totals.get(event, 0) for event in ("I1mr", "D1mr", "D1mw"))
    last_level = sum(totals.get(event, 0) for event in ("ILmr", "DLmr", "DLmw"))
    return totals["Ir"] + L1_MISS_CYCLES * l1 + LL_MISS_CYCLES * last_level


def parse_dump(text: str) -> Dump | None:
    """One callgrind output file: the region it closes and its totals; None for a dump
    the shim did not ask for (program termination)."""
    trigger, total = _TRIGGER.search(text), _TOTAL.search(text)
    if trigger is None:
        return None
    if total is None:
        from suite.errors import SuiteError

        raise SuiteError(f"callgrind dump of {trigger[2]!r} has no totals line")
    events = (found[1].split() if (found := _EVENTS.search(text)) else ["Ir"])
    numbers = [int(n) for n in total[1].split()]
    totals = dict(zip(events, numbers + [0] * (len(events) - len(numbers))))  # trailing zeros may be left out
    return Dump(contender=trigger[2], calls=int(trigger[1]), instructions=totals["Ir"],
                cycles=estimated_cycles(totals))


# Dumps are named <out>.<part>-<thread> with threads apart (<out>.<part> without), and
# <out>.<pid>.<part>-<thread> from the zygote's forks; the dump at termination has no part.
_PART = re.compile(r"\.(\d+)(?:-\d+)?$")


def _dump_number(path: Path) -> int:
    return int(found[1]) if (found := _PART.search(path.name)) else 0


def take_dumps(folder: Path, pid: int, into: Path) -> None:
    """Move the dumps of process `pid` out of a folder that many processes dump into
    (named <out>.<pid>[.<part>][-<thread>]: `valgrind_command` with a %p out file)."""
    own = re.compile(rf"{re.escape(OUT_NAME)}\.{pid}([.-].*)?")
    for path in folder.glob(f"{OUT_NAME}.{pid}*"):
        if own.fullmatch(path.name):
            path.replace(into / path.name)


def read_dumps(folder: Path) -> list[Dump]:
    """Every region dump in `folder`, in the order the worker wrote them."""
    paths = sorted(folder.glob(f"{OUT_NAME}*"), key=_dump_number)
    return [dump for path in paths if (dump := parse_dump(path.read_text(errors="replace")))]


def _per_call(name: str, unit: str, per_call: list[float], calls: int):  # Metric
    """Each dump's per-call figure is a sample (a mean over that dump's calls), the run's
    value their mean."""
    from suite import stats

    metric = stats.summarize(name, unit, False, per_call, clock="callgrind", calls_per_sample=calls)
    mean = sum(per_call) / len(per_call)
    low, high = stats.bootstrap_ci(per_call, stats.ESTIMATORS["mean"])
    return metric.model_copy(update={"value": mean, "run_values": [mean], "estimator": "mean",
                                     "ci_low": low, "ci_high": high})


def metrics(dumps: list[Dump]) -> list:  # list[Metric]
    """Per contender, `<prefix>instructions_per_call` and, when every dump has the cache
    simulation, `<prefix>estimated_cycles_per_call`."""
    by_contender: dict[str, list[Dump]] = {}
    for dump in dumps:
        by_contender.setdefault(dump.contender, []).append(dump)
    found = []
    for contender, own in by_contender.items():
        calls = max(d.calls for d in own)
        found.append(_per_call(f"{contender}{METRIC}", UNIT, [d.instructions / d.calls for d in own], calls))
        if all(d.cycles is not None for d in own):
            found.append(_per_call(f"{contender}{CYCLES_METRIC}", CYCLES_UNIT,
                                   [d.cycles / d.calls for d in own], calls))  # type: ignore[operator]
    return found


def rules_with_default(rules: list) -> list:  # list[RegressionCheck]
    """The user's rules, plus the count threshold unless a rule already names counts."""
    from suite.compare import RegressionCheck

    if any(rule.applies_to(METRIC) for rule in rules):
        return rules
    return [*rules, RegressionCheck.parse(DEFAULT_RULE)]
