"""Serving latency per UTC day, kept on disk so the batch monitor can report P50/P99 per date.

The serving process and the pipeline are different processes (often different lifetimes: a server
restarts, a backfill runs at night), so the latency histogram in `asof serve`'s memory is not
where `flows.monitoring.metrics` can read it. Each serving process therefore also counts its observations per
(UTC day, endpoint, feature service) in the histogram's own buckets and rewrites one small JSON
file per process and day every few seconds:

    $ASOF_HOME/serving/latency/<YYYY-MM-DD>/<host>-<pid>-<token>.json

Files of one day add up (gunicorn workers, restarts, several hosts sharing ASOF_HOME), and the
quantiles are interpolated inside buckets exactly like PromQL's `histogram_quantile`, so the daily
P99 in `lake/ops/metrics` and the one Grafana shows from Prometheus agree to the bucket.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import math
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.config import settings

log = logging.getLogger(__name__)

# Seconds. Dense around the 50 ms serving objective (monitoring.toml `serving_latency_p99_ms`), whose
# value must be one of these bounds so that "P99 > 50 ms" is decided at a bucket edge, not guessed
# inside a bucket (tests/test_prometheus_rules.py checks it).
BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
REQUESTS, P50, P99 = "serving_requests", "serving_latency_p50_ms", "serving_latency_p99_ms"
METRICS = (
    REQUESTS,
    P50,
    P99,
)  # also in monitoring.config.KNOWN_METRICS, which validates monitoring.toml


def latency_dir(day: dt.date) -> Path:
    return settings().home / "serving" / "latency" / day.isoformat()


@dataclass
class Series:
    """Non-cumulative counts per bucket of BUCKETS, the last one being +Inf."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total_seconds: float = 0.0

    def observe(self, seconds: float) -> None:
        i = next((k for k, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))
        self.counts[i] += 1
        self.total_seconds += seconds

    def add(self, other: Series) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total_seconds += other.total_seconds

    @property
    def requests(self) -> int:
        return sum(self.counts)


def quantile(q: float, counts: list[int]) -> float | None:
    """The q-quantile in seconds, by PromQL `histogram_quantile`'s rule: linear inside the bucket
    holding rank q * n, from 0 for the first bucket; the highest finite bound if it is in +Inf."""
    n = sum(counts)
    if n == 0:
        return None
    rank = q * n
    cumulative = 0
    for i, c in enumerate(counts):
        if cumulative + c >= rank and c > 0:
            if i == len(BUCKETS):
                return BUCKETS[-1]
            lower = BUCKETS[i - 1] if i > 0 else 0.0
            return lower + (BUCKETS[i] - lower) * (rank - cumulative) / c
        cumulative += c
    return BUCKETS[-1]


class ProcessLog:
    """This process's observations of the current days, flushed to its own file per day."""

    def __init__(self) -> None:
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self.days: dict[dt.date, dict[tuple[str, str], Series]] = {}
        self.dirty: set[dt.date] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        interval = settings().latency_flush_s
        self.thread = threading.Thread(target=self._loop, args=(interval,), name="asof-latency", daemon=True)
        self.thread.start()
        atexit.register(self.flush)

    def observe(self, endpoint: str, feature_service: str, seconds: float) -> None:
        day = dt.datetime.now(dt.UTC).date()
        with self.lock:
            self.days.setdefault(day, {}).setdefault((endpoint, feature_service), Series()).observe(seconds)
            self.dirty.add(day)

    def _loop(self, interval: float) -> None:
        while not self.stop.wait(interval):
            self.flush()

    def flush(self) -> None:
        """Rewrite the files of the days observed since the last flush (write + rename: a reader
        never sees half a file). Never raises: losing a flush must not break serving."""
        with self.lock:
            todo = {d: {k: Series(list(s.counts), s.total_seconds) for k, s in self.days[d].items()}
                    for d in self.dirty}  # fmt: skip
            self.dirty.clear()
            today = dt.datetime.now(dt.UTC).date()
            for d in [d for d in self.days if d < today - dt.timedelta(days=1)]:
                del self.days[d]  # yesterday's file is final once today is under way
        for day, series in todo.items():
            try:
                folder = latency_dir(day)
                folder.mkdir(parents=True, exist_ok=True)
                payload = {
                    "day": day.isoformat(),
                    "buckets": list(BUCKETS),
                    "series": [
                        {
                            "endpoint": e,
                            "feature_service": f,
                            "counts": s.counts,
                            "sum_seconds": s.total_seconds,
                        }
                        for (e, f), s in sorted(series.items())
                    ],
                }
                tmp = folder / f".{self.name}.tmp"
                tmp.write_text(json.dumps(payload))
                os.replace(tmp, folder / self.name)
            except OSError as exc:
                log.warning("could not write the serving latency of %s: %s", day, exc)


