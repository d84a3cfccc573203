"""Monitoring per execution date (contract §9): metrics, thresholds, alerts.

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
                                                 served instant (flows/feature_logging.py)

Thresholds and their severities live in `monitoring.toml` (repo root; `ASOF_MONITORING_CONFIG` points
elsewhere). Every value is a function of the lake's content for that date (evaluation instant
D+1 00:00 UTC, not the wall clock), so a rerun or a backfill stores the same metrics, and each date's
rows are replaced as a whole.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import statistics
import sys
import tomllib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows import lake, links, runs
from flows.config import settings
from flows.dates import date_range, day_start_utc, feature_timestamp
from flows.sources import SOURCE_NAMES

log = logging.getLogger(__name__)

SEVERITIES = ("warning", "failure")
KNOWN_METRICS = (
    "date_status",
    "rows_landed",
    "batch_delivered",
    "rows_silver",
    "rows_quarantined",
    "validation_pass_rate",
    "quarantined_rows",
    "volume_ratio",
    "ingest_lag_hours",
    "freshness_hours",
    "coverage",
    "psi",
    "online_mismatch_rate",
    "monitor_error",
    "serving_requests",
    "serving_latency_p50_ms",
    "serving_latency_p99_ms",
    "logged_mismatch_rate",
)
ALL_SCOPE = "*"
FRESHNESS_LOOKBACK_DAYS = 400

METRICS_SCHEMA = pa.schema(
    [
        pa.field("execution_date", pa.date32(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("scope", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("condition", pa.string()),  # the breach condition, e.g. "< 0.99", "outside [0.5, 2]"
        pa.field("severity", pa.string()),  # warning | failure | null (no rule)
        pa.field("breached", pa.bool_(), nullable=False),
        pa.field("details", pa.string()),  # JSON
        pa.field("computed_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("flow_run_id", pa.string()),
    ]
)


class MonitorConfigError(ValueError):
    pass


# ------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class Rule:
    """Breach when value < min or value > max."""

    min: float | None = None
    max: float | None = None
    severity: str = "warning"
    enabled: bool = True

    @property
    def condition(self) -> str:
        if self.min is not None and self.max is not None:
            return f"outside [{self.min:g}, {self.max:g}]"
        if self.min is not None:
            return f"< {self.min:g}"
        return f"> {self.max:g}"

    def check(self, value: float) -> tuple[bool, float | None]:
        """(breached, the bound that applies: the one breached, else the lower one)."""
        if self.min is not None and value < self.min:
            return True, self.min
        if self.max is not None and value > self.max:
            return True, self.max
        return False, self.min if self.min is not None else self.max


@dataclass(frozen=True)
class ViewConfig:
    name: str
    entity: str
    cadence: str = "daily"
    psi: bool = True
    warmup_days: int = 0


@dataclass(frozen=True)
class MonitorConfig:
    rules: dict[str, Rule]
    scope_rules: dict[tuple[str, str], Rule]
    views: dict[str, ViewConfig]
    services: dict[str, list[str]]
    psi_reference_days: int = 28
    psi_min_reference_days: int = 7
    psi_bins: int = 10
    psi_epsilon: float = 1e-4
    psi_min_rows: int = 50
    psi_max_reference_rows: int = 200_000
    volume_sources: tuple[str, ...] = ("transactions",)
    volume_trailing_days: int = 7
    volume_min_history: int = 3
    lag_live_window_hours: float = 48.0
    online_enabled: bool = True
    online_sample_size: int = 50
    online_check: str = "last"
    online_rel_tol: float = 1e-6
    report_default_days: int = 30
    flow_report_days: int = 60
    source: str = ""

    def rule_for(self, metric: str, scope: str) -> Rule | None:
        """The scope's own rule if configured (exact scope, then each part of `view.feature` /
        `source:rule`), else the metric's rule."""
        candidates = [scope, *[p for p in re.split(r"[.:]", scope) if p and p != scope]]
        for cand in candidates:
            rule = self.scope_rules.get((metric, cand))
            if rule is not None:
                return rule if rule.enabled else None
        rule = self.rules.get(metric)
        return rule if rule is not None and rule.enabled else None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "") -> MonitorConfig:
        def rule(d: dict, where: str, base: Rule | None = None) -> Rule:
            unknown = set(d) - {"min", "max", "severity", "enabled", "scopes", "description"}
            if unknown:
                raise MonitorConfigError(f"{where}: unknown keys {sorted(unknown)}")
            lo = d.get("min", base.min if base and "max" not in d else None)
            hi = d.get("max", base.max if base and "min" not in d else None)
            sev = d.get("severity", base.severity if base else "warning")
            if sev not in SEVERITIES:
                raise MonitorConfigError(f"{where}: severity must be one of {SEVERITIES}, got {sev!r}")
            enabled = bool(d.get("enabled", True))
            if enabled and lo is None and hi is None:
                raise MonitorConfigError(f"{where}: a rule needs min, max or both")
            for name, v in (("min", lo), ("max", hi)):
                if v is not None and not isinstance(v, int | float):
                    raise MonitorConfigError(f"{where}: {name} must be a number, got {v!r}")
            return Rule(
                min=None if lo is None else float(lo),
                max=None if hi is None else float(hi),
                severity=sev,
                enabled=enabled,
            )

        rules: dict[str, Rule] = {}
        scope_rules: dict[tuple[str, str], Rule] = {}
        for metric, d in (raw.get("rules") or {}).items():
            if metric not in KNOWN_METRICS:
                raise MonitorConfigError(
                    f"rules.{metric}: unknown metric (known: {', '.join(KNOWN_METRICS)})"
                )
            base = rule(d, f"rules.{metric}")
            rules[metric] = base
            for scope, sd in (d.get("scopes") or {}).items():
                scope_rules[(metric, scope)] = rule(sd, f"rules.{metric}.scopes.{scope}", base)
        views: dict[str, ViewConfig] = {}
        for name, d in (raw.get("views") or {}).items():
            if "entity" not in d:
                raise MonitorConfigError(f"views.{name}: entity (the join key column) is required")
            views[name] = ViewConfig(
                name=name,
                entity=d["entity"],
                cadence=d.get("cadence", "daily"),
                psi=bool(d.get("psi", True)),
                warmup_days=int(d.get("warmup_days", 0)),
            )
        services = {k: list(v) for k, v in (raw.get("services") or {}).items()}
        for svc, vs in services.items():
            missing = [v for v in vs if v not in views]
            if missing:
                raise MonitorConfigError(f"services.{svc}: views {missing} are not under [views]")
        psi = raw.get("psi") or {}
        vol = raw.get("volume") or {}
        lag = raw.get("lag") or {}
        onl = raw.get("online") or {}
        rep = raw.get("report") or {}
        if onl.get("check", "last") not in ("last", "every"):
            raise MonitorConfigError("online.check must be 'last' or 'every'")
        cfg = cls(
            rules=rules,
            scope_rules=scope_rules,
            views=views,
            services=services,
            psi_reference_days=int(psi.get("reference_days", 28)),
            psi_min_reference_days=int(psi.get("min_reference_days", 7)),
            psi_bins=int(psi.get("bins", 10)),
            psi_epsilon=float(psi.get("epsilon", 1e-4)),
            psi_min_rows=int(psi.get("min_rows", 50)),
            psi_max_reference_rows=int(psi.get("max_reference_rows", 200_000)),
            volume_sources=tuple(vol.get("sources", ("transactions",))),
            volume_trailing_days=int(vol.get("trailing_days", 7)),
            volume_min_history=int(vol.get("min_history", 3)),
            lag_live_window_hours=float(lag.get("live_window_hours", 48)),
            online_enabled=bool(onl.get("enabled", True)),
            online_sample_size=int(onl.get("sample_size", 50)),
            online_check=onl.get("check", "last"),
            online_rel_tol=float(onl.get("rel_tol", 1e-6)),
            report_default_days=int(rep.get("default_days", 30)),
            flow_report_days=int(rep.get("flow_report_days", 60)),
            source=source,
        )
        if cfg.psi_bins < 2 or cfg.psi_reference_days < 1 or not 0 < cfg.psi_epsilon < 0.1:
            raise MonitorConfigError("psi: bins >= 2, reference_days >= 1 and 0 < epsilon < 0.1 are required")
        return cfg


