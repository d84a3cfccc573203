"""A date is written to the lake as a stream of record batches in one commit (flows/storage/lake.py
`replace_stream`), and ingest reads a landed CSV batch by batch into it (flows/ingest/stage.py
`CsvStream`): issue 23 item 7, a day bigger than memory. The stream must change nothing: the same
rows as one table, nothing committed when the stream breaks, a retried commit reads it afresh."""

from __future__ import annotations

import datetime as dt
import gzip
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake.exceptions import CommitFailedError

from flows.ingest import stage as ingest
from flows.ingest.stage import ingest_dates
from flows.storage import lake

D = dt.date(2024, 3, 1)
SCHEMA = pa.schema([pa.field("_batch_date", pa.date32()), pa.field("v", pa.int64())])
HEADER = "txn_id,customer_id,merchant_id,amount,currency,channel,event_time"


def _rows(day: dt.date, n: int, base: int = 0) -> pa.Table:
    return pa.table({"_batch_date": [day] * n, "v": list(range(base, base + n))}, schema=SCHEMA)


def _stream(table: pa.Table, size: int = 3) -> lake.Batches:
    return lambda: iter(table.to_batches(max_chunksize=size))


def _values(day: dt.date) -> list[int]:
    return sorted(
        lake.read("ops", "streamed", filter=lake.date_filter("_batch_date", [day]))["v"].to_pylist()
    )


def test_a_stream_replaces_a_partition_like_a_table(home: Path) -> None:
    other = D + dt.timedelta(days=1)
    lake.replace(
        "ops", "streamed", _rows(other, 4), lake.date_predicate("_batch_date", other), ["_batch_date"]
    )
    lake.replace("ops", "streamed", _rows(D, 5), lake.date_predicate("_batch_date", D), ["_batch_date"])
    version = lake.replace_stream(
        "ops",
        "streamed",
        _stream(_rows(D, 10, 100)),
        SCHEMA,
        lake.date_predicate("_batch_date", D),
        ["_batch_date"],
    )
    assert version == lake.version("ops", "streamed") == 2  # one commit
    assert _values(D) == list(range(100, 110))
    assert _values(other) == list(range(4))


def test_a_stream_that_breaks_commits_nothing(home: Path) -> None:
    lake.replace("ops", "streamed", _rows(D, 5), lake.date_predicate("_batch_date", D), ["_batch_date"])

    def broken() -> Iterator[pa.RecordBatch]:
        yield from _rows(D, 6, 100).to_batches(max_chunksize=3)
        raise OSError("landing file vanished")

    with pytest.raises(Exception, match="landing file vanished"):
        lake.replace_stream(
            "ops", "streamed", broken, SCHEMA, lake.date_predicate("_batch_date", D), ["_batch_date"]
        )
    assert lake.version("ops", "streamed") == 0
    assert _values(D) == list(range(5))


def test_a_retried_commit_reads_the_stream_again(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = lake.write_deltalake
    attempts: list[int] = []

    def conflicting(target, data, **kw):
        attempts.append(1)
        if len(attempts) == 1:
            data.read_all()  # the first attempt consumed its stream, then lost the race
            raise CommitFailedError("conflict")
        return real(target, data, **kw)

    monkeypatch.setattr(lake, "write_deltalake", conflicting)
    monkeypatch.setattr(lake.time, "sleep", lambda _s: None)
    lake.replace_stream(
        "ops",
        "streamed",
        _stream(_rows(D, 7)),
        SCHEMA,
        lake.date_predicate("_batch_date", D),
        ["_batch_date"],
    )
    assert len(attempts) == 2
    assert _values(D) == list(range(7))


def _land(home: Path, source: str, day: dt.date, name: str, content: bytes) -> None:
    folder = home / "landing" / source / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(content)


def _bronze() -> list[dict]:
    rows = lake.read("bronze", "transactions").drop_columns(["_ingested_at"]).to_pylist()
    return sorted(rows, key=lambda r: (r["_batch_date"], r["_source_file"], r["_row_number"]))


def test_ingest_in_tiny_csv_blocks_writes_the_same_bronze(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files streamed in blocks of a few hundred bytes (many record batches, rows numbered across
    them) give bronze row for row as in one block: plain, gzip, a byte-order mark, blanks, quoted
    newlines (not `\r\n` inside quotes: pyarrow drops the `\n` of one that a block boundary cuts, in
    `read_csv` as in the stream), a missing column, two dates and two files in one commit; a
    broken line sends its file to the line-by-line reader as before."""

    def text(eol: str) -> str:
        rows = [
            f't{i},{i % 7 or ""},m{i % 3},{i}.50,USD,"we\nb",2024-03-01T10:{i % 60:02d}:00Z'
            for i in range(300)
        ]
        return eol.join([HEADER, *rows]) + eol

    _land(home, "transactions", D, "a.csv", text("\n").encode())
    _land(home, "transactions", D, "b.csv", gzip.compress(b"\xef\xbb\xbf" + text("\r\n").encode()))
    no_channel = "\n".join(
        [",".join(c for c in HEADER.split(",") if c != "channel")]
        + [f"u{i},1,m,1.00,EUR,2024-03-02T00:00:00Z" for i in range(50)]
    )
    _land(home, "transactions", D + dt.timedelta(days=1), "c.csv", (no_channel + "\n").encode())
    _land(
        home,
        "transactions",
        D + dt.timedelta(days=1),
        "d.csv",
        (HEADER + "\nx,1\ny,1,1,1,USD,web,2024-03-02T00:00:00Z\n").encode(),
    )
    days = [D, D + dt.timedelta(days=1)]
    whole = ingest_dates("transactions", days)
    want = _bronze()
    monkeypatch.setattr(ingest, "CSV_BLOCK_BYTES", 256)
    streamed = ingest_dates("transactions", days)
    assert _bronze() == want
    assert len(want) == 300 + 300 + 50 + 2
    for d in days:
        assert streamed[d].to_dict() | {"bronze_version": None} == whole[d].to_dict() | {
            "bronze_version": None
        }
