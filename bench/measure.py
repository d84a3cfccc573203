"""One measurement per process, so peak RSS belongs to that measurement alone.

`python -m bench.measure NAME --home DIR [options]` prints one JSON object on its last line:
{"name", "seconds", "peak_rss_mb", ...extra}. bench/run.py calls this and compares pairs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import resource
import shutil
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
    from flows.upstream import simulate

    days = _days(args)
    t = time.perf_counter()
    simulate.generate(
        Path(args.home) / "landing", days[0], days[-1], simulate.parse_scale(args.scale), seed=42
    )
    return {"seconds": time.perf_counter() - t, "days": len(days)}


@measurement("ingest")
def ingest(args) -> dict:
    from flows.ingest.stage import ingest as ingest_one
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


@contextlib.contextmanager
def _prefect_server(args):
    """A real Prefect server on 127.0.0.1 for the pipeline measurements (started before the clock,
    as in production where it is always up); its own PREFECT_HOME under the bench home."""
    from flows.orchestration import local_server as serve

    port = serve.free_port()
    env = serve.server_env(port)
    proc = serve.start_server(port, env, Path(args.home) / "prefect" / "bench-server.log")
    try:
        serve.wait_healthy(port, proc=proc)
        for k in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"):
            os.environ[k] = env[k]
        yield
    finally:
        serve.stop(proc)


def _fresh_home(args, label: str) -> Path:
    """A new ASOF_HOME that shares only the landing files with the bench home, so a run starts from
    an empty lake whatever earlier measurements left there."""
    home = Path(args.home) / f"fresh-{label}-{args.start}-{args.end}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    (home / "landing").symlink_to(Path(args.home).resolve() / "landing")
    os.environ["ASOF_HOME"] = str(home)
    return home


def _drop_fresh_home(extra: dict, keep_gold: bool = False) -> None:
    """Delete the fresh home (unless ASOF_BENCH_KEEP); with `keep_gold` keep its lake/gold, the
    tables the `floor` measurement compares its own with (bench/floor.py)."""
    from flows.config import settings

    if not extra.get("fresh_home") or settings().bench_keep:
        return
    home = settings().home
    gold, kept = home / "lake" / "gold", home.parent / f"{home.name}.gold"
    shutil.rmtree(kept, ignore_errors=True)
    if keep_gold and gold.is_dir():
        gold.rename(kept)
    shutil.rmtree(home, ignore_errors=True)  # a year of lake is ~10 GB
    if kept.is_dir():
        (home / "lake").mkdir(parents=True)
        kept.rename(gold)


@measurement("backfill")
def backfill(args) -> dict:
    """`asof backfill` over the range (in-process flow, real Prefect server), wall time per stage.

    With `{"fresh_home": true}` it runs from scratch in a home of its own that shares only the
    landing files: what a first backfill of N days costs, not the N days on top of whatever earlier
    measurements left in the lake (more versions, more run records, a bigger Data Docs index).
    With ASOF_BENCH_KEEP_GOLD set (bench/run.py sets it when a `floor` pair is selected) or
    `{"keep_gold": true}`, that home's lake/gold survives the run, for the floor's equality check.
    With `{"runner": "dask", "workers": N}` the ingest tasks run on a local Dask cluster of N worker
    processes (`asof backfill --runner dask --workers N`); the cluster starts inside the clock, as it
    does for a user."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    extra = json.loads(args.extra or "{}")
    if extra.get("fresh_home"):
        _fresh_home(args, "backfill")
    from flows.orchestration.runners import DEFAULT_WORKERS, DaskOptions, Runner, task_runner

    runner = Runner(extra.get("runner", "threads"))
    options = (
        DaskOptions(n_workers=int(extra.get("workers", DEFAULT_WORKERS))) if runner is Runner.dask else None
    )
    with _prefect_server(args):
        from flows import config, pipeline  # after the API URL is set: Prefect reads its settings on import
        from flows.monitoring import stage_timing

        t = time.perf_counter()
        with task_runner(runner, options) as flow_runner:
            flow = (
                pipeline.backfill.with_options(task_runner=flow_runner) if flow_runner else pipeline.backfill
            )
            results = flow(args.start, args.end, force=True, chunk_days=args.chunk_days)
        secs = time.perf_counter() - t
    keep_gold = bool(extra.get("keep_gold") or config.settings().bench_keep_gold)
    _drop_fresh_home(extra, keep_gold=keep_gold)
    stages = {k: round(v, 2) for k, v in stage_timing.STAGE_SECONDS.items()}
    per_day = secs / max(1, len(results))
    return {
        "seconds": secs,
        "days": len(results),
        "seconds_per_day": per_day,
        "summary": f"{per_day:.2f} s/day; " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()),
        "stages": stages,
        "statuses": sorted({r["status"] for r in results}),
        "runner": runner.value,
        "workers": options.n_workers if options else None,
    }


