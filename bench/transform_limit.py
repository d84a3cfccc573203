"""Transform stage speed limit: the gold features of a range computed by hand-written DuckDB queries
(one statement per gold table, no dbt) over the same silver Delta tables, side by side with
`flows.transform.stage.transform_range` (dbt-duckdb, one invocation for the range).

    python -m bench.transform_limit --home DIR --synthesize      # silver at bench scale (numpy)
    python -m bench.transform_limit --home DIR --which both      # time dbt path and hand-written

The hand-written path reads silver through the same Arrow datasets (`lake.dataset`) and writes the
same Delta tables the same way (`lake.replace`, one commit per table), so the ratio isolates what
dbt adds: invocation, materialised intermediate tables, tests, the hooks. `--no-publish` times the
computation alone. `measure_transform` / `measure_transform_limit` have the signature of the
measurements in bench/measure.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EPOCH = dt.date(1970, 1, 1)
LOOKBACK = 89  # 90-day merchant window

# ------------------------------------------------------------------------------------------------
# silver at bench scale, straight from numpy (no landing files, no validation)


def synthesize_silver(
    first_day: dt.date,
    days: int,
    *,
    customers: int = 100_000,
    txns_per_day: int = 100_000,
    merchants: int = 5_000,
    late_share: float = 0.02,
    seed: int = 42,
) -> dict[str, int]:
    from flows.sources import get_source, silver_schema
    from flows.storage import lake

    rng = np.random.default_rng(seed)
    last_day = first_day + dt.timedelta(days=days - 1)
    base_day = (first_day - EPOCH).days
    n = days * txns_per_day
    day = np.repeat(np.arange(days, dtype=np.int64), txns_per_day)
    event_us = (base_day + day) * 86_400_000_000 + rng.integers(0, 86_400_000_000, n)
    lag = np.where(rng.random(n) < late_share, rng.integers(1, 4, n), 0)
    batch = np.minimum(day + lag, days - 1) + base_day
    cust = (rng.zipf(1.3, n) % customers + 1).astype(np.int64)
    cust = np.where(rng.random(n) < 0.5, rng.integers(1, customers + 1, n), cust)
    merch = ((cust * 7919 + rng.integers(0, 25, n)) % merchants + 1).astype(np.int64)
    amount = np.round(rng.lognormal(3.2, 1.1, n), 2) + 0.01
    currency = np.array(["USD", "EUR", "GBP"])[rng.choice(3, n, p=[0.7, 0.2, 0.1])]
    channel = np.array(["web", "app", "pos"])[rng.integers(0, 3, n)]
    txn_id = pc.binary_join_element_wise("t", pa.array(np.arange(n)).cast(pa.string()), "")
    ingested = (batch + 1) * 86_400_000_000
    txns = pa.table(
        {
            "txn_id": txn_id,
            "customer_id": cust,
            "merchant_id": merch,
            "amount": amount,
            "currency": currency,
            "channel": channel,
            "event_time": pa.array(event_us, pa.timestamp("us", tz="UTC")),
            "_extra": pa.nulls(n, pa.string()),
            "_batch_date": pa.array(batch.astype(np.int32), pa.date32()),
            "_ingested_at": pa.array(ingested, pa.timestamp("us", tz="UTC")),
            "_source_file": pa.array(np.full(n, "transactions.csv")),
            "_row_number": np.arange(n, dtype=np.int64),
            "_validation_run_id": pa.array(np.full(n, "bench")),
        }
    )
    written = {}

    def put(name: str, table: pa.Table) -> None:
        schema = silver_schema(get_source(name))
        lake.replace(
            "silver",
            name,
            table.select(schema.names).cast(schema),
            predicate=lake.date_predicate("_batch_date", first_day, last_day),
            partition_by=["_batch_date"],
            schema=schema,
        )
        written[name] = table.num_rows

    put("transactions", txns)

    # chargebacks: 0.3% of transactions, 1-60 days after the transaction's batch
    cb_idx = np.flatnonzero(rng.random(n) < 0.003)
    cb_batch = batch[cb_idx] + rng.integers(1, 61, cb_idx.size)
    keep = cb_batch <= base_day + days - 1
    cb_idx, cb_batch = cb_idx[keep], cb_batch[keep]
    m = cb_idx.size
    put(
        "chargebacks",
        pa.table(
            {
                "txn_id": txn_id.take(pa.array(cb_idx)),
                "chargeback_time": pa.array(
                    cb_batch * 86_400_000_000 + 3600_000_000, pa.timestamp("us", tz="UTC")
                ),
                "reason_code": pa.array(np.full(m, "10.4")),
                "_extra": pa.nulls(m, pa.string()),
                "_batch_date": pa.array(cb_batch.astype(np.int32), pa.date32()),
                "_ingested_at": pa.array((cb_batch + 1) * 86_400_000_000, pa.timestamp("us", tz="UTC")),
                "_source_file": pa.array(np.full(m, "chargebacks.csv")),
                "_row_number": np.arange(m, dtype=np.int64),
                "_validation_run_id": pa.array(np.full(m, "bench")),
            }
        ),
    )

    # customers: every customer created on the first day, ~0.2% updated per day
    upd = customers // 500
    c_ids = np.concatenate([np.arange(1, customers + 1), rng.integers(1, customers + 1, upd * (days - 1))])
    c_batch = np.concatenate([np.zeros(customers, np.int64), np.repeat(np.arange(1, days), upd)]) + base_day
    k = c_ids.size
    put(
        "customers",
        pa.table(
            {
                "customer_id": c_ids.astype(np.int64),
                "op": pa.array(np.where(np.arange(k) < customers, "c", "u")),
                "updated_at": pa.array(
                    c_batch * 86_400_000_000 + rng.integers(0, 86_400_000_000, k),
                    pa.timestamp("us", tz="UTC"),
                ),
                "country": np.array(["US", "GB", "DE", "FR"])[rng.integers(0, 4, k)],
                "kyc_level": rng.integers(0, 4, k).astype(np.int64),
                "signup_date": pa.array((base_day - rng.integers(0, 1000, k)).astype(np.int32), pa.date32()),
                "_extra": pa.nulls(k, pa.string()),
                "_batch_date": pa.array(c_batch.astype(np.int32), pa.date32()),
                "_ingested_at": pa.array((c_batch + 1) * 86_400_000_000, pa.timestamp("us", tz="UTC")),
                "_source_file": pa.array(np.full(k, "customers.jsonl")),
                "_row_number": np.arange(k, dtype=np.int64),
                "_validation_run_id": pa.array(np.full(k, "bench")),
            }
        ),
    )

    # merchants: a full snapshot every day
    mb = np.repeat(np.arange(days, dtype=np.int64) + base_day, merchants)
    mid = np.tile(np.arange(1, merchants + 1, dtype=np.int64), days)
    q = mid.size
    put(
        "merchants",
        pa.table(
            {
                "merchant_id": mid,
                "name": pc.binary_join_element_wise("m", pa.array(mid).cast(pa.string()), ""),
                "mcc": pa.array(np.full(q, "5411")),
                "country": pa.array(np.full(q, "US")),
                "risk_tier": np.array(["low", "medium", "high"])[mid % 3],
                "_extra": pa.nulls(q, pa.string()),
                "_batch_date": pa.array(mb.astype(np.int32), pa.date32()),
                "_ingested_at": pa.array((mb + 1) * 86_400_000_000, pa.timestamp("us", tz="UTC")),
                "_source_file": pa.array(np.full(q, "merchants.csv")),
                "_row_number": np.arange(q, dtype=np.int64),
                "_validation_run_id": pa.array(np.full(q, "bench")),
            }
        ),
    )
    return written


# ------------------------------------------------------------------------------------------------
# the hand-written queries (same definitions as the dbt models, one statement per gold table)

TXNS_SQL = """
create or replace temp table txns as
with deliveries as materialized (
    select txn_id, customer_id, merchant_id, amount, currency, event_time, _batch_date, _row_number
    from silver_transactions
    where _batch_date between date '{start}' - {lookback} and date '{end}'
), dup as (
    select txn_id from deliveries group by txn_id having count(*) > 1
), first as (
    select deliveries.* from deliveries anti join dup using (txn_id)
    union all
    select * from (select deliveries.* from deliveries semi join dup using (txn_id))
    qualify row_number() over (partition by txn_id order by _batch_date, _row_number) = 1
)
select txn_id, customer_id, merchant_id, amount * usd_rate as amount_usd, epoch_us(event_time) as ts,
       (epoch_us(event_time) // 86400000000)::integer as e,
       greatest((epoch_us(event_time) // 86400000000)::integer, (_batch_date - date '1970-01-01')::integer) as k
from first left join fx using (currency)
where (epoch_us(event_time) // 86400000000)::integer between {s} - {lookback} and {e_}
"""

CUSTOMER_SQL = """
with w as (
    select * from txns where e between {s} - 29 and {e_} and k <= e + 29
), cells as (
    select customer_id, e, k, count(*) as n, sum(amount_usd::decimal(18, 8)) as s,
           max(amount_usd) as mx, max(ts) as ts
    from w group by all
), spans as (
    select customer_id, merchant_id, min(k) as a, e + 29 as b from w group by customer_id, merchant_id, e
), spans2 as (
    select *, max(b) over (partition by customer_id, merchant_id order by a, b
                           rows between unbounded preceding and 1 preceding) as pb
    from spans
), spans3 as (
    select *, sum(case when pb is null or a > pb + 1 then 1 else 0 end)
              over (partition by customer_id, merchant_id order by a, b rows unbounded preceding) as g
    from spans2
), islands as (
    select customer_id, min(a) as a, max(b) as b from spans3 group by customer_id, merchant_id, g
), deltas as (
    select customer_id, k as d, if(k = e, n, 0) as n1, if(k <= e + 6, n, 0) as n7, n as n30,
           if(k <= e + 6, s, 0) as s7, s as s30, 0 as dm, if(k = e, mx, null) as mx, ts from cells
    union all select customer_id, e + 1, -n, 0, 0, 0, 0, 0, null, null from cells where k = e
    union all select customer_id, e + 7, 0, -n, 0, -s, 0, 0, null, null from cells where k <= e + 6
    union all select customer_id, e + 30, 0, 0, -n, 0, -s, 0, null, null from cells
    union all select customer_id, a, 0, 0, 0, 0, 0, 1, null, null from islands
    union all select customer_id, b + 1, 0, 0, 0, 0, 0, -1, null, null from islands
), timeline as (
    select customer_id, d, sum(n1) n1, sum(n7) n7, sum(n30) n30, sum(s7) s7, sum(s30) s30,
           sum(dm) dm, max(mx) mx, max(ts) ts
    from deltas where d <= {e_} group by all
), acc as (
    select customer_id, d, coalesce(lead(d) over w - 1, {e_}) as to_d,
           sum(n1) over w n1, sum(n7) over w n7, sum(n30) over w n30, sum(s7) over w s7,
           sum(s30) over w s30, sum(dm) over w dm, max(ts) over w ts,
           max(mx) over (partition by customer_id order by d range between 6 preceding and current row) mx7
    from timeline window w as (partition by customer_id order by d rows unbounded preceding)
), late as (
    select customer_id, as_of, max(mx) as mx from (
        select customer_id, mx, unnest(range(greatest(k, {s}), least(e + 6, {e_}) + 1)) as as_of
        from cells where k > e and k <= e + 6
    ) group by all
), days as (
    select *, unnest(range(greatest(d, {s}), to_d + 1)) as as_of from acc where to_d >= {s} and n30 > 0
)
select days.customer_id, date '1970-01-01' + as_of::integer as as_of_date,
       make_timestamptz((as_of::bigint + 1) * 86400000000) as feature_timestamp,
       n1::bigint as txn_count_1d, n7::bigint as txn_count_7d, n30::bigint as txn_count_30d,
       s7::double as amount_usd_sum_7d, s30::double as amount_usd_sum_30d,
       s30::double / n30 as amount_usd_avg_30d, greatest(mx7, late.mx) as amount_usd_max_7d,
       dm::bigint as distinct_merchants_30d,
       ((as_of::bigint + 1) * 86400000000 - ts) // 1000000 as seconds_since_last_txn
from days left join late using (customer_id, as_of)
"""

MERCHANT_SQL = """
with w as (
    select * from txns where e between {s} - {lookback} and {e_} and k <= e + {lookback}
), cbs as (
    select txn_id, (_batch_date - date '1970-01-01')::integer as cb from silver_chargebacks
    where _batch_date between date '{start}' - {lookback} and date '{end}'
    qualify row_number() over (partition by txn_id order by _batch_date, _row_number) = 1
), cb_cells as (
    select merchant_id, e, greatest(k, cb) as c from w join cbs using (txn_id)
    where greatest(k, cb) <= e + {lookback}
), cells as (
    select merchant_id, e, k, count(*) n from w group by all
), deltas as (
    select merchant_id, k as d, if(k <= e + 6, n, 0) as n7, n as n90, 0 as cb from cells
    union all select merchant_id, e + 7, -n, 0, 0 from cells where k <= e + 6
    union all select merchant_id, e + 90, 0, -n, 0 from cells
    union all select merchant_id, c, 0, 0, 1 from cb_cells
    union all select merchant_id, e + 90, 0, 0, -1 from cb_cells
), timeline as (
    select merchant_id, d, sum(n7) n7, sum(n90) n90, sum(cb) cb from deltas where d <= {e_} group by all
), acc as (
    select merchant_id, d, coalesce(lead(d) over w - 1, {e_}) as to_d,
           sum(n7) over w n7, sum(n90) over w n90, sum(cb) over w cb
    from timeline window w as (partition by merchant_id order by d rows unbounded preceding)
), days as (
    select *, unnest(range(greatest(d, {s}), to_d + 1)) as as_of from acc where to_d >= {s} and n90 > 0
)
select merchant_id, date '1970-01-01' + as_of::integer as as_of_date,
       make_timestamptz((as_of::bigint + 1) * 86400000000) as feature_timestamp,
       n7::bigint as merchant_txn_count_7d, n90::bigint as merchant_txn_count_90d,
       cb::bigint as merchant_chargeback_count_90d, cb::double / n90 as merchant_chargeback_rate_90d
from days
"""

PROFILE_SQL = """
with cdc as (
    select * from silver_customers where _batch_date <= date '{end}'
), changes as (
    select distinct customer_id, _batch_date as as_of_date from cdc
    where _batch_date between date '{start}' and date '{end}'
)
select c.customer_id, c.as_of_date,
       make_timestamptz(((c.as_of_date - date '1970-01-01')::bigint + 1) * 86400000000) as feature_timestamp,
       cdc.country, cdc.kyc_level, cdc.signup_date
from changes c join cdc on cdc.customer_id = c.customer_id and cdc._batch_date <= c.as_of_date
qualify row_number() over (partition by c.customer_id, c.as_of_date
                           order by cdc.updated_at desc, cdc._batch_date desc, cdc._row_number desc) = 1
"""

QUERIES = {
    "customer_txn_features_daily": CUSTOMER_SQL,
    "merchant_features_daily": MERCHANT_SQL,
    "customer_profile": PROFILE_SQL,
}


def handwritten_features(start: dt.date, end: dt.date) -> dict[str, pa.Table]:
    import duckdb

    from flows.sources import get_source, silver_schema
    from flows.storage import lake

    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    con.execute("set preserve_insertion_order = false")
    con.execute(
        "create table fx as select * from (values ('USD', 1.0), ('EUR', 1.08), ('GBP', 1.27)) t(currency, usd_rate)"
    )
    for name in ("transactions", "customers", "chargebacks"):
        data = (
            lake.dataset("silver", name)
            if lake.exists("silver", name)
            else silver_schema(get_source(name)).empty_table()
        )
        con.register(f"silver_{name}", data)
    params = {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "s": (start - EPOCH).days,
        "e_": (end - EPOCH).days,
        "lookback": LOOKBACK,
    }
    con.execute(TXNS_SQL.format(**params))
    out = {
        name: con.sql(
            f"select * from ({sql.format(**params)}) order by as_of_date, {name.split('_')[0]}_id"
        ).to_arrow_table()
        for name, sql in QUERIES.items()
    }
    con.close()
    return out


def publish(tables: dict[str, pa.Table], start: dt.date, end: dt.date) -> dict[str, int]:
    from flows.storage import lake
    from flows.transform.lake_io import GOLD_PARTITION_BY, GOLD_SCHEMAS

    return {
        name: lake.replace(
            "gold",
            name,
            data,
            predicate=lake.date_predicate("as_of_date", start, end),
            partition_by=GOLD_PARTITION_BY,
            schema=GOLD_SCHEMAS[name],
        )
        for name, data in tables.items()
    }


# ------------------------------------------------------------------------------------------------
# measurements (bench/measure.py signature: args with .home/.start/.end/.extra)


def ensure_silver(start: dt.date, end: dt.date, scale: str = "bench") -> float:
    """Synthesise silver for the as-of range and its 89-day lookback when the lake has no silver
    transactions yet (the pipeline or --synthesize may have filled it); returns the seconds spent,
    outside any timed region."""
    from flows.storage import lake

    if lake.exists("silver", "transactions"):
        return 0.0
    customers, per_day = {"bench": (100_000, 100_000), "small": (20_000, 50_000)}.get(
        scale, (100_000, 100_000)
    )
    first = start - dt.timedelta(days=LOOKBACK)
    t = time.perf_counter()
    synthesize_silver(first, (end - first).days + 1, customers=customers, txns_per_day=per_day)
    return time.perf_counter() - t


def _range(args) -> tuple[dt.date, dt.date]:
    return dt.date.fromisoformat(str(args.start)), dt.date.fromisoformat(str(args.end))


def measure_transform(args) -> dict:
    from flows.transform.stage import prepare, transform_range

    ensure_silver(*_range(args), getattr(args, "scale", "bench"))

    parse_seconds = None
    if json.loads(getattr(args, "extra", "{}") or "{}").get("warm", False):
        t = time.perf_counter()
        prepare()  # the once-per-process dbt parse, outside the timed range run
        parse_seconds = time.perf_counter() - t
    t, cpu = time.perf_counter(), time.process_time()
    res = transform_range(args.start, args.end)
    secs, cpu = time.perf_counter() - t, time.process_time() - cpu
    if not res.succeeded:
        raise SystemExit(f"transform failed: {res.message}")
    return {
        "seconds": secs,
        "cpu_seconds": cpu,
        "rows": res.rows_written,
        "dbt_seconds": res.dbt_elapsed_s,
        "publish_seconds": res.publish_elapsed_s,
        "parsed_manifest": res.parsed_manifest,
        "parse_seconds": parse_seconds,
    }


def measure_transform_limit(args) -> dict:
    start, end = _range(args)
    ensure_silver(start, end, getattr(args, "scale", "bench"))
    do_publish = json.loads(getattr(args, "extra", "{}") or "{}").get("publish", True)
    t, cpu = time.perf_counter(), time.process_time()
    tables = handwritten_features(start, end)
    compute = time.perf_counter() - t
    if do_publish:
        publish(tables, start, end)
    return {
        "seconds": time.perf_counter() - t,
        "cpu_seconds": time.process_time() - cpu,
        "compute_seconds": compute,
        "rows": {k: v.num_rows for k, v in tables.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", required=True)
    p.add_argument("--start", default="2024-06-28", help="first as-of day")
    p.add_argument("--end", default=None, help="last as-of day (default: start + days - 1)")
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--synthesize", action="store_true", help="write bench-scale silver first")
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--txns-per-day", type=int, default=100_000)
    p.add_argument("--merchants", type=int, default=5_000)
    p.add_argument("--which", choices=["both", "dbt", "sql", "none"], default="both")
    p.add_argument("--no-publish", action="store_true", help="hand-written path: compute only")
    p.add_argument("--warm", action="store_true", help="dbt path: parse the project before timing")
    p.add_argument("--sql-first", action="store_true", help="run the hand-written path first")
    args = p.parse_args()
    os.environ["ASOF_HOME"] = args.home
    start = dt.date.fromisoformat(args.start)
    end = dt.date.fromisoformat(args.end) if args.end else start + dt.timedelta(days=args.days - 1)
    args.start, args.end = start.isoformat(), end.isoformat()
    args.extra = json.dumps({"publish": not args.no_publish, "warm": args.warm})
    report: dict = {"start": args.start, "end": args.end}
    if args.synthesize:
        first = start - dt.timedelta(days=LOOKBACK)
        t = time.perf_counter()
        report["silver_rows"] = synthesize_silver(
            first,
            (end - first).days + 1,
            customers=args.customers,
            txns_per_day=args.txns_per_day,
            merchants=args.merchants,
        )
        report["synthesize_seconds"] = round(time.perf_counter() - t, 2)
    order = ["sql", "dbt"] if args.sql_first else ["dbt", "sql"]
    for which in order:
        if which == "dbt" and args.which in ("both", "dbt"):
            report["dbt"] = measure_transform(args)
        if which == "sql" and args.which in ("both", "sql"):
            report["handwritten"] = measure_transform_limit(args)
    if "dbt" in report and "handwritten" in report:
        report["ratio"] = round(report["dbt"]["seconds"] / report["handwritten"]["seconds"], 3)
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write(json.dumps(report, default=str) + "\n")


if __name__ == "__main__":
    main()
