"""`mlsuite`: list, run, compare, gate, report, env, migrate.

Bad input (arguments, a config file, a results file) ends in one line on stderr naming the
problem and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from suite import registry
from suite.errors import SuiteError

EXIT_USAGE = 2
EXIT_GATE_FAILED = 1


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise SuiteError(f"{self.prog}: {message}")


def build_parser() -> Parser:
    parser = Parser(prog="mlsuite", description=__doc__)
    parser.add_argument("--packages", default=",".join(registry.DEFAULT_PACKAGES),
                        help="comma-separated packages whose <family>.scenarios modules register scenarios")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("list", help="registered scenarios, their grids and requirements")
    p.add_argument("--json", action="store_true")
    p.add_argument("--profile", default=None, help="show only the grid of this profile")

    p = sub.add_parser("run", help="run scenarios, appending records to a results file")
    p.add_argument("--profile", default="quick", choices=["quick", "full", "gpu"])
    p.add_argument("--only", default="*", help="glob over scenario ids, e.g. 'training.*'")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="only grid points with this parameter value, e.g. model=mlp (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the newest file of this machine and profile")
    p.add_argument("--config", type=Path, default=None, help="TOML file with [profiles.<name>] budget overrides")
    p.add_argument("--track", default=None, metavar="TOOL",
                   help="also log every record, as it is written, to this tracker (mlflow, tensorboard, wandb)")
    p.add_argument("--track-dir", type=Path, default=None, help="the tracker's store (default: <out>/tracking/<tool>)")

    p = sub.add_parser("compare", help="per-metric table: medians, ratio, CI, Mann-Whitney p, verdict")
    p.add_argument("baseline", type=Path)
    p.add_argument("current", type=Path)
    p.add_argument("--allow-cross-machine", action="store_true")

    p = sub.add_parser("gate", help="exit 1 on a significant regression or a failed check")
    p.add_argument("--baseline", type=Path, required=True)
    p.add_argument("--current", type=Path, required=True)
    p.add_argument("--fail-on", nargs="*", default=[], metavar="SPEC",
                   help="e.g. throughput:-5%% latency.p99:+10%%; default: every metric, 10%% in its bad direction")
    p.add_argument("--allow-cross-machine", action="store_true")

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


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from suite.profiles import load_budget
    from suite.runner import run

    budget = load_budget(args.profile, args.config)
    malformed = [w for w in args.where if "=" not in w]
    if malformed:
        raise SuiteError(f"--where takes KEY=VALUE, got {malformed[0]!r}")
    where = dict(w.split("=", 1) for w in args.where)
    track = None
    if args.track:
        from suite.sinks import sink_for

        track = sink_for(args.track, args.track_dir or args.out / "tracking" / args.track, args.packages)
    console = Console(stderr=True)
    status_line = console.status("starting")
    with status_line:
        def on_start(label: str, index: int, total: int) -> None:
            status_line.update(f"[{index}/{total}] {label}")

        def on_record(record) -> None:  # type: ignore[no-untyped-def]
            colour = {"ok": "green", "failed": "red", "error": "red", "skipped": "yellow"}[record.status.value]
            console.print(f"[{colour}]{record.status.value:>7}[/] {record.scenario} {record.params} "
                          f"{record.duration_s:.1f}s {record.reason[:160]}", markup=True, highlight=False)
            if track is not None:
                try:
                    track(record)
                except Exception as exc:  # noqa: BLE001 - the record is already on disk
                    console.print(f"[yellow]warning:[/] --track {args.track} failed: {type(exc).__name__}: {exc}")

        path = run(args.only, args.profile, budget, args.out, where=where, resume=args.resume,
                   packages=args.packages, on_start=on_start, on_record=on_record,
                   on_warning=lambda text: console.print(f"[yellow]warning:[/] {text}", highlight=False))
    print(path)
    return 0


def print_comparisons(rows: list) -> None:  # type: ignore[type-arg]
    from rich.console import Console
    from rich.table import Table

    table = Table("scenario", "params", "metric", "baseline", "current", "ratio", "ratio CI", "p", "verdict")
    for r in rows:
        p = "-" if r.p_value is None else f"{r.p_value:.3g}"
        table.add_row(r.scenario, ", ".join(f"{k}={v}" for k, v in r.params.items()),
                      f"{r.metric}.{r.stat} ({r.unit})", f"{r.baseline:.4g}", f"{r.current:.4g}",
                      f"{r.ratio:.3f}", f"[{r.ratio_ci[0]:.3f}, {r.ratio_ci[1]:.3f}]", p, r.verdict)
    Console(width=200).print(table)


def cmd_compare(args: argparse.Namespace) -> int:
    from suite.compare import compare, load_many

    rows = compare(load_many([args.baseline]), load_many([args.current]),
                   allow_cross_machine=args.allow_cross_machine)
    if not rows:
        raise SuiteError("the two result sets share no scenario × params × metric")
    print_comparisons(rows)
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from suite.compare import RegressionCheck, gate, load_many

    rules = [RegressionCheck.parse(spec) for spec in args.fail_on]
    result = gate(load_many([args.baseline]), load_many([args.current]), rules,
                  args.allow_cross_machine)
    if not result.comparisons:
        raise SuiteError("the two result sets share no scenario × params × metric")
    print_comparisons(result.comparisons)
    for failure in result.failures:
        print(f"GATE FAIL: {failure}")
    print("gate: " + ("passed" if result.passed else f"FAILED ({len(result.failures)})"))
    return 0 if result.passed else EXIT_GATE_FAILED


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
        print(f"{path}: {migrate_file(path)} records at the current schema")
    return 0


COMMANDS = {"list": cmd_list, "run": cmd_run, "compare": cmd_compare, "gate": cmd_gate,
            "report": cmd_report, "env": cmd_env, "migrate": cmd_migrate}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (a CI cancel, `timeout`) unwinds like Ctrl-C: workers are killed


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        args = build_parser().parse_args(argv)
        args.packages = tuple(p for p in args.packages.split(",") if p)
        return COMMANDS[args.command](args)
    except SuiteError as exc:
        print(f"mlsuite: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mlsuite: interrupted; records written so far are kept (use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
