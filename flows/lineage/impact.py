"""Forward lineage: what one batch (or one landing file of it) reached (docs/lineage.md section 1).

`impact(source, day, file=None)` answers "batch D of S was wrong: what consumed it?":

- partitions: the bronze, silver and quarantine rows of the batch (rows, current Delta version);
- gold: per feature table, every (entity, as-of date) row whose window held a silver row of the
  batch. By the knowledge-time rule (contract section 5) a row of batch D counts from as-of D
  (never before, whatever its event day) up to its event day + the table's widest window - 1;
- training sets: every registered one (flows.lineage.training_sets) that read the batch's rows
  directly (entity rows, labels) or read gold rows it affected, at the versions its manifest names;
- online: per view, the entities whose newest gold row, the one the online store serves, is an
  affected row, checked against the online store itself;
- the commands that recompute all of it.

Why rows, not only dates: a batch of 200 transactions touches a few hundred customers, not every
customer of 60 as-of dates; the per-row answer is what tells an online value apart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from flows.sources import get_source
from flows.storage import lake


@dataclass(frozen=True)
class GoldReader:
    """How a gold table reads a source: its entity key and its widest window in days (None: the
    row of the batch's own date only, e.g. the customer profile of the batch date)."""

    table: str
    source: str
    key: str
    window_days: int | None


# From the dbt models (dbt_project/models; contract section 7): silver merchants feed no gold table.
GOLD_READERS: tuple[GoldReader, ...] = (
    GoldReader("customer_txn_features_daily", "transactions", "customer_id", 30),
    GoldReader("merchant_features_daily", "transactions", "merchant_id", 90),
    GoldReader("merchant_features_daily", "chargebacks", "merchant_id", 90),
    GoldReader("customer_profile", "customers", "customer_id", None),
)
SOURCE_NOTES = {
    "merchants": "silver merchants feed no gold table: they are the reference data of the transactions "
    "rule unknown_merchant (batch dates from D on); re-validating those batches is the recompute",
}


class ImpactError(ValueError):
    """The question cannot be answered as asked (no such batch or file)."""


def _connect():
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    return con


def file_batch(path: str) -> tuple[str, dt.date, str]:
    """`landing/<source>/<D>/<file>` (as rows record it in `_source_file`) -> (source, D, path)."""
    from flows.dates import DateError, parse_date

    parts = path.strip().strip("/").split("/")
    if len(parts) < 4 or parts[0] != "landing":
        raise ImpactError(f"--file {path!r}: expected landing/<source>/<YYYY-MM-DD>/<file>")
    try:
        source = get_source(parts[1]).name
        day = parse_date(parts[2], "batch date")
    except (DateError, ValueError) as exc:
        raise ImpactError(f"--file {path!r}: {exc}") from None
    return source, day, "/".join(parts)


# ---------------------------------------------------------------- partitions


def _batch_filter(day: dt.date, file: str | None) -> tuple[str, list[Any]]:
    if file is None:
        return "_batch_date = ?::DATE", [day]
    return "_batch_date = ?::DATE AND _source_file = ?", [day, file]


def partition_files(layer: str, table: str, day: dt.date, version: int | None = None) -> list[str]:
    """The data files of one `_batch_date` partition at a version: equal lists = equal rows."""
    tbl = lake.table(layer, table, version)
    actions = pa.RecordBatchReader.from_stream(tbl.get_add_actions(flatten=True)).read_all()
    if "partition._batch_date" not in actions.column_names:
        return sorted(actions.column("path").to_pylist())
    out = []
    for path, value in zip(
        actions.column("path").to_pylist(), actions.column("partition._batch_date").to_pylist(), strict=True
    ):
        if value is not None and str(value) == day.isoformat():
            out.append(path)
    return sorted(out)


def _partitions(con, source: str, day: dt.date, file: str | None) -> list[dict[str, Any]]:
    out = []
    where, params = _batch_filter(day, file)
    for layer in ("bronze", "silver", "quarantine"):
        if not lake.exists(layer, source):
            out.append({"layer": layer, "table": f"{layer}/{source}", "rows": 0, "version": None})
            continue
        version = lake.version(layer, source)
        con.register("t", lake.dataset(layer, source, version=version, dates=(day, day)))
        rows = con.execute(f"SELECT count(*) FROM t WHERE {where}", params).fetchall()[0][0]
        files = [
            r[0] for r in con.execute(f"SELECT DISTINCT _source_file FROM t WHERE {where}", params).fetchall()
        ]
        reasons: dict[str, int] = {}
        if layer == "quarantine" and rows:
            for reason, n in con.execute(
                f"SELECT r, count(*) FROM (SELECT unnest(_reasons) AS r FROM t WHERE {where}) GROUP BY r",
                params,
            ).fetchall():
                reasons[reason] = n
        con.unregister("t")
        entry = {
            "layer": layer,
            "table": f"{layer}/{source}",
            "rows": rows,
            "version": version,
            "partition": f"_batch_date={day.isoformat()}",
            "files": sorted(files),
        }
        if reasons:
            entry["reasons"] = dict(sorted(reasons.items()))
        out.append(entry)
    return out


def _downstream_quarantine(con, source: str, day: dt.date, file: str | None) -> list[dict[str, Any]]:
    """Rows of later batches that validation judged against this batch and quarantined: chargebacks
    of its transactions (`unknown_transaction`) when the batch, or those rows, never reached
    silver. A recompute from the batch date re-judges them."""
    if source != "transactions" or not lake.exists("quarantine", "chargebacks"):
        return []
    where, params = _batch_filter(day, file)
    con.register("b", lake.dataset("bronze", "transactions", dates=(day, day)))
    con.register("q", lake.dataset("quarantine", "chargebacks"))
    try:
        found = con.execute(
            f"""
            SELECT _batch_date, count(*) FROM q
            WHERE _batch_date >= ?::DATE AND list_contains(_reasons, 'unknown_transaction')
              AND txn_id IN (SELECT txn_id FROM b WHERE {where})
            GROUP BY 1 ORDER BY 1
            """,
            [day, *params],
        ).fetchall()
    finally:
        con.unregister("b")
        con.unregister("q")
    return [
        {
            "table": "quarantine/chargebacks",
            "batch_date": d.isoformat(),
            "rows": n,
            "reason": "unknown_transaction",
        }
        for d, n in found
    ]


# ---------------------------------------------------------------- gold


def _batch_keys(con, reader: GoldReader, day: dt.date, file: str | None) -> pa.Table:
    """(key, last event day) of the batch's silver rows: the entity whose windows hold them and the
    last as-of date a window still covers them (event day + window - 1)."""
    where, params = _batch_filter(day, file)
    con.register("b", lake.dataset("silver", reader.source, dates=(day, day)))
    try:
        if reader.source == "transactions":
            sql = (
                f"SELECT {reader.key} AS k, max(event_time)::DATE AS last_event "
                f"FROM b WHERE {where} GROUP BY 1"
            )
        elif reader.source == "chargebacks":
            # a chargeback counts at its transaction's merchant while the transaction is in the window
            con.register("tx", lake.dataset("silver", "transactions"))
            sql = (
                "SELECT tx.merchant_id AS k, max(tx.event_time)::DATE AS last_event "
                f"FROM (SELECT txn_id FROM b WHERE {where}) c JOIN tx USING (txn_id) GROUP BY 1"
            )
        else:  # customers: the profile of the batch date
            sql = f"SELECT {reader.key} AS k, ?::DATE AS last_event FROM b WHERE {where} GROUP BY 1"
            params = [day, *params]
        return con.sql(sql, params=params).to_arrow_table()
    finally:
        for name in ("b", "tx"):
            with contextlib.suppress(Exception):  # "tx" is registered for chargebacks only
                con.unregister(name)


def _affected_rows(
    con, reader: GoldReader, day: dt.date, keys: pa.Table, version: int | None = None
) -> pa.Table:
    """(key, as_of_date) of the gold rows the batch's rows reached, at a version of the table."""
    con.register("keys", keys)
    con.register("g", lake.dataset("gold", reader.table, version=version))
    span = (
        "g.as_of_date = ?::DATE"
        if reader.window_days is None
        else (f"g.as_of_date >= ?::DATE AND g.as_of_date <= keys.last_event + {int(reader.window_days) - 1}")
    )
    try:
        sql = f"SELECT g.{reader.key} AS k, g.as_of_date FROM g JOIN keys ON g.{reader.key} = keys.k"
        return con.sql(f"{sql} WHERE {span}", params=[day]).to_arrow_table()
    finally:
        con.unregister("keys")
        con.unregister("g")


def _gold(
    con, source: str, day: dt.date, file: str | None
) -> tuple[list[dict[str, Any]], dict[str, pa.Table]]:
    out: list[dict[str, Any]] = []
    affected: dict[str, list[pa.Table]] = {}
    for reader in GOLD_READERS:
        if reader.source != source:
            continue
        entry: dict[str, Any] = {
            "table": f"gold/{reader.table}",
            "via": f"silver/{source}",
            "key": reader.key,
            "window_days": reader.window_days,
        }
        if not lake.exists("gold", reader.table) or not lake.exists("silver", source):
            out.append({**entry, "rows": 0, "entities": 0, "as_of_dates": []})
            continue
        keys = _batch_keys(con, reader, day, file)
        rows = _affected_rows(con, reader, day, keys)
        affected.setdefault(reader.table, []).append(rows)
        con.register("a", rows)
        per_date = con.execute("SELECT as_of_date, count(*) FROM a GROUP BY 1 ORDER BY 1").fetchall()
        con.unregister("a")
        entry.update(
            {
                "version": lake.version("gold", reader.table),
                "rows": rows.num_rows,
                "entities": len(set(rows.column("k").to_pylist())),
                "batch_entities": keys.num_rows,
                "as_of_dates": [d.isoformat() for d, _ in per_date],
                "rows_per_date": {d.isoformat(): n for d, n in per_date},
            }
        )
        if reader.window_days is not None and keys.num_rows:
            last = max(keys.column("last_event").to_pylist())
            entry["rule"] = (
                f"as of {day} (the batch date) to the last event day + {reader.window_days - 1} "
                f"({last + dt.timedelta(days=reader.window_days - 1)})"
            )
        elif reader.window_days is None:
            entry["rule"] = f"the profile rows of as-of {day}; later dates read them through the view's ttl"
        out.append(entry)
    merged = {
        t: pa.concat_tables(parts).group_by(["k", "as_of_date"]).aggregate([])
        for t, parts in affected.items()
    }
    return out, merged


# ---------------------------------------------------------------- online


def _online(con, affected: dict[str, pa.Table], check_store: bool) -> list[dict[str, Any]]:
    """Per view: entities whose newest gold row (what materialization put online) is affected, and
    how many of them the online store serves with exactly that row's timestamp."""
    from flows.transform.stage import GOLD_TABLES

    keys = {r.table: r.key for r in GOLD_READERS}
    out = []
    for table, rows in sorted(affected.items()):
        if table not in GOLD_TABLES or rows.num_rows == 0:
            continue
        key = keys[table]
        con.register("a", rows)
        con.register("g", lake.dataset("gold", table))
        newest = con.execute(
            f"""
            SELECT n.k, n.as_of_date
            FROM (SELECT {key} AS k, max(as_of_date) AS as_of_date FROM g GROUP BY 1) n
            JOIN a USING (k, as_of_date) ORDER BY 1
            """
        ).fetchall()
        con.unregister("a")
        con.unregister("g")
        entry: dict[str, Any] = {"view": table, "key": key, "entities_newest_row_affected": len(newest)}
        if check_store and newest:
            entry.update(_online_check(table, key, newest))
        out.append(entry)
    return out


def _online_check(view: str, key: str, newest: list[tuple[Any, dt.date]]) -> dict[str, Any]:
    """Read the online store for those entities: served = its event timestamp is the affected
    row's feature_timestamp (as-of + 1 day)."""
    from flows.dates import feature_timestamp

    try:
        from flows.features import featurestore

        store = featurestore.get_store()
        feature = store.get_feature_view(view).features[0].name
        resp = store.get_online_features(
            features=[f"{view}:{feature}"], entity_rows=[{key: int(k)} for k, _ in newest]
        ).to_dict(include_event_timestamps=True)
    except Exception as exc:  # the answer from gold stands; say why the store was not read
        return {"online_store": "not read", "online_error": f"{type(exc).__name__}: {exc}"[:300]}
    stamps = resp.get(f"{feature}__ts") or resp.get("event_timestamp") or []
    served: list[Any] = []
    for (entity, as_of), ts in zip(newest, stamps, strict=False):
        if ts is None:
            continue
        if isinstance(ts, int | float):  # Feast returns epoch seconds
            ts = dt.datetime.fromtimestamp(ts, dt.UTC)
        elif isinstance(ts, dt.datetime) and ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.UTC)
        if ts == feature_timestamp(as_of):
            served.append(entity)
    return {
        "online_store": featurestore.online_store_kind(),
        "entities_served_affected": len(served),
        "served_entities": served,
    }