def config_path() -> Path:
    return settings().monitoring_config


def raw_config(path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise MonitorConfigError(f"monitoring configuration {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise MonitorConfigError(f"{path}: {exc}") from None


def load_config(path: Path | None = None) -> MonitorConfig:
    path = path or config_path()
    return MonitorConfig.from_dict(raw_config(path), source=str(path))


# ------------------------------------------------------------------------------------- measurements


@dataclass
class Measurement:
    day: dt.date
    metric: str
    scope: str
    value: float | None
    details: dict[str, Any] = field(default_factory=dict)
    evaluate: bool = True  # False: recorded and charted, never alerted on (details say why)
    none_is_breach: bool = False  # a missing value is itself a breach (e.g. a view without any row)


@dataclass(frozen=True)
class Breach:
    execution_date: dt.date
    metric: str
    scope: str
    value: float | None
    threshold: float | None
    condition: str
    severity: str
    message: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["execution_date"] = self.execution_date.isoformat()
        return d


def fmt_value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if value == int(value):
        return f"{int(value)}"
    return f"{value:.4g}"


def _details(row: dict[str, Any]) -> dict[str, Any]:
    details = row.get("details") or {}
    return json.loads(details) if isinstance(details, str) else details


def _breach_message(row: dict[str, Any]) -> str:
    details = _details(row)
    value = "missing" if row["value"] is None else fmt_value(row["value"])
    text = (
        f"{row['metric']} [{row['scope']}] on {row['execution_date']}: {value} "
        f"(breach if {row['condition']}; {row['severity']})"
    )
    if details.get("summary"):
        text += f": {details['summary']}"
    return text


def _evaluate(m: Measurement, cfg: MonitorConfig, now: dt.datetime, flow_run_id: str | None) -> dict:
    rule = cfg.rule_for(m.metric, m.scope)
    threshold: float | None = None
    condition = severity = None
    breached = False
    details = dict(m.details)
    if m.value is not None and not math.isfinite(m.value):
        details["non_finite_value"] = str(m.value)
        m.value = None
    if rule is not None:
        condition, severity = rule.condition, rule.severity
        if not m.evaluate:
            threshold = rule.min if rule.min is not None else rule.max
        elif m.value is None:
            breached = m.none_is_breach
            threshold = rule.min if rule.min is not None else rule.max
        else:
            breached, threshold = rule.check(m.value)
    return {
        "execution_date": m.day,
        "metric": m.metric,
        "scope": m.scope,
        "value": None if m.value is None else float(m.value),
        "threshold": threshold,
        "condition": condition,
        "severity": severity,
        "breached": bool(breached),
        "details": json.dumps(details, sort_keys=True, default=str),
        "computed_at": now,
        "flow_run_id": flow_run_id,
    }


# ---------------------------------------------------------------------------------------- PSI


def psi_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner bin edges: the reference's quantiles at 1/bins .. (bins-1)/bins (numpy method "lower":
    each edge is an observed reference value), duplicates dropped. Bins are (-inf, e1], (e1, e2], ...,
    (e_k, +inf): a discrete feature (counts) gets one bin per frequent value instead of empty slivers."""
    reference = np.asarray(reference, dtype=np.float64)
    if reference.size == 0:
        return np.array([], dtype=np.float64)
    return np.unique(np.quantile(reference, np.arange(1, bins) / bins, method="lower"))


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    idx = np.searchsorted(edges, values, side="left")  # x == edge falls in the lower (right-closed) bin
    counts = np.bincount(idx, minlength=edges.size + 1)
    return counts / max(values.size, 1)


def psi(
    reference: np.ndarray, current: np.ndarray, bins: int = 10, epsilon: float = 1e-4
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """PSI = sum_i (p_i - q_i) * ln(p_i / q_i), q = reference shares, p = current shares, each share
    floored at `epsilon` (not renormalised). Returns (psi, edges, q, p)."""
    edges = psi_edges(reference, bins)
    q = np.maximum(bin_shares(reference, edges), epsilon)
    p = np.maximum(bin_shares(current, edges), epsilon)
    return float(np.sum((p - q) * np.log(p / q))), edges, q, p


def _hash_order(ids: np.ndarray, salt: int = 0) -> np.ndarray:
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


# ------------------------------------------------------------------------------------- lake reads


def _float_array(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


class _View:
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
                    order = _hash_order(tbl[self.view.entity].to_numpy(zero_copy_only=False))
                    tbl = tbl.take(pa.array(np.sort(order[:cap])))
                self._samples[day] = {f: _float_array(tbl[f]) for f in self.numeric}
        return self._samples[day]


class _Context:
    """What one compute() call reads, read once."""

    def __init__(self, cfg: MonitorConfig, days: Sequence[dt.date]) -> None:
        self.cfg = cfg
        self.days = sorted(set(days))
        lo, hi = self.days[0], self.days[-1]
        self.views = {name: _View(cfg, v) for name, v in cfg.views.items()}
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

    def profile_frame(self, view: str):
        """The whole (change-log) view as a pandas frame sorted by time; small by construction."""
        if self._profile is None:
            tbl = lake.read("gold", view)
            frame = tbl.to_pandas()
            order = "feature_timestamp" if "feature_timestamp" in frame else "as_of_date"
            self._profile = frame.sort_values(order, kind="stable").reset_index(drop=True)
        return self._profile


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
    # a partial delivery (flows.completeness) is not a batch yet: it waits, like a missing one
    return bool(files) and any(f["status"] not in ("not_delivered", "partial") for f in files)


def _ingest(ctx: _Context, day: dt.date) -> list[Measurement]:
    from flows.ingest import landing_dir

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
    for name, v in ctx.views.items():
        dates = v.dates()
        known = [
            (d, ts)
            for d, ts in dates.items()
            if d <= day and d > day - dt.timedelta(days=FRESHNESS_LOOKBACK_DAYS)
        ]
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
            ref_days = [d for d in date_range(ref_lo, day - dt.timedelta(days=1)) if d in v.dates()]
            parts = [v.sample(d).get(feature) for d in ref_days]
            parts = [p for p in parts if p is not None]
            ref = np.concatenate(parts) if parts else np.array([], dtype=np.float64)
            ref = ref[np.isfinite(ref)]
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
            value, edges, q, p = psi(ref, cur, cfg.psi_bins, cfg.psi_epsilon)
            ref_med, cur_med = float(np.median(ref)), float(np.median(cur))
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


def _coverage(ctx: _Context, day: dt.date) -> list[Measurement]:
    import pandas as pd

    cfg = ctx.cfg
    if not cfg.services:
        return []
    out: list[Measurement] = []
    if not lake.exists("silver", "transactions"):
        active = pd.DataFrame({"customer_id": [], "merchant_id": []})
    else:
        tbl = lake.read(
            "silver",
            "transactions",
            days=[day],
            columns=["customer_id", "merchant_id", "event_time"],
        )
        lo = pa.scalar(day_start_utc(day), tbl.schema.field("event_time").type)
        hi = pa.scalar(day_start_utc(day + dt.timedelta(days=1)), tbl.schema.field("event_time").type)
        mask = pc.and_(pc.greater_equal(tbl["event_time"], lo), pc.less(tbl["event_time"], hi))
        active = (
            tbl.filter(mask).select(["customer_id", "merchant_id"]).to_pandas().dropna().drop_duplicates()
        )

    complete_ids: dict[str, set] = {}

    def complete_for(view: str) -> set:
        if view in complete_ids:
            return complete_ids[view]
        v = ctx.views[view]
        ids: set = set()
        if v.exists and v.features:
            if v.view.cadence == "daily":
                tbl = v.rows(day)
                if tbl is not None:
                    ids = set(_complete_ids(tbl, v.view.entity, v.features).tolist())
            else:  # a change log: the latest row known by D per entity
                frame = ctx.profile_frame(view)
                known = frame[frame["as_of_date"] <= day] if "as_of_date" in frame else frame
                latest = known.drop_duplicates(v.view.entity, keep="last")
                ids = set(latest.loc[_complete(latest, v.features), v.view.entity].tolist())
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


# ------------------------------------------------------------------------------ online / offline

OnlineReader = Callable[[str, str, list, list[str]], dict[Any, dict[str, Any]]]


def feast_online_reader(view: str, entity: str, ids: list, features: list[str]) -> dict[Any, dict[str, Any]]:
    """Online values through the project's Feast store: {entity id: {feature: value}}."""
    from flows import featurestore

    store = featurestore.get_store()
    resp = store.get_online_features(
        features=[f"{view}:{f}" for f in features],
        entity_rows=[{entity: int(i)} for i in ids],
        full_feature_names=False,
    ).to_dict()
    return {ids[i]: {f: resp.get(f, [None] * len(ids))[i] for f in features} for i in range(len(ids))}


def _norm(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dt.datetime):
        return (v if v.tzinfo else v.replace(tzinfo=dt.UTC)).timestamp()
    if isinstance(v, dt.date):
        return day_start_utc(v).timestamp()
    if hasattr(v, "to_pydatetime"):  # pandas Timestamp
        return _norm(v.to_pydatetime())
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v)
    return str(v)


