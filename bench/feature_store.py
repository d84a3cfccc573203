"""Feature-store measurements (issue 5): 1M entity rows against `fraud_v2` through
`FeatureStore.get_historical_features` with the project's Delta+DuckDB offline store, side by side
with the same as-of join written by hand in DuckDB, and with Feast's stock `file` offline store;
plus materialization throughput and online read latency.

The gold tables are synthetic (numpy) at bench proportions: 40 days x 75k customers, 5k merchants,
profiles — 3.0M customer rows, 200k merchant rows, 120k profile rows.
"""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pandas as pd
import pyarrow as pa

from flows import lake
from tests.synthetic_gold import GOLD_SCHEMAS, day_ts

TS = pa.timestamp("us", tz="UTC")
START = dt.date(2024, 1, 1)
NDAYS = 40
N_CUST, N_MERCH, N_ENT = 100_000, 5_000, 1_000_000
rng = np.random.default_rng(0)


def build() -> None:
    if lake.exists("gold", "customer_txn_features_daily"):
        return
    days = [START + dt.timedelta(days=i) for i in range(NDAYS)]
    parts = []
    for d in days:
        ids = np.sort(rng.choice(N_CUST, int(N_CUST * 0.75), replace=False)) + 1
        n = len(ids)
        parts.append(
            pa.table(
                {
                    "customer_id": pa.array(ids, pa.int64()),
                    "as_of_date": pa.array([d] * n, pa.date32()),
                    "feature_timestamp": pa.array([day_ts(d + dt.timedelta(days=1))] * n, TS),
                    "txn_count_1d": rng.integers(0, 5, n),
                    "txn_count_7d": rng.integers(0, 30, n),
                    "txn_count_30d": rng.integers(1, 90, n),
                    "amount_usd_sum_7d": rng.random(n) * 1000,
                    "amount_usd_sum_30d": rng.random(n) * 4000,
                    "amount_usd_avg_30d": rng.random(n) * 100,
                    "amount_usd_max_7d": pa.array(
                        np.where(rng.random(n) < 0.1, np.nan, rng.random(n) * 500), from_pandas=True
                    ),
                    "distinct_merchants_30d": rng.integers(1, 20, n),
                    "seconds_since_last_txn": rng.integers(0, 86400 * 30, n),
                }
            )
        )
    cust = pa.concat_tables(parts)
    parts = []
    for d in days:
        ids = np.arange(1, N_MERCH + 1)
        n = len(ids)
        parts.append(
            pa.table(
                {
                    "merchant_id": pa.array(ids, pa.int64()),
                    "as_of_date": pa.array([d] * n, pa.date32()),
                    "feature_timestamp": pa.array([day_ts(d + dt.timedelta(days=1))] * n, TS),
                    "merchant_txn_count_7d": rng.integers(0, 300, n),
                    "merchant_txn_count_90d": rng.integers(1, 3000, n),
                    "merchant_chargeback_count_90d": rng.integers(0, 10, n),
                    "merchant_chargeback_rate_90d": rng.random(n) / 100,
                }
            )
        )
    merch = pa.concat_tables(parts)
    first = rng.integers(0, 10, N_CUST)
    extra = rng.choice(N_CUST, N_CUST // 5, replace=False)
    cid = np.concatenate([np.arange(1, N_CUST + 1), extra + 1])
    dd = np.concatenate([first, rng.integers(10, NDAYS, len(extra))])
    asof = [START + dt.timedelta(days=int(x)) for x in dd]
    prof = pa.table(
        {
            "customer_id": pa.array(cid, pa.int64()),
            "as_of_date": pa.array(asof, pa.date32()),
            "feature_timestamp": pa.array([day_ts(a + dt.timedelta(days=1)) for a in asof], TS),
            "country": pa.array(rng.choice(["US", "GB", "DE", "FR"], len(cid))),
            "kyc_level": rng.integers(0, 4, len(cid)),
            "signup_date": pa.array(
                [dt.date(2020, 1, 1) + dt.timedelta(days=int(x)) for x in rng.integers(0, 1400, len(cid))],
                pa.date32(),
            ),
        }
    )
    pred = lake.date_predicate("as_of_date", days[0], days[-1])
    for name, t in (
        ("customer_txn_features_daily", cust),
        ("merchant_features_daily", merch),
        ("customer_profile", prof),
    ):
        lake.replace("gold", name, t.cast(GOLD_SCHEMAS[name]), pred, partition_by=["as_of_date"])
    print("gold rows", cust.num_rows, merch.num_rows, prof.num_rows)


def entities():
    span = (NDAYS - 10) * 86400
    secs = rng.integers(0, span, N_ENT)
    base = pd.Timestamp(day_ts(START + dt.timedelta(days=10)))
    return pd.DataFrame(
        {
            "txn_id": [f"t{i}" for i in range(N_ENT)],
            "customer_id": rng.integers(1, N_CUST + 1, N_ENT),
            "merchant_id": rng.integers(1, N_MERCH + 1, N_ENT),
            "event_timestamp": base + pd.to_timedelta(secs, unit="s"),
        }
    )


RAW = """
SELECT e.*,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.txn_count_1d END AS txn_count_1d,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.txn_count_7d END AS txn_count_7d,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.txn_count_30d END AS txn_count_30d,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.amount_usd_sum_7d END AS amount_usd_sum_7d,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.amount_usd_sum_30d END AS amount_usd_sum_30d,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.amount_usd_avg_30d END AS amount_usd_avg_30d,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.amount_usd_max_7d END AS amount_usd_max_7d,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.distinct_merchants_30d END AS distinct_merchants_30d,
  CASE WHEN c.ts > e.event_timestamp - INTERVAL 1 DAY THEN c.seconds_since_last_txn END AS seconds_since_last_txn,
  CASE WHEN m.ts > e.event_timestamp - INTERVAL 1 DAY THEN m.merchant_txn_count_7d END AS merchant_txn_count_7d,
  CASE WHEN m.ts > e.event_timestamp - INTERVAL 1 DAY THEN m.merchant_txn_count_90d END AS merchant_txn_count_90d,
  CASE WHEN m.ts > e.event_timestamp - INTERVAL 1 DAY THEN m.merchant_chargeback_count_90d END AS merchant_chargeback_count_90d,
  CASE WHEN m.ts > e.event_timestamp - INTERVAL 1 DAY THEN m.merchant_chargeback_rate_90d END AS merchant_chargeback_rate_90d,
  CASE WHEN p.ts > e.event_timestamp - INTERVAL 3650 DAY THEN p.country END AS country,
  CASE WHEN p.ts > e.event_timestamp - INTERVAL 3650 DAY THEN p.kyc_level END AS kyc_level,
  CASE WHEN p.ts > e.event_timestamp - INTERVAL 3650 DAY THEN p.signup_date END AS signup_date
FROM ent e
ASOF LEFT JOIN (SELECT customer_id, feature_timestamp AS ts, * EXCLUDE (customer_id, feature_timestamp, as_of_date) FROM cust) c
  ON e.customer_id = c.customer_id AND e.event_timestamp >= c.ts
ASOF LEFT JOIN (SELECT merchant_id, feature_timestamp AS ts, * EXCLUDE (merchant_id, feature_timestamp, as_of_date) FROM merch) m
  ON e.merchant_id = m.merchant_id AND e.event_timestamp >= m.ts
ASOF LEFT JOIN (SELECT customer_id, feature_timestamp AS ts, country, kyc_level, signup_date FROM prof) p
  ON e.customer_id = p.customer_id AND e.event_timestamp >= p.ts
"""


def _entity_table(ent: pd.DataFrame) -> pa.Table:
    schema = pa.schema(
        [
            ("txn_id", pa.string()),
            ("customer_id", pa.int64()),
            ("merchant_id", pa.int64()),
            ("event_timestamp", TS),
        ]
    )
    return pa.Table.from_pandas(ent, preserve_index=False).cast(schema)


def retrieval_ours(args) -> dict:
    from flows.featurestore import get_store

    build()
    ent = entities()
    store = get_store()
    svc = store.get_feature_service("fraud_v2")
    t = time.perf_counter()
    out = store.get_historical_features(entity_df=ent, features=svc).to_arrow()
    return {"seconds": time.perf_counter() - t, "rows": out.num_rows}


def retrieval_raw(args) -> dict:
    import duckdb

    build()
    ent = _entity_table(entities())
    t = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("ent", ent)
    con.register("cust", lake.dataset("gold", "customer_txn_features_daily"))
    con.register("merch", lake.dataset("gold", "merchant_features_daily"))
    con.register("prof", lake.dataset("gold", "customer_profile"))
    out = con.sql(RAW).to_arrow_table()
    return {"seconds": time.perf_counter() - t, "rows": out.num_rows}


def retrieval_stock(args) -> dict:
    from flows.featurestore import get_store
    from tests.synthetic_gold import store_with_offline_store

    build()
    ent = entities()
    svc = get_store().get_feature_service("fraud_v2")
    stock = store_with_offline_store({"type": "file"})
    t = time.perf_counter()
    out = stock.get_historical_features(entity_df=ent, features=svc).to_df()
    return {"seconds": time.perf_counter() - t, "rows": len(out)}