# ---------------------------------------------------------------- training sets


def _training_sets(
    con, source: str, day: dt.date, file: str | None, affected: dict[str, pa.Table]
) -> list[dict[str, Any]]:
    from flows.lineage import training_sets

    current_files = partition_files("silver", source, day) if lake.exists("silver", source) else []
    out = []
    for entry in training_sets.registered():
        reasons: list[str] = []
        direct = [
            f
            for f in entry["landing_files"]
            if f.get("source") == source
            and f.get("batch_date") == day.isoformat()
            and (file is None or f.get("file") == file)
        ]
        for f in direct:
            what = "entity rows" if source == "transactions" else "labels"
            reasons.append(f"{what} from {f['file']} ({f['rows_used']} rows)")
        read_current = None
        silver_version = entry["tables"].get(f"silver/{source}")
        if direct and silver_version is not None:
            read_current = partition_files("silver", source, day, silver_version) == current_files
        joined: dict[str, int] = {}
        first_event_day = entry["start"]
        last_as_of = entry["end"] - dt.timedelta(days=1)
        for table, rows in sorted(affected.items()):
            version = entry["tables"].get(f"gold/{table}")
            if version is None or rows.num_rows == 0:
                continue
            reader = next(r for r in GOLD_READERS if r.table == table)
            lo = None if reader.window_days is None else first_event_day - dt.timedelta(days=1)
            dates = sorted(
                {
                    d
                    for d in rows.column("as_of_date").to_pylist()
                    if d <= last_as_of and (lo is None or d >= lo)
                }
            )
            if not dates:
                continue
            if reader.window_days is None:
                held = _rows_at_version(con, reader, day, rows, version, lo, last_as_of)
                what = f"{held} affected profile rows as of {dates[0]}..{dates[-1]}"
            else:
                held = _joined_rows(con, reader, rows, entry, version)
                joined[table] = held
                what = f"{held} of its rows joined affected rows (as of {dates[0]}..{dates[-1]})"
            if held:
                reasons.append(f"features of gold/{table} version {version}: {what}")
        if reasons:
            out.append(
                {
                    "path": entry["path"],
                    "manifest": entry["manifest"],
                    "kind": entry["kind"],
                    "service": entry["service"],
                    "start": entry["start"].isoformat(),
                    "end": entry["end"].isoformat(),
                    "registered_at": entry["registered_at"].isoformat(timespec="seconds"),
                    "tables": entry["tables"],
                    "reasons": reasons,
                    "rows_joined_affected": joined,
                    "read_current_batch": read_current,
                    "rebuild": training_sets.rebuild_command(entry),
                }
            )
    return out