def values_equal(a: Any, b: Any, rel_tol: float = 1e-6) -> bool:
    a, b = _norm(a), _norm(b)
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)
    return a == b


def _online(ctx: _Context, day: dt.date, reader: OnlineReader) -> list[Measurement]:
    cfg = ctx.cfg
    out: list[Measurement] = []
    for name, v in ctx.views.items():
        if not v.exists or not v.features:
            continue
        key = v.view.entity
        # entities touched on D (for a change log: the newest date at or before D with rows)
        candidates = [d for d in v.dates() if d <= day]
        if not candidates:
            continue
        src_day = day if day in v.dates() else max(candidates)
        ids_all = np.unique(v.rows(src_day)[key].to_numpy(zero_copy_only=False))
        order = _hash_order(ids_all, salt=day.toordinal())
        ids = [x.item() if isinstance(x, np.generic) else x for x in ids_all[order[: cfg.online_sample_size]]]
        key_type = v.schema.field(key).type if v.schema is not None else None
        expected = lake.read(
            "gold", name, filter=pc.field(key).isin(pa.array(ids, type=key_type))
        ).to_pandas()
        sort_col = "feature_timestamp" if "feature_timestamp" in expected else "as_of_date"
        expected = expected.sort_values(sort_col, kind="stable").drop_duplicates(key, keep="last")
        latest = {row[key]: row for row in expected.to_dict("records")}
        info: dict[str, Any] = {"sampled": len(ids), "entities_from": src_day.isoformat()}
        try:
            online = reader(name, key, ids, v.features)
        except Exception as exc:
            info["error"] = f"{type(exc).__name__}: {exc}"[:500]
            info["summary"] = f"online store read failed: {info['error'][:200]}"
            out.append(Measurement(day, "online_mismatch_rate", name, None, info, none_is_breach=True))
            continue
        mismatched = 0
        examples: list[dict] = []
        per_feature: dict[str, int] = defaultdict(int)
        for i in ids:
            got = online.get(i) or {}
            want = latest.get(i, {})
            bad = [f for f in v.features if not values_equal(got.get(f), want.get(f), cfg.online_rel_tol)]
            if bad:
                mismatched += 1
                for f in bad:
                    per_feature[f] += 1
                if len(examples) < 5:
                    examples.append(
                        {"entity": i, **{f: {"online": got.get(f), "offline": want.get(f)} for f in bad[:3]}}
                    )
        info.update({"mismatched": mismatched, "by_feature": dict(per_feature), "examples": examples})
        if mismatched:
            info["summary"] = f"{mismatched}/{len(ids)} sampled entities differ, e.g. {examples[0]}"[:400]
        out.append(
            Measurement(day, "online_mismatch_rate", name, mismatched / len(ids) if ids else None, info)
        )
    return out


