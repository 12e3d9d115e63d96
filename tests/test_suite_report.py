"""The report from frozen example records: every section, numbers equal to the records'
own (recomputed from the JSONL without the suite), A/B and calibration files feeding only
the regressions section, change points that ignore a one-off spike."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from suite.ab import verdict_summary
from suite.compare import gate
from suite.errors import SuiteError
from suite.report import build, load_with_sources, ordinary_files, write_report
from suite.report_families import FAMILY_IDS
from suite.report_history import change_points
from suite.report_model import Section, checks_cell, noise_flags
from suite.schema import Check, load_records
from tests.factories import record, runs_of

DATA = Path(__file__).parent / "data"
EXAMPLES = sorted((DATA / "report").glob("*.jsonl"))
SECTION_IDS = (*FAMILY_IDS, "counts", "conformance", "regressions", "history", "machines")


def example_results(folder: Path) -> Path:
    """A results folder holding every frozen example (the v2 one with replicated runs too)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in [*EXAMPLES, DATA / "results-v2.jsonl"]:
        shutil.copy(path, folder / path.name)
    return folder


def raw_records() -> list[dict]:
    return [record for path in [*EXAMPLES, DATA / "results-v2.jsonl"] for record in raw_records_of(path)]


def raw_records_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def raw_metric(record: dict, name: str) -> dict:
    return next(m for m in record["metrics"] if m["name"] == name)


@pytest.fixture(scope="module")
def sections(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Section]:
    folder = example_results(tmp_path_factory.mktemp("results"))
    records, sources = load_with_sources(folder)
    return {s.id: s for s in build(records, sources, folder)}


def rows_of(section: Section, table: int = 0) -> list[list]:
    return section.tables[table].rows


def test_every_section_is_built_in_order(sections: dict[str, Section]) -> None:
    assert tuple(sections) == SECTION_IDS
    assert all(s.answers for s in sections.values())
    for family in FAMILY_IDS:
        assert sections[family].plot is not None, family
        assert rows_of(sections[family]), family


def test_every_plot_and_column_has_units() -> None:
    folder = DATA / "report"
    records, sources = load_with_sources(folder)
    for section in build(records, sources, folder):
        if section.plot is not None:
            assert "(" in section.plot.xlabel and "(" in section.plot.ylabel, section.id
        for table in section.tables:
            numeric = [c for c in table.columns if c.direction]
            assert all(c.unit for c in numeric), (section.id, [c.name for c in numeric if not c.unit])


def test_amp_speedup_and_accuracy_delta_equal_the_records(sections: dict[str, Section]) -> None:
    amp = next(r for r in raw_records() if r["scenario"] == "training.amp" and r["runs"])
    row = next(row for row in rows_of(sections["training"])
               if row[0].text == "AMP bf16" and row[0].link.endswith(amp["config_hash"])
               and amp["env"]["machine_id"][:8] in row[2].text)
    assert row[3].value == raw_metric(amp, "amp_speedup")["value"]
    delta = raw_metric(amp, "eval_accuracy")["value"] - raw_metric(amp, "fp32_eval_accuracy")["value"]
    assert row[4].value == pytest.approx(delta, abs=1e-12)
    assert "oversubscribed" in row[3].flags  # every run of this record was flagged


def test_optimize_speedup_is_the_ratio_of_median_latencies(sections: dict[str, Section]) -> None:
    records = [r for r in raw_records() if r["profile"] == "quick"]
    eager = next(r for r in records if r["scenario"] == "optimize.eager")
    newest_ort = max((r for r in records if r["scenario"] == "optimize.onnx.ort"), key=lambda r: r["time_utc"])
    expected = (np.median(raw_metric(eager, "latency.b1")["samples"])
                / np.median(raw_metric(newest_ort, "latency.b1")["samples"]))
    row = next(row for row in rows_of(sections["optimize"]) if row[0].text.startswith("onnxruntime"))
    assert row[5].value == pytest.approx(expected, rel=1e-12)
    assert row[4].value == raw_metric(newest_ort, "latency.b1")["value"]


