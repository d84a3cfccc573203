"""The bad-input corpus: broken upstream deliveries and what must become of them (contract §4 and 6).

Each `Case` rewrites one source's batch folder for the case date, starting from the clean files the
simulator delivered there, and states the expected outcome:

- `ingest`: the file-level verdict (`succeeded`, `malformed` with words the message must contain
  naming the file, `not_delivered`);
- `validate`: the batch verdict (`succeeded`, `rejected` with the batch rule, `not_delivered`);
- `reasons`: quarantine reasons that must appear, each with its exact row count when given;
- `landed`: the number of rows the builder delivered, counted by the builder itself (data records;
  for files ingest cannot split into fields, every non-blank line, the header included), which
  bronze must hold and silver + quarantine must add up to.

A builder `build(folder, ctx)` writes the case's files into the (emptied) batch folder; `ctx` holds
the case date and every source's clean file bytes for that date and the day before. Builders read
nothing else, so a case is reproducible from its name.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Ctx:
    day: dt.date
    clean: dict[str, bytes]  # source -> the clean file of the case date
    previous: dict[str, bytes]  # source -> the clean file of the day before


Builder = Callable[[Path, Ctx], int]


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    build: Builder | None  # None: a simulator fault, built by the simulator
    ingest: str = "succeeded"
    validate: str = "succeeded"
    rule: str | None = None  # batch rule of a rejected batch
    reasons: dict[str, int | None] = field(default_factory=dict)  # reason -> exact count (None: >= 1)
    only_reasons: bool = False  # no other quarantine reason may appear
    quarantined: int | None = None  # exact number of quarantined rows
    message: tuple[str, ...] = ()  # words the ingest/validation message must contain
    warning: str | None = None  # a validation warning that must be recorded
    fault: str | None = None  # simulator fault name
    xfail: str | None = None  # a known gap, with the reason (reported in the issue)


# ------------------------------------------------------------------------------ csv helpers


def rows_of(data: bytes) -> list[list[str]]:
    return [r for r in csv.reader(io.StringIO(data.decode("utf-8"), newline="")) if r]


def to_csv(rows: list[list[str]], delimiter: str = ",", newline: str = "\n") -> bytes:
    buf = io.StringIO(newline="")
    w = csv.writer(buf, delimiter=delimiter, lineterminator=newline)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def _edit_column(source_file: str, column: str, values: list[str]) -> Builder:
    """Overwrite `column` in the first len(values) data rows."""

    def build(folder: Path, ctx: Ctx) -> int:
        rows = rows_of(ctx.clean[source_file])
        col = rows[0].index(column)
        for i, v in enumerate(values, start=1):
            rows[i][col] = v.format(day=ctx.day.isoformat())
        write(folder, f"{source_file}.csv", to_csv(rows))
        return len(rows) - 1

    return build


def _txn_values(column: str, *values: str) -> Builder:
    return _edit_column("transactions", column, list(values))


def _header(transform: Callable[[list[str]], list[str]], source: str = "transactions") -> Builder:
    def build(folder: Path, ctx: Ctx) -> int:
        rows = rows_of(ctx.clean[source])
        rows[0] = transform(list(rows[0]))
        write(folder, f"{source}.csv", to_csv(rows))
        return len(rows) - 1

    return build


def _columns(
    transform: Callable[[list[list[str]]], list[list[str]]], source: str = "transactions"
) -> Builder:
    def build(folder: Path, ctx: Ctx) -> int:
        rows = transform(rows_of(ctx.clean[source]))
        write(folder, f"{source}.csv", to_csv(rows))
        return len(rows) - 1

    return build


def _drop_col(name: str):
    def f(rows):
        i = rows[0].index(name)
        return [r[:i] + r[i + 1 :] for r in rows]

    return f


def _add_col(name: str, value: str):
    return lambda rows: [rows[0] + [name]] + [r + [value] for r in rows[1:]]


def _reorder(rows):
    order = list(reversed(range(len(rows[0]))))
    return [[r[i] for i in order] for r in rows]


# ------------------------------------------------------------------------------ builders


def wrong_delimiter(folder: Path, ctx: Ctx) -> int:
    rows = rows_of(ctx.clean["transactions"])
    write(folder, "transactions.csv", to_csv(rows, delimiter=";"))
    return len(rows)  # no header recognised: every line kept raw


def utf8_bom(folder: Path, ctx: Ctx) -> int:
    write(folder, "transactions.csv", b"\xef\xbb\xbf" + ctx.clean["transactions"])
    return len(rows_of(ctx.clean["transactions"])) - 1


def latin1(folder: Path, ctx: Ctx) -> int:
    rows = rows_of(ctx.clean["merchants"])
    col = rows[0].index("name")
    rows[1][col] = "Café Müller"
    rows[2][col] = "Crème Brûlée & Co"
    write(folder, "merchants.csv", to_csv(rows).decode("utf-8").encode("latin-1"))
    return len(rows) - 1


def truncated_last_line(folder: Path, ctx: Ctx) -> int:
    data = ctx.clean["transactions"].rstrip(b"\n")
    last = data.rsplit(b"\n", 1)[1]
    write(folder, "transactions.csv", data[: len(data) - len(last) // 2])  # cut mid-row, no newline
    return 0  # a partial delivery: nothing of it is a batch yet


def truncated_cdc_line(folder: Path, ctx: Ctx) -> int:
    data = ctx.clean["customers"].rstrip(b"\n")
    write(folder, "customers.jsonl", data[:-7])  # the last change cut inside its JSON object
    return 0


def no_final_newline(folder: Path, ctx: Ctx) -> int:
    """A whole export whose last record lacks its line terminator (common, and not a cut)."""
    write(folder, "transactions.csv", ctx.clean["transactions"].rstrip(b"\n"))
    return len(rows_of(ctx.clean["transactions"])) - 1


def quoted_newlines(folder: Path, ctx: Ctx) -> int:
    rows = rows_of(ctx.clean["merchants"])
    col = rows[0].index("name")
    rows[1][col] = "Line one\nline two"
    rows[2][col] = 'Say "hi"\r\nthen leave'
    write(folder, "merchants.csv", to_csv(rows))
    return len(rows) - 1


def header_only_transactions(folder: Path, ctx: Ctx) -> int:
    write(folder, "transactions.csv", ctx.clean["transactions"].split(b"\n", 1)[0] + b"\n")
    return 0


def header_only_chargebacks(folder: Path, ctx: Ctx) -> int:
    write(folder, "chargebacks.csv", ctx.clean["chargebacks"].split(b"\n", 1)[0] + b"\n")
    return 0


def duplicate_header(folder: Path, ctx: Ctx) -> int:
    rows = rows_of(ctx.clean["transactions"])
    rows[0][rows[0].index("channel")] = "amount"
    write(folder, "transactions.csv", to_csv(rows))
    return len(rows) - 1  # the header is recognised (then refused): data lines kept raw


def zero_bytes(folder: Path, ctx: Ctx) -> int:
    write(folder, "transactions.csv", b"")
    return 0


def directory(folder: Path, ctx: Ctx) -> int:
    (folder / "transactions.csv").mkdir(parents=True)
    return 0


def gzip_named_csv(folder: Path, ctx: Ctx) -> int:
    write(folder, "transactions.csv", gzip.compress(ctx.clean["transactions"], mtime=0))
    return len(rows_of(ctx.clean["transactions"])) - 1


def very_long_strings(folder: Path, ctx: Ctx) -> int:
    rows = rows_of(ctx.clean["merchants"])
    rows[1][rows[0].index("name")] = "x" * 2_000_000
    write(folder, "merchants.csv", to_csv(rows))
    return len(rows) - 1


def control_characters(folder: Path, ctx: Ctx) -> int:
    rows = rows_of(ctx.clean["merchants"])
    col = rows[0].index("name")
    rows[1][col] = "Bell\x07 and\x1b[31m escape"
    rows[2][col] = "Nul\x00byte"
    rows[3][col] = "Form\x0cfeed\x0bvt"
    write(folder, "merchants.csv", to_csv(rows))
    return len(rows) - 1


def customer_json_garbage(folder: Path, ctx: Ctx) -> int:
    lines = [ln for ln in ctx.clean["customers"].decode().split("\n") if ln.strip()]
    lines.insert(1, '{"customer_id": 5, "op": "u", "updated_at": ')  # cut JSON
    lines.insert(2, "this is not json")
    lines.insert(3, '["a", "list"]')
    write(folder, "customers.jsonl", ("\n".join(lines) + "\n").encode())
    return len(lines)


def crlf(folder: Path, ctx: Ctx) -> int:
    rows = rows_of(ctx.clean["transactions"])
    write(folder, "transactions.csv", to_csv(rows, newline="\r\n"))
    return len(rows) - 1


def binary_garbage(folder: Path, ctx: Ctx) -> int:
    rnd = random.Random(7)
    data = bytes(rnd.randrange(256) for _ in range(4000)).replace(b"\x1f\x8b", b"..")
    write(folder, "transactions.csv", data)
    text = data.decode("latin-1")
    return sum(1 for r in csv.reader(io.StringIO(text, newline=""), strict=False) if r and r != [""])


def resent_in_later_batch(folder: Path, ctx: Ctx) -> int:
    """The previous batch's transactions file shows up again, next to this batch's own file."""
    write(folder, "transactions.csv", ctx.clean["transactions"])
    write(folder, "transactions_resent.csv", ctx.previous["transactions"])
    return len(rows_of(ctx.clean["transactions"])) - 1 + len(rows_of(ctx.previous["transactions"])) - 1


def same_file_twice_in_batch(folder: Path, ctx: Ctx) -> int:
    write(folder, "transactions.csv", ctx.clean["transactions"])
    write(folder, "transactions-copy.csv", ctx.clean["transactions"])
    return 2 * (len(rows_of(ctx.clean["transactions"])) - 1)


# ------------------------------------------------------------------------------ the cases


def sim(fault: str, source: str = "transactions", **expect) -> Case:
    name = f"fault:{fault}" + ("" if source == "transactions" else f":{source}")
    return Case(name, source, None, fault=fault, **expect)


REJECTED = {"validate": "rejected"}
NOT_DELIVERED = {"ingest": "not_delivered", "validate": "not_delivered"}

# Every simulator fault (contract §4), transactions unless a source is named.
SIMULATOR = [
    sim("nulls", reasons={"null:": None}),
    sim("dupes", reasons={"duplicate": None}),
    sim("bad_amounts", reasons={"amount_out_of_range": None}),
    sim("unknown_currency", reasons={"unknown_currency": None}),
    sim("future_times", reasons={"future_event_time": None}),
    sim("schema_drop_column", **REJECTED, rule="contract_broken", message=("channel",)),
    sim("schema_rename_column", **REJECTED, rule="contract_broken", message=("amount",)),
    sim("schema_add_column", warning="added_columns"),
    sim("cents", **REJECTED, rule="amount_drift"),
    sim("volume_drop", **REJECTED, rule="volume"),
    sim("empty_file", **REJECTED, rule="volume"),
    sim("malformed_rows", reasons={"malformed_row": None}),
    sim("missing_file", **NOT_DELIVERED, message=("not delivered", "transactions")),
    sim("empty_file", "customers"),  # an empty CDC file: a valid batch with no changes
    sim("missing_file", "merchants", **NOT_DELIVERED, message=("not delivered", "merchants")),
]

HANDMADE = [
    Case("wrong_delimiter", "transactions", wrong_delimiter, ingest="malformed", validate="rejected",
         rule="contract_broken", message=("transactions.csv", "no header")),
    Case("utf8_bom", "transactions", utf8_bom, message=("byte-order mark",)),
    Case("latin1_bytes", "merchants", latin1, message=("Latin-1",)),
    Case("truncated_last_line", "transactions", truncated_last_line, ingest="partial",
         validate="not_delivered", message=("transactions.csv ends mid-record", "partial delivery")),
    Case("truncated_cdc_line", "customers", truncated_cdc_line, ingest="partial",
         validate="not_delivered", message=("customers.jsonl ends mid-record", "partial delivery")),
    Case("no_final_newline", "transactions", no_final_newline,
         message=("no line terminator after its last record",)),
    Case("quoted_newlines", "merchants", quoted_newlines),
    Case("header_only_transactions", "transactions", header_only_transactions, validate="rejected",
         rule="volume"),
    Case("header_only_chargebacks", "chargebacks", header_only_chargebacks),
    Case("duplicate_header_names", "transactions", duplicate_header, ingest="malformed", validate="rejected",
         message=("duplicate column names", "amount")),
    Case("extra_column", "transactions", _columns(_add_col("loyalty_tier", "gold")), warning="added_columns"),
    Case("missing_column", "transactions", _columns(_drop_col("currency")), validate="rejected",
         rule="contract_broken", message=("currency",)),
    Case("renamed_column", "transactions", _header(lambda h: [("ts" if c == "event_time" else c) for c in h]),
         validate="rejected", rule="contract_broken", message=("event_time",)),
    Case("reordered_columns", "transactions", _columns(_reorder)),
    Case("thousands_separators", "transactions", _txn_values("amount", "1,234.50", "12,000"),
         reasons={"unparseable:amount": 2}, only_reasons=True),
    Case("nan_inf_huge_amounts", "transactions", _txn_values("amount", "NaN", "inf", "-inf", "1e308", "1E5"),
         reasons={"unparseable:amount": 5}, only_reasons=True),
    Case("amounts_beyond_two_decimals", "transactions", _txn_values("amount", "12.345", "0.001", "7.5000"),
         reasons={"unparseable:amount": 2}, only_reasons=True),  # 7.5000 is 7.50: kept
    Case("naive_timestamps", "transactions", _txn_values("event_time", "{day}T10:00:00", "{day} 11:30:00"),
         reasons={"naive_timestamp:event_time": 2}, only_reasons=True),
    Case("offset_timestamps", "transactions",
         _txn_values("event_time", "{day}T10:00:00+02:00", "{day}T22:30:00-00:30", "{day}T12:00:00+0100")),
    # "+5.00" and "10.125" are unparseable, "-0.00" is out of range; "5." and ".50" are kept
    Case("amount_formats", "transactions", _txn_values("amount", "+5.00", "5.", ".50", "-0.00", "10.125"),
         reasons={"unparseable:amount": 2, "amount_out_of_range": 1}, only_reasons=True, quarantined=3),
    Case("enum_case_and_whitespace", "transactions", _txn_values("currency", "usd", " USD", "EUR"),
         reasons={"unknown_currency": 2}, only_reasons=True, quarantined=2),
    Case("timestamp_edge_formats", "transactions",
         _txn_values("event_time", "{day}T10:00:00.123456789Z", "{day}T24:00:00Z", "{day}T10:00Z", "{day}"),
         reasons={"unparseable:event_time": 2}, only_reasons=True, quarantined=2),
    Case("epoch_timestamps", "transactions", _txn_values("event_time", "1704153600", "1704153600.5"),
         reasons={"unparseable:event_time": 2}, only_reasons=True),
    Case("far_future_timestamps", "transactions",
         _txn_values("event_time", "2100-01-01T00:00:00Z", "2262-04-11T00:00:00Z"),
         reasons={"future_event_time": 2}, only_reasons=True),
    Case("far_past_timestamps", "transactions",
         _txn_values("event_time", "1900-01-01T00:00:00Z", "1677-09-22T00:00:00Z", "1970-01-01T00:00:00Z"),
         reasons={"too_late": 3}, only_reasons=True),
    Case("timestamps_beyond_nanosecond_range", "transactions",
         _txn_values("event_time", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"),
         reasons={"future_event_time": 1, "too_late": 1}, only_reasons=True),
    Case("zero_byte_file", "transactions", zero_bytes, ingest="malformed", validate="rejected",
         message=("transactions.csv", "empty")),
    Case("file_is_a_directory", "transactions", directory, ingest="malformed", validate="rejected",
         message=("transactions.csv", "directory")),
    Case("gzip_named_csv", "transactions", gzip_named_csv, message=("gzip",)),
    Case("very_long_strings", "merchants", very_long_strings),
    Case("control_characters", "merchants", control_characters),
    Case("customer_json_not_json", "customers", customer_json_garbage, reasons={"malformed_row": 3},
         quarantined=3),
    Case("crlf_line_endings", "transactions", crlf),
    Case("binary_garbage", "transactions", binary_garbage, ingest="malformed", validate="rejected"),
    Case("same_file_twice_in_one_batch", "transactions", same_file_twice_in_batch, validate="rejected",
         rule="too_many_failing_rows", reasons={"duplicate": None}),
    Case("previous_file_resent_in_later_batch", "transactions", resent_in_later_batch, validate="rejected",
         rule="too_many_failing_rows", reasons={"duplicate": None}),
]  # fmt: skip
