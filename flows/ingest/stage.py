"""Landing files -> bronze Delta tables, losing nothing.

Bronze keeps every row that arrived, values exactly as delivered (strings), so validation can judge
them and a quarantined value can be shown to a human as it was. Anything that cannot be read as
rows is still kept (the whole line in `_raw`, the reason in `_parse_error`), and file-level damage
(missing, empty, undecodable, headerless) becomes an explicit outcome in `ops/ingest_files` instead of
silently counting as zero rows.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from flows.config import Settings, resolves_inside, settings
from flows.ingest import completeness, memory_budget
from flows.sources import Source, bronze_schema, get_source
from flows.storage import lake

csv.field_size_limit(64 * 1024 * 1024)

INGEST_FILES_SCHEMA = pa.schema(
    [
        pa.field("_batch_date", pa.date32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("file", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("header", pa.string()),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string()),
        pa.field("encoding", pa.string()),
        pa.field("message", pa.string()),
        pa.field("ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class FileRecord:
    file: str
    status: str  # ok | malformed | partial (cut short, flows.ingest.completeness) | not_delivered
    rows: int = 0
    bytes: int = 0
    header: list[str] | None = None
    sha256: str | None = None
    encoding: str | None = None
    message: str = ""


@dataclass
class IngestOutcome:
    source: str
    day: dt.date
    # succeeded | malformed | partial (waits, no rows) | not_delivered
    # | failed (unreadable, or bronze count off)
    status: str
    rows: int
    files: list[FileRecord] = field(default_factory=list)
    message: str = ""
    bronze_version: int | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["day"] = self.day.isoformat()
        return d


class _Rows:
    """Column-wise accumulator for one file's rows (faster than a list of dicts)."""

    def __init__(self, source: Source) -> None:
        self.names = source.column_names
        self.cols: dict[str, list[str | None]] = {c: [] for c in self.names}
        self.extra: list[str | None] = []
        self.raw: list[str | None] = []
        self.err: list[str | None] = []

    def __len__(self) -> int:
        return len(self.err)

    def add(self, values: dict[str, str | None], extra: dict | None) -> None:
        for c in self.names:
            self.cols[c].append(values.get(c))
        self.extra.append(json.dumps(extra, ensure_ascii=False, sort_keys=True) if extra else None)
        self.raw.append(None)
        self.err.append(None)

    def to_table(self) -> pa.Table:
        arrays = {c: pa.array(self.cols[c], pa.string()) for c in self.names}
        arrays["_extra"] = pa.array(self.extra, pa.string())
        arrays["_raw"] = pa.array(self.raw, pa.string())
        arrays["_parse_error"] = pa.array(self.err, pa.string())
        return pa.table(arrays)

    def add_broken(self, raw: str, error: str) -> None:
        for c in self.names:
            self.cols[c].append(None)
        self.extra.append(None)
        self.raw.append(raw)
        self.err.append(error)


def landing_dir(source: str, day: dt.date) -> Path:
    return settings().landing / get_source(source).name / day.isoformat()


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(settings().home))
    except ValueError:
        return str(path)


def _outside_landing(path: Path) -> str | None:
    """Why `path` may not be read, or None. A symlink in the landing area (a file, a date or a
    source folder) that leads out of it would let whoever can write there make asof read, and
    copy into the lake, any file the process can read (/etc, another tenant's data). Directories
    named in ASOF_LANDING_ALLOWED_ROOTS (os.pathsep-separated) are allowed targets."""
    s = settings()
    roots = [s.landing, *s.landing_allowed_roots]
    if any(resolves_inside(path, r) for r in roots):
        return None
    return (
        f"{_relative(path)} leads to {path.resolve()}, outside the landing area: not read "
        f"(allow its directory with {Settings.landing_allowed_roots.name})"
    )


def _decode(data: bytes) -> tuple[str, str, str]:
    """Decode bytes; returns (text, encoding, note). Never raises: Latin-1 decodes any byte."""
    try:
        text = data.decode("utf-8-sig")
        note = "UTF-8 byte-order mark stripped" if data.startswith(b"\xef\xbb\xbf") else ""
        return text, "utf-8", note
    except UnicodeDecodeError as exc:
        text = data.decode("latin-1")
        return text, "latin-1", f"not valid UTF-8 (byte {exc.start}); decoded as Latin-1"


