"""Validation on hand-built bronze batches: row reasons, duplicates, batch rules, conservation."""

from __future__ import annotations

import datetime as dt
import threading

import pyarrow as pa
import pytest

from flows.sources import get_source, silver_schema
from flows.storage import lake
from flows.validation import parsing, stage, storage, suites
from tests.bronze_batches import land

D1 = dt.date(2024, 3, 1)
D2 = dt.date(2024, 3, 2)


def merchant(mid: int, **kw) -> dict:
    row = {"merchant_id": str(mid), "name": f"M{mid}", "mcc": "5411", "country": "US", "risk_tier": "low"}
    row.update(kw)
    return row


def txn(i: int, day: dt.date = D1, **kw) -> dict:
    row = {
        "txn_id": f"t{i:05d}",
        "customer_id": str(100 + i % 7),
        "merchant_id": str(1 + i % 3),
        "amount": f"{10 + i % 50}.50",
        "currency": "USD",
        "channel": "web",
        "event_time": f"{day.isoformat()}T{i % 24:02d}:15:00Z",
    }
    row.update(kw)
    return row


def silver(source: str, day: dt.date) -> list[dict]:
    return lake.read(
        "silver",
        source,
        filter=lake.date_filter("_batch_date", [day]),
        schema=silver_schema(get_source(source)),
    ).to_pylist()


def quarantined(source: str, day: dt.date) -> dict[str, list[str]]:
    tbl = lake.read(
        "quarantine",
        source,
        filter=lake.date_filter("_batch_date", [day]),
        schema=storage.quarantine_schema(get_source(source)),
    )
    key = get_source(source).column_names[0]
    return {
        r[key] if r[key] is not None else f"row{r['_row_number']}": sorted(r["_reasons"])
        for r in tbl.to_pylist()
    }


@pytest.fixture
def merchants_d1(home):
    """Merchants 1-4 known from batch D1 on (validated into silver)."""
    land("merchants", D1, [merchant(i) for i in range(1, 5)])
    assert stage.validate_date(D1, ["merchants"], build_docs=False)["merchants"].status == "succeeded"
    return home


# ------------------------------------------------------------------------------------ parsing


def test_parse_timestamps_accept_offsets_and_reject_naive_and_impossible():
    raw = pa.chunked_array(
        [
            [
                "2024-03-01T10:00:00Z",
                "2024-03-01T12:00:00+02:00",
                "2024-03-01 10:00:00.5-0100",
                "2024-03-01T10:00:00",  # naive: parsed as if UTC (quarantined by its own rule)
                "2024-02-30T10:00:00Z",  # no such day
                "yesterday",
                None,
            ]
        ]
    )
    typed, bad = parsing.parse_column(raw, "timestamp")
    vals = typed.to_pylist()
    assert vals[0] == vals[1] == dt.datetime(2024, 3, 1, 10, tzinfo=dt.UTC)
    assert vals[2] == dt.datetime(2024, 3, 1, 11, 0, 0, 500000, tzinfo=dt.UTC)
    assert vals[3] == dt.datetime(2024, 3, 1, 10, tzinfo=dt.UTC)
    assert vals[4] is None and vals[5] is None and vals[6] is None
    assert bad.to_pylist() == [None, None, None, None, "2024-02-30T10:00:00Z", "yesterday", None]


def test_parse_numbers_are_strict():
    typed, bad = parsing.parse_column(
        pa.chunked_array([["12.50", "-3", "1e5", "NaN", "12,50", "inf", None, ".5"]]), "decimal"
    )
    assert typed.to_pylist() == [12.5, -3.0, None, None, None, None, None, 0.5]
    assert bad.to_pylist() == [None, None, "1e5", "NaN", "12,50", "inf", None, None]
    typed, bad = parsing.parse_column(pa.chunked_array([["42", "4.0", "x", "-7"]]), "int")
    assert typed.to_pylist() == [42, None, None, -7]
    assert bad.to_pylist() == [None, "4.0", "x", None]
    typed, bad = parsing.parse_column(pa.chunked_array([["2024-02-29", "2023-02-29", "2024-3-1"]]), "date")
    assert typed.to_pylist() == [dt.date(2024, 2, 29), None, None]


