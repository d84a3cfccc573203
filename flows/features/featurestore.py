"""The Feast feature store of the project: configuration, registration, materialization, online reads.

- `get_store()` -> a cached `feast.FeatureStore` for the current ASOF_HOME, with the definitions in
  `feature_repo/` applied to its registry (re-applied when they change).
- `materialize_date(day)` -> puts the feature rows that became available on `day` into the online
  store (SQLite by default, Redis with `ASOF_ONLINE_STORE=redis`).
- `online_features(rows, service)` -> online feature values for entity rows.

Online store selection (environment, read when the store is first built):

    ASOF_ONLINE_STORE   sqlite (default) | redis
    ASOF_REDIS_URL      redis://[user:password@]host:port[/db]   (rediss:// = TLS); default
                        redis://127.0.0.1:6379/0
    ASOF_REDIS_PASSWORD optional; overrides the URL's password (keeps it out of URLs/process lists)
    ASOF_REDIS_CA_CERT  optional CA bundle for rediss://

The password only ever goes into the in-memory client configuration: it is not logged, not
returned, and not written to manifests.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import importlib
import io
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from flows.config import REPO_ROOT, Settings, settings
from flows.dates import feature_timestamp, parse_date
from flows.transform.gold_schema import MARTS_YML

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore, FeatureView
    from feast.repo_config import RepoConfig

log = logging.getLogger(__name__)

REPO_DIR = REPO_ROOT / "feature_repo"
REPO_MODULES = ("data_sources", "entities", "features", "feature_services")
SERVICES = ("fraud_v1", "fraud_v2")
ONE_US = dt.timedelta(microseconds=1)

_lock = threading.RLock()


# ------------------------------------------------------------------ configuration


def _ensure_home_env() -> Path:
    """feature_store.yaml refers to ${ASOF_HOME}: make sure it is set (default ./data, absolute)."""
    home = settings().home
    os.environ["ASOF_HOME"] = str(home)
    return home


def online_store_kind() -> str:
    return settings().online_store


def redis_connection_string() -> str:
    """Feast's Redis connection string (host:port,db=N,...) from ASOF_REDIS_URL / ASOF_REDIS_PASSWORD.

    Contains the password when one is configured: never log or persist the result.
    """
    s = settings()
    parts = urlsplit(s.redis_url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("ASOF_REDIS_URL must start with redis:// or rediss://")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 6379
    params = [f"{host}:{port}"]
    db = (parts.path or "/0").lstrip("/") or "0"
    if not db.isdigit():
        raise ValueError("ASOF_REDIS_URL: the database must be a number (redis://host:port/0)")
    params.append(f"db={db}")
    if parts.username:
        params.append(f"username={unquote(parts.username)}")
    password = s.redis_password or (unquote(parts.password) if parts.password else None)
    if password:
        if "," in password:
            raise ValueError("the Redis password may not contain ',' (Feast's connection-string format)")
        params.append(f"password={password}")
    if parts.scheme == "rediss":
        params.append("ssl=true")
        ca = s.redis_ca_cert
        if ca:
            params.append(f"ssl_ca_certs={ca}")
    return ",".join(params)


def repo_config() -> RepoConfig:
    """feature_store.yaml (or feature_store.redis.yaml) for the current environment."""
    from feast.repo_config import load_repo_config

    _ensure_home_env()
    if online_store_kind() == "redis":
        config = load_repo_config(REPO_DIR, REPO_DIR / "feature_store.redis.yaml")
        if not settings().redis_connection_string:
            config.online_store.connection_string = redis_connection_string()
    else:
        config = load_repo_config(REPO_DIR, REPO_DIR / "feature_store.yaml")
    return config


def _cache_key() -> tuple:
    s = settings()
    kind = online_store_kind()
    redis = ""
    if kind == "redis":
        raw = s.redis_connection_string or redis_connection_string()
        redis = hashlib.sha256(raw.encode()).hexdigest()  # the key never holds the password itself
    return (str(s.home), s.lake_uri, kind, redis)


# ------------------------------------------------------------------ definitions and registry


def definition_files() -> list[Path]:
    """feature_repo's modules and the marts' dbt contract its views take their fields from."""
    return [*(REPO_DIR / f"{m}.py" for m in REPO_MODULES), MARTS_YML]


def definitions_sha256() -> str:
    """Hash of the feature repo's definition files (what `feast apply` registers)."""
    h = hashlib.sha256()
    for path in definition_files():
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def load_definitions() -> list[Any]:
    """Import feature_repo/*.py the way `feast apply` does and return the Feast objects in them.

    The modules are imported fresh (their source paths depend on ASOF_HOME) under their repo
    names, which `feast apply` also uses; any unrelated module of the same name is restored.
    """
    from feast import Entity, FeatureService, FeatureView
    from feast.data_source import DataSource

    with _lock:
        saved = {name: sys.modules.pop(name) for name in REPO_MODULES if name in sys.modules}
        sys.path.insert(0, str(REPO_DIR))
        try:
            modules = [importlib.import_module(name) for name in REPO_MODULES]
        finally:
            sys.path.remove(str(REPO_DIR))
            for name in REPO_MODULES:
                sys.modules.pop(name, None)
            for name, mod in saved.items():
                if not str(getattr(mod, "__file__", "")).startswith(str(REPO_DIR)):
                    sys.modules[name] = mod
    objects: list[Any] = []
    for module in modules:
        for attr in sorted(vars(module)):
            obj = getattr(module, attr)
            if isinstance(obj, Entity | FeatureView | FeatureService | DataSource) and not any(
                obj is o for o in objects
            ):
                objects.append(obj)
    return objects


