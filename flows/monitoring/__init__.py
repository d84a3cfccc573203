"""Monitoring (contract §9): per-date metrics of the lake, thresholds, alerts, reports, and the
exports operators already watch (Prometheus, serving latency, notifications).

    config         monitoring.toml: rules, severities, monitored views and services
    measurement    one measured value and the `ops/metrics` row it becomes once judged
    gold_views     the gold feature tables read a day at a time, with deterministic samples
    drift          PSI of a feature against its reference window
    online_check   online store against gold (also `asof verify --online`)
    metrics        every metric of a set of dates, computed in one pass over what they read
    storage        `lake/ops/metrics`: stored, replaced per date, read back
    breaches       metric rows over their thresholds, as messages
    alerts         a run's verdict: Prefect artifacts, the HTML reports, the flow's state
    report         the self-contained HTML monitoring report
    stage_timing   wall seconds per pipeline stage in this process
    notify         a Failed or Crashed flow run tells someone
    serving        `asof serve`'s request-latency histogram and `/metrics`
    daily_latency  the same observations per UTC day on disk, read back as P50/P99 by `metrics`
    prometheus     a batch run's per-date metrics pushed to a Pushgateway (or a textfile collector)
    alert_rules    monitoring/alerts.yml generated from monitoring.toml (`--check` in review)

See docs/monitoring.md.
"""
