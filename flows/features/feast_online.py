"""asof's online stores: Feast's SQLite and Redis stores, written from Arrow.

Configured in `feature_repo/feature_store.yaml` (and `feature_store.redis.yaml`) through Feast's
plug-in mechanism::

    online_store:
      type: flows.features.feast_online.KeyOrderedSqliteOnlineStore   # or ArrowRedisOnlineStore
    batch_engine:
      type: flows.features.feast_engine.ArrowLocalComputeEngine

Same tables or hashes, same rows, same bytes as Feast's `sqlite` and `redis` stores (reads,
schema updates and teardown are inherited; tests/test_feast_online.py compares every byte with
Feast's own conversion and write): only how a materialized batch reaches the store differs.
Feast's local engine converts every value of every row to a protobuf message in Python, then the
SQLite store upserts row by row in the offline store's order, which is random with respect to the
serialized entity key that leads the table's primary key. Profiled on 30 bench days (174,279
entities, 1,030,506 values, fresh SQLite store): 24.4 s, of which proto conversion 6.6-9.1 s and
`Connection.execute` 5.2 s. Here the engine hands the Arrow batch over (`online_write_arrow`);
values are encoded without a message where the type allows; SQLite rows go in primary-key order
(each B-tree page touched once instead of once per row: 754,542 rows 3.7 s vs 12.0 s), 100 rows
per statement (each row bound in one multi-row VALUES list: executemany's per-row statement
overhead was a third of the write); Redis gets Feast's `skip_dedup` hashes in one pipeline.

The SQLite tables keep Feast's columns, rows and primary key, but not Feast's second index on
`entity_key`: the primary key (entity_key, feature_name) already serves every lookup by entity key
(SQLite uses a leading column of an index), so that index only made each row written land in a
third B-tree. `update` does not keep it, and the first write to a table drops it if Feast's `feast
apply` (its SqliteTable infra object) created it.

Vector and value_num columns (Feast's RAG options, unused here) and Redis without `skip_dedup`
keep Feast's own path. Feast's `_mmh3` (the field hash of its Redis layout) is used as is, so the
layout cannot drift from Feast's.
"""

from __future__ import annotations

import calendar
import functools
import itertools
import sqlite3
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast import Entity, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import (
    _mmh3,
    compute_table_id,
    compute_versioned_name,
    extract_text_and_num,
)
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.type_map import python_values_to_proto_values
from feast.utils import make_tzaware, to_naive_utc
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import field_validator

STORE_TYPE = "flows.features.feast_online.KeyOrderedSqliteOnlineStore"

# The columns Feast's SQLite store writes when neither vectors nor value_num are enabled, in its
# order; the primary key is (entity_key, feature_name).
_COLUMNS = ("entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts")
_PRIMARY_KEY = itemgetter(0, 1)


class KeyOrderedSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """Feast's SQLite options, under this store's type name; `${ASOF_HOME}` in the path resolves
    as `asof` resolves it when the variable is unset (the feast CLI from feature_repo/:
    flows.features.feast_home), instead of naming a directory literally called `${ASOF_HOME}`."""

    type: Literal["flows.features.feast_online.KeyOrderedSqliteOnlineStore"] = STORE_TYPE  # type: ignore[assignment]

    @field_validator("path")
    @classmethod
    def _home(cls, path: str) -> str:
        from flows.features.feast_home import expand_home  # sets ASOF_HOME's default: only when needed

        return expand_home(path)


def _epoch(ts: datetime) -> int:
    """Whole seconds since the epoch of a UTC instant (a naive value is UTC, as everywhere in
    Feast). Feast's sqlite3 adapter stores `naive_utc.timestamp()` instead, which Python reads in
    the machine's local zone, and its reader undoes that with `fromtimestamp` in the local zone:
    the stored number then depends on TZ, a value written under one zone is served shifted under
    another, and a UTC time that falls in a local DST gap or fold comes back an hour off. Under
    TZ=UTC both are the same number (tests/test_feast_online.py)."""
    return calendar.timegm(to_naive_utc(ts).utctimetuple())


