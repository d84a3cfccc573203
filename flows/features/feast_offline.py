"""Feast offline store over the project's Delta lake: Arrow scans + a DuckDB `ASOF` join.

Configured in `feature_repo/feature_store.yaml` through Feast's plug-in mechanism::

    offline_store:
      type: flows.features.feast_offline.DeltaDuckDBOfflineStore

Feature views keep ordinary `FileSource(path=lake.uri("gold", T), file_format=DeltaFormat())`
sources (so Feast's stock `file` store can read the same repo, which the tests use as the
reference). This store resolves such a source back to its logical lake table (`<layer>/<table>`,
the last two path components) and reads it through `flows.storage.lake` (deltalake -> Arrow dataset ->
DuckDB, no DuckDB extension, no network), optionally at a pinned Delta version
(`pinned_versions`), which is how training sets are reproduced with time travel.

Point-in-time rule of `get_historical_features`, per entity row and feature view: the feature row
with the same join keys and the greatest `timestamp_field <= entity timestamp`; ties on the
timestamp go to the greatest `created_timestamp_column`; the row is used only when it is within
the view's ttl, otherwise the features are null. The ttl lower bound is exclusive by default
(`ts > entity_ts - ttl`): a daily row published at D+1 00:00 with ttl 1 day is not served at
D+2 00:00, so an entity with no newer row reads null rather than a stale value (contract §8). Feast's
own stores use an inclusive bound (`ts >= entity_ts - ttl`); `ttl_lower_bound: inclusive` gives
exactly that. The two differ only for an entity timestamp exactly `ttl` after the latest row.

Every entity row is returned exactly once, in the order given, with nulls where nothing is in
ttl. Feast's stock `file` store (0.67) instead drops an entity row whose entity has feature rows
but none within ttl, and collapses entity rows sharing join keys and timestamp; on the rows it
does return, results are equal (tests/test_feast_offline.py). It also reads a Delta table's
directory as plain Parquet, i.e. including files that later versions removed.

Entity timestamps may have nanoseconds; feature timestamps are microseconds. The join compares
with the entity timestamp rounded down (upper bound, exclusive ttl bound) or up (inclusive ttl
bound), which is exact for both rules. `filter_by_created_timestamp=True` (Feast >= 0.65) also
requires `created_timestamp_column <= entity timestamp`: knowledge-time retrieval.

Besides pandas entity frames: a SQL entity query (exactly one SELECT over lake tables named
`<layer>.<table>`, run without file or network access; `entity_sql`), and no entity frame at all
(`start_date`/`end_date`: every distinct (join keys, timestamp) of the views' rows in the range is
an entity row, as in Feast's SQL stores). Saved datasets persist to Parquet (anywhere) or a lake
table (`lake_saved_dataset_storage`) and read back through this store, Parquet sources being read
as Parquet (`ParquetFiles`), Delta ones as lake tables. `offline_write_batch` appends to a view's
lake table; `write_logged_features` writes feature logs (flows/features/feature_logging.py). What each does,
exactly: docs/feature-store.md; the conformance tests: tests/test_feast_conformance.py.

Materialization reads (`pull_latest_from_table_or_query`, `pull_all_from_table_or_query`) use
the same inclusive [start, end] window as Feast's stores; inside `current_rows_only()` they skip
rows superseded by a newer row of the same entity (see flows.features.featurestore.materialize_date).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from feast.data_format import DeltaFormat
from feast.data_source import DataSource
from feast.errors import SavedDatasetLocationAlreadyExists
from feast.feature_logging import LOG_DATE_FIELD, LoggingConfig, LoggingSource
from feast.feature_view import DUMMY_ENTITY_ID, DUMMY_ENTITY_VAL, FeatureView
from feast.infra.offline_stores.file_source import (
    FileLoggingDestination,
    FileSource,
    SavedDatasetFileStorage,
)
from feast.infra.offline_stores.offline_store import (
    OfflineStore,
    RetrievalJob,
    RetrievalMetadata,
)
from feast.infra.offline_stores.offline_utils import DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from feast.saved_dataset import SavedDatasetStorage
from feast.utils import _get_requested_feature_views_to_features_dict, compute_non_entity_date_range
from pydantic import StrictStr

from flows.features.feast_log_destination import LakeLoggingDestination
from flows.storage import lake

if TYPE_CHECKING:
    import pyarrow.dataset as ds

log = logging.getLogger(__name__)

TS = pa.timestamp("us", tz="UTC")

# ------------------------------------------------------------------ table resolution and pinning

_PINS: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar("asof_delta_pins", default=None)


@contextlib.contextmanager
def pinned_versions(versions: Mapping[str, int]) -> Iterator[None]:
    """Read the named lake tables (`"gold/customer_profile"` -> Delta version) at those versions.

    Applies to every retrieval job created inside the block (the version is fixed when the job is
    created, so the job may be executed later).
    """
    token = _PINS.set({**(_PINS.get() or {}), **{k: int(v) for k, v in versions.items()}})
    try:
        yield
    finally:
        _PINS.reset(token)


_CURRENT_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("asof_current_only", default=False)


@contextlib.contextmanager
def current_rows_only() -> Iterator[None]:
    """Make materialization reads skip superseded rows.

    Inside the block, `pull_latest_from_table_or_query` / `pull_all_from_table_or_query` (what
    `FeatureStore.materialize` calls) return a row only if its entity has no newer row anywhere in
    the table. Materializing one day then writes exactly the rows of that day that are still the
    latest, so a backfill writes every entity once, in any order, and never puts an older value
    over a newer one (flows.features.featurestore.materialize_date).
    """
    token = _CURRENT_ONLY.set(True)
    try:
        yield
    finally:
        _CURRENT_ONLY.reset(token)


@dataclass(frozen=True)
class LakeTable:
    layer: str
    name: str
    version: int

    @property
    def key(self) -> str:
        return f"{self.layer}/{self.name}"


@dataclass(frozen=True)
class ParquetFiles:
    """A source that is plain Parquet, not a lake table: a saved dataset or a feature log that Feast
    (or a user) wrote as Parquet, inside or outside the lake. Read with pyarrow, never as Delta."""

    path: str

    @property
    def key(self) -> str:
        return f"parquet:{self.path}"


Readable = LakeTable | ParquetFiles

_warned_paths: set[str] = set()


def is_delta(source: DataSource) -> bool:
    """A FileSource in Delta format names a lake table; any other FileSource is plain Parquet."""
    return isinstance(source, FileSource) and isinstance(source.file_format, DeltaFormat)


def table_key(source: DataSource) -> str:
    """The logical lake table (`layer/table`) behind a feature view's FileSource."""
    if not isinstance(source, FileSource):
        raise TypeError(
            f"DeltaDuckDBOfflineStore reads FileSource sources (Delta tables of the asof lake, or "
            f"Parquet), not {type(source).__name__} ({source.name})"
        )
    parts = source.path.rstrip("/").split("/")
    if len(parts) < 2 or parts[-2] not in lake.LAYERS:
        raise ValueError(
            f"data source {source.name!r}: path {source.path!r} is not a lake table "
            f"(expected .../<{'|'.join(lake.LAYERS)}>/<table>, built with flows.storage.lake.uri)"
        )
    layer, name = parts[-2], parts[-1]
    expected = lake.uri(layer, name)
    if source.path.rstrip("/") != expected and source.path not in _warned_paths:
        _warned_paths.add(source.path)
        log.warning(
            "data source %s was applied with path %s; reading %s/%s of the current lake (%s). "
            "Run `feast apply` again for this ASOF_HOME to silence this.",
            source.name,
            source.path,
            layer,
            name,
            expected,
        )
    return f"{layer}/{name}"


