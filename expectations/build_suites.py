"""(Re)build what is generated from the data contracts (`contracts/<source>.yml`): the Great
Expectations File Data Context in `expectations/` and dbt's silver sources YAML
(`dbt_project/models/staging/silver/_silver__sources.yml`).

    .venv/bin/python expectations/build_suites.py          # rewrite the generated files
    .venv/bin/python expectations/build_suites.py --check  # exit 1 if they are out of date

The rules are authored here and in `contracts/<source>.yml`, never derived from data. The output is
committed (`great_expectations.yml`, `expectations/*.json`, `validation_definitions/*.json`,
`checkpoints/*.json`) and is what GE loads at run time (`flows.validation.suites.ge_context`). Ids
are deterministic (uuid5 of what they name), so a rebuild without rule changes is byte-identical.

Per source, both over all the dates a run validates together (a daily run: one; a backfill chunk:
its dates):
  suite `<source>.rows`     every row: row rules (meta.level = row, meta.reason = the quarantine
                             reason); bounds that follow from a row's batch date are helper columns
                             of the row (`too_late__min`), so one frame holds many dates
  suite `<source>.batches`  one row per batch date (the summary frame, indexed by the date): batch
                             rules (meta.level = batch, meta.rule = the rule): file header, malformed
                             files, type changes, volume, drift, share of failing rows
Every expectation carries its rule in `meta`; flows/validation splits rows by GE's
`unexpected_index_list` (row labels), and rejects the dates GE lists (date labels).

The dbt sources YAML documents every silver table (a contract's description and columns, then the
lineage columns) for the models that read them through the `lake` plugin.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from flows.sources import SILVER_LINEAGE_DESCRIPTIONS, SOURCE_NAMES, silver_schema  # noqa: E402
from flows.validation import contracts as V  # noqa: E402
from flows.validation import suites as S  # noqa: E402

NAMESPACE = uuid.UUID("6f1c3a52-8d7e-4b8a-9a53-0c1f7e2b5a10")
GENERATED = ("great_expectations.yml", "expectations", "validation_definitions", "checkpoints")


def _id(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(parts)))


def _row(reason: str, notes: str, **extra) -> dict:
    return {"meta": {"level": "row", "reason": reason, **extra}, "notes": notes}


def _batch(rule: str, notes: str, **extra) -> dict:
    return {"meta": {"level": "batch", "rule": rule, **extra}, "notes": notes}


def rows_expectations(contract: V.Contract) -> list[tuple[str, dict]]:
    """(expectation class name, kwargs incl. meta/notes/severity) for `<source>.rows`."""
    out: list[tuple[str, dict]] = [
        (
            "ExpectColumnValuesToBeNull",
            {
                "column": V.PARSE_ERROR_COL,
                **_row("malformed_row", "A line ingest could not split into fields (kept whole in `_raw`)."),
            },
        )
    ]
    for col in contract.columns:
        c = col.name
        if not col.nullable:
            out.append(
                ("ExpectColumnValuesToNotBeNull", {"column": c, **_row(f"null:{c}", f"`{c}` is required.")})
            )
        if col.type in V.TYPED:
            out.append(
                (
                    "ExpectColumnValuesToBeNull",
                    {
                        "column": V.unparseable_col(c),
                        **_row(
                            f"unparseable:{c}",
                            f"`{c}` must parse as {col.type}; `{V.unparseable_col(c)}` holds the raw text "
                            "of values that do not.",
                            column=c,
                            type=col.type,
                        ),
                    },
                )
            )
        if col.type == "timestamp":
            out.append(
                (
                    "ExpectColumnValuesToBeNull",
                    {
                        "column": V.naive_col(c),
                        **_row(
                            f"naive_timestamp:{c}",
                            f"`{c}` must carry a time zone (`Z` or an offset); a naive time is ambiguous.",
                        ),
                    },
                )
            )
        if col.allowed is not None:
            reason = col.reason or f"not_allowed:{c}"
            if col.allowed_from == "fx_rates":
                kwargs = {"column": c, "value_set": {"$PARAMETER": V.PARAM_FX_CURRENCIES}}
                note = f"`{c}` must be a currency of the FX seed `fx_rates` (dbt_project/seeds/fx_rates.csv)."
            elif col.type == "int":
                kwargs = {"column": V.parsed_col(c), "value_set": [int(v) for v in col.allowed]}
                note = f"`{c}` must be one of {', '.join(col.allowed)}."
            else:
                kwargs = {"column": c, "value_set": list(col.allowed)}
                note = f"`{c}` must be one of {', '.join(col.allowed)}."
            out.append(("ExpectColumnValuesToBeInSet", {**kwargs, **_row(reason, note)}))
        if col.pattern:
            out.append(
                (
                    "ExpectColumnValuesToMatchRegex",
                    {
                        "column": c,
                        "regex": col.pattern,
                        **_row(f"invalid_format:{c}", f"`{c}` must match `{col.pattern}`."),
                    },
                )
            )
    for rule in contract.rules:
        rid, kind = rule["id"], rule["kind"]
        if kind == "range":
            kw = {"column": V.parsed_col(rule["column"])}
            if "min" in rule:
                kw["min_value"] = rule["min"]
                kw["strict_min"] = bool(rule.get("strict_min", False))
            if "max" in rule:
                kw["max_value"] = rule["max"]
                kw["strict_max"] = bool(rule.get("strict_max", False))
            lo = f"> {rule['min']:g}" if rule.get("strict_min") else f">= {rule['min']:g}"
            hi = f"< {rule['max']:g}" if rule.get("strict_max") else f"<= {rule['max']:g}"
            out.append(
                ("ExpectColumnValuesToBeBetween", {**kw, **_row(rid, f"`{rule['column']}` {lo} and {hi}.")})
            )
        elif kind == "not_before_batch":
            out.append(
                (
                    "ExpectColumnPairValuesAToBeGreaterThanB",
                    {
                        "column_A": V.parsed_col(rule["column"]),
                        "column_B": V.bound_col(rid, "min"),
                        "or_equal": True,
                        "ignore_row_if": "either_value_is_missing",
                        **_row(
                            rid,
                            f"`{rule['column']}` must be on or after 00:00 UTC of the row's batch date minus "
                            f"{rule['days']} days (`{V.bound_col(rid, 'min')}`).",
                        ),
                    },
                )
            )
        elif kind == "before_next_day":
            out.append(
                (
                    "ExpectColumnPairValuesAToBeGreaterThanB",
                    {
                        "column_A": V.bound_col(rid, "max"),
                        "column_B": V.parsed_col(rule["column"]),
                        "or_equal": False,
                        "ignore_row_if": "either_value_is_missing",
                        **_row(
                            rid,
                            f"`{rule['column']}` must be before 00:00 UTC of the day after the row's batch "
                            f"date (`{V.bound_col(rid, 'max')}`).",
                        ),
                    },
                )
            )
        elif kind == "reference":
            out.append(
                (
                    "ExpectColumnValuesToBeInSet",
                    {
                        "column": V.known_col(rule["column"]),
                        "value_set": [True],
                        **_row(
                            rid,
                            f"`{rule['column']}` must exist in silver `{rule['table']}` with "
                            "`_batch_date` <= the batch date.",
                        ),
                    },
                )
            )
        elif kind == "first_delivery_wins":
            scope = "this batch and earlier batches" if rule.get("across_batches") else "this batch"
            for verdict, what in (("duplicate", "an identical"), ("conflicting_duplicate", "a different")):
                out.append(
                    (
                        "ExpectColumnValuesToNotBeInSet",
                        {
                            "column": V.DELIVERY_COL,
                            "value_set": [verdict],
                            **_row(
                                verdict,
                                f"Key {list(contract.key)} already delivered ({scope}) with {what} content: "
                                "the first delivery wins.",
                            ),
                        },
                    )
                )
        else:
            raise ValueError(f"{contract.name}: unknown rule kind {kind!r}")

    return out


def _at_least(column_a: str, column_b: str, rule: str, notes: str, **extra) -> tuple[str, dict]:
    """`column_a >= column_b` for each date; a date where either is missing is not checked."""
    return (
        "ExpectColumnPairValuesAToBeGreaterThanB",
        {
            "column_A": column_a,
            "column_B": column_b,
            "or_equal": True,
            "ignore_row_if": "either_value_is_missing",
            **({"severity": "warning"} if extra.get("severity") == "warning" else {}),
            **_batch(rule, notes, **extra),
        },
    )


def batches_expectations(contract: V.Contract) -> list[tuple[str, dict]]:
    """(expectation class name, kwargs) for `<source>.batches`: one row per batch date."""
    out: list[tuple[str, dict]] = [
        (
            "ExpectColumnValuesToBeInSet",
            {
                "column": V.ADDED_COLUMNS_COL,
                "value_set": [""],
                "severity": "warning",
                **_batch(
                    "added_columns",
                    "No column outside the contract in the file header (added columns are kept in `_extra`; "
                    "warning only).",
                    severity="warning",
                ),
            },
        ),
        (
            "ExpectColumnValuesToBeInSet",
            {
                "column": V.MISSING_COLUMNS_COL,
                "value_set": [""],
                **_batch(
                    "contract_broken",
                    "Every contract column is in the file header (missing or renamed: critical).",
                    check="header",
                ),
            },
        ),
        (
            "ExpectColumnValuesToBeInSet",
            {
                "column": V.MALFORMED_FILES_COL,
                "value_set": [""],
                **_batch(
                    "contract_broken",
                    "No delivered file is malformed (no header, unreadable, cut off: critical).",
                    check="malformed",
                ),
            },
        ),
    ]
    tc = contract.batch.get("type_change")
    if tc:
        share = float(tc["max_unparseable_share"])
        for col in contract.columns:
            if col.type in V.TYPED:
                out.append(
                    (
                        "ExpectColumnValuesToBeBetween",
                        {
                            "column": V.unparseable_share_col(col.name),
                            "max_value": share,
                            **_batch(
                                "contract_broken",
                                f"At most {100 * share:g}% of `{col.name}` unparseable as {col.type}; more "
                                "means the column's type changed: the batch is rejected.",
                                check="type_change",
                                column=col.name,
                                type=col.type,
                                share_column=V.unparseable_share_col(col.name),
                                max_share=share,
                            ),
                        },
                    )
                )
    vol = contract.batch.get("volume", {})
    trailing = (
        f"; between {vol['min_ratio']:g}x and {vol['max_ratio']:g}x the median landed count of the previous "
        f"{vol['trailing_days']} batches"
        if "trailing_days" in vol
        else ""
    )
    volume_note = f"At least {vol.get('min_rows', 0)} row(s){trailing}. Critical: the batch is rejected."
    out.append(_at_least(V.ROWS_COL, V.bound_col("volume", "min"), "volume", volume_note))
    out.append(_at_least(V.bound_col("volume", "max"), V.ROWS_COL, "volume", volume_note))
    if "trailing_days" in vol:
        note = (
            f"Between {vol['warn_min_ratio']:g}x and {vol['warn_max_ratio']:g}x the median landed count of "
            f"the previous {vol['trailing_days']} batches. Warning only."
        )
        out.append(
            _at_least(
                V.ROWS_COL, V.bound_col("volume_warning", "min"), "volume_warning", note, severity="warning"
            )
        )
        out.append(
            _at_least(
                V.bound_col("volume_warning", "max"), V.ROWS_COL, "volume_warning", note, severity="warning"
            )
        )
    drift = contract.batch.get("drift")
    if drift:
        note = (
            f"Median `{drift['column']}` of the batch (`{V.MEDIAN_COL}`) between {drift['min_ratio']:g}x and "
            f"{drift['max_ratio']:g}x the median of the previous {drift['trailing_days']} accepted batch "
            "dates "
            f"(checked once {drift['min_history_days']} dates of history exist). Critical."
        )
        out.append(_at_least(V.MEDIAN_COL, V.bound_col("amount_drift", "min"), "amount_drift", note))
        out.append(_at_least(V.bound_col("amount_drift", "max"), V.MEDIAN_COL, "amount_drift", note))
    fr = contract.batch.get("failing_rows")
    if fr:
        note = (
            f"At most {100 * fr['max_share']:g}% of the rows fail row rules (checked from "
            f"{fr.get('min_rows', 1)} failing rows; `{V.FAILING_ROWS_MAX_COL}` = the share times the rows). "
            "Critical."
        )
        out.append(
            _at_least(
                V.FAILING_ROWS_MAX_COL,
                V.FAILING_ROWS_COL,
                "too_many_failing_rows",
                note,
                max_share=float(fr["max_share"]),
            )
        )
    return out


def with_notes(kwargs: dict, contract: V.Contract) -> dict:
    """The expectation's notes, followed by what its helper columns hold and where its run-time
    parameters come from: a Data Docs reader sees `amount__parsed` or `{"$PARAMETER": ...}` in the
    expectation and needs the note to know what it is."""
    extra = [
        n
        for n in (
            S.helper_notes(kwargs, set(contract.column_names)),
            S.parameter_note(kwargs),
        )
        if n
    ]
    if not extra:
        return kwargs
    return {**kwargs, "notes": "\n\n".join([kwargs["notes"], *extra] if kwargs.get("notes") else extra)}


_KEYED_SECTION = {"class_name": "KeyedSiteSectionBuilder", "module_name": "flows.validation.datadocs"}


def _yaml_template(data_context_id: str) -> dict:
    def fs(base: str) -> dict:
        return {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": base,
            "suppress_store_backend_id": True,
        }

    return {
        "config_version": 4.0,
        "analytics_enabled": False,
        "data_context_id": data_context_id,
        "progress_bars": {"globally": False},
        "config_variables_file_path": None,
        "plugins_directory": None,
        "expectations_store_name": "expectations_store",
        "validation_results_store_name": "validation_results_store",
        "checkpoint_store_name": "checkpoint_store",
        "stores": {
            "expectations_store": {"class_name": "ExpectationsStore", "store_backend": fs("expectations/")},
            "validation_results_store": {
                "class_name": "ValidationResultsStore",
                "store_backend": fs("${ASOF_HOME}/ge/validations/"),
            },
            "checkpoint_store": {"class_name": "CheckpointStore", "store_backend": fs("checkpoints/")},
            "validation_definition_store": {
                "class_name": "ValidationDefinitionStore",
                "store_backend": fs("validation_definitions/"),
            },
        },
        "data_docs_sites": {
            "local_site": {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": "${ASOF_HOME}/docs/",
                },
                "site_index_builder": {
                    "class_name": "CachedSiteIndexBuilder",
                    "module_name": "flows.validation.datadocs",
                },
                # no profiler runs here; GE's default profiling section would list the whole
                # validation results store again on every page build (~0.1 s per 900 results),
                # and the other two render named pages without listing their store
                "site_section_builders": {
                    "expectations": dict(_KEYED_SECTION),
                    "validations": dict(_KEYED_SECTION),
                    "profiling": "None",
                },
            }
        },
    }


HEADER = """\
# Great Expectations 1.x File Data Context of asof (contract §6).
# GENERATED by expectations/build_suites.py from expectations/contracts/*.yml: edit those, then rebuild.
# Validation results and Data Docs are written under ASOF_HOME (resolved at run time by
# flows.validation.suites.ge_context); nothing below is written at run time.
"""


def build(out_dir: Path) -> list[Path]:
    """Write the generated context files into `out_dir`; returns the files written."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe
    import yaml

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ctx"
        root.mkdir()
        (root / "great_expectations.yml").write_text(
            yaml.safe_dump(_yaml_template(_id("context")), sort_keys=False)
        )
        ctx = gx.get_context(
            mode="file",
            context_root_dir=str(root),
            runtime_environment={"ASOF_HOME": str(Path(tmp) / "home")},
        )
        ds = ctx.data_sources.add_pandas(V.DATASOURCE)
        ids: dict[str, str] = {ds.id: _id("datasource", V.DATASOURCE)}
        for name in SOURCE_NAMES:
            contract = V.load_contract(name)
            for asset_name, suite_name, specs in (
                (V.rows_asset(name), V.rows_suite(name), rows_expectations(contract)),
                (V.batches_asset(name), V.batches_suite(name), batches_expectations(contract)),
            ):
                asset = ds.add_dataframe_asset(asset_name)
                bd = asset.add_batch_definition_whole_dataframe(V.BATCH_DEFINITION)
                ids[asset.id] = _id("asset", V.DATASOURCE, asset_name)
                ids[bd.id] = _id("batch_definition", V.DATASOURCE, asset_name, V.BATCH_DEFINITION)
                suite = gx.ExpectationSuite(
                    name=suite_name,
                    meta={
                        "source": name,
                        "contract": f"contracts/{name}.yml",
                        "contract_version": contract.version,
                    },
                )
                for cls_name, kwargs in specs:
                    suite.add_expectation(getattr(gxe, cls_name)(**with_notes(kwargs, contract)))
                suite = ctx.suites.add(suite)
                ids[suite.id] = _id("suite", suite_name)
                for e in suite.expectations:
                    cfg = e.configuration
                    ids[e.id] = _id(
                        "expectation",
                        suite_name,
                        cfg.type,
                        json.dumps(cfg.kwargs, sort_keys=True, default=str),
                    )
                vd = ctx.validation_definitions.add(
                    gx.ValidationDefinition(name=suite_name, data=bd, suite=suite)
                )
                ids[vd.id] = _id("validation_definition", suite_name)
                cp = ctx.checkpoints.add(
                    gx.Checkpoint(
                        name=suite_name,
                        validation_definitions=[vd],
                        result_format={"result_format": "COMPLETE"},
                        actions=[],
                    )
                )
                ids[cp.id] = _id("checkpoint", suite_name)

        def remap(text: str) -> str:
            for old, new in ids.items():
                text = text.replace(str(old), new)
            return text

        generated = yaml.safe_load((root / "great_expectations.yml").read_text())
        config = _yaml_template(_id("context"))
        config["fluent_datasources"] = generated["fluent_datasources"]
        yml = HEADER + yaml.safe_dump(config, sort_keys=False, width=110)

        for sub in GENERATED[1:]:
            shutil.rmtree(out_dir / sub, ignore_errors=True)
        written = []
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "great_expectations.yml").write_text(remap(yml))
        written.append(out_dir / "great_expectations.yml")
        for sub in GENERATED[1:]:
            for path in sorted((root / sub).rglob("*.json")):
                target = out_dir / sub / path.relative_to(root / sub)
                target.parent.mkdir(parents=True, exist_ok=True)
                data = json.loads(remap(path.read_text()))
                target.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
                written.append(target)
    return written


