"""Prefect flows: the pipeline diagram, one task per stage.

    ingest (per source, in parallel) -> validate (per date, in date order) -> transform (dbt, one
    invocation per chunk of dates) -> materialize (Feast, per date)

A backfill is the same chain over a range: dates are processed in order, in chunks, so dbt runs once
per chunk instead of once per day and memory is bounded by a chunk. Every stage writes only the
partitions it owns, so rerunning any date or range converges to the same lake.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from flows import lake, monitor, runs
from flows.dates import date_range, parse_date, parse_range
from flows.ingest import IngestOutcome, ingest
from flows.runs import ALL_SOURCES, StageRecord
from flows.sources import SOURCE_NAMES

DEFAULT_CHUNK_DAYS = int(os.environ.get("ASOF_CHUNK_DAYS", "31"))

# The CLI sets this to draw a progress bar; flows run in-process, so a plain callable is enough.
PROGRESS_HOOK: Callable[[dt.date, str], None] | None = None

# Wall seconds per stage, summed over the runs of this process: where a backfill's time goes (the
# bench reports it; the run summary shows it).
STAGE_SECONDS: dict[str, float] = {}


@contextlib.contextmanager
def _timed(stage: str) -> Iterator[None]:
    t = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS[stage] = STAGE_SECONDS.get(stage, 0.0) + time.perf_counter() - t


@dataclass
class DateResult:
    day: dt.date
    status: str = "not run"
    stages: dict[str, str] = field(default_factory=dict)
    message: str = ""
    counts: dict[str, dict[str, int | None]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["day"] = self.day.isoformat()
        return d


def _progress(day: dt.date, what: str) -> None:
    if PROGRESS_HOOK is not None:
        PROGRESS_HOOK(day, what)


# ---------------------------------------------------------------- tasks


@task(
    name="ingest-batch",
    retries=2,
    retry_delay_seconds=[1, 5],
    cache_policy=NO_CACHE,
    task_run_name="ingest {source} {day}",
)
def ingest_batch(source: str, day: dt.date) -> IngestOutcome:
    return ingest(source, day)


@task(
    name="validate-batch",
    retries=1,
    retry_delay_seconds=[2],
    cache_policy=NO_CACHE,
    task_run_name="validate {day}",
)
def validate_batch(day: dt.date) -> dict:
    from flows.validate import validate_date

    return validate_date(day)


@task(name="transform-features", cache_policy=NO_CACHE, task_run_name="dbt {start}..{end}")
def transform_features(start: dt.date, end: dt.date):
    from flows.transform import transform_range

    return transform_range(start, end)


@task(
    name="materialize-features",
    retries=2,
    retry_delay_seconds=[1, 5],
    cache_policy=NO_CACHE,
    task_run_name="materialize {day}",
)
def materialize_features(day: dt.date):
    from flows.featurestore import materialize_date

    return materialize_date(day)


@task(name="monitor-dates", cache_policy=NO_CACHE, task_run_name="monitor {label}")
def monitor_dates(days: list[dt.date], label: str) -> list:
    return monitor.compute_and_store(days)


# ---------------------------------------------------------------- orchestration


def _contiguous(days: Sequence[dt.date]) -> list[tuple[dt.date, dt.date]]:
    spans: list[tuple[dt.date, dt.date]] = []
    for d in sorted(days):
        if spans and d == spans[-1][1] + dt.timedelta(days=1):
            spans[-1] = (spans[-1][0], d)
        else:
            spans.append((d, d))
    return spans


def _attr(obj, name, default=None):
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def _ingest_stage(
    days: list[dt.date], results: dict[dt.date, DateResult], records: list[StageRecord]
) -> None:
    futures = {(s, d): ingest_batch.submit(s, d) for d in days for s in SOURCE_NAMES}
    for (source, day), fut in futures.items():
        res = results[day]
        try:
            out: IngestOutcome = fut.result()
            status = out.status
            records.append(
                StageRecord(
                    day,
                    "ingest",
                    source,
                    status,
                    rows_out=out.rows,
                    message=out.message,
                    details={"files": [asdict(f) for f in out.files], "bronze_version": out.bronze_version},
                )
            )
            res.counts.setdefault(source, {})["landed"] = out.rows
        except Exception as exc:  # a crash of one batch must not hide the others
            status = "failed"
            records.append(
                StageRecord(day, "ingest", source, "failed", message=f"{type(exc).__name__}: {exc}")
            )
        if status != "succeeded":
            rank = ["succeeded", "malformed", "failed", "not_delivered"]
            current = res.stages.get("ingest", "succeeded")
            res.stages["ingest"] = max(current, status, key=rank.index)
            res.message = "; ".join(m for m in [res.message, f"ingest {source}: {records[-1].message}"] if m)
    for day in days:
        results[day].stages.setdefault("ingest", "succeeded")
        _progress(day, "ingested")


def _validate_stage(day: dt.date, res: DateResult, records: list[StageRecord]) -> bool:
    try:
        outcome = validate_batch(day)
    except Exception as exc:
        records.append(
            StageRecord(day, "validate", ALL_SOURCES, "failed", message=f"{type(exc).__name__}: {exc}")
        )
        res.stages["validate"] = "failed"
        res.message = res.message or f"validate: {exc}"
        return False
    ok = True
    problems: list[str] = []
    for source, v in outcome.items():
        status = _attr(v, "status", "failed")
        records.append(
            StageRecord(
                day,
                "validate",
                source,
                status,
                rows_in=_attr(v, "rows_bronze"),
                rows_out=_attr(v, "rows_silver"),
                rows_quarantined=_attr(v, "rows_quarantined"),
                message=_attr(v, "message", ""),
                details={
                    "reasons": _attr(v, "reasons", {}),
                    "warnings": _attr(v, "warnings", []),
                    "rejected_rule": _attr(v, "rejected_rule"),
                    "validation_run_id": _attr(v, "validation_run_id"),
                    "data_docs": _attr(v, "data_docs_url"),
                },
            )
        )
        c = res.counts.setdefault(source, {})
        c["silver"], c["quarantined"] = _attr(v, "rows_silver"), _attr(v, "rows_quarantined")
        if status != "succeeded":
            ok = False
            problems.append(f"{source} {status}: {_attr(v, 'message', '')}")
    statuses = {_attr(v, "status", "failed") for v in outcome.values()}
    res.stages["validate"] = (
        "succeeded" if ok else ("rejected" if statuses <= {"succeeded", "rejected"} else "failed")
    )
    if not ok:
        res.message = res.message or "; ".join(problems)
    return ok


def _transform_stage(
    good: list[dt.date], results: dict[dt.date, DateResult], records: list[StageRecord]
) -> list[dt.date]:
    done: list[dt.date] = []
    for start, end in _contiguous(good):
        try:
            out = transform_features(start, end)
            status, message = _attr(out, "status", "failed"), _attr(out, "message", "")
            details = {
                "rows": _attr(out, "rows", None),
                "versions": _attr(out, "versions", None),
                "elapsed_s": _attr(out, "elapsed_s", None),
                "span": [start.isoformat(), end.isoformat()],
            }
        except Exception as exc:
            status, message, details = "failed", f"{type(exc).__name__}: {exc}", {}
        for day in date_range(start, end):
            records.append(
                StageRecord(day, "transform", ALL_SOURCES, status, message=message, details=details)
            )
            results[day].stages["transform"] = status
            if status == "succeeded":
                done.append(day)
                _progress(day, "transformed")
            else:
                results[day].message = results[day].message or f"transform: {message}"
    return done


def _materialize_stage(
    days: list[dt.date], results: dict[dt.date, DateResult], records: list[StageRecord]
) -> None:
    for day in days:
        try:
            out = materialize_features(day)
            status, message = _attr(out, "status", "succeeded"), _attr(out, "message", "")
            rows = _attr(out, "rows")
        except Exception as exc:
            status, message, rows = "failed", f"{type(exc).__name__}: {exc}", None
        records.append(StageRecord(day, "materialize", ALL_SOURCES, status, rows_out=rows, message=message))
        results[day].stages["materialize"] = status
        if status != "succeeded":
            results[day].message = results[day].message or f"materialize: {message}"
        _progress(day, "materialized")


def _finish(res: DateResult) -> None:
    stages = res.stages
    if all(stages.get(s) == "succeeded" for s in runs.STAGES):
        res.status = "succeeded"
    elif not stages:
        res.status = "not run"
    elif stages.get("ingest") == "not_delivered":
        res.status = "not_delivered"
    elif stages.get("validate") == "rejected":
        res.status = "rejected"
    else:
        res.status = "failed"


def process_dates(days: list[dt.date], continue_on_failure: bool, chunk_days: int) -> list[DateResult]:
    """Run every stage for `days` (sorted), chunk by chunk. Returns one result per date given."""
    log = get_run_logger()
    ctx = FlowRunContext.get()
    flow_run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    run_id = uuid.uuid4().hex[:12]
    results = {d: DateResult(d) for d in days}
    stop = False
    for i in range(0, len(days), chunk_days):
        chunk = days[i : i + chunk_days]
        if stop:
            break
        runs.mark_running(run_id, flow_run_id, chunk)
        records: list[StageRecord] = []
        try:
            log.info("chunk %s..%s: ingest %d dates", chunk[0], chunk[-1], len(chunk))
            with _timed("ingest"):
                _ingest_stage(chunk, results, records)
            good: list[dt.date] = []
            for day in chunk:
                res = results[day]
                # Malformed files still go through validation, so their rows land in quarantine
                # with a reason; a source not delivered at all stops the date here.
                if res.stages.get("ingest") in ("succeeded", "malformed"):
                    with _timed("validate"):
                        ok = _validate_stage(day, res, records)
                    if ok:
                        good.append(day)
                        _progress(day, "validated")
                        continue
                else:
                    res.stages["validate"] = "skipped"
                _progress(day, "failed")
                if not continue_on_failure:
                    stop = True
                    for later in chunk[chunk.index(day) + 1 :]:
                        results[
                            later
                        ].message = f"stopped: {day.isoformat()} failed (use --continue-on-failure)"
                    break
            with _timed("transform"):
                _transform_stage(good, results, records)
            transformed = [d for d in good if results[d].stages.get("transform") == "succeeded"]
            with _timed("materialize"):
                _materialize_stage(transformed, results, records)
        except BaseException as exc:
            crash = f"interrupted: {type(exc).__name__}: {exc}"
            for day in chunk:
                results[day].message = results[day].message or crash
            raise
        finally:
            _close_chunk(chunk, results, records)
            runs.append(run_id, flow_run_id, records)
        if any(results[d].status != "succeeded" for d in chunk) and not continue_on_failure:
            stop = True
    for res in results.values():
        if res.status == "not run" and not res.message:
            res.message = "stopped: an earlier date failed (use --continue-on-failure)"
        if res.status == "succeeded":
            continue
        log.warning("%s %s: %s", res.day, res.status, res.message)
    return [results[d] for d in days]


def _close_chunk(
    chunk: list[dt.date], results: dict[dt.date, DateResult], records: list[StageRecord]
) -> None:
    """Every date of the chunk gets a record for every stage, so `asof status` never has to guess."""
    seen = {(r.execution_date, r.stage) for r in records}
    for day in chunk:
        res = results[day]
        for stage in runs.STAGES:
            if (day, stage) in seen:
                continue
            status = res.stages.get(stage, "not run")
            if status == "succeeded":  # only reachable for a record lost to a crash: be conservative
                status = "failed"
            res.stages[stage] = status
            why = res.message or "an earlier stage or date failed"
            records.append(StageRecord(day, stage, ALL_SOURCES, status, message=why))
        _finish(res)


def _publish(title: str, results: list[DateResult]) -> None:
    rows = [
        {
            "date": r.day.isoformat(),
            "status": r.status,
            **{s: r.stages.get(s, "-") for s in runs.STAGES},
            "message": r.message[:300],
        }
        for r in results
    ]
    try:
        create_table_artifact(rows, key="asof-run-summary", description=title)
        ok = sum(r.status == "succeeded" for r in results)
        docs = os.environ.get("ASOF_DOCS_URL", "")
        link = f"\n\nValidation reports (Data Docs): {docs}" if docs else ""
        create_markdown_artifact(
            f"## {title}\n\n{ok}/{len(results)} dates succeeded.{link}", key="asof-run-report"
        )
    except Exception as exc:  # artifacts are a convenience; never fail a run on them
        get_run_logger().warning("could not publish artifacts: %s", exc)


def _monitor(results: list[DateResult], title: str) -> monitor.Verdict:
    """Metrics for every attempted date, failed ones included (that is how a failed or missing
    day shows up as a freshness breach). Monitoring never breaks the data path: its own errors
    are logged and the verdict is empty."""
    days = [r.day for r in results if r.status not in ("not run", "skipped")]
    if not days:
        return monitor.verdict_of([])
    try:
        with _timed("monitor"):
            breaches = monitor_dates(days, f"{days[0]}..{days[-1]}")
    except Exception as exc:
        get_run_logger().warning("monitoring failed: %s", exc)
        return monitor.verdict_of([])
    return monitor.publish(breaches, f"monitoring: {title}", days=days)


def catch_up_dates(day: dt.date, max_days: int | None = None) -> list[dt.date]:
    """Dates a scheduled run should process: `day`, preceded by the dates missed since the newest
    succeeded one (the server or worker was down), oldest first, at most `max_days` in all."""
    max_days = max_days or int(os.environ.get("ASOF_CATCHUP_MAX_DAYS", "7"))
    window_start = day - dt.timedelta(days=max_days - 1)
    done = runs.succeeded_dates(window_start, day)
    newest = runs.newest_succeeded(day)
    if newest is None:
        return [day]
    start = max(window_start, newest + dt.timedelta(days=1))
    missed = [d for d in date_range(start, day) if d not in done and d != day]
    return [*missed, day]


def pipeline_lock():
    """One pipeline run writes the lake at a time: a scheduled run and a manual backfill of the same
    dates queue instead of interleaving (validation of date D reads what D-1 wrote)."""
    return lake.lock("ops", "pipeline")


def resolve_execution_date(execution_date: str | dt.date | None, lag_days: int = 1) -> dt.date:
    """Explicit date wins; otherwise the day before the flow run's *scheduled* start (UTC).

    Deriving the date from the scheduled time rather than a parameter default is what makes a
    late-starting or caught-up scheduled run process the right day.
    """
    if execution_date:
        return parse_date(execution_date, "execution_date")
    ctx = FlowRunContext.get()
    when = None
    if ctx and ctx.flow_run and ctx.flow_run.expected_start_time:
        when = ctx.flow_run.expected_start_time
    return execution_date_for(when or dt.datetime.now(dt.UTC), lag_days)


def execution_date_for(scheduled: dt.datetime, lag_days: int = 1) -> dt.date:
    """The UTC calendar day `lag_days` before a scheduled start. A naive time is refused rather
    than guessed: the same wall-clock time means different days in different zones."""
    if scheduled.tzinfo is None:
        raise ValueError(f"scheduled start {scheduled!r} has no time zone")
    return scheduled.astimezone(dt.UTC).date() - dt.timedelta(days=lag_days)


def _newly_stale(
    days: list[dt.date], skipped: set[dt.date], ran: set[dt.date], results: dict[dt.date, DateResult]
) -> list[dt.date]:
    """Skipped dates that are no longer succeeded now: stale, because an earlier date of this
    backfill was re-processed with different results. Only when every date run so far succeeded,
    otherwise the re-run would stop (or fail) on the same problem."""
    if not skipped or any(results[d].status != "succeeded" for d in ran):
        return []
    first = min(ran)
    now_ok = runs.succeeded_dates(days[0], days[-1])
    return [d for d in days if d in skipped and d > first and d not in now_ok]


@flow(name="daily-pipeline", log_prints=True)
def daily_pipeline(execution_date: str | None = None) -> list[dict]:
    """Every stage for one execution date (always runs: a daily run is also how a date is redone)."""
    day = resolve_execution_date(execution_date, int(os.environ.get("ASOF_EXECUTION_LAG_DAYS", "1")))
    with pipeline_lock():
        days = [day] if execution_date else catch_up_dates(day)
        results = process_dates(days, continue_on_failure=False, chunk_days=DEFAULT_CHUNK_DAYS)
        verdict = _monitor(results, f"daily run {day.isoformat()}")
    _publish(f"daily run {day.isoformat()}", results)
    return monitor.flow_state(verdict, [r.to_dict() for r in results])


@flow(name="backfill", log_prints=True)
def backfill(
    start: str,
    end: str,
    force: bool = False,
    continue_on_failure: bool = False,
    chunk_days: int = DEFAULT_CHUNK_DAYS,
) -> list[dict]:
    """A date range, in order and in chunks. Dates that already succeeded are skipped unless forced;
    the first failing date stops the backfill unless `continue_on_failure`."""
    d1, d2 = parse_range(start, end)
    days = list(date_range(d1, d2))
    with pipeline_lock():
        # Decided under the lock: a backfill that waited for another run skips what that run did.
        done = set() if force else runs.succeeded_dates(d1, d2)
        todo = [d for d in days if d not in done]
        results = {d: DateResult(d, status="skipped", message="already succeeded") for d in days if d in done}
        for d in sorted(done):
            _progress(d, "skipped")
        if todo:
            for r in process_dates(todo, continue_on_failure, max(1, chunk_days)):
                results[r.day] = r
            # Re-processing a date with different results makes the succeeded dates after it
            # stale (their features saw the old data): redo them now rather than leave the range
            # half repaired for the next backfill to find.
            stale = [] if force else _newly_stale(days, done, set(todo), results)
            if stale:
                log = get_run_logger()
                log.info("re-running %d dates made stale by this backfill: %s", len(stale), stale)
                for r in process_dates(stale, continue_on_failure, max(1, chunk_days)):
                    r.message = r.message or "re-run: made stale by this backfill's earlier dates"
                    results[r.day] = r
        ordered = [results[d] for d in days]
        verdict = _monitor(ordered, f"backfill {d1.isoformat()}..{d2.isoformat()}")
    _publish(f"backfill {d1.isoformat()}..{d2.isoformat()}", ordered)
    return monitor.flow_state(verdict, [r.to_dict() for r in ordered])
