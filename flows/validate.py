"""Validation: the bronze partition of a date -> Great Expectations -> silver + quarantine (SPEC section 6).

For each source (merchants, customers, transactions, chargebacks, in that order) and batch date D:

1. The ingest record (`ops/ingest_files`) says whether the batch was delivered and what the file
   header was. Not delivered -> status `not_delivered`, nothing written.
2. The bronze rows of D are parsed into a pandas frame: the raw text of every contract column plus
   *helper columns* that carry facts GE cannot compute itself (`<col>__parsed` the typed value,
   `<col>__unparseable` the raw text of a value that does not parse as the contract type,
   `<col>__known` a reference lookup, `_delivery` the first-delivery-wins verdict, `amount_usd`).
3. Two checkpoints of the File Data Context in `expectations/` run on it: `<source>.contract` on the
   file header, `<source>.rows` on the rows (`COMPLETE` result format). The suites hold every rule;
   each expectation's `meta` names the quarantine reason (`null:amount`, `too_late`, ...) or the batch
   rule (`volume`, `amount_drift`, ...). Nothing here decides whether a row is good: the split uses
   GE's own `unexpected_index_list`.
4. Batch rules: a failed critical batch-level expectation, a broken contract or more than
   `max_share` of rows failing row rules rejects the batch: every row goes to quarantine with
   `batch_rejected:<rule>` (plus its own row reasons) and nothing of D reaches silver. Warnings
   (added columns, volume outside 0.5x-2x) are recorded, not blocking.
5. Silver (typed) and quarantine partitions of D are replaced (one commit each) and conservation is
   checked: the (file, row) pairs of bronze D are exactly those of silver D plus quarantine D.

Timestamps: ISO-8601 with `Z` or an explicit offset (converted to UTC) are accepted; a timestamp
without a zone is ambiguous and quarantined as `naive_timestamp:<col>`.

Duplicates: the first delivery of a key wins (earliest `_batch_date`, then `_source_file`, then
`_row_number`); later identical copies are `duplicate`, different ones `conflicting_duplicate`. Earlier
deliveries are the silver rows of *earlier* batch dates (a rerun never sees itself) and the earlier
rows of the same batch. Within a batch the first row of a key wins even if it fails another rule.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import yaml

from flows import key_index, lake
from flows.config import REPO_ROOT, settings
from flows.sources import SOURCE_NAMES, Source, bronze_schema, get_source, silver_schema

log = logging.getLogger(__name__)

EXPECTATIONS_DIR = REPO_ROOT / "expectations"
CONTRACTS_DIR = EXPECTATIONS_DIR / "contracts"
# The dbt seed `fx_rates(currency, usd_rate)`: the currencies a transaction may use and their rates.
FX_SEED = REPO_ROOT / "dbt_project" / "seeds" / "fx_rates.csv"

# --------------------------------------------------------------------- names shared with the suites
# `expectations/build_suites.py` writes expectations against these column and parameter names.

DATASOURCE = "asof"
BATCH_DEFINITION = "whole_batch"
DELIVERY_COL = "_delivery"
PARSE_ERROR_COL = "_parse_error"
AMOUNT_USD_COL = "amount_usd"
PARAM_FX_CURRENCIES = "fx_currencies"

# Syntax of the contract types (a value must match and convert to be "parseable").
INT_RE = r"^-?[0-9]{1,18}$"
# SPEC 4: amounts are decimals with 2 dp. More significant places ("12.345") is not an amount the
# contract allows (it would be rounded silently); trailing zeros ("12.340") are the same value.
DECIMAL_RE = r"^-?(?:[0-9]+(?:\.[0-9]{0,2}0*)?|\.[0-9]{1,2}0*)$"
TIMESTAMP_RE = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?"
    r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?$"
)
NAIVE_TIMESTAMP_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?$"
DATE_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
TYPED = ("int", "decimal", "timestamp", "date")


def rows_suite(source: str) -> str:
    return f"{source}.rows"


def contract_suite(source: str) -> str:
    return f"{source}.contract"


def rows_asset(source: str) -> str:
    return f"{source}_rows"


def header_asset(source: str) -> str:
    return f"{source}_header"


def parsed_col(column: str) -> str:
    return f"{column}__parsed"


def unparseable_col(column: str) -> str:
    return f"{column}__unparseable"


def known_col(column: str) -> str:
    return f"{column}__known"


def param(rule: str, bound: str) -> str:
    """Name of a run-time expectation parameter, e.g. `too_late_min`, `volume_max`."""
    return f"{rule}_{bound}"


# ------------------------------------------------------------------------------------- contracts


@dataclass(frozen=True)
class ContractColumn:
    name: str
    type: str
    nullable: bool = False
    allowed: tuple[str, ...] | None = None
    allowed_from: str | None = None
    reason: str | None = None
    pattern: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Contract:
    source: str
    version: int
    format: str
    key: tuple[str, ...]
    empty_is_valid: bool
    columns: tuple[ContractColumn, ...]
    rules: tuple[dict, ...]
    batch: dict

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ContractColumn:
        return next(c for c in self.columns if c.name == name)

    def rules_of(self, kind: str) -> list[dict]:
        return [r for r in self.rules if r["kind"] == kind]


def contract_path(source: str) -> Path:
    return CONTRACTS_DIR / f"{get_source(source).name}.yml"


@cache
def _load_contract(path: str, mtime: float) -> Contract:
    raw = yaml.safe_load(Path(path).read_text())
    cols = tuple(
        ContractColumn(
            name=c["name"],
            type=c["type"],
            nullable=bool(c.get("nullable", False)),
            allowed=tuple(str(v) for v in c["allowed"]) if c.get("allowed") is not None else None,
            allowed_from=c.get("allowed_from"),
            reason=c.get("reason"),
            pattern=c.get("pattern"),
            description=c.get("description", ""),
        )
        for c in raw["columns"]
    )
    return Contract(
        source=raw["source"],
        version=int(raw["version"]),
        format=raw["format"],
        key=tuple(raw["key"]),
        empty_is_valid=bool(raw["empty_is_valid"]),
        columns=cols,
        rules=tuple(raw.get("rules") or ()),
        batch=dict(raw.get("batch") or {}),
    )


def load_contract(source: str) -> Contract:
    path = contract_path(source)
    return _load_contract(str(path), path.stat().st_mtime)


def load_fx_rates(path: Path | None = None) -> dict[str, float]:
    """The FX seed; created with the documented default rates if the dbt project has none yet."""
    path = Path(path or FX_SEED)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("currency,usd_rate\nUSD,1.0\nEUR,1.08\nGBP,1.27\n")
    with open(path, newline="") as fh:
        return {row["currency"].strip(): float(row["usd_rate"]) for row in csv.DictReader(fh)}


# ----------------------------------------------------------------------------------- GE context

_CTX_LOCK = threading.Lock()
_CONTEXTS: dict[str, Any] = {}
_CHECKPOINTS: dict[tuple[str, str], Any] = {}


def ge_context():
    """The File Data Context in `expectations/`, one per process and ASOF_HOME.

    Its validation results store and Data Docs site live under ASOF_HOME (`ge/validations`, `docs`):
    `great_expectations.yml` names them `${ASOF_HOME}/...`, resolved here through GE's runtime
    environment, so nothing is written into the repository at run time.
    """
    home = str(settings().home)
    with _CTX_LOCK:
        ctx = _CONTEXTS.get(home)
        if ctx is None:
            if not (EXPECTATIONS_DIR / "great_expectations.yml").exists():
                # never let GE scaffold a default project into the repository
                raise RuntimeError(
                    f"{EXPECTATIONS_DIR}/great_expectations.yml is missing: "
                    "run .venv/bin/python expectations/build_suites.py"
                )
            os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
            import great_expectations as gx

            ctx = gx.get_context(
                mode="file",
                context_root_dir=str(EXPECTATIONS_DIR),
                runtime_environment={"ASOF_HOME": home},
            )
            _CONTEXTS[home] = ctx
        return ctx


def _checkpoint(ctx, name: str):
    key = (str(id(ctx)), name)
    cp = _CHECKPOINTS.get(key)
    if cp is None:
        cp = _CHECKPOINTS[key] = ctx.checkpoints.get(name)
    return cp


def suite_hashes() -> dict[str, str]:
    """sha256 of every committed suite file (for training-set manifests, SPEC section 8)."""
    import hashlib

    out = {}
    for path in sorted((EXPECTATIONS_DIR / "expectations").rglob("*.json")):
        out[path.relative_to(EXPECTATIONS_DIR / "expectations").as_posix()] = hashlib.sha256(
            path.read_bytes()
        ).hexdigest()
    return out


# ------------------------------------------------------------------------------------- schemas

QUARANTINE_EXTRA_FIELDS = [
    pa.field("_reasons", pa.list_(pa.string())),
    pa.field("_validation_run_id", pa.string()),
    pa.field("_quarantined_at", pa.timestamp("us", tz="UTC")),
]


def quarantine_schema(source: Source) -> pa.Schema:
    """Bronze columns exactly as they arrived, plus every failed rule and the run that judged them."""
    return pa.schema(list(bronze_schema(source)) + QUARANTINE_EXTRA_FIELDS)


VALIDATIONS_SCHEMA = pa.schema(
    [
        pa.field("_batch_date", pa.date32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("rows_bronze", pa.int64()),
        pa.field("rows_silver", pa.int64()),
        pa.field("rows_quarantined", pa.int64()),
        pa.field("reasons", pa.string()),
        pa.field("warnings", pa.string()),
        pa.field("rejected_rule", pa.string()),
        pa.field("message", pa.string()),
        pa.field("validation_run_id", pa.string()),
        pa.field("data_docs_path", pa.string()),
        pa.field("amount_usd_median", pa.float64()),
        pa.field("validated_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


# ------------------------------------------------------------------------------------- results


class ConservationError(RuntimeError):
    """Rows were lost or duplicated between bronze and silver + quarantine."""


@dataclass
class SourceValidation:
    source: str
    day: dt.date
    status: str  # succeeded | rejected | failed | not_delivered
    rows_bronze: int = 0
    rows_silver: int = 0
    rows_quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    rejected_rule: str | None = None
    message: str = ""
    validation_run_id: str | None = None
    data_docs_url: str | None = None  # file:// URL of the rows validation page
    data_docs_path: str | None = None  # the same page, relative to the Data Docs root
    contract_docs_path: str | None = None
    elapsed_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    amount_usd_median: float | None = None  # of the rows sent to silver: the drift rule's history

    def to_dict(self) -> dict:
        d = asdict(self)
        d["day"] = self.day.isoformat()
        return d


# ------------------------------------------------------------------------------------ lake reads


Dates = tuple[dt.date | None, dt.date]  # the `_batch_date` partitions a read needs (first None: all up to)


def _dataset(layer: str, name: str, dates: Dates | None = None) -> ds.Dataset | None:
    """The table's Arrow dataset (only the files of `dates`), or None if the table does not exist
    (one Delta log replay, where `lake.exists` + `lake.read` cost two: it matters on tables with
    many small commits)."""
    try:
        return lake.dataset(layer, name, dates=dates)
    except lake.LakeError:
        return None


def _scan(
    layer: str, name: str, filter: ds.Expression | None, columns: list[str], dates: Dates | None = None
) -> pa.Table | None:
    dset = _dataset(layer, name, dates)
    return None if dset is None else dset.to_table(filter=filter, columns=columns)


# ------------------------------------------------------------------------------------- parsing


def _regex_mask(arr: pa.ChunkedArray | pa.Array, pattern: str) -> pa.Array:
    return pc.fill_null(pc.match_substring_regex(arr, pattern), False)


def _null_like(arr, type_: pa.DataType) -> pa.Array:
    return pa.nulls(len(arr), type_)


def _cast_or_coerce(values: pa.ChunkedArray, target: pa.DataType, fallback) -> pa.ChunkedArray:
    """Vectorised cast; if some syntactically valid value is still invalid (e.g. 2024-02-30), coerce
    element-wise through `fallback` (invalid -> null). The slow path only runs on bad data."""
    try:
        return pc.cast(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.chunked_array([fallback(values.combine_chunks()).cast(target)])


def _coerce_timestamps(arr: pa.Array) -> pa.Array:
    """Element-wise parse to timestamp[us, UTC], invalid -> null. pandas (datetime64[ns]) stops at
    1677-2262; a valid ISO time beyond that (9999-12-31, 0001-01-01) is still a time, parsed by
    Python, so the time rules judge it (future_event_time, too_late) instead of calling it
    unparseable."""
    s = pd.Series(arr.to_pandas(), dtype=object)
    parsed = pd.to_datetime(s, format="ISO8601", utc=True, errors="coerce").dt.floor("us")
    out: list[dt.datetime | None] = [None if pd.isna(t) else t.to_pydatetime() for t in parsed]
    for i, (text, t) in enumerate(zip(s, parsed, strict=True)):
        if isinstance(text, str) and pd.isna(t) and not 1678 <= int(text[:4]) <= 2261:
            out[i] = _parse_wide_timestamp(text)
    return pa.array(out, pa.timestamp("us", tz="UTC"))


def _parse_wide_timestamp(text: str) -> dt.datetime | None:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if value.tzinfo is None:  # naive values arrive with "Z" appended; keep the guard anyway
        value = value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        return None


def _coerce_dates(arr: pa.Array) -> pa.Array:
    s = pd.Series(arr.to_pandas(), dtype=object)
    out = pd.to_datetime(s, format="%Y-%m-%d", errors="coerce")
    return pa.array(out.dt.date, pa.date32(), from_pandas=True)


def parse_column(raw: pa.ChunkedArray, ctype: str) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """(typed values, raw text of the present values that are not parseable as `ctype`)."""
    if raw.num_chunks == 0:
        raw = pa.chunked_array([pa.array([], pa.string())])
    present = pc.is_valid(raw)
    if ctype in ("string", "enum"):
        return raw, pa.chunked_array([_null_like(raw, pa.string())])
    if ctype == "int":
        ok = _regex_mask(raw, INT_RE)
        typed = pc.cast(pc.if_else(ok, raw, pa.scalar(None, pa.string())), pa.int64())
    elif ctype == "decimal":
        ok = _regex_mask(raw, DECIMAL_RE)
        typed = pc.cast(pc.if_else(ok, raw, pa.scalar(None, pa.string())), pa.float64())
    elif ctype == "timestamp":
        ok = _regex_mask(raw, TIMESTAMP_RE)
        naive = _regex_mask(raw, NAIVE_TIMESTAMP_RE)
        # a naive value is parsed as if UTC so the time rules can still judge it; it is quarantined as
        # naive_timestamp anyway
        text = pc.if_else(naive, pc.binary_join_element_wise(raw, "Z", ""), raw)
        text = pc.if_else(ok, text, pa.scalar(None, pa.string()))
        try:
            ns = pc.cast(text, pa.timestamp("ns", tz="UTC"))
            typed = pc.cast(pc.floor_temporal(ns, unit="microsecond"), pa.timestamp("us", tz="UTC"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # bad or beyond-ns values: slow path
            typed = pa.chunked_array([_coerce_timestamps(text.combine_chunks())])
    elif ctype == "date":
        ok = _regex_mask(raw, DATE_RE)
        text = pc.if_else(ok, raw, pa.scalar(None, pa.string()))
        typed = _cast_or_coerce(text, pa.date32(), _coerce_dates)
    else:
        raise ValueError(f"unknown contract type {ctype!r}")
    bad = pc.and_(present, pc.is_null(typed))
    unparseable = pc.if_else(bad, raw, pa.scalar(None, pa.string()))
    if isinstance(typed, pa.Array):
        typed = pa.chunked_array([typed])
    if isinstance(unparseable, pa.Array):
        unparseable = pa.chunked_array([unparseable])
    return typed, unparseable


def _as_text(arr: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_string(arr.type):
        return arr
    return pc.cast(arr, pa.string())


def _join(columns: list[pa.ChunkedArray], fill: str | None) -> pa.ChunkedArray:
    texts = [_as_text(c) for c in columns]
    if fill is not None:
        texts = [pc.fill_null(t, fill) for t in texts]
    if len(texts) == 1:
        return texts[0]
    return pc.binary_join_element_wise(*texts, "\x1f")


def key_and_signature(typed: dict[str, pa.ChunkedArray], contract: Contract) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the key (None if a key part is missing) and the content signature (all other columns,
    typed, so `12.5` and `12.50` are the same content)."""
    key = _join([typed[k] for k in contract.key], None)
    rest = [c for c in contract.column_names if c not in contract.key]
    sig = _join([typed[c] for c in rest], "\x00")
    return (
        np.asarray(key.to_pandas(), dtype=object),
        np.asarray(sig.to_pandas(), dtype=object),
    )


