"""Monitoring metrics on synthetic lakes: PSI, freshness, volume/lag, pass rate, coverage, online
consistency, thresholds, storage (flows/monitoring/metrics.py)."""

from __future__ import annotations

import ast
import datetime as dt
import os
from pathlib import Path

import numpy as np
import pytest

from flows.config import REPO_ROOT
from flows.monitoring import alerts, config, metrics, online_check, storage
from flows.monitoring import drift as monitoring_drift
from flows.storage import lake
from flows.transform.gold_schema import gold_tables
from tests.monitor_data import (
    customer_gold_sql,
    days_between,
    delete_gold_day,
    details,
    midnight,
    read_landing_transactions,
    sim_landing,
    synthetic_customer_gold,
    synthetic_merchant_gold,
    synthetic_profile,
    validate_record,
    write_gold,
    write_ingest_files,
    write_runs,
    write_silver_transactions,
)

START = dt.date(2024, 1, 1)
AMOUNT_FEATURES = ("amount_usd_sum_7d", "amount_usd_sum_30d", "amount_usd_avg_30d", "amount_usd_max_7d")
COUNT_FEATURES = ("txn_count_1d", "txn_count_7d", "txn_count_30d", "distinct_merchants_30d")


def _by(rows: list[dict], metric: str) -> dict[tuple[dt.date, str], dict]:
    return {(r["execution_date"], r["scope"]): r for r in rows if r["metric"] == metric}


def _config(**overrides) -> config.MonitorConfig:
    raw = config.raw_config()
    for path, value in overrides.items():
        node = raw
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return config.MonitorConfig.from_dict(raw)


# ------------------------------------------------------------------------------------- PSI maths


def test_psi_uses_reference_deciles_and_epsilon_floor() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 20_000)
    same = rng.normal(0, 1, 5_000)
    value, edges, q, p = monitoring_drift.psi(ref, same)
    assert edges.size == 9 and np.allclose(q, 0.1, atol=1e-3)
    assert value < 0.01

    shifted = ref + 1.0
    value, edges, q, p = monitoring_drift.psi(ref, shifted)
    expected = float(np.sum((p - q) * np.log(p / q)))
    assert value == pytest.approx(expected) and value > 0.2

    # every current value beyond the top edge: 9 empty bins floored at epsilon
    value, _, _, p = monitoring_drift.psi(ref, np.full(1000, 100.0), epsilon=1e-4)
    assert p[:-1] == pytest.approx([1e-4] * 9) and p[-1] == 1.0
    assert value == pytest.approx(9 * (1e-4 - 0.1) * np.log(1e-4 / 0.1) + 0.9 * np.log(1 / 0.1), rel=1e-3)

    # ties collapse bins (counts): edges are unique, a value equal to an edge is in the lower bin
    counts = np.array([0] * 60 + [1] * 30 + [2] * 10, dtype=float)
    edges = monitoring_drift.psi_edges(counts)
    assert edges.tolist() == [0.0, 1.0]
    assert monitoring_drift.bin_shares(np.array([0.0, 1.0, 2.0, 7.0]), np.array([0.0, 1.0])).tolist() == [
        0.25,
        0.25,
        0.5,
    ]


# ------------------------------------------------------------------------------------- config