def test_serving_throughput_under_the_slo_is_read_off_the_curve(sections: dict[str, Section]) -> None:
    fastapi = next(r for r in raw_records() if r["scenario"] == "serving.fastapi")
    slo = fastapi["provenance"]["slo_p99_s"]
    within = []
    for m in fastapi["metrics"]:
        if m["name"].endswith("_throughput") and m["name"][0] in "co" and m["name"] != "raw_throughput":
            latency = raw_metric(fastapi, m["name"].replace("_throughput", "_latency"))
            p99 = next(p["value"] for p in latency["percentiles"] if p["q"] == 99.0)
            if p99 <= slo:
                within.append(m["value"])
    row = rows_of(sections["serving"])[0]
    assert row[3].value == max(within)
    assert row[4].value == raw_metric(fastapi, "goodput")["value"]


def test_side_by_side_servers_share_one_table_with_their_ratios(tmp_path: Path) -> None:
    """A serving.side_by_side record: a row per server with its own figures, and the
    reference server's ratios to the others in the answer, from the record's numbers."""
    shutil.copy(DATA / "side-by-side-xlarge.jsonl", tmp_path)
    records, sources = load_with_sources(tmp_path)
    serving = next(s for s in build(records, sources, tmp_path) if s.id == "serving")
    record = raw_records_of(DATA / "side-by-side-xlarge.jsonl")[0]
    rows = {row[0].text: row for row in rows_of(serving, 1)}
    assert set(rows) == {"fastapi", "torchserve", "triton"}
    for server, row in rows.items():
        assert row[3].value == raw_metric(record, f"{server}_throughput")["value"]
        assert row[5].value == raw_metric(record, f"{server}_efficiency")["value"]
    assert rows["fastapi"][7].text == "-"
    assert rows["triton"][7].value == raw_metric(record, "fastapi_over_triton")["value"]
    ratio = raw_metric(record, "fastapi_over_torchserve")
    assert any(f"÷ torchserve {ratio['value']:.4g}" in answer for answer in serving.answers)


def test_tracking_cost_and_conformance_failures_come_from_the_records(sections: dict[str, Section]) -> None:
    records = raw_records()
    costs = {raw_metric(r, "log_cost_in_train_steps")["value"] for r in records
             if r["scenario"].startswith("tracking.")}
    assert {row[3].value for row in rows_of(sections["tracking"])} == costs
    failed = {(r["scenario"], c["name"]) for r in records for c in r["checks"] if not c["passed"]}
    newest_failed = {(row[1].text, row[4].text) for row in rows_of(sections["conformance"]) if row[0].text == "FAIL"}
    assert newest_failed and newest_failed <= failed
    assert all(row[7].text not in ("", "-") and ".jsonl:" in row[8].text
               for row in rows_of(sections["conformance"]))
    # the onnx.ort failure of the older commit is superseded by its newer passing record
    assert ("optimize.onnx.ort", "harness.timer_overhead") not in newest_failed


def test_history_and_machines_keep_machines_apart(sections: dict[str, Section]) -> None:
    history = rows_of(sections["history"])
    assert history and all(int(row[5].text) >= 2 for row in history)
    assert {row[0].text for row in history} >= {"CPU 2 cores [97ca1019]"}
    machines = rows_of(sections["machines"])
    assert any(row[0].text == "training.amp" for row in machines)
    labels = [c.name for c in sections["machines"].tables[0].columns[3:]]
    assert len(labels) >= 2 and any("H100" in label for label in labels)
    for row in machines:  # each machine's own record in its own column, never one verdict
        cells = dict(zip(labels, row[3:]))
        for label, cell in cells.items():
            assert cell.text == "-" or ("device=cuda" in cell.text) == ("H100" in label)
    assert not any(word in str(sections["machines"]) for word in ("regressed", "inconclusive"))


def test_regressions_compare_newest_with_previous_of_the_same_machine(sections: dict[str, Section]) -> None:
    answers = " ".join(sections["regressions"].answers)
    assert "45ffb1a8 against 253b3df3" in answers
    verdicts = {row[0].text for table in sections["regressions"].tables for row in table.rows}
    assert verdicts <= {"regressed", "inconclusive", "not comparable", "not gated"}