def _clean(value: str) -> str | None:
    return value if value.strip() != "" else None


def _parse_csv(text: str, source: Source, rows: _Rows, rec: FileRecord) -> None:
    # io with newline="" splits only on \n, \r and \r\n (what the csv module expects);
    # str.splitlines would also split on form feeds and other separators inside values.
    lines = io.StringIO(text, newline="")
    consumed: list[str] = []

    def feed():
        for line in lines:
            consumed.append(line)
            yield line

    reader = csv.reader(feed(), strict=False)
    header: list[str] | None = None
    while True:
        consumed.clear()
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raw = "".join(consumed)
            if header is None:
                rec.status, rec.message = "malformed", f"header line is unreadable: {exc}"
                header = []
            rows.add_broken(raw.rstrip("\r\n"), f"unreadable CSV line {reader.line_num}: {exc}")
            continue
        raw = "".join(consumed).rstrip("\r\n")
        if not record or (len(record) == 1 and record[0].strip() == ""):
            continue  # blank line: not a row
        if header is None:
            header = [h.strip() for h in record]
            rec.header = header
            known = set(source.column_names)
            dupes = sorted({h for h in header if header.count(h) > 1})
            if not known.intersection(header):
                rec.status = "malformed"
                rec.message = (
                    f"no header: first line has none of the expected columns {source.column_names}; "
                    "every line kept raw"
                )
                header = []
                rows.add_broken(raw, "file has no header")
            elif dupes:
                rec.status = "malformed"
                rec.message = f"duplicate column names in header: {dupes}; every line kept raw"
                header = []
            continue
        if not header:  # file-level damage: keep every line raw
            rows.add_broken(raw, rec.message or "file is malformed")
            continue
        if len(record) != len(header):
            rows.add_broken(
                raw,
                f"line {reader.line_num}: expected {len(header)} fields, got {len(record)}",
            )
            continue
        values: dict[str, str | None] = {}
        extra: dict[str, str | None] = {}
        for name, value in zip(header, record, strict=True):
            if name in rows.cols:
                values[name] = _clean(value)
            else:
                extra[name] = _clean(value)
        rows.add(values, extra or None)
    if header is None:
        rec.status = "malformed"
        rec.message = rec.message or "file has no header line (empty or blank)"


def _fast_header(head: bytes, source: Source) -> list[str] | None:
    """The header pyarrow's fast path reads a file with (from its first bytes), or None when the
    line-by-line reader must take the file: an unreadable or duplicate header, or extra columns."""
    first = head[:65536].lstrip(b"\xef\xbb\xbf").split(b"\n", 1)[0].rstrip(b"\r")
    try:
        header = next(csv.reader([first.decode("utf-8")]))
    except (UnicodeDecodeError, StopIteration, csv.Error):
        return None
    header = [h.strip() for h in header]
    if not header or len(set(header)) != len(header) or not set(header) <= set(source.column_names):
        return None
    return header


def _csv_options(
    header: list[str], invalid, block_size: int | None = None
) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions, pacsv.ConvertOptions]:
    """pyarrow's options for the fast path: every column a string, blanks null, a row with the
    wrong field count handed to `invalid` (the file then goes to the line-by-line reader)."""
    read = pacsv.ReadOptions(column_names=header, skip_rows=1, use_threads=True)
    if block_size:
        read.block_size = block_size
    return (
        read,
        pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=invalid),
        pacsv.ConvertOptions(
            column_types={h: pa.string() for h in header},
            strings_can_be_null=True,
            null_values=[""],
            quoted_strings_can_be_null=True,
        ),
    )


def _fast_columns(table: pa.Table | pa.RecordBatch, header: list[str], source: Source) -> pa.Table:
    """The contract columns of rows pyarrow read (blank values null, absent columns null) and the
    empty `_extra`, `_raw`, `_parse_error`."""
    n = table.num_rows
    cols = {}
    for name in source.column_names:
        if name in header:
            col = table.column(name)
            blank = pc.equal(pc.utf8_trim_whitespace(col), "")
            # a column without blanks stays as read: replacing it anyway held a second copy of
            # every column until the bronze write (5M rows: +0.45 GB)
            has_blank = pc.any(blank).as_py()
            cols[name] = pc.if_else(blank, pa.scalar(None, pa.string()), col) if has_blank else col
        else:
            cols[name] = pa.nulls(n, pa.string())
    for extra in ("_extra", "_raw", "_parse_error"):
        cols[extra] = pa.nulls(n, pa.string())
    return pa.table(cols)


