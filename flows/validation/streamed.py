"""A source's dates too big to hold, read slice by slice from bronze (issue 23 item 7).

Validation judged a date's rows with every column in memory: bronze rows, typed and unparseable
columns, helpers, then silver and quarantine tables (~0.5 KB a transactions row: a 20M-row day
needed 10 GB). Most of that is row-local. What a row's verdict needs of the other rows is its key
(first delivery wins), its reference columns (known merchants, customers, transactions), the
amounts the drift rule takes the date's median of, its batch date and row number (row labels),
and per date the count of unparseable values: one pass over bronze keeps those, in delivery
order, and nothing else. GE's rows suite, the silver and the quarantine writes then read bronze
again in slices (`Batches.slices`), each slice parsed on its own, each row at its delivery
position, so every row gets the verdict (and reasons) the whole-date path gives it.

Bronze files come back in no promised order (delta-rs reorders record batches within a file), so
positions are found by key: (batch date, file, row number), unique in bronze, sorted once.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.sources import Source, bronze_schema
from flows.storage import lake
from flows.validation import history
from flows.validation.contracts import TYPED, Contract
from flows.validation.frames import Batches, prepare
from flows.validation.parsing import parse_column

if TYPE_CHECKING:
    import pyarrow.dataset as ds

MAX_FILES = 1 << 16
MAX_LINE = 1 << 32


def whole_columns(contract: Contract) -> list[str]:
    """The contract columns every row's verdict needs for all the rows at once."""
    names = [*contract.key, *(r["column"] for r in contract.rules_of("reference"))]
    if "drift" in contract.batch:
        names += ["amount", "currency"]
    return list(dict.fromkeys(names))


