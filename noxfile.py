"""Sessions: tests, bench-cpu, bench-gpu, asv, gate, report, lint.

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


@nox.session(name="bench-gpu", venv_backend="none")
def bench_gpu(session: nox.Session) -> None:
    """The gpu profile with this interpreter (which must have CUDA torch), then the report."""
    python = sys.executable
    session.run(python, "-c", "import sys, torch; sys.exit(0 if torch.cuda.is_available() else "
                "'bench-gpu: this interpreter has no CUDA torch')")
    session.run(python, "-m", "suite", "run", "--profile", "gpu", "--out", str(RESULTS), *session.posargs)
    session.run(python, "-m", "suite", "report", "--results", str(RESULTS))


@nox.session
def asv(session: nox.Session) -> None:
    """asv across commits (virtualenv environments). Default: the last two commits."""
    session.install("asv>=0.6", "virtualenv")
    session.run("asv", "machine", "--yes")
    session.run("asv", *(session.posargs or ["continuous", "--factor", "1.2", "HEAD~1", "HEAD"]))


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


@nox.session
def report(session: nox.Session) -> None:
    """Regenerate results/README.md, results/index.html and results/schema.json."""
    session.install("-e", ".")
    session.run("mlsuite", "report", "--results", str(RESULTS))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the code, mypy over the harness."""
    session.install(*CONSTRAINTS, "-e", ".[dev]")
    session.run("ruff", "check", "suite", "reference", "tests", "benchmarks", "noxfile.py")
    session.run("mypy", "suite")
