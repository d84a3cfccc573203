"""Transformation stage: silver Delta -> dbt (dbt-duckdb) -> gold Delta feature tables (contract §5, 7).

`transform_range(start, end)` computes every as-of day of [start, end] in ONE in-process dbt
invocation (`dbt build`: seed, models, tests) and publishes the three gold tables, each replacing
exactly the as-of dates of the range in one Delta commit. A backfill calls it once per chunk of
days; the result equals running the days one by one.

How the pieces fit:
* dbt runs in this process through `dbtRunner`, reusing a manifest parsed once per home (kept in
  the home's cache for later processes, re-parsed when a file of dbt_project/ changes): the 3-5 s
  parse is paid once, not per chunk or per run.
* Silver is read and gold written by the project plugin `flows.transform.lake_io` through
  `flows.storage.lake` (Arrow datasets in, `lake.replace` out). The gold tables are published by dbt's
  on-run-end hook only when every model and test passed, so a failing dbt test leaves gold untouched
  and the range is reported failed with dbt's own message.
* dbt's target/ and logs/ go under `$ASOF_HOME/cache/dbt`, never into the repository.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flows.config import REPO_ROOT, settings
from flows.dates import parse_range
from flows.storage import lake
from flows.transform import manifest_cache

log = logging.getLogger(__name__)

DBT_PROJECT_DIR = REPO_ROOT / "dbt_project"
GOLD_TABLES = ("customer_txn_features_daily", "merchant_features_daily", "customer_profile")

_FAILED_STATUSES = {"error", "fail", "runtime error", "skipped", "partial success"}


class DbtParseError(RuntimeError):
    """The dbt project does not parse (a broken model or YAML): no range can run."""


class TransformError(RuntimeError):
    """Raised by `transform_range(..., raise_on_failure=True)` with dbt's message."""

    def __init__(self, result: TransformResult):
        super().__init__(result.message)
        self.result = result


@dataclass
class NodeResult:
    """One dbt node of the invocation (model, seed or test)."""

    unique_id: str
    name: str
    resource_type: str
    status: str
    seconds: float
    message: str | None = None
    failures: int | None = None

    @property
    def ok(self) -> bool:
        return self.status not in _FAILED_STATUSES


