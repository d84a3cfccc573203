"""Backward lineage: from a training-set row or a gold row to the landing files and row numbers
that produced it, through every layer (docs/lineage.md section 2).

- `trace_transaction(txn_id, manifest=None)`: the training row of a transaction: its entity row
  (silver transactions, first delivery) and label (silver chargebacks up to the label cutoff), and
  the gold rows its features were joined from, each traced in turn. With a manifest, every table
  is read at the Delta version the training set read.
- `trace_gold(table, entity, as_of)`: the silver rows a gold row aggregates, by the same windows
  and knowledge-time rule as the dbt models (contract sections 5 and 7).

Every silver row is followed to its bronze row (same `_source_file`, `_row_number`) and so to its
landing file and record number; copies of the same key that validation quarantined are listed too,
so a "why was this delivery not used" has its answer next to the one that was.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from flows.dates import day_start_utc, feature_timestamp
from flows.storage import lake

# gold table -> (entity key, source tables, widest window in days; None = latest record <= D)
GOLD_TABLES: dict[str, tuple[str, int | None]] = {
    "customer_txn_features_daily": ("customer_id", 30),
    "merchant_features_daily": ("merchant_id", 90),
    "customer_profile": ("customer_id", None),
}
ROW_LIMIT = 20  # contributing rows printed per step (--json lists them all)


class TraceError(ValueError):
    """Nothing to trace: no such row."""


def _connect():
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    return con


def _rows(con, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _landing(row: dict[str, Any]) -> dict[str, Any]:
    """Where a row came from: its landing file and record number, and whether the file is still
    there (a replaced re-delivery is not)."""
    from flows.config import settings

    path = settings().home / str(row["_source_file"])
    return {
        "file": row["_source_file"],
        "record": row["_row_number"],
        "batch_date": _plain(row["_batch_date"]),
        "file_present": path.is_file(),
    }


def _register(con, name: str, layer: str, table: str, versions: dict[str, int]) -> bool:
    if not lake.exists(layer, table):
        return False
    con.register(name, lake.dataset(layer, table, version=versions.get(f"{layer}/{table}")))
    return True


def _with_bronze(con, layer_rows: list[dict[str, Any]], source: str, versions: dict[str, int]) -> list[dict]:
    """Mark each silver row found in bronze (same file, record and batch): the row as delivered."""
    if not layer_rows or not _register(con, "bronze_t", "bronze", source, versions):
        return layer_rows
    import pyarrow as pa

    ids = pa.table(
        {
            "f": pa.array([r["_source_file"] for r in layer_rows], pa.string()),
            "n": pa.array([r["_row_number"] for r in layer_rows], pa.int64()),
        }
    )
    con.register("ids_t", ids)
    found = set(
        con.execute(
            "SELECT _source_file, _row_number FROM bronze_t "
            "JOIN ids_t ON _source_file = f AND _row_number = n"
        ).fetchall()
    )
    con.unregister("ids_t")
    con.unregister("bronze_t")
    for row in layer_rows:
        row["bronze"] = (row["_source_file"], row["_row_number"]) in found
    return layer_rows


def _step(layer: str, table: str, rows: list[dict[str, Any]], what: str) -> dict:
    return {
        "layer": layer,
        "table": f"{layer}/{table}",
        "what": what,
        "rows": len(rows),
        "listed": [
            {
                **{k: _plain(v) for k, v in r.items() if not k.startswith("_") and k != "bronze"},
                "landing": _landing(r),
                "in_bronze": r.get("bronze"),
            }
            for r in rows
        ],
    }


def _quarantined_copies(con, source: str, key: str, value: Any, versions: dict[str, int]) -> dict | None:
    if not _register(con, "q", "quarantine", source, versions):
        return None
    rows = _rows(
        con,
        f"SELECT {key}, _reasons, _batch_date, _source_file, _row_number FROM q WHERE {key} = ? "
        "ORDER BY _batch_date, _source_file, _row_number",
        [str(value)],
    )
    con.unregister("q")
    if not rows:
        return None
    step = _step("quarantine", source, rows, f"deliveries of {key} {value} that validation quarantined")
    for item, row in zip(step["listed"], rows, strict=True):
        item["reasons"] = list(row["_reasons"] or [])
    return step


# ---------------------------------------------------------------- gold rows


def trace_gold(
    table: str, entity: int, as_of: dt.date, versions: dict[str, int] | None = None
) -> dict[str, Any]:
    """The gold row (`table`, entity, as-of date) and the silver rows it aggregates."""
    if table not in GOLD_TABLES:
        raise TraceError(f"unknown gold table {table!r} (known: {', '.join(GOLD_TABLES)})")
    versions = versions or {}
    key, window = GOLD_TABLES[table]
    con = _connect()
    try:
        if not _register(con, "g", "gold", table, versions):
            raise TraceError(f"gold/{table} does not exist yet")
        gold = _rows(con, f"SELECT * FROM g WHERE {key} = ? AND as_of_date = ?::DATE", [entity, as_of])
        con.unregister("g")
        if not gold:
            raise TraceError(f"gold/{table} has no row for {key} {entity} as of {as_of}")
        steps: list[dict[str, Any]] = []
        hi = day_start_utc(as_of + dt.timedelta(days=1))
        if window is not None:
            lo = day_start_utc(as_of - dt.timedelta(days=window - 1))
            _register(con, "t", "silver", "transactions", versions)
            txns = _rows(
                con,
                f"""
                SELECT txn_id, customer_id, merchant_id, amount, currency, event_time,
                       _batch_date, _source_file, _row_number
                FROM t WHERE {key} = ? AND _batch_date <= ?::DATE AND event_time >= ? AND event_time < ?
                ORDER BY event_time, txn_id
                """,
                [entity, as_of, lo, hi],
            )
            txns = _with_bronze(con, txns, "transactions", versions)
            what = (
                f"transactions of {key} {entity} known as of {as_of} (batch <= {as_of}) with event time in "
                f"the {window}-day window [{lo.date()}, {hi.date()})"
            )
            steps.append(_step("silver", "transactions", txns, what))
            if (
                table == "merchant_features_daily"
                and txns
                and _register(con, "c", "silver", "chargebacks", versions)
            ):
                con.register("ids", _id_table([t["txn_id"] for t in txns]))
                cbs = _rows(
                    con,
                    "SELECT txn_id, chargeback_time, reason_code, _batch_date, _source_file, _row_number "
                    "FROM c JOIN ids USING (txn_id) WHERE _batch_date <= ?::DATE ORDER BY txn_id",
                    [as_of],
                )
                con.unregister("ids")
                cbs = _with_bronze(con, cbs, "chargebacks", versions)
                steps.append(
                    _step("silver", "chargebacks", cbs, f"chargebacks of those transactions known by {as_of}")
                )
        else:
            _register(con, "cu", "silver", "customers", versions)
            recs = _rows(
                con,
                """
                SELECT customer_id, op, updated_at, country, kyc_level, signup_date,
                       _batch_date, _source_file, _row_number
                FROM cu WHERE customer_id = ? AND _batch_date <= ?::DATE
                ORDER BY updated_at DESC, _batch_date DESC, _row_number DESC
                """,
                [entity, as_of],
            )
            recs = _with_bronze(con, recs[:1], "customers", versions)
            steps.append(
                _step(
                    "silver", "customers", recs, f"the CDC record with the latest updated_at known by {as_of}"
                )
            )
    finally:
        con.close()
    return {
        "target": {"table": f"gold/{table}", key: entity, "as_of_date": as_of.isoformat()},
        "row": {k: _plain(v) for k, v in gold[0].items()},
        "version": versions.get(f"gold/{table}"),
        "steps": steps,
    }


def _id_table(ids: list[str]):
    import pyarrow as pa

    return pa.table({"txn_id": pa.array(ids, pa.string())})


# ---------------------------------------------------------------- training rows


def manifest_versions(manifest: Path) -> tuple[dict[str, int], dict[str, Any]]:
    try:
        data = json.loads(Path(manifest).read_text())
    except (OSError, ValueError) as exc:
        raise TraceError(f"cannot read manifest {manifest}: {exc}") from None
    if data.get("kind") != "asof.training_set":
        raise TraceError(f"{manifest} is not an asof training-set manifest")
    return {k: int(v["version"]) for k, v in data["tables"].items()}, data


def trace_transaction(txn_id: str, manifest: Path | None = None) -> dict[str, Any]:
    """The training row of `txn_id`: entity row, label and feature rows, each back to landing."""
    versions: dict[str, int] = {}
    params: dict[str, Any] = {}
    views: list[str] = list(GOLD_TABLES)
    if manifest is not None:
        versions, data = manifest_versions(manifest)
        params = data["parameters"]
        views = [k.split("/", 1)[1] for k in versions if k.startswith("gold/")]
    con = _connect()
    try:
        if not _register(con, "t", "silver", "transactions", versions):
            raise TraceError("silver/transactions does not exist yet")
        txns = _rows(
            con,
            "SELECT txn_id, customer_id, merchant_id, amount, currency, channel, event_time, "
            "_batch_date, _source_file, _row_number FROM t WHERE txn_id = ? "
            "ORDER BY _batch_date, _source_file, _row_number",
            [txn_id],
        )
        if not txns:
            raise TraceError(
                f"no silver transaction {txn_id!r}" + (" at the manifest's version" if versions else "")
            )
        entity = _with_bronze(con, txns[:1], "transactions", versions)
        steps = [_step("silver", "transactions", entity, "the entity row (first accepted delivery)")]
        copies = _quarantined_copies(con, "transactions", "txn_id", txn_id, versions)
        if copies:
            steps.append(copies)
        cutoff = params.get("label_cutoff")
        if _register(con, "c", "silver", "chargebacks", versions):
            where = "txn_id = ?" + (" AND _batch_date <= ?::DATE" if cutoff else "")
            cbs = _rows(
                con,
                "SELECT txn_id, chargeback_time, reason_code, _batch_date, _source_file, _row_number "
                f"FROM c WHERE {where} ORDER BY _batch_date, _row_number",
                [txn_id, cutoff] if cutoff else [txn_id],
            )
            cbs = _with_bronze(con, cbs[:1], "chargebacks", versions)
            label = "is_fraud = true: the chargeback" if cbs else "is_fraud = false: no chargeback"
            steps.append(
                _step("silver", "chargebacks", cbs, label + (f" known by {cutoff}" if cutoff else ""))
            )
    finally:
        con.close()
    row = entity[0]
    event_day = row["event_time"].astimezone(dt.UTC).date()
    features = []
    for view in views:
        key, window = GOLD_TABLES[view]
        as_of = event_day - dt.timedelta(days=1)  # the newest row published by the event time
        if window is None:
            as_of = _latest_profile_date(row[key], as_of, versions)
            if as_of is None:
                features.append({"table": f"gold/{view}", "none": "no profile known before the event"})
                continue
        try:
            features.append(trace_gold(view, int(row[key]), as_of, versions))
        except TraceError as exc:
            features.append({"table": f"gold/{view}", "none": str(exc)})
    return {
        "target": {
            "txn_id": txn_id,
            "event_time": row["event_time"].isoformat(),
            "manifest": str(manifest or ""),
        },
        "feature_timestamp_used": feature_timestamp(event_day - dt.timedelta(days=1)).isoformat(),
        "versions": versions or "current",
        "steps": steps,
        "features": features,
    }


def _latest_profile_date(customer: int, as_of: dt.date, versions: dict[str, int]) -> dt.date | None:
    con = _connect()
    try:
        if not _register(con, "p", "gold", "customer_profile", versions):
            return None
        got = con.execute(
            "SELECT max(as_of_date) FROM p WHERE customer_id = ? AND as_of_date <= ?::DATE", [customer, as_of]
        ).fetchall()[0][0]
    finally:
        con.close()
    return got
