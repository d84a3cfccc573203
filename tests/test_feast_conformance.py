"""Conformance of the project's offline store (flows/features/feast_offline.py) with Feast's documented
point-in-time rule, checked against `reference` below: a deliberately naive pandas loop over entity
rows, written from Feast's documentation, not from the store's SQL.

The rule (Feast "point-in-time joins"; `filter_by_created_timestamp` since 0.65), per entity row
with timestamp E (a naive timestamp is UTC) and feature view: among the view's rows with the same
join keys, `timestamp <= E`, within ttl (`timestamp > E - ttl`, or `>=` in Feast's inclusive mode;
no ttl: no lower bound) and, when filtering, `created <= E` (a row without a created timestamp is
then never a candidate), take the one with the greatest timestamp, ties to the greatest created
timestamp (null lowest). None: the features are null. Every entity row comes back once, with its
own columns untouched.

Real components throughout: Delta tables written through flows.storage.lake, a Feast registry, DuckDB.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

UTC = dt.UTC
T0 = pd.Timestamp("2024-03-01T00:00:00Z")
TS = pa.timestamp("us", tz="UTC")
DAY = pd.Timedelta(days=1)


# ------------------------------------------------------------------ the pandas reference


@dataclass
class RefView:
    """What the reference needs of a feature view, in source terms."""

    name: str
    rows: pd.DataFrame  # source columns
    keys: list[tuple[str, str]]  # (entity column, source column)
    ts: str
    created: str | None
    features: list[tuple[str, str]]  # (source column, feature name)
    ttl: pd.Timedelta | None


def _utc(values: pd.Series) -> pd.Series:
    s = pd.to_datetime(values)
    if getattr(s.dt, "tz", None) is None:
        return s.dt.tz_localize("UTC")
    return s.dt.tz_convert("UTC")


def reference(
    entity: pd.DataFrame,
    views: list[RefView],
    ts_col: str = "event_timestamp",
    inclusive: bool = False,
    filter_created: bool = False,
    full_feature_names: bool = False,
) -> pd.DataFrame:
    out = entity.copy()
    times = _utc(entity[ts_col])
    for v in views:
        rows = v.rows.copy()
        rows["__ts"] = _utc(rows[v.ts])
        rows["__created"] = _utc(rows[v.created]) if v.created else pd.NaT
        values: dict[str, list[Any]] = {f: [] for _, f in v.features}
        for i in range(len(entity)):
            e = times.iloc[i]
            cand = rows
            for ent_col, src_col in v.keys:
                key = entity[ent_col].iloc[i]
                cand = cand[cand[src_col] == key] if not pd.isna(key) else cand.iloc[0:0]
            cand = cand[cand["__ts"] <= e]
            if v.ttl is not None:
                low = e - v.ttl
                cand = cand[cand["__ts"] >= low] if inclusive else cand[cand["__ts"] > low]
            if filter_created and v.created:
                cand = cand[cand["__created"].notna() & (cand["__created"] <= e)]
            best = None
            for _, r in cand.iterrows():
                rank = (
                    r["__ts"],
                    r["__created"] if not pd.isna(r["__created"]) else pd.Timestamp.min.tz_localize("UTC"),
                )
                if best is None or rank > best[0]:
                    best = (rank, r)
            for src, feat in v.features:
                values[feat].append(None if best is None else best[1][src])
        for _, feat in v.features:
            out[f"{v.name}__{feat}" if full_feature_names else feat] = values[feat]
    return out


def _plain(v: Any) -> Any:
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, float) and np.isnan(v):
        return None
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, pd.Timestamp):
        return v.tz_convert("UTC") if v.tzinfo else v.tz_localize("UTC")
    return v


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same columns, same rows in the same order, values equal with nulls as nulls."""
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    for col in want.columns:
        g = [_plain(x) for x in got[col].tolist()]
        w = [_plain(x) for x in want[col].tolist()]
        assert g == w, f"column {col!r} differs:\n got  {g}\n want {w}"


