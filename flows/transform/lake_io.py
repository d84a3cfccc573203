"""dbt-duckdb plugin: the lake as dbt sources and the gold tables as Delta, through `flows.storage.lake` only.

* `load()` (sources with `meta: {plugin: lake}`): hands DuckDB the Arrow dataset of a silver Delta
  table (`lake.dataset`), registered as a view. DuckDB scans it lazily with projection and filter
  pushdown, so a model filtering on `_batch_date` reads only those partitions. No DuckDB extension
  is involved (the `delta` extension downloads at run time and fails offline). A table that does not
  exist yet reads as an empty table of its silver schema. The scans read ahead at most
  SCAN_FRAGMENT_READAHEAD files and SCAN_BATCH_READAHEAD batches (`BoundedScanDataset`): what
  pyarrow decodes ahead is outside DuckDB's memory limit.
* `store()`: called by the project's `publish_gold` on-run-end hook (macros/publish_gold.sql) once
  every model and test of the invocation passed. It fetches the mart relation from DuckDB as Arrow
  and replaces exactly the as-of dates computed (`lake.replace` with an `as_of_date` range
  predicate: one Delta commit per table). Nothing is written to Delta through DuckDB.

What was read and written is recorded in `LAST_RUN` for the caller (flows/transform/stage.py) to put in
the run record; it is reset at the start of every dbt invocation by `reset_run_record()`.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
from dbt.adapters.duckdb.plugins import BasePlugin
from dbt.adapters.duckdb.utils import SourceConfig, TargetConfig

from flows.sources import get_source, silver_schema
from flows.storage import lake
from flows.transform.gold_schema import GOLD_PARTITION_BY, gold_schemas

# Gold column types, order and nullability are the marts' enforced dbt contract (contract §7,
# dbt_project/models/marts/_marts__models.yml): `lake.replace` casts the mart to exactly this schema.
GOLD_SCHEMAS: dict[str, pa.Schema] = gold_schemas()

_lock = threading.Lock()
LAST_RUN: dict[str, Any] = {"sources": {}, "published": {}}
# datasets opened during the current invocation: every model of a run sees the same silver version
# (dbt-duckdb calls load() again for each reference), and each Delta log is read once per run
_DATASETS: dict[tuple[str, str], Any] = {}


# pyarrow's scanner reads ahead 4 files x 16 batches by default, each batch decoded from a
# ~1M-row row group: on a 20M-row day (4 silver files) `int_transactions__deduplicated` peaked at
# 3.85 GB with DuckDB's limit at 2 GB, 2.51 GB with these (and in 22 s instead of 28: less to
# allocate). DuckDB consumes one scan stream at a time anyway; pyarrow still decodes a batch's
# columns on its own threads.
SCAN_FRAGMENT_READAHEAD = 1
SCAN_BATCH_READAHEAD = 2


class BoundedScanDataset(ds.FileSystemDataset):
    """A FileSystemDataset whose scanners read ahead at most SCAN_FRAGMENT_READAHEAD files and
    SCAN_BATCH_READAHEAD batches. DuckDB calls `scanner(columns=..., filter=...)` on the dataset it
    scans, so projection, filter and partition pruning still reach pyarrow."""

    def scanner(self, *args: Any, **kwargs: Any) -> ds.Scanner:
        kwargs.setdefault("fragment_readahead", SCAN_FRAGMENT_READAHEAD)
        kwargs.setdefault("batch_readahead", SCAN_BATCH_READAHEAD)
        return super().scanner(*args, **kwargs)


def bounded_scans(data: ds.FileSystemDataset) -> BoundedScanDataset:
    """The same files, schema, format and filesystem, scanned with bounded readahead."""
    return BoundedScanDataset(
        list(data.get_fragments()), data.schema, data.format, data.filesystem, data.partition_expression
    )


def reset_run_record() -> None:
    """Start a new invocation: forget what was read and written (flows/transform/stage.py calls this)."""
    with _lock:
        LAST_RUN["sources"] = {}
        LAST_RUN["published"] = {}
        _DATASETS.clear()


def _iso(value: Any, what: str) -> dt.date:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"publish_gold: {what} {value!r} is not an ISO date") from None


class Plugin(BasePlugin):
    def initialize(self, plugin_config: dict[str, Any]) -> None:
        self._conn = None

    def configure_connection(self, conn) -> None:
        # The parent DuckDB connection: store() opens its own cursor on it to fetch a mart.
        self._conn = conn
        # dbt loads sources from parallel threads, each running `CREATE SCHEMA IF NOT EXISTS <layer>`;
        # creating the schemas up front avoids DuckDB's write-write conflict between them.
        for layer in lake.LAYERS:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {layer}")

    def default_materialization(self) -> str:
        return "view"

    def load(self, source_config: SourceConfig):
        layer = source_config.get("layer", source_config.schema)
        name = source_config.get("table", source_config.identifier)
        with _lock:
            cached = _DATASETS.get((layer, name))
        if cached is not None:
            return cached
        if lake.exists(layer, name):
            latest, version = lake.versioned_dataset(layer, name)
            data = bounded_scans(latest)
        else:
            version = None
            data = silver_schema(get_source(name)).empty_table()
        with _lock:
            data = _DATASETS.setdefault((layer, name), data)
            LAST_RUN["sources"].setdefault(f"{layer}/{name}", version)
        return data

    def store(self, target_config: TargetConfig) -> None:
        cfg = dict(target_config.config or {})
        table = cfg["table"]
        if table not in GOLD_SCHEMAS:
            raise ValueError(f"publish_gold: {table!r} is not a gold table ({', '.join(GOLD_SCHEMAS)})")
        start = _iso(cfg["start_date"], "start_date")
        end = _iso(cfg["end_date"], "end_date")
        if end < start:
            raise ValueError(f"publish_gold: end_date {end} is before start_date {start}")
        if self._conn is None:
            raise RuntimeError("publish_gold: the lake plugin has no DuckDB connection")
        t0 = time.perf_counter()
        cursor = self._conn.cursor()
        try:
            # sorted by as-of date then entity: delta-rs writes the partitions 3x faster, files
            # compress better, and reruns produce the same files.
            key = GOLD_SCHEMAS[table].names[0]
            data = cursor.sql(
                f"select * from {target_config.relation} order by as_of_date, {key}"
            ).to_arrow_table()
        finally:
            cursor.close()
        fetched = time.perf_counter()
        version = lake.replace(
            "gold",
            table,
            data,
            predicate=lake.date_predicate("as_of_date", start, end),
            partition_by=GOLD_PARTITION_BY,
            schema=GOLD_SCHEMAS[table],
        )
        with _lock:
            LAST_RUN["published"][table] = {
                "rows": data.num_rows,
                "version": version,
                "seconds": round(time.perf_counter() - t0, 3),
                "fetch_seconds": round(fetched - t0, 3),
            }
