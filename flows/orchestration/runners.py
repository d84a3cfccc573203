"""Where a flow's parallel tasks run: the default thread pool, or a Dask cluster.

Why a module of its own: the pipeline (flows/pipeline.py) only says *what* may run in parallel
(`ingest_source.submit`, one task per source and chunk); *where* is the caller's choice, made by
handing a Prefect task runner to `flow.with_options(task_runner=...)`. Running tasks in other
processes (or on other hosts) needs three things this module takes care of, none of which belongs
in the pipeline:

* a Dask cluster that binds 127.0.0.1 only (LocalCluster's dashboard binds every interface by
  default): `local_cluster`;
* one Prefect API for the flow and its workers: without `PREFECT_API_URL`, every Dask worker
  process would start its own temporary Prefect server (10-20 s each, on the same SQLite file).
  `shared_prefect_api` starts the temporary server once, here, and passes its URL to the workers
  through the task context;
* the same asof configuration on every worker: a task reads `ASOF_HOME`, `ASOF_LAKE_URI` and
  `ASOF_STORAGE_OPTIONS` (flows/config.py) from the environment of the process it runs in. Workers of
  a local cluster are started from this process and inherit its environment. Workers of an existing
  cluster (`--address`) must have been started with the same values (and see the same landing files
  and lake); `check_workers` compares home and lake URI (never the storage options, which hold
  secrets) and refuses to run on a mismatch rather than write a different lake.

Importing this module is cheap (no Prefect, no Dask): the CLI imports it to parse its options.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flows.config import settings

if TYPE_CHECKING:
    from distributed import Client, LocalCluster
    from prefect.task_runners import TaskRunner

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 2
WORKER_WAIT_S = 30.0
_ADDRESS = re.compile(r"(tcp|tls|inproc|ucx|ws|wss)://[^\s/]+")


class Runner(enum.StrEnum):
    """`--runner` choices."""

    threads = "threads"
    dask = "dask"


class RunnerError(RuntimeError):
    """The task runner cannot be set up (bad address, no workers, workers configured differently)."""


@dataclass(frozen=True)
class DaskOptions:
    """How to reach (or start) the Dask cluster.

    address: scheduler of an existing cluster (`tcp://host:port`); None starts a local cluster of
    `n_workers` single-threaded worker processes on 127.0.0.1, closed when the run ends.
    dashboard_port: local cluster only; None = no dashboard, 0 = any free port (needs `bokeh`).
    """

    address: str | None = None
    n_workers: int = DEFAULT_WORKERS
    dashboard_port: int | None = None

    def __post_init__(self) -> None:
        if self.address is not None and not _ADDRESS.fullmatch(self.address):
            raise RunnerError(
                f"--address {self.address!r}: expected a scheduler address like tcp://host:8786"
            )
        if self.n_workers < 1:
            raise RunnerError(f"--workers must be >= 1, got {self.n_workers}")
        if self.dashboard_port is not None and not 0 <= self.dashboard_port <= 65535:
            raise RunnerError(f"--dashboard-port must be 0-65535, got {self.dashboard_port}")


# ---------------------------------------------------------------- worker configuration


def worker_config() -> dict[str, str]:
    """The asof configuration as a process sees it (run on each worker by `check_workers`).

    The storage options appear only as a short digest: they hold credentials."""
    s = settings()
    opts = repr(sorted(s.storage_options.items())).encode()
    return {
        "ASOF_HOME": str(s.home),
        "ASOF_LAKE_URI": s.lake_uri,
        "storage_options_sha256": hashlib.sha256(opts).hexdigest()[:12],
    }


def check_workers(client: Client, wait_s: float = WORKER_WAIT_S) -> int:
    """Refuse to run on workers that would read other landing files or write another lake.

    Waits up to `wait_s` for a first worker; returns the number of workers."""
    try:
        client.wait_for_workers(1, timeout=wait_s)
    except TimeoutError:
        raise RunnerError(
            f"no Dask worker joined scheduler {client.scheduler.address} in {wait_s:.0f}s"
        ) from None
    try:
        seen: dict[str, dict[str, str]] = client.run(worker_config)
    except ImportError as exc:
        raise RunnerError(
            f"Dask workers cannot import the asof package (install it on them): {exc}"
        ) from None
    mine = worker_config()
    for worker, theirs in sorted(seen.items()):
        for key in ("ASOF_HOME", "ASOF_LAKE_URI"):
            if theirs.get(key) != mine[key]:
                raise RunnerError(
                    f"Dask worker {worker} has {key}={theirs.get(key)} but this run has {mine[key]}: "
                    "start the workers with the same ASOF_HOME / ASOF_LAKE_URI / ASOF_STORAGE_OPTIONS "
                    "(on shared storage) as the command that submits to them"
                )
        if theirs.get("storage_options_sha256") != mine["storage_options_sha256"]:
            log.warning("Dask worker %s has different ASOF_STORAGE_OPTIONS than this run", worker)
    return len(seen)


# ---------------------------------------------------------------- cluster and Prefect API


@contextlib.contextmanager
def local_cluster(
    n_workers: int = DEFAULT_WORKERS, dashboard_port: int | None = None
) -> Iterator[LocalCluster]:
    """A Dask LocalCluster of worker processes, every socket on 127.0.0.1, closed on exit.

    The scheduler's HTTP endpoint (health, and the dashboard when asked for) listens on a free port
    of 127.0.0.1 rather than the fixed 8787, so two runs never collide. Worker processes are spawned
    from this process: they inherit its environment (ASOF_*), and the calling program's main module
    must be import-safe (`if __name__ == "__main__":`), as the `asof` console script is.
    """
    from distributed import LocalCluster

    port = 0 if dashboard_port is None else dashboard_port
    with LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=f"127.0.0.1:{port}",
        scheduler_kwargs={"dashboard": dashboard_port is not None},
        worker_dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster


def _is_loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


@contextlib.contextmanager
def shared_prefect_api(remote: bool = False) -> Iterator[str]:
    """One Prefect API for the flow process and every Dask worker; yields its URL.

    With `PREFECT_API_URL` set (a server, or a test harness) nothing changes. Otherwise Prefect would
    start a temporary server in each process that talks to the API; start it once here and set its
    URL for the block: the task context sent to each worker carries the setting along.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value()
    if url:
        yield url
        return
    if remote:
        raise RunnerError(
            "set PREFECT_API_URL to a Prefect server the Dask workers can reach: without it, the run "
            "would start a temporary server on 127.0.0.1 that workers on other hosts cannot report to"
        )
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the process-wide instance Prefect's own client would start
    server.start()
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield server.api_url


