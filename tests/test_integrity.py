"""Damage from outside the pipeline is found, named and never reported `succeeded`
(flows.operations.integrity,
`asof verify`; issue 23 item 1): each probe damages a real lake the way an operator or a failed
disk would, then checks what verify, status and the backfill's skip list make of it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import main as cli
from flows.ingest.stage import ingest
from flows.operations import integrity, runs
from flows.storage import lake
from flows.validation import stage
from tests.test_ingest import csv_text, land

D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)
MERCHANTS = "merchant_id,name,mcc,country,risk_tier\n2,M,5411,US,low\n"


def _process(day: dt.date, run_id: str) -> None:
    """Ingest and validate one date for real, and record it as the pipeline does."""
    recs = []
    for source in ("merchants", "transactions"):
        out = ingest(source, day)
        recs.append(runs.StageRecord(day, "ingest", source, out.status, rows_out=out.rows))
    for source, v in stage.validate_date(day, ["merchants", "transactions"], build_docs=False).items():
        recs.append(
            runs.StageRecord(
                day, "validate", source, v.status, v.rows_bronze, v.rows_silver, v.rows_quarantined
            )
        )
    recs += [runs.StageRecord(day, s, runs.ALL_SOURCES, "succeeded") for s in ("transform", "materialize")]
    runs.append(run_id, None, recs)


def _transactions(day: dt.date) -> str:
    """40 transactions of `day` with ids of their own (a copy of another day's would be a duplicate)."""
    return csv_text(40).replace("2024-03-01", day.isoformat()).replace("\nt", f"\n{day.day}-t")


@pytest.fixture
def lake_of_two_dates(home: Path) -> Path:
    for day in (D1, D2):
        land(home, "merchants", day, "merchants.csv", MERCHANTS)
        land(home, "transactions", day, "transactions.csv", _transactions(day))
        _process(day, f"run-{day}")
    assert runs.date_status(runs.latest(D1, D2)) == {D1: "succeeded", D2: "succeeded"}
    assert integrity.log_findings() == []
    return home


def _newest_commit(layer: str, table: str) -> Path:
    log = Path(lake.uri(layer, table)) / "_delta_log"
    return max(log.glob("*.json"))


def _verify(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli.app, ["verify", *args])
    return res.exit_code, res.output


def test_an_emptied_commit_is_named_and_its_date_is_damaged(lake_of_two_dates: Path) -> None:
    commit = _newest_commit("silver", "transactions")  # the split of D2
    commit.write_bytes(b"")
    code, out = _verify()
    assert code == 1
    assert f"silver/transactions _delta_log/{commit.name}: commit file is empty" in out
    status = runs.date_status(runs.latest(D1, D2))
    assert status == {D1: "succeeded", D2: "damaged"}  # silver lost D2's rows
    [marker] = [r for r in runs.latest(D2, D2) if r["stage"] == "run"]
    assert "silver 0 + quarantine" in marker["message"] and "!= bronze 40" in marker["message"]
    assert runs.succeeded_dates(D1, D2) == {D1}  # a backfill reruns D2

    commit.unlink()  # the recovery of docs/operations.md section 11: drop it, rerun the date
    assert _verify()[0] == 1  # still damaged until the date is rerun
    _process(D2, "rerun")
    assert _verify() == (0, "no damage found\n")
    assert runs.date_status(runs.latest(D1, D2)) == {D1: "succeeded", D2: "succeeded"}


def test_a_commit_cut_mid_line_is_named(lake_of_two_dates: Path) -> None:
    commit = _newest_commit("bronze", "transactions")
    data = commit.read_bytes()
    commit.write_bytes(data[: len(data) // 2])
    code, out = _verify("--json")
    assert code == 1
    found = [json.loads(line) for line in out.splitlines()]
    assert {"table": "bronze/transactions", "file": f"_delta_log/{commit.name}"} == {
        k: found[0][k] for k in ("table", "file")
    }
    assert "cut or not JSON" in found[0]["problem"]


def test_a_missing_data_file_and_a_lost_checkpoint_are_named(lake_of_two_dates: Path) -> None:
    table = Path(lake.uri("silver", "transactions"))
    victim = next(table.rglob("*.parquet"))
    victim.unlink()
    (table / "_delta_log" / "_last_checkpoint").write_text(json.dumps({"version": 99, "size": 1}))
    code, out = _verify()
    assert code == 1
    assert "_delta_log/_last_checkpoint: names checkpoint 99, which is not there" in out


def test_delta_errors_name_the_table_without_a_backtrace(lake_of_two_dates: Path) -> None:
    commit = _newest_commit("ops", "runs")
    commit.write_bytes(commit.read_bytes()[:-7])  # cut inside the last line
    with pytest.raises(lake.LakeError) as exc:
        lake.read("ops", "runs")
    assert "Delta table ops/runs cannot be opened" in str(exc.value)
    assert "backtrace" not in str(exc.value).lower() and "\n" not in str(exc.value)


def test_status_survives_a_table_that_cannot_be_opened(lake_of_two_dates: Path) -> None:
    """Emptying a table's only commit leaves no metadata: reads fail, and status says damaged
    for every succeeded date instead of failing itself."""
    log = Path(lake.uri("silver", "transactions")) / "_delta_log"
    for commit in log.glob("*.json"):
        commit.write_bytes(b"")
    status = runs.date_status(runs.latest(D1, D2))
    assert status == {D1: "damaged", D2: "damaged"}
    [marker, _] = [r for r in runs.latest(D1, D2) if r["stage"] == "run"]
    assert "silver/transactions cannot be opened" in marker["message"]


# ------------------------------------------------------------------ an emptied online store


def _materialized(day: dt.date, rows: int | None) -> list[dict]:
    return [
        {
            "execution_date": day,
            "stage": "materialize",
            "status": "succeeded",
            "rows_out": rows,
            "message": "",
        }
    ]


def test_an_emptied_sqlite_online_store_is_named(home: Path) -> None:
    """Without Feast: a missing file or tables without a row, while records say rows were written."""
    import sqlite3

    db = home / "feast" / "online.db"
    assert integrity.online_store_emptied(_materialized(D1, None)) is None  # nothing was written
    why = integrity.online_store_emptied(_materialized(D1, 10))
    assert why is not None and why.startswith(integrity.ONLINE_EMPTIED) and f"{db} is missing" in why
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.execute('CREATE TABLE "asof_v" (entity_key BLOB, value BLOB)')
    assert f"{db} holds no rows" in (integrity.online_store_emptied(_materialized(D1, 10)) or "")
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO \"asof_v\" VALUES (x'01', x'02')")
    assert integrity.online_store_emptied(_materialized(D1, 10)) is None


def test_an_emptied_redis_is_named_and_an_unreachable_one_is_not(home: Path, monkeypatch) -> None:
    """A Redis restarted without persistence holds no keys: named. One that does not answer is
    not evidence of anything (the next materialization fails loudly)."""
    import shutil
    import socket
    import subprocess
    import time

    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        + ["--dir", str(home)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        monkeypatch.setenv("ASOF_ONLINE_STORE", "redis")
        monkeypatch.setenv("ASOF_REDIS_URL", f"redis://127.0.0.1:{port}/0")
        why = integrity.online_store_emptied(_materialized(D1, 10))
        assert why is not None and "the Redis database holds no keys" in why
        client.set(b"k", b"v")
        assert integrity.online_store_emptied(_materialized(D1, 10)) is None
    finally:
        proc.terminate()
        proc.wait(10)
    assert integrity.online_store_emptied(_materialized(D1, 10)) is None  # down: unknown
