"""Conservation guards made to fail through the stages that own them (issue 24, item 1).

A writer that loses or doubles one row is the bug: `lake.replace` is wrapped so that the write of
one table and one date drops a row, doubles one, or swaps one for a copy of another (same count,
wrong rows). Ingest (bronze row count), validation (`check_conservation` after the split) and
`asof quarantine release` must then raise, the pipeline must stop the date there (no later stage
runs, no gold for it) and the run records must say the date failed.

Each test was run against the bug it guards (in a copy of the repository): without the
conservation check in `flows.validation.stage.validate_dates` the validation tests fail, without
the bronze row-count check at the end of `flows.ingest.stage.ingest` the ingest tests fail, and without
the `check_conservation` call in `flows.validation.quarantine._release` the release tests fail.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from flows.ingest.stage import ingest
from flows.operations import runs
from flows.storage import lake
from flows.validation import contracts, stage, storage
from flows.validation import quarantine as Q
from tests.bronze_batches import land
from tests.test_quarantine import txn

D1, D2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
SCALE, SEED = "200x400", 5
GOLD = ("customer_txn_features_daily", "merchant_features_daily")


def _drop(data: pa.Table) -> pa.Table:
    return data.slice(0, data.num_rows - 1)


def _double(data: pa.Table) -> pa.Table:
    return pa.concat_tables([data, data.slice(0, 1)])


def _swap(data: pa.Table) -> pa.Table:
    """The last row replaced by a copy of the first: the count is right, the rows are not."""
    return pa.concat_tables([data.slice(0, data.num_rows - 1), data.slice(0, 1)])


MUTATIONS: dict[str, Callable[[pa.Table], pa.Table]] = {"drop": _drop, "double": _double, "swap": _swap}


def corrupt_writes(
    monkeypatch: pytest.MonkeyPatch, layer: str, table: str, day: dt.date, how: str
) -> list[int]:
    """In every later write of `layer`/`table`, the rows of `day` go through MUTATIONS[how] (a write
    may hold several dates: validation writes all the dates of a run in one commit).

    Returns the list of row counts of `day` the callers asked to write (one per corrupted write), so
    a test can tell that the faulty writer was reached at all."""
    real, real_stream = lake.replace, lake.replace_stream
    mutate = MUTATIONS[how]
    asked: list[int] = []

    def corrupt(data: pa.Table) -> pa.Table:
        of_day = pc.equal(data.column("_batch_date"), pa.scalar(day, pa.date32()))
        mine = data.filter(of_day)
        if not mine.num_rows:
            return data
        asked.append(mine.num_rows)
        return pa.concat_tables([data.filter(pc.invert(of_day)), mutate(mine)])

    def replace(layer_: str, name: str, data: pa.Table, *args, **kwargs) -> int:
        if (layer_, name) == (layer, table) and data.num_rows:
            data = corrupt(data)
        return real(layer_, name, data, *args, **kwargs)

    def replace_stream(layer_: str, name: str, batches, schema: pa.Schema, *args, **kwargs) -> int:
        if (layer_, name) == (layer, table):
            data = pa.Table.from_batches(list(batches()), schema)  # streamed writes: the same faults
            data = corrupt(data).cast(schema) if data.num_rows else data
            return real_stream(layer_, name, data.to_batches, schema, *args, **kwargs)
        return real_stream(layer_, name, batches, schema, *args, **kwargs)

    monkeypatch.setattr(lake, "replace", replace)
    monkeypatch.setattr(lake, "replace_stream", replace_stream)
    return asked


def rows_of(layer: str, table: str, day: dt.date) -> int:
    if not lake.exists(layer, table):
        return 0
    return lake.read(layer, table, days=[day], columns=["_batch_date"]).num_rows


# ------------------------------------------------------------------------------ ingest (bronze)


@pytest.fixture
def landed(home: Path) -> dict:
    """Two generated days in the landing zone of a fresh ASOF_HOME; the generator's row counts."""
    from flows.upstream import simulate

    summary = simulate.generate(home / "landing", D1, D2, simulate.parse_scale(SCALE), seed=SEED)
    dates = summary["dates"].items()
    return {dt.date.fromisoformat(d): {s: v["rows"] for s, v in per.items()} for d, per in dates}


