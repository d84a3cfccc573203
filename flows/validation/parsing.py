"""Raw text -> contract types, vectorised in Arrow; and the key and content signature of a row.

A value that does not parse as its contract type becomes null in the typed column and keeps its raw
text in `<col>__unparseable`, so the rule that judges it (GE) can say which value it was.
Timestamps: ISO-8601 with `Z` or an explicit offset (converted to UTC) parse; a time without a zone
is parsed as UTC so the time rules can still judge it, and is quarantined as `naive_timestamp:<col>`.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flows.validation.contracts import Contract

# Syntax of the contract types (a value must match and convert to be "parseable").
INT_RE = r"^-?[0-9]{1,18}$"
# contract §4: amounts are decimals with 2 dp. More significant places ("12.345") is not an amount the
# contract allows (it would be rounded silently); trailing zeros ("12.340") are the same value.
DECIMAL_RE = r"^-?(?:[0-9]+(?:\.[0-9]{0,2}0*)?|\.[0-9]{1,2}0*)$"
TIMESTAMP_RE = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?"
    r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?$"
)
NAIVE_TIMESTAMP_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?$"
DATE_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
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


def naive_text(raw: pa.ChunkedArray) -> pa.ChunkedArray:
    """The raw text of the values that are a time without a zone, else null: what the
    `naive_timestamp` rule judges (vectorised here; GE matching a regex over Python strings cost
    ~2 s per 3M rows, and holding the column as Python strings as much again in null checks)."""
    return pc.if_else(_regex_mask(raw, NAIVE_TIMESTAMP_RE), raw, pa.scalar(None, pa.string()))


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


def join_text(columns: list[pa.ChunkedArray], fill: str | None) -> pa.ChunkedArray:
    texts = [_as_text(c) for c in columns]
    if fill is not None:
        texts = [pc.fill_null(t, fill) for t in texts]
    if len(texts) == 1:
        return texts[0]
    return pc.binary_join_element_wise(*texts, "\x1f")


def key_and_signature(typed: dict[str, pa.ChunkedArray], contract: Contract) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the key (None if a key part is missing) and the content signature (all other columns,
    typed, so `12.5` and `12.50` are the same content)."""
    key = join_text([typed[k] for k in contract.key], None)
    rest = [c for c in contract.column_names if c not in contract.key]
    sig = join_text([typed[c] for c in rest], "\x00")
    return (
        np.asarray(key.to_pandas(), dtype=object),
        np.asarray(sig.to_pandas(), dtype=object),
    )
