"""Online serving latency: a Prometheus histogram per endpoint and feature service, and `/metrics`.

`asof serve` wraps Feast's feature-server app in `LatencyMiddleware`; model code that reads online
features in process times its reads with `timed(feature_service)`. Both record into the same
histogram `asof_online_request_duration_seconds` (endpoint `in_process` for the latter) and into
the per-day log that `flows.monitoring.metrics` turns into P50/P99 per date
(flows/monitoring/daily_latency.py).

Why not Feast's own `--metrics`: it serves them on a second port (8000) from a child process, and
labels latency by feature and view counts, not by the feature service a model calls; the
architecture's objective is per service ("P99 > 50 ms alerts"). Feast's metrics stay off.

Label values are bounded (Prometheus keeps one series per label combination): endpoints are the
app's own routes (anything else is `other`), feature services are the registry's (a name the
registry does not know is `unknown`, a request by feature list is `none`).

Several gunicorn workers (`asof serve --workers N`) each count their own requests; in
prometheus_client's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, set by flows.features.feature_server before
anything imports prometheus_client) every worker writes its values to files that `/metrics` adds
up, whichever worker answers the scrape.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from flows.config import settings
from flows.monitoring import daily_latency

METRICS_PATH = "/metrics"
IN_PROCESS = "in_process"
NO_SERVICE = "none"
UNKNOWN_SERVICE = "unknown"
OTHER_ENDPOINT = "other"
LATENCY_METRIC = "asof_online_request_duration_seconds"
REQUESTS_METRIC = "asof_online_requests_total"

REGISTRY = CollectorRegistry()
REQUEST_SECONDS = Histogram(
    LATENCY_METRIC,
    "Wall time of an online feature request, from the first byte received to the last byte sent",
    ["endpoint", "feature_service"],
    buckets=daily_latency.BUCKETS,
    registry=REGISTRY,
)
REQUESTS = Counter(
    REQUESTS_METRIC.removesuffix("_total"),
    "Online feature requests by HTTP status (in-process reads: 200 or 500)",
    ["endpoint", "feature_service", "code"],
    registry=REGISTRY,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The body is only looked at for the service name, with a regex rather than a JSON parse: a request
# for 100 entities is kilobytes, and the measurement must not cost what it measures.
SERVICE_RE = re.compile(rb'"feature_service"\s*:\s*"([^"\\]{1,200})"')
MAX_BODY_SCAN = 1 << 16


def observe(endpoint: str, feature_service: str, seconds: float, code: int) -> None:
    REQUEST_SECONDS.labels(endpoint, feature_service).observe(seconds)
    REQUESTS.labels(endpoint, feature_service, str(code)).inc()
    daily_latency.process_log().observe(endpoint, feature_service, seconds)


@contextlib.contextmanager
def timed(feature_service: str, endpoint: str = IN_PROCESS) -> Iterator[None]:
    """Time an in-process online read, e.g.
    `with timed("fraud_v2"): flows.features.featurestore.online_features(rows, "fraud_v2")`."""
    code = 500
    t = time.perf_counter()
    try:
        yield
        code = 200
    finally:
        observe(endpoint, feature_service, time.perf_counter() - t, code)


def exposition() -> bytes:
    """The text `/metrics` answers: this process's histogram, or every worker's in multiprocess
    mode (only asof's own metric families: Feast's, switched off, would be zeros)."""
    path = settings().serve_metrics_dir  # not Feast's PROMETHEUS_MULTIPROC_DIR (feature_server)
    if not path:
        return generate_latest(REGISTRY)
    from prometheus_client import multiprocess

    class Ours:
        def collect(self) -> Iterable[Any]:
            collector = multiprocess.MultiProcessCollector(None, path=str(path))
            return [m for m in collector.collect() if m.name.startswith("asof_")]

    merged = CollectorRegistry()
    merged.register(Ours())  # type: ignore[arg-type]
    return generate_latest(merged)


class LatencyMiddleware:
    """ASGI middleware: answers GET /metrics itself, times every other HTTP request, flushes the
    per-day log at shutdown."""

    def __init__(self, app: ASGIApp, endpoints: Iterable[str], services: Iterable[str]) -> None:
        self.app = app
        self.endpoints = frozenset(endpoints) - {METRICS_PATH}
        self.services = frozenset(services)

    def service_of(self, body: bytes) -> str:
        found = SERVICE_RE.search(body[:MAX_BODY_SCAN])
        if found is None:
            return NO_SERVICE
        name = found.group(1).decode("utf-8", "replace")
        return name if name in self.services else UNKNOWN_SERVICE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self.flushing_at_shutdown(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == METRICS_PATH and scope.get("method") in ("GET", "HEAD"):
            await self.metrics(send)
            return
        endpoint = path.lstrip("/") if path in self.endpoints else OTHER_ENDPOINT
        body = bytearray()
        status = 500

        async def receive_and_keep() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < MAX_BODY_SCAN:
                body.extend(message.get("body", b""))
            return message

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        t = time.perf_counter()
        try:
            await self.app(scope, receive_and_keep, send_and_note)
        finally:
            observe(endpoint, self.service_of(bytes(body)), time.perf_counter() - t, status)

    @staticmethod
    def flushing_at_shutdown(receive: Receive) -> Receive:
        """The day's latency reaches disk when the server stops, not up to a flush interval later."""

        async def receive_and_flush() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                daily_latency.flush_process_log()
            return message

        return receive_and_flush

    async def metrics(self, send: Send) -> None:
        payload = exposition()
        headers = [(b"content-type", CONTENT_TYPE_LATEST.encode()), (b"content-length", b"%d" % len(payload))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