def _auto_reader() -> OnlineReader | None:
    try:
        import flows.featurestore  # noqa: F401
    except ImportError:
        return None
    return feast_online_reader


def _serving(ctx: _Context, day: dt.date) -> list[Measurement]:
    """Requests `asof serve` (and timed in-process reads) served on day D, with P50/P99: the
    serving processes log them per UTC day (flows/monitoring/daily_latency.py)."""
    from flows.monitoring import daily_latency

    return [Measurement(day, *m) for m in daily_latency.measurements(day)]


def _logged_features(ctx: _Context, day: dt.date) -> list[Measurement]:
    """Served feature values logged on day D vs offline retrieval (flows/feature_logging.py)."""
    from flows import feature_logging

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

    `online_reader`: None = Feast through `flows.featurestore` when importable, for dates whose
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
        reader = _auto_reader()
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
                todo.append(("online", lambda c, d: _online(c, d, reader)))
        ms: list[Measurement] = []
        for family, fn in todo:
            try:
                ms += fn(ctx, day)
            except Exception as exc:  # one broken family must not hide the others (or fail the run)
                log.warning("monitoring %s failed for %s: %s", family, day, exc, exc_info=True)
                error = f"{type(exc).__name__}: {exc}"[:500]
                ms.append(Measurement(day, "monitor_error", family, 1.0, {"error": error, "summary": error}))
        rows += [_evaluate(m, cfg, now, flow_run_id) for m in ms]
    return rows


