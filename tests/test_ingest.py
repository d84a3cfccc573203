"""Ingest keeps every landed row, says exactly what went wrong with a file, and replaces only its
own `_batch_date` partition."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path

import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.ingest.stage import ingest, ingest_dates, read_file_records
from flows.storage import lake

D = dt.date(2024, 3, 1)
HEADER = "txn_id,customer_id,merchant_id,amount,currency,channel,event_time"
ROW = "t{i},1,2,10.00,USD,web,2024-03-01T10:00:00Z"


def land(home: Path, source: str, day: dt.date, name: str, content: bytes | str) -> Path:
    folder = home / "landing" / source / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def bronze(source: str, day: dt.date = D) -> list[dict]:
    tbl = lake.read("bronze", source, filter=lake.date_filter("_batch_date", [day]))
    return sorted(tbl.to_pylist(), key=lambda r: (r["_source_file"], r["_row_number"]))


def csv_text(n: int) -> str:
    return HEADER + "\n" + "\n".join(ROW.format(i=i) for i in range(n)) + "\n"


def test_clean_csv_rows_and_lineage(home: Path) -> None:
    land(home, "transactions", D, "transactions.csv", csv_text(5))
    out = ingest("transactions", D)
    assert out.status == "succeeded" and out.rows == 5
    rows = bronze("transactions")
    assert [r["txn_id"] for r in rows] == [f"t{i}" for i in range(5)]
    assert {r["_batch_date"] for r in rows} == {D}
    assert [r["_row_number"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["_source_file"] == "landing/transactions/2024-03-01/transactions.csv" for r in rows)
    assert all(r["amount"] == "10.00" and r["_parse_error"] is None for r in rows)


def test_reingest_replaces_partition_and_leaves_other_dates(home: Path) -> None:
    other = D + dt.timedelta(days=1)
    land(home, "transactions", D, "a.csv", csv_text(3))
    land(home, "transactions", other, "a.csv", csv_text(2))
    ingest("transactions", D)
    ingest("transactions", other)
    ingest("transactions", D)
    ingest("transactions", D)
    assert len(bronze("transactions")) == 3
    assert len(bronze("transactions", other)) == 2
    # a corrected re-delivery replaces the batch, not adds to it
    land(home, "transactions", D, "a.csv", csv_text(4))
    ingest("transactions", D)
    assert len(bronze("transactions")) == 4
    assert len(bronze("transactions", other)) == 2


def test_every_file_in_the_batch_folder_is_read_whatever_its_name(home: Path) -> None:
    land(home, "transactions", D, "part-0001.csv", csv_text(2))
    land(home, "transactions", D, "export_2024.txt", csv_text(3))
    land(home, "transactions", D, ".partial.tmp", "garbage")  # in-flight upload: ignored
    land(home, "transactions", D, "_SUCCESS", "")  # marker: ignored
    out = ingest("transactions", D)
    assert out.rows == 5 and len(out.files) == 2
    assert {r["_source_file"].rsplit("/", 1)[1] for r in bronze("transactions")} == {
        "part-0001.csv",
        "export_2024.txt",
    }


def test_missing_batch_is_not_zero_rows(home: Path) -> None:
    out = ingest("merchants", D)
    assert out.status == "not_delivered"
    assert "landing/merchants/2024-03-01" in out.message
    recs = read_file_records(D, "merchants")
    assert recs[0]["status"] == "not_delivered"


@pytest.mark.parametrize(
    "content, expect",
    [
        (b"", "empty (0 bytes)"),
        (b"1,2,3\n4,5,6\n", "no header"),
        ((HEADER + ",amount\nt1,1,2,3,USD,web,2024-03-01T00:00:00Z,4\n").encode(), "duplicate column"),
    ],
)
def test_file_level_damage_is_explicit_and_keeps_lines(home: Path, content: bytes, expect: str) -> None:
    land(home, "transactions", D, "t.csv", content)
    out = ingest("transactions", D)
    assert out.status == "malformed"
    assert expect in out.message
    rows = bronze("transactions")
    landed_lines = [
        line for line in content.decode().splitlines()[(1 if b"amount" in content else 0) :] if line
    ]
    assert len(rows) == len(landed_lines)
    assert all(r["_parse_error"] for r in rows)


def test_directory_in_batch_folder_is_reported(home: Path) -> None:
    (home / "landing" / "transactions" / D.isoformat() / "nested.csv").mkdir(parents=True)
    out = ingest("transactions", D)
    assert out.status == "malformed" and "is a directory" in out.message


def test_bom_latin1_gzip_quoted_newline(home: Path) -> None:
    body = (
        HEADER + '\nt1,1,2,1.00,EUR,web,2024-03-01T00:00:00Z\n"t2\nx",1,2,2.00,EUR,web,2024-03-01T00:00:00Z\n'
    )
    land(home, "transactions", D, "a.csv", b"\xef\xbb\xbf" + body.encode())
    land(home, "transactions", D, "b.csv", gzip.compress(csv_text(2).encode()))
    land(home, "transactions", D, "c.csv", (HEADER + "\ncaf\xe9,1,2,1.00,EUR,web,x\n").encode("latin-1"))
    out = ingest("transactions", D)
    assert out.status == "succeeded", out.message
    rows = bronze("transactions")
    assert [r["txn_id"] for r in rows] == ["t1", "t2\nx", "t0", "t1", "café"]
    recs = {Path(r["file"]).name: r for r in read_file_records(D, "transactions")}
    assert "byte-order mark" in recs["a.csv"]["message"]
    assert "gzip" in recs["b.csv"]["message"]
    assert recs["c.csv"]["encoding"] == "latin-1" and "Latin-1" in recs["c.csv"]["message"]


def test_malformed_rows_kept_raw_with_reason_and_extra_columns_kept(home: Path) -> None:
    text = (
        HEADER + ",device\nt1,1,2,1.00,USD,web,2024-03-01T00:00:00Z,ios\nt2,1,2\n\nt3,1,2,1,USD,web,x,y,z\n"
    )
    land(home, "transactions", D, "a.csv", text)
    out = ingest("transactions", D)
    rows = bronze("transactions")
    assert out.rows == 3 and len(rows) == 3  # the blank line is not a row
    assert json.loads(rows[0]["_extra"]) == {"device": "ios"}
    assert rows[1]["_raw"] == "t2,1,2" and "expected 8 fields, got 3" in rows[1]["_parse_error"]
    assert rows[2]["_raw"] == "t3,1,2,1,USD,web,x,y,z"
    assert read_file_records(D, "transactions")[0]["header"][-1] == "device"


def test_missing_column_reads_as_null_and_header_is_recorded(home: Path) -> None:
    land(
        home,
        "transactions",
        D,
        "a.csv",
        "txn_id,customer_id,merchant_id,amt,currency,event_time\nt1,1,2,3,USD,z\n",
    )
    ingest("transactions", D)
    row = bronze("transactions")[0]
    assert row["amount"] is None and row["channel"] is None
    assert json.loads(row["_extra"]) == {"amt": "3"}
    assert "amount" not in read_file_records(D, "transactions")[0]["header"]


def test_jsonl_customers_bad_lines_and_empty_file(home: Path) -> None:
    good = {
        "customer_id": 7,
        "op": "c",
        "updated_at": "2024-03-01T00:00:00Z",
        "country": "FR",
        "kyc_level": 2,
        "signup_date": "2023-05-01",
        "vip": True,
    }
    land(home, "customers", D, "c.jsonl", json.dumps(good) + "\n{not json\n[1,2]\n")
    out = ingest("customers", D)
    rows = bronze("customers")
    assert out.rows == 3
    assert rows[0]["customer_id"] == "7" and rows[0]["kyc_level"] == "2"
    assert json.loads(rows[0]["_extra"]) == {"vip": True}
    assert "not valid JSON" in rows[1]["_parse_error"] and rows[1]["_raw"] == "{not json"
    assert "expected a JSON object" in rows[2]["_parse_error"]
    empty_day = D + dt.timedelta(days=1)
    land(home, "customers", empty_day, "c.jsonl", b"")
    out = ingest("customers", empty_day)
    assert out.status == "succeeded" and out.rows == 0


def test_header_only_csv_is_zero_rows_not_malformed(home: Path) -> None:
    land(home, "chargebacks", D, "cb.csv", "txn_id,chargeback_time,reason_code\n")
    out = ingest("chargebacks", D)
    assert out.status == "succeeded" and out.rows == 0
    assert lake.exists("bronze", "chargebacks")


def test_ingest_files_table_replaced_per_source_and_date(home: Path) -> None:
    land(home, "transactions", D, "a.csv", csv_text(1))
    land(home, "chargebacks", D, "cb.csv", "txn_id,chargeback_time,reason_code\n")
    for _ in range(3):
        ingest("transactions", D)
        ingest("chargebacks", D)
    recs = read_file_records(D)
    assert sorted(r["source"] for r in recs) == ["chargebacks", "transactions"]
    tbl = lake.read("ops", "ingest_files")
    assert pc.sum(pc.equal(tbl["source"], "transactions")).as_py() == 1


def test_a_chunk_of_dates_is_one_commit_equal_to_date_by_date(home: Path, tmp_path: Path) -> None:
    """`ingest_dates` writes the same bronze rows and file records as one `ingest` per date, in one
    Delta commit per table; dates outside the chunk are not touched."""
    days = [D + dt.timedelta(days=i) for i in range(4)]
    for i, day in enumerate(days):
        land(home, "transactions", day, "a.csv", csv_text(i + 1))
    land(home, "transactions", days[2], "b.csv", csv_text(2))
    outside = D - dt.timedelta(days=1)
    land(home, "transactions", outside, "a.csv", csv_text(7))
    ingest("transactions", outside)

    def lake_rows() -> tuple[list[dict], list[dict]]:
        drop = ("_ingested_at", "ingested_at")
        rows = [
            {k: v for k, v in r.items() if k not in drop} for d in days for r in bronze("transactions", d)
        ]
        recs = [{k: v for k, v in r.items() if k not in drop} for d in days for r in read_file_records(d)]
        return rows, recs

    for day in days:
        ingest("transactions", day)
    one_by_one = lake_rows()
    before = lake.version("bronze", "transactions")
    files_before = lake.version("ops", "ingest_files")
    out = ingest_dates("transactions", days)
    assert lake.version("bronze", "transactions") == before + 1
    assert lake.version("ops", "ingest_files") == files_before + 1
    assert lake_rows() == one_by_one
    assert [out[d].rows for d in days] == [1, 2, 5, 4]
    assert {out[d].bronze_version for d in days} == {before + 1}
    assert len(bronze("transactions", outside)) == 7


def test_a_date_that_cannot_be_read_fails_alone(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error reading one date's files fails that date; the chunk's other dates are
    written, and the failed date's earlier bronze partition is left as it was."""
    from flows.ingest import stage as ingest_module

    days = [D, D + dt.timedelta(days=1)]
    land(home, "transactions", days[0], "a.csv", csv_text(3))
    bad = land(home, "transactions", days[1], "a.csv", csv_text(2))
    ingest("transactions", days[1])
    bad.write_text(csv_text(6))
    real = ingest_module.read_landed

    def broken(path: Path, source, check_cut: bool = True):
        if path == bad:
            raise OSError("device not ready")
        return real(path, source, check_cut)

    monkeypatch.setattr(ingest_module, "read_landed", broken)
    out = ingest_dates("transactions", days)
    assert out[days[0]].status == "succeeded" and len(bronze("transactions", days[0])) == 3
    assert out[days[1]].status == "failed" and out[days[1]].message == "OSError: device not ready"
    assert len(bronze("transactions", days[1])) == 2  # the earlier ingest of that date stands
    with pytest.raises(RuntimeError, match="device not ready"):
        ingest("transactions", days[1])