def resolve(source: DataSource, repo_path: Path | None = None) -> Readable:
    """Resolve a source to what is read: a lake table at a Delta version (pinned or current), or
    Parquet files (a relative path is relative to the feature repo, as in Feast's file store)."""
    if isinstance(source, FileSource) and not is_delta(source):
        path = Path(source.path)
        if not path.is_absolute() and repo_path is not None:
            path = Path(repo_path) / path
        return ParquetFiles(str(path))
    layer, name = table_key(source).split("/")
    return lake_table(layer, name, f" (source {source.name!r})")


def lake_table(layer: str, name: str, what: str = "") -> LakeTable:
    """The lake table at the version to read: pinned (`pinned_versions`) or current."""
    key = f"{layer}/{name}"
    pins = _PINS.get() or {}
    if key in pins:
        return LakeTable(layer, name, pins[key])
    current = lake.version(layer, name)
    if current is None:
        raise lake.LakeError(f"Delta table {key}{what} does not exist yet")
    return LakeTable(layer, name, current)


# ------------------------------------------------------------------ SQL helpers


def q(identifier: str) -> str:
    """Quote a SQL identifier (column names come from Feast definitions, never from users)."""
    return '"' + identifier.replace('"', '""') + '"'


def ts_literal(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    value = value.astimezone(dt.UTC)
    return f"TIMESTAMPTZ '{value.strftime('%Y-%m-%d %H:%M:%S.%f')}+00'"


def _connect(config: DeltaDuckDBOfflineStoreConfig | None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    if config is not None and config.threads:
        con.execute(f"SET threads={int(config.threads)}")
    if config is not None and config.memory_limit:
        if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", config.memory_limit):
            raise ValueError(f"memory_limit {config.memory_limit!r}: expected e.g. '4GB'")
        con.execute(f"SET memory_limit='{config.memory_limit}'")
    return con


def parquet_dataset(files: ParquetFiles) -> ds.Dataset:
    """A Parquet file, or a directory of them (hive partitions become columns, as Feast's file
    logging destination writes them). Only hidden entries and the usual marker files are skipped:
    pyarrow's default also skips everything starting with `_`, i.e. `__log_date=...` partitions."""
    import pyarrow.dataset as ds

    partitioning = "hive" if Path(files.path).is_dir() else None
    return ds.dataset(
        files.path,
        format="parquet",
        partitioning=partitioning,
        ignore_prefixes=[".", "_SUCCESS", "_metadata", "_common_metadata", "_delta_log"],
    )


def _register(con: duckdb.DuckDBPyConnection, alias: str, table: Readable) -> None:
    if isinstance(table, ParquetFiles):
        con.register(alias, parquet_dataset(table))
        return
    con.register(alias, lake.dataset(table.layer, table.name, version=table.version))


# ------------------------------------------------------------------ config + retrieval job


class DeltaDuckDBOfflineStoreConfig(FeastConfigBaseModel):
    """`offline_store:` section of feature_store.yaml."""

    type: StrictStr = "flows.features.feast_offline.DeltaDuckDBOfflineStore"

    ttl_lower_bound: Literal["exclusive", "inclusive"] = "exclusive"
    """exclusive: ts > entity_ts - ttl (never a stale daily row); inclusive: Feast's stock rule."""

    threads: int | None = None
    """DuckDB worker threads (default: all cores)."""

    memory_limit: StrictStr | None = None
    """DuckDB memory limit, e.g. "4GB" (default: DuckDB's, 80% of RAM)."""


class DeltaDuckDBRetrievalJob(RetrievalJob):
    """A lazy retrieval: nothing is read until `to_arrow()` / `to_df()`."""

    def __init__(
        self,
        compute: Callable[[], pa.Table],
        *,
        sql: str,
        tables: Mapping[str, Readable],
        full_feature_names: bool = False,
        on_demand_feature_views: list[OnDemandFeatureView] | None = None,
        metadata: RetrievalMetadata | None = None,
        repo_path: Path | None = None,
    ):
        self._compute = compute
        self._repo_path = repo_path
        self._sql = sql
        self._tables = dict(tables)
        self._full_feature_names = full_feature_names
        self._on_demand_feature_views = on_demand_feature_views or []
        self._metadata = metadata

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return self._on_demand_feature_views

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return self._metadata

    @property
    def table_versions(self) -> dict[str, int]:
        """The Delta version of every lake table this job reads (`{"gold/x": 7}`)."""
        return {key: t.version for key, t in self._tables.items() if isinstance(t, LakeTable)}

    def to_sql(self) -> str:
        return self._sql

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        return self._compute()

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._compute().to_pandas()

    def persist(
        self,
        storage: SavedDatasetStorage,
        allow_overwrite: bool | None = False,
        timeout: int | None = None,
    ) -> None:
        """Write the result where `storage` says: a lake table when its format is Delta (one commit
        through flows.storage.lake, so Delta time travel and locking apply), a Parquet file otherwise. Either
        reads back through this store, which is what `create_saved_dataset` relies on."""
        if not isinstance(storage, SavedDatasetFileStorage):
            raise NotImplementedError(f"cannot persist to {type(storage).__name__}")
        source = storage.to_data_source()
        if is_delta(source):
            layer, name = table_key(source).split("/")
            if lake.exists(layer, name) and not allow_overwrite:
                raise SavedDatasetLocationAlreadyExists(location=lake.uri(layer, name))
            lake.overwrite(layer, name, self.to_arrow())
            return
        path = Path(storage.file_options.uri)
        if not path.is_absolute() and self._repo_path is not None:
            path = self._repo_path / path
        if path.exists() and not allow_overwrite:
            raise SavedDatasetLocationAlreadyExists(location=str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            pq.write_table(self.to_arrow(), path)
        else:  # a directory of Parquet files, as Feast's file store writes it; overwriting replaces them
            pq.write_to_dataset(
                self.to_arrow(), root_path=str(path), existing_data_behavior="delete_matching"
            )

    def supports_remote_storage_export(self) -> bool:
        return False


def lake_saved_dataset_storage(name: str, layer: str = "gold") -> SavedDatasetFileStorage:
    """Storage for `FeatureStore.create_saved_dataset` in a lake table (`<layer>/<name>`)."""
    return SavedDatasetFileStorage(path=lake.uri(layer, name), file_format=DeltaFormat())


# ------------------------------------------------------------------ the offline store


@dataclass
class _ViewPlan:
    alias: str
    table: Readable
    keys: list[tuple[str, str]]  # (entity df column, source column)
    ts_col: str
    created_col: str | None
    features: list[tuple[str, str]]  # (source column, output column)
    ttl_us: int | None


class DeltaDuckDBOfflineStore(OfflineStore):
    supports_filter_by_created_timestamp = True

    # ---------------------------------------------------------- historical retrieval

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str | None,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
        **kwargs: Any,
    ) -> RetrievalJob:
        """Entity rows come from a pandas frame, from one SQL SELECT over lake tables (run when the
        job is created, at the table versions then current or pinned), or, with `entity_df=None`,
        from every distinct (join keys, timestamp) of the views' rows in [start_date, end_date]."""
        store_config = _store_config(config)
        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        fv_features, _ = _get_requested_feature_views_to_features_dict(feature_refs, feature_views, odfvs)
        repo_path = Path(config.repo_path) if config.repo_path else None

        date_range: tuple[dt.datetime, dt.datetime] | None = None
        entity_table: pa.Table | None = None
        if entity_df is None:
            date_range = compute_non_entity_date_range(
                feature_views, start_date=kwargs.get("start_date"), end_date=kwargs.get("end_date")
            )
            ts_col = DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
            columns = [ts_col] + _range_entity_columns(fv_features)
            ts_min, ts_max = date_range
        elif isinstance(entity_df, str):
            entity_table = entity_sql(entity_df, store_config)
            ts_col = _entity_timestamp_column(entity_table.schema)
            entity_table = _utc_timestamps(entity_table, ts_col)
            columns = entity_table.column_names
            ts_min, ts_max = _arrow_timestamp_range(entity_table[ts_col])
        elif isinstance(entity_df, pd.DataFrame):
            ts_col = _entity_timestamp_column(pa.Schema.from_pandas(entity_df.head(0), preserve_index=False))
            columns = list(entity_df.columns)
            ts_min, ts_max = _timestamp_range(entity_df[ts_col])
        else:
            raise ValueError(
                f"entity_df must be a pandas DataFrame, a SQL SELECT or None, got {type(entity_df).__name__}"
            )

        plans: list[_ViewPlan] = []
        for i, (fv, features) in enumerate(fv_features.items()):
            plans.append(_plan_view(f"v{i}", fv, features, full_feature_names, set(columns), repo_path))
        _check_output_names(columns, plans)

        filter_created = bool(filter_by_created_timestamp)
        sql = _asof_sql(plans, store_config.ttl_lower_bound, ts_min, ts_max, filter_created)
        tables = {p.table.key: p.table for p in plans}
        frame = entity_df  # captured; the job runs lazily

        def entity_rows(con: duckdb.DuckDBPyConnection) -> pa.Table:
            if entity_table is not None:
                return entity_table
            if date_range is not None:
                return con.sql(_range_entity_sql(plans, ts_col, *date_range)).to_arrow_table()
            assert isinstance(frame, pd.DataFrame)
            df = frame
            if not pd.api.types.is_datetime64_any_dtype(df[ts_col]):  # strings, Python datetimes
                df = df.assign(**{ts_col: pd.to_datetime(df[ts_col], utc=True)})
            return _utc_timestamps(pa.Table.from_pandas(df, preserve_index=False), ts_col)

        def compute() -> pa.Table:
            con = _connect(store_config)
            try:
                for p in plans:
                    _register(con, f"{p.alias}_src", p.table)
                return _run_asof(con, entity_rows(con), ts_col, plans, sql)
            finally:
                con.close()

        return DeltaDuckDBRetrievalJob(
            compute,
            sql=sql,
            tables=tables,
            full_feature_names=full_feature_names,
            on_demand_feature_views=odfvs,
            metadata=RetrievalMetadata(
                features=feature_refs,
                keys=[c for c in columns if c != ts_col],
                min_event_timestamp=ts_min,
                max_event_timestamp=ts_max,
            ),
            repo_path=repo_path,
        )

    # ---------------------------------------------------------- materialization reads

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: dt.datetime,
        end_date: dt.datetime,
    ) -> RetrievalJob:
        return _pull(
            config,
            data_source,
            join_key_columns,
            feature_name_columns,
            timestamp_field,
            created_timestamp_column,
            start_date,
            end_date,
            latest=True,
        )

    @staticmethod
    def pull_all_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None = None,
        start_date: dt.datetime | None = None,
        end_date: dt.datetime | None = None,
    ) -> RetrievalJob:
        return _pull(
            config,
            data_source,
            join_key_columns,
            feature_name_columns,
            timestamp_field,
            created_timestamp_column,
            start_date,
            end_date,
            latest=False,
        )

    def validate_data_source(self, config: RepoConfig, data_source: DataSource) -> None:
        if is_delta(data_source):
            table_key(data_source)  # the path must name a lake table; it may not exist yet

    def get_table_column_names_and_types_from_data_source(self, config: RepoConfig, data_source: DataSource):
        t = resolve(data_source, Path(config.repo_path) if config.repo_path else None)
        if isinstance(t, ParquetFiles):
            schema = parquet_dataset(t).schema
        else:
            schema = pa.schema(lake.table(t.layer, t.name, t.version).schema().to_arrow())
        return zip(schema.names, map(str, schema.types), strict=True)

    # ---------------------------------------------------------- writes

    @staticmethod
    def offline_write_batch(
        config: RepoConfig,
        feature_view: FeatureView,
        table: pa.Table,
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Append rows to a view's lake table (Feast's push to the offline store): one Delta
        commit through flows.storage.lake, the columns exactly the table's (Feast's file-store rule), so
        a push can never change a table's schema. Later retrievals see the rows like any others."""
        source = feature_view.batch_source
        if not is_delta(source):
            raise ValueError(f"feature view {feature_view.name!r}: offline writes go to lake tables only")
        layer, name = table_key(source).split("/")
        existing = lake.table(layer, name)
        schema = pa.schema(existing.schema().to_arrow())
        # Feast's provider renamed source columns by the field mapping first: undo it
        reverse = {v: k for k, v in (source.field_mapping or {}).items()}
        table = table.rename_columns([reverse.get(c, c) for c in table.column_names])
        if table.column_names != schema.names:
            raise ValueError(
                f"The input pyarrow table has the columns {table.column_names}; the lake table "
                f"{layer}/{name} has {schema.names} (in this exact order)"
            )
        lake.append(
            layer, name, table.cast(schema), partition_by=existing.metadata().partition_columns or None
        )
        if progress:
            progress(table.num_rows)

    @staticmethod
    def write_logged_features(
        config: RepoConfig,
        data: pa.Table | Path,
        source: LoggingSource,
        logging_config: LoggingConfig,
        registry: BaseRegistry,
    ) -> None:
        """Feature logs (what a feature service served) into their destination: a lake table
        (`LakeLoggingDestination`, one append commit per call, partitioned by log date) or, for
        Feast's `FileLoggingDestination`, Parquet files as Feast's file store writes them."""
        if isinstance(data, Path | str):
            data = pq.read_table(data, use_threads=False)
        schema = source.get_schema(registry)
        missing = [f.name for f in schema if f.name not in data.column_names]
        if missing:
            raise ValueError(f"feature logs lack the columns {missing}")
        data = data.select(schema.names).cast(schema)
        destination = logging_config.destination
        if isinstance(destination, LakeLoggingDestination):
            lake.append("ops", destination.table, data, partition_by=[LOG_DATE_FIELD])
            return
        if isinstance(destination, FileLoggingDestination):
            import uuid

            import pyarrow.dataset as ds

            path = Path(destination.path)
            if not path.is_absolute() and config.repo_path:
                path = Path(config.repo_path) / path
            ds.write_dataset(
                data,
                base_dir=str(path),
                basename_template=f"{uuid.uuid4().hex}-{{i}}.parquet",
                partitioning=destination.partition_by,
                partitioning_flavor="hive" if destination.partition_by else None,
                format="parquet",
                existing_data_behavior="overwrite_or_ignore",
            )
            return
        raise ValueError(f"cannot write feature logs to {type(destination).__name__}")


