"""Fixed point-in-time edges (contract §5, 6, 7), end to end through the real flows: hand-written landing
files with events at exactly 00:00:00 and 23:59:59.999999 UTC on the D-6 and D-29 window edges, late
rows crossing a window edge, the validation bounds of event_time, and a conflicting duplicate inside
one batch.

Every expected value below is derived by hand from the contract's rule (the derivation is in the comment
next to it), never copied from the pipeline's output:

    K(D)      = valid first deliveries with _batch_date <= D and event_time < D+1
    window w  = event_time in [D+1-w, D+1)       (7d: from D-6 00:00:00, 30d: from D-29 00:00:00)
    validation of batch B: B-30 00:00:00 <= event_time < B+1 00:00:00

The backfill covers the as-of days 2024-03-01..03-10; rows of February arrive as late deliveries.
Each case has its own customer and merchant, so each expectation reads one entity's rows. After the
backfill every as-of day is computed again with all ten batches in silver (nothing may change), and
the value tests read that result, where a fact leaking into days before its batch would show.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from flows.storage import lake
from flows.transform.stage import GOLD_TABLES, transform_range
from tests import reference_features as rf

pytestmark = pytest.mark.slow

D = dt.timedelta
START = dt.date(2024, 3, 1)
END = dt.date(2024, 3, 10)
DAYS = [START + D(days=i) for i in range(10)]
FILLER_CUSTOMER, FILLER_MERCHANT = 900, 9


def day(d: int, month: int = 3) -> dt.date:
    return dt.date(2024, month, d)


# (txn_id, customer, merchant, amount, currency, event_time, batch date)
EDGE_TXNS = [
    # a: 00:00:00 of D-6 for D = 03-08, on time
    ("a-midnight", 101, 201, "17.00", "USD", "2024-03-02T00:00:00Z", day(2)),
    # b: the last microsecond of 03-01, on time (23.00 GBP = 29.21 USD)
    ("b-last-us", 102, 202, "23.00", "GBP", "2024-03-01T23:59:59.999999Z", day(1)),
    # c: 00:00:00 of D-29 for D = 03-09, delivered 25 days late in batch 03-05
    ("c-midnight-d29", 103, 203, "31.00", "USD", "2024-02-09T00:00:00Z", day(5)),
    # d: the last microsecond of D-30 for D = 03-09 (02-08), also late in batch 03-05
    ("d-last-us-d30", 104, 204, "37.00", "USD", "2024-02-08T23:59:59.999999Z", day(5)),
    # e: late row crossing the 7-day edge: event 02-28, known 03-05 = its last 7-day day (41 EUR)
    ("e-late-7d", 105, 205, "41.00", "EUR", "2024-02-28T12:00:00Z", day(5)),
    # f: late row known on the last day of its 30-day window (02-05 + 29 = 03-05)
    ("f-late-30d", 106, 206, "43.00", "USD", "2024-02-05T10:00:00Z", day(5)),
    # g: known one day after its 30-day window (02-04 + 29 = 03-04): never in a customer row, but in
    #    the merchant's 90 days; and exactly at the too_late bound of batch 03-05 (03-05 - 30 = 02-04)
    ("g-late-out", 107, 207, "47.00", "USD", "2024-02-04T00:00:00Z", day(5)),
    # h: one microsecond before that bound: quarantined as too_late
    ("h-too-late", 107, 207, "53.00", "USD", "2024-02-03T23:59:59.999999Z", day(5)),
    # i: an event at D+1 00:00:00 in batch D (03-03): quarantined as future_event_time
    ("i-future", 109, 209, "59.00", "USD", "2024-03-04T00:00:00Z", day(3)),
]
# A conflicting duplicate inside batch 03-06: the file's row 4 (11.11 EUR) comes first, row 9
# (99.99 EUR, same txn_id) is a conflicting_duplicate; an identical copy arrives in batch 03-07
# (duplicate) and a different one in batch 03-08 (conflicting_duplicate).
DUP = ("dup-1", 108, 208, "EUR", "2024-03-06T08:00:00Z")
DUP_ROWS = {day(6): [(4, "11.11"), (9, "99.99")], day(7): [(2, "11.11")], day(8): [(1, "77.77")]}
# (txn_id, chargeback_time, batch): a-midnight's chargeback comes in 03-06 and again (an identical
# copy: a duplicate) in 03-08; c-midnight-d29's in its own transaction's batch 03-05.
CHARGEBACKS = [
    ("a-midnight", "2024-03-06T09:00:00Z", day(6)),
    ("c-midnight-d29", "2024-03-05T09:00:00Z", day(5)),
    ("a-midnight", "2024-03-06T09:00:00Z", day(8)),
]
CUSTOMERS = [101, 102, 103, 104, 105, 106, 107, 108, 109, FILLER_CUSTOMER]
MERCHANTS = [FILLER_MERCHANT, 201, 202, 203, 204, 205, 206, 207, 208, 209]
# customer 101: created 03-01 (US, kyc 1), updated in batch 03-04 (GB, kyc 3, updated_at 03-04 10:00);
# batch 03-06 brings an older change (updated_at 03-03 09:00, FR, kyc 2)
PROFILE_101 = [
    (day(4), "2024-03-04T10:00:00Z", "GB", 3),
    (day(6), "2024-03-03T09:00:00Z", "FR", 2),
]


def _txn(txn_id, customer, merchant, amount, currency, event_time) -> dict:
    return {"txn_id": txn_id, "customer_id": customer, "merchant_id": merchant, "amount": amount,
            "currency": currency, "channel": "web", "event_time": event_time}  # fmt: skip


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def write_landing(landing: Path) -> None:
    """Ten batches. Each holds ten on-time filler transactions of 50.00 USD (customer 900, merchant 9)
    so that the batch rules (volume vs the trailing median, median amount drift) stay quiet; the
    edge rows are fewer than the fillers in every batch, so each batch's median stays 50."""
    cols = ["txn_id", "customer_id", "merchant_id", "amount", "currency", "channel", "event_time"]
    for d in DAYS:
        rows = [
            _txn(f"fill-{d:%m%d}-{i}", FILLER_CUSTOMER, FILLER_MERCHANT, "50.00", "USD",
                 f"{d.isoformat()}T12:{i:02d}:00Z")
            for i in range(10)
        ]  # fmt: skip
        rows += [_txn(*t[:6]) for t in EDGE_TXNS if t[6] == d]
        for position, amount in sorted(DUP_ROWS.get(d, [])):  # ascending: earlier rows stay put
            txn_id, customer, merchant, currency, event_time = DUP
            rows.insert(position - 1, _txn(txn_id, customer, merchant, amount, currency, event_time))
        for position, amount in DUP_ROWS.get(d, []):
            assert rows[position - 1]["txn_id"] == "dup-1" and rows[position - 1]["amount"] == amount
        _write_csv(landing / "transactions" / d.isoformat() / "transactions.csv", cols, rows)

        merchants = [{"merchant_id": m, "name": f"merchant {m}", "mcc": "5411", "country": "US",
                      "risk_tier": "low"} for m in MERCHANTS]  # fmt: skip
        _write_csv(landing / "merchants" / d.isoformat() / "merchants.csv", list(merchants[0]), merchants)

        cbs = [{"txn_id": t, "chargeback_time": ts, "reason_code": "10.4"}
               for t, ts, b in CHARGEBACKS if b == d]  # fmt: skip
        _write_csv(landing / "chargebacks" / d.isoformat() / "chargebacks.csv",
                   ["txn_id", "chargeback_time", "reason_code"], cbs)  # fmt: skip

        cdc = []
        if d == START:
            cdc = [{"customer_id": c, "op": "c", "updated_at": "2024-03-01T06:00:00Z", "country": "US",
                    "kyc_level": 1, "signup_date": "2024-01-15"} for c in CUSTOMERS]  # fmt: skip
        cdc += [{"customer_id": 101, "op": "u", "updated_at": ts, "country": country, "kyc_level": kyc,
                 "signup_date": "2024-01-15"} for b, ts, country, kyc in PROFILE_101 if b == d]  # fmt: skip
        path = landing / "customers" / d.isoformat() / "customers.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in cdc))  # an empty file: no changes