# ---------------------------------------------------------------------------------- row rules


def test_every_failed_rule_is_recorded_and_clean_rows_reach_silver_typed(merchants_d1):
    rows = [txn(i) for i in range(300)]
    rows += [
        txn(1000, amount=None),  # null
        txn(1001, amount="abc"),  # unparseable
        txn(1002, amount="0.00"),  # out of range (amount must be > 0)
        txn(1003, amount="2000000.00", currency="JPY"),  # two rules at once
        txn(1004, event_time="2024-03-01T10:00:00"),  # no time zone
        txn(1005, event_time="2024-03-02T00:00:00Z"),  # D+1: future
        txn(1006, event_time="2024-01-15T10:00:00Z"),  # older than D-30
        txn(1007, merchant_id="99"),  # not in any merchants snapshot <= D
        txn(1008, channel="fax"),
        txn(1009, event_time="2024-03-01T12:00:00+02:00", customer_id="x7"),
        {"_raw": "t,1,2", "_parse_error": "line 3: expected 7 fields, got 3"},
    ]
    land("transactions", D1, rows)
    out = stage.validate_date(D1, ["transactions"], build_docs=False)["transactions"]
    assert out.status == "succeeded", out.message
    q = quarantined("transactions", D1)
    assert q["t01000"] == ["null:amount"]
    assert q["t01001"] == ["unparseable:amount"]
    assert q["t01002"] == ["amount_out_of_range"]
    assert q["t01003"] == ["amount_out_of_range", "unknown_currency"]
    assert q["t01004"] == ["naive_timestamp:event_time"]
    assert q["t01005"] == ["future_event_time"]
    assert q["t01006"] == ["too_late"]
    assert q["t01007"] == ["unknown_merchant"]
    assert q["t01008"] == ["not_allowed:channel"]
    assert q["t01009"] == ["unparseable:customer_id"]
    malformed = q["row311"]
    assert malformed == ["malformed_row"]  # not also null:* for every field it lacks
    assert len(q) == 11
    assert out.rows_bronze == 311 and out.rows_silver == 300 and out.rows_quarantined == 11
    assert out.reasons["amount_out_of_range"] == 2
    good = {r["txn_id"]: r for r in silver("transactions", D1)}
    assert set(good) == {f"t{i:05d}" for i in range(300)}
    r = good["t00003"]
    assert r["customer_id"] == 103 and r["amount"] == 13.5
    assert r["event_time"] == dt.datetime(2024, 3, 1, 3, 15, tzinfo=dt.UTC)
    assert r["_validation_run_id"] == out.validation_run_id
    # quarantine keeps the values exactly as delivered
    tbl = lake.read("quarantine", "transactions").to_pylist()
    assert {r["txn_id"]: r["amount"] for r in tbl if r["txn_id"]}["t01001"] == "abc"
    assert storage.read_validations(D1, "transactions")[0]["rows_quarantined"] == 11


def test_offsets_are_converted_to_utc_in_silver(merchants_d1):
    land("transactions", D1, [txn(i) for i in range(20)] + [txn(50, event_time="2024-03-01T23:30:00-01:00")])
    # 23:30 at -01:00 is 00:30 UTC on D+1: a future event for batch D
    stage.validate_date(D1, ["transactions"], build_docs=False)
    assert quarantined("transactions", D1) == {"t00050": ["future_event_time"]}
    land("transactions", D1, [txn(i) for i in range(20)] + [txn(50, event_time="2024-03-01T23:30:00+01:00")])
    stage.validate_date(D1, ["transactions"], build_docs=False)
    assert quarantined("transactions", D1) == {}
    got = {r["txn_id"]: r["event_time"] for r in silver("transactions", D1)}
    assert got["t00050"] == dt.datetime(2024, 3, 1, 22, 30, tzinfo=dt.UTC)


# --------------------------------------------------------------------------------- duplicates


