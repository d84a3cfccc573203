"""Does the lake still hold what the run records say was written? (`asof verify`, contract §3)

Damage from outside the pipeline (an emptied or cut Delta commit file, a deleted checkpoint or data
file, a restored backup of one table) is invisible to the run records: a date stays `succeeded`
while its rows are gone. Two checks, both from metadata only (no data file is read):

- every table's Delta log: commit files that are empty, cut or missing, a checkpoint hint without
  its checkpoint, data files of the current version that are gone (`lake.log_problems`);
- per succeeded date and source, conservation against the newest run records: bronze holds the rows
  ingest recorded, and silver + quarantine hold exactly bronze's rows (`lake.partition_rows`, from
  the log's per-file row counts).

`runs.latest` runs the per-date check for the dates it would report `succeeded` (about 0.1-0.2 s),
so `asof status` shows such a date `damaged` and `asof backfill` does not skip it; rerunning the
date rebuilds it from its landing files. A damaged log is named with its file: docs/operations.md
section 11 says how to recover each case.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from flows import lake
from flows.sources import SOURCE_NAMES

CONSERVED_LAYERS = ("bronze", "silver", "quarantine")
CHECKPOINT_HINT = "_delta_log/_last_checkpoint"


@dataclass(frozen=True)
class Finding:
    table: str  # layer/name
    problem: str
    day: dt.date | None = None
    file: str | None = None

    def line(self) -> str:
        where = self.table + (f" {self.file}" if self.file else "") + (f" ({self.day})" if self.day else "")
        return f"{where}: {self.problem}"


def log_findings(layers: Iterable[str] = lake.LAYERS) -> list[Finding]:
    out: list[Finding] = []
    for layer in layers:
        for name in lake.list_tables(layer):
            out += [
                Finding(f"{layer}/{name}", problem, file=f) for f, problem in lake.log_problems(layer, name)
            ]
    return out


def _rows_by_date(layer: str, source: str) -> dict[dt.date, int] | None:
    if not lake.exists(layer, source):
        return {}
    return lake.partition_rows(layer, source)


def date_findings(records: list[dict], days: Iterable[dt.date]) -> list[Finding]:
    """Conservation of every (source, date) in `days` against `records` (newest run records,
    runs.latest): ingest's recorded rows = bronze = silver + quarantine."""
    wanted = set(days)
    if not wanted:
        return []
    ingested = {
        (r["execution_date"], r["source"]): r["rows_out"]
        for r in records
        if r["stage"] == "ingest" and r["execution_date"] in wanted and r["rows_out"] is not None
    }
    out: list[Finding] = []
    for source in SOURCE_NAMES:
        if not lake.exists("bronze", source):
            continue  # nothing ingested into this lake (or the table is gone: every read says so)
        try:
            counts = {layer: _rows_by_date(layer, source) for layer in CONSERVED_LAYERS}
        except lake.LakeError as exc:  # a table that cannot be opened holds none of its dates
            out += [Finding(f"{source} tables", str(exc), day) for day in sorted(wanted)]
            continue
        if any(c is None for c in counts.values()):
            continue  # a file without row statistics: nothing to compare from metadata
        for day in sorted(wanted):
            bronze = counts["bronze"].get(day, 0)
            recorded = ingested.get((day, source))
            if recorded is not None and recorded != bronze:
                out.append(
                    Finding(f"bronze/{source}", f"holds {bronze} rows, ingest recorded {recorded}", day)
                )
            split = counts["silver"].get(day, 0) + counts["quarantine"].get(day, 0)
            if split != bronze:
                out.append(
                    Finding(
                        f"silver/{source}",
                        f"silver {counts['silver'].get(day, 0)} + quarantine "
                        f"{counts['quarantine'].get(day, 0)} rows != bronze {bronze}",
                        day,
                    )
                )
    return out


def damaged_dates(records: list[dict], days: Iterable[dt.date]) -> dict[dt.date, str]:
    """The dates of `days` whose rows the lake no longer holds as recorded, with why."""
    found: dict[dt.date, str] = {}
    for f in date_findings(records, days):
        if f.day is not None:
            found[f.day] = "; ".join(m for m in [found.get(f.day), f.line()] if m)
    return found


def online_findings(day: dt.date) -> list[Finding]:
    """The online store against gold's newest rows, for a sample of the entities of `day` (the
    newest succeeded date): monitoring's own online check (flows.monitor, `online_mismatch_rate`).
    Imports Feast: `asof verify --online` only."""
    from flows import monitor

    out: list[Finding] = []
    for row in monitor.compute([day], online_reader=None):
        if row["metric"] != "online_mismatch_rate":
            continue
        details = json.loads(row["details"]) if row.get("details") else {}
        if row["value"] is None or row["value"] > 0:
            why = details.get("summary") or details.get("error") or "the online store does not match gold"
            out.append(Finding(f"online/{row['scope']}", why, day))
    return out


# ------------------------------------------------------------------ repair


@dataclass(frozen=True)
class Repair:
    """One step of `asof verify --repair`: set a damaged log file aside, or a finding it cannot
    fix by itself (the runbook's recovery is named)."""

    table: str
    file: str
    automatic: bool
    why: str

    def line(self) -> str:
        if self.automatic:
            return f"set aside {self.table} {self.file} ({self.why})"
        return f"by hand: {self.table} {self.file}: {self.why} (docs/operations.md section 11)"


def repair_plan(findings: list[Finding]) -> list[Repair]:
    """What `--repair` does about the log findings: the newest commit file when it is empty or
    cut, and a checkpoint hint naming a lost checkpoint, are set aside (the table is then its
    previous version, and the dates that commit wrote are rerun); anything else is named for the
    runbook. Per-date findings need no step here: the rerun covers them."""
    plan: list[Repair] = []
    for f in findings:
        if f.file is None:
            continue
        layer, name = f.table.split("/", 1)
        fixable = f.file == CHECKPOINT_HINT or (
            f.file == lake.newest_commit(layer, name) and "commit file is" in f.problem
        )
        plan.append(Repair(f.table, f.file, fixable, f.problem))
    return plan


def set_aside(plan: list[Repair], keep_dir: Path) -> list[Path]:
    moved = []
    for step in plan:
        if step.automatic:
            layer, name = step.table.split("/", 1)
            moved.append(lake.set_aside_log_file(layer, name, step.file, keep_dir))
    return moved
