"""Ten dates of hand-built bronze batches whose faults cross dates (a re-delivery, duplicates, a
rejected batch and its re-delivered rows, chargebacks known only later), and a snapshot of what
validation wrote: the reference the range and slice tests compare runs with."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from flows.storage import lake
from tests.bronze_batches import land
from tests.conftest import data_root
from tests.test_validate import merchant, txn

D = [dt.date(2024, 2, 1) + dt.timedelta(days=i) for i in range(10)]
LAYERS = {"silver": ("merchants", "transactions", "chargebacks"), "quarantine": ("merchants", "transactions")}
VOLATILE = {"_validation_run_id", "_quarantined_at", "validation_run_id", "validated_at", "data_docs_path"}


def chargeback(txn_id: str, day: dt.date) -> dict:
    return {"txn_id": txn_id, "chargeback_time": f"{day.isoformat()}T05:00:00Z", "reason_code": "fraud"}


def land_ten_dates() -> None:
    """Ten dates: day 0-6 clean history, then the faults."""
    for k, day in enumerate(D):
        land("merchants", day, [merchant(i) for i in range(1, 5)])
        land("customers", day, [], header=None)  # an empty change feed: a valid batch
        rows = [txn(1000 * k + i, day, amount=f"{20 + i % 10}.00") for i in range(40)]
        if k == 2:  # t02000 quarantined (bad amount) on day 2, re-delivered corrected on day 3
            rows[0] = txn(2000, day, amount="-5.00")
        if k == 3:
            rows.append(txn(2000, D[2], amount="21.00"))  # the corrected re-delivery: first now
            rows.append(txn(1001, D[1], amount="21.00"))  # same content as day 1's: duplicate
            rows.append(txn(1002, D[1], amount="99.00"))  # different content: conflicting
        if k == 7:  # cents: the whole batch rejected by the drift rule
            rows = [txn(7000 + i, day, amount=f"{(20 + i % 10) * 100}.00") for i in range(40)]
        if k == 8:  # re-deliveries of the rejected day's rows: first deliveries now
            rows += [txn(7000 + i, D[7], amount=f"{20 + i % 10}.00") for i in range(3)]
        land("transactions", day, rows)
        cbs = [chargeback("t07001", day)] if k == 8 else []  # known from day 8 on, not day 7
        if k == 9:
            cbs = [chargeback("t07002", day), chargeback("t09999", day)]  # known / never delivered
        land("chargebacks", day, cbs, header=["txn_id", "chargeback_time", "reason_code"])


def snapshot() -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for layer, tables in {**LAYERS, "ops": ("validations",)}.items():
        for name in tables:
            if not lake.exists(layer, name):
                out[f"{layer}/{name}"] = []
                continue
            tbl = lake.read(layer, name)
            keep = [c for c in tbl.column_names if c not in VOLATILE]
            out[f"{layer}/{name}"] = sorted(
                tuple(str(v) for v in r.values()) for r in tbl.select(keep).to_pylist()
            )
    return out


def landed_home(home: Path) -> Path:
    """`home` with the ten dates' bronze batches and ingest records: the start of every run compared."""
    with data_root(home):
        land_ten_dates()
    return home


def copy_lake(landed: Path, home: Path) -> None:
    """`home`'s lake made a copy of the landed one: each run starts from the same bronze."""
    shutil.rmtree(home / "lake", ignore_errors=True)
    shutil.copytree(landed / "lake", home / "lake")


VERDICT_FIELDS = ("status", "rows_silver", "rows_quarantined", "reasons", "rejected_rule", "message")


def assert_same_validation(
    outs: dict, expected: dict, fields: tuple[str, ...] = VERDICT_FIELDS
) -> dict[str, list[tuple]]:
    """The lake's tables (`snapshot()`) and every date's verdict per source, on `fields`, equal
    `expected` (a reference run's {"tables": snapshot(), "outs": its outcomes}). Returns the snapshot."""
    got = snapshot()
    for table, rows in expected["tables"].items():
        assert got[table] == rows, table
    for day, per_source in expected["outs"].items():
        for source, want in per_source.items():
            have = outs[day][source]
            assert [getattr(have, f) for f in fields] == [getattr(want, f) for f in fields], (day, source)
    return got