def _joined_rows(con, reader: GoldReader, rows: pa.Table, entry: dict[str, Any], version: int) -> int:
    """How many rows of a training set took their features from affected rows: its entity rows
    (silver transactions at the version it read, first delivery, events in its range) join the
    daily row of the day before their event (the views' ttl is one day), when the gold version it
    read holds that row."""
    from flows.dates import day_start_utc

    silver = entry["tables"].get("silver/transactions")
    if silver is None:
        return 0
    lo, hi = day_start_utc(entry["start"]), day_start_utc(entry["end"] + dt.timedelta(days=1))
    con.register("a", rows)
    con.register("g", lake.dataset("gold", reader.table, version=version))
    con.register("t", lake.dataset("silver", "transactions", version=silver))
    try:
        return con.execute(
            f"""
            WITH e AS (
                SELECT {reader.key} AS k, event_time::DATE - 1 AS as_of FROM t
                WHERE event_time >= ? AND event_time < ?
                QUALIFY row_number() OVER (PARTITION BY txn_id ORDER BY _batch_date, _row_number) = 1
            )
            SELECT count(*) FROM e
            JOIN a ON a.k = e.k AND a.as_of_date = e.as_of
            JOIN g ON g.{reader.key} = e.k AND g.as_of_date = e.as_of
            """,
            [lo, hi],
        ).fetchall()[0][0]
    finally:
        for name in ("a", "g", "t"):
            con.unregister(name)


