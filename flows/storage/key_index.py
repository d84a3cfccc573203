"""Which values of a key column exist in a Delta table, without re-reading its history per date.

Why: the reference rules ("a chargeback's txn_id must be a transaction known by D") look a batch's
keys up among every earlier silver row. Read afresh for each date, that is a scan of the whole
history: 1.3 s per date at 180 days of bench data and growing, so a backfill cost grew with the
square of its length. Delta data files never change once written (a replaced partition gets new
files), so the 64-bit hashes of a file's keys are computed once per process and kept, by file path.
A lookup compares hashes, then reads only the files where a hash matched, with an exact filter: a
hash collision can cost a read, never make an unknown key known. The index is used inside
`session()` (a backfill's range of dates); a single date reads history once the plain way.

Memory: 8 bytes per distinct key per file (36.5M transactions: ~290 MB). The index is dropped
whole when it outgrows ASOF_KEY_INDEX_MB (default 1024) and rebuilt from the files as needed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from flows.config import settings

_LOCK = threading.Lock()
_HASHES: dict[tuple[str, str], np.ndarray] = {}
_BYTES = 0
_CON: duckdb.DuckDBPyConnection | None = None
_ACTIVE = 0


def _limit_bytes() -> int:
    return int(settings().key_index_mb * 2**20)


def _hash(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """DuckDB's 64-bit hash of each value, in order (nulls hash too; callers drop them first)."""
    global _CON
    if _CON is None:
        _CON = duckdb.connect()
        _CON.execute("SET threads TO 1")
    _CON.register("key_values", pa.table({"k": values}))
    try:
        return _CON.execute("SELECT hash(k) AS h FROM key_values").fetchnumpy()["h"].astype(np.uint64)
    finally:
        _CON.unregister("key_values")


def _file_hashes(fragment: ds.FileFragment, column: str, schema: pa.Schema) -> np.ndarray:
    global _BYTES
    key = (fragment.path, column)
    got = _HASHES.get(key)
    if got is not None:
        return got
    values = pc.drop_null(fragment.to_table(schema=schema, columns=[column]).column(column))
    hashes = np.unique(_hash(values)) if len(values) else np.empty(0, np.uint64)
    if _BYTES + hashes.nbytes > _limit_bytes():
        _HASHES.clear()
        _BYTES = 0
    _HASHES[key] = hashes
    _BYTES += hashes.nbytes
    return hashes