# ------------------------------------------------------------------ a small feature repo over the lake


@dataclass
class Repo:
    store: Any
    views: dict[str, Any] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)

    def with_offline(self, **options: Any) -> Any:
        from feast import FeatureStore

        config = self.store.config.model_copy(deep=True)
        for k, v in options.items():
            setattr(config.offline_store, k, v)
        return FeatureStore(repo_path=str(self.store.repo_path), config=config)


A_COLUMNS = ["k", "as_of_date", "ts", "created", "v_int", "raw_v", "label"]


def write_a(rows: pd.DataFrame) -> None:
    """The lake table behind view `conf_a` (replaced whole)."""
    from flows.storage import lake

    table = pa.table(
        {
            "k": pa.array(rows["k"], pa.int64()),
            "as_of_date": pa.array([dt.date(2024, 3, 1)] * len(rows), pa.date32()),
            "ts": pa.array(_utc(rows["ts"]) if len(rows) else [], TS),
            "created": pa.array(
                [None if pd.isna(c) else pd.Timestamp(c).to_pydatetime() for c in rows["created"]], TS
            ),
            "v_int": pa.array(rows["v_int"], pa.int64()),
            "raw_v": pa.array(rows["raw_v"], pa.float64()),
            "label": pa.array(rows["label"], pa.string()),
        }
    )
    lake.overwrite("gold", "conf_a", table, partition_by=["as_of_date"])


def write_b(rows: pd.DataFrame) -> None:
    from flows.storage import lake

    table = pa.table(
        {
            "m": pa.array(rows["m"], pa.int64()),
            "ts": pa.array(_utc(rows["ts"]), TS),
            "w": pa.array(rows["w"], pa.float64()),
        }
    )
    lake.overwrite("gold", "conf_b", table)


def ref_a(rows: pd.DataFrame, key_col: str = "k") -> RefView:
    return RefView(
        "conf_a",
        rows,
        [(key_col, "k")],
        "ts",
        "created",
        [("v_int", "v_int"), ("raw_v", "v_mapped"), ("label", "label")],
        pd.Timedelta(days=1),
    )