def test_shipped_config_loads_and_mirrors_feature_repo() -> None:
    cfg = config.load_config(REPO_ROOT / "monitoring.toml")
    assert cfg.rule_for("validation_pass_rate", "transactions") == config.Rule(min=0.99, severity="warning")
    assert cfg.rule_for("psi", "customer_txn_features_daily.amount_usd_sum_7d").max == 0.2
    assert cfg.rule_for("coverage", "fraud_v2").min == 0.95
    assert cfg.rule_for("freshness_hours", "customer_profile").max == 168
    assert cfg.rule_for("freshness_hours", "merchant_features_daily").max == 0
    assert cfg.rule_for("rows_landed", "transactions") is None
    assert cfg.psi_bins == 10 and cfg.psi_reference_days == 28

    # services and views mirror feature_repo/ (parsed, not imported: importing feast costs ~8 s)
    tree = ast.parse((REPO_ROOT / "feature_repo" / "feature_services.py").read_text())
    services = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "FeatureService":
            kw = {k.arg: k.value for k in node.keywords}
            services[kw["name"].value] = [e.id for e in kw["features"].elts]
    assert services == cfg.services
    views_src = (REPO_ROOT / "feature_repo" / "features.py").read_text()
    for name, view in cfg.views.items():
        assert f'name="{name}"' in views_src
        # a view's fields are its gold table's (flows.transform.gold_schema): its entity is the table's key
        assert gold_tables()[name].entity == view.entity


def test_config_is_validated() -> None:
    raw = config.raw_config()
    raw["rules"]["psi"]["severity"] = "critical"
    with pytest.raises(config.MonitorConfigError, match="severity"):
        config.MonitorConfig.from_dict(raw)
    raw = config.raw_config()
    raw["rules"]["pass_rate"] = {"min": 0.9}
    with pytest.raises(config.MonitorConfigError, match="unknown metric"):
        config.MonitorConfig.from_dict(raw)
    cfg = _config(rules__psi__scopes={"txn_count_1d": {"enabled": False}})
    assert cfg.rule_for("psi", "customer_txn_features_daily.txn_count_1d") is None
    assert cfg.rule_for("psi", "customer_txn_features_daily.txn_count_7d") is not None


# ------------------------------------------------------------------------------------- drift


def test_cents_jump_breaches_psi_on_amount_features_and_a_clean_week_does_not(home: Path) -> None:
    end = START + dt.timedelta(days=69)
    cents_day = end - dt.timedelta(days=2)
    write_gold(
        "customer_txn_features_daily", synthetic_customer_gold(START, end, amount_factor={cents_day: 100})
    )
    clean_week = days_between(cents_day - dt.timedelta(days=7), cents_day - dt.timedelta(days=1))

    rows = metrics.compute(clean_week, online_reader=False)
    psi = _by(rows, "psi")
    assert {s for _, s in psi} >= {
        f"customer_txn_features_daily.{f}" for f in AMOUNT_FEATURES + COUNT_FEATURES
    }
    assert all(r["value"] is not None and r["value"] < 0.1 for r in psi.values()), psi
    assert not [r for r in rows if r["metric"] == "psi" and r["breached"]]

    breaches = metrics.compute_and_store([cents_day], online_reader=False)
    drift = {b.scope.split(".")[1]: b for b in breaches if b.metric == "psi"}
    assert set(drift) == set(AMOUNT_FEATURES), drift
    b = drift["amount_usd_sum_7d"]
    assert b.value > 0.2 and b.threshold == 0.2 and b.severity == "warning"
    assert "psi" in b.message and "amount_usd_sum_7d" in b.message and "> 0.2" in b.message
    verdict = alerts.verdict_of([x for x in breaches if x.metric == "psi"])
    assert verdict.status == "warning"
    md = alerts.alerts_markdown(verdict, "test")
    assert "| psi | customer_txn_features_daily.amount_usd_sum_7d |" in md and "breach if > 0.2" in md


def test_psi_is_not_computed_during_warm_up_or_without_reference(home: Path) -> None:
    end = START + dt.timedelta(days=40)
    write_gold("customer_txn_features_daily", synthetic_customer_gold(START, end))
    write_gold("merchant_features_daily", synthetic_merchant_gold(START, end))
    rows = metrics.compute([START + dt.timedelta(days=20), end], online_reader=False)
    psi = _by(rows, "psi")
    early = psi[(START + dt.timedelta(days=20), "customer_txn_features_daily.txn_count_7d")]
    assert early["value"] is None and not early["breached"] and "warm-up" in details(early)["not_evaluated"]
    # day 41: reference = days 30..40 with a full 30-day history -> 11 days, computed
    late = psi[(end, "customer_txn_features_daily.txn_count_7d")]
    assert late["value"] is not None and details(late)["reference_days"] == 11
    # merchant features need 90 days of history
    merchant = psi[(end, "merchant_features_daily.merchant_txn_count_90d")]
    assert merchant["value"] is None and "warm-up" in details(merchant)["not_evaluated"]


