"""The only module that touches Delta tables.

Tasks name a table by layer and name (`lake.read("bronze", "transactions")`); this module turns that
into a URI under the configured lake root (local disk or object storage, by configuration only),
serialises writers per table, replaces exactly the slice a writer owns, and retries commit
conflicts. Nothing else builds lake paths.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from flows.config import Settings, settings

if TYPE_CHECKING:  # imported where used: pyarrow.dataset imports pandas (1 s of `asof status`)
    import pyarrow.dataset as ds

log = logging.getLogger(__name__)

LAYERS = ("bronze", "silver", "quarantine", "gold", "ops")
COMMIT_RETRIES = 8
LOCK_TIMEOUT_S = settings().lock_timeout_s


class LakeError(RuntimeError):
    pass


# A function that starts a stream of record batches (again for each attempt of a commit).
Batches = Callable[[], Iterable[pa.RecordBatch]]


# ---------------------------------------------------------------- crash points (kill tests)
#
# `ASOF_CRASH_AT=<label>[:<n>]` makes this process SIGKILL itself the n-th time (default: the first)
# it reaches `label`; `ASOF_CRASH_TRACE=<file>` appends every label reached ("<pid> <label> <n> <time>").
# Labels: `open:<layer>/<table>` (a table is opened for reading or writing), `before_commit:`,
# `during_commit:` (the writer dies after part of the data files are written: orphans),
# `after_commit:`, `lock_wait:` (another process holds the write lock) and `locked:` +
# `<layer>/<table>` (`ops/pipeline` is the whole-run lock). With neither variable set, a crash
# point costs two dict lookups.

_CRASH_LOCK = threading.Lock()
_CRASH_COUNTS: dict[str, int] = {}


def _crash_spec() -> tuple[str, int] | None:
    spec = settings().crash_at
    if not spec:
        return None
    label, sep, nth = spec.rpartition(":")
    if sep and nth.isdigit():
        return label, int(nth)
    return spec, 1


def _hit(label: str) -> bool:
    """Count a crash-point hit; True if this hit is the one ASOF_CRASH_AT names."""
    with _CRASH_LOCK:
        n = _CRASH_COUNTS[label] = _CRASH_COUNTS.get(label, 0) + 1
    trace = settings().crash_trace
    if trace:
        with open(trace, "a") as fh:
            fh.write(f"{os.getpid()} {label} {n} {time.time():.3f}\n")
    return _crash_spec() == (label, n)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # SIGKILL is asynchronous: never run another line


def _armed() -> bool:
    return Settings.crash_at.is_set() or Settings.crash_trace.is_set()


def crash_point(label: str) -> None:
    """Kill tests: die here when ASOF_CRASH_AT names this label (and this occurrence)."""
    if _armed() and _hit(label):
        _die()


def _dying_stream(data: pa.Table) -> pa.RecordBatchReader:
    """The data as a stream that kills the process after most of it was handed to the writer: delta-rs
    has written some data files by then (for a large enough table) and committed none."""
    batches = data.to_batches(max_chunksize=max(1, data.num_rows // 16))
    cut = max(1, (len(batches) * 3) // 4)

    def gen():
        for i, batch in enumerate(batches):
            if i == cut:
                time.sleep(0.5)  # let the writer flush what it has
                _die()
            yield batch
        _die()

    return pa.RecordBatchReader.from_batches(data.schema, gen())


_NAME = re.compile(r"[A-Za-z0-9_]+")


def _check_name(layer: str, table: str) -> None:
    if layer not in LAYERS:
        raise LakeError(f"unknown lake layer {layer!r}")
    if not isinstance(table, str) or not _NAME.fullmatch(table):
        raise LakeError(f"invalid table name {table!r}")


def uri(layer: str, table: str) -> str:
    _check_name(layer, table)
    return f"{settings().lake_uri}/{layer}/{table}"


def _opts() -> dict[str, str] | None:
    return settings().storage_options or None


def exists(layer: str, table: str) -> bool:
    return DeltaTable.is_deltatable(uri(layer, table), storage_options=_opts())


def table(layer: str, name: str, version: int | None = None) -> DeltaTable:
    crash_point(f"open:{layer}/{name}")
    try:
        return DeltaTable(uri(layer, name), version=version, storage_options=_opts())
    except TableNotFoundError:
        raise LakeError(f"Delta table {layer}/{name} does not exist yet") from None
    except DeltaError as exc:  # delta-rs names neither table nor file, and appends a backtrace
        raise LakeError(
            f"Delta table {layer}/{name} cannot be opened: {delta_message(exc)} "
            "(asof verify names the damaged file; docs/operations.md section 11)"
        ) from None


def delta_message(exc: BaseException) -> str:
    """delta-rs's message without the Rust backtrace it may carry: run records keep messages."""
    text = str(exc)
    for marker in ("\nStack backtrace:", "\nBacktrace:", "\n   0: "):
        text = text.split(marker, 1)[0]
    return " ".join(text.split())[:500]


