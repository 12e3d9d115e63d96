"""The worker seeds and pins torch and numpy when a scenario first imports them, and never
imports them itself (torch's import is 15 s of a counted worker's startup under Valgrind)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from suite.worker import when_imported

REPO = Path(__file__).resolve().parents[1]


def test_when_imported_waits_for_the_first_import(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "late_module.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "late_module", raising=False)
    seen: list[int] = []
    when_imported("late_module", lambda module: seen.append(module.VALUE))
    assert seen == []
    import late_module  # noqa: F401

    assert seen == [1]
    when_imported("late_module", lambda module: seen.append(module.VALUE + 1))  # imported already: at once
    assert seen == [1, 2]
    monkeypatch.delitem(sys.modules, "late_module")


def test_torch_is_seeded_and_pinned_on_import_and_not_imported_before() -> None:
    script = ("import sys; from suite.worker import _pin_threads_and_seed; _pin_threads_and_seed(1, 7); "
              "assert 'torch' not in sys.modules; import torch; "
              "print(torch.get_num_threads(), torch.get_num_interop_threads(), torch.rand(1).item())")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    import torch

    torch.manual_seed(7)
    assert done.stdout.split() == ["1", "1", str(torch.rand(1).item())]
