"""The HTTP feature server behind `asof serve`: Feast's app, timed, with `/metrics` on the same port.

Feast's `start_server` builds its app internally, so there is no place to wrap it; this module
does what it does (auth managers, gunicorn with uvicorn workers) around the same `get_app`, plus
`flows.monitoring.serving.LatencyMiddleware`. One worker runs under plain uvicorn (one process:
its metrics are its own); several run under gunicorn in prometheus_client's multiprocess mode.

Nothing here imports prometheus_client or Feast at module level: multiprocess mode has to be
chosen before either is imported (`prepare_metrics`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from typing import Any

from flows.config import Settings, settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# asof's own ASOF_SERVE_METRICS_DIR names the directory it made for its workers: Feast sets
# PROMETHEUS_MULTIPROC_DIR to a directory of its own whenever it is imported (feast/metrics.py), so
# that variable alone does not say that `/metrics` must merge several workers' files.


def prepare_metrics(workers: int) -> None:
    """For several workers, a fresh multiprocess directory (removed at exit by the process that
    made it). Refuses to go on if prometheus_client was imported first: each worker would then
    answer `/metrics` with its own counts only, which looks right and is not."""
    if workers <= 1 or settings().serve_metrics_dir:
        return
    if "prometheus_client.values" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess directory was set")
    path = tempfile.mkdtemp(prefix="asof-serve-metrics-")
    os.environ[MULTIPROC_ENV] = os.environ[Settings.serve_metrics_dir.name] = path
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)


def build_app(store: Any, registry_ttl_sec: int = 60) -> Any:
    """Feast's feature-server app for `store`, wrapped in the latency middleware."""
    from feast.feature_server import get_app
    from feast.permissions.server.utils import (
        ServerType,
        init_auth_manager,
        init_security_manager,
        str_to_auth_manager_type,
    )

    from flows.monitoring.serving import LatencyMiddleware

    auth_type = str_to_auth_manager_type(store.config.auth_config.type)
    init_security_manager(auth_type=auth_type, fs=store)
    init_auth_manager(auth_type=auth_type, server_type=ServerType.REST, auth_config=store.config.auth_config)
    app = get_app(store, registry_ttl_sec)
    endpoints = {getattr(r, "path", "") for r in app.routes} - {""}
    services = [s.name for s in store.list_feature_services()]
    from flows.features.feature_logging import (
        served_features_logger,  # opt-in: what was served, into the lake
    )

    return LatencyMiddleware(served_features_logger(app, store), endpoints=endpoints, services=services)


def run(store: Any, host: str, port: int, workers: int = 1, access_log: bool = False) -> None:
    """Serve until interrupted. `prepare_metrics(workers)` must have run before Feast was imported."""
    app = build_app(store)
    if workers <= 1:
        import uvicorn

        uvicorn.run(app, host=host, port=port, access_log=access_log)
        return
    import gunicorn.app.base

    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "uvicorn_worker.UvicornWorker",
        "accesslog": "-" if access_log else None,
        "keepalive": 30,
        "worker_connections": 1000,
        # gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl):
        # a second server would take it over, and nothing of asof uses it
        "control_socket_disable": True,
    }

    class Application(gunicorn.app.base.BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                if value is not None:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    Application().run()
