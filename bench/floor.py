"""The hand-written end-to-end floor: landing files -> gold feature tables in a few DuckDB queries,
with no lineage, Delta, Great Expectations, dbt or Feast (issue 17, "Measure").

    python -m bench.floor --home DIR --start 2024-01-01 --end 2024-01-30 [--check-against ASOF_HOME]
        [--out DIR] [--no-profile] [--no-write] [--memory-limit 4GB|none]

It reads `$home/landing/<source>/<YYYY-MM-DD>/*` for the batch dates start..end (the batches a
fresh `asof backfill --start --end` processes), applies the row rules and first-delivery-wins of
contract §6 and computes the gold tables of contract §7 with the semantics of the dbt models
(dbt_project/models): `customer_txn_features_daily`, `merchant_features_daily`, `customer_profile`.
The tables are written as Parquet (timed: asof's time includes writing its gold tables too) and,
with --check-against, compared row by row and value by value with asof's gold Delta tables in a
child process (so neither the check's time nor its memory is the floor's). Prints one JSON object.
DuckDB runs with its default threads and a 4 GB memory limit (it spills beyond it).

Design (the queries, in order):

1. `merchant_known`: the first batch day in which each merchant id passes the merchants' row rules.
2. `txn`: every landed transaction (DuckDB's typed CSV reader; a row with an unparseable value is
   skipped, i.e. quarantined), the row rules (not null, 0 < amount <= 1e6, currency in the FX seed,
   channel allowed, batch day - 30 <= event day <= batch day, merchant known by the batch day), then
   first delivery wins among the valid rows (earliest batch, then file): only the txn_ids that occur
   more than once (found by a hash aggregate) are ranked. A valid row has event day <= batch day, so
   its knowledge day (contract §5) is its batch day `k`.
3. `customer_txn_features_daily`, as running sums over daily deltas (no range join): a transaction
   is in the w-day window of as-of day D exactly when k <= D <= e + w - 1 (e its event day), so each
   (customer, e, k) cell adds its count/amount on day k and removes it on day e + w; the deltas are
   summed per (customer, day), one window pass per customer gives every window at every change day
   (running sums), and each step is spread over the days until the next change
   (`unnest(range(...))`). txn_count_1d needs no delta: it is the on-time count of the step's first
   day. Amounts are summed as DECIMAL(18, 8) like the dbt model, so the sums are the same doubles.
   `amount_usd_max_7d` is not invertible: a 7-day RANGE frame over the per-day maxima of the on-time
   cells (k = e), plus late cells (k > e, a few percent) spread over their at most 7 as-of days.
   `distinct_merchants_30d`: a transaction makes its merchant count for its customer on the days
   [k, e + 29]; a sweep over each (customer, merchant)'s transactions in order of k (a running max of
   the ends seen before) merges these spans into islands, each +1 on its first day and -1 after its
   last. These are the dbt models' formulas; the floor differs in computing them in a few
   statements straight from the landing files, with nothing in between written. Customers are
   independent: the statement runs once per hash bucket of customers, one bucket per 30 days.
4. `merchant_features_daily`: the same running sums for 7 and 90 days; a chargeback (valid: time
   before the end of its batch day, its transaction known by its batch; first delivery wins) counts
   from greatest(k, its batch day) to e + 89.
5. `customer_profile`: valid CDC records, first delivery per (customer_id, updated_at); for each
   (customer, batch day) with a record, the one with the latest updated_at delivered by then.

Not in the floor (the bench data has no injected faults): the batch-level rules (contract, failing
share, volume, drift: a rejected batch would contribute nothing), the "first row of a key in a batch
wins even if it fails another rule" detail and the row-number tie-break inside one file (DuckDB's CSV
reader has no row numbers; ties inside one file only matter for conflicting duplicates in one file,
a fault), and the contract's exact text syntax (the floor accepts what DuckDB's typed reader parses,
e.g. a timestamp without zone as UTC; asof quarantines it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCH = dt.date(1970, 1, 1)
DAY_US = 86_400_000_000
REPO = Path(__file__).resolve().parent.parent
FX_SEED = REPO / "dbt_project" / "seeds" / "fx_rates.csv"
TABLES = ("customer_txn_features_daily", "merchant_features_daily", "customer_profile")
SHORT = {
    "customer_txn_features_daily": "customer-days",
    "merchant_features_daily": "merchant-days",
    "customer_profile": "profiles",
}
KEYS = {
    "customer_txn_features_daily": ("customer_id", "as_of_date"),
    "merchant_features_daily": ("merchant_id", "as_of_date"),
    "customer_profile": ("customer_id", "as_of_date"),
}
REL_TOL = 1e-9
# DuckDB's memory limit for the floor (it spills to a temp dir beyond it): the issue's RSS target for
# asof, so that a year's floor neither takes the shared machine's memory nor gets an easier deal.
# The whole floor peaks at 1.1 GB for 30 bench days and 2.6 GB for 90 (the transactions table).
MEMORY_LIMIT = "4GB"
BUCKET_DAYS = 30

# ------------------------------------------------------------------------------------ landing


def _day(d: dt.date) -> int:
    return (d - EPOCH).days


def landing_files(home: Path, source: str, start: dt.date, end: dt.date) -> list[tuple[int, int, str]]:
    """(batch day, file index within the batch, path) of every landed file of the batches
    start..end, in delivery order (batch, then file name: ingest's order)."""
    out = []
    root = Path(home) / "landing" / source
    if not root.is_dir():
        return out
    for folder in sorted(root.iterdir()):
        try:
            day = dt.date.fromisoformat(folder.name)
        except ValueError:
            continue
        if not (start <= day <= end) or not folder.is_dir():
            continue
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
        out += [(_day(day), i, str(p)) for i, p in enumerate(files)]
    return out


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _reader(files: list[tuple[int, int, str]], columns: dict[str, str], fmt: str) -> str:
    """One relation over the landed files with columns `b` (batch day) and `f` (file index).

    The files are read by one reader call (parallel over files and within them) and their batch
    day and index are joined on from a small table of file names."""
    cols = "{" + ", ".join(f"{_sql_str(k)}: {_sql_str(v)}" for k, v in columns.items()) + "}"
    names = ", ".join(columns)
    if not files:
        nulls = ", ".join(f"null::{t} as {c}" for c, t in columns.items())
        return f"(select {nulls}, 0 as b, 0 as f where false)"
    paths = "[" + ", ".join(_sql_str(p) for _, _, p in files) + "]"
    table = (
        "(values " + ", ".join(f"({_sql_str(p)}, {b}, {i})" for b, i, p in files) + ") as files(path, b, f)"
    )
    if fmt == "csv":
        read = f"read_csv({paths}, header = true, columns = {cols}, filename = true, ignore_errors = true, auto_detect = false)"
    else:
        read = (
            f"read_json({paths}, format = 'newline_delimited', columns = {cols}, filename = true, "
            "ignore_errors = true)"
        )
    return f"(select {names}, files.b, files.f from {read} as r join {table} on r.filename = files.path)"


# ------------------------------------------------------------------------------------ the queries

MERCHANT_KNOWN_SQL = """
create or replace temp table merchant_known as
select merchant_id, min(b) as known_from
from {merchants}
where merchant_id is not null and name is not null
  and regexp_full_match(mcc, '[0-9]{{4}}') and regexp_full_match(country, '[A-Z]{{2}}')
  and risk_tier in ('low', 'medium', 'high')
group by merchant_id
"""

TXN_SQL = """
create or replace temp table txn as
with valid as materialized (
    select l.txn_id, l.customer_id, l.merchant_id, l.amount * fx.usd_rate as amount_usd,
           epoch_us(l.event_time) as event_us, l.b, l.f
    from {transactions} as l
    join fx on l.currency = fx.currency
    join merchant_known as m on l.merchant_id = m.merchant_id and m.known_from <= l.b
    where l.txn_id is not null and l.customer_id is not null
      and l.amount > 0 and l.amount <= 1000000
      and l.channel in ('web', 'app', 'pos')
      and epoch_us(l.event_time) < (l.b + 1)::bigint * {day_us}
      and epoch_us(l.event_time) >= (l.b - 30)::bigint * {day_us}
), repeated as (
    select txn_id from valid group by txn_id having count(*) > 1
), first_deliveries as (
    select * from valid anti join repeated using (txn_id)
    union all
    select * from (select * from valid semi join repeated using (txn_id))
    qualify row_number() over (partition by txn_id order by b, f) = 1
)
select txn_id, customer_id, merchant_id, amount_usd, event_us,
       (event_us // {day_us})::integer as e, b::integer as k
from first_deliveries
"""

CUSTOMER_SQL = """
with cells as (
    select customer_id, e, k, count(*) as n, sum(amount_usd::decimal(18, 8)) as s,
           max(amount_usd) as mx, max(event_us) as ts
    from txn where {bucket} and k <= e + 29 group by all
), swept as (
    select customer_id, k, e + 29 as z,
           max(e + 29) over by_start as covered,
           lead(k) over by_start as next_k
    from txn where {bucket} and k <= e + 29
    window by_start as (partition by customer_id, merchant_id order by k, e
                        rows between unbounded preceding and 1 preceding)
), merchant_deltas as (
    select customer_id, k as d, 1 as dm from swept where covered is null or k > covered + 1
    union all
    select customer_id, covered + 1, -1 from swept where k > covered + 1
    union all
    select customer_id, greatest(z, coalesce(covered, z)) + 1, -1 from swept where next_k is null
), deltas as (
    select customer_id, k as d, if(k = e, n, 0) as n1, if(k <= e + 6, n, 0) as n7, n as n30,
           if(k <= e + 6, s, 0) as s7, s as s30, 0 as dm, if(k = e, mx, null) as mx, ts
    from cells
    union all select customer_id, e + 7, 0, -n, 0, -s, 0, 0, null, null from cells where k <= e + 6
    union all select customer_id, e + 30, 0, 0, -n, 0, -s, 0, null, null from cells
    union all select customer_id, d, 0, 0, 0, 0, 0, dm, null, null from merchant_deltas
), timeline as (
    select customer_id, d, sum(n1) as n1, sum(n7) as n7, sum(n30) as n30, sum(s7) as s7,
           sum(s30) as s30, sum(dm) as dm, max(mx) as mx, max(ts) as ts
    from deltas where d <= {end_day} group by all
), steps as (
    select customer_id, d, coalesce(lead(d) over run - 1, {end_day}) as to_d, n1,
           sum(n7) over run as n7, sum(n30) over run as n30,
           sum(s7) over run as s7, sum(s30) over run as s30, sum(dm) over run as dm,
           max(ts) over run as ts,
           max(mx) over (partition by customer_id order by d range between 6 preceding and current row) as mx7
    from timeline
    window run as (partition by customer_id order by d rows between unbounded preceding and current row)
), late as (
    select customer_id, as_of, max(mx) as mx
    from (
        select customer_id, mx, unnest(range(greatest(k, {start_day}), least(e + 6, {end_day}) + 1)) as as_of
        from cells where k > e and k <= e + 6
    )
    group by all
), days as (
    select *, unnest(range(greatest(d, {start_day}), to_d + 1)) as as_of
    from steps where to_d >= {start_day} and n30 > 0
)
select days.customer_id::bigint as customer_id,
       (date '1970-01-01' + as_of::integer) as as_of_date,
       make_timestamptz((as_of::bigint + 1) * {day_us}) as feature_timestamp,
       if(as_of = d, n1, 0)::bigint as txn_count_1d, n7::bigint as txn_count_7d,
       n30::bigint as txn_count_30d,
       s7::double as amount_usd_sum_7d, s30::double as amount_usd_sum_30d,
       s30::double / n30::bigint as amount_usd_avg_30d,
       greatest(mx7, late.mx) as amount_usd_max_7d,
       dm::bigint as distinct_merchants_30d,
       ((as_of::bigint + 1) * {day_us} - ts) // 1000000 as seconds_since_last_txn
from days left join late using (customer_id, as_of)
"""

CHARGEBACK_SQL = """
create or replace temp table chargeback as
select l.txn_id, l.b as cb_day, t.merchant_id, t.e, t.k
from {chargebacks} as l
join txn as t on l.txn_id = t.txn_id and t.k <= l.b
where l.chargeback_time is not null and l.reason_code is not null
  and epoch_us(l.chargeback_time) < (l.b + 1)::bigint * {day_us}
qualify row_number() over (partition by l.txn_id order by l.b, l.f) = 1
"""

MERCHANT_SQL = """
with cells as (
    select merchant_id, e, k, count(*) as n from txn where k <= e + 89 group by all
), cb as (
    select merchant_id, e, greatest(k, cb_day) as c from chargeback where greatest(k, cb_day) <= e + 89
), deltas as (
    select merchant_id, k as d, if(k <= e + 6, n, 0) as n7, n as n90, 0 as cb from cells
    union all select merchant_id, e + 7, -n, 0, 0 from cells where k <= e + 6
    union all select merchant_id, e + 90, 0, -n, 0 from cells
    union all select merchant_id, c, 0, 0, 1 from cb
    union all select merchant_id, e + 90, 0, 0, -1 from cb
), timeline as (
    select merchant_id, d, sum(n7) as n7, sum(n90) as n90, sum(cb) as cb
    from deltas where d <= {end_day} group by all
), steps as (
    select merchant_id, d, coalesce(lead(d) over run - 1, {end_day}) as to_d,
           sum(n7) over run as n7, sum(n90) over run as n90, sum(cb) over run as cb
    from timeline
    window run as (partition by merchant_id order by d rows between unbounded preceding and current row)
), days as (
    select *, unnest(range(greatest(d, {start_day}), to_d + 1)) as as_of
    from steps where to_d >= {start_day} and n90 > 0
)
select merchant_id::bigint as merchant_id,
       (date '1970-01-01' + as_of::integer) as as_of_date,
       make_timestamptz((as_of::bigint + 1) * {day_us}) as feature_timestamp,
       n7::bigint as merchant_txn_count_7d, n90::bigint as merchant_txn_count_90d,
       cb::bigint as merchant_chargeback_count_90d,
       cb::double / n90::bigint as merchant_chargeback_rate_90d
from days
"""

PROFILE_SQL = """
with cdc as (
    select customer_id, updated_at, country, kyc_level, signup_date, b, f
    from {customers}
    where customer_id is not null and op in ('c', 'u') and signup_date is not null
      and epoch_us(updated_at) < (b + 1)::bigint * {day_us}
      and regexp_full_match(country, '[A-Z]{{2}}') and kyc_level between 0 and 3
    qualify row_number() over (partition by customer_id, updated_at order by b, f) = 1
), changes as (
    select distinct customer_id, b as as_of from cdc where b between {start_day} and {end_day}
)
select c.customer_id::bigint as customer_id,
       (date '1970-01-01' + c.as_of::integer) as as_of_date,
       make_timestamptz((c.as_of::bigint + 1) * {day_us}) as feature_timestamp,
       cdc.country, cdc.kyc_level::bigint as kyc_level, cdc.signup_date
from changes as c join cdc on cdc.customer_id = c.customer_id and cdc.b <= c.as_of
qualify row_number() over (partition by c.customer_id, c.as_of
                           order by cdc.updated_at desc, cdc.b desc, cdc.f desc) = 1
"""

TRANSACTION_COLUMNS = {
    "txn_id": "VARCHAR",
    "customer_id": "BIGINT",
    "merchant_id": "BIGINT",
    "amount": "DOUBLE",
    "currency": "VARCHAR",
    "channel": "VARCHAR",
    "event_time": "TIMESTAMPTZ",
}
MERCHANT_COLUMNS = {
    "merchant_id": "BIGINT",
    "name": "VARCHAR",
    "mcc": "VARCHAR",
    "country": "VARCHAR",
    "risk_tier": "VARCHAR",
}
CHARGEBACK_COLUMNS = {"txn_id": "VARCHAR", "chargeback_time": "TIMESTAMPTZ", "reason_code": "VARCHAR"}
CUSTOMER_COLUMNS = {
    "customer_id": "BIGINT",
    "op": "VARCHAR",
    "updated_at": "TIMESTAMPTZ",
    "country": "VARCHAR",
    "kyc_level": "BIGINT",
    "signup_date": "DATE",
}


def connect(threads: int | None = None, memory_limit: str | None = None):
    import duckdb

    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    con.execute("set preserve_insertion_order = false")
    con.execute("set enable_progress_bar = false")
    # where DuckDB spills beyond its memory limit (its default, ".tmp", is the working directory)
    spill = Path(tempfile.gettempdir()) / f"asof-floor-spill-{os.getpid()}"
    con.execute(f"set temp_directory = {_sql_str(str(spill))}")
    if threads:
        con.execute(f"set threads = {int(threads)}")
    if memory_limit:
        con.execute(f"set memory_limit = {_sql_str(memory_limit)}")
    return con


def customer_buckets(days: int) -> int:
    """The customer features are computed in hash buckets of customers (independent: nothing is
    read twice), one per 30 as-of days, so their working set stays that of 30 days: the same CPU time
    as one statement, a bounded peak (90 bench days: the floor peaks at 2.6 GB in 3 buckets, 3.8 GB
    in one)."""
    return max(1, -(-days // BUCKET_DAYS))


def compute(
    con, home: Path, start: dt.date, end: dt.date, *, out: Path | None = None, profile: bool = True
) -> tuple[dict[str, float], dict[str, int]]:
    """Runs the floor's queries in `con`. The intermediate tables (merchant_known, txn, chargeback)
    are temp tables; each gold table streams into `out/<table>/part-<i>.parquet` (without `out` it
    is only computed and counted). Returns (seconds per step, rows per gold table)."""
    params = {"start_day": _day(start), "end_day": _day(end), "day_us": DAY_US}

    def reader(source: str, columns: dict[str, str], fmt: str = "csv") -> str:
        return _reader(landing_files(home, source, start, end), columns, fmt)

    fx = (
        f"create or replace temp table fx as select * from read_csv({_sql_str(str(FX_SEED))}, "
        "header = true, columns = {'currency': 'VARCHAR', 'usd_rate': 'DOUBLE'})"
    )
    n = customer_buckets((end - start).days + 1)
    buckets = ["true"] if n == 1 else [f"hash(customer_id) % {n} = {i}" for i in range(n)]
    steps: list[tuple[str, list[str], bool]] = [
        ("fx", [fx], False),
        (
            "merchant_known",
            [MERCHANT_KNOWN_SQL.format(merchants=reader("merchants", MERCHANT_COLUMNS))],
            False,
        ),
        ("txn", [TXN_SQL.format(transactions=reader("transactions", TRANSACTION_COLUMNS), **params)], False),
        ("customer_txn_features_daily", [CUSTOMER_SQL.format(bucket=b, **params) for b in buckets], True),
        (
            "chargeback",
            [CHARGEBACK_SQL.format(chargebacks=reader("chargebacks", CHARGEBACK_COLUMNS), **params)],
            False,
        ),
        ("merchant_features_daily", [MERCHANT_SQL.format(**params)], True),
    ]
    if profile:
        customers = reader("customers", CUSTOMER_COLUMNS, "jsonl")
        steps.append(("customer_profile", [PROFILE_SQL.format(customers=customers, **params)], True))
    seconds, rows = {}, {}
    for name, statements, gold in steps:
        t = time.perf_counter()
        if gold and out is not None:
            (out / name).mkdir(parents=True, exist_ok=True)
        for i, sql in enumerate(statements):
            if not gold:
                con.execute(sql)
            elif out is None:
                rows[name] = rows.get(name, 0) + con.execute(f"select count(*) from ({sql})").fetchone()[0]
            else:
                target = _sql_str(str(out / name / f"part-{i}.parquet"))
                written = con.execute(f"copy ({sql}) to {target} (format parquet)").fetchone()[0]
                rows[name] = rows.get(name, 0) + written
        seconds[name] = round(time.perf_counter() - t, 3)
    return seconds, rows


# ------------------------------------------------------------------------------------ equality


def compare(floor_dir: Path, asof_home: Path, start: dt.date, end: dt.date, tables=TABLES) -> dict:
    """Row by row and value by value: the floor's Parquet tables against asof's gold Delta tables
    (as-of dates start..end). Per table: rows on each side, rows only on one side, and per column
    the number of differing values (floats within REL_TOL relative; null equals null only)."""
    import deltalake

    con = connect(memory_limit="4GB")
    out: dict[str, dict] = {}
    for name in tables:
        parquet = floor_dir / name
        gold = Path(asof_home) / "lake" / "gold" / name
        if not parquet.exists():
            continue
        if not gold.exists():
            out[name] = {"error": f"no asof gold table at {gold}"}
            continue
        asof = deltalake.DeltaTable(str(gold)).to_pyarrow_table()
        con.register("asof_all", asof)
        con.execute(
            f"create or replace temp table asof_gold as select * from asof_all "
            f"where as_of_date between date '{start}' and date '{end}'"
        )
        con.unregister("asof_all")
        del asof
        con.execute(
            f"create or replace temp view floor_gold as select * from read_parquet({_sql_str(str(parquet / '*.parquet'))})"
        )
        schema = con.execute("describe asof_gold").fetchall()
        columns = [(c[0], c[1]) for c in schema]
        floor_cols = {c[0] for c in con.execute("describe floor_gold").fetchall()}
        keys = KEYS[name]
        on = " and ".join(f"a.{k} = f.{k}" for k in keys)
        exprs, inexact = [], []
        for col, typ in columns:
            if col in keys:
                continue
            if col not in floor_cols:
                exprs.append(f"count(*) filter (where true) as {col}")
                continue
            if typ in ("DOUBLE", "FLOAT"):
                close = f"abs(a.{col} - f.{col}) <= {REL_TOL} * greatest(abs(a.{col}), abs(f.{col}))"
                differ = f"coalesce(not ((a.{col} is null and f.{col} is null) or ({close})), true)"
                inexact.append(f"count(*) filter (where a.{col} <> f.{col} and {close})")
            else:
                differ = f"a.{col} is distinct from f.{col}"
            exprs.append(f"count(*) filter (where {differ}) as {col}")
        row = con.execute(
            f"""
            select (select count(*) from asof_gold) as asof_rows,
                   (select count(*) from floor_gold) as floor_rows,
                   count(*) filter (where f.{keys[0]} is null) as only_asof,
                   count(*) filter (where a.{keys[0]} is null) as only_floor,
                   {", ".join(exprs)},
                   {" + ".join(inexact) or "0"} as inexact
            from asof_gold as a full outer join floor_gold as f on {on}
            """
        ).fetchone()
        value_cols = [c for c, _ in columns if c not in keys]
        header = ["asof_rows", "floor_rows", "only_asof", "only_floor", *value_cols, "inexact"]
        res = dict(zip(header, row, strict=True))
        # a row present on one side only counts as one differing value per column
        per_column = {c: res.pop(c) for c in value_cols}
        res["differing_by_column"] = {c: n for c, n in per_column.items() if n}
        res["differing_values"] = sum(per_column.values())
        res["rows_compared"] = res["asof_rows"] + res["only_floor"]
        res["values_compared"] = res["rows_compared"] * len(value_cols)
        # equal within REL_TOL but not bit for bit (floats summed in a different order)
        res["floats_not_bit_identical"] = res.pop("inexact")
        out[name] = res
        con.execute("drop table asof_gold")
    con.close()
    total = sum(r.get("differing_values", 0) for r in out.values())
    return {
        "tables": out,
        "rows_compared": sum(r.get("rows_compared", 0) for r in out.values()),
        "differing_values": total,
        "equal": total == 0 and all("error" not in r for r in out.values()),
    }


def check_in_child(floor_dir: Path, asof_home: Path, start: dt.date, end: dt.date) -> dict:
    """`compare` in a child process: its memory and time stay out of the floor's figures."""
    cmd = [
        sys.executable,
        "-m",
        "bench.floor",
        "compare",
        "--floor-dir",
        str(floor_dir),
        "--asof-home",
        str(asof_home),
        "--start",
        start.isoformat(),
        "--end",
        end.isoformat(),
    ]
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": (res.stderr or res.stdout)[-1500:]}
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["check_seconds"] = round(time.perf_counter() - t, 2)
    return out


# ------------------------------------------------------------------------------------ entry points


def run(
    home: Path,
    start: dt.date,
    end: dt.date,
    *,
    out: Path | None = None,
    check_against: Path | None = None,
    profile: bool = True,
    write: bool = True,
    memory_limit: str | None = MEMORY_LIMIT,
) -> dict:
    """The floor over the batches start..end of `home`: seconds (read to Parquet written), steps,
    rows per table; with `check_against` (an ASOF_HOME with gold tables) the equality check."""
    tmp = None
    if out is None and (write or check_against):
        tmp = tempfile.TemporaryDirectory(prefix="asof-floor-")
        out = Path(tmp.name)
    try:
        con = connect(memory_limit=memory_limit)
        t, cpu = time.perf_counter(), time.process_time()
        steps, rows = compute(
            con, Path(home), start, end, out=out if (write or check_against) else None, profile=profile
        )
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
        txns = con.execute("select count(*) from txn").fetchone()[0]
        con.close()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = {
            "seconds": seconds,
            "cpu_seconds": round(cpu, 2),
            "steps": steps,
            "rows": rows,
            "transactions": txns,
            "days": (end - start).days + 1,
            "floor_peak_rss_mb": round(peak),
        }
        if check_against:
            result["check"] = check_in_child(out, Path(check_against), start, end)
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()


def measure_floor(args) -> dict:
    """bench/measure.py: the floor over the range's landing files of args.home. Options (--extra):
    `check_against` an ASOF_HOME whose gold tables to compare with (relative paths are under
    args.home, `{start}`/`{end}` are filled in), `profile` (default true), `write` (default true),
    `memory_limit` (DuckDB's, default MEMORY_LIMIT; null: DuckDB's own)."""
    extra = json.loads(getattr(args, "extra", "{}") or "{}")
    start, end = dt.date.fromisoformat(str(args.start)), dt.date.fromisoformat(str(args.end))
    against = extra.get("check_against")
    check_home = wanted = None
    if against:
        wanted = Path(args.home) / against.format(start=start.isoformat(), end=end.isoformat())
        check_home = wanted if (wanted / "lake" / "gold").is_dir() else None
    res = run(
        Path(args.home),
        start,
        end,
        check_against=check_home,
        profile=extra.get("profile", True),
        write=extra.get("write", True),
        memory_limit=extra.get("memory_limit", MEMORY_LIMIT),
    )
    if against and check_home is None:
        res["check"] = {"skipped": f"no asof gold under {wanted}"}
    chk = res.get("check", {})
    rows = ", ".join(f"{v:,} {SHORT.get(k, k)}" for k, v in res["rows"].items())
    verdict = (
        f"equal to asof's gold ({chk['rows_compared']:,} rows compared, {chk['differing_values']} differing values)"
        if "differing_values" in chk
        else f"not checked ({chk.get('skipped') or chk.get('error', 'no asof gold given')[-200:]})"
    )
    res["summary"] = f"{res['seconds']:.1f} s ({res['cpu_seconds']:.1f} s CPU); rows: {rows}; {verdict}"
    if "differing_values" in chk and not chk["equal"]:
        res["summary"] = res["summary"].replace("equal to", "DIFFERS from")
    return res


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        p = argparse.ArgumentParser(prog="python -m bench.floor compare")
        p.add_argument("--floor-dir", required=True)
        p.add_argument("--asof-home", required=True)
        p.add_argument("--start", required=True)
        p.add_argument("--end", required=True)
        a = p.parse_args(argv[1:])
        res = compare(
            Path(a.floor_dir), Path(a.asof_home), dt.date.fromisoformat(a.start), dt.date.fromisoformat(a.end)
        )
        res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        sys.stdout.write(json.dumps(res, default=str) + "\n")
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", required=True, help="the ASOF_HOME whose landing/ to read")
    p.add_argument("--start", required=True)
    p.add_argument("--end", required=True)
    p.add_argument("--check-against", default=None, help="an ASOF_HOME with asof's gold tables")
    p.add_argument("--out", default=None, help="write the gold tables as Parquet here (default: a temp dir)")
    p.add_argument("--no-profile", action="store_true", help="leave customer_profile out")
    p.add_argument("--no-write", action="store_true", help="compute only, write no Parquet")
    p.add_argument(
        "--memory-limit",
        default=MEMORY_LIMIT,
        help=f"DuckDB's memory limit (it spills beyond it; default {MEMORY_LIMIT}); none: DuckDB's own",
    )
    a = p.parse_args(argv)
    res = run(
        Path(a.home),
        dt.date.fromisoformat(a.start),
        dt.date.fromisoformat(a.end),
        out=Path(a.out) if a.out else None,
        check_against=Path(a.check_against) if a.check_against else None,
        profile=not a.no_profile,
        write=not a.no_write,
        memory_limit=None if a.memory_limit.lower() == "none" else a.memory_limit,
    )
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    sys.stdout.write(json.dumps(res, default=str) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TZ", "UTC")
    main()
