"""A run writes the online store once, after its last chunk (flows.pipeline): earlier chunks leave
their dates `pending`, a run that dies leaves them so, and the next backfill materializes them
without recomputing them. Through the real flows, dbt and Feast (SQLite online store)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow.compute as pc
import pytest

from flows.operations import runs
from flows.storage import lake

pytestmark = pytest.mark.slow

START = dt.date(2024, 1, 1)
END = dt.date(2024, 1, 3)
DAYS = [START + dt.timedelta(days=i) for i in range(3)]
SCALE = "200x300"


@pytest.fixture
def landed(home: Path) -> Path:
    from flows.upstream import simulate

    simulate.generate(home / "landing", START, END, simulate.parse_scale(SCALE), seed=11)
    return home


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dt.date, dt.date]]:
    """Every span handed to Feast materialization (the real call runs: a spy, not a stand-in)."""
    from flows.features import featurestore

    calls: list[tuple[dt.date, dt.date]] = []
    real = featurestore.materialize_span

    def spy(first, last, views=None):
        calls.append((first, last))
        return real(first, last, views)

    monkeypatch.setattr(featurestore, "materialize_span", spy)
    return calls


def _newest_gold(customers: list[int]) -> dict[int, int]:
    """txn_count_30d of each customer's newest gold row: what the online store must serve."""
    tbl = lake.read(
        "gold", "customer_txn_features_daily", columns=["customer_id", "as_of_date", "txn_count_30d"]
    )
    newest: dict[int, tuple[dt.date, int]] = {}
    for r in tbl.to_pylist():
        if r["customer_id"] in customers and (
            r["customer_id"] not in newest or r["as_of_date"] > newest[r["customer_id"]][0]
        ):
            newest[r["customer_id"]] = (r["as_of_date"], r["txn_count_30d"])
    return {c: v for c, (_, v) in newest.items()}


def _online_counts(customers: list[int]) -> dict[int, int | None]:
    from flows.features import featurestore

    featurestore.reset_store_cache()
    got = featurestore.online_features([{"customer_id": c} for c in customers], service="fraud_v1")
    return dict(zip(got["customer_id"], got["txn_count_30d"], strict=True))


def _sample_customers() -> list[int]:
    ids = pc.unique(lake.read("gold", "customer_txn_features_daily", columns=["customer_id"])["customer_id"])
    return sorted(ids.to_pylist())[:40]


def test_a_chunked_backfill_materializes_once_at_its_end(landed: Path, prefect_backend, spans) -> None:
    from flows import pipeline

    results = pipeline.backfill(START.isoformat(), END.isoformat(), chunk_days=1)
    assert [r["status"] for r in results] == ["succeeded"] * 3, results
    assert spans == [(START, END)]  # one pass for three chunks, not one per chunk
    # every date ends with a succeeded materialize record (the first two were pending in between)
    status = runs.date_status(runs.latest(START, END))
    assert status == {d: "succeeded" for d in DAYS}
    customers = _sample_customers()
    assert _online_counts(customers) == _newest_gold(customers)


def test_a_run_that_dies_after_a_chunk_leaves_it_pending_and_the_next_backfill_catches_up(
    landed: Path, prefect_backend, spans, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows import pipeline

    real_transform = pipeline.transform_features
    chunks: list[tuple[dt.date, dt.date]] = []

    def dies_on_second_chunk(start, end):
        chunks.append((start, end))
        if len(chunks) == 2:
            raise KeyboardInterrupt("killed during the second chunk's transform")
        return real_transform(start, end)

    monkeypatch.setattr(pipeline, "transform_features", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        pipeline.backfill(START.isoformat(), END.isoformat(), chunk_days=1)
    assert spans == []  # the online store was not written
    status = runs.date_status(runs.latest(START, END))
    assert status[DAYS[0]] == runs.PENDING
    assert status[DAYS[1]] not in ("succeeded", runs.PENDING)  # its chunk did not finish
    assert status.get(DAYS[2]) is None  # never started
    assert runs.pending_dates(START, END) == {DAYS[0]}

    monkeypatch.setattr(pipeline, "transform_features", real_transform)
    validated: list[dt.date] = []
    real_validate = pipeline.validate_dates

    def spy(days, stop_on_failure, label):
        validated.extend(days)
        return real_validate(days, stop_on_failure, label)

    monkeypatch.setattr(pipeline, "validate_dates", spy)
    results = pipeline.backfill(START.isoformat(), END.isoformat(), chunk_days=1)
    assert [r["status"] for r in results] == ["succeeded"] * 3, results
    assert DAYS[0] not in validated  # caught up: materialized, not recomputed
    assert validated == DAYS[1:]
    assert spans == [(START, END)]
    assert runs.pending_dates(START, END) == set()
    customers = _sample_customers()
    assert _online_counts(customers) == _newest_gold(customers)


def test_the_next_chunk_ingests_while_a_chunk_transforms_and_a_failed_transform_stops_the_run(
    landed: Path, prefect_backend, spans, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunk N+1's ingest is submitted once chunk N validated, before N's transform; when that
    transform fails the run stops after N: N+1's dates are not run and have no record (their
    bronze is written: the ingest was waited for before the run returned), and a rerun of the
    range converges to every date succeeded."""
    from flows import pipeline

    events: list[tuple[str, dt.date]] = []
    real_submit, real_transform = pipeline._submit_ingest, pipeline.transform_features

    def submit(days):
        events.append(("ingest", days[0]))
        return real_submit(days)

    def transform(start, end):
        events.append(("transform", start))
        if start == DAYS[1]:
            return pipeline.StageOutcome("failed", "dbt test failed (injected)")
        return real_transform(start, end)

    monkeypatch.setattr(pipeline, "_submit_ingest", submit)
    monkeypatch.setattr(pipeline, "transform_features", transform)
    from flows.monitoring.alerts import MonitoringFailure

    with pytest.raises(MonitoringFailure):  # the failed date is stale: monitoring fails the run
        pipeline.backfill(START.isoformat(), END.isoformat(), chunk_days=1)
    assert events == [
        ("ingest", DAYS[0]),
        ("ingest", DAYS[1]),  # before DAYS[0]'s transform
        ("transform", DAYS[0]),
        ("ingest", DAYS[2]),
        ("transform", DAYS[1]),  # fails: the run stops after this chunk
    ]
    status = runs.date_status(runs.latest(START, END))
    assert status[DAYS[1]] == "failed"
    assert status.get(DAYS[2]) is None  # not run: no record
    bronze_days = lake.read("bronze", "transactions", columns=["_batch_date"])["_batch_date"]
    assert DAYS[2] in set(bronze_days.to_pylist())  # its prefetched ingest finished before the return

    monkeypatch.setattr(pipeline, "transform_features", real_transform)
    again = pipeline.backfill(START.isoformat(), END.isoformat(), chunk_days=1)
    assert [r["status"] for r in again] == ["skipped", "succeeded", "succeeded"], again  # 1st done
    assert runs.succeeded_dates(START, END) == set(DAYS)