def ref_b(rows: pd.DataFrame) -> RefView:
    return RefView("conf_b", rows, [("m", "m")], "ts", None, [("w", "w")], pd.Timedelta(hours=2))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    from feast import (
        Entity,
        FeatureService,
        FeatureStore,
        FeatureView,
        Field,
        FileSource,
        RequestSource,
        ValueType,
    )
    from feast.data_format import DeltaFormat
    from feast.on_demand_feature_view import on_demand_feature_view
    from feast.repo_config import RepoConfig
    from feast.types import Float64, Int64, String

    from flows.storage import lake

    home = tmp_path_factory.mktemp("conformance_home")
    saved = os.environ.get("ASOF_HOME")
    os.environ["ASOF_HOME"] = str(home)
    lake_uri = os.environ.pop("ASOF_LAKE_URI", None)
    try:
        write_a(pd.DataFrame({c: [] for c in ["k", "ts", "created", "v_int", "raw_v", "label"]}))
        write_b(pd.DataFrame({"m": [1], "ts": [T0], "w": [1.0]}))
        k = Entity(name="k", join_keys=["k"], value_type=ValueType.INT64)
        m = Entity(name="m", join_keys=["m"], value_type=ValueType.INT64)
        source_a = FileSource(
            name="conf_a",
            path=lake.uri("gold", "conf_a"),
            file_format=DeltaFormat(),
            timestamp_field="ts",
            created_timestamp_column="created",
            field_mapping={"raw_v": "v_mapped"},
        )
        source_b = FileSource(
            name="conf_b", path=lake.uri("gold", "conf_b"), file_format=DeltaFormat(), timestamp_field="ts"
        )
        view_a = FeatureView(
            name="conf_a",
            entities=[k],
            ttl=dt.timedelta(days=1),
            schema=[
                Field(name="k", dtype=Int64),
                Field(name="v_int", dtype=Int64),
                Field(name="v_mapped", dtype=Float64),
                Field(name="label", dtype=String),
            ],
            source=source_a,
        )
        view_b = FeatureView(
            name="conf_b",
            entities=[m],
            ttl=dt.timedelta(hours=2),
            schema=[Field(name="m", dtype=Int64), Field(name="w", dtype=Float64)],
            source=source_b,
        )
        request = RequestSource(name="conf_request", schema=[Field(name="bump", dtype=Int64)])

        @on_demand_feature_view(
            sources=[view_a, request], schema=[Field(name="v_bumped", dtype=Int64)], mode="pandas"
        )
        def conf_odfv(inputs: pd.DataFrame) -> pd.DataFrame:
            return pd.DataFrame({"v_bumped": inputs["v_int"] + inputs["bump"]})

        both = FeatureService(name="conf_both", features=[view_a, view_b])
        mapped = FeatureService(
            name="conf_mapped", features=[view_a.with_join_key_map({"k": "other_k"}), view_b]
        )
        config = RepoConfig(
            project="conf",
            provider="local",
            registry=str(home / "registry.db"),
            online_store={"type": "sqlite", "path": str(home / "online.db")},
            offline_store={"type": "flows.features.feast_offline.DeltaDuckDBOfflineStore"},
            entity_key_serialization_version=3,
        )
        config.repo_path = home
        store = FeatureStore(repo_path=str(home), config=config)
        store.apply([k, m, view_a, view_b, conf_odfv, both, mapped])
        yield Repo(
            store,
            views={"a": view_a, "b": view_b, "odfv": conf_odfv},
            services={"both": both, "mapped": mapped},
        )
    finally:
        if saved is None:
            os.environ.pop("ASOF_HOME", None)
        else:
            os.environ["ASOF_HOME"] = saved
        if lake_uri is not None:
            os.environ["ASOF_LAKE_URI"] = lake_uri


A_FEATURES = ["conf_a:v_int", "conf_a:v_mapped", "conf_a:label"]

# ------------------------------------------------------------------ generated cases

# feature timestamps on a coarse grid (so ties and exact ttl boundaries are frequent), in µs
ts_offsets = st.integers(0, 8).map(lambda h: pd.Timedelta(hours=6 * h))
# entity offsets: the grid, plus a nanosecond or a microsecond either side of it
entity_offsets = st.tuples(st.integers(0, 14), st.sampled_from([0, 0, 0, 1, -1, 500, -500, 1000, -1000])).map(
    lambda t: pd.Timedelta(hours=6 * t[0]) + pd.Timedelta(nanoseconds=t[1])
)


@st.composite
def feature_rows(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(0, 10))
    rows = []
    for i in range(n):
        ts = T0 + draw(ts_offsets)
        created = draw(
            st.one_of(st.none(), st.integers(-2, 3).map(lambda h, ts=ts: ts + pd.Timedelta(hours=3 * h)))
        )
        rows.append(
            {
                "k": draw(st.integers(1, 3)),
                "ts": ts,
                "created": created,
                "v_int": i,
                "raw_v": float(i) / 4,
                "label": draw(st.sampled_from(["x", "y", None])),
            }
        )
    frame = pd.DataFrame(rows, columns=["k", "ts", "created", "v_int", "raw_v", "label"])
    # Feast's rule does not say which of two rows equal in keys, timestamp and created timestamp
    # wins (the store's choice is only deterministic): such full ties are not generated
    return frame.drop_duplicates(["k", "ts", "created"]).reset_index(drop=True)


