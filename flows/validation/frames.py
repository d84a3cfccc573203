"""The frames Great Expectations judges: every row of the dates validated together (`<source>.rows`)
and one summary row per batch date (`<source>.batches`).

The rows frame holds the raw text of every contract column plus *helper columns* that carry facts
GE cannot compute itself: `<col>__parsed` the typed value, `<col>__unparseable` the raw text of a
value that does not parse as the contract type, `<col>__known` a reference lookup, `_delivery` the
first-delivery-wins verdict, `amount_usd`, and the per-row bounds that follow from each row's batch
date (`too_late__min`, `future_event_time__max`): one frame can then hold many batch dates.

Its index is what Data Docs lists as a failing row's "Index": the batch date as yyyymmdd followed by
the row's line number in the delivered file, in 9 digits (20240105000003488 is line 3488 of the
2024-01-05 batch), or by its position in the batch when line numbers repeat (several files).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flows.sources import Source
from flows.validation.contracts import (
    PARSE_ERROR_COL,
    Contract,
    bound_col,
    naive_col,
    parsed_col,
    unparseable_col,
)
from flows.validation.parsing import join_text, naive_text, parse_column

EPOCH = dt.date(1970, 1, 1)
US_PER_DAY = 86_400_000_000
LINE_DIGITS = 10**9


def day_code(day: dt.date) -> int:
    return (day - EPOCH).days


def code_day(code: int) -> dt.date:
    return EPOCH + dt.timedelta(days=int(code))


# Rows of the batches: a range of positions (the whole path), or positions in any order (a slice
# read back from bronze, flows.validation.streamed).
Where = slice | np.ndarray


@dataclass(frozen=True)
class PerSlice:
    """A helper column computed for the rows of one GE frame when it is built, from that frame's
    rows (`compute(part, where)`: `part` the rows of positions `where`, every row when None).

    Why: a helper held for every row of a big date (per-row time bounds, reference lookups as
    Python objects) costs 8-16 bytes a row for the whole run, when it follows from the row alone
    and a lookup computed once."""

    compute: Callable[[Batches, Where | None], Any]


@dataclass(frozen=True)
class KeyHashes:
    """Per row: a 64-bit hash of its key's text and whether the key is complete. Equal keys have
    equal hashes; equal hashes are only candidates (flows.validation.delivery confirms them on the
    rows' own values), so a collision costs a look, never a verdict."""

    hashes: np.ndarray  # uint64
    present: np.ndarray  # bool


@dataclass
class Batches:
    """One source's rows of the dates validated together, in delivery order, parsed once.

    Read slice by slice (`reread` set, flows.validation.streamed: a date too big to hold), `rows`,
    `typed` and `unparseable` hold only what every row's verdict needs at once (batch dates, row
    numbers, the key, reference and drift columns); `slices` reads the rest back from bronze."""

    source: Source
    contract: Contract
    rows: pa.Table  # bronze columns
    typed: dict[str, pa.ChunkedArray]
    unparseable: dict[str, pa.ChunkedArray]
    codes: np.ndarray  # per row: its batch date as days since 1970-01-01
    # (rows per slice, parse) -> (positions, those rows with every column), each row once
    reread: Callable[[int, bool], Iterator[tuple[np.ndarray, Batches]]] | None = None
    unparseable_days: dict[str, dict[int, int]] | None = None  # column -> day code -> count
    # Read slice by slice, computed in the pass over bronze instead of from `typed`:
    keys: KeyHashes | None = None  # the key of every row, hashed
    usd: np.ndarray | None = None  # amount_usd of every row (sources with a drift rule)
    distinct: dict[str, pa.Array] | None = None  # reference column -> its distinct typed values
    repeated_days: np.ndarray | None = None  # day codes whose line numbers repeat (row labels)

    @property
    def n(self) -> int:
        return self.rows.num_rows

    def span(self, day: dt.date) -> slice:
        """The rows of one batch date (contiguous: rows are in delivery order)."""
        c = day_code(day)
        return slice(
            int(np.searchsorted(self.codes, c, "left")), int(np.searchsorted(self.codes, c, "right"))
        )

    def row_day(self, i: int) -> dt.date:
        return code_day(self.codes[i])

    def released(self) -> Batches:
        """The same batches without their rows' values (dates and row count kept): what the outcome
        of a validation still reads once its silver and quarantine tables are built. Dropping the
        bronze, typed and unparseable columns before the Delta writes frees ~0.4 KB a row."""
        return Batches(
            self.source, self.contract, self.rows.select(["_batch_date"]), {}, {}, self.codes, self.reread
        )

    def key_hashes(self) -> KeyHashes:
        """`keys`, computed from the typed key columns when the rows are held whole."""
        if self.keys is not None:
            return self.keys
        return key_hashes([self.typed[k] for k in self.contract.key])

    def at(self, where: slice) -> Batches:
        """Rows `where` (zero-copy)."""
        lo, n = where.start, where.stop - where.start
        return Batches(
            self.source,
            self.contract,
            self.rows.slice(lo, n),
            {c: v.slice(lo, n) for c, v in self.typed.items()},
            {c: v.slice(lo, n) for c, v in self.unparseable.items()},
            self.codes[where],
        )

    def slices(self, size: int, parse: bool = True) -> Iterator[tuple[Where, Batches]]:
        """Every row once, in slices of at most `size` rows with all their columns (without typed
        columns unless `parse`): ceil(n / size) slices, one empty slice when there is no row."""
        if self.reread is not None:
            yield from self.reread(size, parse)
            return
        size = max(1, size)
        for lo in range(0, max(1, self.n), size):
            where = slice(lo, min(self.n, lo + size))
            yield where, self.at(where)

    def typed_rows(self, idx: np.ndarray, columns: list[str] | None = None) -> dict[str, pa.ChunkedArray]:
        """Typed contract columns (every one, or `columns`) of rows `idx`, in that order: a few rows
        (repeated keys, referenced values). Read slice by slice, only those rows are parsed."""
        names = columns if columns is not None else [c.name for c in self.contract.columns]
        if self.reread is None:
            arr = pa.array(idx, pa.int64())
            return {c: pc.take(self.typed[c], arr) for c in names}
        ctypes = {c.name: c.type for c in self.contract.columns}
        wanted = sorted_unique(np.asarray(idx, dtype=np.int64))
        found: list[tuple[np.ndarray, dict[str, pa.ChunkedArray]]] = []
        for where, part in self.slices(1 << 18, parse=False):
            hit = in_sorted(np.asarray(where, dtype=np.int64), wanted)
            if hit.any():
                local = pa.array(np.flatnonzero(hit), pa.int64())
                cols = {c: parse_column(pc.take(part.rows.column(c), local), ctypes[c])[0] for c in names}
                found.append((np.asarray(where)[hit], cols))
        if not found:
            return {c: pa.chunked_array([], self.typed_type(c)) for c in names}
        positions = np.concatenate([p for p, _ in found])
        chunked = {c: pa.chunked_array([ch for _, cols in found for ch in cols[c].chunks]) for c in names}
        # rows of `idx` in its order: positions are unique, so sort them and look each one up
        by_position = np.argsort(positions, kind="stable")
        want = np.asarray(idx, dtype=np.int64)
        take = by_position[np.searchsorted(positions[by_position], want)]
        arr = pa.array(take, pa.int64())
        return {c: pc.take(v, arr) for c, v in chunked.items()}

    def typed_type(self, column: str) -> pa.DataType:
        ctype = next(c.type for c in self.contract.columns if c.name == column)
        return parse_column(pa.chunked_array([], pa.string()), ctype)[0].type


# Rows from which `prepare` parses two columns at a time: Arrow's string kernels (regex, cast) run
# one chunk at a time on one core and release the GIL, so two threads parse a big batch in about
# half the time (30 bench days of transactions: 1.9 s on one thread); below this, threads cost more.
# A pool of its own per call, not the validation stage's lake threads: `prepare` runs on one of
# those, and waiting there for work queued behind it could wait forever.
PARALLEL_PARSE_ROWS = 200_000


def prepare(source: Source, contract: Contract, rows: pa.Table) -> Batches:
    """Parse every contract column once for all the dates (`rows` in delivery order)."""
    columns = contract.columns
    if rows.num_rows >= PARALLEL_PARSE_ROWS and len(columns) > 1:
        with ThreadPoolExecutor(2, thread_name_prefix="asof-parse") as pool:
            parsed = list(pool.map(lambda c: parse_column(rows.column(c.name), c.type), columns))
    else:
        parsed = [parse_column(rows.column(c.name), c.type) for c in columns]
    typed = {c.name: p[0] for c, p in zip(columns, parsed, strict=True)}
    unparseable = {c.name: p[1] for c, p in zip(columns, parsed, strict=True)}
    codes = rows.column("_batch_date").cast(pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64)
    return Batches(source, contract, rows, typed, unparseable, codes)


def in_sorted(values: np.ndarray, sorted_set: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Per value: it is in `sorted_set` (ascending), by binary search in chunks of `values` (np.isin
    sorts both arrays together: 16+ bytes a value at once for a big date)."""
    out = np.zeros(len(values), dtype=bool)
    if not len(sorted_set):
        return out
    last = len(sorted_set) - 1
    for lo in range(0, len(values), chunk):
        part = values[lo : lo + chunk]
        out[lo : lo + chunk] = sorted_set[np.minimum(np.searchsorted(sorted_set, part), last)] == part
    return out


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """The distinct values, ascending. np.unique hashes first in NumPy 2.3 (5M key hashes: 17 s
    hashing, then a sort anyway); a sort and a comparison with the neighbour is ~5x faster."""
    ordered = np.sort(values)
    if len(ordered) < 2:
        return ordered
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


_HASH_LOCK = threading.Lock()
_HASH_CON: list[Any] = []


def hash_text(values: pa.Array) -> np.ndarray:
    """DuckDB's 64-bit hash of each text value (nulls too: callers mask them). Tests replace it to
    force collisions; nothing may depend on two different keys hashing differently."""
    import duckdb

    with _HASH_LOCK:
        if not _HASH_CON:
            con = duckdb.connect()
            con.execute("SET threads TO 1")
            _HASH_CON.append(con)
        cur = _HASH_CON[0].cursor()
    try:
        cur.register("key_values", pa.table({"k": values}))
        return cur.execute("SELECT hash(k) AS h FROM key_values").fetchnumpy()["h"].astype(np.uint64)
    finally:
        cur.close()


def key_hashes(columns: list[pa.ChunkedArray]) -> KeyHashes:
    """The hashed key of every row: the key columns' text joined as first delivery wins compares
    them (flows.validation.parsing.join_text), so equal keys hash equal in both paths."""
    text = join_text(columns, None)
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks() if text.num_chunks != 1 else text.chunk(0)
    present = pc.is_valid(text).to_numpy(zero_copy_only=False)
    hashes = hash_text(text) if len(text) else np.zeros(0, np.uint64)
    return KeyHashes(hashes, present)


def usd_of(amount: pa.ChunkedArray, currency: pa.ChunkedArray, fx: dict[str, float]) -> np.ndarray:
    """amount * the currency's USD rate, per row (NaN where either is missing or unknown)."""
    values = amount.to_numpy().astype(float, copy=False)
    rate = currency.to_pandas().map(fx).to_numpy(dtype=float, na_value=np.nan)
    return values * rate


def amount_usd(b: Batches, fx: dict[str, float]) -> np.ndarray:
    if b.usd is not None:  # computed as bronze was read (a date read slice by slice)
        return b.usd
    return usd_of(b.typed["amount"], b.typed["currency"], fx)


def _midnights(codes: np.ndarray, offset_days: int) -> pd.Series:
    us = (codes.astype(np.int64) + offset_days) * US_PER_DAY
    return pa.array(us, pa.int64()).cast(pa.timestamp("us", tz="UTC")).to_pandas()


def row_bounds(b: Batches) -> dict[str, pd.Series]:
    """The bounds of the time rules, per row, from its batch date D: `not_before_batch` rules start
    at 00:00 UTC of D minus their days, `before_next_day` rules end (exclusive) at 00:00 of D+1."""
    out: dict[str, pd.Series] = {}
    for rule in b.contract.rules_of("not_before_batch"):
        out[bound_col(rule["id"], "min")] = _midnights(b.codes, -int(rule["days"]))
    for rule in b.contract.rules_of("before_next_day"):
        out[bound_col(rule["id"], "max")] = _midnights(b.codes, 1)
    return out


def row_labels(b: Batches) -> pd.Index:
    """yyyymmdd * 10^9 + line number (or position in the batch when line numbers repeat)."""
    if b.n == 0:
        return pd.RangeIndex(0)
    lines = b.rows.column("_row_number").to_numpy(zero_copy_only=False).astype(np.int64)
    repeated_days = repeated_line_days(np.asarray(b.codes), lines)
    return _labels(b.codes, lines, np.arange(b.n, dtype=np.int64), b.codes, repeated_days)


def repeated_line_days(codes: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """The day codes where a (day, line number) pair occurs more than once. Rows come in delivery
    order, a day's rows together, so a day whose line numbers rise row after row (one landed file,
    the usual case) repeats none: one comparison a row, and a sort only of the days where they do
    not rise (pandas' `duplicated` over both columns hashed every pair: ~1 s per 3M rows)."""
    if codes.size > 1 and not (codes[1:] >= codes[:-1]).all():  # not grouped by day: count them all
        dup = pd.DataFrame({"c": codes, "l": lines}).duplicated(keep=False).to_numpy()
        return np.unique(codes[dup])
    falls = (codes[1:] == codes[:-1]) & (lines[1:] <= lines[:-1])
    repeated = []
    for code in np.unique(codes[1:][falls]):
        lo, hi = np.searchsorted(codes, code, "left"), np.searchsorted(codes, code, "right")
        day = np.sort(lines[lo:hi])
        if (day[1:] == day[:-1]).any():
            repeated.append(code)
    return np.array(repeated, dtype=codes.dtype)


def slice_labels(b: Batches, where: np.ndarray, part: Batches) -> pd.Index:
    """`row_labels(b)[where]` for the rows `part` of a date read slice by slice, without holding a
    label per row (`b.repeated_days` found when bronze was read)."""
    lines = part.rows.column("_row_number").to_numpy(zero_copy_only=False).astype(np.int64)
    repeated = b.repeated_days if b.repeated_days is not None else np.zeros(0, np.int64)
    return _labels(part.codes, lines, np.asarray(where, dtype=np.int64), b.codes, repeated)


def _labels(
    codes: np.ndarray, lines: np.ndarray, positions: np.ndarray, every: np.ndarray, repeated_days: np.ndarray
) -> pd.Index:
    """Labels of rows at `positions` (batch dates `codes`, line numbers `lines`) among the rows of
    batch dates `every` (ascending)."""
    ymd = yyyymmdd(np.asarray(codes))
    position = positions - np.searchsorted(every, codes, "left")
    use_position = np.isin(codes, repeated_days) | (lines >= LINE_DIGITS) | (lines < 0)
    return pd.Index(ymd * LINE_DIGITS + np.where(use_position, position, lines))


def yyyymmdd(codes: np.ndarray) -> np.ndarray:
    """yyyymmdd of each day code, converted once per distinct day of the span (a chunk's rows
    share a few dozen days; converting every row's cost ~0.2 s per 3M rows)."""
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = int(codes.min()), int(codes.max())
    per_day = hi - lo <= 100_000  # else not a span of batch dates: convert each row
    days = pd.to_datetime(np.arange(lo, hi + 1) if per_day else codes, unit="D")
    ymd = (days.year * 10_000 + days.month * 100 + days.day).to_numpy().astype(np.int64)
    return ymd[codes.astype(np.int64) - lo] if per_day else ymd


def _text(values: pa.ChunkedArray, python_strings: bool) -> pd.Series:
    if python_strings:
        return values.to_pandas()
    return values.to_pandas(types_mapper={values.type: pd.StringDtype("pyarrow")}.get)


def rows_frame(
    b: Batches,
    needed: frozenset[str],
    helpers: dict[str, Any],
    regex: frozenset[str] = frozenset(),
    where: Where | None = None,
    labels: pd.Index | None = None,
    part_labels: pd.Index | None = None,
) -> pd.DataFrame:
    """The frame `<source>.rows` validates: the columns its expectations read, nothing more (GE copies
    the frame per metric). Text is Arrow-backed except in the `regex` columns (suites.regex_columns).

    `b`: every row, or (with `where`) the slice `Batches.slices` gave for positions `where` of a
    date too big for one frame (flows.ingest.memory_budget); the helper columns and `labels`
    (`row_labels` of every row) were computed over all the rows, so each row's verdict is the same
    in any slice; `part_labels`: the slice's own labels instead (`slice_labels`). Helpers that are
    `PerSlice` are computed here for the slice's rows."""

    data: dict[str, Any] = {}
    for col in b.contract.columns:
        if col.name in needed:
            data[col.name] = _text(b.rows.column(col.name), col.name in regex)
        if unparseable_col(col.name) in needed:
            data[unparseable_col(col.name)] = _text(b.unparseable[col.name], False)
        if naive_col(col.name) in needed:
            data[naive_col(col.name)] = _text(naive_text(b.rows.column(col.name)), False)
        if parsed_col(col.name) in needed:
            typed = b.typed[col.name]
            if col.type == "int":
                data[parsed_col(col.name)] = typed.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
            elif col.type == "date":
                data[parsed_col(col.name)] = pd.Series(typed.to_pandas(), dtype=object)
            else:
                data[parsed_col(col.name)] = typed.to_pandas()
    if PARSE_ERROR_COL in needed:
        data[PARSE_ERROR_COL] = _text(b.rows.column("_parse_error"), False)
    for name, values in helpers.items():
        if name in needed:
            if isinstance(values, PerSlice):
                data[name] = values.compute(b, where)
            elif where is None:
                data[name] = values
            elif isinstance(values, pd.Series):
                data[name] = values.iloc[where].reset_index(drop=True)
            else:
                data[name] = values[where]
    frame = pd.DataFrame(data)  # columns share the default 0..n-1 index: build, then relabel
    if part_labels is not None:
        frame.index = part_labels
    else:
        every = row_labels(b) if labels is None else labels
        frame.index = every if where is None else every[where]
    return frame


def checked_median(values: np.ndarray) -> float | None:
    """The median the drift rule checks for one batch: pandas' median of amount_usd (NaN skipped, as
    GE's column median), None when no amount of the batch converts to USD."""
    if not np.isfinite(values).any():
        return None
    return float(pd.Series(values).median())


def silver_median(values: np.ndarray) -> float | None:
    """Median amount_usd of the rows a batch sent to silver (finite values): the drift rule's
    history, recorded per accepted batch in ops/validations."""
    finite = values[np.isfinite(values)]  # a copy: the median may reorder it in place
    return float(np.median(finite, overwrite_input=True)) if finite.size else None


def unparseable_counts(b: Batches, column: str, days: list[dt.date]) -> dict[dt.date, int]:
    if b.unparseable_days is not None:  # counted as the rows were read (a big date)
        per_day = b.unparseable_days.get(column, {})
        return {d: int(per_day.get(day_code(d), 0)) for d in days}
    bad = pc.is_valid(b.unparseable[column]).to_numpy(zero_copy_only=False)
    return {d: int(bad[b.span(d)].sum()) for d in days}
