"""What one date may cost in memory (ASOF_MEMORY_BUDGET), estimated before anything is read.

A batch that grows past the machine's memory is killed by the kernel mid-stage: no run record, no
message, and a retry that dies the same way. So a date's cost is estimated from what landed (bytes
on disk, lines) with factors measured on a replicated bench day (bench/bigday.py,
bench/stage_memory.py), and a date whose estimate is over the budget is refused up front: its
ingest fails with one line naming the file, its size, the estimate, the budget and what to do,
and nothing of it is written.

Within the budget, validation judges a date's rows with Great Expectations in row slices
(`ge_slice_rows`): the rows suite is row-local once what needs every row (first delivery wins,
the reference lookups' answers) is known, so only the frame GE copies per metric shrinks with the
slice. A date whose rows held whole (bronze rows, typed columns, the silver and quarantine tables:
`VALIDATE_BYTES_PER_ROW`) do not fit is read back from bronze slice by slice (`streams`,
flows/validation/streamed.py): only batch dates, position keys, key hashes and amount_usd stay
for every row (`STREAM_BYTES_PER_ROW`), and silver and quarantine are written as streams. A date
that does not fit even so is refused.

The transform's DuckDB takes its memory limit from the same budget unless ASOF_DUCKDB_MEMORY_LIMIT
says otherwise (`duckdb_memory_limit`): beyond it DuckDB spills to disk, so a date that validated
within the budget is transformed within it too.
"""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flows.config import Settings, settings

MB = 2**20
GB = 2**30

# A flow process before its first stage (Prefect, GE, dbt, Feast imported; measured 0.9-1.1 GB RSS
# before validation in `asof run` and bench/stage_memory.py).
BASE_BYTES = 1 * GB
# Ingest of one CSV file, per landed byte: a CSV the fast path takes is streamed into bronze in 8 MB
# blocks (flows/ingest/stage.py CsvStream): 5M rows (327 MB) peak 0.89 GB, 20M rows (1.3 GB) 0.94 GB,
# from 0.17. A file the line-by-line reader takes (damaged, not UTF-8, JSONL) is still read whole
# (~5 bytes per landed byte): such big files are rare, and their validation is bigger anyway.
INGEST_BYTES_PER_BYTE = 1.0
# Validation per landed row, outside GE's frame: bronze rows read back and sorted (5M rows: +1.7
# GB), typed columns, helper columns, first-delivery keys, then the silver table (+0.9 GB) and its
# Delta write in 64k-row batches (+0.8 GB) once the rows' values are dropped, and the conservation
# read-back (+0.4 GB). validate_dates alone, GE in 1.6M-row slices: 5M transactions peak 2.88 GB
# from 0.17, 20M 10.0 GB from 0.17 (~0.47-0.54 KB a row with the slice); the flow process adds
# what imports and ingest left (BASE_BYTES).
VALIDATE_BYTES_PER_ROW = 600
# GE's rows suite per row of a slice: the frame and GE's copies of it per metric (5M rows in one
# frame: +0.7 GB, the suite's run +0.5 GB above it; 1.6M-row slices: +0.25-0.3 GB each).
GE_BYTES_PER_ROW = 250
# Validation read back slice by slice (flows/validation/streamed.py), per landed row, for the whole
# run: batch date, position key, the key's 64-bit hash, amount_usd (~35 B) and, at the pass's end,
# the sort that puts them in delivery order (~25 B more at once). Time bounds, reference lookups
# and row labels are computed per GE slice, repeated keys found by sorting hashes (was ~300 B a
# row: txn_id strings kept, collected and counted; 20M rows peaked at 6.31 GB).
STREAM_BYTES_PER_ROW = 60
# A GE slice of a date read back, per row: the slice's bronze rows read back with every column,
# parsed, the frame (regex columns as Python strings) and GE's copies per metric (20M rows in
# 1.6M-row slices: +1.95 GB over the whole-run part).
STREAM_GE_BYTES_PER_ROW = 1200
# At most this many rows in a GE slice of a date read back: its ~0.4 s of GE framework per slice
# is <5% of the ~10 s such a slice costs anyway (bronze read back, parsed, judged), while
# 1.6M-row slices held ~1 GB more than these.
STREAM_GE_MAX_ROWS = 800_000
# One slice of bronze read back and parsed (STREAM_SLICE_ROWS rows) and its silver batches: the
# writes, after GE (never beside a GE slice).
STREAM_SLICE_BYTES = 256 * MB
# A slice smaller than this costs more in GE's fixed cost per run than it saves.
MIN_SLICE_ROWS = 100_000
# The transform's DuckDB (dbt) when ASOF_DUCKDB_MEMORY_LIMIT is not set: this share of what the
# budget leaves beside the process's base (BASE_BYTES); the rest is for what DuckDB does not count:
# the silver batches the Arrow scans hand it (flows/transform/lake_io.py bounds their readahead),
# the marts fetched back for the gold writes, and what the allocators kept of the stages before.
# A 20M-row day's `int_transactions__deduplicated` alone: limit 2 GB +2.3 GB over the process,
# limit 1 GB +1.65 GB (the table itself 1.3 GB, spilled in part to temp_directory, as fast).
DUCKDB_BUDGET_SHARE = 0.5
# Never below this (DuckDB needs some memory per thread) ...
DUCKDB_MIN_BYTES = 256 * MB
# ... nor above DuckDB's limit before it followed the budget ("2GB": DuckDB's GB is 10^9 bytes):
# the in-memory database lives as long as the process, and what its allocator keeps grows with the
# limit (a year's backfill held 8 GB with DuckDB's own default, 80% of RAM); beyond it DuckDB
# spills under $ASOF_HOME/cache/duckdb.
DUCKDB_MAX = "2GB"
DUCKDB_MAX_BYTES = 2 * 10**9


