"""Delivery order (flows.validation.history.ordered): rows already in order are kept as they are
(the sort and take of every column is skipped), anything else is sorted; either way the result is
exactly the stable sort by batch date, file and row number."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.validation.history import ORDER, ordered

ROW = st.tuples(
    st.dates(dt.date(2024, 1, 1), dt.date(2024, 1, 4)),
    st.sampled_from(["landing/t/a.csv", "landing/t/b.csv", "landing/t/B.csv", "landing/t/ä.csv"]),
    st.integers(1, 6),
)
# consecutive row numbers of one file: the runs a written file gives
RUN = st.tuples(ROW, st.integers(1, 5)).map(lambda t: [(t[0][0], t[0][1], t[0][2] + i) for i in range(t[1])])


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
@given(rows=st.lists(ROW, max_size=40), presort=st.sampled_from(["no", "rows", "pieces"]), seed=st.randoms())
def test_ordered_is_the_stable_sort(rows, presort, seed) -> None:
    if presort == "rows":
        rows = sorted(rows)
    elif presort == "pieces":  # a scan's files in any order, each in delivery order
        ordered_rows = sorted(rows)
        cuts = sorted(seed.sample(range(1, len(rows)), min(4, max(0, len(rows) - 1)))) if rows else []
        pieces = [ordered_rows[a:b] for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True)]
        seed.shuffle(pieces)
        rows = [r for piece in pieces for r in piece]
    tbl = _table(rows)
    want = tbl.sort_by(ORDER)
    assert ordered(tbl).equals(want)


def test_the_result_has_one_chunk_per_column() -> None:
    """As the sort's: GE's row filters take from these columns, slowly over many chunks."""
    rows = [(dt.date(2024, 1, 1), "landing/t/a.csv", 1), (dt.date(2024, 1, 1), "landing/t/b.csv", 1)]
    tbl = pa.concat_tables([_table(rows[:1]), _table(rows[1:])])
    assert tbl.equals(tbl.sort_by(ORDER)) and tbl.column("payload").num_chunks == 2
    assert ordered(tbl).equals(tbl) and ordered(tbl).column("payload").num_chunks == 1
    swapped = pa.concat_tables([_table(rows[1:]), _table(rows[:1])])
    assert not swapped.equals(swapped.sort_by(ORDER))
    assert ordered(swapped).equals(tbl) and ordered(swapped).column("payload").num_chunks == 1


@settings(max_examples=200, deadline=None)
@given(runs=st.lists(RUN, max_size=12))
def test_runs_of_consecutive_rows_in_any_order(runs) -> None:
    """What a scan returns: files' runs of consecutive row numbers, in any order."""
    tbl = _table([r for run in runs for r in run])
    assert ordered(tbl).equals(tbl.sort_by(ORDER))