def _spans(days: Sequence[dt.date]) -> list[tuple[dt.date, dt.date]]:
    spans: list[tuple[dt.date, dt.date]] = []
    for d in sorted(set(days)):
        if spans and d == spans[-1][1] + dt.timedelta(days=1):
            spans[-1] = (spans[-1][0], d)
        else:
            spans.append((d, d))
    return spans


def store(rows: list[dict[str, Any]], days: Iterable[dt.date]) -> None:
    """Replace the metrics of exactly `days` (one commit per contiguous span of dates)."""
    days = sorted(set(days))
    for lo, hi in _spans(days):
        part = [r for r in rows if lo <= r["execution_date"] <= hi]
        lake.replace(
            "ops",
            "metrics",
            pa.Table.from_pylist(part, schema=METRICS_SCHEMA),
            predicate=lake.date_predicate("execution_date", lo, hi),
            schema=METRICS_SCHEMA,
        )


def breaches_of(rows: Iterable[dict[str, Any]]) -> list[Breach]:
    out = [
        Breach(
            execution_date=r["execution_date"],
            metric=r["metric"],
            scope=r["scope"],
            value=r["value"],
            threshold=r["threshold"],
            condition=r["condition"] or "",
            severity=r["severity"] or "warning",
            message=_breach_message(r),
            detail=_details(r).get("summary", ""),
        )
        for r in rows
        if r["breached"]
    ]
    rank = {"failure": 0, "warning": 1}
    out.sort(key=lambda b: (b.execution_date, rank.get(b.severity, 2), b.metric, b.scope))
    return out


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


