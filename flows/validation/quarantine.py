"""Inspect and replay quarantined rows (contract sections 3 and 6).

Quarantine rows keep every bronze column exactly as delivered, plus `_reasons` (every failed rule),
the validation run that judged them and when. Two ways back into silver:

- `release(source, day, rule=None)` re-validates the quarantined rows of one batch with the *current*
  rules (suites, FX seed, reference data known by `day`) and promotes the rows that now pass. A
  released row *moves*: it leaves quarantine and enters silver in the same batch date, so
  conservation (bronze D = silver D + quarantine D) keeps holding. `rule` restricts the release to rows
  with that reason (`null` matches `null:amount`, `batch_rejected` every `batch_rejected:*`).
  A rejected batch (every row `batch_rejected:*`) is re-judged as a whole batch: it is promoted only
  if the batch rules pass now, and then split row by row like a normal validation.
  Every release that promotes rows is recorded in `ops/releases`; a release that finds nothing to
  promote writes nothing, so releasing twice changes nothing.
- Re-running the date (`asof run --date D`) after a corrected re-delivery re-validates bronze D and
  replaces silver D and quarantine D.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from flows.operations import runs
from flows.sources import SOURCE_NAMES, bronze_schema, get_source, silver_schema
from flows.storage import lake
from flows.validation import storage
from flows.validation.stage import Evaluation, revalidate, write_split

RELEASES_SCHEMA = pa.schema(
    [
        pa.field("release_id", pa.string(), nullable=False),
        pa.field("_batch_date", pa.date32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("rule", pa.string()),
        pa.field("released_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("rows_considered", pa.int64(), nullable=False),
        pa.field("rows_released", pa.int64(), nullable=False),
        pa.field("rows_still_quarantined", pa.int64(), nullable=False),
        pa.field("released_rows", pa.list_(pa.string())),  # "<_source_file>#<_row_number>"
        pa.field("validation_run_id", pa.string()),
        pa.field("message", pa.string()),
    ]
)


def rule_matches(reason: str, rule: str | None) -> bool:
    """`rule` selects a reason exactly or as a prefix before `:` (`null` -> `null:amount`)."""
    return rule is None or reason == rule or reason.startswith(rule + ":")


def _sources(source: str | None) -> list[str]:
    return [get_source(source).name] if source else list(SOURCE_NAMES)


def _read(source: str, day: dt.date | None = None, start: dt.date | None = None, end: dt.date | None = None):
    src = get_source(source)
    flt = None
    if day is not None:
        flt = lake.date_filter("_batch_date", [day])
    elif start is not None or end is not None:
        import pyarrow.dataset as ds

        flt = None
        if start is not None:
            flt = ds.field("_batch_date") >= pa.scalar(start, pa.date32())
        if end is not None:
            upper = ds.field("_batch_date") <= pa.scalar(end, pa.date32())
            flt = upper if flt is None else flt & upper
    return lake.read("quarantine", src.name, filter=flt, schema=storage.quarantine_schema(src))


def list_counts(
    source: str | None = None,
    day: dt.date | None = None,
    rule: str | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> list[dict]:
    """Quarantined rows per (source, batch date, reason). A row with two reasons counts under both."""
    out: list[dict] = []
    for name in _sources(source):
        tbl = _read(name, day, start, end)
        if tbl.num_rows == 0:
            continue
        dates = tbl.column("_batch_date").to_pylist()
        reasons = tbl.column("_reasons").to_pylist()
        counts: Counter[tuple[dt.date, str]] = Counter()
        rows: Counter[dt.date] = Counter()
        for d, rs in zip(dates, reasons, strict=True):
            rs = rs or []
            hit = [r for r in rs if rule_matches(r, rule)]
            if hit:
                rows[d] += 1
            for r in hit:
                counts[(d, r)] += 1
        for (d, r), n in counts.items():
            out.append({"source": name, "date": d, "reason": r, "rows": n, "rows_in_batch": rows[d]})
    out.sort(key=lambda x: (x["date"], SOURCE_NAMES.index(x["source"]), -x["rows"], x["reason"]))
    return out


def show(
    source: str, day: dt.date | None = None, rule: str | None = None, limit: int | None = 50
) -> list[dict]:
    """Quarantined rows (values as delivered) with their reasons, in file order."""
    src = get_source(source)
    tbl = _read(src.name, day)
    if tbl.num_rows == 0:
        return []
    tbl = tbl.sort_by(
        [("_batch_date", "ascending"), ("_source_file", "ascending"), ("_row_number", "ascending")]
    )
    keep = [
        i
        for i, rs in enumerate(tbl.column("_reasons").to_pylist())
        if any(rule_matches(r, rule) for r in rs or [])
    ]
    if limit is not None:
        keep = keep[:limit]
    rows = tbl.take(pa.array(keep, pa.int64())).to_pylist()
    return rows


@dataclass
class ReleaseResult:
    source: str
    day: dt.date
    rule: str | None
    rows_considered: int = 0
    rows_released: int = 0
    rows_still_quarantined: int = 0
    release_id: str | None = None
    validation_run_id: str | None = None
    message: str = ""
    still_failing: dict[str, int] = field(default_factory=dict)
    data_docs_url: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["day"] = self.day.isoformat()
        return d


def _row_ids(tbl: pa.Table) -> list[str]:
    return [
        f"{f}#{n}"
        for f, n in zip(
            tbl.column("_source_file").to_pylist(), tbl.column("_row_number").to_pylist(), strict=True
        )
    ]


def release(source: str, day: dt.date, rule: str | None = None, *, build_docs: bool = True) -> ReleaseResult:
    """Re-validate quarantined rows of (source, day) with the current rules; promote those that pass.

    Taken under the pipeline lock: a release rewrites silver and quarantine partitions that a
    concurrent run of the same date would also rewrite, and one of the two would silently win.
    """
    with lake.lock("ops", "pipeline"):
        return _release(source, day, rule, build_docs=build_docs)


def _release(source: str, day: dt.date, rule: str | None, *, build_docs: bool) -> ReleaseResult:
    src = get_source(source)
    res = ReleaseResult(src.name, day, rule)
    q = _read(src.name, day)
    if q.num_rows == 0:
        res.message = f"nothing quarantined for {src.name} {day.isoformat()}"
        return res
    reasons = q.column("_reasons").to_pylist()
    selected = [i for i, rs in enumerate(reasons) if any(rule_matches(r, rule) for r in rs or [])]
    res.rows_considered = len(selected)
    if not selected:
        res.rows_still_quarantined = q.num_rows
        res.message = f"no quarantined {src.name} row of {day.isoformat()} has reason {rule!r}"
        return res
    names = bronze_schema(src).names
    whole_batch = any(r.startswith("batch_rejected:") for rs in reasons for r in rs or [])

    if whole_batch:
        # The batch was rejected as a whole: judge it again as a whole batch (header, volume, drift,
        # share of failing rows), from the rows quarantine holds, which must be all of bronze D.
        n_bronze = storage.row_ids("bronze", src.name, [day]).num_rows
        if n_bronze != q.num_rows:
            res.message = (
                f"quarantine holds {q.num_rows} of the {n_bronze} bronze rows of a rejected batch: "
                f"re-run the date instead (asof run --date {day.isoformat()})"
            )
            res.rows_still_quarantined = q.num_rows
            return res
        ev = revalidate(src.name, day, q.select(names), whole_batch=True)
        res.validation_run_id = ev.run_id
        if ev.status != "succeeded":
            res.rows_still_quarantined = q.num_rows
            res.message = f"not released: {ev.message or ev.status}"
            _publish(ev, build_docs, res)
            return res
        write_split(ev)
        released = _row_ids(ev.batches.rows.take(pa.array(ev.to_silver(day), pa.int64())))
    else:
        ev = revalidate(
            src.name, day, q.take(pa.array(selected, pa.int64())).select(names), whole_batch=False
        )
        cand = ev.batches.rows
        res.validation_run_id = ev.run_id
        if ev.status == "failed":
            raise RuntimeError(f"release of {src.name} {day}: {ev.message}")
        good = np.flatnonzero(~ev.failing)
        if good.size == 0:
            res.rows_still_quarantined = q.num_rows
            res.still_failing = dict(Counter(r for rs in ev.row_reasons.values() for r in rs))
            res.message = f"nothing to release: all {len(selected)} row(s) still fail " + ", ".join(
                f"{k} {v}" for k, v in sorted(res.still_failing.items(), key=lambda kv: -kv[1])
            )
            _publish(ev, build_docs, res)
            return res
        promoted = storage.silver_rows(cand, ev.batches.typed, src, good, ev.run_id)
        released = _row_ids(cand.take(pa.array(good, pa.int64())))
        gone = set(released)
        keep = [i for i, rid in enumerate(_row_ids(q)) if rid not in gone]
        existing = lake.read("silver", src.name, days=[day], schema=silver_schema(src))
        new_silver = pa.concat_tables(
            [existing.select(promoted.schema.names).cast(promoted.schema), promoted]
        )
        new_q = _refresh_reasons(q.take(pa.array(keep, pa.int64())), cand, ev)
        # silver first: a crash in between leaves a row in both tables, which the conservation check
        # reports and a re-run of the date repairs; never a lost row
        storage.replace_partitions("silver", src, [day], new_silver, silver_schema(src))
        storage.replace_partitions("quarantine", src, [day], new_q, storage.quarantine_schema(src))

    try:
        _, n_silver, n_quarantine = storage.check_conservation(src.name, day)
    except storage.ConservationError as exc:
        _mark_failed(src.name, day, exc)
        raise
    res.rows_released = len(released)
    res.rows_still_quarantined = n_quarantine
    res.release_id = f"release-{day.isoformat()}-{src.name}-{uuid.uuid4().hex[:12]}"
    res.message = (
        f"released {len(released)} of {len(selected)} row(s) to silver; {n_quarantine} still quarantined"
    )
    if ev.row_reasons:
        left = Counter(r for i, rs in ev.row_reasons.items() for r in rs)
        res.still_failing = dict(left)
    _record_release(res, released)
    median = ev.silver_median(day) if whole_batch else None
    _refresh_validation_record(src.name, day, n_silver, n_quarantine, res, median)
    _publish(ev, build_docs, res)
    return res


def _mark_failed(source: str, day: dt.date, exc: Exception) -> None:
    """A release that broke conservation leaves the date's silver and quarantine inconsistent: the
    date is recorded as failed (its validate stage, for this source), so `asof status` says so and a
    backfill without --force reruns it, which rebuilds both partitions from bronze."""
    message = f"release: {type(exc).__name__}: {exc}; rerun the date (asof run --date {day.isoformat()})"
    runs.append(
        f"release-{uuid.uuid4().hex[:12]}",
        None,
        [runs.StageRecord(day, "validate", source, "failed", message=message)],
    )


def _refresh_reasons(remaining: pa.Table, cand: pa.Table, ev: Evaluation) -> pa.Table:
    """Rows that were re-validated and still fail get their current reasons (and the release's run id);
    rows outside the release's `rule` keep theirs."""
    current = {rid: (ev.reasons_for(i), ev.run_id) for i, rid in enumerate(_row_ids(cand))}
    reasons = remaining.column("_reasons").to_pylist()
    run_ids = remaining.column("_validation_run_id").to_pylist()
    for i, rid in enumerate(_row_ids(remaining)):
        if rid in current:
            reasons[i], run_ids[i] = current[rid]
    idx_r = remaining.schema.get_field_index("_reasons")
    remaining = remaining.set_column(idx_r, "_reasons", pa.array(reasons, pa.list_(pa.string())))
    idx_v = remaining.schema.get_field_index("_validation_run_id")
    return remaining.set_column(idx_v, "_validation_run_id", pa.array(run_ids, pa.string()))


def _publish(ev: Evaluation, build_docs: bool, res: ReleaseResult) -> None:
    from flows.config import settings

    rows_page, _ = ev.docs_paths()
    res.data_docs_url = (settings().docs_dir / rows_page).as_uri() if rows_page else None
    if build_docs:
        from flows.validation import datadocs

        try:
            datadocs.publish(ev.results)
        except Exception:  # a report, never a reason to fail a release
            import logging

            logging.getLogger(__name__).exception("Data Docs for the release failed")


def _record_release(res: ReleaseResult, released: list[str]) -> None:
    row = {
        "release_id": [res.release_id],
        "_batch_date": [res.day],
        "source": [res.source],
        "rule": [res.rule],
        "released_at": [dt.datetime.now(dt.UTC)],
        "rows_considered": [res.rows_considered],
        "rows_released": [res.rows_released],
        "rows_still_quarantined": [res.rows_still_quarantined],
        "released_rows": [released],
        "validation_run_id": [res.validation_run_id],
        "message": [res.message],
    }
    lake.append("ops", "releases", pa.table(row, schema=RELEASES_SCHEMA), schema=RELEASES_SCHEMA)


def read_releases(source: str | None = None, day: dt.date | None = None) -> list[dict]:
    if not lake.exists("ops", "releases"):
        return []
    rows = lake.read("ops", "releases", days=[day] if day else None).to_pylist()
    if source:
        rows = [r for r in rows if r["source"] == get_source(source).name]
    return sorted(rows, key=lambda r: r["released_at"])


def _refresh_validation_record(
    source: str, day: dt.date, n_silver: int, n_quarantine: int, res: ReleaseResult, median: float | None
) -> None:
    """Keep ops/validations in step with the partitions after a release."""
    previous = storage.read_validations(day, source)
    q = _read(source, day)
    counts = Counter(r for rs in q.column("_reasons").to_pylist() for r in rs or [])
    v = storage.SourceValidation(
        source,
        day,
        "succeeded",
        rows_bronze=n_silver + n_quarantine,
        rows_silver=n_silver,
        rows_quarantined=n_quarantine,
        reasons=dict(counts),
        warnings=previous[0]["warnings"] if previous else [],
        validation_run_id=res.validation_run_id,
        data_docs_path=previous[0]["data_docs_path"] if previous else None,
        message=f"{res.message} (release {res.release_id})",
    )
    if median is None and previous:
        median = previous[0]["amount_usd_median"]
    v.amount_usd_median = median
    storage.record([v])


def compact_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)
