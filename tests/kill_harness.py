"""Harness for the kill and concurrency tests: real `asof` processes, killed for real, cheaply.

Every `asof` process pays ~30 s of imports here (Prefect, Great Expectations, dbt, Feast) and ~15 s
more to start an ephemeral Prefect server. The harness pays both once:

- one Prefect server on 127.0.0.1 (its own PREFECT_HOME) that every run talks to;
- a *zygote*: a process that imports the whole pipeline once, then `fork()`s one child per
  requested command. Each child is an ordinary OS process running `flows.cli.main.main()` with its own
  environment (ASOF_HOME, ASOF_CRASH_AT, ...), exactly as `.venv/bin/asof ...` would after its
  imports. A child killed with SIGKILL dies like any `asof` process; its pid is reaped by the zygote.

Also here: landing-data templates and a content snapshot of a data root (every Delta table without
the columns that legitimately differ between runs, plus the Feast online store), used to compare
an interrupted-then-rerun lake with an uninterrupted one.

Run `python tests/kill_harness.py --zygote` only through `Zygote` (it speaks JSON lines).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import faulthandler
import hashlib
import itertools
import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable

# Columns whose values legitimately differ between two runs over the same inputs (wall-clock times,
# run ids and paths derived from them). Everything else must be identical.
VOLATILE = {
    "_ingested_at",
    "_quarantined_at",
    "_validation_run_id",
    "ingested_at",
    "validated_at",
    "validation_run_id",
    "data_docs_path",
    "recorded_at",
}
# Logs of what happened (append-only by design), not state.
LOG_TABLES = {"ops/runs", "ops/releases", "ops/metrics"}


# ------------------------------------------------------------------------------------ snapshots


def table_rows(path: Path) -> list[str]:
    from deltalake import DeltaTable

    tbl = DeltaTable(str(path)).to_pyarrow_table()
    keep = [c for c in tbl.column_names if c not in VOLATILE]
    return sorted(json.dumps(r, default=str, sort_keys=True) for r in tbl.select(keep).to_pylist())


def online_rows(home: Path) -> dict[str, list[str]]:
    db = home / "feast" / "online.db"
    if not db.exists():
        return {}
    out: dict[str, list[str]] = {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for name in sorted(names):
            cols = [r[1] for r in con.execute(f'PRAGMA table_info("{name}")')]
            keep = [c for c in cols if c not in ("created_ts",)]
            sel = ", ".join(f'"{c}"' for c in keep)
            rows = con.execute(f'SELECT {sel} FROM "{name}"').fetchall()
            out[f"online/{name}"] = sorted(
                json.dumps([v.hex() if isinstance(v, bytes) else v for v in r], default=str) for r in rows
            )
    finally:
        con.close()
    return out


def snapshot(home: Path) -> dict[str, list[str]]:
    """Every Delta table of the data root (minus VOLATILE columns and LOG_TABLES) and the online
    store, as sorted row lists."""
    out: dict[str, list[str]] = {}
    lake = home / "lake"
    for layer in sorted(p for p in lake.iterdir() if p.is_dir()) if lake.exists() else []:
        for tbl in sorted(p for p in layer.iterdir() if (p / "_delta_log").exists()):
            key = f"{layer.name}/{tbl.name}"
            if key not in LOG_TABLES:
                out[key] = table_rows(tbl)
    out.update(online_rows(home))
    return out


def digest(snap: dict[str, list[str]]) -> dict[str, str]:
    return {k: hashlib.sha256("\n".join(v).encode()).hexdigest()[:16] for k, v in snap.items()}


def diff(expected: dict[str, list[str]], got: dict[str, list[str]], limit: int = 3) -> str:
    """A readable account of how two snapshots differ ('' when equal)."""
    lines = []
    for key in sorted(set(expected) | set(got)):
        a, b = expected.get(key) or [], got.get(key) or []  # an empty table = no table
        if a == b:
            continue
        sa, sb = set(a), set(b)
        lines.append(f"{key}: {len(a)} vs {len(b)} rows")
        lines += [f"  - {r[:300]}" for r in sorted(sa - sb)[:limit]]
        lines += [f"  + {r[:300]}" for r in sorted(sb - sa)[:limit]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ run records


_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def asof_home(home: Path):
    """Point this process's `flows` modules at `home` (serialised: the environment is global)."""
    with _ENV_LOCK:
        old = os.environ.get("ASOF_HOME")
        os.environ["ASOF_HOME"] = str(home)
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("ASOF_HOME", None)
            else:
                os.environ["ASOF_HOME"] = old


def date_statuses(home: Path, start: dt.date, end: dt.date) -> dict[dt.date, str]:
    from flows.operations import runs

    with asof_home(home):
        return runs.date_status(runs.latest(start, end))


# ------------------------------------------------------------------------------------ the zygote

PRELOAD = (
    "flows.cli.main",
    "flows.pipeline",
    "flows.validation.stage",
    "flows.validation.quarantine",
    "flows.validation.datadocs",
    "flows.transform.stage",
    "flows.transform.lake_io",
    "flows.features.featurestore",
    "flows.features.feast_offline",
    "flows.features.training",
    "dbt.cli.main",
    "great_expectations",
    "feast",
)


