"""`make serve`: a local Prefect server (127.0.0.1), the work pool, the deployments of
`prefect.yaml` and a worker, all in the foreground; Ctrl-C stops everything cleanly.

State (Prefect's database, logs) stays under `$ASOF_HOME/prefect`.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from flows.config import REPO_ROOT, settings

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
            "ASOF_DAILY_CRON": os.environ.get("ASOF_DAILY_CRON", "30 1 * * *"),
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
    log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the server process
    return subprocess.Popen(
        [exe, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("ASOF_PREFECT_PORT", "4200")))
    args = parser.parse_args()
    env = server_env(args.port)
    logs = settings().home / "prefect" / "logs"
    server = worker = None
    try:
        print(f"starting Prefect server on http://127.0.0.1:{args.port} (logs: {logs})", flush=True)
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
        stop(worker)
        stop(server)


if __name__ == "__main__":
    main()