def _applied_marker() -> Path:
    return settings().home / "feast" / "applied.json"


def apply(store: FeatureStore | None = None, force: bool = False) -> bool:
    """Register feature_repo/ in the store's registry (like `feast apply`). Returns True if applied."""
    store = store or _build_store()
    marker = _applied_marker()
    digest = definitions_sha256()
    key = {"definitions_sha256": digest, "lake_uri": settings().lake_uri}
    registry_path = Path(store.config.registry.path)
    with _lock:
        if registry_path.exists() and not _registry_readable(store):
            # Feast writes registry.db in place: a process killed mid-write leaves a truncated
            # file that every later call would trip on. It is derived state: rebuild it.
            log.warning("feast registry %s is unreadable (interrupted write); re-applying", registry_path)
            registry_path.unlink()
            marker.unlink(missing_ok=True)
        if not force and registry_path.exists() and marker.exists():
            try:
                if json.loads(marker.read_text()) == key:
                    return False
            except (OSError, ValueError):
                pass
        objects = load_definitions()
        store.apply(objects)
        store.refresh_registry()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(key, indent=2) + "\n")
    log.info("applied feature_repo definitions (%s) to %s", digest[:12], registry_path)
    return True


def _registry_readable(store: FeatureStore) -> bool:
    from google.protobuf.message import DecodeError

    try:
        store.registry  # noqa: B018 - Feast parses registry.db on first access
    except DecodeError:
        return False
    return True


def _build_store() -> FeatureStore:
    from flows.features.feast_store import AsofFeatureStore

    config = repo_config()
    Path(config.registry.path).parent.mkdir(parents=True, exist_ok=True)
    return AsofFeatureStore(repo_path=str(REPO_DIR), config=config)


@functools.lru_cache(maxsize=8)
def _cached_store(key: tuple) -> FeatureStore:
    import flows.features.feast_log_destination  # noqa: F401 - registers the services' logging destination

    store = _build_store()
    apply(store)
    return store


# What `_cache_key` is computed from. Computing it resolves paths (~0.3 ms), which an online read
# should not pay per call, so it is remembered per value of these variables and working directory.
_KEY_ENV = tuple(
    v.name
    for v in (
        Settings.home,
        Settings.lake_uri,
        Settings.storage_options,
        Settings.online_store,
        Settings.redis_url,
        Settings.redis_password,
        Settings.redis_connection_string,
    )
)


@functools.lru_cache(maxsize=32)
def _cache_key_for(env: tuple[str | None, ...], cwd: str) -> tuple:
    return _cache_key()


def get_store() -> FeatureStore:
    """The FeatureStore for the current ASOF_HOME / online store settings (cached per setting)."""
    key = _cache_key_for(tuple(os.environ.get(k) for k in _KEY_ENV), os.getcwd())
    with _lock:
        return _cached_store(key)


def reset_store_cache() -> None:
    _cached_store.cache_clear()
    _cache_key_for.cache_clear()


def feature_service(name: str) -> FeatureService:
    if name not in SERVICES:
        raise ValueError(f"unknown feature service {name!r} (known: {', '.join(SERVICES)})")
    return get_store().get_feature_service(name)


def service_views(store: FeatureStore, service: str) -> list[FeatureView]:
    fs = store.get_feature_service(service)
    return [store.get_feature_view(p.name) for p in fs.feature_view_projections]


def service_feature_names(store: FeatureStore, service: str) -> list[str]:
    fs = store.get_feature_service(service)
    return [f.name for p in fs.feature_view_projections for f in p.features]