def _parse_csv_fast(data: bytes, source: Source, rec: FileRecord) -> pa.Table | None:
    """pyarrow's C++ CSV reader for the common case: valid UTF-8, a sane header with no extra
    columns, every line with the header's field count. Anything else returns None and the
    line-by-line reader (which keeps broken lines raw, with reasons) takes the file. Both produce
    identical rows for files the fast path accepts (tested)."""
    header = _fast_header(data[:65536], source)
    if header is None or not _is_utf8(data) or b"\x00" in data:
        return None

    broken: list[int] = []

    def invalid(_row) -> str:
        broken.append(1)
        return "skip"

    try:
        table = pacsv.read_csv(pa.py_buffer(data), *_csv_options(header, invalid))
    except pa.ArrowInvalid:
        return None
    if broken:
        return None
    rec.header = header
    return _fast_columns(table, header, source)


@dataclass(frozen=True)
class CsvStream:
    """A landed CSV file the fast path accepts, checked whole by `_scan` without being held:
    its rows are read again, in record batches of about CSV_BLOCK_BYTES, while bronze is written,
    so a date never sits in memory as one table (a 20M-row file: 1.3 GB landed, ~6.5 GB read
    whole)."""

    path: Path
    header: list[str]
    gzip: bool
    rows: int = 0  # counted by `count`, checked again as the rows are written

    def reader(self, invalid=None) -> pacsv.CSVStreamingReader:
        compression = "gzip" if self.gzip else None
        return pacsv.open_csv(
            pa.input_stream(str(self.path), compression=compression),
            *_csv_options(self.header, invalid, CSV_BLOCK_BYTES),
        )

    def tables(self, source: Source) -> Iterator[pa.Table]:
        """The file's rows as `_fast_columns` tables, batch by batch."""
        for batch in self.reader():
            if batch.num_rows:
                yield _fast_columns(batch, self.header, source)

    def count(self) -> int | None:
        """Rows of the file, or None when pyarrow cannot read every line (the line-by-line reader
        takes it): one streaming pass, before anything is written, so a bad line is found before
        any row of its date reaches the writer."""
        broken: list[int] = []

        def invalid(_row) -> str:
            broken.append(1)
            return "skip"

        n = 0
        try:
            for batch in self.reader(invalid):
                n += batch.num_rows
                if broken:
                    return None
        except pa.ArrowInvalid:
            return None
        return None if broken else n


# Bytes of CSV pyarrow parses into one record batch when a file is streamed (CsvStream).
CSV_BLOCK_BYTES = 8 << 20


def _is_utf8(data: bytes) -> bool:
    """Whether `data` decodes as UTF-8, checked in slices: decoding a landed file whole held a
    second copy of it as a str (1.3 GB for a 20M-row day)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    step = 16 << 20
    try:
        for at in range(0, len(view), step):
            decoder.decode(view[at : at + step], final=at + step >= len(view))
        if not view:
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _parse_jsonl(text: str, source: Source, rows: _Rows, rec: FileRecord) -> None:
    seen_keys: dict[str, None] = {}
    for lineno, line in enumerate((x.rstrip("\r") for x in text.split("\n")), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            rows.add_broken(line, f"line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            rows.add_broken(line, f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
            continue
        values: dict[str, str | None] = {}
        extra: dict = {}
        for key, value in obj.items():
            seen_keys.setdefault(key, None)
            if value is None:
                text_value = None
            elif isinstance(value, str):
                text_value = _clean(value)
            elif isinstance(value, (bool, dict, list)):
                text_value = json.dumps(value)
            else:
                text_value = str(value)
            if key in rows.cols:
                values[key] = text_value
            else:
                extra[key] = value
        rows.add(values, extra or None)
    rec.header = list(seen_keys) if seen_keys else None


def _empty(source: Source) -> pa.Table:
    return _Rows(source).to_table()


def read_file(path: Path, source: Source, check_cut: bool = True) -> tuple[FileRecord, pa.Table]:
    """Parse one landed file; file-level problems go into the returned record. With `check_cut`
    (no completion marker vouches for the file) a file that ends mid-record is noted, or
    `partial` when it is cut short (ASOF_PARTIAL_FILES, flows.ingest.completeness)."""
    rec, rows = read_landed(path, source, check_cut)
    if isinstance(rows, CsvStream):
        return rec, pa.concat_tables([_empty(source), *rows.tables(source)])
    return rec, rows


@dataclass
class _Scan:
    """What one pass over a landed file's bytes (never held whole) tells before its rows are read."""

    bytes: int = 0
    sha256: str = ""
    gzip: bool = False
    head: bytes = b""  # the first 64 KB of the content (decompressed)
    tail: bytes = b""  # its last TAIL_BYTES (where a cut record is judged)
    size: int = 0  # content bytes
    utf8: bool = True
    nul: bool = False
    quotes: int = 0  # '"' characters in the content


