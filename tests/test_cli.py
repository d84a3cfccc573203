"""CLI argument validation: refused before anything runs, one clear line, nothing written."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.dates import DateError, parse_date, parse_range

ASOF = [sys.executable, "-m", "flows.cli.main"]


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ASOF_HOME": str(home)}
    return subprocess.run([*ASOF, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "--date", "2024-02-30"], "not a real calendar date"),
        (["run", "--date", "2024/01/01"], "not an ISO date"),
        (["run", "--date", "../etc"], "not an ISO date"),
        (["backfill", "--start", "2024-01-05", "--end", "2024-01-01"], "before start"),
        (["generate", "--start", "2024-01-01", "--end", "2024-01-02", "--scale", "huge"], "scale"),
        (["generate", "--start", "2024-01-01", "--end", "2024-01-02", "--inject", "boom@2024-01-01"], "boom"),
        (
            ["generate", "--start", "2024-01-01", "--end", "2024-01-02", "--inject", "nulls@2024-13-01"],
            "2024-13-01",
        ),
        (["status", "--start", "2024-01-01", "--end", "2023-12-31"], "before start"),
    ],
)
def test_bad_arguments_refused_and_nothing_written(tmp_path: Path, args: list[str], needle: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    res = run_cli(home, *args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("asof: error:"), res.stderr
    assert needle in lines[0]
    assert list(home.iterdir()) == []


def test_help_explains_every_command(tmp_path: Path) -> None:
    res = run_cli(tmp_path, "--help")
    assert res.returncode == 0
    for cmd in ("generate", "run", "backfill", "status"):
        assert cmd in res.stdout
        sub = run_cli(tmp_path, cmd, "--help")
        assert sub.returncode == 0 and "Usage" in sub.stdout


def test_status_with_no_runs(tmp_path: Path) -> None:
    res = run_cli(tmp_path, "status")
    assert res.returncode == 0 and "no runs recorded" in res.stdout


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_parse_date_accepts_only_real_iso_dates(text: str) -> None:
    try:
        day = parse_date(text)
    except DateError as exc:
        assert str(exc)  # a clear message, never another exception type
        return
    assert day.isoformat() == text.strip()


@settings(max_examples=200, deadline=None)
@given(st.dates(), st.dates())
def test_parse_range_orders(d1: dt.date, d2: dt.date) -> None:
    if d2 < d1:
        with pytest.raises(DateError):
            parse_range(d1.isoformat(), d2.isoformat())
    else:
        assert parse_range(d1.isoformat(), d2.isoformat()) == (d1, d2)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_run_without_a_server_starts_one_temporary_server_and_stops_it(tmp_path: Path) -> None:
    """No PREFECT_API_URL: the CLI starts Prefect's temporary server while it loads the stages
    (flows/orchestration/prefect_api.py), the flow uses that same server (one start, not two), its
    database lives
    under ASOF_HOME, and it is gone when the command ends."""
    import re
    import socket

    from flows.upstream import simulate

    home = tmp_path / "home"
    day = dt.date(2024, 1, 1)
    simulate.generate(home / "landing", day, day, simulate.parse_scale("200x400"), seed=3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"ASOF_HOME": str(home), "PREFECT_LOGGING_LEVEL": "INFO"})
    res = subprocess.run(
        [*ASOF, "backfill", "--start", day.isoformat(), "--end", day.isoformat()],
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "summary: succeeded=1" in res.stdout
    split = next(line for line in res.stdout.splitlines() if line.startswith("time per stage: "))
    assert all(f"{stage} " in split for stage in ("ingest", "validate", "transform", "materialize"))
    started = re.findall(r"Stopping temporary server on http://127\.0\.0\.1:(\d+)", res.stderr)
    assert len(started) == 1, res.stderr[-3000:]
    assert (home / "prefect" / "prefect.db").is_file()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(started[0]))) != 0, "the temporary server outlived the run"


_TEMPORARY_SERVER = """
import os, sys
from flows.orchestration import prefect_api
wait = prefect_api.start_in_background()
print("IMPORTED", "prefect.server.api.server" in sys.modules)
wait()
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    client.hello().raise_for_status()
print("API", os.environ["PREFECT_API_URL"])
print("IMPORTED", "prefect.server.api.server" in sys.modules)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_temporary_server_starts_without_importing_the_server_here(tmp_path: Path) -> None:
    """The CLI starts the process Prefect's SubprocessASGIServer would, without importing Prefect's
    server application itself (flows/orchestration/prefect_api.py); once it answers, its URL is the
    process's Prefect API (a client finds it), and it is stopped when the process exits."""
    import re
    import socket

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_LOGGING_LEVEL": "INFO"})
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    res = subprocess.run(
        [sys.executable, "-c", _TEMPORARY_SERVER], capture_output=True, text=True, env=env, timeout=280
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("IMPORTED False") == 2, res.stdout
    url = next(line.split()[1] for line in res.stdout.splitlines() if line.startswith("API "))
    started = re.findall(r"Starting temporary server on (http://127\.0\.0\.1:\d+)", res.stderr)
    stopped = re.findall(r"Stopping temporary server on http://127\.0\.0\.1:(\d+)", res.stderr)
    assert started == [url.removesuffix("/api")] and len(stopped) == 1, res.stderr[-3000:]
    assert (tmp_path / "prefect" / "prefect.db").is_file()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(stopped[0]))) != 0, (
            "the temporary server outlived the process"
        )


