"""Partial deliveries (flows.ingest.completeness): a file cut short makes its date wait as `partial`;
a file whose only flaw is a missing final line terminator is whole and ingested; the operator or
upstream can make either stricter or looser."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.ingest.completeness import cut_short
from flows.ingest.stage import TAIL_BYTES, ingest, read_file_records
from flows.sources import get_source
from flows.storage import lake
from flows.validation.history import delivery_info
from tests.test_ingest import D, bronze, csv_text, land

CUT = csv_text(5)[:-20]  # five rows, the last cut mid-record with no newline


def test_by_default_a_cut_file_makes_its_date_wait(home: Path) -> None:
    """Issue 23 item 2: the half-written file is not a batch; the date waits, naming the file."""
    land(home, "transactions", D, "transactions.csv", CUT)
    out = ingest("transactions", D)
    assert out.status == "partial" and out.rows == 0
    assert "landing/transactions/2024-03-01/transactions.csv ends mid-record" in out.message
    assert bronze("transactions") == []


def test_a_whole_last_record_without_its_line_terminator_is_ingested(home: Path) -> None:
    land(home, "transactions", D, "transactions.csv", csv_text(5).rstrip("\n"))
    out = ingest("transactions", D)
    assert out.status == "succeeded" and out.rows == 5 and len(bronze("transactions")) == 5
    assert "has no line terminator after its last record" in out.message


def test_ingest_policy_keeps_a_cut_file_and_notes_it(home: Path, monkeypatch) -> None:
    """`ASOF_PARTIAL_FILES=ingest`: bronze keeps what arrived, the cut record is judged as a row."""
    monkeypatch.setenv("ASOF_PARTIAL_FILES", "ingest")
    land(home, "transactions", D, "transactions.csv", CUT)
    out = ingest("transactions", D)
    assert out.status == "succeeded" and out.rows == 5
    assert "ends mid-record with no line terminator" in out.message
    assert len(bronze("transactions")) == 5


def test_wait_policy_holds_even_a_whole_unterminated_file(home: Path, monkeypatch) -> None:
    monkeypatch.setenv("ASOF_PARTIAL_FILES", "wait")
    land(home, "transactions", D, "transactions.csv", csv_text(5).rstrip("\n"))
    assert ingest("transactions", D).status == "partial"


@pytest.mark.parametrize(
    ("source", "whole", "cut_at", "why"),
    [
        ("transactions", csv_text(2), -2, "event_time '2024-03-01T10:00:00' has no time zone"),
        ("transactions", csv_text(2), -3, "event_time '2024-03-01T10:00:0' is not a timestamp"),
        ("transactions", csv_text(2), -21, "its last record ends right after a delimiter"),
        ("transactions", csv_text(2), -30, "its last record has 4 fields, the header 7"),
        ("merchants", "merchant_id,name,mcc,country,risk_tier\n1,A,5411,US,medium\n", -4, "risk_tier 'med'"),
        # the header's order, not the contract's: country is last here
        ("merchants", "merchant_id,name,mcc,risk_tier,country\n1,A,5411,low,US\n", -2, "country 'U'"),
        ("customers", '{"customer_id": 1, "op": "c"}\n{"customer_id": 2}\n', -3, "not a whole JSON"),
    ],
)
def test_what_makes_a_last_record_cut(source: str, whole: str, cut_at: int, why: str) -> None:
    data = whole.encode()
    assert cut_short(data, get_source(source)) is None
    unterminated = cut_short(data.rstrip(b"\n"), get_source(source))
    assert unterminated is not None and not unterminated.certain
    cut = cut_short(data[:cut_at], get_source(source))
    assert cut is not None and cut.certain and why in cut.reason, cut


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 40), keep=st.floats(0.05, 0.999))
def test_the_tail_judges_as_the_whole_content_does(rows: int, keep: float) -> None:
    """The streamed path judges a big file from its last bytes only: same verdict as the whole."""
    source = get_source("transactions")
    text = csv_text(rows).encode()
    body = text * max(1, (2 * TAIL_BYTES) // len(text))
    data = body[: max(len(body) - int(len(text) * (1 - keep)) % len(text), 1)]
    header = text.split(b"\n", 1)[0].decode().split(",")
    whole, tail = cut_short(data, source), cut_short(data[-TAIL_BYTES:], source, header)
    assert (whole is None) == (tail is None)
    if whole is not None:
        assert whole.certain == tail.certain and whole.reason.split(":")[0] == tail.reason.split(":")[0]


def test_a_partial_date_waits_whole_until_the_file_is_complete(home: Path) -> None:
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


def test_a_quoted_field_that_never_closes_is_cut_a_stray_quote_is_not(home: Path) -> None:
    header, row = csv_text(1).splitlines()
    land(home, "transactions", D, "t.csv", f'{header}\n{row}\nt9,1,2,"10.\n')
    assert ingest("transactions", D).status == "partial"
    land(home, "transactions", D, "t.csv", f'{header}\n{row}\nt9,1,2,10"5,USD,web,2024-03-01T10:00:00Z\n')
    assert ingest("transactions", D).status == "succeeded"


def test_success_marker_vouches_for_the_files(home: Path) -> None:
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
    with pytest.raises(RuntimeError, match="ASOF_PARTIAL_FILES=.maybe.: expected auto, wait or ingest"):
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
