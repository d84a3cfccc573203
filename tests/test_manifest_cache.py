"""dbt's parsed manifest kept for later processes (flows/transform/manifest_cache.py): a fresh home
uses the one another home parsed, unless it holds a path of that home, or was parsed with other
values of the variables that shape it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.transform import manifest_cache


@pytest.fixture()
def homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for name in (
        "ASOF_DBT_CACHE",
        "ASOF_DUCKDB_TEMP",
        "ASOF_LAKE_URI",
        "MF_TEST_MODEL_VAR",
        "MF_TEST_SCHEMA",
    ):
        monkeypatch.delenv(name, raising=False)
    return {"a": tmp_path / "home-a", "b": tmp_path / "home-b"}


def _manifest():
    from dbt.contracts.graph.manifest import Manifest

    return Manifest()


def _store_in(home: Path, manifest, monkeypatch: pytest.MonkeyPatch, fp: str = "fp-1") -> None:
    from flows.transform import stage

    monkeypatch.setenv("ASOF_HOME", str(home))
    stage.store_manifest(fp, manifest)


def _load_in(home: Path, monkeypatch: pytest.MonkeyPatch, fp: str = "fp-1"):
    from flows.transform import stage

    monkeypatch.setenv("ASOF_HOME", str(home))
    return stage.load_manifest(fp)


def test_a_fresh_home_loads_the_manifest_another_home_parsed(homes, monkeypatch) -> None:
    manifest = _manifest()
    manifest.metadata.project_name = "asof-shared-probe"
    _store_in(homes["a"], manifest, monkeypatch)
    assert list((homes["a"] / "cache" / "dbt").glob("manifest-*.pickle")), "the home's own copy"
    got = _load_in(homes["b"], monkeypatch)
    assert got is not None and got.metadata.project_name == "asof-shared-probe"
    assert not (homes["b"] / "cache" / "dbt").exists() or not list((homes["b"] / "cache" / "dbt").iterdir())
    # another state of the project is another file
    assert _load_in(homes["b"], monkeypatch, fp="fp-2") is None


def test_a_manifest_holding_a_path_of_its_home_stays_in_that_home(homes, monkeypatch) -> None:
    manifest = _manifest()
    manifest.metadata.env = {"DBT_ENV_CUSTOM_ENV_WHERE": str(homes["a"] / "lake")}
    _store_in(homes["a"], manifest, monkeypatch)
    assert _load_in(homes["a"], monkeypatch) is not None, "its own home still uses it"
    assert _load_in(homes["b"], monkeypatch) is None, "another home must parse for itself"
    assert not list(manifest_cache.shared_dir().glob("manifest-*.pickle"))


def test_a_manifest_is_not_used_when_a_variable_the_project_read_changed(homes, monkeypatch) -> None:
    monkeypatch.setenv("MF_TEST_MODEL_VAR", "one")
    manifest = _manifest()
    manifest.env_vars = {"MF_TEST_MODEL_VAR": "one"}  # what dbt records for env_var() in a model
    _store_in(homes["a"], manifest, monkeypatch)
    assert _load_in(homes["b"], monkeypatch) is not None
    monkeypatch.setenv("MF_TEST_MODEL_VAR", "two")
    assert _load_in(homes["b"], monkeypatch) is None
    assert _load_in(homes["a"], monkeypatch) is None


def _project(tmp_path: Path, profile: str) -> Path:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "dbt_project.yml").write_text(
        "name: p\nvars:\n  region: \"{{ env_var('MF_TEST_REGION', 'eu') }}\"\n"
    )
    (project / "profiles.yml").write_text(profile)
    return project


PROFILE = """
p:
  target: "{{ env_var('MF_TEST_TARGET', 'local') }}"
  outputs:
    local:
      type: duckdb
      path: ":memory:"
      schema: "{{ env_var('MF_TEST_SCHEMA', 'main') }}"
      threads: "{{ env_var('MF_TEST_THREADS', '4') | int }}"
      settings:
        TimeZone: "{{ env_var('MF_TEST_TZ', 'UTC') }}"
      config_options:
        memory_limit: "{{ env_var('MF_TEST_MEMORY', '2GB') }}"
        temp_directory: "{{ env_var('MF_TEST_TEMP', env_var('ASOF_HOME', '../data') ~ '/cache/duckdb') }}"
      plugins:
        - module: "{{ env_var('MF_TEST_PLUGIN', 'x') }}"
