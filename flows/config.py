"""Where things live. Everything is derived from `ASOF_HOME` so a test or a user switches the whole
pipeline to another root (or the lake to object storage) by environment alone."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    home: Path
    lake_uri: str
    # credentials: never in a repr, a log line or a run record
    storage_options: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def landing(self) -> Path:
        return self.home / "landing"

    @property
    def locks(self) -> Path:
        return self.home / "locks"

    @property
    def docs_dir(self) -> Path:
        return self.home / "docs"

    @property
    def is_local_lake(self) -> bool:
        return "://" not in self.lake_uri

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    def pipeline_root_of(self, path: Path) -> Path | None:
        """The pipeline-owned directory (the local lake, the landing area, the feature store's
        registry and online store) that `path` would write into, symlinks resolved; None if
        none. A user-given output path inside one of them could replace a live data file, a
        Delta log or an upstream file, so such paths are refused (contract §3)."""
        roots = [self.landing, self.feast_dir]
        if self.is_local_lake:
            roots.append(Path(self.lake_uri))
        for root in roots:
            if resolves_inside(path, root):
                return root.expanduser().resolve()
        return None


def resolves_inside(path: Path | str, root: Path | str) -> bool:
    """`path` is `root` or lies under it once both are resolved (symlinks followed, `..` gone):
    the one test of "does this path stay in that directory" (user outputs, landing files, served
    files)."""
    target, base = Path(path).expanduser().resolve(), Path(root).expanduser().resolve()
    return target == base or base in target.parents


class ConfigError(ValueError):
    pass


def _storage_options(raw: str) -> dict[str, str]:
    """`ASOF_STORAGE_OPTIONS`: a JSON object of delta-rs / object_store options (string values;
    JSON booleans and numbers are accepted and passed as strings, `true` -> "true").

    Errors name the problem, never the content: the object holds credentials."""
    if not raw.strip():
        return {}
    try:
        opts = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(
            f"ASOF_STORAGE_OPTIONS is not valid JSON (line {getattr(exc, 'lineno', '?')}, "
            f"column {getattr(exc, 'colno', '?')})"
        ) from None
    if not isinstance(opts, dict):
        raise ConfigError("ASOF_STORAGE_OPTIONS must be a JSON object of option names to values")
    out: dict[str, str] = {}
    for key, value in opts.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[key] = str(value)
        else:
            raise ConfigError(f"ASOF_STORAGE_OPTIONS[{key!r}] must be a string, number or boolean")
    if any(k.upper() == "AWS_S3_LOCKING_PROVIDER" for k in out):
        # deltalake 1.x logs an error and carries on without it: refuse rather than look safe
        raise ConfigError(
            "ASOF_STORAGE_OPTIONS: AWS_S3_LOCKING_PROVIDER (DynamoDB log store) is not supported by "
            "deltalake 1.x; S3 commits use conditional put (put-if-absent) instead (docs/scaling.md)"
        )
    return out


def _lake_uri(raw: str | None, home: Path) -> str:
    if not raw:
        return str(home / "lake")
    raw = raw.strip().rstrip("/")
    if raw.startswith("file://"):
        raw = raw.removeprefix("file://")
    if "://" in raw:
        return raw
    return str(Path(raw).expanduser().resolve())  # a local path: absolute, as every worker must see it


def settings() -> Settings:
    """Read the environment each call: tests and the CLI change `ASOF_HOME` at run time.

    `ASOF_LAKE_URI` (e.g. `s3://bucket/asof/lake`) moves only the Delta tables to object storage
    (landing files, locks, Feast's registry and online store and Data Docs stay under ASOF_HOME);
    `ASOF_STORAGE_OPTIONS` is a JSON object handed to delta-rs, e.g. for S3 or an S3-compatible
    store `{"AWS_ENDPOINT_URL": ..., "AWS_REGION": ..., "AWS_ACCESS_KEY_ID": ...,
    "AWS_SECRET_ACCESS_KEY": ..., "AWS_ALLOW_HTTP": "true"}` (docs/scaling.md). Without it delta-rs
    also reads the standard `AWS_*` environment variables. Credentials stay in the environment,
    never in run records or logs. A `file://` URI or a relative path is a local lake (made absolute).
    """
    home = Path(os.environ.get("ASOF_HOME", "data")).resolve()
    return Settings(
        home=home,
        lake_uri=_lake_uri(os.environ.get("ASOF_LAKE_URI"), home),
        storage_options=_storage_options(os.environ.get("ASOF_STORAGE_OPTIONS", "")),
    )