# ------------------------------------------------------------------------------------- the batch


@dataclass
class _Batch:
    """One source's rows for one batch date, in a stable order (file, row number)."""

    source: Source
    contract: Contract
    day: dt.date
    rows: pa.Table  # bronze columns
    typed: dict[str, pa.ChunkedArray]
    unparseable: dict[str, pa.ChunkedArray]
    frame: pd.DataFrame | None = None
    amount_usd_median: float | None = None

    @property
    def n(self) -> int:
        return self.rows.num_rows


def _bronze_rows(source: Source, day: dt.date) -> pa.Table:
    names = bronze_schema(source).names
    tbl = _scan("bronze", source.name, lake.date_filter("_batch_date", [day]), names, (day, day))
    if tbl is None:
        tbl = bronze_schema(source).empty_table()
    return _ordered(tbl.select(names).cast(bronze_schema(source)))


def _ordered(tbl: pa.Table) -> pa.Table:
    if tbl.num_rows == 0:
        return tbl
    return tbl.sort_by([("_source_file", "ascending"), ("_row_number", "ascending")])


def _prepare(source: Source, contract: Contract, day: dt.date, rows: pa.Table) -> _Batch:
    typed, unparseable = {}, {}
    for col in contract.columns:
        typed[col.name], unparseable[col.name] = parse_column(rows.column(col.name), col.type)
    return _Batch(source, contract, day, rows, typed, unparseable)


