"""Breaches: the metric rows over their thresholds, as operators read them (messages, sort order)."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Breach:
    execution_date: dt.date
    metric: str
    scope: str
    value: float | None
    threshold: float | None
    condition: str
    severity: str
    message: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["execution_date"] = self.execution_date.isoformat()
        return d


def fmt_value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if value == int(value):
        return f"{int(value)}"
    return f"{value:.4g}"


def _details(row: dict[str, Any]) -> dict[str, Any]:
    details = row.get("details") or {}
    return json.loads(details) if isinstance(details, str) else details


def _breach_message(row: dict[str, Any]) -> str:
    details = _details(row)
    value = "missing" if row["value"] is None else fmt_value(row["value"])
    text = (
        f"{row['metric']} [{row['scope']}] on {row['execution_date']}: {value} "
        f"(breach if {row['condition']}; {row['severity']})"
    )
    if details.get("summary"):
        text += f": {details['summary']}"
    return text


def breaches_of(rows: Iterable[dict[str, Any]]) -> list[Breach]:
    out = [
        Breach(
            execution_date=r["execution_date"],
            metric=r["metric"],
            scope=r["scope"],
            value=r["value"],
            threshold=r["threshold"],
            condition=r["condition"] or "",
            severity=r["severity"] or "warning",
            message=_breach_message(r),
            detail=_details(r).get("summary", ""),
        )
        for r in rows
        if r["breached"]
    ]
    rank = {"failure": 0, "warning": 1}
    out.sort(key=lambda b: (b.execution_date, rank.get(b.severity, 2), b.metric, b.scope))
    return out
