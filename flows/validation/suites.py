"""The Great Expectations runtime: the File Data Context in `expectations/`, loaded once per process
and ASOF_HOME, and the checkpoint runs of the validation stage.

GE is the authority for every rule: a row goes to quarantine, or a batch is rejected, because an
expectation of `<source>.rows` or `<source>.batches` said so (their `meta` names the reason or rule).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
from typing import Any

import pandas as pd

from flows.config import settings
from flows.validation.contracts import EXPECTATIONS_DIR

_CTX_LOCK = threading.Lock()
_CONTEXTS: dict[str, Any] = {}
_CHECKPOINTS: dict[tuple[str, str], Any] = {}


def ge_context():
    """The File Data Context in `expectations/`, one per process and ASOF_HOME.

    Its validation results store and Data Docs site live under ASOF_HOME (`ge/validations`, `docs`):
    `great_expectations.yml` names them `${ASOF_HOME}/...`, resolved here through GE's runtime
    environment, so nothing is written into the repository at run time.
    """
    home = str(settings().home)
    with _CTX_LOCK:
        ctx = _CONTEXTS.get(home)
        if ctx is None:
            if not (EXPECTATIONS_DIR / "great_expectations.yml").exists():
                # never let GE scaffold a default project into the repository
                raise RuntimeError(
                    f"{EXPECTATIONS_DIR}/great_expectations.yml is missing: "
                    "run .venv/bin/python expectations/build_suites.py"
                )
            os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
            import great_expectations as gx

            _skip_frame_fingerprint()
            ctx = gx.get_context(
                mode="file",
                context_root_dir=str(EXPECTATIONS_DIR),
                runtime_environment={"ASOF_HOME": home},
            )
            _CONTEXTS[home] = ctx
        return ctx


def _skip_frame_fingerprint() -> None:
    """GE fingerprints every pandas batch under HASH_THRESHOLD bytes (1 GB) with
    `pandas.util.hash_pandas_object` over all its rows, only to record it among the result's batch
    markers: on a 31-day bench chunk (3.1M rows) that was 9 of 40 s of the validation stage (cProfile:
    hashing, and the categoricals it builds for Arrow-backed text). The verdicts never use it, and
    our results name their batch by source and dates. The threshold is a module constant GE reads at
    each batch; 0 turns the fingerprint off (tests/test_validate.py checks the constant is there and
    that stored results no longer carry the marker)."""
    from great_expectations.execution_engine import pandas_execution_engine

    pandas_execution_engine.HASH_THRESHOLD = 0


def checkpoint(ctx, name: str):
    key = (str(id(ctx)), name)
    cp = _CHECKPOINTS.get(key)
    if cp is None:
        cp = _CHECKPOINTS[key] = ctx.checkpoints.get(name)
    return cp


_EXPECTATIONS: dict[tuple[str, str], list[tuple[str, dict]]] = {}


def _expectations(suite_name: str) -> list[tuple[str, dict]]:
    """(type, kwargs) of each expectation of the suite, read once per context."""
    ctx = ge_context()
    key = (str(id(ctx)), suite_name)
    got = _EXPECTATIONS.get(key)
    if got is None:
        suite = ctx.suites.get(suite_name)
        got = _EXPECTATIONS[key] = [
            (e.configuration.type, e.configuration.kwargs) for e in suite.expectations
        ]
    return got


def suite_columns(suite_name: str) -> frozenset[str]:
    """Columns the suite's expectations read (GE copies the whole frame per metric: keep it narrow)."""
    return frozenset(
        kw[k] for _, kw in _expectations(suite_name) for k in ("column", "column_A", "column_B") if kw.get(k)
    )


def regex_columns(suite_name: str) -> frozenset[str]:
    """Columns a regex expectation reads: they stay Python strings in the frame, because pandas'
    Arrow-backed strings match with RE2, whose `$` (unlike Python's) does not match before a final
    newline; every other text column is Arrow-backed (a third less time and memory over a chunk)."""
    return frozenset(kw["column"] for etype, kw in _expectations(suite_name) if "regex" in etype)


def run_suite(
    suite_name: str, frame: pd.DataFrame, params: dict[str, Any], run_name: str, run_time: dt.datetime
) -> list[tuple[Any, Any]]:
    """Run the suite's checkpoint on `frame` (COMPLETE results, stored under ASOF_HOME): returns
    (result key, ExpectationSuiteValidationResult) pairs."""
    from great_expectations.core.run_identifier import RunIdentifier

    out = checkpoint(ge_context(), suite_name).run(
        batch_parameters={"dataframe": frame},
        expectation_parameters=params,
        run_id=RunIdentifier(run_name=run_name, run_time=run_time),
    )
    return list(out.run_results.items())


def forget(keys: list[Any]) -> None:
    """Drop stored results a later run of the same dates superseded (an iteration of the chunk's
    fixpoint, or dates a stop left out): Data Docs must not list a verdict that did not count."""
    store = ge_context().validation_results_store
    for key in keys:
        with contextlib.suppress(Exception):  # already gone: nothing to forget
            store.remove_key(key)
