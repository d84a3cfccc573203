"""A source's data contract (`expectations/contracts/<source>.yml`, read by flows/sources.py) and
the names the Great Expectations suites share with the code that builds their frames.

`expectations/build_suites.py` writes the suites against exactly these column and parameter names;
the validation stage builds frames with them. Change a name here and rebuild the suites.
"""

from __future__ import annotations

import csv
from pathlib import Path

from flows.config import REPO_ROOT
from flows.sources import CONTRACTS_DIR, Source, get_source

EXPECTATIONS_DIR = CONTRACTS_DIR.parent  # the GE File Data Context, next to the contracts
# The dbt seed `fx_rates(currency, usd_rate)`: the currencies a transaction may use and their rates.
FX_SEED = REPO_ROOT / "dbt_project" / "seeds" / "fx_rates.csv"

# --------------------------------------------------------------------- names shared with the suites

DATASOURCE = "asof"
BATCH_DEFINITION = "whole_batch"
DELIVERY_COL = "_delivery"
PARSE_ERROR_COL = "_parse_error"
AMOUNT_USD_COL = "amount_usd"
PARAM_FX_CURRENCIES = "fx_currencies"
TYPED = ("int", "decimal", "timestamp", "date")

# Columns of the per-date summary frame the `<source>.batches` suite judges (one row per batch date).
ROWS_COL = "rows"
MISSING_COLUMNS_COL = "missing_columns"
ADDED_COLUMNS_COL = "added_columns"
MALFORMED_FILES_COL = "malformed_files"
MEDIAN_COL = "amount_usd_median"
FAILING_ROWS_COL = "failing_rows"
FAILING_ROWS_MAX_COL = "failing_rows_max"


def rows_suite(source: str) -> str:
    """The suite over every row of the dates validated together."""
    return f"{source}.rows"


def batches_suite(source: str) -> str:
    """The suite over the per-date summary: one row per batch date, the batch-level rules."""
    return f"{source}.batches"


def rows_asset(source: str) -> str:
    return f"{source}_rows"


def batches_asset(source: str) -> str:
    return f"{source}_batches"


def parsed_col(column: str) -> str:
    return f"{column}__parsed"


def unparseable_col(column: str) -> str:
    return f"{column}__unparseable"


def naive_col(column: str) -> str:
    """The raw text of a timestamp written without a zone, else null (judged as `naive_timestamp`)."""
    return f"{column}__naive"


def unparseable_share_col(column: str) -> str:
    return f"{column}__unparseable_share"


def known_col(column: str) -> str:
    return f"{column}__known"


def bound_col(rule: str, bound: str) -> str:
    """A per-row or per-date bound derived from the batch date, e.g. `too_late__min`, `volume__max`."""
    return f"{rule}__{bound}"


# ------------------------------------------------------------------------------------- contracts

# A contract is the source itself: flows/sources.py reads `expectations/contracts/<source>.yml`.
Contract = Source


def contract_path(source: str) -> Path:
    return CONTRACTS_DIR / f"{get_source(source).name}.yml"


def load_contract(source: str) -> Contract:
    return get_source(source)


def load_fx_rates(path: Path | None = None) -> dict[str, float]:
    """The FX seed; created with the documented default rates if the dbt project has none yet."""
    path = Path(path or FX_SEED)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("currency,usd_rate\nUSD,1.0\nEUR,1.08\nGBP,1.27\n")
    with open(path, newline="") as fh:
        return {row["currency"].strip(): float(row["usd_rate"]) for row in csv.DictReader(fh)}
