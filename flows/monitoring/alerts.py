"""Alerting on breaches: the verdict of a run, its Prefect artifacts and reports, and the flow's state."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.monitoring.breaches import Breach, fmt_value
from flows.monitoring.config import MonitorConfig, load_config
from flows.pages import links

log = logging.getLogger(__name__)


@dataclass
class Verdict:
    status: str  # ok | warning | failure
    breaches: list[Breach]
    message: str
    report: Path | None = None
    run_report: Path | None = None  # the run's dates in context (monitor_report.write_flow_reports)

    @property
    def failed(self) -> bool:
        return self.status == "failure"


def verdict_of(
    breaches: Sequence[Breach], report: Path | None = None, run_report: Path | None = None
) -> Verdict:
    sev = {b.severity for b in breaches}
    status = "failure" if "failure" in sev else ("warning" if breaches else "ok")
    if not breaches:
        message = "monitoring: no threshold breached"
    else:
        days = sorted({b.execution_date for b in breaches})
        first = breaches[0]
        message = (
            f"monitoring: {len(breaches)} breach(es) on {len(days)} date(s) "
            f"({sum(b.severity == 'failure' for b in breaches)} failure); first: {first.message}"
        )
    return Verdict(status, list(breaches), message[:1000], report, run_report)


def alerts_markdown(verdict: Verdict, title: str, limit: int = 200) -> str:
    lines = [f"## {title}", ""]
    if not verdict.breaches:
        lines.append("No monitoring threshold was breached.")
    else:
        lines.append(
            f"**{verdict.status.upper()}**: {len(verdict.breaches)} threshold breach(es) "
            f"on {len({b.execution_date for b in verdict.breaches})} date(s)."
        )
        lines += [
            "",
            "| date | severity | metric | scope | value | threshold | detail |",
            "|---|---|---|---|---|---|---|",
        ]
        for b in verdict.breaches[:limit]:
            detail = b.detail[:200]
            cells = [
                b.execution_date.isoformat(),
                b.severity,
                b.metric,
                b.scope,
                "missing" if b.value is None else fmt_value(b.value),
                f"breach if {b.condition}",
                detail,
            ]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        if len(verdict.breaches) > limit:
            lines.append(f"\n... and {len(verdict.breaches) - limit} more (see the report / `asof monitor`).")
    if verdict.run_report is not None:
        lines += [
            "",
            f"This run's dates in context: [report]({links.report_url(verdict.run_report)})",
        ]
    if verdict.report is not None:
        lines += [
            "",
            f"The lake's newest dates: [monitoring report]({links.report_url(verdict.report)})",
        ]
    lines += ["", "Thresholds: `monitoring.toml`; all metrics: `asof monitor --start D1 --end D2`."]
    return "\n".join(lines)


def report_path() -> Path:
    return links.reports_dir() / "monitoring.html"


def publish(
    breaches: Sequence[Breach],
    title: str = "monitoring",
    days: Sequence[dt.date] | None = None,
    write_report: bool = True,
    config: MonitorConfig | None = None,
) -> Verdict:
    """Alert on `breaches`: log them, write the HTML reports (`$ASOF_HOME/reports/monitoring.html`,
    the newest `flow_report_days` dates in the lake, and the run's own `reports/runs/...html`, its
    dates in context: monitor_report.write_flow_reports), and, inside a Prefect run, publish a
    markdown artifact (key `asof-monitoring`) naming each breach's metric, value and threshold, plus
    a link artifact to the run's report. Links are served URLs under `make serve` (flows/pages/links.py).
    Never raises for a publishing problem; returns the verdict."""
    report: Path | None = None
    run_report: Path | None = None
    run_days = sorted({*(days or []), *(b.execution_date for b in breaches)})
    if write_report and run_days:
        try:
            from flows.monitoring import report as monitor_report

            cfg = config or load_config()
            written = monitor_report.write_flow_reports(run_days, cfg.flow_report_days, links.reports_dir())
            report, run_report = written.served, written.run
        except Exception as exc:
            log.warning("could not write the monitoring report: %s", exc)
    verdict = verdict_of(breaches, report, run_report)
    in_run = False
    if "prefect" in sys.modules:
        try:
            from prefect.context import FlowRunContext, TaskRunContext

            in_run = FlowRunContext.get() is not None or TaskRunContext.get() is not None
        except Exception:
            in_run = False
    if in_run:
        try:
            from prefect import get_run_logger
            from prefect.artifacts import create_link_artifact, create_markdown_artifact

            logger = get_run_logger()
            for b in verdict.breaches[:50]:
                (logger.error if b.severity == "failure" else logger.warning)("%s", b.message)
            create_markdown_artifact(
                alerts_markdown(verdict, title), key="asof-monitoring", description=verdict.message[:500]
            )
            if run_report or report:
                create_link_artifact(
                    links.report_url(run_report or report),
                    link_text="monitoring report (HTML)",
                    key="asof-monitoring-report",
                    description="Per-date pipeline health: rows, pass rate, PSI, freshness, coverage",
                )
        except Exception as exc:  # artifacts are a convenience; never fail a run on them
            log.warning("could not publish monitoring artifacts: %s", exc)
    if days:  # the run's metrics to a Pushgateway / textfile when configured (never raises)
        from flows.monitoring import prometheus

        prometheus.export_run(days, verdict.breaches)
    return verdict


class MonitoringFailure(RuntimeError):
    """A failure-severity threshold was breached. `data` is what the flow would have returned."""

    def __init__(self, message: str, data: Any = None, breaches: Sequence[Breach] = ()) -> None:
        super().__init__(message)
        self.data = data
        self.breaches = list(breaches)

    def __reduce__(self):  # picklable with its payload (Prefect may persist the failed result)
        return (type(self), (str(self), self.data, self.breaches))


def flow_state(verdict: Verdict, data: Any = None) -> Any:
    """What a flow returns so that its run is marked as configured.

    - no breach: `data` itself (state Completed);
    - warnings only: `Completed(name="Completed with warnings", message=..., data=data)`; calling the
      flow still returns `data`;
    - a failure: `Failed(message=..., data=MonitoringFailure(message, data))`; calling the flow raises
      that MonitoringFailure (`.data` holds the flow's result), `flow(..., return_state=True)` returns
      the Failed state (`state.result(raise_on_failure=False).data`).
    """
    if verdict.status == "ok":
        return data
    from prefect.states import Completed, Failed

    if verdict.status == "warning":
        return Completed(name="Completed with warnings", message=verdict.message, data=data)
    return Failed(message=verdict.message, data=MonitoringFailure(verdict.message, data, verdict.breaches))