def _zygote_main() -> None:  # pragma: no cover - runs in the zygote process
    import importlib

    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    # parse the dbt project once: children reuse the manifest (re-parsed if the project changes)
    with contextlib.suppress(Exception):
        importlib.import_module("flows.transform.stage").parse_project()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints must not corrupt the protocol

    def say(msg: dict) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()

    native = len(os.listdir(f"/proc/{os.getpid()}/task")) if Path("/proc").exists() else None
    say({"ready": True, "threads": threading.active_count(), "native_threads": native, "pid": os.getpid()})
    children: dict[int, int] = {}
    buf = b""
    stdin = sys.stdin.fileno()
    open_ = True
    while open_ or children:
        if open_:
            ready, _, _ = select.select([stdin], [], [], 0.05)
            if ready:
                chunk = os.read(stdin, 65536)
                if not chunk:
                    open_ = False
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    req = json.loads(line)
                    pid = os.fork()
                    if pid == 0:
                        _child(req)
                    children[pid] = req["id"]
                    say({"id": req["id"], "pid": pid})
        else:
            time.sleep(0.05)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            say({"id": children.pop(pid), "rc": os.waitstatus_to_exitcode(status)})


def _child(req: dict) -> None:  # pragma: no cover - runs in a forked child
    code = 1
    try:
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for k, v in req["env"].items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        os.chdir(req.get("cwd") or str(REPO))
        # `kill -USR1 <pid>` writes every thread's stack to the log (the harness does it on timeout)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        sys.argv = ["asof", *req["argv"]]
        from flows.cli import main as cli

        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


