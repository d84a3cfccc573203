"""OpenLineage events for every stage run (docs/lineage.md section 3).

`observed(stage, days, work)` wraps one stage run: a START event, the work, then COMPLETE (or FAIL
with the error) describing what the run read and wrote: lake tables as datasets named
`<layer>.<table>` with their Delta version, schema and row counts; the Great Expectations results
of a validation as data-quality assertions; the dbt models of a transform as jobs of their own
(children of the transform run). Stages: ingest (one job per source), validate, transform (and
`asof.dbt.<model>`), materialize, training_set.

Where events go: the standard OpenLineage configuration when there is one (`OPENLINEAGE_URL` and
friends, `OPENLINEAGE_CONFIG`, `OPENLINEAGE__TRANSPORT__*`; `OPENLINEAGE_DISABLED=true` turns it
off), otherwise one JSON line per event in `$ASOF_HOME/lineage/openlineage.jsonl`.

Why emission never fails a run: lineage is a report about the data, not the data. Every error of
building or sending an event is caught; the first is logged as a warning (once per process), and
sending pauses for `PAUSE_AFTER_FAILURE_S` so a dead collector cannot add a timeout per event.
Storage options (credentials) never enter an event: datasets are named by the lake URI with any
user info and query removed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

NAMESPACE_ENV = "OPENLINEAGE_NAMESPACE"
DEFAULT_NAMESPACE = "asof"
PRODUCER = "https://github.com/asof/asof/tree/main/flows/lineage"
PAUSE_AFTER_FAILURE_S = 300.0
STAGES = ("ingest", "validate", "transform", "materialize", "training_set")
ONLINE_NAMESPACE = "feast-online"

_LOCK = threading.Lock()
_CLIENTS: dict[tuple, Any] = {}
_STATE = {"warned": False, "paused_until": 0.0}


# ---------------------------------------------------------------- configuration


def enabled() -> bool:
    """False when the standard switch turns OpenLineage off (`OPENLINEAGE_DISABLED=true`): then a
    stage run does not even build its events."""
    return os.environ.get("OPENLINEAGE_DISABLED", "").strip().lower() != "true"


def events_file() -> Path:
    """The default file transport's file: one event per line."""
    from flows.config import settings

    return settings().home / "lineage" / "openlineage.jsonl"


def _standard_config() -> bool:
    return bool(os.environ.get("OPENLINEAGE_URL") or os.environ.get("OPENLINEAGE_CONFIG")) or any(
        k.startswith("OPENLINEAGE__") for k in os.environ
    )


def job_namespace() -> str:
    return os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE


# For OPENLINEAGE_URL alone: the client's default retries (5, backoff 0.3) make one event to a dead
# collector cost ~9 s and log a warning per retry. A refused connection is not retried here (the
# failure is logged once, below); a collector that answers 5xx or times out a read gets one more
# try. A config file or OPENLINEAGE__TRANSPORT__* variables set their own.
URL_RETRY = {"total": 1, "read": 1, "connect": 0, "backoff_factor": 0.1}
URL_TIMEOUT_S = 5.0


def _url_transport() -> Any:
    """The HTTP transport of the standard OPENLINEAGE_URL / _ENDPOINT / _API_KEY variables."""
    from openlineage.client.transport.http import HttpConfig, HttpTransport

    config: dict[str, Any] = {
        "url": os.environ["OPENLINEAGE_URL"],
        "endpoint": os.environ.get("OPENLINEAGE_ENDPOINT", "api/v1/lineage"),
        "timeout": URL_TIMEOUT_S,
        "retry": URL_RETRY,
    }
    if api_key := os.environ.get("OPENLINEAGE_API_KEY"):
        config["auth"] = {"type": "api_key", "apiKey": api_key}
    return HttpTransport(HttpConfig.from_dict(config))