# Rows per INSERT statement: one multi-row VALUES list binds 100 rows (600 parameters, well under
# SQLite's 32,766), so the statement is stepped and reset once per 100 rows. Rows of one statement
# are inserted in list order: of two rows with one key, the later still wins through ON CONFLICT.
ROWS_PER_STATEMENT = 100


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _insert_head(table_name: str) -> str:
    return f"INSERT INTO {_quoted(table_name)} ({', '.join(_COLUMNS)}) VALUES "


def _on_conflict() -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[2:])
    return f" ON CONFLICT(entity_key, feature_name) DO UPDATE SET {updates}"


def upsert_statement(table_name: str, rows: int = 1) -> str:
    marks = "(" + ", ".join("?" * len(_COLUMNS)) + ")"
    return _insert_head(table_name) + ", ".join([marks] * rows) + _on_conflict()


# SQLite's default bound on a statement's parameters (SQLITE_MAX_VARIABLE_NUMBER since 3.32).
MAX_PARAMETERS = 32766


def entity_width(features: int) -> int:
    """Parameters one entity binds in `entity_upsert_statement`: its key, a (value, value_text)
    pair per feature, event_ts and created_ts."""
    return 2 * features + 3


def entity_upsert_statement(table_name: str, features: int, entities: int) -> str:
    """The upsert of `entities` whole entities of a view with `features` features: the rows
    `upsert_statement` would insert, entity by entity and feature by feature in that order, with
    each value bound once. The feature names are parameters ?1..?F, bound once per statement;
    each entity's key and timestamps are bound once and referenced by number from its F rows.
    Binding is most of Python's cost of an upsert (a bench day's ~920k rows: 25 parameters an
    entity instead of 66, executemany 2.85 -> ~1.8 s)."""
    width = entity_width(features)
    rows = []
    for e in range(entities):
        base = features + e * width  # the parameters bound before this entity's
        key, event_ts, created_ts = base + 1, base + width - 1, base + width
        for j in range(features):
            value, text = base + 2 + 2 * j, base + 3 + 2 * j
            rows.append(f"(?{key}, ?{j + 1}, ?{value}, ?{text}, ?{event_ts}, ?{created_ts})")
    return _insert_head(table_name) + ", ".join(rows) + _on_conflict()


def entity_key_index(table_name: str) -> str:
    """The name of Feast's index on entity_key alone (SqliteOnlineStore.update, SqliteTable)."""
    return table_name + "_ek"


def write_rows(conn: sqlite3.Connection, table_name: str, flat: list) -> None:
    """Upsert rows given as one flat list of parameters (len(_COLUMNS) per row, rows in order),
    in one transaction."""
    width = len(_COLUMNS)
    chunk = ROWS_PER_STATEMENT * width
    whole = len(flat) // chunk * chunk
    with conn:
        if whole:
            conn.executemany(
                upsert_statement(table_name, ROWS_PER_STATEMENT),
                (flat[i : i + chunk] for i in range(0, whole, chunk)),
            )
        if whole < len(flat):
            conn.executemany(
                upsert_statement(table_name), (flat[i : i + width] for i in range(whole, len(flat), width))
            )