def budget_bytes(s: Settings | None = None) -> int:
    return int((s or settings()).memory_budget_mb * MB)


def duckdb_memory_limit(s: Settings | None = None) -> str:
    """DuckDB's memory_limit for the transform, as DuckDB reads it: ASOF_DUCKDB_MEMORY_LIMIT as
    given, else DUCKDB_BUDGET_SHARE of the budget beyond BASE_BYTES in MiB, at least
    DUCKDB_MIN_BYTES and at most DUCKDB_MAX: a budget of 4096 MB -> 1536MiB, 2048 -> 512MiB,
    1024 -> 256MiB, 4839 or more -> 2GB."""
    s = s or settings()
    if s.duckdb_memory_limit:
        return s.duckdb_memory_limit
    share = int(DUCKDB_BUDGET_SHARE * (budget_bytes(s) - BASE_BYTES))
    if share >= DUCKDB_MAX_BYTES:
        return DUCKDB_MAX
    return f"{max(DUCKDB_MIN_BYTES, share) // MB}MiB"


def return_free_memory() -> None:
    """Hand back to the system the memory a finished stage freed but its allocators kept.

    glibc keeps freed heap pages for the process and pyarrow's pool keeps its own, so a backfill's
    resident size after a chunk's validation stayed ~300 MB above what was still alive (30 bench
    days: 1259 MB -> 931 MB), and the next stage's peak (DuckDB's working memory) stacked on top.
    Best effort: a libc without malloc_trim keeps its pages."""
    import ctypes

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def size_text(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / MB:.0f} MB"


def count_lines(path: Path) -> int:
    """Lines of a landed file (decompressed when gzip), read in chunks: never the whole file."""
    with open(path, "rb") as f:
        opener = gzip.open if f.read(2) == b"\x1f\x8b" else open
    n = 0
    last = b"\n"
    with opener(path, "rb") as f:
        while chunk := f.read(16 * MB):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


@dataclass(frozen=True)
class Estimate:
    """A date's landed files and the memory its ingest and validation are estimated to need."""

    source: str
    day: str
    files: tuple[tuple[str, int, int], ...]  # (file, bytes on disk, lines or rows)
    ingest_bytes: int
    validate_bytes: int
    unit: str = "lines"  # what `files` counts: landed lines, or the rows ingest recorded
    dates: int = 1  # batch dates validated together

    @property
    def rows(self) -> int:
        return sum(lines for _, _, lines in self.files)

    @property
    def needed(self) -> int:
        return max(self.ingest_bytes, self.validate_bytes)

    def refusal(self, budget: int) -> str | None:
        """One line saying why the date is refused, or None when it fits."""
        if self.needed <= budget:
            return None
        biggest = max(self.files, key=lambda f: f[1])
        fit = fitting_rows(budget)
        return (
            f"{self.source} {self.day} refused before reading: {biggest[0]} "
            f"({size_text(biggest[1])}, {biggest[2]:,} {self.unit}"
            + (f"; {len(self.files)} files, {self.rows:,} {self.unit} in all" if len(self.files) > 1 else "")
            + f") needs an estimated {size_text(self.needed)} to ingest and validate, over the memory "
            f"budget of {size_text(budget)} (ASOF_MEMORY_BUDGET); raise ASOF_MEMORY_BUDGET to at least "
            f"{int(self.needed / MB) + 1} (megabytes) on a machine that has it, or have the batch "
            f"split into dates of at most ~{fit:,} rows"
            + (
                f" (these are {self.dates} dates validated together: a smaller ASOF_VALIDATION_MAX_ROWS "
                "validates fewer at once)"
                if self.dates > 1
                else ""
            )
        )


