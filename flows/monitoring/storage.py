"""Where metrics are kept: `lake/ops/metrics`, one row per date x metric x scope, replaced per date."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flows.monitoring.breaches import Breach, breaches_of
from flows.storage import lake

METRICS_SCHEMA = pa.schema(
    [
        pa.field("execution_date", pa.date32(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("scope", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("condition", pa.string()),  # the breach condition, e.g. "< 0.99", "outside [0.5, 2]"
        pa.field("severity", pa.string()),  # warning | failure | null (no rule)
        pa.field("breached", pa.bool_(), nullable=False),
        pa.field("details", pa.string()),  # JSON
        pa.field("computed_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("flow_run_id", pa.string()),
    ]
)


def _spans(days: Sequence[dt.date]) -> list[tuple[dt.date, dt.date]]:
    spans: list[tuple[dt.date, dt.date]] = []
    for d in sorted(set(days)):
        if spans and d == spans[-1][1] + dt.timedelta(days=1):
            spans[-1] = (spans[-1][0], d)
        else:
            spans.append((d, d))
    return spans


def store(rows: list[dict[str, Any]], days: Iterable[dt.date]) -> None:
    """Replace the metrics of exactly `days` (one commit per contiguous span of dates)."""
    days = sorted(set(days))
    for lo, hi in _spans(days):
        part = [r for r in rows if lo <= r["execution_date"] <= hi]
        lake.replace(
            "ops",
            "metrics",
            pa.Table.from_pylist(part, schema=METRICS_SCHEMA),
            predicate=lake.date_predicate("execution_date", lo, hi),
            schema=METRICS_SCHEMA,
        )


def read_metrics(start: dt.date | None = None, end: dt.date | None = None) -> list[dict[str, Any]]:
    """Stored metric rows in [start, end] (details decoded), sorted by date, metric, scope."""
    if not lake.exists("ops", "metrics"):
        return []
    flt = None
    if start is not None:
        flt = (pc.field("execution_date") >= pa.scalar(start, pa.date32())) & (
            pc.field("execution_date") <= pa.scalar(end or start, pa.date32())
        )
    rows = lake.read("ops", "metrics", filter=flt).to_pylist()
    for r in rows:
        r["details"] = json.loads(r["details"]) if r.get("details") else {}
    rows.sort(key=lambda r: (r["execution_date"], r["metric"], r["scope"]))
    return rows


def metric_dates() -> list[dt.date]:
    if not lake.exists("ops", "metrics"):
        return []
    col = lake.read("ops", "metrics", columns=["execution_date"])["execution_date"]
    return sorted(pc.unique(col).to_pylist())


def stored_breaches(start: dt.date, end: dt.date) -> list[Breach]:
    return breaches_of(read_metrics(start, end))
