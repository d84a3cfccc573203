"""A full disk as one line: "no space left on <path>" (issue 23, contract §3).

When the disk under ASOF_HOME fills, the error that reaches a run is rarely the ENOSPC itself:
delta-rs wraps it in its own message, and the Prefect server (whose database sits on the same
disk) answers the next state update with HTTP 500, so the run dies of `PrefectHTTPStatusError`
while every log handler that writes a file reports a logging error. Run records and stderr then
say nothing a reader can act on. Here an error is recognized as a full disk from the error chain
(errno 28, or its text in a wrapped message) or, failing that, from the disks themselves: a disk
under ASOF_HOME or PREFECT_HOME with (almost) no space left is the likelier cause than whatever
broke next. Light (os and shutil only): the CLI's error path imports it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

# Below this, a disk counts as full: a Delta commit, a run record or a log line no longer fits.
FULL_BELOW_BYTES = 1 << 20
_TEXT = re.compile(r"no space left on device|os error 28|errno 28|\[errno 28\]", re.IGNORECASE)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
        todo += [x for x in getattr(e, "exceptions", ()) if isinstance(x, BaseException)]
    return seen


def _mount(path: Path) -> Path:
    """The mount point holding `path` (the disk that is full, as df names it)."""
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _watched() -> list[Path]:
    """Where asof writes: the home (lake, landing, online store, caches) and Prefect's home."""
    from flows.config import settings

    prefect = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    return [settings().home, prefect]


def full_disk(paths: list[Path] | None = None) -> Path | None:
    """The mount point of the first of `paths` (default: ASOF_HOME, PREFECT_HOME) with less than
    FULL_BELOW_BYTES free, or None."""
    for path in paths if paths is not None else _watched():
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            if shutil.disk_usage(probe).free < FULL_BELOW_BYTES:
                return _mount(probe)
        except OSError:
            continue
    return None


def no_space(exc: BaseException) -> str | None:
    """The line "no space left on <path>" if `exc` comes from a full disk, else None. The path is the file
    the OS named, else the full disk's mount point, else ASOF_HOME."""
    chain = _chain(exc)
    named = [e for e in chain if isinstance(e, OSError) and e.errno == errno.ENOSPC]
    said = named or [e for e in chain if _TEXT.search(str(e))]
    disk = full_disk()
    if not said and disk is None:
        return None
    filename = next((e.filename for e in named if e.filename), None)
    where = filename or disk or _watched()[0].resolve()
    return f"no space left on {where}"


def failure_message(exc: BaseException) -> str:
    """One line for a run record or stderr: the full disk if that is what failed, else the error."""
    return no_space(exc) or f"{type(exc).__name__}: {exc}"
