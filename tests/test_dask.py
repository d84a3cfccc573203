"""`asof backfill --runner dask`: the ingest tasks run on Dask worker processes and the lake comes out
identical, table by table, to a run on the default thread pool.

Three backfills of the same small landing data, each in its own ASOF_HOME: the default runner, a
2-worker `distributed.LocalCluster` started here on 127.0.0.1 (`--address`), and the CLI's own local
cluster (no address). Where the bronze commits happened is read from the lake's crash-point trace
(`ASOF_CRASH_TRACE`: one line per commit with the writer's pid), which the workers inherit.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli.main import app
from flows.sources import SOURCE_NAMES
from tests.kill_harness import date_statuses, diff, digest, snapshot

pytestmark = pytest.mark.slow

START = dt.date(2024, 1, 1)
END = dt.date(2024, 1, 2)
SCALE = "200x400"


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flows.upstream import simulate

    root = tmp_path_factory.mktemp("dask_landing")
    simulate.generate(root / "landing", START, END, simulate.parse_scale(SCALE), seed=11)
    return root / "landing"


def new_home(landing: Path, base: Path, name: str) -> Path:
    home = base / name
    shutil.copytree(landing, home / "landing")
    return home


ARGS = ["backfill", "--start", START.isoformat(), "--end", END.isoformat(), "--chunk-days", "2"]


def backfill(*extra: str) -> None:
    res = CliRunner().invoke(app, [*ARGS, *extra], catch_exceptions=False)
    assert res.exit_code == 0, res.output


def bronze_writers(trace: Path) -> set[int]:
    """pids that committed to a bronze table (ingest is the only bronze writer)."""
    labels = {f"before_commit:bronze/{s}" for s in SOURCE_NAMES}
    pids = set()
    for line in trace.read_text().splitlines():
        pid, label, *_ = line.split()
        if label in labels:
            pids.add(int(pid))
    return pids


def test_dask_backfill_matches_thread_pool(
    landing: Path, prefect_backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import LocalCluster

    monkeypatch.delenv("ASOF_LAKE_URI", raising=False)
    monkeypatch.delenv("ASOF_CRASH_AT", raising=False)
    snaps: dict[str, dict[str, list[str]]] = {}
    writers: dict[str, set[int]] = {}

    def run(name: str, *extra: str, cluster: bool = False) -> None:
        home = new_home(landing, tmp_path, name)
        trace = tmp_path / f"{name}.trace"
        trace.touch()
        # workers of the cluster started here inherit this environment: set it first
        monkeypatch.setenv("ASOF_HOME", str(home))
        monkeypatch.setenv("ASOF_CRASH_TRACE", str(trace))
        if cluster:
            with LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                scheduler_kwargs={"dashboard": False},
            ) as lc:
                backfill("--runner", "dask", "--address", lc.scheduler_address)
                # workers started for another ASOF_HOME are refused before anything runs
                other = tmp_path / "other_home"
                monkeypatch.setenv("ASOF_HOME", str(other))
                res = CliRunner().invoke(app, [*ARGS, "--runner", "dask", "--address", lc.scheduler_address])
                assert res.exit_code == 1 and f"has ASOF_HOME={home}" in res.output, res.output
                assert not other.exists()
                monkeypatch.setenv("ASOF_HOME", str(home))
        else:
            backfill(*extra)
        statuses = date_statuses(home, START, END)
        assert set(statuses.values()) == {"succeeded"}, (name, statuses)
        snaps[name] = snapshot(home)
        writers[name] = bronze_writers(trace)

    run("threads")
    run("address", cluster=True)
    run("local", "--runner", "dask", "--workers", "2")

    me = os.getpid()
    assert writers["threads"] == {me}
    for name in ("address", "local"):
        assert writers[name] and me not in writers[name], (name, writers[name])
        assert len(writers[name]) <= 2
    expected = snaps["threads"]
    assert any(k.startswith("gold/") and v for k, v in expected.items()), sorted(expected)
    for name in ("address", "local"):
        assert digest(snaps[name]) == digest(expected), diff(expected, snaps[name])


def test_runner_options_refused_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.cli.usage import Refused

    monkeypatch.setenv("ASOF_HOME", str(tmp_path))
    cases = [
        (["--address", "tcp://127.0.0.1:1"], "need --runner dask"),
        (["--runner", "dask", "--address", "127.0.0.1:8786"], "expected a scheduler address"),
        (["--runner", "dask", "--address", "tcp://127.0.0.1:1", "--workers", "3"], "local cluster"),
        (["--workers", "2"], "need --runner dask"),
    ]
    for extra, needle in cases:
        args = ["backfill", "--start", "2024-01-01", "--end", "2024-01-02", *extra]
        with pytest.raises(Refused, match=needle):
            CliRunner().invoke(app, args, catch_exceptions=False)
    res = CliRunner().invoke(
        app, ["backfill", "--start", "2024-01-01", "--end", "2024-01-02", "--runner", "spark"]
    )
    assert res.exit_code != 0
    assert list(tmp_path.iterdir()) == []