def _silver_filter(day: dt.date, include_day: bool, lookback_days: int | None) -> ds.Expression:
    upper = ds.field("_batch_date") <= pa.scalar(day, pa.date32())
    if not include_day:
        upper = ds.field("_batch_date") < pa.scalar(day, pa.date32())
    if lookback_days:
        lower = ds.field("_batch_date") >= pa.scalar(day - dt.timedelta(days=lookback_days), pa.date32())
        return upper & lower
    return upper


def _known(batch: _Batch, rule: dict, day: dt.date) -> np.ndarray:
    """`<column>__known`: True if the value exists in silver/<table> with `_batch_date <= D`."""
    col, table, key = rule["column"], rule["table"], rule["table_key"]
    values = batch.typed[col]
    out = np.full(batch.n, None, dtype=object)
    present = pc.is_valid(values).to_numpy(zero_copy_only=False)
    if not present.any():
        return out
    flt = _silver_filter(day, include_day=True, lookback_days=None)
    dset = _dataset("silver", table, (None, day))
    found = pa.array([], values.type)
    if dset is not None:  # inside a range, through the hashes of each history file
        found = key_index.present(dset, key, values.combine_chunks(), flt)
    hit = pc.is_in(values, value_set=found).to_numpy(zero_copy_only=False)
    out[present] = hit[present]
    return out


def _delivery(batch: _Batch, rule: dict, day: dt.date, include_day: bool) -> np.ndarray:
    """`_delivery`: first | duplicate | conflicting_duplicate (None when the key is incomplete).

    Keys are compared in Arrow; content signatures are only built for the rows whose key occurs more
    than once (in the batch or in an earlier delivery), a handful of rows on a normal day."""
    contract = batch.contract
    key = _join([batch.typed[k] for k in contract.key], None).combine_chunks()
    has_key = pc.is_valid(key).to_numpy(zero_copy_only=False)
    out = np.full(batch.n, None, dtype=object)
    if not has_key.any():
        return out
    out[has_key] = "first"
    counts = pc.value_counts(pc.drop_null(key))
    repeated_keys = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    involved_mask = pc.fill_null(pc.is_in(key, value_set=repeated_keys), False).to_numpy(zero_copy_only=False)
    first_earlier: dict[str, str] = {}
    if rule.get("across_batches"):
        earlier = _earlier_deliveries(batch, rule, day, include_day)
        if earlier is not None and earlier.num_rows:
            e_key, e_sig = key_and_signature({c: earlier.column(c) for c in contract.column_names}, contract)
            for k, s in zip(e_key, e_sig, strict=True):  # earliest first: keep the first of each key
                if k is not None and k not in first_earlier:
                    first_earlier[k] = s
            seen = pc.is_in(key, value_set=pa.array(list(first_earlier), pa.string()))
            involved_mask |= pc.fill_null(seen, False).to_numpy(zero_copy_only=False)
    involved = np.flatnonzero(involved_mask)
    if involved.size == 0:
        return out
    idx = pa.array(involved, pa.int64())
    sub_key, sig = key_and_signature(
        {c: pc.take(batch.typed[c], idx) for c in contract.column_names}, contract
    )
    sub = pd.DataFrame({"key": sub_key, "sig": sig})
    first_sig = sub.groupby("key", sort=False)["sig"].transform("first").to_numpy(dtype=object)
    is_first = ~sub["key"].duplicated(keep="first").to_numpy()
    verdict = np.where(is_first, "first", np.where(sig == first_sig, "duplicate", "conflicting_duplicate"))
    prior = np.array([first_earlier.get(k) for k in sub_key], dtype=object)
    before = pd.notna(prior)
    verdict = np.where(before, np.where(sig == prior, "duplicate", "conflicting_duplicate"), verdict)
    out[involved] = verdict
    return out


