"""OpenLineage events (docs/lineage.md section 3) received by a collector on 127.0.0.1 through the
standard OPENLINEAGE_URL, from real runs of every stage, and checked against OpenLineage's JSON
schemas (tests/openlineage_spec: the spec's RunEvent and the schema of every facet asof sends)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flows.storage import lake

SPEC = Path(__file__).resolve().parent / "openlineage_spec"
START, END = dt.date(2024, 1, 1), dt.date(2024, 1, 6)  # chargebacks from 01-05 (seed 6)
DUPES = dt.date(2024, 1, 3)
SECRET = "s3cr3t-never-in-an-event"


class Collector:
    """An OpenLineage HTTP endpoint: keeps every POSTed event."""

    def __init__(self) -> None:
        events: list[dict] = []
        paths: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                events.append(json.loads(body))
                paths.append(self.path)
                self.send_response(201)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.events, self.paths = events, paths
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _validator():
    """A validator per schema $id: the spec's RunEvent, and each facet file."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    docs = [
        json.loads(p.read_text())
        for p in [SPEC / "OpenLineage.json", *sorted((SPEC / "facets").glob("*.json"))]
    ]
    registry = Registry().with_resources((d["$id"], Resource.from_contents(d)) for d in docs)
    core = docs[0]["$id"]
    event = Draft202012Validator({"$ref": f"{core}#/$defs/RunEvent"}, registry=registry)
    facets = {}
    for d in docs[1:]:
        for key, prop in d["properties"].items():
            facets[key] = Draft202012Validator({"$ref": d["$id"] + prop["$ref"]}, registry=registry)
    return event, facets


def check_event(event: dict, validators) -> None:
    """The event against RunEvent, and every facet against its own schema (a facet asof sends
    without a schema here fails: the test must know every facet)."""
    whole, facets = validators
    whole.validate(event)
    groups = [event["run"].get("facets", {}), event["job"].get("facets", {})]
    for d in event.get("inputs", []) + event.get("outputs", []):
        groups += [d.get("facets", {}), d.get("inputFacets", {}), d.get("outputFacets", {})]
    for group in groups:
        for key, facet in group.items():
            assert key in facets, f"facet {key} has no schema in tests/openlineage_spec"
            facets[key].validate(facet)


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.close()


@pytest.fixture(scope="module")
def pipeline_events(tmp_path_factory: pytest.TempPathFactory, prefect_backend):
    """Six days through every stage (a `dupes` fault on one), then a training set, with the events
    sent to a collector through OPENLINEAGE_URL."""
    from flows import pipeline
    from flows.features import featurestore
    from flows.features.training import build_training_set
    from flows.monitoring.alerts import MonitoringFailure
    from flows.upstream import simulate

    home = tmp_path_factory.mktemp("openlineage_home")
    simulate.generate(
        home / "landing",
        START,
        END,
        simulate.parse_scale("300x600"),
        seed=6,
        faults=[simulate.parse_fault(f"dupes@{DUPES}")],
    )
    col = Collector()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASOF_HOME", str(home))
        mp.setenv("OPENLINEAGE_URL", col.url)
        mp.setenv("OPENLINEAGE_NAMESPACE", "asof-test")
        mp.setenv("ASOF_STORAGE_OPTIONS", json.dumps({"aws_secret_access_key": SECRET}))
        for name in ("ASOF_LAKE_URI", "ASOF_ONLINE_STORE", "OPENLINEAGE_DISABLED"):
            mp.delenv(name, raising=False)
        featurestore.reset_store_cache()
        try:
            results = pipeline.backfill(START, END)
        except MonitoringFailure as exc:
            results = exc.data
        assert {r["status"] for r in results} == {"succeeded"}, results
        manifest = build_training_set(START, END, "fraud_v2", tmp_path_factory.mktemp("ol_out") / "t.parquet")
        state = {
            "versions": {
                f"{layer}/{t}": lake.version(layer, t)
                for layer in ("bronze", "silver", "quarantine", "gold")
                for t in lake.list_tables(layer)
            },
            "rows": {
                f"{layer}/{t}": lake.read(
                    layer, t, columns=["_batch_date" if layer != "gold" else "as_of_date"]
                ).num_rows
                for layer in ("bronze", "silver", "quarantine", "gold")
                for t in lake.list_tables(layer)
            },
            "reasons": lake.read("quarantine", "transactions", columns=["_reasons"])["_reasons"].to_pylist(),
        }
        featurestore.reset_store_cache()
    col.close()
    assert not (home / "lineage").exists()  # with OPENLINEAGE_URL, nothing goes to the default file
    yield {"events": col.events, "paths": col.paths, "manifest": manifest, "home": home, **state}


