"""Prefect flows: the pipeline diagram, one task per stage.

    ingest (per source, in parallel) -> validate (the chunk as one set) -> transform (dbt, one
    invocation per chunk of dates) -> materialize (Feast, once per run)

A backfill is the same chain over a range: dates are processed in order, in chunks, so dbt runs once
per chunk instead of once per day and memory is bounded by a chunk. The online store is written once,
after the last chunk: it only ever serves each entity's newest row, so writing it per chunk wrote
every active entity again for every chunk (a year: 12 passes, 279 of 2457 s). Until then a chunk's
dates are `pending` materialization; a run that dies leaves them so, and the next backfill of the
range materializes them without recomputing anything. The next chunk's ingest runs while a chunk
transforms (`_process_chunk`). Every stage writes only the partitions it owns, so rerunning any date
or range converges to the same lake.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from flows.config import settings
from flows.dates import date_range, parse_date, parse_range, span_label
from flows.ingest.memory_budget import return_free_memory
from flows.ingest.stage import IngestOutcome, ingest_dates
from flows.lineage.openlineage_events import observed
from flows.monitoring import alerts, metrics, notify
from flows.monitoring.stage_timing import timed
from flows.operations import runs
from flows.operations.runs import ALL_SOURCES, StageRecord
from flows.orchestration import head_start
from flows.pages import links
from flows.sources import SOURCE_NAMES
from flows.storage import diskfull, key_index, lake

DEFAULT_CHUNK_DAYS = settings().chunk_days
# Landed rows of a source validated together at most (ASOF_VALIDATION_MAX_ROWS): GE judges them in
# one frame. 30 bench days (3.0M transactions): one slice peaked at 4.1 GB, two slices of <= 1.6M at
# 2.4 GB in the same time (71.4 s vs 72.2 s; docs/scaling.md section 0).
VALIDATION_MAX_ROWS = settings().validation_max_rows
# Prefect's default thread pool has no bound: when ingest was a task per source and date, a chunk's
# 124 tasks parsed every CSV at once and the allocator kept what those threads grew (90-day
# backfill: peak 5.9 GB, 3.9 GB with 4 workers; bench/RESULTS.md). Ingest is now a task per source
# (4); the bound stays for whatever else is submitted. PREFECT_TASK_RUNNER_THREAD_POOL_MAX_WORKERS overrides.
THREAD_WORKERS = int(os.environ.get("PREFECT_TASK_RUNNER_THREAD_POOL_MAX_WORKERS") or 4)

# Per-attempt limits of each stage task, in seconds (ASOF_TIMEOUT_<STAGE>_S; 0 = no limit). A stage
# that hangs (a stuck NFS read, a lock never released) must fail its date with a message instead of
# holding the daily run and, through the pipeline lock, every run queued behind it. The defaults are
# many times what a 31-day chunk takes at bench scale (transform 20-40 s, validate ~3 s per 100k-row
# day, materialize ~15 s per day), so only a hang trips them. Read at import: a worker starts a new
# process per flow run, so changing the worker's (or the deployment's job_variables) environment
# applies from the next run.
# Enforcement is Prefect's and differs by thread (docs/deployments.md): tasks called in the flow's
# main thread (validate, transform, materialize, monitor) are interrupted by SIGALRM, even in a
# sleep; submitted tasks (ingest, in the thread pool) get an exception at their next Python
# bytecode, so a call blocked inside C code ends first. A timeout counts as a failed attempt, so
# the tasks with retries (ingest, validate, materialize) try again before failing the date.
# The defaults are declared with the variables (flows/config.py, STAGE_TIMEOUT_DEFAULTS_S).


def stage_timeout(stage: str) -> float | None:
    """Timeout of `stage` in seconds from `ASOF_TIMEOUT_<STAGE>_S` (None = no limit)."""
    return settings().stage_timeout(stage)


class _ThreadTimeoutNotice(logging.Filter):
    """Drops Prefect's warning that a timeout cannot interrupt a blocking call in a thread: it is
    logged for every submitted task run with a timeout (4 per date for ingest), and would bury a
    backfill's real warnings. The behaviour is documented once, in docs/deployments.md."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and "running in a worker thread" in record.msg)


logging.getLogger("prefect.task_runs").addFilter(_ThreadTimeoutNotice())