def _matches(wanted: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Positions in `wanted` (sorted) of the hashes also in `hashes` (sorted): binary search of the
    smaller array in the larger, so neither a big batch nor a big file costs more than it must."""
    if not len(hashes) or not len(wanted):
        return np.empty(0, np.int64)
    if len(wanted) <= len(hashes):
        pos = np.minimum(np.searchsorted(hashes, wanted), len(hashes) - 1)
        return np.flatnonzero(hashes[pos] == wanted)
    # every position of an equal run: two wanted values may share a hash
    lo, hi = np.searchsorted(wanted, hashes, "left"), np.searchsorted(wanted, hashes, "right")
    hit = hi > lo
    lo, counts = lo[hit], (hi - lo)[hit]
    ends = np.cumsum(counts)
    return np.repeat(lo - (ends - counts), counts) + np.arange(ends[-1] if len(ends) else 0)


def _by_hash(wanted: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """`wanted` and its hashes, both ordered by hash (what `_matches` searches). Call under _LOCK."""
    wanted_h = _hash(wanted)
    order = np.argsort(wanted_h)
    return wanted.take(pa.array(order)), wanted_h[order]


def narrow(
    dataset: ds.Dataset, column: str, values: pa.Array, row_filter: ds.Expression
) -> tuple[ds.Dataset, pa.Array]:
    """(the part of `dataset` that may hold rows matching `row_filter` whose `column` is one of
    `values`, those of `values` that may occur there). A filtered scan of the part returns exactly
    the rows a scan of the whole would; values left out surely do not occur."""
    # hashed and compared in the dataset's type, so a file written as large_string still matches
    wanted = pc.unique(pc.drop_null(values)).cast(dataset.schema.field(column).type)
    if len(wanted) == 0:
        return dataset, wanted
    with _LOCK:
        wanted, wanted_h = _by_hash(wanted)
        hit_fragments: list[ds.FileFragment] = []
        maybe = np.zeros(len(wanted), dtype=bool)
        fragments = list(dataset.get_fragments(filter=row_filter))
        for fragment in fragments:
            hashes = _file_hashes(fragment, column, dataset.schema)
            matched = _matches(wanted_h, hashes)
            if matched.size:
                hit_fragments.append(fragment)
                maybe[matched] = True
    candidates = wanted.filter(pa.array(maybe))
    # When most files may hold a candidate (a batch naming most merchants), the whole dataset is
    # cheaper to scan than a list of picked files.
    if len(hit_fragments) > len(fragments) // 2:
        return dataset, candidates
    part = ds.FileSystemDataset(
        hit_fragments, schema=dataset.schema, format=dataset.format, filesystem=dataset.filesystem
    )
    return part, candidates


def present(dataset: ds.Dataset, column: str, values: pa.Array, row_filter: ds.Expression) -> pa.Array:
    """The distinct non-null `values` that occur in `column` of the rows of `dataset` matching
    `row_filter` (exact: the same answer as a full filtered scan, which it is outside a session).

    Existence needs one file per value, not all of them: files are visited until every value has a
    hash match, and only the files that matched a value first are read. A merchants snapshot holds
    every merchant, so a transaction batch's merchants are checked against one file instead of the
    whole history. A value whose match was a collision (or whose row `row_filter` excludes) is not
    confirmed by that read and is looked up with a plain filtered scan."""
    wanted = pc.unique(pc.drop_null(values)).cast(dataset.schema.field(column).type)
    if not active():
        got = dataset.to_table(filter=row_filter & ds.field(column).isin(wanted), columns=[column])
        return pc.unique(got.column(column).combine_chunks()).cast(values.type)
    if len(wanted) == 0:
        return pa.array([], values.type)
    with _LOCK:
        wanted, wanted_h = _by_hash(wanted)
        open_ = np.arange(len(wanted))  # positions not matched by any file yet (sorted by hash)
        chosen: list[ds.FileFragment] = []
        # Latest partition first (hive paths `_batch_date=YYYY-MM-DD/` sort by date): the latest
        # snapshot holds every merchant a batch can name. Any order gives the same answer.
        fragments = sorted(dataset.get_fragments(filter=row_filter), key=lambda f: f.path, reverse=True)
        for fragment in fragments:
            hashes = _file_hashes(fragment, column, dataset.schema)
            matched = _matches(wanted_h[open_], hashes)
            if matched.size:
                chosen.append(fragment)
                open_ = np.delete(open_, matched)
                if open_.size == 0:
                    break
    candidates = wanted.filter(pa.array(np.isin(np.arange(len(wanted)), open_, invert=True)))
    if len(candidates) == 0:
        return pa.array([], values.type)
    part = ds.FileSystemDataset(
        chosen, schema=dataset.schema, format=dataset.format, filesystem=dataset.filesystem
    )
    got = part.to_table(filter=row_filter & ds.field(column).isin(candidates), columns=[column])
    found = pc.unique(got.column(column).combine_chunks())
    unconfirmed = candidates.filter(pc.invert(pc.is_in(candidates, value_set=found)))
    if len(unconfirmed):
        rest = dataset.to_table(filter=row_filter & ds.field(column).isin(unconfirmed), columns=[column])
        found = pc.unique(pa.concat_arrays([found, rest.column(column).combine_chunks()]))
    return found.cast(values.type)


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Use the index inside this block (a range of dates), and free it after.

    Why only then: building it reads and hashes every file of history once (~10 ms a file), which a
    range of dates repays many times over and a single date never does."""
    global _ACTIVE
    with _LOCK:
        _ACTIVE += 1
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE -= 1
        if not _ACTIVE:
            clear()


def active() -> bool:
    return _ACTIVE > 0


def clear() -> None:
    global _BYTES, _CON
    with _LOCK:
        _HASHES.clear()
        _BYTES = 0
        if _CON is not None:
            _CON.close()
            _CON = None
