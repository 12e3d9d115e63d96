"""Sessions: tests, bench-cpu, bench-gpu, asv, gate, report, mutate, lint.

CPU sessions install with constraints/cpu.txt, which pins the local CPU build of torch
(any other torch spec pulls several GB of CUDA wheels). bench-gpu creates no environment:
it runs on a pre-provisioned GPU host with the interpreter that has CUDA torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"

CONSTRAINTS = ("-c", "constraints/cpu.txt")
RESULTS = Path("results")


def install(session: nox.Session, extras: str) -> None:
    session.install(*CONSTRAINTS, "--upgrade", "pip")
    session.install(*CONSTRAINTS, "-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite except GPU tests (CI runs exactly this)."""
    install(session, "all,dev")
    session.run("pytest", "-m", "not gpu", "--durations=15", *session.posargs)


@nox.session(name="bench-cpu")
def bench_cpu(session: nox.Session) -> None:
    """The quick CPU profile of every registered scenario, then the report."""
    install(session, "all")
    session.run("mlsuite", "run", "--profile", "quick", "--out", str(RESULTS), *session.posargs)
    session.run("mlsuite", "report", "--results", str(RESULTS))


@nox.session(name="bench-count")
def bench_count(session: nox.Session) -> None:
    """The quick profile's in-process steps counted under callgrind, one run each (README:
    Instruction counts), into results/instructions/; then the report."""
    install(session, "all")
    session.run("mlsuite", "run", "--profile", "quick", "--count", "instructions", "--replicates", "1",
                "--out", str(RESULTS), *session.posargs)
    session.run("mlsuite", "report", "--results", str(RESULTS))


@nox.session(name="bench-gpu", venv_backend="none")
def bench_gpu(session: nox.Session) -> None:
    """The gpu profile with this interpreter (which must have CUDA torch), then the report."""
    python = sys.executable
    session.run(python, "-c", "import sys, torch; sys.exit(0 if torch.cuda.is_available() else "
                "'bench-gpu: this interpreter has no CUDA torch')")
    session.run(python, "-m", "suite", "run", "--profile", "gpu", "--out", str(RESULTS), *session.posargs)
    session.run(python, "-m", "suite", "report", "--results", str(RESULTS))


# asv times a benchmark in 2 rounds of up to 5 samples or 10 s per parameter point by default,
# starting a fresh interpreter for every point (each imports torch and the registry) and
# setting the benchmark up again in each round: the last two commits x 27 benchmarks (~285
# points each) were stopped at 41% after 12 minutes on 2 cores. The default comparison takes
# one round of at most 5 samples or 2 s per point, forked from one process that imported the
# suite once (14 points that only import and skip: 41-46 s spawned vs 12-21 s forked, load
# ~11). `nox -s asv -- ...` passes anything else.
ASV_BUDGET = ("-a", "rounds=1", "-a", "repeat=1,5,2.0", "--launch-method", "forkserver")


@nox.session
def asv(session: nox.Session) -> None:
    """asv across commits (virtualenv environments). Default: the last two commits."""
    session.install("asv>=0.6", "virtualenv")
    session.run("asv", "machine", "--yes")
    session.run("asv", *(session.posargs or ["continuous", "--factor", "1.2", *ASV_BUDGET, "HEAD~1", "HEAD"]))


@nox.session
def gate(session: nox.Session) -> None:
    """Gate the newest quick results of this machine against the previous ones, or
    `nox -s gate -- --baseline A --current B [--fail-on SPEC ...]`."""
    install(session, "training")
    if session.posargs:
        session.run("mlsuite", "gate", *session.posargs)
        return
    newest = sorted(RESULTS.glob("*-quick.jsonl"))[-2:]
    if len(newest) < 2:
        session.error("need two quick results files in results/ (run `nox -s bench-cpu` twice)")
    session.run("mlsuite", "gate", "--baseline", str(newest[0]), "--current", str(newest[1]))


@nox.session(name="study-ab")
def study_ab(session: nox.Session) -> None:
    """How often `mlsuite ab` says regressed for HEAD vs HEAD and for a planted 10% slowdown,
    without and with a bounded CPU hog -> results/studies/. `nox -s study-ab -- --aa 7 --planted 20`."""
    install(session, "training,optimize,monitoring")
    session.run("python", "-m", "suite.study", *session.posargs)


@nox.session
def calibrate(session: nox.Session) -> None:
    """This machine's A/A noise floors -> results/calibration/. `nox -s calibrate -- --only 'training.*'`."""
    install(session, "all")
    session.run("mlsuite", "calibrate", *(session.posargs or ["--only", "training.*"]))


@nox.session
def report(session: nox.Session) -> None:
    """Regenerate results/README.md, RECORDS.md, index.html (+ plots/) and schema.json."""
    session.install("-e", ".[report]")
    session.run("mlsuite", "report", "--results", str(RESULTS))