def _client() -> Any:
    """The OpenLineage client for the current configuration (one per configuration and home)."""
    standard = _standard_config()
    key = (
        standard,
        os.environ.get("OPENLINEAGE_URL"),
        os.environ.get("OPENLINEAGE_ENDPOINT"),
        os.environ.get("OPENLINEAGE_CONFIG"),
        tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("OPENLINEAGE__"))),
        None if standard else str(events_file()),
    )
    with _LOCK:
        client = _CLIENTS.get(key)
        if client is not None:
            return client
        from openlineage.client import OpenLineageClient
        from openlineage.client.event_v2 import set_producer

        set_producer(PRODUCER)
        # The client copies OPENLINEAGE_URL into OPENLINEAGE__TRANSPORT__* variables of the process
        # environment when it starts; they would outlive a change of OPENLINEAGE_URL. Keep the
        # environment as it was.
        saved = dict(os.environ)
        try:
            if os.environ.get("OPENLINEAGE_URL") and not (
                os.environ.get("OPENLINEAGE_CONFIG") or any(k.startswith("OPENLINEAGE__") for k in os.environ)
            ):
                client = OpenLineageClient(transport=_url_transport())
            elif standard:
                client = OpenLineageClient()
            else:
                from openlineage.client.transport.file import FileConfig, FileTransport

                path = events_file()
                path.parent.mkdir(parents=True, exist_ok=True)
                transport = FileTransport(FileConfig(log_file_path=str(path), append=True))
                client = OpenLineageClient(transport=transport)
        finally:
            for name in set(os.environ) - set(saved):
                del os.environ[name]
            os.environ.update(saved)
        _CLIENTS[key] = client
        return client


def _emit(build: Callable[[], Any | None]) -> None:
    """Build and send one event; any error is logged (the first as a warning) and swallowed."""
    if time.monotonic() < _STATE["paused_until"]:
        return
    try:
        client = _client()  # first: it sets the producer the facets are built with
        event = build()
        if event is not None:
            client.emit(event)
    except Exception as exc:  # lineage must never fail the data path
        _STATE["paused_until"] = time.monotonic() + PAUSE_AFTER_FAILURE_S
        if not _STATE["warned"]:
            _STATE["warned"] = True
            log.warning(
                "OpenLineage event not sent (%s: %s); the run goes on. Further failures in this "
                "process are logged at debug level; sending pauses %.0f s after each.",
                type(exc).__name__,
                exc,
                PAUSE_AFTER_FAILURE_S,
            )
        else:
            log.debug("OpenLineage event not sent", exc_info=True)


def reset_failure_state() -> None:
    """Forget an earlier transport failure (the next failure warns again, nothing is paused)."""
    _STATE["warned"] = False
    _STATE["paused_until"] = 0.0


# ---------------------------------------------------------------- the wrapper


def job_name(stage: str, source: str | None = None) -> str:
    return f"asof.{stage}.{source}" if source else f"asof.{stage}"


