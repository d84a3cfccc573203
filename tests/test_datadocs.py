"""Data Docs: built per validation, offline-ready, and really rendered by a headless browser."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from great_expectations.data_context.types.resource_identifiers import ValidationResultIdentifier

from flows.config import settings
from flows.ingest.stage import ingest
from flows.sources import SOURCE_NAMES
from flows.upstream.simulate import generate, parse_fault, parse_scale
from flows.validation import contracts, datadocs, stage, suites
from tests.conftest import data_root

D1, D2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Two validated days, the second with null values injected into transactions."""
    home = tmp_path_factory.mktemp("docs_home")
    with data_root(home):
        generate(settings().landing, D1, D2, parse_scale("300x600"), 5, faults=[parse_fault(f"nulls@{D2}")])
        outs = {}
        for day in (D1, D2):
            for s in SOURCE_NAMES:
                ingest(s, day)
            outs[day] = stage.validate_date(day)
        yield home, outs


def test_pages_are_written_under_asof_home_and_reference_no_remote_resource(site):
    home, outs = site
    bad = outs[D2]["transactions"]
    assert bad.status == "succeeded" and bad.rows_quarantined > 0
    page = home / "docs" / bad.data_docs_path
    assert page.exists() and bad.data_docs_url == page.as_uri()
    assert (home / "docs" / "index.html").exists()
    assert (home / "ge" / "validations").is_dir()
    pages = list((home / "docs").rglob("*.html"))
    assert len(pages) >= 2 * 4 * 2  # (contract + rows) x 4 sources x 2 days, plus suites and index
    for p in pages:
        html = p.read_text()
        assert datadocs.remote_references(html) == [], p
        assert datadocs.MARKER in html, p
    assert (home / "docs" / datadocs.VENDOR / "jquery@3.7.1" / "jquery.min.js").exists()


def test_make_offline_rewrites_every_cdn_reference():
    import great_expectations.render.view as view

    templates = Path(view.__file__).parent / "templates"
    html = (templates / "page.j2").read_text() + (templates / "js_script_imports.j2").read_text()
    html = html.replace('{{ static_images_dir + "favicon.ico" }}', "../static/images/favicon.ico")
    out = datadocs.make_offline(html, "../..")
    assert "https://" not in "".join(datadocs.remote_references(out))
    assert datadocs.remote_references(out) == []
    assert "../../static/vendor/bootstrap@4.3.1/bootstrap.min.css" in out
    assert "integrity=" not in out
    for _, target in datadocs.CDN_MAP:
        assert (datadocs.ASSETS_DIR / target).exists(), target


def test_index_does_not_reread_results(site, monkeypatch):
    """The index lists every run from the small cache, never by loading each stored result, and a
    rebuild renders only what is missing: every result already has its page, so no result page is
    rendered again (how long that takes is bench/'s business, not a test's)."""
    ctx = suites.ge_context()

    def boom(*a, **k):
        raise AssertionError("index re-read a validation result")

    rendered: list[list] = []
    build = ctx.build_data_docs

    def spy(*a, **k):
        rendered.append(list(k.get("resource_identifiers") or []))
        return build(*a, **k)

    monkeypatch.setattr(ctx, "get_validation_result", boom)
    monkeypatch.setattr(ctx, "build_data_docs", spy)
    datadocs.build_site()
    assert len(rendered) == 1
    assert [k for k in rendered[0] if isinstance(k, ValidationResultIdentifier)] == []
    html = (settings().docs_dir / "index.html").read_text()
    assert f"{D2.isoformat()}-transactions" in html


def test_docs_command_builds(site):
    from flows.cli.validation import docs_command

    out = docs_command(serve=False)
    assert "index.html" in out


