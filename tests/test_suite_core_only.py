"""`import suite`, `mlsuite list` and `pytest --collect-only` need only the core: every heavy
package is imported inside the scenarios that use it. Checked by blocking those imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ["torch", "sklearn", "deepspeed", "onnx", "onnxruntime", "onnxscript", "torchao", "fastapi", "uvicorn",
         "httpx", "optuna", "ray", "mlflow", "tensorboard", "wandb", "prometheus_client", "pandas", "hypothesis",
         "tritonclient", "PIL", "yaml"]
BLOCKER = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ModuleNotFoundError(f"blocked heavy import: {{name}}")
sys.meta_path.insert(0, Block())
"""


def run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run([sys.executable, "-c", BLOCKER + code], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)


def test_mlsuite_list_imports_no_heavy_package() -> None:
    result = run_blocked("from suite.cli import main; sys.exit(main(['list']))")
    assert result.returncode == 0, result.stderr
    assert "training.baseline" in result.stdout
    assert "failed to import" not in result.stderr, result.stderr


@pytest.mark.slow
def test_pytest_collects_without_heavy_packages() -> None:
    result = run_blocked("import pytest; sys.exit(pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider']))")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "error" not in result.stdout.splitlines()[-1]