def observed(stage: str, days: Sequence[dt.date], work: Callable[[], T], *, source: str | None = None) -> T:
    """Run `work()` as one OpenLineage run of `stage` over `days`: START, then COMPLETE or FAIL.

    The result is returned (and an exception re-raised) exactly as without lineage."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    if not enabled():
        return work()
    run_id = new_run_id()
    job = job_name(stage, source)
    days = sorted(days)
    started = time.time() - 1.0  # file times have coarse resolution on some filesystems
    _emit(lambda: _run_event("START", job, run_id, days, stage))
    try:
        result = work()
    except BaseException as exc:
        why = f"{type(exc).__name__}: {exc}"
        _emit(lambda: _run_event("FAIL", job, run_id, days, stage, error=why))
        raise
    _emit(lambda: _complete(stage, job, run_id, days, result, source, started))
    return result


def new_run_id() -> str:
    from openlineage.client.uuid import generate_new_uuid

    return str(generate_new_uuid())


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _run_event(
    state: str,
    job: str,
    run_id: str,
    days: Sequence[dt.date],
    stage: str,
    inputs: Sequence[Any] = (),
    outputs: Sequence[Any] = (),
    error: str | None = None,
    parent: tuple[str, str] | None = None,
    extra_run_facets: dict[str, Any] | None = None,
    event_time: str | None = None,
) -> Any:
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import error_message_run, job_type_job, nominal_time_run

    run_facets: dict[str, Any] = dict(extra_run_facets or {})
    if days:
        start = dt.datetime.combine(days[0], dt.time(), dt.UTC)
        end = dt.datetime.combine(days[-1] + dt.timedelta(days=1), dt.time(), dt.UTC)
        run_facets["nominalTime"] = nominal_time_run.NominalTimeRunFacet(
            nominalStartTime=start.isoformat(), nominalEndTime=end.isoformat()
        )
    parent_facet = _parent_facet(parent)
    if parent_facet is not None:
        run_facets["parent"] = parent_facet
    if error:
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=error[:4000], programmingLanguage="python"
        )
    job_facets = {
        "jobType": job_type_job.JobTypeJobFacet(
            processingType="BATCH",
            integration="ASOF",
            jobType="MODEL" if job.startswith("asof.dbt.") else "TASK",
        )
    }
    return RunEvent(
        eventType=getattr(RunState, state),
        eventTime=event_time or _now(),
        run=Run(runId=run_id, facets=run_facets),
        job=Job(namespace=job_namespace(), name=job, facets=job_facets),
        inputs=list(inputs),
        outputs=list(outputs),
        producer=PRODUCER,
    )


def _parent_facet(parent: tuple[str, str] | None) -> Any | None:
    """The parent run: the given (job, run id), or else the Prefect flow run this stage runs in."""
    from openlineage.client.facet_v2 import parent_run

    if parent is None:
        prefect_context = sys.modules.get("prefect.context")
        ctx = prefect_context.FlowRunContext.get() if prefect_context is not None else None
        if ctx is None or ctx.flow_run is None:
            return None
        parent = (f"prefect.{ctx.flow.name}" if ctx.flow else "prefect.flow", str(ctx.flow_run.id))
    job, run_id = parent
    return parent_run.ParentRunFacet(
        run=parent_run.Run(runId=run_id), job=parent_run.Job(namespace=job_namespace(), name=job)
    )


# ---------------------------------------------------------------- datasets


def lake_namespace() -> str:
    """The lake's location as a URI without credentials: `file:///...` or `s3://bucket/prefix`."""
    from urllib.parse import urlsplit, urlunsplit

    from flows.config import settings

    uri = settings().lake_uri
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    parts = urlsplit(uri)
    host = parts.hostname or ""
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def dataset_name(layer: str, table: str) -> str:
    return f"{layer}.{table}"


def schema_facet(schema: Any) -> Any:
    """An Arrow schema as OpenLineage's schema facet."""
    from openlineage.client.facet_v2 import schema_dataset

    return schema_dataset.SchemaDatasetFacet(
        fields=[
            schema_dataset.SchemaDatasetFacetFields(name=f.name, type=str(f.type), ordinal_position=i + 1)
            for i, f in enumerate(schema)
        ]
    )


def _table_facets(layer: str, table: str, version: int | None = None) -> dict[str, Any]:
    """Schema, Delta version and storage of a lake table (its current version unless given)."""
    from openlineage.client.facet_v2 import dataset_version_dataset, storage_dataset

    from flows.storage import lake

    facets: dict[str, Any] = {
        "storage": storage_dataset.StorageDatasetFacet(storageLayer="delta", fileFormat="parquet")
    }
    if not lake.exists(layer, table):
        return facets
    handle = lake.table(layer, table, version)
    facets["schema"] = schema_facet(handle.schema().to_arrow())
    facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
        datasetVersion=str(handle.version())
    )
    return facets