# What `nox -s mutate` mutates by default: the statistics, the gate and the pure-Python
# reference modules (accumulation, AMP, cache, batching, correction, KS, performance monitor).
MUTATED = ("suite/stats.py", "suite/compare.py", "reference/training/accumulation.py", "reference/training/amp.py",
           "reference/serving/cache.py", "reference/serving/batching.py", "reference/monitoring/correction.py",
           "reference/monitoring/ks.py", "reference/monitoring/performance.py")
MUTATE_TIME_LIMIT_S = 30 * 60


@nox.session
def mutate(session: nox.Session) -> None:
    """Mutation testing with mutmut, bounded to 30 minutes on 2 cores: `nox -s mutate [-- FILE ...]`.

    Runs in a copy of the working tree (mutmut writes mutants/ next to the code). Each module's
    mutants meet only the tests that import it (and, inside those, mutmut runs only the tests
    that reach the mutated function); slow, distributed and GPU tests are left out (the
    serving unit tests stay: they are what covers the cache and the batcher).
    Prints the kill rate per module and writes it, with every surviving mutant, to
    <session tmp>/mutate/kill-rates.json. `--no-venv --no-install` reuses this interpreter."""
    import json
    import shutil
    import subprocess

    install(session, "all,dev")
    session.install(*CONSTRAINTS, "mutmut>=3.3,<4")
    modules = session.posargs or list(MUTATED)
    work = Path(session.create_tmp()).resolve() / "mutate"
    shutil.rmtree(work, ignore_errors=True)
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        if Path(name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(name, work / name)
    tests = sorted({str(t) for m in modules for t in tests_importing(m)})
    if not tests:
        session.error(f"no test imports any of {modules}")
    config = {"source_paths": ["suite", "reference"], "only_mutate": modules, "also_copy": ["benchmarks"],
              "pytest_add_cli_args_test_selection": tests,
              "pytest_add_cli_args": ["-p", "no:cacheprovider", "-m", "not slow and not distributed and not gpu",
                                      "--benchmark-disable"]}
    with (work / "pyproject.toml").open("a") as pyproject:
        pyproject.write("\n[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
    session.log(f"mutating {modules} against {tests}")
    session.chdir(work)
    session.run("timeout", str(MUTATE_TIME_LIMIT_S), "mutmut", "run", "--max-children", "2", external=True,
                success_codes=[0, 1, 124])
    listing = session.run("mutmut", "results", "--all", "true", silent=True, external=True) or ""
    report = kill_rates(listing, modules)
    (work / "kill-rates.json").write_text(json.dumps(report, indent=2))
    for module, row in report.items():
        session.log(f"{module}: {row['killed']}/{row['tested']} killed ({row['kill_rate']:.1%}); "
                    f"{len(row['survived'])} survived, {row['not_run']} not run")


def tests_importing(module: str) -> list[Path]:
    """Test files that import the module (`a.b.c` as `import a.b.c`, `from a.b.c import` or
    `from a.b import c`): what its mutants are run against."""
    import ast

    dotted = module.removesuffix(".py").replace("/", ".")
    package, _, leaf = dotted.rpartition(".")
    found = []
    for path in sorted(Path("tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name == dotted for a in node.names) or (
                    isinstance(node, ast.ImportFrom) and (node.module == dotted or (
                        node.module == package and any(a.name == leaf for a in node.names)))):
                found.append(path)
                break
    return found


def kill_rates(listing: str, modules: list[str]) -> dict[str, dict]:
    """Per module, from `mutmut results --all true` lines (`    a.b.x_f__mutmut_3: killed`)."""
    report: dict[str, dict] = {}
    for line in listing.splitlines():
        name, _, status = line.strip().rpartition(": ")
        dotted = name.split(".x")[0] if ".x" in name else name.rsplit(".", 1)[0]
        module = next((m for m in modules if m.removesuffix(".py").replace("/", ".") == dotted), None)
        if module is None:
            continue
        row = report.setdefault(module, {"killed": 0, "tested": 0, "survived": [], "not_run": 0})
        if status in ("killed", "timeout"):
            row["killed"] += 1
        elif status == "survived":
            row["survived"].append(name)
        else:
            row["not_run"] += 1  # not checked, no tests, skipped, suspicious
            continue
        row["tested"] += 1
    for row in report.values():
        row["kill_rate"] = row["killed"] / row["tested"] if row["tested"] else 0.0
    return report


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the code, mypy over the harness."""
    session.install(*CONSTRAINTS, "-e", ".[dev]")
    session.run("ruff", "check", "suite", "reference", "tests", "benchmarks", "noxfile.py")
    session.run("mypy", "suite")
