"""Links to the pages a run writes (Data Docs, monitoring reports), as a browser can open them.

A page opened from the Prefect UI (an http:// origin) is refused a file:// link ("Not allowed to
load local resource"), so every artifact link goes through `served_url`: below the URL that says
where the directory is served (`make serve` sets both variables for its worker, flows/serve.py),
and a file:// URL only when nothing serves it (a run from the CLI, read on the same machine).

Importing this module is cheap (no Prefect, no GE): the monitor, the pipeline and `make serve` share
it.
"""

from __future__ import annotations

import os
from pathlib import Path

from flows.config import settings

DOCS_URL_ENV = "ASOF_DOCS_URL"  # where $ASOF_HOME/docs is served (the Data Docs site, dbt docs)
REPORTS_URL_ENV = "ASOF_REPORTS_URL"  # where $ASOF_HOME/reports is served (monitoring reports)


def served_url(path: Path, root: Path, env: str) -> str:
    """URL of `path` (under `root`): below `$env` when that says where `root` is served, else a
    file:// URL. A base that names a page (`.../index.html`) stands for its directory."""
    base = os.environ.get(env, "").strip()
    if base:
        if base.endswith(".html"):
            base = base.rsplit("/", 1)[0]
        try:
            return base.rstrip("/") + "/" + path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return path.resolve().as_uri()


def docs_url(path: Path) -> str:
    """URL of a page of the Data Docs site (`$ASOF_HOME/docs/...`)."""
    return served_url(path, settings().docs_dir, DOCS_URL_ENV)


def reports_dir() -> Path:
    return settings().home / "reports"


def report_url(path: Path) -> str:
    """URL of a report under `$ASOF_HOME/reports`."""
    return served_url(path, reports_dir(), REPORTS_URL_ENV)


def all_served() -> bool:
    """True when both the Data Docs and the reports are served (no file:// link in a run's report)."""
    return bool(os.environ.get(DOCS_URL_ENV, "").strip() and os.environ.get(REPORTS_URL_ENV, "").strip())