# The CLI sets this to draw a progress bar; flows run in-process, so a plain callable is enough.
PROGRESS_HOOK: Callable[[dt.date, str], None] | None = None

PENDING = runs.PENDING
PENDING_MESSAGE = "pending: the online store is written once, after the run's last chunk"


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
    name="ingest-source",
    retries=2,
    retry_delay_seconds=[1, 5],
    cache_policy=NO_CACHE,
    task_run_name="ingest {source} {label}",
    timeout_seconds=stage_timeout("ingest"),
)
def ingest_source(source: str, days: list[dt.date], label: str) -> dict[dt.date, IngestOutcome]:
    """One source's batches of the chunk, in one bronze commit (flows.ingest.stage.ingest_dates)."""
    try:
        return observed("ingest", days, lambda: ingest_dates(source, days), source=source)
    except Exception as exc:  # a full disk fails its dates in one line each (no retry, no traceback)
        full = diskfull.no_space(exc)
        if full is None:
            raise
        return {d: IngestOutcome(source, d, "failed", 0, message=full) for d in days}


@task(
    name="validate-dates",
    retries=1,
    retry_delay_seconds=[2],
    cache_policy=NO_CACHE,
    task_run_name="validate {label}",
    timeout_seconds=stage_timeout("validate"),
)
def validate_dates(days: list[dt.date], stop_on_failure: bool, label: str) -> dict:
    """Every source of `days`, validated together (flows.validation.stage)."""
    from flows.validation.stage import validate_dates as validate

    return observed("validate", days, lambda: validate(days, stop_on_failure=stop_on_failure))


@dataclass
class StageOutcome:
    """What a stage run over a span of dates reports to the flow: the same shape for every stage's
    task, whatever its module returns."""

    status: str
    message: str = ""
    rows: Any = None
    details: dict = field(default_factory=dict)


@task(
    name="transform-features",
    cache_policy=NO_CACHE,
    task_run_name="dbt {start}..{end}",
    timeout_seconds=stage_timeout("transform"),
)
def transform_features(start: dt.date, end: dt.date) -> StageOutcome:
    from flows.transform.stage import transform_range

    out = observed("transform", [start, end], lambda: transform_range(start, end))
    details = {"rows": out.rows, "versions": out.versions, "elapsed_s": out.elapsed_s}
    return StageOutcome(out.status, out.message, out.rows, details)


@task(
    name="materialize-features",
    retries=2,
    retry_delay_seconds=[1, 5],
    cache_policy=NO_CACHE,
    task_run_name="materialize {start}..{end}",
    timeout_seconds=stage_timeout("materialize"),
)
def materialize_features(start: dt.date, end: dt.date) -> StageOutcome:
    from flows.features.featurestore import materialize_span

    out = observed("materialize", [start, end], lambda: materialize_span(start, end))
    return StageOutcome(out.get("status", "succeeded"), out.get("message", ""), out.get("rows"), out)


@task(
    name="monitor-dates",
    cache_policy=NO_CACHE,
    task_run_name="monitor {label}",
    timeout_seconds=stage_timeout("monitor"),
)
def monitor_dates(days: list[dt.date], label: str) -> list:
    return metrics.compute_and_store(days)


# ---------------------------------------------------------------- orchestration


def _contiguous(days: Sequence[dt.date]) -> list[tuple[dt.date, dt.date]]:
    spans: list[tuple[dt.date, dt.date]] = []
    for d in sorted(days):
        if spans and d == spans[-1][1] + dt.timedelta(days=1):
            spans[-1] = (spans[-1][0], d)
        else:
            spans.append((d, d))
    return spans


def _submit_ingest(days: list[dt.date]) -> dict[str, PrefectFuture]:
    """Each source's batches of the chunk go to the task runner as one task: sources are independent
    (they run in parallel), a source's dates share one Delta commit."""
    label = span_label(days)
    return {s: ingest_source.submit(s, days, label) for s in SOURCE_NAMES}


