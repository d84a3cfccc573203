"""End to end through the real Prefect flows: generated landing files -> every stage.

Conservation is checked against the landing files themselves, counted independently of ingest, and
the gold values against the brute-force reference fed from the landing files parsed independently
(plain csv/json and the contract's rules in `tests/reference_features.py`), never read back through the lake.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import pyarrow.compute as pc
import pytest

from flows.operations import runs
from flows.sources import SOURCE_NAMES, get_source
from flows.storage import lake
from tests import reference_features as rf
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
    from flows.upstream import simulate

    home = tmp_path_factory.mktemp("e2e_home")
    # seed 6: its 10 days hold chargebacks (seed 7's hold none), so merchant chargeback counts are checked
    simulate.generate(home / "landing", START, END, simulate.parse_scale(SCALE), seed=6)
    return home


@pytest.fixture(scope="module")
def backfilled(generated: Path, prefect_backend):
    """The first backfill of the generated range (chunks of 4 days), with its progress events."""
    from flows import pipeline
    from flows.monitoring.alerts import MonitoringFailure

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASOF_HOME", str(generated))
        mp.delenv("ASOF_LAKE_URI", raising=False)
        events: list[tuple[dt.date, str]] = []
        mp.setattr(pipeline, "PROGRESS_HOOK", lambda day, what: events.append((day, what)))
        monitoring = None
        try:
            results = pipeline.backfill(START.isoformat(), END.isoformat(), chunk_days=4)
        except MonitoringFailure as exc:  # the backfill ended: the tests still compare what it wrote
            results, monitoring = exc.data, str(exc)
        mp.setattr(pipeline, "PROGRESS_HOOK", None)
        yield {"home": generated, "results": results, "events": events, "monitoring": monitoring}


def silver_rows(source: str) -> set[tuple[dt.date, str, int]]:
    if not lake.exists("silver", source):
        return set()
    tbl = lake.read("silver", source, columns=["_batch_date", "_source_file", "_row_number"])
    return {(r["_batch_date"], Path(r["_source_file"]).name, r["_row_number"]) for r in tbl.to_pylist()}


def test_gold_values_match_the_reference_from_the_landing_files(backfilled) -> None:
    """Every gold row and value of the backfill equals the brute-force reference computed from the
    landing files with the contract's rules (valid rows, first delivery wins, `_batch_date <= D`,
    `event_time < D+1`, windows [D+1-w, D+1)). Silver is compared first, row for row, with what the
    same independent parse accepts, so a validation bug is told apart from a transform bug."""
    assert [r["status"] for r in backfilled["results"]] == ["succeeded"] * 10, backfilled["results"]
    landing = rf.silver_from_landing(backfilled["home"] / "landing", START, END)
    late = [r for r in landing.rows if r.source == "transactions" and r.values and not r.reasons
            and r.values["event_time"].date() < r.batch_date]  # fmt: skip
    assert len(late) > 50, "the generated data should hold late deliveries"
    assert any("duplicate" in r.reasons for r in landing.rows), "and redelivered duplicates"
    assert len(landing.silver["chargebacks"]) > 10 and (landing.silver["customers"]["op"] == "u").any()
    for source, frame in landing.silver.items():
        expected = set(zip(frame["_batch_date"], frame["_source_file"], frame["_row_number"], strict=True))
        got = silver_rows(source)
        assert got == expected, (source, sorted(got - expected)[:5], sorted(expected - got)[:5])

    reference = rf.reference_features_vectorized(landing.for_reference(), START, END)
    for table in ("customer_txn_features_daily", "merchant_features_daily", "customer_profile"):
        gold = rf.read_gold(table)
        assert set(gold["as_of_date"]) <= {START + dt.timedelta(days=i) for i in range(10)}, table
        rf.assert_frames_match(gold, reference[table], table)


def test_backfill_conserves_rows_and_is_idempotent(backfilled, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows import pipeline

    generated = backfilled["home"]
    monkeypatch.setenv("ASOF_HOME", str(generated))
    results, events = backfilled["results"], backfilled["events"]
    assert backfilled["monitoring"] is None, backfilled["monitoring"]
    assert [r["status"] for r in results] == ["succeeded"] * 10, results
    # A chunk (4 dates) is validated as one set once all its batches are in; chunks in date order.
    seen = [(day, what) for day, what in events if what in ("ingested", "validated")]
    days = [START + dt.timedelta(days=i) for i in range(10)]
    chunks = [days[0:4], days[4:8], days[8:10]]
    for chunk in chunks:
        last_ingest = max(seen.index((d, "ingested")) for d in chunk)
        assert all(seen.index((d, "validated")) > last_ingest for d in chunk), chunk
    assert [d for d, what in seen if what == "validated"] == days
    # the range rendered the Data Docs index per chunk, not per date: it lists every chunk's results
    index = (generated / "docs" / "index.html").read_text()
    for chunk in chunks:
        assert f"{chunk[0].isoformat()}..{chunk[-1].isoformat()}-transactions" in index, chunk

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
    from flows import pipeline
    from flows.features.training import manifest_path
    from flows.upstream import simulate

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