def write_entities(conn: sqlite3.Connection, table_name: str, features: Sequence[str], flat: list) -> None:
    """Upsert whole entities given as one flat list (`entity_width` parameters per entity: key,
    value and value_text of each of `features` in that order, event_ts, created_ts; entities in
    order), in one transaction. A view too wide for one entity per statement goes row by row."""
    if not features:
        return  # a view without features writes no row (as row by row)
    width = entity_width(len(features))
    if len(features) + width > MAX_PARAMETERS:
        write_rows(conn, table_name, _rows_of_entities(features, flat))
        return
    per_statement = max(1, ROWS_PER_STATEMENT // len(features))
    chunk = per_statement * width
    whole = len(flat) // chunk * chunk
    names = list(features)
    with conn:
        if whole:
            conn.executemany(
                entity_upsert_statement(table_name, len(names), per_statement),
                (names + flat[i : i + chunk] for i in range(0, whole, chunk)),
            )
        if whole < len(flat):
            rest = (len(flat) - whole) // width
            conn.execute(entity_upsert_statement(table_name, len(names), rest), names + flat[whole:])


def _rows_of_entities(features: Sequence[str], flat: list) -> list:
    """`write_entities`' parameters as `write_rows` takes them (one row per entity and feature)."""
    width = entity_width(len(features))
    rows: list = []
    for i in range(0, len(flat), width):
        key, event_ts, created_ts = flat[i], flat[i + width - 2], flat[i + width - 1]
        for j, name in enumerate(features):
            rows += (key, name, flat[i + 1 + 2 * j], flat[i + 2 + 2 * j], event_ts, created_ts)
    return rows


def key_ordered_rows(
    data: Sequence[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
    key_version: int,
) -> list[tuple[bytes, str, bytes, str | None, int, int | None]]:
    """The batch as SQLite rows, sorted by primary key. Two writes of one (entity, feature) in a
    batch keep their order (the sort is stable), so the later one wins, as with Feast's loop."""
    rows = []
    append = rows.append
    for entity_key, values, timestamp, created in data:
        key = serialize_entity_key(entity_key, entity_key_serialization_version=key_version)
        event_ts = _epoch(timestamp)
        created_ts = _epoch(created) if created is not None else None
        for name, value in values.items():
            append(
                (
                    key,
                    name,
                    value.SerializeToString(),
                    extract_text_and_num(value, False)[0],
                    event_ts,
                    created_ts,
                )
            )
    rows.sort(key=_PRIMARY_KEY)
    return rows


# ------------------------------------------------------------------ Arrow in, SQLite rows out

# Feature value types whose protobuf values are built here straight from Arrow's Python values
# (exactly as Feast's type_map builds them; tests/test_feast_online.py compares the bytes for
# every type, with nulls, NaN, infinities and extremes). Any other type goes through Feast's own
# conversion, column by column.
_BUILDERS: dict[ValueType, Callable[[Any], ValueProto]] = {
    ValueType.DOUBLE: lambda x: ValueProto(double_val=x),
    ValueType.INT64: lambda x: ValueProto(int64_val=int(x)),
    ValueType.INT32: lambda x: ValueProto(int32_val=int(x)),
    ValueType.STRING: lambda x: ValueProto(string_val=str(x)),
    ValueType.BOOL: lambda x: ValueProto(bool_val=bool(x)),
}
# The Arrow types each builder takes as Feast does; a column of another type (a timestamp in an
# INT64 feature, say) goes through Feast's conversion.
_ARROW_TYPES: dict[ValueType, Callable[[pa.DataType], bool]] = {
    ValueType.DOUBLE: lambda t: pa.types.is_floating(t) or pa.types.is_integer(t),
    ValueType.INT64: lambda t: pa.types.is_floating(t) or pa.types.is_integer(t),
    ValueType.INT32: lambda t: pa.types.is_floating(t) or pa.types.is_integer(t),
    ValueType.STRING: lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    ValueType.BOOL: pa.types.is_boolean,
}
_EMPTY = ValueProto()
_NULL: tuple[bytes, str | None] = (_EMPTY.SerializeToString(), None)


def _double_encoder() -> Callable[[float], bytes] | None:
    """A double value's protobuf bytes without a message object: the field's tag byte, then the
    8-byte little-endian IEEE value (protobuf's wire format for a `double` field). Derived from
    and checked against the message itself; None (the message path) if they ever disagree."""
    sample = ValueProto(double_val=-1.5).SerializeToString()
    pack = struct.Struct("<Bd").pack
    if len(sample) != 9 or pack(sample[0], -1.5) != sample:
        return None
    return functools.partial(pack, sample[0])  # C-level when mapped over a column


_ENCODE_DOUBLE = _double_encoder()


# Integer features whose values are encoded here as protobuf varints, per Arrow type that holds
# only values the field can take (Feast's int() of a larger value would fail instead).
_INT_FIELDS: dict[ValueType, tuple[str, Callable[[pa.DataType], bool]]] = {
    ValueType.INT64: (
        "int64_val",
        lambda t: pa.types.is_signed_integer(t) or t in (pa.uint8(), pa.uint16(), pa.uint32()),
    ),
    ValueType.INT32: (
        "int32_val",
        lambda t: t in (pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16()),
    ),
}


def _varints(values: np.ndarray, tag: int) -> list[bytes]:
    """Each int64 as protobuf encodes a varint field: the tag byte, then 7 bits a byte from the
    lowest, the high bit set on every byte but the last (a negative value: its 64-bit two's
    complement, 10 bytes)."""
    rest = values.astype(np.int64).view(np.uint64)
    out = np.zeros((len(values), 11), dtype=np.uint8)
    out[:, 0] = tag
    lengths = np.full(len(values), 2, dtype=np.int64)  # the tag and the first byte
    for k in range(1, 11):
        out[:, k] = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest = rest >> np.uint64(7)
        more = rest != 0
        out[more, k] |= 0x80
        lengths += more
    buf = out.tobytes()
    return [buf[i * 11 : i * 11 + n] for i, n in enumerate(lengths.tolist())]


def _varints_match(field: str) -> bool:
    """The encoding above, checked against the message for the field's extremes."""
    samples = [0, 1, -1, 127, 128, 300, -(2**31), 2**31 - 1] + (
        [2**63 - 1, -(2**63)] if field != "int32_val" else []
    )
    tag = ValueProto(**{field: 1}).SerializeToString()[0]
    got = _varints(np.array(samples, dtype=np.int64), tag)
    return got == [ValueProto(**{field: v}).SerializeToString() for v in samples]


_VARINT_FIELDS = {t: f for t, (f, _) in _INT_FIELDS.items() if _varints_match(f)}
# A timestamp feature's values are int64 varints too (unix_timestamp_val): its tag, or None (the
# message path) if the encoding ever disagreed with the message.
_TIME_TAG = (
    ValueProto(unix_timestamp_val=1).SerializeToString()[0] if _varints_match("unix_timestamp_val") else None
)


def _int_values(column: pa.ChunkedArray, value_type: ValueType) -> tuple[np.ndarray, np.ndarray] | None:
    """(serialized value, value_text) per row of an integer column of many distinct values (an id,
    seconds since an event), vectorized: the varint bytes, and str() of the value, as Feast's
    extract_text_and_num gives. None for other columns (`_distinct_values` then builds each
    distinct value once: rows of one execution date 0.68 -> 0.48 s CPU with both)."""
    field = _VARINT_FIELDS.get(value_type)
    if field is None or not _INT_FIELDS[value_type][1](column.type):
        return None
    if pc.count_distinct(column).as_py() * 4 < len(column):
        return None  # few distinct values (counts, codes): built once each is cheaper
    ints = pc.fill_null(column, 0).cast(pa.int64()).to_numpy()
    tag = ValueProto(**{field: 1}).SerializeToString()[0]
    values = _objects(_varints(ints, tag))
    texts = _objects(list(map(str, ints.tolist())))
    if column.null_count:
        nulls = np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False))
        values[nulls], texts[nulls] = _NULL
    return values, texts


