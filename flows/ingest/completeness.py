"""Is a landed batch complete? (contract §4)

A file still being written, or cut by a failed transfer, looks like a smaller batch: its last
record ends mid-line (`...,2024-01-05T16:`) or inside a quoted field. Such a date waits as
`partial`, naming the file, and nothing of it reaches bronze until a complete delivery replaces
it: a cut file is not yet a delivery, as a missing one is not (the contract's never-block rule is
about validation: bronze keeps every batch that did arrive whole).

The bytes cannot always tell. A file whose only flaw is a missing line terminator after its last
record is common in real exports and is whole: its last record is judged against the contract
(the header's field count, every value of its type, enums and patterns as the contract says), and
only a record that cannot be whole makes the date wait. `ASOF_PARTIAL_FILES` chooses:

- `auto` (default): wait when the last record cannot be whole or a quoted field never closes;
  a whole last record without its terminator is ingested, and the file's record says so;
- `wait`: any file without a final line terminator makes its date wait;
- `ingest`: never wait: the cut record is judged as a row (and quarantined with its reason).

Upstream can say so itself, whatever the setting:

- `_SUCCESS` in the date's folder (Hadoop's and Spark's convention): the producer vouches that the
  files are complete, the bytes are not second-guessed;
- `_manifest.json`: `{"files": {"<file name>": {"sha256": "<hex>", "rows": N}, ...}}` (either key
  may be omitted): the date waits until each listed file has landed with that content and row
  count; a landed file it does not list is malformed;
- `ASOF_REQUIRE_COMPLETION_MARKER=1`: a date without `_SUCCESS` or `_manifest.json` waits.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from flows.config import settings
from flows.sources import Source
from flows.validation.parsing import NAIVE_TIMESTAMP_RE, parse_column

SUCCESS_MARKER = "_SUCCESS"
MANIFEST = "_manifest.json"


def marker_required() -> bool:
    return settings().require_completion_marker


@dataclass(frozen=True)
class Cut:
    """How a file's bytes end short of a line terminator."""

    reason: str  # in words, for the file's record
    certain: bool  # its last record cannot be whole (not merely unterminated)

    def waits(self) -> bool:
        """Does this make the date wait, under `ASOF_PARTIAL_FILES`?"""
        policy = settings().partial_files
        return policy == "wait" or (policy == "auto" and self.certain)


@dataclass(frozen=True)
class Markers:
    """What the producer said about the date's folder."""

    success: bool
    manifest: dict[str, dict] | None  # file name -> {"sha256", "rows"}
    manifest_error: str | None = None

    @property
    def vouched(self) -> bool:
        """The producer marked the batch complete: the bytes are not second-guessed."""
        return self.success or self.manifest is not None


def read_markers(folder: Path) -> Markers:
    success = (folder / SUCCESS_MARKER).is_file()
    path = folder / MANIFEST
    if not path.is_file():
        return Markers(success, None)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        files = raw["files"]
        if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
            raise TypeError("'files' must map file names to objects")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Markers(
            success,
            None,
            f'{MANIFEST} is unreadable ({exc}): expected {{"files": {{name: {{sha256, rows}}}}}}',
        )
    return Markers(success, files)