@pytest.mark.timeout(60)
def test_simulated_cents_fault_without_batch_rules(home: Path) -> None:
    """The simulator's `cents` fault, read straight from landing (no validation): realistic data,
    weekly seasonality included, stays far below the threshold before the fault and far above on it."""
    end = dt.date(2024, 3, 15)
    cents_day = dt.date(2024, 3, 12)
    sim_landing(home, START, end, faults=[f"cents@{cents_day}"])
    txns = read_landing_transactions(home, START, end)
    write_gold("customer_txn_features_daily", customer_gold_sql(txns, START, end))
    days = days_between(dt.date(2024, 3, 4), cents_day)
    breaches = [b for b in metrics.compute_and_store(days, online_reader=False) if b.metric == "psi"]
    assert {b.execution_date for b in breaches} == {cents_day}, breaches
    assert {b.scope.split(".")[1] for b in breaches} == set(AMOUNT_FEATURES)
    stored = _by(storage.read_metrics(days[0], cents_day), "psi")
    clean = [r["value"] for (d, _), r in stored.items() if d < cents_day]
    assert len(clean) == 8 * 9 and max(clean) < 0.15


# ------------------------------------------------------------------------------------- freshness


def test_skipped_day_breaches_freshness(home: Path) -> None:
    end = START + dt.timedelta(days=9)
    skipped = START + dt.timedelta(days=6)
    write_gold("customer_txn_features_daily", synthetic_customer_gold(START, end, customers=60))
    write_gold("merchant_features_daily", synthetic_merchant_gold(START, end, merchants=10))
    write_gold("customer_profile", synthetic_profile(START, customers=60))
    delete_gold_day("customer_txn_features_daily", skipped)
    delete_gold_day("merchant_features_daily", skipped)

    breaches = metrics.compute_and_store(days_between(START, end), online_reader=False)
    fresh = [b for b in breaches if b.metric == "freshness_hours" and b.scope != "customer_profile"]
    assert {(b.execution_date, b.scope) for b in fresh} == {
        (skipped, "customer_txn_features_daily"),
        (skipped, "merchant_features_daily"),
    }
    assert all(b.value == 24 and b.severity == "failure" and b.threshold == 0 for b in fresh)
    assert "newest rows are as of " + (skipped - dt.timedelta(days=1)).isoformat() in fresh[0].message
    stored = _by(storage.read_metrics(START, end), "freshness_hours")
    assert stored[(end, "customer_txn_features_daily")]["value"] == 0
    # the profile changed on day 1 only: 9 days later it is 216 h old, beyond its 168 h SLA (warning)
    assert stored[(end, "customer_profile")]["value"] == 9 * 24
    assert (
        stored[(end, "customer_profile")]["breached"]
        and stored[(end, "customer_profile")]["severity"] == "warning"
    )
    assert not stored[(START + dt.timedelta(days=3), "customer_profile")]["breached"]


def test_missing_gold_table_is_a_freshness_breach(home: Path) -> None:
    rows = metrics.compute([START], online_reader=False)
    fresh = _by(rows, "freshness_hours")
    assert all(r["breached"] and r["value"] is None for r in fresh.values())
    assert "does not exist" in details(fresh[(START, "customer_txn_features_daily")])["summary"]


# ------------------------------------------------------------------------------------- volume and lag


