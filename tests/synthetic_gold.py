"""Synthetic silver + gold tables for the feature-store tests (no tests in here).

Gold is computed from silver with the contract §7 rules (K(D): `_batch_date <= D` and
`event_time < D+1`), in DuckDB, so training sets built on top are coherent; it is written through
`flows.storage.lake` exactly like the dbt stage writes it (one replace per as-of date range).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from flows.sources import get_source, silver_schema
from flows.storage import lake
from flows.transform.gold_schema import gold_schemas

UTC = dt.UTC
TS = pa.timestamp("us", tz="UTC")
FX = {"USD": 1.0, "EUR": 1.1, "GBP": 1.25}

# the gold schemas are the marts' dbt contract (flows.transform.gold_schema), exactly as the dbt
# stage writes them
GOLD_SCHEMAS = gold_schemas()
CUSTOMER_SCHEMA = GOLD_SCHEMAS["customer_txn_features_daily"]
MERCHANT_SCHEMA = GOLD_SCHEMAS["merchant_features_daily"]
PROFILE_SCHEMA = GOLD_SCHEMAS["customer_profile"]


def day_ts(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass
class Silver:
    transactions: pa.Table
    chargebacks: pa.Table


def make_silver(
    start: dt.date,
    end: dt.date,
    customers: int = 300,
    merchants: int = 40,
    txns_per_day: int = 150,
    seed: int = 7,
    late_share: float = 0.03,
    txn_prefix: str = "t",
) -> Silver:
    """Transactions and chargebacks for batch dates start..end (late rows land 1-3 days later)."""
    rng = np.random.default_rng(seed)
    ndays = (end - start).days + 1
    fraudsters = set(rng.choice(np.arange(1, customers + 1), size=max(1, customers // 30), replace=False))
    rows = []
    n = ndays * txns_per_day
    day_idx = np.repeat(np.arange(ndays), txns_per_day)
    # skewed activity: a few customers transact a lot, some rarely
    cust = (rng.zipf(1.6, n) % customers) + 1
    merch = rng.integers(1, merchants + 1, n)
    secs = rng.integers(0, 86400, n)
    amount = np.round(np.exp(rng.normal(3.5, 1.0, n)), 2)
    currency = rng.choice(list(FX), n, p=[0.6, 0.3, 0.1])
    channel = rng.choice(["web", "app", "pos"], n)
    late = rng.random(n) < late_share
    delay = np.where(late, rng.integers(1, 4, n), 0)
    for i in range(n):
        event_day = start + dt.timedelta(days=int(day_idx[i]))
        batch = event_day + dt.timedelta(days=int(delay[i]))
        if batch > end:
            continue
        rows.append(
            (
                f"{txn_prefix}{i:07d}",
                int(cust[i]),
                int(merch[i]),
                float(amount[i]),
                str(currency[i]),
                str(channel[i]),
                day_ts(event_day) + dt.timedelta(seconds=int(secs[i])),
                batch,
            )
        )
    txn_cols = list(zip(*rows, strict=True))
    batch_dates = list(txn_cols[7])
    txns = _silver_table(
        get_source("transactions"),
        {
            "txn_id": pa.array(txn_cols[0], pa.string()),
            "customer_id": pa.array(txn_cols[1], pa.int64()),
            "merchant_id": pa.array(txn_cols[2], pa.int64()),
            "amount": pa.array(txn_cols[3], pa.float64()),
            "currency": pa.array(txn_cols[4], pa.string()),
            "channel": pa.array(txn_cols[5], pa.string()),
            "event_time": pa.array(txn_cols[6], TS),
        },
        batch_dates,
        "transactions",
    )
    cb_rows = []
    for (
        txn_id,
        customer_id,
        event_time,
    ) in zip(txn_cols[0], txn_cols[1], txn_cols[6], strict=True):
        if customer_id in fraudsters and rng.random() < 0.5:
            cb_time = event_time + dt.timedelta(
                days=int(rng.integers(1, 61)), seconds=int(rng.integers(0, 86400))
            )
            if cb_time.date() <= end:
                cb_rows.append((txn_id, cb_time, "fraud", cb_time.date()))
    cb_cols = list(zip(*cb_rows, strict=True)) if cb_rows else [[], [], [], []]
    cbs = _silver_table(
        get_source("chargebacks"),
        {
            "txn_id": pa.array(cb_cols[0], pa.string()),
            "chargeback_time": pa.array(cb_cols[1], TS),
            "reason_code": pa.array(cb_cols[2], pa.string()),
        },
        list(cb_cols[3]),
        "chargebacks",
    )
    return Silver(txns, cbs)


def _silver_table(source, cols: dict, batch_dates: list, name: str) -> pa.Table:
    schema = silver_schema(source)
    n = len(batch_dates)
    cols = dict(cols)
    cols["_extra"] = pa.nulls(n, pa.string())
    cols["_batch_date"] = pa.array(batch_dates, pa.date32())
    cols["_ingested_at"] = pa.array([day_ts(d) + dt.timedelta(hours=1) for d in batch_dates], TS)
    cols["_source_file"] = pa.array([f"landing/{name}/{d.isoformat()}/{name}.csv" for d in batch_dates])
    cols["_row_number"] = pa.array(range(1, n + 1), pa.int64())
    cols["_validation_run_id"] = pa.array(["test"] * n, pa.string())
    return pa.table({f.name: cols[f.name] for f in schema}).cast(schema)


def write_silver(silver: Silver) -> dict[str, int]:
    out = {}
    for name, table in (("transactions", silver.transactions), ("chargebacks", silver.chargebacks)):
        days = table["_batch_date"].to_pylist()
        if not days:
            days = [dt.date(2000, 1, 1)]
        pred = lake.date_predicate("_batch_date", min(days), max(days))
        out[name] = lake.replace("silver", name, table, pred, schema=table.schema)
    return out


def gold_from_silver(silver: Silver, start: dt.date, end: dt.date, seed: int = 11) -> dict[str, pa.Table]:
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("txns", silver.transactions)
    con.register("cbs", silver.chargebacks)
    con.register("fx", pa.table({"currency": list(FX), "usd_rate": list(FX.values())}))
    con.execute(
        f"""
        CREATE TEMP TABLE k AS
        SELECT d.d, t.customer_id, t.merchant_id, t.txn_id, t.event_time,
               t.amount * fx.usd_rate AS amount_usd,
               CAST(CAST(d.d + 1 AS TIMESTAMP) AS TIMESTAMPTZ) AS fts
        FROM (SELECT CAST(unnest(range(DATE '{start}', DATE '{end}' + 1, INTERVAL 1 DAY)) AS DATE) AS d) d
        JOIN txns t ON t._batch_date <= d.d
             AND t.event_time < CAST(CAST(d.d + 1 AS TIMESTAMP) AS TIMESTAMPTZ)
             AND t.event_time >= CAST(CAST(d.d + 1 - 90 AS TIMESTAMP) AS TIMESTAMPTZ)
        JOIN fx USING (currency)
        """
    )
    customer = con.sql(
        """
        SELECT customer_id, d AS as_of_date, fts AS feature_timestamp,
          count(*) FILTER (WHERE event_time >= fts - INTERVAL 1 DAY) AS txn_count_1d,
          count(*) FILTER (WHERE event_time >= fts - INTERVAL 7 DAY) AS txn_count_7d,
          count(*) AS txn_count_30d,
          coalesce(sum(amount_usd) FILTER (WHERE event_time >= fts - INTERVAL 7 DAY), 0) AS amount_usd_sum_7d,
          sum(amount_usd) AS amount_usd_sum_30d,
          sum(amount_usd) / count(*) AS amount_usd_avg_30d,
          max(amount_usd) FILTER (WHERE event_time >= fts - INTERVAL 7 DAY) AS amount_usd_max_7d,
          count(DISTINCT merchant_id) AS distinct_merchants_30d,
          CAST(epoch(fts) - epoch(max(event_time)) AS BIGINT) AS seconds_since_last_txn
        FROM k WHERE event_time >= fts - INTERVAL 30 DAY
        GROUP BY customer_id, d, fts ORDER BY as_of_date, customer_id
        """
    ).to_arrow_table()
    merchant = con.sql(
        """
        SELECT merchant_id, d AS as_of_date, fts AS feature_timestamp,
          count(*) FILTER (WHERE event_time >= fts - INTERVAL 7 DAY) AS merchant_txn_count_7d,
          count(*) AS merchant_txn_count_90d,
          count(c.txn_id) AS merchant_chargeback_count_90d,
          count(c.txn_id) / count(*) AS merchant_chargeback_rate_90d
        FROM k LEFT JOIN cbs c ON c.txn_id = k.txn_id AND c._batch_date <= k.d
        GROUP BY merchant_id, d, fts ORDER BY as_of_date, merchant_id
        """
    ).to_arrow_table()
    # Profiles: created in the batch of the customer's first transaction, a few later changes.
    first = con.sql("SELECT customer_id, min(_batch_date) AS d FROM txns GROUP BY ALL ORDER BY 1").fetchall()
    rng = np.random.default_rng(seed)
    prof = []
    for customer_id, d in first:
        country = str(rng.choice(["US", "GB", "DE", "FR"]))
        kyc = int(rng.integers(0, 4))
        signup = d - dt.timedelta(days=int(rng.integers(0, 900)))
        prof.append((customer_id, d, country, kyc, signup))
        if rng.random() < 0.2 and d < end:
            later = d + dt.timedelta(days=int(rng.integers(1, (end - d).days + 1)))
            prof.append((customer_id, later, country, min(3, kyc + 1), signup))
    prof.sort(key=lambda r: (r[1], r[0]))
    profile = pa.table(
        {
            "customer_id": pa.array([r[0] for r in prof], pa.int64()),
            "as_of_date": pa.array([r[1] for r in prof], pa.date32()),
            "feature_timestamp": pa.array([day_ts(r[1] + dt.timedelta(days=1)) for r in prof], TS),
            "country": pa.array([r[2] for r in prof]),
            "kyc_level": pa.array([r[3] for r in prof], pa.int64()),
            "signup_date": pa.array([r[4] for r in prof], pa.date32()),
        }
    )
    return {
        "customer_txn_features_daily": customer.cast(CUSTOMER_SCHEMA),
        "merchant_features_daily": merchant.cast(MERCHANT_SCHEMA),
        "customer_profile": profile.cast(PROFILE_SCHEMA),
    }


def write_gold(tables: dict[str, pa.Table], start: dt.date, end: dt.date) -> dict[str, int]:
    """Replace the as-of dates start..end of each gold table (like one dbt run over the range)."""
    pred = lake.date_predicate("as_of_date", start, end)
    return {
        name: lake.replace("gold", name, t, pred, partition_by=["as_of_date"], schema=GOLD_SCHEMAS[name])
        for name, t in tables.items()
    }


def build_lake(start: dt.date, end: dt.date, **kw) -> tuple[Silver, dict[str, pa.Table]]:
    silver = make_silver(start, end, **kw)
    write_silver(silver)
    gold = gold_from_silver(silver, start, end)
    write_gold(gold, start, end)
    return silver, gold


# ------------------------------------------------------------------ oracle


def expected_asof(
    gold: pa.Table,
    key: str,
    features: list[str],
    entity_keys: list[int],
    entity_ts: list[dt.datetime],
    ttl: dt.timedelta,
) -> dict[str, list]:
    """Brute force: the row with the greatest feature_timestamp <= ts and > ts - ttl, else null."""
    by_key: dict[int, list[tuple[dt.datetime, dict]]] = {}
    for row in gold.to_pylist():
        by_key.setdefault(row[key], []).append((row["feature_timestamp"], row))
    out: dict[str, list] = {f: [] for f in features}
    for k, ts in zip(entity_keys, entity_ts, strict=True):
        best = None
        for fts, row in by_key.get(k, []):
            if fts <= ts and fts > ts - ttl and (best is None or fts > best[0]):
                best = (fts, row)
        for f in features:
            out[f].append(None if best is None else best[1][f])
    return out


# ------------------------------------------------------------------ alternative store configs


def store_with_offline_store(offline_store: dict):
    """A FeatureStore on the same registry/online store with another offline store section."""
    import os

    import yaml
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    from flows.features import featurestore

    featurestore.get_store()  # make sure the registry is applied for this ASOF_HOME
    raw = yaml.safe_load(os.path.expandvars((featurestore.REPO_DIR / "feature_store.yaml").read_text()))
    raw["offline_store"] = offline_store
    config = RepoConfig(**raw)
    config.repo_path = featurestore.REPO_DIR
    return FeatureStore(repo_path=str(featurestore.REPO_DIR), config=config)


def add_transactions(silver: Silver, rows: list[tuple]) -> Silver:
    """Append (txn_id, customer_id, merchant_id, amount, event_time, batch_date) transactions."""
    extra = _silver_table(
        get_source("transactions"),
        {
            "txn_id": pa.array([r[0] for r in rows], pa.string()),
            "customer_id": pa.array([r[1] for r in rows], pa.int64()),
            "merchant_id": pa.array([r[2] for r in rows], pa.int64()),
            "amount": pa.array([float(r[3]) for r in rows], pa.float64()),
            "currency": pa.array(["USD"] * len(rows), pa.string()),
            "channel": pa.array(["web"] * len(rows), pa.string()),
            "event_time": pa.array([r[4] for r in rows], TS),
        },
        [r[5] for r in rows],
        "transactions",
    )
    return Silver(pa.concat_tables([silver.transactions, extra]), silver.chargebacks)


def add_chargebacks(silver: Silver, rows: list[tuple]) -> Silver:
    """Append (txn_id, chargeback_time, batch_date) chargebacks."""
    extra = _silver_table(
        get_source("chargebacks"),
        {
            "txn_id": pa.array([r[0] for r in rows], pa.string()),
            "chargeback_time": pa.array([r[1] for r in rows], TS),
            "reason_code": pa.array(["fraud"] * len(rows), pa.string()),
        },
        [r[2] for r in rows],
        "chargebacks",
    )
    return Silver(silver.transactions, pa.concat_tables([silver.chargebacks, extra]))