# ------------------------------------------------------------------ implementation


def _store_config(config: RepoConfig) -> DeltaDuckDBOfflineStoreConfig:
    cfg = config.offline_store
    if not isinstance(cfg, DeltaDuckDBOfflineStoreConfig):
        raise TypeError(f"expected DeltaDuckDBOfflineStoreConfig, got {type(cfg).__name__}")
    return cfg


def _entity_timestamp_column(schema: pa.Schema) -> str:
    if DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL in schema.names:
        return DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL
    candidates = [f.name for f in schema if pa.types.is_timestamp(f.type)]
    if len(candidates) == 1:
        return candidates[0]
    raise ValueError(
        f"entity_df needs a column named {DEFAULT_ENTITY_DF_EVENT_TIMESTAMP_COL!r} "
        "(or exactly one datetime column) holding the entity timestamps"
    )


def _timestamp_range(col: pd.Series) -> tuple[dt.datetime | None, dt.datetime | None]:
    if len(col) == 0:
        return None, None
    s = pd.to_datetime(col, utc=True)
    lo, hi = s.min(), s.max()
    if pd.isna(lo):
        return None, None
    # to microseconds, rounded outwards: the range only bounds which feature rows are scanned
    return lo.floor("us").to_pydatetime(), hi.floor("us").to_pydatetime()


