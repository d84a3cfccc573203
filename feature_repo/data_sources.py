"""Batch sources: the three gold Delta tables written by the dbt stage (contract §7).

Paths come from `flows.storage.lake.uri` (the lake root follows ASOF_HOME / ASOF_LAKE_URI), so set
ASOF_HOME before `feast apply`. The project's offline store resolves each path back to its lake
table and reads it through `flows.storage.lake`; Feast's stock `file` store can read the same sources.
"""

from __future__ import annotations

from feast import FileSource
from feast.data_format import DeltaFormat

from flows.storage import lake
from flows.transform.gold_schema import FEATURE_TIMESTAMP

OWNER = "fraud-features@asof.local"


def gold_source(table: str, description: str) -> FileSource:
    return FileSource(
        name=f"gold_{table}",
        path=lake.uri("gold", table),
        file_format=DeltaFormat(),
        timestamp_field=FEATURE_TIMESTAMP,
        description=description,
        owner=OWNER,
        tags={"layer": "gold", "format": "delta", "producer": "dbt", "table": table},
    )


customer_txn_features_daily_source = gold_source(
    "customer_txn_features_daily",
    "One row per customer per as-of day with a transaction in the trailing 30 days: counts, USD "
    "amount sums/avg/max and recency, from transactions known by that day.",
)

merchant_features_daily_source = gold_source(
    "merchant_features_daily",
    "One row per merchant per as-of day with a transaction in the trailing 90 days: volumes and "
    "chargebacks known by that day.",
)

customer_profile_source = gold_source(
    "customer_profile",
    "One row per customer per batch in which its profile changed (latest CDC values known then).",
)
