"""Feature logging: what `asof serve` served, in a lake table, and how it compares with offline
retrieval (Chronon's online/offline consistency measure; docs/feature-store.md).

- `log_table(service)`: the lake table (`ops/feature_log_<service>`, partitioned by `__log_date`)
  that `flows.features.feast_log_destination.LakeLoggingDestination` names; the feature services in
  `feature_repo/feature_services.py` carry one in their `LoggingConfig`, and the project's offline
  store writes it (`write_logged_features`).
- `served_features_logger(app, store)`: the ASGI wrapper `asof serve` puts around Feast's app
  when logging is switched on (`ASOF_LOG_SERVED_FEATURES=1`, or `feature_server.feature_logging.
  enabled` in feature_store.yaml). Feast's Python feature server does not log by itself (only its
  retired Go server did), so this captures each `POST /get-online-features` request for a
  feature service and its response, and a background thread turns them into Feast's log rows and
  hands them to `FeatureStore.write_logged_features` every few seconds.
- `measurements(day)`: for requests served on UTC day D, a sample of logged rows is retrieved
  offline for the same entities at the instant each was served, and every feature compared.

Feast is imported where it is used, never at import: flows.monitoring.metrics calls `measurements` for every
date it monitors, and a date without logs must not pay for importing Feast (over a second).
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from flows.config import settings
from flows.features.log_tables import LOG_LAYER, log_table
from flows.storage import lake

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore

log = logging.getLogger(__name__)

MAX_BUFFERED_BYTES = 256 * 2**20  # requests + responses waiting for a flush, per process
ENDPOINT = "/get-online-features"
MISMATCH_METRIC = "logged_mismatch_rate"
SAMPLE_SIZE = 200
REL_TOL = 1e-6
# FieldStatus of Feast's serving API (ServingService.proto), as the HTTP server names them
STATUS_CODES = {"INVALID": 0, "PRESENT": 1, "NULL_VALUE": 2, "NOT_FOUND": 3, "OUTSIDE_MAX_AGE": 4}


# ------------------------------------------------------------------ serving: capture and write


def logging_enabled(store: FeatureStore) -> bool:
    """Opt-in: `ASOF_LOG_SERVED_FEATURES=1`, or Feast's `feature_server.feature_logging.enabled`."""
    flag = settings().log_served_features
    if flag is not None:
        return flag
    server = getattr(store.config, "feature_server", None)
    feature_logging = getattr(server, "feature_logging", None)
    return bool(getattr(feature_logging, "enabled", False))


def log_rows(
    service: FeatureService,
    request: dict[str, Any],
    response: dict[str, Any],
    served_at: dt.datetime,
    schema: pa.Schema,
) -> list[dict[str, Any]]:
    """Feast's log rows (one per entity row) for one served request: join keys, and per feature
    `view__feature`, `__timestamp`, `__status`, then the log timestamp, date and request id."""
    from feast.feature_logging import LOG_DATE_FIELD, LOG_TIMESTAMP_FIELD, REQUEST_ID_FIELD

    names = response.get("metadata", {}).get("feature_names", [])
    results = response.get("results", [])
    columns = dict(zip(names, results, strict=False))
    short = {}
    for projection in service.feature_view_projections:
        for feature in projection.features:
            short.setdefault(feature.name, f"{projection.name_to_use()}__{feature.name}")
    by_full: dict[str, dict[str, Any]] = {}
    for name, column in columns.items():
        full = name if "__" in name and name not in short else short.get(name, name)
        by_full[full] = column
    entities = request.get("entities", {})
    n = len(next(iter(entities.values()), []))
    request_id = str(uuid.uuid4())
    rows: list[dict[str, Any]] = []
    for i in range(n):
        row: dict[str, Any] = {}
        for field in schema:
            name = field.name
            if name == LOG_TIMESTAMP_FIELD:
                row[name] = served_at
            elif name == LOG_DATE_FIELD:
                row[name] = served_at.date()
            elif name == REQUEST_ID_FIELD:
                row[name] = request_id
            elif name.endswith("__timestamp") and name[: -len("__timestamp")] in by_full:
                stamps = by_full[name[: -len("__timestamp")]].get("event_timestamps") or []
                row[name] = _parse_ts(stamps[i]) if i < len(stamps) else None
            elif name.endswith("__status") and name[: -len("__status")] in by_full:
                statuses = by_full[name[: -len("__status")]].get("statuses") or []
                row[name] = STATUS_CODES.get(statuses[i], 0) if i < len(statuses) else None
            elif name in by_full:
                values = by_full[name].get("values") or []
                row[name] = values[i] if i < len(values) else None
            elif name in entities:
                row[name] = entities[name][i]
            else:
                row[name] = None
        rows.append(row)
    return rows