def test_first_delivery_wins_across_batches_and_reruns_do_not_flip(merchants_d1):
    land("transactions", D1, [txn(i) for i in range(30)] + [txn(7)])  # t00007 twice within D1
    land("merchants", D2, [merchant(i) for i in range(1, 5)])
    day2 = [txn(i, D2) for i in range(100, 130)]
    day2 += [txn(3), txn(4, amount="99.99"), {**txn(5), "amount": "15.5"}]  # identical, different, same value
    land("transactions", D2, day2)

    stage.validate_date(D1, build_docs=False)
    assert quarantined("transactions", D1) == {"t00007": ["duplicate"]}
    stage.validate_date(D2, build_docs=False)
    q2 = quarantined("transactions", D2)
    assert q2 == {"t00003": ["duplicate"], "t00004": ["conflicting_duplicate"], "t00005": ["duplicate"]}
    # re-running the first date: its rows are not duplicates of themselves, nor of later copies
    for _ in range(2):
        stage.validate_date(D1, build_docs=False)
        assert quarantined("transactions", D1) == {"t00007": ["duplicate"]}
        assert {r["txn_id"] for r in silver("transactions", D1)} >= {"t00003", "t00004", "t00005"}
    stage.validate_date(D2, build_docs=False)
    assert quarantined("transactions", D2) == q2
    assert [r["amount"] for r in silver("transactions", D1) if r["txn_id"] == "t00004"] == [14.5]


def test_chargebacks_reference_known_transactions_and_dedupe(merchants_d1):
    land("transactions", D1, [txn(i) for i in range(20)])
    land("chargebacks", D1, [])
    land("merchants", D2, [merchant(i) for i in range(1, 5)])
    land("transactions", D2, [txn(i, D2) for i in range(100, 120)])
    cb = [
        {"txn_id": "t00001", "chargeback_time": "2024-03-02T05:00:00Z", "reason_code": "10.4"},
        {"txn_id": "t00101", "chargeback_time": "2024-03-02T06:00:00Z", "reason_code": "10.4"},  # same batch
        {"txn_id": "t09999", "chargeback_time": "2024-03-02T06:00:00Z", "reason_code": "10.4"},  # unknown
        {"txn_id": "t00001", "chargeback_time": "2024-03-02T05:00:00Z", "reason_code": "10.4"},  # again
        {"txn_id": "t00002", "chargeback_time": "2024-03-03T06:00:00Z", "reason_code": "4837"},  # future
    ]
    land("chargebacks", D2, cb)
    out = stage.validate_date(D1, build_docs=False)
    assert out["chargebacks"].status == "succeeded" and out["chargebacks"].rows_bronze == 0
    out = stage.validate_date(D2, build_docs=False)
    assert out["chargebacks"].status == "succeeded", out["chargebacks"].message
    q = lake.read("quarantine", "chargebacks").to_pylist()
    assert sorted((r["txn_id"], tuple(r["_reasons"])) for r in q) == [
        ("t00001", ("duplicate",)),
        ("t00002", ("future_chargeback_time",)),
        ("t09999", ("unknown_transaction",)),
    ]
    assert sorted(r["txn_id"] for r in silver("chargebacks", D2)) == ["t00001", "t00101"]


def test_a_source_that_cannot_be_read_fails_alone(merchants_d1, monkeypatch):
    """Bronze is read on the stage's lake threads, ahead of the judging: an error there is still
    that source's failure (its silver untouched), and the sources judged beside it are unaffected."""
    from flows.validation import history

    land("transactions", D2, [txn(i, D2) for i in range(10)])
    land("merchants", D2, [merchant(i) for i in range(1, 5)])
    read = history.bronze_rows
    main = threading.get_ident()
    seen: list[int] = []

    def broken(source, days):
        seen.append(threading.get_ident())
        if source.name == "transactions":
            raise OSError("disk read error")
        return read(source, days)

    monkeypatch.setattr(history, "bronze_rows", broken)
    out = stage.validate_date(D2, build_docs=False)
    assert out["transactions"].status == "failed"
    assert out["transactions"].message == "OSError: disk read error"
    assert out["merchants"].status == "succeeded" and len(silver("merchants", D2)) == 4
    assert not lake.exists("silver", "transactions")
    assert seen and main not in seen  # read off the judging thread


