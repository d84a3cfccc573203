"""A new Prefect home's database copied from a migrated template (flows/orchestration/prefect_db.py):
only into a home without a database, never over one, never for a database configured elsewhere;
and a server started on the copy answers and stores runs as on a database it migrated itself."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from pathlib import Path

import pytest

from flows.orchestration import prefect_db


@pytest.fixture()
def template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in template (its bytes are what is checked) in a cache of the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = prefect_db.template_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"migrated template")
    return path


def test_a_home_without_a_database_gets_a_copy_of_the_template(template: Path, tmp_path: Path) -> None:
    home = tmp_path / "prefect_home"  # not created yet: the server would create it
    assert prefect_db.seed({"PREFECT_HOME": str(home)})
    assert (home / "prefect.db").read_bytes() == b"migrated template"
    assert sorted(p.name for p in home.iterdir()) == ["prefect.db"]  # no partial copy left


def test_an_existing_database_is_never_replaced(template: Path, tmp_path: Path) -> None:
    home = tmp_path / "prefect_home"
    home.mkdir()
    (home / "prefect.db").write_bytes(b"a user's runs")
    assert not prefect_db.seed({"PREFECT_HOME": str(home)})
    assert (home / "prefect.db").read_bytes() == b"a user's runs"


@pytest.mark.parametrize("variable", prefect_db.DATABASE_URL_VARIABLES)
def test_a_database_configured_elsewhere_is_left_alone(template: Path, tmp_path: Path, variable: str) -> None:
    home = tmp_path / "prefect_home"
    env = {"PREFECT_HOME": str(home), variable: "postgresql+asyncpg://db.internal/prefect"}
    assert not prefect_db.seed(env)
    assert not home.exists()


def test_a_filesystem_without_hard_links_leaves_the_database_to_the_server(
    template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    def refuse(src, dst, *args, **kwargs):
        raise PermissionError(1, "Operation not permitted", str(dst))

    monkeypatch.setattr(os, "link", refuse)
    home = tmp_path / "prefect_home"
    assert not prefect_db.seed({"PREFECT_HOME": str(home)})
    assert list(home.iterdir()) == []  # no database, no partial copy: the server migrates its own


def test_without_a_template_nothing_is_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty_cache"))
    assert not prefect_db.seed({"PREFECT_HOME": str(tmp_path / "prefect_home")})
    assert not (tmp_path / "prefect_home").exists()


def test_a_server_started_on_the_copied_template_answers_and_stores_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from flows.orchestration import local_server

    # the session's cache (tests/conftest.py: a copy of the template `make setup` built, which
    # runs build_template in CI before the tests; built here when there is none)
    template = prefect_db.build_template()
    assert sorted(p.name for p in template.parent.iterdir()) == ["prefect.db"]  # one file, no WAL
    with sqlite3.connect(template) as conn:
        (head,) = conn.execute("select version_num from alembic_version").fetchone()
        (flows,) = conn.execute("select count(*) from flow").fetchone()
    assert flows == 0
    assert prefect_db.build_template() == template  # kept: built once
    mtime = template.stat().st_mtime_ns

    home, port = tmp_path / "prefect_home", local_server.free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env = {
        **base,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    }
    seeded: list[bool] = []
    seed = prefect_db.seed
    monkeypatch.setattr(prefect_db, "seed", lambda e: seeded.append(seed(e)) or seeded[-1])
    proc = local_server.start_server(port, env, tmp_path / "server.log")
    assert seeded == [True]
    try:
        local_server.wait_healthy(port, timeout_s=180, proc=proc)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/flows/",
            data=json.dumps({"name": "asof-template-check"}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status in (200, 201)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with sqlite3.connect(home / "prefect.db") as conn:
        assert conn.execute("select version_num from alembic_version").fetchone() == (head,)
        assert conn.execute("select name from flow").fetchall() == [("asof-template-check",)]
    assert template.stat().st_mtime_ns == mtime  # the template itself is never opened by a server
