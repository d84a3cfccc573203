"""Materialization into the online store (SQLite and a real Redis) and online reads."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import socket
import subprocess
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.conftest import feature_store_home
from tests.synthetic_gold import build_lake, write_gold

START, END = dt.date(2024, 1, 1), dt.date(2024, 2, 12)
MATERIALIZE = [dt.date(2024, 2, d) for d in (9, 12, 10, 11)]  # out of order on purpose
VIEWS = {
    "customer_txn_features_daily": (
        "customer_id",
        ["txn_count_7d", "amount_usd_sum_30d", "amount_usd_max_7d"],
    ),
    "merchant_features_daily": ("merchant_id", ["merchant_txn_count_90d", "merchant_chargeback_rate_90d"]),
    "customer_profile": ("customer_id", ["country", "kyc_level", "signup_date"]),
}
REDIS_PASSWORD = "s3cret-Pa55word"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        from flows.config import settings

        if settings().require_services:
            pytest.fail("redis-server is required in CI but not installed")
        pytest.skip("redis-server not installed")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            REDIS_PASSWORD,
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("redis-server exited at start")
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def lake_data(tmp_path_factory):
    redis = ("ASOF_REDIS_URL", "ASOF_REDIS_PASSWORD")
    with feature_store_home(tmp_path_factory.mktemp("online_home"), cleared=redis) as home:
        silver, gold = build_lake(START, END, customers=200, merchants=25, txns_per_day=80, seed=21)
        yield {"home": home, "gold": gold}


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, lake_data):
    if request.param == "redis":
        port = request.getfixturevalue("redis_server")
        os.environ["ASOF_ONLINE_STORE"] = "redis"
        os.environ["ASOF_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        os.environ["ASOF_REDIS_PASSWORD"] = REDIS_PASSWORD
    yield request.param
    for k in ("ASOF_ONLINE_STORE", "ASOF_REDIS_URL", "ASOF_REDIS_PASSWORD"):
        os.environ.pop(k, None)


def _expected(gold: dict[str, pa.Table], first_day: dt.date) -> dict[str, dict[int, dict]]:
    """Latest gold row per entity, for entities with a row published on/after first_day + 1."""
    cutoff = dt.datetime.combine(first_day + dt.timedelta(days=1), dt.time(), dt.UTC)
    out = {}
    for view, (key, _) in VIEWS.items():
        latest: dict[int, dict] = {}
        for row in gold[view].to_pylist():
            cur = latest.get(row[key])
            if cur is None or row["feature_timestamp"] > cur["feature_timestamp"]:
                latest[row[key]] = row
        out[view] = {k: r for k, r in latest.items() if r["feature_timestamp"] >= cutoff}
    return out


def _check_online(gold: dict[str, pa.Table], first_day: dt.date) -> int:
    from flows.features.featurestore import online_features

    want = _expected(gold, first_day)
    checked = 0
    for view, (key, features) in VIEWS.items():
        ids = sorted(set(gold[view][key].to_pylist()))
        other = "merchant_id" if key == "customer_id" else "customer_id"
        got = online_features({key: ids, other: [1] * len(ids)}, "fraud_v2")
        for i, entity in enumerate(ids):
            row = want[view].get(entity)
            for f in features:
                value = got[f][i]
                if isinstance(value, dt.datetime):
                    value = value.date()
                expected = None if row is None else row[f]
                assert value == expected, f"{view} {key}={entity} {f}: online {value!r} != gold {expected!r}"
                checked += 1
    return checked


def test_materialize_span_writes_what_the_dates_one_by_one_write(backend, lake_data):
    """A backfill materializes a chunk in one pass: each entity once, with its newest row of the span
    (runs first in this module, on an empty online store)."""
    from flows.features.featurestore import materialize_span

    first, last = min(MATERIALIZE), max(MATERIALIZE)
    out = materialize_span(first, last)
    assert out["status"] == "succeeded" and (out["date"], out["last_date"]) == (str(first), str(last))
    want = _expected(lake_data["gold"], first)
    assert out["rows"] == sum(len(v) for v in want.values()) > 0
    assert _check_online(lake_data["gold"], first) > 500
    with pytest.raises(ValueError, match="before"):
        materialize_span(last, first)


def test_materialize_backfill_leaves_latest_values(backend, lake_data, caplog):
    from flows.features.featurestore import materialize_date

    caplog.set_level(logging.DEBUG)
    results = [materialize_date(day) for day in MATERIALIZE]
    assert all(r["status"] == "succeeded" for r in results)
    assert all(r["online_store"] == backend for r in results)
    assert results[1]["rows"] > 0
    assert _check_online(lake_data["gold"], min(MATERIALIZE)) > 500
    # each entity was written once, with its latest row
    want = _expected(lake_data["gold"], min(MATERIALIZE))
    assert sum(r["rows"] for r in results) == sum(len(v) for v in want.values())

    # idempotent: again, in another order
    for day in sorted(MATERIALIZE, reverse=True):
        materialize_date(day)
    _check_online(lake_data["gold"], min(MATERIALIZE))
    assert REDIS_PASSWORD not in caplog.text
    assert REDIS_PASSWORD not in repr(results)


def test_corrected_rerun_replaces_values(backend, lake_data):
    """A date re-run with corrected gold rows (same feature_timestamp) reaches the online store."""
    from flows.features.featurestore import materialize_date, online_features

    gold = lake_data["gold"]
    day = END
    for d in MATERIALIZE:
        materialize_date(d)
    t = gold["customer_txn_features_daily"]
    mask = pc.equal(t["as_of_date"], pa.scalar(day, pa.date32()))
    rows = t.filter(mask)
    idx = rows.schema.get_field_index("txn_count_7d")
    bump = 1000 if backend == "sqlite" else 2000
    changed = rows.set_column(idx, "txn_count_7d", pc.add(rows["txn_count_7d"], bump))
    write_gold({"customer_txn_features_daily": changed}, day, day)
    try:
        materialize_date(day)
        ids = changed["customer_id"].to_pylist()[:25]
        got = online_features({"customer_id": ids, "merchant_id": [1] * len(ids)}, "fraud_v1")
        assert got["txn_count_7d"] == [v + bump for v in rows["txn_count_7d"].to_pylist()[:25]]
    finally:
        write_gold({"customer_txn_features_daily": rows}, day, day)
        materialize_date(day)


def test_redis_connection_string_from_url(monkeypatch):
    from flows.features.featurestore import redis_connection_string

    monkeypatch.setenv("ASOF_REDIS_URL", "rediss://alice:p%40ss@cache.internal:6380/2")
    monkeypatch.delenv("ASOF_REDIS_PASSWORD", raising=False)
    monkeypatch.setenv("ASOF_REDIS_CA_CERT", "/etc/ssl/ca.pem")
    assert redis_connection_string() == (
        "cache.internal:6380,db=2,username=alice,password=p@ss,ssl=true,ssl_ca_certs=/etc/ssl/ca.pem"
    )
    monkeypatch.setenv("ASOF_REDIS_PASSWORD", "other")
    assert "password=other" in redis_connection_string()
    monkeypatch.setenv("ASOF_REDIS_URL", "http://x")
    with pytest.raises(ValueError):
        redis_connection_string()


@pytest.mark.slow
def test_serve_over_http_on_loopback(lake_data):
    """`asof serve` answers POST /get-online-features on 127.0.0.1 with the online values."""
    import json
    import sys
    import urllib.request

    from flows.features.featurestore import materialize_date, online_features

    materialize_date(END)
    port = _free_port()
    env = {**os.environ, "ASOF_HOME": str(lake_data["home"])}
    env.pop("ASOF_ONLINE_STORE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli.features", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert proc.poll() is None, "asof serve exited"
                assert time.monotonic() < deadline, "asof serve did not start"
                time.sleep(0.2)
        ids = lake_data["gold"]["customer_txn_features_daily"]["customer_id"].to_pylist()[:5]
        body = {"feature_service": "fraud_v1", "entities": {"customer_id": ids}}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/get-online-features",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            payload = json.loads(resp.read())
        names = payload["metadata"]["feature_names"]
        served = {n: r["values"] for n, r in zip(names, payload["results"], strict=True)}
        local = online_features({"customer_id": ids}, "fraud_v1")
        assert served["txn_count_30d"] == local["txn_count_30d"]
        assert served["customer_id"] == ids
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_truncated_registry_is_rebuilt(home):
    """Feast writes registry.db in place; a run killed mid-write must not break every later run."""
    from pathlib import Path

    from flows.features import featurestore as F

    F.reset_store_cache()
    registry = Path(F.get_store().config.registry.path)
    whole = registry.read_bytes()
    registry.write_bytes(whole[: len(whole) // 2])
    F.reset_store_cache()
    try:
        views = {fv.name for fv in F.get_store().list_feature_views()}
    finally:
        F.reset_store_cache()
    assert views == set(VIEWS)
    assert registry.stat().st_size > len(whole) // 2
