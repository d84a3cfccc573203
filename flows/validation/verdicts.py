"""GE's results -> verdicts: the quarantine reasons of every row and the batch rules each date broke.

Nothing here decides whether a row or a batch is good: reasons come from the failing expectations'
`unexpected_index_list` (rows: the row labels; batches: the batch dates) and their `meta`. What is
computed here is the wording: observed against expected, per date, from the summary frame.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from flows.validation.contracts import (
    AMOUNT_USD_COL,
    FAILING_ROWS_COL,
    MALFORMED_FILES_COL,
    MEDIAN_COL,
    ROWS_COL,
    bound_col,
)

# one entry per rule, in a stable order of severity
REJECTION_ORDER = ["contract_broken", "volume", "amount_drift", "too_many_failing_rows"]


@dataclass
class DayVerdict:
    """The batch-level outcome of one source's batch date."""

    status: str = "succeeded"  # succeeded | rejected | failed
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (rule, message)
    warnings: list[str] = field(default_factory=list)
    message: str = ""

    @property
    def rejected_rule(self) -> str | None:
        return self.rejected[0][0] if self.rejected else None


def row_reasons(results: list[Any], index: pd.Index) -> tuple[dict[int, list[str]], list[str]]:
    """({row position: [reason, ...]}, errors) from the `<source>.rows` results; a row expectation
    that raised is an error (the rows could not be judged), never a pass."""
    reasons: dict[int, list[str]] = {}
    errors: list[str] = []
    for vr in results:
        for r in vr.results:
            meta = r.expectation_config.meta or {}
            if r.exception_info and r.exception_info.get("raised_exception"):
                errors.append(f"{meta.get('reason')}: {r.exception_info.get('exception_message')}")
                continue
            if r.success:
                continue
            labels = r.result.get("unexpected_index_list") or []
            positions = index.get_indexer(labels) if len(labels) else []
            if len(positions) and (np.asarray(positions) < 0).any():
                errors.append(f"{meta['reason']}: GE reported row labels that are not in the frame")
                continue
            for i in positions:
                reasons.setdefault(int(i), []).append(meta["reason"])
    # A line ingest could not split has no fields, so every not-null and parse rule fires on it too;
    # `malformed_row` alone says what happened (the line is kept whole in `_raw`).
    for i, rs in reasons.items():
        if "malformed_row" in rs:
            reasons[i] = [r for r in rs if not r.startswith(("null:", "unparseable:"))]
    return reasons, errors


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def bounds_text(lo: Any, hi: Any) -> str:
    lo = None if lo is None or (isinstance(lo, float) and np.isnan(lo)) else lo
    hi = None if hi is None or (isinstance(hi, float) and np.isnan(hi)) else hi
    if lo is not None and hi is not None:
        return f"between {_num(lo)} and {_num(hi)}"
    if lo is not None:
        return f"at least {_num(lo)}"
    if hi is not None:
        return f"at most {_num(hi)}"
    return "any value"


def _int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _describe(rule: str, meta: dict, row: pd.Series, context: dict) -> str:
    """Observed against expected, for one date that broke `rule`."""
    if rule == "contract_broken" and meta.get("check") == "header":
        return (
            f"missing columns {context['missing']}; file has {context['header']}, "
            f"contract requires {context['required']}"
        )
    if rule == "contract_broken" and meta.get("check") == "malformed":
        return "malformed file: " + row[MALFORMED_FILES_COL]
    if rule == "contract_broken":
        share = float(row[meta["share_column"]])
        return (
            f"{100 * share:.0f}% of {meta['column']} values are not parseable as "
            f"{meta.get('type', 'the contract type')} (at most {100 * meta['max_share']:.0f}% allowed)"
        )
    if rule in ("volume", "volume_warning"):
        lo, hi = _int(row[bound_col(rule, "min")]), _int(row[bound_col(rule, "max")])
        return f"{int(row[ROWS_COL])} rows, expected {bounds_text(lo, hi)}"
    if rule == "amount_drift":
        lo, hi = row[bound_col(rule, "min")], row[bound_col(rule, "max")]
        return f"median {AMOUNT_USD_COL} {float(row[MEDIAN_COL]):.2f}, expected {bounds_text(lo, hi)}"
    if rule == "too_many_failing_rows":
        n, n_fail = int(row[ROWS_COL]), int(row[FAILING_ROWS_COL])
        top = context["top_reasons"]
        return (
            f"{n_fail} of {n} rows ({100 * n_fail / n:.1f}%) fail row rules, at most "
            f"{100 * meta['max_share']:g}% allowed (top reasons: "
            + ", ".join(f"{k} {v}" for k, v in top)
            + ")"
        )
    if rule == "added_columns":
        return f"{sorted(context['added'])} not in the contract (kept in _extra)"
    return f"observed {row.get(meta.get('column', ROWS_COL))}"


def batch_verdicts(
    results: list[Any],
    summary: pd.DataFrame,
    days: list[dt.date],
    notes: dict[dt.date, dict[str, str]],
    context: dict[dt.date, dict[str, Any]],
) -> dict[dt.date, DayVerdict]:
    """Per date, the critical rules it broke (rejected) and its warnings, from `<source>.batches`."""
    out = {d: DayVerdict() for d in days}
    by_label = {d.isoformat(): d for d in days}
    broken: dict[dt.date, dict[str, list[str]]] = {d: {} for d in days}
    for vr in results:
        for r in vr.results:
            meta = r.expectation_config.meta or {}
            rule = meta.get("rule", "batch")
            severity = str(getattr(r.expectation_config, "severity", "critical") or "critical").lower()
            warning = severity.endswith("warning") or meta.get("severity") == "warning"
            if r.exception_info and r.exception_info.get("raised_exception"):
                for d in days:  # the check could not run for any date of the frame
                    text = f"{rule}: the check could not run ({r.exception_info.get('exception_message')})"
                    (out[d].warnings.append(text) if warning else broken[d].setdefault(rule, []).append(text))
                continue
            if r.success:
                continue
            for label in r.result.get("unexpected_index_list") or []:
                d = by_label[str(label)]
                text = _describe(rule, meta, summary.loc[str(label)], context[d])
                if rule in notes[d]:
                    text += f" ({notes[d][rule]})"
                if warning:
                    if f"{rule}: {text}" not in out[d].warnings:
                        out[d].warnings.append(f"{rule}: {text}")
                else:
                    broken[d].setdefault(rule, []).append(f"{rule}: {text}")
    for d in days:
        rules = broken[d]
        if "contract_broken" in rules:
            # a broken contract makes every row fail (a missing column is null everywhere): one cause
            rules.pop("too_many_failing_rows", None)
        v = out[d]
        v.rejected = sorted(
            ((rule, "; ".join(dict.fromkeys(texts))) for rule, texts in rules.items()),
            key=lambda x: REJECTION_ORDER.index(x[0]) if x[0] in REJECTION_ORDER else len(REJECTION_ORDER),
        )
        if "volume" in rules:
            v.warnings = [w for w in v.warnings if not w.startswith("volume_warning")]
        if v.rejected:
            v.status = "rejected"
            v.message = "batch rejected: " + " | ".join(text for _, text in v.rejected)
    return out
