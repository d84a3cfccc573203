"""A source's dates too big to hold, read slice by slice from bronze (issue 23 item 7).

Validation judged a date's rows with every column in memory: bronze rows, typed and unparseable
columns, helpers, then silver and quarantine tables (~0.5 KB a transactions row: a 20M-row day
needed 10 GB). Most of that is row-local. What a row's verdict needs of the other rows is its key
(first delivery wins), the values its reference columns take (known merchants, customers,
transactions), the amounts the drift rule takes the date's median of, its batch date and row
number (row labels), and per date the count of unparseable values: one pass over bronze keeps
those, in delivery order, and nothing else: the key as a 64-bit hash (its text cost ~60 bytes a
row and twice that again to count), amount_usd, the reference columns' distinct values only
(~35 bytes a row in all). GE's rows suite, the silver and the quarantine writes then read bronze
again in slices (`Batches.slices`), each slice parsed on its own, its helper columns (time bounds,
reference lookups, row labels) computed with it, each row at its delivery position, so every row
gets the verdict (and reasons) the whole-date path gives it.

Bronze files come back in no promised order (delta-rs reorders record batches within a file), so
positions are found by key: (batch date, file, row number), unique in bronze, sorted once.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.sources import Source, bronze_schema
from flows.storage import lake
from flows.validation import history
from flows.validation.contracts import TYPED, Contract
from flows.validation.frames import Batches, KeyHashes, key_hashes, prepare, usd_of
from flows.validation.parsing import parse_column

if TYPE_CHECKING:
    import pyarrow.dataset as ds

MAX_FILES = 1 << 16
MAX_LINE = 1 << 32
CHUNK = 1 << 20  # rows per step of whole-run array arithmetic (bounded temporaries)
READ_BATCH_ROWS = 1 << 16  # rows per record batch of bronze read back


def reference_columns(contract: Contract) -> list[str]:
    """The columns a reference rule looks up: their distinct values are kept, not every row's."""
    return list(dict.fromkeys(r["column"] for r in contract.rules_of("reference")))


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


@dataclass
class _Pass:
    """What the pass over bronze keeps of every row, in bronze's order, in arrays sized once from
    the rows counted up front (lists of per-batch arrays and their concatenation held it twice)."""

    n: int
    codes: np.ndarray = field(init=False)  # int16: batch date - the first date
    files: np.ndarray = field(init=False)  # uint16: file code
    lines: np.ndarray = field(init=False)  # uint32: row number
    hashes: np.ndarray = field(init=False)  # uint64: the key's hash
    present: np.ndarray = field(init=False)  # bool: the key is complete
    usd: np.ndarray | None = None  # float64: amount_usd
    filled: int = 0

    def __post_init__(self) -> None:
        self.codes = np.empty(self.n, np.int16)
        self.files = np.empty(self.n, np.uint16)
        self.lines = np.empty(self.n, np.uint32)
        self.hashes = np.empty(self.n, np.uint64)
        self.present = np.empty(self.n, bool)


