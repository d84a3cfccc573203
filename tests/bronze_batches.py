"""Hand-built bronze batches, written the way ingest writes them (validation, quarantine and
conservation tests build their batches from rows instead of landing files)."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa

from flows.ingest.stage import FileRecord, record_files
from flows.sources import bronze_schema, get_source
from flows.storage import lake

NOW = dt.datetime(2024, 3, 2, 1, 0, tzinfo=dt.UTC)  # when every hand-built batch was "ingested"


def land(
    source: str, day: dt.date, rows: list[dict], header: list[str] | None = None, status: str = "ok"
) -> None:
    """Write a bronze partition and its ops/ingest_files record the way ingest does."""
    src = get_source(source)
    n = len(rows)
    data = {c: [r.get(c) for r in rows] for c in src.column_names}
    data["_extra"] = [json.dumps(r["_extra"]) if r.get("_extra") else None for r in rows]
    data["_raw"] = [r.get("_raw") for r in rows]
    data["_parse_error"] = [r.get("_parse_error") for r in rows]
    data["_batch_date"] = [day] * n
    data["_ingested_at"] = [NOW] * n
    path = f"landing/{source}/{day.isoformat()}/{src.default_file}"
    data["_source_file"] = [path] * n
    data["_row_number"] = list(range(1, n + 1))
    lake.replace(
        "bronze",
        source,
        pa.table(data, schema=bronze_schema(src)),
        predicate=lake.date_predicate("_batch_date", day),
        partition_by=["_batch_date"],
        schema=bronze_schema(src),
    )
    if status == "not_delivered":
        header, path = None, f"landing/{source}/{day.isoformat()}"
    record = FileRecord(
        file=path,
        status=status,
        rows=n,
        bytes=100,
        header=(header if header is not None else src.column_names) if status != "not_delivered" else None,
        encoding="utf-8",
        message="not delivered: no file" if status == "not_delivered" else "",
    )
    record_files(src, {day: [record]}, NOW)