@dataclass
class TransformResult:
    start: dt.date
    end: dt.date
    status: str  # "succeeded" | "failed"
    message: str
    models: list[NodeResult] = field(default_factory=list)  # models and seeds
    tests: list[NodeResult] = field(default_factory=list)
    rows_written: dict[str, int] = field(default_factory=dict)
    table_versions: dict[str, int | None] = field(default_factory=dict)
    sources_read: dict[str, int | None] = field(default_factory=dict)  # silver table -> Delta version
    elapsed_s: float = 0.0
    dbt_elapsed_s: float = 0.0
    publish_elapsed_s: float = 0.0
    parsed_manifest: bool = False  # True when this call had to (re)parse the project

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def rows(self) -> dict[str, int]:
        """Alias of rows_written (the name the run records use)."""
        return self.rows_written

    @property
    def versions(self) -> dict[str, int | None]:
        """Alias of table_versions."""
        return self.table_versions

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def failed_nodes(self) -> list[NodeResult]:
        return [n for n in self.models + self.tests if not n.ok]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for the run log (dates as ISO strings)."""
        out = asdict(self)
        out["start"] = self.start.isoformat()
        out["end"] = self.end.isoformat()
        return out


# --------------------------------------------------------------------------------------------------
# dbt in process


class _Dbt:
    """A dbtRunner per project fingerprint, with the parsed manifest kept between invocations.

    dbt is not thread-safe in one process: invocations are serialised by a lock.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._fingerprint: str | None = None
        self._manifest = None
        self._events: list[str] = []
        self.warm = False  # warm_up done in this process

    @staticmethod
    def fingerprint(project_dir: Path) -> str:
        h = hashlib.sha256()
        for path in sorted(project_dir.rglob("*")):
            rel = path.relative_to(project_dir)
            if rel.parts and rel.parts[0] in ("target", "logs", "dbt_packages"):
                continue
            if path.is_file():
                st = path.stat()
                h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def _callback(self, event) -> None:
        try:
            level = event.info.level
            if level in ("error", "warn"):
                msg = event.info.msg
                self._events.append(msg)
                log.log(logging.ERROR if level == "error" else logging.WARNING, "dbt: %s", msg)
        except Exception:  # a logging callback must never break dbt
            pass

    def common_args(self, target_path: Path | None = None) -> list[str]:
        cache = dbt_cache_dir()
        # read by profiles.yml: DuckDB spills here (its default, ".tmp", is the working directory)
        os.environ["ASOF_DUCKDB_TEMP"] = str(cache.parent / "duckdb")
        # read by profiles.yml: ASOF_DUCKDB_MEMORY_LIMIT, or a limit derived from ASOF_MEMORY_BUDGET;
        # a changed value opens a new DuckDB (dbt-duckdb compares the credentials)
        from flows.ingest.memory_budget import duckdb_memory_limit

        os.environ["ASOF_DUCKDB_MEMORY_LIMIT_RESOLVED"] = duckdb_memory_limit()
        return [
            "--project-dir",
            str(DBT_PROJECT_DIR),
            "--profiles-dir",
            str(DBT_PROJECT_DIR),
            "--target-path",
            str(target_path or cache / "target"),
            "--log-path",
            str(cache / "logs"),
        ]

    def manifest(self) -> tuple[Any, bool]:
        """The parsed manifest (parsing the project when it changed). Returns (manifest, parsed_now)."""
        from dbt.cli.main import dbtRunner

        fp = self.fingerprint(DBT_PROJECT_DIR)
        if self._manifest is not None and fp == self._fingerprint:
            kept = _manifest_file(fp).exists() or manifest_cache.shared_file(DBT_PROJECT_DIR, fp).exists()
            if not kept:  # a process that moved to another home
                store_manifest(fp, self._manifest)
            return self._manifest, False
        cached = load_manifest(fp)
        if cached is not None:
            self._manifest, self._fingerprint = cached, fp
            return cached, False
        res = dbtRunner(callbacks=[self._callback]).invoke(
            ["--quiet", "--no-use-colors", "parse", *self.common_args()]
        )
        if not res.success or res.result is None:
            raise DbtParseError(f"dbt parse failed: {res.exception or 'see the dbt log'}")
        self._manifest, self._fingerprint = res.result, fp
        store_manifest(fp, res.result)
        return self._manifest, True

    def invoke(self, args: list[str], target_path: Path | None = None):
        from dbt.cli.main import dbtRunner

        manifest, parsed = self.manifest()
        name_flag_sources_cheaply()
        self._events = []
        _reset_compiled_state(manifest)
        runner = dbtRunner(manifest=manifest, callbacks=[self._callback])
        # run_results/manifest JSON are not needed (results come back in process): --no-write-json
        # saves ~0.5 s per invocation; `docs generate` writes its own files.
        write_json = [] if args[:1] == ["docs"] else ["--no-write-json"]
        res = runner.invoke(
            ["--quiet", "--no-use-colors", *write_json, *args, *self.common_args(target_path)]
        )
        return res, parsed, list(self._events)


def close_duckdb() -> None:
    """Close the in-memory DuckDB of the transform that just ended (`transform_range`; not between
    `asof docs --dbt`'s invocations: its `docs generate` reads the catalog of the tables the
    `build --empty` before it made).

    dbt-duckdb keeps an in-memory database open for the process, and DuckDB keeps the memory its
    last queries grew to even with every table dropped: 400-900 MB after a chunk's transform (30
    bench days: 1,175 -> 802 MB once closed), held through the next chunk's ingest and validation
    and stacked under the next transform's peak. The next invocation opens a new one (~0.2 s)."""
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager

    DuckDBConnectionManager.close_all_connections()


_DBT = _Dbt()