@st.composite
def entity_frames(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(1, 8))
    zone = draw(st.sampled_from([None, "UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"]))
    stamps = pd.DatetimeIndex([T0 + draw(entity_offsets) for _ in range(n)])  # UTC, ns precision
    stamps = stamps.tz_convert(None) if zone is None else stamps.tz_convert(zone)
    return pd.DataFrame(
        {
            "k": [draw(st.integers(1, 4)) for _ in range(n)],  # key 4 has no rows
            "event_timestamp": stamps,
            "note": [f"row{i}" for i in range(n)],  # extra entity columns come back untouched
            "weight": [draw(st.floats(-1e6, 1e6)) for _ in range(n)],
        }
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=feature_rows(), entity=entity_frames(), full=st.booleans())
def test_point_in_time_rule_matches_reference(
    repo: Repo, rows: pd.DataFrame, entity: pd.DataFrame, full: bool
):
    """ttl bounds in both modes (to the nanosecond), created-timestamp ties and nulls, field
    mapping, full feature names, extra entity columns and time zones, with and without
    `filter_by_created_timestamp`: the store equals the reference on generated data."""
    write_a(rows)
    inclusive = repo.with_offline(ttl_lower_bound="inclusive")
    for store, incl in ((repo.store, False), (inclusive, True)):
        for filt in (False, True):
            got = store.get_historical_features(
                entity_df=entity,
                features=A_FEATURES,
                full_feature_names=full,
                filter_by_created_timestamp=filt,
            ).to_df()
            want = reference(
                entity, [ref_a(rows)], inclusive=incl, filter_created=filt, full_feature_names=full
            )
            assert_same(got, want)


def test_nanosecond_entity_timestamps_at_the_ttl_bound(repo: Repo):
    """The case the issue found: an entity time of T + ttl + 500 ns must not see a row at T in
    inclusive mode (it did when entity times were cut to microseconds); T + ttl exactly must."""
    rows = pd.DataFrame({"k": [1], "ts": [T0], "created": [T0], "v_int": [7], "raw_v": [1.0], "label": ["x"]})
    write_a(rows)
    entity = pd.DataFrame(
        {
            "k": [1, 1, 1],
            "event_timestamp": pd.DatetimeIndex(
                [T0 + DAY, T0 + DAY + pd.Timedelta(nanoseconds=500), T0 + DAY - pd.Timedelta(nanoseconds=500)]
            ),
        }
    )
    inclusive = repo.with_offline(ttl_lower_bound="inclusive")
    got = inclusive.get_historical_features(entity_df=entity, features=["conf_a:v_int"]).to_df()
    assert [_plain(v) for v in got["v_int"]] == [7, None, 7]
    got = repo.store.get_historical_features(entity_df=entity, features=["conf_a:v_int"]).to_df()
    assert [_plain(v) for v in got["v_int"]] == [None, None, 7]


ROWS_A = pd.DataFrame(
    {
        "k": [1, 1, 2, 2, 3],
        "ts": [T0, T0 + pd.Timedelta(hours=12), T0, T0, T0 + pd.Timedelta(hours=30)],
        "created": [
            T0,
            T0 + pd.Timedelta(hours=20),
            T0 + pd.Timedelta(hours=1),
            T0 + pd.Timedelta(hours=2),
            None,
        ],
        "v_int": [10, 11, 20, 21, 30],
        "raw_v": [1.0, 1.1, 2.0, 2.1, 3.0],
        "label": ["a", "b", "c", "d", None],
    }
)
ROWS_B = pd.DataFrame({"m": [5, 5, 6], "ts": [T0, T0 + pd.Timedelta(hours=13), T0], "w": [0.5, 0.7, 0.9]})


def _entities(n: int = 12, seed: int = 0) -> pd.DataFrame:
    r = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "k": r.integers(1, 5, n),
            "m": r.integers(5, 8, n),
            "event_timestamp": [T0 + pd.Timedelta(hours=int(h)) for h in r.integers(0, 40, n)],
        }
    )