def test_browser_renders_index_and_failing_page_offline(site, tmp_path, browser):
    home, outs = site
    bad = outs[D2]["transactions"]
    server, base = datadocs.start_server()
    requests: list[str] = []
    failures: list[str] = []
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("request", lambda r: requests.append(r.url))
        page.on("requestfailed", lambda r: failures.append(r.url))
        page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)

        page.goto(base + "index.html")
        page.wait_for_load_state("networkidle")
        # the run list is filled in by bootstrap-table (jQuery): only works if the scripts loaded
        page.wait_for_selector("table tbody tr td:has-text('transactions.rows')", timeout=15000)
        text = page.inner_text("body")
        assert f"{D1.isoformat()}-transactions" in text or "transactions.rows" in text
        assert page.locator("table tbody tr").count() >= 8
        # status icons are Font Awesome glyphs: the web font must have loaded
        icon = page.locator("table tbody tr i.fas").first
        assert "Font Awesome" in icon.evaluate("e => getComputedStyle(e).fontFamily")
        loaded = page.evaluate(
            "async () => { await document.fonts.ready; return Array.from(document.fonts)"
            ".filter(f => f.family.includes('Font Awesome') && f.status === 'loaded').length }"
        )
        assert loaded >= 1
        # Bootstrap applied: .container-fluid has pl-5 (3rem) padding, an unstyled div has none
        pad = page.evaluate("getComputedStyle(document.querySelector('.container-fluid')).paddingLeft")
        assert pad == "48px"

        # the failing validation page, reached from the index like a user would
        page.goto(base + bad.data_docs_path)
        page.wait_for_load_state("networkidle")
        body = page.inner_text("body")
        assert "transactions.rows" in body and "Failed" in body
        assert "values must never be null" in body
        assert "unexpected values found" in body
        failed_cells = page.locator("text=unexpected values found")
        assert failed_cells.count() >= 1
        color = failed_cells.first.evaluate("e => getComputedStyle(e).color")
        assert color != "rgb(0, 0, 0)"  # rendered as an error (red), i.e. styled
        browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert requests, "the browser made no request"
    outside = [u for u in requests if not u.startswith(base)]
    assert outside == [], outside
    assert failures == [], failures


def test_server_binds_loopback_only(site):
    server, url = datadocs.start_server()
    try:
        assert server.server_address[0] == "127.0.0.1" and url.startswith("http://127.0.0.1:")
    finally:
        server.shutdown()
        server.server_close()


def test_nothing_is_written_into_the_repository(site):
    repo_ctx = contracts.EXPECTATIONS_DIR
    assert not (repo_ctx / "uncommitted").exists()
    assert not (repo_ctx / "plugins").exists()
    for sub in ("expectations", "checkpoints", "validation_definitions"):
        for p in (repo_ctx / sub).rglob("*"):
            assert p.suffix == ".json" or p.is_dir(), p


def test_a_range_renders_the_index_per_chunk_not_per_date(site):
    """Inside `deferred_index` (a backfill's range) a date's pages are written at once, but the index,
    which lists every stored result and so grows with history, waits for `refresh_index` (after each
    chunk's validation) or the end of the scope."""
    home, _ = site
    index = home / "docs" / "index.html"
    with datadocs.deferred_index():
        first = stage.validate_date(D2)["transactions"]
        assert (home / "docs" / first.data_docs_path).exists()
        assert first.validation_run_id not in index.read_text()
        datadocs.refresh_index()
        assert first.validation_run_id in index.read_text()
        second = stage.validate_date(D2)["transactions"]
        assert second.validation_run_id not in index.read_text()
    html = index.read_text()
    assert second.validation_run_id in html
    assert datadocs.MARKER in html and datadocs.remote_references(html) == []
    # outside a range every publish renders the index again
    third = stage.validate_date(D2)["transactions"]
    assert third.validation_run_id in index.read_text()


def _disk_full(*a, **k):
    """A Data Docs build on a full disk."""
    raise OSError("No space left on device")