"""


def test_variables_that_shape_the_parse_are_in_the_shared_key(tmp_path, monkeypatch) -> None:
    """A target's schema (or type, database, the target itself) ends up in every node, and dbt does
    not record the profile's variables: their values are part of the shared key. The connection's
    settings (threads, DuckDB settings, plugins) never reach the manifest: not in the key, so a
    home-specific spill directory does not stop the sharing."""
    project = _project(tmp_path, PROFILE)
    assert manifest_cache.shaping_env_names(project) == {
        "MF_TEST_REGION",
        "MF_TEST_TARGET",
        "MF_TEST_SCHEMA",
    }
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    first = manifest_cache.shared_file(project, "fp")
    for name in ("MF_TEST_THREADS", "MF_TEST_TZ", "MF_TEST_MEMORY", "MF_TEST_TEMP", "ASOF_HOME"):
        monkeypatch.setenv(name, "/elsewhere/1")
    assert manifest_cache.shared_file(project, "fp") == first
    for name in ("MF_TEST_SCHEMA", "MF_TEST_TARGET", "MF_TEST_REGION"):
        monkeypatch.setenv(name, "other")
        assert manifest_cache.shared_file(project, "fp") != first, name
        monkeypatch.delenv(name)
    assert manifest_cache.shared_file(project, "fp") == first
    # a profile that does not parse as YAML: every variable it names counts
    (project / "profiles.yml").write_text(PROFILE + "\n  bad: [\n")
    assert "MF_TEST_THREADS" in manifest_cache.shaping_env_names(project)


def test_the_shared_cache_keeps_the_newest_manifests(tmp_path) -> None:
    for i in range(manifest_cache.SHARED_KEEP + 3):
        path = tmp_path / f"manifest-{i:02d}.pickle"
        assert manifest_cache.write(path, b"x", keep=manifest_cache.SHARED_KEEP)
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    kept = sorted(p.name for p in tmp_path.glob("manifest-*.pickle"))
    assert (
        len(kept) == manifest_cache.SHARED_KEEP
        and kept[-1] == f"manifest-{manifest_cache.SHARED_KEEP + 2:02d}.pickle"
    )
    assert manifest_cache.write(tmp_path / "manifest-new.pickle", b"y")  # a home's: only the newest
    assert [p.name for p in tmp_path.glob("manifest-*.pickle")] == ["manifest-new.pickle"]


def test_the_real_project_parsed_in_one_home_serves_a_fresh_home(tmp_path) -> None:
    """End to end with dbt: a process in a fresh home finds the manifest a process of another home
    parsed (no parse), and the home-specific paths dbt and asof set (DuckDB's spill directory, the
    target and log paths under the home) are not in it."""
    script = (
        "import sys\n"
        "from flows.transform.stage import _DBT, dbt_cache_dir\n"
        "manifest, parsed = _DBT.manifest()\n"
        "print('RESULT', parsed, len(manifest.nodes))\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    env.pop("ASOF_DBT_CACHE", None)
    env.pop("ASOF_DUCKDB_TEMP", None)

    def run(home: Path) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", script],
            env={**env, "ASOF_HOME": str(home)},
            capture_output=True,
            text=True,
            check=True,
        )
        return next(ln.split()[1:] for ln in out.stdout.splitlines() if ln.startswith("RESULT "))

    first = run(tmp_path / "a")
    assert first[0] == "True" and int(first[1]) > 10
    assert run(tmp_path / "b") == ["False", first[1]]
    shared = list((tmp_path / "xdg" / "asof" / "dbt").glob("manifest-*.pickle"))
    assert len(shared) == 1
    assert str(tmp_path / "a").encode() not in shared[0].read_bytes()