def cut_short(data: bytes, source: Source, header: list[str] | None = None) -> Cut | None:
    """How the file's content ends short of a whole record, or None when it ends with a line
    terminator (and, for a CSV, outside any quoted field). `data` is the decompressed content, or
    its last bytes (more than one line, not the whole content) when `header`, the CSV header read
    from the file's first line, is given."""
    if not data.endswith((b"\n", b"\r")):
        tail = data[-40:].decode("utf-8", errors="replace").splitlines()[-1:] or [""]
        where = f"ends mid-record with no line terminator (last bytes: {tail[0]!r})"
        unterminated = f"has no line terminator after its last record (last bytes: {tail[0]!r})"
        text = data.decode("utf-8", errors="replace")
        if header is not None:  # only the content's last bytes: drop the line they start inside
            parts = _LINE_BREAK.split(text, maxsplit=1)
            if len(parts) < 2:
                return Cut(f"{where}; its last record is longer than {len(data)} bytes", True)
            text = parts[1]
        last, header = _last_record(text, source, header)
        if last is None:
            return None  # no record at all, or trailing blanks: nothing is cut
        broken = _not_whole(last, source, header)
        if broken:
            return Cut(f"{where}: {broken}", True)
        return Cut(f"{unterminated}, which is whole", False)
    if source.fmt == "csv" and data.count(b'"') % 2:
        # an odd number of quote characters: maybe a quoted field that never closes. Only the
        # csv module can tell that apart from a stray quote inside an unquoted value.
        text = data.decode("utf-8", errors="replace")
        try:
            for _ in csv.reader(io.StringIO(text, newline=""), strict=True):
                pass
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                return Cut("ends inside a quoted field (its last record is cut)", True)
    return None


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _last_record(
    text: str, source: Source, header: list[str] | None
) -> tuple[list[str] | str | None, list[str] | None]:
    """(the last record of `text`: CSV fields or a JSON line, None if there is none; the CSV
    header, read from `text`'s first record when not given)."""
    if source.fmt == "jsonl":
        lines = [line for line in _LINE_BREAK.split(text) if line.strip()]
        return (lines[-1] if lines else None), header
    try:  # records, not lines: a quoted field may hold a line break
        records = [r for r in csv.reader(io.StringIO(text, newline="")) if any(f.strip() for f in r)]
    except csv.Error:
        records = [[line] for line in _LINE_BREAK.split(text) if line.strip()]
    if header is None:
        if not records:
            return None, None
        header, records = [h.strip().lstrip("\ufeff") for h in records[0]], records[1:]
    return (records[-1] if records else None), header


def _not_whole(last: list[str] | str, source: Source, header: list[str] | None) -> str | None:
    """Why the unterminated last record cannot be a whole record of `source`, or None. A whole
    record that breaks a row rule (a null, an amount out of range) is whole: validation judges it."""
    if isinstance(last, str):  # a JSON line: its closing brace shows it is whole
        try:
            json.loads(last)
        except ValueError:
            return "its last line is not a whole JSON value"
        return None
    if header is None or not {h.strip() for h in header} & set(source.column_names):
        return None  # no header of this source's: the file is malformed whole, not cut
    if len(last) != len(header):
        return f"its last record has {len(last)} fields, the header {len(header)}"
    if last[-1] == "":
        return "its last record ends right after a delimiter"
    values = dict(zip((h.strip() for h in header), last, strict=True))
    for column in source.columns:
        value = values.get(column.name)
        if value is None or value == "":
            continue  # absence is a row rule's business (not null), not a cut's
        typed, unparseable = parse_column(pa.chunked_array([pa.array([value], pa.string())]), column.type)
        if unparseable.null_count == 0:
            return f"{column.name} {value!r} is not a {column.type}"
        if column.type == "timestamp" and re.search(NAIVE_TIMESTAMP_RE, value):
            return f"{column.name} {value!r} has no time zone"  # e.g. cut just before its `Z`
        if column.allowed is not None and column.allowed_from is None:
            # compared as validation compares them: an int by its value ("02" is 2)
            allowed = {int(v) for v in column.allowed} if column.type == "int" else set(column.allowed)
            if typed[0].as_py() not in allowed:
                return f"{column.name} {value!r} is not one of {', '.join(column.allowed)}"
        if column.pattern and not re.search(column.pattern, value):
            return f"{column.name} {value!r} does not match {column.pattern}"
    return None


def manifest_problems(
    markers: Markers, landed: dict[str, tuple[str | None, int]]
) -> tuple[list[str], list[str]]:
    """(reasons the batch is still partial, files landed that the manifest does not list), from
    `landed`: file name -> (sha256, rows)."""
    if markers.manifest is None:
        return [], []
    waiting: list[str] = []
    for name, expected in sorted(markers.manifest.items()):
        if name not in landed:
            waiting.append(f"{MANIFEST} lists {name}, which has not landed")
            continue
        sha, rows = landed[name]
        if expected.get("sha256") and expected["sha256"] != sha:
            waiting.append(f"{name}: content differs from {MANIFEST} (sha256), still being written?")
        elif expected.get("rows") is not None and int(expected["rows"]) != rows:
            waiting.append(f"{name}: {rows} rows, {MANIFEST} says {expected['rows']}")
    unlisted = sorted(set(landed) - set(markers.manifest))
    return waiting, unlisted