# The last bytes of a file kept by the scan: a cut record is judged from them (a longer last record
# than this, without its line terminator, is taken as cut).
TAIL_BYTES = 65_536


def _scan(path: Path) -> _Scan | None:
    """One pass over the file in 16 MB chunks; None when it cannot be read or decompressed (the
    whole-file reader then says why, in its own words)."""
    out = _Scan()
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    step = 16 << 20
    try:
        with open(path, "rb") as raw:
            out.gzip = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            while chunk := raw.read(step):
                digest.update(chunk)
                out.bytes += len(chunk)
        with gzip.open(path, "rb") if out.gzip else open(path, "rb") as content:
            while chunk := content.read(step):
                if len(out.head) < 65536:
                    out.head += chunk[: 65536 - len(out.head)]
                out.tail = (out.tail + chunk)[-TAIL_BYTES:]
                out.size += len(chunk)
                out.nul = out.nul or b"\x00" in chunk
                out.quotes += chunk.count(b'"')
                if out.utf8:
                    try:
                        decoder.decode(chunk)
                    except UnicodeDecodeError:
                        out.utf8 = False
        if out.utf8:
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        out.utf8 = False
    except (OSError, EOFError, zlib.error):
        return None
    out.sha256 = digest.hexdigest()
    return out


def _streamed(path: Path, source: Source, rec: FileRecord, check_cut: bool) -> CsvStream | _Rows | None:
    """The file as a CsvStream when the fast path takes it (`rec` filled as `_read_file` fills
    it), empty rows when the batch waits for it (a cut file, ASOF_PARTIAL_FILES), or None: the
    whole-file reader takes it (damaged, not UTF-8, a cut quoted field... rare, and small)."""
    scan = _scan(path)
    if scan is None or not scan.size or not scan.utf8 or scan.nul:
        return None
    header = _fast_header(scan.head, source)
    if header is None:
        return None
    cut = None
    if check_cut:
        if not scan.tail.endswith((b"\n", b"\r")):
            # the same judgement as over the whole content, from the last bytes
            whole = scan.size <= len(scan.tail)
            cut = completeness.cut_short(scan.tail, source, None if whole else header)
        elif scan.quotes % 2:
            return None  # only the csv module over the whole text can tell
    notes = ["gzip-compressed content decompressed"] if scan.gzip else []
    rec.bytes, rec.sha256 = scan.bytes, scan.sha256
    if cut and cut.waits():
        rec.status, rec.message = "partial", f"{rec.file} {cut.reason}: a partial delivery"
        return _Rows(source)
    rows = CsvStream(path, header, scan.gzip).count()
    if rows is None:
        return None
    stream = CsvStream(path, header, scan.gzip, rows)
    if cut:
        notes.append(f"{cut.reason}: kept as delivered, its last record is judged as a row")
    if scan.head.startswith(b"\xef\xbb\xbf"):
        notes.append("UTF-8 byte-order mark stripped")
    rec.header, rec.encoding, rec.rows, rec.message = header, "utf-8", rows, "; ".join(notes)
    return stream


def read_landed(
    path: Path, source: Source, check_cut: bool = True
) -> tuple[FileRecord, pa.Table | CsvStream]:
    """`read_file`, except that a CSV the fast path takes comes back as a CsvStream (rows counted,
    not held): what ingest writes bronze from."""
    rec, rows = _read_file(path, source, check_cut)
    if isinstance(rows, CsvStream):
        return rec, rows
    table = rows if isinstance(rows, pa.Table) else rows.to_table()
    rec.rows = table.num_rows
    return rec, table


