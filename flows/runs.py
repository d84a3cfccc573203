"""Run records (`lake/ops/runs`): what each run did, per date, stage and source.

Records are append-only. A chunk of dates is first marked `running`, then its final records are
appended; the newest record per (date, stage, source) is the truth. A `running` record that is
never followed by a final one belongs to a run that died (killed, crashed): readers report it as
`interrupted`, never as succeeded.
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
import pyarrow.compute as pc

from flows import lake

STAGES = ("ingest", "validate", "transform", "materialize")
ALL_SOURCES = "*"
FINAL_OK = "succeeded"

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


def latest(start: dt.date | None = None, end: dt.date | None = None) -> list[dict]:
    """Newest record per (date, stage, source) in the range, with dead `running` runs shown as
    `interrupted`."""
    if not lake.exists("ops", "runs"):
        return []
    flt = None
    if start is not None:
        flt = (pc.field("execution_date") >= pa.scalar(start, pa.date32())) & (
            pc.field("execution_date") <= pa.scalar(end or start, pa.date32())
        )
    rows = lake.read("ops", "runs", filter=flt).to_pylist()
    rows.sort(key=lambda r: r["recorded_at"])
    newest: dict[tuple, dict] = {}
    run_marker: dict[dt.date, dict] = {}
    for r in rows:
        if r["stage"] == "run":
            run_marker[r["execution_date"]] = r
        else:
            newest[(r["execution_date"], r["stage"], r["source"])] = r
    out = list(newest.values())
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
        out.append(
            {
                **marker,
                "stage": "run",
                "status": "running" if alive else "interrupted",
                "message": (
                    f"run {marker['run_id']} in progress"
                    if alive
                    else f"run {marker['run_id']} was interrupted (process {marker['pid']} is gone); "
                    "rerun the date"
                ),
            }
        )
    out.sort(key=lambda r: (r["execution_date"], r["stage"], r["source"]))
    return out


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


def newest_succeeded(on_or_before: dt.date) -> dt.date | None:
    """The newest date (<= the given one) whose newest records all succeeded."""
    if not lake.exists("ops", "runs"):
        return None
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
