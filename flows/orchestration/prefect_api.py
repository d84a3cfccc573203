"""The Prefect API of a command-line run, started while the run loads its stages.

Without `PREFECT_API_URL`, Prefect starts a temporary server (a `prefect.server` subprocess on
127.0.0.1) the first time a flow needs its API, and the flow waits for it: 8-14 s of a 30-day demo
backfill, most of it the server importing itself and, in a fresh home, creating its database, one
core busy while the other idles. The stages' own imports (GE, dbt, Feast: 5-8 s) came only after
that, one after the other. `start_in_background` starts that same server process (the command,
environment and port range of Prefect's `SubprocessASGIServer`) and returns at once, so `preload`
imports the stages on the other core meanwhile; when it answers, its URL becomes the run's
`PREFECT_API_URL` (the process's environment and Prefect's global settings, which threads and
worker processes read), and the flow talks to it as to any configured server. It is stopped when
the process exits.

Prefect's own `SubprocessASGIServer` would do the same but lives in `prefect.server.api.server`,
whose import (the server's whole application: 1.7 s quiet, 2.5-5.3 s at load 3-6, profiled) this
process paid only to start a subprocess that imports it again; the process started later too.
With a server configured nothing changes and nothing is preloaded: a run against a live server
pays each import only if it gets to that stage.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

from flows.orchestration import head_start, prefect_db

# What the stages import when they first run (the heavy part of a fresh process; the flows modules
# themselves import these lazily, so `asof --help` and `asof status` stay light).
STAGE_MODULES = head_start.STAGE_MODULES

PORTS = range(8000, 9000)  # Prefect's choice for its temporary server
PORT_IN_USE = 3  # uvicorn's exit status when its port was taken in the meantime


def _logger() -> logging.Logger:
    """Prefect's logger `prefect.temporary_server`, with Prefect's logging set up (as `import prefect`
    does), so PREFECT_LOGGING_LEVEL decides what is shown."""
    from prefect.logging import get_logger
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    return get_logger("temporary_server")


def _free_port() -> int:
    for _ in range(50):
        port = random.choice(PORTS)
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port for Prefect's temporary server in {PORTS.start}-{PORTS.stop - 1}")


class TemporaryServer:
    """Prefect's temporary server process (what `SubprocessASGIServer.start` runs): started at
    once, waited for by `wait`, stopped at exit."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.process = self._spawn()
        atexit.register(self.stop)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _spawn(self) -> subprocess.Popen:
        import prefect
        from prefect.settings import get_current_settings

        _logger().info("Starting temporary server on http://127.0.0.1:%d", self.port)
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True),
        }
        prefect_db.seed(env)  # a new home's database from the migrated template: 12 s less
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(prefect.__module_path__.parent),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            env=env,
        )

    def wait(self) -> None:
        """Return when the server answers; then its URL is the process's Prefect API."""
        from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

        deadline = time.monotonic() + float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code == PORT_IN_USE:  # taken since it was found free: another port, as Prefect does
                self.port = _free_port()
                self.process = self._spawn()
                continue
            if code is not None:
                raise RuntimeError(f"Prefect's temporary server exited with status {code} before it answered")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")
        from prefect.context import refresh_global_settings_context

        os.environ["PREFECT_API_URL"] = self.api_url
        refresh_global_settings_context()  # threads without a settings context read the global one

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        _logger().info("Stopping temporary server on http://127.0.0.1:%d", self.port)
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_in_background() -> Callable[[], None] | None:
    """Start Prefect's temporary server when the run would need one; returns a function that waits
    until it answers (raising what went wrong) and makes it the run's API, or None when a server is
    configured or temporary servers are disabled (then Prefect behaves exactly as before)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    return TemporaryServer().wait


@contextlib.contextmanager
def heartbeats_only_if_configured() -> Iterator[None]:
    """Flow runs started here send Prefect's flow-run heartbeats only when the user configured
    them (`PREFECT_FLOWS_HEARTBEAT_FREQUENCY`, as Prefect's guide to detecting zombie flows says
    to; they feed an automation the user creates). Prefect 3.8 sends them by default, from a thread
    that sleeps in one-second steps and that the flow joins when it ends: up to 1 s added to every
    `asof run` (0.99 s in a profiled bench day) for events nothing reads. Runs of a deployment,
    started by Prefect's worker or `serve`, do not pass here and keep Prefect's default."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    if "heartbeat_frequency" in get_current_settings().flows.model_fields_set:
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def preload() -> None:
    """Import the stages' heavy modules, parse the dbt project and pay the stages' other one-time
    costs (flows.orchestration.head_start) now, while a server starts on the other core. Best effort
    only: whatever fails here (a broken package, a project that does not parse) fails again in the
    stage that needs it, which records it for its dates as it always did.

    The warm-ups come here, not beside the first chunk's ingest: a small chunk's ingest is Python
    (a file's parsing and bookkeeping) as much as Arrow, and shared the interpreter with them (the
    demo's 30 days: ingest 1.5-1.9 s alone, ~5.5 s beside them)."""
    for name in STAGE_MODULES:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    with contextlib.suppress(Exception):
        from flows.transform.stage import parse_project

        parse_project()
    head_start.pay_all()
