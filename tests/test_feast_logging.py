"""Feature logging (flows/features/feature_logging.py): Feast's app serving `fraud_v2` from the real
online store logs what it served into a lake table; monitoring's comparison of logged values with
offline retrieval at the served instant finds no difference, then finds the rows whose offline
values were changed afterwards, per feature, with examples."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.conftest import feature_store_home
from tests.synthetic_gold import gold_from_silver, make_silver, write_gold

TODAY = dt.datetime.now(dt.UTC).date()
# the last as-of day was published at 00:00 today: requests served now read it online and offline
START, END = TODAY - dt.timedelta(days=20), TODAY - dt.timedelta(days=1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from flows.features import featurestore

    with feature_store_home(tmp_path_factory.mktemp("feature_logging_home")):
        silver = make_silver(START, END, customers=120, merchants=15, txns_per_day=80, seed=5)
        gold = gold_from_silver(silver, START, END)
        write_gold(gold, START, END)
        featurestore.materialize_span(START, END)  # every profile too, not only the last day's rows
        yield {"store": featurestore.get_store(), "gold": gold}


def _serve(store: Any, requests: list[dict[str, Any]]) -> Any:
    """POST each request to Feast's feature-server app wrapped by the logger; returns the writer."""
    from feast.feature_server import get_app
    from starlette.testclient import TestClient

    from flows.features.feature_logging import FeatureLogWriter, served_features_logger

    writer = FeatureLogWriter(store, flush_s=3600)  # flushed by the test, not by the clock
    app = served_features_logger(get_app(store), store, writer=writer)
    with TestClient(app) as client:
        for body in requests:
            resp = client.post("/get-online-features", json=body)
            assert resp.status_code == 200, resp.text
    return writer


def test_logging_is_opt_in(served, monkeypatch):
    from feast.feature_server import get_app

    from flows.features.feature_logging import served_features_logger

    store = served["store"]
    app = get_app(store)
    monkeypatch.delenv("ASOF_LOG_SERVED_FEATURES", raising=False)
    assert served_features_logger(app, store) is app
    monkeypatch.setenv("ASOF_LOG_SERVED_FEATURES", "1")
    assert served_features_logger(app, store) is not app