def _earlier_deliveries(batch: _Batch, rule: dict, day: dt.date, include_day: bool) -> pa.Table | None:
    """Silver rows of earlier batch dates sharing a key's lead column with this batch, in delivery
    order. Two passes: the lead column alone over the look-back window (cheap), then every column only
    from the batch dates that have a match (a scan filtered on a string set would read every column
    of every date)."""
    contract = batch.contract
    lead = contract.key[0]
    name = batch.source.name
    wanted = pc.unique(pc.drop_null(batch.typed[lead].combine_chunks()))
    window = _silver_filter(day, include_day, rule.get("lookback_days"))
    lookback = rule.get("lookback_days")
    dset = _dataset("silver", name, (day - dt.timedelta(days=lookback) if lookback else None, day))
    if dset is None:
        return None
    cols = contract.column_names + ["_batch_date", "_source_file", "_row_number"]
    if key_index.active():  # a range of dates: read only the files that may hold one of the keys
        part, leads = key_index.narrow(dset, lead, wanted, window)
        if len(leads) == 0:
            return None
        earlier = part.to_table(filter=window & ds.field(lead).isin(leads), columns=cols)
        return earlier.sort_by(
            [("_batch_date", "ascending"), ("_source_file", "ascending"), ("_row_number", "ascending")]
        )
    ids = dset.to_table(filter=window, columns=[lead, "_batch_date"])
    matched = ids.filter(pc.is_in(ids.column(lead), value_set=wanted))
    if matched.num_rows == 0:
        return None
    dates = pc.unique(matched.column("_batch_date").combine_chunks())
    leads = pc.unique(matched.column(lead).combine_chunks())
    earlier = dset.to_table(
        filter=ds.field("_batch_date").isin(dates) & ds.field(lead).isin(leads), columns=cols
    )
    return earlier.sort_by(
        [("_batch_date", "ascending"), ("_source_file", "ascending"), ("_row_number", "ascending")]
    )


def _amount_usd(batch: _Batch, fx: dict[str, float]) -> np.ndarray:
    amount = batch.typed["amount"].to_numpy().astype(float, copy=False)
    currency = batch.typed["currency"].to_pandas()
    rate = currency.map(fx).to_numpy(dtype=float, na_value=np.nan)
    return amount * rate


_SUITE_COLUMNS: dict[tuple[str, str], frozenset[str]] = {}


def suite_columns(suite_name: str) -> frozenset[str]:
    """Columns the suite's expectations read (GE copies the whole frame per metric: keep it narrow)."""
    ctx = ge_context()
    key = (str(id(ctx)), suite_name)
    cols = _SUITE_COLUMNS.get(key)
    if cols is None:
        suite = ctx.suites.get(suite_name)
        cols = frozenset(
            e.configuration.kwargs["column"]
            for e in suite.expectations
            if e.configuration.kwargs.get("column")
        )
        _SUITE_COLUMNS[key] = cols
    return cols


def _frame(batch: _Batch, day: dt.date, fx: dict[str, float], include_day_silver: bool) -> pd.DataFrame:
    """The pandas frame GE validates: the raw contract columns and the helper columns the suite uses."""
    contract = batch.contract
    needed = suite_columns(rows_suite(batch.source.name))
    data: dict[str, Any] = {}
    for col in contract.columns:
        if col.name in needed:
            data[col.name] = batch.rows.column(col.name).to_pandas()
        if unparseable_col(col.name) in needed:
            data[unparseable_col(col.name)] = batch.unparseable[col.name].to_pandas()
        if parsed_col(col.name) in needed:
            typed = batch.typed[col.name]
            if col.type == "int":
                data[parsed_col(col.name)] = typed.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
            elif col.type == "date":
                data[parsed_col(col.name)] = pd.Series(typed.to_pandas(), dtype=object)
            else:
                data[parsed_col(col.name)] = typed.to_pandas()
    if PARSE_ERROR_COL in needed:
        data[PARSE_ERROR_COL] = batch.rows.column("_parse_error").to_pandas()
    for rule in contract.rules_of("reference"):
        if known_col(rule["column"]) in needed:
            data[known_col(rule["column"])] = _known(batch, rule, day)
    for rule in contract.rules_of("first_delivery_wins"):
        if DELIVERY_COL in needed:
            data[DELIVERY_COL] = _delivery(batch, rule, day, include_day_silver)
    if "drift" in contract.batch:
        usd = _amount_usd(batch, fx)
        if AMOUNT_USD_COL in needed:
            data[AMOUNT_USD_COL] = usd
        finite = usd[np.isfinite(usd)]
        batch.amount_usd_median = float(np.median(finite)) if finite.size else None
    # The frame's index is what Data Docs lists as a failing row's "Index": the row's line number in
    # the delivered file when that is unambiguous (one file per batch, the normal case), otherwise its
    # position in the batch (ordered by file, then row number).
    row_numbers = batch.rows.column("_row_number").to_numpy()
    unique = batch.n and pd.Index(row_numbers).is_unique
    index = pd.Index(row_numbers) if unique else pd.RangeIndex(batch.n)
    frame = pd.DataFrame(data)  # columns share the default 0..n-1 index: build, then relabel
    frame.index = index
    return frame


# ----------------------------------------------------------------------------- batch parameters


