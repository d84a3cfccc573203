"""The gold tables' schemas, read from the marts' dbt contract (contract §7).

`dbt_project/models/marts/_marts__models.yml` is the one definition of the gold feature schema: each
mart with `meta.gold_table` is a gold Delta table, and its enforced dbt contract gives every
column's name, order, type (`data_type`) and nullability (a `not_null` constraint). The Arrow schema
the dbt plugin publishes with (`flows.transform.lake_io.GOLD_SCHEMAS`), Feast's fields
(`feature_repo/features.py`) and the test fixtures all come from here, so a feature column is added
or retyped in the dbt contract only.

This module imports neither dbt nor Feast: Feast's repository and the tests read it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pyarrow as pa
import yaml

from flows.config import REPO_ROOT

MARTS_YML = REPO_ROOT / "dbt_project" / "models" / "marts" / "_marts__models.yml"
AS_OF_DATE = "as_of_date"
FEATURE_TIMESTAMP = "feature_timestamp"  # as_of_date + 1 day, 00:00 UTC: when the row became known
GOLD_PARTITION_BY = [AS_OF_DATE]

# dbt-duckdb data types of the marts' contract -> the Arrow type of the gold Delta column
ARROW_TYPES: dict[str, pa.DataType] = {
    "bigint": pa.int64(),
    "double": pa.float64(),
    "varchar": pa.string(),
    "date": pa.date32(),
    "timestamp with time zone": pa.timestamp("us", tz="UTC"),
}


@dataclass(frozen=True)
class GoldColumn:
    name: str
    data_type: str  # as the dbt contract writes it (a key of ARROW_TYPES)
    nullable: bool
    description: str

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.data_type]


@dataclass(frozen=True)
class GoldTable:
    name: str
    description: str
    columns: tuple[GoldColumn, ...]

    @property
    def entity(self) -> str:
        """The entity key: the first column (the marts are one row per entity per as-of date)."""
        return self.columns[0].name

    @property
    def features(self) -> tuple[GoldColumn, ...]:
        """The columns after the entity key and the two time columns."""
        return tuple(c for c in self.columns[1:] if c.name not in (AS_OF_DATE, FEATURE_TIMESTAMP))

    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in self.columns])


class GoldSchemaError(ValueError):
    """The marts' contract cannot define a gold table; the message names the model and column."""


def _column(raw: dict, model: str) -> GoldColumn:
    data_type = str(raw.get("data_type", "")).lower()
    if data_type not in ARROW_TYPES:
        raise GoldSchemaError(
            f"{model}.{raw.get('name')}: data_type {data_type!r} has no gold Arrow type "
            f"({', '.join(ARROW_TYPES)})"
        )
    not_null = any(c.get("type") == "not_null" for c in raw.get("constraints") or ())
    return GoldColumn(
        name=str(raw["name"]),
        data_type=data_type,
        nullable=not not_null,
        description=" ".join(str(raw.get("description", "")).split()),
    )


@cache
def _read(path: Path) -> dict[str, GoldTable]:
    tables: dict[str, GoldTable] = {}
    for model in yaml.safe_load(path.read_text())["models"]:
        config = model.get("config") or {}
        table = (config.get("meta") or {}).get("gold_table")
        if not table:
            continue
        if not (config.get("contract") or {}).get("enforced"):
            raise GoldSchemaError(f"{model['name']}: a gold mart needs an enforced dbt contract")
        columns = tuple(_column(c, model["name"]) for c in model["columns"])
        names = [c.name for c in columns]
        if names[1:3] != [AS_OF_DATE, FEATURE_TIMESTAMP]:
            raise GoldSchemaError(
                f"{model['name']}: columns must begin with the entity key, {AS_OF_DATE}, {FEATURE_TIMESTAMP}"
            )
        tables[table] = GoldTable(table, " ".join(str(model.get("description", "")).split()), columns)
    return tables


def gold_tables(path: Path = MARTS_YML) -> dict[str, GoldTable]:
    """Every gold table of the marts' contract, in the order the YAML lists them."""
    return _read(Path(path))


def gold_schemas(path: Path = MARTS_YML) -> dict[str, pa.Schema]:
    return {name: table.schema() for name, table in gold_tables(path).items()}