_PROCESS_LOG: tuple[int, ProcessLog] | None = None
_PROCESS_LOCK = threading.Lock()


def process_log() -> ProcessLog:
    """This process's log, created on first use (and again in a forked worker: the pid changed)."""
    global _PROCESS_LOG
    with _PROCESS_LOCK:
        if _PROCESS_LOG is None or _PROCESS_LOG[0] != os.getpid():
            _PROCESS_LOG = (os.getpid(), ProcessLog())
        return _PROCESS_LOG[1]


def flush_process_log() -> None:
    """Flush this process's log if it has one (a server shutting down: uvicorn re-raises SIGTERM
    after its shutdown, which ends the process without running atexit handlers)."""
    with _PROCESS_LOCK:
        current = _PROCESS_LOG[1] if _PROCESS_LOG is not None and _PROCESS_LOG[0] == os.getpid() else None
    if current is not None:
        current.flush()


def read_day(day: dt.date) -> tuple[dict[tuple[str, str], Series], int]:
    """Every process's counts of `day` added up per (endpoint, feature service); and the number of
    files (processes). Files with other buckets (written before a change of BUCKETS) are skipped."""
    folder = latency_dir(day)
    out: dict[tuple[str, str], Series] = {}
    files = 0
    if not folder.is_dir():
        return out, 0
    for path in sorted(folder.glob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable serving latency file %s: %s", path, exc)
            continue
        if tuple(payload.get("buckets") or ()) != BUCKETS:
            log.warning("skipping %s: written with other latency buckets", path)
            continue
        files += 1
        for s in payload["series"]:
            key = (s["endpoint"], s["feature_service"])
            out.setdefault(key, Series()).add(Series(list(s["counts"]), float(s["sum_seconds"])))
    return out, files


def measurements(day: dt.date) -> list[tuple[str, str, float | None, dict[str, Any]]]:
    """(metric, scope, value, details) per (endpoint, feature service) served on `day`: request
    count, P50 and P99 in milliseconds. Scope is `endpoint:feature_service`. Nothing for a day
    without requests (a backfill of old dates has none: absence is not a breach)."""
    series, files = read_day(day)
    out: list[tuple[str, str, float | None, dict[str, Any]]] = []
    for (endpoint, service), s in sorted(series.items()):
        scope = f"{endpoint}:{service}"
        p50, p99 = quantile(0.5, s.counts), quantile(0.99, s.counts)
        mean_ms = 1000 * s.total_seconds / s.requests if s.requests else None
        info: dict[str, Any] = {
            "requests": s.requests,
            "mean_ms": mean_ms,
            "processes": files,
            "buckets_le_s": list(BUCKETS),
            "counts": s.counts,
        }
        ms = {k: None if v is None else 1000 * v for k, v in (("p50", p50), ("p99", p99))}
        info["summary"] = (
            f"{s.requests:,} requests, P50 {ms['p50']:.1f} ms, P99 {ms['p99']:.1f} ms"
            if ms["p99"] is not None and not math.isnan(ms["p99"])
            else f"{s.requests:,} requests"
        )
        out.append((REQUESTS, scope, float(s.requests), info))
        out.append((P50, scope, ms["p50"], info))
        out.append((P99, scope, ms["p99"], info))
    return out
