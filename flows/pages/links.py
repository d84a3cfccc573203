"""Links to the pages a run writes (Data Docs, monitoring reports), as a browser can open them.

A page opened from the Prefect UI (an http:// origin) is refused a file:// link ("Not allowed to
load local resource"), so every artifact link goes through `served_url`: below the URL that says
where the directory is served (`make serve` sets both variables for its worker,
flows/orchestration/local_server.py),
and a file:// URL only when nothing serves it (a run from the CLI, read on the same machine).

Importing this module is cheap (no Prefect, no GE): the monitor, the pipeline and `make serve` share
it.
"""

from __future__ import annotations

from pathlib import Path

from flows.config import settings


def served_url(path: Path, root: Path, base: str) -> str:
    """URL of `path` (under `root`): below `base` when that says where `root` is served (empty: it
    is not), else a file:// URL. A base that names a page (`.../index.html`) stands for its
    directory."""
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
    s = settings()
    return served_url(path, s.docs_dir, s.docs_url)


def reports_dir() -> Path:
    return settings().home / "reports"


def report_url(path: Path) -> str:
    """URL of a report under `$ASOF_HOME/reports`."""
    return served_url(path, reports_dir(), settings().reports_url)


def all_served() -> bool:
    """True when both the Data Docs and the reports are served (no file:// link in a run's report)."""
    s = settings()
    return bool(s.docs_url and s.reports_url)
