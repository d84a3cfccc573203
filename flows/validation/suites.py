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
from flows.validation import contracts as V
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
            _read_configuration_once()
            _check_freshness_once()
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


_KWARGS_LOOKUP_NAMES = (
    "_get_success_kwarg",
    "_get_domain_kwargs",
    "_get_success_kwargs",
    "_get_runtime_kwargs",
)
# GE's own functions that `_read_configuration_once` replaced, kept so a test can compare
GE_KWARGS_LOOKUPS: dict[str, Any] = {}


def _read_configuration_once() -> None:
    """Make GE's kwargs lookups read an expectation's configuration once per lookup, not once per key.

    `Expectation.configuration` is a property that rebuilds an ExpectationConfiguration from the
    pydantic model (`self.dict()`) on every access, and `_get_domain_kwargs`, `_get_success_kwargs`
    and `_get_runtime_kwargs` access it once per key, `_get_success_kwarg` twice: about 160 rebuilds per
    expectation per checkpoint run. cProfile of five runs of `transactions.batches` (14 expectations)
    on a 10-row frame: 2.43 of 6.84 s in that property. The replacements below are GE 1.24's own
    bodies with the configuration read once at the top; they return the same dicts (a test compares
    them with GE's originals for every expectation of every suite). Expectation classes that override
    one of them keep their override: only the base class's functions are replaced."""
    from great_expectations.expectations import expectation as ge_expectation

    base = ge_expectation.Expectation
    if getattr(base, "_asof_configuration_once", False):
        return
    GE_KWARGS_LOOKUPS.update({name: getattr(base, name) for name in _KWARGS_LOOKUP_NAMES})
    original_success_kwarg = base._get_success_kwarg

    def values(self, kwargs: dict, keys) -> dict:
        return {key: kwargs.get(key, self._get_default_value(key)) for key in keys}

    def get_domain_kwargs(self) -> dict:
        return values(self, self.configuration.kwargs, self.domain_keys)

    def success_values(self, kwargs: dict) -> dict:
        """`_get_success_kwargs()` from kwargs already read (a subclass's own lookups still run)."""
        if type(self)._get_success_kwargs is not get_success_kwargs:
            return self._get_success_kwargs()
        out = values(self, kwargs, self.success_keys)
        if type(self)._get_domain_kwargs is get_domain_kwargs:
            out.update(values(self, kwargs, self.domain_keys))
        else:
            out.update(self._get_domain_kwargs())
        return out

    def get_success_kwargs(self) -> dict:
        return success_values(self, self.configuration.kwargs)

    def kwarg_or_default(self, kwargs: dict, key: str, default=None):
        if key in kwargs:
            return kwargs[key]
        field = self.__fields__.get(key)
        if field is not None:
            return field.default if not field.required else default
        return original_success_kwarg(self, key, default)  # GE's warning for an unknown key

    def success_kwarg(self, kwargs: dict, key: str):
        if type(self)._get_success_kwarg is get_success_kwarg:
            return kwarg_or_default(self, kwargs, key)
        return self._get_success_kwarg(key)

    def get_runtime_kwargs(self, runtime_configuration: dict | None = None) -> dict:
        runtime_configuration = runtime_configuration or {}
        kwargs = self.configuration.kwargs
        success_kwargs = success_values(self, kwargs)
        runtime_kwargs = {
            key: runtime_configuration.get(key, success_kwarg(self, kwargs, key)) for key in self.runtime_keys
        }
        runtime_kwargs.update(success_kwargs)
        runtime_kwargs["result_format"] = ge_expectation.parse_result_format(runtime_kwargs["result_format"])
        return runtime_kwargs

    def get_success_kwarg(self, key: str, default=None):
        return kwarg_or_default(self, self.configuration.kwargs, key, default)

    base._get_success_kwarg = get_success_kwarg
    base._get_domain_kwargs = get_domain_kwargs
    base._get_success_kwargs = get_success_kwargs
    base._get_runtime_kwargs = get_runtime_kwargs
    base._asof_configuration_once = True


_FRESH: dict[int, tuple[Any, Any]] = {}


