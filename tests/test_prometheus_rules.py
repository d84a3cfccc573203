"""Issue 22 without a running pipeline: the generated alert rules under promtool, the Grafana
dashboard, latency quantiles, the batch export's labels and its textfile / failure paths."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from flows.cli.monitor import monitor_app
from flows.config import REPO_ROOT
from flows.monitoring import alert_rules, config, daily_latency, metrics, prometheus, serving, storage
from flows.monitoring import breaches as monitoring_breaches
from tests.conftest import require_binary

DASHBOARD = REPO_ROOT / "monitoring" / "grafana" / "asof.json"


def test_rules_file_is_what_monitoring_toml_gives() -> None:
    assert alert_rules.main(["--check"]) == 0, "run: python -m flows.monitoring.alert_rules"
    groups = yaml.safe_load(alert_rules.RULES_FILE.read_text())["groups"]
    exprs = {r["expr"] for g in groups for r in g["rules"]}
    cfg = config.load_config()
    # spot checks against monitoring.toml itself: a base rule, a scope override, a band, the latency
    assert f'asof_validation_pass_rate{{rule_scope=""}} < {cfg.rules["validation_pass_rate"].min:g}' in exprs
    profile = cfg.scope_rules[("freshness_hours", "customer_profile")]
    assert f'asof_freshness_hours{{rule_scope="customer_profile"}} > {profile.max:g}' in exprs
    assert 'asof_volume_ratio{rule_scope=""} < 0.5 or asof_volume_ratio{rule_scope=""} > 2' in exprs
    latency = cfg.rules["serving_latency_p99_ms"].max
    assert any(e.startswith("histogram_quantile(0.99") and e.endswith(f"> {latency / 1000:g}") for e in exprs)


def test_promtool_checks_the_rules_and_every_alert_fires_and_stays_quiet(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", str(alert_rules.RULES_FILE)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    cfg = config.load_config()
    tests = alert_rules.unit_tests(cfg, alert_rules.RULES_FILE)
    names = {
        r["alert"] for g in yaml.safe_load(alert_rules.RULES_FILE.read_text())["groups"] for r in g["rules"]
    }
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]}
    assert tested == names
    firing = [a for case in tests["tests"] for t in case["alert_rule_test"] for a in t["exp_alerts"]]
    assert len(firing) >= len(alert_rules.judged(cfg)) + 1  # every rule (and both sides of a band)
    path = tmp_path / "alerts.test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    run = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout

    # and the tests do test something: a rule file with a wrong bound fails them
    broken = tmp_path / "broken.yml"
    broken.write_text(alert_rules.RULES_FILE.read_text().replace("< 0.99", "< 0.5"))
    tests["rule_files"] = [str(broken)]
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    run = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "AsofValidationPassRate" in run.stdout + run.stderr


def test_latency_objective_is_a_bucket_bound() -> None:
    """Otherwise "P99 > 50 ms" would be decided by interpolating inside a bucket."""
    objective = config.load_config().rules[daily_latency.P99].max
    assert objective is not None and objective / 1000 in daily_latency.BUCKETS
    assert set(daily_latency.METRICS) <= set(config.KNOWN_METRICS)


def test_quantile_interpolates_like_histogram_quantile() -> None:
    counts = [0] * (len(daily_latency.BUCKETS) + 1)
    i = daily_latency.BUCKETS.index(0.05)
    counts[i] = 100  # 100 requests in (0.04, 0.05]
    assert daily_latency.quantile(0.5, counts) == pytest.approx(0.045)
    assert daily_latency.quantile(0.99, counts) == pytest.approx(0.0499)
    counts[-1] = 100  # as many again beyond the last bound: P99 is the highest finite bound
    assert daily_latency.quantile(0.99, counts) == daily_latency.BUCKETS[-1]
    assert daily_latency.quantile(0.5, [0] * len(counts)) is None


def test_in_process_reads_are_timed_per_day(home: Path) -> None:
    for _ in range(3):
        with serving.timed("fraud_v1"):
            pass
    with pytest.raises(KeyError), serving.timed("fraud_v1"):
        raise KeyError("a failed read is timed too")
    daily_latency.process_log().flush()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(serving.exposition().decode())
        for s in fam.samples
    }
    key = (("code", "500"), ("endpoint", "in_process"), ("feature_service", "fraud_v1"))
    assert samples[("asof_online_requests_total", key)] >= 1
    today = dt.datetime.now(dt.UTC).date()
    got = {(m, scope): (value, info) for m, scope, value, info in daily_latency.measurements(today)}
    value, info = got[("serving_requests", "in_process:fraud_v1")]
    assert value == 4 and info["processes"] == 1
    assert got[("serving_latency_p99_ms", "in_process:fraud_v1")][0] < 1  # an empty block: under a ms
    metrics.compute_and_store([today], online_reader=False)
    p99 = [r for r in storage.read_metrics(today) if r["metric"] == "serving_latency_p99_ms"]
    assert [(r["scope"], r["breached"], r["condition"]) for r in p99] == [
        ("in_process:fraud_v1", False, "> 50")
    ]
    out = CliRunner().invoke(monitor_app, ["--start", today.isoformat()])  # `asof monitor`
    assert out.exit_code == 0, out.output
    assert "serving P99 ms" in out.output and "in_process:fraud_v1" in out.output


def test_rule_scope_is_the_rule_monitor_applies() -> None:
    cfg = config.load_config()

    def row(metric: str, scope: str, value: float | None = 1.0, **extra: object) -> dict:
        rule = cfg.rule_for(metric, scope)
        return {
            "metric": metric,
            "scope": scope,
            "value": value,
            "condition": rule.condition if rule else None,
            "breached": extra.pop("breached", False),
            "details": extra,
        }

    assert prometheus.rule_scope(cfg, row("freshness_hours", "customer_profile")) == "customer_profile"
    assert prometheus.rule_scope(cfg, row("freshness_hours", "merchant_features_daily")) == ""
    assert prometheus.rule_scope(cfg, row("rows_landed", "transactions")) == prometheus.NO_RULE
    lag = row("ingest_lag_hours", "transactions", 9000.0, not_evaluated="backfill")
    assert prometheus.rule_scope(cfg, lag) == prometheus.NO_RULE
    missing = row("freshness_hours", "customer_txn_features_daily", None, breached=True)
    assert prometheus.exported_value(cfg, missing) == float("inf")
    assert prometheus.exported_value(cfg, row("coverage", "fraud_v1", None)) is None


def test_textfile_export_and_a_failed_push_that_does_not_leak_the_password(
    home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    day = dt.date(2024, 3, 2)
    cfg = config.load_config()

    def row(day: dt.date, metric: str, scope: str, value: float | None, **details: object) -> dict:
        rule = cfg.rule_for(metric, scope)
        breached = rule is not None and (value is None or rule.check(value)[0])
        return {
            "execution_date": day,
            "metric": metric,
            "scope": scope,
            "value": value,
            "threshold": None if rule is None else rule.check(value or 0.0)[1],
            "condition": rule.condition if rule else None,
            "severity": rule.severity if rule else None,
            "breached": breached,
            "details": json.dumps(details),
            "computed_at": dt.datetime.now(dt.UTC),
            "flow_run_id": None,
        }

    rows = [
        row(day - dt.timedelta(days=2), "date_status", "*", 1.0, status="succeeded"),
        row(day - dt.timedelta(days=1), "date_status", "*", 1.0, status="succeeded"),  # skipped by the run
        row(day, "date_status", "*", 0.0, status="rejected"),
        row(day, "validation_pass_rate", "transactions", 0.5),
        row(day, "freshness_hours", "customer_txn_features_daily", None),
    ]
    storage.store(rows, [day - dt.timedelta(days=2), day - dt.timedelta(days=1), day])
    breaches = monitoring_breaches.breaches_of(rows)

    out = tmp_path / "textfile" / "asof.prom"
    out.parent.mkdir()
    monkeypatch.setenv("ASOF_PROMETHEUS_TEXTFILE", str(out))
    secret = "s3cret-push-Pa55"
    with socket_closed() as port:
        monkeypatch.setenv("ASOF_PUSHGATEWAY_URL", f"http://ops:{secret}@127.0.0.1:{port}")
        logged = Kept()
        logger = logging.getLogger(prometheus.__name__)  # Prefect's logging config may stop propagation
        logger.addHandler(logged)
        try:
            prometheus.export_run([day - dt.timedelta(days=2), day], breaches)
        finally:
            logger.removeHandler(logged)
    text = "\n".join(logged.lines)
    assert "could not push metrics to http://ops:***@127.0.0.1" in text and secret not in text
    families = {f.name: f for f in text_string_to_metric_families(out.read_text())}
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    assert values[("asof_validation_pass_rate", (("rule_scope", ""), ("scope", "transactions")))] == 0.5
    fresh = ("asof_freshness_hours", (("rule_scope", ""), ("scope", "customer_txn_features_daily")))
    assert values[fresh] == float("inf")
    assert values[("asof_date_status", (("rule_scope", "none"), ("scope", "*")))] == 0.0
    assert values[("asof_run_dates", (("status", "rejected"),))] == 1
    assert values[("asof_run_dates", (("status", "succeeded"),))] == 1
    assert values[("asof_run_breaches", (("severity", "failure"),))] == 1
    assert values[("asof_run_breaches", (("severity", "warning"),))] == 1
    midnight = dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()
    assert values[("asof_execution_date_seconds", ())] == midnight
    assert set(families) <= {n.removesuffix("_total") for n in prometheus.exported_names()}


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class socket_closed:
    """A loopback port nothing listens on."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        return None


def test_redacted_url() -> None:
    assert prometheus.redacted("https://u:pw@gw.example:9091/x") == "https://u:***@gw.example:9091/x"
    assert prometheus.redacted("http://127.0.0.1:9091") == "http://127.0.0.1:9091"


METRIC_RE = re.compile(r"\b(asof_[a-z0-9_]+)\b")


def test_grafana_dashboard_is_provisionable_and_queries_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash.get("id") is None  # provisioning assigns the id
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    live = {serving.LATENCY_METRIC + s for s in ("_bucket", "_count", "_sum")} | {serving.REQUESTS_METRIC}
    known = prometheus.exported_names() | live
    seen: set[str] = set()
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            names = set(METRIC_RE.findall(target["expr"]))
            assert names, (panel["title"], target["expr"])
            assert names <= known, (panel["title"], names - known)
            seen |= names
    for wanted in (
        "asof_validation_pass_rate",
        "asof_psi",
        "asof_freshness_hours",
        serving.LATENCY_METRIC + "_bucket",
    ):
        assert wanted in seen
