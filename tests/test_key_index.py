"""`flows.storage.key_index`: the hash index of silver keys that a backfill keeps between dates.

The index may only ever save reads: `present` must answer exactly what a filtered scan of the
whole table answers, and `narrow` must keep every row such a scan returns, for any data, any date,
and even when the hash collides all the time (here forced with a 2-bit hash).
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.storage import key_index, lake

D0 = dt.date(2024, 1, 1)
SCHEMA = pa.schema([("_batch_date", pa.date32()), ("k", pa.string()), ("v", pa.int64())])


def _write(days: dict[int, list[str | None]]) -> None:
    for offset, keys in days.items():
        day = D0 + dt.timedelta(days=offset)
        tbl = pa.table(
            {"_batch_date": [day] * len(keys), "k": keys, "v": list(range(len(keys)))}, schema=SCHEMA
        )
        lake.replace(
            "silver",
            "keys",
            tbl,
            predicate=lake.date_predicate("_batch_date", day),
            partition_by=["_batch_date"],
            schema=SCHEMA,
        )


def _upto(day: dt.date) -> ds.Expression:
    return ds.field("_batch_date") <= pa.scalar(day, pa.date32())


def _scan_present(
    day: dt.date, wanted: list[str | None], row_filter: ds.Expression | None = None
) -> set[str]:
    tbl = lake.dataset("silver", "keys").to_table(
        filter=_upto(day) if row_filter is None else row_filter, columns=["k"]
    )
    values = set(pc.drop_null(tbl.column("k")).to_pylist())
    return {w for w in wanted if w is not None and w in values}


keys = st.text(alphabet="abcd", min_size=0, max_size=3)
days_st = st.dictionaries(
    st.integers(0, 5), st.lists(st.one_of(keys, st.none()), min_size=0, max_size=12), min_size=1, max_size=5
)


@pytest.mark.parametrize("weak_hash", [False, True], ids=["duckdb-hash", "colliding-hash"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    days=days_st,
    wanted=st.lists(st.one_of(keys, st.none()), max_size=10),
    upto=st.integers(0, 6),
    min_v=st.one_of(st.none(), st.integers(0, 6)),
)
def test_present_equals_a_filtered_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weak_hash: bool, days, wanted, upto, min_v
) -> None:
    """`min_v` adds a row filter below the file level: a file whose hashes match a value may then
    hold it only in rows the filter drops, which `present` must not count as found."""
    home = tmp_path / uuid.uuid4().hex
    monkeypatch.setenv("ASOF_HOME", str(home))
    if weak_hash:  # every value lands in one of 4 buckets: collisions everywhere
        real = key_index._hash
        monkeypatch.setattr(key_index, "_hash", lambda v: real(v) % np.uint64(4))
    _write(days)
    day = D0 + dt.timedelta(days=upto)
    rows_of = _upto(day) if min_v is None else _upto(day) & (ds.field("v") >= min_v)
    with key_index.session():
        for _ in range(2):  # cold, then from the index
            dset = lake.dataset("silver", "keys", dates=(None, day))
            got = key_index.present(dset, "k", pa.array(wanted, pa.string()), rows_of)
            assert set(got.to_pylist()) == _scan_present(day, wanted, rows_of)
            assert got.type == pa.string() and len(got) == len(set(got.to_pylist()))
            part, candidates = key_index.narrow(dset, "k", pa.array(wanted, pa.string()), _upto(day))
            rows = part.to_table(filter=_upto(day) & ds.field("k").isin(candidates)).to_pylist()
            non_null = pc.drop_null(pa.array(wanted, pa.string()))  # a null key matches nothing
            whole = dset.to_table(filter=_upto(day) & ds.field("k").isin(non_null))
            assert sorted(map(repr, rows)) == sorted(map(repr, whole.to_pylist()))
    assert not key_index.active() and not key_index._HASHES  # freed after the session
    outside = key_index.present(dset, "k", pa.array(wanted, pa.string()), rows_of)  # plain scan
    assert set(outside.to_pylist()) == _scan_present(day, wanted, rows_of) and not key_index._HASHES


def test_values_held_by_the_newest_snapshot_are_confirmed_from_that_file_alone(home: Path) -> None:
    """Snapshot tables (merchants) repeat every key each date: a batch's merchants are all in the
    latest snapshot, so that one file is hashed and read, whatever the length of the history."""
    _write({d: ["a", "b", "c"] for d in range(6)})
    day = D0 + dt.timedelta(days=5)
    with key_index.session():
        dset = lake.dataset("silver", "keys", dates=(None, day))
        got = key_index.present(dset, "k", pa.array(["c", "a", None, "a"]), _upto(day))
        assert sorted(got.to_pylist()) == ["a", "c"]
        assert [path for path, _ in key_index._HASHES] == [
            f.path for f in dset.get_fragments(filter=ds.field("_batch_date") == pa.scalar(day, pa.date32()))
        ]
        # a value no file holds makes every file a candidate, and is still not found
        got = key_index.present(dset, "k", pa.array(["a", "zz"]), _upto(day))
        assert got.to_pylist() == ["a"] and len(key_index._HASHES) == 6


def test_a_replaced_partition_is_seen_and_the_index_is_bounded(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replaced date gets new files (the old ones leave the snapshot), so the index never serves
    stale keys; past ASOF_KEY_INDEX_MB it starts over instead of growing."""
    _write({0: ["a", "b"], 1: ["c"]})
    day = D0 + dt.timedelta(days=1)

    def found() -> set[str]:
        dset = lake.dataset("silver", "keys", dates=(None, day))
        return set(key_index.present(dset, "k", pa.array(["a", "c", "z"]), _upto(day)).to_pylist())

    with key_index.session():
        assert found() == {"a", "c"} and len(key_index._HASHES) == 2
        _write({0: ["z"]})  # date 0 re-delivered: "a" is gone, "z" arrives
        monkeypatch.setenv("ASOF_KEY_INDEX_MB", "0.00001")  # 10 bytes: one file's hashes at most
        assert found() == {"c", "z"}
        assert key_index._BYTES == 8 and len(key_index._HASHES) == 1


def test_outside_a_session_the_index_is_off() -> None:
    assert not key_index.active()
    with key_index.session(), key_index.session():
        assert key_index.active()
    assert not key_index.active()


def test_a_value_matched_only_by_a_collision_is_looked_up_in_the_whole_table(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one hash for every value, the newest file seems to hold them all; the values it does not
    hold must still be found where they are (and a value held nowhere must not be)."""
    monkeypatch.setattr(key_index, "_hash", lambda v: np.zeros(len(v), np.uint64))
    _write({0: ["a"], 1: ["b"], 2: ["c"]})
    day = D0 + dt.timedelta(days=2)
    with key_index.session():
        dset = lake.dataset("silver", "keys", dates=(None, day))
        got = key_index.present(dset, "k", pa.array(["a", "b", "c", "z"]), _upto(day))
        assert sorted(got.to_pylist()) == ["a", "b", "c"]
