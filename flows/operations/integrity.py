"""Does the lake still hold what the run records say was written? (`asof verify`, contract §3)

Damage from outside the pipeline (an emptied or cut Delta commit file, a deleted checkpoint or data
file, a restored backup of one table) is invisible to the run records: a date stays `succeeded`
while its rows are gone. Two checks, both from metadata only (no data file is read):

- every table's Delta log: commit files that are empty, cut or missing, a checkpoint hint without
  its checkpoint, data files of the current version that are gone (`lake.log_problems`);
- per succeeded date and source, conservation against the newest run records: bronze holds the rows
  ingest recorded, and silver + quarantine hold exactly bronze's rows (`lake.partition_rows`, from
  the log's per-file row counts);
- per succeeded date and gold table, the rows the lake holds for the as-of date against the rows
  the date's newest transform wrote: its record names the Delta version it published, and that
  commit's add actions count the rows per as-of date (one small log file per published version);
- the online store is not emptied (a Redis restarted without persistence, a deleted SQLite file)
  while run records say rows were materialized: `online_store_emptied`, no Feast import.

`runs.latest` runs the per-date check for the dates it would report `succeeded` (about 0.1-0.2 s),
so `asof status` shows such a date `damaged` and `asof backfill` does not skip it; rerunning the
date rebuilds it from its landing files. An emptied online store makes the materialization of the
succeeded dates due again (`pending`), so the next backfill re-materializes instead of skipping.
A damaged log is named with its file: docs/operations.md section 11 says how to recover each case,
and `asof verify --repair` (`repair_plan`) does what can be done from upstream.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import re
import shutil
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from flows.config import settings
from flows.sources import SOURCE_NAMES
from flows.storage import lake

CONSERVED_LAYERS = ("bronze", "silver", "quarantine")
CHECKPOINT_HINT = "_delta_log/_last_checkpoint"
GOLD_DATE = "as_of_date"
# Tables a forced backfill writes again, date by date, from upstream (landing files, then each
# layer from the one before): a table among these whose log cannot be repaired in place is set
# aside whole and rebuilt. Other ops tables (feature logs, releases) hold no upstream copy.
REBUILT_BY_BACKFILL = (
    "bronze",
    "silver",
    "quarantine",
    "gold",
    "ops/runs",
    "ops/ingest_files",
    "ops/metrics",
)
ONLINE_EMPTIED = "online store emptied"
_PARTITION_DATE = re.compile(r"(?:^|/)(?:_batch_date|as_of_date|execution_date)=(\d{4}-\d{2}-\d{2})(?:/|$)")


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
    """Every per-date check of `days` against `records` (newest run records, runs.latest):
    conservation per source, and gold's rows per as-of date."""
    days = set(days)
    return conservation_findings(records, days) + gold_findings(records, days)


def conservation_findings(records: list[dict], days: Iterable[dt.date]) -> list[Finding]:
    """Conservation of every (source, date) in `days`: ingest's recorded rows = bronze = silver +
    quarantine."""
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


def _commit_rows(layer: str, name: str, version: int, column: str) -> dict[dt.date, int] | None:
    """Rows per date partition that commit `version` of a table added (its add actions' numRecords);
    None when the commit file is gone (log cleanup) or an add carries no row count."""
    if not settings().is_local_lake:
        return None  # object storage: the log is read through delta-rs only (no per-commit reads)
    path = Path(lake.uri(layer, name)) / "_delta_log" / f"{version:020d}.json"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    out: dict[dt.date, int] = {}
    for line in lines:
        add = json.loads(line).get("add") if line.strip() else None
        if not add:
            continue
        stats = json.loads(add.get("stats") or "{}")
        value = (add.get("partitionValues") or {}).get(column)
        if "numRecords" not in stats or value is None:
            return None
        day = dt.date.fromisoformat(value)
        out[day] = out.get(day, 0) + int(stats["numRecords"])
    return out


