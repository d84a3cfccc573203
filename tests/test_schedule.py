"""The execution date of a scheduled run comes from its scheduled start, in UTC."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flows.pipeline import execution_date_for


@pytest.mark.parametrize(
    "scheduled, lag, expected",
    [
        (dt.datetime(2024, 3, 10, 1, 30, tzinfo=dt.UTC), 1, dt.date(2024, 3, 9)),
        (dt.datetime(2024, 3, 10, 0, 0, tzinfo=dt.UTC), 1, dt.date(2024, 3, 9)),
        (dt.datetime(2024, 3, 10, 23, 59, 59, tzinfo=dt.UTC), 1, dt.date(2024, 3, 9)),
        (dt.datetime(2024, 3, 10, 1, 30, tzinfo=dt.UTC), 0, dt.date(2024, 3, 10)),
        (dt.datetime(2024, 3, 10, 1, 30, tzinfo=dt.UTC), 3, dt.date(2024, 3, 7)),
        # 20:00 in New York on the 9th is 01:00 UTC on the 10th: the UTC day counts
        (dt.datetime(2024, 3, 9, 20, 0, tzinfo=ZoneInfo("America/New_York")), 1, dt.date(2024, 3, 9)),
        # 08:00 in Tokyo on the 10th is 23:00 UTC on the 9th
        (dt.datetime(2024, 3, 10, 8, 0, tzinfo=ZoneInfo("Asia/Tokyo")), 1, dt.date(2024, 3, 8)),
        # across a DST change in Europe
        (dt.datetime(2024, 3, 31, 2, 30, tzinfo=ZoneInfo("Europe/Berlin")), 1, dt.date(2024, 3, 30)),
        # year and leap-day boundaries
        (dt.datetime(2024, 1, 1, 0, 30, tzinfo=dt.UTC), 1, dt.date(2023, 12, 31)),
        (dt.datetime(2024, 3, 1, 6, 0, tzinfo=dt.UTC), 1, dt.date(2024, 2, 29)),
    ],
)
def test_execution_date_from_scheduled_start(scheduled: dt.datetime, lag: int, expected: dt.date) -> None:
    assert execution_date_for(scheduled, lag) == expected


def test_naive_scheduled_time_is_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        execution_date_for(dt.datetime(2024, 3, 10, 1, 30))


@given(
    st.datetimes(
        timezones=st.sampled_from([dt.UTC, ZoneInfo("America/Los_Angeles"), ZoneInfo("Asia/Kolkata")])
    )
)
def test_same_instant_same_date_in_any_zone(when: dt.datetime) -> None:
    utc = when.astimezone(dt.UTC)
    assert execution_date_for(when) == execution_date_for(utc) == utc.date() - dt.timedelta(days=1)


def _record(days: list[dt.date], status: str) -> None:
    from flows.operations import runs

    recs = [runs.StageRecord(d, stage, runs.ALL_SOURCES, status) for d in days for stage in runs.STAGES]
    runs.append(f"run-{status}-{days[0]}", None, recs)


def test_catch_up_runs_missed_dates_oldest_first_and_skips_succeeded_ones(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker was down: the next scheduled run does the dates missed since the newest succeeded
    date, in order, then its own; dates that already succeeded are not redone; the window is
    bounded (ASOF_CATCHUP_MAX_DAYS) so a month-long outage is left to the backfill deployment."""
    from flows.pipeline import catch_up_dates

    monkeypatch.setenv("ASOF_HOME", str(tmp_path))
    monkeypatch.delenv("ASOF_CATCHUP_MAX_DAYS", raising=False)
    day = dt.date(2024, 3, 10)
    assert catch_up_dates(day) == [day]  # a fresh lake: nothing to catch up from

    _record([dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3), dt.date(2024, 3, 6)], "succeeded")
    _record([dt.date(2024, 3, 7)], "failed")
    # newest succeeded is the 6th: the 7th (failed), 8th and 9th, then the 10th
    assert catch_up_dates(day) == [dt.date(2024, 3, d) for d in (7, 8, 9, 10)]
    _record([dt.date(2024, 3, 8)], "succeeded")
    assert catch_up_dates(day) == [dt.date(2024, 3, 9), day]  # the 7th is before the newest success now
    _record([day], "succeeded")
    assert catch_up_dates(day) == [day]  # a rerun of a succeeded date redoes only that date
    # an outage longer than the window: only the last max_days dates
    later = dt.date(2024, 3, 30)
    assert catch_up_dates(later, max_days=4) == [dt.date(2024, 3, d) for d in (27, 28, 29, 30)]
    monkeypatch.setenv("ASOF_CATCHUP_MAX_DAYS", "2")
    assert catch_up_dates(later) == [dt.date(2024, 3, 29), later]