def _collect_ingest(
    days: list[dt.date],
    futures: dict[str, PrefectFuture],
    results: dict[dt.date, DateResult],
    records: list[StageRecord],
) -> None:
    """Wait for every source's ingest of the chunk and record each (source, date) outcome; a source
    whose task failed fails each of its dates, and no other source's."""
    outcomes: dict[str, dict[dt.date, IngestOutcome] | Exception] = {}
    for source, fut in futures.items():
        try:
            outcomes[source] = fut.result()
        except Exception as exc:  # a crash of one source must not hide the others
            outcomes[source] = exc
    rank = ["succeeded", "malformed", "failed", "partial", "not_delivered"]
    for day in days:
        res = results[day]
        for source in SOURCE_NAMES:
            got = outcomes[source]
            record = _ingest_record(day, source, got if isinstance(got, Exception) else got[day])
            records.append(record)
            if record.rows_out is not None:
                res.counts.setdefault(source, {})["landed"] = record.rows_out
            if record.status != "succeeded":
                worst = max(res.stages.get("ingest", "succeeded"), record.status, key=rank.index)
                res.stages["ingest"] = worst
                res.message = "; ".join(m for m in [res.message, f"ingest {source}: {record.message}"] if m)
        res.stages.setdefault("ingest", "succeeded")
        _progress(day, "ingested")


def _ingest_record(day: dt.date, source: str, out: IngestOutcome | Exception) -> StageRecord:
    if isinstance(out, Exception):
        return StageRecord(day, "ingest", source, "failed", message=diskfull.failure_message(out))
    files = [asdict(f) for f in out.files]
    details = {"files": files, "bronze_version": out.bronze_version}
    return StageRecord(
        day, "ingest", source, out.status, rows_out=out.rows, message=out.message, details=details
    )


def validation_slices(days: list[dt.date], results: dict[dt.date, DateResult]) -> list[list[dt.date]]:
    """Consecutive groups of `days` in which no source has more than VALIDATION_MAX_ROWS landed rows
    (a date alone may hold more): GE judges one source's rows of a slice in one frame, so memory
    follows the biggest source's slice, not the chunk. A bench chunk (31 x 100k transactions) is two
    slices; a chunk of 3M-row days is validated a date at a time. Counted per source, not summed
    over the sources: the sum made 30 bench days three slices (3.3M rows, transactions 3.0M), each
    paying the stage's fixed costs again (8 checkpoint runs, the history reads, 8 commits).
    Validating in slices gives the same verdicts (tests/test_validation_range.py)."""
    out: list[list[dt.date]] = []
    rows: dict[str, int] = {}
    for day in days:
        landed = {source: c.get("landed") or 0 for source, c in results[day].counts.items()}
        merged = {s: rows.get(s, 0) + landed.get(s, 0) for s in {*rows, *landed}}
        if out and max(merged.values(), default=0) <= VALIDATION_MAX_ROWS:
            out[-1].append(day)
            rows = merged
        else:
            out.append([day])
            rows = landed
    return out


def _validate_stage(
    days: list[dt.date], results: dict[dt.date, DateResult], records: list[StageRecord], stop_on_failure: bool
) -> list[dt.date]:
    """Validate `days` slice by slice (`validation_slices`); record each date outcome per source. Returns
    the dates that validated (every source succeeded). With `stop_on_failure` the dates after the
    first that did not are not validated (no record: the chunk's close marks them not run)."""
    good: list[dt.date] = []
    for part in validation_slices(days, results):
        ok = _validate_slice(part, results, records, stop_on_failure)
        good += ok
        if stop_on_failure and len(ok) < len(part):
            break
    return good


def _validate_slice(
    days: list[dt.date], results: dict[dt.date, DateResult], records: list[StageRecord], stop_on_failure: bool
) -> list[dt.date]:
    if not days:
        return []
    try:
        outcome = validate_dates(days, stop_on_failure, span_label(days))
    except Exception as exc:
        # a conservation violation on D: the dates before it were written and checked
        done = getattr(exc, "outcome", None) or {}
        good = _record_validations([d for d in days if d in done], done, results, records)
        at = getattr(exc, "day", None)
        for day in (d for d in days if d not in done):
            if stop_on_failure and at is not None and day > at:
                continue  # validating date by date, the run would have stopped at `at`
            records.append(
                StageRecord(day, "validate", ALL_SOURCES, "failed", message=diskfull.failure_message(exc))
            )
            results[day].stages["validate"] = "failed"
            results[day].message = results[day].message or f"validate: {exc}"
        return good
    return _record_validations([d for d in days if d in outcome], outcome, results, records)


