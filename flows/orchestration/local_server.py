"""`make serve`: a local Prefect server (127.0.0.1), the work pool, the deployments of
`prefect.yaml` and a worker, all in the foreground; Ctrl-C (or SIGTERM) stops everything cleanly.

It also serves the run artifacts' targets over HTTP on 127.0.0.1 (`--docs-port`, default the
Prefect port + 1): the validation Data Docs (`$ASOF_HOME/docs`) under `/docs/` and the monitoring
report (`$ASOF_HOME/reports`) under `/reports/`, and hands the worker `ASOF_DOCS_URL` /
`ASOF_REPORTS_URL` so every flow run's artifacts link there: a browser does not follow a file://
link from the Prefect UI.

State (Prefect's database, logs) stays under `$ASOF_HOME/prefect`.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from flows.config import REPO_ROOT, Settings, settings
from flows.orchestration import prefect_db
from flows.pages.static_files import NOT_SERVED, RootOnlyHandler

POOL = "asof-process"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(port: int, host: str = "127.0.0.1") -> dict[str, str]:
    """Everything a Prefect process needs to talk to this server (and only this one)."""
    home = settings().home
    api = f"http://{host}:{port}/api"
    env = dict(os.environ)
    env.update(
        {
            "ASOF_HOME": str(home),
            "ASOF_REPO": str(REPO_ROOT),
            "ASOF_DAILY_CRON": settings().daily_cron,
            "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(home / "prefect")),
            "PREFECT_API_URL": api,
            "PREFECT_UI_API_URL": api,
            "PREFECT_SERVER_API_HOST": host,
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    return env


def wait_healthy(port: int, timeout_s: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{port}/api/health"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server did not become healthy on {url} within {timeout_s:.0f}s")


def prefect(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).parent / "prefect")
    return subprocess.run([exe, *args], env=env, cwd=REPO_ROOT, check=check, capture_output=True, text=True)


def start_server(port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    exe = str(Path(sys.executable).parent / "prefect")
    prefect_db.seed(env)  # a new home's database from the migrated template: 12 s less
    log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the server process
    return subprocess.Popen(
        [exe, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


class _ArtifactHandler(RootOnlyHandler):
    """Serves `/docs/...` from the Data Docs site and `/reports/...` from the reports directory,
    nothing else of ASOF_HOME (the lake stays off the network, even on 127.0.0.1)."""

    roots: dict[str, Path] = {}

    def translate_path(self, path: str) -> str:
        for prefix, root in self.roots.items():
            if path == f"/{prefix}" or path.startswith(f"/{prefix}/"):
                self.directory = str(root)
                return super().translate_path(path[len(prefix) + 1 :] or "/")
        return NOT_SERVED

    def do_GET(self) -> None:
        if self.path in ("/", "/index.html"):
            body = (
                b"<!DOCTYPE html><html><head><meta charset='utf-8'><title>asof artifacts</title></head>"
                b"<body><h1>asof</h1><ul>"
                b"<li><a href='/docs/index.html'>validation reports (Data Docs)</a></li>"
                b"<li><a href='/reports/monitoring.html'>monitoring report</a></li>"
                b"<li><a href='/docs/dbt/static_index.html'>dbt docs</a> (built by asof docs --dbt)</li>"
                b"</ul></body></html>"
            )
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")  # pages are rewritten by every run
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class signature
        pass


class _ArtifactServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # the browser went away mid-page
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


def start_artifact_server(home: Path, port: int = 0, host: str = "127.0.0.1"):
    """Serve the Data Docs and the monitoring report of `home` from a background thread.

    Returns (server, base URL); `artifact_env(base)` is what a worker needs for its runs' links.
    Stop with `server.shutdown()`."""
    roots = {"docs": home / "docs", "reports": home / "reports"}
    handler = type("Handler", (_ArtifactHandler,), {"roots": roots})
    server = _ArtifactServer((host, port), functools.partial(handler, directory=str(home)))
    threading.Thread(target=server.serve_forever, name="asof-artifacts", daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}/"


def artifact_env(base_url: str) -> dict[str, str]:
    """Where the flows' artifacts link to (read through `flows.pages.links` by every artifact)."""
    return {Settings.docs_url.name: base_url + "docs/", Settings.reports_url.name: base_url + "reports/"}


def deploy(env: dict[str, str]) -> None:
    prefect(env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    res = prefect(env, "--no-prompt", "deploy", "--all", check=False)
    if res.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    exe = str(Path(sys.executable).parent / "prefect")
    log = open(log_path, "ab")  # noqa: SIM115
    return subprocess.Popen(
        [exe, "worker", "start", "--pool", POOL, "--type", "process"],
        env=env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen | None, timeout_s: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _stop_on_signal(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    # `kill` (SIGTERM) and Ctrl-C of a backgrounded `make serve` (SIGINT ignored by the shell) must
    # stop the server and the worker too: they run in their own sessions and would outlive us.
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=settings().prefect_port)
    parser.add_argument(
        "--docs-port",
        type=int,
        default=settings().docs_port,
        help="port serving Data Docs and the monitoring report (default: --port + 1)",
    )
    args = parser.parse_args()
    env = server_env(args.port)
    home = settings().home
    logs = home / "prefect" / "logs"
    server = worker = None
    artifacts = None
    try:
        print(f"starting Prefect server on http://127.0.0.1:{args.port} (logs: {logs})", flush=True)
        if settings().docs_url:  # served elsewhere (a team docs host): keep the user's URLs
            print(f"artifact links: {settings().docs_url} ({Settings.docs_url.name})", flush=True)
        else:
            artifacts, base = start_artifact_server(home, args.docs_port or args.port + 1)
            env.update(artifact_env(base))
            print(
                f"validation reports (Data Docs): {base}docs/index.html  (files: {home / 'docs'})\n"
                f"monitoring report:              {base}reports/monitoring.html  "
                f"(files: {home / 'reports'}; any range: asof monitor --html FILE)\n"
                f"dbt docs:                       {base}docs/dbt/static_index.html  (build: asof docs --dbt)",
                flush=True,
            )
        server = start_server(args.port, env, logs / "server.log")
        wait_healthy(args.port, proc=server)
        deploy(env)
        print(f"deployments: daily (cron '{env['ASOF_DAILY_CRON']}' UTC), backfill; pool {POOL}", flush=True)
        worker = start_worker(env, logs / "worker.log")
        print(f"worker started. UI: http://127.0.0.1:{args.port}  — Ctrl-C to stop", flush=True)
        print(
            "trigger a backfill: PREFECT_API_URL="
            + env["PREFECT_API_URL"]
            + " .venv/bin/prefect deployment run backfill/backfill -p start=2024-01-01 -p end=2024-01-07",
            flush=True,
        )
        while True:
            for name, proc in (("server", server), ("worker", worker)):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {proc.returncode}; see {logs}")
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping worker and server...", flush=True)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second Ctrl-C must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        stop(worker)
        stop(server)
        if artifacts is not None:
            artifacts.shutdown()


if __name__ == "__main__":
    main()
