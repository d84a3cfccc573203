"""The key-ordered SQLite online store and the Arrow batch engine write exactly Feast's rows.

Reference: Feast's own `SqliteOnlineStore.online_write_batch`, fed by Feast's own Arrow-to-proto
conversion (`feast.utils._convert_arrow_to_proto`, what its local engine's output step calls),
into a second SQLite file. Every column of every row must be byte-equal, for every value type
the fast path builds itself and one it leaves to Feast, with nulls, NaN, infinities, -0.0,
extremes and non-ASCII text.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import math
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from feast import Entity, FeatureView, Field, FileSource
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RegistryConfig, RepoConfig
from feast.types import Bool, Float32, Float64, Int32, Int64, String, UnixTimestamp
from feast.utils import _convert_arrow_to_proto
from feast.value_type import ValueType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.features import feast_online
from flows.features.feast_online import KeyOrderedSqliteOnlineStore, KeyOrderedSqliteOnlineStoreConfig
from tests.test_online_store import REDIS_PASSWORD, redis_server  # noqa: F401 (the fixture)

UTC = dt.UTC
FEATURES = {
    "f_double": Float64,
    "f_int64": Int64,
    "f_int32": Int32,
    "f_string": String,
    "f_bool": Bool,
    "f_time": UnixTimestamp,
    "f_float": Float32,  # not built by the fast path: Feast's conversion, column by column
}
ARROW_TYPES = {
    "f_double": pa.float64(),
    "f_int64": pa.int64(),
    "f_int32": pa.int32(),
    "f_string": pa.string(),
    "f_bool": pa.bool_(),
    "f_time": pa.timestamp("us", tz="UTC"),
    "f_float": pa.float32(),
}
ZONES = ("UTC", "America/New_York", "Asia/Kolkata")
SAFE_INT = 2**53  # Feast reads an int64 column with nulls through float64: exact only up to 2**53


@functools.cache
def _view(created: bool) -> FeatureView:
    entity = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64)
    source = FileSource(
        path="unused.parquet",
        timestamp_field="feature_timestamp",
        created_timestamp_column="created" if created else "",
    )
    return FeatureView(
        name="fv",
        entities=[entity],
        schema=[Field(name="customer_id", dtype=Int64)]
        + [Field(name=n, dtype=t) for n, t in FEATURES.items()],
        source=source,
    )


@contextlib.contextmanager
def zone(name: str) -> Iterator[None]:
    """The process's local time zone (what Python's naive `timestamp()` and `fromtimestamp` use)."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()


def _config(path: Path, config_class: type) -> RepoConfig:
    return RepoConfig(
        project="p",
        provider="local",
        registry=RegistryConfig(path=str(path.parent / "registry.db")),
        online_store=config_class(path=str(path)),
        entity_key_serialization_version=3,
    )


def _rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT entity_key, feature_name, value, value_text, vector_value, event_ts, created_ts "
            "FROM p_fv ORDER BY entity_key, feature_name"
        ).fetchall()


def _write_both(tmp: Path, table: pa.Table, view: FeatureView) -> tuple[list[tuple], list[tuple]]:
    stock_path, ours_path = tmp / "stock.db", tmp / "ours.db"
    for p in (stock_path, ours_path):
        p.unlink(missing_ok=True)
    stock, ours = SqliteOnlineStore(), KeyOrderedSqliteOnlineStore()
    # Feast's stored epoch depends on the local zone (flows.features.feast_online._epoch): compare under UTC
    stock_cfg = _config(stock_path, SqliteOnlineStoreConfig)
    ours_cfg = _config(ours_path, KeyOrderedSqliteOnlineStoreConfig)
    for store, cfg in ((stock, stock_cfg), (ours, ours_cfg)):
        store.update(cfg, [], [view], [], [], partial=False)
    protos_path = tmp / "ours_protos.db"  # the store's proto path (Feast's push, write_to_online_store)
    protos_path.unlink(missing_ok=True)
    protos_cfg = _config(protos_path, KeyOrderedSqliteOnlineStoreConfig)
    KeyOrderedSqliteOnlineStore().update(protos_cfg, [], [view], [], [], partial=False)
    with zone("UTC"):
        data = _convert_arrow_to_proto(table, view, {"customer_id": ValueType.INT64})
        stock.online_write_batch(stock_cfg, view, data, progress=None)
        ours.online_write_arrow(ours_cfg, view, table)
        KeyOrderedSqliteOnlineStore().online_write_batch(protos_cfg, view, data, progress=None)
    assert _rows(protos_path) == _rows(stock_path)
    return _rows(stock_path), _rows(ours_path)