def test_volume_drop_and_missing_batch_show_in_volume_metrics(home: Path) -> None:
    days = days_between(START, START + dt.timedelta(days=9))
    drop, missing = days[7], days[8]
    records = []
    for i, d in enumerate(days):
        if d == missing:
            records.append((d, "transactions", 0, "not_delivered"))
        else:
            records.append((d, "transactions", 30 if d == drop else 600 + 10 * (i % 3), "ok"))
        records.append((d, "merchants", 40, "ok"))
    write_ingest_files(records)
    rows = metrics.compute(days, online_reader=False)
    vol = _by(rows, "volume_ratio")
    assert vol[(days[1], "transactions")]["value"] is None  # fewer than 3 batches of history
    assert vol[(days[5], "transactions")]["value"] == pytest.approx(1.0, abs=0.05)
    assert not vol[(days[5], "transactions")]["breached"]
    assert vol[(drop, "transactions")]["value"] == pytest.approx(30 / 610, rel=0.02)
    assert vol[(drop, "transactions")]["breached"]
    # the missing batch is 0 rows against the median of the delivered ones (the drop day included)
    assert vol[(missing, "transactions")]["value"] == 0 and vol[(missing, "transactions")]["breached"]
    assert "not delivered" in details(vol[(missing, "transactions")])["summary"]
    assert (days[5], "merchants") not in vol  # volume is configured for transactions only
    delivered = _by(rows, "batch_delivered")
    assert (
        delivered[(missing, "transactions")]["value"] == 0
        and delivered[(missing, "transactions")]["breached"]
    )
    assert delivered[(missing, "transactions")]["severity"] == "failure"
    assert (
        not delivered[(drop, "transactions")]["breached"]
        and not delivered[(missing, "merchants")]["breached"]
    )
    landed = _by(rows, "rows_landed")
    assert landed[(drop, "transactions")]["value"] == 30 and landed[(missing, "transactions")]["value"] == 0


def test_ingest_lag_from_landing_mtime_alerts_only_for_live_runs(home: Path) -> None:
    live, old = dt.date(2024, 5, 2), dt.date(2024, 5, 1)
    deadline = {d: midnight(d + dt.timedelta(days=1)) for d in (live, old)}
    for d, late_h in ((live, 20), (old, 1)):
        folder = home / "landing" / "transactions" / d.isoformat()
        folder.mkdir(parents=True)
        f = folder / "transactions.csv"
        f.write_text("txn_id\n")
        t = (deadline[d] + dt.timedelta(hours=late_h)).timestamp()
        os.utime(f, (t, t))
    write_ingest_files(
        [(old, "transactions", 600, "ok"), (live, "transactions", 600, "ok")],
        ingested_at={
            live: deadline[live] + dt.timedelta(hours=21),  # a daily run: evaluated
            old: deadline[old] + dt.timedelta(days=40),  # a backfill: recorded, not alerted on
        },
    )
    lag = _by(metrics.compute([old, live], online_reader=False), "ingest_lag_hours")
    assert lag[(live, "transactions")]["value"] == pytest.approx(20)
    assert lag[(live, "transactions")]["breached"]
    assert lag[(old, "transactions")]["value"] == pytest.approx(1)
    assert not lag[(old, "transactions")]["breached"]

    # late arrival of an old batch processed in a backfill: recorded but not alerted on
    f = home / "landing" / "transactions" / old.isoformat() / "transactions.csv"
    t = (deadline[old] + dt.timedelta(days=3)).timestamp()
    os.utime(f, (t, t))
    row = _by(metrics.compute([old], online_reader=False), "ingest_lag_hours")[(old, "transactions")]
    assert row["value"] == pytest.approx(72) and not row["breached"]
    assert "backfill" in details(row)["not_evaluated"]


# ------------------------------------------------------------------------------------- validation


