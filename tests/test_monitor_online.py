"""Online/offline consistency against the real Feast online store (SQLite): values read online equal
the latest gold rows; a gold rewrite that was not materialized shows up as mismatches."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flows.monitoring import config, metrics, online_check
from flows.operations.runs import ALL_SOURCES, StageRecord
from flows.storage import lake
from tests.conftest import require_module
from tests.monitor_data import (
    details,
    synthetic_customer_gold,
    synthetic_merchant_gold,
    synthetic_profile,
    write_gold,
    write_runs,
)

START = dt.date(2024, 1, 1)
END = START + dt.timedelta(days=3)


@pytest.mark.timeout(180)
def test_online_store_matches_latest_gold_then_detects_skew(home: Path) -> None:
    require_module("feast")
    from flows.features import featurestore

    featurestore.reset_store_cache()
    gold = synthetic_customer_gold(START, END, customers=60, null_feature={END: ("amount_usd_max_7d", 3)})
    write_gold("customer_txn_features_daily", gold)
    write_gold("merchant_features_daily", synthetic_merchant_gold(START, END, merchants=8))
    write_gold("customer_profile", synthetic_profile(START, customers=60))
    featurestore.materialize_date(START)  # the profiles (published on START)
    featurestore.materialize_date(END)
    write_runs([StageRecord(END, "materialize", ALL_SOURCES, "succeeded")])

    cfg = config.MonitorConfig.from_dict({**config.raw_config(), "online": {"sample_size": 60}})
    rows = metrics.compute([END], cfg)  # auto: Feast, because END's materialize succeeded
    online = {r["scope"]: r for r in rows if r["metric"] == "online_mismatch_rate"}
    assert set(online) == {"customer_txn_features_daily", "merchant_features_daily", "customer_profile"}
    assert all(r["value"] == 0 and not r["breached"] for r in online.values()), online
    assert details(online["customer_txn_features_daily"])["sampled"] == 60

    # gold of END recomputed with other values but not materialized: the online store is stale
    day_rows = gold.filter(pc.equal(gold["as_of_date"], pa.scalar(END, pa.date32())))
    counts = day_rows["txn_count_7d"].to_pylist()
    changed = day_rows.set_column(
        day_rows.schema.get_field_index("txn_count_7d"),
        "txn_count_7d",
        pa.array([c + (1 if i < 6 else 0) for i, c in enumerate(counts)], pa.int64()),
    )
    write_gold("customer_txn_features_daily", changed)
    assert lake.read("gold", "customer_txn_features_daily").num_rows == gold.num_rows
    rows = metrics.compute([END], cfg, online_reader=online_check.feast_online_reader)
    skew = next(
        r
        for r in rows
        if r["metric"] == "online_mismatch_rate" and r["scope"] == "customer_txn_features_daily"
    )
    assert skew["value"] == pytest.approx(6 / 60) and skew["breached"] and skew["severity"] == "failure"
    assert details(skew)["by_feature"] == {"txn_count_7d": 6}
    featurestore.reset_store_cache()