@contextlib.contextmanager
def task_runner(kind: Runner | str, dask: DaskOptions | None = None) -> Iterator[TaskRunner | None]:
    """The task runner for a flow run: None means the flow's own default (a thread pool).

    `with task_runner("dask") as r: (flow.with_options(task_runner=r) if r else flow)(...)`; the
    cluster (if this started one) lives exactly as long as the block.
    """
    kind = Runner(kind)
    if kind is Runner.threads:
        if dask is not None and dask.address:
            raise RunnerError("--address needs --runner dask")
        yield None
        return
    dask = dask or DaskOptions()
    from distributed import Client
    from prefect_dask import DaskTaskRunner

    with contextlib.ExitStack() as stack:
        address = dask.address
        stack.enter_context(shared_prefect_api(remote=address is not None and not _is_loopback(address)))
        if address is None:
            cluster = stack.enter_context(local_cluster(dask.n_workers, dask.dashboard_port))
            address = cluster.scheduler_address
            if dask.dashboard_port is not None:
                log.warning("Dask dashboard: %s", cluster.dashboard_link)
        try:
            probe = stack.enter_context(Client(address, timeout="20s", set_as_default=False))
        except OSError as exc:
            raise RunnerError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        n = check_workers(probe)
        log.info("running parallel tasks on %d Dask worker(s) at %s", n, address)
        # By address, not by cluster object: Prefect runs a *copy* of the runner
        # (`TaskRunner.duplicate()`), which keeps the address but would drop a cluster object and
        # start a default LocalCluster (listening on every interface) instead.
        yield DaskTaskRunner(address=address)
