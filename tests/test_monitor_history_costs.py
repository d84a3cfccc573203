"""Monitoring's per-date shortcuts select exactly what the whole-history computations selected.

`flows.monitoring.metrics._LatestKnown` keeps the latest row per entity of a change log up to date
date by date instead of filtering and deduplicating the whole log for every date (issue 17); these
tests compare it with that computation on logs with ties, unknown dates, null entities and dates
asked out of order.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from flows.monitoring.metrics import _complete, _LatestKnown


def _reference(frame: pd.DataFrame, entity: str, features: list[str], day: dt.date) -> set:
    """What coverage computed before: the log known by `day`, newest row per entity, complete ones."""
    known = frame[frame["as_of_date"] <= day] if "as_of_date" in frame else frame
    latest = known.drop_duplicates(entity, keep="last")
    return set(latest.loc[_complete(latest, features), entity].tolist())


def _log(seed: int, rows: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = dt.date(2024, 1, 1)
    days = [start + dt.timedelta(days=int(d)) for d in rng.integers(0, 40, rows)]
    frame = pd.DataFrame(
        {
            "customer_id": rng.integers(0, 60, rows).astype("int64"),
            "as_of_date": days,
            "country": rng.choice(["DE", "FR", None], rows, p=[0.45, 0.45, 0.1]),
            "kyc_level": np.where(rng.random(rows) < 0.1, np.nan, rng.integers(0, 4, rows)),
        }
    )
    frame["feature_timestamp"] = pd.to_datetime(frame["as_of_date"]) + pd.Timedelta(days=1)
    # the monitor sorts by time, stably: rows of one date keep their order (ties)
    return frame.sort_values("feature_timestamp", kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_latest_known_equals_filtering_the_whole_log(seed: int) -> None:
    frame = _log(seed)
    features = ["country", "kyc_level"]
    latest = _LatestKnown(frame, "customer_id", features)
    start = dt.date(2024, 1, 1)
    # in order (the monitor's case), then back in time (starts over), with dates before any row
    asked = [start + dt.timedelta(days=d) for d in [-3, 0, 1, 5, 5, 17, 39, 45, 2, 30, -1, 39]]
    for day in asked:
        got = latest.complete_ids(day)
        assert len(got) == len(set(got.tolist()))
        assert set(got.tolist()) == _reference(frame, "customer_id", features, day), day


def test_latest_known_null_entities_and_dates() -> None:
    frame = _log(3, rows=120)
    frame["customer_id"] = frame["customer_id"].astype("float64")
    frame.loc[::7, "customer_id"] = np.nan  # entity unknown: deduplicated together, like pandas does
    frame["as_of_date"] = frame["as_of_date"].astype(object)
    frame.loc[::11, "as_of_date"] = None  # never known, as `None <= day` selected nothing
    features = ["country"]
    latest = _LatestKnown(frame, "customer_id", features)
    for offset in range(-1, 42, 3):
        day = dt.date(2024, 1, 1) + dt.timedelta(days=offset)
        got = {x for x in latest.complete_ids(day).tolist() if x == x}  # NaN aside
        want = {x for x in _reference_none_safe(frame, features, day) if x == x}
        assert got == want, day


def _reference_none_safe(frame: pd.DataFrame, features: list[str], day: dt.date) -> set:
    known = frame[frame["as_of_date"].map(lambda d: d is not None and d <= day)]
    latest = known.drop_duplicates("customer_id", keep="last")
    return set(latest.loc[_complete(latest, features), "customer_id"].tolist())


def test_latest_known_without_dates_uses_every_row() -> None:
    frame = _log(4).drop(columns=["as_of_date"])
    latest = _LatestKnown(frame, "customer_id", ["country"])
    got = set(latest.complete_ids(dt.date(2020, 1, 1)).tolist())
    assert got == _reference(frame, "customer_id", ["country"], dt.date(2020, 1, 1))
