"""A warm process for `asof run` and `asof backfill`: the stages' imports paid once, not per run.

A fresh `asof run --date D` spends about 7 s of a bench day's ~20 s importing Prefect, Great
Expectations, dbt and Feast and loading dbt's manifest, before and between the stages (cProfile:
docs/scaling.md). `asof warm` (started by `make serve`, or by hand) imports all of that once and
waits on a Unix socket; `asof run` and `asof backfill` then hand their command line, environment,
working directory and terminal (stdin, stdout, stderr, passed as file descriptors) to it, and it
forks a child that runs the command exactly as the `asof` process would have: same code, same
arguments, same output on the same terminal, same exit status (sent back when the child ends).
Signals the client receives (Ctrl-C, SIGTERM) are forwarded to the child.

A command runs in the caller's own process instead ("cold", as before) whenever the warm process
could run it differently: no socket, `ASOF_WARM=0`, another user, another Python, code of `flows/`
changed since the warm process started, or a different value of any variable read when a module
is imported (Prefect reads its settings on import): `ASOF_*`, `PREFECT_*`, `DBT_*`, `GX_*`, `FEAST_*`,
`OPENLINEAGE_*`, `AWS_*`, `PYTHON*`. The socket lives in `$ASOF_HOME/run/` (mode 0700) and the
warm process serves only its own user (SO_PEERCRED): nothing listens on a network address.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flows.config import REPO_ROOT, settings

WARM_COMMANDS = ("run", "backfill")
ENV_PREFIXES = ("ASOF_", "PREFECT_", "DBT_", "GX_", "FEAST_", "OPENLINEAGE_", "AWS_", "PYTHON")
# What the warm process imports before it waits (the stages' modules, Prefect, the flows, the CLI).
PRELOAD = ("prefect", "prefect.flows", "flows.pipeline", "flows.cli.main")
MAX_REQUEST = 4 * 2**20
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class WarmProcessError(RuntimeError):
    """The warm process cannot start (its socket is in use, or its directory is unusable)."""


def socket_path() -> Path:
    s = settings()
    return s.warm_socket


def code_fingerprint() -> str:
    """Which code a process runs: the interpreter and every module of `flows/` (path, size, mtime)."""
    digest = hashlib.sha256(sys.executable.encode())
    for path in sorted((REPO_ROOT / "flows").rglob("*.py")):
        st = path.stat()
        digest.update(f"{path.relative_to(REPO_ROOT)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def import_time_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables a module may read when it is imported (see the module docstring)."""
    return {k: v for k, v in env.items() if k.startswith(ENV_PREFIXES)}


def wanted(argv: Sequence[str]) -> bool:
    """Whether `asof <argv>` should try the warm process: a pipeline command, not its --help."""
    if not argv or argv[0] not in WARM_COMMANDS or "--help" in argv:
        return False
    s = settings()
    return s.warm and s.warm_socket.exists()


# ------------------------------------------------------------------------------------ the client


def run_warm(argv: Sequence[str]) -> int | None:
    """Run `asof <argv>` in the warm process; its exit status, or None to run it here (cold)."""
    path = socket_path()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(5)
        conn.connect(str(path))
        request = {
            "argv": list(argv),
            "env": dict(os.environ),
            "cwd": os.getcwd(),
            "fingerprint": code_fingerprint(),
        }
        socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(None)
        replies = _lines(conn)
        first = next(replies, None)
    except OSError:
        conn.close()
        return None  # no warm process listening (a stale socket file): run here
    if first is None or "cold" in first:
        conn.close()
        return None
    pid = int(first["pid"])
    previous = {sig: signal.signal(sig, _forward_to(pid)) for sig in FORWARDED_SIGNALS}
    try:
        for reply in replies:
            if "exit" in reply:
                return int(reply["exit"])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        conn.close()
    print(f"asof: error: the warm run (process {pid}) ended without an exit status", file=sys.stderr)
    return 1


def _forward_to(pid: int) -> Callable[[int, Any], None]:
    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    return forward


def _lines(conn: socket.socket):
    """JSON objects, one a line, until the peer closes."""
    buf = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield json.loads(line)


# ------------------------------------------------------------------------ starting one (a service)


