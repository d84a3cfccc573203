"""Online reads through the project's API (flows.features.featurestore): the same values as Feast's own
`get_online_features`, and the kept FeatureService objects that make them as fast (issue 19,
item 4) are dropped when the registry changes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import feature_store_home
from tests.synthetic_gold import gold_from_silver, make_silver, write_gold

START, END = dt.date(2024, 2, 1), dt.date(2024, 2, 10)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from flows.features import featurestore

    with feature_store_home(tmp_path_factory.mktemp("online_reads_home")):
        silver = make_silver(START, END, customers=80, merchants=10, txns_per_day=60, seed=9)
        write_gold(gold_from_silver(silver, START, END), START, END)
        featurestore.materialize_span(START, END)
        yield featurestore.get_store()


def test_online_features_equal_feasts_own_read(store):
    from flows.features.featurestore import online_features

    rows = [{"customer_id": c, "merchant_id": m} for c, m in [(1, 1), (2, 3), (5, 7), (10**9, 2)]]
    ours = online_features(rows, "fraud_v2")
    theirs = store.get_online_features(
        features=store.get_feature_service("fraud_v2", allow_cache=False), entity_rows=rows
    ).to_dict()
    assert ours == theirs
    assert ours["txn_count_30d"][3] is None  # an unknown customer
    assert any(v is not None for v in ours["txn_count_30d"][:3])
    columns = {k: [r[k] for r in rows] for k in ("customer_id", "merchant_id")}
    assert online_features(columns, "fraud_v2") == ours  # the column form gives the same


def test_feature_service_kept_until_the_registry_changes(store):
    from flows.features import featurestore

    first = store.get_feature_service("fraud_v2", allow_cache=True)
    assert store.get_feature_service("fraud_v2", allow_cache=True) is first
    assert store.get_feature_service("fraud_v2") is not first  # a fresh read is never kept
    store.refresh_registry()  # what apply() and Feast's registry ttl do
    again = store.get_feature_service("fraud_v2", allow_cache=True)
    assert again is not first and again == first
    assert featurestore.get_store() is store  # one store per setting
