"""Run records (`lake/ops/runs`): what each run did, per date, stage and source.

Records are append-only. A chunk of dates is first marked `running`, then its final records are
appended; the newest record per (date, stage, source) is the truth. A `running` record that is
never followed by a final one belongs to a run that died (killed, crashed): readers report it as
`interrupted`, never as succeeded. A succeeded date whose earlier dates were re-processed with
different results afterwards (a re-delivery, a release from quarantine) is reported `stale`: its
features were computed from data that has changed since, and a non-forced backfill reruns it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from flows.operations import integrity
from flows.storage import diskfull, lake

STAGES = ("ingest", "validate", "transform", "materialize")
ALL_SOURCES = "*"
FINAL_OK = "succeeded"
# A transformed date whose online-store pass is still due (flows.pipeline writes it once per run).
PENDING = "pending"

RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("flow_run_id", pa.string()),
        pa.field("execution_date", pa.date32(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("rows_in", pa.int64()),
        pa.field("rows_out", pa.int64()),
        pa.field("rows_quarantined", pa.int64()),
        pa.field("message", pa.string()),
        pa.field("details", pa.string()),
        pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("host", pa.string()),
        pa.field("pid", pa.int64()),
    ]
)


@dataclass
class StageRecord:
    execution_date: dt.date
    stage: str
    source: str
    status: str
    rows_in: int | None = None
    rows_out: int | None = None
    rows_quarantined: int | None = None
    message: str = ""
    details: dict = field(default_factory=dict)


def append(run_id: str, flow_run_id: str | None, records: Iterable[StageRecord]) -> None:
    records = list(records)
    if not records:
        return
    now = dt.datetime.now(dt.UTC)
    data = {
        "run_id": [run_id] * len(records),
        "flow_run_id": [flow_run_id] * len(records),
        "execution_date": [r.execution_date for r in records],
        "stage": [r.stage for r in records],
        "source": [r.source for r in records],
        "status": [r.status for r in records],
        "rows_in": [r.rows_in for r in records],
        "rows_out": [r.rows_out for r in records],
        "rows_quarantined": [r.rows_quarantined for r in records],
        "message": [r.message for r in records],
        "details": [json.dumps(r.details, default=str, sort_keys=True) for r in records],
        "recorded_at": [now] * len(records),
        "host": [socket.gethostname()] * len(records),
        "pid": [os.getpid()] * len(records),
    }
    lake.append("ops", "runs", pa.table(data, schema=RUNS_SCHEMA), schema=RUNS_SCHEMA)


def mark_running(run_id: str, flow_run_id: str | None, days: Iterable[dt.date]) -> None:
    append(
        run_id,
        flow_run_id,
        [StageRecord(d, "run", ALL_SOURCES, "running", message=f"run {run_id} started") for d in days],
    )


def _proc_start(pid: int) -> tuple[float, str] | None:
    """(start time as a Unix timestamp, state letter) of a local process, from /proc (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        state, start_ticks = fields[0], int(fields[19])
        with open("/proc/stat") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
        return btime + start_ticks / os.sysconf("SC_CLK_TCK"), state
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_alive(host: str | None, pid: int | None, since: dt.datetime | None = None) -> bool:
    """Is the process that wrote a record (host, pid, at `since`) still running?

    A pid is reused once its process is gone, so a live pid only counts if that process started
    before the record was written (Linux: /proc); a zombie (killed, not yet reaped) is gone.
    """
    if host != socket.gethostname() or not pid:
        return True  # cannot tell for another host: trust the record
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    info = _proc_start(pid)
    if info is not None:
        started, state = info
        if state in ("Z", "X"):
            return False
        if since is not None and started > since.timestamp() + 2.0:
            return False  # a newer process got the pid
    return True


def _all_records() -> list[dict]:
    """Every run record, oldest first (none before the first run)."""
    if not lake.exists("ops", "runs"):
        return []
    everything = lake.read_rows("ops", "runs")
    everything.sort(key=lambda r: r["recorded_at"])
    return everything


def _newest(
    everything: list[dict], start: dt.date | None, end: dt.date | None
) -> tuple[dict[tuple, dict], dict[dt.date, dict]]:
    """The newest stage record per (date, stage, source) of the range, and the newest run marker
    per date, from records sorted by time."""
    lo, hi = start, (end or start)
    rows = [r for r in everything if lo is None or lo <= r["execution_date"] <= hi]
    # The newest run that recorded a stage of a date is the truth for that stage, all its sources at
    # once: an older run may have recorded it at another granularity (`validate *: not run` when an
    # earlier date failed, per source when it ran), and its records must not outlive it.
    stage_run: dict[tuple, str] = {}
    for r in rows:
        if r["stage"] != "run":
            stage_run[(r["execution_date"], r["stage"])] = r["run_id"]
    newest: dict[tuple, dict] = {}
    run_marker: dict[dt.date, dict] = {}
    for r in rows:
        if r["stage"] == "run":
            run_marker[r["execution_date"]] = r
        elif stage_run[(r["execution_date"], r["stage"])] == r["run_id"]:
            newest[(r["execution_date"], r["stage"], r["source"])] = r
    return newest, run_marker


def stage_records(start: dt.date, end: dt.date | None = None) -> list[dict]:
    """The newest record per (date, stage, source) of the range, as the stages wrote them: what
    `latest` starts from, without its checks of the dates against the lake (run markers, damage,
    staleness: ~15 Delta tables opened). For readers of what a stage recorded (its details), not
    of a date's status."""
    newest, _ = _newest(_all_records(), start, end)
    return sorted(newest.values(), key=lambda r: (r["execution_date"], r["stage"], r["source"]))


def latest(start: dt.date | None = None, end: dt.date | None = None) -> list[dict]:
    """Newest record per (date, stage, source) in the range, plus one `run` record for a date that
    is not what its stage records say: `running` / `interrupted` (a run started and never finished;
    its process is alive / gone) or `stale` (it succeeded, but an earlier date was re-processed with
    different results, or had rows released from quarantine, after it: its features are out of date).
    """
    everything = _all_records()  # staleness needs earlier dates too
    if not everything:
        return []
    newest, run_marker = _newest(everything, start, end)
    out = list(newest.values())
    flagged: set[dt.date] = set()
    # A run marker newer than every stage record of its date means a run started and never finished.
    for day, marker in run_marker.items():
        if marker["status"] != "running":
            continue
        stage_times = [
            r["recorded_at"] for k, r in newest.items() if k[0] == day and r["run_id"] == marker["run_id"]
        ]
        if stage_times:
            continue
        alive = _pid_alive(marker["host"], marker["pid"], marker["recorded_at"])
        flagged.add(day)
        out.append(
            {
                **marker,
                "stage": "run",
                "status": "running" if alive else "interrupted",
                "message": (
                    f"run {marker['run_id']} in progress"
                    if alive
                    else f"run {marker['run_id']} was interrupted (process {marker['pid']} is gone"
                    + (f"; no space left on {disk}" if (disk := diskfull.full_disk()) else "")
                    + "); rerun the date"
                ),
            }
        )
    succeeded = {d for d, st in date_status(out).items() if st == FINAL_OK and d not in flagged}
    # A succeeded date whose rows the lake no longer holds (damage from outside: flows.operations.integrity)
    damaged = integrity.damaged_dates(out, succeeded)
    for day, why in damaged.items():
        marker = max((r for r in out if r["execution_date"] == day), key=lambda r: r["recorded_at"])
        out.append(
            {
                **marker,
                "stage": "run",
                "source": ALL_SOURCES,
                "status": "damaged",
                "message": f"{why}; rerun the date",
            }
        )
    succeeded -= set(damaged)
    # An emptied online store (Redis restarted without persistence): their materialization is due again
    emptied = integrity.online_store_emptied([r for r in out if r["execution_date"] in succeeded])
    if emptied:
        out = [
            {**r, "status": PENDING, "message": emptied}
            if r["stage"] == "materialize" and r["execution_date"] in succeeded
            else r
            for r in out
        ]
        succeeded.clear()
    for marker, why in _stale(everything, succeeded).values():
        out.append({**marker, "stage": "run", "source": ALL_SOURCES, "status": "stale", "message": why})
    out.sort(key=lambda r: (r["execution_date"], r["stage"], r["source"]))
    return out


def _fingerprint(records: list[dict]) -> tuple:
    """What a run made of one date, as later dates see it: per source, the landed files (sha256)
    and the validation split. Equal fingerprints mean the rerun changed nothing downstream."""
    parts = []
    for r in records:
        if r["stage"] == "ingest":
            try:
                files = json.loads(r["details"] or "{}").get("files") or []
            except ValueError:
                files = []
            parts.append(
                ("ingest", r["source"], r["status"], tuple(sorted(str(f.get("sha256")) for f in files)))
            )
        elif r["stage"] == "validate":
            parts.append(
                ("validate", r["source"], r["status"], r["rows_in"], r["rows_out"], r["rows_quarantined"])
            )
    return tuple(sorted(parts, key=repr))


def _stale(everything: list[dict], succeeded: set[dt.date]) -> dict[dt.date, tuple[dict, str]]:
    """Succeeded dates whose inputs from earlier dates changed after they were computed."""
    if not succeeded:
        return {}
    # per date: the runs that wrote final records for it, oldest first, with their fingerprint
    by_run: dict[tuple[dt.date, str], list[dict]] = {}
    for r in everything:
        if r["stage"] != "run":
            by_run.setdefault((r["execution_date"], r["run_id"]), []).append(r)
    history: dict[dt.date, list[tuple[dt.datetime, str, tuple]]] = {}
    for (day, run_id), recs in by_run.items():
        fingerprint = _fingerprint(recs)
        if not fingerprint:  # a run that only materialized the date changed none of its inputs
            continue
        when = max(r["recorded_at"] for r in recs)
        history.setdefault(day, []).append((when, run_id, fingerprint))
    for h in history.values():
        h.sort(key=lambda x: x[0])
    releases = _releases()
    out: dict[dt.date, tuple[dict, str]] = {}
    for day in sorted(succeeded):
        runs_of_day = history.get(day)
        if not runs_of_day:
            continue
        when, run_id, _ = runs_of_day[-1]
        marker = next(r for r in by_run[(day, run_id)])
        for earlier in sorted(d for d in history if d < day):
            later = [x for x in history[earlier] if x[0] > when and x[1] != run_id]
            if not later:
                continue
            before = [x for x in history[earlier] if x[0] <= when or x[1] == run_id]
            then = before[-1][2] if before else None
            now = history[earlier][-1][2]
            if now != then:
                out[day] = (
                    marker,
                    f"{earlier.isoformat()} was re-processed with different results (run "
                    f"{history[earlier][-1][1]}) after this date was computed; rerun it: "
                    f"asof backfill --start {day.isoformat()} --end {day.isoformat()} --force",
                )
                break
        else:
            for rel_day, rel_at, source in releases:
                if rel_day < day and rel_at > when:
                    out[day] = (
                        marker,
                        f"rows of {source} {rel_day.isoformat()} were released from quarantine "
                        f"after this date was computed; rerun it: asof backfill --start "
                        f"{day.isoformat()} --end {day.isoformat()} --force",
                    )
                    break
    return out


def _releases() -> list[tuple[dt.date, dt.datetime, str]]:
    """(batch date, when, source) of every quarantine release that moved rows to silver."""
    try:
        rows = lake.read_rows(
            "ops", "releases", columns=["_batch_date", "released_at", "source", "rows_released"]
        )
    except lake.LakeError:
        return []
    return [(r["_batch_date"], r["released_at"], r["source"]) for r in rows if (r["rows_released"] or 0) > 0]


def date_status(records: list[dict]) -> dict[dt.date, str]:
    """One word per date: succeeded only when every stage of the newest run succeeded."""
    by_day: dict[dt.date, list[dict]] = {}
    for r in records:
        by_day.setdefault(r["execution_date"], []).append(r)
    status: dict[dt.date, str] = {}
    for day, recs in by_day.items():
        run = [r for r in recs if r["stage"] == "run"]
        if run:
            status[day] = run[0]["status"]
            continue
        words = {r["status"] for r in recs}
        stages_ok = {r["stage"] for r in recs if r["status"] == FINAL_OK}
        if words <= {FINAL_OK} and stages_ok >= set(STAGES):
            status[day] = "succeeded"
        elif stages_ok >= set(STAGES) - {"materialize"} and {
            r["status"] for r in recs if r["stage"] == "materialize"
        } == {PENDING}:
            status[day] = PENDING
        elif "partial" in words:  # a file was cut short: the date waits (flows.ingest.completeness)
            status[day] = "partial"
        elif "not_delivered" in words:
            status[day] = "not_delivered"
        elif "rejected" in words:
            status[day] = "rejected"
        elif words & {"failed", "malformed", "interrupted"}:
            status[day] = "failed"
        else:
            status[day] = "incomplete"
    return status


def succeeded_dates(start: dt.date, end: dt.date) -> set[dt.date]:
    return {d for d, s in date_status(latest(start, end)).items() if s == "succeeded"}


def pending_dates(start: dt.date, end: dt.date) -> set[dt.date]:
    """Dates computed up to gold whose materialization a run left due (it died before its one
    online-store pass)."""
    return {d for d, s in date_status(latest(start, end)).items() if s == PENDING}


def newest_succeeded(on_or_before: dt.date) -> dt.date | None:
    """The newest date (<= the given one) whose newest records all succeeded."""
    if not lake.exists("ops", "runs"):
        return None
    import pyarrow.compute as pc  # here, not at the top: `asof status` never needs it (0.1-0.2 s)

    days = pc.unique(
        lake.read(
            "ops",
            "runs",
            columns=["execution_date"],
            filter=pc.field("execution_date") <= pa.scalar(on_or_before, pa.date32()),
        )["execution_date"]
    ).to_pylist()
    if not days:
        return None
    status = date_status(latest(min(days), on_or_before))
    ok = [d for d, s in status.items() if s == "succeeded"]
    return max(ok) if ok else None
