"""Crash safety: SIGKILL a real `asof` run at many points of every stage, rerun, and compare the lake
with an uninterrupted run (issue 7).

Kill points are deterministic crash hooks of `flows.storage.lake` (`ASOF_CRASH_AT=<label>:<n>`: before,
during and after every Delta commit, and whenever a table is opened), chosen from the trace of an
uninterrupted reference run, so each one is known to fire and to sit in the stage it is meant for:

- chain `fresh_backfill`: a fresh two-date backfill killed again and again (ingest commits, file
  records, validation reads and writes, dbt loading silver, the first gold table created), each run
  starting from what the previous kill left, then `asof backfill` (not forced);
- chain `daily_rerun`: a complete lake, `asof run --date D2` killed mid-validation (a succeeded date
  half overwritten), before and after the gold publication, during Feast materialization (between
  views and dates) and around the final run records;
- `chunked`: `--chunk-days 1`, killed in the second chunk: the first date stays `pending` (computed,
  its online-store pass due at the run's end), and the recovery run only materializes it;
- `real_process`: one kill of a real `.venv/bin/asof` process (no zygote), to show the two agree.

After every kill: the process died of SIGKILL, and run records show the killed run's dates as
`interrupted` (never `succeeded`, unless the kill came after the final records were written). After
the recovery run: every table (minus run ids and wall-clock columns) and the online store equal the
uninterrupted run's, and vacuum removes only orphan files (every version stays readable).
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.kill_harness import (
    REPO,
    date_statuses,
    diff,
    harness,
    read_trace,
    snapshot,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

D1, D2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
SCALE, SEED = "200x400", 5
BACKFILL = ("backfill", "--start", D1.isoformat(), "--end", D2.isoformat())
RUN_D2 = ("run", "--date", D2.isoformat())

Trace = list[tuple[str, int]]


@dataclass
class Kill:
    spec: str  # ASOF_CRASH_AT
    stage: str
    rc: int | None = None
    statuses: dict[dt.date, str] = field(default_factory=dict)
    expect: dict[dt.date, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Chain:
    name: str
    kills: list[Kill]
    final_rc: int | None = None
    final_statuses: dict[dt.date, str] = field(default_factory=dict)
    diff: str = ""
    vacuum_diff: str = ""
    orphans_removed: int = 0
    seconds: float = 0.0
    error: str = ""


# ---------------------------------------------------------------- choosing kill points


def _index(trace: Trace, pred: Callable[[str], bool], last: bool = False) -> int:
    hits = [i for i, (label, _) in enumerate(trace) if pred(label)]
    assert hits, "no such point in the reference trace"
    return hits[-1] if last else hits[0]


def _spread(points: Trace, k: int) -> Trace:
    if len(points) <= k:
        return points
    step = (len(points) - 1) / (k - 1)
    return [points[round(i * step)] for i in range(k)]


def _spec(point: tuple[str, int]) -> str:
    return f"{point[0]}:{point[1]}"


def backfill_kills(trace: Trace) -> list[Kill]:
    """Kill points of a fresh two-date backfill: every ingest and validation step, and dbt on a
    lake that has no gold table yet."""
    has = {_spec(p) for p in trace}
    end_ingest = _index(trace, lambda lbl: lbl == "after_commit:ops/ingest_files", last=True)
    end_validate = _index(trace, lambda lbl: lbl == "after_commit:ops/validations", last=True)
    first_gold = _index(trace, lambda lbl: lbl.startswith("before_commit:gold/"))
    gold_tables = [lbl.split(":", 1)[1] for lbl, _ in trace if lbl.startswith("after_commit:gold/")]

    ingest = [
        "after_commit:ops/runs:1",  # the run is marked running; nothing else written
        "after_commit:bronze/transactions:1",  # bronze written, its file records not yet
        _spec(trace[end_ingest]),  # the last ingest write
    ]
    window = trace[end_ingest:end_validate]
    validate_reads = [p for p in window if p[0].startswith("open:silver/")]
    quarantine_writes = [p for p in window if p[0].startswith("after_commit:quarantine/")]
    validate = [
        "before_commit:silver/merchants:1",
        _spec(validate_reads[len(validate_reads) // 2]),  # reading earlier deliveries / references
        "after_commit:silver/transactions:1",  # silver of both dates replaced, quarantine not yet
        *([_spec(quarantine_writes[0])] if quarantine_writes else []),
        "during_commit:silver/customers:1",  # one commit per table for the chunk's dates, half done
        "after_commit:ops/validations:1",  # every date and source recorded (one commit), no docs yet
        _spec(trace[end_validate]),  # everything validated, Data Docs and dbt not run
    ]
    dbt_reads = [p for p in trace[end_validate:first_gold] if p[0].startswith("open:silver/")]
    transform = [
        _spec(dbt_reads[0]),  # dbt loading its sources
        f"after_commit:{gold_tables[0]}:1",  # the first gold table exists, the others do not
    ]
    for spec in ingest + validate + transform:
        assert spec in has, f"{spec} is not in the reference trace"
    interrupted = {D1: "interrupted", D2: "interrupted"}
    return (
        [Kill(s, "ingest", expect=interrupted) for s in ingest]
        + [Kill(s, "validate", expect=interrupted) for s in validate]
        + [Kill(s, "transform", expect=interrupted) for s in transform]
    )


def daily_rerun_kills(trace: Trace) -> list[Kill]:
    """Kill points of `asof run --date D2` over a complete lake (a succeeded date being redone):
    silver, gold and the online store end up half old, half new."""
    has = {_spec(p) for p in trace}
    last_gold = _index(trace, lambda lbl: lbl.startswith("after_commit:gold/"), last=True)
    final = max(i for i, p in enumerate(trace) if p[0] == "before_commit:ops/runs")
    gold_tables = [lbl.split(":", 1)[1] for lbl, _ in trace if lbl.startswith("after_commit:gold/")]
    materialize_reads = [p for p in trace[last_gold + 1 : final] if p[0].startswith("open:gold/")]
    redo = {D1: "succeeded", D2: "interrupted"}
    kills = [
        Kill("after_commit:silver/transactions:1", "validate", expect=redo),
        Kill(f"before_commit:{gold_tables[0]}:1", "transform", expect=redo),  # dbt done, nothing published
        Kill(f"after_commit:{gold_tables[2]}:1", "transform", expect=redo),  # published, not recorded
    ]
    kills += [Kill(_spec(p), "materialize", expect=redo) for p in _spread(materialize_reads, 3)]
    kills.append(Kill(_spec(trace[final]), "run records", expect=redo))  # all done, nothing recorded
    # after the final records: the run is complete, so succeeded is the truth
    after_final = next(p for p in trace[final:] if p[0] == "after_commit:ops/runs")
    kills.append(Kill(_spec(after_final), "run records", expect={D1: "succeeded", D2: "succeeded"}))
    for k in kills:
        assert k.spec in has, f"{k.spec} is not in the reference trace"
    return kills


# ---------------------------------------------------------------- running chains


def _run_chain(
    chain: Chain, home: Path, argv: tuple[str, ...], reference: dict, final_argv=BACKFILL
) -> Chain:
    h = harness()
    t0 = time.monotonic()
    try:
        for kill in chain.kills:
            t = time.monotonic()
            run = h.asof(home, *argv, crash_at=kill.spec)
            kill.rc, kill.seconds = run.rc, time.monotonic() - t
            kill.statuses = date_statuses(home, D1, D2)
        final = h.asof(home, *final_argv)
        chain.final_rc = final.rc
        chain.final_statuses = date_statuses(home, D1, D2)
        got = snapshot(home)
        chain.diff = diff(reference, got)
        chain.orphans_removed, chain.vacuum_diff = _vacuum_everything(home, got)
    except Exception as exc:  # reported by the tests, with the chain's name
        chain.error = f"{type(exc).__name__}: {exc}"
    chain.seconds = time.monotonic() - t0
    return chain


def _vacuum_everything(home: Path, before: dict) -> tuple[int, str]:
    """Orphan-only vacuum of every table: nothing visible changes and version 0 still reads."""
    from tests.kill_harness import asof_home

    removed = 0
    with asof_home(home):
        from flows.storage import lake

        for layer in lake.LAYERS:
            for name in lake.list_tables(layer):
                removed += len(lake.vacuum(layer, name))
                lake.read(layer, name, version=0)  # time travel survives
    return removed, diff(before, snapshot(home))


def _start_real_process(chain: Chain, home: Path) -> subprocess.Popen:
    """One kill of a real `.venv/bin/asof` process (exec'd, not forked from the zygote). Started
    first: its ~30 s of imports overlap the reference runs."""
    h = harness()
    env = {**h.env, "ASOF_HOME": str(home), "ASOF_CRASH_AT": chain.kills[0].spec}
    exe = str(Path(sys.executable).parent / "asof")
    return subprocess.Popen(
        [exe, *BACKFILL], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _finish_real_process(chain: Chain, proc: subprocess.Popen, home: Path, reference: dict) -> Chain:
    h = harness()
    t0 = time.monotonic()
    kill = chain.kills[0]
    try:
        _, err = proc.communicate(timeout=300)
        kill.rc = proc.returncode
        kill.statuses = date_statuses(home, D1, D2)
        if kill.rc != -signal.SIGKILL:
            chain.error = f"the real process was not killed (rc {kill.rc}): {err.decode()[-2000:]}"
            return chain
        final = h.asof(home, *BACKFILL)
        chain.final_rc = final.rc
        chain.final_statuses = date_statuses(home, D1, D2)
        chain.diff = diff(reference, snapshot(home))
    except Exception as exc:
        chain.error = f"{type(exc).__name__}: {exc}"
    chain.seconds = time.monotonic() - t0
    return chain


@pytest.fixture(scope="module")
def kills() -> dict:
    h = harness()
    landing = h.landing(D1, D2, SCALE, SEED)
    real = Chain("real_process", [Kill("after_commit:silver/transactions:1", "validate",
                                       expect={D1: "interrupted", D2: "interrupted"})])  # fmt: skip
    real_home = h.new_home("kill_e", landing)
    real_proc = _start_real_process(real, real_home)

    # the uninterrupted reference, traced
    ref_home = h.new_home("kill_reference", landing)
    trace_path = h.root / "kill_reference.trace"
    ref = h.asof(ref_home, *BACKFILL, trace=trace_path)
    assert ref.rc == 0, ref.output()[-3000:]
    reference = snapshot(ref_home)
    trace = read_trace(trace_path)
    assert date_statuses(ref_home, D1, D2) == {D1: "succeeded", D2: "succeeded"}

    # a traced, uninterrupted `run --date D2` over a copy of it: the daily chain's kill points,
    # and proof that redoing a succeeded date changes nothing
    redo_home = h.new_home("kill_redo_reference", copy_from=ref_home)
    redo_trace_path = h.root / "kill_redo.trace"
    redo = h.asof(redo_home, *RUN_D2, trace=redo_trace_path)
    assert redo.rc == 0, redo.output()[-3000:]
    redo_diff = diff(reference, snapshot(redo_home))
    redo_trace = read_trace(redo_trace_path)

    gold_tables = [lbl.split(":", 1)[1] for lbl, _ in trace if lbl.startswith("after_commit:gold/")]
    chains = {
        "fresh_backfill": (
            Chain("fresh_backfill", backfill_kills(trace)),
            h.new_home("kill_a", landing),
            BACKFILL,
        ),
        "daily_rerun": (
            Chain("daily_rerun", daily_rerun_kills(redo_trace)),
            h.new_home("kill_c", copy_from=ref_home),
            RUN_D2,
        ),
        "chunked": (
            Chain(
                "chunked",
                [
                    Kill(
                        f"after_commit:{gold_tables[0]}:2",
                        "transform",
                        expect={D1: "pending", D2: "interrupted"},
                    )
                ],
            ),
            h.new_home("kill_d", landing),
            (*BACKFILL, "--chunk-days", "1"),
        ),
    }

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(_run_chain, c, home, argv, reference) for c, home, argv in chains.values()]
        futures.append(pool.submit(_finish_real_process, real, real_proc, real_home, reference))
        done = [f.result() for f in futures]
    return {
        "chains": {c.name: c for c in done},
        "redo_diff": redo_diff,
        "trace": trace,
        "reference_seconds": ref.elapsed,
        "reference": reference,
        "reference_home": ref_home,
    }


CHAINS = ["fresh_backfill", "daily_rerun", "chunked", "real_process"]


def test_redoing_a_succeeded_date_changes_nothing(kills) -> None:
    assert kills["redo_diff"] == ""


def test_enough_kill_points_in_every_stage(kills) -> None:
    all_kills = [k for c in kills["chains"].values() for k in c.kills]
    assert len(all_kills) >= 20
    stages = {k.stage for k in all_kills}
    assert {"ingest", "validate", "transform", "materialize", "run records"} <= stages
    print("\nkill points:", len(all_kills))
    for c in kills["chains"].values():
        print(f"  {c.name}: {len(c.kills)} kills, {c.seconds:.0f}s")


@pytest.mark.parametrize("name", CHAINS)
def test_every_kill_point_fired(kills, name) -> None:
    chain = kills["chains"][name]
    assert not chain.error, chain.error
    for kill in chain.kills:
        assert kill.rc == -signal.SIGKILL, (kill.spec, kill.rc)


@pytest.mark.parametrize("name", CHAINS)
def test_killed_runs_are_recorded_as_interrupted_never_succeeded(kills, name) -> None:
    chain = kills["chains"][name]
    assert not chain.error, chain.error
    for kill in chain.kills:
        assert kill.statuses == kill.expect, kill.spec


@pytest.mark.parametrize("name", CHAINS)
def test_rerun_converges_to_the_uninterrupted_lake(kills, name) -> None:
    chain = kills["chains"][name]
    assert not chain.error, chain.error
    assert chain.final_rc == 0
    assert chain.final_statuses == {D1: "succeeded", D2: "succeeded"}
    assert chain.diff == "", f"{name} differs from the uninterrupted run:\n{chain.diff}"


@pytest.mark.parametrize("name", [n for n in CHAINS if n != "real_process"])
def test_vacuum_after_kills_removes_no_live_data(kills, name) -> None:
    chain = kills["chains"][name]
    assert not chain.error, chain.error
    assert chain.vacuum_diff == ""


def test_a_failed_run_exits_non_zero() -> None:
    h = harness()
    home = h.new_home("exit_code")
    run = h.asof(home, *RUN_D2)
    assert "not delivered" in run.output()
    assert run.rc not in (0, None)


# ---------------------------------------------------------------- damage from outside (asof verify)


def test_an_emptied_commit_is_named_then_repaired_to_the_undamaged_lake(kills) -> None:
    """Issue 23: the newest commit of silver/transactions emptied (its rows silently gone to every
    reader): `asof verify` names the file and exits 1, status shows the dates damaged, and
    `asof verify --repair` sets the file aside and recomputes the dates: every table and the
    online store equal the undamaged run's."""
    h = harness()
    home = h.new_home("damage_commit", copy_from=kills["reference_home"])
    log = home / "lake" / "silver" / "transactions" / "_delta_log"
    newest = max(log.glob("*.json"))
    newest.write_bytes(b"")
    found = h.asof(home, "verify")
    assert (
        found.rc == 1
        and f"silver/transactions _delta_log/{newest.name}: commit file is empty" in found.output()
    )
    repaired = h.asof(home, "verify", "--repair")
    assert repaired.rc == 0, repaired.output()[-3000:]
    out = repaired.output()
    assert f"repair: set aside silver/transactions _delta_log/{newest.name}" in out and "--force" in out
    assert list((home / "cache" / "damaged" / "silver" / "transactions").iterdir())  # kept, not deleted
    assert date_statuses(home, D1, D2) == {D1: "succeeded", D2: "succeeded"}
    assert diff(kills["reference"], snapshot(home)) == ""


def test_a_lost_checkpoint_hint_is_set_aside_without_a_rerun(kills) -> None:
    h = harness()
    home = h.new_home("damage_hint", copy_from=kills["reference_home"])
    hint = home / "lake" / "gold" / "merchant_features_daily" / "_delta_log" / "_last_checkpoint"
    hint.write_text(json.dumps({"version": 42, "size": 3}))
    found = h.asof(home, "verify", "--json")
    assert found.rc == 1 and "names checkpoint 42, which is not there" in found.output()
    repaired = h.asof(home, "verify", "--repair")
    assert repaired.rc == 0 and "no damage found" in repaired.output() and "backfill" not in repaired.output()
    assert not hint.exists()
    assert diff(kills["reference"], snapshot(home)) == ""


def test_a_tampered_online_store_is_found_and_rematerialized(kills) -> None:
    """`asof verify --online` compares the online store with gold's newest rows; `--repair`
    re-materializes it: the online store equals the undamaged run's again."""
    import sqlite3

    from feast.protos.feast.types.Value_pb2 import Value

    h = harness()
    home = h.new_home("damage_online", copy_from=kills["reference_home"])
    with sqlite3.connect(home / "feast" / "online.db") as conn:
        changed = conn.execute(
            "UPDATE asof_customer_txn_features_daily SET value = ? WHERE feature_name = 'txn_count_30d'",
            (Value(int64_val=999_999).SerializeToString(),),
        ).rowcount
    assert changed > 0
    assert h.asof(home, "verify").rc == 0  # the lake itself is intact
    found = h.asof(home, "verify", "--online")
    assert found.rc == 1 and "online/customer_txn_features_daily" in found.output()
    repaired = h.asof(home, "verify", "--online", "--repair")
    assert repaired.rc == 0, repaired.output()[-3000:]
    assert "repair: materialize the online store" in repaired.output()
    assert diff(kills["reference"], snapshot(home)) == ""