def _is_null(x: Any) -> bool:
    return x is None or (isinstance(x, float) and x != x)  # NaN is null to Feast (pd.isnull)


def _protos(column: pa.ChunkedArray, value_type: ValueType) -> list[ValueProto] | None:
    """Feast's protobuf values of a column, built directly for the types in _BUILDERS (None for
    the others). Equal values share one object: a feature column repeats few distinct values."""
    build = _BUILDERS.get(value_type)
    if build is None or not _ARROW_TYPES[value_type](column.type):
        return None
    cache: dict[tuple[type, Any], ValueProto] = {}
    out = []
    for x in column.to_pylist():
        if x is None or type(x) is float:  # floats are not shared: 0.0 == -0.0, NaN != NaN
            out.append(_EMPTY if _is_null(x) else build(x))
            continue
        key = (type(x), x)  # not x alone: 1 == True, but they are stored apart
        value = cache.get(key)
        if value is None:
            value = cache[key] = build(x)
        out.append(value)
    return out


def _distinct_values(column: pa.ChunkedArray, value_type: ValueType) -> tuple[np.ndarray, np.ndarray] | None:
    """(serialized value, value_text) per row as two object arrays, each distinct value built and
    serialized once (Arrow's unique and index_in, then a C-level gather): for the non-float columns
    of the types in _BUILDERS, whose distinct values are few (counts, flags, codes). None for any
    other column."""
    build = _BUILDERS.get(value_type)
    if build is None or not _ARROW_TYPES[value_type](column.type) or pa.types.is_floating(column.type):
        return None
    distinct = pc.unique(column)
    pairs = [_NULL if x is None else _serialized(build(x)) for x in distinct.to_pylist()]
    where = pc.index_in(column, distinct).to_numpy(zero_copy_only=False)
    return _objects([v for v, _ in pairs])[where], _objects([t for _, t in pairs])[where]