def version(layer: str, name: str) -> int | None:
    return table(layer, name).version() if exists(layer, name) else None


# ------------------------------------------------------------------ reader handles of a range
#
# Opening a table replays its log from the last checkpoint: 30-50 ms a table at half a year of
# daily commits, ~45 opens a validated date. Moving an open handle to the latest version reads only
# the commits since (4-9 ms). Inside `reader_handles()` (a range of dates) `dataset()` reuses one
# handle per thread and table, brought up to date on every use, so a read sees exactly what a fresh
# open would. Writers always open their own handle; so do reads of a pinned version.
#
# The same goes for the Arrow dataset built from a handle: deltalake makes one fragment per live
# file, with an expression of the file's partition and column statistics (1.3 ms a file: 0.35 s for
# the 269 files of 180 days of silver transactions, and a validated date reads four tables whole).
# A file never changes once written, so in a range the fragments are kept by partition and only
# the partitions whose files changed since the thread's last read are asked of deltalake again.

# The column the bronze, silver and quarantine tables are partitioned by (a row's batch date).
BATCH_DATE = "_batch_date"

_HANDLES_LOCK = threading.Lock()
_HANDLE_SCOPES = 0
_HANDLES: dict[tuple[int, str], DeltaTable] = {}
# (thread, table URI) -> partition value -> (the partition's file paths, their fragments)
_FRAGMENTS: dict[tuple[int, str], dict[Any, tuple[frozenset[str], list[ds.Fragment]]]] = {}


@contextlib.contextmanager
def reader_handles() -> Iterator[None]:
    """Reuse reader handles inside this block; they are dropped when the outermost block ends."""
    global _HANDLE_SCOPES
    with _HANDLES_LOCK:
        _HANDLE_SCOPES += 1
    try:
        yield
    finally:
        with _HANDLES_LOCK:
            _HANDLE_SCOPES -= 1
            if not _HANDLE_SCOPES:
                _HANDLES.clear()
                _FRAGMENTS.clear()


def _latest_reader(layer: str, name: str) -> DeltaTable:
    if not _HANDLE_SCOPES:
        return table(layer, name)
    key = (threading.get_ident(), uri(layer, name))
    handle = _HANDLES.get(key)  # only this thread uses its entries
    if handle is None:
        handle = table(layer, name)
    else:
        crash_point(f"open:{layer}/{name}")
        try:
            handle.update_incremental()
        except Exception:  # e.g. the table was dropped and made again: open it afresh
            log.debug("reopening %s/%s", layer, name, exc_info=True)
            handle = table(layer, name)
    with _HANDLES_LOCK:
        if _HANDLE_SCOPES:
            _HANDLES[key] = handle
    return handle


def versioned_dataset(layer: str, name: str) -> tuple[ds.Dataset, int]:
    """The table's latest Arrow dataset, every file (`dataset`), with the version it holds: what a
    reader records as the version it read. Inside `reader_handles()` only the partitions written
    since this thread's last read are asked of deltalake (a year of silver transactions: ~0.75 ms
    a file, 365 files, at every chunk's transform)."""
    tbl = _latest_reader(layer, name)
    return _dataset_of(tbl, layer, name, None, None, BATCH_DATE), tbl.version()


def dataset(
    layer: str,
    name: str,
    version: int | None = None,
    dates: tuple[dt.date | None, dt.date] | None = None,
    date_column: str = BATCH_DATE,
) -> ds.Dataset:
    """An Arrow dataset over the table: DuckDB and pyarrow scan it lazily with filter pushdown.

    `dates=(first or None, last)` keeps only the files of those `date_column` partitions. Why: the
    dataset holds one fragment per live file, and building it costs about 0.5 ms per file, so on a
    table of a year of daily partitions a read of one date paid for all 365 (0.1 s per open, 4 s
    per validated date at 180 days). A table not partitioned by `date_column` is read whole; the
    caller's row filter decides either way."""
    tbl = table(layer, name, version) if version is not None else _latest_reader(layer, name)
    return _dataset_of(tbl, layer, name, version, dates, date_column)


