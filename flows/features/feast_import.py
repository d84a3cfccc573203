"""Feast, imported without typeguard's import-time instrumentation.

Feast decorates 19 of its classes with typeguard's `@typechecked`, which re-parses their source and
recompiles 242 methods with argument checks every time a process imports feast: `import feast` took
5.4-5.6 s, 1.4-1.7 s without it (2 cores; a cProfile of a fresh-home backfill's materialize task had
6.1 of its 33.8 s in `typechecked`). typeguard documents the decorator as a development aid that
does nothing under `python -O` ("checks not meant to be run in production"); `install` gives Feast
that production behaviour in asof processes, and nothing else: our calls into Feast are the same,
only Feast's own argument checks are not compiled in.

How: a meta-path finder that waits for the first `import feast` and, just before it, swaps
`typeguard.typechecked` for a pass-through. Installing it costs nothing (typeguard itself is only
imported when feast is), so `asof --help` stays light. A process that imported feast before
`install` ran keeps the instrumented classes (correct, only slower).
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any


def _pass_through(target: Any = None, **_options: Any) -> Any:
    """`typechecked` as typeguard defines it under `python -O`: the target, unchanged."""
    return target if target is not None else _pass_through


class _BeforeFeast(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == "feast" or fullname.startswith("feast."):
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _BeforeFeast)]
            try:
                import typeguard
            except ImportError:  # a Feast without typeguard: nothing to switch off
                return None
            typeguard.typechecked = _pass_through
        return None  # the regular finders import the module


def install() -> None:
    if "feast" in sys.modules or any(isinstance(f, _BeforeFeast) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _BeforeFeast())