def _serialized(value: ValueProto) -> tuple[bytes, str | None]:
    # value_text is what Feast's extract_text_and_num makes of the stored value
    return value.SerializeToString(), extract_text_and_num(value, False)[0]


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-d object array holding exactly these objects (numpy would nest tuples or coerce)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _column_values(column: pa.ChunkedArray, value_type: ValueType) -> tuple[np.ndarray, np.ndarray]:
    """(serialized value, value_text) per row of one feature column, as two object arrays."""
    if value_type == ValueType.DOUBLE and _ENCODE_DOUBLE and pa.types.is_floating(column.type):
        doubles = column.cast(pa.float64())
        floats = doubles.to_pylist()
        # NaN is null to Feast (pd.isnull), as None is
        missing = pc.or_kleene(pc.is_null(doubles), pc.is_nan(doubles))
        nulls = np.flatnonzero(missing.to_numpy(zero_copy_only=False)).tolist()
        for i in nulls:
            floats[i] = 0.0
        # value_text of a double is str() of the stored double (extract_text_and_num)
        values, texts = _objects(list(map(_ENCODE_DOUBLE, floats))), _objects(list(map(str, floats)))
        values[nulls], texts[nulls] = _NULL
        return values, texts
    for encoded in (_int_values, _distinct_values):
        found = encoded(column, value_type)
        if found is not None:
            return found
    protos = _protos(column, value_type)
    if protos is None:
        time_column = value_type == ValueType.UNIX_TIMESTAMP and pa.types.is_timestamp(column.type)
        if time_column and _TIME_TAG is not None:
            # Feast floors each datetime64 to whole seconds, and a null (NaT) becomes NaT's int64
            # (its conversion of the column's numpy values); value_text stays empty for timestamps
            seconds = column.to_numpy(zero_copy_only=False).astype("datetime64[s]").astype("int64")
            return _objects(_varints(seconds, _TIME_TAG)), _objects([None] * len(seconds))
        protos = python_values_to_proto_values(column.to_numpy(zero_copy_only=False), value_type)
    encoded: dict[int, tuple[bytes, str | None]] = {}
    pairs = []
    for value in protos:
        pair = encoded.get(id(value))
        if pair is None:
            pair = encoded[id(value)] = _serialized(value)
        pairs.append(pair)
    return _objects([v for v, _ in pairs]), _objects([t for _, t in pairs])


def per_distinct_time(column: pa.ChunkedArray, encode: Callable[[datetime], Any]) -> list[Any]:
    """`encode` of every timestamp of the column (None stays None), computed once per distinct
    value: a materialization window holds a handful of distinct event times. Values are aware UTC
    datetimes; sub-microsecond parts are dropped, as Feast's conversion to Python datetimes does."""
    times = column.cast(pa.timestamp("us", tz="UTC"), safe=False)
    distinct = pc.unique(times)
    encoded = [None if v is None else encode(v) for v in distinct.to_pylist()]
    return [encoded[i] for i in pc.index_in(times, distinct).to_pylist()]


def _epochs(column: pa.ChunkedArray) -> list[int | None]:
    return per_distinct_time(column, _epoch)


def _entity_keys(table: pa.Table, view: FeatureView, key_version: int) -> list[bytes]:
    """Feast's serialized entity key of every row. For a single INT64 join key (every entity
    here) the key is a constant prefix and the value's 8 little-endian bytes: the prefix is
    taken from Feast's own serialization of one row and the result checked against it."""
    join_keys = [(e.name, e.dtype.to_value_type()) for e in view.entity_columns]
    columns = [table.column(n) for n, _ in join_keys]
    names = [n for n, _ in join_keys]
    if len(join_keys) == 1 and join_keys[0][1] == ValueType.INT64 and columns[0].null_count == 0:
        values = columns[0].cast(pa.int64()).to_pylist()
        if values:
            first = serialize_entity_key(
                EntityKeyProto(join_keys=names, entity_values=[ValueProto(int64_val=values[0])]), key_version
            )
            pack = struct.Struct("<q").pack
            prefix = first[:-8]
            if prefix + pack(values[0]) == first:
                return [prefix + pack(v) for v in values]
    protos = [
        _protos(c, t) or python_values_to_proto_values(c.to_numpy(zero_copy_only=False), t)
        for c, (_, t) in zip(columns, join_keys, strict=True)
    ]
    return [
        serialize_entity_key(EntityKeyProto(join_keys=names, entity_values=list(vals)), key_version)
        for vals in zip(*protos, strict=True)
    ]