@pytest.mark.parametrize("how", ["drop", "double"])
def test_ingest_raises_when_the_bronze_write_loses_or_doubles_a_row(
    landed: dict, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    n = landed[D1]["transactions"]
    asked = corrupt_writes(monkeypatch, "bronze", "transactions", D1, how)
    held = n - 1 if how == "drop" else n + 1
    with pytest.raises(RuntimeError) as err:
        ingest("transactions", D1)
    assert str(err.value) == (
        f"conservation violated for transactions {D1}: parsed {n} rows, bronze holds {held}"
    )
    assert asked == [n]
    # the other sources are not touched by the faulty writer and still conserve
    assert ingest("merchants", D1).rows == rows_of("bronze", "merchants", D1) == landed[D1]["merchants"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pipeline_stops_a_date_whose_bronze_write_loses_a_row(
    landed: dict, prefect_backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """D1 is clean, D2's transactions lose a row on the way to bronze: D2's ingest fails (after
    its retries), it is never validated, transformed or materialized, and status says failed."""
    from flows import pipeline

    n = landed[D2]["transactions"]
    asked = corrupt_writes(monkeypatch, "bronze", "transactions", D2, "drop")
    results = _run_backfill(pipeline)
    assert asked and set(asked) == {n}  # the faulty writer was reached (once per attempt)

    assert [r["status"] for r in results] == ["succeeded", "failed"], results
    assert results[1]["stages"] == {
        "ingest": "failed",
        "validate": "skipped",
        "transform": "not run",
        "materialize": "not run",
    }, results[1]
    why = f"conservation violated for transactions {D2}: parsed {n} rows, bronze holds {n - 1}"
    assert why in results[1]["message"]

    _assert_recorded_failed(D2, stage="ingest", source="transactions", why=why)
    # nothing after ingest was written for D2: no split, no validation record, no gold
    for layer in ("silver", "quarantine"):
        assert rows_of(layer, "transactions", D2) == 0, layer
    assert storage.read_validations(D2) == []
    _assert_gold_only_for(D1)


# ------------------------------------------------------------------------ validation (split)


@pytest.fixture
def fx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    seed = tmp_path / "fx_rates.csv"
    seed.write_text("currency,usd_rate\nUSD,1.0\nEUR,1.08\nGBP,1.27\n")
    monkeypatch.setattr(contracts, "FX_SEED", seed)
    return seed


Q_DAY = dt.date(2024, 3, 1)  # the day tests.test_quarantine's helpers write


@pytest.fixture
def bronze_batch(home: Path, fx: Path) -> int:
    """Bronze rows of Q_DAY: 200 clean transactions and 6 that fail (4 until JPY is known)."""
    land(
        "merchants",
        Q_DAY,
        [{"merchant_id": "1", "name": "M", "mcc": "5411", "country": "US", "risk_tier": "low"}],
    )
    rows = [txn(i) for i in range(200)]
    rows += [txn(1000 + i, currency="JPY") for i in range(4)]
    rows += [txn(2000, currency="JPY", amount=None), txn(2001, amount="-5.00")]
    land("transactions", Q_DAY, rows)
    return len(rows)


@pytest.mark.parametrize(
    "layer, how, problem",
    [
        ("silver", "drop", "bronze has 206 rows, silver 199 + quarantine 6 = 205"),
        ("quarantine", "double", "bronze has 206 rows, silver 200 + quarantine 7 = 207"),
        ("silver", "swap", "1 row(s) are in silver and quarantine at once"),
    ],
    ids=["silver-drop", "quarantine-double", "silver-swap"],
)
def test_validation_raises_when_the_split_loses_doubles_or_swaps_a_row(
    bronze_batch: int, monkeypatch: pytest.MonkeyPatch, layer: str, how: str, problem: str
) -> None:
    asked = corrupt_writes(monkeypatch, layer, "transactions", Q_DAY, how)
    with pytest.raises(storage.ConservationError) as err:
        stage.validate_date(Q_DAY, ["merchants", "transactions"], build_docs=False)
    assert str(err.value) == f"conservation violated for transactions {Q_DAY}: {problem}"
    assert asked == [200 if layer == "silver" else 6]
    # the sources validated before it are recorded; the broken one is not recorded as anything
    assert [(r["source"], r["status"]) for r in storage.read_validations(Q_DAY)] == [
        ("merchants", "succeeded")
    ]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pipeline_stops_a_date_whose_split_loses_a_row(
    landed: dict, prefect_backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """D1 is clean, D2's silver write of transactions loses a row: D2's validation fails (after its
    retry), it is never transformed or materialized, and status says failed."""
    from flows import pipeline

    n = landed[D2]["transactions"]
    asked = corrupt_writes(monkeypatch, "silver", "transactions", D2, "drop")
    results = _run_backfill(pipeline)
    assert asked and len(set(asked)) == 1  # the faulty writer was reached (once per attempt)
    s = asked[0]  # the rows validation sent to silver; the others went to quarantine

    assert [r["status"] for r in results] == ["succeeded", "failed"], results
    assert results[1]["stages"] == {
        "ingest": "succeeded",
        "validate": "failed",
        "transform": "not run",
        "materialize": "not run",
    }, results[1]
    why = (
        f"conservation violated for transactions {D2}: "
        f"bronze has {n} rows, silver {s - 1} + quarantine {n - s} = {n - 1}"
    )
    assert why in results[1]["message"]

    _assert_recorded_failed(D2, stage="validate", source=runs.ALL_SOURCES, why=f"ConservationError: {why}")
    assert "transactions" not in {r["source"] for r in storage.read_validations(D2)}
    assert rows_of("bronze", "transactions", D2) == n
    _assert_gold_only_for(D1)


# ------------------------------------------------------------------------- quarantine release


@pytest.fixture
def validated(bronze_batch: int, fx: Path) -> dict:
    out = stage.validate_date(Q_DAY, ["merchants", "transactions"], build_docs=False)["transactions"]
    assert (out.status, out.rows_silver, out.rows_quarantined) == ("succeeded", 200, 6)
    fx.write_text(fx.read_text() + "JPY,0.0067\n")  # the rule fix: 4 rows now pass
    return storage.read_validations(Q_DAY, "transactions")[0]


@pytest.mark.parametrize(
    "layer, how, problem",
    [
        ("silver", "drop", "bronze has 206 rows, silver 203 + quarantine 2 = 205"),
        ("quarantine", "double", "bronze has 206 rows, silver 204 + quarantine 3 = 207"),
    ],
    ids=["silver-drop", "quarantine-double"],
)
def test_release_raises_when_its_writes_lose_or_double_a_row(
    validated: dict, monkeypatch: pytest.MonkeyPatch, layer: str, how: str, problem: str
) -> None:
    asked = corrupt_writes(monkeypatch, layer, "transactions", Q_DAY, how)
    with pytest.raises(storage.ConservationError) as err:
        Q.release("transactions", Q_DAY, build_docs=False)
    assert str(err.value) == f"conservation violated for transactions {Q_DAY}: {problem}"
    assert asked == [204 if layer == "silver" else 2]
    # no release is recorded and the validation record is not refreshed to the broken counts
    assert Q.read_releases("transactions", Q_DAY) == []
    assert storage.read_validations(Q_DAY, "transactions")[0] == validated
    # the date is recorded as failed, with the reason, so status says so and a backfill reruns it
    assert runs.date_status(runs.latest(Q_DAY, Q_DAY)) == {Q_DAY: "failed"}
    failed = [r for r in runs.latest(Q_DAY, Q_DAY) if r["status"] == "failed"]
    assert [(r["stage"], r["source"]) for r in failed] == [("validate", "transactions")]
    assert "ConservationError" in failed[0]["message"] and problem in failed[0]["message"]


def test_release_of_a_rejected_batch_raises_when_its_split_loses_a_row(
    home: Path, fx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rejected batch is released as a whole batch (validation's own split writer)."""
    land(
        "merchants",
        Q_DAY,
        [{"merchant_id": "1", "name": "M", "mcc": "5411", "country": "US", "risk_tier": "low"}],
    )
    rows = [txn(i) for i in range(90)] + [txn(1000 + i, currency="JPY") for i in range(10)]
    land("transactions", Q_DAY, rows)  # 10% unknown currency: the whole batch is rejected
    out = stage.validate_date(Q_DAY, ["merchants", "transactions"], build_docs=False)["transactions"]
    assert out.status == "rejected" and out.rows_quarantined == 100
    before = storage.read_validations(Q_DAY, "transactions")[0]
    fx.write_text(fx.read_text() + "JPY,0.0067\n")

    asked = corrupt_writes(monkeypatch, "silver", "transactions", Q_DAY, "drop")
    with pytest.raises(storage.ConservationError) as err:
        Q.release("transactions", Q_DAY, build_docs=False)
    assert str(err.value) == (
        f"conservation violated for transactions {Q_DAY}: bronze has 100 rows, silver 99 + quarantine 0 = 99"
    )
    assert asked == [100]
    assert Q.read_releases("transactions", Q_DAY) == []
    assert storage.read_validations(Q_DAY, "transactions")[0] == before


def test_release_command_fails_when_the_release_loses_a_row(
    validated: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`asof quarantine release` (the console entry point, in process): exit 1, one error line."""
    from flows.cli import main as cli

    corrupt_writes(monkeypatch, "silver", "transactions", Q_DAY, "drop")
    argv = ["asof", "quarantine", "release", "--source", "transactions", "--date", Q_DAY.isoformat()]
    monkeypatch.setattr("sys.argv", argv)
    monkeypatch.delenv("ASOF_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"asof: error: ConservationError: conservation violated for transactions {Q_DAY}: "
        "bronze has 206 rows, silver 203 + quarantine 2 = 205"
    )
    assert Q.read_releases("transactions", Q_DAY) == []


# ------------------------------------------------------------------------------------ helpers


def _run_backfill(pipeline) -> list[dict]:
    """The backfill's per-date results; monitoring may fail the flow run because of the failed
    date (MonitoringFailure carries the same results)."""
    from flows.monitoring import alerts

    try:
        return pipeline.backfill(D1.isoformat(), D2.isoformat())
    except alerts.MonitoringFailure as exc:
        return exc.data


def _assert_recorded_failed(day: dt.date, *, stage: str, source: str, why: str) -> None:
    """The run records (what `asof status` shows) say the date failed at `stage`, and no later
    stage of it succeeded."""
    from flows.cli import main as cli

    records = runs.latest(D1, day)
    assert runs.date_status(records) == {D1: "succeeded", day: "failed"}
    mine = {(r["stage"], r["source"]): r for r in records if r["execution_date"] == day}
    assert mine[(stage, source)]["status"] == "failed"
    assert why in mine[(stage, source)]["message"]
    later = runs.STAGES[runs.STAGES.index(stage) + 1 :]
    assert {r["status"] for k, r in mine.items() if k[0] in later} <= {"skipped", "not run"}, mine

    shown = CliRunner().invoke(cli.app, ["status", "--start", D1.isoformat(), "--end", day.isoformat()])
    assert shown.exit_code == 0, shown.output
    lines = [line for line in shown.output.splitlines() if line.startswith(f"{day} {stage} {source}: ")]
    assert len(lines) == 1 and lines[0].startswith(f"{day} {stage} {source}: failed: "), shown.output
    assert why in lines[0], shown.output


def _assert_gold_only_for(day: dt.date) -> None:
    for table in GOLD:
        dates = set(lake.read("gold", table, columns=["as_of_date"]).column("as_of_date").to_pylist())
        assert dates == {day}, (table, dates)