def _iso(ts: dt.datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def _trailing_counts(source: Source, day: dt.date, days: int) -> list[int]:
    """Landed (bronze) row counts of the previous `days` batch dates that delivered rows."""
    start = day - dt.timedelta(days=days)
    flt = (ds.field("_batch_date") >= pa.scalar(start, pa.date32())) & (
        ds.field("_batch_date") < pa.scalar(day, pa.date32())
    )
    got = _scan("bronze", source.name, flt, ["_batch_date"], (start, day))
    dates = got.column("_batch_date") if got is not None else []
    if len(dates) == 0:
        return []
    counts = pc.value_counts(dates.combine_chunks())
    return [int(c) for c in counts.field("counts").to_pylist() if c > 0]


def _trailing_amount_median(day: dt.date, days: int, fx: dict[str, float]) -> tuple[float | None, int]:
    """Trailing median amount_usd of silver transactions over the previous `days` batch dates, and how
    many batch dates that history covers.

    It is the median of the daily silver medians recorded in `ops/validations` (one number per
    accepted batch), so the cost does not grow with the data; rejected batches do not count. When
    the window has no record at all (a lake validated by something else, or the first date) it
    falls back to scanning silver.
    """
    start = day - dt.timedelta(days=days)
    flt = (
        (ds.field("_batch_date") >= pa.scalar(start, pa.date32()))
        & (ds.field("_batch_date") < pa.scalar(day, pa.date32()))
        & (ds.field("source") == "transactions")
    )
    rec = _scan("ops", "validations", flt, ["status", "amount_usd_median", "_batch_date"], (start, day))
    if rec is not None and rec.num_rows:
        meds = [
            m
            for s, m in zip(
                rec.column("status").to_pylist(), rec.column("amount_usd_median").to_pylist(), strict=True
            )
            if s == "succeeded" and m is not None and np.isfinite(m)
        ]
        return (float(np.median(meds)) if meds else None), len(meds)
    flt = (ds.field("_batch_date") >= pa.scalar(start, pa.date32())) & (
        ds.field("_batch_date") < pa.scalar(day, pa.date32())
    )
    tbl = _scan("silver", "transactions", flt, ["amount", "currency", "_batch_date"], (start, day))
    if tbl is None or tbl.num_rows == 0:
        return None, 0
    n_days = len(pc.unique(tbl.column("_batch_date").combine_chunks()))
    rates = pa.array(list(fx.values()), pa.float64())
    idx = pc.index_in(tbl.column("currency"), value_set=pa.array(list(fx.keys()), pa.string()))
    usd = pc.multiply(tbl.column("amount"), pc.take(rates, idx)).to_numpy(zero_copy_only=False)
    usd = usd[np.isfinite(usd)]
    return (float(np.median(usd)) if usd.size else None), n_days


@dataclass
class _Expected:
    params: dict[str, Any]
    notes: dict[str, str]  # rule -> how the bounds were derived (for messages)


def _parameters(batch: _Batch, day: dt.date, fx: dict[str, float], full_batch: bool) -> _Expected:
    contract = batch.contract
    p: dict[str, Any] = {PARAM_FX_CURRENCIES: sorted(fx)}
    notes: dict[str, str] = {}
    for rule in contract.rules_of("not_before_batch"):
        p[param(rule["id"], "min")] = _iso(_midnight(day - dt.timedelta(days=int(rule["days"]))))
    for rule in contract.rules_of("before_next_day"):
        p[param(rule["id"], "max")] = _iso(_midnight(day + dt.timedelta(days=1)))
    vol = contract.batch.get("volume", {})
    p[param("volume", "min")], p[param("volume", "max")] = int(vol.get("min_rows", 0)), None
    if "trailing_days" in vol:
        p[param("volume_warning", "min")], p[param("volume_warning", "max")] = None, None
    drift = contract.batch.get("drift")
    if drift:
        p[param("amount_drift", "min")], p[param("amount_drift", "max")] = None, None
    if not full_batch:
        # releasing a subset of a batch: table-level rules judged the whole batch already
        p[param("volume", "min")] = 0
        return _Expected(p, notes)
    if "trailing_days" in vol:
        counts = _trailing_counts(batch.source, day, int(vol["trailing_days"]))
        if counts:
            med = float(np.median(counts))
            p[param("volume", "min")] = max(int(vol.get("min_rows", 0)), int(np.ceil(vol["min_ratio"] * med)))
            p[param("volume", "max")] = int(np.floor(vol["max_ratio"] * med))
            p[param("volume_warning", "min")] = int(np.ceil(vol["warn_min_ratio"] * med))
            p[param("volume_warning", "max")] = int(np.floor(vol["warn_max_ratio"] * med))
            notes["volume"] = (
                f"{vol['min_ratio']:g}x-{vol['max_ratio']:g}x of the trailing median {med:g} "
                f"over {len(counts)} batch(es)"
            )
            notes["volume_warning"] = (
                f"{vol['warn_min_ratio']:g}x-{vol['warn_max_ratio']:g}x of the trailing median {med:g}"
            )
        else:
            notes["volume"] = "no earlier batches: only the minimum applies"
    if drift and batch.amount_usd_median is None:
        notes["amount_drift"] = "not checked: no amount in the batch can be converted to USD"
    elif drift:
        med, n_days = _trailing_amount_median(day, int(drift["trailing_days"]), fx)
        if med is not None and n_days >= int(drift["min_history_days"]):
            p[param("amount_drift", "min")] = round(drift["min_ratio"] * med, 6)
            p[param("amount_drift", "max")] = round(drift["max_ratio"] * med, 6)
            notes["amount_drift"] = (
                f"{drift['min_ratio']:g}x-{drift['max_ratio']:g}x of the trailing "
                f"{drift['trailing_days']}-day "
                f"median {med:.2f} over {n_days} batch dates"
            )
        else:
            notes["amount_drift"] = (
                f"not checked: {n_days} batch date(s) of history, {drift['min_history_days']} needed"
            )
    return _Expected(p, notes)


# ------------------------------------------------------------------------------------ headers


@dataclass
class _Delivery:
    delivered: bool
    header: list[str]  # columns seen in the delivered file(s)
    malformed: list[str]  # messages of malformed files
    message: str = ""


def _delivery_info(source: Source, day: dt.date, rows: pa.Table) -> _Delivery:
    """What ingest recorded about the files of (source, day)."""
    records = _file_records(day, source)
    contract_cols = source.column_names
    if not records:
        if rows.num_rows == 0:
            return _Delivery(False, [], [], f"not delivered: no ingest record and no bronze rows for {day}")
        return _Delivery(True, contract_cols + _extra_keys(rows), [])
    if all(r["status"] == "not_delivered" for r in records):
        msg = "; ".join(r["message"] or r["file"] for r in records)
        return _Delivery(False, [], [], msg or f"not delivered: no file for {day}")
    malformed = [f"{r['file']}: {r['message']}" for r in records if r["status"] == "malformed"]
    headers = [r["header"] for r in records if r["status"] == "ok" and r["header"] is not None]
    if not headers:
        # e.g. an empty CDC file: nothing to judge the columns by
        return _Delivery(True, contract_cols, malformed)
    in_all = set.intersection(*(set(h) for h in headers))
    seen: dict[str, None] = {}
    for h in headers:
        for c in h:
            seen.setdefault(c, None)
    header = [c for c in seen if c in in_all or c not in contract_cols]
    return _Delivery(True, header, malformed)


def _file_records(day: dt.date, source: Source) -> list[dict]:
    """Ingest's outcome per landed file (`ops/ingest_files`, see flows.ingest), header decoded."""
    flt = lake.date_filter("_batch_date", [day]) & (ds.field("source") == source.name)
    tbl = _scan("ops", "ingest_files", flt, ["file", "status", "header", "message"], (day, day))
    records = tbl.to_pylist() if tbl is not None else []
    for r in records:
        r["header"] = json.loads(r["header"]) if r["header"] else None
    return records


def _extra_keys(rows: pa.Table) -> list[str]:
    keys: dict[str, None] = {}
    extra = pc.drop_null(rows.column("_extra")).to_pylist()
    for text in extra[:1000]:
        try:
            for k in json.loads(text):
                keys.setdefault(k, None)
        except (ValueError, TypeError):
            continue
    return list(keys)


# --------------------------------------------------------------------------------- evaluation


@dataclass
class _Evaluation:
    batch: _Batch
    status: str  # succeeded | rejected | failed
    run_id: str
    run_time: dt.datetime
    failing: np.ndarray  # bool per row: fails at least one row rule
    row_reasons: dict[int, list[str]]
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (rule, message)
    warnings: list[str] = field(default_factory=list)
    result_keys: list[Any] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)  # ExpectationSuiteValidationResult
    message: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def rejected_rule(self) -> str | None:
        return self.rejected[0][0] if self.rejected else None

    def reasons_for(self, i: int) -> list[str]:
        batch = [f"batch_rejected:{r}" for r, _ in self.rejected]
        return batch + self.row_reasons.get(i, [])


def _bounds_text(kwargs: dict) -> str:
    lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
    if lo is not None and hi is not None:
        return f"between {lo:g} and {hi:g}" if isinstance(lo, (int, float)) else f"between {lo} and {hi}"
    if lo is not None:
        return f"at least {lo:g}" if isinstance(lo, (int, float)) else f"at least {lo}"
    if hi is not None:
        return f"at most {hi:g}" if isinstance(hi, (int, float)) else f"at most {hi}"
    return "any value"