def test_a_failed_write_is_raised_once_every_other_write_ended(merchants_d1, monkeypatch):
    """The sources' splits are written side by side: when one write fails, the stage raises only
    after the others ended, so nothing of the run is still writing when the caller (or its retry)
    goes on."""
    import time

    land("transactions", D2, [txn(i, D2) for i in range(10)])
    land("merchants", D2, [merchant(i) for i in range(1, 5)])
    write = stage._write
    ended: list[str] = []

    def slow_or_broken(run, release=False):
        if run.source.name == "merchants":
            raise OSError("no space left on device")
        time.sleep(0.3)  # still writing when the merchants' write has failed
        out = write(run, release=release)
        ended.append(run.source.name)
        return out

    monkeypatch.setattr(stage, "_write", slow_or_broken)
    with pytest.raises(OSError, match="no space left"):
        stage.validate_date(D2, build_docs=False)
    assert "transactions" in ended
    assert len(silver("transactions", D2)) == 10


def test_a_forked_child_gets_lake_threads_of_its_own():
    """The lake threads belong to the process that started them: a child forked after the parent
    used them (the parent's threads are not in it) still gets its work done."""
    import os

    parent = stage._lake_work()
    assert parent.submit(os.getpid).result(timeout=10) == os.getpid()  # an idle thread now exists
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        try:
            pool = stage._lake_work()
            ok = pool is not parent and pool.submit(os.getpid).result(timeout=10) == os.getpid()
            os.write(write, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as got:
        answer = got.read()
    os.waitpid(pid, 0)
    assert answer == b"ok"
    assert stage._lake_work() is parent


def test_customers_and_merchants_rules(home):
    land(
        "merchants",
        D1,
        [merchant(i) for i in range(1, 30)]
        + [
            merchant(5),
            merchant(6, risk_tier="high"),
            merchant(40, mcc="54x1", country="usa", risk_tier="extreme"),
        ],
    )
    cust = {
        "customer_id": "7",
        "op": "c",
        "updated_at": "2024-03-01T08:00:00Z",
        "country": "DE",
        "kyc_level": "2",
        "signup_date": "2024-02-28",
    }
    rows = [{**cust, "customer_id": str(i)} for i in range(1, 40)]
    rows += [
        {**cust, "customer_id": "100", "kyc_level": "5", "op": "d"},
        {**cust, "customer_id": "101", "signup_date": "2024-02-30", "country": "Germany"},
        {**cust, "customer_id": "3"},  # the same change twice
    ]
    land("customers", D1, rows, header=None)
    out = stage.validate_date(D1, ["merchants", "customers"], build_docs=False)
    assert out["merchants"].status == "succeeded", out["merchants"].message
    assert quarantined("merchants", D1) == {
        "5": ["duplicate"],
        "6": ["conflicting_duplicate"],
        "40": ["invalid_format:country", "invalid_format:mcc", "not_allowed:risk_tier"],
    }
    assert quarantined("customers", D1) == {
        "100": ["not_allowed:kyc_level", "not_allowed:op"],
        "101": ["invalid_format:country", "unparseable:signup_date"],
        "3": ["duplicate"],
    }
    assert {r["customer_id"]: r["signup_date"] for r in silver("customers", D1)}[7] == dt.date(2024, 2, 28)


# ------------------------------------------------------------------------------- batch rules


def test_missing_column_rejects_the_whole_batch(merchants_d1):
    rows = [{k: v for k, v in txn(i).items() if k != "channel"} for i in range(30)]
    header = [c for c in get_source("transactions").column_names if c != "channel"] + ["chan"]
    land("transactions", D1, rows, header=header)
    out = stage.validate_date(D1, ["transactions"], build_docs=False)["transactions"]
    assert out.status == "rejected" and out.rejected_rule == "contract_broken"
    assert "missing columns ['channel']" in out.message
    assert any("chan" in w for w in out.warnings)
    assert out.rows_silver == 0 and out.rows_quarantined == 30
    q = quarantined("transactions", D1)
    assert all("batch_rejected:contract_broken" in r for r in q.values())
    assert silver("transactions", D1) == []


def test_added_column_is_only_a_warning(merchants_d1):
    rows = [{**txn(i), "_extra": {"device_id": "d1"}} for i in range(30)]
    land("transactions", D1, rows, header=[*get_source("transactions").column_names, "device_id"])
    out = stage.validate_date(D1, ["transactions"], build_docs=False)["transactions"]
    assert out.status == "succeeded" and out.rows_silver == 30
    assert out.warnings and "device_id" in out.warnings[0]


def test_too_many_failing_rows_rejects(merchants_d1):
    rows = [txn(i) for i in range(90)] + [txn(i, currency="XXX") for i in range(100, 110)]
    land("transactions", D1, rows)
    out = stage.validate_date(D1, ["transactions"], build_docs=False)["transactions"]
    assert out.status == "rejected" and out.rejected_rule == "too_many_failing_rows"
    assert "10 of 100 rows (10.0%)" in out.message
    q = quarantined("transactions", D1)
    assert len(q) == 100
    assert q["t00100"] == ["batch_rejected:too_many_failing_rows", "unknown_currency"]
    assert q["t00001"] == ["batch_rejected:too_many_failing_rows"]


def test_volume_and_empty_file(merchants_d1):
    days = [D1 + dt.timedelta(days=k) for k in range(4)]
    for k, day in enumerate(days[:3]):
        land("merchants", day, [merchant(i) for i in range(1, 5)])
        land("transactions", day, [txn(1000 * k + i, day) for i in range(100)])
        assert (
            stage.validate_date(day, ["merchants", "transactions"], build_docs=False)["transactions"].status
            == "succeeded"
        )
    land("merchants", days[3], [merchant(i) for i in range(1, 5)])
    land("transactions", days[3], [txn(5000 + i, days[3]) for i in range(8)])
    out = stage.validate_date(days[3], ["merchants", "transactions"], build_docs=False)["transactions"]
    assert out.status == "rejected" and out.rejected_rule == "volume"
    assert "8 rows, expected between 10 and 1000" in out.message
    land("transactions", days[3], [], header=get_source("transactions").column_names)
    out = stage.validate_date(days[3], ["transactions"], build_docs=False)["transactions"]
    assert out.status == "rejected" and out.rejected_rule == "volume" and out.rows_bronze == 0
    assert silver("transactions", days[3]) == []


def test_amount_drift_after_seven_days_of_history(merchants_d1):
    days = [D1 + dt.timedelta(days=k) for k in range(9)]
    for k, day in enumerate(days):
        land("merchants", day, [merchant(i) for i in range(1, 5)])
        scale = 100 if k >= 7 else 1
        rows = [txn(1000 * k + i, day, amount=f"{(20 + i % 10) * scale}.00") for i in range(50)]
        land("transactions", day, rows)
    outs = [
        stage.validate_date(day, ["merchants", "transactions"], build_docs=False)["transactions"]
        for day in days
    ]
    # day 8 (index 7) has 7 days of history: amounts x100 are rejected; before that, nothing to compare
    assert [o.status for o in outs[:7]] == ["succeeded"] * 7
    assert outs[7].status == "rejected" and outs[7].rejected_rule == "amount_drift"
    assert "0.5x-2x of the trailing 28-day median" in outs[7].message
    # the rejected day does not become history: the next cents day is rejected too
    assert outs[8].status == "rejected"


def test_sparse_sources_not_delivered_and_malformed_files(home):
    land("chargebacks", D1, [], header=get_source("chargebacks").column_names)
    land("customers", D1, [], header=None)
    land("merchants", D1, [], status="not_delivered")
    land("transactions", D1, [{"_raw": "\x00\x01", "_parse_error": "file has no header"}], status="malformed")
    out = stage.validate_date(D1, build_docs=False)
    assert out["chargebacks"].status == "succeeded" and out["chargebacks"].rows_bronze == 0
    assert out["customers"].status == "succeeded"
    assert out["merchants"].status == "not_delivered" and "not delivered" in out["merchants"].message
    assert not lake.exists("silver", "merchants")
    assert out["transactions"].status == "rejected" and out["transactions"].rejected_rule == "contract_broken"
    assert "malformed file" in out["transactions"].message
    assert out["transactions"].rows_quarantined == 1


# ------------------------------------------------------------------------------- conservation


def test_conservation_is_checked_row_for_row(merchants_d1):
    land("transactions", D1, [txn(i) for i in range(10)] + [txn(20, amount=None)])
    stage.validate_date(D1, ["transactions"], build_docs=False)
    assert storage.check_conservation("transactions", D1) == (11, 10, 1)
    lake.delete("silver", "transactions", "txn_id = 't00003'")
    with pytest.raises(storage.ConservationError, match="bronze has 11 rows, silver 9"):
        storage.check_conservation("transactions", D1)
    # a row in both tables is caught even when the counts would add up
    stage.validate_date(D1, ["transactions"], build_docs=False)
    extra = lake.read("silver", "transactions", filter=lake.date_filter("_batch_date", [D1]))
    lake.delete("quarantine", "transactions", "txn_id = 't00020'")
    lake.append(
        "quarantine",
        "transactions",
        _as_quarantine(extra.slice(0, 1)),
        schema=storage.quarantine_schema(get_source("transactions")),
    )
    with pytest.raises(storage.ConservationError, match="in silver and quarantine at once"):
        storage.check_conservation("transactions", D1)


def _as_quarantine(silver_rows: pa.Table) -> pa.Table:
    schema = storage.quarantine_schema(get_source("transactions"))
    n = silver_rows.num_rows
    cols = {}
    for f in schema:
        if f.name in silver_rows.column_names and f.name not in ("_validation_run_id",):
            cols[f.name] = (
                silver_rows.column(f.name).cast(pa.string())
                if pa.types.is_string(f.type)
                else silver_rows.column(f.name)
            )
        else:
            cols[f.name] = pa.nulls(n, f.type)
    return pa.table(cols, schema=schema)


def test_not_delivered_clears_a_stale_split(merchants_d1):
    land("transactions", D1, [txn(i) for i in range(10)])
    stage.validate_date(D1, ["transactions"], build_docs=False)
    assert len(silver("transactions", D1)) == 10
    land("transactions", D1, [], status="not_delivered")
    out = stage.validate_date(D1, ["transactions"], build_docs=False)["transactions"]
    assert out.status == "not_delivered"
    assert silver("transactions", D1) == []
    storage.check_conservation("transactions", D1)


def test_results_carry_no_frame_fingerprint(merchants_d1, home):
    """GE's per-batch hash of every row (flows/validation/suites._skip_frame_fingerprint) is off: the
    constant it is keyed on still exists in GE, and the stored results have no fingerprint marker."""
    from great_expectations.execution_engine import pandas_execution_engine

    land("transactions", D1, [txn(i) for i in range(20)])
    stage.validate_date(D1, ["transactions"], build_docs=False)
    assert pandas_execution_engine.HASH_THRESHOLD == 0
    stored = [p.read_text() for p in (home / "ge" / "validations").rglob("*.json")]
    assert any("transactions.rows" in text for text in stored)
    assert stored and not any("pandas_data_fingerprint" in text for text in stored)


def test_kwargs_lookups_read_the_configuration_once_and_return_what_ge_returns(home):
    """flows/validation/suites._read_configuration_once replaces GE's kwargs lookups of the base
    Expectation: for every expectation of every suite they return exactly what GE's own functions
    return (with and without a runtime configuration), and a run reads each expectation's
    configuration far fewer times than GE's functions did."""
    from great_expectations.expectations.expectation import Expectation

    ctx = suites.ge_context()
    assert set(suites.GE_KWARGS_LOOKUPS) == {
        "_get_success_kwarg",
        "_get_domain_kwargs",
        "_get_success_kwargs",
        "_get_runtime_kwargs",
    }
    original = suites.GE_KWARGS_LOOKUPS
    assert all(getattr(Expectation, name) is not fn for name, fn in original.items())
    checked = 0
    for suite in ctx.suites.all():
        for e in suite.expectations:
            assert e._get_domain_kwargs() == original["_get_domain_kwargs"](e)
            assert e._get_success_kwargs() == original["_get_success_kwargs"](e)
            for runtime in (None, {}, {"result_format": "SUMMARY"}, {"catch_exceptions": True}):
                assert e._get_runtime_kwargs(runtime) == original["_get_runtime_kwargs"](e, runtime)
            for key in (*e.domain_keys, *e.success_keys, *e.runtime_keys):
                assert e._get_success_kwarg(key) == original["_get_success_kwarg"](e, key)
            checked += 1
    assert checked >= 8 * 5, f"only {checked} expectations compared"

    reads = {"n": 0}
    prop = Expectation.configuration

    def counted(self):
        reads["n"] += 1
        return prop.fget(self)

    e = next(iter(ctx.suites.get("transactions.rows").expectations))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Expectation, "configuration", property(counted))
        e._get_runtime_kwargs({})
        patched = reads["n"]
        for name, fn in original.items():  # GE's own lookups, calling each other
            mp.setattr(Expectation, name, fn)
        reads["n"] = 0
        e._get_runtime_kwargs({})
        ge_own = reads["n"]
    assert patched == 1 and ge_own > 3 * patched, (patched, ge_own)