def _keys(
    table: pa.Table | pa.RecordBatch, files: dict[str, int], ranks: np.ndarray | None, base: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(batch date codes, file codes of `files` (or ranks when given), row numbers) of rows."""
    codes = table.column("_batch_date").cast(pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64)
    enc = pc.dictionary_encode(pc.fill_null(table.column("_source_file"), ""))
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    mapping = np.array([files.setdefault(f, len(files)) for f in enc.dictionary.to_pylist()], dtype=np.int64)
    file_codes = (
        mapping[enc.indices.to_numpy(zero_copy_only=False)] if len(mapping) else np.zeros(0, np.int64)
    )
    if ranks is not None:
        file_codes = ranks[file_codes]
    lines = table.column("_row_number").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return codes - base, file_codes, lines


def _combined(codes: np.ndarray, files: np.ndarray, lines: np.ndarray) -> np.ndarray:
    return (codes << 48) | (files << 32) | lines


def read(source: Source, contract: Contract, days: Sequence[dt.date]) -> Batches | None:
    """The batches of `days` as `Batches` that read their rows back slice by slice; None when
    bronze has no row of them, or rows that cannot be placed by key (the whole-date path then
    takes them)."""
    schema = bronze_schema(source)
    dset = history.dataset("bronze", source.name, (min(days), max(days)))
    if dset is None:
        return None
    flt = lake.date_filter("_batch_date", days)
    keep = whole_columns(contract)
    ctypes = {c.name: c.type for c in contract.columns}
    counted = (
        [c.name for c in contract.columns if c.type in TYPED] if contract.batch.get("type_change") else []
    )
    base = (min(days) - dt.date(1970, 1, 1)).days
    files: dict[str, int] = {}
    parts: dict[str, list[np.ndarray]] = {"codes": [], "files": [], "lines": []}
    typed_chunks: dict[str, list[pa.ChunkedArray]] = {c: [] for c in keep}
    unparseable: dict[str, Counter[int]] = {c: Counter() for c in counted}
    for batch in bronze_batches(dset, flt, schema):
        codes, file_codes, lines = _keys(batch, files, None, base)
        parts["codes"].append(codes)
        parts["files"].append(file_codes)
        parts["lines"].append(lines)
        for name in dict.fromkeys([*keep, *counted]):
            typed, bad = parse_column(pa.chunked_array([batch.column(name)]), ctypes[name])
            if name in typed_chunks:
                typed_chunks[name].append(typed)
            if name in unparseable:
                hit = pc.is_valid(bad).to_numpy(zero_copy_only=False)
                found, n = np.unique(codes[hit] + base, return_counts=True)
                unparseable[name].update(dict(zip(found.tolist(), n.tolist(), strict=True)))
    if not parts["codes"]:
        return None
    codes = np.concatenate(parts.pop("codes"))
    names = sorted(files, key=lambda f: f)
    ranks = np.empty(len(files), dtype=np.int64)
    for rank, name in enumerate(names):
        ranks[files[name]] = rank
    file_ranks = ranks[np.concatenate(parts.pop("files"))]
    lines = np.concatenate(parts.pop("lines"))
    del parts
    if len(files) >= MAX_FILES or lines.min() < 0 or lines.max() >= MAX_LINE or codes.max() >= 1 << 15:
        return None
    key = _combined(codes, file_ranks, lines)
    del file_ranks, lines
    order = np.argsort(key, kind="stable")
    key = key[order]
    if len(key) > 1 and (key[1:] == key[:-1]).any():
        return None  # a row twice in bronze: only the whole-date path says what happens then
    day_codes = codes[order] + base
    del codes
    take = pa.array(order, pa.int64())
    typed = {c: pc.take(pa.chunked_array(ch, ch[0].type), take) for c, ch in typed_chunks.items()}
    del typed_chunks, take, order
    rows = pa.table(
        {
            "_batch_date": pa.array(day_codes.astype(np.int32), pa.int32()).cast(pa.date32()),
            "_row_number": pa.array(key & (MAX_LINE - 1), pa.int64()),
        }
    )

    def reread(size: int, parse: bool) -> Iterator[tuple[np.ndarray, Batches]]:
        def emit(tbl: pa.Table) -> tuple[np.ndarray, Batches]:
            c, f, n = _keys(tbl, files, ranks, base)
            wanted = _combined(c, f, n)
            at = np.minimum(np.searchsorted(key, wanted), len(key) - 1)
            if len(at) and not np.array_equal(key[at], wanted):
                raise lake.LakeError(f"bronze {source.name} changed while it was validated")
            if parse:
                return at, prepare(source, contract, tbl)
            return at, Batches(source, contract, tbl, {}, {}, (c + base))

        size = max(1, size)
        held: list[pa.Table] = []
        have = 0
        for batch in bronze_batches(dset, flt, schema):
            held.append(pa.Table.from_batches([batch]))
            have += batch.num_rows
            while have >= size:
                whole = pa.concat_tables(held)
                yield emit(whole.slice(0, size))
                rest = whole.slice(size)
                held, have = [rest], rest.num_rows
        if have:
            yield emit(pa.concat_tables(held))

    return Batches(
        source,
        contract,
        rows,
        typed,
        {},
        day_codes,
        reread,
        {c: dict(v) for c, v in unparseable.items()},
    )


def bronze_batches(dset: ds.Dataset, flt: ds.Expression, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Bronze rows of the dates as record batches of `schema`."""
    for batch in dset.to_batches(columns=schema.names, filter=flt):
        if batch.num_rows:
            yield pa.RecordBatch.from_arrays(
                [batch.column(f.name).cast(f.type) for f in schema], schema=schema
            )


def extra_rows(source: Source, day: dt.date) -> pa.Table:
    """The `_extra` column of one date's bronze rows: what `history.delivery_info` reads of a
    batch that has no ingest record."""
    got = history.scan("bronze", source.name, lake.date_filter("_batch_date", [day]), ["_extra"], (day, day))
    return got if got is not None else pa.table({"_extra": pa.array([], pa.string())})