def test_ab_and_calibration_files_feed_only_the_regressions(tmp_path: Path) -> None:
    folder = example_results(tmp_path / "results")
    ab = folder / "ab"
    ab.mkdir()
    base = load_records(DATA / "report" / "20261126T172927-0035969e-253b3df3-quick.jsonl")
    head = load_records(DATA / "report" / "20261126T174215-0035969e-45ffb1a8-quick.jsonl")
    base = [r for r in base if r.key in {h.key for h in head}]
    shutil.copy(DATA / "report" / "20261126T174215-0035969e-45ffb1a8-quick.jsonl", ab / "stamp-head.jsonl")
    summary = verdict_summary(gate(base, head), base, head, rounds=2)
    (ab / "stamp-verdicts.json").write_text(json.dumps(summary, default=str))
    (folder / "calibration").mkdir()
    (folder / "calibration" / "x.jsonl").write_text("not a results file\n")
    assert all("ab" not in p.parts and "calibration" not in p.parts for p in ordinary_files(folder))
    write_report(folder)
    page = (folder / "index.html").read_text()
    assert "A/B 253b3df3 → 45ffb1a8 (2 rounds" in page and "stamp-verdicts.json" in page
    assert "ab/stamp-head.jsonl" not in page


def test_a_folder_with_only_ab_runs_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "ab").mkdir()
    shutil.copy(DATA / "results-v2.jsonl", tmp_path / "ab" / "x-base.jsonl")
    with pytest.raises(SuiteError, match="no .jsonl results files"):
        write_report(tmp_path)


def test_change_points_need_a_persistent_shift() -> None:
    step = [10.0, 10.1, 9.9, 10.0, 12.0, 12.1, 11.9, 12.0]
    spike = [10.0, 10.1, 9.9, 14.0, 10.0, 10.1, 9.9, 10.0]
    assert change_points(step, noise_sd=0.1)[0] == [4]
    assert change_points(spike, noise_sd=0.1)[0] == []
    assert change_points(step[:3], noise_sd=0.1) == ([], "too few runs")


def test_noise_marks() -> None:
    assert noise_flags(1.0, 0.95, 1.05, None) == ()
    assert noise_flags(1.0, 0.8, 1.1, None) == ("CI ±20%",)
    assert noise_flags(0.01, -0.02, 0.03, None) == ("CI spans 0",)


def test_markdown_links_its_plots_and_folds_every_record(tmp_path: Path) -> None:
    folder = example_results(tmp_path)
    written = write_report(folder)
    readme = (folder / "README.md").read_text()
    plots = [p for p in written if p.suffix == ".svg"]
    assert len(plots) >= len(FAMILY_IDS) and all(f"](plots/{p.name})" in readme for p in plots)
    records = sum(len(load_records(p)) for p in ordinary_files(folder))
    listing = (folder / "RECORDS.md").read_text()
    assert listing.count("<details>") == records and "](RECORDS.md#r-" in readme
    assert all(f'<a id="{link[len("RECORDS.md#"):]}"></a>' in listing
               for link in re.findall(r"\]\((RECORDS\.md#r-[^)]+)\)", readme))
    assert (folder / "index.html").read_text().count("<details id=") == records