def _arrow_timestamp_range(col: pa.ChunkedArray) -> tuple[dt.datetime | None, dt.datetime | None]:
    if len(col) == 0 or col.null_count == len(col):
        return None, None
    bounds = pc.min_max(col.cast(pa.timestamp("us", tz="UTC"), safe=False))
    return bounds["min"].as_py(), bounds["max"].as_py()


def _utc_timestamps(table: pa.Table, ts_col: str) -> pa.Table:
    """Entity timestamps as UTC instants; a naive timestamp is read as UTC (Feast's rule)."""
    ts = table[ts_col]
    if not pa.types.is_timestamp(ts.type):
        raise ValueError(f"entity timestamp column {ts_col!r} has type {ts.type}, not a timestamp")
    if ts.type.tz is None:
        ts = ts.cast(pa.timestamp(ts.type.unit, tz="UTC"))
    return table.set_column(table.schema.get_field_index(ts_col), ts_col, ts)


def _range_entity_columns(fv_features: Mapping[FeatureView, list[str]]) -> list[str]:
    """The entity columns of a date-range retrieval: every join key of the views, in view order."""
    out: list[str] = []
    for fv in fv_features:
        join_key_map = fv.projection.join_key_map or {}
        for col in fv.entity_columns:
            if col.name != DUMMY_ENTITY_ID:
                name = join_key_map.get(col.name, col.name)
                if name not in out:
                    out.append(name)
    return out


