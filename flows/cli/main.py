"""`asof`: the command line (contract §3).

Arguments are parsed and validated before anything heavy is imported or written, so a typo costs
milliseconds and leaves the data root untouched. Heavy modules (Prefect, GE, dbt, Feast) are
imported inside the commands that need them.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from typing import Annotated

import typer

from flows.cli import features as cli_features
from flows.cli import lineage as cli_lineage
from flows.cli import monitor as cli_monitor
from flows.cli import usage
from flows.cli import validation as cli_validation
from flows.cli.terminal import printable
from flows.cli.usage import Refused as Refused  # re-exported: tests and callers catch flows.cli.main.Refused
from flows.cli.usage import date_argument, fail, refuse
from flows.dates import DateError, parse_range
from flows.orchestration.runners import DEFAULT_WORKERS, DaskOptions, Runner, RunnerError, task_runner

app = typer.Typer(
    name="asof",
    help=(
        "asof: point-in-time-correct batch features.\n\n"
        "landing -> bronze (Delta) -> validate (GE) -> silver + quarantine -> dbt -> gold -> Feast.\n"
        "Data lives under $ASOF_HOME (default ./data). Dates are ISO YYYY-MM-DD."
    ),
    epilog=(
        "Exit status: 0 done, 1 failed, 2 bad usage (nothing ran), "
        "3 a package the command needs is missing or broken, 130 aborted."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _range(start: str, end: str) -> tuple[dt.date, dt.date]:
    try:
        return parse_range(start, end)
    except DateError as exc:
        refuse(str(exc))


def _prefect_env() -> None:
    """Keep Prefect's state under ASOF_HOME unless the user points at a server."""
    from flows.config import settings

    home = settings().home
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


# ---------------------------------------------------------------- generate


@app.command()
def generate(
    start: Annotated[str, typer.Option(help="First date to generate (YYYY-MM-DD).")],
    end: Annotated[str, typer.Option(help="Last date to generate, inclusive.")],
    scale: Annotated[
        str,
        typer.Option(help="demo (2000x5000), small (20000x50000), bench (100000x100000) or CUSTOMERSxTXNS."),
    ] = "demo",
    seed: Annotated[int, typer.Option(help="Random seed: same seed + date -> identical files.")] = 42,
    inject: Annotated[
        list[str] | None,
        typer.Option(help="Add a fault: FAULT@YYYY-MM-DD[:source] (repeatable). See contract §4."),
    ] = None,
) -> None:
    """Play the four demo upstream systems: write their daily landing files (contract §4)."""
    from flows.config import settings
    from flows.upstream import simulate

    d1, d2 = _range(start, end)
    try:
        sc = simulate.parse_scale(scale)
        faults = [simulate.parse_fault(f) for f in inject or []]
    except ValueError as exc:
        refuse(str(exc))
    landing = settings().landing
    days = (d2 - d1).days + 1
    with _progress_bar(days, "generating") as advance:
        try:
            summary = simulate.generate(
                landing, d1, d2, sc, seed=seed, faults=faults, progress=lambda d: advance(d, "generated")
            )
        except ValueError as exc:
            refuse(str(exc))
    rows = sum(
        (v.get("rows", 0) or 0)
        for per_day in (summary.get("dates") or {}).values()
        for v in per_day.values()
        if isinstance(v, dict)
    )
    typer.echo(f"generated {days} day(s) {d1}..{d2} at scale {sc.name} into {landing} ({rows} rows)")


# ---------------------------------------------------------------- run / backfill / status


def _progress_bar(total: int, label: str):
    """A context manager yielding advance(day, what); quiet when stdout is not a terminal."""
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextlib.contextmanager
    def cm():
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[last]}"),
            disable=not sys.stderr.isatty(),
            console=None,
            transient=False,
        )
        with progress:
            task = progress.add_task(label, total=total, last="")
            finished: set[dt.date] = set()

            def advance(day: dt.date, what: str) -> None:
                # a date counts once: when it is done, or pending the run's one materialization
                done = what in ("materialized", "pending", "failed", "skipped", "generated")
                if done and day not in finished:
                    finished.add(day)
                    progress.advance(task)
                progress.update(task, last=f"{day} {what}")

            yield advance

    return cm()