def _record_validations(
    days: list[dt.date], outcome: dict, results: dict[dt.date, DateResult], records: list[StageRecord]
) -> list[dt.date]:
    good: list[dt.date] = []
    for day in days:
        res = results[day]
        problems: list[str] = []
        for source, v in outcome[day].items():
            records.append(
                StageRecord(
                    day,
                    "validate",
                    source,
                    v.status,
                    rows_in=v.rows_bronze,
                    rows_out=v.rows_silver,
                    rows_quarantined=v.rows_quarantined,
                    message=v.message,
                    details={
                        "reasons": v.reasons,
                        "warnings": v.warnings,
                        "rejected_rule": v.rejected_rule,
                        "validation_run_id": v.validation_run_id,
                        "data_docs": v.data_docs_url,
                        "data_docs_pages": v.docs_pages(),
                    },
                )
            )
            c = res.counts.setdefault(source, {})
            c["silver"], c["quarantined"] = v.rows_silver, v.rows_quarantined
            if v.status != "succeeded":
                problems.append(f"{source} {v.status}: {v.message}")
        statuses = {v.status for v in outcome[day].values()}
        if not problems:
            res.stages["validate"] = "succeeded"
            good.append(day)
        else:
            res.stages["validate"] = "rejected" if statuses <= {"succeeded", "rejected"} else "failed"
            res.message = res.message or "; ".join(problems)
    return good


def _transform_stage(
    good: list[dt.date], results: dict[dt.date, DateResult], records: list[StageRecord]
) -> list[dt.date]:
    done: list[dt.date] = []
    for start, end in _contiguous(good):
        try:
            out = transform_features(start, end)
            status, message = out.status, out.message
            details = {**out.details, "span": [start.isoformat(), end.isoformat()]}
        except Exception as exc:
            status, message, details = "failed", diskfull.failure_message(exc), {}
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
    """One Feast pass per contiguous span of dates (the online store ends up the same as with one
    pass per date); each date gets the span's outcome. `results` may lack a date: one caught up
    from an earlier run that left it pending."""
    for start, end in _contiguous(days):
        try:
            out = materialize_features(start, end)
            status, message, rows = out.status, out.message, out.rows
        except Exception as exc:
            status, message, rows = "failed", diskfull.failure_message(exc), None
        if start != end:
            message = f"{start}..{end}: {message}"
        for day in date_range(start, end):
            records.append(
                StageRecord(day, "materialize", ALL_SOURCES, status, rows_out=rows, message=message)
            )
            if day not in results:  # computed by an earlier run, which left only this stage due
                done = {s: "succeeded" for s in runs.STAGES if s != "materialize"}
                results[day] = DateResult(day, stages=done, message="caught up: materialization only")
            res = results[day]
            res.stages["materialize"] = status
            if status != "succeeded":
                res.message = res.message or f"materialize: {message}"
            _progress(day, "materialized")


def _defer_materialize(
    days: list[dt.date], results: dict[dt.date, DateResult], records: list[StageRecord]
) -> None:
    """Transformed dates wait for the run's one materialization pass (see the module docstring)."""
    for day in days:
        records.append(StageRecord(day, "materialize", ALL_SOURCES, PENDING, message=PENDING_MESSAGE))
        results[day].stages["materialize"] = PENDING
        _progress(day, PENDING)


def _materialize_pending(
    pending: list[dt.date], results: dict[dt.date, DateResult], run_id: str, flow_run_id: str | None
) -> None:
    """The online-store pass of a run whose last chunk did not get to it (no date of the chunk was
    transformed: it failed, or there was only catching up to do), recorded in one append."""
    if not pending:
        return
    records: list[StageRecord] = []
    with timed("materialize"):
        _materialize_stage(sorted(set(pending)), results, records)
    for day in {r.execution_date for r in records}:
        _finish(results[day])
    runs.append(run_id, flow_run_id, records)


def _finish(res: DateResult) -> None:
    stages = res.stages
    if all(stages.get(s) == "succeeded" for s in runs.STAGES):
        res.status = "succeeded"
    elif stages.get("materialize") == PENDING and all(
        stages.get(s) == "succeeded" for s in runs.STAGES if s != "materialize"
    ):
        res.status = PENDING
    elif not stages:
        res.status = "not run"
    elif stages.get("ingest") in ("not_delivered", "partial"):
        res.status = stages["ingest"]  # nothing to process yet: the date waits for its files
    elif stages.get("validate") == "rejected":
        res.status = "rejected"
    else:
        res.status = "failed"