def service_join_keys(store: FeatureStore, service: str) -> list[str]:
    keys: list[str] = []
    for fv in service_views(store, service):
        for col in fv.entity_columns:
            if col.name not in keys:
                keys.append(col.name)
    return keys


# ------------------------------------------------------------------ materialization


def materialize_date(day: dt.date | str, views: Sequence[str] | None = None) -> dict[str, Any]:
    """Load into the online store the feature rows that became available on `day`.

    Daily rows of as-of day D carry feature_timestamp D+1 00:00 (contract §5): they are the rows of
    `execution_date` D, materialized with Feast over [D+1 00:00, D+2 00:00). Reads go through
    `feast_offline.current_rows_only()`: a row whose entity already has a newer row in the table is
    skipped (the newer row belongs to, and is written by, a later date). Hence:

    - daily operation writes every row of the day;
    - re-running a date is idempotent, and a corrected re-run rewrites the corrected rows;
    - a backfill, in any order, writes each entity once with its latest row, and never puts an
      older value over a newer one (so Redis' "drop older timestamps" check never has to act; it
      is switched off with `skip_dedup`, because it also drops a corrected row whose timestamp is
      unchanged).

    Returns {"status", "rows", "views", ...} for the flow's run record.
    """
    day = parse_date(day, "date")
    return materialize_span(day, day, views)


def materialize_span(
    first: dt.date | str, last: dt.date | str, views: Sequence[str] | None = None
) -> dict[str, Any]:
    """`materialize_date` for every date of [first, last] in one Feast pass per view.

    With current rows only, each entity is written once with its newest row of the span, which is
    exactly what the online store holds after materializing the dates one by one: a backfill pays
    Feast's per-call cost once per chunk instead of once per date."""
    from flows.features import feast_engine, feast_offline
    from flows.storage import lake

    day, last_day = parse_date(first, "first"), parse_date(last, "last")
    if last_day < day:
        raise ValueError(f"materialize: last {last_day} is before first {day}")
    store = get_store()
    start = feature_timestamp(day)
    end = feature_timestamp(last_day) + dt.timedelta(days=1) - ONE_US
    t0 = time.monotonic()
    per_view: dict[str, Any] = {}
    rows = 0
    names = list(views) if views else [fv.name for fv in store.list_feature_views()]
    for name in sorted(names):
        try:
            with (
                feast_engine.counting_written_rows() as written,
                feast_offline.current_rows_only(),
                contextlib.redirect_stdout(io.StringIO()) as chatter,
            ):
                store.materialize(start_date=start, end_date=end, feature_views=[name])
        except lake.LakeError as exc:  # the view's gold table does not exist yet
            per_view[name] = {"rows": 0, "skipped": str(exc)}
            continue
        log.debug("feast materialize %s: %s", name, chatter.getvalue().strip())
        per_view[name] = {"rows": written[0]}
        rows += written[0]
    message = ", ".join(
        f"{name}: {v['rows']} rows" + (f" ({v['skipped']})" if "skipped" in v else "")
        for name, v in per_view.items()
    )
    return {
        "status": "succeeded",
        "date": day.isoformat(),
        "last_date": last_day.isoformat(),
        "rows": rows,
        "views": per_view,
        "window": [start.isoformat(), end.isoformat()],
        "online_store": online_store_kind(),
        "seconds": round(time.monotonic() - t0, 3),
        "message": message,
    }


def materialize_range(start: dt.date | str, end: dt.date | str) -> list[dict[str, Any]]:
    from flows.dates import date_range, parse_range

    d1, d2 = parse_range(start, end)
    return [materialize_date(d) for d in date_range(d1, d2)]  # per date: what a daily schedule does


# ------------------------------------------------------------------ online reads


def online_features(
    entity_rows: Iterable[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
    service: str = "fraud_v2",
    full_feature_names: bool = False,
) -> dict[str, list[Any]]:
    """Online values for entity rows (list of {"customer_id": .., "merchant_id": ..} or columns).

    Returns column lists: the join keys followed by every feature of the service; a missing
    entity reads None. Like Feast, online values are the latest materialized ones (ttl is not
    applied online).
    """
    store = get_store()
    if isinstance(entity_rows, Mapping):
        cols = {k: list(v) for k, v in entity_rows.items()}
        n = len(next(iter(cols.values()))) if cols else 0
        rows = [{k: cols[k][i] for k in cols} for i in range(n)]
    else:
        rows = [dict(r) for r in entity_rows]
    if not rows:
        return {}
    resp = store.get_online_features(
        # the same FeatureService object while the registry is unchanged (flows/features/feast_store.py)
        features=store.get_feature_service(service, allow_cache=True),
        entity_rows=rows,
        full_feature_names=full_feature_names,
    )
    return resp.to_dict()
