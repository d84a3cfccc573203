"""`flows.storage.lake` and `flows.operations.runs` under crashes (issue 7), without the pipeline.

- Crash points: `ASOF_CRASH_AT=<label>:<n>` kills the process exactly there, `ASOF_CRASH_TRACE`
  records every point reached, and with neither set nothing is counted.
- A writer killed in the middle of a commit leaves orphan data files and no new version; `vacuum`
  removes exactly those files, the table reads the same, every old version still reads (time
  travel, restore, `asof reproduce`); only an explicit retention removes old versions' files.
- Rollback: `restore` makes an old version current again as a new commit (undoable).
- Run records: a run whose process is gone is `interrupted`, even if its pid was reused since.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flows.operations import runs
from flows.storage import lake
from tests.kill_harness import REPO

D1, D2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)


def rows(day: dt.date, n: int, offset: int = 0) -> pa.Table:
    return pa.table(
        {
            "_batch_date": pa.array([day] * n, pa.date32()),
            "x": pa.array(range(offset, offset + n), pa.int64()),
            "s": pa.array([f"value-{i:08d}" for i in range(offset, offset + n)]),
        }
    )


def put(day: dt.date, n: int, offset: int = 0) -> int:
    return lake.replace(
        "silver",
        "t",
        rows(day, n, offset),
        lake.date_predicate("_batch_date", day),
        partition_by=["_batch_date"],
    )


WRITE = textwrap.dedent(
    """
    import datetime as dt, sys
    import pyarrow as pa
    from flows.storage import lake
    day, n, times = dt.date.fromisoformat(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    data = pa.table({
        "_batch_date": pa.array([day] * n, pa.date32()),
        "x": pa.array(range(n), pa.int64()),
        "s": pa.array([f"value-{i:08d}" for i in range(n)]),
    })
    for _ in range(times):
        pred = lake.date_predicate("_batch_date", day)
        lake.replace("silver", "t", data, pred, partition_by=["_batch_date"])
    print("done", flush=True)
    """
)


def writer(
    home: Path, crash_at: str | None, day: dt.date, n: int, times: int = 1
) -> subprocess.CompletedProcess:
    env = {**os.environ, "ASOF_HOME": str(home)}
    env.pop("ASOF_CRASH_TRACE", None)
    if crash_at:
        env["ASOF_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-c", WRITE, day.isoformat(), str(n), str(times)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def version_content(version: int | None = None) -> list[tuple]:
    return sorted(tuple(r.values()) for r in lake.read("silver", "t", version=version).to_pylist())


def content() -> list[tuple]:
    return version_content(None)


# ---------------------------------------------------------------- crash points


def test_crash_points_cost_nothing_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASOF_CRASH_AT", raising=False)
    monkeypatch.delenv("ASOF_CRASH_TRACE", raising=False)
    before = dict(lake._CRASH_COUNTS)
    for _ in range(1000):
        lake.crash_point("after_commit:silver/t")
    assert before == lake._CRASH_COUNTS


def test_crash_spec_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASOF_CRASH_AT", "after_commit:silver/transactions:3")
    assert lake._crash_spec() == ("after_commit:silver/transactions", 3)
    monkeypatch.setenv("ASOF_CRASH_AT", "open:gold/customer_profile")
    assert lake._crash_spec() == ("open:gold/customer_profile", 1)


def test_trace_records_every_point_in_order(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = home / "trace"
    monkeypatch.setenv("ASOF_CRASH_TRACE", str(trace))
    monkeypatch.setattr(lake, "_CRASH_COUNTS", {})
    put(D1, 3)
    put(D1, 3)
    labels = [line.split()[1:3] for line in trace.read_text().splitlines()]
    assert ["before_commit:silver/t", "2"] in labels and ["after_commit:silver/t", "2"] in labels
    assert labels.index(["before_commit:silver/t", "1"]) < labels.index(["after_commit:silver/t", "1"])
    assert ["locked:silver/t", "1"] in labels


@pytest.mark.parametrize(
    "point, versions",
    [("before_commit:silver/t:2", 1), ("during_commit:silver/t:2", 1), ("after_commit:silver/t:2", 2)],
)
def test_a_crash_point_kills_exactly_there(home: Path, point: str, versions: int) -> None:
    res = writer(home, point, D1, 10, times=3)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert "done" not in res.stdout
    assert lake.version("silver", "t") == versions - 1  # commits that happened before the kill
    assert len(lake.read("silver", "t")) == 10
    # the lock died with the process: the next writer is not blocked
    with lake.lock("silver", "t", timeout_s=0):
        pass
    put(D1, 5)
    assert len(lake.read("silver", "t")) == 5


# ---------------------------------------------------------------- orphans and vacuum


def test_vacuum_after_a_kill_mid_commit_removes_only_orphans(home: Path) -> None:
    put(D1, 100)
    put(D2, 50)
    put(D1, 80, offset=1000)  # version 2: version 0's D1 file is now only needed by time travel
    live = content()
    old = [
        sorted(tuple(r.values()) for r in lake.read("silver", "t", version=v).to_pylist()) for v in range(3)
    ]

    # a writer dies half-way through a large commit of D2
    res = writer(home, "during_commit:silver/t", D2, 60_000)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert lake.version("silver", "t") == 2 and content() == live  # readers see nothing of it
    orphans = lake.orphan_files("silver", "t")
    assert orphans, "the killed writer left no data file: nothing to test"
    assert all(o.startswith("_batch_date=2024-01-02/") and o.endswith(".parquet") for o in orphans)

    assert lake.vacuum("silver", "t", dry_run=True) == orphans
    table_dir = Path(lake.uri("silver", "t"))
    assert all((table_dir / o).exists() for o in orphans)
    assert lake.vacuum("silver", "t") == orphans
    assert not any((table_dir / o).exists() for o in orphans)
    assert content() == live
    for v in range(3):  # every version still reads: time travel and restore keep working
        assert version_content(v) == old[v]
    assert lake.vacuum("silver", "t") == []  # idempotent
    assert lake.orphan_files("silver", "t") == []
    # and the table takes writes as before
    put(D2, 7)
    assert len(lake.read("silver", "t", filter=lake.date_filter("_batch_date", [D2]))) == 7


def test_vacuum_with_retention_drops_old_versions_only_when_asked(home: Path) -> None:
    put(D1, 10)
    put(D1, 20, offset=100)
    assert lake.vacuum("silver", "t") == []  # no orphans: the old version's file is kept
    assert len(lake.read("silver", "t", version=0)) == 10
    removed = lake.vacuum("silver", "t", retention_hours=0)
    assert len(removed) == 1
    assert len(lake.read("silver", "t")) == 20
    # version 0's only data file is gone: delta-rs's object store says which one
    with pytest.raises(FileNotFoundError, match=re.escape(removed[0])):
        lake.read("silver", "t", version=0)


# ---------------------------------------------------------------- rollback


def test_restore_and_history(home: Path) -> None:
    put(D1, 10)
    put(D2, 5)
    put(D1, 3, offset=50)  # a bad rerun of D1
    hist = lake.history("silver", "t")
    assert [h["version"] for h in hist] == [2, 1, 0]
    assert "2024-01-01" in hist[0]["predicate"] and hist[0]["rows_added"] == 3
    new = lake.restore("silver", "t", 1)
    assert new == 3
    assert len(lake.read("silver", "t")) == 15
    assert len(lake.read("silver", "t", version=2)) == 8  # the undone version is still readable
    lake.restore("silver", "t", 2)  # and the restore can itself be undone
    assert len(lake.read("silver", "t")) == 8
    for bad in (-1, 99, "1", True):
        with pytest.raises(lake.LakeError):
            lake.restore("silver", "t", bad)


# ---------------------------------------------------------------- run records of dead processes


def _marker(home: Path, pid: int, when: dt.datetime | None = None) -> None:
    runs.mark_running("r1", None, [D1])
    if pid != os.getpid() or when is not None:
        tbl = lake.read("ops", "runs")
        idx = tbl.schema.get_field_index("pid")
        tbl = tbl.set_column(idx, "pid", pa.array([pid] * len(tbl), pa.int64()))
        if when is not None:
            i2 = tbl.schema.get_field_index("recorded_at")
            tbl = tbl.set_column(i2, "recorded_at", pa.array([when] * len(tbl), pa.timestamp("us", tz="UTC")))
        lake.replace("ops", "runs", tbl.cast(runs.RUNS_SCHEMA), "execution_date = '2024-01-01'")


def test_a_run_whose_process_is_gone_is_interrupted(home: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    _marker(home, proc.pid)
    assert runs.date_status(runs.latest(D1, D1)) == {D1: "interrupted"}
    [rec] = runs.latest(D1, D1)
    assert "interrupted" in rec["message"] and "rerun" in rec["message"]
    assert D1 not in runs.succeeded_dates(D1, D1)


def test_a_live_run_is_running(home: Path) -> None:
    _marker(home, os.getpid())
    assert runs.date_status(runs.latest(D1, D1)) == {D1: "running"}


def test_a_reused_pid_does_not_revive_a_dead_run(home: Path) -> None:
    # this test process is alive, but it started long after a marker recorded an hour ago
    _marker(home, os.getpid(), when=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    assert runs.date_status(runs.latest(D1, D1)) == {D1: "interrupted"}


def test_a_killed_unreaped_process_counts_as_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        os.kill(proc.pid, signal.SIGKILL)
        for _ in range(100):  # wait until it is a zombie (killed, not yet reaped by us)
            if runs._proc_start(proc.pid) and runs._proc_start(proc.pid)[1] == "Z":
                break
        assert not runs._pid_alive(socket.gethostname(), proc.pid, dt.datetime.now(dt.UTC))
    finally:
        proc.wait()


# ---------------------------------------------------------------- stale dates


def _run(run_id: str, day: dt.date, sha: str = "a", rows_out: int = 10) -> None:
    details = {"files": [{"file": f"landing/transactions/{day}/t.csv", "sha256": sha}]}
    recs = [runs.StageRecord(day, "ingest", "transactions", "succeeded", rows_out=10, details=details)]
    recs.append(runs.StageRecord(day, "validate", "transactions", "succeeded", 10, rows_out, 10 - rows_out))
    recs += [runs.StageRecord(day, s, runs.ALL_SOURCES, "succeeded") for s in ("transform", "materialize")]
    runs.append(run_id, None, recs)


def _status() -> dict:
    return runs.date_status(runs.latest(D1, D2))


def test_reruns_with_the_same_results_leave_later_dates_succeeded(home: Path) -> None:
    _run("a", D1)
    _run("a", D2)
    assert _status() == {D1: "succeeded", D2: "succeeded"}
    _run("b", D1)  # the same files, the same split
    assert _status() == {D1: "succeeded", D2: "succeeded"}
    assert runs.succeeded_dates(D1, D2) == {D1, D2}


def test_a_redelivered_earlier_date_makes_later_dates_stale(home: Path) -> None:
    _run("a", D1)
    _run("a", D2)
    _run("b", D1, sha="corrected")  # re-delivery of D1, rerun
    assert _status() == {D1: "succeeded", D2: "stale"}
    [marker] = [r for r in runs.latest(D2, D2) if r["stage"] == "run"]
    assert "2024-01-01 was re-processed" in marker["message"] and "--force" in marker["message"]
    assert runs.succeeded_dates(D1, D2) == {D1}  # a non-forced backfill reruns D2
    assert runs.date_status(runs.latest(D2, D2)) == {D2: "stale"}  # seen from D2 alone too
    _run("c", D2)
    assert _status() == {D1: "succeeded", D2: "succeeded"}


def test_a_date_computed_before_its_predecessor_is_stale(home: Path) -> None:
    _run("a", D2)  # e.g. a backfill starting at D2 won the pipeline lock
    _run("b", D1)
    assert _status() == {D1: "succeeded", D2: "stale"}


def test_a_release_from_quarantine_makes_later_dates_stale(home: Path) -> None:
    from flows.validation.quarantine import RELEASES_SCHEMA

    _run("a", D1, rows_out=8)
    _run("a", D2)
    row = {f.name: [None] for f in RELEASES_SCHEMA}
    row.update(
        release_id=["r"], _batch_date=[D1], source=["transactions"], released_at=[dt.datetime.now(dt.UTC)],
        rows_considered=[2], rows_released=[2], rows_still_quarantined=[0],
    )  # fmt: skip
    lake.append("ops", "releases", pa.table(row, schema=RELEASES_SCHEMA), schema=RELEASES_SCHEMA)
    assert _status() == {D1: "succeeded", D2: "stale"}


def test_a_later_run_supersedes_every_record_of_an_earlier_one(home: Path) -> None:
    """A stage recorded as `validate *: not run` (an earlier date failed) and later run per source
    must read as the later run's outcome, not as a leftover `not run`."""
    runs.append(
        "old",
        None,
        [
            runs.StageRecord(D2, "ingest", "transactions", "succeeded"),
            *[
                runs.StageRecord(D2, s, runs.ALL_SOURCES, "not run")
                for s in ("validate", "transform", "materialize")
            ],
        ],
    )
    assert runs.date_status(runs.latest(D2, D2)) == {D2: "incomplete"}
    _run("new", D2)
    assert runs.date_status(runs.latest(D2, D2)) == {D2: "succeeded"}
    assert [r["source"] for r in runs.latest(D2, D2) if r["stage"] == "validate"] == ["transactions"]


def test_dataset_of_some_dates_reads_exactly_those_partitions(home: Path) -> None:
    """`lake.dataset(dates=...)` skips the files of other dates (so a read of one date of a year
    does not pay for 365 files) and returns exactly what a filter over the whole table returns;
    a table not partitioned by the column is read whole."""
    days = [dt.date(2024, 1, d) for d in range(1, 8)]
    for i, day in enumerate(days):
        put(day, 5 + i, offset=100 * i)
    put(days[2], 4, offset=900)  # a replaced date: only its live file counts
    lake.append("ops", "flat", rows(days[0], 3).append_column("y", pa.array([1, 2, 3])))
    lake.append("ops", "flat", rows(days[5], 2).append_column("y", pa.array([4, 5])))

    def got(dates, table: str = "t", layer: str = "silver") -> list[tuple]:
        dset = lake.dataset(layer, table, dates=dates)
        return sorted(tuple(r.values()) for r in dset.to_table().to_pylist())

    def want(lo, hi, table: str = "t", layer: str = "silver") -> list[tuple]:
        keep = [r for r in lake.read(layer, table).to_pylist() if r["_batch_date"] <= hi]
        return sorted(tuple(r.values()) for r in keep if lo is None or r["_batch_date"] >= lo)

    assert len(lake.dataset("silver", "t").files) == 7
    assert len(lake.dataset("silver", "t", dates=(days[3], days[3])).files) == 1
    for lo, hi in [(days[3], days[3]), (days[1], days[4]), (None, days[2]), (days[6], days[6])]:
        assert got((lo, hi)) == want(lo, hi), (lo, hi)
    assert got((days[2], days[2])) == want(days[2], days[2]) and len(want(days[2], days[2])) == 4
    assert got((dt.date(2023, 1, 1), dt.date(2023, 1, 5))) == []
    assert got((days[0], days[0]), "flat", "ops") == want(None, days[6], "flat", "ops")  # not partitioned


def test_reader_handles_are_reused_within_a_range_and_always_current(
    home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Inside `reader_handles()` a thread opens each table once and moves that handle forward on
    every read, so a read sees every commit made since (by any writer) exactly like a fresh open;
    every read still reaches the `open:` crash point, and the handles go when the scope ends."""
    import threading

    opened: list[str] = []

    class Counting(lake.DeltaTable):
        def __init__(self, uri, *a, **k):
            opened.append(str(uri))
            super().__init__(uri, *a, **k)

    monkeypatch.setattr(lake, "DeltaTable", Counting)
    trace = tmp_path / "trace"
    monkeypatch.setenv("ASOF_CRASH_TRACE", str(trace))

    def reads() -> int:
        return sum(" open:silver/t " in line for line in trace.read_text().splitlines())

    def count(day: dt.date | None = None) -> int:
        return lake.dataset("silver", "t", dates=None if day is None else (day, day)).count_rows()

    put(D1, 5)
    with lake.reader_handles():
        before = len(opened)
        assert count() == 5
        assert len(opened) == before + 1
        put(D2, 7)  # the writer opens its own handle
        put(D1, 3)  # a replaced date
        before, seen = len(opened), reads()
        assert (count(), count(D1), count(D2)) == (10, 3, 7)
        assert len(opened) == before  # the same handle, moved to the latest version
        assert reads() == seen + 3  # kill tests still see one `open:` per read
        other: list[int] = []
        worker = threading.Thread(target=lambda: other.append(count()))
        worker.start()
        worker.join()
        assert other == [10] and len(opened) == before + 1  # a thread of its own, a handle of its own
    assert lake._HANDLES == {}
    before = len(opened)
    assert count() == 10 and len(opened) == before + 1  # outside a range every read opens afresh


def test_kept_fragments_are_asked_again_only_for_changed_partitions(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a range, a thread's dataset of a date-partitioned table reuses the fragments of the
    partitions whose files did not change, and asks deltalake only for the others."""
    asked: list = []
    real = lake.DeltaTable.to_pyarrow_dataset

    def spy(self, *a, **k):
        asked.append(k.get("file_pruning_predicate"))
        return real(self, *a, **k)

    monkeypatch.setattr(lake.DeltaTable, "to_pyarrow_dataset", spy)
    days = [dt.date(2024, 1, d) for d in range(1, 5)]
    for i, day in enumerate(days[:3]):
        put(day, 3 + i)
    with lake.reader_handles():
        assert lake.dataset("silver", "t").count_rows() == 3 + 4 + 5
        assert asked[-1] == [("_batch_date", "in", [d.isoformat() for d in days[:3]])]
        put(days[1], 9)  # replaced: new files
        put(days[3], 2)  # a new partition
        asked.clear()
        assert lake.dataset("silver", "t", dates=(None, days[3])).count_rows() == 3 + 9 + 5 + 2
        assert asked == [[("_batch_date", "in", [days[1].isoformat(), days[3].isoformat()])]]
        asked.clear()
        assert lake.dataset("silver", "t", dates=(days[0], days[2])).count_rows() == 3 + 9 + 5
        assert asked == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["put", "read"]),
            st.integers(0, 2),
            st.integers(0, 2),
            st.integers(0, 3),
        ),
        min_size=1,
        max_size=8,
    )
)
@example(steps=[("put", 0, 0, 2), ("read", 0, 0, 0), ("put", 0, 0, 3), ("read", 0, 0, 0)])
@example(steps=[("put", 1, 0, 2), ("read", 2, 1, 0), ("put", 1, 0, 0), ("read", 2, 2, 0)])
def test_a_range_reads_exactly_what_a_fresh_open_reads(home: Path, steps) -> None:
    """Whatever the order of replaced and new partitions, a dataset built from kept fragments holds
    the same rows as one deltalake builds afresh for the same dates."""
    name = f"p{abs(hash(tuple(steps))) % 10**9}"
    days = [dt.date(2024, 3, 1) + dt.timedelta(days=i) for i in range(3)]
    with lake.reader_handles():
        for i, (op, a, b, n) in enumerate(steps):
            if op == "put":
                data = rows(days[a], n, offset=100 * i)  # n == 0 empties the partition
                lake.replace(
                    "silver",
                    name,
                    data.cast(pa.schema([*data.schema][:2] + [pa.field("s", pa.string())])),
                    lake.date_predicate("_batch_date", days[a]),
                    partition_by=["_batch_date"],
                )
                continue
            if not lake.exists("silver", name):
                continue
            span = (None if a > b else days[a], days[b])
            pinned = lake.table("silver", name).version()
            got = lake.dataset("silver", name, dates=span).to_table()
            want = lake.dataset("silver", name, version=pinned, dates=span).to_table()
            key = [("_batch_date", "ascending"), ("x", "ascending")]
            assert got.sort_by(key).equals(want.sort_by(key)), (span, steps[: i + 1])


@pytest.mark.parametrize("preset, expected", [(None, "jemalloc"), ("mimalloc", "mimalloc")])
def test_arrow_allocates_with_jemalloc_unless_told_otherwise(preset: str | None, expected: str) -> None:
    """Importing the package picks Arrow's allocator before Arrow allocates; a user's
    ARROW_DEFAULT_MEMORY_POOL is kept."""
    import pyarrow as pa

    if not hasattr(pa, "jemalloc_memory_pool"):  # pragma: no cover - wheels without jemalloc
        pytest.fail("this pyarrow build has no jemalloc")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if preset:
        env["ARROW_DEFAULT_MEMORY_POOL"] = preset
    code = "import flows, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