def test_served_features_are_logged_and_compared_with_offline(served):
    from flows.features import feature_logging, log_tables
    from flows.storage import lake

    store, gold = served["store"], served["gold"]
    customers = gold["customer_txn_features_daily"]
    last = customers.filter(pc.equal(customers["as_of_date"], pa.scalar(END, pa.date32())))
    merchants = gold["merchant_features_daily"]
    ids = sorted(set(last["customer_id"].to_pylist()))[:6]
    merchant_ids = sorted(set(merchants["merchant_id"].to_pylist()))[:6]
    requests = [
        {
            "feature_service": "fraud_v2",
            "entities": {"customer_id": ids[:3], "merchant_id": merchant_ids[:3]},
        },
        {
            "feature_service": "fraud_v2",
            "entities": {
                "customer_id": [*ids[3:], 10**9],
                "merchant_id": [*merchant_ids[3:6], merchant_ids[0]],
            },
        },
        {
            "features": ["customer_profile:kyc_level"],
            "entities": {"customer_id": ids[:2]},
        },  # no service: not logged
    ]
    writer = _serve(store, requests)
    assert writer.flush() == 7  # 3 + 4 entity rows of the two service requests
    table = log_tables.log_table("fraud_v2")
    logged = lake.read("ops", table)
    assert logged.num_rows == 7
    assert logged["customer_id"].to_pylist() == [*ids, 10**9]
    assert set(logged["__request_id"].to_pylist()).__len__() == 2
    assert logged["customer_txn_features_daily__txn_count_30d"].null_count == 1  # the unknown customer
    today = TODAY
    assert set(logged["__log_date"].to_pylist()) == {today}

    # Feast reads logs back with the offline store's pull_all_from_table_or_query over the
    # destination's data source (its provider's retrieve_feature_service_logs): the same call
    from feast.feature_logging import LOG_TIMESTAMP_FIELD, FeatureServiceLoggingSource

    from flows.features.feast_offline import DeltaDuckDBOfflineStore

    fs = store.get_feature_service("fraud_v2")
    schema = FeatureServiceLoggingSource(fs, store.project).get_schema(store.registry)
    job = DeltaDuckDBOfflineStore.pull_all_from_table_or_query(
        config=store.config,
        data_source=fs.logging_config.destination.to_data_source(),
        join_key_columns=[],
        feature_name_columns=[n for n in schema.names if n != LOG_TIMESTAMP_FIELD],
        timestamp_field=LOG_TIMESTAMP_FIELD,
        start_date=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
        end_date=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    assert len(job.to_df()) == 7

    # served values equal offline retrieval at the served instant
    [(metric, scope, value, info)] = feature_logging.measurements(today, services=["fraud_v2"])
    assert (metric, scope) == ("logged_mismatch_rate", "fraud_v2")
    assert value == 0.0, info
    assert info["compared"] == 7 and info["logged_rows"] == 7
    # and so does monitoring of the date (flows.monitoring.metrics's logged_features family)
    from flows.monitoring import metrics

    rows = [r for r in metrics.compute([today], online_reader=False) if r["metric"] == "logged_mismatch_rate"]
    assert [(r["scope"], r["value"]) for r in rows] == [("fraud_v2", 0.0)]

    # a correction of gold after serving: the served values of those customers now differ offline
    changed_ids = ids[:2]
    mask = pc.and_(
        pc.equal(customers["as_of_date"], pa.scalar(END, pa.date32())),
        pc.is_in(customers["customer_id"], pa.array(changed_ids, pa.int64())),
    )
    day_rows = customers.filter(pc.equal(customers["as_of_date"], pa.scalar(END, pa.date32())))
    col = day_rows.schema.get_field_index("txn_count_7d")
    bumped = pc.if_else(
        pc.is_in(day_rows["customer_id"], pa.array(changed_ids, pa.int64())),
        pc.add(day_rows["txn_count_7d"], 100),
        day_rows["txn_count_7d"],
    )
    assert pc.sum(mask.cast(pa.int64())).as_py() == 2
    lake.replace(
        "gold",
        "customer_txn_features_daily",
        day_rows.set_column(col, "txn_count_7d", bumped),
        lake.date_predicate("as_of_date", END),
    )
    [(_, _, value, info)] = feature_logging.measurements(today, services=["fraud_v2"])
    assert value == pytest.approx(2 / 7)
    assert info["mismatched"] == 2
    assert info["by_feature"]["customer_txn_features_daily__txn_count_7d"] == pytest.approx(2 / 7)
    assert info["by_feature"]["customer_txn_features_daily__txn_count_30d"] == 0
    example = info["examples"][0]
    assert example["customer_id"] in changed_ids
    diff = example["customer_txn_features_daily__txn_count_7d"]
    assert diff["offline"] == diff["served"] + 100


def test_no_logs_no_measurement(served):
    from flows.features import feature_logging

    assert feature_logging.measurements(TODAY - dt.timedelta(days=3), services=["fraud_v2", "fraud_v1"]) == []


def test_asof_serve_app_logs_when_switched_on(served, monkeypatch):
    """The app `asof serve` runs (flows.features.feature_server.build_app) logs through its own writer,
    flushed by its clock, once `ASOF_LOG_SERVED_FEATURES=1`."""
    import time

    from starlette.testclient import TestClient

    from flows.features import feature_server, log_tables
    from flows.storage import lake

    monkeypatch.setenv("ASOF_LOG_SERVED_FEATURES", "1")
    monkeypatch.setenv("ASOF_FEATURE_LOG_FLUSH_S", "0.2")
    store = served["store"]
    table = log_tables.log_table("fraud_v1")
    # the app inside the latency middleware: its per-day latency log is process-wide and would
    # carry this request into other tests' homes
    with TestClient(feature_server.build_app(store).app) as client:
        body = {"feature_service": "fraud_v1", "entities": {"customer_id": [1, 2]}}
        assert client.post("/get-online-features", json=body).status_code == 200
    deadline = time.monotonic() + 20
    while not lake.exists("ops", table) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lake.read("ops", table)["customer_id"].to_pylist() == [1, 2]


def test_logs_to_parquet_files_read_back(served, tmp_path):
    """Feast's FileLoggingDestination (Parquet, partitioned by log date) works through the
    store too: written rows read back, the partition column included."""
    from feast.feature_logging import (
        LOG_DATE_FIELD,
        LOG_TIMESTAMP_FIELD,
        FeatureServiceLoggingSource,
        LoggingConfig,
    )
    from feast.infra.offline_stores.file_source import FileLoggingDestination

    from flows.features.feast_offline import DeltaDuckDBOfflineStore

    store = served["store"]
    fs = store.get_feature_service("fraud_v1")
    source = FeatureServiceLoggingSource(fs, store.project)
    schema = source.get_schema(store.registry)
    now = dt.datetime.now(dt.UTC)
    rows = [
        {f.name: None for f in schema}
        | {"customer_id": i, LOG_TIMESTAMP_FIELD: now, LOG_DATE_FIELD: now.date()}
        for i in range(3)
    ]
    rows[1]["customer_txn_features_daily__txn_count_7d"] = 5
    destination = FileLoggingDestination(path=str(tmp_path / "logs"), partition_by=[LOG_DATE_FIELD])
    for half in (rows[:1], rows[1:]):
        DeltaDuckDBOfflineStore.write_logged_features(
            config=store.config,
            data=pa.Table.from_pylist(half, schema=schema),
            source=source,
            logging_config=LoggingConfig(destination=destination),
            registry=store.registry,
        )
    back = DeltaDuckDBOfflineStore.pull_all_from_table_or_query(
        config=store.config,
        data_source=destination.to_data_source(),
        join_key_columns=[],
        feature_name_columns=[n for n in schema.names if n != LOG_TIMESTAMP_FIELD],
        timestamp_field=LOG_TIMESTAMP_FIELD,
        start_date=now - dt.timedelta(minutes=1),
        end_date=now + dt.timedelta(minutes=1),
    ).to_arrow()
    back = back.sort_by("customer_id")
    assert back["customer_id"].to_pylist() == [0, 1, 2]
    assert back["customer_txn_features_daily__txn_count_7d"].to_pylist() == [None, 5, None]
    assert {str(v) for v in back[LOG_DATE_FIELD].to_pylist()} == {now.date().isoformat()}