def _runs(events: list[dict]) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for e in events:
        runs.setdefault(e["run"]["runId"], []).append(e)
    return runs


def _complete(events: list[dict], job: str) -> list[dict]:
    return [e for e in events if e["job"]["name"] == job and e["eventType"] == "COMPLETE"]


def _ds(datasets: list[dict], name: str) -> dict:
    return next(d for d in datasets if d["name"] == name)


def test_every_event_is_valid_openlineage(pipeline_events) -> None:
    validators = _validator()
    assert pipeline_events["events"]
    for e in pipeline_events["events"]:
        check_event(e, validators)
    assert set(pipeline_events["paths"]) == {"/api/v1/lineage"}
    assert SECRET not in json.dumps(pipeline_events["events"])
    assert {e["job"]["namespace"] for e in pipeline_events["events"]} == {"asof-test"}


def test_each_stage_run_starts_and_completes_once(pipeline_events) -> None:
    runs = _runs(pipeline_events["events"])
    for run in runs.values():
        assert [e["eventType"] for e in run] == ["START", "COMPLETE"], run
        assert run[0]["job"] == run[1]["job"] and run[0]["eventTime"] <= run[1]["eventTime"]
    jobs = {run[0]["job"]["name"] for run in runs.values()}
    stages = {"asof.validate", "asof.transform", "asof.materialize", "asof.training_set"}
    assert (
        stages | {f"asof.ingest.{s}" for s in ("merchants", "customers", "transactions", "chargebacks")}
        <= jobs
    )
    nominal = _complete(pipeline_events["events"], "asof.validate")[0]["run"]["facets"]["nominalTime"]
    assert nominal["nominalStartTime"].startswith(START.isoformat())
    assert nominal["nominalEndTime"].startswith((END + dt.timedelta(days=1)).isoformat())
    # the stages of a flow run name it as their parent (the Prefect flow run)
    parent = _complete(pipeline_events["events"], "asof.transform")[0]["run"]["facets"]["parent"]
    assert parent["job"]["name"] == "prefect.backfill"