@pytest.fixture(scope="module")
def lakehouse(tmp_path_factory: pytest.TempPathFactory, prefect_backend):
    from flows import pipeline
    from flows.monitoring.alerts import MonitoringFailure

    home = tmp_path_factory.mktemp("pit_edges_home")
    write_landing(home / "landing")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASOF_HOME", str(home))
        mp.delenv("ASOF_LAKE_URI", raising=False)
        monitoring = None
        try:
            results = pipeline.backfill(START.isoformat(), END.isoformat(), chunk_days=4)
        except MonitoringFailure as exc:
            # the backfill ended and monitoring judged its features incomplete (e.g. an active
            # customer without its row): the first test fails on it, the value tests say which row
            results, monitoring = exc.data, str(exc)
        first = {t: rf.read_gold(t) for t in GOLD_TABLES}
        # The backfill computed 03-01..03-04 before batch 03-05 (the late rows) was ingested. Redo
        # every as-of day now that all batches are in silver: a fact must still count only from its
        # batch on (contract §5), so nothing may change; the value tests below read this second result.
        rerun = transform_range(START, END)
        yield {"home": home, "results": results, "monitoring": monitoring, "first": first, "rerun": rerun}


def test_every_date_succeeds_and_a_rerun_after_later_batches_changes_nothing(lakehouse) -> None:
    assert lakehouse["monitoring"] is None, lakehouse["monitoring"]
    assert [r["status"] for r in lakehouse["results"]] == ["succeeded"] * 10, lakehouse["results"]
    assert lakehouse["rerun"].succeeded, lakehouse["rerun"].message
    for table in GOLD_TABLES:
        rf.assert_frames_match(rf.read_gold(table), lakehouse["first"][table], table)


