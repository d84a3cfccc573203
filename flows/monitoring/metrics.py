"""The metrics of each execution date (contract §9): computed from the lake, judged against
monitoring.toml.

    compute_and_store(days) -> list[Breach]      metrics of each date into `lake/ops/metrics`
    publish(breaches, ...)  -> Verdict            Prefect markdown/link artifacts + the HTML report
    flow_state(verdict, data)                     the flow's return value: data, or a Prefect state
                                                  ("Completed with warnings" / Failed) carrying it

Metrics (long format, one row per date x metric x scope; definitions in docs/monitoring.md):

    metric                 scope                 from
    date_status            *                     ops/runs (1 = every stage succeeded)
    rows_landed            source                ops/ingest_files
    batch_delivered        source                ops/ingest_files (0 = no file landed for the date)
    rows_silver            source                ops/runs (validate)
    rows_quarantined       source                ops/runs (validate)
    validation_pass_rate   source                rows_silver / rows in bronze
    quarantined_rows       source:rule           quarantine/<source> `_reasons` (one count per reason)
    volume_ratio           source                rows landed / median of the trailing delivered batches
    ingest_lag_hours       source                newest landing file mtime - (D+1 00:00 UTC)
    freshness_hours        view                  (D+1 00:00 UTC) - newest feature_timestamp of as-of <= D
    coverage               service               active entities of D with every feature non-null
    psi                    view.feature          day D vs the trailing reference window, fixed bins
    online_mismatch_rate   view                  sampled entities: online store vs latest gold row
    monitor_error          metric family         1 when computing a family of metrics raised (logged)
    serving_requests, serving_latency_p50_ms, serving_latency_p99_ms
                           endpoint:service      requests served on day D and their latency quantiles
                                                 (flows/monitoring/daily_latency.py)
    logged_mismatch_rate   service               requests logged by `asof serve` on day D: share whose
                                                 served values differ from offline retrieval at the
                                                 served instant (flows/features/feature_logging.py)

Thresholds and their severities live in `monitoring.toml` (repo root; `ASOF_MONITORING_CONFIG` points
elsewhere). Every value is a function of the lake's content for that date (evaluation instant
D+1 00:00 UTC, not the wall clock), so a rerun or a backfill stores the same metrics, and each date's
rows are replaced as a whole.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.dates import date_range, day_start_utc, feature_timestamp
from flows.monitoring.breaches import Breach, breaches_of, fmt_value
from flows.monitoring.config import ALL_SCOPE, FRESHNESS_LOOKBACK_DAYS, MonitorConfig, load_config
from flows.monitoring.drift import psi_of_sorted
from flows.monitoring.gold_views import GoldView
from flows.monitoring.measurement import Measurement, metric_row
from flows.monitoring.online_check import OnlineReader, auto_reader, online_mismatch
from flows.monitoring.storage import store
from flows.operations import runs
from flows.sources import SOURCE_NAMES
from flows.storage import lake

if TYPE_CHECKING:
    import pyarrow.dataset as ds

log = logging.getLogger(__name__)


class _Context:
    """What one compute() call reads, read once."""

    def __init__(self, cfg: MonitorConfig, days: Sequence[dt.date]) -> None:
        self.cfg = cfg
        self.days = sorted(set(days))
        lo, hi = self.days[0], self.days[-1]
        span = (lo - dt.timedelta(days=cfg.psi_reference_days), hi)
        self.views = {name: GoldView(cfg, v, span) for name, v in cfg.views.items()}
        self._transactions: ds.Dataset | None = None
        self.runs: dict[tuple[dt.date, str, str], dict] = {}
        self.run_records: dict[dt.date, list[dict]] = defaultdict(list)
        for r in runs.latest(lo, hi):
            self.runs[(r["execution_date"], r["stage"], r["source"])] = r
            self.run_records[r["execution_date"]].append(r)
        self.files: dict[tuple[dt.date, str], list[dict]] = defaultdict(list)
        if lake.exists("ops", "ingest_files"):
            span = list(date_range(lo - dt.timedelta(days=cfg.volume_trailing_days), hi))
            for r in lake.read("ops", "ingest_files", days=span).to_pylist():
                self.files[(r["_batch_date"], r["source"])].append(r)
        self.quarantine: dict[str, dict[dt.date, dict[str, int]]] = {}
        for source in SOURCE_NAMES:
            if not lake.exists("quarantine", source):
                continue
            tbl = lake.read(
                "quarantine",
                source,
                days=self.days,
                columns=["_batch_date", "_reasons"],
            )
            per_day: dict[dt.date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for day, reasons in zip(tbl["_batch_date"].to_pylist(), tbl["_reasons"].to_pylist(), strict=True):
                for reason in sorted(set(reasons or ["unknown"])):
                    per_day[day][reason] += 1
            self.quarantine[source] = per_day
        self._profile = None
        self._latest: dict[str, _LatestKnown] = {}

    def transactions(self) -> ds.Dataset:
        """Silver transactions of the monitored dates, opened once (see GoldView._read_day)."""
        if self._transactions is None:
            self._transactions = lake.dataset("silver", "transactions", dates=(self.days[0], self.days[-1]))
        return self._transactions

    def profile_frame(self, view: str):
        """The whole (change-log) view as a pandas frame sorted by time; small by construction."""
        if self._profile is None:
            tbl = lake.read("gold", view)
            frame = tbl.to_pandas()
            order = "feature_timestamp" if "feature_timestamp" in frame else "as_of_date"
            self._profile = frame.sort_values(order, kind="stable").reset_index(drop=True)
        return self._profile

    def complete_latest(self, view: str, entity: str, features: list[str], day: dt.date) -> np.ndarray:
        """Entities of a change-log view whose latest row known by `day` has every feature (see
        `_LatestKnown`)."""
        if view not in self._latest:
            self._latest[view] = _LatestKnown(self.profile_frame(view), entity, features)
        return self._latest[view].complete_ids(day)


class _LatestKnown:
    """The latest row per entity among the rows of a change log with `as_of_date <= day`, for days
    asked in increasing order: what `frame[frame.as_of_date <= day].drop_duplicates(entity,
    keep="last")` selects (the frame is sorted by time), kept up to date row by row instead of
    filtering and deduplicating the whole log again for every date (which grew with history: a
    year's profile log is ~240k rows, filtered once per monitored date)."""

    def __init__(self, frame, entity: str, features: list[str]) -> None:
        import pandas as pd

        n = len(frame)
        codes, self.entities = pd.factorize(frame[entity], use_na_sentinel=False)
        self.codes = np.asarray(codes, dtype=np.int64)
        self.complete = _complete(frame, features).to_numpy(dtype=bool)
        if "as_of_date" in frame:
            # NaT compares false, as the frame's None did: such a row is never "known"
            known_from = pd.to_datetime(frame["as_of_date"]).to_numpy(dtype="datetime64[D]")
        else:  # every row counts from the start
            known_from = np.full(n, np.datetime64("NaT"), dtype="datetime64[D]")
        self.always = "as_of_date" not in frame
        order = np.argsort(known_from, kind="stable")
        valid = ~np.isnat(known_from[order]) if not self.always else np.ones(n, dtype=bool)
        self.order = order[valid]
        self.known_from = known_from[self.order]
        self._reset()

    def _reset(self) -> None:
        self.best = np.full(len(self.entities), -1, dtype=np.int64)  # newest row position per entity
        self.cursor = 0
        self.day: dt.date | None = None

    def complete_ids(self, day: dt.date) -> np.ndarray:
        if self.day is not None and day < self.day:
            self._reset()
        self.day = day
        end = (
            len(self.order)
            if self.always
            else int(np.searchsorted(self.known_from, np.datetime64(day, "D"), side="right"))
        )
        if end > self.cursor:
            rows = self.order[self.cursor : end]
            np.maximum.at(self.best, self.codes[rows], rows)
            self.cursor = end
        seen = self.best >= 0
        ok = np.zeros(len(self.best), dtype=bool)
        ok[seen] = self.complete[self.best[seen]]
        return np.asarray(self.entities)[ok]


# ------------------------------------------------------------------------------------- metrics


def _date_status(ctx: _Context, day: dt.date) -> list[Measurement]:
    recs = ctx.run_records.get(day, [])
    if not recs:
        return [Measurement(day, "date_status", ALL_SCOPE, None, {"status": "not run"})]
    status = runs.date_status(recs).get(day, "not run")
    problems = [
        f"{r['stage']} {r['source']}: {r['status']}" for r in recs if r["status"] not in (runs.FINAL_OK,)
    ]
    return [
        Measurement(
            day, "date_status", ALL_SCOPE, 1.0 if status == "succeeded" else 0.0,
            {"status": status, "problems": problems[:10]},
        )
    ]  # fmt: skip


def _validation(ctx: _Context, day: dt.date) -> list[Measurement]:
    out: list[Measurement] = []
    for source in SOURCE_NAMES:
        rec = ctx.runs.get((day, "validate", source))
        if rec is None:
            continue
        details = json.loads(rec["details"]) if rec.get("details") else {}
        rows_in, rows_out, rows_q = rec["rows_in"], rec["rows_out"], rec["rows_quarantined"]
        if rows_out is not None:
            out.append(Measurement(day, "rows_silver", source, float(rows_out)))
        if rows_q is not None:
            out.append(Measurement(day, "rows_quarantined", source, float(rows_q)))
        reasons = details.get("reasons") or {}
        top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        info = {
            "status": rec["status"],
            "rows_bronze": rows_in,
            "rows_silver": rows_out,
            "rows_quarantined": rows_q,
            "rejected_rule": details.get("rejected_rule"),
            "top_reasons": dict(top),
            "warnings": details.get("warnings") or [],
            "message": (rec.get("message") or "")[:300],
        }
        if details.get("rejected_rule"):
            info["summary"] = f"batch rejected by rule {details['rejected_rule']}"
        elif rec["status"] != runs.FINAL_OK:
            info["summary"] = f"validation {rec['status']}: {(rec.get('message') or '')[:160]}"
        elif top:
            info["summary"] = "quarantined: " + ", ".join(f"{k} {v}" for k, v in top)
        if rows_in is None or rows_out is None:
            value, evaluate = None, False
            info["not_evaluated"] = "no row counts recorded"
        elif rows_in == 0:
            value, evaluate = None, False
            info["not_evaluated"] = "empty batch"
        else:
            value, evaluate = rows_out / rows_in, True
        out.append(Measurement(day, "validation_pass_rate", source, value, info, evaluate=evaluate))
    return out


def _quarantine(ctx: _Context, day: dt.date) -> list[Measurement]:
    out: list[Measurement] = []
    for source in SOURCE_NAMES:
        if source in ctx.quarantine:
            counts = dict(ctx.quarantine[source].get(day, {}))
            origin = "quarantine table"
        else:
            rec = ctx.runs.get((day, "validate", source))
            counts = (json.loads(rec["details"]).get("reasons") or {}) if rec and rec.get("details") else {}
            origin = "run record"
        for reason, n in sorted(counts.items()):
            out.append(Measurement(day, "quarantined_rows", f"{source}:{reason}", float(n), {"from": origin}))
    return out


def _delivered(files: list[dict]) -> bool:
    # a partial delivery (flows.ingest.completeness) is not a batch yet: it waits, like a missing one
    return bool(files) and any(f["status"] not in ("not_delivered", "partial") for f in files)


def _ingest(ctx: _Context, day: dt.date) -> list[Measurement]:
    from flows.ingest.stage import landing_dir

    cfg = ctx.cfg
    out: list[Measurement] = []
    deadline = day_start_utc(day + dt.timedelta(days=1))
    for source in SOURCE_NAMES:
        files = ctx.files.get((day, source), [])
        if not files:
            continue  # ingest did not run for this batch
        delivered = _delivered(files)
        landed = sum(int(f["rows"] or 0) for f in files if f["status"] != "not_delivered")
        statuses = sorted({f["status"] for f in files})
        out.append(Measurement(day, "rows_landed", source, float(landed), {"file_status": statuses}))
        info_d: dict[str, Any] = {"files": [f["file"] for f in files], "file_status": statuses}
        if not delivered:
            info_d["summary"] = "; ".join(sorted({f["message"] or "not delivered" for f in files}))[:300]
        out.append(Measurement(day, "batch_delivered", source, 1.0 if delivered else 0.0, info_d))

        if source in cfg.volume_sources:
            history = []
            for back in range(1, cfg.volume_trailing_days + 1):
                prev = ctx.files.get((day - dt.timedelta(days=back), source), [])
                if _delivered(prev):
                    history.append(sum(int(f["rows"] or 0) for f in prev if f["status"] != "not_delivered"))
            info: dict[str, Any] = {"rows": landed, "history": history, "file_status": statuses}
            if len(history) < cfg.volume_min_history or statistics.median(history) <= 0:
                info["not_evaluated"] = f"{len(history)} delivered batch(es) in the trailing window"
                out.append(Measurement(day, "volume_ratio", source, None, info, evaluate=False))
            else:
                med = float(statistics.median(history))
                info["trailing_median"] = med
                info["summary"] = f"{landed:,} rows vs trailing median {med:,.0f}" + (
                    "" if delivered else " (batch not delivered)"
                )
                out.append(Measurement(day, "volume_ratio", source, landed / med, info))

        if not delivered:
            continue
        folder = landing_dir(source, day)
        mtimes = []
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_file() and not p.name.startswith((".", "_")):
                    mtimes.append(p.stat().st_mtime)
        ingested = max(f["ingested_at"] for f in files)
        if mtimes:
            arrival = dt.datetime.fromtimestamp(max(mtimes), dt.UTC)
            origin = "landing file mtime"
        else:
            arrival, origin = ingested, "ingested_at (landing files gone)"
        lag_h = (arrival - deadline).total_seconds() / 3600
        since_deadline_h = (ingested - deadline).total_seconds() / 3600
        info = {
            "arrival": arrival.isoformat(),
            "arrival_from": origin,
            "deadline": deadline.isoformat(),
            "ingested_at": ingested.isoformat(),
            "summary": f"batch arrived {lag_h:.1f} h after the end of {day.isoformat()}",
        }
        evaluate = since_deadline_h <= cfg.lag_live_window_hours
        if not evaluate:
            info["not_evaluated"] = (
                f"ingested {since_deadline_h / 24:.1f} days after the deadline (backfill): "
                f"lag is alerted on only within {cfg.lag_live_window_hours:g} h"
            )
        out.append(Measurement(day, "ingest_lag_hours", source, lag_h, info, evaluate=evaluate))
    return out


def _freshness(ctx: _Context, day: dt.date) -> list[Measurement]:
    out: list[Measurement] = []
    evaluated_at = feature_timestamp(day)
    t_eval = evaluated_at.timestamp()
    oldest = day - dt.timedelta(days=FRESHNESS_LOOKBACK_DAYS)
    for name, v in ctx.views.items():
        dates = v.dates()
        known = [(d, ts) for d, ts in dates.items() if oldest < d <= day]
        info: dict[str, Any] = {
            "evaluated_at": evaluated_at.isoformat(),
            "cadence": ctx.cfg.views[name].cadence,
        }
        if not known:
            info["summary"] = (
                "the gold table does not exist" if not v.exists else f"no feature rows as of {day} or before"
            )
            out.append(Measurement(day, "freshness_hours", name, None, info, none_is_breach=True))
            continue
        newest_day, newest_ts = max(known, key=lambda kv: kv[1])
        age = max(0.0, (t_eval - min(newest_ts, t_eval)) / 3600)
        info["newest_as_of_date"] = newest_day.isoformat()
        info["newest_feature_timestamp"] = dt.datetime.fromtimestamp(newest_ts, dt.UTC).isoformat()
        info["summary"] = f"newest rows are as of {newest_day.isoformat()}"
        out.append(Measurement(day, "freshness_hours", name, age, info))
    return out


def _psi(ctx: _Context, day: dt.date) -> list[Measurement]:
    cfg = ctx.cfg
    out: list[Measurement] = []
    for name, v in ctx.views.items():
        if not v.view.psi or not v.exists or not v.numeric:
            continue
        first = v.first_day()
        dates = v.dates()
        current = v.values(day)
        for feature in v.numeric:
            scope = f"{name}.{feature}"
            suffix = re.search(r"_(\d+)d$", feature)
            warmup = max(v.view.warmup_days, int(suffix.group(1)) if suffix else 0)
            full_from = first + dt.timedelta(days=max(warmup - 1, 0)) if first else None
            ref_lo = day - dt.timedelta(days=cfg.psi_reference_days)
            if full_from is not None:
                ref_lo = max(ref_lo, full_from)
            info: dict[str, Any] = {
                "reference": [ref_lo.isoformat(), (day - dt.timedelta(days=1)).isoformat()],
                "warmup_days": warmup,
                "bins": cfg.psi_bins,
                "epsilon": cfg.psi_epsilon,
            }
            cur = current.get(feature)
            if cur is None:
                info["not_evaluated"] = f"no rows as of {day}"
                out.append(Measurement(day, "psi", scope, None, info, evaluate=False))
                continue
            if full_from is None or day < full_from:
                info["not_evaluated"] = f"warm-up: the {warmup}-day window is full from {full_from}"
                out.append(Measurement(day, "psi", scope, None, info, evaluate=False))
                continue
            ref_days = [d for d in date_range(ref_lo, day - dt.timedelta(days=1)) if d in dates]
            ref = v.reference(feature, ref_days)  # sorted, finite
            cur = cur[np.isfinite(cur)]
            info.update(
                {"reference_days": len(ref_days), "reference_n": int(ref.size), "current_n": int(cur.size)}
            )
            if len(ref_days) < cfg.psi_min_reference_days:
                info["not_evaluated"] = (
                    f"{len(ref_days)} reference day(s) with full history (< {cfg.psi_min_reference_days})"
                )
                out.append(Measurement(day, "psi", scope, None, info, evaluate=False))
                continue
            if ref.size < cfg.psi_min_rows or cur.size < cfg.psi_min_rows:
                info["not_evaluated"] = f"too few values (< {cfg.psi_min_rows})"
                out.append(Measurement(day, "psi", scope, None, info, evaluate=False))
                continue
            value, edges, q, p, ref_med = psi_of_sorted(ref, cur, cfg.psi_bins, cfg.psi_epsilon)
            cur_med = float(np.median(cur))
            info.update(
                {
                    "edges": [round(float(e), 6) for e in edges],
                    "reference_shares": [round(float(x), 5) for x in q],
                    "current_shares": [round(float(x), 5) for x in p],
                    "reference_median": ref_med,
                    "current_median": cur_med,
                    "summary": f"median {fmt_value(cur_med)} vs reference {fmt_value(ref_med)}",
                }
            )
            out.append(Measurement(day, "psi", scope, value, info))
    return out


def _complete(frame, features: list[str]):
    """Boolean Series: every feature non-null (NaN counts as null)."""
    return frame[features].notna().all(axis=1)


def _complete_ids(tbl: pa.Table, entity: str, features: list[str]) -> np.ndarray:
    """Entities of `tbl` whose every feature is non-null and not NaN (`_complete`, in Arrow: the
    pandas frame of a bench day's 84k rows cost more than the rest of the coverage check)."""
    mask = pa.array(np.ones(tbl.num_rows, dtype=bool))
    for f in features:
        col = tbl[f]
        ok = pc.is_valid(col)
        if pa.types.is_floating(col.type):
            ok = pc.and_(ok, pc.invert(pc.fill_null(pc.is_nan(col), True)))
        mask = pc.and_(mask, ok)
    return tbl[entity].filter(mask).to_numpy(zero_copy_only=False)


# A day's active entities are collected from silver batches of this many rows; the distinct pairs
# held are merged again each time they have grown by _ACTIVE_MERGE_ROWS.
_ACTIVE_BATCH_ROWS = 1 << 17
_ACTIVE_MERGE_ROWS = 1 << 20


def _active_pairs(data: ds.Dataset, day: dt.date):
    """The distinct (customer_id, merchant_id) of batch D's silver transactions whose event falls
    on D, neither null, as a pandas frame: read batch by batch (a little readahead), only each
    batch's distinct pairs kept. Read whole, filtered and deduplicated in pandas, a 20M-row day
    took the monitor stage +1.4 GB and 36 s; what is held now grows with the pairs, not the rows."""
    import pyarrow.dataset as ds

    keys = ["customer_id", "merchant_id"]
    ts = data.schema.field("event_time").type
    lo = pa.scalar(day_start_utc(day), ts)
    hi = pa.scalar(day_start_utc(day + dt.timedelta(days=1)), ts)
    wanted = (
        lake.date_filter("_batch_date", [day])
        & (ds.field("event_time") >= lo)
        & (ds.field("event_time") < hi)
        & ds.field("customer_id").is_valid()
        & ds.field("merchant_id").is_valid()
    )
    parts: list[pa.Table] = []
    held, merged = 0, 0
    batches = data.to_batches(
        columns=keys, filter=wanted, batch_size=_ACTIVE_BATCH_ROWS, batch_readahead=2, fragment_readahead=1
    )
    for batch in batches:
        if batch.num_rows:
            parts.append(pa.Table.from_batches([batch]).group_by(keys).aggregate([]))
            held += parts[-1].num_rows
        if held > merged + _ACTIVE_MERGE_ROWS:  # merged again when what is held has grown by as much
            parts = [pa.concat_tables(parts).group_by(keys).aggregate([])]
            held = merged = parts[0].num_rows
    if len(parts) == 1:  # one batch's (or one merge's) pairs: distinct already
        return parts[0].select(keys).to_pandas()
    pairs = pa.concat_tables(parts) if parts else data.schema.empty_table().select(keys)
    return pairs.group_by(keys).aggregate([]).select(keys).to_pandas()


def _coverage(ctx: _Context, day: dt.date) -> list[Measurement]:
    import pandas as pd

    cfg = ctx.cfg
    if not cfg.services:
        return []
    out: list[Measurement] = []
    if not lake.exists("silver", "transactions"):
        active = pd.DataFrame({"customer_id": [], "merchant_id": []})
    else:
        active = _active_pairs(ctx.transactions(), day)

    # ids as arrays, not sets: `Series.isin(set)` turned ~100k Python ints into an object array for
    # every service and view of every date (2.3 of 11.8 s of coverage over 88 bench days)
    complete_ids: dict[str, np.ndarray] = {}

    def complete_for(view: str) -> np.ndarray:
        if view in complete_ids:
            return complete_ids[view]
        v = ctx.views[view]
        ids: np.ndarray = np.array([])
        if v.exists and v.features:
            if v.view.cadence == "daily":
                tbl = v.rows(day)
                if tbl is not None:
                    ids = _complete_ids(tbl, v.view.entity, v.features)
            else:  # a change log: the latest row known by D per entity
                ids = ctx.complete_latest(view, v.view.entity, v.features, day)
        complete_ids[view] = ids
        return ids

    for service, views in cfg.services.items():
        keys = sorted({cfg.views[v].entity for v in views})
        units = active[keys].drop_duplicates() if len(active) else active.reindex(columns=keys)
        n = len(units)
        info: dict[str, Any] = {"active_entities": n, "keys": keys, "views": views}
        if n == 0:
            info["not_evaluated"] = "no active entities (no valid transaction of the day)"
            out.append(Measurement(day, "coverage", service, None, info, evaluate=False))
            continue
        ok = np.ones(n, dtype=bool)
        missing: dict[str, int] = {}
        for view in views:
            key = cfg.views[view].entity
            has = units[key].isin(complete_for(view)).to_numpy()
            missing[view] = int((~has).sum())
            ok &= has
        covered = int(ok.sum())
        info.update({"covered": covered, "incomplete_by_view": missing})
        info["summary"] = f"{covered:,}/{n:,} active entities complete; incomplete per view: " + ", ".join(
            f"{k} {v}" for k, v in missing.items()
        )
        out.append(Measurement(day, "coverage", service, covered / n, info))
    return out


def _serving(ctx: _Context, day: dt.date) -> list[Measurement]:
    """Requests `asof serve` (and timed in-process reads) served on day D, with P50/P99: the
    serving processes log them per UTC day (flows/monitoring/daily_latency.py)."""
    from flows.monitoring import daily_latency

    return [Measurement(day, *m) for m in daily_latency.measurements(day)]


def _logged_features(ctx: _Context, day: dt.date) -> list[Measurement]:
    """Served feature values logged on day D vs offline retrieval (flows/features/feature_logging.py)."""
    from flows.features import feature_logging

    return [Measurement(day, *m) for m in feature_logging.measurements(day)]


# ------------------------------------------------------------------------------------- compute


def _flow_run_id() -> str | None:
    if "prefect.context" not in sys.modules:
        return None
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        return str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    except Exception:
        return None


def compute(
    days: Iterable[dt.date],
    config: MonitorConfig | None = None,
    online_reader: OnlineReader | None | bool = None,
) -> list[dict[str, Any]]:
    """Metric rows (METRICS_SCHEMA, details as JSON text) for each date, evaluated against the rules.

    `online_reader`: None = Feast through `flows.features.featurestore` when importable, for dates whose
    materialize stage succeeded; False = no online check; or a callable
    (view, join_key, ids, features) -> {id: {feature: value}} (tests, other stores).
    """
    days = sorted(set(days))
    if not days:
        return []
    # Every family reads the lake per date; outside a run's own scope each read opened the table
    # again, replaying a Delta log that grows with history (30 bench days: 6.8-10.4 s -> 5.4-6.2 s).
    with lake.reader_handles():
        return _compute(days, config or load_config(), online_reader)


def _compute(
    days: list[dt.date], cfg: MonitorConfig, online_reader: OnlineReader | None | bool
) -> list[dict[str, Any]]:
    ctx = _Context(cfg, days)
    reader: OnlineReader | None
    auto = False
    if online_reader is False or not cfg.online_enabled:
        reader = None
    elif online_reader is None or online_reader is True:
        reader = auto_reader()
        auto = True
    else:
        reader = online_reader
        auto = False
    now = dt.datetime.now(dt.UTC)
    flow_run_id = _flow_run_id()
    rows: list[dict[str, Any]] = []
    families: list[tuple[str, Callable[[_Context, dt.date], list[Measurement]]]] = [
        ("date_status", _date_status),
        ("ingest", _ingest),
        ("validation", _validation),
        ("quarantine", _quarantine),
        ("freshness", _freshness),
        ("coverage", _coverage),
        ("psi", _psi),
        ("serving", _serving),
        ("logged_features", _logged_features),
    ]
    for day in days:
        todo = list(families)
        if reader is not None and (cfg.online_check == "every" or day == days[-1]):
            materialized = ctx.runs.get((day, "materialize", runs.ALL_SOURCES))
            if not auto or (materialized and materialized["status"] == runs.FINAL_OK):
                todo.append(("online", lambda c, d: online_mismatch(c.views, c.cfg, d, reader)))
        ms: list[Measurement] = []
        for family, fn in todo:
            try:
                ms += fn(ctx, day)
            except Exception as exc:  # one broken family must not hide the others (or fail the run)
                log.warning("monitoring %s failed for %s: %s", family, day, exc, exc_info=True)
                error = f"{type(exc).__name__}: {exc}"[:500]
                ms.append(Measurement(day, "monitor_error", family, 1.0, {"error": error, "summary": error}))
        rows += [metric_row(m, cfg, now, flow_run_id) for m in ms]
    return rows


def compute_and_store(
    days: Iterable[dt.date],
    config: MonitorConfig | None = None,
    online_reader: OnlineReader | None | bool = None,
) -> list[Breach]:
    """Compute every metric of `days`, replace those dates in `ops/metrics`, return the breaches."""
    days = sorted(set(days))
    if not days:
        return []
    rows = compute(days, config, online_reader)
    store(rows, days)
    breaches = breaches_of(rows)
    for b in breaches:
        log.warning("monitoring breach: %s", b.message)
    return breaches
