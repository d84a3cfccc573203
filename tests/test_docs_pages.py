"""The words on the pages a user opens (issue 20), without a browser: which dates the monitoring
reports cover, how Data Docs name a result's data asset, show a run-time parameter and explain the
helper columns, and where links point when nothing serves the pages."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from flows.monitoring import report as monitor_report
from flows.pages import links
from flows.validation import contracts as V
from flows.validation import suites

D = dt.date


def days(start: dt.date, n: int) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range(n)]


# ------------------------------------------------------------------------------ monitoring report


def test_a_small_backfill_of_old_dates_does_not_shrink_the_served_report() -> None:
    """The issue's case: a 30-day lake, then a 2-date backfill of 01-05..06. The served report
    covers the lake (not 60 days ending at 01-06, 54 of them grey); the run's own report shows its
    two dates inside the lake's range."""
    lake = days(D(2024, 1, 1), 30)
    assert monitor_report.served_window(lake, 60) == (D(2024, 1, 1), D(2024, 1, 30))
    assert monitor_report.run_window([D(2024, 1, 5), D(2024, 1, 6)], lake, 60) == (
        D(2024, 1, 1),
        D(2024, 1, 30),
    )
    assert monitor_report.older_note(lake, D(2024, 1, 1)) is None


def test_a_long_lake_shows_its_newest_dates_and_says_where_the_rest_are() -> None:
    lake = days(D(2023, 1, 1), 200)  # 2023-01-01 .. 2023-07-19
    start, end = monitor_report.served_window(lake, 60)
    assert (start, end) == (D(2023, 5, 21), D(2023, 7, 19))
    note = monitor_report.older_note(lake, start)
    assert note is not None and "140 earlier date(s)" in note
    assert "asof monitor --start 2023-01-01 --end 2023-05-20 --html FILE" in note
    # a run of old dates: 60 days centred on them, inside the lake
    assert monitor_report.run_window([D(2023, 1, 10)], lake, 60) == (D(2023, 1, 1), D(2023, 3, 1))
    assert monitor_report.run_window([D(2023, 3, 1), D(2023, 3, 2)], lake, 60) == (
        D(2023, 1, 31),
        D(2023, 3, 31),
    )
    # a run longer than the window is shown whole
    assert monitor_report.run_window(lake[:90], lake, 60) == (lake[0], lake[89])
    assert monitor_report.served_window([], 60) is None


def test_the_run_report_outlines_its_dates(tmp_path: Path) -> None:
    html = monitor_report.render(
        [], D(2024, 1, 1), D(2024, 1, 10), marked=[D(2024, 1, 5)], notes=["older: x"]
    )
    assert "this run: <b>2024-01-05 .. 2024-01-05</b>" in html
    assert "2024-01-05: processed by this run" in html and "2024-01-04: not in this run" in html
    assert '<p class="note">older: x</p>' in html
    plain = monitor_report.render([], D(2024, 1, 1), D(2024, 1, 10))
    assert "this run" not in plain
    path = monitor_report.run_report_path(tmp_path, [D(2024, 1, 6), D(2024, 1, 5)])
    assert path == tmp_path / "runs" / "2024-01-05_2024-01-06.html"


# ------------------------------------------------------------------------------------- links


def test_links_are_served_urls_when_served_and_file_urls_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASOF_HOME", str(tmp_path))
    monkeypatch.delenv("ASOF_DOCS_URL", raising=False)
    monkeypatch.delenv("ASOF_REPORTS_URL", raising=False)
    report = tmp_path / "reports" / "runs" / "2024-01-05_2024-01-06.html"
    assert links.report_url(report) == report.resolve().as_uri()
    assert not links.all_served()
    monkeypatch.setenv("ASOF_DOCS_URL", "http://127.0.0.1:4201/docs/index.html")
    monkeypatch.setenv("ASOF_REPORTS_URL", "http://127.0.0.1:4201/reports/")
    assert links.report_url(report) == "http://127.0.0.1:4201/reports/runs/2024-01-05_2024-01-06.html"
    assert links.docs_url(tmp_path / "docs" / "dbt" / "static_index.html") == (
        "http://127.0.0.1:4201/docs/dbt/static_index.html"
    )
    assert links.all_served()
    outside = tmp_path / "elsewhere.html"  # not under the served root: the file URL, never a wrong link
    assert links.report_url(outside) == outside.resolve().as_uri()


# ------------------------------------------------------------------------------------- Data Docs


