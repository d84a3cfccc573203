"""One measurement per process, so peak RSS belongs to that measurement alone.

`python -m bench.measure NAME --home DIR [options]` prints one JSON object on its last line:
{"name", "seconds", "peak_rss_mb", ...extra}. bench/run.py calls this and compares pairs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

MEASUREMENTS: dict[str, Callable[[argparse.Namespace], dict]] = {}


def measurement(name: str):
    def deco(fn):
        MEASUREMENTS[name] = fn
        return fn

    return deco


def _days(args) -> list[dt.date]:
    from flows.dates import date_range, parse_range

    return list(date_range(*parse_range(args.start, args.end)))


@measurement("generate")
def generate(args) -> dict:
    from flows import simulate

    days = _days(args)
    t = time.perf_counter()
    simulate.generate(
        Path(args.home) / "landing", days[0], days[-1], simulate.parse_scale(args.scale), seed=42
    )
    return {"seconds": time.perf_counter() - t, "days": len(days)}


@measurement("ingest")
def ingest(args) -> dict:
    from flows.ingest import ingest as ingest_one
    from flows.sources import SOURCE_NAMES

    days = _days(args)
    t = time.perf_counter()
    rows = 0
    for d in days:
        for s in SOURCE_NAMES:
            rows += ingest_one(s, d).rows
    return {"seconds": time.perf_counter() - t, "rows": rows, "days": len(days)}


@measurement("ingest_limit_pyarrow")
def ingest_limit(args) -> dict:
    """The hardware's floor for ingest: pyarrow CSV -> Parquet copy, no checks, no Delta."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    from flows.sources import SOURCE_NAMES, get_source

    days = _days(args)
    out = Path(args.home) / "limit_parquet"
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    rows = 0
    for d in days:
        for s in SOURCE_NAMES:
            for path in sorted((Path(args.home) / "landing" / s / d.isoformat()).glob("*")):
                reader = pajson.read_json if get_source(s).fmt == "jsonl" else pacsv.read_csv
                if path.stat().st_size == 0:
                    continue
                tbl = reader(path)
                rows += tbl.num_rows
                pq.write_table(tbl, out / f"{s}-{d}-{path.name}.parquet")
    return {"seconds": time.perf_counter() - t, "rows": rows, "days": len(days)}


@measurement("backfill")
def backfill(args) -> dict:
    """`asof backfill` over the range (in-process flow, ephemeral Prefect), stage times from run records."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from flows import pipeline

    t = time.perf_counter()
    results = pipeline.backfill(args.start, args.end, force=True, chunk_days=args.chunk_days)
    secs = time.perf_counter() - t
    return {"seconds": secs, "days": len(results), "statuses": sorted({r["status"] for r in results})}


@measurement("daily_loop")
def daily_loop(args) -> dict:
    """The naive way: one daily flow run per date (each pays dbt/GE/Feast per day)."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from flows import pipeline

    days = _days(args)
    t = time.perf_counter()
    statuses = set()
    for d in days:
        for r in pipeline.daily_pipeline(execution_date=d.isoformat()):
            statuses.add(r["status"])
    return {"seconds": time.perf_counter() - t, "days": len(days), "statuses": sorted(statuses)}


def _feature_store(fn_name: str):
    def run(args) -> dict:
        from bench import feature_store

        return getattr(feature_store, fn_name)(args)

    return run


for _name in ("retrieval_ours", "retrieval_raw", "retrieval_stock"):
    MEASUREMENTS[_name] = _feature_store(_name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name", choices=sorted(MEASUREMENTS))
    parser.add_argument("--home", required=True)
    parser.add_argument("--start", default="2024-01-01")
    parser.add_argument("--end", default="2024-01-07")
    parser.add_argument("--scale", default="bench")
    parser.add_argument("--chunk-days", type=int, default=31)
    parser.add_argument("--extra", default="{}", help="JSON options for the measurement")
    args = parser.parse_args()
    os.environ["ASOF_HOME"] = args.home
    os.environ.setdefault("PREFECT_HOME", str(Path(args.home) / "prefect"))
    wall = time.perf_counter()
    out = MEASUREMENTS[args.name](args)
    out.update(
        name=args.name,
        wall_seconds=time.perf_counter() - wall,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    sys.stdout.write("\n" + json.dumps(out, default=str) + "\n")


if __name__ == "__main__":
    main()
