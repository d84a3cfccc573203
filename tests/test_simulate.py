"""The upstream simulator: determinism, realism and fault injection (contract §4)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from flows.sources import SOURCES
from flows.upstream.simulate import (
    DEMO_SOURCES,
    FAULTS,
    FAULTS_BY_SOURCE,
    STATE_FILE,
    Fault,
    Scale,
    generate,
    parse_fault,
    parse_scale,
)

SCALE = parse_scale("300x600")
EPOCH = dt.date(2024, 1, 1)  # a Monday
LAST = dt.date(2024, 1, 21)
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
AMOUNT = re.compile(r"^\d+\.\d{2}$")


def days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def file_of(landing: Path, source: str, day: dt.date) -> Path:
    return landing / source / day.isoformat() / SOURCES[source].default_file


def snapshot(landing: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(landing)): p.read_bytes()
        for p in sorted(landing.rglob("*"))
        if p.is_file() and p.name != STATE_FILE
    }


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def read_dicts(path: Path) -> list[dict]:
    if SOURCES[path.parent.parent.name].fmt == "jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    header, rows = read_csv(path)
    return [dict(zip(header, r, strict=True)) for r in rows]


def day_of(ts: str) -> dt.date:
    return dt.date.fromisoformat(ts[:10])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    """Three weeks of clean data."""
    landing = tmp_path_factory.mktemp("world") / "landing"
    summary = generate(landing, EPOCH, LAST, SCALE, seed=42)
    return landing, summary


@pytest.fixture(scope="module")
def deliveries(world) -> list[tuple[dt.date, dict, str]]:
    """Every transaction row as (batch day, row, raw line), in delivery order."""
    landing, _ = world
    out = []
    for day in days(EPOCH, LAST):
        path = file_of(landing, "transactions", day)
        lines = path.read_text().splitlines()
        header = lines[0].split(",")
        for line in lines[1:]:
            out.append((day, dict(zip(header, line.split(","), strict=True)), line))
    return out


# ------------------------------------------------------------------------------ parsing


def test_parse_scale_named_and_custom() -> None:
    with pytest.raises(ValueError, match=r"demo .*small .*bench .*<customers>x<txns_per_day>"):
        parse_scale("huge")
    assert parse_scale("demo") == Scale("demo", 2000, 5000)
    assert parse_scale("small") == Scale("small", 20_000, 50_000)
    assert parse_scale("BENCH") == Scale("bench", 100_000, 100_000)
    assert parse_scale("500x1000") == Scale("500x1000", 500, 1000)


@pytest.mark.parametrize(
    "text", ["", "huge", "500x", "x1000", "500*1000", "0x1000", "500x0", "5x100", "1.5x100"]
)
def test_parse_scale_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid scale"):
        parse_scale(text)


def test_parse_fault_forms() -> None:
    assert parse_fault("nulls@2024-01-05") == Fault("nulls", dt.date(2024, 1, 5), "transactions")
    assert parse_fault("dupes@2024-01-05:customers") == Fault("dupes", dt.date(2024, 1, 5), "customers")
    assert str(parse_fault("missing_file@2024-02-29:chargebacks")) == "missing_file@2024-02-29:chargebacks"


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("nulls", "FAULT@YYYY-MM-DD"),
        ("nulls@", "FAULT@YYYY-MM-DD"),
        ("bogus@2024-01-05", "missing_file"),
        ("nulls@2024-13-01", "date"),
        ("nulls@2024-02-30", "date"),
        ("nulls@20240105", "date"),
        ("nulls@2024-01-05:bogus", "transactions"),
        ("cents@2024-01-05:customers", "valid for customers"),
        ("volume_drop@2024-01-05:merchants", "valid for merchants"),
    ],
)
def test_parse_fault_refuses(text: str, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        parse_fault(text)


def test_fault_outside_range_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside"):
        generate(tmp_path / "landing", EPOCH, EPOCH, SCALE, faults=[Fault("nulls", dt.date(2024, 1, 2))])


# ------------------------------------------------------------------------- determinism


def test_range_equals_day_by_day_and_seed_matters(tmp_path: Path) -> None:
    end = EPOCH + dt.timedelta(days=7)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, EPOCH, end, SCALE, seed=7)
    for day in days(EPOCH, end):
        generate(b, day, day, SCALE, seed=7)
    generate(c, EPOCH, end, SCALE, seed=8)
    snap_a, snap_b, snap_c = snapshot(a), snapshot(b), snapshot(c)
    assert len(snap_a) == 4 * 8
    assert snap_a == snap_b
    assert snap_a.keys() == snap_c.keys()
    differing = [k for k in snap_a if snap_a[k] != snap_c[k]]
    assert any(k.startswith("transactions") for k in differing)
    # regenerating a day in the middle (after later days exist) changes nothing; no temp files left
    generate(a, EPOCH + dt.timedelta(days=3), EPOCH + dt.timedelta(days=3), SCALE, seed=7)
    assert snapshot(a) == snap_a
    assert not [p for p in a.rglob(".*")]


def test_landing_state_refuses_mismatch(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    generate(landing, dt.date(2024, 1, 10), dt.date(2024, 1, 10), SCALE, seed=1)
    state = json.loads((landing / STATE_FILE).read_text())
    assert state["epoch"] == "2024-01-10" and state["seed"] == 1
    with pytest.raises(ValueError, match="ASOF_HOME"):
        generate(landing, dt.date(2024, 1, 11), dt.date(2024, 1, 11), SCALE, seed=2)
    with pytest.raises(ValueError, match="ASOF_HOME"):
        generate(landing, dt.date(2024, 1, 11), dt.date(2024, 1, 11), parse_scale("400x600"), seed=1)
    with pytest.raises(ValueError, match="ASOF_HOME"):
        generate(landing, dt.date(2024, 1, 9), dt.date(2024, 1, 11), SCALE, seed=1)
    generate(landing, dt.date(2024, 1, 11), dt.date(2024, 1, 11), Scale("alias", 300, 600), seed=1)
    with pytest.raises(ValueError, match="before start"):
        generate(landing, dt.date(2024, 1, 12), dt.date(2024, 1, 11), SCALE, seed=1)


# ------------------------------------------------------------------------------ realism


def test_summary_and_formats(world) -> None:
    landing, summary = world
    assert summary["epoch"] == EPOCH.isoformat()
    assert set(summary["dates"]) == {d.isoformat() for d in days(EPOCH, LAST)}
    for day in days(EPOCH, LAST):
        for source in DEMO_SOURCES:
            entry = summary["dates"][day.isoformat()][source]
            path = Path(entry["path"])
            assert path == file_of(landing, source, day)
            raw = path.read_bytes()
            assert b"\r" not in raw
            lines = raw.decode("utf-8").splitlines()
            data_lines = lines if SOURCES[source].fmt == "jsonl" else lines[1:]
            assert entry["rows"] == len(data_lines)
            if SOURCES[source].fmt == "csv":
                header, rows = read_csv(path)
                assert header == SOURCES[source].column_names
                assert all(len(r) == len(header) for r in rows)
    for row in read_dicts(file_of(landing, "transactions", LAST)):
        assert AMOUNT.match(row["amount"]) and 0 < float(row["amount"]) <= 1_000_000
        assert row["currency"] in ("USD", "EUR", "GBP") and row["channel"] in ("web", "app", "pos")
        assert TS.match(row["event_time"])
        assert row["customer_id"].isdigit() and row["merchant_id"].isdigit()
    for rec in read_dicts(file_of(landing, "customers", EPOCH)):
        assert list(rec) == SOURCES["customers"].column_names
        assert isinstance(rec["customer_id"], int) and rec["kyc_level"] in (0, 1, 2, 3)
        assert rec["op"] == "c" and TS.match(rec["updated_at"]) and day_of(rec["updated_at"]) == EPOCH
        assert dt.date.fromisoformat(rec["signup_date"]) < EPOCH
        assert re.fullmatch(r"[A-Z]{2}", rec["country"])
    merchants = read_dicts(file_of(landing, "merchants", LAST))
    assert any("," in m["name"] for m in merchants)  # quoted in the file, read back whole
    assert {m["risk_tier"] for m in merchants} <= {"low", "medium", "high"}
    assert all(re.fullmatch(r"\d{4}", m["mcc"]) for m in merchants)


def test_late_deliveries(deliveries) -> None:
    seen: set[str] = set()
    late, total, lags = 0, 0, Counter()
    for batch, row, _ in deliveries:
        if row["txn_id"] in seen:
            continue
        seen.add(row["txn_id"])
        total += 1
        lag = (batch - day_of(row["event_time"])).days
        assert 0 <= lag <= 3
        if lag:
            late += 1
            lags[lag] += 1
    assert 0.01 <= late / total <= 0.04, late / total
    assert set(lags) <= {1, 2, 3} and lags[1] > 0


def test_redelivered_duplicates(deliveries) -> None:
    first: dict[str, tuple[dt.date, str]] = {}
    redelivered = 0
    for batch, row, line in deliveries:
        if row["txn_id"] in first:
            first_batch, first_line = first[row["txn_id"]]
            assert line == first_line  # identical content
            assert batch > first_batch  # never within the same batch
            assert 1 <= (batch - day_of(row["event_time"])).days <= 5
            redelivered += 1
        else:
            first[row["txn_id"]] = (batch, line)
    assert redelivered > 0
    assert redelivered / len(first) < 0.01


def test_customers_created_before_they_transact(world, deliveries) -> None:
    landing, _ = world
    created: dict[int, dt.date] = {}
    updates = 0
    for day in days(EPOCH, LAST):
        for rec in read_dicts(file_of(landing, "customers", day)):
            assert day_of(rec["updated_at"]) == day
            if rec["op"] == "c":
                assert rec["customer_id"] not in created
                created[rec["customer_id"]] = day
            else:
                assert created[rec["customer_id"]] < day
                updates += 1
    assert len(created) > SCALE.customers * 0.8 and updates > 0
    assert max(created.values()) > EPOCH  # new customers keep arriving
    for batch, row, _ in deliveries:
        assert created[int(row["customer_id"])] <= batch


def test_merchants_known_in_same_batch(world, deliveries) -> None:
    landing, _ = world
    snapshots = {
        day: {int(m["merchant_id"]) for m in read_dicts(file_of(landing, "merchants", day))}
        for day in days(EPOCH, LAST)
    }
    assert all(
        snapshots[a] <= snapshots[b] for a, b in zip(list(snapshots), list(snapshots)[1:], strict=False)
    )
    for batch, row, _ in deliveries:
        assert int(row["merchant_id"]) in snapshots[batch]


def test_chargebacks_follow_delivered_transactions(world, deliveries) -> None:
    landing, _ = world
    delivered: dict[str, tuple[dt.date, dt.date]] = {}
    for batch, row, _ in deliveries:
        delivered.setdefault(row["txn_id"], (batch, day_of(row["event_time"])))
    n = 0
    charged: set[str] = set()
    for day in days(EPOCH, LAST):
        for cb in read_dicts(file_of(landing, "chargebacks", day)):
            batch, event_day = delivered[cb["txn_id"]]
            assert batch < day
            assert 1 <= (day - event_day).days <= 60
            assert TS.match(cb["chargeback_time"]) and day_of(cb["chargeback_time"]) == day
            assert re.fullmatch(r"\d+(\.\d+)?", cb["reason_code"])
            assert cb["txn_id"] not in charged
            charged.add(cb["txn_id"])
            n += 1
    assert n > 0
    # concentrated on a few (fraudulent) customers
    by_customer = Counter()
    customer_of = {row["txn_id"]: row["customer_id"] for _, row, _ in deliveries}
    for txn in charged:
        by_customer[customer_of[txn]] += 1
    assert len(by_customer) < 0.1 * SCALE.customers


def test_weekly_seasonality_and_stable_volume(world, deliveries) -> None:
    landing, summary = world
    per_event_day: Counter[dt.date] = Counter()
    seen: set[str] = set()
    for _, row, _ in deliveries:
        if row["txn_id"] not in seen:
            seen.add(row["txn_id"])
            per_event_day[day_of(row["event_time"])] += 1
    complete = days(EPOCH, LAST - dt.timedelta(days=3))
    by_wd: defaultdict[int, list[int]] = defaultdict(list)
    for d in complete:
        by_wd[d.weekday()].append(per_event_day[d])
    mon_thu = statistics.mean(v for wd in range(4) for v in by_wd[wd])
    fri_sat = statistics.mean(by_wd[4] + by_wd[5])
    sunday = statistics.mean(by_wd[6])
    assert sunday < 0.9 * mon_thu < fri_sat * 0.95
    counts = [summary["dates"][d.isoformat()]["transactions"]["rows"] for d in days(EPOCH, LAST)]
    med = statistics.median(counts)
    assert all(0.5 * med <= c <= 2 * med for c in counts)


def test_amounts_heavy_tailed(deliveries) -> None:
    amounts = sorted(float(row["amount"]) for _, row, _ in deliveries)
    median = amounts[len(amounts) // 2]
    p99 = amounts[int(len(amounts) * 0.99)]
    assert p99 > 8 * median


# ------------------------------------------------------------------------------- faults

FAULT_DAY = dt.date(2024, 1, 3)
FAULT_END = dt.date(2024, 1, 4)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    landing = tmp_path_factory.mktemp("clean") / "landing"
    generate(landing, EPOCH, FAULT_END, SCALE)
    return landing


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.mark.parametrize("fault", FAULTS)
def test_transaction_faults(fault: str, clean: Path, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    summary = generate(landing, EPOCH, FAULT_END, SCALE, faults=[parse_fault(f"{fault}@{FAULT_DAY}")])
    assert [f["name"] for f in summary["faults"]] == [fault]
    # every other file is byte-identical to the clean run
    faulty, base = snapshot(landing), snapshot(clean)
    target = f"transactions/{FAULT_DAY}/transactions.csv"
    assert {k: v for k, v in faulty.items() if k != target} == {k: v for k, v in base.items() if k != target}

    path, clean_path = landing / target, clean / target
    if fault == "missing_file":
        assert not path.exists()
        assert summary["dates"][FAULT_DAY.isoformat()]["transactions"] == {"path": None, "rows": None}
        return
    assert path.read_bytes() != clean_path.read_bytes()
    header, rows = read_csv(path)
    _, clean_rows = read_csv(clean_path)
    n = len(clean_rows)
    assert summary["dates"][FAULT_DAY.isoformat()]["transactions"]["rows"] == len(lines_of(path)) - 1
    cols = SOURCES["transactions"].column_names
    if fault == "nulls":
        blank = [r for r in rows if any(v == "" for v in r)]
        assert 0 < len(blank) < 0.05 * n
        for r in blank:
            assert {cols[i] for i, v in enumerate(r) if v == ""} <= {
                "customer_id",
                "amount",
                "currency",
                "event_time",
            }
    elif fault == "dupes":
        ids = Counter(r[0] for r in rows)
        lines = Counter(tuple(r) for r in rows)
        assert any(c > 1 for c in lines.values())  # identical copies
        conflicting = [t for t, c in ids.items() if c > 1 and len({tuple(r) for r in rows if r[0] == t}) > 1]
        assert conflicting
        assert len(rows) - n < 0.03 * n
    elif fault == "bad_amounts":
        bad = [r[3] for r in rows if not AMOUNT.match(r[3]) or not 0 < float(r[3]) <= 1_000_000]
        assert 0 < len(bad) < 0.05 * n
        assert len(rows) == n
    elif fault == "unknown_currency":
        odd = [r for r in rows if r[4] not in ("USD", "EUR", "GBP")]
        assert 0 < len(odd) < 0.05 * n
    elif fault == "future_times":
        future = [day_of(r[6]) for r in rows if day_of(r[6]) > FAULT_DAY]
        assert 0 < len(future) < 0.05 * n
        assert all(2 <= (d - FAULT_DAY).days <= 30 for d in future)
    elif fault == "schema_drop_column":
        assert header == [c for c in cols if c != "channel"] and all(len(r) == 6 for r in rows)
    elif fault == "schema_rename_column":
        assert "amt" in header and "amount" not in header and rows == clean_rows
    elif fault == "schema_add_column":
        assert header == [*cols, "device_id"] and all(len(r) == 8 and r[7] for r in rows)
        assert [r[:7] for r in rows] == clean_rows
    elif fault == "cents":
        assert [r[0] for r in rows] == [r[0] for r in clean_rows]
        for r, c in zip(rows, clean_rows, strict=True):
            assert AMOUNT.match(r[3])
            assert round(float(r[3]) * 100) == round(float(c[3]) * 100) * 100
    elif fault == "volume_drop":
        assert 0.02 * n <= len(rows) <= 0.1 * n
        assert {tuple(r) for r in rows} <= {tuple(r) for r in clean_rows}
    elif fault == "empty_file":
        assert path.read_text() == ",".join(cols) + "\n"
    elif fault == "malformed_rows":
        assert len(rows) == len(lines_of(path)) - 1 == n  # nothing swallowed by a quote
        broken = [r for r in rows if len(r) != 7 or any('"' in v for v in r)]
        assert 0 < len(broken) <= 0.03 * n
        assert any(len(r) != 7 for r in broken)
        ok = [r for r in rows if r not in broken]
        assert all(r in clean_rows for r in ok)


# a day with rows in every source of the clean `world` run
SOURCE_FAULT_DAY = {
    "customers": EPOCH,
    "merchants": dt.date(2024, 1, 20),
    "chargebacks": dt.date(2024, 1, 20),
}
GENERIC = [(s, f) for s in ("customers", "merchants", "chargebacks") for f in FAULTS_BY_SOURCE[s]]


@pytest.mark.parametrize(("source", "fault"), GENERIC)
def test_other_source_faults(source: str, fault: str, world, tmp_path: Path) -> None:
    base_landing, _ = world
    day = SOURCE_FAULT_DAY[source]
    landing = tmp_path / "landing"
    generate(landing, EPOCH, EPOCH, SCALE)
    generate(landing, day, day, SCALE, faults=[Fault(fault, day, source)])
    for other in DEMO_SOURCES:
        if other != source:
            assert file_of(landing, other, day).read_bytes() == file_of(base_landing, other, day).read_bytes()
    path, base = file_of(landing, source, day), file_of(base_landing, source, day)
    if fault == "missing_file":
        assert not path.exists()
        return
    spec = SOURCES[source]
    base_lines, lines = lines_of(base), lines_of(path)
    assert base_lines and path.read_bytes() != base.read_bytes()
    jsonl = spec.fmt == "jsonl"
    n = len(base_lines) - (0 if jsonl else 1)
    if fault == "empty_file":
        assert path.read_text() == ("" if jsonl else ",".join(spec.column_names) + "\n")
        return
    if fault == "malformed_rows":
        if jsonl:
            bad = 0
            for line in lines:
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
            assert bad > 0 and len(lines) == len(base_lines)
        else:
            _, rows = read_csv(path)
            assert len(rows) == len(lines) - 1 == n
            assert any(len(r) != len(spec.columns) or any('"' in v for v in r) for r in rows)
        return
    records = read_dicts(path)
    keys = set(records[0])
    cols = set(spec.column_names)
    if fault == "nulls":
        assert any(v in (None, "") for rec in records for v in rec.values())
    elif fault == "dupes":
        assert n < len(records) <= n + max(2, 0.03 * n)
        key = [tuple(rec[k] for k in spec.key) for rec in records]
        assert len(set(key)) < len(key)
    elif fault == "schema_drop_column":
        assert keys < cols and len(keys) == len(cols) - 1
    elif fault == "schema_rename_column":
        assert len(keys) == len(cols) and keys != cols
    elif fault == "schema_add_column":
        assert keys > cols and all(len(rec) == len(cols) + 1 for rec in records)


def test_nonsensical_faults_refused() -> None:
    for source in ("customers", "merchants", "chargebacks"):
        for fault in ("cents", "bad_amounts", "unknown_currency", "future_times", "volume_drop"):
            with pytest.raises(ValueError, match="does not apply"):
                Fault(fault, EPOCH, source)
    with pytest.raises(ValueError, match="unknown fault"):
        Fault("gremlins", EPOCH)


def test_missing_file_removes_and_regeneration_restores(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    generate(landing, EPOCH, EPOCH + dt.timedelta(days=1), SCALE)
    target = file_of(landing, "merchants", EPOCH + dt.timedelta(days=1))
    original = target.read_bytes()
    day = EPOCH + dt.timedelta(days=1)
    generate(landing, day, day, SCALE, faults=[parse_fault(f"missing_file@{day}:merchants")])
    assert not target.exists()
    seen: list[dt.date] = []
    generate(landing, day, day, SCALE, progress=seen.append)
    assert target.read_bytes() == original and seen == [day]


def test_simulated_values_are_within_the_contracts():
    """The simulator models the values; the vocabularies it draws from are the contracts' allowed sets."""
    from flows.sources import get_source
    from flows.upstream import simulate

    def allowed(source: str, column: str) -> tuple[str, ...] | None:
        return get_source(source).column(column).allowed

    assert set(simulate.CURRENCIES) == set(allowed("transactions", "currency"))
    assert set(simulate.CHANNELS) == set(allowed("transactions", "channel"))
    assert set(simulate.TIERS) == set(allowed("merchants", "risk_tier"))
    assert all(re.fullmatch(get_source("customers").column("country").pattern, c) for c in simulate.COUNTRIES)