def test_result_names_round_trip_and_name_the_data_asset() -> None:
    for span in ("2024-01-05", "2024-01-01..2024-01-31"):
        for label in ("", "release-abc"):
            name = suites.result_run_name(span, "transactions", label) + "-20240101T000000000000Z"
            assert suites.result_span(name, "transactions") == span
    assert suites.result_span("something else", "transactions") is None
    name = suites.result_run_name("2024-01-01..2024-01-03", "merchants") + "-20240101T000000000000Z"
    assert suites.data_asset_name("merchants.rows", name) == (
        "bronze merchants, batch dates 2024-01-01..2024-01-03: every delivered row"
    )
    assert suites.data_asset_name("merchants.batches", name).startswith(
        "bronze merchants, batch dates 2024-01-01..2024-01-03: per-date summary"
    )


def _suite(source: str, level: str) -> dict:
    return json.loads((V.EXPECTATIONS_DIR / "expectations" / source / f"{level}.json").read_text())


def test_every_helper_column_and_parameter_is_explained_in_the_notes() -> None:
    """Each expectation that reads a column the delivered file does not have says what it holds,
    and each run-time parameter says where its value comes from (committed suites)."""
    from flows.sources import SOURCE_NAMES

    helpers_seen: set[str] = set()
    for source in SOURCE_NAMES:
        contract_cols = set(V.load_contract(source).column_names)
        for level in ("rows", "batches"):
            for exp in _suite(source, level)["expectations"]:
                kwargs, notes = exp["kwargs"], exp.get("notes") or ""
                for key in ("column", "column_A", "column_B"):
                    col = kwargs.get(key)
                    if isinstance(col, str) and col not in contract_cols:
                        helpers_seen.add(col)
                        assert f"`{col}`: " in notes, (source, level, exp["type"], col, notes)
                for key, value in kwargs.items():
                    if isinstance(value, dict) and "$PARAMETER" in value:
                        assert f"`{key}` is the run-time parameter `{value['$PARAMETER']}`" in notes, notes
    for col in ("amount__parsed", "amount__unparseable", "_delivery", "merchant_id__known", "too_late__min"):
        assert col in helpers_seen, col


def test_a_suite_page_shows_the_value_of_a_parameter() -> None:
    from flows.validation import datadocs

    suite = _suite("transactions", "rows")
    assert any("$PARAMETER" in json.dumps(e["kwargs"]) for e in suite["expectations"])
    shown = datadocs.valued_suite(suite)
    sets = [
        e["kwargs"]["value_set"]
        for e in shown["expectations"]
        if e["kwargs"].get("column") == "currency" and "value_set" in e["kwargs"]
    ]
    assert sets == [sorted(V.load_fx_rates())]
    assert "$PARAMETER" not in json.dumps(shown)


def test_a_result_page_names_its_data_asset() -> None:
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    from flows.validation import datadocs

    run_name = suites.result_run_name("2024-01-02", "chargebacks") + "-20240102T000000000000Z"
    key = ValidationResultIdentifier(
        ExpectationSuiteIdentifier(name="chargebacks.batches"),
        RunIdentifier(run_name=run_name, run_time=dt.datetime(2024, 1, 2, tzinfo=dt.UTC)),
        "asof-chargebacks_batches",
    )
    vr = ExpectationSuiteValidationResult(
        success=True, results=[], suite_name="chargebacks.batches", meta={"batch_spec": {"batch_data": "x"}}
    )
    named = datadocs.named_result(key, vr)
    assert "batch dates 2024-01-02: per-date summary" in named.meta["batch_spec"]["data_asset_name"]
    assert named.meta["batch_spec"] == {
        "batch_data": "x",
        "data_asset_name": suites.data_asset_name("chargebacks.batches", run_name),
    }


def test_only_the_newest_run_reports_are_kept(tmp_path: Path) -> None:
    import os

    runs = tmp_path / "runs"
    runs.mkdir()
    for i in range(5):
        page = runs / f"2024-01-0{i + 1}_2024-01-0{i + 1}.html"
        page.write_text("x")
        os.utime(page, ns=(i * 10**9, i * 10**9))
    gone = monitor_report.prune_run_reports(runs, 3)
    assert sorted(p.name for p in gone) == ["2024-01-01_2024-01-01.html", "2024-01-02_2024-01-02.html"]
    assert sorted(p.name for p in runs.iterdir()) == [f"2024-01-0{i}_2024-01-0{i}.html" for i in (3, 4, 5)]
