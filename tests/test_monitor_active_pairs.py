"""Monitoring's coverage of a big day (issue 23 item 7): the day's active (customer, merchant) pairs
are collected from silver batch by batch, not read whole, and equal what reading it whole gave."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flows.dates import day_start_utc
from flows.monitoring import metrics
from flows.storage import lake
from tests import reference_features as rf

START = dt.date(2024, 1, 1)


def _read_whole(day: dt.date) -> set[tuple[int, int]]:
    """What _coverage computed before: the day's rows read whole, filtered, deduplicated in pandas."""
    tbl = lake.read(
        "silver", "transactions", days=[day], columns=["customer_id", "merchant_id", "event_time"]
    )
    lo = pa.scalar(day_start_utc(day), tbl.schema.field("event_time").type)
    hi = pa.scalar(day_start_utc(day + dt.timedelta(days=1)), tbl.schema.field("event_time").type)
    mask = pc.and_(pc.greater_equal(tbl["event_time"], lo), pc.less(tbl["event_time"], hi))
    frame = tbl.filter(mask).select(["customer_id", "merchant_id"]).to_pandas().dropna().drop_duplicates()
    return {(int(c), int(m)) for c, m in frame.itertuples(index=False)}


def test_active_pairs_in_small_batches_equal_the_whole_day_deduplicated(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    silver = rf.generate_silver(START, 8, quarantined_days=(), txns_per_day=60)
    rf.write_silver(silver)
    day = START + dt.timedelta(days=5)
    txns = silver.transactions
    # rows without a customer or a merchant, and repeated pairs, in the day's batch
    odd = txns[txns["_batch_date"] == day].head(6).copy()
    odd["txn_id"] = [f"odd-{i}" for i in range(len(odd))]
    odd.loc[odd.index[:2], "customer_id"] = None
    odd.loc[odd.index[2:3], "merchant_id"] = None
    rf.append_silver_rows("transactions", odd)
    batch = txns[txns["_batch_date"] == day]
    late = batch["event_time"] < pd.Timestamp(day_start_utc(day))
    assert late.any() and (~late).any(), "the batch has events of earlier days and of its own"

    want = _read_whole(day)
    monkeypatch.setattr(metrics, "_ACTIVE_BATCH_ROWS", 7)  # many batches, merged again and again
    monkeypatch.setattr(metrics, "_ACTIVE_MERGE_ROWS", 5)
    got = metrics._active_pairs(lake.dataset("silver", "transactions"), day)
    assert list(got.columns) == ["customer_id", "merchant_id"]
    assert len(got) == len(want) and set(got.itertuples(index=False, name=None)) == want
    assert got.notna().all().all()
    # a day with no batch: no pair
    assert metrics._active_pairs(lake.dataset("silver", "transactions"), START + dt.timedelta(days=30)).empty