def _parse_ts(value: Any) -> dt.datetime | None:
    if not value:
        return None
    stamp = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    # Feast answers 1970-01-01 for an entity it does not know: no timestamp was served
    return None if stamp.timestamp() == 0 else stamp


class FeatureLogWriter:
    """Buffers served requests and writes them as Feast log rows, off the request path.

    A request only costs keeping its request and response bytes: JSON parsing, building rows and
    writing happen in a daemon thread every `flush_s` seconds (and at exit), one Delta commit per
    feature service per flush, not one per request."""

    def __init__(self, store: FeatureStore, flush_s: float | None = None):
        self.store = store
        self.flush_s = flush_s if flush_s is not None else settings().feature_log_flush_s
        self._pending: list[tuple[bytes, bytes, dt.datetime]] = []
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def submit(self, request: bytes, response: bytes, served_at: dt.datetime) -> None:
        size = len(request) + len(response)
        with self._lock:
            if self._pending_bytes + size > MAX_BUFFERED_BYTES:
                self.dropped += 1  # never grow without bound when the lake cannot be written
                return
            self._pending.append((request, response, served_at))
            self._pending_bytes += size
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="asof-feature-log", daemon=True)
            self._thread.start()
        atexit.register(self.close)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self.flush()

    def flush(self) -> int:
        """Write everything buffered; returns the number of log rows written."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending, self._pending_bytes = self._pending, [], 0
            by_service: dict[str, list[tuple[dict[str, Any], dict[str, Any], dt.datetime]]] = {}
            for request_body, response_body, served_at in pending:
                try:
                    request = json.loads(request_body or b"{}")
                    if request.get("feature_service"):  # Feast logs per feature service only
                        response = json.loads(response_body)
                        by_service.setdefault(request["feature_service"], []).append(
                            (request, response, served_at)
                        )
                except ValueError:
                    log.debug("feature log: a request or response was not JSON", exc_info=True)
            written = 0
            for name, items in by_service.items():
                try:
                    written += self._write(name, items)
                except Exception:  # logging must never take serving down
                    log.warning(
                        "could not write feature logs of %s (%d requests)", name, len(items), exc_info=True
                    )
            return written

    def _write(self, name: str, items: list[tuple[dict[str, Any], dict[str, Any], dt.datetime]]) -> int:
        from feast.feature_logging import FeatureServiceLoggingSource

        service = self.store.get_feature_service(name, allow_cache=True)
        config = service.logging_config
        if config is None:
            return 0
        schema = FeatureServiceLoggingSource(service, self.store.project).get_schema(self.store.registry)
        rows: list[dict[str, Any]] = []
        for request, response, served_at in items:
            if config.sample_rate < 1.0 and random.random() >= config.sample_rate:
                continue
            rows += log_rows(service, request, response, served_at, schema)
        if not rows:
            return 0
        self.store.write_logged_features(logs=pa.Table.from_pylist(rows, schema=schema), source=service)
        return len(rows)


ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


def served_features_logger(
    app: ASGIApp, store: FeatureStore, writer: FeatureLogWriter | None = None
) -> ASGIApp:
    """`app` unchanged when logging is off; otherwise `app` with every successful
    `POST /get-online-features` for a feature service handed to a `FeatureLogWriter`."""
    if writer is None:
        if not logging_enabled(store):
            return app
        writer = FeatureLogWriter(store)
    log.info("asof serve logs served features (flush every %.0f s)", writer.flush_s)

    async def logged(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("path") != ENDPOINT or scope.get("method") != "POST":
            await app(scope, receive, send)
            return
        served_at = dt.datetime.now(dt.UTC)
        request_body: list[bytes] = []
        response_body: list[bytes] = []
        status: list[int] = []

        async def receive_and_keep() -> Any:
            message = await receive()
            if message.get("type") == "http.request":
                request_body.append(message.get("body", b""))
            return message

        async def send_and_keep(message: Any) -> None:
            if message.get("type") == "http.response.start":
                status.append(int(message.get("status", 0)))
            elif message.get("type") == "http.response.body":
                response_body.append(message.get("body", b""))
            await send(message)

        await app(scope, receive_and_keep, send_and_keep)
        if status and status[0] == 200:
            writer.submit(b"".join(request_body), b"".join(response_body), served_at)

    return logged


# ------------------------------------------------------------------ monitoring: logged vs offline


def _sample(table: pa.Table, size: int, salt: int) -> pa.Table:
    """A deterministic sample of logged rows (by request id and row), the same on every rerun."""
    from feast.feature_logging import REQUEST_ID_FIELD

    ids = table[REQUEST_ID_FIELD].to_pylist()
    keys = [hashlib.sha256(f"{salt}:{rid}:{i}".encode()).digest()[:8] for i, rid in enumerate(ids)]
    order = sorted(range(len(keys)), key=keys.__getitem__)[:size]
    return table.take(pa.array(sorted(order), pa.int64()))


def compare_logged(
    store: FeatureStore, service: str, logged: pa.Table, rel_tol: float = REL_TOL
) -> tuple[float | None, dict[str, Any]]:
    """(share of logged rows with a feature that differs from offline retrieval, details).

    Each logged row is retrieved offline for its join keys at its `__log_timestamp` (full
    feature names, the log's column names). A served value counts as null when its status is
    not PRESENT. Details: rows compared, per-feature mismatch rates, up to 5 examples."""
    from feast.feature_logging import LOG_TIMESTAMP_FIELD, REQUEST_ID_FIELD

    from flows.monitoring.online_check import values_equal

    fs = store.get_feature_service(service, allow_cache=True)
    keys: list[str] = []
    features: list[str] = []
    for projection in fs.feature_view_projections:
        view = store.get_feature_view(projection.name)
        for col in view.entity_columns:
            key = (projection.join_key_map or {}).get(col.name, col.name)
            if key not in keys and key in logged.column_names:
                keys.append(key)
        features += [f"{projection.name_to_use()}__{f.name}" for f in projection.features]
    n = logged.num_rows
    if n == 0:
        return None, {"compared": 0}
    entity = logged.select(keys).append_column(
        "event_timestamp", logged[LOG_TIMESTAMP_FIELD].cast(pa.timestamp("us", tz="UTC"))
    )
    offline = store.get_historical_features(
        entity_df=entity.to_pandas(), features=fs, full_feature_names=True
    ).to_arrow()
    mismatched = 0
    per_feature = dict.fromkeys(features, 0)
    examples: list[dict[str, Any]] = []
    served_rows = logged.to_pylist()
    offline_cols = {f: offline[f].to_pylist() for f in features}
    for i, row in enumerate(served_rows):
        bad = []
        for f in features:
            served = row.get(f) if row.get(f"{f}__status") == STATUS_CODES["PRESENT"] else None
            if not values_equal(served, offline_cols[f][i], rel_tol):
                bad.append(f)
                per_feature[f] += 1
        if bad:
            mismatched += 1
            if len(examples) < 5:
                examples.append(
                    {
                        "request_id": row[REQUEST_ID_FIELD],
                        "served_at": row[LOG_TIMESTAMP_FIELD].isoformat(),
                        **{k: row[k] for k in keys},
                        **{
                            f: {"served": _jsonable(row.get(f)), "offline": _jsonable(offline_cols[f][i])}
                            for f in bad[:3]
                        },
                    }
                )
    info: dict[str, Any] = {
        "compared": n,
        "mismatched": mismatched,
        "by_feature": {f: c / n for f, c in per_feature.items()},
        "examples": examples,
    }
    if mismatched:
        info["summary"] = f"{mismatched}/{n} logged rows differ from offline retrieval, e.g. {examples[0]}"[
            :400
        ]
    return mismatched / n, info


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def measurements(
    day: dt.date, services: list[str] | None = None, sample_size: int = SAMPLE_SIZE
) -> list[tuple[str, str, float | None, dict[str, Any]]]:
    """(metric, scope, value, details) per feature service with requests logged on UTC day D:
    `logged_mismatch_rate` over a deterministic sample of at most `sample_size` logged rows."""
    from flows.features import featurestore

    out: list[tuple[str, str, float | None, dict[str, Any]]] = []
    for service in services or list(featurestore.SERVICES):
        table = log_table(service)
        if not lake.exists(LOG_LAYER, table):
            continue
        from feast.feature_logging import LOG_DATE_FIELD

        logged = lake.read(LOG_LAYER, table, filter=pc.field(LOG_DATE_FIELD) == pa.scalar(day, pa.date32()))
        if logged.num_rows == 0:
            continue
        total = logged.num_rows
        logged = _sample(logged, sample_size, day.toordinal())
        t0 = time.monotonic()
        value, info = compare_logged(featurestore.get_store(), service, logged)
        info.update({"logged_rows": total, "seconds": round(time.monotonic() - t0, 3)})
        out.append((MISMATCH_METRIC, service, value, info))
    return out