def process_dates(
    days: list[dt.date], continue_on_failure: bool, chunk_days: int, catch_up: Sequence[dt.date] = ()
) -> list[DateResult]:
    """Run every stage for `days` (sorted), chunk by chunk, then materialize once: the dates just
    transformed and `catch_up`, dates an earlier run left pending materialization. Returns one
    result per date, in date order."""
    log = get_run_logger()
    ctx = FlowRunContext.get()
    flow_run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    run_id = uuid.uuid4().hex[:12]
    results = {d: DateResult(d) for d in days}
    # a range keeps an index of the silver keys between dates (validation's reference checks),
    # reuses its Delta reader handles (an open replays the log, which grows with history) and
    # renders the Data Docs index once per chunk, not once per date (it lists every stored result).
    # Every run renders its Data Docs pages in the background, while the transform works; the
    # scope, closed first, waits for them, so the run returns with its pages rendered.
    # The first chunk ingests while this thread pays GE's one-time costs and a thread of
    # head_start's pays dbt's and Feast's (a cold process: ~8 s; nothing left in the warm process).
    first: Prefetch | None = None
    with contextlib.ExitStack() as scope:
        if days:
            runs.mark_running(run_id, flow_run_id, days[:chunk_days])  # before it writes anything
            first = Prefetch(days[:chunk_days], _submit_ingest(days[:chunk_days]), marked=True)
            scope.callback(first.wait)  # last out: nothing may still be writing when the run returns
            scope.callback(head_start.begin().wait)
            from flows.validation import datadocs  # imports GE: not for `asof --help`

            if len(days) > 1:
                scope.enter_context(key_index.session())
                scope.enter_context(lake.reader_handles())
                scope.enter_context(datadocs.deferred_index())
            scope.enter_context(datadocs.rendering_in_background())
            with contextlib.suppress(Exception):  # it fails again, with its error, in validation
                head_start.pay_validation_costs()
        left = _process_chunks(
            days, results, run_id, flow_run_id, continue_on_failure, chunk_days, catch_up, first
        )
    _materialize_pending(left, results, run_id, flow_run_id)
    for res in results.values():
        if res.status == "not run" and not res.message:
            res.message = "stopped: an earlier date failed (use --continue-on-failure)"
        if res.status == "succeeded":
            continue
        log.warning("%s %s: %s", res.day, res.status, res.message)
    return [results[d] for d in sorted(results)]


def _process_chunks(
    days: list[dt.date],
    results: dict[dt.date, DateResult],
    run_id: str,
    flow_run_id: str | None,
    continue_on_failure: bool,
    chunk_days: int,
    catch_up: Sequence[dt.date] = (),
    first: Prefetch | None = None,
) -> list[dt.date]:
    """Ingest, validate and transform `days` chunk by chunk; the run's last chunk also materializes
    every date transformed so far and `catch_up`. Returns the dates still due for materialization
    (a run stopped before any chunk got that far). `first` is the first chunk's ingest, if started."""
    stop = False
    pending: list[dt.date] = []
    # the next chunk's ingest, started while a chunk transforms (_process_chunk)
    ahead: Prefetch | None = first
    try:
        for i in range(0, len(days), chunk_days):
            chunk = days[i : i + chunk_days]
            if stop:
                break
            prefetched = ahead if ahead is not None and ahead.days == chunk else None
            ahead = None
            stop, ahead = _process_chunk(
                chunk,
                days[i + chunk_days : i + 2 * chunk_days],
                prefetched,
                Chunking(results, run_id, flow_run_id, continue_on_failure, pending, catch_up),
                last_chunk=i + chunk_days >= len(days),
            )
    finally:
        if ahead is not None:  # the run stopped: nothing may still be writing when it returns
            ahead.wait()
    if not days:  # nothing to compute, only catching up
        return sorted(catch_up)
    return pending  # empty: the last chunk that ran materialized


@dataclass
class Prefetch:
    """A chunk's ingest, submitted before its turn."""

    days: list[dt.date]
    futures: dict[str, PrefectFuture]
    marked: bool = False  # its dates' "running" records written before it was submitted

    def wait(self) -> None:
        """Until every source's ingest ended (its outcome stays unread: its dates were not run)."""
        for fut in self.futures.values():
            fut.wait()