def read(
    source: Source, contract: Contract, days: Sequence[dt.date], fx: dict[str, float] | None = None
) -> Batches | None:
    """The batches of `days` as `Batches` that read their rows back slice by slice; None when
    bronze has no row of them, or rows that cannot be placed by key (the whole-date path then
    takes them). Kept for every row: batch date, position key, the key's hash, amount_usd (a drift
    rule; `fx`: the USD rates); of the reference columns only their distinct values."""
    schema = bronze_schema(source)
    dset = history.dataset("bronze", source.name, (min(days), max(days)))
    if dset is None:
        return None
    flt = lake.date_filter("_batch_date", days)
    n = dset.count_rows(filter=flt)
    if n == 0:
        return None
    refs = reference_columns(contract)
    drift = "drift" in contract.batch
    ctypes = {c.name: c.type for c in contract.columns}
    counted = (
        [c.name for c in contract.columns if c.type in TYPED] if contract.batch.get("type_change") else []
    )
    base = (min(days) - dt.date(1970, 1, 1)).days
    if (max(days) - min(days)).days >= 1 << 15:
        return None
    files: dict[str, int] = {}
    kept = _Pass(n)
    if drift:
        kept.usd = np.empty(n, np.float64)
    distinct: dict[str, list[pa.Array]] = {c: [] for c in refs}
    unparseable: dict[str, Counter[int]] = {c: Counter() for c in counted}
    for batch in bronze_batches(dset, flt, schema):
        codes, file_codes, lines = _keys(batch, files, None, base)
        lo, hi = kept.filled, kept.filled + batch.num_rows
        if hi > n:
            raise lake.LakeError(f"bronze {source.name} changed while it was validated")
        if len(files) >= MAX_FILES or lines.min() < 0 or lines.max() >= MAX_LINE:
            return None
        kept.codes[lo:hi], kept.files[lo:hi], kept.lines[lo:hi] = codes, file_codes, lines
        typed = {
            name: parse_column(pa.chunked_array([batch.column(name)]), ctypes[name])
            for name in dict.fromkeys(
                [*contract.key, *refs, *counted, *(["amount", "currency"] if drift else [])]
            )
        }
        got = key_hashes([typed[k][0] for k in contract.key])
        kept.hashes[lo:hi], kept.present[lo:hi] = got.hashes, got.present
        for name in refs:
            distinct[name].append(pc.unique(pc.drop_null(typed[name][0].combine_chunks())))
        if kept.usd is not None and fx is not None:
            kept.usd[lo:hi] = usd_of(typed["amount"][0], typed["currency"][0], fx)
        for name in counted:
            hit = pc.is_valid(typed[name][1]).to_numpy(zero_copy_only=False)
            per_code = np.bincount(codes[hit])  # codes: days since the first date, small
            found = np.flatnonzero(per_code)
            counts = per_code[found].tolist()
            unparseable[name].update(dict(zip((found + base).tolist(), counts, strict=True)))
        kept.filled = hi
    if kept.filled != n:
        raise lake.LakeError(f"bronze {source.name} changed while it was validated")
    names = sorted(files)
    ranks = np.empty(len(files), dtype=np.int64)
    for rank, name in enumerate(names):
        ranks[files[name]] = rank
    # in chunks, into one array: whole-array shifts and ors of 20M rows held ~1 GB of temporaries
    key = np.empty(n, dtype=np.int64)
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        key[lo:hi] = _combined(
            kept.codes[lo:hi].astype(np.int64), ranks[kept.files[lo:hi]], kept.lines[lo:hi].astype(np.int64)
        )
    del kept.codes, kept.files, kept.lines
    order = np.argsort(key)  # keys are unique (checked below): no stable sort needed
    key = key[order]
    if len(key) > 1 and (key[1:] == key[:-1]).any():
        return None  # a row twice in bronze: only the whole-date path says what happens then
    hashes = kept.hashes[order]
    del kept.hashes
    present = kept.present[order]
    usd = kept.usd[order] if kept.usd is not None else None
    del kept, order
    day_codes = np.empty(n, dtype=np.int32)
    for lo in range(0, n, CHUNK):
        day_codes[lo : lo + CHUNK] = (key[lo : lo + CHUNK] >> 48) + base
    dates = pa.Array.from_buffers(pa.date32(), len(day_codes), [None, pa.py_buffer(day_codes)])

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
        pa.table({"_batch_date": dates}),
        {},
        {},
        day_codes,
        reread,
        {c: dict(v) for c, v in unparseable.items()},
        keys=KeyHashes(hashes, present),
        usd=usd,
        distinct={c: pc.unique(pa.concat_arrays(v)) if v else pa.array([]) for c, v in distinct.items()},
        repeated_days=repeated_days(key, base),
    )


def repeated_days(key: np.ndarray, base: int) -> np.ndarray:
    """Day codes (since 1970) in which two files have rows of the same line number: there, row
    labels count positions in the batch instead (frames.row_labels). `key`: sorted position keys."""
    starts: list[np.ndarray] = []  # first row of each (day, file) run
    for lo in range(0, len(key), CHUNK):
        part = key[max(0, lo - 1) : lo + CHUNK] >> 32
        change = np.flatnonzero(part[1:] != part[:-1]) + max(0, lo - 1) + 1
        starts.append(change if lo else np.r_[0, change] if len(key) else change)
    first = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    run_days = key[first] >> 48
    several = np.unique(run_days[1:][run_days[1:] == run_days[:-1]])
    out = []
    for d in several.tolist():
        lo, hi = np.searchsorted(key, [d << 48, (d + 1) << 48])
        lines = np.sort(key[lo:hi] & (MAX_LINE - 1))
        if len(lines) > 1 and (lines[1:] == lines[:-1]).any():
            out.append(d + base)
    return np.array(out, dtype=np.int64)


def bronze_batches(dset: ds.Dataset, flt: ds.Expression, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Bronze rows of the dates as record batches of `schema`, read one file and a few batches
    ahead: pyarrow's default readahead (4 files x 16 batches) held ~1.6 GB of decoded bronze
    rows of a 20M-row date (4 files of 1M-row row groups) while GE judged a slice."""
    scan = dset.to_batches(
        columns=schema.names,
        filter=flt,
        batch_size=READ_BATCH_ROWS,
        batch_readahead=2,
        fragment_readahead=1,
    )
    for batch in scan:
        if batch.num_rows:
            yield pa.RecordBatch.from_arrays(
                [batch.column(f.name).cast(f.type) for f in schema], schema=schema
            )


def extra_rows(source: Source, day: dt.date) -> pa.Table:
    """The `_extra` column of one date's bronze rows: what `history.delivery_info` reads of a
    batch that has no ingest record."""
    got = history.scan("bronze", source.name, lake.date_filter("_batch_date", [day]), ["_extra"], (day, day))
    return got if got is not None else pa.table({"_extra": pa.array([], pa.string())})