doubles = st.one_of(
    st.none(),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e308, 5e-324, 0.1]),
    st.floats(allow_nan=True, allow_infinity=True),
)
times = st.datetimes(
    min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2100, 1, 1), timezones=st.just(UTC)
)
row = st.fixed_dictionaries(
    {
        "f_double": doubles,
        "f_int64": st.one_of(st.none(), st.integers(-SAFE_INT, SAFE_INT)),
        "f_int32": st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
        "f_string": st.one_of(st.none(), st.text(max_size=8)),
        "f_bool": st.one_of(st.none(), st.booleans()),
        "f_time": times,  # a timestamp feature with nulls takes Feast's path (tested below)
        "f_float": st.one_of(st.none(), st.floats(width=32)),
        "feature_timestamp": times,
        "created": times,  # Feast cannot write a null created timestamp (NaT)
    }
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row, min_size=1, max_size=25), created=st.booleans())
def test_arrow_write_equals_feasts_write(tmp_path: Path, rows: list[dict], created: bool) -> None:
    ids = list(range(len(rows)))
    columns = {"customer_id": pa.array([(i * 7919) % 1000 - 500 for i in ids], pa.int64())}
    for name, typ in ARROW_TYPES.items():
        columns[name] = pa.array([r[name] for r in rows], typ)
    stamp = pa.timestamp("us", tz="UTC")
    columns["feature_timestamp"] = pa.array([r["feature_timestamp"] for r in rows], stamp)
    if created:
        columns["created"] = pa.array([r["created"] for r in rows], stamp)
    table = pa.table(columns)
    stock, ours = _write_both(tmp_path, table, _view(created))
    assert ours == stock
    assert len(ours) == len(rows) * len(FEATURES)


@pytest.mark.parametrize("some_times", [True, False])
def test_timestamp_feature_with_nulls_and_string_keys_of_other_types(
    tmp_path: Path, some_times: bool
) -> None:
    """A timestamp column with nulls (Feast stores a null time as NaT's int64, also when every
    value is null), and an INT64 feature held as float (a DuckDB sum, say), which leaves the fast
    path's preconditions: the rows are still Feast's."""
    t = dt.datetime(2024, 1, 2, tzinfo=UTC)
    before_epoch = dt.datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC)  # floors to -1 s
    table = pa.table(
        {
            "customer_id": pa.array([3, 1, 2], pa.int64()),
            "f_double": pa.array([1, 2, None], pa.int64()),  # ints in a Float64 feature
            "f_int64": pa.array([1.0, None, 3.0], pa.float64()),  # floats in an Int64 feature
            "f_int32": pa.array([None, None, None], pa.int32()),
            "f_string": pa.array(["é", "", None]),
            "f_bool": pa.array([True, False, None]),
            "f_time": pa.array(
                [t, None, before_epoch] if some_times else [None] * 3, pa.timestamp("us", tz="UTC")
            ),
            "f_float": pa.array([0.1, None, 2.5], pa.float32()),
            "feature_timestamp": pa.array([t, t, t], pa.timestamp("us", tz="UTC")),
        }
    )
    stock, ours = _write_both(tmp_path, table, _view(False))
    assert ours == stock and len(ours) == 3 * len(FEATURES)