def arrow_rows(table: pa.Table, view: FeatureView, key_version: int) -> tuple[list[str], list]:
    """The SQLite rows Feast's materialization writes for these feature rows (its Arrow-to-proto
    conversion followed by its SQLite upsert), as `write_entities` takes them: the view's feature
    names in SQLite's order, and one flat parameter list of the entities in primary-key order
    (by serialized key, a stable sort: of two rows of one entity the later is written last and
    wins, as in Feast's loop). Built column by column with numpy object arrays, without a protobuf
    object or a tuple per value where the type allows."""
    keys = _entity_keys(table, view, key_version)
    source = view.batch_source
    event_ts = _epochs(table.column(source.timestamp_field))
    created = source.created_timestamp_column
    created_ts = _epochs(table.column(created)) if created else [None] * table.num_rows
    features = sorted(view.features, key=lambda f: f.name)  # SQLite's BINARY order of UTF-8 text
    order = np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
    rows = np.empty((len(keys), entity_width(len(features))), dtype=object)
    rows[:, 0] = _objects(keys)[order]
    for j, f in enumerate(features):
        values, texts = _column_values(table.column(f.name), f.dtype.to_value_type())
        rows[:, 1 + 2 * j], rows[:, 2 + 2 * j] = values[order], texts[order]
    rows[:, -2] = _objects(event_ts)[order]
    rows[:, -1] = _objects(created_ts)[order]
    return [f.name for f in features], rows.reshape(-1).tolist()


class KeyOrderedSqliteOnlineStore(SqliteOnlineStore):
    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        if not self.writes_rows(config):
            return super().online_write_batch(config, table, data, progress)
        rows = key_ordered_rows(data, config.entity_key_serialization_version)
        flat = list(itertools.chain.from_iterable(rows))
        write_rows(self._writable_conn(config, table), self._table_name(config, table), flat)
        if progress:
            progress(len(data))

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[tuple[datetime | None, dict[str, ValueProto] | None]]:
        """Feast's read, with `event_ts` taken as seconds since the epoch in UTC (`_epoch`), not
        converted through the local zone: the served timestamp does not depend on TZ."""
        keys = [serialize_entity_key(k, config.entity_key_serialization_version) for k in entity_keys]
        if not keys:
            return []
        name = compute_table_id(config.project, table, config.registry.enable_online_feature_view_versioning)
        quoted = '"' + name.replace('"', '""') + '"'
        cur = self._get_conn(config).execute(
            f"SELECT entity_key, feature_name, value, CAST(event_ts AS INTEGER) FROM {quoted} "
            f"WHERE entity_key IN ({','.join('?' * len(keys))}) ORDER BY entity_key",
            keys,
        )
        found = {k: list(g) for k, g in itertools.groupby(cur.fetchall(), key=itemgetter(0))}
        result: list[tuple[datetime | None, dict[str, ValueProto] | None]] = []
        for key in keys:
            rows = found.get(key)
            if not rows:
                result.append((None, None))
                continue
            values = {}
            for _, feature, blob, _ in rows:
                value = ValueProto()
                value.ParseFromString(blob)
                values[feature] = value
            ts = rows[-1][3]  # Feast's read keeps the last row's time; one entity's rows share it
            result.append((None if ts is None else datetime.fromtimestamp(ts, UTC), values))
        return result

    def writes_rows(self, config: RepoConfig) -> bool:
        """False where Feast's write fills columns this store does not (vectors, value_num)."""
        store = config.online_store
        return not (store.vector_enabled or getattr(store, "enable_openai_compatible_store", False))

    def online_write_arrow(
        self, config: RepoConfig, table: FeatureView, rows: pa.Table | pa.RecordBatch
    ) -> None:
        """Materialization's write straight from the offline store's Arrow rows
        (flows.features.feast_engine): the rows `online_write_batch` would write after Feast's conversion."""
        features, flat = arrow_rows(rows, table, config.entity_key_serialization_version)
        write_entities(self._writable_conn(config, table), self._table_name(config, table), features, flat)

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ) -> None:
        """Feast's tables, without its redundant entity_key index (module docstring)."""
        super().update(
            config, tables_to_delete, tables_to_keep, entities_to_delete, entities_to_keep, partial
        )
        if self.writes_rows(config):
            for table in tables_to_keep:
                self._drop_entity_key_index(config, self._table_name(config, table))

    def _table_name(self, config: RepoConfig, table: FeatureView) -> str:
        return compute_table_id(config.project, table, config.registry.enable_online_feature_view_versioning)

    def _drop_entity_key_index(self, config: RepoConfig, name: str) -> None:
        conn = self._get_conn(config)
        with conn:
            conn.execute(f"DROP INDEX IF EXISTS {_quoted(entity_key_index(name))}")
        self._plain_tables().add(name)

    def _plain_tables(self) -> set[str]:
        """Tables known to be without Feast's entity_key index on this store's connection."""
        plain: set[str] | None = getattr(self, "_asof_plain_tables", None)
        if plain is None or getattr(self, "_asof_plain_conn", None) is not self._conn:
            plain = self._asof_plain_tables = set()
            self._asof_plain_conn = self._conn
        return plain

    def _writable_conn(self, config: RepoConfig, table: FeatureView) -> sqlite3.Connection:
        """The connection to write the view's table with, once Feast's entity_key index is gone."""
        name = self._table_name(config, table)
        if name not in self._plain_tables():
            self._drop_entity_key_index(config, name)
        return self._get_conn(config)


