"""Lake fixtures for the monitoring tests (no tests in here).

Two kinds of gold:
- `synthetic_customer_gold`: numpy draws, one row per customer per day, with an optional amount
  factor per day (the `cents` fault is x100);
- `sim_gold`: the project's simulator (realistic: weekly seasonality, heavy-tailed amounts, late and
  duplicate deliveries), its transactions read straight from the landing CSVs (no validation, as if
  every batch rule were disabled) and turned into contract §7 customer features in DuckDB.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from flows.ingest.stage import INGEST_FILES_SCHEMA
from flows.operations import runs
from flows.operations.runs import StageRecord
from flows.sources import get_source, silver_schema
from flows.storage import lake
from flows.transform.gold_schema import gold_schemas

UTC = dt.UTC
TS = pa.timestamp("us", tz="UTC")
FX = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27}

# The gold schemas of the marts' dbt contract (flows.transform.gold_schema), every column nullable: these
# fixtures write what the contract forbids (null features, `null_feature` below) for monitoring to
# catch, which the dbt stage never publishes.
SCHEMAS = {
    name: pa.schema([f.with_nullable(True) for f in schema]) for name, schema in gold_schemas().items()
}
CUSTOMER_SCHEMA = SCHEMAS["customer_txn_features_daily"]
MERCHANT_SCHEMA = SCHEMAS["merchant_features_daily"]
PROFILE_SCHEMA = SCHEMAS["customer_profile"]
# silver transactions: the contract's columns and the batch date
_SILVER_TXNS = silver_schema(get_source("transactions"))
SILVER_TXN_SCHEMA = pa.schema(
    [_SILVER_TXNS.field(c) for c in (*get_source("transactions").column_names, "_batch_date")]
)


def midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=UTC)


def days_between(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def write_gold(name: str, table: pa.Table) -> None:
    days = table["as_of_date"].to_pylist()
    lake.replace(
        "gold",
        name,
        table.cast(SCHEMAS[name]),
        predicate=lake.date_predicate("as_of_date", min(days), max(days)),
        partition_by=["as_of_date"],
        schema=SCHEMAS[name],
    )


def delete_gold_day(name: str, day: dt.date) -> None:
    lake.delete("gold", name, lake.date_predicate("as_of_date", day))


def synthetic_customer_gold(
    start: dt.date,
    end: dt.date,
    customers: int = 400,
    seed: int = 3,
    amount_factor: dict[dt.date, float] | None = None,
    null_feature: dict[dt.date, tuple[str, int]] | None = None,
) -> pa.Table:
    """One row per customer per day with stationary distributions; `amount_factor[day]` multiplies
    the day's amount features (x100 = the `cents` fault); `null_feature[day] = (feature, n)` nulls a
    feature for the first n customers."""
    amount_factor = amount_factor or {}
    null_feature = null_feature or {}
    cols: dict[str, list] = {f.name: [] for f in CUSTOMER_SCHEMA}
    for day in days_between(start, end):
        rng = np.random.default_rng([seed, day.toordinal()])
        n = customers
        c1, c7, c30 = rng.poisson(2, n), rng.poisson(14, n) + 1, rng.poisson(60, n) + 1
        avg = np.exp(rng.normal(3.5, 0.8, n))
        factor = amount_factor.get(day, 1.0)
        s7 = avg * c7 * factor
        s30 = avg * c30 * factor
        mx = avg * rng.uniform(1.0, 3.0, n) * factor
        values = {
            "customer_id": list(range(1, n + 1)),
            "as_of_date": [day] * n,
            "feature_timestamp": [midnight(day + dt.timedelta(days=1))] * n,
            "txn_count_1d": c1.tolist(),
            "txn_count_7d": c7.tolist(),
            "txn_count_30d": c30.tolist(),
            "amount_usd_sum_7d": s7.tolist(),
            "amount_usd_sum_30d": s30.tolist(),
            "amount_usd_avg_30d": (s30 / c30).tolist(),
            "amount_usd_max_7d": mx.tolist(),
            "distinct_merchants_30d": (rng.poisson(5, n) + 1).tolist(),
            "seconds_since_last_txn": rng.integers(0, 86400 * 3, n).tolist(),
        }
        if day in null_feature:
            feat, k = null_feature[day]
            values[feat] = [None] * k + values[feat][k:]
        for k, v in values.items():
            cols[k].extend(v)
    return pa.table(cols, schema=CUSTOMER_SCHEMA)


def synthetic_merchant_gold(start: dt.date, end: dt.date, merchants: int = 60) -> pa.Table:
    rows = []
    for day in days_between(start, end):
        for m in range(1, merchants + 1):
            rows.append(
                {
                    "merchant_id": m,
                    "as_of_date": day,
                    "feature_timestamp": midnight(day + dt.timedelta(days=1)),
                    "merchant_txn_count_7d": 10 + m,
                    "merchant_txn_count_90d": 100 + m,
                    "merchant_chargeback_count_90d": m % 3,
                    "merchant_chargeback_rate_90d": (m % 3) / (100 + m),
                }
            )
    return pa.Table.from_pylist(rows, schema=MERCHANT_SCHEMA)


def synthetic_profile(day: dt.date, customers: int = 400) -> pa.Table:
    return pa.table(
        {
            "customer_id": list(range(1, customers + 1)),
            "as_of_date": [day] * customers,
            "feature_timestamp": [midnight(day + dt.timedelta(days=1))] * customers,
            "country": ["US", "GB", "DE", "FR"] * (customers // 4) + ["US"] * (customers % 4),
            "kyc_level": [i % 4 for i in range(customers)],
            "signup_date": [day - dt.timedelta(days=30 + i) for i in range(customers)],
        },
        schema=PROFILE_SCHEMA,
    )


def write_silver_transactions(rows: list[tuple[int, int, dt.datetime, dt.date]]) -> None:
    """(customer_id, merchant_id, event_time, batch_date) rows into silver/transactions."""
    n = len(rows)
    table = pa.table(
        {
            "txn_id": [f"t{i}" for i in range(n)],
            "customer_id": [r[0] for r in rows],
            "merchant_id": [r[1] for r in rows],
            "amount": [10.0] * n,
            "currency": ["USD"] * n,
            "channel": ["web"] * n,
            "event_time": [r[2] for r in rows],
            "_batch_date": [r[3] for r in rows],
        },
        schema=SILVER_TXN_SCHEMA,
    )
    days = [r[3] for r in rows]
    lake.replace(
        "silver",
        "transactions",
        table,
        predicate=lake.date_predicate("_batch_date", min(days), max(days)),
        schema=SILVER_TXN_SCHEMA,
    )


def write_ingest_files(
    records: list[tuple[dt.date, str, int, str]], ingested_at: dict[dt.date, dt.datetime] | None = None
) -> None:
    """(batch date, source, rows, status) per landed file into ops/ingest_files."""
    ingested_at = ingested_at or {}
    data = {
        "_batch_date": [r[0] for r in records],
        "source": [r[1] for r in records],
        "file": [f"landing/{r[1]}/{r[0].isoformat()}/{r[1]}.csv" for r in records],
        "status": [r[3] for r in records],
        "header": [None] * len(records),
        "rows": [r[2] for r in records],
        "bytes": [r[2] * 50 for r in records],
        "sha256": [None] * len(records),
        "encoding": ["utf-8"] * len(records),
        "message": [""] * len(records),
        "ingested_at": [
            ingested_at.get(r[0], midnight(r[0] + dt.timedelta(days=1)) + dt.timedelta(hours=2))
            for r in records
        ],
    }
    days = [r[0] for r in records]
    lake.replace(
        "ops",
        "ingest_files",
        pa.table(data, schema=INGEST_FILES_SCHEMA),
        predicate=lake.date_predicate("_batch_date", min(days), max(days)),
        schema=INGEST_FILES_SCHEMA,
    )


def validate_record(
    day: dt.date,
    source: str,
    rows_in: int,
    rows_quarantined: int,
    status: str = "succeeded",
    reasons: dict[str, int] | None = None,
    rejected_rule: str | None = None,
) -> StageRecord:
    return StageRecord(
        day,
        "validate",
        source,
        status,
        rows_in=rows_in,
        rows_out=rows_in - rows_quarantined,
        rows_quarantined=rows_quarantined,
        message="" if status == "succeeded" else f"{source} {status}",
        details={"reasons": reasons or {}, "warnings": [], "rejected_rule": rejected_rule},
    )


def write_runs(records: list[StageRecord]) -> None:
    runs.append("test-run", None, records)


# ------------------------------------------------------------------ simulator-based gold


def sim_landing(
    home: Path, start: dt.date, end: dt.date, faults: list[str] = (), scale: str = "300x600"
) -> None:
    from flows.upstream import simulate

    simulate.generate(
        home / "landing",
        start,
        end,
        simulate.parse_scale(scale),
        seed=11,
        faults=[simulate.parse_fault(f) for f in faults],
    )


def read_landing_transactions(home: Path, start: dt.date, end: dt.date) -> pa.Table:
    """Every landed transactions row, typed, first delivery of each txn_id only (no validation)."""
    parts = []
    for day in days_between(start, end):
        path = home / "landing" / "transactions" / day.isoformat() / "transactions.csv"
        tbl = pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                column_types={"txn_id": pa.string(), "amount": pa.float64(), "event_time": TS}
            ),
        )
        tbl = tbl.append_column("_batch_date", pa.array([day] * tbl.num_rows, pa.date32()))
        parts.append(tbl.select([f.name for f in SILVER_TXN_SCHEMA]).cast(SILVER_TXN_SCHEMA))
    con = duckdb.connect()
    con.register("raw", pa.concat_tables(parts))
    return con.sql(
        "SELECT * EXCLUDE (rn) FROM (SELECT *, "
        "row_number() OVER (PARTITION BY txn_id ORDER BY _batch_date) rn FROM raw) WHERE rn = 1"
    ).to_arrow_table()


def customer_gold_sql(txns: pa.Table, start: dt.date, end: dt.date) -> pa.Table:
    """contract §7 customer features for as-of days start..end."""
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("txns", txns)
    con.register("fx", pa.table({"currency": list(FX), "usd_rate": list(FX.values())}))
    tbl = con.sql(
        f"""
        WITH d AS (SELECT CAST(unnest(range(DATE '{start}', DATE '{end}' + 1, INTERVAL 1 DAY)) AS DATE) AS d),
        k AS (
          SELECT d.d, CAST(CAST(d.d + 1 AS TIMESTAMP) AS TIMESTAMPTZ) AS fts, t.customer_id, t.merchant_id,
                 t.event_time, t.amount * fx.usd_rate AS amount_usd
          FROM d JOIN txns t ON t._batch_date <= d.d
            AND t.event_time < CAST(CAST(d.d + 1 AS TIMESTAMP) AS TIMESTAMPTZ)
            AND t.event_time >= CAST(CAST(d.d + 1 - 30 AS TIMESTAMP) AS TIMESTAMPTZ)
          JOIN fx USING (currency)
        )
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
        FROM k GROUP BY customer_id, d, fts ORDER BY as_of_date, customer_id
        """
    ).to_arrow_table()
    return tbl.cast(CUSTOMER_SCHEMA)


def details(row: dict) -> dict:
    d = row.get("details") or {}
    return json.loads(d) if isinstance(d, str) else d
