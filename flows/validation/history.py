"""What the lake already says about earlier batches: the reads validation needs beyond the dates it
judges, each done once for all the dates validated together.

Every read is bounded by the dates it may see, so a date's verdict depends only on batches that were
known by that date: the silver rows of earlier batch dates (first delivery wins, reference lookups),
the landed counts of the previous batches (volume) and the recorded medians of earlier accepted
batches (drift). Dates being validated now are never read here: their new verdicts are in memory
(flows.validation.stage), and their old partitions are about to be replaced.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.sources import Source, bronze_schema
from flows.storage import key_index, lake

if TYPE_CHECKING:
    import pyarrow.dataset as ds

Dates = tuple[dt.date | None, dt.date]  # the `_batch_date` partitions a read needs (first None: all up to)
ORDER = [("_batch_date", "ascending"), ("_source_file", "ascending"), ("_row_number", "ascending")]


def dataset(layer: str, name: str, dates: Dates | None = None) -> ds.Dataset | None:
    """The table's Arrow dataset (only the files of `dates`), or None if the table does not exist
    (one Delta log replay, where `lake.exists` + `lake.read` cost two)."""
    try:
        return lake.dataset(layer, name, dates=dates)
    except lake.LakeError:
        return None


def scan(
    layer: str, name: str, filter: ds.Expression | None, columns: list[str], dates: Dates | None = None
) -> pa.Table | None:
    dset = dataset(layer, name, dates)
    return None if dset is None else dset.to_table(filter=filter, columns=columns)


def batch_field() -> ds.Expression:
    import pyarrow.dataset as ds

    return ds.field("_batch_date")


def _day(value: dt.date) -> pa.Scalar:
    return pa.scalar(value, pa.date32())


def between(start: dt.date | None, before: dt.date) -> ds.Expression:
    """`_batch_date` in [start, before) (start None: everything before)."""
    upper = batch_field() < _day(before)
    return upper if start is None else upper & (batch_field() >= _day(start))


def ordered(tbl: pa.Table) -> pa.Table:
    """Delivery order: batch date, then file, then row number (exactly the stable sort).

    A scan returns a table's files in no particular order, each of them in delivery order (ingest
    writes them so): the rows are cut into runs of consecutive row numbers of one landed file,
    which are put in order as zero-copy slices when no two runs interleave. The sort (a string
    key, then a take of every column: ~1.2 s per 3M rows) is left for anything else. The result
    has one chunk per column, as the sort's has: pyarrow's take over many chunks (GE's row filters
    on Arrow-backed frames) cost 20 s per 30 bench days with the scan's ~36 chunks."""
    if tbl.num_rows < 2:
        return tbl
    if any(tbl.column(c).null_count for c, _ in ORDER):
        return tbl.sort_by(ORDER)  # bronze has none; the sort decides where nulls go
    keys = _order_keys(tbl)
    if _ascending(keys, strict=False).all():
        return tbl.combine_chunks()
    days, files, lines = keys
    # runs: the rows of one file numbered one after the other (a written file's rows, or several)
    follows = (days[1:] == days[:-1]) & (files[1:] == files[:-1]) & (lines[1:] == lines[:-1] + 1)
    starts = np.flatnonzero(np.concatenate([[True], ~follows]))
    if len(starts) > MAX_RUNS:
        return tbl.sort_by(ORDER)
    ends = np.append(starts[1:], tbl.num_rows)
    runs = np.lexsort((lines[starts], files[starts], days[starts]))
    # runs in order must not interleave: each one's last key strictly before the next one's first
    last, first = ends[runs[:-1]] - 1, starts[runs[1:]]
    joined = tuple((k[last], k[first]) for k in keys)
    if not _ascending_pairs(joined, strict=True).all():
        return tbl.sort_by(ORDER)
    return pa.concat_tables([tbl.slice(starts[r], ends[r] - starts[r]) for r in runs]).combine_chunks()


MAX_RUNS = 65_536  # ascending runs put in order by slices; more: sort


