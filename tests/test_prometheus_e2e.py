"""Issue 22 end to end, with real components: a Prometheus (Debian's package) scraping a Pushgateway
that a small backfill pushed to, and a real `asof serve` (two gunicorn workers) answering online
reads; the metrics, the latency histogram and a firing alert are read back through Prometheus's
HTTP API, and the daily P99 monitoring stores agrees with Prometheus's `histogram_quantile`."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.monitoring import alert_rules, alerts, daily_latency, metrics, prometheus, serving, storage
from flows.storage import lake
from tests.conftest import require_binary

pytestmark = pytest.mark.slow

D1, D2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
SCALE, SEED = "200x400", 5
READS = {"fraud_v2": 12, "fraud_v1": 5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float, procs: tuple = ()) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"{what}: {p.args[0]} exited with {p.returncode}"
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError, KeyError, IndexError) as exc:
            last = exc
        time.sleep(0.25)
    pytest.fail(f"{what}: not within {timeout:g} s (last: {last!r})")


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read()


def started(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)


def stopped(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


@pytest.fixture
def observability(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A Pushgateway and a Prometheus on 127.0.0.1, the latter scraping the former, a serve port
    (nothing there yet) every second, with monitoring/alerts.yml loaded."""
    prom_bin = require_binary("prometheus")
    gateway_bin = require_binary("prometheus-pushgateway")
    gateway_port, prom_port, serve_port = free_port(), free_port(), free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(alert_rules.RULES_FILE)],
        "scrape_configs": [
            {"job_name": "asof_serve", "static_configs": [{"targets": [f"127.0.0.1:{serve_port}"]}]},
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{gateway_port}"]}],
            },
        ],
    }
    cfg_file = tmp_path / "prometheus.yml"
    cfg_file.write_text(yaml.safe_dump(config))
    gateway = started(
        [gateway_bin, f"--web.listen-address=127.0.0.1:{gateway_port}"], tmp_path / "pushgateway.log"
    )
    prom = started(
        [
            prom_bin,
            f"--config.file={cfg_file}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        tmp_path / "prometheus.log",
    )
    try:
        wait_for("pushgateway", lambda: get(f"http://127.0.0.1:{gateway_port}/-/ready"), 30, (gateway,))
        wait_for("prometheus", lambda: get(f"http://127.0.0.1:{prom_port}/-/ready"), 60, (prom,))
        yield {
            "gateway": f"http://127.0.0.1:{gateway_port}",
            "prometheus": f"http://127.0.0.1:{prom_port}",
            "serve_port": serve_port,
            "procs": (gateway, prom),
            "logs": tmp_path,
        }
    finally:
        stopped(prom, gateway)


def query(base: str, promql: str) -> list[dict[str, Any]]:
    body = json.loads(get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
    assert body["status"] == "success", body
    return body["data"]["result"]


def value_of(base: str, promql: str) -> float | None:
    result = query(base, promql)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def read_online(port: int, service: str, ids: list[int]) -> dict[str, list[Any]]:
    entities: dict[str, list[int]] = {"customer_id": ids}
    if service == "fraud_v2":
        entities["merchant_id"] = [1] * len(ids)
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/get-online-features",
        data=json.dumps({"feature_service": service, "entities": entities}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        payload = json.loads(resp.read())
    names = payload["metadata"]["feature_names"]
    return {n: r["values"] for n, r in zip(names, payload["results"], strict=True)}


@pytest.mark.timeout(600)
def test_prometheus_sees_the_backfill_the_serving_latency_and_fires_the_alert(
    home: Path, prefect_backend, monkeypatch: pytest.MonkeyPatch, observability: dict[str, Any]
) -> None:
    from flows import pipeline
    from flows.upstream import simulate

    prom = observability["prometheus"]
    t0 = time.monotonic()
    # 3% of D2's transactions lose a field: quarantined, so the pass rate breaches its 0.99 (warning)
    simulate.generate(
        home / "landing", D1, D2, simulate.parse_scale(SCALE), seed=SEED,
        faults=[simulate.parse_fault(f"nulls@{D2}")],
    )  # fmt: skip
    monkeypatch.setenv("ASOF_PUSHGATEWAY_URL", observability["gateway"])
    try:
        results = pipeline.backfill(D1.isoformat(), D2.isoformat())
    except alerts.MonitoringFailure as exc:  # a failure-severity breach: the same results
        results = exc.data
    assert [r["status"] for r in results] == ["succeeded", "succeeded"], results
    t_backfill = time.monotonic() - t0
    stored = {(r["metric"], r["scope"]): r for r in storage.read_metrics(D2, D2)}
    pass_rate = stored[("validation_pass_rate", "transactions")]
    assert pass_rate["breached"] and pass_rate["value"] < 0.99

    # the pushed run, through Prometheus
    wait_for("the pushed run", lambda: value_of(prom, "asof_execution_date_seconds"), 30)
    midnight = dt.datetime.combine(D2, dt.time(), dt.UTC).timestamp()
    assert value_of(prom, 'asof_execution_date_seconds{job="asof_pipeline"}') == midnight
    assert value_of(prom, "asof_last_succeeded_execution_date_seconds") == midnight
    assert value_of(prom, 'asof_validation_pass_rate{scope="transactions"}') == pytest.approx(
        pass_rate["value"]
    )
    assert value_of(prom, 'asof_run_dates{status="succeeded"}') == 2
    assert value_of(prom, 'asof_run_breaches{severity="warning"}') >= 1
    assert value_of(prom, 'asof_run_stage_seconds{stage="transform"}') > 0
    for view in ("customer_txn_features_daily", "merchant_features_daily"):
        assert value_of(prom, f'asof_freshness_hours{{scope="{view}"}}') == 0
    # the lag of a backfilled batch is recorded but judged by no rule: exported, never alerted on
    lag = query(prom, 'asof_ingest_lag_hours{scope="transactions"}')
    assert lag and lag[0]["metric"]["rule_scope"] == prometheus.NO_RULE
    firing = wait_for(
        "the pass-rate alert",
        lambda: query(prom, 'ALERTS{alertname="AsofValidationPassRate",alertstate="firing"}'),
        30,
    )
    assert {a["metric"]["scope"] for a in firing} == {"transactions"}
    assert firing[0]["metric"]["severity"] == "warning"
    assert not query(prom, 'ALERTS{alertname="AsofIngestLagHours"}')

    # a real `asof serve` with two workers, and online reads of materialized features
    port = observability["serve_port"]
    env = {**os.environ, "ASOF_HOME": str(home), "ASOF_LATENCY_FLUSH_S": "3600"}
    env.pop("ASOF_PUSHGATEWAY_URL", None)
    serve = started(
        [sys.executable, "-m", "flows.cli.features", "serve", "--port", str(port), "--workers", "2"],
        observability["logs"] / "serve.log",
        env,
    )
    try:
        wait_for("asof serve", lambda: get(f"http://127.0.0.1:{port}/health") is not None, 120, (serve,))
        gold = lake.read(
            "gold", "customer_txn_features_daily", days=[D2], date_column="as_of_date"
        ).to_pylist()
        ids = sorted({r["customer_id"] for r in gold})[:5]
        for service, n in READS.items():
            for _ in range(n):
                got = read_online(port, service, ids)
        assert got["txn_count_1d"] == [  # fraud_v1, the last read: today's gold values
            next(r["txn_count_1d"] for r in gold if r["customer_id"] == i) for i in ids
        ]
        served = 'asof_online_request_duration_seconds_count{endpoint="get-online-features"}'
        expected = {k: float(v) for k, v in READS.items()}

        def scraped() -> dict[str, float] | None:
            got = {s["metric"]["feature_service"]: float(s["value"][1]) for s in query(prom, served)}
            return got if got == expected else None

        counts = wait_for("the latency histogram", scraped, 30, (serve,))
        assert counts == {k: float(v) for k, v in READS.items()}  # both workers' requests, added up
        assert value_of(prom, 'up{job="asof_serve"}') == 1
        # every query of the Grafana dashboard is valid PromQL for this Prometheus, and the panels
        # of the run's core metrics and of the serving latency have data
        dashboard = json.loads((alert_rules.RULES_FILE.parent / "grafana" / "asof.json").read_text())
        wanted = ("asof_validation_pass_rate", "asof_freshness_hours", "asof_run_stage_seconds", "0.99")

        def panels() -> dict[str, bool] | None:
            # a rate() panel has data from the second scrape that saw the requests on (1 s apart)
            answered = {
                t["expr"]: bool(query(prom, t["expr"].replace("$source", ".*")))
                for panel in dashboard["panels"]
                for t in panel["targets"]
            }
            ok = all(any(has for expr, has in answered.items() if w in expr) for w in wanted)
            return answered if ok else None

        answered = wait_for("the dashboard's panels", panels, 30, (serve,))
        for w in wanted:
            assert any(ok for expr, ok in answered.items() if w in expr), (w, answered)

        live = value_of(
            prom,
            "histogram_quantile(0.99, sum by (le) ("
            f'{serving.LATENCY_METRIC}_bucket{{endpoint="get-online-features",feature_service="fraud_v2"}}))',
        )
    finally:
        stopped(serve)

    # The workers wrote their day's counts when they shut down (the flush interval is an hour here),
    # and the daily P99 monitoring stores is Prometheus's histogram_quantile over the same buckets.
    today = dt.datetime.now(dt.UTC).date()
    series, files = daily_latency.read_day(today)
    assert series[("get-online-features", "fraud_v2")].requests == READS["fraud_v2"] and 1 <= files <= 2
    rows = {(r["metric"], r["scope"]): r for r in metrics.compute([today], online_reader=False)}
    daily = rows[("serving_latency_p99_ms", "get-online-features:fraud_v2")]
    assert rows[("serving_requests", "get-online-features:fraud_v2")]["value"] == READS["fraud_v2"]
    assert live is not None and daily["value"] == pytest.approx(1000 * live, rel=1e-9)
    print(
        f"backfill {t_backfill:.1f} s; fraud_v2 daily P50 "
        f"{rows[('serving_latency_p50_ms', 'get-online-features:fraud_v2')]['value']:.2f} ms, "
        f"P99 {daily['value']:.2f} ms (Prometheus {1000 * live:.2f} ms); "
        f"{files} worker file(s); total {time.monotonic() - t0:.1f} s"
    )
