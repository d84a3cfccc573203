"""The project's Feast offline store (flows/features/feast_offline.py): point-in-time rule, ttl, agreement
with Feast's stock `file` store, materialization reads."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from tests.conftest import feature_store_home
from tests.synthetic_gold import (
    add_transactions,
    day_ts,
    expected_asof,
    gold_from_silver,
    make_silver,
    store_with_offline_store,
    write_gold,
    write_silver,
)

START, END = dt.date(2024, 1, 1), dt.date(2024, 3, 10)
DAY = dt.timedelta(days=1)
QUIET = 90_001  # one transaction on 2024-01-20, then nothing: inactive for > 30 days
CUSTOMER_FEATURES = [
    "txn_count_1d",
    "txn_count_7d",
    "txn_count_30d",
    "amount_usd_sum_7d",
    "amount_usd_sum_30d",
    "amount_usd_avg_30d",
    "amount_usd_max_7d",
    "distinct_merchants_30d",
    "seconds_since_last_txn",
]
MERCHANT_FEATURES = [
    "merchant_txn_count_7d",
    "merchant_txn_count_90d",
    "merchant_chargeback_count_90d",
    "merchant_chargeback_rate_90d",
]
PROFILE_FEATURES = ["country", "kyc_level", "signup_date"]


@pytest.fixture(scope="module")
def lake_data(tmp_path_factory):
    with feature_store_home(tmp_path_factory.mktemp("feast_offline_home")) as home:
        silver = make_silver(START, END, customers=250, merchants=30, txns_per_day=120, seed=3)
        silver = add_transactions(
            silver,
            [
                (
                    "quiet-1",
                    QUIET,
                    1,
                    42.0,
                    day_ts(dt.date(2024, 1, 20)) + dt.timedelta(hours=9),
                    dt.date(2024, 1, 20),
                )
            ],
        )
        write_silver(silver)
        gold = gold_from_silver(silver, START, END)
        write_gold(gold, START, END)
        yield {"home": home, "silver": silver, "gold": gold}


@pytest.fixture(scope="module")
def store(lake_data):
    from flows.features.featurestore import get_store

    return get_store()


def _random_entities(gold, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    customers = np.unique(gold["customer_txn_features_daily"]["customer_id"].to_numpy())
    merchants = np.unique(gold["merchant_features_daily"]["merchant_id"].to_numpy())
    span = int((END - START).days + 3) * 86400
    ts = [day_ts(START) + dt.timedelta(seconds=int(s)) for s in rng.integers(0, span, n)]
    # a quarter of the rows sit exactly on a feature_timestamp (midnight) boundary
    for i in rng.choice(n, n // 4, replace=False):
        ts[i] = day_ts(START + dt.timedelta(days=int(rng.integers(0, (END - START).days + 3))))
    cust = rng.choice(np.append(customers, [10**9]), n)  # plus an unknown customer
    frame = pd.DataFrame(
        {
            "txn_id": [f"e{i}" for i in range(n)],
            "customer_id": cust.astype("int64"),
            "merchant_id": rng.choice(merchants, n).astype("int64"),
            "event_timestamp": pd.to_datetime(ts, utc=True),
        }
    )
    # Feast's stock store collapses rows with equal (join keys, timestamp): keep them unique
    return frame.drop_duplicates(["customer_id", "merchant_id", "event_timestamp"]).reset_index(drop=True)


def _check_against_oracle(result: pd.DataFrame, entities: pd.DataFrame, gold) -> None:
    ts = [t.to_pydatetime() for t in entities["event_timestamp"]]
    cases = [
        ("customer_txn_features_daily", "customer_id", CUSTOMER_FEATURES, DAY),
        ("merchant_features_daily", "merchant_id", MERCHANT_FEATURES, DAY),
        ("customer_profile", "customer_id", PROFILE_FEATURES, dt.timedelta(days=3650)),
    ]
    for table, key, features, ttl in cases:
        want = expected_asof(gold[table], key, features, entities[key].tolist(), ts, ttl)
        for f in features:
            got = [
                None if (v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))) else v
                for v in result[f]
            ]
            assert got == want[f], f"{table}.{f} differs from the point-in-time oracle"


def test_point_in_time_matches_oracle(store, lake_data):
    entities = _random_entities(lake_data["gold"], 1500, seed=1)
    job = store.get_historical_features(entity_df=entities, features=store.get_feature_service("fraud_v2"))
    result = job.to_arrow().to_pandas(types_mapper=None)
    assert len(result) == len(entities)
    assert list(result["txn_id"]) == list(entities["txn_id"])  # entity order kept
    _check_against_oracle(result.astype(object).where(result.notna(), None), entities, lake_data["gold"])
    assert set(job.table_versions) == {
        "gold/customer_txn_features_daily",
        "gold/merchant_features_daily",
        "gold/customer_profile",
    }


def test_boundaries_and_inactive_customer(store, lake_data):
    gold = lake_data["gold"]["customer_txn_features_daily"].to_pandas()
    quiet = gold[gold.customer_id == QUIET].sort_values("as_of_date")
    # one txn on 2024-01-20 -> rows for as-of days 01-20 .. 02-18 (30-day window), then none
    assert quiet.as_of_date.min() == dt.date(2024, 1, 20)
    assert quiet.as_of_date.max() == dt.date(2024, 2, 18)
    last_ts = day_ts(dt.date(2024, 2, 19))  # feature_timestamp of the last row
    rows = pd.DataFrame(
        {
            "customer_id": [QUIET] * 6,
            "event_timestamp": pd.to_datetime(
                [
                    day_ts(dt.date(2024, 1, 21)) - dt.timedelta(microseconds=1),  # before the 1st row
                    day_ts(dt.date(2024, 1, 21)),  # exactly on the 1st row's feature_timestamp
                    last_ts + dt.timedelta(hours=23, minutes=59),  # last row, still within ttl
                    last_ts + DAY,  # exactly one ttl after the last row: not served (exclusive)
                    day_ts(dt.date(2024, 2, 20)) + dt.timedelta(days=1),  # 31 days after the txn
                    day_ts(dt.date(2024, 3, 5)),
                ],
                utc=True,
            ),
        }
    )
    out = store.get_historical_features(
        entity_df=rows, features=["customer_txn_features_daily:txn_count_30d", "customer_profile:kyc_level"]
    ).to_df()
    counts = out["txn_count_30d"].tolist()
    assert np.isnan(counts[0])
    assert counts[1] == 1 and counts[2] == 1
    assert np.isnan(counts[3]) and np.isnan(counts[4]) and np.isnan(counts[5])
    # the profile has a long ttl: still known
    assert out["kyc_level"].notna().iloc[1:].all()
    # Feast's rule (inclusive lower bound) would serve the stale row at exactly one ttl
    inclusive = store_with_offline_store(
        {"type": "flows.features.feast_offline.DeltaDuckDBOfflineStore", "ttl_lower_bound": "inclusive"}
    )
    out2 = inclusive.get_historical_features(
        entity_df=rows, features=["customer_txn_features_daily:txn_count_30d"]
    ).to_df()
    assert out2["txn_count_30d"].tolist()[3] == 1


def test_full_feature_names_and_duplicate_entity_rows(store, lake_data):
    entities = _random_entities(lake_data["gold"], 50, seed=5)
    doubled = pd.concat([entities, entities], ignore_index=True)
    out = store.get_historical_features(
        entity_df=doubled, features=store.get_feature_service("fraud_v1"), full_feature_names=True
    ).to_df()
    assert len(out) == 100  # every entity row once, duplicates included
    assert "customer_txn_features_daily__txn_count_7d" in out.columns
    a, b = out.iloc[:50].reset_index(drop=True), out.iloc[50:].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def _normalise(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    df = df[columns].copy()
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True).astype("datetime64[us, UTC]")
    for c in columns:
        if c in ("txn_id", "event_timestamp", "country", "signup_date"):
            continue
        df[c] = df[c].astype("float64")  # the stock store turns nullable ints into floats
    df["signup_date"] = df["signup_date"].map(
        lambda v: None if v is None or v is pd.NaT or v != v else str(v)[:10]
    )
    df["country"] = df["country"].where(df["country"].notna(), None)
    return df.sort_values("txn_id").reset_index(drop=True)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # dask, inside Feast's stock store
def test_agrees_with_feast_stock_file_store(store, lake_data):
    entities = _random_entities(lake_data["gold"], 800, seed=2)
    # the stock store also collapses rows sharing (customer_id, timestamp) across merchants
    entities = entities.drop_duplicates(["customer_id", "event_timestamp"]).reset_index(drop=True)
    service = store.get_feature_service("fraud_v2")
    columns = (
        ["txn_id", "customer_id", "merchant_id", "event_timestamp"] + CUSTOMER_FEATURES + MERCHANT_FEATURES
    )
    columns += PROFILE_FEATURES

    stock = store_with_offline_store({"type": "file"})
    want = _normalise(stock.get_historical_features(entity_df=entities, features=service).to_df(), columns)

    compat = store_with_offline_store(
        {"type": "flows.features.feast_offline.DeltaDuckDBOfflineStore", "ttl_lower_bound": "inclusive"}
    )
    got = _normalise(compat.get_historical_features(entity_df=entities, features=service).to_df(), columns)
    assert len(got) == len(entities)

    # Feast's stock store drops an entity row when its entity has feature rows but none within
    # ttl (it filters the joined rows instead of nulling them). Every dropped row is one where we
    # return nulls for a view whose table does hold rows for that entity.
    kept = got["txn_id"].isin(want["txn_id"])
    assert kept.sum() == len(want)
    gold = lake_data["gold"]
    known_customers = set(gold["customer_txn_features_daily"]["customer_id"].to_pylist())
    for _, row in got[~kept].iterrows():
        assert row["customer_id"] in known_customers and pd.isna(row["txn_count_30d"])
    pd.testing.assert_frame_equal(got[kept].reset_index(drop=True), want)

    # The default (exclusive ttl bound) differs only where the stock store serves a daily row
    # exactly one ttl old, i.e. at midnight when the entity has no row for the previous day.
    ours = _normalise(store.get_historical_features(entity_df=entities, features=service).to_df(), columns)
    ours = ours[ours["txn_id"].isin(want["txn_id"])].reset_index(drop=True)
    differs = ~((ours == want) | (ours.isna() & want.isna())).all(axis=1)
    assert differs.any()  # the entity frame has such midnight rows
    for _, row in ours[differs].iterrows():
        ts = row["event_timestamp"]
        assert ts == ts.normalize()  # a midnight boundary
    assert ours[differs][CUSTOMER_FEATURES + MERCHANT_FEATURES].isna().any(axis=1).all()
    pd.testing.assert_frame_equal(ours[~differs], want[~differs])


def test_pull_latest_and_all(store, lake_data):
    from flows.features.feast_offline import DeltaDuckDBOfflineStore

    fv = store.get_feature_view("customer_txn_features_daily")
    start, end = day_ts(dt.date(2024, 2, 1)), day_ts(dt.date(2024, 2, 5))
    args = dict(
        config=store.config,
        data_source=fv.batch_source,
        join_key_columns=["customer_id"],
        feature_name_columns=["txn_count_7d"],
        timestamp_field="feature_timestamp",
        created_timestamp_column=None,
        start_date=start,
        end_date=end,
    )
    everything = DeltaDuckDBOfflineStore.pull_all_from_table_or_query(**args).to_df()
    latest = DeltaDuckDBOfflineStore.pull_latest_from_table_or_query(**args).to_df()
    gold = lake_data["gold"]["customer_txn_features_daily"].to_pandas()
    window = gold[(gold.feature_timestamp >= start) & (gold.feature_timestamp <= end)]
    assert len(everything) == len(window)
    want = window.sort_values("feature_timestamp").groupby("customer_id").tail(1)
    assert len(latest) == len(want)
    merged = latest.merge(want, on="customer_id", suffixes=("", "_want"))
    assert (merged.txn_count_7d == merged.txn_count_7d_want).all()
    assert (merged.feature_timestamp == merged.feature_timestamp_want).all()


def test_created_timestamp_breaks_ties(lake_data, tmp_path):
    """Two rows with the same key and timestamp: the later created_timestamp wins."""
    import pyarrow as pa
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.data_format import DeltaFormat
    from feast.types import Int64

    from flows.storage import lake

    ts = pa.timestamp("us", tz="UTC")
    t1, t2 = day_ts(dt.date(2024, 1, 2)), day_ts(dt.date(2024, 1, 3))
    data = pa.table(
        {
            "k": pa.array([1, 1, 1, 2], pa.int64()),
            "as_of_date": pa.array([dt.date(2024, 1, 1)] * 4, pa.date32()),
            "ts": pa.array([t1, t1, t2, t1], ts),
            "created": pa.array([t1, t1 + dt.timedelta(hours=1), None, t1], ts),
            "v": pa.array([10, 11, 12, 20], pa.int64()),
        }
    )
    lake.replace("gold", "tie_test", data, lake.date_predicate("as_of_date", dt.date(2024, 1, 1)))
    source = FileSource(
        name="tie_test",
        path=lake.uri("gold", "tie_test"),
        file_format=DeltaFormat(),
        timestamp_field="ts",
        created_timestamp_column="created",
    )
    ent = Entity(name="k", join_keys=["k"], value_type=ValueType.INT64)
    fv = FeatureView(
        name="tie_test",
        entities=[ent],
        ttl=dt.timedelta(days=5),
        schema=[Field(name="v", dtype=Int64)],
        source=source,
    )
    config = store_with_offline_store({"type": "flows.features.feast_offline.DeltaDuckDBOfflineStore"}).config
    config.registry.path = str(tmp_path / "registry.db")
    fs = FeatureStore(repo_path=str(tmp_path), config=config)
    fs.apply([ent, fv])
    rows = pd.DataFrame(
        {"k": [1, 1, 2], "event_timestamp": pd.to_datetime([t1 + dt.timedelta(hours=5), t2, t2], utc=True)}
    )
    out = fs.get_historical_features(entity_df=rows, features=["tie_test:v"]).to_df()
    assert out["v"].tolist() == [11, 12, 20]
    latest = (
        fs._get_provider()
        .offline_store.pull_latest_from_table_or_query(
            config=fs.config,
            data_source=source,
            join_key_columns=["k"],
            feature_name_columns=["v"],
            timestamp_field="ts",
            created_timestamp_column="created",
            start_date=t1,
            end_date=t1,
        )
        .to_df()
    )
    assert latest.sort_values("k")["v"].tolist() == [11, 20]


def test_pinned_versions_read_old_data(store, lake_data):
    """Delta time travel: a pinned version reads the table as it was."""
    from flows.features import feast_offline
    from flows.storage import lake

    key = "gold/customer_txn_features_daily"
    before = lake.version("gold", "customer_txn_features_daily")
    gold = lake_data["gold"]["customer_txn_features_daily"]
    day = dt.date(2024, 2, 1)
    mask = pa_equal(gold["as_of_date"], day)
    changed = gold.filter(mask).set_column(
        gold.schema.get_field_index("txn_count_30d"),
        "txn_count_30d",
        pa_add(gold.filter(mask)["txn_count_30d"], 1000),
    )
    lake.replace("gold", "customer_txn_features_daily", changed, lake.date_predicate("as_of_date", day))
    try:
        entities = pd.DataFrame(
            {
                "customer_id": changed["customer_id"].to_pylist()[:20],
                "event_timestamp": pd.to_datetime([day_ts(day + DAY)] * 20, utc=True),
            }
        )
        feats = ["customer_txn_features_daily:txn_count_30d"]
        now = store.get_historical_features(entity_df=entities, features=feats).to_df()
        with feast_offline.pinned_versions({key: before}):
            job = store.get_historical_features(entity_df=entities, features=feats)
        assert job.table_versions[key] == before
        old = job.to_df()
        assert ((now.txn_count_30d - old.txn_count_30d) == 1000).all()
    finally:
        lake.replace(
            "gold", "customer_txn_features_daily", gold.filter(mask), lake.date_predicate("as_of_date", day)
        )


def pa_equal(col, day):
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.equal(col, pa.scalar(day, pa.date32()))


def pa_add(col, n):
    import pyarrow.compute as pc

    return pc.add(col, n)
