"""The four upstream sources and their contracts (contract §4).

This is the single place that names sources and their columns; the simulator, ingest, validation
and the CLI all read it, so a new source or column is added here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

FileFormat = Literal["csv", "jsonl"]


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # contract type: string | int | decimal | timestamp | date | enum
    nullable: bool = False
    allowed: tuple[str, ...] | None = None
    description: str = ""


@dataclass(frozen=True)
class Source:
    name: str
    fmt: FileFormat
    default_file: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    empty_is_valid: bool  # a batch with zero data rows is a legitimate "no changes" delivery

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


TRANSACTIONS = Source(
    name="transactions",
    fmt="csv",
    default_file="transactions.csv",
    columns=(
        Column("txn_id", "string", description="unique transaction id"),
        Column("customer_id", "int"),
        Column("merchant_id", "int"),
        Column("amount", "decimal", description="2 dp, in `currency`"),
        Column("currency", "enum", allowed=("USD", "EUR", "GBP")),
        Column("channel", "enum", allowed=("web", "app", "pos")),
        Column("event_time", "timestamp", description="ISO-8601 UTC with Z"),
    ),
    key=("txn_id",),
    empty_is_valid=False,
)

CUSTOMERS = Source(
    name="customers",
    fmt="jsonl",
    default_file="customers.jsonl",
    columns=(
        Column("customer_id", "int"),
        Column("op", "enum", allowed=("c", "u")),
        Column("updated_at", "timestamp"),
        Column("country", "string", description="ISO-3166 alpha-2"),
        Column("kyc_level", "int", allowed=("0", "1", "2", "3")),
        Column("signup_date", "date"),
    ),
    key=("customer_id", "updated_at"),
    empty_is_valid=True,
)

MERCHANTS = Source(
    name="merchants",
    fmt="csv",
    default_file="merchants.csv",
    columns=(
        Column("merchant_id", "int"),
        Column("name", "string"),
        Column("mcc", "string", description="4-digit merchant category code"),
        Column("country", "string"),
        Column("risk_tier", "enum", allowed=("low", "medium", "high")),
    ),
    key=("merchant_id",),
    empty_is_valid=False,
)

CHARGEBACKS = Source(
    name="chargebacks",
    fmt="csv",
    default_file="chargebacks.csv",
    columns=(
        Column("txn_id", "string"),
        Column("chargeback_time", "timestamp"),
        Column("reason_code", "string"),
    ),
    key=("txn_id",),
    empty_is_valid=True,
)

# Validation order matters: merchants before transactions ("merchant known" includes the same batch),
# transactions before chargebacks (a chargeback must reference a known transaction).
SOURCES: dict[str, Source] = {s.name: s for s in (MERCHANTS, CUSTOMERS, TRANSACTIONS, CHARGEBACKS)}
SOURCE_NAMES: tuple[str, ...] = tuple(SOURCES)


class UnknownSourceError(ValueError):
    pass


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


def bronze_schema(source: Source) -> pa.Schema:
    return pa.schema([pa.field(c, pa.string()) for c in source.column_names] + LINEAGE_FIELDS)


_SILVER_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "enum": pa.string(),
    "int": pa.int64(),
    "decimal": pa.float64(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}


def silver_schema(source: Source) -> pa.Schema:
    """Typed columns, the bronze lineage (minus the raw/parse helpers) and the validation run id."""
    fields = [pa.field(c.name, _SILVER_TYPES[c.type]) for c in source.columns]
    fields += [f for f in LINEAGE_FIELDS if f.name not in ("_raw", "_parse_error")]
    fields.append(pa.field("_validation_run_id", pa.string()))
    return pa.schema(fields)
