"""End to end through the real Prefect flows: generated landing files -> every stage.

Conservation is checked against the landing files themselves, counted independently of ingest.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import pyarrow.compute as pc
import pytest

from flows import lake, runs
from flows.sources import SOURCE_NAMES, get_source
from tests.test_cli import run_cli

pytestmark = pytest.mark.slow

START = dt.date(2024, 1, 1)
END = dt.date(2024, 1, 10)
SCALE = "300x600"


def landed_rows(home: Path, source: str, day: dt.date) -> int:
    """Data rows in the landing files, counted without asof's reader."""
    folder = home / "landing" / source / day.isoformat()
    total = 0
    for path in sorted(folder.glob("*")):
        if get_source(source).fmt == "jsonl":
            total += sum(1 for line in path.read_text().splitlines() if line.strip())
        else:
            with path.open(newline="") as fh:
                total += sum(1 for rec in csv.reader(fh) if rec) - 1
    return total


def bronze_counts(source: str) -> dict[dt.date, int]:
    tbl = lake.read("bronze", source, columns=["_batch_date"])
    vc = pc.value_counts(tbl["_batch_date"]).to_pylist()
    return {v["values"]: v["counts"] for v in vc}


def table_snapshot(layer: str, name: str) -> list[tuple]:
    if not lake.exists(layer, name):  # e.g. no chargeback passed validation in a short range
        return []
    tbl = lake.read(layer, name)
    drop = [c for c in tbl.column_names if c in ("_ingested_at", "_quarantined_at", "_validation_run_id")]
    tbl = tbl.drop_columns(drop)
    rows = [tuple(str(v) for v in r.values()) for r in tbl.to_pylist()]
    return sorted(rows)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flows import simulate

    home = tmp_path_factory.mktemp("e2e_home")
    simulate.generate(home / "landing", START, END, simulate.parse_scale(SCALE), seed=7)
    return home


def test_backfill_conserves_rows_and_is_idempotent(
    generated: Path, prefect_backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows import pipeline

    monkeypatch.setenv("ASOF_HOME", str(generated))
    events: list[tuple[dt.date, str]] = []
    monkeypatch.setattr(pipeline, "PROGRESS_HOOK", lambda day, what: events.append((day, what)))
    results = pipeline.backfill(START.isoformat(), END.isoformat(), chunk_days=4)
    assert [r["status"] for r in results] == ["succeeded"] * 10, results
    # A date is validated as soon as its own batches are in, while the chunk's later dates load;
    # never before its own.
    seen = [(day, what) for day, what in events if what in ("ingested", "validated")]
    assert seen.index((START, "validated")) < seen.index((START + dt.timedelta(days=3), "ingested"))
    for day in (START + dt.timedelta(days=i) for i in range(10)):
        assert seen.index((day, "ingested")) < seen.index((day, "validated")), day
    # the range rendered the Data Docs index per chunk, not per date: it still lists every date
    index = (generated / "docs" / "index.html").read_text()
    for day in (START + dt.timedelta(days=i) for i in range(10)):
        assert f"{day.isoformat()}-transactions" in index, day

    for source in SOURCE_NAMES:
        counts = bronze_counts(source)
        for day in (START + dt.timedelta(days=i) for i in range(10)):
            assert counts.get(day, 0) == landed_rows(generated, source, day), (source, day)

    tables = [(layer, s) for layer in ("bronze", "silver", "quarantine") for s in SOURCE_NAMES]
    tables += [
        ("gold", t) for t in ("customer_txn_features_daily", "merchant_features_daily", "customer_profile")
    ]
    before = {t: table_snapshot(*t) for t in tables}
    assert before[("gold", "customer_txn_features_daily")], "gold was not written"

    # A second backfill skips everything; a forced one and a single-date rerun change nothing.
    again = pipeline.backfill(START.isoformat(), END.isoformat())
    assert {r["status"] for r in again} == {"skipped"}
    forced = pipeline.backfill(START.isoformat(), END.isoformat(), force=True, chunk_days=10)
    assert {r["status"] for r in forced} == {"succeeded"}
    pipeline.daily_pipeline(execution_date="2024-01-05")
    pipeline.daily_pipeline(execution_date="2024-01-05")
    after = {t: table_snapshot(*t) for t in tables}
    assert after == before

    status = runs.date_status(runs.latest(START, END))
    assert set(status.values()) == {"succeeded"}


def test_training_set_from_the_pipeline_reproduces_after_later_runs(
    tmp_path: Path, prefect_backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model developer's path end to end: the flows build the lake, `asof training-set` writes
    a set and its manifest, five more days arrive and an old date is redone (every table gets new
    Delta versions), and `asof reproduce` still gives the first file byte for byte."""
    from flows import pipeline, simulate
    from flows.training import manifest_path

    home = tmp_path / "home"
    last = END + dt.timedelta(days=5)
    simulate.generate(home / "landing", START, last, simulate.parse_scale(SCALE), seed=11)
    monkeypatch.setenv("ASOF_HOME", str(home))
    assert {r["status"] for r in pipeline.backfill(START.isoformat(), END.isoformat())} == {"succeeded"}

    out = tmp_path / "train.parquet"
    built = run_cli(home, "training-set", "--start", "2024-01-03", "--end", "2024-01-09",
                  "--service", "fraud_v2", "--out", str(out))  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    first_bytes = out.read_bytes()
    first = json.loads(manifest_path(out).read_text())
    assert first["output"]["rows"] > 0 and first["tables"], first

    later = pipeline.backfill((END + dt.timedelta(days=1)).isoformat(), last.isoformat())
    assert {r["status"] for r in later} == {"succeeded"}
    pipeline.daily_pipeline(execution_date="2024-01-05")  # a redone date rewrites its partitions

    fresh = tmp_path / "fresh.parquet"
    rebuilt = run_cli(home, "training-set", "--start", "2024-01-03", "--end", "2024-01-09",
                    "--service", "fraud_v2", "--out", str(fresh))  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    now = json.loads(manifest_path(fresh).read_text())["tables"]
    assert all(now[t]["version"] > v["version"] for t, v in first["tables"].items()), (first["tables"], now)

    again = tmp_path / "again.parquet"
    res = run_cli(home, "reproduce", str(manifest_path(out)), "--out", str(again))
    assert res.returncode == 0, res.stdout + res.stderr
    assert again.read_bytes() == first_bytes


def test_flows_bound_their_thread_pool() -> None:
    """Prefect's default pool is unbounded: a chunk's ingests then all parse at once (bench RSS)."""
    from flows import pipeline

    for fl in (pipeline.backfill, pipeline.daily_pipeline):
        assert fl.task_runner._max_workers == pipeline.THREAD_WORKERS == 4