def _observed(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _tidy_malformed(reasons: dict[int, list[str]]) -> dict[int, list[str]]:
    """A line ingest could not split has no fields, so every not-null and parse rule fires on it too;
    `malformed_row` alone says what happened (the line is kept whole in `_raw`)."""
    for i, rs in reasons.items():
        if "malformed_row" in rs:
            reasons[i] = [r for r in rs if not r.startswith(("null:", "unparseable:"))]
    return reasons


def _describe_batch_failure(r, notes: dict[str, str], n_rows: int) -> tuple[str, str]:
    meta = r.expectation_config.meta or {}
    rule = meta.get("rule", "batch")
    kwargs = r.expectation_config.kwargs
    res = r.result or {}
    if r.exception_info and r.exception_info.get("raised_exception"):
        return rule, f"{rule}: the check could not run ({r.exception_info.get('exception_message')})"
    etype = r.expectation_config.type
    if etype == "expect_table_row_count_to_be_between":
        text = f"{res.get('observed_value')} rows, expected {_bounds_text(kwargs)}"
    elif etype == "expect_column_median_to_be_between":
        observed = _observed(res.get("observed_value"))
        text = f"median {kwargs['column']} {observed}, expected {_bounds_text(kwargs)}"
    elif etype == "expect_column_values_to_be_null":
        column = meta.get("column", kwargs.get("column"))
        share = res.get("unexpected_percent")
        text = (
            f"{share:.0f}% of {column} values are not parseable as {meta.get('type', 'the contract type')} "
            f"(at most {100 * (1 - kwargs.get('mostly', 1)):.0f}% allowed)"
        )
    elif etype == "expect_table_columns_to_match_set":
        mismatched = (res.get("details") or {}).get("mismatched") or {}
        text = (
            f"missing columns {mismatched.get('missing', [])}; file has {res.get('observed_value')}, "
            f"contract requires {sorted(kwargs.get('column_set') or [])}"
        )
    else:
        text = f"observed {res.get('observed_value')}"
    if rule in notes:
        text += f" ({notes[rule]})"
    return rule, f"{rule}: {text}"


def _evaluate(
    batch: _Batch,
    delivery: _Delivery,
    fx: dict[str, float],
    *,
    full_batch: bool = True,
    include_day_silver: bool = False,
    run_label: str = "",
) -> _Evaluation:
    """Run the contract and rows checkpoints on one batch and derive every verdict from GE's results."""
    from great_expectations.core.run_identifier import RunIdentifier

    source, contract, day = batch.source, batch.contract, batch.day
    ctx = ge_context()
    run_time = dt.datetime.now(dt.UTC)
    run_name = f"{day.isoformat()}-{source.name}{'-' + run_label if run_label else ''}"
    run_id = f"{run_name}-{run_time:%Y%m%dT%H%M%S%fZ}"
    ge_run = RunIdentifier(run_name=run_id, run_time=run_time)
    ev = _Evaluation(batch, "succeeded", run_id, run_time, np.zeros(batch.n, dtype=bool), {})

    t0 = time.perf_counter()
    batch.frame = _frame(batch, day, fx, include_day_silver)
    t1 = time.perf_counter()
    expected = _parameters(batch, day, fx, full_batch)
    t2 = time.perf_counter()
    ev.timings.update(frame=t1 - t0, parameters=t2 - t1)

    runs: list[tuple[str, pd.DataFrame, dict]] = []
    if full_batch:
        runs.append((contract_suite(source.name), pd.DataFrame(columns=delivery.header), {}))
    runs.append((rows_suite(source.name), batch.frame, expected.params))
    for name, frame, params in runs:
        out = _checkpoint(ctx, name).run(
            batch_parameters={"dataframe": frame}, expectation_parameters=params, run_id=ge_run
        )
        for key, vr in out.run_results.items():
            ev.result_keys.append(key)
            ev.results.append(vr)

    ev.timings["great_expectations"] = time.perf_counter() - t2
    if delivery.malformed:
        ev.rejected.append(
            ("contract_broken", "contract_broken: malformed file: " + "; ".join(delivery.malformed))
        )

    reasons: dict[int, list[str]] = {}
    errors: list[str] = []
    for vr in ev.results:
        for r in vr.results:
            meta = r.expectation_config.meta or {}
            level = meta.get("level", "row")
            raised = bool(r.exception_info and r.exception_info.get("raised_exception"))
            if level == "row":
                if raised:
                    errors.append(f"{meta.get('reason')}: {r.exception_info.get('exception_message')}")
                    continue
                if r.success:
                    continue
                reason = meta["reason"]
                labels = r.result.get("unexpected_index_list") or []
                positions = batch.frame.index.get_indexer(labels) if len(labels) else []
                if len(positions) and (np.asarray(positions) < 0).any():
                    errors.append(f"{reason}: GE reported row labels that are not in the batch")
                    continue
                for i in positions:
                    reasons.setdefault(int(i), []).append(reason)
            elif not r.success:
                kw = r.expectation_config.kwargs
                if (
                    "min_value" in kw
                    and "max_value" in kw
                    and kw["min_value"] is None
                    and kw["max_value"] is None
                ):
                    continue  # bounds not set for this run (no history / nothing to measure): not checked
                rule, text = _describe_batch_failure(r, expected.notes, batch.n)
                severity = str(getattr(r.expectation_config, "severity", "critical") or "critical").lower()
                if severity.endswith("warning") or meta.get("severity") == "warning":
                    if rule == "added_columns":
                        mism = ((r.result or {}).get("details") or {}).get("mismatched") or {}
                        added = mism.get("unexpected") or []
                        if added:
                            ev.warnings.append(
                                f"added_columns: {sorted(added)} not in the contract (kept in _extra)"
                            )
                    else:
                        ev.warnings.append(text)
                else:
                    ev.rejected.append((rule, text))
    if errors:
        ev.status = "failed"
        ev.message = "validation could not evaluate row rules: " + "; ".join(errors[:3])
        return ev

    ev.row_reasons = _tidy_malformed(reasons)
    if reasons:
        ev.failing[np.fromiter(reasons.keys(), dtype=np.int64)] = True
    fr = contract.batch.get("failing_rows") or {}
    ignored = set(fr.get("ignore", ()))
    n_fail = sum(1 for rs in reasons.values() if any(r not in ignored for r in rs))
    contract_broken = any(rule == "contract_broken" for rule, _ in ev.rejected)
    # a broken contract makes every row fail (a missing column is null everywhere): one cause, one rule
    if (
        full_batch
        and fr
        and not contract_broken
        and batch.n
        and n_fail > fr["max_share"] * batch.n
        and n_fail >= fr.get("min_rows", 1)
    ):
        top = Counter(x for rs in reasons.values() for x in rs if x not in ignored).most_common(3)
        ev.rejected.append(
            (
                "too_many_failing_rows",
                f"too_many_failing_rows: {n_fail} of {batch.n} rows ({100 * n_fail / batch.n:.1f}%) fail row "
                f"rules, at most {100 * fr['max_share']:g}% allowed (top reasons: "
                + ", ".join(f"{k} {v}" for k, v in top)
                + ")",
            )
        )
    # one entry per rule, in a stable order of severity
    order = ["contract_broken", "volume", "amount_drift", "too_many_failing_rows"]
    merged: dict[str, list[str]] = {}
    for rule, text in ev.rejected:
        merged.setdefault(rule, []).append(text)
    ev.rejected = sorted(
        ((rule, "; ".join(dict.fromkeys(texts))) for rule, texts in merged.items()),
        key=lambda x: order.index(x[0]) if x[0] in order else len(order),
    )
    if any(rule == "volume" for rule, _ in ev.rejected):
        ev.warnings = [w for w in ev.warnings if not w.startswith("volume_warning")]
    if ev.rejected:
        ev.status = "rejected"
        ev.message = "batch rejected: " + " | ".join(text for _, text in ev.rejected)
    return ev


# ------------------------------------------------------------------------------------- writing


def _take(tbl: pa.Table, idx: np.ndarray) -> pa.Table:
    return tbl.take(pa.array(idx, pa.int64()))


def silver_rows(batch: _Batch, idx: np.ndarray, run_id: str) -> pa.Table:
    schema = silver_schema(batch.source)
    idx_arr = pa.array(idx, pa.int64())
    cols: dict[str, Any] = {}
    for f in schema:
        if f.name in batch.typed:
            cols[f.name] = pc.take(batch.typed[f.name], idx_arr)
        elif f.name == "_validation_run_id":
            cols[f.name] = pa.array([run_id] * len(idx), pa.string())
        else:
            cols[f.name] = pc.take(batch.rows.column(f.name), idx_arr)
    return pa.table(cols).cast(schema)


def quarantine_rows(
    batch: _Batch, idx: np.ndarray, reasons: list[list[str]], run_id: str, now: dt.datetime
) -> pa.Table:
    base = _take(batch.rows.select(bronze_schema(batch.source).names), idx)
    base = base.append_column("_reasons", pa.array(reasons, pa.list_(pa.string())))
    base = base.append_column("_validation_run_id", pa.array([run_id] * len(idx), pa.string()))
    base = base.append_column("_quarantined_at", pa.array([now] * len(idx), pa.timestamp("us", tz="UTC")))
    return base.cast(quarantine_schema(batch.source))


def _row_ids(layer: str, source: str, day: dt.date) -> pa.Table:
    got = _scan(
        layer, source, lake.date_filter("_batch_date", [day]), ["_source_file", "_row_number"], (day, day)
    )
    if got is None:
        return pa.table({"_source_file": pa.array([], pa.string()), "_row_number": pa.array([], pa.int64())})
    return got


def _row_keys(tables: list[pa.Table]) -> list[np.ndarray]:
    """(file, row number) of each table's rows as int64 keys, with one file dictionary for all."""
    files = pa.chunked_array([c for t in tables for c in t.column("_source_file").chunks], type=pa.string())
    codes = (
        pc.dictionary_encode(files).combine_chunks().indices.to_numpy(zero_copy_only=False).astype(np.int64)
    )
    out, start = [], 0
    for t in tables:
        n = t.num_rows
        rows = t.column("_row_number").to_numpy().astype(np.int64, copy=False) if n else np.zeros(0, np.int64)
        out.append((codes[start : start + n] << 32) | rows)
        start += n
    return out


def check_conservation(source: str, day: dt.date) -> tuple[int, int, int]:
    """bronze D == silver D + quarantine D, row for row ((file, row number) pairs). Raises on violation."""
    tables = [_row_ids(layer, source, day) for layer in ("bronze", "silver", "quarantine")]
    nb, ns, nq = (t.num_rows for t in tables)
    problems = []
    if nb != ns + nq:
        problems.append(f"bronze has {nb} rows, silver {ns} + quarantine {nq} = {ns + nq}")
    else:
        kb, ks, kq = _row_keys(tables)
        both = np.sort(np.concatenate([ks, kq]))
        if both.size and (both[1:] == both[:-1]).any():
            problems.append(
                f"{int((both[1:] == both[:-1]).sum())} row(s) are in silver and quarantine at once"
            )
        elif not np.array_equal(both, np.sort(kb)):
            problems.append("silver + quarantine rows are not the bronze rows")
    if problems:
        raise ConservationError(
            f"conservation violated for {source} {day.isoformat()}: " + "; ".join(problems)
        )
    return nb, ns, nq


def _replace_partition(layer: str, source: Source, day: dt.date, data: pa.Table, schema: pa.Schema) -> None:
    if data.num_rows == 0 and not lake.exists(layer, source.name):
        return  # nothing to replace and nothing to say: an absent table reads as empty
    lake.replace(
        layer,
        source.name,
        data,
        predicate=lake.date_predicate("_batch_date", day),
        partition_by=["_batch_date"],
        schema=schema,
    )


def write_split(ev: _Evaluation, *, silver_extra: pa.Table | None = None) -> tuple[int, int]:
    """Replace the silver and quarantine partitions of the batch date with the evaluation's split."""
    batch = ev.batch
    now = dt.datetime.now(dt.UTC)
    if ev.status == "rejected":
        good = np.zeros(0, dtype=np.int64)
        bad = np.arange(batch.n, dtype=np.int64)
    else:
        good = np.flatnonzero(~ev.failing)
        bad = np.flatnonzero(ev.failing)
    silver = silver_rows(batch, good, ev.run_id)
    if silver_extra is not None and silver_extra.num_rows:
        silver = pa.concat_tables([silver_extra.cast(silver.schema), silver])
    quarantine = quarantine_rows(batch, bad, [ev.reasons_for(int(i)) for i in bad], ev.run_id, now)
    _replace_partition("silver", batch.source, batch.day, silver, silver_schema(batch.source))
    _replace_partition("quarantine", batch.source, batch.day, quarantine, quarantine_schema(batch.source))
    return silver.num_rows, quarantine.num_rows


def _record(validations: Sequence[SourceValidation]) -> None:
    """One row per validated batch in ops/validations, all of a date's sources in one commit (the
    table is opened for every validated date: fewer commits keep that open cheap)."""
    if not validations:
        return
    day = validations[0].day
    if any(v.day != day for v in validations):
        raise ValueError("validation records of one commit must share a batch date")
    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "_batch_date": v.day,
            "source": v.source,
            "status": v.status,
            "rows_bronze": v.rows_bronze,
            "rows_silver": v.rows_silver,
            "rows_quarantined": v.rows_quarantined,
            "reasons": json.dumps(v.reasons, sort_keys=True),
            "warnings": json.dumps(v.warnings),
            "rejected_rule": v.rejected_rule,
            "message": v.message,
            "validation_run_id": v.validation_run_id,
            "data_docs_path": v.data_docs_path,
            "amount_usd_median": v.amount_usd_median,
            "validated_at": now,
        }
        for v in validations
    ]
    names = ", ".join(f"'{get_source(v.source).name}'" for v in validations)
    lake.replace(
        "ops",
        "validations",
        pa.Table.from_pylist(rows, schema=VALIDATIONS_SCHEMA),
        predicate=f"{lake.date_predicate('_batch_date', day)} AND source IN ({names})",
        partition_by=["_batch_date"],
        schema=VALIDATIONS_SCHEMA,
    )


