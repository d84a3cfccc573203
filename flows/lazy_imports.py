"""scipy.stats and altair loaded when first used, not when Great Expectations is imported.

`import great_expectations` imports every core expectation, and one of them
(`expect_column_kl_divergence_to_be_less_than`) does `import altair` and `from scipy import stats`
at module level: 1.1 of GE's 2.9-3.0 s import in an asof process (`python -X importtime`, quiet
machine), paid by every run that validates. asof's suites use neither (no KL-divergence
expectation; Data Docs pages of the expectations asof runs draw no altair chart).

How: a meta-path finder hands those two modules to `importlib.util.LazyLoader`, which creates the
module object at import and runs its code at the first attribute access. Code that uses them gets
the real module then, exactly as imported; only the moment of loading moves. Measured: GE's import
2.90-3.05 s -> 1.86-1.93 s, both modules still unloaded after it. Installing the finder costs
nothing (`asof --help` stays light); a process that imported them before `install` keeps them as
they are.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from typing import Any

LAZY_MODULES = frozenset({"scipy.stats", "altair"})


class _OnFirstUse(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if fullname not in LAZY_MODULES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


def install() -> None:
    if any(isinstance(f, _OnFirstUse) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _OnFirstUse())