def _read_file(
    path: Path, source: Source, check_cut: bool
) -> tuple[FileRecord, _Rows | pa.Table | CsvStream]:
    rows = _Rows(source)
    rec = FileRecord(file=_relative(path), status="ok")
    if path.is_dir():
        rec.status, rec.message = "malformed", f"{rec.file} is a directory, not a file"
        return rec, rows
    if source.fmt == "csv":
        streamed = _streamed(path, source, rec, check_cut)
        if streamed is not None:
            return rec, streamed
        rec = FileRecord(file=_relative(path), status="ok")
    try:
        data = path.read_bytes()
    except OSError as exc:
        rec.status, rec.message = "malformed", f"cannot read {rec.file}: {exc.strerror}"
        return rec, rows
    rec.bytes = len(data)
    rec.sha256 = hashlib.sha256(data).hexdigest()
    notes: list[str] = []
    if data.startswith(GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
            notes.append("gzip-compressed content decompressed")
        except (OSError, EOFError, zlib.error) as exc:
            rec.status, rec.message = "malformed", f"{rec.file} looks gzip-compressed but is corrupt: {exc}"
            return rec, rows
    if not data:
        if source.fmt == "jsonl":
            rec.message = "empty file: no changes"
            return rec, rows
        rec.status = "malformed"
        rec.message = f"{rec.file} is empty (0 bytes): no header, cannot tell an empty batch from a lost one"
        return rec, rows
    cut = completeness.cut_short(data, source) if check_cut else None
    if cut and cut.waits():
        rec.status, rec.message = "partial", f"{rec.file} {cut.reason}: a partial delivery"
        return rec, rows
    if cut:
        notes.append(f"{cut.reason}: kept as delivered, its last record is judged as a row")
    if source.fmt == "csv":
        fast = _parse_csv_fast(data, source, rec)
        if fast is not None:
            rec.encoding = "utf-8"
            if data.startswith(b"\xef\xbb\xbf"):
                notes.append("UTF-8 byte-order mark stripped")
            rec.message = "; ".join(notes)
            return rec, fast
    text, rec.encoding, note = _decode(data)
    if note:
        notes.append(note)
    if source.fmt == "csv":
        _parse_csv(text, source, rows, rec)
    else:
        _parse_jsonl(text, source, rows, rec)
    rec.message = "; ".join([m for m in [rec.message, *notes] if m])
    return rec, rows


def _bronze(
    rows: pa.Table, file: str, first: int, source: Source, day: dt.date, now: dt.datetime
) -> pa.Table:
    """Rows of one file (the first of them its row number `first`) with the bronze columns."""
    n = rows.num_rows
    cols = {c: rows[c] for c in [*source.column_names, "_extra", "_raw", "_parse_error"]}
    cols["_batch_date"] = pa.array(np.full(n, np.datetime64(day.isoformat(), "D")), pa.date32())
    cols["_ingested_at"] = pa.array(
        np.full(n, np.datetime64(now.replace(tzinfo=None), "us")), pa.timestamp("us", tz="UTC")
    )
    cols["_source_file"] = pa.array(np.full(n, file, dtype=object), pa.string())
    cols["_row_number"] = pa.array(np.arange(first, first + n, dtype=np.int64), pa.int64())
    return pa.table(cols, schema=bronze_schema(source))


@dataclass
class Landed:
    """One date's parsed files, not yet bronze: (file, its rows in memory or a CsvStream)."""

    source: Source
    day: dt.date
    files: list[tuple[str, pa.Table | CsvStream]] = field(default_factory=list)

    def batches(self, now: dt.datetime) -> Iterator[pa.RecordBatch]:
        """The date's bronze rows, file after file, in record batches of at most WRITE_BATCH_ROWS
        (a streamed file: as pyarrow reads it)."""
        for file, rows in self.files:
            parts = rows.tables(self.source) if isinstance(rows, CsvStream) else [rows]
            first = 1
            for part in parts:
                yield from _bronze(part, file, first, self.source, self.day, now).to_batches(WRITE_BATCH_ROWS)
                first += part.num_rows
            if isinstance(rows, CsvStream) and first - 1 != rows.rows:
                raise RuntimeError(
                    f"{file} changed while it was ingested: {rows.rows} rows counted, {first - 1} read"
                )


# Rows per record batch handed to delta-rs from a file read whole (CsvStream reads its own blocks).
WRITE_BATCH_ROWS = 65_536


def _parse(source: Source, day: dt.date, now: dt.datetime) -> tuple[IngestOutcome, Landed]:
    """Read batch `day` of `source` from the landing zone: its outcome and its files (nothing
    written yet; big CSV files are counted and checked, not held)."""
    folder = landing_dir(source.name, day)
    entries = (
        sorted(p for p in folder.iterdir() if not p.name.startswith((".", "_"))) if folder.is_dir() else []
    )
    outcome = IngestOutcome(source=source.name, day=day, status="succeeded", rows=0)
    landed = Landed(source, day)
    markers = completeness.read_markers(folder) if entries else completeness.Markers(False, None)
    if not entries:
        outcome.status = "not_delivered"
        outcome.message = f"not delivered: no file in {_relative(folder)}/"
        outcome.files.append(
            FileRecord(file=_relative(folder), status="not_delivered", message=outcome.message)
        )
    for path in entries:
        escape = _outside_landing(path)
        if escape:  # not read at all: a malformed file that contributes no rows
            outcome.files.append(FileRecord(file=_relative(path), status="malformed", message=escape))
            continue
        rec, rows = read_landed(path, source, check_cut=not markers.vouched)
        outcome.files.append(rec)
        landed.files.append((rec.file, rows))
    outcome.rows = sum(r.rows for r in outcome.files)
    waiting = _waiting(folder, entries, markers, outcome.files)
    if waiting:  # the batch waits whole: none of its rows are a batch yet
        outcome.status, outcome.rows = "partial", 0
        for r in outcome.files:  # nothing of the date reaches bronze; every file waits with it
            if r.status != "partial":
                r.message = "; ".join(m for m in [r.message, "not ingested: the batch waits"] if m)
            r.status, r.rows = "partial", 0
        outcome.message = "partial delivery, waiting for the complete batch: " + "; ".join(waiting)
        return outcome, Landed(source, day)
    bad = [r for r in outcome.files if r.status == "malformed"]
    if bad:
        outcome.status = "malformed"
        # every message names its file (some file-level reasons do not say which file on their own)
        outcome.message = "; ".join(
            r.message if r.file in r.message else f"{r.file}: {r.message}" for r in bad
        )
    elif outcome.status == "succeeded":
        outcome.message = f"{outcome.rows} rows from {len(entries)} file(s)"
        notes = [f"{r.file}: {r.message}" for r in outcome.files if r.message]
        if notes:
            outcome.message += " (" + "; ".join(notes) + ")"
    return outcome, landed


def _waiting(
    folder: Path, entries: list[Path], markers: completeness.Markers, files: list[FileRecord]
) -> list[str]:
    """Why the batch is not complete yet (empty: it is). Files the manifest does not list are
    malformed, named in their own record."""
    if not entries:
        return []
    reasons = [r.message for r in files if r.status == "partial"]
    if markers.manifest_error:
        reasons.append(f"{_relative(folder)}/{markers.manifest_error}")
    landed = {Path(r.file).name: (r.sha256, r.rows) for r in files}
    missing, unlisted = completeness.manifest_problems(markers, landed)
    reasons += [f"{_relative(folder)}/{m}" for m in missing]
    for r in files:
        if Path(r.file).name in unlisted and r.status == "ok":
            r.status, r.message = "malformed", f"{r.file} is not listed in {completeness.MANIFEST}"
    if not markers.vouched and not markers.manifest_error and completeness.marker_required():
        reasons.append(
            f"{_relative(folder)}/ has no {completeness.SUCCESS_MARKER} or {completeness.MANIFEST} "
            f"and {Settings.require_completion_marker.name} is set"
        )
    return reasons


def ingest_dates(source_name: str, days: list[dt.date]) -> dict[dt.date, IngestOutcome]:
    """Ingest the batches `days` of one source: each date's `_batch_date` partition of bronze is
    replaced, all of them in one Delta commit (and one commit of their file records), so a chunk
    of a backfill pays two commits per source instead of two per date.

    One date never spoils another: a date whose files cannot be read at all (an unexpected error)
    is left out of the commit and reported `failed`, and the bronze row count is checked per date
    after the commit (a date whose count is off is reported `failed`, the others stand)."""
    source = get_source(source_name)
    now = dt.datetime.now(dt.UTC)
    outcomes: dict[dt.date, IngestOutcome] = {}
    landed: list[Landed] = []
    for day in days:
        refused = _over_budget(source, day)
        if refused:  # read nothing of it: the kernel would kill the run mid-write instead
            outcomes[day] = IngestOutcome(source.name, day, "failed", 0, message=refused)
            continue
        try:
            outcome, parsed = _parse(source, day, now)
        except Exception as exc:  # reported for this date only
            outcomes[day] = IngestOutcome(
                source.name, day, "failed", 0, message=f"{type(exc).__name__}: {exc}"
            )
            continue
        outcomes[day] = outcome
        landed.append(parsed)
    written = [d for d in days if outcomes[d].status != "failed"]
    if not written:
        return outcomes

    def batches() -> Iterator[pa.RecordBatch]:
        for one in landed:
            yield from one.batches(now)

    version = lake.replace_stream(
        "bronze",
        source.name,
        batches,
        bronze_schema(source),
        predicate=lake.dates_predicate("_batch_date", written),
        partition_by=["_batch_date"],
    )
    record_files(source, {d: outcomes[d].files for d in written}, now)
    landed = _bronze_counts(source, written)
    for day in written:
        outcome = outcomes[day]
        outcome.bronze_version = version
        if landed.get(day, 0) != outcome.rows:
            outcome.status = "failed"
            outcome.message = (
                f"conservation violated for {source.name} {day}: "
                f"parsed {outcome.rows} rows, bronze holds {landed.get(day, 0)}"
            )
    return outcomes


def _over_budget(source: Source, day: dt.date) -> str | None:
    """Why batch `day` is refused before reading (its estimate is over ASOF_MEMORY_BUDGET), or
    None. Only the files `_parse` would read are counted."""
    folder = landing_dir(source.name, day)
    if not folder.is_dir():
        return None
    files = [
        (_relative(p), p)
        for p in sorted(folder.iterdir())
        if not p.name.startswith((".", "_")) and p.is_file() and _outside_landing(p) is None
    ]
    if not files:
        return None
    est = memory_budget.estimate(source.name, day.isoformat(), files)
    return est.refusal(memory_budget.budget_bytes())


def _bronze_counts(source: Source, days: list[dt.date]) -> dict[dt.date, int]:
    dates = lake.read("bronze", source.name, days=days, columns=["_batch_date"]).column("_batch_date")
    counts = pc.value_counts(dates)
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True))