def test_rewrite_replaces_values(tmp_path: Path) -> None:
    """The upsert replaces an (entity, feature) value, as Feast's does."""
    t1, t2 = dt.datetime(2024, 1, 2, tzinfo=UTC), dt.datetime(2024, 1, 3, tzinfo=UTC)
    view = _view(False)
    path = tmp_path / "ours.db"
    store, cfg = KeyOrderedSqliteOnlineStore(), _config(path, KeyOrderedSqliteOnlineStoreConfig)
    store.update(cfg, [], [view], [], [], partial=False)

    def table(value: float, t: dt.datetime) -> pa.Table:
        cols = {n: pa.array([None], typ) for n, typ in ARROW_TYPES.items()}
        cols["f_double"] = pa.array([value])
        cols["customer_id"] = pa.array([1], pa.int64())
        cols["feature_timestamp"] = pa.array([t], pa.timestamp("us", tz="UTC"))
        return pa.table(cols)

    store.online_write_arrow(cfg, view, table(1.5, t1))
    store.online_write_arrow(cfg, view, table(2.5, t2))
    rows = [r for r in _rows(path) if r[1] == "f_double"]
    assert len(rows) == 1 and rows[0][3] == "2.5" and rows[0][5] == int(t2.timestamp())


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def test_batch_spanning_statements_without_the_entity_key_index(tmp_path: Path) -> None:
    """A batch of several multi-row statements, each entity twice (the later row wins, also across
    a statement boundary), into a table Feast's own `update` created (with its entity_key index):
    the rows are Feast's, the redundant index is dropped by the first write (and never created by
    our `update`), and both Feast's online_read and ours read every entity back alike."""
    t1, t2 = dt.datetime(2024, 1, 2, tzinfo=UTC), dt.datetime(2024, 1, 3, tzinfo=UTC)
    n = 60  # 2 * 60 entities of 7 features: 8 statements of 14 entities and a remainder of 8
    ids = [(i * 37) % n for i in range(2 * n)]
    table = pa.table(
        {
            "customer_id": pa.array(ids, pa.int64()),
            "f_double": pa.array([i / 3 for i in range(2 * n)]),
            "f_int64": pa.array([i % 5 for i in range(2 * n)], pa.int64()),
            "f_int32": pa.array([None if i % 3 else i for i in range(2 * n)], pa.int32()),
            "f_string": pa.array([f"s{i % 4}" for i in range(2 * n)]),
            "f_bool": pa.array([i % 2 == 0 for i in range(2 * n)]),
            "f_time": pa.array([t1] * (2 * n), pa.timestamp("us", tz="UTC")),
            "f_float": pa.array([float(i) for i in range(2 * n)], pa.float32()),
            "feature_timestamp": pa.array([t1] * n + [t2] * n, pa.timestamp("us", tz="UTC")),
        }
    )
    view = _view(False)
    stock, ours = _write_both(tmp_path, table, view)
    assert ours == stock and len(ours) == n * len(FEATURES)
    assert "p_fv_ek" in _indexes(tmp_path / "stock.db")
    assert "p_fv_ek" not in _indexes(tmp_path / "ours.db")  # our update never made it

    path = tmp_path / "made_by_feast.db"
    cfg = _config(path, KeyOrderedSqliteOnlineStoreConfig)
    SqliteOnlineStore().update(cfg, [], [view], [], [], partial=False)  # Feast's schema, index included
    assert "p_fv_ek" in _indexes(path)
    with zone("UTC"):
        KeyOrderedSqliteOnlineStore().online_write_arrow(cfg, view, table)
        assert _rows(path) == stock and "p_fv_ek" not in _indexes(path)
        keys = [
            EntityKeyProto(join_keys=["customer_id"], entity_values=[ValueProto(int64_val=i)])
            for i in [*range(n), n + 1]
        ]
        feasts = SqliteOnlineStore().online_read(cfg, view, keys)
        ours_read = KeyOrderedSqliteOnlineStore().online_read(cfg, view, keys)
    assert ours_read == feasts and feasts[-1] == (None, None)
    assert all(ts == t2 and len(values) == len(FEATURES) for ts, values in feasts[:-1])