@measurement("daily_loop")
def daily_loop(args) -> dict:
    """The naive way: one daily flow run per date, each in its own process, as a Prefect process
    worker runs a deployment (so each run pays the imports, the dbt parse and GE/Feast setup).
    With `{"fresh_home": true}` from an empty lake, like the backfill it is compared with."""
    import subprocess

    import psutil

    days = _days(args)
    extra = json.loads(args.extra or "{}")
    if extra.get("fresh_home"):
        _fresh_home(args, "loop")
    with _prefect_server(args):
        env = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"}
        asof = str(Path(sys.executable).parent / "asof")
        t = time.perf_counter()
        failed, peak_mb, per_day = [], 0.0, []
        for d in days:
            t_day = time.perf_counter()
            proc = psutil.Popen(
                [asof, "run", "--date", d.isoformat()],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            while proc.poll() is None:
                with contextlib.suppress(psutil.Error):
                    peak_mb = max(peak_mb, proc.memory_info().rss / 2**20)
                time.sleep(0.2)
            per_day.append(time.perf_counter() - t_day)
            if proc.returncode != 0:
                failed.append(d.isoformat())
        secs = time.perf_counter() - t
    _drop_fresh_home(extra)
    return {
        "seconds": secs,
        "days": len(days),
        "seconds_per_day": sum(per_day) / len(days),
        "summary": f"{sum(per_day) / len(days):.2f} s/day, one process per date "
        f"(peak {peak_mb:.0f} MB per run); failed: {len(failed)}",
        "child_peak_rss_mb": round(peak_mb),
        "failed_days": failed,
    }


@contextlib.contextmanager
def _warm_process(env: dict[str, str], home: Path):
    """`asof warm` for `home`, listening before the clock starts; stopped afterwards."""
    import signal

    from flows.orchestration import warm_process

    proc = warm_process.start(env, home / "warm.log")
    try:
        yield
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


@measurement("daily_one")
def daily_one(args) -> dict:
    """One daily run at bench scale, end to end, in a fresh process (imports included) against a
    running Prefect server: the last day of the range, in a home of its own where the days before
    it were backfilled first (untimed), so its history (drift, volume, features) is a real one.
    With {"warm": true} the fresh `asof run` process hands the command to a warm process
    (`asof warm`, started before the clock as a long-lived service would be)."""
    import subprocess

    warm = bool(json.loads(args.extra or "{}").get("warm"))
    days = _days(args)
    day = days[-1]
    home = _fresh_home(args, "daily-warm" if warm else "daily")
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    with _prefect_server(args):
        if len(days) > 1:
            from flows import pipeline

            history = pipeline.backfill(days[0].isoformat(), days[-2].isoformat())
            failed = [r for r in history if r["status"] != "succeeded"]
            if failed:
                raise SystemExit(f"backfill of the history before {day} failed: {failed[:2]}")
        env = dict(os.environ)  # ASOF_HOME (the fresh home) and the log level are set above
        asof = str(Path(sys.executable).parent / "asof")
        with _warm_process(env, home) if warm else contextlib.nullcontext():
            t = time.perf_counter()
            proc = subprocess.run(
                [asof, "run", "--date", day.isoformat()], env=env, capture_output=True, text=True
            )
            secs = time.perf_counter() - t
    _drop_fresh_home({"fresh_home": True})
    if proc.returncode != 0:
        raise SystemExit(f"daily run of {day} failed: {proc.stderr[-1500:]}")
    split = next((ln for ln in proc.stdout.splitlines() if ln.startswith("time per stage: ")), "")
    summary = split.removeprefix("time per stage: ")
    return {"seconds": secs, "days": 1, "date": day.isoformat(), "summary": summary}


def _validation_setup(days: list[dt.date]) -> None:
    """Ingest every day and validate all but the last (history for duplicates, medians,
    merchants): done once per bench home, untimed."""
    from flows.config import settings

    marker = settings().home / f".validated-{days[0]}-{days[-1]}"
    if marker.exists():
        return
    os.environ["ASOF_VALIDATION_DOCS"] = "0"
    from flows.ingest.stage import ingest as ingest_one
    from flows.sources import SOURCE_NAMES
    from flows.validation.stage import validate_dates

    for d in days:
        for s in SOURCE_NAMES:
            ingest_one(s, d)
    validate_dates(days[:-1])
    validate_dates(days[-1:], ["merchants", "customers"])
    marker.touch()


@measurement("validate")
def validate(args) -> dict:
    """Validate + split the last day's transactions batch with GE (import and context excluded)."""
    days = _days(args)
    _validation_setup(days)
    os.environ["ASOF_VALIDATION_DOCS"] = "0"
    from flows.validation.stage import validate_dates
    from flows.validation.suites import ge_context

    t = time.perf_counter()
    ge_context()
    setup = time.perf_counter() - t
    w, c = time.perf_counter(), time.process_time()
    out = validate_dates(days[-1:], ["transactions"])[days[-1]]["transactions"]
    return {
        "seconds": time.perf_counter() - w,
        "cpu_seconds": time.process_time() - c,
        "rows": out.rows_bronze,
        "quarantined": out.rows_quarantined,
        "ge_import_and_context_s": setup,
    }


VALIDATE_LIMIT_SQL = """
with b as (select * from bronze),
fx as (select * from (values ('USD', 1.0), ('EUR', 1.08), ('GBP', 1.27)) t(currency, usd_rate)),
parsed as (
  select b.*, try_cast(amount as double) as amt,
         try_cast(try_strptime(event_time, '%Y-%m-%dT%H:%M:%SZ') as timestamp) as ts,
         try_cast(customer_id as bigint) as cid, try_cast(merchant_id as bigint) as mid
  from b),
earlier as (select distinct txn_id from silver_txn),
known_m as (select distinct merchant_id from silver_merch),
judged as (
  select p.*,
    list_filter([
      case when txn_id is null then 'null:txn_id' end,
      case when cid is null then 'invalid:customer_id' end,
      case when mid is null then 'invalid:merchant_id' end,
      case when amt is null then 'invalid:amount' end,
      case when amt is not null and (amt <= 0 or amt > 1000000 or isnan(amt) or isinf(amt)) then 'amount_out_of_range' end,
      case when p.currency not in (select currency from fx) or p.currency is null then 'unknown_currency' end,
      case when ts is null then 'invalid:event_time' end,
      case when ts >= $d1 then 'future_event_time' end,
      case when ts < $d30 then 'too_late' end,
      case when mid not in (select merchant_id from known_m) then 'unknown_merchant' end,
      case when txn_id in (select txn_id from earlier)
             or row_number() over (partition by txn_id order by _row_number) > 1 then 'duplicate' end
    ], lambda x: x is not null) as reasons
  from parsed p)
select * from judged
"""


@measurement("validate_limit_duckdb")
def validate_limit(args) -> dict:
    """The same row rules as one plain DuckDB pass over the bronze partition (no GE, no docs,
    no results store), split written to Parquet: the floor for the validation stage."""
    import duckdb
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from flows.storage import lake

    days = _days(args)
    _validation_setup(days)
    day = days[-1]
    out = Path(args.home) / "limit_validate"
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register(
        "bronze",
        lake.dataset("bronze", "transactions").to_table(filter=lake.date_filter("_batch_date", [day])),
    )
    con.register(
        "silver_txn",
        lake.dataset("silver", "transactions").to_table(
            columns=["txn_id"], filter=pc.field("_batch_date") < day
        ),
    )
    con.register(
        "silver_merch",
        lake.dataset("silver", "merchants").to_table(
            columns=["merchant_id"], filter=pc.field("_batch_date") <= day
        ),
    )
    d1 = dt.datetime.combine(day + dt.timedelta(days=1), dt.time())
    d30 = dt.datetime.combine(day - dt.timedelta(days=30), dt.time())
    judged = con.execute(VALIDATE_LIMIT_SQL, {"d1": d1, "d30": d30}).to_arrow_table()
    bad = pc.greater(pc.list_value_length(judged["reasons"]), 0)
    pq.write_table(judged.filter(pc.invert(bad)), out / "silver.parquet")
    pq.write_table(judged.filter(bad), out / "quarantine.parquet")
    return {
        "seconds": time.perf_counter() - t,
        "rows": judged.num_rows,
        "quarantined": int(pc.sum(bad).as_py() or 0),
    }


def _feature_store(fn_name: str):
    def run(args) -> dict:
        from bench import feature_store

        return getattr(feature_store, fn_name)(args)

    return run


for _name in (
    "retrieval_ours",
    "retrieval_raw",
    "retrieval_stock",
    "materialize_ours",
    "materialize_stock",
    "online_latency",
):
    MEASUREMENTS[_name] = _feature_store(_name)


def _transform(fn_name: str):
    def run(args) -> dict:
        from bench import transform_limit

        return getattr(transform_limit, fn_name)(args)

    return run


MEASUREMENTS["transform"] = _transform("measure_transform")
MEASUREMENTS["transform_limit"] = _transform("measure_transform_limit")


@measurement("floor")
def floor_measurement(args) -> dict:
    """The hand-written end-to-end floor (bench/floor.py): the range's landing files of args.home
    -> gold tables as Parquet in a temp dir, in a few DuckDB queries (no lineage, Delta, GE, dbt or
    Feast). `{"check_against": "fresh-backfill-{start}-{end}"}` compares them, row by row and value
    by value, with the gold tables of that ASOF_HOME under args.home (the one the `backfill`
    measurement with fresh_home leaves when asked to keep its gold); the check runs in a child
    process, outside the floor's seconds and peak RSS."""
    from bench import floor as hand_written

    return hand_written.measure_floor(args)


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
    load = os.getloadavg()
    wall = time.perf_counter()
    out = MEASUREMENTS[args.name](args)
    out.update(
        name=args.name,
        wall_seconds=time.perf_counter() - wall,
        load_avg_at_start=[round(x, 2) for x in load],
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    sys.stdout.write("\n" + json.dumps(out, default=str) + "\n")


if __name__ == "__main__":
    main()