def lake_input(
    layer: str,
    table: str,
    version: int | None = None,
    rows: int | None = None,
    input_facets: dict | None = None,
) -> Any:
    from openlineage.client.event_v2 import InputDataset
    from openlineage.client.facet_v2 import data_quality_metrics_input_dataset as dqm

    facets = dict(input_facets or {})
    if rows is not None:
        facets["dataQualityMetrics"] = dqm.DataQualityMetricsInputDatasetFacet(
            rowCount=rows, columnMetrics={}
        )
    return InputDataset(
        namespace=lake_namespace(),
        name=dataset_name(layer, table),
        facets=_table_facets(layer, table, version),
        inputFacets=facets,
    )


def lake_output(layer: str, table: str, version: int | None = None, rows: int | None = None) -> Any:
    from openlineage.client.event_v2 import OutputDataset
    from openlineage.client.facet_v2 import output_statistics_output_dataset as stats

    out_facets = {}
    if rows is not None:
        out_facets["outputStatistics"] = stats.OutputStatisticsOutputDatasetFacet(rowCount=rows)
    return OutputDataset(
        namespace=lake_namespace(),
        name=dataset_name(layer, table),
        facets=_table_facets(layer, table, version),
        outputFacets=out_facets,
    )


def file_input(path: str, rows: int | None = None) -> Any:
    """A landing file (path relative to ASOF_HOME, as on the rows' `_source_file`)."""
    from openlineage.client.event_v2 import InputDataset
    from openlineage.client.facet_v2 import data_quality_metrics_input_dataset as dqm

    from flows.config import settings

    facets = {}
    if rows is not None:
        facets["dataQualityMetrics"] = dqm.DataQualityMetricsInputDatasetFacet(
            rowCount=rows, columnMetrics={}
        )
    return InputDataset(namespace=settings().home.resolve().as_uri(), name=path, inputFacets=facets)


# ---------------------------------------------------------------- COMPLETE per stage


def _complete(
    stage: str, job: str, run_id: str, days: list[dt.date], result: Any, source: str | None, started: float
) -> Any:
    describe = {
        "ingest": _ingest_datasets,
        "validate": _validate_datasets,
        "transform": _transform_datasets,
        "materialize": _materialize_datasets,
        "training_set": _training_set_datasets,
    }[stage]
    inputs, outputs, error = describe(result, source, started)
    event = _run_event("FAIL" if error else "COMPLETE", job, run_id, days, stage, inputs, outputs, error)
    if stage == "transform":
        _emit_dbt_models(result, (job, run_id), days)
    return event


def _ingest_datasets(result: dict, source: str | None, started: float) -> tuple[list, list, str | None]:
    from flows.storage import lake

    outcomes = list(result.values())
    files: dict[str, int] = {}
    for out in outcomes:
        for f in out.files:
            if f.status != "not_delivered":
                files[f.file] = files.get(f.file, 0) + int(f.rows or 0)
    versions = [o.bronze_version for o in outcomes if o.bronze_version is not None]
    rows = sum(int(o.rows or 0) for o in outcomes)
    failed = [f"{o.day} {o.status}: {o.message}" for o in outcomes if o.status == "failed"]
    inputs = [file_input(path, n) for path, n in sorted(files.items())]
    outputs = []
    if source and lake.exists("bronze", source):
        outputs.append(lake_output("bronze", source, max(versions) if versions else None, rows))
    error = "; ".join(failed) if failed and len(failed) == len(outcomes) else None
    return inputs, outputs, error


def ge_results(source: str, since: float) -> list[dict]:
    """The Great Expectations validation results of `source` stored since `since` (epoch seconds):
    the results of the validation run that just ended (its rows and batches suites)."""
    from flows.config import settings

    root = settings().home / "ge" / "validations" / source
    found: list[dict] = []
    for suite_dir in sorted(p for p in root.glob("*") if p.is_dir()):
        newest: tuple[float, Path] | None = None
        for run_dir in suite_dir.iterdir():
            mtime = run_dir.stat().st_mtime
            if mtime >= since and (newest is None or mtime > newest[0]):
                newest = (mtime, run_dir)
        if newest is None:
            continue
        for path in sorted(newest[1].rglob("*.json")):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
    return found