def read_metrics(start: dt.date | None = None, end: dt.date | None = None) -> list[dict[str, Any]]:
    """Stored metric rows in [start, end] (details decoded), sorted by date, metric, scope."""
    if not lake.exists("ops", "metrics"):
        return []
    flt = None
    if start is not None:
        flt = (pc.field("execution_date") >= pa.scalar(start, pa.date32())) & (
            pc.field("execution_date") <= pa.scalar(end or start, pa.date32())
        )
    rows = lake.read("ops", "metrics", filter=flt).to_pylist()
    for r in rows:
        r["details"] = json.loads(r["details"]) if r.get("details") else {}
    rows.sort(key=lambda r: (r["execution_date"], r["metric"], r["scope"]))
    return rows


def metric_dates() -> list[dt.date]:
    if not lake.exists("ops", "metrics"):
        return []
    col = lake.read("ops", "metrics", columns=["execution_date"])["execution_date"]
    return sorted(pc.unique(col).to_pylist())


def stored_breaches(start: dt.date, end: dt.date) -> list[Breach]:
    return breaches_of(read_metrics(start, end))


# ------------------------------------------------------------------------------------- alerting


@dataclass
class Verdict:
    status: str  # ok | warning | failure
    breaches: list[Breach]
    message: str
    report: Path | None = None
    run_report: Path | None = None  # the run's dates in context (monitor_report.write_flow_reports)

    @property
    def failed(self) -> bool:
        return self.status == "failure"


