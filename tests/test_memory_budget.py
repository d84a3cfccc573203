"""A date's memory is bounded (flows/ingest/memory_budget.py, issue 23 item 7): Great Expectations judges a
date's rows in slices and gives every row exactly the verdict of an unsliced run, and a date whose
estimate is over ASOF_MEMORY_BUDGET is refused before anything is read, in one line, writing nothing.

The data is tests/test_validation_range.py's ten dates, whose faults cross dates (a rejected batch,
a quarantined first copy and its corrected re-delivery, duplicates and conflicting duplicates,
chargebacks of unknown transactions): slices of 7 rows cut through every batch and every date."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flows.ingest import memory_budget
from flows.ingest import stage as ingest
from flows.sources import get_source
from flows.storage import lake
from flows.validation import frames, history, stage, streamed, suites
from flows.validation.contracts import load_contract, load_fx_rates
from flows.validation.frames import code_day, day_code, prepare
from flows.validation.verdicts import DayVerdict
from tests.conftest import data_root
from tests.cross_date_batches import (
    VERDICT_FIELDS,
    D,
    assert_same_validation,
    copy_lake,
    landed_home,
    snapshot,
)


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return landed_home(tmp_path_factory.mktemp("budget_landed"))


@pytest.fixture(scope="module")
def unsliced(landed: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("budget_unsliced")
    copy_lake(landed, home)
    with data_root(home):
        outs = stage.validate_dates(D, build_docs=False)
        return {"tables": snapshot(), "outs": outs}


def force_read_back(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Validate every date as too big to hold: bronze read back in 5-row slices, GE in 7-row slices.
    Returns the list `streamed.read` appends `source:read back?` to."""
    monkeypatch.setenv("ASOF_VALIDATION_MAX_ROWS", "7")
    monkeypatch.setattr(memory_budget, "streams", lambda rows: True)
    monkeypatch.setattr(memory_budget, "STREAM_SLICE_ROWS", 5)
    read = streamed.read
    used: list[str] = []

    def counted(source, contract, days, *rest):
        got = read(source, contract, days, *rest)
        used.append(f"{source.name}:{got is not None}")
        return got

    monkeypatch.setattr(streamed, "read", counted)
    return used


