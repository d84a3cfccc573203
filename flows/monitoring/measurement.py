"""One measured value of one metric, and the stored row it becomes once judged against its rule."""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from typing import Any

from flows.monitoring.config import MonitorConfig


@dataclass
class Measurement:
    day: dt.date
    metric: str
    scope: str
    value: float | None
    details: dict[str, Any] = field(default_factory=dict)
    evaluate: bool = True  # False: recorded and charted, never alerted on (details say why)
    none_is_breach: bool = False  # a missing value is itself a breach (e.g. a view without any row)


def metric_row(m: Measurement, cfg: MonitorConfig, now: dt.datetime, flow_run_id: str | None) -> dict:
    """The `ops/metrics` row of `m`: its value, the rule that applies, and whether it breached."""
    rule = cfg.rule_for(m.metric, m.scope)
    threshold: float | None = None
    condition = severity = None
    breached = False
    details = dict(m.details)
    if m.value is not None and not math.isfinite(m.value):
        details["non_finite_value"] = str(m.value)
        m.value = None
    if rule is not None:
        condition, severity = rule.condition, rule.severity
        if not m.evaluate:
            threshold = rule.min if rule.min is not None else rule.max
        elif m.value is None:
            breached = m.none_is_breach
            threshold = rule.min if rule.min is not None else rule.max
        else:
            breached, threshold = rule.check(m.value)
    return {
        "execution_date": m.day,
        "metric": m.metric,
        "scope": m.scope,
        "value": None if m.value is None else float(m.value),
        "threshold": threshold,
        "condition": condition,
        "severity": severity,
        "breached": bool(breached),
        "details": json.dumps(details, sort_keys=True, default=str),
        "computed_at": now,
        "flow_run_id": flow_run_id,
    }
