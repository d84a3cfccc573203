"""`asof quarantine list|show|release` and `asof docs` (flows/cli/main.py calls `register(app)`).

Arguments are checked before anything is read or written; heavy modules (Great Expectations, and
flows.sources with pyarrow: 0.15 s of `asof --help`) are imported only by the commands that need
them.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer

from flows.cli.usage import date_argument, refuse

quarantine_app = typer.Typer(
    help=(
        "Inspect and replay quarantined rows.\n\n"
        "Rows that failed validation keep their values as delivered plus every failed rule (`_reasons`). "
        "`release` re-validates them with the current rules and moves the rows that now pass to silver."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SourceOpt = Annotated[
    str | None,
    typer.Option(
        "--source", help="A source: the name of its contract in expectations/contracts/ (default: all)."
    ),
]
DateOpt = Annotated[str | None, typer.Option("--date", help="Batch date YYYY-MM-DD (default: all dates).")]
RuleOpt = Annotated[
    str | None,
    typer.Option(
        "--rule",
        help="Only rows with this reason; a prefix before ':' matches a family "
        "(null -> null:amount, batch_rejected -> batch_rejected:volume).",
    ),
]


def _source(value: str | None, required: bool = False) -> str | None:
    if value is None:
        if required:
            refuse("--source is required")
        return None
    from flows.sources import UnknownSourceError, get_source  # contracts and Arrow: not for --help

    try:
        return get_source(value).name
    except UnknownSourceError as exc:
        refuse(str(exc))


def _day(value: str | None, required: bool = False) -> dt.date | None:
    if value is None:
        if required:
            refuse("--date is required")
        return None
    return date_argument(value, "--date")


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    from flows.cli.terminal import cell

    table = Table(title=cell(title), show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*(cell(v) for v in r))  # upstream values: shown literally, escapes visible
    Console(width=200).print(table)


@quarantine_app.command("list")
def list_cmd(
    source: SourceOpt = None,
    date: DateOpt = None,
    rule: RuleOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Count quarantined rows per source, batch date and reason."""
    src, day = _source(source), _day(date)
    from flows.validation import quarantine

    counts = quarantine.list_counts(src, day, rule)
    if as_json:
        typer.echo(json.dumps([{**c, "date": c["date"].isoformat()} for c in counts], indent=2))
        return
    if not counts:
        typer.echo("no quarantined rows" + (f" with reason {rule!r}" if rule else ""))
        return
    _table(
        "quarantined rows (a row with several reasons counts under each)",
        ["date", "source", "reason", "rows", "rows in batch"],
        [
            [c["date"].isoformat(), c["source"], c["reason"], str(c["rows"]), str(c["rows_in_batch"])]
            for c in counts
        ],
    )


@quarantine_app.command("show")
def show_cmd(
    source: SourceOpt = None,
    date: DateOpt = None,
    rule: RuleOpt = None,
    limit: Annotated[int, typer.Option(help="At most this many rows (0 = all).", min=0)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of a table.")] = False,
) -> None:
    """Show quarantined rows (values as delivered) with every reason. Requires --source."""
    src, day = _source(source, required=True), _day(date)
    from flows.sources import get_source as _get
    from flows.validation import quarantine

    rows = quarantine.show(src, day, rule, limit=limit or None)
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r, default=str))
        return
    if not rows:
        typer.echo("no quarantined rows match")
        return
    cols = _get(src).column_names
    _table(
        f"quarantined {src} rows" + (f" of {day.isoformat()}" if day else ""),
        ["date", "file:row", *cols, "reasons"],
        [
            [
                r["_batch_date"].isoformat(),
                f"{r['_source_file'].rsplit('/', 1)[-1]}:{r['_row_number']}",
                *[quarantine.compact_value(r.get(c)) for c in cols],
                ", ".join(r["_reasons"] or []) + (f" | raw: {r['_raw']}" if r.get("_raw") else ""),
            ]
            for r in rows
        ],
    )


@quarantine_app.command("release")
def release_cmd(
    source: SourceOpt = None,
    date: DateOpt = None,
    rule: RuleOpt = None,
) -> None:
    """Re-validate quarantined rows of one batch with the current rules; move those that pass to silver.

    Recorded in ops/releases. Releasing again changes nothing unless rules or reference data changed.
    Requires --source and --date.
    """
    src, day = _source(source, required=True), _day(date, required=True)
    from flows.validation import quarantine

    res = quarantine.release(src, day, rule)
    typer.echo(res.message)
    if res.rows_released:
        typer.echo(f"release id: {res.release_id} (validation run {res.validation_run_id})")
    if res.data_docs_url:
        typer.echo(f"Data Docs: {res.data_docs_url}")


def docs_command(serve: bool = False, port: int = 0, dbt: bool = False) -> str:
    """Build the Data Docs site (offline-ready), or with `dbt` the dbt docs (models, lineage,
    column types; `$ASOF_HOME/docs/dbt/`); with `serve`, serve `$ASOF_HOME/docs` on 127.0.0.1 until
    Ctrl-C.

    Returns the line to print when done (while serving, the URL is printed immediately)."""
    if port < 0 or port > 65535:
        refuse(f"--port must be between 0 and 65535, got {port}")
    from flows.validation import datadocs

    if dbt:
        from flows.transform import stage as transform

        page = transform.generate_docs()
        what, rel = "dbt docs", page.relative_to(datadocs.docs_root()).as_posix()
        if not serve:
            return f"dbt docs: {page} (opens from disk; serve them with: asof docs --dbt --serve)"
    else:
        index = datadocs.build_site()
        what, rel = "Data Docs", ""
        if not serve:
            return f"Data Docs: {index} (serve them with: asof docs --serve)"
    server, url = datadocs.make_server(port)
    typer.echo(f"serving {what} on {url}{rel} (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return f"stopped serving {url}"


def docs(
    serve: Annotated[bool, typer.Option("--serve", help="Serve the site on 127.0.0.1.")] = False,
    port: Annotated[int, typer.Option(help="Port for --serve (0 = any free port).")] = 0,
    dbt: Annotated[
        bool,
        typer.Option(
            "--dbt",
            help="Build the dbt docs instead (models, lineage, column types; $ASOF_HOME/docs/dbt/).",
        ),
    ] = False,
) -> None:
    """Build the validation Data Docs (offline-ready), or with --dbt the dbt docs; --serve serves
    them on 127.0.0.1."""
    typer.echo(docs_command(serve=serve, port=port, dbt=dbt))


def register(app: typer.Typer) -> None:
    """Add `quarantine` and `docs` to the `asof` app."""
    app.add_typer(quarantine_app, name="quarantine", help="Inspect and replay quarantined rows.")
    app.command("docs")(docs)
