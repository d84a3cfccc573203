"""Validating dates together gives every row and every date exactly the verdict it gets when the
dates are validated one by one (flows.validation.stage): the same silver, quarantine (with the same
reasons) and validation records, whatever the chunking. The data has the faults whose effects cross
dates: a rejected batch (its rows are no earlier delivery and no drift history of later dates), a
quarantined first copy followed by a corrected re-delivery, duplicates across dates, chargebacks of
transactions from a rejected batch."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from flows.storage import lake
from flows.validation import stage
from tests.conftest import data_root
from tests.cross_date_batches import LAYERS, D, assert_same_validation, copy_lake, landed_home, snapshot


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bronze and ingest records of the ten dates, then the day-by-day reference."""
    return landed_home(tmp_path_factory.mktemp("range_landed"))


@pytest.fixture(scope="module")
def one_by_one(landed: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("range_daily")
    copy_lake(landed, home)
    with data_root(home):
        outs = {d: stage.validate_date(d, build_docs=False) for d in D}
        return {"tables": snapshot(), "outs": outs}


def test_the_faults_cross_dates(one_by_one: dict) -> None:
    """The data does what the docstring says (else the comparisons below prove little)."""
    outs = one_by_one["outs"]
    assert outs[D[7]]["transactions"].rejected_rule == "amount_drift"
    assert outs[D[2]]["transactions"].reasons == {"amount_out_of_range": 1}
    assert outs[D[3]]["transactions"].reasons == {"conflicting_duplicate": 1, "duplicate": 1}
    assert outs[D[8]]["transactions"].reasons == {}  # the rejected day's rows are no earlier delivery
    assert outs[D[8]]["chargebacks"].rows_silver == 1
    assert outs[D[9]]["chargebacks"].reasons == {"unknown_transaction": 1}
    assert all(o["transactions"].status == "succeeded" for d, o in outs.items() if d != D[7])
    assert all(
        v.status == "succeeded"
        for d, o in outs.items()
        for s, v in o.items()
        if (d, s) != (D[7], "transactions")
    )


@pytest.mark.parametrize(
    "chunks",
    # one range; and chunks that cut between the quarantined first copy and its re-delivery (2|3)
    # and between the rejected batch and the re-deliveries of its rows (7|8)
    [[D], [D[:3], D[3:8], D[8:]]],
    ids=["one-range", "3+5+2"],
)
def test_validating_together_equals_one_by_one(
    chunks: list[list[dt.date]], landed: Path, one_by_one: dict, home: Path
) -> None:
    copy_lake(landed, home)
    outs: dict[dt.date, dict] = {}
    for chunk in chunks:
        outs.update(stage.validate_dates(chunk, build_docs=False))
    assert_same_validation(
        outs, one_by_one, ("status", "rows_silver", "rows_quarantined", "reasons", "message")
    )


def test_stopping_at_the_first_failed_date_validates_nothing_after_it(landed: Path, home: Path) -> None:
    copy_lake(landed, home)
    outs = stage.validate_dates(D, build_docs=False, stop_on_failure=True)
    assert sorted(outs) == D[:8]  # day 7 is rejected: validated, then the run stops
    assert outs[D[7]]["transactions"].status == "rejected"
    for layer, tables in LAYERS.items():
        for name in tables:
            if lake.exists(layer, name):
                days = set(lake.read(layer, name, columns=["_batch_date"]).column("_batch_date").to_pylist())
                assert not days & set(D[8:]), (layer, name)
    recorded = {r["_batch_date"] for r in lake.read("ops", "validations").to_pylist()}
    assert recorded == set(D[:8])


def test_the_pipeline_validates_a_chunk_in_slices_of_bounded_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """One GE frame holds a slice: consecutive dates up to the row bound, a big date alone."""
    from flows import pipeline

    monkeypatch.setattr(pipeline, "VALIDATION_MAX_ROWS", 100)
    landed = [30, 30, 30, 250, 10, 95, 5]
    results = {}
    for day, n in zip(D, landed, strict=False):
        r = pipeline.DateResult(day)
        r.counts = {"transactions": {"landed": n - 5}, "merchants": {"landed": 5}}
        results[day] = r
    slices = pipeline.validation_slices(D[: len(landed)], results)
    assert slices == [D[0:3], D[3:4], D[4:7]]
    assert [d for s in slices for d in s] == D[: len(landed)]
    # the bound is per source (one GE frame holds one source's rows), not summed over the sources
    both = {}
    for day, (txns, merchants) in zip(D, [(60, 40), (30, 30), (20, 40)], strict=False):
        r = pipeline.DateResult(day)
        r.counts = {"transactions": {"landed": txns}, "merchants": {"landed": merchants}}
        both[day] = r
    assert pipeline.validation_slices(D[:3], both) == [D[0:2], D[2:3]]