def test_pass_rate_and_quarantined_rows_per_rule(home: Path) -> None:
    d1, d2 = START, START + dt.timedelta(days=1)
    write_runs(
        [
            validate_record(d1, "transactions", 1000, 2, reasons={"duplicate": 2}),
            validate_record(d1, "customers", 0, 0),
            validate_record(
                d2, "transactions", 1000, 30, reasons={"amount_out_of_range": 20, "duplicate": 10}
            ),
            validate_record(
                d2,
                "merchants",
                50,
                50,
                status="rejected",
                rejected_rule="contract",
                reasons={"batch_rejected:contract": 50},
            ),
        ]
    )
    rows = metrics.compute([d1, d2], online_reader=False)
    rate = _by(rows, "validation_pass_rate")
    assert (
        rate[(d1, "transactions")]["value"] == pytest.approx(0.998)
        and not rate[(d1, "transactions")]["breached"]
    )
    assert rate[(d1, "customers")]["value"] is None and not rate[(d1, "customers")]["breached"]
    assert (
        rate[(d2, "transactions")]["value"] == pytest.approx(0.97) and rate[(d2, "transactions")]["breached"]
    )
    rejected = rate[(d2, "merchants")]
    assert rejected["value"] == 0 and rejected["breached"] and rejected["threshold"] == 0.99
    assert "rejected by rule contract" in details(rejected)["summary"]
    # no quarantine table yet: per-rule counts come from the run records
    q = _by(rows, "quarantined_rows")
    assert q[(d2, "transactions:amount_out_of_range")]["value"] == 20
    assert q[(d2, "merchants:batch_rejected:contract")]["value"] == 50
    assert not any(r["breached"] for r in q.values())
    assert _by(rows, "rows_silver")[(d2, "transactions")]["value"] == 970


def test_quarantined_rows_read_from_the_quarantine_table(home: Path) -> None:
    import pyarrow as pa

    tbl = pa.table(
        {
            "_batch_date": pa.array([START] * 3 + [START + dt.timedelta(days=1)], pa.date32()),
            "_reasons": pa.array([["null:amount", "too_late"], ["too_late"], ["too_late"], ["duplicate"]]),
        }
    )
    lake.replace(
        "quarantine",
        "transactions",
        tbl,
        predicate=lake.date_predicate("_batch_date", START, START + dt.timedelta(days=1)),
    )
    q = _by(metrics.compute([START], online_reader=False), "quarantined_rows")
    assert {s: r["value"] for (_, s), r in q.items()} == {
        "transactions:null:amount": 1,
        "transactions:too_late": 3,
    }


# ------------------------------------------------------------------------------------- coverage


def test_coverage_per_service(home: Path) -> None:
    day = START + dt.timedelta(days=3)
    write_gold(
        "customer_txn_features_daily",
        synthetic_customer_gold(START, day, customers=100, null_feature={day: ("amount_usd_max_7d", 2)}),
    )
    write_gold("merchant_features_daily", synthetic_merchant_gold(START, day, merchants=5))
    write_gold("customer_profile", synthetic_profile(START, customers=95))  # customers 96..100 unknown
    t = midnight(day) + dt.timedelta(hours=10)
    txns = [(c, 1 + c % 6, t, day) for c in range(1, 101)]  # merchant 6 has no features
    txns += [(1, 1, t - dt.timedelta(days=2), day)]  # a late event of D-2: not active on D by itself
    txns += [(500, 1, t, day + dt.timedelta(days=1))]  # delivered the day after: not known on D
    write_silver_transactions(txns)
    cov = _by(metrics.compute([day], online_reader=False), "coverage")
    v1, v2 = cov[(day, "fraud_v1")], cov[(day, "fraud_v2")]
    assert details(v1)["active_entities"] == 100
    assert v1["value"] == pytest.approx(0.98) and v1["breached"] is False  # 2 nulls of 100
    # v2: (customer, merchant) pairs; nulls (1, 2), unknown profile (96..100), merchant 6 (every 6th)
    bad = {c for c in range(1, 101) if c <= 2 or c >= 96 or (1 + c % 6) == 6}
    assert v2["value"] == pytest.approx(1 - len(bad) / 100)
    assert v2["breached"] and v2["severity"] == "failure"
    inc = details(v2)["incomplete_by_view"]
    assert inc == {"customer_txn_features_daily": 2, "merchant_features_daily": 16, "customer_profile": 5}


