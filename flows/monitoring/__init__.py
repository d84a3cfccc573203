"""Monitoring where operators already look: Prometheus metrics, serving latency, alert rules.

    serving        `asof serve` and in-process online reads: request-latency histogram, `/metrics`
    daily_latency  the same observations per UTC day on disk, read back as P50/P99 by flows.monitor
    prometheus     a batch run's per-date metrics pushed to a Pushgateway (or a textfile collector)
    alert_rules    monitoring/alerts.yml generated from monitoring.toml (`--check` in review)

flows/monitor.py stays the source of the per-date numbers (lake/ops/metrics); this package only
exports them and adds what the batch side cannot see (latency of the serving process). See
docs/monitoring.md ("Prometheus and Grafana").
"""