def test_view_too_wide_for_one_statement_is_written_row_by_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A view whose one entity would bind more parameters than SQLite allows in a statement
    (thousands of features) is upserted row by row, with the same rows as Feast's."""
    monkeypatch.setattr(feast_online, "MAX_PARAMETERS", 2 * len(FEATURES))  # < F + one entity's

    def refused(*_args: object) -> str:
        raise AssertionError("a statement too wide for SQLite")

    monkeypatch.setattr(feast_online, "entity_upsert_statement", refused)
    t = dt.datetime(2024, 1, 2, tzinfo=UTC)
    n = 30
    table = pa.table(
        {
            "customer_id": pa.array([i % 20 for i in range(n)], pa.int64()),  # ten entities twice
            "f_double": pa.array([i / 7 for i in range(n)]),
            "f_int64": pa.array([i for i in range(n)], pa.int64()),
            "f_int32": pa.array([None if i % 2 else i for i in range(n)], pa.int32()),
            "f_string": pa.array([f"s{i}" for i in range(n)]),
            "f_bool": pa.array([i % 3 == 0 for i in range(n)]),
            "f_time": pa.array([t] * n, pa.timestamp("us", tz="UTC")),
            "f_float": pa.array([float(i) for i in range(n)], pa.float32()),
            "feature_timestamp": pa.array([t] * n, pa.timestamp("us", tz="UTC")),
        }
    )
    stock, ours = _write_both(tmp_path, table, _view(False))
    assert ours == stock and len(ours) == 20 * len(FEATURES)


@pytest.mark.parametrize("field", ["vector_enabled", "enable_openai_compatible_store"])
def test_options_it_does_not_write_keep_feasts_path(tmp_path: Path, field: str) -> None:
    cfg = _config(tmp_path / "x.db", KeyOrderedSqliteOnlineStoreConfig)
    assert KeyOrderedSqliteOnlineStore().writes_rows(cfg)
    setattr(cfg.online_store, field, True)
    assert not KeyOrderedSqliteOnlineStore().writes_rows(cfg)


# ------------------------------------------------------------------ Redis


def _redis_config(port: int, db: int, config_class: type, tmp: Path) -> RepoConfig:
    return RepoConfig(
        project="p",
        provider="local",
        registry=RegistryConfig(path=str(tmp / "registry.db")),
        online_store=config_class(
            connection_string=f"127.0.0.1:{port},db={db},password={REDIS_PASSWORD}", skip_dedup=True
        ),
        entity_key_serialization_version=3,
    )


def _hashes(port: int, db: int) -> dict[bytes, dict[bytes, bytes]]:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, db=db, password=REDIS_PASSWORD)
    out = {k: client.hgetall(k) for k in client.keys("*")}
    client.flushdb()
    return out


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row, min_size=1, max_size=25))
def test_redis_arrow_write_equals_feasts_write(
    tmp_path: Path,
    redis_server: int,  # noqa: F811 (the fixture imported above)
    rows: list[dict],
) -> None:
    """ArrowRedisOnlineStore leaves the hashes Feast's RedisOnlineStore writes (skip_dedup)."""
    from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig

    from flows.features.feast_online import ArrowRedisOnlineStore, ArrowRedisOnlineStoreConfig

    stamp = pa.timestamp("us", tz="UTC")
    columns = {"customer_id": pa.array([(i * 7919) % 1000 - 500 for i in range(len(rows))], pa.int64())}
    for name, typ in ARROW_TYPES.items():
        columns[name] = pa.array([r[name] for r in rows], typ)
    columns["feature_timestamp"] = pa.array([r["feature_timestamp"] for r in rows], stamp)
    table, view = pa.table(columns), _view(False)
    stock_cfg = _redis_config(redis_server, 0, RedisOnlineStoreConfig, tmp_path)
    ours_cfg = _redis_config(redis_server, 1, ArrowRedisOnlineStoreConfig, tmp_path)
    data = _convert_arrow_to_proto(table, view, {"customer_id": ValueType.INT64})
    RedisOnlineStore().online_write_batch(stock_cfg, view, data, progress=None)
    ours = ArrowRedisOnlineStore()
    assert ours.writes_rows(ours_cfg)
    ours.online_write_arrow(ours_cfg, view, table)
    stock_hashes, our_hashes = _hashes(redis_server, 0), _hashes(redis_server, 1)
    assert our_hashes == stock_hashes
    assert len(our_hashes) == len(set(columns["customer_id"].to_pylist()))