def test_datasets_carry_the_delta_versions_and_row_counts_written(pipeline_events) -> None:
    events, versions, rows = pipeline_events["events"], pipeline_events["versions"], pipeline_events["rows"]
    ingest = _complete(events, "asof.ingest.transactions")[0]
    bronze = _ds(ingest["outputs"], "bronze.transactions")
    assert bronze["facets"]["version"]["datasetVersion"] == str(versions["bronze/transactions"])
    assert bronze["outputFacets"]["outputStatistics"]["rowCount"] == rows["bronze/transactions"]
    assert {d["name"] for d in ingest["inputs"]} == {
        f"landing/transactions/{START + dt.timedelta(days=i)}/transactions.csv" for i in range(6)
    }
    validate = _complete(events, "asof.validate")[0]
    for layer in ("silver", "quarantine"):
        out = _ds(validate["outputs"], f"{layer}.transactions")
        assert out["facets"]["version"]["datasetVersion"] == str(versions[f"{layer}/transactions"])
        assert out["outputFacets"]["outputStatistics"]["rowCount"] == rows[f"{layer}/transactions"]
    fields = [
        f["name"] for f in _ds(validate["outputs"], "silver.transactions")["facets"]["schema"]["fields"]
    ]
    assert fields[:3] == ["txn_id", "customer_id", "merchant_id"] and "_batch_date" in fields
    transform = _complete(events, "asof.transform")[0]
    for t in ("customer_txn_features_daily", "merchant_features_daily", "customer_profile"):
        out = _ds(transform["outputs"], f"gold.{t}")
        assert out["facets"]["version"]["datasetVersion"] == str(versions[f"gold/{t}"])
        assert out["outputFacets"]["outputStatistics"]["rowCount"] == rows[f"gold/{t}"]
    assert {d["name"] for d in transform["inputs"]} == {
        f"silver.{s}" for s in ("chargebacks", "customers", "merchants", "transactions")
    }
    training = _complete(events, "asof.training_set")[0]
    manifest = pipeline_events["manifest"]
    got = {d["name"]: d["facets"]["version"]["datasetVersion"] for d in training["inputs"]}
    assert got == {k.replace("/", "."): str(v["version"]) for k, v in manifest["tables"].items()}
    assert (
        training["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == manifest["output"]["rows"]
    )


def test_validation_results_are_data_quality_assertions(pipeline_events) -> None:
    """The GE expectations of the validation, one assertion each: the duplicate rule failed on the
    `dupes` day with as many rows as quarantine holds for it; the others passed."""
    validate = _complete(pipeline_events["events"], "asof.validate")[0]
    bronze = _ds(validate["inputs"], "bronze.transactions")
    assertions = bronze["inputFacets"]["dataQualityAssertions"]["assertions"]
    by_name = {a["name"]: a for a in assertions}
    duplicates = sum("duplicate" in r for r in pipeline_events["reasons"])
    assert duplicates > 0
    assert by_name["duplicate"]["success"] is False and int(by_name["duplicate"]["actual"]) == duplicates
    assert by_name["duplicate"]["column"] == "_delivery" and by_name["duplicate"]["severity"] == "warn"
    assert by_name["amount_out_of_range"]["success"] is True
    batch_rules = [a for a in assertions if a["severity"] == "error"]
    assert batch_rules and all(a["success"] for a in batch_rules)  # no batch was rejected
    merchants = _ds(validate["inputs"], "bronze.merchants")["inputFacets"]["dataQualityAssertions"][
        "assertions"
    ]
    assert merchants and all(a["success"] for a in merchants)


def test_dbt_models_are_jobs_of_their_own(pipeline_events) -> None:
    events = pipeline_events["events"]
    transform = _complete(events, "asof.transform")[0]
    models = {
        e["job"]["name"]: e
        for e in events
        if e["job"]["name"].startswith("asof.dbt.") and e["eventType"] == "COMPLETE"
    }
    wanted = ("customer_txn_features_daily", "merchant_features_daily", "customer_profile")
    wanted += ("int_transactions__deduplicated", "stg_silver__transactions")
    assert {f"asof.dbt.{m}" for m in wanted} <= set(models)
    for e in models.values():
        assert e["run"]["facets"]["parent"]["run"]["runId"] == transform["run"]["runId"]
        assert e["job"]["facets"]["jobType"]["jobType"] == "MODEL"
    mart = models["asof.dbt.merchant_features_daily"]
    # its ephemeral intermediates are inlined: it reads the relations dbt materialized; chargebacks
    # reach it through int_transactions__deduplicated (each transaction's chargeback batch day)
    assert {d["name"] for d in mart["inputs"]} == {"memory.main.int_transactions__deduplicated"}
    shared = models["asof.dbt.int_transactions__deduplicated"]
    assert {d["name"] for d in shared["inputs"]} >= {
        "memory.main.stg_silver__transactions",
        "memory.main.stg_silver__chargebacks",
    }
    assert mart["outputs"][0]["name"] == "gold.merchant_features_daily"
    staging = models["asof.dbt.stg_silver__transactions"]
    assert staging["inputs"][0]["name"] == "silver.transactions"


def test_a_failed_run_sends_fail_with_the_error(collector, home: Path, monkeypatch) -> None:
    from flows.lineage.openlineage_events import observed

    monkeypatch.setenv("OPENLINEAGE_URL", collector.url)

    def broken() -> None:
        raise RuntimeError("dbt exploded")

    with pytest.raises(RuntimeError, match="dbt exploded"):
        observed("transform", [START], broken)
    start, fail = collector.events
    assert (start["eventType"], fail["eventType"]) == ("START", "FAIL")
    assert fail["run"]["runId"] == start["run"]["runId"]
    assert fail["run"]["facets"]["errorMessage"]["message"] == "RuntimeError: dbt exploded"
    check_event(fail, _validator())


def test_an_unreachable_collector_never_fails_or_slows_a_run(home: Path, monkeypatch, caplog) -> None:
    """Emission errors are logged once and swallowed; after one, sending pauses, so a dead
    collector costs one refused connection, not one per event."""
    from flows.lineage import openlineage_events

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPENLINEAGE_URL", f"http://127.0.0.1:{port}")
    openlineage_events.reset_failure_state()
    caplog.set_level(logging.DEBUG, logger="flows.lineage.openlineage_events")
    t = time.perf_counter()
    got = [openlineage_events.observed("materialize", [START], lambda i=i: i) for i in range(5)]
    assert got == list(range(5))
    assert time.perf_counter() - t < 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "the run goes on" in warnings[0].getMessage()
    openlineage_events.reset_failure_state()


def test_disabled_by_the_standard_variable(collector, home: Path, monkeypatch) -> None:
    from flows.lineage.openlineage_events import observed

    monkeypatch.setenv("OPENLINEAGE_URL", collector.url)
    monkeypatch.setenv("OPENLINEAGE_DISABLED", "true")
    assert observed("ingest", [START], lambda: 7, source="transactions") == 7
    assert collector.events == []