def read_validations(day: dt.date | None = None, source: str | None = None) -> list[dict]:
    """Recorded validation outcomes (one row per batch date and source)."""
    if not lake.exists("ops", "validations"):
        return []
    rows = lake.read("ops", "validations", days=[day] if day else None).to_pylist()
    if source:
        rows = [r for r in rows if r["source"] == get_source(source).name]
    for r in rows:
        r["reasons"] = json.loads(r["reasons"] or "{}")
        r["warnings"] = json.loads(r["warnings"] or "[]")
    return sorted(rows, key=lambda r: (r["_batch_date"], SOURCE_NAMES.index(r["source"])))


# ------------------------------------------------------------------------------------- the task


def _reason_counts(ev: _Evaluation) -> dict[str, int]:
    counts: Counter[str] = Counter()
    if ev.status == "rejected":
        for rule, _ in ev.rejected:
            counts[f"batch_rejected:{rule}"] = ev.batch.n
    for rs in ev.row_reasons.values():
        counts.update(rs)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _docs_paths(ev: _Evaluation) -> tuple[str | None, str | None, str | None]:
    from flows import datadocs

    rows_page = contract_page = None
    for key in ev.result_keys:
        rel = datadocs.page_path(key)
        if key.expectation_suite_identifier.name.endswith(".rows"):
            rows_page = rel
        else:
            contract_page = rel
    url = (settings().docs_dir / rows_page).as_uri() if rows_page else None
    return url, rows_page, contract_page


