"""Strict inputs (issue 7): fuzzing what users and upstream systems hand us.

- The CSV/JSONL reader (`flows.ingest.stage.read_file`) on arbitrary bytes: never an exception, a clear
  file-level outcome, and every line accounted for (a row, the header, or a blank line).
- The same reader on arbitrary well-formed CSV: every record comes back, value for value.
- The CLI on arbitrary arguments: bad values are refused (exit 2, one line on stderr) before any
  flow or generator runs and before anything is written; good values reach the flow normalised.
- Every value that reaches a path or a Delta predicate: table names, layers, dates.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from flows.ingest.stage import GZIP_MAGIC, read_file
from flows.sources import SOURCE_NAMES, get_source
from flows.storage import lake

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TXN = get_source("transactions")
CUSTOMERS = get_source("customers")


def _records(data: bytes) -> int:
    """Non-blank CSV records of the file, counted the way any CSV reader would (independently of
    asof), the header included."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    n = 0
    reader = csv.reader(io.StringIO(text, newline=""), strict=False)
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            return n
        except csv.Error:
            n += 1
            continue
        if rec and not (len(rec) == 1 and rec[0].strip() == ""):
            n += 1


def _check_shape(rec, tbl, source) -> None:
    assert rec.status in ("ok", "malformed")
    assert rec.rows == tbl.num_rows
    assert tbl.column_names == [*source.column_names, "_extra", "_raw", "_parse_error"]
    if rec.status == "malformed":
        assert rec.message
    raw, err = tbl.column("_raw").to_pylist(), tbl.column("_parse_error").to_pylist()
    for r, e in zip(raw, err, strict=True):
        assert (r is None) == (e is None)  # a broken line is kept whole, with its reason


def _check_partial(rec, tbl, data: bytes, name: str) -> None:
    assert tbl.num_rows == 0 and rec.rows == 0
    assert f"{name} ends " in rec.message, rec.message  # names the file, says how it ends
    assert not data.endswith((b"\n", b"\r")) or data.count(b'"') % 2  # only a cut file waits


@FUZZ
@given(data=st.binary(max_size=3000))
@example(data=b"")
@example(data=b"\n\n \n")
@example(data=b"txn_id;amount\n1;2\n")
@example(data=b"txn_id,txn_id\n1,2\n")
@example(data=b'txn_id,amount\n"unterminated,1\n2,3\n')
@example(
    data=b"txn_id,customer_id,merchant_id,amount,currency,channel,event_time\nt1,1,2,3.00,USD,web,2024-01-0"
)
@example(data=b"txn_id,amount\n1,2\x00\n")
@example(data=b"\xef\xbb\xbftxn_id,amount\r\n1,2\r3,4\n")
@example(data=GZIP_MAGIC + b"not really gzip")
def test_csv_reader_on_random_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "transactions.csv"
    path.write_bytes(data)
    rec, tbl = read_file(path, TXN)
    if rec.status == "partial":  # a cut last record: the date waits and nothing is read yet
        _check_partial(rec, tbl, data, "transactions.csv")
        rec, tbl = read_file(path, TXN, check_cut=False)  # what `ASOF_PARTIAL_FILES=ingest` reads
    _check_shape(rec, tbl, TXN)
    if data.startswith(GZIP_MAGIC):
        return  # corrupt gzip: malformed, nothing read (covered by the shape check)
    records = _records(data)
    if records == 0:
        assert rec.status == "malformed" and tbl.num_rows == 0
    elif "no header" in rec.message:
        assert tbl.num_rows == records  # no recognisable header: every line kept, the first too
    else:
        assert tbl.num_rows == records - 1  # the header, then one row per record


@FUZZ
@given(data=st.binary(max_size=2000))
@example(data=b'{"customer_id": 1}\nnot json\n[1]\n\n{"op": "c"')
def test_jsonl_reader_on_random_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "customers.jsonl"
    path.write_bytes(data)
    rec, tbl = read_file(path, CUSTOMERS)
    if rec.status == "partial":
        _check_partial(rec, tbl, data, "customers.jsonl")
        rec, tbl = read_file(path, CUSTOMERS, check_cut=False)
    _check_shape(rec, tbl, CUSTOMERS)
    if data.startswith(GZIP_MAGIC):
        return
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    lines = [ln for ln in (x.rstrip("\r") for x in text.split("\n")) if ln.strip()]
    assert tbl.num_rows == len(lines)  # one row per non-blank line, JSON or not


