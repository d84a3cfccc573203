"""Wall seconds per pipeline stage, summed over the runs of this process.

Where a backfill's time goes: the run summary prints it, the bench reports it and the Prometheus
export carries it (`asof_stage_seconds`). Kept apart from flows.pipeline so that monitoring can read
it without importing the flows.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

STAGE_SECONDS: dict[str, float] = {}


@contextlib.contextmanager
def timed(stage: str) -> Iterator[None]:
    """Add the wall time of the block to `STAGE_SECONDS[stage]`, also when it raises."""
    t = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS[stage] = STAGE_SECONDS.get(stage, 0.0) + time.perf_counter() - t
