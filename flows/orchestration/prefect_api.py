"""The Prefect API of a command-line run, started while the run loads its stages.

Without `PREFECT_API_URL`, Prefect starts a temporary server (a `prefect.server` subprocess on
127.0.0.1) the first time a flow needs its API, and the flow waits for it: 8-14 s of a 30-day demo
backfill, most of it the server importing itself, one core busy while the other idles. The stages'
own imports (GE, dbt, Feast: 5-8 s) came only after that, one after the other. `start_in_background`
starts the same server (Prefect's process-wide `SubprocessASGIServer`, the instance its client would
have started) on a thread, so `preload` can import the stages on the other core meanwhile; the flow
then finds the server running. With a server configured nothing changes and nothing is preloaded:
a run against a live server pays each import only if it gets to that stage.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable

# What the stages import when they first run (the heavy part of a fresh process; the flows modules
# themselves import these lazily, so `asof --help` and `asof status` stay light).
STAGE_MODULES = (
    "great_expectations",  # validation
    "flows.validation.stage",
    "flows.validation.datadocs",
    "dbt.cli.main",  # transform
    "dbt.adapters.duckdb",
    "flows.transform.stage",
    "feast",  # materialize
    "flows.features.feast_offline",
    "flows.features.featurestore",
)


def start_in_background() -> Callable[[], None] | None:
    """Start Prefect's temporary server on a thread when the run would need one; returns a function
    that waits until it answers (re-raising what went wrong), or None when a server is configured
    or temporary servers are disabled (then Prefect behaves exactly as before)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    errors: list[BaseException] = []

    def start() -> None:
        try:
            SubprocessASGIServer().start()
        except BaseException as exc:  # handed to the caller's thread by wait()
            errors.append(exc)

    thread = threading.Thread(target=start, name="prefect-temporary-server", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if errors:
            raise errors[0]

    return wait


def preload() -> None:
    """Import the stages' heavy modules and parse the dbt project now (while a server starts on the
    other core). Best effort only: whatever fails here (a broken package, a project that does not
    parse) fails again in the stage that needs it, which records it for its dates as it always did."""
    for name in STAGE_MODULES:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    with contextlib.suppress(Exception):
        from flows.transform.stage import parse_project

        parse_project()