def start(env: Mapping[str, str], log_path: Path, timeout_s: float = 300.0):
    """Start `asof warm` in its own session with `env` (its ASOF_HOME decides the socket) and wait
    until it listens: how a service manager, the bench and the tests run one. Returns the Popen;
    stop it with SIGTERM to its process group. Raises WarmProcessError with the log's tail if it
    exits or does not listen within `timeout_s`."""
    import subprocess

    home = Path(env.get("ASOF_HOME") or "data")
    sock = Path(env["ASOF_WARM_SOCKET"]) if env.get("ASOF_WARM_SOCKET") else home / "run" / "warm.sock"
    asof = str(Path(sys.executable).parent / "asof")
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [asof, "warm"], env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + timeout_s
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            raise WarmProcessError(f"asof warm did not start listening: {log_path.read_text()[-1500:]}")
        time.sleep(0.2)
    return proc


# ----------------------------------------------------------------------------- the warm process


def preload() -> None:
    """Import what a run imports and pay every stage's one-time costs once: `prefect_api.preload`
    (the stages' modules, dbt's parse, then GE's context and checkpoints, dbt's first invocation
    and Feast's modules: flows.orchestration.head_start). Best effort, like `prefect_api.preload`:
    what fails here fails again in the run that needs it."""
    import importlib

    from flows.orchestration import prefect_api

    for name in PRELOAD:
        importlib.import_module(name)
    prefect_api.preload()


def serve(run_command: Callable[[], None], path: Path | None = None) -> None:
    """Preload, then serve requests on `path` until SIGTERM or SIGINT (`asof warm`). A child runs
    `run_command()` with `sys.argv` set to the request's command line (it must not hand the command
    to a warm process again)."""
    path = path or socket_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    if _listening(path):
        raise WarmProcessError(f"a warm process already listens on {path}")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    t = time.perf_counter()
    # the environment as it was handed over: what preloading sets (a stage's own defaults) a cold
    # run sets for itself too, and the child gets the client's environment as it is
    env = import_time_env(os.environ)
    fingerprint = code_fingerprint()
    preload()
    sys.stdout.flush()
    sys.stderr.flush()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        server.bind(str(path))
    finally:
        os.umask(old_umask)
    server.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    stop = {"now": False}

    def on_stop(_signum: int, _frame: Any) -> None:
        stop["now"] = True
        server.close()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    print(f"asof warm: ready in {time.perf_counter() - t:.1f} s, listening on {path}", flush=True)
    try:
        while not stop["now"]:
            try:
                conn, _ = server.accept()
            except OSError:
                break  # closed by on_stop
            _handle(conn, server, env, fingerprint, run_command)
    finally:
        with contextlib.suppress(OSError):
            server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _listening(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _handle(
    conn: socket.socket,
    server: socket.socket,
    env: dict[str, str],
    fingerprint: str,
    run_command: Callable[[], None],
) -> None:
    fds: list[int] = []
    try:
        if _peer_uid(conn) != os.getuid():
            _reply(conn, {"cold": "another user"})
            return
        data, fds, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST, 3)
        while len(data) < MAX_REQUEST and (more := conn.recv(65536)):
            data += more
        request = json.loads(data)
        why = cold_reason(request, env, fingerprint, fds)
        if why:
            _reply(conn, {"cold": why})
            return
        pid = os.fork()
        if pid == 0:  # the child: never returns
            server.close()
            _run_child(conn, request, fds, run_command)
        print(f"asof warm: process {pid}: asof {' '.join(request['argv'])}", flush=True)
    except Exception as exc:  # a malformed request must not end the warm process
        with contextlib.suppress(OSError):
            _reply(conn, {"cold": f"{type(exc).__name__}: {exc}"})
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        conn.close()


def cold_reason(request: dict, env: dict[str, str], fingerprint: str, fds: list[int]) -> str | None:
    if len(fds) != 3:
        return "no terminal handed over"
    if request.get("fingerprint") != fingerprint:
        return "the code changed since the warm process started (restart it)"
    if import_time_env(request.get("env") or {}) != env:
        return "another environment"
    return None


def _reply(conn: socket.socket, message: dict) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _run_child(conn: socket.socket, request: dict, fds: list[int], run_command: Callable[[], None]) -> None:
    """Become `asof <argv>` on the client's terminal; send its exit status; exit."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _reply(conn, {"pid": os.getpid()})
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        fds.clear()
        # line-buffered like a terminal-started process, whatever the warm process's own streams were
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's stdin for its lifetime
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["asof", *request["argv"]]
        try:
            run_command()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:
            code = 130
    except BaseException:  # a bug here must still end the client's wait
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(OSError):
            _reply(conn, {"exit": code})
        os._exit(code)
