"""End to end: a backfill of simulated data with injected faults through every stage; monitoring shows
each fault on the day it happened and the alerts name it (issue 8, "done when")."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from flows.dates import date_range
from flows.monitoring import alerts, metrics, storage
from flows.monitoring import report as monitor_report
from flows.storage import lake

pytestmark = pytest.mark.slow

START, END = dt.date(2024, 1, 1), dt.date(2024, 1, 12)
DROP = dt.date(2024, 1, 9)  # transactions volume_drop: the batch is rejected
MISSING = dt.date(2024, 1, 11)  # no chargebacks file: the date is not_delivered
FAULTS = [f"volume_drop@{DROP}", f"missing_file@{MISSING}:chargebacks"]
DAILY_VIEWS = ("customer_txn_features_daily", "merchant_features_daily")


@pytest.mark.timeout(900)
def test_backfill_faults_show_in_metrics_alerts_and_report(
    tmp_path: Path, prefect_backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows import pipeline
    from flows.upstream import simulate

    home = tmp_path / "home"
    monkeypatch.setenv("ASOF_HOME", str(home))
    simulate.generate(
        home / "landing",
        START,
        END,
        simulate.parse_scale("300x600"),
        seed=7,
        faults=[simulate.parse_fault(f) for f in FAULTS],
    )
    # The faults breach failure-severity thresholds, so the flow run ends Failed and the call
    # raises MonitoringFailure carrying the flow's normal per-date result.
    with pytest.raises(alerts.MonitoringFailure) as failure:
        pipeline.backfill(START.isoformat(), END.isoformat(), continue_on_failure=True)
    assert "freshness_hours" in str(failure.value)
    results = {dt.date.fromisoformat(r["day"]): r for r in failure.value.data}
    assert results[DROP]["status"] == "rejected", results[DROP]
    assert results[MISSING]["status"] == "not_delivered", results[MISSING]
    clean = [d for d in date_range(START, END) if d not in (DROP, MISSING)]
    broken = {
        d: (r["status"], r["message"][:200])
        for d, r in results.items()
        if d in clean and r["status"] != "succeeded"
    }
    assert not broken, f"clean dates did not succeed (another stage is failing): {broken}"

    wired = lake.exists("ops", "metrics")  # the flow computed the metrics itself
    assert wired
    days = list(date_range(START, END))
    breaches = metrics.compute_and_store(days)  # idempotent: same metrics as the flow's
    if wired:
        assert {(b.execution_date, b.metric, b.scope) for b in storage.stored_breaches(START, END)} == {
            (b.execution_date, b.metric, b.scope) for b in breaches
        }
    named = {(b.execution_date, b.metric, b.scope): b for b in breaches}

    # the rejected volume drop: volume, pass rate (naming the rule), stale features
    assert named[(DROP, "volume_ratio", "transactions")].value < 0.1
    assert "rejected by rule" in named[(DROP, "validation_pass_rate", "transactions")].message
    for view in DAILY_VIEWS:
        assert named[(DROP, "freshness_hours", view)].value == 24
    # the missing chargebacks file: named, and the features of the date are missing
    assert "not delivered" in named[(MISSING, "batch_delivered", "chargebacks")].message
    for view in DAILY_VIEWS:
        assert named[(MISSING, "freshness_hours", view)].severity == "failure"

    rows = storage.read_metrics(START, END)
    watched = ("freshness_hours", "coverage", "batch_delivered")
    for r in rows:
        if r["execution_date"] in clean and r["metric"] in watched and r["scope"] != "customer_profile":
            assert not r["breached"], r
    coverage = [r["value"] for r in rows if r["metric"] == "coverage" and r["execution_date"] in clean]
    assert coverage and min(coverage) >= 0.95
    online = [r for r in rows if r["metric"] == "online_mismatch_rate"]
    assert online and all(r["value"] == 0 for r in online), online

    report = monitor_report.write_report(tmp_path / "report.html", START, END)
    html = report.read_text()
    for day in (DROP, MISSING):
        assert f"<title>{day.isoformat()}: failure</title>" in html
    assert "volume_ratio" in html and "batch_delivered" in html