# ------------------------------------------------------------------------------ dbt silver sources

DBT_SOURCES_YML = HERE.parent / "dbt_project" / "models" / "staging" / "silver" / "_silver__sources.yml"
DBT_SOURCES_HEADER = """\
# dbt sources: the silver Delta tables (contract §6).
# GENERATED by expectations/build_suites.py from expectations/contracts/*.yml: edit those, then rebuild.
"""
SILVER_DESCRIPTION = (
    "Validated silver Delta tables (written by the validation stage, docs/contract.md section 6). Each "
    "is read through the project plugin `flows.transform.lake_io` (alias `lake`) as a lazily scanned "
    "Arrow dataset: DuckDB pushes the staging/intermediate filters on `_batch_date` and `event_time` "
    "down to the Delta partitions, and no DuckDB extension is needed. Only rows that passed validation "
    "are here; for a keyed source only the first delivery of each key."
)


def silver_sources_yaml() -> str:
    """The dbt sources YAML of silver: one table per contract, its columns as silver holds them."""
    import yaml

    tables = []
    for name in SOURCE_NAMES:
        contract = V.load_contract(name)
        columns = [{"name": c.name, "description": c.description} for c in contract.columns]
        lineage = [f.name for f in silver_schema(contract) if f.name not in contract.column_names]
        columns += [{"name": c, "description": SILVER_LINEAGE_DESCRIPTIONS[c]} for c in lineage]
        tables.append({"name": name, "description": contract.description, "columns": columns})
    doc = {
        "version": 2,
        "sources": [
            {
                "name": "silver",
                "description": SILVER_DESCRIPTION,
                "config": {"meta": {"plugin": "lake", "layer": "silver"}},
                "tables": tables,
            }
        ],
    }
    return DBT_SOURCES_HEADER + yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="only compare; exit 1 if the committed files differ"
    )
    args = parser.parse_args()
    if not args.check:
        for path in build(HERE):
            print(path.relative_to(HERE.parent))
        DBT_SOURCES_YML.write_text(silver_sources_yaml())
        print(DBT_SOURCES_YML.relative_to(HERE.parent))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = build(Path(tmp))
        stale = []
        for path in fresh:
            rel = path.relative_to(tmp)
            committed = HERE / rel
            if not committed.exists() or committed.read_bytes() != path.read_bytes():
                stale.append(str(rel))
        committed_files = {
            p.relative_to(HERE).as_posix() for sub in GENERATED[1:] for p in (HERE / sub).rglob("*.json")
        }
        extra = committed_files - {p.relative_to(tmp).as_posix() for p in fresh}
        if not DBT_SOURCES_YML.exists() or DBT_SOURCES_YML.read_text() != silver_sources_yaml():
            stale.append(str(DBT_SOURCES_YML.relative_to(HERE.parent)))
        if stale or extra:
            print("out of date: " + ", ".join(sorted(stale + list(extra))), file=sys.stderr)
            return 1
    print("expectations/ and the dbt silver sources are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