FIELD = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@FUZZ
@given(
    columns=st.lists(st.sampled_from(TXN.column_names), min_size=1, unique=True),
    extra=st.lists(st.sampled_from(["note", "device_id", "x y"]), unique=True, max_size=2),
    rows=st.lists(st.lists(FIELD, min_size=9, max_size=9), max_size=15),
    eol=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
)
def test_csv_reader_returns_every_record_value_for_value(tmp_path, columns, extra, rows, eol, bom) -> None:
    header = columns + extra
    body = [r[: len(header)] for r in rows]
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator=eol, quoting=csv.QUOTE_ALL).writerows([header, *body])
    data = buf.getvalue().encode("utf-8")
    path = tmp_path / "transactions.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    assume(_records(data) == len(body) + 1)  # all-blank rows are blank lines, not records
    rec, tbl = read_file(path, TXN)
    assert rec.status == "ok", rec.message
    assert tbl.num_rows == len(body)
    got = tbl.to_pylist()
    for src, row in zip(body, got, strict=True):
        values = dict(zip(header, src, strict=True))
        for c in TXN.column_names:
            want = values.get(c)
            assert row[c] == (None if want is None or want.strip() == "" else want)
        if extra:
            kept = json.loads(row["_extra"])
            assert {k: (v if v is None else str(v)) for k, v in kept.items()} == {
                k: (None if values[k].strip() == "" else values[k]) for k in extra
            }
        assert row["_parse_error"] is None


# ---------------------------------------------------------------- the CLI


class Calls:
    def __init__(self) -> None:
        self.flows: list[tuple] = []
        self.generated: list[tuple] = []


@pytest.fixture
def stubbed_cli(home: Path, monkeypatch: pytest.MonkeyPatch) -> Calls:
    """`flows.cli.main.main` with the flow runner and the generator replaced by recorders."""
    from flows.cli import main as cli
    from flows.upstream import simulate

    calls = Calls()

    def run_flow(kind, days, **params):
        calls.flows.append((kind, days, params))
        return []

    def generate(landing, start, end, scale, seed=42, faults=(), progress=None):
        calls.generated.append((start, end, scale, seed, tuple(faults)))
        return {"dates": {}}

    monkeypatch.setattr(cli, "_run_flow", run_flow)
    monkeypatch.setattr(simulate, "generate", generate)
    return calls


def _main(argv: list[str], capsys) -> tuple[int, str]:
    from flows.cli import main as cli

    old = sys.argv
    sys.argv = ["asof", *argv]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


DATE_TEXT = st.one_of(
    st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2100, 1, 1)).map(dt.date.isoformat),
    st.text(max_size=12),
    st.sampled_from(
        ["2024-02-30", "2024-13-01", "2024-1-01", "24-01-01", "2024/01/01", "2024-01-01T00:00",
         "../../etc", "2024-01-01; rm -rf /", "2024-01-01' OR '1'='1", "", " ", "0000-01-01"]
    ),
)  # fmt: skip


def _valid(text: str) -> dt.date | None:
    from flows.dates import DateError, parse_date

    try:
        return parse_date(text)
    except DateError:
        return None


def _assert_refused(code: int, err: str, home: Path) -> None:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("asof: error:"), err
    assert list(home.iterdir()) == []  # nothing written


@FUZZ
@given(text=DATE_TEXT)
def test_run_date_is_refused_or_normalised(stubbed_cli: Calls, home: Path, capsys, text: str) -> None:
    stubbed_cli.flows.clear()
    code, err = _main(["run", "--date", text], capsys)
    day = _valid(text)
    if day is None:
        _assert_refused(code, err, home)
        assert stubbed_cli.flows == []
    else:
        assert code == 0, err
        assert stubbed_cli.flows == [("run", 1, {"execution_date": day.isoformat()})]


