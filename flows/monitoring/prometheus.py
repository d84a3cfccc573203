"""A batch run's monitoring, in Prometheus's format, pushed where Prometheus can read it.

At the end of a daily run or a backfill (`flows.monitoring.alerts.publish`), the metrics
`flows.monitoring.metrics`
stored for the run's newest execution date (lake/ops/metrics), plus the run's own facts (dates
per status, seconds per stage, breaches, the newest succeeded date), become gauges, and go to

- a Pushgateway, when `ASOF_PUSHGATEWAY_URL` is set (job `asof_pipeline`, the group replaced by
  each run: `http://user:password@host:9091` works, the password is never logged); and/or
- a file for node_exporter's textfile collector, when `ASOF_PROMETHEUS_TEXTFILE` names one
  (`.../textfile_collector/asof.prom`, written atomically).

Nothing happens when neither is set, and an unreachable gateway is a logged warning: exporting
must never fail a run. Why the Pushgateway is the default recommendation (Prometheus's own
guidance for service-level batch jobs) is in docs/monitoring.md.

One gauge per metric of docs/monitoring.md, `asof_<metric>`, labelled `scope` (the metric's scope
as stored: source, view, service, `view.feature`, `source:reason`) and `rule_scope`, the
monitoring.toml rule that judges this value: `""` the metric's own rule, `<key>` the override
`[rules.<metric>.scopes.<key>]`, `none` when no rule applies (no rule, a disabled one, or a value
monitoring does not alert on, e.g. the ingest lag of a backfilled date). `flows.monitoring.metrics` decides
which rule applies (`MonitorConfig.rule_for`), so the generated alert rules
(flows/monitoring/alert_rules.py) only match on `rule_scope` and cannot judge a value differently.
A missing value that monitoring counts as a breach (a view without any feature row) is exported as
+Inf (or -Inf for a lower bound): beyond any threshold, as it is.

Only the newest date of a run is exported: a Prometheus series is a value over wall-clock time,
so the per-date history of a backfill stays in lake/ops/metrics and the HTML report.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile
from prometheus_client.exposition import basic_auth_handler, default_handler

from flows.config import settings
from flows.dates import day_start_utc
from flows.monitoring import breaches as monitoring_breaches
from flows.monitoring import config as monitoring_config
from flows.monitoring import daily_latency, storage

log = logging.getLogger(__name__)

JOB = "asof_pipeline"
PREFIX = "asof_"
NO_RULE = "none"
PUSH_TIMEOUT_S = 10.0
# Per-date metrics that come from the serving process: Prometheus scrapes them live from
# `asof serve`, so the batch export leaves them out rather than publish a day-old copy.
LIVE_METRICS = daily_latency.METRICS

RUN_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "asof_execution_date_seconds": (
        "The execution date the per-date gauges describe (the run's newest date), 00:00 UTC",
        (),
    ),
    "asof_last_succeeded_execution_date_seconds": (
        "The newest execution date whose every stage succeeded (00:00 UTC), as of the run's end",
        (),
    ),
    "asof_run_dates": ("Dates of the last run per date status (succeeded, rejected, failed...)", ("status",)),
    "asof_run_stage_seconds": (
        "Wall seconds per stage of the runs of the pushing process (a deployment runs each flow run "
        "in its own process; flows.pipeline.STAGE_SECONDS)",
        ("stage",),
    ),
    "asof_run_breaches": ("Threshold breaches of the last run, over all its dates", ("severity",)),
    "asof_run_finished_seconds": ("When the last run finished (Unix time)", ()),
}


def metric_name(metric: str) -> str:
    """The Prometheus name of a flows.monitoring.metrics metric."""
    return PREFIX + metric


def exported_names() -> set[str]:
    """Every metric family name a batch run exports (the Grafana dashboard may use no other)."""
    per_date = {metric_name(m) for m in monitoring_config.KNOWN_METRICS if m not in LIVE_METRICS}
    return per_date | set(RUN_GAUGES)


def rule_scope(cfg: monitoring_config.MonitorConfig, row: dict[str, Any]) -> str:
    """Which monitoring.toml rule judges this stored row (see the module docstring)."""
    details = row.get("details") or {}
    if row.get("condition") is None or details.get("not_evaluated"):
        return NO_RULE
    rule = cfg.rule_for(row["metric"], row["scope"])
    if rule is None:
        return NO_RULE
    for (metric, key), override in cfg.scope_rules.items():
        if metric == row["metric"] and override is rule:
            return key
    return ""


def exported_value(cfg: monitoring_config.MonitorConfig, row: dict[str, Any]) -> float | None:
    if row["value"] is not None:
        return float(row["value"])
    if not row["breached"]:
        return None
    rule = cfg.rule_for(row["metric"], row["scope"])
    return -math.inf if rule is not None and rule.max is None else math.inf


def build_registry(
    days: Sequence[dt.date],
    breaches: Sequence[monitoring_breaches.Breach],
    stage_seconds: dict[str, float] | None = None,
    config: monitoring_config.MonitorConfig | None = None,
) -> CollectorRegistry:
    """The gauges of one run over `days` (its metrics must be stored already)."""
    from flows.operations import runs

    cfg = config or monitoring_config.load_config()
    registry = CollectorRegistry()
    newest = max(days)
    ran = set(days)  # a backfill's range also holds the dates it skipped (already succeeded)
    rows = [r for r in storage.read_metrics(min(days), newest) if r["execution_date"] in ran]
    gauges: dict[str, Gauge] = {}
    for row in rows:
        if row["execution_date"] != newest or row["metric"] in LIVE_METRICS:
            continue
        value = exported_value(cfg, row)
        if value is None:
            continue
        name = metric_name(row["metric"])
        if name not in gauges:
            gauges[name] = Gauge(
                name,
                f"asof metric {row['metric']} of the newest execution date (docs/monitoring.md)",
                ["scope", "rule_scope"],
                registry=registry,
            )
        gauges[name].labels(row["scope"], rule_scope(cfg, row)).set(value)

    run = {
        name: Gauge(name, doc, list(labels), registry=registry) for name, (doc, labels) in RUN_GAUGES.items()
    }
    run["asof_execution_date_seconds"].set(day_start_utc(newest).timestamp())
    last_ok = runs.newest_succeeded(newest)
    if last_ok is not None:
        run["asof_last_succeeded_execution_date_seconds"].set(day_start_utc(last_ok).timestamp())
    statuses: dict[str, int] = {}
    for row in rows:
        if row["metric"] == "date_status":
            status = (row["details"] or {}).get("status", "unknown")
            statuses[status] = statuses.get(status, 0) + 1
    for status, n in statuses.items():
        run["asof_run_dates"].labels(status).set(n)
    for stage, seconds in (stage_seconds or {}).items():
        run["asof_run_stage_seconds"].labels(stage).set(seconds)
    for severity in monitoring_config.SEVERITIES:
        run["asof_run_breaches"].labels(severity).set(sum(b.severity == severity for b in breaches))
    run["asof_run_finished_seconds"].set(time.time())
    return registry


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def push(url: str, registry: CollectorRegistry) -> None:
    """PUT the run's gauges to the gateway: replacing the whole `asof_pipeline` group, so a series
    the newest run did not produce (a scope that disappeared) does not linger from an older run."""
    parts = urlsplit(url)
    handler: Callable[..., Any] = default_handler
    if parts.username is not None:  # basic auth from the URL; the URL sent carries no credentials
        handler = functools.partial(
            basic_auth_handler, username=parts.username, password=parts.password or ""
        )
        url = urlunsplit(
            parts._replace(netloc=(parts.hostname or "") + (f":{parts.port}" if parts.port else ""))
        )
    push_to_gateway(url, job=JOB, registry=registry, timeout=PUSH_TIMEOUT_S, handler=handler)


def export_run(days: Sequence[dt.date], breaches: Sequence[monitoring_breaches.Breach]) -> None:
    """Push / write the run's gauges where configured. Never raises."""
    s = settings()
    url, textfile = s.pushgateway_url, s.prometheus_textfile
    if not days or not (url or textfile):
        return
    try:
        from flows.monitoring.stage_timing import STAGE_SECONDS

        registry = build_registry(days, breaches, dict(STAGE_SECONDS))
    except Exception as exc:
        log.warning("could not build the Prometheus metrics of the run: %s", exc)
        return
    if url:
        try:
            push(url, registry)
            log.info("pushed the run's metrics to the Pushgateway %s", redacted(url))
        except Exception as exc:
            log.warning("could not push metrics to %s: %s", redacted(url), exc)
    if textfile:
        try:
            write_to_textfile(textfile, registry)
        except Exception as exc:
            log.warning("could not write the Prometheus textfile %s: %s", textfile, exc)
