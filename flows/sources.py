"""The upstream sources, read from their data contracts (contract §4).

A source is defined once, by `expectations/contracts/<source>.yml`: its format, file name, columns
(type, nullability, allowed values, description), key, row rules and batch rules. This module turns
every contract in that directory into a `Source`; ingest, validation, the dbt sources YAML, the GE
suites, the CLI, monitoring and the simulator all take their sources from here, so a new source is
a new contract (and its landing files), never a change under `flows/`.

Sources are listed in validation order, which follows the references between contracts (a
`reference` rule names the source it looks up): a referenced source is validated before the sources
that reference it, because "known" includes the same batch date.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import pyarrow as pa
import yaml

from flows.config import REPO_ROOT

FileFormat = Literal["csv", "jsonl"]
FORMATS: tuple[str, ...] = ("csv", "jsonl")
CONTRACTS_DIR = REPO_ROOT / "expectations" / "contracts"

# contract type -> the Arrow type a value has in silver (contract §4, "Type syntax")
SILVER_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "enum": pa.string(),
    "int": pa.int64(),
    "decimal": pa.float64(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # contract type: a key of SILVER_TYPES
    nullable: bool = False
    allowed: tuple[str, ...] | None = None
    allowed_from: str | None = None  # a table whose values are the allowed set at run time (fx_rates)
    reason: str | None = None  # quarantine reason for a value outside `allowed` (not_allowed:<col>)
    pattern: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Source:
    name: str
    fmt: FileFormat
    default_file: str  # the name upstream gives a batch's file; ingest reads every visible file
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    empty_is_valid: bool  # a batch with zero data rows is a legitimate "no changes" delivery
    version: int = 1
    description: str = ""
    # rules and batch hold the contract's YAML as written; they take no part in equality or hashing
    rules: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    batch: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def rules_of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.rules if r["kind"] == kind]

    @property
    def references(self) -> tuple[str, ...]:
        """The sources this one's rows must be known in (its `reference` rules' tables)."""
        return tuple(dict.fromkeys(r["table"] for r in self.rules_of("reference")))


class UnknownSourceError(ValueError):
    pass


class ContractError(ValueError):
    """A contract file cannot define a source; the message names the file."""


def _column(raw: Mapping[str, Any], where: str) -> Column:
    if raw.get("type") not in SILVER_TYPES:
        known = ", ".join(SILVER_TYPES)
        raise ContractError(f"{where}: type must be one of {known}, got {raw.get('type')!r}")
    allowed = raw.get("allowed")
    return Column(
        name=str(raw["name"]),
        type=str(raw["type"]),
        nullable=bool(raw.get("nullable", False)),
        allowed=tuple(str(v) for v in allowed) if allowed is not None else None,
        allowed_from=raw.get("allowed_from"),
        reason=raw.get("reason"),
        pattern=raw.get("pattern"),
        description=str(raw.get("description", "")),
    )


def read_contract(path: Path) -> Source:
    """One contract file as a `Source`; its `source:` must be its file name."""
    raw = yaml.safe_load(Path(path).read_text())
    where = str(path)
    if not isinstance(raw, dict):
        raise ContractError(f"{where}: not a mapping")
    missing = [k for k in ("source", "format", "key", "empty_is_valid", "columns") if k not in raw]
    if missing:
        raise ContractError(f"{where}: missing {', '.join(missing)}")
    name = str(raw["source"])
    if name != Path(path).stem:
        raise ContractError(f"{where}: source {name!r} must match the file name")
    if raw["format"] not in FORMATS:
        raise ContractError(f"{where}: format must be one of {', '.join(FORMATS)}, got {raw['format']!r}")
    columns = tuple(_column(c, f"{where}: column {c.get('name')!r}") for c in raw["columns"])
    names = [c.name for c in columns]
    if len(set(names)) != len(names):
        raise ContractError(f"{where}: duplicate column names")
    key = tuple(str(k) for k in raw["key"])
    if not key or any(k not in names for k in key):
        raise ContractError(f"{where}: key {list(key)} must name columns of the contract")
    rules = tuple(raw.get("rules") or ())
    for rule in rules:
        if "column" in rule and rule["column"] not in names:
            raise ContractError(f"{where}: rule {rule.get('id')!r} names no column of the contract")
    batch = dict(raw.get("batch") or {})
    min_rows = (batch.get("volume") or {}).get("min_rows")
    if min_rows is not None and bool(raw["empty_is_valid"]) != (int(min_rows) == 0):
        # empty_is_valid states what the volume rule enforces: they cannot disagree
        raise ContractError(
            f"{where}: empty_is_valid is {raw['empty_is_valid']} but batch.volume.min_rows is {min_rows}"
        )
    return Source(
        name=name,
        fmt=cast(FileFormat, raw["format"]),
        default_file=str(raw.get("file") or f"{name}.{raw['format']}"),
        columns=columns,
        key=key,
        empty_is_valid=bool(raw["empty_is_valid"]),
        version=int(raw.get("version", 1)),
        description=str(raw.get("description", "")),
        rules=rules,
        batch=batch,
    )


def validation_order(sources: Mapping[str, Source]) -> list[str]:
    """Referenced sources first: by depth in the reference graph (a source referencing nothing is 0),
    then, at equal depth, sources that others reference before those nobody references, then by name.
    With the demo contracts: merchants, customers, transactions, chargebacks."""
    depth: dict[str, int] = {}

    def depth_of(name: str, path: tuple[str, ...]) -> int:
        if name in path:
            raise ContractError(f"reference cycle between contracts: {' -> '.join((*path, name))}")
        if name not in depth:
            refs = sources[name].references
            for ref in refs:
                if ref not in sources:
                    raise ContractError(f"{name}: references unknown source {ref!r} (no contract {ref}.yml)")
            for rule in sources[name].rules_of("reference"):
                if rule["table_key"] not in sources[rule["table"]].column_names:
                    raise ContractError(f"{name}: {rule['table']} has no column {rule['table_key']!r}")
            depth[name] = 1 + max((depth_of(r, (*path, name)) for r in refs), default=-1)
        return depth[name]

    referenced = {r for s in sources.values() for r in s.references}
    return sorted(sources, key=lambda n: (depth_of(n, ()), n not in referenced, n))


def load_sources(directory: Path = CONTRACTS_DIR) -> dict[str, Source]:
    """Every `<source>.yml` of `directory`, in validation order."""
    found = {s.name: s for s in map(read_contract, sorted(Path(directory).glob("*.yml")))}
    if not found:
        raise ContractError(f"no contract in {directory}")
    return {name: found[name] for name in validation_order(found)}


SOURCES: dict[str, Source] = load_sources()
SOURCE_NAMES: tuple[str, ...] = tuple(SOURCES)


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise UnknownSourceError(f"unknown source {name!r} (known: {', '.join(SOURCE_NAMES)})") from None


# Bronze keeps every value exactly as it arrived (strings), plus lineage columns. Columns that are
# not in the contract are kept as a JSON object in `_extra`; a line that could not be split into
# fields is kept whole in `_raw` with the reason in `_parse_error`.
LINEAGE_FIELDS: list[pa.Field] = [
    pa.field("_extra", pa.string()),
    pa.field("_raw", pa.string()),
    pa.field("_parse_error", pa.string()),
    pa.field("_batch_date", pa.date32(), nullable=False),
    pa.field("_ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("_source_file", pa.string(), nullable=False),
    pa.field("_row_number", pa.int64(), nullable=False),
]
VALIDATION_RUN_FIELD = pa.field("_validation_run_id", pa.string())
# What each lineage column of silver holds (the dbt sources YAML documents them from here).
SILVER_LINEAGE_DESCRIPTIONS: dict[str, str] = {
    "_extra": "Columns delivered outside the contract, as a JSON object (null when none).",
    "_batch_date": (
        "Execution date of the batch that delivered the row: its knowledge date (docs/contract.md section 5)."
    ),
    "_ingested_at": "When the batch was ingested (UTC).",
    "_source_file": "Landing file the row came from, relative to ASOF_HOME.",
    "_row_number": "1-based data record number in the delivered file.",
    "_validation_run_id": "The validation run that accepted the row.",
}


def bronze_schema(source: Source) -> pa.Schema:
    return pa.schema([pa.field(c, pa.string()) for c in source.column_names] + LINEAGE_FIELDS)


def silver_schema(source: Source) -> pa.Schema:
    """Typed columns, the bronze lineage (minus the raw/parse helpers) and the validation run id."""
    fields = [pa.field(c.name, SILVER_TYPES[c.type]) for c in source.columns]
    fields += [f for f in LINEAGE_FIELDS if f.name not in ("_raw", "_parse_error")]
    fields.append(VALIDATION_RUN_FIELD)
    return pa.schema(fields)