def _rows_at_version(
    con, reader: GoldReader, day: dt.date, rows: pa.Table, version: int, lo: dt.date | None, hi: dt.date
) -> int:
    """How many affected (key, as-of) rows the table held at `version` within [lo, hi]."""
    con.register("a", rows)
    con.register("g", lake.dataset("gold", reader.table, version=version))
    try:
        bounds = "a.as_of_date <= ?::DATE" + ("" if lo is None else " AND a.as_of_date >= ?::DATE")
        params = [hi] if lo is None else [hi, lo]
        join = f"a JOIN g ON g.{reader.key} = a.k AND g.as_of_date = a.as_of_date"
        return con.execute(f"SELECT count(*) FROM {join} WHERE {bounds}", params).fetchall()[0][0]
    finally:
        con.unregister("a")
        con.unregister("g")


# ---------------------------------------------------------------- the report


def _newest_gold_date() -> dt.date | None:
    """The newest as-of date computed (a recompute goes no further)."""
    if not lake.exists("gold", "customer_txn_features_daily"):
        return None
    days = lake.partition_rows("gold", "customer_txn_features_daily", column="as_of_date")
    return max(days) if days else None


def impact(source: str, day: dt.date, file: str | None = None, online: bool = True) -> dict[str, Any]:
    """Everything batch `day` of `source` (or one landing file of it) reached; see the module doc."""
    source = get_source(source).name
    con = _connect()
    try:
        partitions = _partitions(con, source, day, file)
        downstream = _downstream_quarantine(con, source, day, file)
        if not any(p["rows"] for p in partitions):
            what = file if file is not None else f"batch {day} of {source}"
            raise ImpactError(f"no row of bronze, silver or quarantine comes from {what} (not ingested?)")
        gold, affected = _gold(con, source, day, file)
        trainings = _training_sets(con, source, day, file, affected)
        online_views = _online(con, affected, check_store=online)
    finally:
        con.close()
    last = max(
        [
            day.isoformat(),
            *(d for g in gold for d in g.get("as_of_dates", [])),
            *(q["batch_date"] for q in downstream),
        ]
    )
    newest = _newest_gold_date()
    silver_rows = next(p["rows"] for p in partitions if p["layer"] == "silver")
    windows = [r.window_days for r in GOLD_READERS if r.source == source and r.window_days]
    if newest is not None and source == "merchants":
        last = max(last, newest.isoformat())  # reference data of every later transactions batch
    elif newest is not None and not silver_rows and windows:
        # nothing reached gold yet: once corrected, the rows reach the dates their windows cover
        last = max(last, min(newest, day + dt.timedelta(days=max(windows) - 1)).isoformat())
    backfill = f"asof backfill --start {day.isoformat()} --end {last} --force"
    notes = []
    if source in SOURCE_NOTES:
        notes.append(SOURCE_NOTES[source])
    quarantined = next(p["rows"] for p in partitions if p["layer"] == "quarantine")
    if not silver_rows and quarantined:
        notes.append(
            "no row of the batch reached silver (it is quarantined or rejected): no feature read it; "
            "a corrected re-delivery or a release changes the as-of dates from the batch date on"
        )
    return {
        "batch": {"source": source, "date": day.isoformat(), "file": file},
        "partitions": partitions,
        "downstream_quarantine": downstream,
        "gold": gold,
        "training_sets": trainings,
        "online": online_views if online else [{"skipped": "--no-online"}],
        "recompute": {
            "backfill": backfill,
            "why": "re-ingests and re-validates the batch, recomputes every affected as-of date and "
            "re-materializes the online store",
            "training_sets": [t["rebuild"] for t in trainings],
        },
        "notes": notes,
    }


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)