def verdict_of(
    breaches: Sequence[Breach], report: Path | None = None, run_report: Path | None = None
) -> Verdict:
    sev = {b.severity for b in breaches}
    status = "failure" if "failure" in sev else ("warning" if breaches else "ok")
    if not breaches:
        message = "monitoring: no threshold breached"
    else:
        days = sorted({b.execution_date for b in breaches})
        first = breaches[0]
        message = (
            f"monitoring: {len(breaches)} breach(es) on {len(days)} date(s) "
            f"({sum(b.severity == 'failure' for b in breaches)} failure); first: {first.message}"
        )
    return Verdict(status, list(breaches), message[:1000], report, run_report)


def alerts_markdown(verdict: Verdict, title: str, limit: int = 200) -> str:
    lines = [f"## {title}", ""]
    if not verdict.breaches:
        lines.append("No monitoring threshold was breached.")
    else:
        lines.append(
            f"**{verdict.status.upper()}**: {len(verdict.breaches)} threshold breach(es) "
            f"on {len({b.execution_date for b in verdict.breaches})} date(s)."
        )
        lines += [
            "",
            "| date | severity | metric | scope | value | threshold | detail |",
            "|---|---|---|---|---|---|---|",
        ]
        for b in verdict.breaches[:limit]:
            detail = b.detail[:200]
            cells = [
                b.execution_date.isoformat(),
                b.severity,
                b.metric,
                b.scope,
                "missing" if b.value is None else fmt_value(b.value),
                f"breach if {b.condition}",
                detail,
            ]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        if len(verdict.breaches) > limit:
            lines.append(f"\n... and {len(verdict.breaches) - limit} more (see the report / `asof monitor`).")
    if verdict.run_report is not None:
        lines += [
            "",
            f"This run's dates in context: [report]({links.report_url(verdict.run_report)})",
        ]
    if verdict.report is not None:
        lines += [
            "",
            f"The lake's newest dates: [monitoring report]({links.report_url(verdict.report)})",
        ]
    lines += ["", "Thresholds: `monitoring.toml`; all metrics: `asof monitor --start D1 --end D2`."]
    return "\n".join(lines)


