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
    storage_options: dict[str, str] = field(default_factory=dict)

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
        return "://" not in self.lake_uri or self.lake_uri.startswith("file://")


def settings() -> Settings:
    """Read the environment each call: tests and the CLI change `ASOF_HOME` at run time.

    `ASOF_LAKE_URI` (e.g. `s3://bucket/asof/lake`) moves only the Delta tables to object storage;
    `ASOF_STORAGE_OPTIONS` is a JSON object handed to delta-rs (credentials stay in the environment,
    never in run records or logs).
    """
    home = Path(os.environ.get("ASOF_HOME", "data")).resolve()
    lake_uri = os.environ.get("ASOF_LAKE_URI") or str(home / "lake")
    raw_opts = os.environ.get("ASOF_STORAGE_OPTIONS", "")
    opts = json.loads(raw_opts) if raw_opts else {}
    return Settings(home=home, lake_uri=lake_uri.rstrip("/"), storage_options=opts)
