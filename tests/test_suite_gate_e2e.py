"""End to end: the same code measured twice passes the gate; a copy of the code with a
planted 20% slowdown in the training step fails it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

REPO = Path(__file__).resolve().parent.parent
SELECT = ("--only", "training.baseline", "--where", "model=transformer", "--profile", "quick")
SLOWDOWN = '''

_measured_train_step = train_step


def train_step(*args, **kwargs):  # planted by the test: 20% slower, same result
    start = time.perf_counter()
    result = _measured_train_step(*args, **kwargs)
    deadline = time.perf_counter() + 0.2 * (time.perf_counter() - start)
    while time.perf_counter() < deadline:
        pass
    return result
'''


def run_suite(code: Path, out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "suite", "run", *SELECT, "--out", str(out)], cwd=code,
                   check=True, capture_output=True, timeout=600)
    (path,) = out.glob("*.jsonl")
    return path


def gate(baseline: Path, current: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "suite", "gate", "--baseline", str(baseline),
                           "--current", str(current)], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_a_passes_and_a_planted_slowdown_fails(tmp_path: Path) -> None:
    slow_code = tmp_path / "slow-code"
    for folder in ("suite", "reference"):
        shutil.copytree(REPO / folder, slow_code / folder, ignore=shutil.ignore_patterns("__pycache__"))
    loop = slow_code / "reference" / "training" / "loop.py"
    loop.write_text(loop.read_text().replace("import torch\n", "import time\n\nimport torch\n", 1) + SLOWDOWN)

    first = run_suite(REPO, tmp_path / "a")
    second = run_suite(REPO, tmp_path / "b")
    slowed = run_suite(slow_code, tmp_path / "slow")

    same = gate(first, second)
    assert same.returncode == 0, same.stdout
    planted = gate(first, slowed)
    assert planted.returncode == 1, planted.stdout
    assert "GATE FAIL" in planted.stdout and "step_time" in planted.stdout
