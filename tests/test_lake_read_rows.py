"""`lake.read_rows` reads what `lake.read` reads, and `asof status` stays off pandas and the heavy
stack (the import is what made it slow: pyarrow.dataset imports pandas)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from flows.operations import runs
from flows.operations.runs import StageRecord
from flows.storage import lake

REPO = Path(__file__).resolve().parent.parent


def test_read_rows_equals_read_across_appends_and_schema_growth(home: Path) -> None:
    narrow = pa.schema([("k", pa.int64()), ("v", pa.string())])
    wide = pa.schema([("k", pa.int64()), ("v", pa.string()), ("w", pa.float64())])
    lake.append("ops", "small", pa.table({"k": [1, 2], "v": ["a", None]}, schema=narrow), schema=narrow)
    lake.append("ops", "small", pa.table({"k": [3], "v": ["c"]}, schema=narrow), schema=narrow)
    lake.table("ops", "small").alter.add_columns([lake_field("w", "double")])
    lake.append("ops", "small", pa.table({"k": [4], "v": ["d"], "w": [0.5]}, schema=wide), schema=wide)
    lake.delete("ops", "small", "k = 2")  # a rewrite: the removed file must not be read
    got = sorted(lake.read_rows("ops", "small"), key=lambda r: r["k"])
    assert got == sorted(lake.read("ops", "small").to_pylist(), key=lambda r: r["k"])
    assert got == [
        {"k": 1, "v": "a", "w": None},
        {"k": 3, "v": "c", "w": None},
        {"k": 4, "v": "d", "w": 0.5},
    ]
    assert list(lake.read_rows("ops", "small", columns=["w", "k"])[0]) == ["w", "k"]


def lake_field(name: str, type_: str):
    from deltalake.schema import Field

    return Field(name, type_, nullable=True)


def test_read_rows_converts_dates_and_times_as_pyarrow_does(home: Path) -> None:
    schema = pa.schema(
        [
            ("d", pa.date32()),
            ("t", pa.timestamp("us", tz="UTC")),
            ("n", pa.timestamp("us")),
            ("s", pa.string()),
        ]
    )
    when = dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.UTC)
    data = pa.table(
        {
            "d": [dt.date(2024, 2, 29), None, dt.date(1969, 12, 31)],
            "t": [when, None, dt.datetime(1970, 1, 1, tzinfo=dt.UTC)],
            "n": [when.replace(tzinfo=None), dt.datetime(1999, 1, 1), None],
            "s": ["a", None, "c"],
        },
        schema=schema,
    )
    lake.append("ops", "typed", data, schema=schema)
    assert lake.read_rows("ops", "typed") == lake.read("ops", "typed").to_pylist()


def test_read_rows_hands_partitioned_tables_to_read(home: Path) -> None:
    schema = pa.schema([("_batch_date", pa.date32()), ("n", pa.int64())])
    data = pa.table({"_batch_date": [dt.date(2024, 1, 1), dt.date(2024, 1, 2)], "n": [1, 2]}, schema=schema)
    lake.append("ops", "parted", data, schema=schema, partition_by=["_batch_date"])
    got = sorted(lake.read_rows("ops", "parted"), key=lambda r: r["n"])
    assert got == lake.read("ops", "parted").sort_by("n").to_pylist()


def test_status_reads_run_records_without_pandas_or_the_pipeline_stack(home: Path) -> None:
    day = dt.date(2024, 1, 1)
    runs.append("r1", None, [StageRecord(day, s, runs.ALL_SOURCES, "succeeded") for s in runs.STAGES])
    probe = (
        "import sys\n"
        "from flows.cli.main import app\n"
        "try:\n"
        "    app(['status', '--start', '2024-01-01'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "heavy = [m for m in ('pandas', 'pyarrow.dataset', 'prefect', 'great_expectations', 'dbt', 'feast')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env={**os.environ, "ASOF_HOME": str(home), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2024-01-01" in out.stdout and "succeeded" in out.stdout
    assert "HEAVY []" in out.stdout, out.stdout[-500:]