@dataclass
class Chunking:
    """What every chunk of a run shares: the results, the run's ids and options, the dates left
    pending materialization (appended to by each chunk, emptied by the one that materializes)."""

    results: dict[dt.date, DateResult]
    run_id: str
    flow_run_id: str | None
    continue_on_failure: bool
    pending: list[dt.date]
    catch_up: Sequence[dt.date]


def _process_chunk(
    chunk: list[dt.date],
    following: list[dt.date],
    prefetched: Prefetch | None,
    run: Chunking,
    last_chunk: bool,
) -> tuple[bool, Prefetch | None]:
    """One chunk's ingest (unless `prefetched` already runs it), validation and transform, and the
    run's materialization if it is the last chunk that runs. Returns (stop, the ingest of
    `following` if it was started).

    The following chunk's ingest runs on the task runner's threads while this chunk transforms:
    the transform is DuckDB's and dbt's work, the ingest mostly Arrow's and delta-rs's, so they
    share the machine instead of taking turns (a year: 12 ingests of 4.5-5.5 s). It starts only
    once this chunk validated without a stop, so a run that validation stops ingests nothing more,
    as before; a run this chunk's transform stops has the following chunk's bronze written and its
    dates not run (no record), which the next run of those dates ingests again. The "ingest" stage
    time is then the wait for it, not its work."""
    log = get_run_logger()
    results, continue_on_failure = run.results, run.continue_on_failure
    stop = False
    started: Prefetch | None = None
    if prefetched is None or not prefetched.marked:
        runs.mark_running(run.run_id, run.flow_run_id, chunk)
    records: list[StageRecord] = []
    try:
        log.info("chunk %s..%s: ingest %d dates", chunk[0], chunk[-1], len(chunk))
        # Every (source, date) batch of the chunk is ingested on the task runner's threads; the
        # chunk is then validated as one set (flows.validation.stage).
        ingesting = prefetched.futures if prefetched is not None else _submit_ingest(chunk)
        with timed("ingest"):
            _collect_ingest(chunk, ingesting, results, records)
        # Malformed files still go through validation, so their rows land in quarantine with
        # a reason; a source not delivered at all stops the date here.
        todo: list[dt.date] = []
        for day in chunk:
            if results[day].stages.get("ingest") in ("succeeded", "malformed"):
                todo.append(day)
                continue
            results[day].stages["validate"] = "skipped"
            _progress(day, "failed")
            if not continue_on_failure:
                stop = True
                break
        with timed("validate"):
            good = _validate_stage(todo, results, records, stop_on_failure=not continue_on_failure)
            return_free_memory()  # before DuckDB's working memory stacks on what validation kept
        for day in todo:
            _progress(day, "validated" if day in good else "failed")
        failed = [d for d in chunk if d not in good and results[d].stages.get("validate") is not None]
        if failed and not continue_on_failure:
            stop = True
            for later in chunk[chunk.index(failed[0]) + 1 :]:
                results[
                    later
                ].message = f"stopped: {failed[0].isoformat()} failed (use --continue-on-failure)"
        if following and not stop:
            started = Prefetch(following, _submit_ingest(following))
        _refresh_docs_index(chunk)
        with timed("transform"):
            _transform_stage(good, results, records)
            return_free_memory()
        transformed = [d for d in good if results[d].stages.get("transform") == "succeeded"]
        run.pending += transformed
        last = last_chunk or stop
        if not continue_on_failure and any(results[d].stages.get("transform") == "failed" for d in good):
            last = True  # the run stops after this chunk
        if last:  # the run's one online-store pass, recorded with this chunk
            due = sorted({*run.catch_up, *run.pending})
            with timed("materialize"):
                _materialize_stage(due, results, records)
            for day in due:
                if day not in chunk:  # the chunk's own dates are finished with it
                    _finish(results[day])
            run.pending.clear()
        else:
            _defer_materialize(transformed, results, records)
    except BaseException as exc:
        crash = f"interrupted: {diskfull.failure_message(exc)}"
        for day in chunk:
            results[day].message = results[day].message or crash
        if started is not None:  # the caller never sees it: let it finish before unwinding
            started.wait()
        raise
    finally:
        _close_chunk(chunk, results, records)
        try:
            runs.append(run.run_id, run.flow_run_id, records)
        except Exception as exc:  # a full disk ends the run with one line per date, not a crash
            full = diskfull.no_space(exc)
            if full is None:
                raise
            for day in chunk:
                results[day].status, results[day].message = "failed", f"{full} (run records not written)"
            stop = True
    if any(results[d].status not in ("succeeded", PENDING) for d in chunk) and not continue_on_failure:
        stop = True
    return stop, started