def _check_freshness_once() -> None:
    """Check a checkpoint's and a validation definition's freshness once per object and process.

    Before every run GE checks that the checkpoint, its validation definitions and their suites
    still equal what their stores hold: it reads the stored JSON and compares whole serialized
    objects, three times a run (`Checkpoint.run`, `ValidationDefinition.run` and the result's
    identifier bundles). On a 30-day bench backfill that was 1.95 of GE's 19.7 s (24 runs,
    cProfile). The objects are loaded once per process from files `build_suites.py --check` keeps
    equal to the contracts, and nothing here changes them, so a check that passed stays passed; a
    check that failed is repeated (and raises, as GE would)."""
    from great_expectations.checkpoint.checkpoint import Checkpoint
    from great_expectations.core.validation_definition import ValidationDefinition

    for cls in (Checkpoint, ValidationDefinition):
        if getattr(cls.is_fresh, "asof_once", False):
            continue
        original = cls.is_fresh

        def is_fresh(self, _original=original):
            known = _passed_freshness(self)
            if known is not None:
                return known
            diagnostics = _original(self)
            if diagnostics.success:
                _FRESH[id(self)] = (self, diagnostics)  # the object is kept: its id stays its own
            return diagnostics

        is_fresh.asof_once = True  # type: ignore[attr-defined]
        cls.is_fresh = is_fresh


def _passed_freshness(obj: Any) -> Any | None:
    """The passing freshness diagnostics of this very object, if it was checked in this process."""
    known = _FRESH.get(id(obj))
    return known[1] if known is not None and known[0] is obj else None


def freshness_known(obj: Any) -> bool:
    """Whether the freshness of a checkpoint or validation definition passed already in this
    process (so its runs do not check it again)."""
    return _passed_freshness(obj) is not None


class SuitesMissingError(RuntimeError):
    """A source has a contract but no generated suites (docs/adding-a-source.md, step 2)."""


def checkpoint(ctx, name: str):
    key = (str(id(ctx)), name)
    cp = _CHECKPOINTS.get(key)
    if cp is None:
        if not (EXPECTATIONS_DIR / "checkpoints" / f"{name}.json").exists():
            # GE's own error would be "Checkpoint ... not found", which names neither cause nor cure
            raise SuitesMissingError(
                f"no Great Expectations checkpoint {name!r} in {EXPECTATIONS_DIR}/checkpoints: a "
                "contract was added or changed without rebuilding the suites; run "
                ".venv/bin/python expectations/build_suites.py"
            )
        cp = _CHECKPOINTS[key] = ctx.checkpoints.get(name)
    return cp


def warm_up() -> None:
    """Load the context and every checkpoint and suite, and check their freshness, before the first
    validation needs them (flows.orchestration.head_start: in the warm process before it forks, in
    a cold run while its first chunk ingests; a second call finds them all kept). A forked child's
    first validation paid these otherwise (a bench day in a child: 3.16-4.21 s for the first
    validation, 2.47-3.02 s for the next; cProfile of the difference: the freshness checks 0.42 s,
    loading the checkpoints and suites ~0.5 s). Reads only: nothing is run, stored or rendered."""
    ctx = ge_context()
    for path in sorted((EXPECTATIONS_DIR / "checkpoints").glob("*.json")):
        cp = checkpoint(ctx, path.stem)
        cp.is_fresh()
        for vd in cp.validation_definitions:
            vd.is_fresh()
        _expectations(path.stem)


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

    cp = checkpoint(ge_context(), suite_name)
    try:
        out = cp.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=params,
            run_id=RunIdentifier(run_name=run_name, run_time=run_time),
        )
    finally:
        release_frames(cp)
    return list(out.run_results.items())


def release_frames(cp: Any) -> None:
    """Let go of the frames a checkpoint run left in its execution engine.

    GE's datasource keeps one execution engine, whose batch manager keeps every batch it loaded
    (the frame of each suite's last run) until a batch of the same name replaces it: after a
    chunk's validation ~480 MB of frames (30 bench days) stayed alive through the transform, on
    top of DuckDB's working memory. The results are complete by then; nothing reads the frames."""
    for vd in getattr(cp, "validation_definitions", None) or []:
        with contextlib.suppress(Exception):  # a GE without these attributes keeps its frames
            manager = vd.data.data_asset.datasource.get_execution_engine().batch_manager
            manager.reset_batch_cache()
            manager.batch_data_cache.clear()


def forget(keys: list[Any]) -> None:
    """Drop stored results a later run of the same dates superseded (an iteration of the chunk's
    fixpoint, or dates a stop left out): Data Docs must not list a verdict that did not count."""
    store = ge_context().validation_results_store
    for key in keys:
        with contextlib.suppress(Exception):  # already gone: nothing to forget
            store.remove_key(key)


# ------------------------------------------------------------------- how Data Docs name things
#
# A reader of a Data Docs page sees GE's words for what was validated: the data asset, the run,
# the expectation's kwargs and notes. These functions give them asof's words: which source and
# batch dates a result judged, the value a run-time parameter took, and what each helper column
# (a column asof adds to the frame before GE sees it) holds.