def _dataset_of(
    tbl: DeltaTable,
    layer: str,
    name: str,
    version: int | None,
    dates: tuple[dt.date | None, dt.date] | None,
    date_column: str,
) -> ds.Dataset:
    partition_columns = tbl.metadata().partition_columns
    if version is None and _HANDLE_SCOPES and partition_columns == [date_column]:
        kept = _kept_fragments(layer, name, tbl, dates, date_column)
        if kept is not None:
            return kept
    parts = None
    if dates is not None and date_column in partition_columns:
        first, last = dates
        if first == last:
            parts = [(date_column, "=", last.isoformat())]
        else:
            parts = [(date_column, "<=", last.isoformat())]
            if first is not None:
                parts.append((date_column, ">=", first.isoformat()))
    return tbl.to_pyarrow_dataset(file_pruning_predicate=parts)


def _kept_fragments(
    layer: str, name: str, tbl: DeltaTable, dates: tuple[dt.date | None, dt.date] | None, column: str
) -> ds.Dataset | None:
    """`tbl.to_pyarrow_dataset` over the partitions of `dates`, from this thread's kept fragments
    (see above); None when it cannot tell (a null partition value, fragments it cannot place, an
    empty selection), and the caller asks deltalake as usual."""
    import pyarrow.dataset as ds

    actions = pa.table(tbl.get_add_actions(flatten=True)).select(["path", f"partition.{column}"])
    by_value: dict[Any, set[str]] = {}
    for path, value in zip(*(c.to_pylist() for c in actions.columns), strict=True):
        by_value.setdefault(value, set()).add(path)
    if None in by_value:
        return None
    first, last = dates if dates is not None else (None, None)
    wanted = sorted(v for v in by_value if (last is None or v <= last) and (first is None or v >= first))
    kept = _FRAGMENTS.setdefault((threading.get_ident(), uri(layer, name)), {})  # this thread's own
    for gone in set(kept) - set(by_value):
        del kept[gone]
    stale = [v for v in wanted if v not in kept or kept[v][0] != by_value[v]]
    if stale:
        fresh = tbl.to_pyarrow_dataset(
            file_pruning_predicate=[(column, "in", [v.isoformat() for v in stale])]
        )
        found: dict[Any, list[ds.Fragment]] = {}
        for fragment in fresh.get_fragments():
            value = ds.get_partition_keys(fragment.partition_expression).get(column)
            found.setdefault(value, []).append(fragment)
        for v in stale:
            if len(found.get(v, ())) != len(by_value[v]):
                return None
            kept[v] = (frozenset(by_value[v]), found[v])
    fragments = [f for v in wanted for f in kept[v][1]]
    if not fragments:
        return None
    schema = pa.schema(tbl.schema().to_arrow())
    return ds.FileSystemDataset(fragments, schema, fragments[0].format, fragments[0].filesystem)


def read(
    layer: str,
    name: str,
    filter: ds.Expression | None = None,
    columns: Sequence[str] | None = None,
    version: int | None = None,
    schema: pa.Schema | None = None,
    days: Iterable[dt.date] | None = None,
    date_column: str = BATCH_DATE,
) -> pa.Table:
    """Read a table (or an empty table of `schema` when it does not exist yet).

    `days` keeps the rows of those dates of `date_column` and opens only the files of that span
    when the table is partitioned by it (see `dataset`)."""
    if not exists(layer, name):
        if schema is None:
            raise LakeError(f"Delta table {layer}/{name} does not exist yet")
        empty = schema.empty_table()
        return empty.select(list(columns)) if columns else empty
    span = None
    if days is not None:
        days = sorted(set(days))
        span = (days[0], days[-1]) if days else None
        by_day = date_filter(date_column, days)
        filter = by_day if filter is None else filter & by_day
    dset = dataset(layer, name, version, dates=span, date_column=date_column)
    return dset.to_table(filter=filter, columns=list(columns) if columns else None)


_EPOCH_DAY = dt.date(1970, 1, 1)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_PER_US = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}


def _python_values(col: pa.ChunkedArray) -> list[Any]:
    """`col.to_pylist()` without pyarrow's pandas-backed conversions: dates and timestamps go
    through integers (timezone-aware timestamps come back in UTC, as pyarrow returns them). The
    integers are the same buffers viewed as such (`Array.view`), not a cast: a cast imports
    pyarrow.compute (0.1-0.2 s of `asof status`)."""

    def integers(width: pa.DataType) -> list[int | None]:
        return [v for chunk in col.chunks for v in chunk.view(width).to_pylist()]

    if pa.types.is_date32(col.type):
        return [None if v is None else _EPOCH_DAY + dt.timedelta(days=v) for v in integers(pa.int32())]
    if pa.types.is_timestamp(col.type) and _PER_US.get(col.type.unit):
        per = _PER_US[col.type.unit]
        base = _EPOCH if col.type.tz else _EPOCH.replace(tzinfo=None)
        values = integers(pa.int64())
        return [None if v is None else base + dt.timedelta(microseconds=v * per) for v in values]
    return col.to_pylist()