def _range_entity_sql(plans: list[_ViewPlan], ts_col: str, start: dt.datetime, end: dt.datetime) -> str:
    """Every distinct (join keys, timestamp) of the views' rows with the timestamp in [start, end]:
    the entity rows of a retrieval without an entity dataframe (Feast's non-entity mode). Views
    with other join keys contribute rows whose missing keys are null (they match nothing there)."""
    parts = []
    for p in plans:
        ts = f"CAST({q(p.ts_col)} AS TIMESTAMPTZ)"
        cols = [f"{ts} AS {q(ts_col)}"] + [f"{q(src)} AS {q(ent)}" for ent, src in p.keys]
        parts.append(
            f"SELECT DISTINCT {', '.join(cols)} FROM {p.alias}_src "
            f"WHERE {ts} BETWEEN {ts_literal(start)} AND {ts_literal(end)}"
        )
    keys = sorted({ent for p in plans for ent, _ in p.keys})
    order = ", ".join([q(ts_col)] + [q(k) for k in keys])
    return f"SELECT * FROM ({' UNION BY NAME '.join(parts)}) ORDER BY {order}"


_SQL_TABLE = re.compile(rf"^(?:({'|'.join(lake.LAYERS)})\.)?([A-Za-z0-9_]+)$")


def entity_sql(sql: str, config: DeltaDuckDBOfflineStoreConfig | None = None) -> pa.Table:
    """Run an entity query: exactly one SELECT, over lake tables named `<layer>.<table>`
    (`silver.transactions`, `gold.customer_profile`; pinned versions apply), in DuckDB without
    access to files or the network. Anything else is refused before it runs: a SQL string is
    code, and the only thing an entity query has to do is read the lake."""
    con = _connect(config)
    try:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as exc:
            raise ValueError(f"entity_df SQL does not parse: {exc}") from None
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            kinds = ", ".join(st.type.name for st in statements) or "nothing"
            raise ValueError(f"entity_df SQL must be exactly one SELECT statement (got: {kinds})")
        for name in sorted(con.get_table_names(sql, qualified=True)):
            m = _SQL_TABLE.match(name)
            if m is None or m.group(1) is None:
                continue  # a CTE or a subquery alias; an unknown table fails in DuckDB
            layer, table = m.group(1), m.group(2)
            if not lake.exists(layer, table):
                raise ValueError(f"entity_df SQL reads {layer}.{table}, which is not a lake table")
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {layer}")
            _register(con, f"__lake_{layer}_{table}", lake_table(layer, table))
            con.execute(f"CREATE VIEW {layer}.{table} AS SELECT * FROM __lake_{layer}_{table}")
        con.execute("SET enable_external_access = false")
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def _plan_view(
    alias: str,
    fv: FeatureView,
    features: list[str],
    full_feature_names: bool,
    entity_columns: set[str],
    repo_path: Path | None = None,
) -> _ViewPlan:
    source = fv.batch_source
    reverse = {v: k for k, v in (source.field_mapping or {}).items()}
    join_key_map = fv.projection.join_key_map or {}
    keys: list[tuple[str, str]] = []
    for col in fv.entity_columns:
        if col.name == DUMMY_ENTITY_ID:
            continue
        entity_col = join_key_map.get(col.name, col.name)
        if entity_col not in entity_columns:
            raise ValueError(
                f"entity_df lacks join key column {entity_col!r} needed by feature view {fv.name!r}"
            )
        keys.append((entity_col, reverse.get(col.name, col.name)))
    prefix = fv.projection.name_to_use()
    feats = [(reverse.get(f, f), f"{prefix}__{f}" if full_feature_names else f) for f in features]
    ttl_us = None
    if fv.ttl is not None and fv.ttl.total_seconds() > 0:
        ttl_us = fv.ttl // dt.timedelta(microseconds=1)
    ts_col = reverse.get(source.timestamp_field, source.timestamp_field)
    created = source.created_timestamp_column or None
    if created:
        created = reverse.get(created, created)
    return _ViewPlan(alias, resolve(source, repo_path), keys, ts_col, created, feats, ttl_us)


