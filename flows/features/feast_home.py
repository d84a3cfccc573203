"""The `feast` CLI, run from `feature_repo/` without `ASOF_HOME`, finds the same home as `asof`.

Feast reads `feature_store.yaml` through `os.path.expandvars`, which leaves an unset variable as
it is: `feast feature-views list` without ASOF_HOME failed with a traceback on the literal path
`feature_repo/${ASOF_HOME}/feast/registry.db`. `asof` (flows.features.featurestore) always sets ASOF_HOME
itself (default `./data` from where it runs, i.e. the repository's `data/` for `make demo` and
the README's commands); the feast CLI runs from `feature_repo/`, where `./data` would be another,
empty home. So the registry is opened through `HomeFileRegistryStore` (named in
`feature_store.yaml`), which resolves `${ASOF_HOME}` the way `asof` does from the repository root,
and importing this module gives the process that same ASOF_HOME, so the feature repo's Python
files (`flows.storage.lake.uri` for the Delta sources) see the same lake.

With ASOF_HOME set, nothing changes: the path is Feast's own expansion of it.
"""

from __future__ import annotations

import os
from pathlib import Path

from feast.infra.registry.file import FileRegistryStore
from feast.repo_config import RegistryConfig

from flows.config import REPO_ROOT, Settings

HOME_VAR = Settings.home.name
DEFAULT_HOME = REPO_ROOT / "data"  # `make demo`'s home: asof's default when run from the repository


def home() -> Path:
    """ASOF_HOME, or the repository's `data/` when it is unset (made absolute either way): not
    asof's default, `./data` from the working directory, which for the feast CLI is feature_repo/."""
    return Settings(os.environ).home if os.environ.get(HOME_VAR, "").strip() else DEFAULT_HOME.resolve()


def expand_home(path: str) -> str:
    """`path` with `${ASOF_HOME}` / `$ASOF_HOME` (left by Feast's expandvars when unset) replaced."""
    value = str(home())
    return path.replace("${" + HOME_VAR + "}", value).replace("$" + HOME_VAR, value)


class HomeFileRegistryStore(FileRegistryStore):
    """Feast's file registry, with `${ASOF_HOME}` in its path resolved as `asof` resolves it."""

    def __init__(self, registry_config: RegistryConfig, repo_path: Path) -> None:
        config = registry_config.model_copy(update={"path": expand_home(registry_config.path)})
        super().__init__(config, repo_path)


os.environ.setdefault(HOME_VAR, str(home()))