def test_importing_the_report_loads_no_plotting_or_change_point_library() -> None:
    code = ("import sys, suite, suite.report; "
            "print(sorted(m for m in ('matplotlib', 'ruptures', 'otava') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_counts_sit_beside_the_timed_step_and_never_replace_it(tmp_path: Path) -> None:
    folder = shutil.copytree(DATA / "counts", tmp_path / "results")
    timed = json.loads(next(folder.glob("*.jsonl")).read_text())
    counted, skipped = (json.loads(line) for line in next((folder / "instructions").glob("*.jsonl")).read_text()
                        .splitlines())
    records, sources = load_with_sources(folder)
    built = {s.id: s for s in build(records, sources, folder)}
    (row,) = rows_of(built["counts"])
    counts = raw_metric(counted, "instructions_per_call")
    assert row[0].text == "training.baseline" and row[3].value == counts["value"]
    assert any(run["oversubscribed"] for run in counted["runs"]) and row[3].flags == ()  # load cannot move a count
    assert row[4].value == pytest.approx((max(counts["run_values"]) / min(counts["run_values"]) - 1) * 100)
    assert row[5].value == len(counts["run_values"]) == 2 and row[6].text == "-"  # not calibrated
    assert row[7].value == raw_metric(counted, "estimated_cycles_per_call")["value"]
    step = raw_metric(timed, "step_time")["value"]
    assert row[8].value == step and row[8].text.startswith(f"{step * 1e3:.4g}")  # shown in ms
    (not_counted,) = rows_of(built["counts"], 1)
    assert not_counted[0].text == skipped["scenario"] and not_counted[2].text == skipped["reason"]
    assert "do not see memory stalls" in " ".join(built["counts"].notes)
    # the family table keeps the timed record: a count never stands in for a time
    training = str(built["training"])
    assert timed["run_id"] in training and counted["run_id"] not in training
    # the machine's calibrated spread of that count, once `mlsuite calibrate --count instructions` measured it
    key = f"{counted['scenario']}|{counted['config_hash']}|instructions_per_call"
    (folder / "calibration").mkdir()
    (folder / "calibration" / f"{counted['env']['machine_id']}.json").write_text(json.dumps(
        {"machine_id": counted["env"]["machine_id"], "entries": {key: {"thresholds": {"1": 0.0}, "spread": 2e-4,
                                                                      "runs": 8}}}))
    (row,) = rows_of({s.id: s for s in build(records, sources, folder)}["counts"])
    assert row[6].value == pytest.approx(0.02) and row[6].text == "0.0200% (8 runs)"


def test_an_inconclusive_check_is_reported_as_such_not_as_a_failure(tmp_path: Path) -> None:
    unsettled = Check(name="loadgen.throughput_agrees_with_wrk", passed=False, inconclusive=True,
                      detail="the CI straddles +-10%: about 26 more samples would settle it")
    shown = record(runs_of(0.01, 1), scenario="serving.loadgen", checks=[unsettled])
    (tmp_path / "run.jsonl").write_text(shown.model_dump_json() + "\n")
    records, sources = load_with_sources(tmp_path)
    sections = {s.id: s for s in build(records, sources, tmp_path)}
    conformance = sections["conformance"]
    # a serving.loadgen record that does not say which tool at what concurrency is left out of that table
    assert not any("wrk and hey" in table.caption for table in sections["serving"].tables)
    (row,) = rows_of(conformance)
    assert row[0].text == "inconclusive" and "26 more samples" in row[7].text
    assert any("0 failed check(s), 1 inconclusive" in answer for answer in conformance.answers)
    assert checks_cell(shown).text == "inconclusive 1/1: loadgen.throughput_agrees_with_wrk"


def test_load_generator_agreement_shows_the_newest_record_per_tool_and_concurrency(tmp_path: Path) -> None:
    """Two serving.loadgen records of wrk at c1, from two commits: the newer one's ratios
    and verdicts are in the serving section, with an answer line per tool."""
    shutil.copy(DATA / "loadgen-wrk-c1.jsonl", tmp_path)
    records, sources = load_with_sources(tmp_path)
    serving = next(s for s in build(records, sources, tmp_path) if s.id == "serving")
    older, newer = sorted(raw_records_of(DATA / "loadgen-wrk-c1.jsonl"), key=lambda r: r["time_utc"])
    (row,) = rows_of(serving, next(i for i, t in enumerate(serving.tables) if "wrk and hey" in t.caption))
    ratio = raw_metric(newer, "ours_throughput_over_wrk")
    assert row[0].text == "wrk" and row[1].text == "c1" and row[3].value == ratio["value"]
    assert ratio["value"] != raw_metric(older, "ours_throughput_over_wrk")["value"]
    assert row[6].text.startswith("pass")
    assert any(answer.startswith("Load generator ÷ wrk, throughput: c1 ") and f"{ratio['value']:.4g}" in answer
               for answer in serving.answers)
