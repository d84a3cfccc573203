"""Every setting asof reads from the environment, declared once (contract §3).

Each `ASOF_*` variable is one `Variable` declaration on `Settings`: its name, the form of its value,
its default and what it does. `docs/configuration.md` is generated from these declarations
(`python -m flows.config`; `--check` in review and in tests/test_config.py), so the table cannot
drift from the code, and an `ASOF_*` name in the environment that nothing declares gets a warning
naming the closest known one: a typo must not silently do nothing.

Values are read when they are used, not when a module is imported: tests and the CLI change
`ASOF_HOME` (and others) at run time, and a Prefect worker passes its environment to each run. A
`Settings` reads a variable the first time one of its attributes is asked for and keeps that value,
so one `settings()` object is one consistent view; call `settings()` again for the current one.
Everything under the data root is derived from `ASOF_HOME`, so a test or a user switches the whole
pipeline to another root (or the lake to object storage) by environment alone.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

REPO_ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = REPO_ROOT / "docs" / "configuration.md"
PREFIX = "ASOF_"

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting's value cannot be used; the message names the variable (never a secret's value)."""


# ---------------------------------------------------------------- value forms


def _text(raw: str) -> str:
    return raw.strip()


def _secret(raw: str) -> str:
    return raw  # as given: a password may begin or end with a space


def _path(raw: str) -> Path:
    return Path(raw.strip())


def _paths(raw: str) -> tuple[Path, ...]:
    return tuple(Path(p) for p in raw.split(os.pathsep) if p.strip())


def _int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError("") from None  # the expected form says it all; Python's wording adds nothing


def _float(raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ValueError("") from None


def _port(raw: str) -> int:
    port = _int(raw)
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a port number")
    return port


def _seconds_or_none(raw: str) -> float | None:
    value = _float(raw)
    return value if value > 0 else None


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"not one of {', '.join(_TRUE + _FALSE)}")