def name_flag_sources_cheaply() -> None:
    """Name the module that declared each dbt adapter behaviour flag from the frames' globals.

    dbt-common finds that module with `inspect.stack()`, which reads the source of every frame on
    the stack and scans `sys.modules` for each (`BehaviorFlagRendered._default_source`, called for
    every flag of every adapter instance, even when the flag names its source): under Prefect's
    deep stack that was 2.2 s of a one-day run's 12.0 s transform (cProfile, two flags, 139
    `findsource` calls), in every invocation. The answer is the same: the module of the first frame
    outside dbt_common.behavior_flags (tests/test_transform_startup.py compares both)."""
    from dbt_common import behavior_flags

    if getattr(behavior_flags.BehaviorFlagRendered._default_source, "asof_cheap", False):
        return

    def default_source() -> str:
        frame = sys._getframe(1)
        while frame is not None:
            name = frame.f_globals.get("__name__")
            if name and name != behavior_flags.__name__:
                return name
            frame = frame.f_back
        return "Unknown"

    default_source.asof_cheap = True  # type: ignore[attr-defined]
    behavior_flags.BehaviorFlagRendered._default_source = staticmethod(default_source)


def parse_project() -> None:
    """Parse the dbt project now instead of at the first transform (raises DbtParseError): a run
    that waits for something else anyway (its Prefect server starting) gets the parse for free."""
    with _DBT.lock:
        _DBT.manifest()


def warm_up() -> None:
    """Pay dbt's first-invocation costs before the transform needs them, once per process
    (flows.orchestration.head_start: in the warm process before it forks, in a cold run while its
    first chunk ingests).

    The first `dbt build` of a process took 7.7-8.2 s where the next took 4.8-5.9 s (one bench
    day). The difference is work dbt keeps for the process: the JSON schemas it builds to validate
    the project and profile (mashumaro, 0.77 s under cProfile) and the Jinja template of every
    macro it calls, compiled on first use (the first seed and the first test of each kind
    0.45-0.5 s more than the next). `dbt ls` validates the project and profile without opening a
    database or the lake (`--log-level none`: it prints nothing, and it may run beside a thread
    that does); every macro of the manifest is then compiled into dbt's template cache (527
    macros, ~1.5 s). Nothing here starts a thread or touches the lake, so forking after it is as
    safe as before it."""
    from dbt_common.clients.jinja import template_cache

    with _DBT.lock:
        if _DBT.warm:
            return
        manifest, _ = _DBT.manifest()
        _DBT.invoke(["ls", "--resource-type", "seed", "--output", "name", "--log-level", "none"])
        for macro in manifest.macros.values():
            with contextlib.suppress(Exception):  # a macro that fails to compile fails in its run
                template_cache.get_node_template(macro)
        _DBT.warm = True


def _reset_compiled_state(manifest) -> None:
    """Make a reused manifest compile afresh.

    Compiling mutates the manifest's nodes: the compiled SQL is kept and ephemeral models' CTEs are
    injected once and flagged. Reused as is, the next invocation would skip the injection (the mart
    then misses its `__dbt__cte__` definitions) or inline SQL rendered with the previous run's vars.
    """
    from dbt.contracts.graph.nodes import SeedNode

    for node in manifest.nodes.values():
        if hasattr(node, "extra_ctes_injected") and not isinstance(node, SeedNode):
            node.compiled = False
            node.compiled_code = None
            node.extra_ctes_injected = False
            node.extra_ctes = []
            if hasattr(node, "_pre_injected_sql"):
                node._pre_injected_sql = None


def _manifest_file(fingerprint: str) -> Path:
    """This home's copy of the parsed manifest of one state of the project (manifest_cache)."""
    return manifest_cache.home_file(dbt_cache_dir(), DBT_PROJECT_DIR, fingerprint)