def gold_findings(records: list[dict], days: Iterable[dt.date]) -> list[Finding]:
    """Per date of `days` and gold table: the rows gold holds for the as-of date = the rows the
    date's newest transform published for it (the Delta version in its record, that commit's add
    actions). A deleted file, a hand-made delete or a restored backup of one gold table shows here
    while bronze and silver are intact."""
    wanted = set(days)
    published: dict[dt.date, dict[str, int]] = {}
    for r in records:
        if r["stage"] != "transform" or r["status"] != "succeeded" or r["execution_date"] not in wanted:
            continue
        try:
            versions = json.loads(r.get("details") or "{}").get("versions") or {}
        except ValueError:
            continue
        published[r["execution_date"]] = {t: int(v) for t, v in versions.items() if v is not None}
    out: list[Finding] = []
    written: dict[tuple[str, int], dict[dt.date, int] | None] = {}
    for name in sorted({t for v in published.values() for t in v}):
        if not lake.exists("gold", name):
            continue
        try:
            held = lake.partition_rows("gold", name, GOLD_DATE)
        except lake.LakeError as exc:
            out += [Finding(f"gold/{name}", str(exc), d) for d in sorted(published) if name in published[d]]
            continue
        if held is None:
            continue
        for day in sorted(published):
            version = published[day].get(name)
            if version is None:
                continue
            if (name, version) not in written:
                written[(name, version)] = _commit_rows("gold", name, version, GOLD_DATE)
            wrote = written[(name, version)]
            if wrote is not None and wrote.get(day, 0) != held.get(day, 0):
                out.append(
                    Finding(
                        f"gold/{name}",
                        f"holds {held.get(day, 0)} rows, the transform wrote {wrote.get(day, 0)} "
                        f"(version {version})",
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
    newest succeeded date): monitoring's own online check (flows.monitoring.online_check,
    `online_mismatch_rate`), without the run records it would otherwise read. Imports Feast:
    `asof verify --online` only."""
    from flows.monitoring import config, gold_views, online_check

    cfg = config.load_config()
    reader = online_check.auto_reader()
    if reader is None or not cfg.online_enabled:
        return []
    out: list[Finding] = []
    with lake.reader_handles():
        measured = online_check.online_mismatch(gold_views.views_of(cfg), cfg, day, reader)
    for m in measured:
        if m.value is None or not math.isfinite(m.value) or m.value > 0:
            why = m.details.get("summary") or m.details.get("error") or "the online store does not match gold"
            out.append(Finding(f"online/{m.scope}", why, day))
    return out


def online_store_emptied(records: list[dict]) -> str | None:
    """Why the online store holds nothing although a succeeded date of `records` materialized
    rows (None if it holds rows, nothing was materialized, or it cannot be reached: a store that
    is down fails the next materialization loudly). Cheap and without Feast: the SQLite file's
    tables, or Redis's DBSIZE, so `asof status` and `asof backfill` can run it."""
    wrote = [
        r
        for r in records
        if r["stage"] == "materialize" and r["status"] == "succeeded" and (r["rows_out"] or 0) > 0
    ]
    if not wrote:
        return None
    newest = max(r["execution_date"] for r in wrote)
    s = settings()
    if s.online_store == "redis":
        try:
            import redis

            client = redis.Redis.from_url(
                s.redis_url,
                password=s.redis_password or None,
                socket_timeout=2,
                socket_connect_timeout=2,
                **({"ssl_ca_certs": str(s.redis_ca_cert)} if s.redis_ca_cert else {}),
            )
            with client:
                keys = client.dbsize()
        except Exception:  # unreachable or refused: not evidence of an empty store
            return None
        where = "the Redis database holds no keys"
        if keys:
            return None
    else:
        path = s.home / "feast" / "online.db"
        where = f"{path} is missing"
        if path.exists():
            try:
                with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                    tables = [
                        t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                    ]
                    quoted = ['"' + t.replace('"', '""') + '"' for t in tables]
                    if any(conn.execute(f"SELECT EXISTS (SELECT 1 FROM {q})").fetchone()[0] for q in quoted):
                        return None
            except sqlite3.Error:
                return None
            where = f"{path} holds no rows"
    return (
        f"{ONLINE_EMPTIED}: {where}, but materialization wrote rows up to {newest} "
        "(restarted without persistence?); the next run or backfill re-materializes "
        "(asof verify --online --repair now)"
    )


# ------------------------------------------------------------------ repair