@FUZZ
@given(start=DATE_TEXT, end=DATE_TEXT, chunk=st.integers(-5, 400))
def test_backfill_range_is_refused_or_normalised(stubbed_cli, home, capsys, start, end, chunk) -> None:
    stubbed_cli.flows.clear()
    code, err = _main(["backfill", "--start", start, "--end", end, "--chunk-days", str(chunk)], capsys)
    d1, d2 = _valid(start), _valid(end)
    if d1 is None or d2 is None or d2 < d1 or not 1 <= chunk <= 366:
        assert code == 2, err
        assert stubbed_cli.flows == []
        assert list(home.iterdir()) == []
    else:
        assert code == 0, err
        [(kind, days, params)] = stubbed_cli.flows
        assert (kind, days) == ("backfill", (d2 - d1).days + 1)
        assert params["start"] == d1.isoformat() and params["end"] == d2.isoformat()
        assert params["chunk_days"] == chunk


@FUZZ
@given(
    scale=st.one_of(st.sampled_from(["demo", "small", "bench", "10x10", "200x400"]), st.text(max_size=12)),
    fault=st.one_of(
        st.builds(
            lambda f, d, s: f"{f}@{d}{s}",
            st.sampled_from(["nulls", "dupes", "cents", "missing_file", "boom"]),
            DATE_TEXT,
            st.sampled_from(["", ":customers", ":merchants", ":nope", ":../x"]),
        ),
        st.text(max_size=20),
    ),
)
def test_generate_arguments_are_refused_or_accepted(stubbed_cli, home, capsys, scale, fault) -> None:
    from flows.upstream import simulate

    stubbed_cli.generated.clear()
    code, err = _main(
        ["generate", "--start", "2024-01-01", "--end", "2024-01-05", "--scale", scale, "--inject", fault],
        capsys,
    )
    try:
        expected = (simulate.parse_scale(scale), simulate.parse_fault(fault))
    except ValueError:
        _assert_refused(code, err, home)
        assert stubbed_cli.generated == []
        return
    assert code == 0, err
    [(_, _, got_scale, _, faults)] = stubbed_cli.generated
    assert (got_scale, faults) == (expected[0], (expected[1],))
    assert expected[1].source in SOURCE_NAMES


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["backfill", "--start", "2024-01-01", "--end", "2024-01-02", "--chunk-days", "0"], "chunk-days"),
        (["quarantine", "release", "--source", "nope", "--date", "2024-01-01"], "unknown source"),
        (["quarantine", "show", "--source", "transactions", "--date", "2024-02-31"], "2024-02-31"),
        (["status", "--end", "2024-01-01"], "--start"),
        (["run", "--date", "2024-01-01; touch pwned"], "not an ISO date"),
    ],
)
def test_bad_arguments_in_a_real_process(tmp_path: Path, argv: list[str], needle: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "flows.cli.main", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "ASOF_HOME": str(home)},
        timeout=120,
    )
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("asof: error:") and needle in lines[0], res.stderr
    assert list(home.iterdir()) == []
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- values reaching paths and predicates


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=30), layer=st.text(max_size=12) | st.sampled_from(lake.LAYERS))
def test_only_plain_table_names_reach_a_path(name: str, layer: str) -> None:
    try:
        uri = lake.uri(layer, name)
    except lake.LakeError:
        return
    assert layer in lake.LAYERS
    assert name and all(c.isascii() and (c.isalnum() or c == "_") for c in name)
    assert uri.endswith(f"/{layer}/{name}")


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.text(max_size=20), st.integers(), st.datetimes(), st.dates()))
def test_predicates_take_dates_only(value) -> None:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        assert lake.date_predicate("_batch_date", value) == f"_batch_date = '{value.isoformat()}'"
    else:
        with pytest.raises(lake.LakeError):
            lake.date_predicate("_batch_date", value)
    with pytest.raises(lake.LakeError):
        lake.date_predicate("_batch_date = '2024-01-01' OR 1=1 --", dt.date(2024, 1, 1))
