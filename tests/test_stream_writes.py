"""A date is written to the lake as a stream of record batches in one commit (flows/lake.py
`replace_stream`), and ingest reads a landed CSV batch by batch into it (flows/ingest.py
`CsvStream`): issue 23 item 7, a day bigger than memory. The stream must change nothing: the same
rows as one table, nothing committed when the stream breaks, a retried commit reads it afresh."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake.exceptions import CommitFailedError

from flows import lake

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
