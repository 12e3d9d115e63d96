"""End to end, as users gate a pull request: `mlsuite ab` of HEAD against itself is never
"regressed", and against a commit whose timed training step does 10% more work it never
says "pass" (on a quiet host it says "regressed"; when the noise hides 10% it must say
"inconclusive"). The rates over many decisions are measured by `nox -s study-ab` and
recorded under results/studies/, not asserted here: they depend on the host's load."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from suite.study import FAST_BUDGET, TIME_PLANT, decide, main, scratch_clone  # noqa: E402

SELECT = ("training.baseline", ["model=mlp"])


@pytest.mark.slow
def test_ab_never_cries_wolf_and_never_passes_a_planted_slowdown(tmp_path: Path) -> None:
    clone, commits = scratch_clone(tmp_path)
    config = tmp_path / "fast.toml"
    config.write_text(FAST_BUDGET)
    same = decide(clone, "HEAD", "HEAD", *SELECT, rounds=3, config=config, out=tmp_path / "ab")
    assert same["exit"] in (0, 3), same
    assert "regressed" not in same["verdicts"].values(), same
    planted = decide(clone, "HEAD", commits[TIME_PLANT.name], *SELECT, rounds=3, config=config, out=tmp_path / "ab")
    assert planted["exit"] in (1, 3), planted
    assert planted["verdicts"]["step_time.value"] in ("regressed", "inconclusive"), planted
    assert planted["verdicts"]["cpu_time.value"] in ("regressed", "inconclusive"), planted


def test_a_study_whose_decisions_ab_refuses_stops_and_keeps_no_study_file(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Every decision would be the same usage error: the study says so once and writes no
    study of refusals."""
    out = tmp_path / "studies"
    assert main(["--aa", "1", "--planted", "0", "--rounds", "0", "--conditions", "quiet", "--out", str(out)]) == 2
    assert "--rounds must be at least 2" in capsys.readouterr().err
    assert not list(out.glob("*.json"))