def test_on_demand_view_and_two_views(repo: Repo):
    """An on-demand view computes over the point-in-time values and the request column; a second
    view with its own entity and ttl is joined alongside."""
    write_a(ROWS_A)
    write_b(ROWS_B)
    entity = _entities()
    entity["bump"] = np.arange(len(entity)) * 100
    got = repo.store.get_historical_features(
        entity_df=entity, features=[*A_FEATURES, "conf_b:w", "conf_odfv:v_bumped"]
    ).to_df()
    want = reference(entity, [ref_a(ROWS_A), ref_b(ROWS_B)])
    want["v_bumped"] = [
        None if v is None else v + b for v, b in zip(want["v_int"], entity["bump"], strict=True)
    ]
    assert_same(got, want)


def test_feature_service_with_join_key_mapping(repo: Repo):
    """A service projecting `conf_a` with join key `k` read from the entity column `other_k`."""
    write_a(ROWS_A)
    write_b(ROWS_B)
    entity = _entities().rename(columns={"k": "other_k"})
    for full in (False, True):
        got = repo.store.get_historical_features(
            entity_df=entity, features=repo.store.get_feature_service("conf_mapped"), full_feature_names=full
        ).to_df()
        want = reference(entity, [ref_a(ROWS_A, key_col="other_k"), ref_b(ROWS_B)], full_feature_names=full)
        assert_same(got, want)


def test_retrieval_by_date_range(repo: Repo):
    """Without an entity dataframe: every distinct (join keys, timestamp) of the views' rows in
    [start, end] is an entity row (other views' keys null), each then joined by the rule."""
    write_a(ROWS_A)
    write_b(ROWS_B)
    start, end = T0 + pd.Timedelta(hours=6), T0 + pd.Timedelta(hours=30)
    got = repo.store.get_historical_features(
        features=[*A_FEATURES, "conf_b:w"], start_date=start.to_pydatetime(), end_date=end.to_pydatetime()
    ).to_df()
    a = ROWS_A[(ROWS_A.ts >= start) & (ROWS_A.ts <= end)][["ts", "k"]].rename(
        columns={"ts": "event_timestamp"}
    )
    b = ROWS_B[(ROWS_B.ts >= start) & (ROWS_B.ts <= end)][["ts", "m"]].rename(
        columns={"ts": "event_timestamp"}
    )
    entity = (
        pd.concat([a, b], ignore_index=True)
        .drop_duplicates()
        .astype({"k": "Int64", "m": "Int64"})
        .sort_values(["event_timestamp", "k", "m"], na_position="last")
        .reset_index(drop=True)[["event_timestamp", "k", "m"]]
    )
    want = reference(entity, [ref_a(ROWS_A), ref_b(ROWS_B)])
    assert len(got) == 3  # k=1 at 12h, k=3 at 30h, m=5 at 13h
    assert_same(got, want)


def test_entity_dataframe_as_sql(repo: Repo):
    """One SELECT over lake tables (`<layer>.<table>`) gives the same result as the same rows as
    a pandas frame; anything else is refused before it runs."""
    from flows.storage import lake

    write_a(ROWS_A)
    entity = _entities()[["k", "event_timestamp"]]
    lake.overwrite(
        "silver",
        "conf_entities",
        pa.table(
            {"k": pa.array(entity["k"], pa.int64()), "seen_at": pa.array(entity["event_timestamp"], TS)}
        ),
    )
    sql = "WITH e AS (SELECT k, seen_at AS event_timestamp FROM silver.conf_entities) SELECT * FROM e"
    got = repo.store.get_historical_features(entity_df=sql, features=A_FEATURES).to_df()
    want = reference(entity, [ref_a(ROWS_A)])
    assert_same(got, want)
    for bad, why in [
        ("SELECT 1; SELECT 2", "exactly one SELECT"),
        ("DELETE FROM silver.conf_entities", "exactly one SELECT"),
        ("COPY (SELECT 1) TO '/tmp/x.csv'", "exactly one SELECT"),
        ("SELECT * FROM gold.no_such_table", "not a lake table"),
        ("SELEC k FROM silver.conf_entities", "does not parse"),
    ]:
        with pytest.raises(ValueError, match=why):
            repo.store.get_historical_features(entity_df=bad, features=A_FEATURES)
    with pytest.raises(Exception, match="(?i)external|disabled|permission"):
        repo.store.get_historical_features(
            entity_df="SELECT 1 AS k, now() AS event_timestamp FROM read_csv('/etc/hostname')",
            features=A_FEATURES,
        )