def _refresh_docs_index(chunk: list[dt.date]) -> None:
    """List the chunk's validation pages in the Data Docs index now (rendered after them, in the
    background), so a long backfill's reports show up in the browser chunk by chunk (a no-op
    outside a range)."""
    from flows.validation import datadocs

    try:
        with timed("validate"):
            datadocs.refresh_index()
    except Exception:  # a report: never fail the data because the index did not render
        get_run_logger().exception("Data Docs index after %s..%s failed", chunk[0], chunk[-1])


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


MAX_LINKED_DATES = 31  # per-date Data Docs links in a run's report; the index links every run


def _validation_pages(results: list[DateResult]) -> dict[dt.date, dict[str, str]]:
    """{date: {suite: URL of its Data Docs result page}} (every suite of every source: rows and
    batches), from the run records of `results`; records written before suites were recorded
    give their rows page."""
    days = {r.day for r in results if r.stages.get("validate") not in (None, "skipped", "not run")}
    if not days:
        return {}
    docs = settings().docs_dir
    pages: dict[dt.date, dict[str, str]] = {}
    for rec in runs.stage_records(min(days), max(days)):
        if rec["stage"] != "validate" or rec["execution_date"] not in days:
            continue
        try:
            details = json.loads(rec["details"] or "{}")
        except ValueError:
            details = {}
        found = {suite: docs / page for suite, page in (details.get("data_docs_pages") or {}).items()}
        url = details.get("data_docs")
        if not found and url and url.startswith("file://"):
            found = {rec["source"]: Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))}
        for suite, path in found.items():
            pages.setdefault(rec["execution_date"], {})[suite] = links.docs_url(path)
    return pages


def _report_markdown(title: str, results: list[DateResult]) -> tuple[str, str | None]:
    """The run's markdown report and the Data Docs index URL (None before any validation ran)."""
    ok = sum(r.status in ("succeeded", "skipped") for r in results)
    lines = [f"## {title}", "", f"{ok}/{len(results)} dates succeeded (or had already succeeded)."]
    docs = settings().docs_dir
    index = docs / "index.html"
    index_url = links.docs_url(index) if index.exists() else None
    lines += ["", "### Validation reports (Great Expectations Data Docs)", ""]
    if index_url:
        lines.append(f"- every validation run: [Data Docs index]({index_url})")
    else:
        lines.append("- no Data Docs yet: every validation builds its pages (`asof docs` builds the site)")
    pages = _validation_pages(results)
    with_pages = [r for r in results if r.day in pages]
    for r in with_pages[-MAX_LINKED_DATES:]:
        cells = ", ".join(f"[{suite}]({url})" for suite, url in sorted(pages[r.day].items()))
        lines.append(f"- {r.day.isoformat()} ({r.status}): {cells}")
    if len(with_pages) > MAX_LINKED_DATES:
        lines.append(f"- earlier dates: see the index (the last {MAX_LINKED_DATES} are listed here)")
    report = alerts.report_path()
    lines += ["", "### Monitoring", ""]
    if report.exists():
        url = links.report_url(report)
        lines.append(f"- [monitoring report (HTML)]({url}): rows, pass rate, drift, freshness, coverage")
    lines.append("- any range: `asof monitor --start D1 --end D2 --html report.html`")
    if not links.all_served():
        lines += ["", "Browsers do not follow file:// links from a web page: copy them, or use make serve."]
    return "\n".join(lines), index_url


def _publish(title: str, results: list[DateResult]) -> None:
    """The run's Prefect artifacts (contract §9): the per-date status table, a markdown report linking
    the Data Docs page of each date's validation and the monitoring report, and a link artifact to
    the Data Docs index. URLs are served ones when `make serve` runs (ASOF_DOCS_URL /
    ASOF_REPORTS_URL), file:// ones otherwise."""
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
        markdown, index_url = _report_markdown(title, results)
        create_markdown_artifact(markdown, key="asof-run-report", description=title)
        if index_url:
            create_link_artifact(
                index_url,
                link_text="validation reports (Data Docs)",
                key="asof-data-docs",
                description="Great Expectations Data Docs: every validation run, per source and date",
            )
    except Exception as exc:  # artifacts are a convenience; never fail a run on them
        get_run_logger().warning("could not publish artifacts: %s", exc)