def _choice(*words: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        word = raw.strip().lower()
        if word not in words:
            raise ValueError("")  # the form names the words
        return word

    return parse


def _home(raw: str) -> Path:
    return Path(raw).resolve()


def _lake_uri(raw: str) -> str:
    """A `file://` URI or a relative path is a local lake, made absolute, as every worker must see
    it; anything with a scheme (`s3://bucket/asof/lake`) is object storage, passed to delta-rs."""
    raw = raw.strip().rstrip("/")
    if raw.startswith("file://"):
        raw = raw.removeprefix("file://")
    if "://" in raw:
        return raw
    return str(Path(raw).expanduser().resolve())


def _storage_options(raw: str) -> dict[str, str]:
    """A JSON object of delta-rs / object_store options (string values; JSON booleans and numbers
    are accepted and passed as strings, `true` -> "true").

    Errors name the problem, never the content: the object holds credentials."""
    try:
        opts = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(
            f"ASOF_STORAGE_OPTIONS is not valid JSON (line {getattr(exc, 'lineno', '?')}, "
            f"column {getattr(exc, 'colno', '?')})"
        ) from None
    if not isinstance(opts, dict):
        raise ConfigError("ASOF_STORAGE_OPTIONS must be a JSON object of option names to values")
    out: dict[str, str] = {}
    for key, value in opts.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[key] = str(value)
        else:
            raise ConfigError(f"ASOF_STORAGE_OPTIONS[{key!r}] must be a string, number or boolean")
    if any(k.upper() == "AWS_S3_LOCKING_PROVIDER" for k in out):
        # deltalake 1.x logs an error and carries on without it: refuse rather than look safe
        raise ConfigError(
            "ASOF_STORAGE_OPTIONS: AWS_S3_LOCKING_PROVIDER (DynamoDB log store) is not supported by "
            "deltalake 1.x; S3 commits use conditional put (put-if-absent) instead (docs/scaling.md)"
        )
    return out


# ---------------------------------------------------------------- one declaration per variable


@dataclass(frozen=True, eq=False)
class Variable(Generic[T]):
    """One `ASOF_*` environment variable. As an attribute of `Settings` it reads as its value.

    An unset or empty variable takes the default (`default_from` computes one from other settings,
    e.g. a directory under `ASOF_HOME`); a value `parse` rejects is a `ConfigError` naming the
    variable and the expected form (the value too, unless the variable is `secret`)."""

    name: str
    form: str  # what a value looks like, as the table shows it
    default: T
    meaning: str
    parse: Callable[[str], T]
    section: str
    read_by: str = "asof"
    secret: bool = False
    shown_default: str | None = None  # the table's default when `str(default)` would mislead
    default_from: Callable[[Settings], T] | None = None
    attr: str = field(default="", init=False)

    def __set_name__(self, owner: type, name: str) -> None:
        object.__setattr__(self, "attr", name)

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Variable[T]: ...
    @overload
    def __get__(self, obj: Settings, owner: type | None = None) -> T: ...
    def __get__(self, obj: Settings | None, owner: type | None = None) -> Variable[T] | T:
        if obj is None:
            return self
        value = self.read(obj.environ, obj)
        obj.__dict__[self.attr] = value  # later reads on this object: the same value, no parsing
        return value

    def read(self, environ: Mapping[str, str], derived_from: Settings | None = None) -> T:
        """The value in `environ`; a derived default is computed from `derived_from` (the Settings
        asking, so it sees the same ASOF_HOME)."""
        raw = environ.get(self.name)
        if raw is None or not raw.strip():
            if self.default_from is not None:
                return self.default_from(derived_from if derived_from is not None else Settings(environ))
            return self.default
        try:
            return self.parse(raw)
        except ConfigError:
            raise
        except ValueError as exc:
            value = "" if self.secret else f"={raw!r}"
            why = "" if self.secret or not str(exc) else f" ({exc})"
            raise ConfigError(f"{self.name}{value}: expected {self.form}{why}") from None

    def is_set(self, environ: Mapping[str, str] | None = None) -> bool:
        """Whether the variable is present at all (a crash point's cheap test on the hot path)."""
        return self.name in (os.environ if environ is None else environ)

    def shown(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if self.default is None or self.default == "":
            return "unset"
        if isinstance(self.default, float) and self.default.is_integer():
            return str(int(self.default))
        return str(self.default)


HOME = "Where data lives"
PIPELINE = "The pipeline"
INGEST = "Landing files"
DBT = "dbt and DuckDB"
STORE = "Feature store"
SERVING = "asof serve"
MONITORING = "Monitoring and alerts"
DEPLOY = "make serve, make redis and the Prefect deployments"
CLI = "The asof command"
TESTS = "Tests and benchmarks"


class Settings:
    """The configuration as the environment gives it: every `ASOF_*` variable is a `Variable`
    attribute below (read on first use, then kept by this object), plus the paths derived from
    `ASOF_HOME`. Build one with `settings()`; `Settings(environ)` reads a given mapping instead."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ

    def __repr__(self) -> str:  # never the storage options or a password: they hold credentials
        return f"Settings(home={str(self.home)!r}, lake_uri={self.lake_uri!r})"

    # ------------------------------------------------------------ where data lives

    home: Variable[Path] = Variable(
        "ASOF_HOME",
        "directory",
        Path("data"),
        "Root of everything a run writes: landing files, the lake, Data Docs, the feature store, "
        "reports, caches, locks (contract §3). Relative paths are from the working directory.",
        _home,
        HOME,
        shown_default="./data (made absolute)",
        default_from=lambda s: Path("data").resolve(),
    )
    lake_uri: Variable[str] = Variable(
        "ASOF_LAKE_URI",
        "path, file:// or s3:// URI",
        "",
        "Moves only the Delta tables elsewhere: another local path, or object storage "
        "(`s3://bucket/asof/lake`) with ASOF_STORAGE_OPTIONS (docs/scaling.md). Landing files, "
        "locks, the feature store and Data Docs stay under ASOF_HOME.",
        _lake_uri,
        HOME,
        shown_default="$ASOF_HOME/lake",
        default_from=lambda s: str(s.home / "lake"),
    )
    storage_options: Variable[dict[str, str]] = Variable(
        "ASOF_STORAGE_OPTIONS",
        "JSON object",
        {},
        "Options handed to delta-rs for the lake, e.g. AWS_ENDPOINT_URL, AWS_REGION, "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP. Without it delta-rs also reads "
        "the standard AWS_* variables. Credentials: never logged or recorded.",
        _storage_options,
        HOME,
        secret=True,
        shown_default="{}",
        default_from=lambda s: {},
    )
    lock_timeout_s: Variable[float] = Variable(
        "ASOF_LOCK_TIMEOUT_S",
        "seconds",
        1800.0,
        "How long a writer waits for a table's write lock before failing. Read once per process.",
        _float,
        HOME,
    )

    # ------------------------------------------------------------ the pipeline

    chunk_days: Variable[int] = Variable(
        "ASOF_CHUNK_DAYS",
        "integer",
        31,
        "Dates per chunk (one dbt invocation) of the daily flow and the backfill flow's default. "
        "Read once per process.",
        _int,
        PIPELINE,
    )
    validation_max_rows: Variable[int] = Variable(
        "ASOF_VALIDATION_MAX_ROWS",
        "integer",
        1_600_000,
        "Landed rows of one source validated together at most (GE judges them in one frame; memory "
        "grows with it). Read once per process.",
        _int,
        PIPELINE,
    )
    memory_budget_mb: Variable[float] = Variable(
        "ASOF_MEMORY_BUDGET",
        "megabytes",
        0.0,
        "Memory one date's ingest and validation may use: a bigger day is validated in row slices "
        "that fit, a day that cannot fit even so is refused up front (flows/ingest/memory_budget.py). "
        "The transform's DuckDB limit is derived from it unless ASOF_DUCKDB_MEMORY_LIMIT is set.",
        _float,
        PIPELINE,
        shown_default="half of physical memory",
        default_from=lambda s: os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 / 2**20,
    )
    validation_docs: Variable[bool] = Variable(
        "ASOF_VALIDATION_DOCS",
        "flag",
        True,
        "Rebuild the Data Docs site after validating (off: the results are stored, the site is not rebuilt).",
        _flag,
        PIPELINE,
    )
    catchup_max_days: Variable[int] = Variable(
        "ASOF_CATCHUP_MAX_DAYS",
        "integer",
        7,
        "A scheduled daily run also processes the dates missed since the newest succeeded one, "
        "this many dates at most in all.",
        _int,
        PIPELINE,
    )
    execution_lag_days: Variable[int] = Variable(
        "ASOF_EXECUTION_LAG_DAYS",
        "integer",
        1,
        "A scheduled daily run without a date processes the day this many days before its "
        "scheduled start (UTC).",
        _int,
        PIPELINE,
    )
    timeout_ingest_s: Variable[float | None] = Variable(
        "ASOF_TIMEOUT_INGEST_S",
        "seconds (0 = no limit)",
        600.0,
        "Per-attempt limit of the ingest task; a hang fails its date instead of holding the run. "
        "Read once per process (docs/deployments.md).",
        _seconds_or_none,
        PIPELINE,
    )
    timeout_validate_s: Variable[float | None] = Variable(
        "ASOF_TIMEOUT_VALIDATE_S",
        "seconds (0 = no limit)",
        900.0,
        "Per-attempt limit of the validate task. Read once per process.",
        _seconds_or_none,
        PIPELINE,
    )
    timeout_transform_s: Variable[float | None] = Variable(
        "ASOF_TIMEOUT_TRANSFORM_S",
        "seconds (0 = no limit)",
        1800.0,
        "Per-attempt limit of the transform (dbt) task. Read once per process.",
        _seconds_or_none,
        PIPELINE,
    )
    timeout_materialize_s: Variable[float | None] = Variable(
        "ASOF_TIMEOUT_MATERIALIZE_S",
        "seconds (0 = no limit)",
        3600.0,
        "Per-attempt limit of the materialize task (a whole span). Read once per process.",
        _seconds_or_none,
        PIPELINE,
    )
    timeout_monitor_s: Variable[float | None] = Variable(
        "ASOF_TIMEOUT_MONITOR_S",
        "seconds (0 = no limit)",
        3600.0,
        "Per-attempt limit of the monitor task (a timeout only loses the metrics). Read once per process.",
        _seconds_or_none,
        PIPELINE,
    )
    key_index_mb: Variable[float] = Variable(
        "ASOF_KEY_INDEX_MB",
        "megabytes",
        1024.0,
        "Memory for the hashes of silver keys kept during a range (reference and duplicate "
        "checks); past it the index is dropped and rebuilt from the files as needed.",
        _float,
        PIPELINE,
    )

    # ------------------------------------------------------------ landing files

    partial_files: Variable[str] = Variable(
        "ASOF_PARTIAL_FILES",
        "auto, wait or ingest",
        "auto",
        "A file without a final line terminator: `auto` makes its date wait as partial when its last "
        "record cannot be whole (and ingests a whole one), `wait` whenever it lacks the terminator, "
        "`ingest` never (its last record is judged as a row). docs/operations.md section 6.",
        _choice("auto", "wait", "ingest"),
        INGEST,
    )
    require_completion_marker: Variable[bool] = Variable(
        "ASOF_REQUIRE_COMPLETION_MARKER",
        "flag",
        False,
        "A date whose folder has no `_SUCCESS` or `_manifest.json` waits as partial.",
        _flag,
        INGEST,
    )
    landing_allowed_roots: Variable[tuple[Path, ...]] = Variable(
        "ASOF_LANDING_ALLOWED_ROOTS",
        "directories separated by os.pathsep",
        (),
        "Directories outside the landing area that a symlink in it may lead to (otherwise such a "
        "file is not read).",
        _paths,
        INGEST,
        shown_default="none",
    )

    # ------------------------------------------------------------ dbt and DuckDB

    dbt_cache: Variable[Path] = Variable(
        "ASOF_DBT_CACHE",
        "directory",
        Path(),
        "Where dbt's target/ and logs/ go (DuckDB spills next to it, in ../duckdb).",
        _path,
        DBT,
        shown_default="$ASOF_HOME/cache/dbt",
        default_from=lambda s: s.home / "cache" / "dbt",
    )
    dbt_threads: Variable[int] = Variable(
        "ASOF_DBT_THREADS",
        "integer",
        4,
        "dbt's threads (dbt_project/profiles.yml).",
        _int,
        DBT,
        read_by="dbt",
    )
    duckdb_memory_limit: Variable[str] = Variable(
        "ASOF_DUCKDB_MEMORY_LIMIT",
        "DuckDB size, e.g. 2GB",
        "",
        "DuckDB's memory limit for dbt; beyond it DuckDB spills to ASOF_DUCKDB_TEMP. Unset: half of "
        "ASOF_MEMORY_BUDGET beyond 1 GB, at least 256MiB, at most 2GB (a budget of 4096 -> "
        "1536MiB; flows/ingest/memory_budget.py).",
        _text,
        DBT,
        shown_default="from ASOF_MEMORY_BUDGET",
    )
    duckdb_memory_limit_resolved: Variable[str] = Variable(
        "ASOF_DUCKDB_MEMORY_LIMIT_RESOLVED",
        "DuckDB size",
        "2GB",
        "Set by asof before each dbt invocation: ASOF_DUCKDB_MEMORY_LIMIT, or the limit derived from "
        "ASOF_MEMORY_BUDGET (dbt_project/profiles.yml reads it; its default is for dbt run by hand). "
        "Not for users.",
        _text,
        DBT,
        read_by="dbt (set by asof)",
    )
    duckdb_temp: Variable[Path] = Variable(
        "ASOF_DUCKDB_TEMP",
        "directory",
        Path(),
        "Where DuckDB spills under dbt (dbt_project/profiles.yml). asof sets it before each dbt "
        "invocation, next to ASOF_DBT_CACHE, so spills never land in the repository.",
        _path,
        DBT,
        read_by="dbt (set by asof)",
        shown_default="$ASOF_HOME/cache/duckdb",
        default_from=lambda s: s.dbt_cache.parent / "duckdb",
    )

    # ------------------------------------------------------------ feature store

    online_store: Variable[str] = Variable(
        "ASOF_ONLINE_STORE",
        "sqlite or redis",
        "sqlite",
        "The online store: SQLite under $ASOF_HOME/feast, or Redis (ASOF_REDIS_*).",
        _choice("sqlite", "redis"),
        STORE,
    )
    redis_url: Variable[str] = Variable(
        "ASOF_REDIS_URL",
        "redis://[user:password@]host:port[/db] (rediss:// = TLS)",
        "redis://127.0.0.1:6379/0",
        "The Redis online store.",
        _text,
        STORE,
        secret=True,
    )
    redis_password: Variable[str | None] = Variable(
        "ASOF_REDIS_PASSWORD",
        "text",
        None,
        "Overrides the URL's password (keeps it out of URLs and process lists). Never logged.",
        _secret,
        STORE,
        secret=True,
    )
    redis_ca_cert: Variable[Path | None] = Variable(
        "ASOF_REDIS_CA_CERT",
        "file",
        None,
        "CA bundle for rediss://.",
        _path,
        STORE,
    )
    redis_connection_string: Variable[str | None] = Variable(
        "ASOF_REDIS_CONNECTION_STRING",
        "host:port,db=N[,password=...][,ssl=true]",
        None,
        "Feast's own connection-string format; replaces the one asof builds from ASOF_REDIS_URL "
        "(feature_repo/feature_store.redis.yaml reads it).",
        _secret,
        STORE,
        secret=True,
    )

    # ------------------------------------------------------------ asof serve

    log_served_features: Variable[bool | None] = Variable(
        "ASOF_LOG_SERVED_FEATURES",
        "flag",
        None,
        "Log what `asof serve` served into `lake/ops/feature_log_<service>`; unset: Feast's "
        "`feature_server.feature_logging.enabled` decides.",
        _flag,
        SERVING,
        shown_default="unset (Feast's setting)",
    )
    feature_log_flush_s: Variable[float] = Variable(
        "ASOF_FEATURE_LOG_FLUSH_S",
        "seconds",
        10.0,
        "How often logged requests are written (one Delta commit per feature service).",
        _float,
        SERVING,
    )
    latency_flush_s: Variable[float] = Variable(
        "ASOF_LATENCY_FLUSH_S",
        "seconds",
        15.0,
        "How often a serving process writes its request-latency counts under "
        "$ASOF_HOME/serving/latency (monitoring's P50/P99).",
        _float,
        SERVING,
    )
    serve_metrics_dir: Variable[Path | None] = Variable(
        "ASOF_SERVE_METRICS_DIR",
        "directory",
        None,
        "Set by `asof serve --workers N` for its workers: where they share the /metrics counts. "
        "Not for users.",
        _path,
        SERVING,
        read_by="asof (set by asof)",
    )

    # ------------------------------------------------------------ monitoring and alerts

    monitoring_config: Variable[Path] = Variable(
        "ASOF_MONITORING_CONFIG",
        "file",
        REPO_ROOT / "monitoring.toml",
        "Monitoring thresholds (docs/monitoring.md).",
        _path,
        MONITORING,
        shown_default="monitoring.toml (repository root)",
    )
    pushgateway_url: Variable[str] = Variable(
        "ASOF_PUSHGATEWAY_URL",
        "http(s) URL",
        "",
        "Push each run's gauges to this Prometheus Pushgateway (job asof_pipeline).",
        _text,
        MONITORING,
        secret=True,
    )
    prometheus_textfile: Variable[str] = Variable(
        "ASOF_PROMETHEUS_TEXTFILE",
        "file",
        "",
        "Write each run's gauges to this file for node_exporter's textfile collector.",
        _text,
        MONITORING,
    )
    notify_command: Variable[str] = Variable(
        "ASOF_NOTIFY_COMMAND",
        "command line",
        "",
        "Run on a failed or crashed flow run (split with shlex, no shell), the JSON summary on its "
        "stdin (docs/deployments.md).",
        _text,
        MONITORING,
    )
    notify_webhook: Variable[str] = Variable(
        "ASOF_NOTIFY_WEBHOOK",
        "http(s) URL",
        "",
        "POST the JSON summary of a failed or crashed flow run here (a `text` field for chat webhooks).",
        _text,
        MONITORING,
        secret=True,
    )
    notify_timeout_s: Variable[float] = Variable(
        "ASOF_NOTIFY_TIMEOUT_S",
        "seconds (at least 1)",
        30.0,
        "Per notification channel: a slow channel must not hold the run's process.",
        _float,
        MONITORING,
    )
    docs_url: Variable[str] = Variable(
        "ASOF_DOCS_URL",
        "URL",
        "",
        "Where $ASOF_HOME/docs is served: artifact links point there instead of file:// (make "
        "serve sets it).",
        _text,
        MONITORING,
    )
    reports_url: Variable[str] = Variable(
        "ASOF_REPORTS_URL",
        "URL",
        "",
        "Where $ASOF_HOME/reports is served, for the monitoring report links (make serve sets it).",
        _text,
        MONITORING,
    )

    # ------------------------------------------------------------ make serve, make redis, deployments

    prefect_port: Variable[int] = Variable(
        "ASOF_PREFECT_PORT",
        "port",
        4200,
        "`make serve`: the Prefect server's port on 127.0.0.1.",
        _port,
        DEPLOY,
    )
    docs_port: Variable[int | None] = Variable(
        "ASOF_DOCS_PORT",
        "port (0 = the Prefect port + 1)",
        None,
        "`make serve`: the port serving Data Docs and the monitoring report.",
        lambda raw: _port(raw) or None,
        DEPLOY,
        shown_default="ASOF_PREFECT_PORT + 1",
    )
    daily_cron: Variable[str] = Variable(
        "ASOF_DAILY_CRON",
        "cron expression (UTC)",
        "30 1 * * *",
        "Schedule of the `daily` deployment (make serve; prefect.yaml).",
        _text,
        DEPLOY,
        read_by="asof, prefect.yaml",
    )
    repo: Variable[Path | None] = Variable(
        "ASOF_REPO",
        "directory",
        None,
        "The repository the deployments run from (prefect.yaml; make serve sets it).",
        _path,
        DEPLOY,
        read_by="prefect.yaml (set by asof)",
    )
    redis_port: Variable[int] = Variable(
        "ASOF_REDIS_PORT",
        "port",
        6379,
        "`make redis`: the local Redis server's port.",
        _port,
        DEPLOY,
        read_by="Makefile",
    )

    # ------------------------------------------------------------ the asof command

    debug: Variable[bool] = Variable(
        "ASOF_DEBUG",
        "flag",
        False,
        "Show the traceback of an unexpected error or a missing package instead of one line.",
        _flag,
        CLI,
    )
    warm: Variable[bool] = Variable(
        "ASOF_WARM",
        "flag",
        True,
        "`asof run` and `asof backfill` run in the warm process (`asof warm`, started by `make "
        "serve`) when it listens and runs the same code in the same environment; off: always in "
        "the calling process (flows/orchestration/warm_process.py).",
        _flag,
        CLI,
    )
    warm_socket: Variable[Path] = Variable(
        "ASOF_WARM_SOCKET",
        "file",
        Path(),
        "The Unix socket of the warm process (its directory is made mode 0700).",
        _path,
        CLI,
        shown_default="$ASOF_HOME/run/warm.sock",
        default_from=lambda s: s.home / "run" / "warm.sock",
    )

    # ------------------------------------------------------------ tests and benchmarks

    crash_at: Variable[str | None] = Variable(
        "ASOF_CRASH_AT",
        "label[:n]",
        None,
        "Kill tests: the process SIGKILLs itself the n-th time (default the first) it reaches this "
        "crash point of flows/storage/lake.py.",
        _text,
        TESTS,
    )
    crash_trace: Variable[Path | None] = Variable(
        "ASOF_CRASH_TRACE",
        "file",
        None,
        "Kill tests: append every crash point reached to this file.",
        _path,
        TESTS,
    )
    keep_kill_homes: Variable[bool] = Variable(
        "ASOF_KEEP_KILL_HOMES",
        "flag",
        False,
        "Kill tests: keep their data roots for inspection.",
        _flag,
        TESTS,
        read_by="tests",
    )
    require_services: Variable[bool] = Variable(
        "ASOF_REQUIRE_SERVICES",
        "flag",
        False,
        "A test whose binary or service (Redis, Prometheus, Chromium) is missing fails instead of "
        "being skipped (.ci/run sets it).",
        _flag,
        TESTS,
        read_by="tests",
    )
    pit_examples: Variable[int] = Variable(
        "ASOF_PIT_EXAMPLES",
        "integer",
        3,
        "Examples of the point-in-time property test (8 in CI, 200 for a deep search).",
        _int,
        TESTS,
        read_by="tests",
    )
    bench_keep: Variable[bool] = Variable(
        "ASOF_BENCH_KEEP",
        "flag",
        False,
        "Keep each measurement's fresh data root.",
        _flag,
        TESTS,
        read_by="bench",
    )
    bench_keep_gold: Variable[bool] = Variable(
        "ASOF_BENCH_KEEP_GOLD",
        "flag",
        False,
        "Keep the gold tables of a measurement's fresh root (bench.run sets it for the floor comparison).",
        _flag,
        TESTS,
        read_by="bench",
    )

    # ------------------------------------------------------------ derived

    @classmethod
    def variables(cls) -> Iterator[Variable[Any]]:
        """Every declaration, in the order of this class."""
        return (v for v in vars(cls).values() if isinstance(v, Variable))

    def stage_timeout(self, stage: str) -> float | None:
        """The per-attempt limit of a pipeline stage's task (None = no limit)."""
        return getattr(self, f"timeout_{stage}_s")

    @property
    def landing(self) -> Path:
        return self.home / "landing"

    @property
    def locks(self) -> Path:
        return self.home / "locks"

    @property
    def docs_dir(self) -> Path:
        return self.home / "docs"

    @property
    def is_local_lake(self) -> bool:
        return "://" not in self.lake_uri

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    def pipeline_root_of(self, path: Path) -> Path | None:
        """The pipeline-owned directory (the local lake, the landing area, the feature store's
        registry and online store) that `path` would write into, symlinks resolved; None if
        none. A user-given output path inside one of them could replace a live data file, a
        Delta log or an upstream file, so such paths are refused (contract §3)."""
        roots = [self.landing, self.feast_dir]
        if self.is_local_lake:
            roots.append(Path(self.lake_uri))
        for root in roots:
            if resolves_inside(path, root):
                return root.expanduser().resolve()
        return None


STAGE_TIMEOUT_DEFAULTS_S: dict[str, float | None] = {
    stage: getattr(Settings, f"timeout_{stage}_s").default
    for stage in ("ingest", "validate", "transform", "materialize", "monitor")
}


def resolves_inside(path: Path | str, root: Path | str) -> bool:
    """`path` is `root` or lies under it once both are resolved (symlinks followed, `..` gone):
    the one test of "does this path stay in that directory" (user outputs, landing files, served
    files)."""
    target, base = Path(path).expanduser().resolve(), Path(root).expanduser().resolve()
    return target == base or base in target.parents


# ---------------------------------------------------------------- unknown names

_warned: set[str] = set()
_checked = False


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """`(name, closest known name)` for every `ASOF_*` variable of `environ` that asof does not
    declare: set, and ignored."""
    environ = os.environ if environ is None else environ
    known = {v.name for v in Settings.variables()}
    unknown = sorted(k for k in environ if k.startswith(PREFIX) and k not in known)
    if not unknown:
        return []
    import difflib  # only when there is something to suggest

    return [(name, difflib.get_close_matches(name, known, n=1, cutoff=0.0)[0]) for name in unknown]


def warn_unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """Log one warning for each unknown `ASOF_*` name not warned about yet in this process; returns
    the lines logged. Logged, so it goes to stderr (or Prefect's log), never into a command's
    stdout, where `--json` output is."""
    lines = []
    for name, closest in unknown_variables(environ):
        if name in _warned:
            continue
        _warned.add(name)
        lines.append(
            f"asof: warning: {name} is set but is not an asof setting; it has no effect "
            f"(did you mean {closest}? every setting: docs/configuration.md)"
        )
        log.warning("%s", lines[-1])
    return lines


def settings() -> Settings:
    """The configuration now: read the environment anew (tests and the CLI change `ASOF_HOME` at
    run time). The first call of a process also warns about unknown `ASOF_*` names."""
    global _checked
    if not _checked:
        _checked = True
        warn_unknown_variables()
    return Settings()


# ---------------------------------------------------------------- docs/configuration.md


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def configuration_markdown() -> str:
    """docs/configuration.md: the table of every declaration, by section."""
    out = [
        "# Configuration",
        "",
        "<!-- generated from the declarations in flows/config.py by `.venv/bin/python -m flows.config`;",
        "     tests/test_config.py fails when this page differs from them. Do not edit by hand. -->",
        "",
        "Every setting of asof is an `ASOF_*` environment variable, declared once in",
        "`flows/config.py` (`Settings`) with its form, default and meaning; this page is generated",
        "from those declarations.",
        "",
        "- A value is read when it is used, so a new value applies to the next use; the ones read",
        '  "once per process" apply from the next process (a Prefect worker starts one per flow run).',
        "- An empty value counts as unset: the default applies. A flag is `1`, `true`, `yes` or `on`,",
        "  or `0`, `false`, `no` or `off` (any case).",
        "- A value that does not have the expected form is an error naming the variable (and the",
        "  value, unless it may hold a credential).",
        "- An `ASOF_*` name that is not below is reported once per process, with the closest known",
        "  name, as a warning on stderr (or in the flow run's log): a typo does nothing otherwise.",
        "- `read by`: `asof` is the Python code; `dbt` is `dbt_project/profiles.yml`; variables",
        '  "set by asof" are written by asof for another process and need no value from you.',
    ]
    sections: dict[str, list[Variable[Any]]] = {}
    for v in Settings.variables():
        sections.setdefault(v.section, []).append(v)
    for section, variables in sections.items():
        out += [
            "",
            f"## {section}",
            "",
            "| variable | value | default | meaning | read by |",
            "| --- | --- | --- | --- | --- |",
        ]
        for v in variables:
            cells = (f"`{v.name}`", v.form, v.shown(), v.meaning, v.read_by)
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write docs/configuration.md, or with --check exit 1 when it differs from the declarations."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.config", description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="Only compare; exit 1 if out of date.")
    args = parser.parse_args(argv)
    text = configuration_markdown()
    current = DOC_PATH.read_text() if DOC_PATH.exists() else ""
    if args.check:
        if current != text:
            print(f"{DOC_PATH} is out of date: run .venv/bin/python -m flows.config", file=sys.stderr)
            return 1
        print(f"{DOC_PATH} is up to date")
        return 0
    if current != text:
        DOC_PATH.write_text(text)
        print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
