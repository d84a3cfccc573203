"""The transform's memory (issue 23 item 7): dbt's DuckDB takes its limit from ASOF_MEMORY_BUDGET
unless ASOF_DUCKDB_MEMORY_LIMIT is set, and the silver scans handed to it read ahead only a little
(what pyarrow decodes ahead is outside DuckDB's limit)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from flows.ingest import memory_budget
from flows.storage import lake
from flows.transform import lake_io, stage
from flows.transform.stage import transform_range
from tests import reference_features as rf

START = dt.date(2024, 1, 1)


@pytest.mark.parametrize(
    ("budget", "limit"),
    [("4096", "1536MiB"), ("2048", "512MiB"), ("1024", "256MiB"), ("600", "256MiB"), ("16384", "2GB")],
)
def test_duckdbs_limit_is_half_the_budget_beyond_the_base_between_256mib_and_2gb(
    monkeypatch: pytest.MonkeyPatch, budget: str, limit: str
) -> None:
    monkeypatch.delenv("ASOF_DUCKDB_MEMORY_LIMIT", raising=False)
    monkeypatch.setenv("ASOF_MEMORY_BUDGET", budget)
    assert memory_budget.duckdb_memory_limit() == limit


def test_an_explicit_duckdb_limit_wins_over_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASOF_MEMORY_BUDGET", "4096")
    monkeypatch.setenv("ASOF_DUCKDB_MEMORY_LIMIT", "3GB")
    assert memory_budget.duckdb_memory_limit() == "3GB"
    monkeypatch.setenv("ASOF_DUCKDB_MEMORY_LIMIT", " ")  # empty counts as unset
    assert memory_budget.duckdb_memory_limit() == "1536MiB"


def _dbts_duckdb_limit() -> str:
    """memory_limit of the DuckDB database dbt-duckdb has open in this process."""
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    return DuckDBConnectionManager.env().conn.execute("select current_setting('memory_limit')").fetchone()[0]


def _as_duckdb_shows(limit: str) -> str:
    con = duckdb.connect(config={"memory_limit": limit})
    return con.execute("select current_setting('memory_limit')").fetchone()[0]


def test_the_transforms_duckdb_follows_the_budget_and_an_explicit_limit(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit reaches the database dbt computes in (through profiles.yml), in every invocation
    of one process: a changed budget opens a DuckDB with the new limit; the gold is the same."""
    rf.write_silver(rf.generate_silver(START, 12, quarantined_days=()))
    day = START + dt.timedelta(days=10)
    monkeypatch.delenv("ASOF_DUCKDB_MEMORY_LIMIT", raising=False)
    monkeypatch.setattr(stage, "close_duckdb", lambda: None)  # kept open to read its setting
    gold = {}
    for budget, expected in (("4096", "1536MiB"), ("2048", "512MiB")):
        monkeypatch.setenv("ASOF_MEMORY_BUDGET", budget)
        result = transform_range(day, day)
        assert result.succeeded, result.message
        assert _dbts_duckdb_limit() == _as_duckdb_shows(expected) != _as_duckdb_shows("2GB")
        gold[budget] = lake.read("gold", "customer_txn_features_daily")
    assert gold["4096"].equals(gold["2048"])
    monkeypatch.setenv("ASOF_DUCKDB_MEMORY_LIMIT", "700MiB")
    assert transform_range(day, day).succeeded
    assert _dbts_duckdb_limit() == _as_duckdb_shows("700MiB")


def test_duckdb_scans_silver_through_the_bounded_scanner_with_its_filter(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB asks the dataset for its scanner with the model's projection and filter (so a date's
    scan still reads only its partitions), the readahead bound reaches pyarrow in that scan, and
    the rows equal a plain pyarrow dataset's."""
    rf.write_silver(rf.generate_silver(START, 6, quarantined_days=()))
    plain = lake.table("silver", "transactions").to_pyarrow_dataset()
    bounded = lake_io.bounded_scans(plain)
    query = "select txn_id, amount from t where _batch_date = date '2024-01-03' order by txn_id"

    def run(data) -> pa.Table:
        con = duckdb.connect()
        con.register("t", data)
        return con.sql(query).to_arrow_table()

    asked: list[dict] = []
    scanner = lake_io.BoundedScanDataset.scanner

    def spy(self, *args, **kwargs):
        asked.append(dict(kwargs))
        return scanner(self, *args, **kwargs)

    monkeypatch.setattr(lake_io.BoundedScanDataset, "scanner", spy)
    got = run(bounded)
    assert got.num_rows > 0 and got.equals(run(plain))
    assert asked, "DuckDB did not call the dataset's scanner: the readahead bound would not apply"
    assert set(asked[0]["columns"]) >= {"txn_id", "amount"} and "channel" not in asked[0]["columns"]
    assert "_batch_date" in str(asked[0]["filter"])
    files = bounded.get_fragments(filter=asked[0]["filter"])  # the filter prunes to the date's files
    assert {Path(f.path).parent.name for f in files} == {"_batch_date=2024-01-03"}
    # the bound is what pyarrow scans with: an invalid one fails DuckDB's query
    monkeypatch.setattr(lake_io, "SCAN_BATCH_READAHEAD", -1)
    with pytest.raises(duckdb.Error, match="BatchReadahead"):
        run(bounded)
    assert run(plain).equals(got)


def test_the_plugin_hands_duckdb_bounded_scans_of_silver(home: Path) -> None:
    from dbt.adapters.duckdb.utils import SourceConfig

    rf.write_silver(rf.generate_silver(START, 3, quarantined_days=()))
    plugin = lake_io.Plugin.__new__(lake_io.Plugin)
    lake_io.reset_run_record()
    source = SourceConfig(
        name="transactions", identifier="transactions", schema="silver", database=None, meta={}, tags=[]
    )
    data = plugin.load(source)
    assert isinstance(data, lake_io.BoundedScanDataset)
    assert data.to_table().sort_by("txn_id").equals(lake.read("silver", "transactions").sort_by("txn_id"))


def test_the_transforms_duckdb_is_closed_after_each_invocation(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-memory database (and the memory DuckDB kept for it) does not outlive its invocation;
    the next one opens another and computes the same gold."""
    rf.write_silver(rf.generate_silver(START, 12, quarantined_days=()))
    day = START + dt.timedelta(days=10)
    opened: list[duckdb.DuckDBPyConnection] = []
    close = stage.close_duckdb

    def remember_then_close() -> None:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager

        opened.append(DuckDBConnectionManager.env().conn)
        close()

    monkeypatch.setattr(stage, "close_duckdb", remember_then_close)
    first = transform_range(day, day)
    gold = lake.read("gold", "customer_txn_features_daily")
    second = transform_range(day, day)
    assert first.succeeded and second.succeeded, (first.message, second.message)
    assert len(opened) == 2 and opened[0] is not opened[1]
    for conn in opened:
        with pytest.raises(duckdb.ConnectionException):
            conn.execute("select 1")
    assert lake.read("gold", "customer_txn_features_daily").equals(gold)
