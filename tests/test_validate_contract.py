"""The data contracts are the sources; the committed GE suites and dbt sources YAML are generated from
them; GE loads the committed files."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from flows.sources import SOURCE_NAMES, get_source
from flows.validation import contracts, stage, suites

REPO = Path(__file__).resolve().parent.parent


def _builder():
    spec = importlib.util.spec_from_file_location("build_suites", REPO / "expectations" / "build_suites.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_the_contract_is_the_source(name):
    """flows/sources.py holds no column of its own: the source is its contract file, read as written."""
    raw = yaml.safe_load((REPO / "expectations" / "contracts" / f"{name}.yml").read_text())
    source = get_source(name)
    assert contracts.load_contract(name) is source
    assert (source.name, source.fmt, source.key) == (raw["source"], raw["format"], tuple(raw["key"]))
    assert source.empty_is_valid == raw["empty_is_valid"] and source.default_file == raw["file"]
    assert [(c.name, c.type, c.nullable) for c in source.columns] == [
        (c["name"], c["type"], c.get("nullable", False)) for c in raw["columns"]
    ]
    assert all(c.description for c in source.columns), "every contract column is documented"


def test_fx_seed_covers_the_contract_currencies():
    fx = contracts.load_fx_rates()
    assert set(contracts.load_contract("transactions").column("currency").allowed) <= set(fx)
    assert fx["USD"] == 1.0


def test_committed_suites_are_built_from_the_contracts(tmp_path):
    """Rules are versioned as code: the committed context is exactly what the builder writes."""
    written = _builder().build(tmp_path)
    for path in written:
        rel = path.relative_to(tmp_path)
        committed = REPO / "expectations" / rel
        assert committed.exists(), f"{rel} is not committed: run expectations/build_suites.py"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{rel} is stale: run expectations/build_suites.py"
        )


def test_committed_dbt_sources_are_built_from_the_contracts():
    """dbt's silver sources YAML is generated from the contracts, never edited by hand."""
    builder = _builder()
    assert builder.DBT_SOURCES_YML.read_text() == builder.silver_sources_yaml(), (
        "dbt_project/models/staging/silver/_silver__sources.yml is stale: run expectations/build_suites.py"
    )
    tables = yaml.safe_load(builder.DBT_SOURCES_YML.read_text())["sources"][0]["tables"]
    assert [t["name"] for t in tables] == list(SOURCE_NAMES)
    for table in tables:
        names = [c["name"] for c in table["columns"]]
        assert names[: len(get_source(table["name"]).columns)] == get_source(table["name"]).column_names


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_every_expectation_names_its_rule(name):
    ctx = suites.ge_context()
    rows = ctx.suites.get(contracts.rows_suite(name))
    reasons = set()
    for e in rows.expectations:
        meta = e.meta or {}
        assert meta.get("level") in ("row", "batch"), e
        if meta["level"] == "row":
            assert meta.get("reason"), e
            reasons.add(meta["reason"])
        else:
            assert meta.get("rule"), e
    contract = contracts.load_contract(name)
    for c in contract.columns:
        if not c.nullable:
            assert f"null:{c.name}" in reasons
        if c.type in contracts.TYPED:
            assert f"unparseable:{c.name}" in reasons
    assert "malformed_row" in reasons
    batches = ctx.suites.get(contracts.batches_suite(name))
    rules = {e.meta["rule"] for e in batches.expectations}
    assert {"contract_broken", "added_columns", "volume"} <= rules
    assert all(e.meta.get("level") == "batch" for e in batches.expectations)
    checks = {e.meta.get("check") for e in batches.expectations if e.meta["rule"] == "contract_broken"}
    assert {"header", "malformed"} <= checks
    assert ctx.checkpoints.get(contracts.batches_suite(name))
    cp = ctx.checkpoints.get(contracts.rows_suite(name))
    assert (
        cp.result_format == {"result_format": "COMPLETE"}
        or cp.result_format.get("result_format") == "COMPLETE"
    )


def test_transactions_rules_match_spec_section_6():
    ctx = suites.ge_context()
    by_reason = {
        e.meta.get("reason") or e.meta.get("rule"): e
        for e in ctx.suites.get("transactions.rows").expectations
    }
    rng = by_reason["amount_out_of_range"].configuration.kwargs
    assert (rng["min_value"], rng["strict_min"], rng["max_value"]) == (0, True, 1_000_000)
    for reason in ("too_late", "future_event_time", "unknown_merchant", "unknown_currency", "duplicate"):
        assert reason in by_reason
    assert "conflicting_duplicate" in by_reason and "naive_timestamp:event_time" in by_reason
    # the time rules compare each row with the bounds of its own batch date (helper columns)
    late = by_reason["too_late"].configuration.kwargs
    assert (late["column_A"], late["column_B"], late["or_equal"]) == (
        "event_time__parsed",
        "too_late__min",
        True,
    )
    future = by_reason["future_event_time"].configuration.kwargs
    assert (future["column_A"], future["column_B"], future["or_equal"]) == (
        "future_event_time__max",
        "event_time__parsed",
        False,
    )
    by_rule: dict[str, list] = {}
    for e in ctx.suites.get("transactions.batches").expectations:
        by_rule.setdefault(e.meta["rule"], []).append(e)
    for rule in ("volume", "volume_warning", "amount_drift", "contract_broken", "too_many_failing_rows"):
        assert rule in by_rule
    assert all("warning" in str(e.severity).lower() for e in by_rule["volume_warning"])
    assert all("critical" in str(e.severity).lower() for e in by_rule["volume"])
    share = by_rule["too_many_failing_rows"][0].configuration.kwargs
    assert (share["column_A"], share["column_B"]) == ("failing_rows_max", "failing_rows")


def test_validation_writes_nothing_into_the_repository(home):
    """Results and Data Docs go under ASOF_HOME; the committed context is only read."""

    def snapshot() -> dict[str, str]:
        root = REPO / "expectations"
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }

    before = snapshot()
    import datetime as dt

    import pyarrow as pa

    from flows.sources import bronze_schema
    from flows.storage import lake

    src = get_source("customers")
    day = dt.date(2024, 5, 1)
    row = {
        "customer_id": "1",
        "op": "c",
        "updated_at": "2024-05-01T01:00:00Z",
        "country": "FR",
        "kyc_level": "1",
        "signup_date": "2024-04-01",
    }
    data = {c: [row[c]] for c in src.column_names}
    data |= {"_extra": [None], "_raw": [None], "_parse_error": [None], "_batch_date": [day]}
    data |= {
        "_ingested_at": [dt.datetime(2024, 5, 2, tzinfo=dt.UTC)],
        "_source_file": ["f"],
        "_row_number": [1],
    }
    lake.replace(
        "bronze",
        "customers",
        pa.table(data, schema=bronze_schema(src)),
        predicate=lake.date_predicate("_batch_date", day),
        partition_by=["_batch_date"],
        schema=bronze_schema(src),
    )
    out = stage.validate_date(day, ["customers"])["customers"]
    assert out.status == "succeeded" and out.rows_silver == 1
    assert snapshot() == before
    assert list((home / "ge" / "validations").rglob("*.json"))
    assert (home / "docs" / "index.html").exists()
    assert json.loads((home / "ge" / "index.json").read_text())