def test_an_index_that_failed_to_render_is_rendered_by_the_next_refresh(site, monkeypatch):
    home, _ = site
    index = home / "docs" / "index.html"
    ctx = suites.ge_context()
    real = ctx.build_data_docs

    with datadocs.deferred_index():
        run = stage.validate_date(D2)["transactions"]
        monkeypatch.setattr(ctx, "build_data_docs", _disk_full)
        with pytest.raises(OSError):
            datadocs.refresh_index()
        monkeypatch.setattr(ctx, "build_data_docs", real)
        assert run.validation_run_id not in index.read_text()
        datadocs.refresh_index()
        assert run.validation_run_id in index.read_text()


def test_publishing_a_date_renders_its_pages_without_listing_the_results_store(site, monkeypatch):
    """GE's section builder lists every stored result to render the few it is given, a cost that
    grows with history; ours renders exactly the given pages and leaves every other page alone."""
    home, outs = site
    ctx = suites.ge_context()
    store = ctx.stores[ctx.validation_results_store_name]

    def listing(*a, **k):
        raise AssertionError("the validation results store was listed to render named pages")

    old_page = home / "docs" / outs[D1]["transactions"].data_docs_path
    old_mtime = old_page.stat().st_mtime_ns
    monkeypatch.setattr(store, "list_keys", listing)
    with datadocs.deferred_index():
        run = stage.validate_date(D2)
        monkeypatch.undo()  # the index, rendered as the scope ends, does list every result
    for source in SOURCE_NAMES:
        page = home / "docs" / run[source].data_docs_path
        assert page.exists(), source
        assert run[source].validation_run_id in page.read_text()
    assert old_page.stat().st_mtime_ns == old_mtime
    assert run["transactions"].validation_run_id in (home / "docs" / "index.html").read_text()


def test_a_run_renders_its_pages_in_the_background_and_validation_waits_for_them(site, monkeypatch):
    """Inside `rendering_in_background` (every pipeline run) publishing returns before its pages
    render; they render on another thread, never while a validation uses GE's context, and the
    scope returns only once they are written."""
    import threading

    home, _ = site
    index = home / "docs" / "index.html"
    ctx = suites.ge_context()
    real_build = ctx.build_data_docs
    release = threading.Event()
    rendering = threading.Event()
    threads: set[str] = set()

    def slow_build(*a, **k):
        threads.add(threading.current_thread().name)
        rendering.set()
        assert release.wait(30), "the test never let the rendering finish"
        try:
            return real_build(*a, **k)
        finally:
            rendering.clear()

    real_run = suites.run_suite

    def checked_run(*a, **k):
        assert not rendering.is_set(), "a validation ran while a page was rendering"
        return real_run(*a, **k)

    monkeypatch.setattr(ctx, "build_data_docs", slow_build)
    monkeypatch.setattr(suites, "run_suite", checked_run)
    with datadocs.rendering_in_background():
        first = stage.validate_date(D2)["transactions"]  # returns while its pages wait on `release`
        assert rendering.wait(30)
        assert not (home / "docs" / first.data_docs_path).exists()
        threading.Timer(0.5, release.set).start()
        second = stage.validate_date(D2)["transactions"]  # waits for the first run's pages first
        assert (home / "docs" / first.data_docs_path).exists()
    assert (home / "docs" / second.data_docs_path).exists()  # the scope waited for the second's
    assert second.validation_run_id in index.read_text()
    assert threads and threading.current_thread().name not in threads


def test_a_page_that_fails_to_render_in_the_background_is_logged_and_the_index_catches_up(
    site, monkeypatch, caplog
):
    home, _ = site
    index = home / "docs" / "index.html"
    ctx = suites.ge_context()
    real = ctx.build_data_docs

    with datadocs.deferred_index():
        with datadocs.rendering_in_background():
            run = stage.validate_date(D2)["transactions"]  # its pages render
            datadocs.wait_for_pages()
            monkeypatch.setattr(ctx, "build_data_docs", _disk_full)
            datadocs.refresh_index()  # queued: fails on the thread, returns here
        assert "No space left on device" in caplog.text
        monkeypatch.setattr(ctx, "build_data_docs", real)
        assert run.validation_run_id not in index.read_text()
    assert run.validation_run_id in index.read_text()  # the scope's end rendered it again
