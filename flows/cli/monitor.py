"""`asof monitor [--start D1 --end D2] [--html FILE]`: pipeline health per date (contract §9).

`flows.cli.main` calls `register(app)`; `monitor_app` is the same command as a standalone Typer app
(`python -m flows.cli.monitor --help`). `monitor_command(...)` is the plain-Python entry point.

Reads `lake/ops/metrics` (written by the pipeline after each run, or here with `--recompute`), prints
a per-date summary and the breaches, and optionally writes the self-contained HTML report.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from flows.cli import usage
from flows.cli.usage import Refused, fail
from flows.dates import DateError, parse_date, parse_range


class MonitorArgumentError(Refused, ValueError):
    """Bad arguments. A ValueError for callers of `monitor_command`; a Refused, so `asof monitor`
    reports it as one line with exit status 2."""


def resolve_range(start: str | None, end: str | None, default_days: int) -> tuple[dt.date, dt.date] | None:
    """Explicit range; --start alone = that day up to the newest metrics; neither = the newest
    `default_days` days with metrics. None when there are no metrics at all and no range was given."""
    from flows.monitoring import storage

    try:
        if start and end:
            return parse_range(start, end)
        if end and not start:
            raise MonitorArgumentError("--end needs --start")
        d1 = parse_date(start, "start") if start else None
    except DateError as exc:
        raise MonitorArgumentError(str(exc)) from None
    dates = storage.metric_dates()
    if d1 is not None:
        newest = max(dates) if dates and max(dates) >= d1 else d1
        return d1, newest
    if not dates:
        return None
    newest = max(dates)
    return newest - dt.timedelta(days=default_days - 1), newest


def _summary_table(rows: list[dict], start: dt.date, end: dt.date, statuses: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from flows.dates import date_range
    from flows.monitoring.breaches import fmt_value

    by_day: dict[dt.date, list[dict]] = {}
    for r in rows:
        by_day.setdefault(r["execution_date"], []).append(r)

    def worst(rs: list[dict], metric: str, lowest: bool) -> str:
        got = [r for r in rs if r["metric"] == metric and r["value"] is not None]
        if not got:
            return "-"
        r = (min if lowest else max)(got, key=lambda x: x["value"])
        text = f"{fmt_value(r['value'])} {r['scope'].split('.')[-1]}"
        return f"[red]{text}[/]" if r["breached"] else text

    table = Table(title=f"asof monitor {start}..{end}")
    for col in (
        "date",
        "pipeline",
        "breaches",
        "pass rate (min)",
        "volume",
        "freshness h (max)",
        "coverage (min)",
        "PSI (max)",
        "online mismatch",
        "serving P99 ms (max)",
    ):
        table.add_column(col)
    for day in date_range(start, end):
        rs = by_day.get(day, [])
        if not rs:
            table.add_row(day.isoformat(), statuses.get(day, "not run"), "[dim]no metrics[/]", *["-"] * 7)
            continue
        fails = sum(1 for r in rs if r["breached"] and r["severity"] == "failure")
        warns = sum(1 for r in rs if r["breached"] and r["severity"] != "failure")
        cell = "[green]0[/]" if not (fails or warns) else f"[red]{fails}F[/] [yellow]{warns}W[/]"
        table.add_row(
            day.isoformat(),
            statuses.get(day, "-"),
            cell,
            worst(rs, "validation_pass_rate", True),
            worst(rs, "volume_ratio", True),
            worst(rs, "freshness_hours", False),
            worst(rs, "coverage", True),
            worst(rs, "psi", False),
            worst(rs, "online_mismatch_rate", False),
            worst(rs, "serving_latency_p99_ms", False),
        )
    Console(width=200).print(table)


def monitor_command(
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
    html: Path | str | None = None,
    recompute: bool = False,
    online: bool = False,
    strict: bool = False,
) -> int:
    """Print the summary (and write the HTML report); returns the exit status (1 only with `strict`
    and a failure-severity breach). Raises MonitorArgumentError for bad arguments."""
    from flows.monitoring import breaches as monitoring_breaches
    from flows.monitoring import config, metrics, storage
    from flows.monitoring import report as monitor_report
    from flows.operations import runs

    cfg = config.load_config()
    start = start.isoformat() if isinstance(start, dt.date) else start
    end = end.isoformat() if isinstance(end, dt.date) else end
    if recompute and not start:
        raise MonitorArgumentError("--recompute needs --start (and --end)")
    span = resolve_range(start, end, cfg.report_default_days)
    if span is None:
        typer.echo("no monitoring metrics recorded yet (run the pipeline, or `asof monitor --recompute`)")
        return 0
    d1, d2 = span
    if html is not None:
        html = Path(html)
        if html.is_dir():
            raise MonitorArgumentError(f"--html: {html} is a directory")
    if recompute:
        from flows.dates import date_range

        metrics.compute_and_store(list(date_range(d1, d2)), cfg, online_reader=None if online else False)
    rows = storage.read_metrics(d1, d2)
    statuses = runs.date_status(runs.latest(d1, d2))
    _summary_table(rows, d1, d2, statuses)
    breaches = monitoring_breaches.breaches_of(rows)
    if breaches:
        typer.echo(f"\n{len(breaches)} breach(es):")
        for b in breaches[:100]:
            typer.echo(f"  [{b.severity}] {b.message}")
        if len(breaches) > 100:
            typer.echo(f"  ... and {len(breaches) - 100} more (see the HTML report)")
    else:
        typer.echo("\nno threshold breached")
    if html is not None:
        path = monitor_report.write_report(html, d1, d2)
        typer.echo(f"report: {path.resolve()}")
    if strict and any(b.severity == "failure" for b in breaches):
        return 1
    return 0


def monitor(
    start: Annotated[str | None, typer.Option(help="First execution date (YYYY-MM-DD).")] = None,
    end: Annotated[str | None, typer.Option(help="Last execution date, inclusive (default: newest).")] = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="Write the self-contained HTML report to FILE.")
    ] = None,
    recompute: Annotated[
        bool, typer.Option("--recompute", help="Compute and store the metrics of the range first.")
    ] = False,
    online: Annotated[
        bool, typer.Option("--online", help="With --recompute: also check the online store (Feast).")
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when a failure-severity threshold was breached.")
    ] = False,
) -> None:
    """Pipeline health per date: pass rates, volume, freshness, coverage, drift (PSI), alerts.

    Without --start/--end: the newest 30 days with metrics. Thresholds: monitoring.toml.
    """
    code = monitor_command(start, end, html, recompute=recompute, online=online, strict=strict)
    if code:
        fail("a failure-severity monitoring threshold was breached", code)


def register(app: typer.Typer) -> None:
    """Add `monitor` to the `asof` app."""
    app.command("monitor")(monitor)


monitor_app = typer.Typer(
    name="asof-monitor",
    help="Pipeline monitoring: metrics per date, breaches, HTML report.",
    add_completion=False,
    pretty_exceptions_enable=False,
)
monitor_app.command("monitor")(monitor)
usage.guard_commands(monitor_app)


def main() -> None:
    """Standalone entry point (`python -m flows.cli.monitor`)."""
    usage.run(monitor_app)


if __name__ == "__main__":
    main()
