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
from collections.abc import Callable, Iterator
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
    parsed_col,
    unparseable_col,
)
from flows.validation.parsing import parse_column

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

    def typed_rows(self, idx: np.ndarray) -> dict[str, pa.ChunkedArray]:
        """Every typed contract column of rows `idx` (in that order): a few rows (repeated keys)."""
        if self.reread is None:
            arr = pa.array(idx, pa.int64())
            return {c.name: pc.take(self.typed[c.name], arr) for c in self.contract.columns}
        wanted = np.asarray(idx, dtype=np.int64)
        order = np.argsort(wanted, kind="stable")
        found: list[tuple[np.ndarray, dict[str, pa.ChunkedArray]]] = []
        for where, part in self.slices(1 << 18):
            hit = np.isin(where, wanted)
            if hit.any():
                local = pa.array(np.flatnonzero(hit), pa.int64())
                found.append((where[hit], {c: pc.take(v, local) for c, v in part.typed.items()}))
        if not found:
            return {c.name: pa.chunked_array([], self.typed_type(c.name)) for c in self.contract.columns}
        positions = np.concatenate([p for p, _ in found])
        columns = {
            c.name: pa.chunked_array([chunk for _, cols in found for chunk in cols[c.name].chunks])
            for c in self.contract.columns
        }
        # rows of `wanted` in its order: sort the found positions, then place
        by_position = np.argsort(positions, kind="stable")
        take = np.empty(len(wanted), dtype=np.int64)
        take[order] = by_position[np.searchsorted(positions[by_position], wanted[order])]
        arr = pa.array(take, pa.int64())
        return {c: pc.take(v, arr) for c, v in columns.items()}

    def typed_type(self, column: str) -> pa.DataType:
        ctype = next(c.type for c in self.contract.columns if c.name == column)
        return parse_column(pa.chunked_array([], pa.string()), ctype)[0].type


def prepare(source: Source, contract: Contract, rows: pa.Table) -> Batches:
    """Parse every contract column once for all the dates (`rows` in delivery order)."""
    typed, unparseable = {}, {}
    for col in contract.columns:
        typed[col.name], unparseable[col.name] = parse_column(rows.column(col.name), col.type)
    codes = rows.column("_batch_date").cast(pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64)
    return Batches(source, contract, rows, typed, unparseable, codes)


def amount_usd(b: Batches, fx: dict[str, float]) -> np.ndarray:
    amount = b.typed["amount"].to_numpy().astype(float, copy=False)
    currency = b.typed["currency"].to_pandas()
    rate = currency.map(fx).to_numpy(dtype=float, na_value=np.nan)
    return amount * rate


def _midnights(codes: np.ndarray, offset_days: int) -> pd.Series:
    us = (codes + offset_days) * US_PER_DAY
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
    days = pd.to_datetime(b.codes, unit="D")
    ymd = (days.year * 10_000 + days.month * 100 + days.day).to_numpy().astype(np.int64)
    lines = b.rows.column("_row_number").to_numpy(zero_copy_only=False).astype(np.int64)
    first_of_day = np.searchsorted(b.codes, b.codes, "left")
    position = np.arange(b.n, dtype=np.int64) - first_of_day
    dup = pd.DataFrame({"c": b.codes, "l": lines}).duplicated(keep=False).to_numpy()
    repeated_days = np.unique(b.codes[dup])
    use_position = np.isin(b.codes, repeated_days) | (lines >= LINE_DIGITS) | (lines < 0)
    return pd.Index(ymd * LINE_DIGITS + np.where(use_position, position, lines))


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
) -> pd.DataFrame:
    """The frame `<source>.rows` validates: the columns its expectations read, nothing more (GE copies
    the frame per metric). Text is Arrow-backed except in the `regex` columns (suites.regex_columns).

    `b`: every row, or (with `where`) the slice `Batches.slices` gave for positions `where` of a
    date too big for one frame (flows.ingest.memory_budget); the helper columns and `labels`
    (`row_labels` of every row) were computed over all the rows, so each row's verdict is the same
    in any slice."""

    data: dict[str, Any] = {}
    for col in b.contract.columns:
        if col.name in needed:
            data[col.name] = _text(b.rows.column(col.name), col.name in regex)
        if unparseable_col(col.name) in needed:
            data[unparseable_col(col.name)] = _text(b.unparseable[col.name], False)
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
            if where is None:
                data[name] = values
            elif isinstance(values, pd.Series):
                data[name] = values.iloc[where].reset_index(drop=True)
            else:
                data[name] = values[where]
    frame = pd.DataFrame(data)  # columns share the default 0..n-1 index: build, then relabel
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
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else None


def unparseable_counts(b: Batches, column: str, days: list[dt.date]) -> dict[dt.date, int]:
    if b.unparseable_days is not None:  # counted as the rows were read (a big date)
        per_day = b.unparseable_days.get(column, {})
        return {d: int(per_day.get(day_code(d), 0)) for d in days}
    bad = pc.is_valid(b.unparseable[column]).to_numpy(zero_copy_only=False)
    return {d: int(bad[b.span(d)].sum()) for d in days}