def estimate(source: str, day: str, files: Sequence[tuple[str, Path]]) -> Estimate:
    """The estimate for one date's landed `files` ((name shown, path)), every line a row."""
    sized = tuple((name, p.stat().st_size, count_lines(p)) for name, p in files if p.is_file())
    landed = sum(b for _, b, _ in sized)
    rows = sum(n for _, _, n in sized)
    ingest = BASE_BYTES + int(INGEST_BYTES_PER_BYTE * landed)
    return Estimate(source, day, sized, ingest, validate_estimate(rows))


def recorded_estimate(
    source: str, days: str, files: Sequence[tuple[str, int, int]], dates: int = 1
) -> Estimate:
    """Validation's estimate from ingest's records ((file, bytes, rows)) of the `dates` dates
    validated together: a date ingested under a bigger budget (or before there was one) is refused
    here."""
    rows = sum(n for _, _, n in files)
    return Estimate(source, days, tuple(files), 0, validate_estimate(rows), unit="rows", dates=dates)


def fitting_rows(budget: int) -> int:
    """The most landed rows of one date whose validation estimate fits `budget` (the estimate
    never decreases with the rows: the slice shrinks until MIN_SLICE_ROWS, then grows)."""
    lo, hi = 0, max(0, budget // min(VALIDATE_BYTES_PER_ROW, STREAM_BYTES_PER_ROW))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if validate_estimate(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def validate_estimate(rows: int) -> int:
    """Validation's estimate for `rows` landed rows validated together: held whole when that fits
    the budget, else read back from bronze slice by slice (`streams`)."""
    return min(whole_estimate(rows), streamed_estimate(rows))


def streamed_estimate(rows: int) -> int:
    """Validation's estimate for `rows` read back slice by slice: what every row keeps for the
    whole run (STREAM_BYTES_PER_ROW) beside one GE slice, or one slice of bronze read back for the
    writes, whichever is bigger."""
    ge = STREAM_GE_BYTES_PER_ROW * min(rows, ge_slice_rows(rows))
    return BASE_BYTES + STREAM_BYTES_PER_ROW * rows + max(ge, STREAM_SLICE_BYTES)


# Rows of bronze read back at once when a date is validated slice by slice (silver, quarantine).
STREAM_SLICE_ROWS = 262_144


def streams(rows: int) -> bool:
    """Whether `rows` landed rows validated together are read from bronze slice by slice
    (flows.validation.streamed) rather than held whole: when the whole-date estimate is over
    the budget."""
    return whole_estimate(rows) > budget_bytes()


def whole_estimate(rows: int) -> int:
    """Validation's estimate for `rows` held whole, GE in slices of what is left beside them."""
    slice_rows = _slice_rows(rows, VALIDATE_BYTES_PER_ROW, 0, settings())
    return BASE_BYTES + VALIDATE_BYTES_PER_ROW * rows + GE_BYTES_PER_ROW * min(rows, slice_rows)


def ge_slice_rows(rows: int, s: Settings | None = None) -> int:
    """Rows GE judges at once when `rows` are validated together: ASOF_VALIDATION_MAX_ROWS, or fewer
    when the budget left after the whole-date part (held whole, or read back slice by slice when
    that does not fit) cannot hold that frame (never below MIN_SLICE_ROWS unless
    ASOF_VALIDATION_MAX_ROWS says so)."""
    s = s or settings()
    whole = _slice_rows(rows, VALIDATE_BYTES_PER_ROW, 0, s)
    if BASE_BYTES + VALIDATE_BYTES_PER_ROW * rows + GE_BYTES_PER_ROW * min(rows, whole) <= budget_bytes(s):
        return whole
    return min(
        _slice_rows(rows, STREAM_BYTES_PER_ROW, 0, s, STREAM_GE_BYTES_PER_ROW), max(1, STREAM_GE_MAX_ROWS)
    )


def _slice_rows(rows: int, per_row: int, extra: int, s: Settings, ge_per_row: int = GE_BYTES_PER_ROW) -> int:
    cap = max(1, s.validation_max_rows)
    left = budget_bytes(s) - BASE_BYTES - per_row * rows - extra
    fits = max(MIN_SLICE_ROWS, left // ge_per_row)
    return int(min(cap, fits))
