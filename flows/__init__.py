"""asof: a point-in-time-correct batch feature pipeline (landing -> bronze -> silver -> gold -> Feast)."""

import os

# Arrow's allocator, chosen before anything allocates through it (a user's setting wins). pyarrow's
# default here is mimalloc, which keeps the memory a thread's heap grew for the life of the process;
# jemalloc hands freed pages back after a short decay. A 180-day backfill: peak 4.4 GB instead of
# 5.0, and no slower (bench/RESULTS.md, 07:27 UTC run of 2026-11-22).
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")

# Feast without typeguard's import-time instrumentation (4 s of every process that uses Feast):
# flows/features/feast_import.py.
from flows.features.feast_import import install as _install_feast_import  # noqa: E402

_install_feast_import()

# scipy.stats and altair, imported by one of GE's expectations and unused by asof's suites, load on
# first use (1.1 s of every process that validates): flows/lazy_imports.py.
from flows.lazy_imports import install as _install_lazy_imports  # noqa: E402

_install_lazy_imports()

__version__ = "0.1.0"