def test_a_contract_without_suites_names_the_cure(home):
    """A source whose suites were never built (a new contract, build_suites.py not run) fails with
    an error naming the checkpoint and the command that builds it, not GE's "not found"."""
    with pytest.raises(suites.SuitesMissingError, match=r"refunds\.rows.*expectations/build_suites\.py"):
        suites.checkpoint(suites.ge_context(), "refunds.rows")
    assert suites.checkpoint(suites.ge_context(), "transactions.rows").name == "transactions.rows"


def test_freshness_is_checked_once_per_object_and_a_failed_check_again(home, monkeypatch):
    """flows/validation/suites._check_freshness_once: a checkpoint found fresh is not compared with
    its store again (GE re-read and compared it three times a run); one that is not fresh is checked
    (and refused) every time."""
    from great_expectations.checkpoint.checkpoint import Checkpoint

    ctx = suites.ge_context()
    assert getattr(Checkpoint.is_fresh, "asof_once", False)
    cp = suites.checkpoint(ctx, "transactions.rows")
    assert cp.is_fresh().success
    store_type = type(ctx.checkpoint_store)

    def read(*args, **kwargs):
        raise AssertionError("the checkpoint store was read again")

    monkeypatch.setattr(store_type, "get", read)
    assert cp.is_fresh().success
    for vd in cp.validation_definitions:
        assert vd.is_fresh().success

    unsaved = Checkpoint(name="asof-unsaved", validation_definitions=cp.validation_definitions)
    assert not unsaved.is_fresh().success
    assert not unsaved.is_fresh().success  # still not fresh: not remembered


def test_no_validated_frame_outlives_its_checkpoint_run(merchants_d1):
    """GE's execution engine keeps each batch it loaded; after a run asof empties it, so a chunk's
    frames (hundreds of MB at bench scale) are not alive during the transform."""
    from great_expectations.core.batch_manager import BatchManager

    land("transactions", D1, [txn(i) for i in range(50)])
    assert stage.validate_date(D1, ["transactions"], build_docs=False)["transactions"].status == "succeeded"
    managers = []
    for name in ("transactions.rows", "transactions.batches"):
        for vd in suites.checkpoint(suites.ge_context(), name).validation_definitions:
            managers.append(vd.data.data_asset.datasource.get_execution_engine().batch_manager)
    assert managers and all(isinstance(m, BatchManager) for m in managers)
    assert all(not m.batch_cache and not m.batch_data_cache for m in managers)
