"""The lake on object storage: `ASOF_LAKE_URI=s3://bucket/prefix` + `ASOF_STORAGE_OPTIONS`, against
moto's S3 server on 127.0.0.1.

moto runs in a child process, not in a thread of the test process: some delta-rs calls (e.g.
`DeltaTable.is_deltatable`) wait on the network while holding the GIL, and a moto thread in the same
interpreter can then never answer (the call hangs until delta-rs's 180 s retry timeout).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.storage import lake
from tests.kill_harness import LOG_TABLES, VOLATILE, date_statuses, online_rows

BUCKET = "asof-lake"
KEY_ID = "asof-test-key-id"
SECRET = "asof-test-secret-never-logged"

_SERVER = """
import sys
from moto.server import ThreadedMotoServer

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the test closes stdin
server.stop()
"""


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 on a free port of 127.0.0.1, with an empty bucket."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            pytest.fail(f"moto server did not start (exit code {proc.poll()})")
        endpoint = f"http://127.0.0.1:{int(line)}"
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def s3_client(endpoint: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )


@pytest.fixture
def s3_lake(home: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """ASOF_HOME local (landing, locks, Feast, docs), the lake under a fresh prefix of the bucket."""
    prefix = f"t-{uuid.uuid4().hex[:10]}/lake"
    options = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": True,  # a JSON boolean: passed to delta-rs as "true"
    }
    monkeypatch.setenv("ASOF_LAKE_URI", f"s3://{BUCKET}/{prefix}/")
    monkeypatch.setenv("ASOF_STORAGE_OPTIONS", json.dumps(options))
    return prefix


SCHEMA = pa.schema(
    [pa.field("_batch_date", pa.date32()), pa.field("id", pa.int64()), pa.field("v", pa.string())]
)
D1, D2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)


def batch(day: dt.date, ids: range, tag: str) -> pa.Table:
    return pa.table(
        {"_batch_date": [day] * len(ids), "id": list(ids), "v": [f"{tag}{i}" for i in ids]}, schema=SCHEMA
    )


def rows(version: int | None = None, day: dt.date | None = None) -> list[tuple]:
    flt = lake.date_filter("_batch_date", [day]) if day else None
    tbl = lake.read("bronze", "items", filter=flt, version=version)
    return sorted(
        zip(tbl["_batch_date"].to_pylist(), tbl["id"].to_pylist(), tbl["v"].to_pylist(), strict=True)
    )


def test_lake_round_trip_on_s3(
    s3_lake: str, s3_endpoint: str, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    from flows.config import settings

    s = settings()
    assert not s.is_local_lake and s.lake_uri == f"s3://{BUCKET}/{s3_lake}"
    assert s.storage_options["AWS_ALLOW_HTTP"] == "true"
    assert SECRET not in repr(s)
    assert lake.uri("bronze", "items") == f"s3://{BUCKET}/{s3_lake}/bronze/items"

    assert not lake.exists("bronze", "items")
    assert lake.read("bronze", "items", schema=SCHEMA).num_rows == 0
    part = ["_batch_date"]
    v0 = lake.replace(
        "bronze", "items", batch(D1, range(3), "a"), lake.date_predicate("_batch_date", D1), part
    )
    v1 = lake.replace(
        "bronze", "items", batch(D2, range(10, 12), "b"), lake.date_predicate("_batch_date", D2), part
    )
    assert (v0, v1) == (0, 1)
    assert lake.exists("bronze", "items") and lake.version("bronze", "items") == 1
    # a rerun of D1 replaces exactly D1
    v2 = lake.replace(
        "bronze", "items", batch(D1, range(5, 7), "c"), lake.date_predicate("_batch_date", D1), part
    )
    assert rows(day=D1) == [(D1, 5, "c5"), (D1, 6, "c6")]
    assert rows(day=D2) == [(D2, 10, "b10"), (D2, 11, "b11")]
    v3 = lake.append("bronze", "items", batch(D2, range(20, 21), "d"), schema=SCHEMA, partition_by=part)
    assert (v2, v3) == (2, 3)
    assert len(rows()) == 5
    assert rows(version=0) == [(D1, 0, "a0"), (D1, 1, "a1"), (D1, 2, "a2")]  # time travel
    assert lake.dataset("bronze", "items").count_rows() == 5
    assert [h["operation"] for h in lake.history("bronze", "items")][:1] == ["WRITE"]
    assert lake.list_tables("bronze") == ["items"] and lake.list_tables("gold") == []

    # an orphan: a data file no commit refers to (what a writer killed mid-commit leaves)
    client = s3_client(s3_endpoint)
    buf = io.BytesIO()
    pq.write_table(batch(D1, range(99, 100), "x"), buf)
    orphan_key = f"{s3_lake}/bronze/items/_batch_date=2024-01-01/part-orphan-0001.parquet"
    client.put_object(Bucket=BUCKET, Key=orphan_key, Body=buf.getvalue())
    orphan_rel = "_batch_date=2024-01-01/part-orphan-0001.parquet"
    assert lake.orphan_files("bronze", "items") == [orphan_rel]
    assert lake.vacuum("bronze", "items", dry_run=True) == [orphan_rel]
    before = len(client.list_objects_v2(Bucket=BUCKET, Prefix=f"{s3_lake}/bronze/items/")["Contents"])
    assert lake.vacuum("bronze", "items") == [orphan_rel]
    keys = {
        o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=f"{s3_lake}/bronze/items/")["Contents"]
    }
    assert orphan_key not in keys and len(keys) == before - 1
    assert lake.orphan_files("bronze", "items") == []
    # orphans-only vacuum keeps every version readable
    assert rows(version=0) == [(D1, 0, "a0"), (D1, 1, "a1"), (D1, 2, "a2")]
    assert len(rows(version=3)) == 5

    lake.delete("bronze", "items", lake.date_predicate("_batch_date", D2))
    assert rows() == [(D1, 5, "c5"), (D1, 6, "c6")]
    restored = lake.restore("bronze", "items", 3)
    assert len(rows(version=restored)) == 5
    # with a retention, superseded files go too (and old versions become unreadable)
    removed = lake.vacuum("bronze", "items", retention_hours=0)
    assert removed and len(rows()) == 5

    assert not (home / "lake").exists(), "nothing of the lake may be written to local disk"
    assert SECRET not in caplog.text


def test_storage_options_are_validated_without_echoing_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.config import ConfigError, settings

    monkeypatch.setenv("ASOF_STORAGE_OPTIONS", '{"AWS_SECRET_ACCESS_KEY": "' + SECRET)
    with pytest.raises(ConfigError) as exc:
        assert settings().storage_options is None  # raises
    assert SECRET not in str(exc.value)
    monkeypatch.setenv("ASOF_STORAGE_OPTIONS", json.dumps({"AWS_SECRET_ACCESS_KEY": [SECRET]}))
    with pytest.raises(ConfigError) as exc:
        assert settings().storage_options is None  # raises
    assert SECRET not in str(exc.value)
    monkeypatch.setenv("ASOF_STORAGE_OPTIONS", json.dumps([SECRET]))
    with pytest.raises(ConfigError, match="JSON object"):
        assert settings().storage_options is None  # raises
    # deltalake 1.x ignores the DynamoDB log store (it only logs an error): refused, not ignored
    monkeypatch.setenv("ASOF_STORAGE_OPTIONS", json.dumps({"aws_s3_locking_provider": "dynamodb"}))
    with pytest.raises(ConfigError, match="conditional put"):
        assert settings().storage_options is None  # raises


# ------------------------------------------------------------------------------ the whole pipeline

START, END = dt.date(2024, 1, 1), dt.date(2024, 1, 2)


def lake_snapshot() -> dict[str, list[str]]:
    """Every table of the configured lake (local or s3), minus volatile columns and log tables."""
    out: dict[str, list[str]] = {}
    for layer in lake.LAYERS:
        for name in lake.list_tables(layer):
            key = f"{layer}/{name}"
            if key in LOG_TABLES:
                continue
            tbl = lake.read(layer, name)
            keep = [c for c in tbl.column_names if c not in VOLATILE]
            out[key] = sorted(
                json.dumps(r, default=str, sort_keys=True) for r in tbl.select(keep).to_pylist()
            )
    return out


@pytest.mark.slow
def test_backfill_with_the_lake_on_s3_matches_a_local_lake(
    s3_lake: str,
    s3_endpoint: str,
    home: Path,
    tmp_path: Path,
    prefect_backend,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every stage (ingest, validate, dbt, Feast materialization, monitoring) with the Delta tables
    on S3; the tables are identical to those of the same backfill on a local lake."""
    import shutil

    from flows import pipeline
    from flows.upstream import simulate

    caplog.set_level(logging.INFO)
    simulate.generate(home / "landing", START, END, simulate.parse_scale("200x400"), seed=5)
    results = pipeline.backfill(START.isoformat(), END.isoformat())
    assert [r["status"] for r in results] == ["succeeded"] * 2, results
    assert set(date_statuses(home, START, END).values()) == {"succeeded"}
    on_s3 = lake_snapshot()
    assert on_s3.get("gold/customer_txn_features_daily"), sorted(on_s3)
    assert not (home / "lake").exists()
    online_s3 = online_rows(home)  # Feast materialized from the gold tables on s3
    assert any(online_s3.values()), sorted(online_s3)

    local_home = tmp_path / "local_home"
    shutil.copytree(home / "landing", local_home / "landing")
    monkeypatch.setenv("ASOF_HOME", str(local_home))
    monkeypatch.delenv("ASOF_LAKE_URI")
    monkeypatch.delenv("ASOF_STORAGE_OPTIONS")
    results = pipeline.backfill(START.isoformat(), END.isoformat())
    assert [r["status"] for r in results] == ["succeeded"] * 2, results
    local = lake_snapshot()
    assert sorted(local) == sorted(on_s3)
    for key in local:
        assert local[key] == on_s3[key], key
    assert online_rows(local_home) == online_s3
    assert SECRET not in caplog.text
