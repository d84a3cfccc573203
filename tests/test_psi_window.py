"""PSI's sliding reference (flows/monitoring/drift.py): the window kept sorted as it slides, and
PSI of a sorted reference, give exactly what the plain computation gives (a concatenation of the
days' samples, numpy's quantile and median, one bin per value)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.monitoring.drift import SortedWindow, psi, psi_of_sorted

# few distinct values, so that ties (a discrete feature) and repeated values across days are common
VALUE = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 2.0, 2.5, 10.0]),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)
DAY = st.lists(VALUE, max_size=40).map(lambda xs: np.sort(np.array(xs, dtype=np.float64)))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal element by element, including the sign of zeros."""
    return a.shape == b.shape and np.array_equal(a, b) and np.array_equal(np.signbit(a), np.signbit(b))


@settings(max_examples=80, deadline=None)
@given(
    samples=st.lists(DAY, min_size=1, max_size=30),
    windows=st.lists(st.tuples(st.integers(0, 29), st.integers(1, 12)), min_size=1, max_size=25),
    current=st.lists(VALUE, min_size=1, max_size=60),
)
def test_the_sliding_window_and_its_psi_equal_the_plain_computation(samples, windows, current) -> None:
    window = SortedWindow()
    cur = np.array(current, dtype=np.float64)
    for start, length in windows:
        days = [d for d in range(start, start + length) if d < len(samples)]
        ref = window.over(days, lambda d: samples[d])
        plain = np.concatenate([samples[d] for d in days]) if days else np.array([], dtype=np.float64)
        assert np.array_equal(ref, np.sort(plain))
        if not plain.size:
            continue
        value, edges, q, p = psi(plain, cur)
        got = psi_of_sorted(ref, cur)
        assert got[0] == value
        assert np.array_equal(got[1], edges)
        # +0.0 and -0.0 are the same value: which of them an edge shows is the sort's choice
        assert _same(got[1], edges) or (plain == 0).any()
        assert np.array_equal(got[2], q) and np.array_equal(got[3], p)
        assert got[4] == float(np.median(plain))


def test_a_day_that_slides_in_and_out_is_inserted_and_deleted_not_resorted() -> None:
    rng = np.random.default_rng(7)
    days = {d: np.sort(rng.integers(0, 5, 100).astype(np.float64)) for d in range(40)}
    window = SortedWindow()
    window.over(list(range(0, 28)), days.__getitem__)
    before = window.values
    slid = window.over(list(range(1, 29)), days.__getitem__)
    assert slid is not before and window.days == list(range(1, 29))
    assert np.array_equal(slid, np.sort(np.concatenate([days[d] for d in range(1, 29)])))
