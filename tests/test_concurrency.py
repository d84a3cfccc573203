"""Concurrency: runs started at the same time end in the state of one serial run (issue 7).

- Two `asof backfill` processes over overlapping ranges, started at once: one waits for the other on
  the pipeline lock, then skips the dates the first one finished; every date is processed exactly
  once and the lake equals a serial backfill of the union.
- A daily `asof run --date D2` and a backfill of D1..D3 at once (the common real case), over a lake
  where D1 is done: whichever goes first, the lake equals the serial run.
- `flows.storage.lake` itself: concurrent writers of one table (other processes) are serialised by the
  per-table lock, never interleaved or lost; a writer that cannot get the lock in time fails with
  a message naming the table and the lock file, having written nothing.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.kill_harness import REPO, asof_home, date_statuses, diff, harness, read_trace, snapshot

D1, D2, D3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
SCALE, SEED = "200x400", 5


def _backfill(start: dt.date, end: dt.date) -> tuple[str, ...]:
    return ("backfill", "--start", start.isoformat(), "--end", end.isoformat())


@pytest.fixture(scope="module")
def serial() -> tuple[Path, dict]:
    h = harness()
    landing = h.landing(D1, D3, SCALE, SEED)
    home, snap = h.reference(landing, *_backfill(D1, D3))
    assert date_statuses(home, D1, D3) == {D1: "succeeded", D2: "succeeded", D3: "succeeded"}
    return landing, snap


def _ingested(home: Path) -> dict[dt.date, int]:
    """How many times each date's transactions were ingested, over every run's records."""
    from flows.storage import lake

    with asof_home(home):
        rows = lake.read_rows("ops", "runs", columns=["execution_date", "stage", "source", "status"])
    done = [r["execution_date"] for r in rows if (r["stage"], r["source"]) == ("ingest", "transactions")]
    return {d: done.count(d) for d in sorted(set(done))}


def _start_together(home: Path, *commands: tuple[str, ...]):
    h = harness()
    traces = [home.parent / f"{home.name}_{i}.trace" for i in range(len(commands))]
    runs = [h.asof(home, *cmd, trace=t, wait=False) for cmd, t in zip(commands, traces, strict=True)]
    for run in runs:
        h.zygote.wait(run, timeout=400)
    return runs, [read_trace(t) if t.exists() else [] for t in traces]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_overlapping_backfills_equal_one_serial_run(serial) -> None:
    landing, expected = serial
    h = harness()
    home = h.new_home("conc_two_backfills", landing)
    runs, traces = _start_together(home, _backfill(D1, D2), _backfill(D1, D3))
    for run in runs:
        assert run.rc == 0, run.output()[-3000:]
    assert date_statuses(home, D1, D3) == {D1: "succeeded", D2: "succeeded", D3: "succeeded"}
    # one of them queued on the pipeline lock ...
    waited = [any(label == "lock_wait:ops/pipeline" for label, _ in t) for t in traces]
    assert any(waited), "neither run waited for the other: they were not concurrent"
    # ... and every batch was ingested exactly once: the second run skipped what the first did
    assert _ingested(home) == {D1: 1, D2: 1, D3: 1}
    # (a run ingests its dates of a source in one commit: one per run that had dates left to do)
    commits = [sum(1 for label, _ in t if label == "after_commit:bronze/transactions") for t in traces]
    assert sorted(commits) in ([0, 1], [1, 1]), commits
    assert diff(expected, snapshot(home)) == ""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_daily_run_and_backfill_at_once_equal_one_serial_run(serial) -> None:
    landing, expected = serial
    h = harness()
    home = h.new_home("conc_daily_and_backfill", landing)
    first = h.asof(home, *_backfill(D1, D1))
    assert first.rc == 0, first.output()[-3000:]
    runs, traces = _start_together(home, ("run", "--date", D2.isoformat()), _backfill(D1, D3))
    for run in runs:
        assert run.rc == 0, run.output()[-3000:]
    assert any(label == "lock_wait:ops/pipeline" for t in traces for label, _ in t)
    assert date_statuses(home, D1, D3) == {D1: "succeeded", D2: "succeeded", D3: "succeeded"}
    assert diff(expected, snapshot(home)) == ""


# ---------------------------------------------------------------- the lake's own locking

WRITER = textwrap.dedent(
    """
    import datetime as dt, os, sys, time
    import pyarrow as pa
    from flows.storage import lake
    day = dt.date.fromisoformat(sys.argv[1])
    tag = sys.argv[2]
    rows = int(sys.argv[3])
    data = pa.table({
        "_batch_date": pa.array([day] * rows, pa.date32()),
        "writer": pa.array([tag] * rows),
        "i": pa.array(range(rows), pa.int64()),
    })
    for _ in range(int(sys.argv[4])):
        lake.replace("silver", "contended", data, lake.date_predicate("_batch_date", day),
                     partition_by=["_batch_date"])
    print("ok", flush=True)
    """
)


def _writers(home: Path, specs: list[tuple[str, str, int, int]], extra_env: dict | None = None):
    env = {**os.environ, "ASOF_HOME": str(home), **(extra_env or {})}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, day, tag, str(rows), str(times)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for day, tag, rows, times in specs
    ]
    return [(p, *p.communicate(timeout=180)) for p in procs]


def test_concurrent_writers_of_one_table_are_serialised(home: Path) -> None:
    from flows.storage import lake

    results = _writers(
        home,
        [
            ("2024-01-01", "a", 3000, 5),
            ("2024-01-02", "b", 2000, 5),
            ("2024-01-01", "c", 1000, 5),
        ],
    )
    for proc, out, err in results:
        assert proc.returncode == 0 and out.strip() == "ok", err[-2000:]
    tbl = lake.read("silver", "contended").to_pylist()
    by_day: dict = {}
    for r in tbl:
        by_day.setdefault(r["_batch_date"], set()).add(r["writer"])
    # each partition holds exactly one writer's complete slice: never a mix, never lost
    assert by_day[dt.date(2024, 1, 2)] == {"b"}
    assert len(by_day[dt.date(2024, 1, 1)]) == 1
    (w,) = by_day[dt.date(2024, 1, 1)]
    assert sum(1 for r in tbl if r["_batch_date"] == dt.date(2024, 1, 1)) == {"a": 3000, "c": 1000}[w]
    assert sum(1 for r in tbl if r["_batch_date"] == dt.date(2024, 1, 2)) == 2000
    # 15 commits, no conflict needed retries (the lock serialised them), no orphan files
    assert lake.version("silver", "contended") == 14
    assert lake.orphan_files("silver", "contended") == []


def test_lock_timeout_fails_clearly_and_writes_nothing(home: Path) -> None:
    from flows.storage import lake

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from flows.storage import lake\nwith lake.lock('silver', 'contended'):\n"
            "    print('held', flush=True); time.sleep(30)",
        ],
        env={**os.environ, "ASOF_HOME": str(home)},
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        [(proc, out, err)] = _writers(
            home, [("2024-01-01", "late", 10, 1)], extra_env={"ASOF_LOCK_TIMEOUT_S": "1"}
        )
        assert proc.returncode != 0 and time.monotonic() - t0 < 60
        last = err.strip().splitlines()[-1]
        assert "timed out waiting for the write lock on silver/contended" in last
        assert "silver.contended.lock" in last
        assert not lake.exists("silver", "contended")
    finally:
        holder.kill()
        holder.wait()
