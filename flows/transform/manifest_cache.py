"""dbt's parsed manifest, kept for later processes: in the home's cache and in a cache homes share.

Parsing the project costs 3-14 s of a run (2.6 s on a quiet machine, 8-14 s at load 2-6 in a
fresh home: the demo's first `asof backfill`); loading a kept manifest ~0.5 s. The home's copy
(`$ASOF_HOME/cache/dbt/manifest-<key>.pickle`) served every process of that home after the first;
a fresh home parsed again although nothing of the parse depends on the home. The shared copy
(`$XDG_CACHE_HOME/asof/dbt`, default `~/.cache/asof/dbt`) serves a fresh home too.

What a kept manifest must match to be used, in both places: the project's files (path, size and
mtime of each: the fingerprint), the project's directory (the manifest holds absolute paths), dbt's
and Python's versions (other classes are pickled), and the values of the environment variables
the project read while parsing (dbt records them in `manifest.env_vars`; checked on load). The
shared copy's key also holds the values of the variables that `dbt_project.yml` and `profiles.yml`
read, except under the profile keys that only configure the connection (threads, DuckDB settings,
plugins: they never reach the manifest), because dbt does not record those in `env_vars` and a
target's type, database or schema end up in every node. A manifest whose pickle holds a path of
the home that parsed it (the home, its dbt cache, its DuckDB spill directory, a local lake) is
kept in that home only, never shared.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SHARED_KEEP = 8  # manifests kept in the shared cache (checkouts and project states), newest first

# Keys of a dbt-duckdb target applied when its connection opens; their values never reach the
# parsed manifest, so the variables read under them are not part of the shared key.
CONNECTION_ONLY_KEYS = frozenset(
    {"threads", "settings", "config_options", "plugins", "extensions", "secrets", "filesystems", "retries"}
)

_ENV_VAR = re.compile(r"""env_var\(\s*['"]([^'"]+)['"]""")

# Kept without dbt's private lookups (rebuilt on first use) and not through `Manifest.__reduce_ex__`:
# in dbt 1.11 its positional arguments skip `fixtures`, so every lookup after it lands one field off
# and the next run fails with "RefableLookup.find() missing 1 required positional argument".
_MANIFEST_MAPS = ("parent_map", "child_map", "group_map")


def shared_dir() -> Path:
    """The cache homes share: `$XDG_CACHE_HOME/asof/dbt`, default `~/.cache/asof/dbt`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "asof" / "dbt"


def _env_names(value: Any, skip: frozenset[str] = frozenset()) -> set[str]:
    """Names of the variables `env_var()` reads anywhere in a parsed YAML value, except under `skip`."""
    if isinstance(value, dict):
        return {n for k, v in value.items() if k not in skip for n in _env_names(v, skip)}
    if isinstance(value, list):
        return {n for v in value for n in _env_names(v, skip)}
    return set(_ENV_VAR.findall(value)) if isinstance(value, str) else set()


def shaping_env_names(project_dir: Path) -> set[str]:
    """Variables read by the project's and profile's YAML that can shape the parsed manifest."""
    import yaml

    names: set[str] = set()
    for path in sorted(project_dir.glob("*.yml")):
        text = path.read_text(errors="replace")
        if path.name != "profiles.yml":
            names |= set(_ENV_VAR.findall(text))
            continue
        try:
            names |= _env_names(yaml.safe_load(text), CONNECTION_ONLY_KEYS)
        except yaml.YAMLError:  # unreadable here: every variable it names counts
            names |= set(_ENV_VAR.findall(text))
    return names


def _key(project_dir: Path, fingerprint: str, env: dict[str, str | None] | None = None) -> str:
    from dbt.version import __version__ as dbt_version

    key = f"{project_dir.resolve()}:{fingerprint}:{dbt_version}:{sys.version}"
    if env is not None:
        key += ":" + repr(sorted(env.items()))
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def home_file(cache_dir: Path, project_dir: Path, fingerprint: str) -> Path:
    """The home's copy of the manifest of one state of the project."""
    return cache_dir / f"manifest-{_key(project_dir, fingerprint)}.pickle"


def shared_file(project_dir: Path, fingerprint: str) -> Path:
    """The shared copy: its key also holds the values of the variables that shape the parse."""
    env = {name: os.environ.get(name) for name in shaping_env_names(project_dir)}
    return shared_dir() / f"manifest-{_key(project_dir, fingerprint, env)}.pickle"


def home_paths() -> list[str]:
    """Paths of this home that a manifest kept for other homes must not hold."""
    from flows.config import settings

    s = settings()
    paths = [str(s.home), str(s.dbt_cache), os.environ.get("ASOF_DUCKDB_TEMP") or ""]
    if "://" not in s.lake_uri:
        paths.append(s.lake_uri)
    return [p for p in paths if len(p) > 1]


def shareable(data: bytes, paths: list[str]) -> bool:
    """Whether a pickled manifest holds none of `paths` (then it is the same for every home)."""
    return not any(p.encode() in data for p in paths)


def dumps(manifest: Any) -> bytes:
    import dataclasses

    state = {
        f.name: getattr(manifest, f.name) for f in dataclasses.fields(manifest) if not f.name.startswith("_")
    }
    state.update({m: getattr(manifest, m) for m in _MANIFEST_MAPS if hasattr(manifest, m)})
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def _from_state(state: dict[str, Any]) -> Any:
    from dbt.contracts.graph.manifest import Manifest

    maps = {m: state.pop(m) for m in _MANIFEST_MAPS if m in state}
    manifest = Manifest(**state)
    for name, value in maps.items():
        setattr(manifest, name, value)
    return manifest


def load(path: Path) -> Any | None:
    """The manifest kept at `path`, if the variables the project read while parsing still have the
    values they had; None otherwise (missing, unreadable, from an incompatible dbt: parse again)."""
    try:
        with path.open("rb") as fh:
            manifest = _from_state(pickle.load(fh))
    except FileNotFoundError:
        return None
    except Exception as exc:
        log.info("ignoring the cached dbt manifest %s: %s", path, exc)
        return None
    used = getattr(manifest, "env_vars", None) or {}
    if any(os.environ.get(name) != value for name, value in used.items()):
        return None
    return manifest


def write(path: Path, data: bytes, keep: int = 1) -> bool:
    """Keep `data` at `path` (atomic rename); then only the `keep` newest manifests of its directory.
    A cache: failing to write it never fails the transform."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.info("could not cache the dbt manifest at %s: %s", path, exc)
        tmp.unlink(missing_ok=True)
        return False
    try:
        older = sorted(
            (p for p in path.parent.glob("manifest-*.pickle") if p != path),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in older[keep - 1 :]:
            old.unlink(missing_ok=True)
    except OSError:  # another process pruned the same file
        pass
    return True