# ------------------------------------------------------------------------------------- online


def _gold_reader(tamper: set[int] = frozenset()):
    def reader(view: str, key: str, ids: list, features: list[str]) -> dict:
        tbl = (
            lake.read("gold", view)
            .to_pandas()
            .sort_values("feature_timestamp")
            .drop_duplicates(key, keep="last")
        )
        latest = {r[key]: r for r in tbl.to_dict("records")}
        out = {}
        for i in ids:
            vals = {f: latest[i][f] for f in features}
            if i in tamper and view == "customer_txn_features_daily":
                vals["txn_count_7d"] += 1
            out[i] = vals
        return out

    return reader


def test_online_offline_consistency(home: Path) -> None:
    day = START + dt.timedelta(days=2)
    write_gold("customer_txn_features_daily", synthetic_customer_gold(START, day, customers=80))
    write_gold("customer_profile", synthetic_profile(START, customers=80))
    cfg = _config(online__sample_size=80)
    rows = metrics.compute([day], cfg, online_reader=_gold_reader())
    online = _by(rows, "online_mismatch_rate")
    assert online[(day, "customer_txn_features_daily")]["value"] == 0
    assert online[(day, "customer_profile")]["value"] == 0  # dates vs timestamps normalised
    assert details(online[(day, "customer_txn_features_daily")])["sampled"] == 80

    rows = metrics.compute([day], cfg, online_reader=_gold_reader(tamper={3, 7}))
    bad = _by(rows, "online_mismatch_rate")[(day, "customer_txn_features_daily")]
    assert bad["value"] == pytest.approx(2 / 80) and bad["breached"] and bad["severity"] == "failure"
    info = details(bad)
    assert info["by_feature"] == {"txn_count_7d": 2} and {e["entity"] for e in info["examples"]} == {3, 7}

    def broken(*_a):
        raise ConnectionError("online store unreachable")

    err = _by(metrics.compute([day], cfg, online_reader=broken), "online_mismatch_rate")
    assert all(r["breached"] and "unreachable" in details(r)["error"] for r in err.values())
    # only the newest date of a run is checked (the online store holds one state)
    rows = metrics.compute([day - dt.timedelta(days=1), day], cfg, online_reader=_gold_reader())
    assert {d for d, _ in _by(rows, "online_mismatch_rate")} == {day}


def test_online_check_skipped_without_a_materialized_date(home: Path) -> None:
    write_gold("customer_txn_features_daily", synthetic_customer_gold(START, START, customers=10))
    # auto reader (Feast) only runs for dates whose materialize stage succeeded: none recorded here
    rows = metrics.compute([START])
    assert not _by(rows, "online_mismatch_rate")


def test_values_equal() -> None:
    assert online_check.values_equal(1, 1.0) and online_check.values_equal(None, float("nan"))
    assert online_check.values_equal(dt.date(2024, 1, 2), dt.datetime(2024, 1, 2, tzinfo=dt.UTC))
    assert online_check.values_equal(0.1 + 0.2, 0.3) and not online_check.values_equal(1.0, 1.1)
    assert not online_check.values_equal(None, 0) and online_check.values_equal("GB", "GB")


# ------------------------------------------------------------------------------------- storage


def test_store_replaces_exactly_the_dates_computed(home: Path) -> None:
    end = START + dt.timedelta(days=4)
    write_gold("customer_txn_features_daily", synthetic_customer_gold(START, end, customers=20))
    metrics.compute_and_store(days_between(START, end), online_reader=False)
    before = storage.read_metrics(START, end)
    version = lake.version("ops", "metrics")
    metrics.compute_and_store([START + dt.timedelta(days=2)], online_reader=False)
    metrics.compute_and_store([START + dt.timedelta(days=2)], online_reader=False)
    after = storage.read_metrics(START, end)
    assert lake.version("ops", "metrics") == version + 2

    def key(rows):
        return sorted((r["execution_date"], r["metric"], r["scope"], r["value"], r["breached"]) for r in rows)

    assert key(after) == key(before)
    assert storage.metric_dates() == days_between(START, end)
    assert {r["execution_date"] for r in storage.read_metrics(end)} == {end}
    status = _by(after, "date_status")[(START, "*")]
    assert status["value"] is None and details(status)["status"] == "not run"