def _monitor(results: list[DateResult], title: str) -> alerts.Verdict:
    """Metrics for every attempted date, failed ones included (that is how a failed or missing
    day shows up as a freshness breach). Monitoring never breaks the data path: its own errors
    are logged and the verdict is empty."""
    days = [r.day for r in results if r.status not in ("not run", "skipped")]
    if not days:
        return alerts.verdict_of([])
    full = diskfull.full_disk()
    if full is not None:  # nothing could be stored; the failing task would print its traceback
        get_run_logger().warning("monitoring skipped: no space left on %s", full)
        return alerts.verdict_of([])
    try:
        with timed("monitor"):
            breaches = monitor_dates(days, span_label(days))
    except Exception as exc:
        get_run_logger().warning("monitoring failed: %s", exc)
        return alerts.verdict_of([])
    return alerts.publish(breaches, f"monitoring: {title}", days=days)


def catch_up_dates(day: dt.date, max_days: int | None = None) -> list[dt.date]:
    """Dates a scheduled run should process: `day`, preceded by the dates missed since the newest
    succeeded one (the server or worker was down), oldest first, at most `max_days` in all."""
    max_days = max_days or settings().catchup_max_days
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


@flow(
    name="daily-pipeline",
    log_prints=True,
    on_failure=[notify.on_flow_failure],
    on_crashed=[notify.on_flow_crashed],
    task_runner=ThreadPoolTaskRunner(max_workers=THREAD_WORKERS),
)
def daily_pipeline(execution_date: dt.date | None = None) -> list[dict]:
    """Every stage for one execution date (always runs: a daily run is also how a date is redone).

    Typed as a date (not text) so that Prefect's run form offers a date picker and the server
    refuses anything that is not a `YYYY-MM-DD` date before a run is created.

    Args:
        execution_date: the UTC day to process, YYYY-MM-DD. Empty: the day before the run's
            scheduled start, after catching up missed days.
    """
    day = resolve_execution_date(execution_date, settings().execution_lag_days)
    with pipeline_lock():
        days = [day] if execution_date else catch_up_dates(day)
        results = process_dates(days, continue_on_failure=False, chunk_days=DEFAULT_CHUNK_DAYS)
        verdict = _monitor(results, f"daily run {day.isoformat()}")
    _publish(f"daily run {day.isoformat()}", results)
    return alerts.flow_state(verdict, [r.to_dict() for r in results])


@flow(
    name="backfill",
    log_prints=True,
    on_failure=[notify.on_flow_failure],
    on_crashed=[notify.on_flow_crashed],
    task_runner=ThreadPoolTaskRunner(max_workers=THREAD_WORKERS),
)
def backfill(
    start: dt.date,
    end: dt.date,
    force: bool = False,
    continue_on_failure: bool = False,
    chunk_days: int = DEFAULT_CHUNK_DAYS,
) -> list[dict]:
    """A date range, in order and in chunks. Dates that already succeeded are skipped unless forced;
    the first failing date stops the backfill unless `continue_on_failure`. Dates are typed as
    dates for the same reason as `daily_pipeline`'s (a date picker, bad input refused).

    Args:
        start: first UTC day of the range, YYYY-MM-DD.
        end: last UTC day of the range (inclusive), YYYY-MM-DD, not before start.
        force: reprocess dates that already succeeded (otherwise they are skipped).
        continue_on_failure: go on after a date that does not succeed.
        chunk_days: dates per chunk (one dbt invocation per chunk), 1-366.
    """
    d1, d2 = parse_range(start, end)
    days = list(date_range(d1, d2))
    with pipeline_lock():
        # Decided under the lock: a backfill that waited for another run skips what that run did.
        done = set() if force else runs.succeeded_dates(d1, d2)
        # dates an interrupted run computed but did not materialize: only the online store is due
        catch_up = set() if force else runs.pending_dates(d1, d2)
        todo = [d for d in days if d not in done and d not in catch_up]
        results = {d: DateResult(d, status="skipped", message="already succeeded") for d in days if d in done}
        for d in sorted(done):
            _progress(d, "skipped")
        if todo or catch_up:
            for r in process_dates(todo, continue_on_failure, max(1, chunk_days), sorted(catch_up)):
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
    return alerts.flow_state(verdict, [r.to_dict() for r in ordered])