def test_saved_dataset_round_trip(repo: Repo, tmp_path: Path):
    """`create_saved_dataset` persists the result (a Parquet file or directory outside the lake,
    Parquet at a path inside it, or a lake table) and `get_saved_dataset(...).to_df()` reads it
    back through the store: the reference's rows and values."""
    from feast.infra.offline_stores.file_source import SavedDatasetFileStorage

    from flows.features import feast_offline
    from flows.storage import lake

    write_a(ROWS_A)
    entity = _entities()[["k", "event_timestamp"]]
    job = repo.store.get_historical_features(entity_df=entity, features=A_FEATURES)
    want = reference(entity, [ref_a(ROWS_A)])
    assert_same(job.to_df(), want)
    want = want.sort_values(["event_timestamp", "k"]).reset_index(drop=True)
    storages = {
        "outside": SavedDatasetFileStorage(path=str(tmp_path / "saved.parquet")),
        "directory": SavedDatasetFileStorage(path=str(tmp_path / "saved_dir")),
        "inside": SavedDatasetFileStorage(
            path=str(Path(lake.uri("gold", "x")).parent / "saved_inside.parquet")
        ),
        "lake": feast_offline.lake_saved_dataset_storage("saved_conf"),
    }
    for name, storage in storages.items():
        repo.store.create_saved_dataset(from_=job, name=f"sd_{name}", storage=storage, allow_overwrite=True)
        back = repo.store.get_saved_dataset(f"sd_{name}").to_df()
        back = back[want.columns].sort_values(["event_timestamp", "k"]).reset_index(drop=True)
        assert_same(back, want)
    assert lake.exists("gold", "saved_conf")
    from feast.errors import SavedDatasetLocationAlreadyExists

    with pytest.raises(SavedDatasetLocationAlreadyExists):
        repo.store.create_saved_dataset(from_=job, name="sd_again", storage=storages["lake"])


def test_offline_write_batch(repo: Repo):
    """Rows pushed to the offline store are appended to the view's lake table and retrieved by the
    rule like any other; a frame with other columns is refused."""
    from flows.storage import lake

    write_a(ROWS_A)
    extra = pd.DataFrame(
        {
            "k": [4],
            "as_of_date": [dt.date(2024, 3, 1)],
            "ts": [T0 + pd.Timedelta(hours=3)],
            "created": [T0 + pd.Timedelta(hours=3)],
            "v_int": [40],
            "raw_v": [4.0],
            "label": ["pushed"],
        }
    )
    before = lake.version("gold", "conf_a")
    repo.store.write_to_offline_store("conf_a", extra, allow_registry_cache=False)
    assert lake.version("gold", "conf_a") == before + 1
    entity = _entities()[["k", "event_timestamp"]]
    got = repo.store.get_historical_features(entity_df=entity, features=A_FEATURES).to_df()
    both = pd.concat([ROWS_A, extra.drop(columns=["as_of_date"])], ignore_index=True)
    want = reference(entity, [ref_a(both)])
    assert_same(got, want)
    assert "pushed" in set(got["label"].dropna())
    with pytest.raises(ValueError):
        repo.store.write_to_offline_store("conf_a", extra.drop(columns=["label"]), allow_registry_cache=False)
