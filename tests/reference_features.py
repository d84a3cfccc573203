"""Test helpers for the transform stage: a small synthetic silver generator and a brute-force
reference implementation of the gold features (contract §5 and 7) in plain pandas.

The reference is deliberately naive and independent of the SQL: for every as-of day D it filters
the silver rows known by D (`_batch_date <= D`, `event_time < D+1`) and computes each feature with
an explicit per-window filter, entity by entity.

`silver_from_landing` feeds it from landing files instead of the lake: it parses them with plain
csv/json and applies the contract §6 row rules itself (end-to-end tests compare gold with that).
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from flows.dates import date_range
from flows.sources import get_source, silver_schema
from flows.storage import lake

FX = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27}
UTC = dt.UTC


def _ts(day: dt.date, seconds: int) -> pd.Timestamp:
    return pd.Timestamp(dt.datetime(day.year, day.month, day.day, tzinfo=UTC)) + pd.Timedelta(seconds=seconds)


# ------------------------------------------------------------------------------------------------
# synthetic silver


@dataclass
class Silver:
    transactions: pd.DataFrame
    customers: pd.DataFrame
    merchants: pd.DataFrame
    chargebacks: pd.DataFrame
    quarantined_days: list[dt.date] = field(default_factory=list)

    def frames(self) -> dict[str, pd.DataFrame]:
        return {
            "transactions": self.transactions,
            "customers": self.customers,
            "merchants": self.merchants,
            "chargebacks": self.chargebacks,
        }


def _with_lineage(df: pd.DataFrame, source: str) -> pd.DataFrame:
    df = df.copy()
    df["_extra"] = None
    df["_ingested_at"] = pd.to_datetime(df["_batch_date"]).dt.tz_localize(UTC) + pd.Timedelta(hours=23)
    df["_source_file"] = [f"landing/{source}/{d.isoformat()}/{source}" for d in df["_batch_date"]]
    df["_row_number"] = df.groupby("_batch_date").cumcount().astype("int64") + 1
    df["_validation_run_id"] = "test"
    return df


def generate_silver(
    start: dt.date,
    days: int,
    *,
    customers: int = 40,
    merchants: int = 12,
    txns_per_day: int = 30,
    late_share: float = 0.15,
    seed: int = 7,
    quarantined_days: tuple[int, ...] = (20,),
    inactive_customers: tuple[int, ...] = (1, 2),
) -> Silver:
    """A few weeks of silver with the awkward cases of contract §5/6:

    * late deliveries: event on day D, batch D+1..D+3, plus a few 8-29 days late;
    * redelivered duplicates (same txn_id in a later batch, same or different content: silver should
      not hold them, the transform must still count the first delivery only);
    * quarantined days: no rows at all delivered in that batch (and no events on it);
    * customers active only in the first week (then inactive for good);
    * chargebacks 0-40 days after their transaction's batch; CDC creates no later than the first
      transaction's batch, updates with out-of-order updated_at and ties.
    """
    rng = np.random.default_rng(seed)
    day_list = [start + dt.timedelta(days=i) for i in range(days)]
    qdays = {start + dt.timedelta(days=i) for i in quarantined_days}

    rows = []
    n = 0
    for i, day in enumerate(day_list):
        if day in qdays:
            continue
        count = int(rng.poisson(txns_per_day))
        for _ in range(count):
            cust = int(rng.integers(1, customers + 1))
            if cust in inactive_customers and i > 6:
                cust = int(rng.integers(len(inactive_customers) + 1, customers + 1))
            lag = 0
            u = rng.random()
            if u < late_share:
                lag = int(rng.integers(1, 4))
            elif u < late_share + 0.02:
                lag = int(rng.integers(8, 30))
            batch = day + dt.timedelta(days=lag)
            if batch in qdays:
                batch += dt.timedelta(days=1)
            n += 1
            cur = str(rng.choice(["USD", "EUR", "GBP"], p=[0.6, 0.25, 0.15]))
            rows.append(
                {
                    "txn_id": f"t{n:06d}",
                    "customer_id": cust,
                    "merchant_id": int((cust * 3 + rng.integers(0, 4)) % merchants + 1),
                    "amount": float(np.round(rng.lognormal(3.0, 1.2), 2)) + 0.01,
                    "currency": cur,
                    "channel": str(rng.choice(["web", "app", "pos"])),
                    "event_time": _ts(day, int(rng.integers(0, 86400))),
                    "_batch_date": batch,
                }
            )
    txns = pd.DataFrame(rows)
    # a whale transaction: huge amounts leaving a running total must not disturb small sums
    txns.loc[5, "amount"] = 999_999.99
    # duplicates: identical redeliveries and one conflicting copy, in later batches
    dups = txns.sample(8, random_state=seed).copy()
    dups["_batch_date"] = [b + dt.timedelta(days=int(rng.integers(1, 5))) for b in dups["_batch_date"]]
    conflicting = dups.iloc[:2].copy()
    conflicting["amount"] = conflicting["amount"] + 10
    conflicting["event_time"] = conflicting["event_time"] + pd.Timedelta(hours=1)
    txns = pd.concat([txns, dups.iloc[2:], conflicting], ignore_index=True)
    txns = txns[~txns["_batch_date"].isin(qdays)]
    txns = txns.sort_values(["_batch_date", "event_time"]).reset_index(drop=True)

    # customers CDC
    first_batch = txns.groupby("customer_id")["_batch_date"].min()
    cdc = []
    for cust in range(1, customers + 1):
        fb = first_batch.get(cust, day_list[-1])
        create_batch = fb - dt.timedelta(days=int(rng.integers(0, 3)))
        create_batch = max(create_batch, start)
        if create_batch in qdays:
            create_batch -= dt.timedelta(days=1)
        upd = _ts(create_batch, int(rng.integers(0, 80000)))
        cdc.append(
            {
                "customer_id": cust,
                "op": "c",
                "updated_at": upd,
                "country": str(rng.choice(["US", "GB", "DE", "FR"])),
                "kyc_level": int(rng.integers(0, 4)),
                "signup_date": create_batch - dt.timedelta(days=int(rng.integers(0, 400))),
                "_batch_date": create_batch,
            }
        )
        for _ in range(int(rng.integers(0, 3))):
            b = create_batch + dt.timedelta(days=int(rng.integers(1, days)))
            if b > day_list[-1] or b in qdays:
                continue
            # occasionally an update whose updated_at is older than the latest known one
            delta = -int(rng.integers(1, 5)) if rng.random() < 0.3 else 0
            cdc.append(
                {
                    "customer_id": cust,
                    "op": "u",
                    "updated_at": _ts(b + dt.timedelta(days=delta), int(rng.integers(0, 80000))),
                    "country": str(rng.choice(["US", "GB", "DE", "FR"])),
                    "kyc_level": int(rng.integers(0, 4)),
                    "signup_date": cdc[-1]["signup_date"],
                    "_batch_date": b,
                }
            )
    customers_df = pd.DataFrame(cdc)
    # a tie on updated_at delivered in two batches: the later delivery wins
    tie = customers_df.iloc[[3]].copy()
    tie["_batch_date"] = tie["_batch_date"] + dt.timedelta(days=2)
    tie["kyc_level"] = (tie["kyc_level"] + 1) % 4
    customers_df = pd.concat([customers_df, tie], ignore_index=True)
    customers_df = customers_df.sort_values(["_batch_date", "customer_id"]).reset_index(drop=True)

    merchants_df = pd.DataFrame(
        [
            {
                "merchant_id": m,
                "name": f"merchant {m}",
                "mcc": f"{5000 + m:04d}",
                "country": "US",
                "risk_tier": ["low", "medium", "high"][m % 3],
                "_batch_date": d,
            }
            for d in day_list
            if d not in qdays
            for m in range(1, merchants + 1)
        ]
    )

    first = txns.sort_values(["_batch_date"]).drop_duplicates("txn_id")
    cb_src = first.sample(frac=0.12, random_state=seed + 1)
    cbs = []
    for _, t in cb_src.iterrows():
        b = t["_batch_date"] + dt.timedelta(days=int(rng.integers(0, 41)))
        if b in qdays:
            b += dt.timedelta(days=1)
        cbs.append(
            {
                "txn_id": t["txn_id"],
                "chargeback_time": _ts(b, int(rng.integers(0, 80000))),
                "reason_code": str(rng.choice(["10.4", "13.1", "4837"])),
                "_batch_date": b,
            }
        )
    cb_df = pd.DataFrame(cbs)
    cb_df = pd.concat(
        [cb_df, cb_df.iloc[:1].assign(_batch_date=cb_df.iloc[0]["_batch_date"] + dt.timedelta(days=3))]
    )
    cb_df = cb_df.sort_values("_batch_date").reset_index(drop=True)
    return Silver(txns, customers_df, merchants_df, cb_df, sorted(qdays))


def write_silver(silver: Silver) -> None:
    """Write every silver table (replacing whatever batches it already had in the covered range)."""
    for name, df in silver.frames().items():
        write_silver_table(name, df)


def write_silver_table(name: str, df: pd.DataFrame) -> None:
    schema = silver_schema(get_source(name))
    full = _with_lineage(df, name)
    data = pa.Table.from_pandas(full.reset_index(drop=True), preserve_index=False)
    data = data.select(schema.names).cast(schema)
    lo, hi = min(df["_batch_date"]), max(df["_batch_date"])
    lake.replace(
        "silver",
        name,
        data,
        predicate=lake.date_predicate("_batch_date", lo, hi),
        partition_by=["_batch_date"],
        schema=schema,
    )


def append_silver_rows(name: str, df: pd.DataFrame) -> None:
    """Add rows to one batch of a silver table (keeping that batch's existing rows)."""
    (batch,) = set(df["_batch_date"])
    schema = silver_schema(get_source(name))
    existing = lake.read("silver", name, schema=schema, filter=lake.date_filter("_batch_date", [batch]))
    combined = pd.concat([existing.to_pandas().drop(columns=["_row_number"]), df], ignore_index=True)
    combined["_row_number"] = np.arange(1, len(combined) + 1)
    for col in ("_extra", "_ingested_at", "_source_file", "_validation_run_id"):
        if col not in df:
            combined[col] = combined[col].ffill()
    data = pa.Table.from_pandas(combined.reset_index(drop=True), preserve_index=False)
    lake.replace(
        "silver",
        name,
        data.select(schema.names).cast(schema),
        predicate=lake.date_predicate("_batch_date", batch),
        partition_by=["_batch_date"],
        schema=schema,
    )


def read_silver() -> dict[str, pd.DataFrame]:
    out = {}
    for name in ("transactions", "customers", "merchants", "chargebacks"):
        out[name] = lake.read("silver", name, schema=silver_schema(get_source(name))).to_pandas()
    return out


# ------------------------------------------------------------------------------------------------
# brute-force reference


def _first_delivery(df: pd.DataFrame, key: str) -> pd.DataFrame:
    return df.sort_values(["_batch_date", "_row_number"], kind="mergesort").drop_duplicates(key, keep="first")


def reference_features(
    silver: dict[str, pd.DataFrame], start: dt.date, end: dt.date
) -> dict[str, pd.DataFrame]:
    """The three gold tables for as-of days [start, end], computed day by day from silver rows."""
    txns = _first_delivery(silver["transactions"], "txn_id").copy()
    txns["amount_usd"] = txns["amount"] * txns["currency"].map(FX)
    txns["event_time"] = pd.to_datetime(txns["event_time"], utc=True)
    cbs = _first_delivery(silver["chargebacks"], "txn_id")
    cdc = silver["customers"].copy()
    cdc["updated_at"] = pd.to_datetime(cdc["updated_at"], utc=True)

    cust_rows, merch_rows, prof_rows = [], [], []
    for day in date_range(start, end):
        ft = pd.Timestamp(dt.datetime(day.year, day.month, day.day, tzinfo=UTC)) + pd.Timedelta(days=1)

        def since(w: int, ft: pd.Timestamp = ft) -> pd.Timestamp:
            return ft - pd.Timedelta(days=w)

        known = txns[(txns["_batch_date"] <= day) & (txns["event_time"] < ft)]
        for cust, g in known.groupby("customer_id"):
            w30 = g[g["event_time"] >= since(30)]
            if w30.empty:
                continue
            w7 = g[g["event_time"] >= since(7)]
            w1 = g[g["event_time"] >= since(1)]
            last = g["event_time"].max()
            cust_rows.append(
                {
                    "customer_id": int(cust),
                    "as_of_date": day,
                    "feature_timestamp": ft,
                    "txn_count_1d": len(w1),
                    "txn_count_7d": len(w7),
                    "txn_count_30d": len(w30),
                    "amount_usd_sum_7d": float(w7["amount_usd"].sum()),
                    "amount_usd_sum_30d": float(w30["amount_usd"].sum()),
                    "amount_usd_avg_30d": float(w30["amount_usd"].sum()) / len(w30),
                    "amount_usd_max_7d": float(w7["amount_usd"].max()) if len(w7) else None,
                    "distinct_merchants_30d": int(w30["merchant_id"].nunique()),
                    "seconds_since_last_txn": int((ft - last) // pd.Timedelta(seconds=1)),
                }
            )
        known_cbs = set(cbs.loc[cbs["_batch_date"] <= day, "txn_id"])
        for merch, g in known.groupby("merchant_id"):
            w90 = g[g["event_time"] >= since(90)]
            if w90.empty:
                continue
            w7 = g[g["event_time"] >= since(7)]
            n_cb = int(w90["txn_id"].isin(known_cbs).sum())
            merch_rows.append(
                {
                    "merchant_id": int(merch),
                    "as_of_date": day,
                    "feature_timestamp": ft,
                    "merchant_txn_count_7d": len(w7),
                    "merchant_txn_count_90d": len(w90),
                    "merchant_chargeback_count_90d": n_cb,
                    "merchant_chargeback_rate_90d": n_cb / len(w90),
                }
            )
        changed = set(cdc.loc[cdc["_batch_date"] == day, "customer_id"])
        known_cdc = cdc[cdc["_batch_date"] <= day]
        for cust in sorted(changed):
            g = known_cdc[known_cdc["customer_id"] == cust]
            latest = g.sort_values(["updated_at", "_batch_date", "_row_number"]).iloc[-1]
            prof_rows.append(
                {
                    "customer_id": int(cust),
                    "as_of_date": day,
                    "feature_timestamp": ft,
                    "country": latest["country"],
                    "kyc_level": int(latest["kyc_level"]),
                    "signup_date": latest["signup_date"],
                }
            )
    keys = {
        "customer_txn_features_daily": ["customer_id", "as_of_date"],
        "merchant_features_daily": ["merchant_id", "as_of_date"],
        "customer_profile": ["customer_id", "as_of_date"],
    }
    out = {}
    for name, rows in (
        ("customer_txn_features_daily", cust_rows),
        ("merchant_features_daily", merch_rows),
        ("customer_profile", prof_rows),
    ):
        df = pd.DataFrame(rows)
        if not df.empty:
            df = df.sort_values(keys[name]).reset_index(drop=True)
        out[name] = df
    return out


def read_gold(table: str, start: dt.date | None = None, end: dt.date | None = None) -> pd.DataFrame:
    keys = ["merchant_id" if table.startswith("merchant") else "customer_id", "as_of_date"]
    if not lake.exists("gold", table):
        return pd.DataFrame()
    filt = None
    if start is not None:
        filt = lake.date_filter("as_of_date", date_range(start, end or start))
    df = lake.read("gold", table, filter=filt).to_pandas()
    return df.sort_values(keys).reset_index(drop=True)


def assert_frames_match(actual: pd.DataFrame, expected: pd.DataFrame, table: str) -> None:
    """Row sets identical; counts/ids/dates exact; float columns within 1e-9 relative."""
    key = ["merchant_id" if table.startswith("merchant") else "customer_id", "as_of_date"]
    assert len(actual) == len(expected), f"{table}: {len(actual)} rows, reference {len(expected)}"
    if expected.empty:
        return
    actual = actual.sort_values(key).reset_index(drop=True)
    expected = expected.sort_values(key).reset_index(drop=True)
    a_keys = list(zip(actual[key[0]], actual["as_of_date"], strict=True))
    e_keys = list(zip(expected[key[0]], expected["as_of_date"], strict=True))
    assert a_keys == e_keys, f"{table}: row sets differ: {sorted(set(a_keys) ^ set(e_keys))[:10]}"
    for col in expected.columns:
        a, e = actual[col], expected[col]
        if col in ("as_of_date", "signup_date"):
            assert list(a) == list(e), f"{table}.{col} differs"
        elif col == "feature_timestamp":
            assert (pd.to_datetime(a, utc=True) == pd.to_datetime(e, utc=True)).all(), f"{table}.{col}"
        elif e.dtype == object and col == "country":
            assert list(a) == list(e), f"{table}.{col} differs"
        elif col.startswith("amount") or col.endswith("rate_90d"):
            av, ev = a.astype("float64").to_numpy(), e.astype("float64").to_numpy()
            both_nan = np.isnan(av) & np.isnan(ev)
            close = np.isclose(av, ev, rtol=1e-9, atol=0.0) | both_nan
            bad = np.flatnonzero(~close)
            assert bad.size == 0, (
                f"{table}.{col}: {bad.size} values differ, e.g. {actual.iloc[bad[0]][key].tolist()}: "
                f"{av[bad[0]]!r} vs reference {ev[bad[0]]!r}"
            )
        else:
            av, ev = a.astype("int64").to_numpy(), e.astype("int64").to_numpy()
            bad = np.flatnonzero(av != ev)
            assert bad.size == 0, (
                f"{table}.{col}: {bad.size} values differ, e.g. {actual.iloc[bad[0]][key].tolist()}: "
                f"{av[bad[0]]} vs reference {ev[bad[0]]}"
            )


def reference_features_vectorized(
    silver: dict[str, pd.DataFrame], start: dt.date, end: dt.date
) -> dict[str, pd.DataFrame]:
    """Same definitions as `reference_features`, still brute force day by day (every as-of day
    re-filters the silver rows known by then), but with one pandas groupby per day instead of a loop
    over entities: fast enough to check a 90-day range at `small` scale."""
    txns = _first_delivery(silver["transactions"], "txn_id").copy()
    txns["amount_usd"] = txns["amount"] * txns["currency"].map(FX)
    txns["event_time"] = pd.to_datetime(txns["event_time"], utc=True)
    txns["_batch_date"] = pd.to_datetime(txns["_batch_date"]).dt.date
    cbs = _first_delivery(silver["chargebacks"], "txn_id")
    cbs = cbs.assign(_batch_date=pd.to_datetime(cbs["_batch_date"]).dt.date)
    cdc = silver["customers"].copy()
    cdc["updated_at"] = pd.to_datetime(cdc["updated_at"], utc=True)
    cdc["_batch_date"] = pd.to_datetime(cdc["_batch_date"]).dt.date

    cust_parts, merch_parts, prof_parts = [], [], []
    for day in date_range(start, end):
        ft = pd.Timestamp(dt.datetime(day.year, day.month, day.day, tzinfo=UTC)) + pd.Timedelta(days=1)
        known = txns[(txns["_batch_date"] <= day) & (txns["event_time"] < ft)]
        w90 = known[known["event_time"] >= ft - pd.Timedelta(days=90)]
        w30 = w90[w90["event_time"] >= ft - pd.Timedelta(days=30)]
        w7 = w30[w30["event_time"] >= ft - pd.Timedelta(days=7)]
        w1 = w7[w7["event_time"] >= ft - pd.Timedelta(days=1)]
        g30 = w30.groupby("customer_id")
        c = pd.DataFrame(
            {
                "txn_count_30d": g30.size(),
                "amount_usd_sum_30d": g30["amount_usd"].sum(),
                "distinct_merchants_30d": g30["merchant_id"].nunique(),
            }
        )
        c["txn_count_7d"] = w7.groupby("customer_id").size().reindex(c.index, fill_value=0)
        c["txn_count_1d"] = w1.groupby("customer_id").size().reindex(c.index, fill_value=0)
        c["amount_usd_sum_7d"] = (
            w7.groupby("customer_id")["amount_usd"].sum().reindex(c.index, fill_value=0.0)
        )
        c["amount_usd_max_7d"] = w7.groupby("customer_id")["amount_usd"].max().reindex(c.index)
        c["amount_usd_avg_30d"] = c["amount_usd_sum_30d"] / c["txn_count_30d"]
        last = known.groupby("customer_id")["event_time"].max().reindex(c.index)
        c["seconds_since_last_txn"] = (ft - last) // pd.Timedelta(seconds=1)
        c = c.reset_index().assign(as_of_date=day, feature_timestamp=ft)
        cust_parts.append(c)

        known_cbs = cbs.loc[cbs["_batch_date"] <= day, "txn_id"]
        g90 = w90.groupby("merchant_id")
        m = pd.DataFrame(
            {
                "merchant_txn_count_90d": g90.size(),
                "merchant_chargeback_count_90d": w90["txn_id"]
                .isin(known_cbs)
                .groupby(w90["merchant_id"])
                .sum(),
            }
        )
        m["merchant_txn_count_7d"] = w7.groupby("merchant_id").size().reindex(m.index, fill_value=0)
        m["merchant_chargeback_rate_90d"] = m["merchant_chargeback_count_90d"] / m["merchant_txn_count_90d"]
        merch_parts.append(m.reset_index().assign(as_of_date=day, feature_timestamp=ft))

        changed = cdc.loc[cdc["_batch_date"] == day, "customer_id"].unique()
        if len(changed):
            k = cdc[(cdc["_batch_date"] <= day) & cdc["customer_id"].isin(changed)]
            latest = (
                k.sort_values(["updated_at", "_batch_date", "_row_number"]).groupby("customer_id").tail(1)
            )
            prof_parts.append(
                latest[["customer_id", "country", "kyc_level", "signup_date"]].assign(
                    as_of_date=day, feature_timestamp=ft
                )
            )
    cols = {
        "customer_txn_features_daily": [
            "customer_id", "as_of_date", "feature_timestamp", "txn_count_1d", "txn_count_7d",
            "txn_count_30d", "amount_usd_sum_7d", "amount_usd_sum_30d", "amount_usd_avg_30d",
            "amount_usd_max_7d", "distinct_merchants_30d", "seconds_since_last_txn",
        ],
        "merchant_features_daily": [
            "merchant_id", "as_of_date", "feature_timestamp", "merchant_txn_count_7d",
            "merchant_txn_count_90d", "merchant_chargeback_count_90d", "merchant_chargeback_rate_90d",
        ],
        "customer_profile": [
            "customer_id", "as_of_date", "feature_timestamp", "country", "kyc_level", "signup_date",
        ],
    }  # fmt: skip
    out = {}
    for name, parts in (
        ("customer_txn_features_daily", cust_parts),
        ("merchant_features_daily", merch_parts),
        ("customer_profile", prof_parts),
    ):
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols[name])
        key = cols[name][0]
        out[name] = df[cols[name]].sort_values([key, "as_of_date"]).reset_index(drop=True)
    return out


# ------------------------------------------------------------------------------------------------
# silver from the landing files, parsed independently of asof's ingest and validation

_INT = re.compile(r"^-?[0-9]{1,18}$")
_ISO2 = re.compile(r"^[A-Z]{2}$")
_MCC = re.compile(r"^[0-9]{4}$")
_SOURCE_FORMAT = {"merchants": "csv", "customers": "jsonl", "transactions": "csv", "chargebacks": "csv"}
_COLUMNS = {
    "merchants": ["merchant_id", "name", "mcc", "country", "risk_tier"],
    "customers": ["customer_id", "op", "updated_at", "country", "kyc_level", "signup_date"],
    "transactions": ["txn_id", "customer_id", "merchant_id", "amount", "currency", "channel", "event_time"],
    "chargebacks": ["txn_id", "chargeback_time", "reason_code"],
}
_NOTHING = object()
_LINEAGE = ["_batch_date", "_source_file", "_row_number", "_delivery_order"]


@dataclass
class LandedRow:
    """One data row of a landing file, with the contract §6 verdict of the reference."""

    source: str
    batch_date: dt.date
    file: str  # file name inside landing/<source>/<batch_date>/
    row_number: int  # 1-based data row of the file
    raw: dict
    values: dict | None = None  # typed contract values when every column parses
    reasons: list[str] = field(default_factory=list)


def _landed_rows(landing: Path, source: str, day: dt.date) -> list[LandedRow]:
    """The data rows of batch `day` in delivery order (file name, then row), with plain csv/json."""
    folder = landing / source / day.isoformat()
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    files = [folder / n for n in names if not n.startswith((".", "_"))]
    out = []
    for path in files:
        if _SOURCE_FORMAT[source] == "jsonl":
            lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
            records = [json.loads(ln) for ln in lines]
        else:
            with path.open(newline="", encoding="utf-8-sig") as fh:
                records = list(csv.DictReader(fh))
        out += [LandedRow(source, day, path.name, i, rec) for i, rec in enumerate(records, start=1)]
    return out


def _text(v) -> str | None:
    return None if v is None or str(v) == "" else str(v)


def _int(v) -> int | None:
    s = _text(v)
    return int(s) if s is not None and _INT.match(s) else None


def _utc(v) -> pd.Timestamp | None:
    """An ISO-8601 timestamp with a zone, in UTC; None when missing, unparseable or without zone."""
    s = _text(v)
    if s is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(s)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return pd.Timestamp(parsed.astimezone(UTC))


def _amount(v) -> float | None:
    s = _text(v)
    try:
        d = decimal.Decimal(s) if s is not None else None
    except decimal.InvalidOperation:
        return None
    if d is None or not d.is_finite() or d != d.quantize(decimal.Decimal("0.01")):
        return None  # more than 2 decimal places is not an amount of the contract
    return float(d)


def _parse(row: LandedRow) -> dict | None:
    r = row.raw
    if row.source == "transactions":
        v = {
            "txn_id": _text(r.get("txn_id")),
            "customer_id": _int(r.get("customer_id")),
            "merchant_id": _int(r.get("merchant_id")),
            "amount": _amount(r.get("amount")),
            "currency": _text(r.get("currency")),
            "channel": _text(r.get("channel")),
            "event_time": _utc(r.get("event_time")),
        }
        ok = v["currency"] in FX and v["channel"] in ("web", "app", "pos")
    elif row.source == "customers":
        signup = _text(r.get("signup_date"))
        try:
            signup_date = dt.date.fromisoformat(signup) if signup else None
        except ValueError:
            signup_date = None
        v = {
            "customer_id": _int(r.get("customer_id")),
            "op": _text(r.get("op")),
            "updated_at": _utc(r.get("updated_at")),
            "country": _text(r.get("country")),
            "kyc_level": _int(r.get("kyc_level")),
            "signup_date": signup_date,
        }
        ok = v["op"] in ("c", "u") and v["kyc_level"] in (0, 1, 2, 3)
        ok = ok and bool(_ISO2.match(v["country"] or ""))
    elif row.source == "merchants":
        v = {
            "merchant_id": _int(r.get("merchant_id")),
            "name": _text(r.get("name")),
            "mcc": _text(r.get("mcc")),
            "country": _text(r.get("country")),
            "risk_tier": _text(r.get("risk_tier")),
        }
        ok = (
            bool(_MCC.match(v["mcc"] or ""))
            and bool(_ISO2.match(v["country"] or ""))
            and v["risk_tier"] in ("low", "medium", "high")
        )
    else:
        v = {
            "txn_id": _text(r.get("txn_id")),
            "chargeback_time": _utc(r.get("chargeback_time")),
            "reason_code": _text(r.get("reason_code")),
        }
        ok = True
    return v if ok and all(x is not None for x in v.values()) else None


@dataclass
class LandingSilver:
    """What contract §6 lets into silver, from the landing files: `silver` holds, per source, the accepted
    rows in delivery order with `_batch_date`, `_source_file` (file name) and `_row_number` (the
    file's data row); `_delivery_order` orders a batch by (file, row), the contract's tie-break.
    `rows` keeps every landed row with its reasons (empty for the accepted ones)."""

    silver: dict[str, pd.DataFrame]
    rows: list[LandedRow]

    def for_reference(self) -> dict[str, pd.DataFrame]:
        """The frames `reference_features[_vectorized]` take: `_row_number` replaced by the delivery
        order within the batch, so their (batch, row) first-delivery sort is the contract's
        (batch, file, row)."""
        return {
            name: df.drop(columns=["_row_number"]).rename(columns={"_delivery_order": "_row_number"})
            for name, df in self.silver.items()
        }


def silver_from_landing(landing: Path, start: dt.date, end: dt.date) -> LandingSilver:
    """Apply the contract §6 row rules to the landing files of batches [start, end], batch by batch in the
    validation order (merchants, customers, transactions, chargebacks), without asof's code:

    * every contract column present and parseable (timestamps need a zone), enums in their sets;
    * transactions: 0 < amount <= 1,000,000; currency in the FX seed; D-30 00:00 <= event_time < D+1;
      merchant_id in a merchants snapshot of a batch <= D;
    * customers: updated_at < D+1; chargebacks: chargeback_time < D+1 and txn_id of a silver
      transaction of a batch <= D;
    * duplicates (key: txn_id; customers (customer_id, updated_at); merchants merchant_id within one
      snapshot): the first delivery, by (batch date, file, row), wins. Within a batch the first row
      of a key wins even when it fails another rule; a later batch's copy is compared with the silver
      row: identical -> `duplicate`, different -> `conflicting_duplicate`.

    Batch-level rules are not applied: the callers check that no date was rejected.
    """
    keys = {
        "merchants": lambda v: v["merchant_id"],
        "customers": lambda v: (v["customer_id"], v["updated_at"]),
        "transactions": lambda v: v["txn_id"],
        "chargebacks": lambda v: v["txn_id"],
    }
    raw_key = {
        "merchants": lambda r: _int(r.get("merchant_id")),
        "customers": lambda r: (_int(r.get("customer_id")), _utc(r.get("updated_at"))),
        "transactions": lambda r: _text(r.get("txn_id")),
        "chargebacks": lambda r: _text(r.get("txn_id")),
    }
    accepted: dict[str, dict] = {s: {} for s in _SOURCE_FORMAT}  # key -> first silver values
    silver_rows: dict[str, list[dict]] = {s: [] for s in _SOURCE_FORMAT}
    known_merchants: set[int] = set()
    known_txns: set[str] = set()
    everything: list[LandedRow] = []
    for day in date_range(start, end):
        next_midnight = _ts(day, 86_400)
        for source in _SOURCE_FORMAT:
            batch = _landed_rows(landing, source, day)
            first_in_batch: dict = {}  # key -> values of its first row in this batch
            snapshot_merchants: set[int] = set()
            for order, row in enumerate(batch, start=1):
                everything.append(row)
                v = row.values = _parse(row)
                if v is None:
                    row.reasons.append("unparseable_or_missing")
                key = keys[source](v) if v is not None else raw_key[source](row.raw)
                dup_of = _NOTHING
                if key is not None and not (isinstance(key, tuple) and None in key):
                    if source != "merchants" and key in accepted[source]:
                        dup_of = accepted[source][key]  # the silver row of an earlier batch
                    elif key in first_in_batch:
                        dup_of = first_in_batch[key]  # this batch's first row, whatever its fate
                    else:
                        first_in_batch[key] = v
                if dup_of is not _NOTHING:
                    same = v is not None and v == dup_of
                    row.reasons.append("duplicate" if same else "conflicting_duplicate")
                if v is None:
                    continue
                if source == "transactions":
                    if not 0 < v["amount"] <= 1_000_000:
                        row.reasons.append("amount_out_of_range")
                    if v["event_time"] >= next_midnight:
                        row.reasons.append("future_event_time")
                    if v["event_time"] < next_midnight - pd.Timedelta(days=31):
                        row.reasons.append("too_late")
                    if v["merchant_id"] not in known_merchants:
                        row.reasons.append("unknown_merchant")
                elif source == "customers" and v["updated_at"] >= next_midnight:
                    row.reasons.append("future_updated_at")
                elif source == "chargebacks":
                    if v["chargeback_time"] >= next_midnight:
                        row.reasons.append("future_chargeback_time")
                    if v["txn_id"] not in known_txns:
                        row.reasons.append("unknown_transaction")
                if row.reasons:
                    continue
                if source != "merchants":
                    accepted[source][key] = v
                silver_rows[source].append(
                    {
                        **v,
                        "_batch_date": day,
                        "_source_file": row.file,
                        "_row_number": row.row_number,
                        "_delivery_order": order,
                    }
                )
                if source == "merchants":
                    snapshot_merchants.add(v["merchant_id"])
                elif source == "transactions":
                    known_txns.add(v["txn_id"])
            known_merchants |= snapshot_merchants
    silver = {}
    for source, recs in silver_rows.items():
        df = pd.DataFrame(recs, columns=[*_COLUMNS[source], *_LINEAGE])
        if "event_time" in df:
            df["event_time"] = pd.to_datetime(df["event_time"], utc=True)
        silver[source] = df
    return LandingSilver(silver, everything)
