"""What a user opens from a run, in the browser (issue 20), on a real Prefect server and its UI.

One lake of three dates, backfilled, then one date of it backfilled again with `--force` (the
README's way to redo dates), both runs linking through an artifact server as `make serve` sets up:

- every link of every artifact of the second run is an http URL of the artifact server (none is
  file://, which a browser refuses from the Prefect UI), and clicking it on the artifact's page in
  the Prefect UI (headless Chromium) opens the page;
- the run report links both suites (rows and batches) of every source; the result page and the
  Data Docs index name each result's data asset (source and batch dates);
- the served monitoring report still covers the three dates of the lake after the one-date run,
  and the run's own report shows that date in context;
- the flows' dates are dates in the schema Prefect's form is built from: the custom-run form shows
  a date picker for each, and the server's form validation refuses what is not a date;
- `asof docs --dbt` with 8 dbt threads builds the dbt docs with every model's column types, and the
  page renders from the artifact server with no request leaving 127.0.0.1;
- the `feast` CLI run from `feature_repo/` without ASOF_HOME reads the default home's registry.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from flows.orchestration import local_server as serve
from tests.kill_harness import REPO, harness
from tests.test_deployments import Api

D1, D2, D3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
SCALE, SEED = "200x400", 5  # the deployments test's landing: cached by the harness
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _run(h, home: Path, env: dict[str, str], *argv: str) -> None:
    log = home.parent / f"{home.name}_{argv[0]}_{len(list(home.parent.glob(home.name + '_*')))}.log"
    run = h.zygote.run(list(argv), env, log, timeout=300)
    assert run.rc == 0, run.output()[-4000:]


def _flow_run_of(api: Api, title: str, base: str) -> str:
    """The flow run whose run report is titled `title` and links to this test's artifact server."""
    rows = api.post(
        "/artifacts/filter",
        {"artifacts": {"key": {"any_": ["asof-run-report"]}}, "sort": "CREATED_DESC", "limit": 200},
    )
    for r in rows:
        if r.get("description") == title and base in str(r.get("data")):
            return r["flow_run_id"]
    raise AssertionError(f"no run report {title!r} linking {base}: {[r.get('description') for r in rows]}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_artifact_link_opens_from_the_prefect_ui(browser, tmp_path: Path) -> None:
    h = harness()  # a Prefect server (with its UI) on 127.0.0.1 and a zygote for `asof` runs
    home = h.new_home("issue20_links", h.landing(D1, D3, SCALE, SEED))
    artifacts, base = serve.start_artifact_server(home)
    env = {"ASOF_HOME": str(home), **serve.artifact_env(base), "ASOF_DBT_THREADS": "8"}
    try:
        _run(h, home, env, "backfill", "--start", str(D1), "--end", str(D3))
        _run(h, home, env, "backfill", "--start", str(D2), "--end", str(D2), "--force")
        api = Api(h.port)
        run_id = _flow_run_of(api, f"backfill {D2}..{D2}", base)
        arts = api.artifacts(run_id)
        keys = {
            "asof-run-summary",
            "asof-run-report",
            "asof-data-docs",
            "asof-monitoring",
            "asof-monitoring-report",
        }
        assert keys <= set(arts), sorted(arts)

        # every link is served over http by the artifact server; none is a file:// URL
        links = {k: LINK.findall(str(a["data"])) for k, a in arts.items() if k != "asof-run-summary"}
        assert "file://" not in str([a["data"] for a in arts.values()])
        urls = [u for found in links.values() for u in found]
        assert urls and all(u.startswith(base) for u in urls), links

        # the run report links both suites of every source for the date it ran
        report = str(arts["asof-run-report"]["data"])
        for source in ("merchants", "customers", "transactions", "chargebacks"):
            for suite in ("rows", "batches"):
                assert re.search(rf"\[{source}\.{suite}\]\({re.escape(base)}docs/validations/", report), (
                    source,
                    suite,
                    report,
                )

        # the served report still covers the lake's three dates; the run's own marks its date
        served = (home / "reports" / "monitoring.html").read_text()
        assert f"<title>asof monitoring {D1}..{D3}</title>" in served
        own = home / "reports" / "runs" / f"{D2}_{D2}.html"
        assert links["asof-monitoring-report"] == [f"{base}reports/runs/{own.name}"]
        assert f"this run: <b>{D2} .. {D2}</b>" in own.read_text()

        # click every link on its artifact's page in the Prefect UI
        ui = f"http://127.0.0.1:{h.port}"
        page = browser.new_page()
        opened: dict[str, str] = {}
        try:
            for key, found in links.items():
                for url in dict.fromkeys(found):
                    page.goto(f"{ui}/artifacts/artifact/{arts[key]['id']}", wait_until="load")
                    anchor = page.locator(f'a[href="{url}"]').first
                    anchor.wait_for(state="attached", timeout=30_000)
                    anchor.evaluate("a => a.removeAttribute('target')")  # open here, not in a tab
                    with page.expect_navigation(url=url, timeout=30_000) as nav:
                        anchor.click()
                    resp = nav.value
                    assert resp is not None and resp.status == 200, (key, url)
                    opened[url] = page.content()
        finally:
            page.close()
        assert set(opened) == set(urls)
        result = next(body for u, body in opened.items() if "/transactions/rows/" in u)
        assert f"Data asset: bronze transactions, batch dates {D2}: every delivered row" in result
        batches = next(body for u, body in opened.items() if "/transactions/batches/" in u)
        assert f"Data asset: bronze transactions, batch dates {D2}: per-date summary" in batches
        assert (
            f"bronze transactions, batch dates {D2}: every delivered row" in opened[f"{base}docs/index.html"]
        )
        assert f"this run: <b>{D2} .. {D2}</b>" in opened[f"{base}reports/runs/{own.name}"]
        assert f"{D1}..{D3}" in opened[f"{base}reports/monitoring.html"]

        # the flows' date parameters, as the run form validates them on this server
        from prefect.utilities.callables import parameter_schema

        from flows import pipeline

        schema = parameter_schema(pipeline.backfill).model_dump_for_openapi()
        assert schema["properties"]["start"]["format"] == schema["properties"]["end"]["format"] == "date"
        daily = parameter_schema(pipeline.daily_pipeline).model_dump_for_openapi()
        assert {"format": "date", "type": "string"} in daily["properties"]["execution_date"]["anyOf"]
        for start, ok in (("2024-01-02", True), ("2024-13-01", False), ("yesterday", False)):
            got = api.post(
                "/ui/schemas/validate", {"schema": schema, "values": {"start": start, "end": "2024-01-03"}}
            )
            assert got["valid"] is ok, (start, got)
        # ... and the custom-run form of a deployment with that schema shows a date picker for each
        flow = api.post("/flows/", {"name": "issue20-backfill"})
        dep = api.post(
            "/deployments/",
            {"name": "issue20-form", "flow_id": flow["id"], "parameter_openapi_schema": schema},
        )
        page = browser.new_page()
        try:
            page.goto(f"{ui}/deployments/deployment/{dep['id']}/run", wait_until="load")
            page.locator(".p-date-input").nth(1).wait_for(timeout=30_000)
            assert page.locator(".p-date-input").count() == 2
            assert page.get_by_text("Select date").count() == 2
        finally:
            page.close()
            api.delete(f"/deployments/{dep['id']}")
            api.delete(f"/flows/{flow['id']}")

        # dbt docs through the CLI, with more threads than the shell command survives
        _run(h, home, env, "docs", "--dbt")
        import json

        catalog = json.loads((home / "docs" / "dbt" / "catalog.json").read_text())
        models = {k: v for k, v in catalog["nodes"].items() if k.startswith("model.")}
        assert "model.asof.customer_profile" in models and len(models) >= 5, sorted(models)
        assert all(c["type"] for m in models.values() for c in m["columns"].values())
        page = browser.new_page()
        remote: list[str] = []
        page.route(
            re.compile(r"^(?!http://127\.0\.0\.1[:/]|data:|blob:|about:).*"),
            lambda route: (remote.append(route.request.url), route.abort()),
        )
        try:
            page.goto(
                f"{base}docs/dbt/static_index.html#!/model/model.asof.customer_profile", wait_until="load"
            )
            page.get_by_text("BIGINT").first.wait_for(timeout=30_000)
            assert page.get_by_text("customer_profile").count() > 0
        finally:
            page.close()
        assert not [u for u in remote if not u.startswith(("https://fonts.", "http://fonts."))], remote

        # the feast CLI from feature_repo/ without ASOF_HOME reads the default home's registry (the
        # repository's data/, here a stand-in root whose data/ is this home)
        root = tmp_path / "root"
        root.mkdir()
        (root / "data").symlink_to(home)
        code = (
            "import sys; from pathlib import Path; import flows.config as c; "
            "c.REPO_ROOT = Path(sys.argv[1]); from feast.cli.cli import cli; cli(['feature-views', 'list'])"
        )
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("ASOF_", "PREFECT_"))}
        res = subprocess.run(
            [sys.executable, "-c", code, str(root)],
            cwd=REPO / "feature_repo",
            env=clean,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        assert "customer_txn_features_daily" in res.stdout and "Traceback" not in res.stderr, res.stdout
        assert not (REPO / "feature_repo" / "${ASOF_HOME}").exists()
    finally:
        artifacts.shutdown()


def test_artifact_server_serves_run_reports_and_dbt_docs(tmp_path: Path) -> None:
    """The run reports (reports/runs/) and dbt docs (docs/dbt/) are under the served roots."""
    home = tmp_path / "home"
    (home / "reports" / "runs").mkdir(parents=True)
    (home / "docs" / "dbt").mkdir(parents=True)
    (home / "reports" / "runs" / "2024-01-02_2024-01-02.html").write_text("run")
    (home / "docs" / "dbt" / "static_index.html").write_text("dbt")
    server, base = serve.start_artifact_server(home)
    try:
        for path, body in (
            ("reports/runs/2024-01-02_2024-01-02.html", b"run"),
            ("docs/dbt/static_index.html", b"dbt"),
        ):
            with urllib.request.urlopen(base + path, timeout=10) as resp:
                assert resp.read() == body
    finally:
        server.shutdown()