def assertions_facet(results: Iterable[dict]) -> Any:
    """GE expectation results as OpenLineage data-quality assertions: one per expectation, named by
    the quarantine reason (row rules) or rejection rule (batch rules) it stands for."""
    from openlineage.client.facet_v2 import data_quality_assertions_dataset as dqa

    assertions = []
    for res in results:
        for r in res.get("results") or []:
            cfg = r.get("expectation_config") or {}
            meta = cfg.get("meta") or {}
            kwargs = cfg.get("kwargs") or {}
            level = meta.get("level")
            unexpected = (r.get("result") or {}).get("unexpected_count")
            assertions.append(
                dqa.Assertion(
                    assertion=str(cfg.get("type", "expectation")),
                    success=bool(r.get("success")),
                    column=kwargs.get("column"),
                    name=str(meta.get("reason") or meta.get("rule") or cfg.get("type")),
                    severity="error" if level == "batch" else "warn",
                    actual=None if unexpected is None else str(unexpected),
                    description=f"{res.get('suite_name')}: "
                    + ("rejects the batch" if level == "batch" else "quarantines failing rows"),
                )
            )
    return dqa.DataQualityAssertionsDatasetFacet(assertions=assertions)


def _validate_datasets(result: dict, source: str | None, started: float) -> tuple[list, list, str | None]:
    from flows.sources import SOURCE_NAMES
    from flows.storage import lake

    totals: dict[str, list[int]] = {}
    for per_source in result.values():
        for name, v in per_source.items():
            t = totals.setdefault(name, [0, 0, 0])
            t[0] += int(v.rows_bronze or 0)
            t[1] += int(v.rows_silver or 0)
            t[2] += int(v.rows_quarantined or 0)
    inputs, outputs = [], []
    for name in (s for s in SOURCE_NAMES if s in totals):
        bronze, silver, quarantined = totals[name]
        facets = {"dataQualityAssertions": assertions_facet(ge_results(name, started))}
        inputs.append(lake_input("bronze", name, rows=bronze, input_facets=facets))
        for layer, n in (("silver", silver), ("quarantine", quarantined)):
            if lake.exists(layer, name):
                outputs.append(lake_output(layer, name, rows=n))
    return inputs, outputs, None


def _transform_datasets(result: Any, source: str | None, started: float) -> tuple[list, list, str | None]:
    inputs = [lake_input("silver", t, v) for t, v in sorted(result.sources_read.items()) if v is not None]
    outputs = [
        lake_output("gold", t, v, result.rows_written.get(t))
        for t, v in sorted(result.table_versions.items())
        if v is not None
    ]
    return inputs, outputs, None if result.succeeded else result.message


def _materialize_datasets(result: dict, source: str | None, started: float) -> tuple[list, list, str | None]:
    from openlineage.client.event_v2 import OutputDataset
    from openlineage.client.facet_v2 import output_statistics_output_dataset as stats

    from flows.storage import lake

    inputs, outputs = [], []
    for view, info in sorted((result.get("views") or {}).items()):
        if "skipped" in info:
            continue
        if lake.exists("gold", view):
            inputs.append(lake_input("gold", view))
        outputs.append(
            OutputDataset(
                namespace=f"{ONLINE_NAMESPACE}:{result.get('online_store', 'sqlite')}",
                name=view,
                outputFacets={
                    "outputStatistics": stats.OutputStatisticsOutputDatasetFacet(rowCount=info["rows"])
                },
            )
        )
    error = None if result.get("status", "succeeded") == "succeeded" else result.get("message")
    return inputs, outputs, error


def _training_set_datasets(
    manifest: dict, source: str | None, started: float
) -> tuple[list, list, str | None]:
    from openlineage.client.event_v2 import OutputDataset
    from openlineage.client.facet_v2 import output_statistics_output_dataset as stats

    inputs = []
    for key, info in sorted(manifest["tables"].items()):
        layer, name = key.split("/")
        inputs.append(lake_input(layer, name, int(info["version"])))
    out = manifest["output"]
    import pyarrow.parquet as pq

    output = OutputDataset(
        namespace="file",
        name=out["path"],
        facets={"schema": schema_facet(pq.read_schema(out["path"]))},
        outputFacets={
            "outputStatistics": stats.OutputStatisticsOutputDatasetFacet(
                rowCount=out["rows"], size=out["bytes"]
            )
        },
    )
    return inputs, [output], None


