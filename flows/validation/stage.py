"""The validation stage: bronze -> Great Expectations -> silver + quarantine, for the dates a run
validates together (a daily run: its date; a backfill: a chunk of dates).

For each source, in the order of the references between contracts (merchants, customers,
transactions, chargebacks), over all the dates at once:

1. Ingest's records say which batches were delivered and with which header; bronze rows of the
   delivered dates are read once and parsed once.
2. Helper columns (flows.validation.frames) are computed set-based: reference lookups against the
   referenced source's silver and the verdicts of this run for the same dates, first delivery wins
   against earlier silver rows and earlier rows of these dates, per-row bounds from each row's date.
3. `<source>.rows` runs once over every row; `<source>.batches` runs once over the per-date summary
   (landed rows, trailing medians, share of failing rows, header...). GE says which row breaks which
   rule and which date breaks which batch rule.
4. A date's outcome depends on earlier dates' outcomes (a rejected batch is not "known" and not a
   "first delivery" for a later date; the drift rule's history is the accepted batches), and those
   are GE's verdicts: the stage iterates to the fixpoint, so every date gets exactly the verdict it
   gets when the dates are validated one by one. Usually the second pass changes nothing and GE ran
   once per suite; a rejected batch with re-delivered keys after it costs one more rows run.
5. One silver and one quarantine commit per source for all the dates; conservation is checked per
   source and date; one `ops/validations` commit; Data Docs pages of the run's results.

With `stop_on_failure` (a backfill without --continue-on-failure) the dates after the first date
that does not validate are not validated at all, as if validated one by one and stopped there.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flows.config import settings
from flows.dates import date_range, span_label
from flows.ingest import memory_budget
from flows.sources import SOURCE_NAMES, Source, get_source, silver_schema
from flows.storage import lake
from flows.validation import history, storage, streamed, suites
from flows.validation.contracts import (
    ADDED_COLUMNS_COL,
    AMOUNT_USD_COL,
    DELIVERY_COL,
    FAILING_ROWS_COL,
    FAILING_ROWS_MAX_COL,
    MALFORMED_FILES_COL,
    MEDIAN_COL,
    MISSING_COLUMNS_COL,
    ROWS_COL,
    TYPED,
    Contract,
    batches_suite,
    bound_col,
    known_col,
    load_contract,
    load_fx_rates,
    rows_suite,
    unparseable_share_col,
)
from flows.validation.delivery import deliveries, words_text
from flows.validation.frames import (
    Batches,
    PerSlice,
    Where,
    amount_usd,
    checked_median,
    day_code,
    in_sorted,
    key_hashes,
    prepare,
    row_bounds,
    row_labels,
    rows_frame,
    silver_median,
    slice_labels,
    unparseable_counts,
)
from flows.validation.history import Delivery
from flows.validation.storage import ConservationError, SourceValidation
from flows.validation.verdicts import DayVerdict, batch_verdicts, row_reasons

log = logging.getLogger(__name__)

DUPLICATE_REASONS = frozenset({"duplicate", "conflicting_duplicate"})


# ---------------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """One source's verdicts over the dates validated together."""

    batches: Batches
    days: list[dt.date]  # delivered dates judged, ascending
    run_id: str
    run_time: dt.datetime
    failing: np.ndarray  # per row: fails at least one row rule
    row_reasons: dict[int, list[str]]
    verdicts: dict[dt.date, DayVerdict]
    usd: np.ndarray | None  # amount_usd per row (sources with a drift rule)
    results: list[tuple[Any, Any]] = field(default_factory=list)  # (result key, GE result)
    iterations: int = 0
    part_rows: int = 0  # rows of each GE slice of the rows suite (0: one frame)

    def reasons_for(self, i: int) -> list[str]:
        rejected = self.verdicts[self.batches.row_day(i)].rejected
        return [f"batch_rejected:{r}" for r, _ in rejected] + self.row_reasons.get(i, [])

    def reasons_column(self, idx: np.ndarray) -> pa.Array:
        """`reasons_for` of rows `idx` as quarantine's `_reasons` column, built in Arrow: a rejected
        big batch puts every row in quarantine, and a Python list of reasons per row cost ~10x
        the rows' own memory. Equal to `pa.array([reasons_for(i) for i in idx])`."""
        n = len(idx)
        codes = self.batches.codes[idx] if n else np.zeros(0, np.int64)
        vocab: dict[str, int] = {}
        prefix_of: dict[int, list[int]] = {}
        for d, v in self.verdicts.items():
            if v.rejected:
                words = [f"batch_rejected:{r}" for r, _ in v.rejected]
                prefix_of[day_code(d)] = [vocab.setdefault(w, len(vocab)) for w in words]
        lens = np.zeros(n, dtype=np.int64)
        for c, pre in prefix_of.items():
            lens[codes == c] = len(pre)
        prefix_lens = lens.copy()
        own: dict[int, list[str]] = {}  # position in idx -> the row's own reasons (few rows)
        if self.row_reasons and n:
            keys = np.fromiter(self.row_reasons, dtype=np.int64, count=len(self.row_reasons))
            order = np.argsort(idx, kind="stable")
            hits = keys[np.isin(keys, idx)]
            for i, k in zip(hits, order[np.searchsorted(idx[order], hits)], strict=True):
                own[int(k)] = self.row_reasons[int(i)]
        for k, rs in own.items():
            lens[k] += len(rs)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        values = np.empty(int(offsets[-1]), dtype=np.int32)
        for c, pre in prefix_of.items():
            starts = offsets[:-1][codes == c]
            for j, code in enumerate(pre):
                values[starts + j] = code
        for k, rs in own.items():
            at = int(offsets[k] + prefix_lens[k])
            values[at : at + len(rs)] = [vocab.setdefault(r, len(vocab)) for r in rs]
        words = pa.array(list(vocab), pa.string())
        flat = pc.take(words, pa.array(values)) if len(values) else pa.array([], pa.string())
        return pa.LargeListArray.from_arrays(pa.array(offsets), flat).cast(pa.list_(pa.string()))

    def to_silver(self, day: dt.date) -> np.ndarray:
        """Positions of the rows of `day` that go to silver (none of a rejected or failed batch)."""
        sl = self.batches.span(day)
        if self.verdicts[day].status != "succeeded":
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(~self.failing[sl]) + sl.start

    def to_quarantine(self, day: dt.date) -> np.ndarray:
        sl = self.batches.span(day)
        if self.verdicts[day].status == "rejected":
            return np.arange(sl.start, sl.stop, dtype=np.int64)
        return np.flatnonzero(self.failing[sl]) + sl.start

    def accepted(self) -> np.ndarray:
        """Per row: it reaches silver."""
        ok_day = np.zeros(self.batches.n, dtype=bool)
        for d, v in self.verdicts.items():
            if v.status == "succeeded":
                ok_day[self.batches.span(d)] = True
        return ok_day & ~self.failing

    def silver_median(self, day: dt.date) -> float | None:
        if self.usd is None:
            return None
        sl = self.batches.span(day)
        return silver_median(self.usd[sl][~self.failing[sl]])

    def reason_counts(self, day: dt.date) -> dict[str, int]:
        sl = self.batches.span(day)
        counts: Counter[str] = Counter()
        v = self.verdicts[day]
        if v.status == "rejected":
            for rule, _ in v.rejected:
                counts[f"batch_rejected:{rule}"] = sl.stop - sl.start
        for i, rs in self.row_reasons.items():
            if sl.start <= i < sl.stop:
                counts.update(rs)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def status(self) -> str:
        """The outcome of a one-date evaluation (a release)."""
        return self.verdicts[self.days[0]].status

    @property
    def message(self) -> str:
        return self.verdicts[self.days[0]].message

    def docs_paths(self, day: dt.date | None = None) -> tuple[str | None, str | None]:
        """(rows page, batches page), relative to the Data Docs root. Rows judged in slices: the
        page of the slice holding `day`'s first row (the first slice without a day); the other
        slices' pages are listed beside it in the site's index."""
        from flows.validation import datadocs

        rows_keys = [k for k, _ in self.results if k.expectation_suite_identifier.name.endswith(".rows")]
        batches_keys = [
            k for k, _ in self.results if not k.expectation_suite_identifier.name.endswith(".rows")
        ]
        part = 0
        if day is not None and self.part_rows and len(rows_keys) > 1:
            part = min(len(rows_keys) - 1, self.batches.span(day).start // self.part_rows)
        rows_page = datadocs.page_path(rows_keys[part]) if rows_keys else None
        batches_page = datadocs.page_path(batches_keys[-1]) if batches_keys else None
        return rows_page, batches_page


@dataclass
class _Context:
    """What the dates validated together know beyond one source: the outcome of the sources
    validated before it (reference lookups) and what earlier batches left in the lake."""

    days: list[dt.date]  # every date of the run, ascending
    fx: dict[str, float]
    done: dict[str, Evaluation] = field(default_factory=dict)  # verdicts of this run, by source
    processed: set[str] = field(default_factory=set)  # sources whose partitions this run rewrites

    @property
    def first(self) -> dt.date:
        return self.days[0]

    @property
    def last(self) -> dt.date:
        return self.days[-1]

    def old_days(self, source: str) -> list[dt.date]:
        """Dates in the run's span whose silver of `source` stays as it is: all of them for a source
        this run does not validate, else the dates between its dates that it skips."""
        span = list(date_range(self.first, self.last))
        if source not in self.processed:
            return span
        again = set(self.days)
        return [d for d in span if d not in again]


@dataclass(frozen=True)
class _Known:
    """What a reference rule looks a value up in: the distinct values in silver before the run's
    first date (`before`), and the day code from which each other known value counts
    (`first_day`: later dates of silver the run keeps, this run's accepted rows)."""

    before: pa.Array
    first_day: dict[object, int]

    def lookup(self, values: pa.ChunkedArray, codes: np.ndarray) -> pd.arrays.BooleanArray:
        """`<column>__known` of rows with these values and batch dates: True if known by the
        row's date, False if not, missing (NA) for a missing value. A nullable boolean, not an
        object array: GE's null checks over Python objects cost ~10 ms per 1.6M rows each."""
        values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        present = pc.is_valid(values).to_numpy(zero_copy_only=False)
        if not present.any():
            return unknown(len(values))
        hit = pc.fill_null(pc.is_in(values, value_set=self.before.cast(values.type)), False).to_numpy(
            zero_copy_only=False
        )
        if self.first_day:
            keys = pa.array(list(self.first_day), values.type)
            known = np.fromiter(self.first_day.values(), dtype=np.int64, count=len(self.first_day))
            idx = pc.fill_null(pc.index_in(values, value_set=keys), -1).to_numpy(zero_copy_only=False)
            known_from = np.where(idx >= 0, known[np.maximum(idx, 0)], np.iinfo(np.int64).max)
            hit = hit | (known_from <= codes)
        return pd.arrays.BooleanArray(hit & present, ~present)


def unknown(n: int) -> pd.arrays.BooleanArray:
    """`<column>__known` of `n` rows without a value."""
    return pd.arrays.BooleanArray(np.zeros(n, dtype=bool), np.ones(n, dtype=bool))


def _known(b: Batches, rule: dict, ctx: _Context) -> PerSlice | None:
    """`<column>__known` (True if the value is in silver `<table>` with `_batch_date <= D`; for the
    run's dates: the referenced source's verdicts of this run), looked up per GE frame from the
    distinct values' answers. None: no row has a value."""
    col, table, key = rule["column"], rule["table"], rule["table_key"]
    if b.distinct is not None:  # read slice by slice: the distinct values were kept
        distinct = b.distinct[col]
    else:
        distinct = pc.unique(pc.drop_null(b.typed[col].combine_chunks()))
    if len(distinct) == 0:
        return None
    before = history.known_before(table, key, distinct, ctx.first)
    first_day = {
        v: day_code(d) for v, d in history.first_known_on(table, key, distinct, ctx.old_days(table)).items()
    }
    ref = ctx.done.get(table)
    if ref is not None:  # this run's accepted rows of the referenced source, earliest date per value
        keep, ref_values = _accepted_values(ref, key, distinct)
        wanted = pc.fill_null(pc.is_in(ref_values, value_set=distinct.cast(ref_values.type)), False)
        pairs = pa.table(
            {"v": ref_values.filter(wanted), "c": pa.array(ref.batches.codes[keep]).filter(wanted)}
        )
        for row in pairs.group_by("v").aggregate([("c", "min")]).to_pylist():
            v, c = row["v"], row["c_min"]
            if v not in first_day or c < first_day[v]:
                first_day[v] = c
    known = _Known(before, first_day)
    return PerSlice(lambda part, where: known.lookup(part.typed[col], part.codes))


def _accepted_values(ref: Evaluation, key: str, distinct: pa.Array) -> tuple[np.ndarray, pa.ChunkedArray]:
    """(positions, typed `key` values) of the referenced source's rows that reach silver and may
    hold one of `distinct`: all accepted rows when held whole; read slice by slice, only those whose
    key hash is one of the values' (when `key` is its whole key), read back from bronze."""
    b = ref.batches
    accepted = ref.accepted()
    if b.reread is None:
        keep = np.flatnonzero(accepted)
        return keep, pc.take(b.typed[key], pa.array(keep, pa.int64()))
    if b.contract.key == [key]:
        own = b.key_hashes()
        wanted = key_hashes([pa.chunked_array([distinct.cast(b.typed_type(key))])])
        accepted &= own.present & in_sorted(own.hashes, np.sort(wanted.hashes[wanted.present]))
    keep = np.flatnonzero(accepted)
    if not len(keep):
        return keep, pa.chunked_array([], b.typed_type(key))
    return keep, b.typed_rows(keep, [key])[key]


def _earlier(b: Batches, rule: dict, ctx: _Context, *, include_day: bool = False) -> pa.Table | None:
    """Silver rows of earlier batch dates that may share a key with these rows (look-back window of
    the first date; each row applies its own). `include_day`: the run's own date too (a release
    judges quarantined rows of a date against that date's silver)."""
    contract = b.contract
    lookback = rule.get("lookback_days")
    if not rule.get("across_batches"):
        return None
    lead = contract.key[0]
    start = ctx.first - dt.timedelta(days=int(lookback)) if lookback else None
    before = ctx.last + dt.timedelta(days=1) if include_day else ctx.first
    old = [d for d in ctx.old_days(b.source.name) if d < ctx.last]  # its own: processed
    if b.reread is not None:  # no key text kept: silver's keys matched by hash first
        keys = b.key_hashes()
        ours = np.sort(keys.hashes[keys.present])  # in_sorted needs order, not distinct values

        def matches(columns: list[pa.ChunkedArray]) -> np.ndarray:
            got = key_hashes(columns)
            return got.present & in_sorted(got.hashes, ours)

        wanted = history.earlier_leads(b.source, contract.key, matches, start, before, also=old)
        del ours
    else:
        wanted = pc.unique(pc.drop_null(b.typed[lead].combine_chunks()))
    return history.earlier_deliveries(b.source, contract.column_names, lead, wanted, start, before, also=old)


def _volume_bounds(
    contract: Contract, day: dt.date, landed: dict[dt.date, int]
) -> tuple[dict[str, float], dict[str, str]]:
    vol = contract.batch.get("volume", {})
    nan = float("nan")
    p = {bound_col("volume", "min"): float(int(vol.get("min_rows", 0))), bound_col("volume", "max"): nan}
    notes: dict[str, str] = {}
    if "trailing_days" not in vol:
        return p, notes
    p[bound_col("volume_warning", "min")] = p[bound_col("volume_warning", "max")] = nan
    start = day - dt.timedelta(days=int(vol["trailing_days"]))
    counts = [n for d, n in landed.items() if start <= d < day]
    if not counts:
        notes["volume"] = "no earlier batches: only the minimum applies"
        return p, notes
    med = float(np.median(counts))
    p[bound_col("volume", "min")] = float(
        max(int(vol.get("min_rows", 0)), int(np.ceil(vol["min_ratio"] * med)))
    )
    p[bound_col("volume", "max")] = float(int(np.floor(vol["max_ratio"] * med)))
    p[bound_col("volume_warning", "min")] = float(int(np.ceil(vol["warn_min_ratio"] * med)))
    p[bound_col("volume_warning", "max")] = float(int(np.floor(vol["warn_max_ratio"] * med)))
    notes["volume"] = (
        f"{vol['min_ratio']:g}x-{vol['max_ratio']:g}x of the trailing median {med:g} "
        f"over {len(counts)} batch(es)"
    )
    notes["volume_warning"] = (
        f"{vol['warn_min_ratio']:g}x-{vol['warn_max_ratio']:g}x of the trailing median {med:g}"
    )
    return p, notes


@dataclass
class _DriftHistory:
    """The drift rule's history: recorded medians of earlier accepted batches (ops/validations), with
    this run's own verdicts in place of the records of the dates it validates."""

    recorded: dict[dt.date, tuple[str, float | None]]
    fx: dict[str, float]
    not_delivered: dict[dt.date, tuple[str, float | None]]  # this run's dates without a batch

    def trailing(
        self, day: dt.date, days: int, now: dict[dt.date, tuple[str, float | None]]
    ) -> tuple[float | None, int]:
        start = day - dt.timedelta(days=days)
        window = {d: r for d, r in self.recorded.items() if start <= d < day}
        window.update({d: r for d, r in now.items() if start <= d < day})
        if not window:  # a lake validated by something else (or the first date): read silver
            return history.silver_amount_median(start, day, self.fx)
        meds = [m for st, m in window.values() if st == "succeeded" and m is not None and np.isfinite(m)]
        return (float(np.median(meds)) if meds else None), len(meds)


def _drift_bounds(
    drift: dict, day: dt.date, median: float | None, hist: _DriftHistory, now: dict
) -> tuple[dict[str, float], dict[str, str]]:
    nan = float("nan")
    p = {bound_col("amount_drift", "min"): nan, bound_col("amount_drift", "max"): nan}
    if median is None:
        return p, {"amount_drift": "not checked: no amount in the batch can be converted to USD"}
    med, n_days = hist.trailing(day, int(drift["trailing_days"]), now)
    if med is None or n_days < int(drift["min_history_days"]):
        return p, {
            "amount_drift": (
                f"not checked: {n_days} batch date(s) of history, {drift['min_history_days']} needed"
            )
        }
    p[bound_col("amount_drift", "min")] = round(drift["min_ratio"] * med, 6)
    p[bound_col("amount_drift", "max")] = round(drift["max_ratio"] * med, 6)
    return p, {
        "amount_drift": (
            f"{drift['min_ratio']:g}x-{drift['max_ratio']:g}x of the trailing {drift['trailing_days']}-day "
            f"median {med:.2f} over {n_days} batch dates"
        )
    }


def _by_day(
    b: Batches, reasons: dict[int, list[str]], ignored: set[str]
) -> tuple[dict[int, Counter], dict[int, int]]:
    """Per batch date (day code): the count of each reason, and of rows failing a counted rule."""
    counters: dict[int, Counter] = {}
    n_fail: dict[int, int] = {}
    for i, rs in reasons.items():
        c = int(b.codes[i])
        counters.setdefault(c, Counter()).update(rs)
        if any(r not in ignored for r in rs):
            n_fail[c] = n_fail.get(c, 0) + 1
    return counters, n_fail


def _summary(
    b: Batches,
    days: list[dt.date],
    deliveries_of: dict[dt.date, Delivery],
    reasons: dict[int, list[str]],
    usd: np.ndarray | None,
    landed: dict[dt.date, int],
    drift_history: _DriftHistory | None,
    statuses: dict[dt.date, str],
    failing: np.ndarray,
) -> tuple[pd.DataFrame, dict[dt.date, dict[str, str]], dict[dt.date, dict[str, Any]]]:
    """One row per batch date: what `<source>.batches` judges; and per date the notes (how bounds were
    derived) and context (lists) its messages quote."""
    contract = b.contract
    cols = contract.column_names
    fr = contract.batch.get("failing_rows") or {}
    ignored = set(fr.get("ignore", ()))
    tc = contract.batch.get("type_change")
    drift = contract.batch.get("drift")
    typed_cols = [c for c in contract.columns if c.type in TYPED] if tc else []
    shares = {c.name: unparseable_counts(b, c.name, days) for c in typed_cols}
    counters, fails = _by_day(b, reasons, ignored)
    records: list[dict[str, Any]] = []
    notes: dict[dt.date, dict[str, str]] = {}
    context: dict[dt.date, dict[str, Any]] = {}
    now = dict(drift_history.not_delivered) if drift_history is not None else {}
    for day in days:
        sl = b.span(day)
        n = sl.stop - sl.start
        delivery = deliveries_of[day]
        missing = [c for c in cols if c not in delivery.header]
        added = [c for c in delivery.header if c not in cols]
        n_fail = fails.get(day_code(day), 0)
        row: dict[str, Any] = {
            "_batch_date": day.isoformat(),
            ROWS_COL: n,
            MISSING_COLUMNS_COL: ", ".join(missing),
            ADDED_COLUMNS_COL: ", ".join(added),
            MALFORMED_FILES_COL: "; ".join(delivery.malformed),
            FAILING_ROWS_COL: float(n_fail),
            FAILING_ROWS_MAX_COL: (
                fr["max_share"] * n if fr and n and n_fail >= fr.get("min_rows", 1) else float("nan")
            ),
        }
        for c in typed_cols:
            row[unparseable_share_col(c.name)] = shares[c.name][day] / n if n else float("nan")
        bounds, day_notes = _volume_bounds(contract, day, landed)
        row.update(bounds)
        if drift and usd is not None and drift_history is not None:
            median = checked_median(usd[sl])
            row[MEDIAN_COL] = float("nan") if median is None else median
            drift_bounds, drift_notes = _drift_bounds(drift, day, median, drift_history, now)
            row.update(drift_bounds)
            day_notes.update(drift_notes)
            status = statuses.get(day, "succeeded")
            now[day] = (status, silver_median(usd[sl][~failing[sl]]) if status == "succeeded" else None)
        records.append(row)
        notes[day] = day_notes
        counted = Counter(
            {k: v for k, v in counters.get(day_code(day), Counter()).items() if k not in ignored}
        )
        context[day] = {
            "missing": missing,
            "added": added,
            "header": sorted(delivery.header),
            "required": sorted(cols),
            "top_reasons": counted.most_common(3),
        }
    frame = pd.DataFrame.from_records(records).set_index("_batch_date")
    frame.index.name = None
    return frame, notes, context


def evaluate(
    b: Batches,
    days: list[dt.date],
    deliveries_of: dict[dt.date, Delivery],
    ctx: _Context,
    *,
    full_batch: bool = True,
    include_day_silver: bool = False,
    run_label: str = "",
) -> Evaluation:
    """GE's verdicts on every row and every date of one source, at the fixpoint (module docstring).

    `full_batch=False` judges a subset of a batch (a quarantine release): row rules only, and
    earlier deliveries include the batch date's own silver rows (`include_day_silver`)."""
    contract, source = b.contract, b.source
    run_time = dt.datetime.now(dt.UTC)
    span = span_label(days)
    run_name = suites.result_run_name(span, source.name, run_label)
    run_id = f"{run_name}-{run_time:%Y%m%dT%H%M%S%fZ}"
    helpers: dict[str, Any] = {name: _bound(name) for name in row_bounds(b.at(slice(0, 0)))}
    for rule in contract.rules_of("reference"):
        known = _known(b, rule, ctx)
        helpers[known_col(rule["column"])] = (
            known if known is not None else PerSlice(lambda part, where: unknown(part.n))
        )
    usd = amount_usd(b, ctx.fx) if "drift" in contract.batch else None
    if usd is not None:
        helpers[AMOUNT_USD_COL] = usd
    fd_rules = contract.rules_of("first_delivery_wins")
    fd = fd_rules[0] if fd_rules else None
    lookback_days = int(fd["lookback_days"]) if fd is not None and fd.get("lookback_days") else None
    earlier = _earlier(b, fd, ctx, include_day=include_day_silver) if fd is not None else None
    keys = b.key_hashes() if fd is not None else None
    needed = suites.suite_columns(rows_suite(source.name))
    landed: dict[dt.date, int] = {}
    drift_history = None
    if full_batch:
        vol = contract.batch.get("volume", {})
        if "trailing_days" in vol:
            landed = history.landed_counts(
                source, days[0] - dt.timedelta(days=int(vol["trailing_days"])), days[-1]
            )
        drift = contract.batch.get("drift")
        if drift:
            start = days[0] - dt.timedelta(days=int(drift["trailing_days"]))
            recorded = history.validation_records(source.name, start, days[-1])
            again = set(ctx.days)  # this run records these dates anew
            drift_history = _DriftHistory(
                {d: r for d, r in recorded.items() if d not in again},
                ctx.fx,
                {d: ("not_delivered", None) for d in ctx.days if d not in deliveries_of},
            )

    eligible = np.ones(b.n, dtype=bool)
    statuses = {d: "succeeded" for d in days}
    rows_results: list[tuple[Any, Any]] | None = None
    part_rows = 0
    batch_results: list[tuple[Any, Any]] | None = None
    last_delivery: np.ndarray | None = None
    last_summary: pd.DataFrame | None = None
    reasons: dict[int, list[str]] = {}
    failing = np.zeros(b.n, dtype=bool)
    verdicts = {d: DayVerdict() for d in days}
    for iteration in range(len(days) + 2):
        delivery = None
        if fd is not None:
            assert keys is not None
            delivery = deliveries(
                contract,
                keys,
                b.codes,
                earlier,
                eligible,
                None if include_day_silver else lookback_days,
                b.typed_rows,
                across_batches=bool(fd.get("across_batches")),
                same_day_counts=include_day_silver,
            )
            helpers[DELIVERY_COL] = _delivery_words(delivery)
        if rows_results is None or not _same(delivery, last_delivery):
            if rows_results is not None:
                suites.forget([k for k, _ in rows_results])
            rows_results, reasons, errors, part_rows = _judge_rows(
                b, needed, helpers, ctx.fx, run_id, run_time
            )
            last_delivery = delivery
            if errors:
                message = "validation could not evaluate row rules: " + "; ".join(errors[:3])
                failed = {d: DayVerdict(status="failed", message=message) for d in days}
                return Evaluation(
                    b, days, run_id, run_time, np.zeros(b.n, bool), {}, failed, usd, rows_results, iteration
                )
            failing = np.zeros(b.n, dtype=bool)
            if reasons:
                failing[np.fromiter(reasons.keys(), dtype=np.int64)] = True
        if not full_batch:
            break
        summary, notes, context = _summary(
            b, days, deliveries_of, reasons, usd, landed, drift_history, statuses, failing
        )
        if batch_results is None or not summary.equals(last_summary):
            if batch_results is not None:
                suites.forget([k for k, _ in batch_results])
            batch_results = suites.run_suite(batches_suite(source.name), summary, {}, run_id, run_time)
            last_summary = summary
            verdicts = batch_verdicts([vr for _, vr in batch_results], summary, days, notes, context)
        new_statuses = {d: v.status for d, v in verdicts.items()}
        other_fail = np.zeros(b.n, dtype=bool)
        for i, rs in reasons.items():
            if any(r not in DUPLICATE_REASONS for r in rs):
                other_fail[i] = True
        ok_day = np.zeros(b.n, dtype=bool)
        for d, st in new_statuses.items():
            if st == "succeeded":
                ok_day[b.span(d)] = True
        new_eligible = ~other_fail & ok_day
        if new_statuses == statuses and np.array_equal(new_eligible, eligible):
            break
        statuses, eligible = new_statuses, new_eligible
    else:
        raise RuntimeError(f"validation of {source.name} {span} did not reach a fixpoint")
    results = list(rows_results or []) + list(batch_results or [])
    return Evaluation(
        b, days, run_id, run_time, failing, reasons, verdicts, usd, results, iteration + 1, part_rows
    )


def _bound(name: str) -> PerSlice:
    """The time rules' bound `name` of a frame's rows, from their batch dates."""

    def compute(part: Batches, where: Where | None) -> pd.Series:
        return row_bounds(part)[name]

    return PerSlice(compute)


def _delivery_words(codes: np.ndarray) -> PerSlice:
    """`_delivery` of a frame's rows, as GE reads it, from every row's verdict codes."""

    def compute(part: Batches, where: Where | None) -> pd.arrays.ArrowStringArray:
        return pd.arrays.ArrowStringArray(words_text(codes if where is None else codes[where]))

    return PerSlice(compute)


def part_run_id(run_id: str, part: int, parts: int) -> str:
    """The GE run of one slice of a rows suite judged in `parts` slices (`...-part2of13`)."""
    return run_id if parts == 1 else f"{run_id}-part{part}of{parts}"


def _judge_rows(
    b: Batches,
    needed: frozenset[str],
    helpers: dict[str, Any],
    fx: dict[str, float],
    run_id: str,
    run_time: dt.datetime,
) -> tuple[list[tuple[Any, Any]], dict[int, list[str]], list[str], int]:
    """`<source>.rows` over every row, in slices of at most `memory_budget.ge_slice_rows` rows (GE
    copies its frame per metric: a frame of a whole big day is what outgrew memory). Every rule of
    the suite is row-local once the helper columns exist for all the rows, so the reasons are the
    union of the slices' (positions shifted by the slice's start); one stored result per slice.
    Returns (results, {row position: reasons}, errors, rows per slice or 0 for one frame)."""
    suite = rows_suite(b.source.name)
    regex = suites.regex_columns(suite)
    params = suites.expectation_parameters(fx)
    size = memory_budget.ge_slice_rows(b.n)
    parts = max(1, -(-b.n // size))
    # read slice by slice: each slice's labels computed with it (a label per row: 8 bytes a row)
    labels = row_labels(b) if parts > 1 and b.reread is None else None
    results: list[tuple[Any, Any]] = []
    reasons: dict[int, list[str]] = {}
    errors: list[str] = []
    slices = b.slices(size) if parts > 1 or b.reread is not None else [(None, b)]
    for k, (where, part) in enumerate(slices):
        own = slice_labels(b, np.asarray(where), part) if b.reread is not None else None
        frame = rows_frame(part, needed, helpers, regex, where, labels, own)
        got = suites.run_suite(suite, frame, params, part_run_id(run_id, k + 1, parts), run_time)
        found, errs = row_reasons([vr for _, vr in got], frame.index)
        del frame
        if where is None:
            reasons.update(found)
        else:
            positions = np.arange(where.start, where.stop) if isinstance(where, slice) else where
            reasons.update({int(positions[i]): rs for i, rs in found.items()})
        results += got
        errors += errs
    if b.reread is not None:  # slices read back in bronze's file order: positions in order instead
        reasons = dict(sorted(reasons.items()))
    return results, reasons, errors, (size if parts > 1 else 0)


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and bool(np.all(a == b))


# ---------------------------------------------------------------------------------- the stage


def _docs_enabled(build_docs: bool | None) -> bool:
    if build_docs is not None:
        return build_docs
    return settings().validation_docs


@dataclass
class _SourceRun:
    source: Source
    evaluation: Evaluation | None = None
    not_delivered: dict[dt.date, str] = field(default_factory=dict)
    error: str = ""


def _landed_files(source: Source, days: list[dt.date]) -> list[tuple[str, int, int]]:
    """(file, bytes, rows) of what ingest recorded for `days`: the estimate's input, read before
    any bronze row is."""
    import pyarrow.dataset as ds

    flt = lake.date_filter("_batch_date", days) & (ds.field("source") == source.name)
    tbl = history.scan("ops", "ingest_files", flt, ["file", "bytes", "rows"], (min(days), max(days)))
    if tbl is None:
        return []
    return [(r["file"], r["bytes"] or 0, r["rows"] or 0) for r in tbl.to_pylist()]


@dataclass
class _Loaded:
    """One source's batches of the run's dates read and parsed, nothing judged yet: all that
    `_evaluate_source` takes from the lake before it judges. It depends on no other source, so
    `_evaluate_all` reads a source ahead on another thread while the sources before it are judged."""

    run: _SourceRun
    contract: Contract
    records: dict[dt.date, list[dict]]
    streams: bool = False  # too big to hold: `_evaluate_streamed` reads it slice by slice
    batches: Batches | None = None
    deliveries_of: dict[dt.date, Delivery] = field(default_factory=dict)


def _load_source(source: Source, days: list[dt.date], *, may_stream: bool = True) -> _Loaded:
    run = _SourceRun(source)
    loaded = _Loaded(run, load_contract(source.name), history.file_records(source, days))
    landed = _landed_files(source, days)
    if landed:
        est = memory_budget.recorded_estimate(source.name, span_label(days), landed, len(days))
        refused = est.refusal(memory_budget.budget_bytes())
        if refused:  # nothing read, nothing written: the dates fail with the reason
            run.error = refused
            return loaded
    if may_stream and landed and memory_budget.streams(sum(n for _, _, n in landed)):
        loaded.streams = True
        return loaded
    rows = history.bronze_rows(source, days)
    # rows are in delivery order, batch date first: a date's rows are a zero-copy slice (a filter
    # copied every date's rows, a second bronze table held for the whole evaluation)
    codes = rows.column("_batch_date").cast(pa.int32()).to_numpy(zero_copy_only=False)
    per_day = {}
    for d in days:
        lo, hi = np.searchsorted(codes, day_code(d), "left"), np.searchsorted(codes, day_code(d), "right")
        per_day[d] = rows.slice(int(lo), int(hi - lo))
    del codes
    for d in days:
        info = history.delivery_info(source, d, per_day[d], loaded.records[d])
        if info.delivered:
            loaded.deliveries_of[d] = info
        else:
            run.not_delivered[d] = info.message or "not delivered"
    delivered = sorted(loaded.deliveries_of)
    if delivered:
        keep = pa.concat_tables([per_day[d] for d in delivered]) if len(delivered) != len(days) else rows
        loaded.batches = prepare(source, loaded.contract, keep)
    return loaded


def _evaluate_source(loaded: _Loaded, ctx: _Context) -> _SourceRun:
    run, source = loaded.run, loaded.run.source
    if loaded.streams:
        streamed_run = _evaluate_streamed(source, loaded.contract, ctx, loaded.records, run)
        if streamed_run is not None:
            return streamed_run
        loaded = _load_source(source, ctx.days, may_stream=False)
        run = loaded.run
    if loaded.batches is not None:
        run.evaluation = evaluate(loaded.batches, sorted(loaded.deliveries_of), loaded.deliveries_of, ctx)
    return run


def _evaluate_streamed(
    source: Source, contract: Contract, ctx: _Context, records: dict[dt.date, list[dict]], run: _SourceRun
) -> _SourceRun | None:
    """`_evaluate_source` for dates too big to hold (memory_budget.streams): the rows are read
    back from bronze slice by slice (flows.validation.streamed). None: the whole-date path takes
    them (no row, rows it cannot place, or rows of a date that is not a batch)."""
    b = streamed.read(source, contract, ctx.days, ctx.fx)
    if b is None:
        return None
    deliveries_of: dict[dt.date, Delivery] = {}
    for d in ctx.days:
        sl = b.span(d)
        rows = (
            streamed.extra_rows(source, d)
            if not records[d]
            else pa.table({"_extra": pa.nulls(0, pa.string())})
        )
        info = history.delivery_info(source, d, rows, records[d])
        if info.delivered:
            deliveries_of[d] = info
        elif sl.stop > sl.start:
            return None
        else:
            run.not_delivered[d] = info.message or "not delivered"
    days = sorted(deliveries_of)
    if days:
        run.evaluation = evaluate(b, days, deliveries_of, ctx)
    return run


def _outcome(run: _SourceRun, day: dt.date) -> SourceValidation:
    """The validation outcome of one source and date before writing (counts come after)."""
    source = run.source.name
    if day in run.not_delivered:
        return SourceValidation(source, day, "not_delivered", message=run.not_delivered[day])
    if run.evaluation is None:
        return SourceValidation(source, day, "failed", message=run.error)
    ev = run.evaluation
    v = ev.verdicts[day]
    sl = ev.batches.span(day)
    rows_page, batches_page = ev.docs_paths(day)
    out = SourceValidation(
        source,
        day,
        v.status,
        rows_bronze=sl.stop - sl.start,
        warnings=list(v.warnings),
        rejected_rule=v.rejected_rule,
        validation_run_id=ev.run_id,
        data_docs_url=(settings().docs_dir / rows_page).as_uri() if rows_page else None,
        data_docs_path=rows_page,
        batches_docs_path=batches_page,
    )
    if v.status == "failed":
        out.message = v.message
    return out


def _write(run: _SourceRun, release: bool = False) -> list[dt.date]:
    """Replace the silver and quarantine partitions of the judged dates (one commit each) and clear
    those of dates no longer delivered. Returns the dates written. `release`: nothing reads the
    rows' values after this (validate_dates), so they are dropped before the Delta writes, the
    peak of a big date's validation."""
    src = run.source
    if run.not_delivered:
        storage.clear_partitions(src, sorted(run.not_delivered))
    ev = run.evaluation
    if ev is None:
        return []
    b = ev.batches
    written = [d for d in ev.days if ev.verdicts[d].status in ("succeeded", "rejected")]
    if not written:
        return []
    now = dt.datetime.now(dt.UTC)
    if b.reread is not None:
        _write_streamed(ev, written, now)
        return written
    good = np.concatenate([ev.to_silver(d) for d in written])
    bad = np.concatenate([ev.to_quarantine(d) for d in written])
    silver = storage.silver_rows(b.rows, b.typed, src, good, ev.run_id)
    quarantine = storage.quarantine_rows(b.rows, src, bad, ev.reasons_column(bad), ev.run_id, now)
    if release:
        ev.batches = b.released()
        del b
    storage.replace_partitions("silver", src, written, silver, silver_schema(src))
    del silver
    storage.replace_partitions("quarantine", src, written, quarantine, storage.quarantine_schema(src))
    return written


def _write_streamed(ev: Evaluation, written: list[dt.date], now: dt.datetime) -> None:
    """`_write` of batches read slice by slice: silver and quarantine (one commit each) streamed
    from bronze read back in slices, so neither table is ever whole in memory. Where rows go is
    two masks (`to_silver` / `to_quarantine` of the written dates), not arrays of positions."""
    b = ev.batches
    src = b.source
    to_silver = np.zeros(b.n, dtype=bool)
    to_quarantine = np.zeros(b.n, dtype=bool)
    for d in written:
        sl = b.span(d)
        if ev.verdicts[d].status == "rejected":
            to_quarantine[sl] = True
        else:  # succeeded
            to_silver[sl] = ~ev.failing[sl]
            to_quarantine[sl] = ev.failing[sl]
    ev.batches = b.released()
    del b
    size = memory_budget.STREAM_SLICE_ROWS

    def silver() -> Iterator[pa.RecordBatch]:
        for where, part in ev.batches.slices(size):
            local = np.flatnonzero(to_silver[where])
            if len(local):
                rows = storage.silver_rows(part.rows, part.typed, src, local, ev.run_id)
                yield from rows.to_batches(max_chunksize=storage.WRITE_BATCH_ROWS)

    def quarantine() -> Iterator[pa.RecordBatch]:
        for where, part in ev.batches.slices(size, parse=False):
            local = np.flatnonzero(to_quarantine[where])
            if len(local):
                reasons = ev.reasons_column(np.asarray(where)[local])
                rows = storage.quarantine_rows(part.rows, src, local, reasons, ev.run_id, now)
                yield from rows.to_batches(max_chunksize=storage.WRITE_BATCH_ROWS)

    storage.replace_partitions_stream(
        "silver", src, written, silver, silver_schema(src), bool(to_silver.any())
    )
    storage.replace_partitions_stream(
        "quarantine", src, written, quarantine, storage.quarantine_schema(src), bool(to_quarantine.any())
    )


def write_split(ev: Evaluation) -> list[dt.date]:
    """Write an evaluation's split (silver + quarantine of its dates) and return the dates written."""
    return _write(_SourceRun(ev.batches.source, ev))


def _finish(run: _SourceRun, v: SourceValidation, counts: tuple[int, int, int]) -> None:
    """A written date's counts from the lake (checked by conservation) and its final message."""
    ev = run.evaluation
    assert ev is not None
    _, n_silver, n_quarantine = counts
    v.rows_silver, v.rows_quarantined = n_silver, n_quarantine
    v.reasons = ev.reason_counts(v.day)
    verdict = ev.verdicts[v.day]
    if verdict.status == "succeeded":
        v.amount_usd_median = ev.silver_median(v.day)
        v.message = f"{n_silver} rows to silver, {n_quarantine} quarantined"
        if v.reasons:
            v.message += " (" + ", ".join(f"{k} {n}" for k, n in list(v.reasons.items())[:5]) + ")"
    else:
        v.message = verdict.message
    if v.warnings:
        v.message += "; warnings: " + "; ".join(v.warnings)


# Two threads that read and write the lake for the judging thread: a source's bronze is read and
# parsed (`_load_source`, Arrow and Parquet work that releases the GIL) while the sources before it
# are judged, and the sources' silver and quarantine are written side by side. One pool for the
# process, so its threads keep their reader handles for a whole range (lake.reader_handles).
_LAKE_THREADS = 2
_lake_pool: tuple[int, ThreadPoolExecutor] | None = None  # (the process it belongs to, the pool)
_lake_pool_lock = threading.Lock()


def _lake_work() -> ThreadPoolExecutor:
    """The process's pool; a forked child makes its own (the parent's threads are not in it, and
    a pool that believes it has an idle thread would never start one)."""
    global _lake_pool
    with _lake_pool_lock:
        if _lake_pool is None or _lake_pool[0] != os.getpid():
            pool = ThreadPoolExecutor(_LAKE_THREADS, thread_name_prefix="asof-validation-lake")
            _lake_pool = (os.getpid(), pool)
        return _lake_pool[1]


def _evaluate_all(days: list[dt.date], wanted: list[str], fx: dict[str, float]) -> list[_SourceRun]:
    ctx = _Context(days, fx)
    runs: list[_SourceRun] = []
    sources = {name: get_source(name) for name in wanted}
    pool = _lake_work()
    loads = {name: pool.submit(_load_source, source, days) for name, source in sources.items()}
    for name, source in sources.items():
        ctx.processed.add(name)
        try:
            run = _evaluate_source(loads.pop(name).result(), ctx)
        except ConservationError:
            raise
        except Exception as exc:  # one broken source must not hide the others' outcomes
            log.exception("validation of %s %s..%s failed", name, days[0], days[-1])
            run = _SourceRun(source, error=f"{type(exc).__name__}: {exc}")
            ctx.processed.discard(name)  # it writes nothing: its silver stays as it is
        if run.evaluation is not None:
            ctx.done[name] = run.evaluation
        elif run.error:
            ctx.processed.discard(name)  # refused: it writes nothing, its silver stays as it is
        runs.append(run)
    return runs


def _write_and_check(run: _SourceRun) -> dict[dt.date, tuple[int, int, int] | ConservationError]:
    """Write one source's split of the run's dates, then check conservation on what the lake holds."""
    return storage.conservation(run.source.name, _write(run, release=True))


def _forget(runs: list[_SourceRun]) -> None:
    suites.forget([k for r in runs if r.evaluation is not None for k, _ in r.evaluation.results])


def validate_dates(
    days: Sequence[dt.date],
    sources: Sequence[str] | None = None,
    *,
    build_docs: bool | None = None,
    stop_on_failure: bool = False,
) -> dict[dt.date, dict[str, SourceValidation]]:
    """Validate every source's batches of `days` together (module docstring) and write the split.

    Returns, per date validated, one SourceValidation per source. A rejected or undelivered batch
    is an outcome, not an exception; a conservation violation raises ConservationError. With
    `stop_on_failure` the dates after the first date with a source not `succeeded` are left out
    (not validated, not written). Data Docs pages are built unless `build_docs=False` (or
    ASOF_VALIDATION_DOCS=0 when not given)."""
    days = sorted(set(days))
    if not days:
        return {}
    wanted = [get_source(s).name for s in sources] if sources else list(SOURCE_NAMES)
    order = [s for s in SOURCE_NAMES if s in wanted]
    fx = load_fx_rates()
    docs = sys.modules.get("flows.validation.datadocs")  # never imported: nothing can be rendering
    if docs is not None:
        docs.wait_for_pages()  # GE's context is shared with pages still rendering in the background
    t0 = time.perf_counter()
    runs = _evaluate_all(days, order, fx)
    if stop_on_failure:
        for i, day in enumerate(days):
            if any(_outcome(r, day).status != "succeeded" for r in runs) and i + 1 < len(days):
                # validated one by one, the run would stop here: judge exactly the dates up to it,
                # so no result (or Data Docs page) covers a date that was not validated
                _forget(runs)
                days = days[: i + 1]
                runs = _evaluate_all(days, order, fx)
                break
    out: dict[dt.date, dict[str, SourceValidation]] = {d: {} for d in days}
    checks: dict[str, dict[dt.date, tuple[int, int, int] | ConservationError]] = {}
    for run in runs:
        for d in days:
            out[d][run.source.name] = _outcome(run, d)
    # the biggest source first: the others are written beside it. Every write ends before a
    # failed one raises: nothing of this run may still be writing when the stage (or its retry) goes on
    biggest_first = sorted(runs, key=lambda r: -(r.evaluation.batches.n if r.evaluation is not None else 0))
    pool = _lake_work()
    writes = {r.source.name: pool.submit(_write_and_check, r) for r in biggest_first}
    futures_wait(list(writes.values()))
    for run in runs:
        checks[run.source.name] = writes[run.source.name].result()
    # the first violation, in the order validating date by date would meet it
    violations = [
        (d, order.index(s), got)
        for s, per_day in checks.items()
        for d, got in per_day.items()
        if isinstance(got, ConservationError)
    ]
    first = min(violations, key=lambda x: (x[0], x[1])) if violations else None
    recorded: list[SourceValidation] = []
    for run in runs:
        name = run.source.name
        for d in days:
            if first is not None and (d, order.index(name)) >= (first[0], first[1]):
                continue  # not reached, validating date by date
            v = out[d][name]
            got = checks[name].get(d)
            if got is not None:
                _finish(run, v, got)  # type: ignore[arg-type]
            if run.evaluation is not None or d in run.not_delivered:
                recorded.append(v)
    storage.record(recorded)
    if first is not None:
        exc = first[2]
        exc.outcome = {d: out[d] for d in days if d < first[0]}
        raise exc
    elapsed = time.perf_counter() - t0
    for per_source in out.values():
        for v in per_source.values():
            v.elapsed_s = round(elapsed / len(days), 4)
    if _docs_enabled(build_docs):
        results = [kv for r in runs if r.evaluation is not None for kv in r.evaluation.results]
        if results:
            from flows.validation import datadocs

            try:
                datadocs.publish(results)
            except Exception:  # docs are a report: never fail the data because a page did not render
                log.exception("building Data Docs for %s..%s failed", days[0], days[-1])
    return out


def validate_date(
    day: dt.date, sources: Sequence[str] | None = None, *, build_docs: bool | None = None
) -> dict[str, SourceValidation]:
    """Validate every source's batch of one date (merchants, customers, transactions, chargebacks)."""
    return validate_dates([day], sources, build_docs=build_docs)[day]


def revalidate(
    source: str, day: dt.date, rows: pa.Table, *, whole_batch: bool, run_label: str = "release"
) -> Evaluation:
    """Judge `rows` (quarantined rows of one batch, bronze columns) with the current rules, writing
    nothing: a quarantine release (flows.validation.quarantine) decides what to promote.

    `whole_batch`: they are the whole batch (it was rejected), judged again as a batch (header,
    volume, drift, failing share) against earlier dates; otherwise a subset, judged by the row
    rules only, with that date's silver counted as earlier deliveries."""
    src = get_source(source)
    contract = load_contract(src.name)
    rows = history.ordered(rows)
    ctx = _Context([day], load_fx_rates(), processed={src.name})
    b = prepare(src, contract, rows)
    if whole_batch:
        records = history.file_records(src, [day])[day]
        info = history.delivery_info(src, day, rows, records)
        return evaluate(b, [day], {day: info}, ctx, run_label=run_label)
    info = Delivery(True, list(src.column_names), [])
    return evaluate(
        b, [day], {day: info}, ctx, full_batch=False, include_day_silver=True, run_label=run_label
    )