def ingest(source_name: str, day: dt.date) -> IngestOutcome:
    """Ingest batch `day` of one source (`ingest_dates` for one date); raises instead of reporting
    `failed`, for callers that handle one batch."""
    outcome = ingest_dates(source_name, [day])[day]
    if outcome.status == "failed":
        raise RuntimeError(outcome.message)
    return outcome


def record_files(source: Source, files: dict[dt.date, list[FileRecord]], now: dt.datetime) -> None:
    """Replace the `ops/ingest_files` records of `source` for the dates of `files` (one commit): the
    one writer of that table (tests that hand-build bronze batches record them through it too)."""
    rows = [(day, f) for day, fs in files.items() for f in fs]
    records = {
        "_batch_date": [day for day, _ in rows],
        "source": [source.name] * len(rows),
        "file": [f.file for _, f in rows],
        "status": [f.status for _, f in rows],
        "header": [json.dumps(f.header) if f.header is not None else None for _, f in rows],
        "rows": [f.rows for _, f in rows],
        "bytes": [f.bytes for _, f in rows],
        "sha256": [f.sha256 for _, f in rows],
        "encoding": [f.encoding for _, f in rows],
        "message": [f.message for _, f in rows],
        "ingested_at": [now] * len(rows),
    }
    lake.replace(
        "ops",
        "ingest_files",
        pa.table(records, schema=INGEST_FILES_SCHEMA),
        predicate=f"{lake.dates_predicate('_batch_date', files)} AND source = '{source.name}'",
        partition_by=["_batch_date"],
        schema=INGEST_FILES_SCHEMA,
    )


def read_file_records(day: dt.date, source: str | None = None) -> list[dict]:
    """The ingest outcome per landed file, as recorded (validation reads headers from here)."""
    if not lake.exists("ops", "ingest_files"):
        return []
    tbl = lake.read("ops", "ingest_files", days=[day])
    out = tbl.to_pylist()
    if source:
        out = [r for r in out if r["source"] == get_source(source).name]
    for r in out:
        r["header"] = json.loads(r["header"]) if r["header"] else None
    return out
