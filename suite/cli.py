"""`mlsuite`: list, run, compare, gate, ab, calibrate, report, env, migrate.

Bad input (arguments, a config file, a results file) ends in one line on stderr naming the
problem and exit status 2, never a traceback. `gate` and `ab` exit 0 on pass, 1 on a
regression or a failed check, 3 when the noise left a verdict inconclusive.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from reference.lifeline import unwind_on_sigterm
from suite import instructions, registry
from suite.errors import SuiteError
from suite.profiles import PROFILES

EXIT_USAGE = 2
EXIT_GATE_FAILED = 1
EXIT_INCONCLUSIVE = 3
CALIBRATION = Path("results/calibration")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise SuiteError(f"{self.prog}: {message}")


def _selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="quick", choices=list(PROFILES))
    p.add_argument("--only", default="*", help="glob over scenario ids, e.g. 'training.*'")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="only grid points with this parameter value, e.g. model=mlp (repeatable)")
    p.add_argument("--config", type=Path, default=None, help="TOML file with [profiles.<name>] budget overrides")
    p.add_argument("--count", choices=["instructions"], default=None,
                   help="count the timed region's instructions under Valgrind's callgrind instead of timing it "
                        "(run: written under <out>/instructions)")


def _gating(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fail-on", nargs="*", default=[], metavar="SPEC",
                   help="e.g. throughput:-5%% latency.p99:+10%% delta:-0.01; default: every metric, "
                        "5%% in its bad direction (never below the calibrated A/A floor)")
    p.add_argument("--calibration", type=Path, default=CALIBRATION,
                   help="folder of calibrated A/A floors (mlsuite calibrate)")


def build_parser() -> Parser:
    parser = Parser(prog="mlsuite", description=__doc__)
    parser.add_argument("--packages", default=",".join(registry.DEFAULT_PACKAGES),
                        help="comma-separated packages whose <family>.scenarios modules register scenarios")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("list", help="registered scenarios, their grids and requirements")
    p.add_argument("--json", action="store_true")
    p.add_argument("--profile", default=None, choices=list(PROFILES), help="show only the grid of this profile")

    p = sub.add_parser("run", help="run scenarios, appending records to a results file")
    _selection(p)
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--resume", action="store_true", help="continue the newest file of this machine and profile "
                   "(refused while another run writes it)")
    p.add_argument("--retry-errors", action="store_true",
                   help="with --resume: run the error records again; each new record replaces its error record "
                        "(the old lines are kept in <file>.replaced)")
    p.add_argument("--track", default=None, metavar="TOOL",
                   help="also log every record, as it is written, to this tracker (mlflow, tensorboard, wandb)")
    p.add_argument("--track-dir", type=Path, default=None, help="the tracker's store (default: <out>/tracking/<tool>)")
    p.add_argument("--replicates", type=int, default=None, metavar="R",
                   help="process runs per configuration instead of the profile's (a count pass needs 1: counts of "
                        "two runs agree within 0.05%%)")

    p = sub.add_parser("compare", help="per-metric table: run-level change, CI, verdict")
    p.add_argument("baseline", type=Path)
    p.add_argument("current", type=Path)
    p.add_argument("--allow-cross-machine", action="store_true")
    p.add_argument("--allow-source-change", action="store_true", help="compare records whose scenario source changed")
    p.add_argument("--calibration", type=Path, default=CALIBRATION)

    p = sub.add_parser("gate", help="exit 1 on a regression or a failed check, 3 when inconclusive")
    p.add_argument("--baseline", type=Path, required=True)
    p.add_argument("--current", type=Path, required=True)
    _gating(p)
    p.add_argument("--allow-cross-machine", action="store_true")
    p.add_argument("--allow-source-change", action="store_true", help="compare records whose scenario source changed")

    p = sub.add_parser("ab", help="run BASE and HEAD alternately on this host and gate HEAD against BASE")
    p.add_argument("base", help="a commit, branch or tag (e.g. origin/main)")
    p.add_argument("head", help="a commit, branch or tag (e.g. HEAD)")
    _selection(p)
    _gating(p)
    p.add_argument("--rounds", type=int, help="process runs per side, alternating (default 6; with --count 2, and "
                                              "1 is enough where the machine's count floors are calibrated)")
    p.add_argument("--out", type=Path, default=Path("results/ab"))

    p = sub.add_parser("calibrate", help="measure this machine's A/A noise per scenario and metric")
    _selection(p)
    p.add_argument("--runs", type=int, default=8, help="process runs of the same code per scenario (default 8)")
    p.add_argument("--out", type=Path, default=CALIBRATION)

    p = sub.add_parser("report", help="regenerate results/README.md and results/index.html")
    p.add_argument("--results", type=Path, default=Path("results"))

    p = sub.add_parser("env", help="print this machine's environment fingerprint")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("migrate", help="upgrade results files written by an older schema")
    p.add_argument("files", type=Path, nargs="+")
    return parser


def discover(packages: tuple[str, ...]) -> None:
    for module, error in registry.discover(packages).items():
        print(f"mlsuite: warning: scenario module {module} failed to import: {error}", file=sys.stderr)


def cmd_list(args: argparse.Namespace) -> int:
    discover(args.packages)
    listing: list[dict[str, Any]] = []
    for scenario_id, cls in registry.scenarios().items():
        profiles = ["full", *cls.profiles]
        if args.profile and args.profile not in profiles:
            continue
        listing.append({
            "id": scenario_id, "profiles": profiles,
            "grid": {**cls.grid, **cls.profiles.get(args.profile, {})},
            "requires": [repr(r) for r in cls.requires], "timeout_s": cls.timeout_s,
        })
    if args.json:
        print(json.dumps(listing, indent=2, default=str))
    else:
        for item in listing:
            grid = " ".join(f"{k}={v}" for k, v in item["grid"].items())
            print(f"{item['id']:<32} [{','.join(item['profiles'])}] {grid}")
    return 0


def parse_where(args: argparse.Namespace) -> dict[str, str]:
    """--where KEY=VALUE pairs; a key no selected scenario has is a typo, not a filter."""
    malformed = [w for w in args.where if "=" not in w]
    if malformed:
        raise SuiteError(f"--where takes KEY=VALUE, got {malformed[0]!r}")
    where = dict(w.split("=", 1) for w in args.where)
    discover(args.packages)
    known = {key for cls, params in registry.select(args.only, args.profile) for key in params}
    unknown = sorted(set(where) - known)
    if unknown:
        raise SuiteError(f"--where {unknown[0]}: no selected scenario has that parameter; "
                         f"they have {', '.join(sorted(known)) or 'none'}")
    return where


class Progress:
    """`[k/N] elapsed, ETA` on one status line: the ETA from the mean time per started run."""

    def __init__(self, status_line: Any) -> None:
        self.status_line = status_line
        self.started = time.monotonic()

    def __call__(self, label: str, index: int, total: int) -> None:
        elapsed = time.monotonic() - self.started
        eta = elapsed / max(index - 1, 1) * (total - index + 1) if index > 1 else None
        when = f"{elapsed / 60:.1f} min elapsed" + (f", ~{eta / 60:.1f} min left" if eta is not None else "")
        self.status_line.update(f"[{index}/{total}] {when}: {label}")


def summarize_run(console: Any, records: list) -> None:  # type: ignore[type-arg]
    """The end of a run names every record that is not ok, with its reason."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.status.value] = counts.get(record.status.value, 0) + 1
    console.print("summary: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())), highlight=False)
    for record in records:
        if record.status.value != "ok":
            console.print(f"  {record.status.value:>7} {record.scenario} {record.params}: {record.reason[:300]}",
                          highlight=False, markup=False)
    oversubscribed = [r for r in records if r.oversubscribed]
    if oversubscribed:
        console.print(f"  {len(oversubscribed)} record(s) had a run measured on an oversubscribed host "
                      f"(threads waited for a CPU); their timings are flagged", highlight=False)


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from suite.profiles import load_budget
    from suite.runner import run

    budget = load_budget(args.profile, args.config)
    if args.replicates is not None:
        if args.replicates < 1:
            raise SuiteError("--replicates must be at least 1")
        budget = budget.model_copy(update={"replicates": args.replicates})
    where = parse_where(args)
    track = None
    if args.track:
        from suite.sinks import sink_for

        track = sink_for(args.track, args.track_dir or args.out / "tracking" / args.track, args.packages)
    console = Console(stderr=True)
    status_line = console.status("starting")
    written: list = []  # type: ignore[type-arg]
    with status_line:
        on_start = Progress(status_line)

        def on_record(record) -> None:  # type: ignore[no-untyped-def]
            written.append(record)
            colour = {"ok": "green", "failed": "red", "error": "red", "skipped": "yellow"}[record.status.value]
            console.print(f"[{colour}]{record.status.value:>7}[/] {record.scenario} {record.params} "
                          f"{record.duration_s:.1f}s {record.reason[:160]}", markup=True, highlight=False)
            if track is not None:
                try:
                    track(record)
                except Exception as exc:  # noqa: BLE001 - the record is already on disk
                    console.print(f"[yellow]warning:[/] --track {args.track} failed: {type(exc).__name__}: {exc}")

        path = run(args.only, args.profile, budget, args.out, where=where, resume=args.resume,
                   retry_errors=args.retry_errors, packages=args.packages, on_start=on_start, on_record=on_record,
                   on_warning=lambda text: console.print(f"[yellow]warning:[/] {text}", highlight=False))
    summarize_run(console, written)
    print(path)
    return 0


def print_comparisons(rows: list) -> None:  # type: ignore[type-arg]
    from rich.console import Console
    from rich.table import Table

    from suite.compare import describe_change, describe_detectable

    table = Table("scenario", "params", "metric", "baseline", "current", "change", "95% CI of change", "q",
                  "verdict")
    for r in rows:
        q = "-" if r.p_value is None else f"{r.p_value:.3g}"
        ci = "-" if r.change_ci[0] != r.change_ci[0] else f"[{r.change_ci[0]:+.3g}, {r.change_ci[1]:+.3g}]"
        verdict = r.verdict.value
        if r.detectable is not None:
            verdict += f" ({describe_detectable(r)})"
        elif r.detail:
            verdict += f" ({r.detail})"
        table.add_row(r.scenario, ", ".join(f"{k}={v}" for k, v in r.params.items()),
                      f"{r.metric}.{r.stat} ({r.unit})", f"{r.baseline:.4g}", f"{r.current:.4g}",
                      describe_change(r), ci, q, verdict)
    Console(width=220).print(table)


def _floors(folder: Path, records: list) -> dict:  # type: ignore[type-arg]
    from suite.calibration import floors_for

    return floors_for(folder, records[0].env.machine_id) if records else {}


def cmd_compare(args: argparse.Namespace) -> int:
    from suite.compare import compare
    from suite.schema import load_many

    base, cur = load_many([args.baseline]), load_many([args.current])
    rows = compare(base, cur, allow_cross_machine=args.allow_cross_machine, floors=_floors(args.calibration, cur),
                   allow_source_change=args.allow_source_change)
    if not rows:
        raise SuiteError("the two result sets share no scenario × params × metric")
    print_comparisons(rows)
    return 0


def report_gate(result) -> int:  # type: ignore[no-untyped-def]
    """Print the verdicts and failures; the exit status: 0 pass, 1 failed, 3 inconclusive."""
    print_comparisons(result.comparisons)
    for known in result.known_failures:
        print(f"known failure (failed in the baseline too): {known}")
    for failure in result.failures:
        print(f"GATE FAIL: {failure}")
    if result.failures:
        print(f"gate: FAILED ({len(result.failures)})")
        return EXIT_GATE_FAILED
    if not result.comparisons:
        print("gate: INCONCLUSIVE (nothing was compared: no metric present on both sides)")
        return EXIT_INCONCLUSIVE
    for unsettled in result.inconclusive_checks:
        print(f"inconclusive: {unsettled}")
    if result.inconclusive or result.inconclusive_checks:
        print(f"gate: INCONCLUSIVE ({len(result.inconclusive)} metric(s), {len(result.inconclusive_checks)} check(s): "
              f"the noise hides the threshold; see the detectable effect and what it would take)")
        return EXIT_INCONCLUSIVE
    print("gate: passed")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from suite.compare import RegressionCheck, gate
    from suite.schema import load_many

    rules = instructions.rules_with_default([RegressionCheck.parse(spec) for spec in args.fail_on])
    base, cur = load_many([args.baseline]), load_many([args.current])
    result = gate(base, cur, rules, args.allow_cross_machine, floors=_floors(args.calibration, cur),
                  allow_source_change=args.allow_source_change)
    if not result.comparisons and not result.failures:
        raise SuiteError("the two result sets share no scenario × params × metric")
    return report_gate(result)


def cmd_ab(args: argparse.Namespace) -> int:
    from rich.console import Console

    from suite.ab import ab
    from suite.calibration import floors_for
    from suite.compare import RegressionCheck
    from suite.environment import fingerprint
    from suite.profiles import load_budget

    rules = instructions.rules_with_default([RegressionCheck.parse(spec) for spec in args.fail_on])
    budget = load_budget(args.profile, args.config)
    where = parse_where(args)
    floors = floors_for(args.calibration, fingerprint(budget.seed).machine_id)
    console = Console(stderr=True)
    with console.status("starting") as status_line:
        default_rounds = 2 if instructions.requested() else 6
        result = ab(args.base, args.head, args.only, args.profile, budget, args.out,
                    rounds=default_rounds if args.rounds is None else args.rounds, where=where, rules=rules,
                    floors=floors, packages=args.packages,
                    on_start=Progress(status_line))
    print(f"records: {result.base_path} {result.head_path}\nverdicts: {result.verdicts_path}")
    return report_gate(result.gate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    import tempfile

    from suite.calibration import calibrate
    from suite.profiles import load_budget
    from suite.runner import run
    from suite.schema import load_records

    if args.runs < 4:
        raise SuiteError("--runs must be at least 4 to estimate a spread")
    budget = load_budget(args.profile, args.config).model_copy(update={"replicates": args.runs})
    where = parse_where(args)
    from rich.console import Console

    with tempfile.TemporaryDirectory(prefix="mlsuite-calibrate-") as tmp, \
            Console(stderr=True).status("starting") as status_line:
        path = run(args.only, args.profile, budget, Path(tmp), where=where, packages=args.packages,
                   on_start=Progress(status_line))
        stored = calibrate(load_records(path), args.out)
    print(stored)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from suite.report import write_report

    for path in write_report(args.results):
        print(path)
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from suite.environment import fingerprint

    env = fingerprint(seed=0)
    print(env.model_dump_json(indent=2) if args.json else
          "\n".join(f"{k}: {v}" for k, v in env.model_dump().items()))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from suite.schema import migrate_file

    for path in args.files:
        count, rewritten = migrate_file(path)
        print(f"{path}: {count} records " + ("upgraded (original kept as a backup)" if rewritten
                                             else "already at the current schema; left untouched"))
    return 0


COMMANDS = {"list": cmd_list, "run": cmd_run, "compare": cmd_compare, "gate": cmd_gate, "ab": cmd_ab,
            "calibrate": cmd_calibrate, "report": cmd_report, "env": cmd_env, "migrate": cmd_migrate}


def main(argv: list[str] | None = None) -> int:
    unwind_on_sigterm()  # workers are killed on the way out
    try:
        args = build_parser().parse_args(argv)
        args.packages = tuple(p for p in args.packages.split(",") if p)
        if getattr(args, "count", None):
            instructions.enable()
            if args.command == "run":
                args.out = args.out / "instructions"  # never mixed with (or mistaken for) timed results
        return COMMANDS[args.command](args)
    except SuiteError as exc:
        print(f"mlsuite: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mlsuite: interrupted; records written so far are kept (use --resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`mlsuite list | head`): not an error, and no traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
