"""A new Prefect home's database, copied from one Prefect migrated once instead of migrated again.

A Prefect server creates its SQLite database on first start by running every one of Prefect's
Alembic migrations, one after the other. Measured here (Prefect 3.8.8): a temporary server took
19.75 s to answer in a fresh PREFECT_HOME and 6.95 s in one that had a database; migrating an empty
database alone took 15.1 s. Every new ASOF_HOME pays it on its first run (its PREFECT_HOME is
`$ASOF_HOME/prefect`): `make demo`, a first `asof backfill`, each server the tests start.

The migrated database does not depend on the home: it is Prefect's schema at its head revision
and nothing else (no flow, no block: the server registers its block types itself at every start).
`build_template` runs Prefect's own migration (`create_db`, what the server runs when it starts)
into the user's cache, once per Prefect version (`make setup` does; `python -m
flows.orchestration.prefect_db` by hand). `seed` copies it into a Prefect home that has no
database yet, just before a server starts there; the server then finds its schema at head and
migrates nothing (7.4 s to answer). Without a template, or with a database configured elsewhere
(`PREFECT_API_DATABASE_CONNECTION_URL`, `PREFECT_SERVER_DATABASE_CONNECTION_URL`), nothing changes.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import sqlite3
import sys
from collections.abc import Mapping
from pathlib import Path

DATABASE_URL_VARIABLES = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")
DATABASE_FILE = "prefect.db"  # Prefect's default database, in PREFECT_HOME


def template_path() -> Path:
    """`$XDG_CACHE_HOME/asof/prefect/<Prefect's version>/prefect.db` (default `~/.cache/...`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "asof" / "prefect" / importlib.metadata.version("prefect") / DATABASE_FILE


def database_file(env: Mapping[str, str]) -> Path | None:
    """The SQLite file a server started with `env` creates, or None when `env` configures another
    database (then it is left alone)."""
    if any(env.get(name) for name in DATABASE_URL_VARIABLES):
        return None
    return Path(env.get("PREFECT_HOME") or "~/.prefect").expanduser() / DATABASE_FILE


def seed(env: Mapping[str, str]) -> bool:
    """Copy the template into the database a server started with `env` is about to create, if
    there is a template and no database yet. True when it did."""
    target, template = database_file(env), template_path()
    if target is None or target.exists() or not template.is_file():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        shutil.copyfile(template, partial)
        # a hard link never replaces: a server that created its database meanwhile keeps it
        os.link(partial, target)
    except OSError:  # that (FileExistsError), or a filesystem without hard links, a full disk:
        return False  # the server migrates its own database, as without a template
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return True


def build_template() -> Path:
    """Run Prefect's migrations into a new database and keep it as the template (unless one is
    kept already). Imports Prefect's server: for `make setup`, not for a run."""
    template = template_path()
    if template.is_file():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    partial = template.with_name(f".{template.name}.{os.getpid()}.partial")
    url = f"sqlite+aiosqlite:///{partial}"
    os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = url  # read by Prefect when it is imported
    import asyncio

    from prefect.server.database import provide_database_interface
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, temporary_settings

    async def migrate() -> None:
        db = provide_database_interface()
        await db.create_db()
        await (await db.engine()).dispose()  # every connection closed before the file is moved

    with temporary_settings(updates={PREFECT_API_DATABASE_CONNECTION_URL: url}):
        asyncio.run(migrate())
    # one self-contained file: the write-ahead log folded in and removed
    with contextlib.closing(sqlite3.connect(partial)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{partial}{suffix}").unlink()
    os.replace(partial, template)
    return template


def main() -> int:
    """Build the template unless it is kept (quiet then: `make setup` runs this every time)."""
    if not template_path().is_file():
        print(
            f"Prefect database template: running Prefect's migrations once into {template_path()}",
            file=sys.stderr,
        )
        build_template()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
