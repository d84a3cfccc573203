"""Row labels of a validated frame (flows/validation/frames.py): a day whose line numbers repeat
labels its rows by position. Which days repeat is found by comparing neighbours, sorting only the
days whose line numbers do not rise; it must be what pandas' `duplicated` over (day, line) says."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.validation import frames


def _by_pandas(codes: np.ndarray, lines: np.ndarray) -> np.ndarray:
    dup = pd.DataFrame({"c": codes, "l": lines}).duplicated(keep=False).to_numpy()
    return np.unique(codes[dup])


ROWS = st.lists(st.tuples(st.integers(19_700, 19_704), st.integers(-2, 12)), max_size=80)


@settings(max_examples=150, deadline=None)
@given(rows=ROWS, grouped=st.booleans())
def test_repeated_days_are_those_pandas_finds(rows: list[tuple[int, int]], grouped: bool) -> None:
    if grouped:  # delivery order: a day's rows together
        rows = sorted(rows, key=lambda r: r[0])
    codes = np.array([c for c, _ in rows], dtype=np.int32)
    lines = np.array([n for _, n in rows], dtype=np.int64)
    got = frames.repeated_line_days(codes, lines)
    assert np.array_equal(got, _by_pandas(codes, lines)) and got.dtype == codes.dtype


@settings(max_examples=100, deadline=None)
@given(codes=st.lists(st.integers(-40, 40_000), min_size=0, max_size=30))
def test_yyyymmdd_is_each_days_calendar_date(codes: list[int]) -> None:
    arr = np.array(codes, dtype=np.int64)
    days = pd.to_datetime(arr, unit="D")
    expected = (days.year * 10_000 + days.month * 100 + days.day).to_numpy().astype(np.int64)
    assert np.array_equal(frames.yyyymmdd(arr), expected)