# ---------------------------------------------------------------- dbt models as jobs


def dbt_model_graph() -> dict[str, dict[str, Any]]:
    """{unique_id: {"name", "resource_type", "materialized", "depends_on"}} of the dbt project's
    models, seeds and sources, from the manifest the transform parsed (no second parse)."""
    from flows.transform.stage import parsed_manifest

    manifest = parsed_manifest()
    graph: dict[str, dict[str, Any]] = {}
    for uid, node in manifest.nodes.items():
        kind = str(node.resource_type)
        if kind not in ("model", "seed"):
            continue
        graph[uid] = {
            "name": node.name,
            "resource_type": kind,
            "materialized": getattr(node.config, "materialized", None),
            "depends_on": list(getattr(getattr(node, "depends_on", None), "nodes", None) or []),
        }
    for uid, src in manifest.sources.items():
        graph[uid] = {"name": src.name, "resource_type": "source", "materialized": None, "depends_on": []}
    return graph


def _model_inputs(uid: str, graph: dict[str, dict[str, Any]]) -> list[str]:
    """The relations a model reads: its dependencies, through ephemeral models (inlined by dbt)."""
    seen, out, todo = set(), [], list(graph.get(uid, {}).get("depends_on", []))
    while todo:
        dep = todo.pop(0)
        if dep in seen or dep not in graph:
            continue
        seen.add(dep)
        if graph[dep]["materialized"] == "ephemeral":
            todo.extend(graph[dep]["depends_on"])
        else:
            out.append(dep)
    return sorted(out)


def _dbt_dataset(uid: str, graph: dict[str, dict[str, Any]], result: Any, output: bool) -> Any:
    """A dbt relation as a dataset: silver sources and the gold marts are lake tables (with the
    versions the run read and published); the other relations live in dbt's in-memory DuckDB."""
    from openlineage.client.event_v2 import InputDataset, OutputDataset

    from flows.transform.stage import GOLD_TABLES

    node = graph[uid]
    name = node["name"]
    if node["resource_type"] == "source":
        return lake_input("silver", name, result.sources_read.get(name))
    if name in GOLD_TABLES:
        version = result.table_versions.get(name)
        if output:
            return lake_output("gold", name, version, result.rows_written.get(name))
        return lake_input("gold", name, version)
    cls = OutputDataset if output else InputDataset
    return cls(namespace="duckdb://asof-dbt", name=f"memory.main.{name}")


def _emit_dbt_models(result: Any, parent: tuple[str, str], days: list[dt.date]) -> None:
    """One run per dbt model or seed the transform executed, child of the transform run."""
    try:
        graph = dbt_model_graph()
    except Exception as exc:  # the transform's own event still goes out
        log.debug("no dbt model graph for lineage: %s", exc)
        return
    for node in result.models:
        if node.unique_id not in graph:
            continue
        run_id = new_run_id()
        job = f"asof.dbt.{node.name}"
        ok = node.ok

        def start(node=node, run_id=run_id, job=job) -> Any:
            return _run_event("START", job, run_id, days, "transform", parent=parent)

        def finish(node=node, run_id=run_id, job=job, ok=ok) -> Any:
            inputs = [
                _dbt_dataset(u, graph, result, output=False) for u in _model_inputs(node.unique_id, graph)
            ]
            outputs = [_dbt_dataset(node.unique_id, graph, result, output=True)]
            error = None if ok else f"{node.status}: {node.message or ''}"
            return _run_event(
                "COMPLETE" if ok else "FAIL",
                job,
                run_id,
                days,
                "transform",
                inputs,
                outputs,
                error,
                parent=parent,
            )

        _emit(start)
        _emit(finish)
