"""The gold feature tables as monitoring reads them: a day at a time, with deterministic samples."""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.monitoring.config import MonitorConfig, ViewConfig
from flows.monitoring.drift import SortedWindow
from flows.storage import lake

if TYPE_CHECKING:
    import pyarrow.dataset as ds


def _id_hashes(ids: np.ndarray, salt: int) -> np.ndarray:
    try:
        keys = np.asarray(ids).astype(np.uint64)
    except (TypeError, ValueError):
        keys = np.array([hash(str(x)) & 0xFFFFFFFFFFFFFFFF for x in ids], dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = (keys + np.uint64(salt)) * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return h


def hash_order(ids: np.ndarray, salt: int = 0) -> np.ndarray:
    """A deterministic pseudo-random order of entity ids (the same ids always sort the same way)."""
    return np.argsort(_id_hashes(ids, salt), kind="stable")


def hash_sample(ids: np.ndarray, n: int, salt: int = 0) -> np.ndarray:
    """`np.sort(hash_order(ids, salt)[:n])`, the positions of the first `n` ids in that order, in
    position order, without sorting every id (a bench day's 100k ids, for every monitored day):
    the n-th smallest hash is found by a partition; ties with it go by position, as in the stable
    sort."""
    h = _id_hashes(ids, salt)
    if n >= h.size:
        return np.arange(h.size)
    if n <= 0:
        return np.array([], dtype=np.intp)
    nth = np.partition(h, n - 1)[n - 1]
    below = np.flatnonzero(h < nth)
    tied = np.flatnonzero(h == nth)[: n - below.size]
    return np.sort(np.concatenate([below, tied]))


def _float_array(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


class GoldView:
    """One gold feature table, read a day at a time; reference samples are kept per day."""

    def __init__(
        self, cfg: MonitorConfig, view: ViewConfig, span: tuple[dt.date, dt.date] | None = None
    ) -> None:
        """`span`: the as-of dates most reads will ask for (the monitored dates and their PSI
        reference window), opened once (see `rows`)."""
        self.cfg = cfg
        self.view = view
        self.span = span
        self._span_data: ds.Dataset | None = None
        self.exists = lake.exists("gold", view.name)
        self.schema: pa.Schema | None = lake.dataset("gold", view.name).schema if self.exists else None
        skip = {view.entity, "as_of_date", "feature_timestamp"}
        self.features: list[str] = (
            [f.name for f in self.schema if f.name not in skip and not f.name.startswith("_")]
            if self.schema is not None
            else []
        )
        self.numeric = [
            f for f in self.features if self.schema is not None and _is_numeric(self.schema.field(f).type)
        ]
        self._days: dict[dt.date, pa.Table] = {}
        self._samples: dict[dt.date, dict[str, np.ndarray]] = {}
        self._windows: dict[str, SortedWindow] = {}
        self._dates: dict[dt.date, float] | None = None

    def dates(self) -> dict[dt.date, float]:
        """as_of_date -> newest feature_timestamp (epoch seconds) of that date, every date present."""
        if self._dates is None:
            self._dates = {}
            if self.exists:
                import duckdb

                con = duckdb.connect()
                try:
                    con.register("gold_view", lake.dataset("gold", self.view.name))
                    rows = con.execute(
                        "SELECT as_of_date, epoch(max(feature_timestamp)) FROM gold_view GROUP BY 1"
                    ).fetchall()
                finally:
                    con.close()
                self._dates = {d: float(ts) for d, ts in rows if d is not None and ts is not None}
        return self._dates

    def first_day(self) -> dt.date | None:
        d = self.dates()
        return min(d) if d else None

    def rows(self, day: dt.date) -> pa.Table | None:
        if not self.exists or day not in self.dates():
            return None
        if day not in self._days:
            if len(self._days) > 4:
                self._days.pop(next(iter(self._days)))
            self._days[day] = self._read_day(day)
        return self._days[day]

    def _read_day(self, day: dt.date) -> pa.Table:
        """One as-of date's rows. A date of `span` is read from the dataset of the span opened
        once: opened per date, a year monitored in one pass brought its handle up to date and asked
        deltalake for its files 730 times (~15 s of a 62 s monitor stage). What a compute reads is
        then the table as it was when it started, which nothing else writes meanwhile (the
        pipeline lock)."""
        if self.span is None or not self.span[0] <= day <= self.span[1]:
            return lake.read("gold", self.view.name, days=[day], date_column="as_of_date")
        if self._span_data is None:
            self._span_data = lake.dataset("gold", self.view.name, dates=self.span, date_column="as_of_date")
        return self._span_data.to_table(filter=lake.date_filter("as_of_date", [day]))

    def values(self, day: dt.date) -> dict[str, np.ndarray]:
        tbl = self.rows(day)
        if tbl is None:
            return {}
        return {f: _float_array(tbl[f]) for f in self.numeric}

    def sample(self, day: dt.date) -> dict[str, np.ndarray]:
        """The reference sample of one day, each feature's finite values sorted: at most
        max_reference_rows / reference_days rows, chosen by a hash of the entity id (the same rows
        every time)."""
        if day not in self._samples:
            tbl = self.rows(day)
            got: dict[str, np.ndarray] = {}
            if tbl is not None:
                cap = math.ceil(self.cfg.psi_max_reference_rows / self.cfg.psi_reference_days)
                if tbl.num_rows > cap:
                    tbl = tbl.take(
                        pa.array(hash_sample(tbl[self.view.entity].to_numpy(zero_copy_only=False), cap))
                    )
                for f in self.numeric:
                    values = _float_array(tbl[f])
                    got[f] = np.sort(values[np.isfinite(values)])
            self._samples[day] = got
        return self._samples[day]

    def reference(self, feature: str, days: list[dt.date]) -> np.ndarray:
        """The finite values of `feature` in the samples of `days`, sorted: PSI's reference window,
        which slides a day per monitored date (drift.SortedWindow). Samples of days before the
        longest window of the earliest of `days` are let go: a year monitored in one pass kept
        every day's (~0.7 MB a view and day)."""
        window = self._windows.setdefault(feature, SortedWindow())
        values = window.over(days, lambda day: self.sample(day).get(feature, _NO_VALUES))
        if days:
            horizon = days[0] - dt.timedelta(days=self.cfg.psi_reference_days)
            for old in [d for d in self._samples if d < horizon]:
                del self._samples[old]
        return values


_NO_VALUES = np.array([], dtype=np.float64)


def views_of(cfg: MonitorConfig) -> dict[str, GoldView]:
    """Every monitored view of `cfg`, by name."""
    return {name: GoldView(cfg, v) for name, v in cfg.views.items()}
