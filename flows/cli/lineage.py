"""`asof lineage impact|trace` (docs/lineage.md; flows/cli/main.py calls `register(app)`).

Arguments are checked before the lake is read; DuckDB and Feast are imported by the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.terminal import cell, printable
from flows.cli.usage import date_argument, fail, refuse

lineage_app = typer.Typer(
    help=(
        "Lineage: what a batch reached (impact), where a row came from (trace).\n\n"
        "OpenLineage events of every stage run go to $ASOF_HOME/lineage/openlineage.jsonl, or to "
        "OPENLINEAGE_URL when set (docs/lineage.md)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def impact(
    source: Annotated[str | None, typer.Option(help="Source of the batch (with --date).")] = None,
    date: Annotated[str | None, typer.Option(help="Batch date YYYY-MM-DD (with --source).")] = None,
    file: Annotated[
        str | None, typer.Option(help="One landing file instead: landing/<source>/<YYYY-MM-DD>/<file>.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
    html: Annotated[Path | None, typer.Option(help="Also write the affected graph as an HTML page.")] = None,
    online: Annotated[
        bool, typer.Option(help="Read the online store to confirm what it serves (imports Feast).")
    ] = True,
) -> None:
    """What a batch (or one landing file) reached: partitions, gold as-of dates, training sets, online
    values, and the commands that recompute them."""
    from flows.lineage.impact import ImpactError, file_batch

    if file is not None:
        if source is not None or date is not None:
            refuse("--file names the batch already: give --file, or --source with --date")
        try:
            src, day, file = file_batch(file)
        except ImpactError as exc:
            refuse(str(exc))
    else:
        if source is None or date is None:
            refuse("give --source and --date (or --file landing/<source>/<date>/<file>)")
        from flows.sources import UnknownSourceError, get_source  # pyarrow: not for `asof --help`

        try:
            src = get_source(source).name
        except UnknownSourceError as exc:
            refuse(str(exc))
        day = date_argument(date, "--date")
    if html is not None:
        if html.suffix.lower() not in (".html", ".htm"):
            refuse(f"--html: {html} must end in .html")
        from flows.config import settings

        root = settings().pipeline_root_of(html)
        if root is not None:
            refuse(f"--html: {html} is inside {root}, which the pipeline owns: write it elsewhere")

    from flows.lineage import graph_html
    from flows.lineage.impact import impact as analyse
    from flows.lineage.impact import to_json
    from flows.storage import lake

    try:
        report = analyse(src, day, file=file, online=online)
    except (ImpactError, lake.LakeError) as exc:
        fail(str(exc))
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(graph_html.page(report))
    if as_json:
        typer.echo(to_json(report))
    else:
        _print_impact(report)
    if html is not None and not as_json:
        typer.echo(f"graph: {html}")


def _cells(*values: object) -> list:
    """A table row shown literally: Rich would read `[...]` in a file name or reason as markup."""
    return [cell(v) for v in values]


def _print_impact(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    b = report["batch"]
    # upstream text (file names, reasons, paths) goes into Text cells: Rich reads markup in str
    console.print(cell(f"impact of {b['file'] or b['source'] + ' batch ' + b['date']}", "bold"))
    parts = Table(title="lake partitions holding the batch")
    for col in ("table", "partition", "rows", "version", "reasons"):
        parts.add_column(col)
    for p in report["partitions"]:
        reasons = ", ".join(f"{k} {v}" for k, v in (p.get("reasons") or {}).items())
        parts.add_row(*_cells(p["table"], p.get("partition", ""), str(p["rows"]), str(p["version"]), reasons))
    console.print(parts)
    if report.get("downstream_quarantine"):
        later = Table(title="rows of later batches quarantined because of it")
        for col in ("table", "batch date", "rows", "reason"):
            later.add_column(col)
        for q in report["downstream_quarantine"]:
            later.add_row(*_cells(q["table"], q["batch_date"], str(q["rows"]), q["reason"]))
        console.print(later)
    gold = Table(title="gold rows whose features read it")
    for col in ("table", "rows", "entities", "as-of dates", "rule"):
        gold.add_column(col)
    for g in report["gold"]:
        dates = g.get("as_of_dates") or []
        span = f"{dates[0]}..{dates[-1]} ({len(dates)})" if dates else "-"
        gold.add_row(
            *_cells(g["table"], str(g.get("rows", 0)), str(g.get("entities", 0)), span, g.get("rule", ""))
        )
    console.print(gold)
    trains = Table(title="registered training sets that read it")
    for col in ("training set", "service", "events", "why", "read the current batch"):
        trains.add_column(col)
    for t in report["training_sets"]:
        current = {True: "yes", False: "no: an earlier delivery", None: "-"}[t["read_current_batch"]]
        trains.add_row(
            *_cells(
                t["path"],
                t["service"],
                f"{t['start']}..{t['end']}",
                "; ".join(t["reasons"]),
                current,
            )
        )
    console.print(trains if report["training_sets"] else "no registered training set read it")
    if not any("view" in o for o in report["online"]):
        skipped = any("skipped" in o for o in report["online"])
        console.print(
            "online store: not read (--no-online)" if skipped else "online store: no value served from it"
        )
    online = Table(title="online store")
    for col in ("view", "entities whose newest row is affected", "served now (checked)"):
        online.add_column(col)
    for o in report["online"]:
        if "view" not in o:
            continue
        served = o.get("entities_served_affected", o.get("online_error", "-"))
        online.add_row(*_cells(o["view"], str(o["entities_newest_row_affected"]), served))
    if online.row_count:
        console.print(online)
    for note in report["notes"]:
        typer.echo(f"note: {printable(note)}")
    typer.echo("recompute:")
    typer.echo(f"  {report['recompute']['backfill']}")
    for cmd in report["recompute"]["training_sets"]:
        typer.echo(f"  {printable(cmd)}")


def trace(
    txn_id: Annotated[str | None, typer.Option(help="A training-set row: its transaction id.")] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="The training set's FILE.manifest.json: read its table versions.")
    ] = None,
    table: Annotated[
        str | None, typer.Option(help="A gold row: the gold table (with --entity, --as-of).")
    ] = None,
    entity: Annotated[int | None, typer.Option(help="The gold row's customer_id or merchant_id.")] = None,
    as_of: Annotated[str | None, typer.Option(help="The gold row's as-of date YYYY-MM-DD.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The trace as JSON.")] = False,
) -> None:
    """Where a row came from: a training-set row (--txn-id) or a gold row (--table --entity --as-of),
    back through silver and bronze to landing files and record numbers."""
    from flows.lineage.trace import GOLD_TABLES

    if (txn_id is None) == (table is None):
        refuse("give --txn-id (a training-set row) or --table with --entity and --as-of (a gold row)")
    if table is not None:
        if table not in GOLD_TABLES:
            refuse(f"--table: unknown gold table {table!r} (known: {', '.join(GOLD_TABLES)})")
        if entity is None or as_of is None:
            refuse("--table needs --entity and --as-of")
        if manifest is not None:
            refuse("--manifest applies to --txn-id")
        day = date_argument(as_of, "--as-of")
    if manifest is not None and not manifest.is_file():
        refuse(f"--manifest: {manifest} does not exist")

    from flows.lineage.trace import TraceError, trace_gold, trace_transaction
    from flows.storage import lake

    try:
        result = trace_transaction(txn_id, manifest) if txn_id is not None else trace_gold(table, entity, day)
    except (TraceError, lake.LakeError) as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    _print_trace(result)


def _print_steps(steps: list[dict], indent: str) -> None:
    from flows.lineage.trace import ROW_LIMIT

    for s in steps:
        typer.echo(f"{indent}{s['table']}: {s['rows']} row(s): {printable(s['what'])}")
        for r in s["listed"][:ROW_LIMIT]:
            land = r["landing"]
            key = r.get("txn_id") or r.get("customer_id")
            where = f"{land['file']} record {land['record']}"
            gone = "" if land["file_present"] else " (file no longer in landing)"
            reasons = f" reasons {','.join(r['reasons'])}" if r.get("reasons") else ""
            typer.echo(f"{indent}  {key} <- bronze <- {printable(where)}{gone}{printable(reasons)}")
        if s["rows"] > ROW_LIMIT:
            typer.echo(f"{indent}  ... {s['rows'] - ROW_LIMIT} more (--json lists every row)")


def _print_trace(result: dict) -> None:
    target = result["target"]
    if "txn_id" in target:
        typer.echo(f"training row {printable(target['txn_id'])} (event {target['event_time']})")
        _print_steps(result["steps"], "  ")
        typer.echo(f"  features: the rows published at {result['feature_timestamp_used']} or before")
        for f in result["features"]:
            if "none" in f:
                typer.echo(f"  {f['table']}: {printable(f['none'])}")
                continue
            _print_gold(f, "  ")
    else:
        _print_gold(result, "")


def _print_gold(result: dict, indent: str) -> None:
    t = result["target"]
    key = next(k for k in t if k not in ("table", "as_of_date"))
    typer.echo(f"{indent}{t['table']} {key} {t[key]} as of {t['as_of_date']}")
    _print_steps(result["steps"], indent + "  ")


lineage_app.command("impact")(impact)
lineage_app.command("trace")(trace)


def register(app: typer.Typer) -> None:
    """Add `lineage` to the `asof` app."""
    app.add_typer(lineage_app, name="lineage", help="What a batch reached; where a row came from.")