@dataclass
class Run:
    """One forked `asof` child."""

    id: int
    argv: list[str]
    log: Path
    pid: int | None = None
    rc: int | None = None
    started: float = field(default_factory=time.monotonic)
    elapsed: float | None = None
    done: threading.Event = field(default_factory=threading.Event)
    has_pid: threading.Event = field(default_factory=threading.Event)

    @property
    def killed(self) -> bool:
        return self.rc == -signal.SIGKILL

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Zygote:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._proc = subprocess.Popen(
            [PY, str(Path(__file__).resolve()), "--zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(log, "ab"),  # noqa: SIM115 - lives as long as the zygote
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        self._lock = threading.Lock()
        self._runs: dict[int, Run] = {}
        self._ids = itertools.count(1)
        self._ready = threading.Event()
        self.info: dict = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            msg = json.loads(line)
            if msg.get("ready"):
                self.info = msg
                self._ready.set()
                continue
            run = self._runs[msg["id"]]
            if "pid" in msg:
                run.pid = msg["pid"]
                run.has_pid.set()
            if "rc" in msg:
                run.rc = msg["rc"]
                run.elapsed = time.monotonic() - run.started
                run.done.set()
        self._ready.set()
        for run in list(self._runs.values()):  # the zygote died: nothing more will finish
            run.has_pid.set()
            run.done.set()

    def wait_ready(self, timeout: float = 300) -> None:
        if not self._ready.wait(timeout) or not self.info:
            raise RuntimeError(f"zygote did not start; see {self.log}:\n{self.log.read_text()[-3000:]}")

    def start(self, argv: list[str], env: dict[str, str | None], log: Path) -> Run:
        self.wait_ready()
        run = Run(next(self._ids), list(argv), log)
        with self._lock:
            self._runs[run.id] = run
            assert self._proc.stdin is not None
            self._proc.stdin.write(
                (json.dumps({"id": run.id, "argv": run.argv, "env": env, "log": str(log)}) + "\n").encode()
            )
            self._proc.stdin.flush()
        return run

    def wait(self, run: Run, timeout: float = 300) -> Run:
        if not run.done.wait(timeout):
            run.has_pid.wait(5)
            if run.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(run.pid, signal.SIGUSR1)  # stacks into the log
                    time.sleep(2)
                    os.kill(run.pid, signal.SIGKILL)
            run.done.wait(30)
            raise TimeoutError(
                f"asof {' '.join(run.argv)} did not finish in {timeout}s; log {run.log}; its end:\n"
                + run.output()[-6000:]
            )
        return run

    def run(self, argv: list[str], env: dict[str, str | None], log: Path, timeout: float = 300) -> Run:
        return self.wait(self.start(argv, env, log), timeout)

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(Exception):
                assert self._proc.stdin is not None
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()


# ------------------------------------------------------------------------------------ the harness


class Harness:
    """A Prefect server + a zygote + landing templates, shared by every kill/concurrency test of
    the session (started on first use, stopped at exit)."""

    def __init__(self) -> None:
        from flows.orchestration import local_server as serve

        self.root = Path(tempfile.mkdtemp(prefix="asof_kill_"))
        self.prefect_home = self.root / "prefect_home"
        self.prefect_home.mkdir()
        self.port = serve.free_port()
        api = f"http://127.0.0.1:{self.port}/api"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ASOF_", "PREFECT_"))}
        self.env = {
            **base,
            "PREFECT_HOME": str(self.prefect_home),
            "PREFECT_API_URL": api,
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            "GX_ANALYTICS_ENABLED": "false",
            "ASOF_HOME": str(self.root / "zygote_home"),
            "ASOF_LOCK_TIMEOUT_S": "300",
            # fork() copies only the forking thread: no worker pool may exist in the zygote. dbt's
            # static parser (dbt_extractor) starts a rayon pool whose threads a forked child would
            # wait for forever when it re-parses a changed project; BLAS starts idle servers.
            "DBT_STATIC_PARSER": "false",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
        }
        self.server = serve.start_server(self.port, self.env, self.root / "prefect_server.log")
        self.zygote = Zygote(self.env, self.root / "zygote.log")
        self.templates: dict[tuple, Path] = {}
        self._refs: dict[tuple, tuple[Path, dict]] = {}
        self._tlock = threading.Lock()
        try:
            serve.wait_healthy(self.port, timeout_s=180, proc=self.server)
            self.zygote.wait_ready()
        except BaseException:
            self.close()
            raise

    def landing(self, start: dt.date, end: dt.date, scale: str, seed: int, faults: tuple = ()) -> Path:
        """A generated landing tree (cached): copy it into a home with `new_home`."""
        key = (start, end, scale, seed, faults)
        with self._tlock:
            if key not in self.templates:
                from flows.upstream import simulate

                dest = self.root / f"landing_{len(self.templates)}"
                simulate.generate(
                    dest,
                    start,
                    end,
                    simulate.parse_scale(scale),
                    seed=seed,
                    faults=[simulate.parse_fault(f) for f in faults],
                )
                self.templates[key] = dest
            return self.templates[key]

    def new_home(self, name: str, landing: Path | None = None, copy_from: Path | None = None) -> Path:
        home = self.root / name
        if home.exists():
            shutil.rmtree(home)
        if copy_from is not None:
            shutil.copytree(copy_from, home, symlinks=True)
            shutil.rmtree(home / "locks", ignore_errors=True)
        else:
            home.mkdir()
        if landing is not None and not (home / "landing").exists():
            shutil.copytree(landing, home / "landing")
        return home

    def asof(
        self,
        home: Path,
        *argv: str,
        crash_at: str | None = None,
        trace: Path | None = None,
        timeout: float = 300,
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> Run:
        """`asof *argv` in `home` through the zygote; `env`: more variables for this run only."""
        run_env: dict[str, str | None] = {
            "ASOF_HOME": str(home),
            "ASOF_CRASH_AT": crash_at,
            "ASOF_CRASH_TRACE": str(trace) if trace else None,
            **(env or {}),
        }
        logs = home.parent / f"{home.name}_logs"
        logs.mkdir(exist_ok=True)
        tag = (crash_at or "run").replace("/", "_").replace(":", "_")
        log = logs / f"{len(list(logs.iterdir())):03d}_{argv[0]}_{tag}.log"
        if wait:
            return self.zygote.run(list(argv), run_env, log, timeout)
        return self.zygote.start(list(argv), run_env, log)

    def reference(self, landing: Path, *argv: str) -> tuple[Path, dict[str, list[str]]]:
        """An uninterrupted run of `asof *argv` over `landing` in a fresh home (cached): its home
        (copy it before changing anything) and its snapshot."""
        key = (landing, argv)
        with self._tlock:
            if key in self._refs:
                return self._refs[key]
        home = self.new_home(f"reference_{len(self._refs)}_{argv[0]}", landing)
        run = self.asof(home, *argv)
        if run.rc != 0:
            raise RuntimeError(f"reference run failed:\n{run.output()[-3000:]}")
        with self._tlock:
            self._refs[key] = (home, snapshot(home))
            return self._refs[key]

    def close(self) -> None:
        from flows.orchestration import local_server as serve

        self.zygote.close()
        serve.stop(self.server)
        from flows.config import settings

        if not settings().keep_kill_homes:
            shutil.rmtree(self.root, ignore_errors=True)


_HARNESS: Harness | None = None
_HLOCK = threading.Lock()


def harness() -> Harness:
    global _HARNESS
    with _HLOCK:
        if _HARNESS is None:
            _HARNESS = Harness()
            atexit.register(close_harness)
        return _HARNESS


def close_harness() -> None:
    """Stop the session's harness (its Prefect server, its zygote), if one was started. conftest.py
    calls it when the test session ends: at the end of a full suite the atexit handler alone did
    not run in the pytest-xdist workers, and the server, in a session of its own, outlived the
    suite (two `prefect server start` processes left per run, one per worker)."""
    global _HARNESS
    with _HLOCK:
        started, _HARNESS = _HARNESS, None
    if started is not None:
        started.close()


def read_trace(path: Path) -> list[tuple[str, int]]:
    """(label, occurrence) in the order a run reached them (one process)."""
    out = []
    for line in path.read_text().splitlines():
        _pid, label, n, _when = line.split(" ")
        out.append((label, int(n)))
    return out


if __name__ == "__main__" and sys.argv[1:] == ["--zygote"]:
    sys.path.insert(0, str(REPO))
    _zygote_main()
