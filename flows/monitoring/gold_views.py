"""The gold feature tables as monitoring reads them: a day at a time, with deterministic samples."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.monitoring.config import MonitorConfig, ViewConfig
from flows.storage import lake


def hash_order(ids: np.ndarray, salt: int = 0) -> np.ndarray:
    """A deterministic pseudo-random order of entity ids (the same ids always sort the same way)."""
    try:
        keys = np.asarray(ids).astype(np.uint64)
    except (TypeError, ValueError):
        keys = np.array([hash(str(x)) & 0xFFFFFFFFFFFFFFFF for x in ids], dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = (keys + np.uint64(salt)) * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(29)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(32)
    return np.argsort(h, kind="stable")


def _float_array(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


class GoldView:
    """One gold feature table, read a day at a time; reference samples are kept per day."""

    def __init__(self, cfg: MonitorConfig, view: ViewConfig) -> None:
        self.cfg = cfg
        self.view = view
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
            self._days[day] = lake.read("gold", self.view.name, days=[day], date_column="as_of_date")
        return self._days[day]

    def values(self, day: dt.date) -> dict[str, np.ndarray]:
        tbl = self.rows(day)
        if tbl is None:
            return {}
        return {f: _float_array(tbl[f]) for f in self.numeric}

    def sample(self, day: dt.date) -> dict[str, np.ndarray]:
        """The reference sample of one day: at most max_reference_rows / reference_days rows, chosen
        by a hash of the entity id (the same rows every time)."""
        if day not in self._samples:
            tbl = self.rows(day)
            if tbl is None:
                self._samples[day] = {}
            else:
                cap = math.ceil(self.cfg.psi_max_reference_rows / self.cfg.psi_reference_days)
                if tbl.num_rows > cap:
                    order = hash_order(tbl[self.view.entity].to_numpy(zero_copy_only=False))
                    tbl = tbl.take(pa.array(np.sort(order[:cap])))
                self._samples[day] = {f: _float_array(tbl[f]) for f in self.numeric}
        return self._samples[day]


def views_of(cfg: MonitorConfig) -> dict[str, GoldView]:
    """Every monitored view of `cfg`, by name."""
    return {name: GoldView(cfg, v) for name, v in cfg.views.items()}