def _customer(table: pd.DataFrame, customer: int) -> dict[dt.date, dict]:
    rows = table[table["customer_id"] == customer]
    return {r["as_of_date"]: r for r in rows.to_dict("records")}


def _merchant(table: pd.DataFrame, merchant: int) -> dict[dt.date, dict]:
    rows = table[table["merchant_id"] == merchant]
    return {r["as_of_date"]: r for r in rows.to_dict("records")}


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [d for d in DAYS if first <= d <= last]


def _is_null(v) -> bool:
    return v is None or pd.isna(v)


def test_conflicting_duplicate_in_one_batch_the_first_row_wins(lakehouse) -> None:
    """contract §6: the first delivery by (batch, file, row) wins. Batch 03-06 holds dup-1 at row 4
    (11.11 EUR) and row 9 (99.99 EUR): silver keeps row 4, quarantine holds row 9 as
    conflicting_duplicate and the later batches' copies as duplicate / conflicting_duplicate."""
    silver = lake.read("silver", "transactions").to_pandas()
    mine = silver[silver["txn_id"] == "dup-1"]
    assert len(mine) == 1, mine
    row = mine.iloc[0]
    assert (row["_batch_date"], row["_row_number"], row["amount"]) == (day(6), 4, 11.11)

    quarantine = lake.read("quarantine", "transactions").to_pandas()
    q = quarantine[quarantine["txn_id"] == "dup-1"].sort_values(["_batch_date", "_row_number"])
    got = [(r["_batch_date"], r["_row_number"], r["amount"], list(r["_reasons"])) for _, r in q.iterrows()]
    assert got == [
        (day(6), 9, "99.99", ["conflicting_duplicate"]),
        (day(7), 2, "11.11", ["duplicate"]),
        (day(8), 1, "77.77", ["conflicting_duplicate"]),
    ]

    # gold counts the first copy once: 11.11 EUR = 11.9988 USD, from 03-06 (event 03-06 08:00)
    cust = _customer(rf.read_gold("customer_txn_features_daily"), 108)
    assert sorted(cust) == _days(day(6), END)
    for d in _days(day(6), END):  # event 03-06 is in the 7 days of D = 03-06 .. 03-12
        assert cust[d]["txn_count_7d"] == cust[d]["txn_count_30d"] == 1, d
        assert cust[d]["amount_usd_sum_7d"] == pytest.approx(11.11 * 1.08, rel=1e-12), d
        assert cust[d]["amount_usd_max_7d"] == pytest.approx(11.11 * 1.08, rel=1e-12), d
    assert cust[day(6)]["txn_count_1d"] == 1 and cust[day(7)]["txn_count_1d"] == 0
    merch = _merchant(rf.read_gold("merchant_features_daily"), 208)
    assert {d: r["merchant_txn_count_90d"] for d, r in merch.items()} == dict.fromkeys(_days(day(6), END), 1)


def test_event_time_bounds_of_validation(lakehouse) -> None:
    """Batch B accepts B-30 00:00:00 <= event_time < B+1 00:00:00, to the microsecond."""
    silver = lake.read("silver", "transactions").to_pandas().set_index("txn_id")
    quarantine = lake.read("quarantine", "transactions").to_pandas().set_index("txn_id")
    # g at exactly 02-04 00:00:00 in batch 03-05 is in; h one microsecond earlier is too_late
    assert "g-late-out" in silver.index and "h-too-late" not in silver.index
    assert list(quarantine.loc["h-too-late", "_reasons"]) == ["too_late"]
    # i at 03-04 00:00:00 (= D+1) in batch 03-03 is in the future of its batch
    assert "i-future" not in silver.index
    assert list(quarantine.loc["i-future", "_reasons"]) == ["future_event_time"]
    # b at the batch's last microsecond is in, with its microseconds
    assert silver.loc["b-last-us", "event_time"] == pd.Timestamp("2024-03-01T23:59:59.999999Z")
    assert silver.loc["d-last-us-d30", "event_time"] == pd.Timestamp("2024-02-08T23:59:59.999999Z")
    # a quarantined row never reaches gold: customer 109 (only i) has no row, nor merchant 209
    gold = rf.read_gold("customer_txn_features_daily")
    assert 109 not in set(gold["customer_id"])
    assert 209 not in set(rf.read_gold("merchant_features_daily")["merchant_id"])