def load_manifest(fingerprint: str) -> Any | None:
    """The manifest parsed for the same project files, if still valid: this home's copy, else the one
    homes share (flows/transform/manifest_cache.py says what valid means).

    Each process used to parse the project again (dbt's partial parse still costs 1.2 s after
    2.2 s of imports; 2.6 s from scratch): profiled as the largest fixed cost of a daily run after
    the imports; a fresh home's first run (the demo) parsed in 8-14 s at load 2-6.
    """
    manifest = manifest_cache.load(_manifest_file(fingerprint))
    if manifest is None:
        manifest = manifest_cache.load(manifest_cache.shared_file(DBT_PROJECT_DIR, fingerprint))
    return manifest


def store_manifest(fingerprint: str, manifest: Any) -> None:
    """Keep the manifest just parsed for the next process: in this home (older states removed), and
    for other homes unless it holds a path of this one."""
    try:
        data = manifest_cache.dumps(manifest)
    except Exception as exc:  # a cache: failing to write it must not fail the transform
        log.info("could not pickle the dbt manifest: %s", exc)
        return
    manifest_cache.write(_manifest_file(fingerprint), data)
    if manifest_cache.shareable(data, manifest_cache.home_paths()):
        shared = manifest_cache.shared_file(DBT_PROJECT_DIR, fingerprint)
        manifest_cache.write(shared, data, keep=manifest_cache.SHARED_KEEP)


def dbt_cache_dir() -> Path:
    """Where dbt's target/ and logs/ go: under ASOF_HOME (or ASOF_DBT_CACHE), not in the repo."""
    path = settings().dbt_cache
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------------
# the stage


def _node_results(run_result) -> tuple[list[NodeResult], list[NodeResult]]:
    models: list[NodeResult] = []
    tests: list[NodeResult] = []
    for r in getattr(run_result, "results", None) or []:
        node = r.node
        rtype = str(getattr(node, "resource_type", ""))
        item = NodeResult(
            unique_id=node.unique_id,
            name=node.name,
            resource_type=rtype,
            status=str(r.status),
            seconds=round(float(r.execution_time or 0.0), 3),
            message=r.message if r.message not in (None, "", "OK") else None,
            failures=r.failures,
        )
        (tests if rtype in ("test", "unit_test") else models).append(item)
    return models, tests


def _failure_message(models: list[NodeResult], tests: list[NodeResult], res, events: list[str]) -> str:
    lines = []
    for n in models + tests:
        if n.status in ("error", "fail", "runtime error"):
            lines.append(f"{n.resource_type} {n.name} {n.status}: {n.message or ''}".strip())
    if res.exception is not None:
        lines.append(str(res.exception))
    if not lines:
        skipped = [n.name for n in models + tests if n.status == "skipped"]
        if skipped:
            lines.append(f"dbt skipped {len(skipped)} node(s): {', '.join(skipped[:10])}")
    if not lines:
        lines.extend(e for e in events if e)
    return "\n".join(lines) or "dbt build failed (no message; see the dbt log)"