def read_rows(layer: str, name: str, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every row of a small unpartitioned table (ops/runs, ops/releases) as Python dicts.

    Why not `read(...).to_pylist()`: Arrow datasets and pyarrow's conversions of dates and times
    import pandas, which was 1 s of `asof status` (2.0 s). The table's files are read one by one
    with pyarrow.parquet instead; a partitioned table goes to `read`."""
    tbl = table(layer, name)
    schema = pa.schema(tbl.schema().to_arrow())
    wanted = list(columns) if columns else schema.names
    if tbl.metadata().partition_columns:
        return read(layer, name, columns=wanted).to_pylist()
    import pyarrow.parquet as pq

    actions = pa.RecordBatchReader.from_stream(tbl.get_add_actions(flatten=True)).read_all()
    fs, root = _table_fs(layer, name)
    rows: list[dict[str, Any]] = []
    for rel in actions.column("path").to_pylist():
        with fs.open_input_file(_join(root, unquote(rel))) as fh:
            piece = pq.ParquetFile(fh).read()
        n = piece.num_rows
        # a column added after the file was written reads as null, as it does through Delta
        values = {
            c: _python_values(piece.column(c)) if c in piece.column_names else [None] * n for c in wanted
        }
        rows += [{c: values[c][i] for c in wanted} for i in range(n)]
    return rows


def date_filter(column: str, days: Iterable[dt.date]) -> ds.Expression:
    import pyarrow.dataset as ds

    return ds.field(column).isin(pa.array(sorted(set(days)), pa.date32()))


def _literal(day: dt.date) -> str:
    if not isinstance(day, dt.date) or isinstance(day, dt.datetime):
        raise LakeError(f"predicate value must be a date, got {day!r}")
    return f"'{day.isoformat()}'"


def date_predicate(column: str, start: dt.date, end: dt.date | None = None) -> str:
    """A delta-rs predicate over validated dates only (never user text)."""
    if not isinstance(column, str) or not _NAME.fullmatch(column):
        raise LakeError(f"invalid column name {column!r}")
    end = end or start
    if start == end:
        return f"{column} = {_literal(start)}"
    return f"{column} >= {_literal(start)} AND {column} <= {_literal(end)}"


def dates_predicate(column: str, days: Iterable[dt.date]) -> str:
    """A delta-rs predicate matching exactly `days` (validated dates only, never user text)."""
    days = sorted(set(days))
    if not days:
        raise LakeError("a predicate needs at least one date")
    if len(days) == 1:
        return date_predicate(column, days[0])
    if not isinstance(column, str) or not _NAME.fullmatch(column):
        raise LakeError(f"invalid column name {column!r}")
    return f"{column} IN ({', '.join(_literal(d) for d in days)})"


@contextlib.contextmanager
def lock(layer: str, name: str, timeout_s: float | None = None) -> Iterator[None]:
    """One writer per table at a time, across processes on this host.

    delta-rs lets two writers of the same partition race (one fails with CommitFailedError, and a
    replace-then-append sequence could interleave), so writers queue on an OS file lock under
    ASOF_HOME/locks. The lock is per host. On object storage each single commit is still atomic
    across hosts (delta-rs writes the log entry with a conditional put on S3; stores without it need
    the DynamoDB locking provider in ASOF_STORAGE_OPTIONS), but writers of the same table on two
    hosts are not serialised: run them from one host or give them ASOF_HOME/locks on a shared disk
    with working flock (docs/scaling.md).
    """
    _check_name(layer, name)
    lock_dir = settings().locks
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{layer}.{name}.lock"
    deadline = time.monotonic() + (LOCK_TIMEOUT_S if timeout_s is None else timeout_s)
    with open(path, "a+") as fh:
        waited = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LakeError(
                        f"timed out waiting for the write lock on {layer}/{name} ({path}); "
                        "another run is writing this table"
                    ) from None
                if not waited:
                    log.info("waiting for the write lock on %s/%s", layer, name)
                    crash_point(f"lock_wait:{layer}/{name}")
                    waited = True
                time.sleep(0.2)
        try:
            crash_point(f"locked:{layer}/{name}")
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _with_retries(what: str, fn) -> None:
    for attempt in range(1, COMMIT_RETRIES + 1):
        try:
            fn()
            return
        except CommitFailedError:
            if attempt == COMMIT_RETRIES:
                raise
            delay = min(5.0, 0.1 * 2**attempt) * (0.5 + random.random())
            log.warning("commit conflict on %s (attempt %d), retrying in %.2fs", what, attempt, delay)
            time.sleep(delay)


def _commit(layer: str, name: str, data: pa.Table | Batches, write, schema: pa.Schema | None = None) -> None:
    """One Delta commit of `data` through `write(payload, **options)`, with retries and crash points.

    `data` is a table, or a function that starts a fresh stream of record batches of `schema` (a
    retried commit reads the stream again, since a stream can be consumed once)."""
    what = f"{layer}/{name}"
    crash_point(f"before_commit:{what}")
    if _armed() and _hit(f"during_commit:{what}"):
        whole = data if isinstance(data, pa.Table) else pa.Table.from_batches(list(data()), schema)
        # small target files: the writer flushes data files before it has read the whole stream
        write(_dying_stream(whole), target_file_size=1)
    if isinstance(data, pa.Table):
        _with_retries(what, lambda: write(data))
    else:
        _with_retries(what, lambda: write(pa.RecordBatchReader.from_batches(schema, data())))
    crash_point(f"after_commit:{what}")


def _writer(layer: str, name: str, **options) -> tuple[Callable[..., None], Callable[[], int]]:
    """(write(payload, **extra) for `_commit`, written() -> the version it made).

    Each attempt writes through a freshly opened handle, which delta-rs moves to the new version on
    commit: one log replay per write instead of two (the writer's own and a re-open for the
    version). A table that does not exist yet is created from its URI."""
    target = uri(layer, name)
    last: list[DeltaTable | None] = [None]

    def write(payload, **extra) -> None:
        try:
            handle: DeltaTable | None = table(layer, name)
        except LakeError:
            handle = None
        write_deltalake(
            target if handle is None else handle, payload, storage_options=_opts(), **options, **extra
        )
        last[0] = handle

    def written() -> int:
        handle = last[0]
        if handle is not None:
            return handle.version()
        # the table this write created; opened without an `open:` crash point, so a write makes
        # one such point whether or not its table existed (kill tests count them per process)
        return DeltaTable(target, storage_options=_opts()).version()

    return write, written


def _conform(data: pa.Table, schema: pa.Schema | None) -> pa.Table:
    if schema is None:
        return data
    missing = [f.name for f in schema if f.name not in data.column_names]
    if missing:
        raise LakeError(f"data is missing columns {missing}")
    return data.select(schema.names).cast(schema)


def replace(
    layer: str,
    name: str,
    data: pa.Table,
    predicate: str,
    partition_by: list[str] | None = None,
    schema: pa.Schema | None = None,
) -> int:
    """Atomically replace the rows matching `predicate` with `data` (one Delta commit).

    Every row of `data` must match the predicate (delta-rs refuses the write otherwise), which is
    what makes a rerun of a date unable to touch any other date. Returns the new table version.
    """
    data = _conform(data, schema)
    return _replace(layer, name, data, predicate, partition_by, data.schema)


def replace_stream(
    layer: str,
    name: str,
    batches: Batches,
    schema: pa.Schema,
    predicate: str,
    partition_by: list[str] | None = None,
) -> int:
    """`replace` from a stream of record batches, still in one Delta commit: delta-rs writes the
    data files as the batches come and commits once at the end, so a date bigger than memory is
    written without ever being one table, and a writer killed (or failing) mid-stream commits
    nothing (its files are orphans, `vacuum`).

    `batches()` starts the stream afresh (a commit conflict is retried from the start); each batch
    is cast to `schema`."""

    def conformed() -> Iterator[pa.RecordBatch]:
        for batch in batches():
            missing = [f.name for f in schema if f.name not in batch.schema.names]
            if missing:
                raise LakeError(f"data is missing columns {missing}")
            yield batch.select(schema.names).cast(schema)

    return _replace(layer, name, conformed, predicate, partition_by, schema)


def _replace(
    layer: str,
    name: str,
    data: pa.Table | Batches,
    predicate: str,
    partition_by: list[str] | None,
    schema: pa.Schema,
) -> int:
    target = uri(layer, name)
    if settings().is_local_lake:
        Path(target).parent.mkdir(parents=True, exist_ok=True)

    write, written = _writer(layer, name, mode="overwrite", predicate=predicate, partition_by=partition_by)
    with lock(layer, name):
        _commit(layer, name, data, write, schema)
        return written()


def append(
    layer: str,
    name: str,
    data: pa.Table,
    schema: pa.Schema | None = None,
    partition_by: list[str] | None = None,
) -> int:
    data = _conform(data, schema)
    target = uri(layer, name)
    if settings().is_local_lake:
        Path(target).parent.mkdir(parents=True, exist_ok=True)

    write, written = _writer(layer, name, mode="append", partition_by=partition_by)
    with lock(layer, name):
        _commit(layer, name, data, write)
        return written()


def overwrite(layer: str, name: str, data: pa.Table, partition_by: list[str] | None = None) -> int:
    """Replace the whole table with `data` in one commit (its schema may change). For tables that
    are always written whole, such as saved datasets (flows/features/feast_offline.py)."""
    target = uri(layer, name)
    if settings().is_local_lake:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    write, written = _writer(
        layer, name, mode="overwrite", schema_mode="overwrite", partition_by=partition_by
    )
    with lock(layer, name):
        _commit(layer, name, data, write)
        return written()


def delete(layer: str, name: str, predicate: str) -> None:
    if not exists(layer, name):
        return
    with lock(layer, name):
        crash_point(f"before_commit:{layer}/{name}")
        _with_retries(f"{layer}/{name}", lambda: table(layer, name).delete(predicate))
        crash_point(f"after_commit:{layer}/{name}")


def _table_fs(layer: str, name: str) -> tuple[pafs.FileSystem, str]:
    """The table's directory (data files and `_delta_log`) as a pyarrow filesystem, and the table
    root in it. Object storage goes through delta-rs's own store (same URI, same storage options),
    so listing and deleting files needs no second set of credentials or client library."""
    if settings().is_local_lake:
        return pafs.LocalFileSystem(), str(Path(uri(layer, name)).resolve())
    from deltalake.fs import DeltaStorageHandler

    return pafs.PyFileSystem(DeltaStorageHandler(uri(layer, name), options=_opts())), ""


def _join(root: str, rel: str) -> str:
    return f"{root}/{rel}" if root else rel


def _log_referenced(fs: pafs.FileSystem, root: str) -> set[str]:
    """Every data file any version still in the Delta log refers to (added or removed): the files
    time travel to those versions needs."""
    paths: set[str] = set()
    entries = fs.get_file_info(pafs.FileSelector(_join(root, "_delta_log"), allow_not_found=True))
    for entry in entries:
        if entry.type != pafs.FileType.File:
            continue
        base = entry.base_name
        stem, _, suffix = base.partition(".")
        if suffix == "json" and stem.isdigit():
            with fs.open_input_stream(entry.path) as fh:
                text = fh.read().decode()
            for line in text.splitlines():
                if not line.strip():
                    continue
                action = json.loads(line)
                for kind in ("add", "remove", "cdc"):
                    if kind in action and action[kind].get("path"):
                        paths.add(unquote(action[kind]["path"]))
        elif ".checkpoint." in base and base.endswith(".parquet"):
            with fs.open_input_file(entry.path) as fh:
                pf = pq.ParquetFile(fh)
                cols = [c for c in ("add", "remove") if c in pf.schema_arrow.names]
                tbl = pf.read(columns=cols)
            for c in cols:
                for v in tbl.column(c).to_pylist():
                    if v and v.get("path"):
                        paths.add(unquote(v["path"]))
    return paths


def orphan_files(layer: str, name: str) -> list[str]:
    """Data files under the table that no version of its log refers to: what a writer that died
    (SIGKILL, lost machine) or failed before committing leaves behind. Readers never see them."""
    if not exists(layer, name):
        return []
    with lock(layer, name):
        return _orphans(layer, name)


def _orphans(layer: str, name: str) -> list[str]:
    t = table(layer, name)
    # full vacuum candidates: every file not referenced by the *current* version (orphans and the
    # files of older versions); keep only those no version in the log refers to
    candidates = t.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=True, full=True)
    referenced = _log_referenced(*_table_fs(layer, name))
    return sorted(p for p in candidates if unquote(p) not in referenced)


def _remove_files(layer: str, name: str, rel_paths: list[str]) -> None:
    """Delete data files of the table (paths relative to its root, as vacuum lists them)."""
    fs, root = _table_fs(layer, name)
    local_root = Path(root).resolve() if root else None
    for rel in rel_paths:
        clean = unquote(rel)
        parts = clean.split("/")
        if not clean or clean.startswith("/") or ".." in parts or "_delta_log" in parts:
            raise LakeError(f"refusing to delete {clean!r}: not a data file of {layer}/{name}")
        if local_root is not None:
            path = (local_root / clean).resolve()
            if local_root not in path.parents:
                raise LakeError(f"refusing to delete {path}: not a data file of {layer}/{name}")
            path.unlink(missing_ok=True)
            continue
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(_join(root, clean))


def vacuum(layer: str, name: str, retention_hours: int | None = None, dry_run: bool = False) -> list[str]:
    """Remove unreferenced files; returns what was (or, with dry_run, would be) removed.

    Default (`retention_hours=None`): **orphans only**, the data files of commits that never happened
    (a killed or failed writer). Every version stays readable: time travel, `restore` and
    `asof reproduce` keep working. Safe at any time: writers of this table are locked out meanwhile
    (on object storage shared by several hosts, only writers on this host: see `lock`).

    `retention_hours=N`: also remove the files of versions superseded more than N hours ago (and
    orphans older than that); those versions can no longer be read, restored or reproduced.
    """
    if not exists(layer, name):
        return []
    with lock(layer, name):
        if retention_hours is not None:
            if retention_hours < 0:
                raise LakeError(f"retention_hours must be >= 0, got {retention_hours}")
            return table(layer, name).vacuum(
                retention_hours=int(retention_hours),
                enforce_retention_duration=False,
                dry_run=dry_run,
                full=True,
            )
        orphans = _orphans(layer, name)
        if not dry_run:
            _remove_files(layer, name, orphans)
        return orphans


def history(layer: str, name: str, limit: int | None = None) -> list[dict]:
    """The table's commits, newest first: version, timestamp, operation, predicate, rows added."""
    out = []
    for h in table(layer, name).history(limit):
        params = h.get("operationParameters") or {}
        metrics = h.get("operationMetrics") or {}
        ts = h.get("timestamp")
        out.append(
            {
                "version": h.get("version"),
                "timestamp": dt.datetime.fromtimestamp(ts / 1000, dt.UTC).isoformat() if ts else None,
                "operation": h.get("operation"),
                "predicate": params.get("predicate"),
                "rows_added": metrics.get("num_added_rows"),
                "rows_removed": metrics.get("num_removed_rows") or metrics.get("num_deleted_rows"),
            }
        )
    return out


def restore(layer: str, name: str, version: int) -> int:
    """Make `version` the table's current content again (a new commit: later versions stay
    readable, so a restore can itself be undone). Returns the new version."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise LakeError(f"version must be a non-negative integer, got {version!r}")
    with lock(layer, name):
        t = table(layer, name)
        if version > t.version():
            raise LakeError(f"{layer}/{name} has no version {version} (current: {t.version()})")
        crash_point(f"before_commit:{layer}/{name}")
        t.restore(version)
        crash_point(f"after_commit:{layer}/{name}")
        return table(layer, name).version()


def list_tables(layer: str) -> list[str]:
    """Tables present in a layer (directories holding a `_delta_log`), local or on object storage."""
    if layer not in LAYERS:
        raise LakeError(f"unknown lake layer {layer!r}")
    s = settings()
    if s.is_local_lake:
        root = Path(s.lake_uri) / layer
        if not root.exists():
            return []
        return sorted(p.name for p in root.iterdir() if (p / "_delta_log").exists())
    from deltalake.fs import DeltaStorageHandler

    fs = pafs.PyFileSystem(DeltaStorageHandler(f"{s.lake_uri}/{layer}", options=_opts()))
    dirs = fs.get_file_info(pafs.FileSelector("", allow_not_found=True))
    names = [d.base_name for d in dirs if d.type == pafs.FileType.Directory and _NAME.fullmatch(d.base_name)]
    return sorted(n for n in names if exists(layer, n))


# ------------------------------------------------------------------ integrity (asof verify)


def log_problems(layer: str, name: str) -> list[tuple[str, str]]:
    """(file, problem) for every damage in a table's Delta log that a reader would not report:
    a commit file that is empty, cut mid-line or not JSON (delta-rs reads an emptied newest commit
    as a version that changed nothing: its rows silently vanish), a version missing from the
    sequence, a `_last_checkpoint` hint naming a checkpoint that is not there, and data files the
    current version needs that are gone. Files are named relative to the table root."""
    fs, root = _table_fs(layer, name)
    log_dir = _join(root, "_delta_log")
    entries = fs.get_file_info(pafs.FileSelector(log_dir, allow_not_found=True))
    problems: list[tuple[str, str]] = []
    commits: dict[int, str] = {}
    checkpoints: set[int] = set()
    for entry in entries:
        if entry.type != pafs.FileType.File:
            continue
        stem, _, suffix = entry.base_name.partition(".")
        if not stem.isdigit():
            continue
        rel = f"_delta_log/{entry.base_name}"
        if suffix == "json":
            commits[int(stem)] = rel
            with fs.open_input_stream(entry.path) as fh:
                data = fh.read()
            if not data.strip():
                problems.append((rel, "commit file is empty: the version's changes are lost"))
                continue
            try:
                for line in data.decode("utf-8").splitlines():
                    if line.strip():
                        json.loads(line)
            except (UnicodeDecodeError, ValueError) as exc:
                problems.append((rel, f"commit file is cut or not JSON ({exc})"))
        elif suffix.startswith("checkpoint") and entry.base_name.endswith(".parquet"):
            checkpoints.add(int(stem))
    if commits:
        first = min(checkpoints) if checkpoints else min(commits)
        missing = [v for v in range(first + (1 if checkpoints else 0), max(commits) + 1) if v not in commits]
        if not checkpoints and min(commits) != 0:
            missing = list(range(0, min(commits))) + missing
        for v in missing:
            problems.append((f"_delta_log/{v:020d}.json", "commit file is missing from the sequence"))
    hint_info = fs.get_file_info(_join(log_dir, "_last_checkpoint"))
    if hint_info.type == pafs.FileType.File:
        try:
            with fs.open_input_stream(hint_info.path) as fh:
                hinted = int(json.loads(fh.read())["version"])
            if hinted not in checkpoints:
                problems.append(
                    ("_delta_log/_last_checkpoint", f"names checkpoint {hinted}, which is not there")
                )
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(("_delta_log/_last_checkpoint", f"unreadable ({exc})"))
    if problems:
        return problems
    try:
        current = table(layer, name)
        wanted = [unquote(p) for p in current.get_add_actions(flatten=True).column("path").to_pylist()]
    except LakeError as exc:
        return [("_delta_log", str(exc))]
    infos = fs.get_file_info([_join(root, p) for p in wanted])
    return [
        (p, "data file of the current version is missing")
        for p, i in zip(wanted, infos, strict=True)
        if i.type != pafs.FileType.File
    ]


def partition_rows(layer: str, name: str, column: str = BATCH_DATE) -> dict[dt.date, int] | None:
    """Rows per value of a date partition column of the current version, from the log's file
    statistics (no data read); None when a file carries no row count."""
    actions = table(layer, name).get_add_actions(flatten=True)
    counts, key = actions.column("num_records").to_pylist(), f"partition.{column}"
    if key not in actions.column_names or any(c is None for c in counts):
        return None
    out: dict[dt.date, int] = {}
    for value, n in zip(actions.column(key).to_pylist(), counts, strict=True):
        day = value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
        out[day] = out.get(day, 0) + int(n)
    return out


def newest_commit(layer: str, name: str) -> str | None:
    """The newest commit file of a table's log, as `log_problems` names files."""
    fs, root = _table_fs(layer, name)
    entries = fs.get_file_info(pafs.FileSelector(_join(root, "_delta_log"), allow_not_found=True))
    versions = [
        int(e.base_name.partition(".")[0])
        for e in entries
        if e.base_name.endswith(".json") and e.base_name.partition(".")[0].isdigit()
    ]
    return f"_delta_log/{max(versions):020d}.json" if versions else None


def set_aside_log_file(layer: str, name: str, rel: str, keep_dir: Path) -> Path:
    """Move a damaged `_delta_log` file (`rel`, as `log_problems` names it) of a local table into
    `keep_dir` (kept for forensics, never deleted). Only the newest commit or the checkpoint hint
    may go: without an older commit the versions after it could not be read."""
    if not settings().is_local_lake:
        raise LakeError(f"{layer}/{name}: set a damaged log file aside by hand on object storage")
    root = Path(uri(layer, name)).resolve()
    path = (root / rel).resolve()
    if path.parent != root / "_delta_log" or not path.is_file():
        raise LakeError(f"{layer}/{name}: {rel} is not a file of its _delta_log")
    if rel != "_delta_log/_last_checkpoint" and rel != newest_commit(layer, name):
        raise LakeError(
            f"{layer}/{name}: {rel} is not the newest commit: rebuild the table (operations.md section 11)"
        )
    target = keep_dir / layer / name / f"{path.name}.{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    target.parent.mkdir(parents=True, exist_ok=True)
    path.replace(target)
    return target