def _slow(data: bytes, source_name: str):
    from flows.ingest.stage import FileRecord, _decode, _parse_csv, _Rows
    from flows.sources import get_source

    src = get_source(source_name)
    rows, rec = _Rows(src), FileRecord(file="x", status="ok")
    _parse_csv(_decode(data)[0], src, rows, rec)
    return rows.to_table()


_cell = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.lists(_cell, min_size=3, max_size=3), max_size=12),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
)
def test_fast_and_careful_csv_readers_agree(rows: list[list[str]], eol: str, bom: bool) -> None:
    """The pyarrow fast path must produce exactly what the line-by-line reader produces."""
    import io

    from flows.ingest.stage import FileRecord, _parse_csv_fast
    from flows.sources import get_source

    buf = io.StringIO()
    import csv as _csv

    w = _csv.writer(buf, lineterminator=eol)
    w.writerow(["txn_id", "chargeback_time", "reason_code"])
    w.writerows(rows)
    data = (b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode()
    fast = _parse_csv_fast(data, get_source("chargebacks"), FileRecord(file="x", status="ok"))
    slow = _slow(data, "chargebacks")
    if fast is None:
        return  # the careful reader took it: nothing to compare
    assert fast.to_pylist() == slow.to_pylist()


def test_fast_path_taken_for_clean_generated_files(tmp_path: Path) -> None:
    from flows.ingest.stage import FileRecord, _parse_csv_fast
    from flows.sources import get_source
    from flows.upstream import simulate

    simulate.generate(tmp_path, D, D, simulate.parse_scale("300x600"), seed=3)
    for source in ("transactions", "merchants", "chargebacks"):
        path = next((tmp_path / source / D.isoformat()).iterdir())
        data = path.read_bytes()
        fast = _parse_csv_fast(data, get_source(source), FileRecord(file="x", status="ok"))
        assert fast is not None, source
        assert fast.to_pylist() == _slow(data, source).to_pylist()