@dataclass(frozen=True)
class Repair:
    """One step of `asof verify --repair`, or a finding it cannot fix by itself (the runbook's
    recovery is named). Actions: `set aside` a damaged newest commit or checkpoint hint (the table
    is then its previous version); `forget` data files the log lists but the disk lost (a
    delta-rs repair commit of their removal), then rerun `dates`, the partitions they held;
    `rebuild` a table whose older commit is damaged (set aside whole, rebuilt by a forced
    backfill of every date)."""

    table: str
    file: str
    automatic: bool
    why: str
    action: str = "set aside"
    dates: tuple[dt.date, ...] = ()

    def line(self) -> str:
        if not self.automatic:
            return f"by hand: {self.table} {self.file}: {self.why} (docs/operations.md section 11)"
        if self.action == "forget":
            days = ", ".join(d.isoformat() for d in self.dates) or "the dates not succeeded"
            return f"forget {self.table} {self.file} in its log ({self.why}); rerun {days}"
        if self.action == "rebuild":
            return f"set aside the whole table {self.table} ({self.file}: {self.why}); rebuild it"
        return f"set aside {self.table} {self.file} ({self.why})"

    @property
    def rebuilds_every_date(self) -> bool:
        """After this step every recorded date is recomputed (forced): which dates a set-aside
        commit held is in the lost commit, and a table set aside holds none."""
        if not self.automatic or self.action == "forget":
            return False
        return self.action == "rebuild" or self.file != CHECKPOINT_HINT


def _rebuilt_by_backfill(table: str) -> bool:
    return table.split("/", 1)[0] in REBUILT_BY_BACKFILL or table in REBUILT_BY_BACKFILL


def _partition_date(rel: str) -> dt.date | None:
    match = _PARTITION_DATE.search(rel)
    return dt.date.fromisoformat(match.group(1)) if match else None


def repair_plan(findings: list[Finding]) -> list[Repair]:
    """What `--repair` does about the log findings: the newest commit file when it is empty or
    cut, and a checkpoint hint naming a lost checkpoint, are set aside; data files the log lists
    but the disk lost are forgotten and their dates rerun; an older damaged commit of a table the
    backfill writes has the table set aside and rebuilt. Anything else is named for the runbook.
    Per-date findings need no step here: the rerun covers them."""
    plan: list[Repair] = []
    for f in findings:
        if f.file is None:
            continue
        layer, name = f.table.split("/", 1)
        if f.file == CHECKPOINT_HINT:
            plan.append(Repair(f.table, f.file, True, f.problem))
        elif f.file.startswith("_delta_log/") and "commit file is" in f.problem:
            if f.file == lake.newest_commit(layer, name) and "missing" not in f.problem:
                plan.append(Repair(f.table, f.file, True, f.problem))
            else:
                plan.append(Repair(f.table, f.file, _rebuilt_by_backfill(f.table), f.problem, "rebuild"))
        elif f.problem.startswith("data file of the current version is missing"):
            day = _partition_date(f.file)
            plan.append(Repair(f.table, f.file, True, f.problem, "forget", (day,) if day else ()))
        else:
            plan.append(Repair(f.table, f.file, False, f.problem))
    # one rebuild per table, and nothing else of a table that is rebuilt
    rebuilt = {r.table for r in plan if r.automatic and r.action == "rebuild"}
    seen: set[str] = set()
    out = []
    for r in plan:
        if r.table in rebuilt:
            if r.action != "rebuild" or r.table in seen:
                continue
            seen.add(r.table)
        out.append(r)
    return out


def apply_repairs(plan: list[Repair], keep_dir: Path) -> list[str]:
    """Carry out the automatic steps of `plan` (each under its table's lock), keeping whatever is
    set aside under `keep_dir` (never deleted). Returns one line per step done."""
    done = []
    for step in plan:
        if not step.automatic:
            continue
        layer, name = step.table.split("/", 1)
        if step.action == "set aside":
            done.append(str(lake.set_aside_log_file(layer, name, step.file, keep_dir)))
        elif step.action == "forget":
            with lake.lock(layer, name):
                removed = lake.table(layer, name).repair(dry_run=False).get("files_removed") or []
            done.append(f"{step.table}: {len(removed)} missing file(s) forgotten in its log")
        elif step.action == "rebuild":
            if not settings().is_local_lake:
                raise lake.LakeError(f"{step.table}: set the table aside by hand on object storage")
            source = Path(lake.uri(layer, name))
            target = keep_dir / layer / f"{name}.{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
            target.parent.mkdir(parents=True, exist_ok=True)
            with lake.lock(layer, name):
                shutil.move(source, target)
            done.append(str(target))
    return done


def lake_dates() -> tuple[dt.date, dt.date] | None:
    """The first and last date bronze holds (from the log's partition values): the range to
    rebuild when the run records themselves were set aside."""
    days: set[dt.date] = set()
    for name in lake.list_tables("bronze"):
        try:
            days |= set(lake.partition_rows("bronze", name) or {})
        except lake.LakeError:
            continue
    return (min(days), max(days)) if days else None