def test_slices_of_seven_rows_give_every_row_the_same_verdict(
    landed: Path, unsliced: dict, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_lake(landed, home)
    monkeypatch.setenv("ASOF_VALIDATION_MAX_ROWS", "7")
    calls: list[str] = []
    run_suite = suites.run_suite

    def counted(suite_name, frame, params, run_name, run_time):
        calls.append(run_name)
        assert suite_name.endswith(".batches") or len(frame) <= 7
        return run_suite(suite_name, frame, params, run_name, run_time)

    monkeypatch.setattr(suites, "run_suite", counted)
    outs = stage.validate_dates(D, build_docs=False)
    assert any("-part2of" in c for c in calls), calls  # it did slice
    # silver, quarantine (with reasons) and ops/validations
    got = assert_same_validation(outs, unsliced, VERDICT_FIELDS[:-1])
    assert got["quarantine/transactions"], "the data has quarantined rows"


def test_slice_size_follows_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASOF_VALIDATION_MAX_ROWS", "1600000")
    monkeypatch.setenv("ASOF_MEMORY_BUDGET", "4096")
    per_row = memory_budget.VALIDATE_BYTES_PER_ROW
    # 2M rows leave 4 GB - 1 GB - 2M rows of the whole-date part: more than the setting's frame
    assert memory_budget.ge_slice_rows(2_000_000) == 1_600_000
    # rows that leave room for less than 1.6M rows of frame: the budget decides
    rows = int((3 * 2**30 - 1_000_000 * memory_budget.GE_BYTES_PER_ROW) / per_row)
    assert 100_000 < memory_budget.ge_slice_rows(rows) < 1_600_000
    # too many rows to hold whole: read back slice by slice, GE's slice from what that leaves
    assert memory_budget.streams(10_000_000)
    left = 4096 * 2**20 - memory_budget.BASE_BYTES - memory_budget.STREAM_BYTES_PER_ROW * 45_000_000
    assert memory_budget.ge_slice_rows(45_000_000) == left // memory_budget.STREAM_GE_BYTES_PER_ROW
    assert memory_budget.ge_slice_rows(20_000_000) == memory_budget.STREAM_GE_MAX_ROWS  # room left
    # nothing left: the floor (the date itself is refused)
    assert memory_budget.ge_slice_rows(60_000_000) == memory_budget.MIN_SLICE_ROWS
    assert memory_budget.validate_estimate(60_000_000) > memory_budget.budget_bytes()


def test_a_20m_row_day_is_admitted_under_4_gb_and_a_far_bigger_one_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 23 item 7: a 20M-row transactions day (1.3 GB landed) validates under a 4096 MB
    budget, read back slice by slice; 80M rows are refused before anything is read."""
    monkeypatch.setenv("ASOF_MEMORY_BUDGET", "4096")
    budget = memory_budget.budget_bytes()
    day = [("landing/transactions/2024-01-01/transactions.csv", 1_322_000_000, 20_000_000)]
    assert memory_budget.streams(20_000_000)
    assert memory_budget.recorded_estimate("transactions", "2024-01-01", day).refusal(budget) is None
    big = [("landing/transactions/2024-01-01/transactions.csv", 5_288_000_000, 80_000_000)]
    refused = memory_budget.recorded_estimate("transactions", "2024-01-01", big).refusal(budget)
    assert refused is not None and "\n" not in refused
    assert "80,000,000 rows" in refused and "ASOF_MEMORY_BUDGET" in refused, refused


def test_a_date_over_the_budget_is_refused_before_anything_is_read(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = dt.date(2024, 3, 1)
    folder = home / "landing" / "transactions" / day.isoformat()
    folder.mkdir(parents=True)
    lines = ["txn_id,customer_id,merchant_id,amount,currency,channel,event_time"]
    lines += [f"t{i:06d},1,1,10.00,USD,web,2024-03-01T00:00:00Z" for i in range(20_000)]
    (folder / "transactions.csv").write_text("\n".join(lines) + "\n")
    # 1,030 MB: the base alone (1,024 MB) nearly fills it; 20,001 lines do not fit beside it
    monkeypatch.setenv("ASOF_MEMORY_BUDGET", "1030")
    out = ingest.ingest_dates("transactions", [day])[day]
    assert out.status == "failed"
    assert "\n" not in out.message
    for part in (
        "transactions 2024-03-01 refused",
        "landing/transactions/2024-03-01/transactions.csv",
        "20,001 lines",
        "ASOF_MEMORY_BUDGET",
        "1.0 GB",
        "split",
    ):
        assert part in out.message, (part, out.message)
    assert not lake.exists("bronze", "transactions")  # nothing half-written
    monkeypatch.setenv("ASOF_MEMORY_BUDGET", "2048")
    assert ingest.ingest_dates("transactions", [day])[day].status == "succeeded"
    assert lake.read("bronze", "transactions").num_rows == 20_000


def test_validation_refuses_what_ingest_let_in_under_a_bigger_budget(
    landed: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_lake(landed, home)
    monkeypatch.setattr(memory_budget, "VALIDATE_BYTES_PER_ROW", 10**9)  # 40 rows: 40 GB
    monkeypatch.setattr(memory_budget, "STREAM_BYTES_PER_ROW", 10**9)  # read back in slices: the same
    monkeypatch.setenv("ASOF_MEMORY_BUDGET", "8192")  # 4 merchants fit, 40 transactions do not
    out = stage.validate_dates([D[0]], ["merchants", "transactions"], build_docs=False)[D[0]]
    assert out["merchants"].status == "succeeded"
    assert out["transactions"].status == "failed"
    assert out["transactions"].message.startswith("transactions 2024-02-01 refused before reading: ")
    assert "40 rows" in out["transactions"].message
    assert "ASOF_MEMORY_BUDGET" in out["transactions"].message
    assert not lake.exists("silver", "transactions")
    assert not lake.exists("quarantine", "transactions")


def test_the_reasons_column_equals_one_list_per_row() -> None:
    """Quarantine's `_reasons` built in Arrow (a rejected big batch quarantines every row) is the
    column a list of reasons per row gives: rejected and accepted dates, rows with and without
    their own reasons, any order of positions."""
    days = [dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)]
    codes = np.repeat([day_code(d) for d in days], [4, 3, 5])
    b = SimpleNamespace(codes=codes, row_day=lambda i: code_day(codes[i]))
    verdicts = {
        days[0]: DayVerdict(),
        days[1]: DayVerdict("rejected", [("volume", "m"), ("amount_drift", "m")]),
        days[2]: DayVerdict("rejected", [("failing_rows", "m")]),
    }
    own = {1: ["duplicate"], 4: ["unknown_merchant", "too_late"], 9: ["amount_out_of_range"]}
    ev = stage.Evaluation(b, days, "r", dt.datetime.now(dt.UTC), np.zeros(12, bool), own, verdicts, None)  # type: ignore[arg-type]
    for idx in (np.arange(12), np.array([9, 1, 4, 0, 11]), np.array([], dtype=np.int64), np.array([2, 3])):
        want = pa.array([ev.reasons_for(int(i)) for i in idx], pa.list_(pa.string()))
        assert ev.reasons_column(idx).equals(want), idx


def test_each_date_links_the_slice_that_holds_its_rows(
    landed: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two dates of 40 transactions in slices of 15: six Data Docs results (`-part1of6` ..), and the
    second date's record links the third, where its first row is."""
    copy_lake(landed, home)
    monkeypatch.setenv("ASOF_VALIDATION_MAX_ROWS", "15")
    out = stage.validate_dates(D[:2], ["merchants", "transactions"], build_docs=False)
    first, second = out[D[0]]["transactions"], out[D[1]]["transactions"]
    assert first.data_docs_path is not None and "-part1of6/" in first.data_docs_path
    assert second.data_docs_path is not None and "-part3of6/" in second.data_docs_path
    assert first.batches_docs_path == second.batches_docs_path  # one batches result for the dates


def test_a_refused_date_is_what_the_run_ends_with() -> None:
    """`asof run` on a date its budget refuses: the last error line names the date and the refusal;
    the monitoring breaches that follow from it (no gold for the date) come after it, not instead."""
    from tests.kill_harness import harness

    day = dt.date(2024, 1, 1)
    h = harness()
    home = h.new_home("refused", h.landing(day, day, "200x400", 5))
    run = h.asof(home, "run", "--date", day.isoformat(), env={"ASOF_MEMORY_BUDGET": "900"})
    out = run.output()
    assert run.rc not in (0, None), out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("asof: error:")]
    assert errors, out[-3000:]
    assert errors[-1].startswith(f"asof: error: {day} failed:"), errors[-1]
    assert "ASOF_MEMORY_BUDGET" in errors[-1], errors[-1]