def _check_output_names(columns: list[str], plans: list[_ViewPlan]) -> None:
    seen = set(columns)
    for p in plans:
        for _, out in p.features:
            if out in seen:
                raise ValueError(
                    f"feature column {out!r} collides with another column; use full_feature_names=True"
                )
            seen.add(out)


def _asof_sql(
    plans: list[_ViewPlan],
    ttl_bound: str,
    ts_min: dt.datetime | None,
    ts_max: dt.datetime | None,
    filter_created: bool = False,
) -> str:
    """One query: the entity rows joined to every view (each view pre-filtered).

    The entity side carries each timestamp twice at microsecond precision (feature timestamps are
    microseconds): `__ts` rounded down and `__tsc` rounded up. For integer microseconds t,
    `t <= E` is `t <= floor(E)`, `t > E - ttl` is `t > floor(E) - ttl` and `t >= E - ttl` is
    `t >= ceil(E) - ttl`, so nanosecond entity timestamps get the exact rule in both ttl modes.

    A view is ASOF-joined, unless `filter_created` applies to it (it has a created timestamp): a
    row is then a candidate only if it was created at or before the entity timestamp, which
    depends on the entity row twice over, so that view is a range join ranked per entity row."""
    select = ["e.__row"]
    joins = []
    for p in plans:
        src_ts = f"CAST({q(p.ts_col)} AS TIMESTAMPTZ)"
        where = []
        if ts_max is not None:
            where.append(f"{src_ts} <= {ts_literal(ts_max)}")
            if p.ttl_us is not None and ts_min is not None:
                lower = ts_min - dt.timedelta(microseconds=p.ttl_us)
                where.append(f"{src_ts} >= {ts_literal(lower)}")
        cols = [f"{q(src)} AS {q(f'__k{j}')}" for j, (_, src) in enumerate(p.keys)]
        cols.append(f"{src_ts} AS __ts")
        if p.created_col:
            cols.append(f"CAST({q(p.created_col)} AS TIMESTAMPTZ) AS __created")
        cols += [f"{q(src)} AS {q(f'__f{j}')}" for j, (src, _) in enumerate(p.features)]
        inner = f"SELECT {', '.join(cols)} FROM {p.alias}_src"
        if where:
            inner += " WHERE " + " AND ".join(where)
        if p.ttl_us is None:
            fresh_rule = None
        elif ttl_bound == "exclusive":
            fresh_rule = f"{p.alias}.__ts > e.__ts - to_microseconds({p.ttl_us})"
        else:
            fresh_rule = f"{p.alias}.__ts >= e.__tsc - to_microseconds({p.ttl_us})"
        # Several rows at the same timestamp: the latest created wins (nulls lose); the rest of
        # the ordering only makes a full tie deterministic.
        tie_order = ["__created DESC NULLS LAST"] if p.created_col else []
        tie_order += [f"{q(f'__f{j}')} DESC NULLS LAST" for j in range(len(p.features))]
        if filter_created and p.created_col:
            on = [f"e.{q(ent)} = {p.alias}.{q(f'__k{j}')}" for j, (ent, _) in enumerate(p.keys)]
            on += [f"{p.alias}.__ts <= e.__ts", f"{p.alias}.__created <= e.__ts"]
            if fresh_rule:
                on.append(fresh_rule)
            order = ", ".join([f"{p.alias}.__ts DESC"] + [f"{p.alias}.{o}" for o in tie_order])
            ranked = (
                f"SELECT e.__row AS __erow, {p.alias}.* FROM entity AS e JOIN ({inner}) AS {p.alias} "
                f"ON {' AND '.join(on)} "
                f"QUALIFY row_number() OVER (PARTITION BY e.__row ORDER BY {order}) = 1"
            )
            joins.append(f"LEFT JOIN ({ranked}) AS {p.alias} ON {p.alias}.__erow = e.__row")
            fresh = f"{p.alias}.__ts IS NOT NULL"
        else:
            if p.created_col:
                part = ", ".join([f"{q(f'__k{j}')}" for j in range(len(p.keys))] + ["__ts"])
                inner = (
                    f"SELECT * EXCLUDE (__rank) FROM (SELECT *, row_number() OVER (PARTITION BY {part} "
                    f"ORDER BY {', '.join(tie_order)}) AS __rank FROM ({inner})) WHERE __rank = 1"
                )
            on = [f"e.{q(ent)} = {p.alias}.{q(f'__k{j}')}" for j, (ent, _) in enumerate(p.keys)]
            on.append(f"e.__ts >= {p.alias}.__ts")
            joins.append(f"ASOF LEFT JOIN ({inner}) AS {p.alias} ON {' AND '.join(on)}")
            fresh = fresh_rule or f"{p.alias}.__ts IS NOT NULL"
        for j, (_, out) in enumerate(p.features):
            select.append(f"CASE WHEN {fresh} THEN {p.alias}.{q(f'__f{j}')} END AS {q(out)}")
    return f"SELECT {', '.join(select)}\nFROM entity AS e\n" + "\n".join(joins) + "\nORDER BY e.__row"


