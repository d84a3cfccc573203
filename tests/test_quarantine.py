"""Quarantine replay: release after a rule fix promotes exactly the rows that now pass, idempotently."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.storage import lake
from flows.validation import contracts, stage, storage
from flows.validation import quarantine as Q
from tests.bronze_batches import land
from tests.conftest import require_binary

D1 = dt.date(2024, 3, 1)
REPO = Path(__file__).resolve().parent.parent


def txn(i: int, **kw) -> dict:
    row = {
        "txn_id": f"t{i:05d}",
        "customer_id": str(100 + i % 7),
        "merchant_id": "1",
        "amount": f"{10 + i % 50}.25",
        "currency": "USD",
        "channel": "app",
        "event_time": f"2024-03-01T{i % 24:02d}:00:00Z",
    }
    row.update(kw)
    return row


@pytest.fixture
def fx(tmp_path, monkeypatch):
    """A private copy of the FX seed the test can 'fix'."""
    seed = tmp_path / "fx_rates.csv"
    seed.write_text("currency,usd_rate\nUSD,1.0\nEUR,1.08\nGBP,1.27\n")
    monkeypatch.setattr(contracts, "FX_SEED", seed)
    return seed


@pytest.fixture
def batch(home, fx):
    land(
        "merchants",
        D1,
        [{"merchant_id": "1", "name": "M", "mcc": "5411", "country": "US", "risk_tier": "low"}],
    )
    rows = [txn(i) for i in range(200)]
    rows += [txn(1000 + i, currency="JPY") for i in range(4)]  # fixed by adding JPY to the seed
    rows += [txn(2000, currency="JPY", amount=None), txn(2001, amount="-5.00")]  # still bad after the fix
    land("transactions", D1, rows)
    out = stage.validate_date(D1, ["merchants", "transactions"], build_docs=False)
    assert out["transactions"].status == "succeeded"
    assert out["transactions"].rows_quarantined == 6
    return home


def _state() -> tuple[int, int, list]:
    return (
        lake.version("silver", "transactions"),
        lake.version("quarantine", "transactions"),
        Q.read_releases("transactions"),
    )


def test_release_promotes_exactly_the_rows_that_now_pass_and_twice_changes_nothing(batch, fx):
    # nothing passes yet: a release is a no-op and records nothing
    before = _state()
    res = Q.release("transactions", D1, build_docs=False)
    assert res.rows_considered == 6 and res.rows_released == 0
    assert "still fail" in res.message and res.still_failing["unknown_currency"] == 5
    assert _state() == before

    fx.write_text(fx.read_text() + "JPY,0.0067\n")  # the rule fix: JPY becomes a known currency
    res = Q.release("transactions", D1, build_docs=False)
    assert res.rows_released == 4 and res.rows_still_quarantined == 2
    silver_ids = {r["txn_id"] for r in lake.read("silver", "transactions").to_pylist()}
    assert {f"t{1000 + i:05d}" for i in range(4)} <= silver_ids
    left = {r["txn_id"]: r["_reasons"] for r in lake.read("quarantine", "transactions").to_pylist()}
    assert left == {"t02000": ["null:amount"], "t02001": ["amount_out_of_range"]}
    assert storage.check_conservation("transactions", D1) == (206, 204, 2)
    releases = Q.read_releases("transactions", D1)
    assert len(releases) == 1 and releases[0]["rows_released"] == 4
    assert sorted(releases[0]["released_rows"]) == sorted(
        f"landing/transactions/{D1}/transactions.csv#{n}" for n in range(201, 205)
    )
    promoted = [r for r in lake.read("silver", "transactions").to_pylist() if r["txn_id"] == "t01000"][0]
    assert promoted["currency"] == "JPY" and promoted["_validation_run_id"] == res.validation_run_id
    rec = storage.read_validations(D1, "transactions")[0]
    assert rec["rows_silver"] == 204 and rec["rows_quarantined"] == 2

    after = _state()
    again = Q.release("transactions", D1, build_docs=False)
    assert again.rows_released == 0
    assert _state() == after

    # re-running the date with the same rules gives the same split
    out = stage.validate_date(D1, ["transactions"], build_docs=False)["transactions"]
    assert (out.rows_silver, out.rows_quarantined) == (204, 2)


def test_release_waits_for_a_running_pipeline(batch, fx, monkeypatch):
    """A release rewrites the partitions a run of the same date rewrites: it queues on the
    pipeline lock instead of racing it, and gives up with a clear message, writing nothing."""
    fx.write_text(fx.read_text() + "JPY,0.0067\n")
    before = _state()
    monkeypatch.setattr(lake, "LOCK_TIMEOUT_S", 0.5)
    with lake.lock("ops", "pipeline"), pytest.raises(lake.LakeError, match="ops/pipeline"):
        Q.release("transactions", D1, build_docs=False)
    assert _state() == before
    assert Q.release("transactions", D1, build_docs=False).rows_released == 4  # lock free: it runs


def test_release_by_rule_only_considers_matching_rows(batch, fx):
    fx.write_text(fx.read_text() + "JPY,0.0067\n")
    res = Q.release("transactions", D1, rule="amount_out_of_range", build_docs=False)
    assert res.rows_considered == 1 and res.rows_released == 0
    res = Q.release("transactions", D1, rule="null", build_docs=False)  # prefix of null:amount
    assert res.rows_considered == 1 and res.rows_released == 0
    res = Q.release("transactions", D1, rule="unknown_currency", build_docs=False)
    assert res.rows_considered == 5 and res.rows_released == 4


def test_rejected_batch_is_released_only_when_the_batch_passes(home, fx):
    land(
        "merchants",
        D1,
        [{"merchant_id": "1", "name": "M", "mcc": "5411", "country": "US", "risk_tier": "low"}],
    )
    rows = (
        [txn(i) for i in range(90)]
        + [txn(1000 + i, currency="JPY") for i in range(10)]
        + [txn(2000, amount="x")]
    )
    land("transactions", D1, rows)
    out = stage.validate_date(D1, ["merchants", "transactions"], build_docs=False)["transactions"]
    assert out.status == "rejected" and out.rejected_rule == "too_many_failing_rows"
    before = _state()
    res = Q.release("transactions", D1, rule="batch_rejected", build_docs=False)
    assert res.rows_released == 0 and "not released" in res.message
    assert _state()[:2] == before[:2] and _state()[2] == []

    fx.write_text(fx.read_text() + "JPY,0.0067\n")
    res = Q.release("transactions", D1, build_docs=False)
    assert res.rows_released == 100 and res.rows_still_quarantined == 1
    left = lake.read("quarantine", "transactions").to_pylist()
    assert [(r["txn_id"], r["_reasons"]) for r in left] == [("t02000", ["unparseable:amount"])]
    assert Q.release("transactions", D1, build_docs=False).rows_released == 0


def test_list_and_show(batch):
    counts = Q.list_counts("transactions", D1)
    by_reason = {c["reason"]: c["rows"] for c in counts}
    assert by_reason == {"unknown_currency": 5, "null:amount": 1, "amount_out_of_range": 1}
    assert Q.list_counts(rule="null") == [
        {"source": "transactions", "date": D1, "reason": "null:amount", "rows": 1, "rows_in_batch": 1}
    ]
    rows = Q.show("transactions", D1, rule="amount_out_of_range")
    assert len(rows) == 1 and rows[0]["amount"] == "-5.00" and rows[0]["_reasons"] == ["amount_out_of_range"]


def test_cli(batch, fx):
    from flows.cli.validation import quarantine_app

    runner = CliRunner()
    res = runner.invoke(quarantine_app, ["list", "--source", "transactions", "--date", D1.isoformat()])
    assert res.exit_code == 0, res.output
    assert "unknown_currency" in res.output and "null:amount" in res.output
    res = runner.invoke(quarantine_app, ["show", "--source", "transactions", "--rule", "null", "--json"])
    assert res.exit_code == 0 and json.loads(res.output.splitlines()[0])["txn_id"] == "t02000"
    fx.write_text(fx.read_text() + "JPY,0.0067\n")
    res = runner.invoke(quarantine_app, ["release", "--source", "transactions", "--date", D1.isoformat()])
    assert res.exit_code == 0, res.output
    assert "released 4 of 6" in res.output
    for cmd in ("list", "show", "release"):
        assert runner.invoke(quarantine_app, [cmd, "--help"]).exit_code == 0


def test_cli_refuses_bad_arguments_before_running(home):
    asof = require_binary("asof", path=str(REPO / ".venv" / "bin"))  # the console script
    for args, needle in (
        (
            ["quarantine", "release", "--source", "transactions", "--date", "2024-02-30"],
            "not a real calendar date",
        ),
        (["quarantine", "list", "--source", "nope"], "unknown source"),
        (["quarantine", "release", "--source", "transactions"], "--date is required"),
    ):
        proc = subprocess.run([asof, *args], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (home / "lake").exists()


HOSTILE = "\x1b]0;PWNED\x07\x1b[2J[bold red]x[/]\u202eevil"


def test_show_prints_hostile_upstream_text_as_escapes(home, fx):
    """A quarantined value holding terminal escapes, Rich markup and a bidi override is printed
    literally with its control characters escaped; --json escapes them as JSON does (issue 23)."""
    from flows.cli.validation import quarantine_app

    land(
        "merchants",
        D1,
        [{"merchant_id": "1", "name": "M", "mcc": "5411", "country": "US", "risk_tier": "low"}],
    )
    land("transactions", D1, [txn(i) for i in range(50)] + [txn(9000, currency=HOSTILE)])
    stage.validate_date(D1, ["merchants", "transactions"], build_docs=False)
    res = CliRunner().invoke(quarantine_app, ["show", "--source", "transactions", "--date", D1.isoformat()])
    assert res.exit_code == 0, res.output
    assert not any(ch in res.output for ch in ("\x1b", "\x07", "\u202e"))
    flat = "".join(res.output.split())  # the table may fold the value over several lines
    assert "\\x1b]0;PWNED\\x07\\x1b[2J[boldred]x[/]\\u202eevil" in flat
    res = CliRunner().invoke(quarantine_app, ["show", "--source", "transactions", "--json"])
    assert "\x1b" not in res.output and json.loads(res.output.splitlines()[0])["currency"] == HOSTILE


def test_data_docs_show_hostile_values_as_text(home, fx):
    """Upstream markup in a quarantined value is text on the Data Docs result page, not HTML that
    runs (issue 23 item 4); the stored result keeps the value as delivered."""
    land(
        "merchants",
        D1,
        [{"merchant_id": "1", "name": "M", "mcc": "5411", "country": "US", "risk_tier": "low"}],
    )
    script, img = "<script>alert(2)</script>", "<img src=x onerror=alert(1)>"
    land("transactions", D1, [txn(i) for i in range(50)] + [txn(9000, currency=script, channel=img)])
    out = stage.validate_date(D1, ["merchants", "transactions"], build_docs=True)["transactions"]
    pages = [p for p in (home / "docs").rglob("*.html") if "validations" in p.parts]
    text = "".join(p.read_text() for p in pages)
    assert pages and script not in text and img not in text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in text
    stored = "".join(p.read_text() for p in (home / "ge" / "validations" / "transactions").rglob("*.json"))
    assert "<script>alert(2)</script>" in stored  # the stored result keeps the value as delivered
    assert out.status == "succeeded"
