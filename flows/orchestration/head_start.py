"""The stages' one-time costs of a process, paid before the stages need them.

A process pays, once, the imports of Great Expectations, dbt and Feast, GE's context and
checkpoints, dbt's manifest, its project and profile validation and its macros' templates: ~8 s
here, measured in a fresh process (GE import 2.6 s and checkpoints 0.2 s; dbt's import and
manifest 1.8 s, `dbt ls` 0.8 s, 527 macro templates 1.7 s; Feast's modules 0.8 s). Left to the
stages, each is paid on the flow's thread when its stage first runs, while nothing else does.

Three places pay them earlier, whichever comes first in a process:
- the warm process (flows.orchestration.warm_process) pays all of them before it forks its runs;
- a CLI run that starts its own Prefect server pays them while the server starts
  (flows.orchestration.prefect_api.preload);
- any other run (a deployment's worker, `asof run` against a configured server) pays them while
  its first chunk ingests (flows.pipeline.process_dates): the flow's thread imports GE and loads
  its checkpoints, a thread of this module pays dbt's and Feast's. A bench chunk's ingest is
  Arrow's CSV reader and delta-rs's writer, which release the GIL, so the two overlap on a machine
  whose other core idles (a small chunk's ingest is more Python, and overlaps less). A stage that
  needs what the thread is still preparing waits for it: dbt's invocations share one lock, and
  Python's import lock makes an import wait for the one under way.

Each payment is best effort and done once per process: what fails here fails again, with its own
error, in the stage that needs it. Nothing here writes to the lake or opens a database, so forking
after it is as safe as before it.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable

# What each stage imports when it first runs. Feast's are imported only: building the store may
# open the online store's SQLite connection, which must not cross a fork (the warm process).
VALIDATION_MODULES = ("great_expectations", "flows.validation.stage", "flows.validation.datadocs")
TRANSFORM_MODULES = ("dbt.cli.main", "dbt.adapters.duckdb", "flows.transform.stage")
MATERIALIZE_MODULES = (
    "feast",
    "flows.features.feast_offline",
    "flows.features.featurestore",
    "flows.features.feast_engine",
)
STAGE_MODULES = VALIDATION_MODULES + TRANSFORM_MODULES + MATERIALIZE_MODULES


def pay_validation_costs() -> None:
    """GE's import, context, checkpoints and suites (flows.validation.suites.warm_up)."""
    from flows.validation import suites

    suites.warm_up()


def pay_transform_costs() -> None:
    """dbt's import, manifest, configuration checks and macro templates (flows.transform.stage)."""
    from flows.transform import stage

    stage.warm_up()


def pay_materialize_costs() -> None:
    for name in MATERIALIZE_MODULES:
        importlib.import_module(name)


def _best_effort(payments: tuple[Callable[[], None], ...]) -> None:
    for pay in payments:
        with contextlib.suppress(Exception):  # it fails again, with its error, in its stage
            pay()


def pay_all() -> None:
    """Every stage's one-time costs, in the calling thread (the warm process, before it forks)."""
    _best_effort((pay_validation_costs, pay_transform_costs, pay_materialize_costs))


class HeadStart:
    """dbt's and Feast's one-time costs paid on a thread of their own (`begin`); `wait` until done."""

    def __init__(self) -> None:
        self._thread = threading.Thread(
            target=_best_effort,
            args=((pay_transform_costs, pay_materialize_costs),),
            name="asof-head-start",
            daemon=True,
        )
        self._thread.start()

    def wait(self) -> None:
        self._thread.join()


def begin() -> HeadStart:
    """Start paying the later stages' one-time costs beside the caller (see the module docstring);
    the caller pays validation's with `pay_validation_costs` while its first chunk ingests."""
    return HeadStart()