def transform_range(
    start: dt.date | str,
    end: dt.date | str | None = None,
    *,
    raise_on_failure: bool = False,
) -> TransformResult:
    """Compute and publish the gold tables for every as-of day of [start, end] (one dbt invocation).

    Returns a `TransformResult`; on a failing model or dbt test the status is "failed", `message`
    holds dbt's own error message, and no gold table is modified.
    """
    from flows.transform import lake_io

    start_d, end_d = parse_range(start, end if end is not None else start)
    t0 = time.perf_counter()
    # asof_release_tables: drop the run's DuckDB tables once published (memory, long backfills)
    dbt_vars = {"start_date": start_d.isoformat(), "end_date": end_d.isoformat(), "asof_release_tables": True}
    with _DBT.lock:
        lake_io.reset_run_record()
        try:
            res, parsed, events = _DBT.invoke(["build", "--vars", json.dumps(dbt_vars)])
            close_duckdb()
        except DbtParseError as exc:
            result = TransformResult(
                start=start_d,
                end=end_d,
                status="failed",
                message=str(exc),
                table_versions={t: lake.version("gold", t) for t in GOLD_TABLES},
                elapsed_s=round(time.perf_counter() - t0, 3),
                parsed_manifest=True,
            )
            if raise_on_failure:
                raise TransformError(result) from exc
            return result
        record = {k: dict(v) for k, v in lake_io.LAST_RUN.items()}
    dbt_elapsed = time.perf_counter() - t0

    models, tests = _node_results(res.result)
    published = record["published"]
    ok = bool(res.success) and not any(not n.ok for n in models + tests)
    if ok and set(published) != set(GOLD_TABLES):
        ok = False
        message = f"dbt succeeded but published only {sorted(published)} of {list(GOLD_TABLES)}"
    elif ok:
        counts = ", ".join(f"{t}: {published[t]['rows']} rows" for t in GOLD_TABLES)
        message = f"published {counts}"
        warned = [n.name for n in tests if n.status == "warn"]
        if warned:
            message += f"; {len(warned)} dbt test warning(s): {', '.join(warned)}"
    else:
        message = _failure_message(models, tests, res, events)

    versions = {
        t: (published[t]["version"] if t in published else lake.version("gold", t)) for t in GOLD_TABLES
    }
    result = TransformResult(
        start=start_d,
        end=end_d,
        status="succeeded" if ok else "failed",
        message=message,
        models=models,
        tests=tests,
        rows_written={t: published[t]["rows"] for t in GOLD_TABLES if t in published},
        table_versions=versions,
        sources_read={k.split("/", 1)[1]: v for k, v in record["sources"].items()},
        elapsed_s=round(time.perf_counter() - t0, 3),
        dbt_elapsed_s=round(dbt_elapsed, 3),
        publish_elapsed_s=round(sum(p["seconds"] for p in published.values()), 3),
        parsed_manifest=parsed,
    )
    log.info("transform %s..%s %s in %.2fs: %s", start_d, end_d, result.status, result.elapsed_s, message)
    if raise_on_failure and not result.succeeded:
        raise TransformError(result)
    return result


def prepare() -> bool:
    """Parse the dbt project now (once per process; later calls reuse it). True if it parsed."""
    with _DBT.lock:
        _, parsed = _DBT.manifest()
    return parsed


def generate_docs(out_dir: Path | None = None) -> Path:
    """Build the dbt docs site (lineage, models, columns, tests) and return its single-file page
    (`asof docs --dbt`).

    `--static` embeds the manifest and catalog in `static_index.html`, which opens from disk in a
    browser with no server and no network. Default location: `$ASOF_HOME/docs/dbt/`.

    Why not `dbt docs generate` from the shell: its DuckDB is a new in-memory database with no
    relation in it, so the catalog lists no model (blank column types); and with several threads
    its compile of the on-run-start hook races the models' compile ("dictionary changed size during
    iteration", or an abort) about one run in three. Here the `--empty` build leaves every relation
    in this process's database, and `docs generate` compiles on one thread whatever
    ASOF_DBT_THREADS says (a dozen models: well under a second more).
    """
    from flows.transform import lake_io

    out = Path(out_dir) if out_dir else settings().docs_dir / "dbt"
    out.mkdir(parents=True, exist_ok=True)
    with _DBT.lock:
        lake_io.reset_run_record()
        # an --empty run (zero rows, never published: see publish_gold) creates every relation in
        # this process's in-memory DuckDB, so the catalog shows each column's type
        _DBT.invoke(["build", "--empty"], target_path=out)
        res, _, events = _DBT.invoke(["docs", "generate", "--static", "--threads", "1"], target_path=out)
    page = out / "static_index.html"
    if not res.success or not page.exists():
        raise RuntimeError(f"dbt docs generate failed: {res.exception or '; '.join(events)}")
    return page


def parsed_manifest():
    """dbt's parsed manifest of the project, parsed at most once per process (the transform's own):
    lineage reads the models' dependencies from it (flows/lineage/openlineage_events.py)."""
    with _DBT.lock:
        manifest, _ = _DBT.manifest()
    return manifest


def dbt_command(args: list[str]):
    """Run any other dbt command in process with the project's paths (e.g. ["docs", "generate"])."""
    with _DBT.lock:
        res, _, _ = _DBT.invoke(args)
    return res
