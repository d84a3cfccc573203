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
import logging
import os
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from flows.config import settings

log = logging.getLogger(__name__)

LAYERS = ("bronze", "silver", "quarantine", "gold", "ops")
COMMIT_RETRIES = 8
LOCK_TIMEOUT_S = float(os.environ.get("ASOF_LOCK_TIMEOUT_S", "1800"))


class LakeError(RuntimeError):
    pass


def _check_name(layer: str, table: str) -> None:
    if layer not in LAYERS:
        raise LakeError(f"unknown lake layer {layer!r}")
    if not table.replace("_", "").isalnum():
        raise LakeError(f"invalid table name {table!r}")


def uri(layer: str, table: str) -> str:
    _check_name(layer, table)
    return f"{settings().lake_uri}/{layer}/{table}"


def _opts() -> dict[str, str] | None:
    return settings().storage_options or None


def exists(layer: str, table: str) -> bool:
    return DeltaTable.is_deltatable(uri(layer, table), storage_options=_opts())


def table(layer: str, name: str, version: int | None = None) -> DeltaTable:
    try:
        return DeltaTable(uri(layer, name), version=version, storage_options=_opts())
    except TableNotFoundError:
        raise LakeError(f"Delta table {layer}/{name} does not exist yet") from None


def version(layer: str, name: str) -> int | None:
    return table(layer, name).version() if exists(layer, name) else None


def dataset(layer: str, name: str, version: int | None = None) -> ds.Dataset:
    """An Arrow dataset over the table: DuckDB and pyarrow scan it lazily with filter pushdown."""
    return table(layer, name, version).to_pyarrow_dataset()


def read(
    layer: str,
    name: str,
    filter: ds.Expression | None = None,
    columns: Sequence[str] | None = None,
    version: int | None = None,
    schema: pa.Schema | None = None,
) -> pa.Table:
    """Read a table (or an empty table of `schema` when it does not exist yet)."""
    if not exists(layer, name):
        if schema is None:
            raise LakeError(f"Delta table {layer}/{name} does not exist yet")
        empty = schema.empty_table()
        return empty.select(list(columns)) if columns else empty
    return dataset(layer, name, version).to_table(filter=filter, columns=list(columns) if columns else None)


def date_filter(column: str, days: Iterable[dt.date]) -> ds.Expression:
    return ds.field(column).isin(pa.array(sorted(set(days)), pa.date32()))


def _literal(day: dt.date) -> str:
    if not isinstance(day, dt.date) or isinstance(day, dt.datetime):
        raise LakeError(f"predicate value must be a date, got {day!r}")
    return f"'{day.isoformat()}'"


def date_predicate(column: str, start: dt.date, end: dt.date | None = None) -> str:
    """A delta-rs predicate over validated dates only (never user text)."""
    if not column.replace("_", "").isalnum():
        raise LakeError(f"invalid column name {column!r}")
    end = end or start
    if start == end:
        return f"{column} = {_literal(start)}"
    return f"{column} >= {_literal(start)} AND {column} <= {_literal(end)}"


@contextlib.contextmanager
def lock(layer: str, name: str, timeout_s: float | None = None) -> Iterator[None]:
    """One writer per table at a time, across processes on this host.

    delta-rs lets two writers of the same partition race (one fails with CommitFailedError, and a
    replace-then-append sequence could interleave), so writers queue on an OS file lock. For object
    storage shared by several hosts, configure a shared lock directory (ASOF_HOME on shared disk) or
    a DynamoDB locking provider in the storage options.
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
                    waited = True
                time.sleep(0.2)
        try:
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
    target = uri(layer, name)
    if settings().is_local_lake:
        Path(target).parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        write_deltalake(
            target,
            data,
            mode="overwrite",
            predicate=predicate,
            partition_by=partition_by,
            storage_options=_opts(),
        )

    with lock(layer, name):
        _with_retries(f"{layer}/{name}", write)
        return table(layer, name).version()


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

    def write() -> None:
        write_deltalake(target, data, mode="append", partition_by=partition_by, storage_options=_opts())

    with lock(layer, name):
        _with_retries(f"{layer}/{name}", write)
        return table(layer, name).version()


def delete(layer: str, name: str, predicate: str) -> None:
    if not exists(layer, name):
        return
    with lock(layer, name):
        _with_retries(f"{layer}/{name}", lambda: table(layer, name).delete(predicate))


def vacuum(layer: str, name: str, retention_hours: int = 0, dry_run: bool = False) -> list[str]:
    """Remove files no live version references (orphans of failed commits, old versions).

    retention 0 is only safe while no reader holds an old version; the lock keeps writers out.
    """
    if not exists(layer, name):
        return []
    with lock(layer, name):
        return table(layer, name).vacuum(
            retention_hours=retention_hours, enforce_retention_duration=False, dry_run=dry_run
        )


def list_tables(layer: str) -> list[str]:
    """Tables present in a layer (local lakes only; object-store listing goes through the catalogue)."""
    root = Path(settings().lake_uri) / layer
    if not settings().is_local_lake or not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "_delta_log").exists())