def _microsecond_bounds(ts: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """(floor, ceil) of UTC timestamps at microsecond precision, nulls kept."""
    if ts.type.unit != "ns":
        us = ts.cast(TS)
        return us, us
    ns = pc.fill_null(ts.cast(pa.int64()), 0).to_numpy()
    mask = pc.is_null(ts).to_numpy(zero_copy_only=False)
    floor, ceil = ns // 1000, -((-ns) // 1000)
    return (
        pa.array(floor, pa.int64(), mask=mask).cast(TS),
        pa.array(ceil, pa.int64(), mask=mask).cast(TS),
    )


def _run_asof(
    con: duckdb.DuckDBPyConnection,
    entity: pa.Table,
    ts_col: str,
    plans: list[_ViewPlan],
    sql: str,
) -> pa.Table:
    n = entity.num_rows
    key_cols = sorted({ent for p in plans for ent, _ in p.keys})
    # Only row id, join keys and timestamps go into DuckDB; every entity column is returned
    # untouched from the Arrow table.
    floor, ceil = _microsecond_bounds(entity[ts_col])
    probe = pa.table(
        {
            "__row": pa.array(np.arange(n, dtype=np.int64)),
            **{c: entity[c] for c in key_cols},
            "__ts": floor,
            "__tsc": ceil,
        }
    )
    con.register("entity", probe)
    result = con.sql(sql).to_arrow_table()
    out = entity
    for name in result.column_names[1:]:
        out = out.append_column(name, result[name])
    return out.replace_schema_metadata(None)


def pull_sql(
    join_key_columns: list[str],
    feature_name_columns: list[str],
    timestamp_field: str,
    created_timestamp_column: str | None,
    start_date: dt.datetime | None,
    end_date: dt.datetime | None,
    latest: bool,
    current_only: bool = False,
) -> str:
    """The materialization read over the table registered as `src` (inclusive [start, end])."""
    ts = f"CAST(s.{q(timestamp_field)} AS TIMESTAMPTZ)"
    cols = [f"s.{q(c)}" for c in join_key_columns + feature_name_columns]
    cols.append(f"{ts} AS {q(timestamp_field)}")
    if created_timestamp_column:
        cols.append(f"CAST(s.{q(created_timestamp_column)} AS TIMESTAMPTZ) AS {q(created_timestamp_column)}")
    if not join_key_columns:
        cols.append(f"'{DUMMY_ENTITY_VAL}' AS {q(DUMMY_ENTITY_ID)}")
    where = []
    if start_date is not None:
        where.append(f"{ts} >= {ts_literal(start_date)}")
    if end_date is not None:
        where.append(f"{ts} <= {ts_literal(end_date)}")
    source = "src AS s"
    if current_only and join_key_columns:
        # "no newer row of the entity anywhere in the table" as a join to each entity's newest
        # timestamp: a streaming aggregate with one hash entry per entity, where the equivalent
        # NOT EXISTS became an anti-join holding the whole table (6 GB for half a year at bench
        # scale). A null key never matches, so such a row stays, as with NOT EXISTS.
        keys = ", ".join(q(c) for c in join_key_columns)
        newest = (
            f"SELECT {keys}, max(CAST({q(timestamp_field)} AS TIMESTAMPTZ)) AS __asof_newest "
            f"FROM src GROUP BY {keys}"
        )
        same = " AND ".join(f"n.{q(c)} = s.{q(c)}" for c in join_key_columns)
        source = f"src AS s LEFT JOIN ({newest}) AS n ON {same}"
        where.append(f"(n.__asof_newest IS NULL OR {ts} >= n.__asof_newest)")
    sql = f"SELECT {', '.join(cols)} FROM {source}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if (latest or current_only) and join_key_columns:
        order = [f"{ts} DESC"]
        if created_timestamp_column:
            order.append(f"CAST(s.{q(created_timestamp_column)} AS TIMESTAMPTZ) DESC NULLS LAST")
        sql += (
            f" QUALIFY row_number() OVER (PARTITION BY {', '.join(f's.{q(c)}' for c in join_key_columns)} "
            f"ORDER BY {', '.join(order)}) = 1"
        )
    sql += f" ORDER BY {', '.join([q(c) for c in join_key_columns] + [q(timestamp_field)])}"
    return sql


def _pull(
    config: RepoConfig,
    data_source: DataSource,
    join_key_columns: list[str],
    feature_name_columns: list[str],
    timestamp_field: str,
    created_timestamp_column: str | None,
    start_date: dt.datetime | None,
    end_date: dt.datetime | None,
    latest: bool,
) -> DeltaDuckDBRetrievalJob:
    store_config = _store_config(config)
    table = resolve(data_source, Path(config.repo_path) if config.repo_path else None)
    sql = pull_sql(
        join_key_columns,
        feature_name_columns,
        timestamp_field,
        created_timestamp_column,
        start_date,
        end_date,
        latest,
        current_only=_CURRENT_ONLY.get(),
    )

    def compute() -> pa.Table:
        con = _connect(store_config)
        try:
            _register(con, "src", table)
            return con.sql(sql).to_arrow_table()
        finally:
            con.close()

    return DeltaDuckDBRetrievalJob(compute, sql=sql, tables={table.key: table})


# ------------------------------------------------------------------ helpers for the project


def query_table(source: DataSource, sql: str) -> pa.Table:
    """Run `sql` against the source's lake table, visible as `src` (pinned versions apply)."""
    table = resolve(source)
    con = _connect(None)
    try:
        _register(con, "src", table)
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()