_FAST_EXIT = """
import atexit, os, sys
from flows.cli import main as cli, usage

class Teardown:
    def __del__(self, write=os.write):
        write(2, b"interpreter teardown ran\\n")

kept = Teardown()  # freed only by the interpreter's teardown

def command(app):
    atexit.register(lambda: os.write(2, b"a later exit handler ran\\n"))
    sys.stdout.write("x" * 200_000)  # buffered, never flushed by the command
    if sys.argv[1] == "crash":
        raise RuntimeError("not a SystemExit")
    sys.exit(int(sys.argv[1]))

usage.run = command
cli.main()
"""


@pytest.mark.parametrize("code", ["0", "5"])
def test_the_process_ends_without_the_interpreters_teardown(code: str) -> None:
    """After a command (flows.cli.usage.skip_interpreter_teardown): its exit status, every exit
    handler registered after main() started, all of its buffered output, and no teardown."""
    res = subprocess.run([sys.executable, "-c", _FAST_EXIT, code], capture_output=True, text=True)
    assert res.returncode == int(code)
    assert res.stdout == "x" * 200_000
    assert "a later exit handler ran" in res.stderr
    assert "interpreter teardown ran" not in res.stderr


def test_an_uncaught_exception_ends_the_process_the_ordinary_way() -> None:
    res = subprocess.run([sys.executable, "-c", _FAST_EXIT, "crash"], capture_output=True, text=True)
    assert res.returncode == 1 and "RuntimeError: not a SystemExit" in res.stderr
    assert res.stdout == "x" * 200_000
    assert "a later exit handler ran" in res.stderr
    assert "interpreter teardown ran" in res.stderr  # the control: the probe does see a teardown


def test_a_configured_server_is_used_as_is() -> None:
    """With PREFECT_API_URL set nothing is started and nothing preloaded."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.orchestration import prefect_api

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert prefect_api.start_in_background() is None


def test_preloading_is_best_effort(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage module that does not import, or a dbt project that does not parse, must not stop a
    run before its flow starts: the stage that needs it fails and records it, as without preloading."""
    from flows.orchestration import prefect_api
    from flows.transform import stage as transform

    calls: list[str] = []

    def broken_parse() -> None:
        calls.append("parse")
        raise RuntimeError("dbt exploded")

    monkeypatch.setattr(prefect_api, "STAGE_MODULES", ("flows.no_such_stage_module", "json"))
    monkeypatch.setattr(transform, "parse_project", broken_parse)
    prefect_api.preload()
    assert calls == ["parse"]


def test_command_line_flows_send_heartbeats_only_when_configured(prefect_backend) -> None:
    """Prefect 3.8 sends flow-run heartbeats by default from a thread the flow joins when it ends
    (it sleeps in one-second steps: up to 1 s per `asof run`). A flow started by the command line
    runs without them unless the user configured them; a configured frequency is kept."""
    from prefect import flow
    from prefect.flow_engine import FlowRunEngine
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    from flows.orchestration import prefect_api

    seen: list[int | None] = []
    engines: list[int | None] = []
    real = FlowRunEngine.heartbeat_seconds.fget

    def spy(engine):  # what the engine reads to decide whether to start its heartbeat thread
        engines.append(real(engine))
        return engines[-1]

    @flow
    def probe() -> None:
        seen.append(get_current_settings().flows.heartbeat_frequency)

    assert get_current_settings().flows.heartbeat_frequency == 180  # Prefect's default, sent
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FlowRunEngine, "heartbeat_seconds", property(spy))
        with prefect_api.heartbeats_only_if_configured():
            probe()
        with (
            temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}),
            prefect_api.heartbeats_only_if_configured(),
        ):
            probe()
    assert seen == [None, 60]
    assert engines and engines[0] is None and engines[-1] == 60