def test_customer_window_edges(lakehouse) -> None:
    gold = rf.read_gold("customer_txn_features_daily")

    # a (101): 03-02 00:00:00, batch 03-02. In K(D) from D = 03-02; in the 30 days up to D = 03-31.
    a = _customer(gold, 101)
    assert sorted(a) == _days(day(2), END)  # 03-01: 03-02 00:00 is not < 03-02 00:00
    assert a[day(2)]["txn_count_1d"] == 1  # [03-02 00:00, 03-03 00:00) holds 03-02 00:00
    assert a[day(3)]["txn_count_1d"] == 0
    assert a[day(8)]["txn_count_7d"] == 1  # D-6 = 03-02: the window starts at exactly 03-02 00:00
    assert a[day(8)]["amount_usd_max_7d"] == pytest.approx(17.0)
    assert a[day(9)]["txn_count_7d"] == 0 and _is_null(a[day(9)]["amount_usd_max_7d"])
    assert a[day(9)]["amount_usd_sum_7d"] == 0 and a[day(9)]["amount_usd_sum_30d"] == pytest.approx(17.0)
    assert a[day(2)]["seconds_since_last_txn"] == 86_400  # 03-03 00:00 - 03-02 00:00
    assert a[day(8)]["seconds_since_last_txn"] == 7 * 86_400

    # b (102): 03-01 23:59:59.999999, batch 03-01
    b = _customer(gold, 102)
    assert sorted(b) == DAYS
    assert b[day(1)]["txn_count_1d"] == 1  # 23:59:59.999999 < 03-02 00:00
    assert b[day(1)]["seconds_since_last_txn"] == 0  # 1 microsecond, in whole seconds
    assert b[day(2)]["txn_count_1d"] == 0 and b[day(2)]["seconds_since_last_txn"] == 86_400
    assert b[day(7)]["txn_count_7d"] == 1  # D-6 = 03-01
    assert b[day(8)]["txn_count_7d"] == 0  # D-6 = 03-02 00:00 > 03-01 23:59:59.999999
    assert b[day(7)]["amount_usd_sum_7d"] == pytest.approx(23.00 * 1.27, rel=1e-12)

    # c (103): 02-09 00:00:00, batch 03-05. Known from 03-05; D-29 = 02-09 for D = 03-09.
    c = _customer(gold, 103)
    assert sorted(c) == _days(day(5), day(9))  # not before its batch, not once D-29 > 02-09
    assert all(c[d]["txn_count_30d"] == 1 and c[d]["txn_count_7d"] == 0 for d in c)
    assert all(_is_null(c[d]["amount_usd_max_7d"]) for d in c)
    assert c[day(9)]["amount_usd_avg_30d"] == pytest.approx(31.0)
    assert c[day(9)]["seconds_since_last_txn"] == 30 * 86_400  # 03-10 00:00 - 02-09 00:00

    # d (104): 02-08 23:59:59.999999, batch 03-05; 02-08 is D-29 for D = 03-08
    d = _customer(gold, 104)
    assert sorted(d) == _days(day(5), day(8))  # D = 03-09: 02-08 23:59:59.999999 < 02-09 00:00
    assert d[day(8)]["seconds_since_last_txn"] == 29 * 86_400  # 29 days and 1 microsecond

    # e (105): 02-28 12:00, batch 03-05: a late row whose first known day is its last 7-day day
    e = _customer(gold, 105)
    assert sorted(e) == _days(day(5), END)
    assert e[day(5)]["txn_count_7d"] == 1  # D-6 = 02-28
    assert e[day(5)]["amount_usd_sum_7d"] == pytest.approx(41.00 * 1.08, rel=1e-12)
    assert e[day(5)]["amount_usd_max_7d"] == pytest.approx(41.00 * 1.08, rel=1e-12)
    assert e[day(5)]["txn_count_1d"] == 0  # the event is not in [03-05, 03-06)
    assert e[day(6)]["txn_count_7d"] == 0 and _is_null(e[day(6)]["amount_usd_max_7d"])
    assert e[day(6)]["txn_count_30d"] == 1

    # f (106): 02-05 10:00, batch 03-05: known on the last day of its 30-day window only
    f = _customer(gold, 106)
    assert sorted(f) == [day(5)]
    assert f[day(5)]["txn_count_30d"] == 1 and f[day(5)]["distinct_merchants_30d"] == 1

    # g (107): 02-04 00:00, batch 03-05: known after its 30 days ended; h (same customer) is quarantined
    assert _customer(gold, 107) == {}