def test_dates_read_back_slice_by_slice_give_every_table_the_same_rows(
    landed: Path, unsliced: dict, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation of dates too big to hold (flows/validation/streamed.py), forced on the ten dates:
    bronze read back in slices of 5 rows for the writes and 7 for GE, in scrambled order (delta-rs
    keeps no row order within a file), positions found by key.
    Silver, quarantine (with reasons) and ops/validations are the whole-date run's, row for row."""
    copy_lake(landed, home)
    used = force_read_back(monkeypatch)
    batches = streamed.bronze_batches

    def scrambled(dset, flt, schema):  # bronze read back in no particular order, 3-row batches
        got = [b.slice(i, 3) for b in batches(dset, flt, schema) for i in range(0, b.num_rows, 3)]
        return iter(got[1::2][::-1] + got[::2])

    monkeypatch.setattr(streamed, "bronze_batches", scrambled)
    outs = stage.validate_dates(D, build_docs=False)
    assert "transactions:True" in used and "chargebacks:True" in used, used
    got = assert_same_validation(outs, unsliced)
    assert got["quarantine/transactions"], "the data has quarantined rows"


def test_hash_collisions_and_keys_delivered_again_in_a_later_run_change_no_verdict(
    landed: Path, unsliced: dict, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """First delivery wins compares 64-bit key hashes first (flows/validation/delivery.py). Forced
    to collide (every key in one of three buckets), the verdicts are still the keys' own: the
    first three dates validated whole, then the other seven read back slice by slice against
    them (day 3 re-delivers day 1's keys, now in earlier silver; day 8 re-delivers rejected day
    7's keys, which day 9's chargebacks reference), slices of 5 and 7 rows cutting through the
    duplicates. Every table ends as the one ten-date run's."""
    copy_lake(landed, home)
    real = frames.hash_text
    monkeypatch.setattr(frames, "hash_text", lambda values: real(values) % np.uint64(3))
    first = stage.validate_dates(D[:3], build_docs=False)
    used = force_read_back(monkeypatch)
    later = stage.validate_dates(D[3:], build_docs=False)
    assert "transactions:True" in used and "chargebacks:True" in used, used
    assert_same_validation(
        {**first, **later}, unsliced, ("status", "rows_silver", "rows_quarantined", "reasons", "message")
    )


def test_read_back_keeps_what_the_whole_path_computes(landed: Path, home: Path) -> None:
    """What the pass over bronze keeps of every row (batch dates, hashed keys, amount_usd, the
    reference columns' distinct values) and the row labels computed slice by slice are the whole
    path's, row for row."""
    copy_lake(landed, home)
    fx = load_fx_rates()
    for name in ("merchants", "transactions", "chargebacks"):
        source, contract = get_source(name), load_contract(name)
        whole = prepare(source, contract, history.bronze_rows(source, D))
        part = streamed.read(source, contract, D, fx)
        assert part is not None, name
        assert np.array_equal(part.codes, whole.codes), name
        assert np.array_equal(part.key_hashes().hashes, whole.key_hashes().hashes), name
        assert np.array_equal(part.key_hashes().present, whole.key_hashes().present), name
        if "drift" in contract.batch:
            assert np.array_equal(frames.amount_usd(part, fx), frames.amount_usd(whole, fx), equal_nan=True)
        for column, values in (part.distinct or {}).items():
            want = pc.unique(pc.drop_null(whole.typed[column].combine_chunks()))
            assert sorted(values.to_pylist()) == sorted(want.to_pylist()), (name, column)
        labels = frames.row_labels(whole)
        for where, rows in part.slices(3):
            assert list(frames.slice_labels(part, where, rows)) == list(labels[where]), name


def test_row_labels_count_positions_where_two_files_share_line_numbers() -> None:
    """`repeated_days` of a date read back: only a date whose files repeat a line number."""
    base = day_code(dt.date(2024, 1, 1))
    rows = [(0, 0, 1), (0, 0, 2), (0, 1, 1), (1, 0, 1), (1, 1, 2), (2, 0, 5)]  # (day, file, line)
    key = np.array([(d << 48) | (f << 32) | n for d, f, n in rows], dtype=np.int64)
    assert streamed.repeated_days(key, base).tolist() == [base]
