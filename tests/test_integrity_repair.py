"""Damage `asof verify --repair` rebuilds from upstream (issue 23 items 1 and 7), in the style of
the kill tests (tests/test_kill.py, shared harness): a real three-date lake, damaged the way an
operator or a failing disk would, then verify names table, file and date, `--repair` prints its
plan and carries it out, and every table and the online store equal the undamaged run's.

- gold rows of one as-of date deleted by hand (a valid Delta commit: bronze and silver intact);
- an older commit of silver/transactions emptied (not the newest: the table is set aside whole and
  rebuilt by a forced backfill);
- a silver data file deleted outside the pipeline (forgotten in the log, its date rerun);
- the online store emptied (a Redis restarted without persistence, here the SQLite tables): status
  says so and exits 1, a plain backfill re-materializes instead of skipping.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from tests.kill_harness import date_statuses, diff, harness, snapshot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

D1, D2, D3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
SCALE, SEED = "200x400", 5
DATES = {D1: "succeeded", D2: "succeeded", D3: "succeeded"}
# one chunk per date: every table has a commit per date, so there is an older commit to damage
BACKFILL = ("backfill", "--start", D1.isoformat(), "--end", D3.isoformat(), "--chunk-days", "1")


@pytest.fixture(scope="module")
def reference() -> tuple[Path, dict[str, list[str]]]:
    h = harness()
    return h.reference(h.landing(D1, D3, SCALE, SEED), *BACKFILL)


def _damaged_home(name: str, reference: tuple[Path, dict]) -> Path:
    return harness().new_home(name, copy_from=reference[0])


def _repaired(home: Path, reference: tuple[Path, dict], *expected: str) -> str:
    """`asof verify --repair`: its plan names every `expected` line, it ends with no damage, and
    the lake and online store equal the undamaged run's."""
    out = harness().asof(home, "verify", "--repair")
    text = out.output()
    assert out.rc == 0, text[-3000:]
    for line in expected:
        assert line in text, text[-3000:]
    assert "no damage found" in text
    assert date_statuses(home, D1, D3) == DATES
    assert diff(reference[1], snapshot(home)) == ""
    return text


def test_gold_rows_deleted_by_hand_are_named_per_date_and_recomputed(reference) -> None:
    from deltalake import DeltaTable

    home = _damaged_home("damage_gold_rows", reference)
    gold = DeltaTable(str(home / "lake" / "gold" / "customer_txn_features_daily"))
    held = gold.to_pyarrow_table(filters=[("as_of_date", "=", D2)]).num_rows
    assert held > 0
    gold.delete(f"as_of_date = '{D2.isoformat()}'")  # a valid commit: only the run records disagree
    found = harness().asof(home, "verify")
    assert found.rc == 1
    assert (
        f"gold/customer_txn_features_daily ({D2}): holds 0 rows, the transform wrote {held}" in found.output()
    )
    status = harness().asof(home, "status")
    assert status.rc == 1 and date_statuses(home, D1, D3)[D2] == "damaged"
    _repaired(home, reference, "asof backfill", "(dates not succeeded only)")


def test_an_older_damaged_commit_sets_the_table_aside_and_rebuilds_it(reference) -> None:
    home = _damaged_home("damage_older_commit", reference)
    log = home / "lake" / "silver" / "transactions" / "_delta_log"
    commits = sorted(log.glob("*.json"))
    assert len(commits) >= 3
    older = commits[1]  # D2's split: D3's commit comes after it
    older.write_bytes(b"")
    found = harness().asof(home, "verify")
    assert found.rc == 1
    assert f"silver/transactions _delta_log/{older.name}: commit file is empty" in found.output()
    dry = harness().asof(home, "verify", "--repair", "--dry-run")
    assert dry.rc == 1 and "set aside the whole table silver/transactions" in dry.output()
    assert older.exists() and not (home / "cache" / "damaged").exists()  # the plan only
    _repaired(home, reference, "set aside the whole table silver/transactions", "--force (every date)")
    kept = list((home / "cache" / "damaged" / "silver").iterdir())
    assert kept and kept[0].name.startswith("transactions.")  # kept, not deleted


def test_a_data_file_deleted_outside_is_forgotten_and_its_date_rerun(reference) -> None:
    home = _damaged_home("damage_data_file", reference)
    table = home / "lake" / "silver" / "transactions"
    victim = next(table.glob(f"_batch_date={D2.isoformat()}/*.parquet"))
    victim.unlink()
    rel = victim.relative_to(table).as_posix()
    found = harness().asof(home, "verify")
    assert found.rc == 1
    assert f"silver/transactions {rel}: data file of the current version is missing" in found.output()
    _repaired(home, reference, f"forget silver/transactions {rel}", f"rerun {D2}", "asof backfill --force")


def test_an_emptied_online_store_is_reported_and_rematerialized_by_a_backfill(reference) -> None:
    h = harness()
    home = _damaged_home("damage_online_emptied", reference)
    with sqlite3.connect(home / "feast" / "online.db") as conn:  # what a Redis restart leaves
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for t in tables:
            conn.execute(f'DELETE FROM "{t}"')
    status = h.asof(home, "status")
    assert status.rc == 1 and "online store emptied" in status.output()
    assert set(date_statuses(home, D1, D3).values()) == {"pending"}  # never `succeeded`
    assert h.asof(home, "verify").rc == 1
    found = h.asof(home, "verify", "--online")
    assert found.rc == 1 and "online/store: online store emptied" in found.output()
    backfill = h.asof(home, "backfill", "--start", D1.isoformat(), "--end", D3.isoformat())
    assert backfill.rc == 0, backfill.output()[-3000:]
    assert "already succeeded" not in backfill.output()  # not skipped: re-materialized
    assert date_statuses(home, D1, D3) == DATES
    assert h.asof(home, "status").rc == 0
    assert diff(reference[1], snapshot(home)) == ""


def test_a_half_written_landing_file_makes_its_date_wait_until_it_is_whole(reference) -> None:
    """Issue 23 item 2: a transactions file cut mid-record (a transfer that failed, a producer
    still writing) is not a smaller batch. Its date waits as `partial` naming the file, a backfill
    stops there, and once the whole file lands the same backfill converges to the clean run."""
    h = harness()
    home = h.new_home("partial_delivery", landing=h.landing(D1, D3, SCALE, SEED))
    landed = home / "landing" / "transactions" / D2.isoformat() / "transactions.csv"
    whole = landed.read_bytes()
    lines = whole.splitlines(keepends=True)
    cut = b"".join(lines[: len(lines) * 3 // 5]) + lines[len(lines) * 3 // 5][:-12]  # `...T16:` style
    landed.write_bytes(cut)

    first = h.asof(home, *BACKFILL)
    assert first.rc != 0, first.output()[-3000:]
    statuses = date_statuses(home, D1, D3)
    assert statuses[D1] == "succeeded" and statuses[D2] == "partial", statuses
    status = h.asof(home, "status")
    assert f"landing/transactions/{D2}/transactions.csv ends mid-record" in status.output()

    landed.write_bytes(whole)  # the complete delivery
    again = h.asof(home, *BACKFILL)
    assert again.rc == 0, again.output()[-3000:]
    assert date_statuses(home, D1, D3) == DATES
    assert diff(reference[1], snapshot(home)) == ""
