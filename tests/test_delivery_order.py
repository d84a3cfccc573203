"""Delivery order (flows.validation.history.ordered): rows already in order are kept as they are
(the sort and take of every column is skipped), anything else is sorted; either way the result is
exactly the stable sort by batch date, file and row number."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.validation.history import ORDER, in_delivery_order, ordered

ROW = st.tuples(
    st.dates(dt.date(2024, 1, 1), dt.date(2024, 1, 4)),
    st.sampled_from(["landing/t/a.csv", "landing/t/b.csv", "landing/t/B.csv", "landing/t/ä.csv"]),
    st.integers(1, 6),
)


def _table(rows: list[tuple[dt.date, str, int]]) -> pa.Table:
    days, files, lines = zip(*rows, strict=True) if rows else ((), (), ())
    return pa.table(
        {
            "_batch_date": pa.array(days, pa.date32()),
            "_source_file": pa.array(files, pa.string()),
            "_row_number": pa.array(lines, pa.int64()),
            "payload": pa.array(range(len(rows)), pa.int64()),  # tells equal keys apart
        }
    )


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(ROW, max_size=40), presort=st.booleans())
def test_ordered_is_the_stable_sort(rows, presort) -> None:
    tbl = _table(sorted(rows) if presort else rows)
    want = tbl.sort_by(ORDER)
    assert ordered(tbl).equals(want)
    assert in_delivery_order(tbl) == tbl.equals(want)


def test_a_table_in_order_is_returned_as_it_is() -> None:
    tbl = _table([(dt.date(2024, 1, 1), "landing/t/a.csv", 1), (dt.date(2024, 1, 1), "landing/t/b.csv", 1)])
    assert ordered(tbl) is tbl
    swapped = tbl.take([1, 0])
    assert not in_delivery_order(swapped) and ordered(swapped).equals(tbl)