def report_path() -> Path:
    return links.reports_dir() / "monitoring.html"


def publish(
    breaches: Sequence[Breach],
    title: str = "monitoring",
    days: Sequence[dt.date] | None = None,
    write_report: bool = True,
    config: MonitorConfig | None = None,
) -> Verdict:
    """Alert on `breaches`: log them, write the HTML reports (`$ASOF_HOME/reports/monitoring.html`,
    the newest `flow_report_days` dates in the lake, and the run's own `reports/runs/...html`, its
    dates in context: monitor_report.write_flow_reports), and, inside a Prefect run, publish a
    markdown artifact (key `asof-monitoring`) naming each breach's metric, value and threshold, plus
    a link artifact to the run's report. Links are served URLs under `make serve` (flows/links.py).
    Never raises for a publishing problem; returns the verdict."""
    report: Path | None = None
    run_report: Path | None = None
    run_days = sorted({*(days or []), *(b.execution_date for b in breaches)})
    if write_report and run_days:
        try:
            from flows import monitor_report

            cfg = config or load_config()
            written = monitor_report.write_flow_reports(run_days, cfg.flow_report_days, links.reports_dir())
            report, run_report = written.served, written.run
        except Exception as exc:
            log.warning("could not write the monitoring report: %s", exc)
    verdict = verdict_of(breaches, report, run_report)
    in_run = False
    if "prefect" in sys.modules:
        try:
            from prefect.context import FlowRunContext, TaskRunContext

            in_run = FlowRunContext.get() is not None or TaskRunContext.get() is not None
        except Exception:
            in_run = False
    if in_run:
        try:
            from prefect import get_run_logger
            from prefect.artifacts import create_link_artifact, create_markdown_artifact

            logger = get_run_logger()
            for b in verdict.breaches[:50]:
                (logger.error if b.severity == "failure" else logger.warning)("%s", b.message)
            create_markdown_artifact(
                alerts_markdown(verdict, title), key="asof-monitoring", description=verdict.message[:500]
            )
            if run_report or report:
                create_link_artifact(
                    links.report_url(run_report or report),
                    link_text="monitoring report (HTML)",
                    key="asof-monitoring-report",
                    description="Per-date pipeline health: rows, pass rate, PSI, freshness, coverage",
                )
        except Exception as exc:  # artifacts are a convenience; never fail a run on them
            log.warning("could not publish monitoring artifacts: %s", exc)
    if days:  # the run's metrics to a Pushgateway / textfile when configured (never raises)
        from flows.monitoring import prometheus

        prometheus.export_run(days, verdict.breaches)
    return verdict


class MonitoringFailure(RuntimeError):
    """A failure-severity threshold was breached. `data` is what the flow would have returned."""

    def __init__(self, message: str, data: Any = None, breaches: Sequence[Breach] = ()) -> None:
        super().__init__(message)
        self.data = data
        self.breaches = list(breaches)

    def __reduce__(self):  # picklable with its payload (Prefect may persist the failed result)
        return (type(self), (str(self), self.data, self.breaches))


def flow_state(verdict: Verdict, data: Any = None) -> Any:
    """What a flow returns so that its run is marked as configured.

    - no breach: `data` itself (state Completed);
    - warnings only: `Completed(name="Completed with warnings", message=..., data=data)`; calling the
      flow still returns `data`;
    - a failure: `Failed(message=..., data=MonitoringFailure(message, data))`; calling the flow raises
      that MonitoringFailure (`.data` holds the flow's result), `flow(..., return_state=True)` returns
      the Failed state (`state.result(raise_on_failure=False).data`).
    """
    if verdict.status == "ok":
        return data
    from prefect.states import Completed, Failed

    if verdict.status == "warning":
        return Completed(name="Completed with warnings", message=verdict.message, data=data)
    return Failed(message=verdict.message, data=MonitoringFailure(verdict.message, data, verdict.breaches))