def validate_source(
    source_name: str, day: dt.date, fx: dict[str, float] | None = None, *, record: bool = True
) -> tuple[SourceValidation, _Evaluation | None]:
    """Validate one source's batch of `day` and write silver + quarantine (no Data Docs build).

    The outcome goes to ops/validations unless `record=False` (validate_date records a date's
    sources together)."""
    v, ev = _validate_source(source_name, day, fx)
    if record:
        _record([v])
    return v, ev


def _validate_source(
    source_name: str, day: dt.date, fx: dict[str, float] | None
) -> tuple[SourceValidation, _Evaluation | None]:
    t0 = time.perf_counter()
    source = get_source(source_name)
    contract = load_contract(source.name)
    fx = fx if fx is not None else load_fx_rates()
    rows = _bronze_rows(source, day)
    t_read = time.perf_counter() - t0
    delivery = _delivery_info(source, day, rows)
    if not delivery.delivered:
        # a stale split of an earlier delivery of this date would no longer match bronze
        for layer in ("silver", "quarantine"):
            if lake.exists(layer, source.name):
                lake.delete(layer, source.name, lake.date_predicate("_batch_date", day))
        v = SourceValidation(source.name, day, "not_delivered", message=delivery.message or "not delivered")
        v.elapsed_s = time.perf_counter() - t0
        return v, None
    t1 = time.perf_counter()
    batch = _prepare(source, contract, day, rows)
    t2 = time.perf_counter()
    ev = _evaluate(batch, delivery, fx)
    ev.timings.update(read_bronze=t_read, ingest_record=t1 - t0 - t_read, parse=t2 - t1)
    url, rows_page, contract_page = _docs_paths(ev)
    v = SourceValidation(
        source.name,
        day,
        ev.status,
        rows_bronze=batch.n,
        warnings=ev.warnings,
        rejected_rule=ev.rejected_rule,
        validation_run_id=ev.run_id,
        data_docs_url=url,
        data_docs_path=rows_page,
        contract_docs_path=contract_page,
    )
    if ev.status == "failed":
        v.message = ev.message
        v.elapsed_s = time.perf_counter() - t0
        return v, ev
    t3 = time.perf_counter()
    write_split(ev)
    t4 = time.perf_counter()
    _, v.rows_silver, v.rows_quarantined = check_conservation(source.name, day)
    ev.timings.update(write=t4 - t3, conservation=time.perf_counter() - t4)
    v.amount_usd_median = _silver_median(ev) if ev.status == "succeeded" else None
    v.reasons = _reason_counts(ev)
    if ev.status == "rejected":
        v.message = ev.message
    else:
        v.message = f"{v.rows_silver} rows to silver, {v.rows_quarantined} quarantined"
        if v.reasons:
            v.message += " (" + ", ".join(f"{k} {n}" for k, n in list(v.reasons.items())[:5]) + ")"
    if ev.warnings:
        v.message += "; warnings: " + "; ".join(ev.warnings)
    v.elapsed_s = time.perf_counter() - t0
    v.timings = {k: round(x, 4) for k, x in ev.timings.items()}
    return v, ev


def _silver_median(ev: _Evaluation) -> float | None:
    """Median amount_usd of the rows this batch sent to silver (the drift rule's daily history)."""
    if ev.batch.frame is None or AMOUNT_USD_COL not in ev.batch.frame:
        return None
    usd = ev.batch.frame[AMOUNT_USD_COL].to_numpy()[~ev.failing]
    usd = usd[np.isfinite(usd)]
    return float(np.median(usd)) if usd.size else None


def validate_date(
    day: dt.date, sources: Sequence[str] | None = None, *, build_docs: bool | None = None
) -> dict[str, SourceValidation]:
    """Validate every source's batch of `day` (merchants, customers, transactions, chargebacks).

    Returns one SourceValidation per source. A rejected or undelivered batch is an outcome, not an
    exception; a conservation violation raises ConservationError. Data Docs pages are built unless
    `build_docs=False` (or ASOF_VALIDATION_DOCS=0 when not given).
    """
    if build_docs is None:
        build_docs = os.environ.get("ASOF_VALIDATION_DOCS", "1").strip().lower() not in (
            "0",
            "false",
            "no",
            "off",
        )
    wanted = [get_source(s).name for s in sources] if sources else list(SOURCE_NAMES)
    order = [s for s in SOURCE_NAMES if s in wanted]
    fx = load_fx_rates()
    out: dict[str, SourceValidation] = {}
    evaluations: list[_Evaluation] = []
    done: list[SourceValidation] = []
    try:
        for name in order:
            try:
                v, ev = validate_source(name, day, fx, record=False)
                done.append(v)
            except ConservationError:
                raise
            except Exception as exc:  # one broken source must not hide the others' outcomes
                log.exception("validation of %s %s failed", name, day)
                v, ev = SourceValidation(name, day, "failed", message=f"{type(exc).__name__}: {exc}"), None
            out[name] = v
            if ev is not None:
                evaluations.append(ev)
    finally:
        _record(done)
    if build_docs and evaluations:
        from flows import datadocs

        try:
            datadocs.publish(evaluations)
        except Exception:  # docs are a report: never fail the data because a page did not render
            log.exception("building Data Docs for %s failed", day)
    return out


def iter_results(evaluations: Iterable[_Evaluation]):
    for ev in evaluations:
        yield from zip(ev.result_keys, ev.results, strict=True)


def benchmark(day: dt.date, source: str = "transactions", repeat: int = 2) -> dict:
    """Time validate + split of one batch already in bronze, excluding the one-time GE import and
    context load. Run 1 is the first validation in the process; later runs re-validate (idempotent)."""
    t = time.perf_counter()
    ge_context()
    setup = time.perf_counter() - t
    runs = []
    for _ in range(max(1, repeat)):
        w, c = time.perf_counter(), time.process_time()
        v, _ = validate_source(source, day)
        runs.append(
            {
                "seconds": time.perf_counter() - w,
                "cpu_seconds": time.process_time() - c,
                "status": v.status,
                "rows": v.rows_bronze,
                "rows_quarantined": v.rows_quarantined,
                "timings": v.timings,
            }
        )
    return {"source": source, "day": day.isoformat(), "import_and_context_s": setup, "runs": runs}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m flows.validate --date D [--source S ...] [--no-docs]`: validate one date, print
    one JSON line per source (with per-stage timings), exit 1 if a batch is not accepted."""
    import argparse

    from flows.dates import parse_date

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--date", required=True)
    parser.add_argument("--source", action="append", choices=SOURCE_NAMES)
    parser.add_argument("--no-docs", action="store_true", help="skip the Data Docs pages")
    args = parser.parse_args(argv)
    out = validate_date(parse_date(args.date), args.source, build_docs=not args.no_docs)
    for v in out.values():
        print(json.dumps(v.to_dict(), default=str))
    return 0 if all(v.status == "succeeded" for v in out.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