def _order_keys(tbl: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(batch day, rank of the file name in sort order, row number) per row, as integers."""
    days = tbl.column("_batch_date").cast(pa.int32()).to_numpy(zero_copy_only=False)
    files = pc.dictionary_encode(tbl.column("_source_file").combine_chunks())
    rank = np.empty(len(files.dictionary), dtype=np.int64)
    rank[pc.array_sort_indices(files.dictionary).to_numpy()] = np.arange(len(files.dictionary))
    file_rank = rank[files.indices.to_numpy(zero_copy_only=False)]
    lines = tbl.column("_row_number").to_numpy(zero_copy_only=False)
    return days, file_rank, lines


def _ascending(keys: tuple[np.ndarray, ...], strict: bool) -> np.ndarray:
    """Per pair of neighbouring rows: the second's key is after the first's (or equal, not strict)."""
    return _ascending_pairs(tuple((k[:-1], k[1:]) for k in keys), strict)


def _ascending_pairs(pairs: tuple[tuple[np.ndarray, np.ndarray], ...], strict: bool) -> np.ndarray:
    """Per (a, b) position: key b after key a, comparing the keys' parts in order."""
    (a, b), rest = pairs[0], pairs[1:]
    if not rest:
        return b > a if strict else b >= a
    return (b > a) | ((b == a) & _ascending_pairs(rest, strict))


# ---------------------------------------------------------------------------------- this batch


def bronze_rows(source: Source, days: Sequence[dt.date]) -> pa.Table:
    """Bronze rows of `days`, in delivery order."""
    schema = bronze_schema(source)
    tbl = scan(
        "bronze", source.name, lake.date_filter("_batch_date", days), schema.names, (min(days), max(days))
    )
    if tbl is None:
        tbl = schema.empty_table()
    return ordered(tbl.select(schema.names).cast(schema))


@dataclass
class Delivery:
    """What ingest recorded about the files of one (source, date)."""

    delivered: bool
    header: list[str]  # columns seen in the delivered file(s)
    malformed: list[str]  # messages of malformed files
    message: str = ""


def file_records(source: Source, days: Sequence[dt.date]) -> dict[dt.date, list[dict]]:
    """Ingest's outcome per landed file (`ops/ingest_files`, see flows.ingest.stage), header decoded."""
    import pyarrow.dataset as ds

    flt = lake.date_filter("_batch_date", days) & (ds.field("source") == source.name)
    cols = ["_batch_date", "file", "status", "header", "message"]
    tbl = scan("ops", "ingest_files", flt, cols, (min(days), max(days)))
    out: dict[dt.date, list[dict]] = {d: [] for d in days}
    for r in tbl.to_pylist() if tbl is not None else []:
        r["header"] = json.loads(r["header"]) if r["header"] else None
        out[r.pop("_batch_date")].append(r)
    return out


def extra_keys(rows: pa.Table) -> list[str]:
    keys: dict[str, None] = {}
    extra = pc.drop_null(rows.column("_extra")).to_pylist()
    for text in extra[:1000]:
        try:
            for k in json.loads(text):
                keys.setdefault(k, None)
        except (ValueError, TypeError):
            continue
    return list(keys)


def delivery_info(source: Source, day: dt.date, rows: pa.Table, records: list[dict]) -> Delivery:
    """Delivered or not, the file header(s) and malformed files of one batch, from its ingest records
    (`rows`: its bronze rows, for a batch with no record)."""
    contract_cols = source.column_names
    if not records:
        if rows.num_rows == 0:
            return Delivery(False, [], [], f"not delivered: no ingest record and no bronze rows for {day}")
        return Delivery(True, contract_cols + extra_keys(rows), [])
    if all(r["status"] == "not_delivered" for r in records):
        msg = "; ".join(r["message"] or r["file"] for r in records)
        return Delivery(False, [], [], msg or f"not delivered: no file for {day}")
    if any(r["status"] == "partial" for r in records):
        # flows.ingest.stage left the date out of bronze: it is not a batch until it is complete
        msg = "; ".join(r["message"] or r["file"] for r in records if r["status"] == "partial")
        return Delivery(False, [], [], f"partial delivery, waiting: {msg}")
    malformed = [f"{r['file']}: {r['message']}" for r in records if r["status"] == "malformed"]
    headers = [r["header"] for r in records if r["status"] == "ok" and r["header"] is not None]
    if not headers:
        # e.g. an empty CDC file: nothing to judge the columns by
        return Delivery(True, contract_cols, malformed)
    in_all = set.intersection(*(set(h) for h in headers))
    seen: dict[str, None] = {}
    for h in headers:
        for c in h:
            seen.setdefault(c, None)
    header = [c for c in seen if c in in_all or c not in contract_cols]
    return Delivery(True, header, malformed)


# ------------------------------------------------------------------------------ earlier batches


def landed_counts(source: Source, start: dt.date, before: dt.date) -> dict[dt.date, int]:
    """Bronze row counts per batch date in [start, before) (dates without rows are absent)."""
    got = scan("bronze", source.name, between(start, before), ["_batch_date"], (start, before))
    if got is None or got.num_rows == 0:
        return {}
    counts = pc.value_counts(got.column("_batch_date").combine_chunks())
    return {
        d: int(n)
        for d, n in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
        if n > 0
    }


def validation_records(
    source: str, start: dt.date, before: dt.date
) -> dict[dt.date, tuple[str, float | None]]:
    """(status, silver amount_usd median) of each recorded validation of `source` in [start, before)."""
    import pyarrow.dataset as ds

    flt = between(start, before) & (ds.field("source") == source)
    rec = scan("ops", "validations", flt, ["status", "amount_usd_median", "_batch_date"], (start, before))
    if rec is None:
        return {}
    return {r["_batch_date"]: (r["status"], r["amount_usd_median"]) for r in rec.to_pylist()}


def silver_amount_median(start: dt.date, before: dt.date, fx: dict[str, float]) -> tuple[float | None, int]:
    """Median amount_usd of silver transactions in [start, before) and the batch dates it covers: the
    drift history of a lake that has no validation records (validated by something else)."""
    tbl = scan(
        "silver",
        "transactions",
        between(start, before),
        ["amount", "currency", "_batch_date"],
        (start, before),
    )
    if tbl is None or tbl.num_rows == 0:
        return None, 0
    n_days = len(pc.unique(tbl.column("_batch_date").combine_chunks()))
    rates = pa.array(list(fx.values()), pa.float64())
    idx = pc.index_in(tbl.column("currency"), value_set=pa.array(list(fx.keys()), pa.string()))
    usd = pc.multiply(tbl.column("amount"), pc.take(rates, idx)).to_numpy(zero_copy_only=False)
    usd = usd[np.isfinite(usd)]
    return (float(np.median(usd)) if usd.size else None), n_days


def known_before(table: str, key: str, values: pa.Array, before: dt.date) -> pa.Array:
    """The distinct `values` present in silver `table` (column `key`) with `_batch_date < before`."""
    dset = dataset("silver", table, (None, before - dt.timedelta(days=1)))
    if dset is None or len(values) == 0:
        return pa.array([], values.type)
    return key_index.present(dset, key, values, batch_field() < _day(before))


def first_known_on(table: str, key: str, values: pa.Array, days: Sequence[dt.date]) -> dict[object, dt.date]:
    """For each of `values` found in silver `table` among the batch dates `days`, the earliest date."""
    if not days or len(values) == 0:
        return {}
    import pyarrow.dataset as ds

    flt = lake.date_filter("_batch_date", days) & ds.field(key).isin(values)
    got = scan("silver", table, flt, [key, "_batch_date"], (min(days), max(days)))
    out: dict[object, dt.date] = {}
    if got is None:
        return out
    for v, d in zip(got.column(key).to_pylist(), got.column("_batch_date").to_pylist(), strict=True):
        if v not in out or d < out[v]:
            out[v] = d
    return out


def earlier_deliveries(
    source: Source,
    columns: list[str],
    lead: str,
    wanted: pa.Array,
    start: dt.date | None,
    before: dt.date,
    also: Sequence[dt.date] = (),
) -> pa.Table | None:
    """Silver rows of `source` with batch date in [start, before) or in `also`, whose key's lead
    column is one of `wanted`, in delivery order. Two passes: the lead column alone (cheap), then
    every column only of the batch dates that have a match (a scan filtered on a string set would
    read every column of every date); inside a range the key index picks the files instead."""
    window = between(start, before)
    if also:
        window = window | lake.date_filter("_batch_date", also)
    last = max([before - dt.timedelta(days=1), *also])
    dset = dataset("silver", source.name, (start, last))
    if dset is None or len(wanted) == 0:
        return None
    cols = [*columns, "_batch_date", "_source_file", "_row_number"]
    import pyarrow.dataset as ds

    if key_index.active():  # a range of dates: read only the files that may hold one of the keys
        part, leads = key_index.narrow(dset, lead, wanted, window)
        if len(leads) == 0:
            return None
        return ordered(part.to_table(filter=window & ds.field(lead).isin(leads), columns=cols))
    ids = dset.to_table(filter=window, columns=[lead, "_batch_date"])
    matched = ids.filter(pc.is_in(ids.column(lead), value_set=wanted))
    if matched.num_rows == 0:
        return None
    dates = pc.unique(matched.column("_batch_date").combine_chunks())
    leads = pc.unique(matched.column(lead).combine_chunks())
    return ordered(
        dset.to_table(filter=ds.field("_batch_date").isin(dates) & ds.field(lead).isin(leads), columns=cols)
    )


def earlier_leads(
    source: Source,
    key: Sequence[str],
    matches: Callable[[list[pa.ChunkedArray]], np.ndarray],
    start: dt.date | None,
    before: dt.date,
    also: Sequence[dt.date] = (),
) -> pa.Array:
    """The distinct lead key values (`key[0]`) of silver rows of `source` with batch date in
    [start, before) or in `also` whose key columns `matches` says may be one of the run's keys:
    what `earlier_deliveries` then reads whole. Read batch by batch, so a big date's keys are
    compared (as hashes, flows.validation.stage) without collecting their text."""
    window = between(start, before)
    if also:
        window = window | lake.date_filter("_batch_date", also)
    last = max([before - dt.timedelta(days=1), *also])
    dset = dataset("silver", source.name, (start, last))
    found: list[pa.Array] = []
    if dset is not None:
        for batch in dset.to_batches(columns=list(key), filter=window):
            if batch.num_rows:
                hit = matches([pa.chunked_array([batch.column(k)]) for k in key])
                if hit.any():
                    found.append(batch.column(key[0]).filter(pa.array(hit)))
    if not found:
        lead_type = dset.schema.field(key[0]).type if dset is not None else pa.string()
        return pa.array([], lead_type)
    return pc.unique(pc.drop_null(pa.concat_arrays(found)))