def result_run_name(span: str, source: str, label: str = "") -> str:
    """The GE run name of a validation of `source` over the dates `span` (dates.span_label)."""
    return f"{span}-{source}{'-' + label if label else ''}"


def result_span(run_name: str, source: str) -> str | None:
    """The dates (`span_label`) of a run name `result_run_name` made; None for another name."""
    span, sep, _rest = run_name.partition(f"-{source}")
    return span if sep and span else None


def data_asset_name(suite_name: str, run_name: str) -> str:
    """What a result page names as its data asset: the layer, source and batch dates it judged."""
    source, _, level = suite_name.partition(".")
    span = result_span(run_name, source) or "?"
    if level == "batches":
        return f"bronze {source}, batch dates {span}: per-date summary (one row per batch date)"
    return f"bronze {source}, batch dates {span}: every delivered row"


def expectation_parameters(fx: dict[str, float]) -> dict[str, Any]:
    """The values of the suites' run-time parameters (`{"$PARAMETER": name}` in a suite)."""
    return {V.PARAM_FX_CURRENCIES: sorted(fx)}


PARAMETER_NOTES = {
    V.PARAM_FX_CURRENCIES: (
        "the currencies of the FX seed `dbt_project/seeds/fx_rates.csv`, read when the run starts"
    ),
}


def parameter_note(kwargs: dict[str, Any]) -> str | None:
    """Which kwargs are run-time parameters and where their value comes from (None: none are)."""
    parts = [
        f"`{k}` is the run-time parameter `{v['$PARAMETER']}`: "
        + PARAMETER_NOTES.get(v["$PARAMETER"], "set by the validation stage")
        for k, v in kwargs.items()
        if isinstance(v, dict) and "$PARAMETER" in v
    ]
    return "; ".join(parts) + "." if parts else None


_SUMMARY_COLUMNS = {
    V.ROWS_COL: "rows landed in the batch",
    V.MISSING_COLUMNS_COL: "contract columns missing from a file header of the batch (empty = none)",
    V.ADDED_COLUMNS_COL: "header columns outside the contract (comma-separated; empty = none)",
    V.MALFORMED_FILES_COL: "files of the batch that could not be read in the source's format (empty = none)",
    V.MEDIAN_COL: "median `amount_usd` (the amount converted with the FX seed) of the batch's accepted rows",
    V.FAILING_ROWS_COL: "rows of the batch that failed at least one row rule",
    V.FAILING_ROWS_MAX_COL: "the most failing rows the batch may have (the allowed share times its rows)",
}
_ROW_COLUMNS = {
    V.DELIVERY_COL: (
        "`first` for the first delivery of the row's key, `duplicate` / `conflicting_duplicate` for a "
        "later one with the same / a different content (null when the key is incomplete)"
    ),
    V.PARSE_ERROR_COL: "set by ingest when a line could not be split into the header's fields (see `_raw`)",
    V.AMOUNT_USD_COL: "`amount` converted to USD with the FX seed",
}


def helper_column_note(column: str, contract_columns: frozenset[str] | set[str]) -> str | None:
    """What a column asof adds before validation holds; None for a column of the delivered file."""
    if column in contract_columns:
        return None
    text = _SUMMARY_COLUMNS.get(column) or _ROW_COLUMNS.get(column)
    if text is None:
        base, _, suffix = column.rpartition("__")
        if not base:
            return None
        if column == V.parsed_col(base):
            text = f"`{base}` converted to its contract type (null when blank or unparseable)"
        elif column == V.unparseable_col(base):
            text = f"the raw text of `{base}` when it does not parse as its contract type, else null"
        elif column == V.naive_col(base):
            text = f"the raw text of `{base}` when it is a time without a zone, else null"
        elif column == V.unparseable_share_col(base):
            text = f"share of the batch's non-blank `{base}` values that do not parse as its type"
        elif column == V.known_col(base):
            text = f"true when `{base}` exists in the reference table by the row's batch date"
        elif suffix in ("min", "max") and column == V.bound_col(base, suffix):
            word = "lower" if suffix == "min" else "upper"
            text = f"the {word} bound of rule `{base}` for the row's batch date"
        else:
            return None
    return f"`{column}`: {text}"


def helper_notes(kwargs: dict[str, Any], contract_columns: frozenset[str] | set[str]) -> str | None:
    """The helper columns an expectation reads, described in one paragraph (None: it reads none)."""
    columns = [kwargs[k] for k in ("column", "column_A", "column_B") if isinstance(kwargs.get(k), str)]
    notes = [n for n in (helper_column_note(c, contract_columns) for c in columns) if n]
    if not notes:
        return None
    return (
        "Helper column(s), added by asof before validation (not in the delivered file): "
        + "; ".join(notes)
        + "."
    )
