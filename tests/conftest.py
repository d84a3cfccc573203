"""Shared fixtures: an isolated ASOF_HOME per test and one Prefect backend per session."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The cache homes share (flows/transform/manifest_cache.py: `$XDG_CACHE_HOME/asof`) is the
    session's, never the user's: the tests' homes share a parsed dbt manifest with each other only,
    and a copy of the user's Prefect database template if there is one."""
    from flows.orchestration import prefect_db

    before = os.environ.get("XDG_CACHE_HOME")
    users_template = prefect_db.template_path()
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    # Prefect's migrated empty database (`make setup` keeps it) is the same for every home: the
    # servers the tests start in new homes copy it instead of migrating (test_prefect_db builds
    # its own to test it)
    if users_template.is_file():
        prefect_db.template_path().parent.mkdir(parents=True)
        shutil.copyfile(users_template, prefect_db.template_path())
    yield Path(os.environ["XDG_CACHE_HOME"])
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session", autouse=True)
def kill_harness_stopped() -> Iterator[None]:
    """The kill harness (tests/kill_harness.py) is stopped when the session ends, not only at
    interpreter exit (`kill_harness.close_harness`)."""
    yield
    import sys

    harness = sys.modules.get("tests.kill_harness")  # never imported: nothing was started
    if harness is not None:
        harness.close_harness()


def _missing(what: str) -> NoReturn:
    """Skip a test whose requirement is missing, except in CI (ASOF_REQUIRE_SERVICES=1, set by
    .ci/run, which installs everything): there a missing requirement fails, never skips."""
    from flows.config import settings

    if settings().require_services:
        pytest.fail(f"{what} is required in CI but not installed (.ci/run installs it)")
    pytest.skip(f"{what} not installed")


def require_binary(name: str, path: str | None = None) -> str:
    """Path of a binary (on PATH, or in the directory list `path`); missing: see _missing."""
    found = shutil.which(name, path=path)
    if found:
        return found
    _missing(name)


def require_module(name: str) -> ModuleType:
    """The imported module `name`; not installed: see _missing (an import error inside an installed
    module is raised as it is, never turned into a skip)."""
    if importlib.util.find_spec(name) is None:
        _missing(f"Python module {name}")
    return importlib.import_module(name)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data root; every module reads ASOF_HOME at call time."""
    root = tmp_path / "asof_home"
    root.mkdir()
    monkeypatch.setenv("ASOF_HOME", str(root))
    monkeypatch.delenv("ASOF_LAKE_URI", raising=False)
    return root


@contextlib.contextmanager
def data_root(home: Path, cleared: tuple[str, ...] = ()) -> Iterator[Path]:
    """`home` as this process's data root for a module-scoped fixture (which cannot use `home`'s
    monkeypatch): ASOF_HOME set, the lake under it (ASOF_LAKE_URI and `cleared` unset), and the
    environment as it was afterwards."""
    names = ("ASOF_HOME", "ASOF_LAKE_URI", *cleared)
    saved = {k: os.environ.get(k) for k in names}
    os.environ["ASOF_HOME"] = str(home)
    for k in names[1:]:
        os.environ.pop(k, None)
    try:
        yield home
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def feature_store_home(home: Path, cleared: tuple[str, ...] = ()) -> Iterator[Path]:
    """A module's data root for the feature store: `data_root` with the SQLite online store
    (ASOF_ONLINE_STORE unset too) and Feast's store cache reset on the way in and out."""
    from flows.features import featurestore

    with data_root(home, ("ASOF_ONLINE_STORE", *cleared)):
        featurestore.reset_store_cache()
        try:
            yield home
        finally:
            featurestore.reset_store_cache()


@pytest.fixture(scope="session")
def prefect_backend(tmp_path_factory: pytest.TempPathFactory):
    """One temporary Prefect server for the whole session (starting one costs 10-20 s)."""
    prefect_home = tmp_path_factory.mktemp("prefect_home")
    os.environ["PREFECT_HOME"] = str(prefect_home)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser():
    """Headless Debian Chromium driven by Playwright (its own browser download does not work here).

    Playwright gives every launch a fresh temporary profile. Missing chromium fails in CI."""
    path = require_binary("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