def test_merchant_window_edges_and_chargebacks(lakehouse) -> None:
    gold = rf.read_gold("merchant_features_daily")
    # merchant 201 (a, 03-02 00:00:00): in the 7 days of D = 03-02..03-08
    m201 = _merchant(gold, 201)
    assert sorted(m201) == _days(day(2), END)
    assert m201[day(8)]["merchant_txn_count_7d"] == 1 and m201[day(9)]["merchant_txn_count_7d"] == 0
    # its chargeback arrives in batch 03-06 (and a duplicate of it in 03-08, quarantined)
    cb = {d: (r["merchant_chargeback_count_90d"], r["merchant_chargeback_rate_90d"]) for d, r in m201.items()}
    assert cb == {d: (0, 0.0) if d < day(6) else (1, 1.0) for d in _days(day(2), END)}
    # merchant 203 (c, late, with its chargeback in the same batch 03-05): counted from 03-05 on,
    # and still in the 90 days after the customer's 30-day row ended
    m203 = _merchant(gold, 203)
    assert sorted(m203) == _days(day(5), END)
    assert all(m203[d]["merchant_chargeback_count_90d"] == 1 for d in m203)
    # merchant 205 (e, 02-28 12:00 known 03-05): 7 days on 03-05 only
    m205 = _merchant(gold, 205)
    assert m205[day(5)]["merchant_txn_count_7d"] == 1 and m205[day(6)]["merchant_txn_count_7d"] == 0
    # merchants 206 and 207 (f, g): past the customer's 30 days, inside the merchant's 90
    for m in (206, 207):
        rows = _merchant(gold, m)
        assert sorted(rows) == _days(day(5), END), m
        assert {(r["merchant_txn_count_90d"], r["merchant_txn_count_7d"]) for r in rows.values()} == {(1, 0)}
    # merchant 204 (d): 02-08 23:59:59.999999 is in the 90 days of every D up to 05-07
    assert sorted(_merchant(gold, 204)) == _days(day(5), END)


def test_customer_profile_latest_known_values(lakehouse) -> None:
    """One row per customer per batch with a change, the latest updated_at known by then: batch 03-06
    brings an older change of customer 101, which does not replace the 03-04 values."""
    gold = rf.read_gold("customer_profile")
    got = {(r["customer_id"], r["as_of_date"]): (r["country"], r["kyc_level"]) for _, r in gold.iterrows()}
    expected = dict.fromkeys([(c, START) for c in CUSTOMERS], ("US", 1))
    expected[(101, day(4))] = ("GB", 3)
    expected[(101, day(6))] = ("GB", 3)
    assert got == expected
    ts = gold.set_index(["customer_id", "as_of_date"])["feature_timestamp"]
    assert ts[(101, day(6))] == pd.Timestamp("2024-03-07T00:00:00Z")


def test_gold_matches_the_reference_from_the_landing_files(lakehouse) -> None:
    """The same scenario through the brute-force reference (fed from the landing files parsed
    independently), for every entity and value, including the filler customer and merchant."""
    landing = rf.silver_from_landing(lakehouse["home"] / "landing", START, END)
    # the independent parse agrees with the cases' intent (and so with the explicit tests above)
    rejected = sorted((r.source, r.batch_date, r.row_number, r.raw["txn_id"], r.reasons)
                      for r in landing.rows if r.reasons)  # fmt: skip
    assert [(s, b, t, reasons) for s, b, _, t, reasons in rejected] == [
        ("chargebacks", day(8), "a-midnight", ["duplicate"]),
        ("transactions", day(3), "i-future", ["future_event_time"]),
        ("transactions", day(5), "h-too-late", ["too_late"]),
        ("transactions", day(6), "dup-1", ["conflicting_duplicate"]),
        ("transactions", day(7), "dup-1", ["duplicate"]),
        ("transactions", day(8), "dup-1", ["conflicting_duplicate"]),
    ]
    reference = rf.reference_features(landing.for_reference(), START, END)
    for table in GOLD_TABLES:
        rf.assert_frames_match(rf.read_gold(table), reference[table], table)
