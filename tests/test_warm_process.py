"""The warm process (`asof warm`, flows/orchestration/warm_process.py): a command handed to it runs in
a forked child with the caller's arguments, environment, directory and terminal, writes exactly the
tables a run in the caller's own process writes, and returns the same exit status; a caller whose
environment or code differs runs in its own process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flows.orchestration import local_server, warm_process

ASOF = [str(Path(sys.executable).parent / "asof")]
D1, D2 = "2024-03-01", "2024-03-02"
RUN_SPECIFIC = {"_ingested_at", "_validation_run_id", "_quarantined_at", "_validated_at"}


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory):
    """A real Prefect server on 127.0.0.1, as `make serve` runs one."""
    root = tmp_path_factory.mktemp("warm_prefect")
    port = local_server.free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    proc = local_server.start_server(port, env, root / "server.log")
    try:
        local_server.wait_healthy(port, timeout_s=180, proc=proc)
        yield {
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_HOME": str(root / "prefect"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
    finally:
        local_server.stop(proc)


def _env(home: Path, prefect: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASOF_", "PREFECT_"))}
    return {**env, **prefect, "ASOF_HOME": str(home), "COLUMNS": "200", **extra}


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory, prefect_server):
    """Two homes with the same two demo days landed; a warm process serving the first."""
    root = tmp_path_factory.mktemp("warm")
    warm, cold = root / "warm", root / "cold"
    gen = subprocess.run(
        [*ASOF, "generate", "--start", D1, "--end", D2, "--scale", "demo", "--seed", "7"],
        env=_env(warm, prefect_server),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert gen.returncode == 0, gen.stderr
    shutil.copytree(warm / "landing", cold / "landing")
    daemon = warm_process.start(_env(warm, prefect_server), root / "warm.log", timeout_s=180)
    sock = warm / "run" / "warm.sock"
    try:
        yield {"warm": warm, "cold": cold, "daemon": daemon, "socket": sock, "prefect": prefect_server}
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=30)


def _run_records(home: Path) -> list[dict]:
    from deltalake import DeltaTable

    return DeltaTable(str(home / "lake" / "ops" / "runs")).to_pyarrow_table().to_pylist()


def _table(path: Path):
    from deltalake import DeltaTable

    t = DeltaTable(str(path)).to_pyarrow_table()
    t = t.drop([c for c in t.column_names if c in RUN_SPECIFIC])
    nested = ("list", "struct", "map")
    keys = [c for c in t.column_names if not str(t.schema.field(c).type).startswith(nested)]
    return t.sort_by([(c, "ascending") for c in keys])


def test_a_backfill_in_the_warm_process_writes_what_a_cold_one_writes(homes) -> None:
    warm, cold = homes["warm"], homes["cold"]
    client = subprocess.Popen(
        [*ASOF, "backfill", "--start", D1, "--end", D2],
        env=_env(warm, homes["prefect"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = client.communicate(timeout=600)
    assert client.returncode == 0, (out, err)
    assert "succeeded=2" in out  # the child's output reached the caller's stdout
    pids = {r["pid"] for r in _run_records(warm)}
    assert client.pid not in pids and len(pids) == 1  # it ran in one forked child, not the caller

    res = subprocess.run(
        [*ASOF, "backfill", "--start", D1, "--end", D2],
        env=_env(cold, homes["prefect"], ASOF_WARM="0"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    compared = 0
    for layer in ("bronze", "silver", "quarantine", "gold"):
        for table in sorted((cold / "lake" / layer).iterdir()):
            assert _table(table).equals(_table(warm / "lake" / layer / table.name)), f"{layer}/{table.name}"
            compared += 1
    assert compared >= 10


def test_usage_errors_and_exit_status_come_back_through_the_warm_process(homes) -> None:
    res = subprocess.run(
        [*ASOF, "backfill", "--start", D2, "--end", D1],
        env=_env(homes["warm"], homes["prefect"]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert "before start" in res.stderr


def test_a_caller_with_another_environment_runs_in_its_own_process(homes, monkeypatch) -> None:
    for key, value in _env(homes["warm"], homes["prefect"]).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ASOF_CHUNK_DAYS", "3")  # read when flows.pipeline is imported
    assert warm_process.wanted(["run", "--date", D1])
    assert warm_process.run_warm(["run", "--date", D1]) is None
    assert not warm_process.wanted(["run", "--help"])
    monkeypatch.setenv("ASOF_WARM", "0")
    assert not warm_process.wanted(["run", "--date", D1])


def test_the_warm_process_refuses_other_code_and_a_missing_terminal() -> None:
    env = {"ASOF_HOME": "/x", "PREFECT_API_URL": "http://127.0.0.1:1/api"}
    request = {"fingerprint": "a", "env": dict(env)}
    assert warm_process.cold_reason(request, env, "a", [0, 1, 2]) is None
    assert "code changed" in warm_process.cold_reason(request, env, "b", [0, 1, 2])
    assert "terminal" in warm_process.cold_reason(request, env, "a", [0])
    other = {**request, "env": {**env, "PREFECT_API_URL": "http://127.0.0.1:2/api"}}
    assert "environment" in warm_process.cold_reason(other, env, "a", [0, 1, 2])
    unrelated = {**request, "env": {**env, "TERM": "dumb"}}
    assert warm_process.cold_reason(unrelated, env, "a", [0, 1, 2]) is None


def test_preloading_pays_dbt_and_ge_first_costs_without_touching_the_lake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """What the warm process does before it forks (`preload`): every dbt macro compiled into dbt's
    template cache, every GE checkpoint loaded and its freshness checked once, and nothing else:
    no lake written or read (a deltalake runtime made before a fork does not survive it), no
    thread left running, nothing printed on the warm process's own output."""
    import importlib

    from dbt_common.clients.jinja import template_cache

    from flows.orchestration import prefect_api
    from flows.transform.stage import parse_project, parsed_manifest
    from flows.validation import suites
    from flows.validation.contracts import EXPECTATIONS_DIR

    monkeypatch.setenv("ASOF_HOME", str(tmp_path))
    # what is imported and parsed before the warm-ups (their threads are their own: dbt's static
    # parser keeps a pool); the warm-ups themselves are what must start no thread
    for name in (*warm_process.PRELOAD, *prefect_api.STAGE_MODULES):
        importlib.import_module(name)
    parse_project()
    capfd.readouterr()
    threads = len(os.listdir("/proc/self/task"))
    warm_process.preload()
    assert len(os.listdir("/proc/self/task")) == threads
    assert not (tmp_path / "lake").exists()
    assert capfd.readouterr().out == ""
    cached = template_cache.file_cache
    assert all(m.macro_sql in cached for m in parsed_manifest().macros.values())
    ctx = suites.ge_context()
    names = sorted(p.stem for p in (EXPECTATIONS_DIR / "checkpoints").glob("*.json"))
    assert len(names) == 8
    for name in names:
        cp = suites.checkpoint(ctx, name)
        assert suites.freshness_known(cp)  # not checked again in a run


def test_sigterm_stops_the_warm_process_and_removes_its_socket(homes) -> None:
    daemon, sock = homes["daemon"], homes["socket"]
    assert sock.stat().st_mode & 0o777 == 0o600
    assert (sock.parent.stat().st_mode & 0o777) == 0o700
    os.killpg(daemon.pid, signal.SIGTERM)
    assert daemon.wait(timeout=30) is not None
    assert not sock.exists()
