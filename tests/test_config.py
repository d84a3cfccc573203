"""Settings: one declaration per ASOF_* variable, the generated docs/configuration.md, values read
at use, clear errors for malformed values, and a warning for names nothing declares."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows import config
from flows.config import ConfigError, Settings, Variable

REPO = Path(__file__).resolve().parent.parent
ASOF = [sys.executable, "-m", "flows.cli.main"]
NAME = re.compile(r"\bASOF_[A-Z0-9_]+")


def _declared() -> dict[str, Variable]:
    return {v.name: v for v in Settings.variables()}


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    suffixes = {".py", ".md", ".yml", ".yaml", ".toml", ".sql", ".sh", ".cfg", ".txt", ""}
    out = []
    for rel in listed.stdout.splitlines():
        path = REPO / rel
        if path.suffix in suffixes and path.is_file() and path.name != Path(__file__).name:
            out.append(path)
    return out


def test_configuration_doc_is_generated_from_the_declarations(capsys) -> None:
    assert config.DOC_PATH.read_text() == config.configuration_markdown(), (
        "docs/configuration.md is out of date: run .venv/bin/python -m flows.config"
    )
    assert config.main(["--check"]) == 0
    table = config.DOC_PATH.read_text()
    for v in Settings.variables():
        assert f"| `{v.name}` |" in table


def test_every_asof_name_in_the_repository_is_declared() -> None:
    """Code, docs, the Makefile, CI, dbt and Feast files name only declared variables (a name
    ending in `_` is a family, e.g. ASOF_TIMEOUT_<STAGE>_S, and must begin some declared name)."""
    declared = _declared()
    unknown = set()
    for path in _tracked_text_files():
        for name in NAME.findall(path.read_text(errors="replace")):
            if name.endswith("_"):
                if not any(d.startswith(name) for d in declared):
                    unknown.add((name, path.relative_to(REPO).as_posix()))
            elif name not in declared:
                unknown.add((name, path.relative_to(REPO).as_posix()))
    assert not unknown, f"declare these in flows/config.py (Settings): {sorted(unknown)}"


def test_every_declaration_is_read_somewhere() -> None:
    """No declaration outlives its use: each is read as `.attr` in Python, or by name in a file
    another program reads (dbt's profiles.yml, the Makefile, prefect.yaml, Feast's yaml)."""
    python = "\n".join(
        p.read_text()
        for p in _tracked_text_files()
        if p.suffix == ".py" and p != REPO / "flows" / "config.py"
    )
    others = "\n".join(p.read_text() for p in _tracked_text_files() if p.suffix in (".yml", ".yaml", ""))
    unused = []
    for v in Settings.variables():
        read = re.search(rf"\.{v.attr}\b", python) is not None or v.name in others
        if v.attr.startswith("timeout_"):  # read through Settings.stage_timeout(stage)
            read = ".stage_timeout(" in python
        if not read:
            unused.append(v.name)
    assert not unused


def test_dbt_profile_defaults_match_the_declarations() -> None:
    profile = (REPO / "dbt_project" / "profiles.yml").read_text()
    pairs = re.findall(r"env_var\('(ASOF_[A-Z_]+)', '([^']*)'\)", profile)
    assert {name for name, _ in pairs} >= {"ASOF_DBT_THREADS", "ASOF_DUCKDB_MEMORY_LIMIT_RESOLVED"}
    declared = _declared()
    for name, default in pairs:
        if name != "ASOF_HOME":  # the profile's own relative fallback; asof always sets ASOF_HOME
            assert declared[name].shown() == default, name


def test_defaults_empty_values_and_derived_paths(tmp_path: Path) -> None:
    empty = Settings({})
    for v in Settings.variables():
        if v.default_from is None:
            assert getattr(empty, v.attr) == v.default, v.name
    assert empty.home == Path("data").resolve()
    blank = Settings({"ASOF_CHUNK_DAYS": " ", "ASOF_ONLINE_STORE": ""})
    assert (blank.chunk_days, blank.online_store) == (31, "sqlite")
    s = Settings({"ASOF_HOME": str(tmp_path)})
    assert s.lake_uri == str(tmp_path / "lake")
    assert s.dbt_cache == tmp_path / "cache" / "dbt"
    assert s.duckdb_temp == tmp_path / "cache" / "duckdb"
    assert Settings({"ASOF_LAKE_URI": "file:///x/lake/"}).lake_uri == "/x/lake"
    assert Settings({"ASOF_LAKE_URI": "s3://b/lake"}).lake_uri == "s3://b/lake"
    assert Settings({"ASOF_TIMEOUT_MONITOR_S": "0"}).stage_timeout("monitor") is None
    assert Settings({"ASOF_DOCS_PORT": "0"}).docs_port is None
    assert Settings({"ASOF_PARTIAL_FILES": " WAIT "}).partial_files == "wait"
    assert Settings(
        {"ASOF_LANDING_ALLOWED_ROOTS": f"/a{os.pathsep}{os.pathsep}/b"}
    ).landing_allowed_roots == (
        Path("/a"),
        Path("/b"),
    )
    flags = [
        Settings({"ASOF_DEBUG": word}).debug for word in ("1", "TRUE", "yes", "on", "0", "false", "No", "off")
    ]
    assert flags == [True] * 4 + [False] * 4
    assert Settings({}).log_served_features is None  # unset: Feast's own setting decides


@pytest.mark.parametrize(
    ("env", "attr", "message"),
    [
        ({"ASOF_KEY_INDEX_MB": "lots"}, "key_index_mb", "ASOF_KEY_INDEX_MB='lots': expected megabytes"),
        ({"ASOF_CHUNK_DAYS": "7.5"}, "chunk_days", "ASOF_CHUNK_DAYS='7.5': expected integer"),
        ({"ASOF_VALIDATION_DOCS": "maybe"}, "validation_docs", "ASOF_VALIDATION_DOCS='maybe': expected flag"),
        (
            {"ASOF_ONLINE_STORE": "memcached"},
            "online_store",
            "ASOF_ONLINE_STORE='memcached': expected sqlite or redis",
        ),
        ({"ASOF_PREFECT_PORT": "70000"}, "prefect_port", "ASOF_PREFECT_PORT='70000': expected port"),
        (
            {"ASOF_TIMEOUT_VALIDATE_S": "ten"},
            "timeout_validate_s",
            "ASOF_TIMEOUT_VALIDATE_S='ten': expected seconds",
        ),
    ],
)
def test_a_malformed_value_is_an_error_naming_the_variable(env: dict, attr: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        getattr(Settings(env), attr)


def test_a_secret_value_is_never_in_an_error() -> None:
    class Secretive(Settings):
        token: Variable[int] = Variable("ASOF_TEST_TOKEN", "integer", 0, "test", int, "test", secret=True)

    with pytest.raises(ConfigError) as exc:
        assert Secretive({"ASOF_TEST_TOKEN": "hunter2"}).token is None  # raises
    assert "hunter2" not in str(exc.value) and "ASOF_TEST_TOKEN" in str(exc.value)
    assert "hunter2" not in repr(Settings({"ASOF_STORAGE_OPTIONS": '{"AWS_SECRET_ACCESS_KEY": "hunter2"}'}))


def test_values_are_read_when_used_not_at_import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from flows.ingest import completeness
    from flows.pages import links
    from flows.storage import key_index

    monkeypatch.setenv("ASOF_HOME", str(tmp_path))
    monkeypatch.setenv("ASOF_KEY_INDEX_MB", "2")
    assert key_index._limit_bytes() == 2 * 2**20
    monkeypatch.setenv("ASOF_KEY_INDEX_MB", "3")
    assert key_index._limit_bytes() == 3 * 2**20
    whole = completeness.Cut("has no line terminator after its last record", certain=False)
    monkeypatch.delenv("ASOF_PARTIAL_FILES", raising=False)
    assert not whole.waits()
    monkeypatch.setenv("ASOF_PARTIAL_FILES", "wait")
    assert whole.waits()
    page = tmp_path / "docs" / "index.html"
    monkeypatch.delenv("ASOF_DOCS_URL", raising=False)
    assert links.docs_url(page).startswith("file://")
    monkeypatch.setenv("ASOF_DOCS_URL", "http://docs.example/")
    assert links.docs_url(page) == "http://docs.example/index.html"
    s = config.settings()
    monkeypatch.setenv("ASOF_CHUNK_DAYS", "5")
    assert config.settings().chunk_days == 5
    monkeypatch.setenv("ASOF_CHUNK_DAYS", "6")
    assert s.chunk_days == 6  # read on first use...
    monkeypatch.setenv("ASOF_CHUNK_DAYS", "7")
    assert s.chunk_days == 6  # ...then kept: one Settings object is one consistent view


def test_an_unknown_name_gets_one_warning_with_the_closest_known_name(caplog) -> None:
    env = {"ASOF_HOME": "x", "ASOF_ONLINE_STOR": "redis", "ASOF_KEY_INDX_MB": "5", "HOME": "/root"}
    assert config.unknown_variables(env) == [
        ("ASOF_KEY_INDX_MB", "ASOF_KEY_INDEX_MB"),
        ("ASOF_ONLINE_STOR", "ASOF_ONLINE_STORE"),
    ]
    assert config.unknown_variables({"ASOF_HOME": "x"}) == []
    with caplog.at_level(logging.WARNING, logger="flows.config"):
        first = config.warn_unknown_variables({"ASOF_ONLINE_STOR": "redis"})
        again = config.warn_unknown_variables({"ASOF_ONLINE_STOR": "redis"})
    assert len(first) == 1 and again == []
    assert "ASOF_ONLINE_STOR " in first[0] and "did you mean ASOF_ONLINE_STORE?" in first[0]
    assert [r.getMessage() for r in caplog.records if r.name == "flows.config"] == first


def test_the_cli_warns_once_on_stderr_and_keeps_json_on_stdout(tmp_path: Path) -> None:
    env = {**os.environ, "ASOF_HOME": str(tmp_path), "ASOF_LOCK_TIMEOUT": "5"}
    res = subprocess.run(
        [*ASOF, "quarantine", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == []
    warnings = [line for line in res.stderr.splitlines() if "ASOF_LOCK_TIMEOUT " in line]
    assert len(warnings) == 1 and "did you mean ASOF_LOCK_TIMEOUT_S?" in warnings[0], res.stderr


def test_the_cli_names_a_malformed_variable_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "ASOF_HOME": str(tmp_path), "ASOF_LOCK_TIMEOUT_S": "soon"}
    env.pop("ASOF_DEBUG", None)
    res = subprocess.run([*ASOF, "status"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert res.returncode == 1
    assert res.stderr.strip() == "asof: error: ASOF_LOCK_TIMEOUT_S='soon': expected seconds"
