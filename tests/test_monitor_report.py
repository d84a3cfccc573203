"""`asof monitor`: terminal summary, and the HTML report rendered in headless Chromium with every
request kept on 127.0.0.1 (flows/cli/monitor.py, flows/monitoring/report.py)."""

from __future__ import annotations

import datetime as dt
import functools
import http.server
import os
import re
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli.monitor import MonitorArgumentError, monitor_app, monitor_command
from flows.monitoring import metrics, storage
from flows.monitoring import report as monitor_report
from tests.monitor_data import (
    days_between,
    delete_gold_day,
    synthetic_customer_gold,
    synthetic_merchant_gold,
    synthetic_profile,
    validate_record,
    write_gold,
    write_ingest_files,
    write_runs,
)

START = dt.date(2024, 1, 1)
END = START + dt.timedelta(days=64)
FIRST = END - dt.timedelta(days=13)  # the monitored fortnight
CENTS = END - dt.timedelta(days=3)
SKIPPED = END - dt.timedelta(days=8)
DROP = END - dt.timedelta(days=5)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake whose fortnight has a cents jump, a skipped day, a volume drop and a rejected batch."""
    home = tmp_path_factory.mktemp("monitor_home")
    old = os.environ.get("ASOF_HOME")
    os.environ["ASOF_HOME"] = str(home)
    try:
        write_gold(
            "customer_txn_features_daily", synthetic_customer_gold(START, END, amount_factor={CENTS: 100})
        )
        write_gold("merchant_features_daily", synthetic_merchant_gold(START, END, merchants=20))
        for day in [START, *days_between(FIRST - dt.timedelta(days=7), END)[::4]]:
            write_gold("customer_profile", synthetic_profile(day))  # a change every 4 days
        delete_gold_day("customer_txn_features_daily", SKIPPED)
        delete_gold_day("merchant_features_daily", SKIPPED)
        days = days_between(FIRST - dt.timedelta(days=7), END)
        write_ingest_files(
            [(d, "transactions", 30 if d == DROP else 600 + (d.day % 5) * 7, "ok") for d in days]
            + [(d, "merchants", 20, "ok") for d in days]
        )
        recs = []
        for d in days_between(FIRST, END):
            if d == DROP:
                recs.append(
                    validate_record(
                        d,
                        "transactions",
                        30,
                        30,
                        status="rejected",
                        rejected_rule="row_count",
                        reasons={"batch_rejected:row_count": 30},
                    )
                )
            else:
                recs.append(validate_record(d, "transactions", 600, 1, reasons={"duplicate": 1}))
            recs.append(validate_record(d, "merchants", 20, 0))
        write_runs(recs)
        # the last day is not monitored: the report shows it as a day without metrics
        metrics.compute_and_store(days_between(FIRST, END - dt.timedelta(days=1)), online_reader=False)
    finally:
        if old is None:
            os.environ.pop("ASOF_HOME", None)
        else:
            os.environ["ASOF_HOME"] = old
    return home


def test_breaches_name_each_fault_on_its_day(monitored: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASOF_HOME", str(monitored))
    breaches = storage.stored_breaches(FIRST, END)
    by_day: dict[dt.date, set[str]] = {}
    for b in breaches:
        by_day.setdefault(b.execution_date, set()).add(f"{b.metric}:{b.scope}")
    assert "freshness_hours:customer_txn_features_daily" in by_day[SKIPPED]
    assert {"volume_ratio:transactions", "validation_pass_rate:transactions"} <= by_day[DROP]
    assert "psi:customer_txn_features_daily.amount_usd_sum_7d" in by_day[CENTS]
    quiet = [d for d in days_between(FIRST, END - dt.timedelta(days=1)) if d not in (SKIPPED, DROP, CENTS)]
    # the day after the skip: its 7-day reference lost a day, nothing else is wrong
    assert not [b for b in breaches if b.execution_date in quiet], [b.message for b in breaches]


def test_cli_summary_and_arguments(monitored: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ASOF_HOME", str(monitored))
    runner = CliRunner()
    out = runner.invoke(monitor_app, ["--start", FIRST.isoformat(), "--end", END.isoformat()])
    assert out.exit_code == 0, out.output
    assert CENTS.isoformat() in out.output and "no metrics" in out.output
    assert re.search(
        rf"\[failure\] freshness_hours \[customer_txn_features_daily\] on {SKIPPED}: 24", out.output
    )
    assert f"psi [customer_txn_features_daily.amount_usd_sum_7d] on {CENTS}" in out.output
    assert "breach if > 0.2" in out.output

    strict = runner.invoke(monitor_app, ["--start", FIRST.isoformat(), "--end", END.isoformat(), "--strict"])
    assert strict.exit_code == 1

    # default range: the newest 30 days with metrics
    assert monitor_command() == 0

    with pytest.raises(MonitorArgumentError, match="not a real calendar date"):
        monitor_command("2024-02-30", "2024-03-01")
    with pytest.raises(MonitorArgumentError, match="before start"):
        monitor_command("2024-03-02", "2024-03-01")
    with pytest.raises(MonitorArgumentError, match="--end needs --start"):
        monitor_command(None, "2024-03-01")
    bad = runner.invoke(monitor_app, ["--start", "2024-13-01"])
    assert bad.exit_code != 0

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("ASOF_HOME", str(empty))
    assert monitor_command() == 0  # nothing recorded yet: says so, exit 0


def test_register_adds_the_command_to_an_app(monitored: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer

    from flows.cli.main import Refused
    from flows.cli.monitor import register

    monkeypatch.setenv("ASOF_HOME", str(monitored))
    app = typer.Typer()

    @app.command()
    def other() -> None:
        pass

    register(app)
    ok = CliRunner().invoke(app, ["monitor", "--start", FIRST.isoformat(), "--end", END.isoformat()])
    assert ok.exit_code == 0 and "breach(es)" in ok.output
    bad = CliRunner().invoke(app, ["monitor", "--start", "2024-02-30"])
    assert isinstance(bad.exception, Refused) and "not a real calendar date" in str(bad.exception)


def _serve(directory: Path):
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.mark.timeout(120)
def test_html_report_renders_offline_in_chromium(
    monitored: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, browser
) -> None:
    monkeypatch.setenv("ASOF_HOME", str(monitored))
    site = tmp_path / "site"
    report = site / "report.html"
    assert monitor_command(FIRST.isoformat(), END.isoformat(), html=report) == 0
    text = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "external reference in the report"
    assert "<script" not in text

    server, thread = _serve(site)
    port = server.server_address[1]
    requests: list[str] = []
    try:
        page = browser.new_page()
        try:
            page.on("request", lambda r: requests.append(r.url))

            def guard(route):
                url = route.request.url
                if url.startswith(f"http://127.0.0.1:{port}/") or url.startswith(("data:", "file:")):
                    route.continue_()
                else:
                    route.abort()

            page.route("**/*", guard)
            page.goto(f"http://127.0.0.1:{port}/report.html", wait_until="load")
            page.wait_for_timeout(300)
            charts = page.evaluate(
                """() => [...document.querySelectorAll('svg.chart')].map(s => {
                    const b = s.getBoundingClientRect();
                    return {id: s.dataset.chart, w: b.width, h: b.height,
                            paths: s.querySelectorAll('path.series').length,
                            cells: s.querySelectorAll('rect.cell').length,
                            bars: s.querySelectorAll('rect.bar').length,
                            breachDays: [...s.querySelectorAll('rect.breach-day')].map(
                                r => (r.querySelector('title') || {}).textContent || ''),
                            breachPoints: s.querySelectorAll('circle.breach-point').length};
                })"""
            )
            # every drawn series path has a non-empty rendered box
            path_boxes = page.evaluate(
                """() => [...document.querySelectorAll('path.series')].map(p => {
                    const b = p.getBoundingClientRect(); return b.width * (b.height + 1); })"""
            )
            alerts = page.inner_text("table")
        finally:
            page.close()
    finally:
        server.shutdown()
        thread.join(5)

    assert requests and all(u.startswith(f"http://127.0.0.1:{port}/") for u in requests), requests
    by_id = {c["id"]: c for c in charts}
    expected = {
        "days",
        "rows-transactions",
        "validation_pass_rate",
        "volume_ratio",
        "freshness_hours",
        "coverage",
        "psi-heatmap",
        "psi",
        "quarantine",
    }
    assert expected <= set(by_id), sorted(by_id)
    for c in charts:
        assert c["w"] > 200 and c["h"] > 50, c
    assert path_boxes and all(a > 0 for a in path_boxes)
    assert by_id["validation_pass_rate"]["paths"] == 2  # merchants, transactions
    assert by_id["freshness_hours"]["paths"] == 3 and by_id["freshness_hours"]["breachPoints"] >= 2
    assert by_id["rows-transactions"]["bars"] >= 13
    ndays = (END - FIRST).days + 1
    assert by_id["psi-heatmap"]["cells"] == 13 * ndays  # 9 customer + 4 merchant features
    assert by_id["psi"]["paths"] >= 9 and by_id["psi"]["breachPoints"] >= 4
    # breached days are highlighted in every time chart, on the right days
    shaded = by_id["freshness_hours"]["breachDays"]
    assert any(s.startswith(f"{SKIPPED}: failure") for s in shaded)
    assert any(s.startswith(f"{DROP}: ") for s in shaded)
    assert any(s.startswith(f"{CENTS}: warning") for s in shaded)
    assert any(s.startswith(f"{END}: no metrics") for s in shaded)
    assert "amount_usd_sum_7d" in alerts and SKIPPED.isoformat() in alerts and "freshness_hours" in alerts


def test_render_without_metrics_and_with_odd_values() -> None:
    html = monitor_report.render([], START, START + dt.timedelta(days=2))
    assert "No threshold breached" in html and 'data-chart="days"' in html
    row = {
        "execution_date": START,
        "metric": "psi",
        "scope": "v.<script>",
        "value": float("nan"),
        "threshold": 0.2,
        "condition": "> 0.2",
        "severity": "warning",
        "breached": True,
        "details": {"summary": "<b>x</b>"},
    }
    html = monitor_report.render([row], START, START)
    assert "<script>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert monitor_report._nice_ticks(0, 0) and monitor_report._nice_ticks(0.99, 1.0)


def test_serving_latency_is_charted_per_endpoint_and_service() -> None:
    """The daily P50/P99 of asof serve (issue 22) have their own charts, one line per scope, with
    the P99 threshold; a day breaching it is named."""
    rows = [
        {
            "execution_date": START + dt.timedelta(days=i),
            "metric": metric,
            "scope": "get-online-features:fraud_v2",
            "value": value,
            "threshold": 50.0 if metric.endswith("p99_ms") else None,
            "condition": "> 50" if metric.endswith("p99_ms") else None,
            "severity": "warning" if metric.endswith("p99_ms") and value > 50 else None,
            "breached": metric.endswith("p99_ms") and value > 50,
            "details": {},
        }
        for i, (p50, p99) in enumerate([(2.0, 9.0), (3.0, 80.0)])
        for metric, value in (("serving_latency_p50_ms", p50), ("serving_latency_p99_ms", p99))
    ]
    html = monitor_report.render(rows, START, START + dt.timedelta(days=1))
    assert "Online serving latency P99 (ms)" in html and "Online serving latency P50 (ms)" in html
    assert 'data-chart="serving_latency_p99_ms"' in html and 'data-chart="serving_latency_p50_ms"' in html
    assert "get-online-features:fraud_v2" in html
    without = monitor_report.render([r for r in rows if "p50" in r["metric"]], START, START)
    assert "Online serving latency P99 (ms)" not in without