def test_publish_outside_a_flow_writes_the_report(home: Path) -> None:
    end = START + dt.timedelta(days=2)
    write_gold("customer_txn_features_daily", synthetic_customer_gold(START, end, customers=20))
    breaches = metrics.compute_and_store(days_between(START, end), online_reader=False)
    verdict = alerts.publish(breaches, "test", days=days_between(START, end))
    assert verdict.status == "failure"  # the merchant/profile views do not exist: freshness failures
    assert verdict.report == home / "reports" / "monitoring.html" and verdict.report.exists()
    assert "freshness_hours" in verdict.message
    assert alerts.flow_state(alerts.verdict_of([]), data=[1]) == [1]


def test_a_failing_metric_family_is_reported_not_raised(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(ctx, day):
        raise KeyError("feature_timestamp")

    monkeypatch.setattr(metrics, "_freshness", boom)
    breaches = metrics.compute_and_store([START], online_reader=False)
    err = [b for b in breaches if b.metric == "monitor_error"]
    assert len(err) == 1 and err[0].scope == "freshness" and "KeyError" in err[0].message
    assert {r["metric"] for r in storage.read_metrics(START)} >= {"date_status", "monitor_error"}


def test_flow_reports_read_the_run_records_once_and_show_each_dates_own_status(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flow's two reports (the lake's newest dates, the run's own) take every date's pipeline
    status from one pass over the run records: a date's status is the same whatever range it is
    asked with, which is what makes one pass enough."""
    from flows.monitoring import report
    from flows.operations import runs

    days = days_between(START, START + dt.timedelta(days=9))
    write_gold("customer_txn_features_daily", synthetic_customer_gold(days[0], days[-1], customers=20))
    metrics.compute_and_store(days, online_reader=False)
    status_of = {1: ("transform", "failed"), 8: ("validate", "rejected"), 5: ("ingest", "partial")}
    records = []
    for i, day in enumerate(days):
        failing = status_of.get(i)
        for stage in runs.STAGES:
            status = failing[1] if failing and failing[0] == stage else runs.FINAL_OK
            records.append(runs.StageRecord(day, stage, runs.ALL_SOURCES, status))
    write_runs(records)
    whole = report.pipeline_statuses(days[0], days[-1])
    assert (whole[days[1]], whole[days[8]], whole[days[5]]) == ("failed", "rejected", "partial")
    for a, b in [(0, 3), (2, 9), (4, 4), (7, 9)]:
        part = report.pipeline_statuses(days[a], days[b])
        assert part == {d: s for d, s in whole.items() if days[a] <= d <= days[b]}

    # what a stage recorded, read without the date checks (the run report's Data Docs links)
    for a, b in [(0, 9), (1, 1), (3, 8)]:
        checked = [r for r in runs.latest(days[a], days[b]) if r["stage"] != "run"]
        assert runs.stage_records(days[a], days[b]) == checked
        assert len(checked) == len(runs.STAGES) * (b - a + 1)

    calls: list[tuple] = []
    latest = runs.latest
    monkeypatch.setattr(runs, "latest", lambda *a: calls.append(a) or latest(*a))
    written = report.write_flow_reports([days[1]], 3, home / "reports")
    assert len(calls) == 1
    run_page, served_page = written.run.read_text(), written.served.read_text()
    assert "pipeline failed" in run_page and "pipeline rejected" not in run_page  # days 0-2
    assert "pipeline rejected" in served_page and "pipeline failed" not in served_page  # days 7-9