def test_online_timestamps_do_not_depend_on_the_time_zone(tmp_path: Path) -> None:
    """The same materialization under three zones stores the same rows, and every zone reads
    back the same UTC event time; under Feast's own store the stored number moves with TZ."""
    # 2024-03-10 07:30 UTC is 02:30 in New York, a local time that does not exist (DST gap)
    times = [dt.datetime(2024, 3, 10, 7, 30, tzinfo=UTC), dt.datetime(2024, 1, 2, tzinfo=UTC)]
    table = pa.table(
        {
            "customer_id": pa.array([1, 2], pa.int64()),
            **{n: pa.array([None, None], t) for n, t in ARROW_TYPES.items()},
            "feature_timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
        }
    )
    view = _view(False)
    stored, stock_stored = [], []
    for name in ZONES:
        with zone(name):
            path = tmp_path / f"{name.replace('/', '_')}.db"
            store, cfg = KeyOrderedSqliteOnlineStore(), _config(path, KeyOrderedSqliteOnlineStoreConfig)
            store.update(cfg, [], [view], [], [], partial=False)
            store.online_write_arrow(cfg, view, table)
            stored.append(_rows(path))
            stock_path = tmp_path / f"stock-{name.replace('/', '_')}.db"
            stock, stock_cfg = SqliteOnlineStore(), _config(stock_path, SqliteOnlineStoreConfig)
            stock.update(stock_cfg, [], [view], [], [], partial=False)
            data = _convert_arrow_to_proto(table, view, {"customer_id": ValueType.INT64})
            stock.online_write_batch(stock_cfg, view, data, progress=None)
            stock_stored.append(_rows(stock_path))
        for reader in ZONES:  # what was written under `name`, served under every zone
            with zone(reader):
                keys = [
                    EntityKeyProto(join_keys=["customer_id"], entity_values=[ValueProto(int64_val=i)])
                    for i in (1, 2)
                ]
                got = [ts for ts, _ in KeyOrderedSqliteOnlineStore().online_read(cfg, view, keys)]
            assert got == times, (name, reader)
    assert stored[0] == stored[1] == stored[2]
    assert stored[0] == stock_stored[0]  # under UTC, the very rows Feast writes
    assert stock_stored[0] != stock_stored[1]  # Feast's own rows move with the zone


def test_online_store_path_without_asof_home_is_asofs_default(monkeypatch) -> None:
    """The feast CLI from feature_repo/ without ASOF_HOME: Feast's expandvars leaves the variable
    in the path; the store resolves it to asof's default home, not a literal `${ASOF_HOME}` dir."""
    from flows.features.feast_home import DEFAULT_HOME

    monkeypatch.delenv("ASOF_HOME", raising=False)
    config = KeyOrderedSqliteOnlineStoreConfig(path="${ASOF_HOME}/feast/online.db")
    assert config.path == str(DEFAULT_HOME.resolve() / "feast" / "online.db")
    monkeypatch.setenv("ASOF_HOME", "/srv/asof")
    assert (
        KeyOrderedSqliteOnlineStoreConfig(path="${ASOF_HOME}/feast/online.db").path
        == "/srv/asof/feast/online.db"
    )


def test_a_view_without_features_writes_no_row(tmp_path: Path) -> None:
    """Entities of a view with no feature columns give no (entity, feature) row, as row by row."""
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.execute("CREATE TABLE t (entity_key, feature_name, value, value_text, event_ts, created_ts)")
    feast_online.write_entities(conn, "t", [], [b"key", 1, None, b"other", 2, None])
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
