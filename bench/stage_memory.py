"""Peak RSS of each stage of one date, the stages called in one process as `asof run` calls them
(without Prefect): ingest (every source), validate, transform, materialize (issue 23 item 7).

A sampler thread reads this process's RSS every 50 ms; each stage reports its start RSS and its
peak. Later stages start from what the allocators kept of earlier ones, as in `asof run`.

    ASOF_HOME=/tmp/big python -m bench.stage_memory --date 2024-01-01 [--stages ingest,validate]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

GB = 1024**3


class Sampler:
    """The process's peak RSS since the last `reset`, sampled every `interval` seconds."""

    def __init__(self, interval: float = 0.05) -> None:
        self.proc = psutil.Process()
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def reset(self) -> int:
        now = self.proc.memory_info().rss
        self.peak = now
        return now

    def stop(self) -> None:
        self._stop.set()


def measure(day: dt.date, stages: list[str]) -> list[dict[str, Any]]:
    from flows.features.featurestore import materialize_span
    from flows.ingest.stage import ingest_dates
    from flows.sources import SOURCE_NAMES
    from flows.transform.stage import transform_range
    from flows.validation.stage import validate_dates

    def ingest() -> Any:
        return {s: ingest_dates(s, [day])[day].status for s in SOURCE_NAMES}

    def validate() -> Any:
        out = validate_dates([day])[day]
        return {
            s: f"{v.status} silver={v.rows_silver} quarantined={v.rows_quarantined}" for s, v in out.items()
        }

    work: dict[str, Callable[[], Any]] = {
        "ingest": ingest,
        "validate": validate,
        "transform": lambda: transform_range(day, day).status,
        "materialize": lambda: materialize_span(day, day).get("status", "succeeded"),
    }
    sampler = Sampler()
    rows = []
    for name in stages:
        start = sampler.reset()
        t0 = time.perf_counter()
        outcome = work[name]()
        elapsed = time.perf_counter() - t0
        time.sleep(0.1)
        row = {
            "stage": name,
            "seconds": round(elapsed, 1),
            "start_gb": round(start / GB, 2),
            "peak_gb": round(sampler.peak / GB, 2),
            "outcome": outcome,
        }
        print(json.dumps(row, default=str), flush=True)
        rows.append(row)
    sampler.stop()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--date", required=True)
    p.add_argument("--stages", default="ingest,validate,transform,materialize")
    a = p.parse_args()
    measure(dt.date.fromisoformat(a.date), a.stages.split(","))


if __name__ == "__main__":
    main()
