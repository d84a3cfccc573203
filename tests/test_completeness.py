"""Partial deliveries (flows.ingest.completeness): a file cut short is noted by default and, where the
operator or upstream asks for it, makes its date wait as `partial` instead of becoming a batch."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest

from flows.ingest.stage import ingest, read_file_records
from flows.sources import get_source
from flows.storage import lake
from flows.validation.history import delivery_info
from tests.test_ingest import D, bronze, csv_text, land

CUT = csv_text(5)[:-20]  # five rows, the last cut mid-record with no newline


def test_by_default_a_cut_file_is_ingested_and_noted(home: Path) -> None:
    """The contract's never-block rule: bronze keeps what arrived, the record says it is cut."""
    land(home, "transactions", D, "transactions.csv", CUT)
    out = ingest("transactions", D)
    assert out.status == "succeeded" and out.rows == 5
    assert "ends mid-record with no line terminator" in out.message
    assert len(bronze("transactions")) == 5


def test_waiting_policy_holds_the_whole_date_until_the_file_is_complete(home: Path, monkeypatch) -> None:
    monkeypatch.setenv("ASOF_PARTIAL_FILES", "wait")
    land(home, "transactions", D, "a.csv", csv_text(3))  # complete, but its date is not
    land(home, "transactions", D, "b.csv", CUT)
    out = ingest("transactions", D)
    assert out.status == "partial" and out.rows == 0
    assert "landing/transactions/2024-03-01/b.csv ends mid-record" in out.message
    assert bronze("transactions") == []
    records = read_file_records(D, "transactions")
    assert {r["status"] for r in records} == {"partial"} and all(r["rows"] == 0 for r in records)
    info = delivery_info(get_source("transactions"), D, lake.read("bronze", "transactions"), records)
    assert not info.delivered and info.message.startswith("partial delivery, waiting: ")
    assert "b.csv" in info.message

    land(home, "transactions", D, "b.csv", csv_text(5))  # the complete delivery replaces it
    out = ingest("transactions", D)
    assert out.status == "succeeded" and out.rows == 8 and len(bronze("transactions")) == 8


def test_a_quoted_field_that_never_closes_is_cut_a_stray_quote_is_not(home: Path, monkeypatch) -> None:
    monkeypatch.setenv("ASOF_PARTIAL_FILES", "wait")
    header, row = csv_text(1).splitlines()
    land(home, "transactions", D, "t.csv", f'{header}\n{row}\nt9,1,2,"10.\n')
    assert ingest("transactions", D).status == "partial"
    land(home, "transactions", D, "t.csv", f'{header}\n{row}\nt9,1,2,10"5,USD,web,2024-03-01T10:00:00Z\n')
    assert ingest("transactions", D).status == "succeeded"


def test_success_marker_vouches_for_the_files(home: Path, monkeypatch) -> None:
    monkeypatch.setenv("ASOF_PARTIAL_FILES", "wait")
    land(home, "transactions", D, "t.csv", CUT)
    land(home, "transactions", D, "_SUCCESS", "")
    out = ingest("transactions", D)
    assert out.status == "succeeded" and out.rows == 5  # the producer says it is whole


def _manifest(home: Path, files: dict) -> None:
    land(home, "transactions", D, "_manifest.json", json.dumps({"files": files}))


def test_manifest_decides_completeness(home: Path) -> None:
    full = csv_text(4)
    sha = hashlib.sha256(full.encode()).hexdigest()
    land(home, "transactions", D, "t.csv", full[:-30])  # still being written
    _manifest(home, {"t.csv": {"sha256": sha, "rows": 4}})
    out = ingest("transactions", D)
    assert out.status == "partial" and "t.csv: content differs from _manifest.json" in out.message

    land(home, "transactions", D, "t.csv", full)
    _manifest(home, {"t.csv": {"sha256": sha, "rows": 4}, "u.csv": {}})
    out = ingest("transactions", D)
    assert out.status == "partial" and "lists u.csv, which has not landed" in out.message

    _manifest(home, {"t.csv": {"sha256": sha, "rows": 5}})
    assert "t.csv: 4 rows, _manifest.json says 5" in ingest("transactions", D).message

    _manifest(home, {"t.csv": {"sha256": sha, "rows": 4}})
    out = ingest("transactions", D)
    assert out.status == "succeeded" and out.rows == 4

    land(home, "transactions", D, "stray.csv", csv_text(1))
    out = ingest("transactions", D)
    assert out.status == "malformed" and "stray.csv is not listed in _manifest.json" in out.message

    land(home, "transactions", D, "_manifest.json", "{not json")
    out = ingest("transactions", D)
    assert out.status == "partial" and "_manifest.json is unreadable" in out.message


def test_required_marker(home: Path, monkeypatch) -> None:
    monkeypatch.setenv("ASOF_REQUIRE_COMPLETION_MARKER", "1")
    land(home, "transactions", D, "t.csv", csv_text(2))
    out = ingest("transactions", D)
    assert out.status == "partial" and "has no _SUCCESS or _manifest.json" in out.message
    land(home, "transactions", D, "_SUCCESS", "")
    assert ingest("transactions", D).status == "succeeded"


def test_a_bad_policy_value_is_an_error(home: Path, monkeypatch) -> None:
    monkeypatch.setenv("ASOF_PARTIAL_FILES", "maybe")
    land(home, "transactions", D, "t.csv", CUT)
    with pytest.raises(RuntimeError, match="ASOF_PARTIAL_FILES=.maybe.: expected ingest or wait"):
        ingest("transactions", D)


def test_a_partial_date_has_its_own_status_word() -> None:
    from flows.operations.runs import date_status

    day = dt.date(2024, 3, 1)
    recs = [
        {"execution_date": day, "stage": "ingest", "source": "transactions", "status": "partial"},
        {"execution_date": day, "stage": "validate", "source": "transactions", "status": "not_delivered"},
    ]
    assert date_status(recs) == {day: "partial"}


def test_a_symlink_out_of_the_landing_area_is_not_read(home: Path, tmp_path_factory, monkeypatch) -> None:
    """A landed symlink to a file outside the landing area is refused (malformed, named), unless
    its directory is an allowed root (issue 23 item 5); a symlink inside the area is fine."""
    outside = tmp_path_factory.mktemp("elsewhere")
    secret = outside / "secret.csv"
    secret.write_text(csv_text(2))
    folder = home / "landing" / "transactions" / D.isoformat()
    folder.mkdir(parents=True)
    (folder / "t.csv").symlink_to(secret)
    out = ingest("transactions", D)
    assert out.status == "malformed" and out.rows == 0
    assert f"leads to {secret}, outside the landing area" in out.message
    assert bronze("transactions") == []

    monkeypatch.setenv("ASOF_LANDING_ALLOWED_ROOTS", str(outside))
    out = ingest("transactions", D)
    assert out.status == "succeeded" and out.rows == 2

    monkeypatch.delenv("ASOF_LANDING_ALLOWED_ROOTS")
    inside = home / "landing" / "archive.csv"
    inside.write_text(csv_text(3))
    (folder / "t.csv").unlink()
    (folder / "t.csv").symlink_to(inside)
    assert ingest("transactions", D).rows == 3
