"""Is a landed batch complete? (contract §4)

A file still being written, or cut by a failed transfer, looks like a smaller batch: its last
record ends mid-line (`...,2024-01-05T16:`) or inside a quoted field. The contract's default is
that ingestion never blocks (bronze keeps what arrived; the cut record is quarantined with its
reason, and the file's ingest record says the file ends mid-record). Where upstream can deliver a
file before it is whole, make such a date wait instead:

- `ASOF_PARTIAL_FILES=wait`: a date with a file cut short waits as `partial`, naming the file,
  and nothing of it reaches bronze until a complete delivery replaces it;
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
from dataclasses import dataclass
from pathlib import Path

from flows.config import settings

SUCCESS_MARKER = "_SUCCESS"
MANIFEST = "_manifest.json"


def marker_required() -> bool:
    return settings().require_completion_marker


def cut_files_wait() -> bool:
    """`ASOF_PARTIAL_FILES`: `ingest` (default: the contract's never-block rule) or `wait`."""
    return settings().partial_files == "wait"


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


def cut_short(data: bytes, fmt: str) -> str | None:
    """Why the file's bytes end mid-record, or None. `data` is the decompressed content."""
    if not data.endswith((b"\n", b"\r")):
        tail = data[-40:].decode("utf-8", errors="replace").splitlines()[-1:] or [""]
        return f"ends mid-record with no line terminator (last bytes: {tail[0]!r})"
    if fmt == "csv" and data.count(b'"') % 2:
        # an odd number of quote characters: maybe a quoted field that never closes. Only the
        # csv module can tell that apart from a stray quote inside an unquoted value.
        text = data.decode("utf-8", errors="replace")
        try:
            for _ in csv.reader(io.StringIO(text, newline=""), strict=True):
                pass
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                return "ends inside a quoted field (its last record is cut)"
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