def _print_results(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    from flows.cli.terminal import cell
    from flows.operations.runs import STAGES

    table = Table(title="asof: per-date status")
    table.add_column("date")
    table.add_column("status")
    for s in STAGES:
        table.add_column(s)
    table.add_column("message", overflow="fold", max_width=80)
    colours = {"succeeded": "green", "skipped": "cyan"}
    for r in results:
        colour = colours.get(r["status"], "red")
        table.add_row(
            r["day"],
            cell(r["status"], colour),
            *[r["stages"].get(s, "-") for s in STAGES],
            cell(r["message"][:400]),  # may quote upstream text (file names, headers, values)
        )
    Console(width=200).print(table)
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    typer.echo("summary: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))


def _print_stage_times() -> None:
    """Where the run's wall time went, stage by stage (the flow ran in this process)."""
    from flows.monitoring.stage_timing import STAGE_SECONDS

    if STAGE_SECONDS:
        split = ", ".join(f"{stage} {secs:.1f} s" for stage, secs in STAGE_SECONDS.items())
        typer.echo(f"time per stage: {split}")


def _run_flow(kind: str, days: int, task_runner: object | None = None, **params) -> list[dict]:
    _prefect_env()
    from flows.orchestration import prefect_api

    server_ready = prefect_api.start_in_background()
    from flows import pipeline
    from flows.monitoring.alerts import MonitoringFailure

    if server_ready is not None:
        prefect_api.preload()  # on the other core while the temporary server starts
        server_ready()

    with _progress_bar(days, kind) as advance, prefect_api.heartbeats_only_if_configured():
        pipeline.PROGRESS_HOOK = advance
        try:
            flow_fn = pipeline.backfill if kind == "backfill" else pipeline.daily_pipeline
            if task_runner is not None:
                flow_fn = flow_fn.with_options(task_runner=task_runner)
            return flow_fn(**params)
        except MonitoringFailure as exc:
            # The data path finished; monitoring marked the run failed. Show the dates, then fail,
            # naming a failed date first: its cause (a refused or broken batch) is what to fix, and
            # the breaches it causes downstream (no gold for the date) only follow from it.
            _print_results(exc.data)
            failed = [r for r in exc.data or [] if r["status"] not in ("succeeded", "skipped")]
            if failed:
                fail(f"{_date_failure(failed)}; monitoring: {exc}")
            fail(str(exc))
        finally:
            pipeline.PROGRESS_HOOK = None


def _date_failure(failed: list[dict]) -> str:
    first = failed[0]
    more = f" (and {len(failed) - 1} more date(s))" if len(failed) > 1 else ""
    return f"{first['day']} {first['status']}: {first['message']}{more}"


@app.command()
def run(date: Annotated[str, typer.Option("--date", help="Execution date (YYYY-MM-DD).")]) -> None:
    """Run the daily flow for one date, every stage (always reruns: the way to redo a date)."""
    day = date_argument(date, "date")
    results = _run_flow("run", 1, execution_date=day.isoformat())
    _print_results(results)
    _print_stage_times()
    bad = [r for r in results if r["status"] != "succeeded"]
    if bad:
        fail(_date_failure(bad[:1]))


@app.command()
def backfill(
    start: Annotated[str, typer.Option(help="First execution date.")],
    end: Annotated[str, typer.Option(help="Last execution date, inclusive.")],
    force: Annotated[bool, typer.Option("--force", help="Rerun dates that already succeeded.")] = False,
    continue_on_failure: Annotated[
        bool, typer.Option("--continue-on-failure", help="Keep going after a failed date.")
    ] = False,
    chunk_days: Annotated[int, typer.Option(help="Dates per dbt invocation / chunk.", min=1, max=366)] = 31,
    runner: Annotated[
        Runner,
        typer.Option(
            help="Where the per-source ingest tasks run: threads (this process) or dask "
            "(worker processes of a Dask cluster). Validation, dbt and Feast stay in this process.",
            case_sensitive=False,
        ),
    ] = Runner.threads,
    address: Annotated[
        str | None,
        typer.Option(
            help="With --runner dask: scheduler of an existing cluster (tcp://host:port). Its workers "
            "must have asof installed and the same ASOF_HOME, ASOF_LAKE_URI and ASOF_STORAGE_OPTIONS "
            "(shared landing files and lake; checked before the run), and PREFECT_API_URL must name a "
            "Prefect server they can reach. Without it a local cluster is started on 127.0.0.1.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help=f"Local Dask cluster: worker processes (default {DEFAULT_WORKERS}).", min=1, max=64
        ),
    ] = None,
    dashboard_port: Annotated[
        int | None,
        typer.Option(
            help="Local Dask cluster: serve the Dask dashboard on 127.0.0.1:PORT (0 = any free port; "
            "needs the bokeh package). Default: no dashboard.",
            min=0,
            max=65535,
        ),
    ] = None,
) -> None:
    """Run a date range in order, in chunks (one dbt invocation per chunk).

    Skips dates that already succeeded unless --force; stops at the first failed date unless
    --continue-on-failure; shows progress and ends with a per-date status table.

    --runner dask runs the ingest tasks on Dask workers (a local cluster or --address): docs/scaling.md.
    """
    d1, d2 = _range(start, end)
    if runner is Runner.threads and (address or workers is not None or dashboard_port is not None):
        refuse("--address, --workers and --dashboard-port need --runner dask")
    if address and (workers is not None or dashboard_port is not None):
        refuse("--workers and --dashboard-port apply to a local cluster, not to --address")
    try:
        options = DaskOptions(
            address=address, n_workers=workers or DEFAULT_WORKERS, dashboard_port=dashboard_port
        )
    except RunnerError as exc:
        refuse(str(exc))
    _prefect_env()
    try:
        with task_runner(runner, options if runner is Runner.dask else None) as flow_runner:
            results = _run_flow(
                "backfill",
                (d2 - d1).days + 1,
                task_runner=flow_runner,
                start=d1.isoformat(),
                end=d2.isoformat(),
                force=force,
                continue_on_failure=continue_on_failure,
                chunk_days=chunk_days,
            )
    except RunnerError as exc:
        fail(str(exc))
    _print_results(results)
    _print_stage_times()
    bad = [r for r in results if r["status"] not in ("succeeded", "skipped")]
    if bad:
        first = bad[0]
        fail(
            f"{len(bad)} date(s) did not succeed; first: {first['day']} {first['status']}: {first['message']}"
        )


@app.command()
def verify(
    start: Annotated[str | None, typer.Option(help="First date to check (default: every date).")] = None,
    end: Annotated[str | None, typer.Option(help="Last date to check (default: start).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON lines.")] = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Fix what can be fixed from upstream, printing each step first: set a damaged newest "
            "commit or checkpoint hint aside (kept under ASOF_HOME/cache/damaged); after a commit was "
            "set aside, recompute every recorded date (a forced backfill), otherwise rerun the dates "
            "that are not succeeded (damaged ones included).",
        ),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --repair: print the steps only.")] = False,
    online: Annotated[
        bool,
        typer.Option(
            "--online",
            help="Also compare the online store with gold's newest rows (a sample of the newest "
            "succeeded date's entities; imports Feast). --repair then re-materializes it.",
        ),
    ] = False,
) -> None:
    """Check that the lake still holds what the run records say: every table's Delta log and data
    files, and per succeeded date and source, ingest's rows = bronze = silver + quarantine.

    Names table, file and date for each finding; exit 1 if anything is damaged (with --repair:
    still damaged afterwards). Recovery by hand: docs/operations.md section 11.
    """
    import json

    from flows.operations import integrity

    d1, d2 = _range(start, end or start) if start else (None, None)
    findings = _findings(d1, d2, online)
    if as_json:
        for f in findings:
            typer.echo(json.dumps({**f.__dict__, "day": f.day.isoformat() if f.day else None}))
    else:
        _print_findings(findings)
    if findings and repair:
        plan = integrity.repair_plan(findings)
        days = _recorded_range()
        # A set-aside commit leaves its table one version back, and which dates that version held is
        # in the lost commit; a table set aside holds none: every recorded date is recomputed
        # (forced). Forgotten data files' dates are rerun (forced); otherwise only the dates that
        # are not succeeded (damaged ones included) are rerun.
        rebuild = any(step.rebuilds_every_date for step in plan)
        rerun = sorted({d for step in plan if step.automatic for d in step.dates})
        stale_online = any(f.table.startswith("online/") for f in findings)
        per_date = any(f.day is not None and not f.table.startswith("online/") for f in findings)
        per_date = per_date or any(step.action == "forget" and not step.dates for step in plan)
        for step in plan:
            typer.echo(printable(f"repair: {step.line()}"))
        if days and (rebuild or per_date):
            how = "--force (every date)" if rebuild else "(dates not succeeded only)"
            typer.echo(f"repair: asof backfill --start {days[0]} --end {days[1]} {how}")
        elif rebuild:  # ops/runs cannot be read until its damaged commit is set aside
            typer.echo("repair: asof backfill --force over every date its run records then hold")
        if rerun and not rebuild:
            typer.echo(f"repair: asof backfill --force over {', '.join(d.isoformat() for d in rerun)}")
        if days and stale_online and not (rebuild or per_date):  # a backfill materializes anyway
            typer.echo(f"repair: materialize the online store from {days[0]} to {days[1]}")
        if dry_run:
            raise typer.Exit(1)
        from flows.config import settings

        for done in integrity.apply_repairs(plan, settings().home / "cache" / "damaged"):
            typer.echo(printable(f"repaired: {done}"))
        # ops/runs itself may have been one of the damaged tables (set aside whole: bronze's dates)
        days = _recorded_range() or (integrity.lake_dates() if rebuild else None)
        if days and (rebuild or per_date):
            results = _run_flow(
                "backfill",
                (days[1] - days[0]).days + 1,
                start=days[0].isoformat(),
                end=days[1].isoformat(),
                force=rebuild,
                continue_on_failure=True,
            )
            _print_results(results)
        if rerun and not rebuild:
            for d in rerun:
                _print_results(
                    _run_flow(
                        "backfill",
                        1,
                        start=d.isoformat(),
                        end=d.isoformat(),
                        force=True,
                        continue_on_failure=True,
                    )
                )
        if days and stale_online and not (rebuild or per_date):
            from flows.features.featurestore import materialize_span

            typer.echo(materialize_span(days[0], days[1])["message"])
        findings = _findings(d1, d2, online)
        _print_findings(findings)
    if findings:
        raise typer.Exit(1)


def _findings(d1: dt.date | None, d2: dt.date | None, online: bool = False) -> list:
    from flows.operations import integrity, runs

    findings = integrity.log_findings()
    if not findings:  # a damaged ops/runs log leaves no records to check dates against
        records = runs.latest(d1, d2)
        status = runs.date_status(records)
        findings += integrity.date_findings(
            records, {d for d, st in status.items() if st in ("succeeded", "damaged", "stale")}
        )
        newest = max((d for d, st in status.items() if st == "succeeded"), default=None)
        emptied = next((r["message"] for r in records if integrity.ONLINE_EMPTIED in r["message"]), None)
        if emptied:  # runs.latest made the materialization due again
            findings.append(integrity.Finding("online/store", emptied))
        elif online and newest is not None and not findings:
            findings += integrity.online_findings(newest)
    return findings


def _print_findings(findings: list) -> None:
    for f in findings:
        typer.echo(printable(f.line()))
    typer.echo(f"{len(findings)} finding(s)" if findings else "no damage found")


def _recorded_range() -> tuple[dt.date, dt.date] | None:
    """The first and last date with run records; None while ops/runs cannot be read (its damaged
    commit is set aside first)."""
    from flows.operations import runs
    from flows.storage import lake

    try:
        days = sorted({r["execution_date"] for r in runs.latest()})
    except lake.LakeError:
        return None
    return (days[0], days[-1]) if days else None


@app.command()
def status(
    start: Annotated[str | None, typer.Option(help="First date to show.")] = None,
    end: Annotated[str | None, typer.Option(help="Last date to show (default: start).")] = None,
) -> None:
    """Per date, per source, per stage: succeeded / failed / rejected / not_delivered / not run."""
    from rich.console import Console
    from rich.table import Table

    from flows.operations import runs
    from flows.sources import SOURCE_NAMES

    if end and not start:
        refuse("--end needs --start")
    d1, d2 = _range(start, end or start) if start else (None, None)
    records = runs.latest(d1, d2)
    if not records:
        typer.echo("no runs recorded" + (f" for {d1}..{d2}" if d1 else ""))
        return
    per_date = runs.date_status(records)
    cell: dict[tuple, str] = {}
    for r in records:
        cell[(r["execution_date"], r["stage"], r["source"])] = r["status"]
    table = Table(title="asof status")
    for col in ("date", "date status", "source", "ingest", "validate", "transform", "materialize"):
        table.add_column(col)
    for day in sorted(per_date):
        for i, source in enumerate(SOURCE_NAMES):

            def get(stage: str, src: str = source, day: dt.date = day) -> str:
                return cell.get((day, stage, src)) or cell.get((day, stage, runs.ALL_SOURCES)) or "not run"

            table.add_row(
                day.isoformat() if i == 0 else "",
                per_date[day] if i == 0 else "",
                source,
                get("ingest"),
                get("validate"),
                get("transform") if i == 0 else "",
                get("materialize") if i == 0 else "",
            )
        if (day, "run", runs.ALL_SOURCES) in cell:
            table.add_row("", "", "(run)", cell[(day, "run", runs.ALL_SOURCES)], "", "", "")
    Console(width=160).print(table)
    problems = [r for r in records if r["status"] not in ("succeeded",)]
    for r in problems:
        typer.echo(
            f"{r['execution_date']} {r['stage']} {r['source']}: {r['status']}: {printable(r['message'])}"
        )  # run records quote upstream text (file names, headers, values)
    from flows.operations.integrity import ONLINE_EMPTIED

    # damage from outside (asof verify): exit 1, as verify does; other statuses are the run's news
    if "damaged" in per_date.values() or any(ONLINE_EMPTIED in r["message"] for r in problems):
        raise typer.Exit(1)


@app.command()
def warm() -> None:
    """Keep a process with the pipeline imported, so `asof run` and `asof backfill` start in a
    fraction of a second instead of ~7 s (docs/operations.md). Runs in the foreground until Ctrl-C
    or SIGTERM; `make serve` starts one. Listens on a Unix socket ($ASOF_WARM_SOCKET, default
    $ASOF_HOME/run/warm.sock) for this user only; a command whose code or environment differs from
    the warm process's runs in its own process, as it would without one."""
    from flows.orchestration.warm_process import WarmProcessError, serve

    _prefect_env()
    try:
        serve(lambda: usage.run(app))  # not main(): that would hand the command over again
    except WarmProcessError as exc:
        fail(str(exc))


# Registered unconditionally: these modules import only typer and the light flows modules, and every
# command imports its heavy dependencies in its body, where usage.guard_commands reports a failed import.
cli_validation.register(app)
cli_features.register(app)
cli_monitor.register(app)
cli_lineage.register(app)
usage.guard_commands(app)


def main() -> None:
    from flows.orchestration import warm_process

    done = usage.skip_interpreter_teardown()
    argv = sys.argv[1:]
    try:
        if warm_process.wanted(argv):
            _prefect_env()  # the same defaults the command would set, so the environments compare
            code = warm_process.run_warm(argv)
            if code is not None:
                sys.exit(code)
        usage.run(app)
    except SystemExit as exc:
        done(exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1))
        raise


if __name__ == "__main__":
    main()