# ------------------------------------------------------------------ Redis

REDIS_STORE_TYPE = "flows.features.feast_online.ArrowRedisOnlineStore"


class ArrowRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """Feast's Redis options, under this store's type name."""

    type: Literal["flows.features.feast_online.ArrowRedisOnlineStore"] = REDIS_STORE_TYPE  # type: ignore[assignment]


def _redis_timestamp(value: datetime) -> bytes:
    """The serialized protobuf Timestamp Feast stores per entity (`_ts:<view>`), from the aware
    UTC datetime as Feast's write makes it."""
    ts = Timestamp()
    ts.FromDatetime(make_tzaware(value))
    return ts.SerializeToString()


class ArrowRedisOnlineStore(RedisOnlineStore):
    """Feast's Redis store, taking materialized rows as Arrow (flows.features.feast_engine): the hashes
    Feast's `skip_dedup` write leaves (entity key + project -> `_ts:<view>` and one murmur3 field
    per feature), without a protobuf message per value. With `skip_dedup` off, Feast's write (it
    reads every stored timestamp first) is used unchanged."""

    def writes_rows(self, config: RepoConfig) -> bool:
        return bool(config.online_store.skip_dedup)

    def online_write_arrow(self, config: RepoConfig, table: FeatureView, rows: pa.Table) -> None:
        store = config.online_store
        view = compute_versioned_name(table, config.registry.enable_online_feature_view_versioning)
        project = config.project.encode("utf-8")
        keys = _entity_keys(rows, table, config.entity_key_serialization_version)
        stamps = per_distinct_time(rows.column(table.batch_source.timestamp_field), _redis_timestamp)
        fields = [
            (
                _mmh3(f"{view}:{f.name}"),
                _column_values(rows.column(f.name), f.dtype.to_value_type())[0].tolist(),
            )
            for f in table.features
        ]
        ts_field, ttl = f"_ts:{view}", store.key_ttl_seconds
        with self._get_client(store).pipeline(transaction=False) as pipe:
            for i, key in enumerate(keys):
                # HSET key field value ...: what redis-py's hset(mapping=...) sends, without the
                # dict it builds per entity
                args: list[Any] = [key + project, ts_field, stamps[i]]
                for field, values in fields:
                    args += (field, values[i])
                pipe.execute_command("HSET", *args)
                if ttl:
                    pipe.expire(name=key + project, time=ttl)
            pipe.execute()
