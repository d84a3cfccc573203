"""First delivery wins: the `_delivery` helper column over all the dates validated together.

A row's verdict is `first`, `duplicate` (an identical copy of an earlier delivery) or
`conflicting_duplicate` (a different one); None when its key is incomplete. Earlier deliveries are
the rows in silver of earlier batch dates (within the rule's look-back), compared with the first of
them; without one, the first row of the key in its own batch wins and later rows of the batch are
compared with it (even if that first row fails another rule).

Over several dates, "in silver" for a row of an earlier date of the same run means: it is the
first delivery of its key, it passes every other row rule, and its batch is not rejected. The last
two are GE's verdicts, which depend on this column (a rejected batch can be rejected for its share
of duplicates); the stage iterates to the fixpoint, passing the previous iteration's verdicts in
`eligible` (flows.validation.stage).

Keys are compared in Arrow; signatures are built, and the walk runs in Python, only for the rows
whose key occurs more than once (in these dates or in the earlier silver rows): a handful of rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.validation.contracts import Contract
from flows.validation.frames import code_day
from flows.validation.parsing import join_text, key_and_signature


def deliveries(
    contract: Contract,
    typed: dict[str, pa.ChunkedArray],
    codes: np.ndarray,
    earlier: pa.Table | None,
    eligible: np.ndarray,
    lookback_days: int | None,
    *,
    across_batches: bool = True,
    same_day_counts: bool = False,
    rows_at: Callable[[np.ndarray], dict[str, pa.ChunkedArray]] | None = None,
) -> np.ndarray:
    """The `_delivery` verdict of every row (rows in delivery order; `codes[i]`: row i's batch date
    as days since 1970-01-01; `earlier`: silver rows of earlier batch dates in delivery order, None
    if none). `same_day_counts`: silver rows of a row's own batch date count as earlier deliveries
    (re-judging quarantined rows of a date whose other rows are in silver). Without
    `across_batches` only rows of the same batch compare. `rows_at(positions)`: every typed column
    of those rows, when `typed` holds only the key columns (a date read slice by slice)."""
    n = len(codes)
    key = join_text([typed[k] for k in contract.key], None).combine_chunks()
    has_key = pc.is_valid(key).to_numpy(zero_copy_only=False)
    out = np.full(n, None, dtype=object)
    if not has_key.any():
        return out
    out[has_key] = "first"
    counts = pc.value_counts(pc.drop_null(key))
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    involved_mask = pc.fill_null(pc.is_in(key, value_set=repeated), False).to_numpy(zero_copy_only=False)
    history: dict[str, list[tuple[dt.date, str]]] = {}
    if earlier is not None and earlier.num_rows:
        e_key, e_sig = key_and_signature({c: earlier.column(c) for c in contract.column_names}, contract)
        for k, s, d in zip(e_key, e_sig, earlier.column("_batch_date").to_pylist(), strict=True):
            if k is not None:
                history.setdefault(k, []).append((d, s))
        seen = pc.is_in(key, value_set=pa.array(list(history), pa.string()))
        involved_mask |= pc.fill_null(seen, False).to_numpy(zero_copy_only=False)
    involved = np.flatnonzero(involved_mask)
    if involved.size == 0:
        return out
    idx = pa.array(involved, pa.int64())
    involved_rows = (
        rows_at(involved)
        if rows_at is not None
        else {c: pc.take(typed[c], idx) for c in contract.column_names}
    )
    sub_key, sub_sig = key_and_signature(involved_rows, contract)
    lookback = dt.timedelta(days=lookback_days) if lookback_days else None
    accepted: dict[str, list[tuple[dt.date, str]]] = {}  # rows of these dates that reach silver
    first_in_batch: dict[tuple[str, dt.date], str] = {}
    for pos, i in enumerate(involved):  # delivery order
        k, s, day = sub_key[pos], sub_sig[pos], code_day(codes[i])
        lower = day - lookback if lookback else None
        upto = day + dt.timedelta(days=1) if same_day_counts else day
        # the two lists cannot share a date: a date is either validated now or read from silver
        found = [
            p
            for p in (_earliest(history.get(k, ()), lower, upto), _earliest(accepted.get(k, ()), lower, day))
            if p and across_batches
        ]
        prior = min(found, key=lambda p: p[0]) if found else None
        own_first = first_in_batch.get((k, day))
        if own_first is None:
            first_in_batch[(k, day)] = s
        if prior is not None:
            verdict = "duplicate" if s == prior[1] else "conflicting_duplicate"
        elif own_first is None:
            verdict = "first"
        else:
            verdict = "duplicate" if s == own_first else "conflicting_duplicate"
        out[i] = verdict
        if verdict == "first" and eligible[i]:
            accepted.setdefault(k, []).append((day, s))
    return out


def _earliest(
    entries: list[tuple[dt.date, str]] | tuple, lower: dt.date | None, before: dt.date
) -> tuple[dt.date, str] | None:
    """The first entry (they are in delivery order) with a batch date in [lower, before)."""
    for d, s in entries:
        if d >= before:
            return None
        if lower is None or d >= lower:
            return d, s
    return None
