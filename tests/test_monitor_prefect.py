"""A breach marks the Prefect flow run (warning / failure as configured) and publishes a markdown
artifact naming the metric, the value and the threshold, plus a link to the HTML report."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from flows.monitoring import alerts, metrics
from tests.monitor_data import (
    days_between,
    delete_gold_day,
    synthetic_customer_gold,
    synthetic_merchant_gold,
    synthetic_profile,
    write_gold,
)

START = dt.date(2024, 1, 1)
END = START + dt.timedelta(days=64)
CENTS = END - dt.timedelta(days=1)
SKIPPED = END


@pytest.mark.timeout(180)
def test_breaches_mark_the_flow_run_and_publish_artifacts(home: Path, prefect_backend) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    write_gold(
        "customer_txn_features_daily",
        synthetic_customer_gold(START, END, customers=150, amount_factor={CENTS: 100}),
    )
    write_gold("merchant_features_daily", synthetic_merchant_gold(START, END, merchants=10))
    for day in days_between(START, END)[::5]:
        write_gold("customer_profile", synthetic_profile(day, customers=150))
    delete_gold_day("customer_txn_features_daily", SKIPPED)

    @flow(name="monitor-test")
    def monitored_run(days: list[str]):
        ds = [dt.date.fromisoformat(d) for d in days]
        breaches = metrics.compute_and_store(ds, online_reader=False)
        verdict = alerts.publish(breaches, f"monitoring {days[0]}..{days[-1]}", days=ds)
        return alerts.flow_state(verdict, {"breaches": len(breaches)})

    clean = monitored_run(days=[(CENTS - dt.timedelta(days=2)).isoformat()], return_state=True)
    assert clean.is_completed() and clean.name == "Completed"
    assert clean.result() == {"breaches": 0}

    warned = monitored_run(
        days=[(CENTS - dt.timedelta(days=1)).isoformat(), CENTS.isoformat()], return_state=True
    )
    assert warned.is_completed() and warned.name == "Completed with warnings"
    assert warned.result() == {"breaches": 4}
    assert "psi [customer_txn_features_daily.amount_usd" in warned.message

    failed = monitored_run(days=[SKIPPED.isoformat()], return_state=True)
    assert failed.is_failed()
    assert "freshness_hours [customer_txn_features_daily]" in failed.message
    exc = failed.result(raise_on_failure=False)
    assert isinstance(exc, alerts.MonitoringFailure) and exc.data == {"breaches": 1}
    with pytest.raises(alerts.MonitoringFailure) as raised:
        monitored_run(days=[SKIPPED.isoformat()])
    assert raised.value.data == {"breaches": 1}
    assert {b.metric for b in raised.value.breaches} == {"freshness_hours"}

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["asof-monitoring"]))
        )
        links = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["asof-monitoring-report"]))
        )
    by_run = {str(a.flow_run_id): a for a in artifacts}
    md = by_run[str(failed.state_details.flow_run_id)].data
    assert "| freshness_hours | customer_txn_features_daily | 24 | breach if > 0 |" in md
    assert f"{SKIPPED.isoformat()} | failure" in md
    md = by_run[str(warned.state_details.flow_run_id)].data
    assert "| psi | customer_txn_features_daily.amount_usd_sum_7d |" in md and "breach if > 0.2" in md
    assert "No monitoring threshold was breached" in by_run[str(clean.state_details.flow_run_id)].data
    link = {str(a.flow_run_id): a for a in links}[str(failed.state_details.flow_run_id)]
    # the run's own report (its dates in context), next to the lake-wide one make serve serves
    [target] = re.findall(r"\(file://([^)]+)\)", link.data)
    assert "/reports/runs/" in target and Path(target).exists()
    assert (home / "reports" / "monitoring.html").exists()
