"""Feature views over the gold tables.

Daily views have a ttl of one day: their rows are published at as_of_date + 1 day 00:00 UTC, so at
any instant the row of the previous as-of day is the only one that may be served. An entity without
a newer row (a customer inactive for 30 days has none) reads null, never a stale value. Profile rows
are only written when the profile changes, so that view keeps a long ttl.

A view's fields are its gold table's entity key and features as the marts' dbt contract defines them
(`flows.transform.gold_schema`: names, order, types, descriptions): a feature column is added in dbt only.
"""

from __future__ import annotations

from datetime import timedelta

from data_sources import (
    OWNER,
    customer_profile_source,
    customer_txn_features_daily_source,
    merchant_features_daily_source,
)
from entities import customer, merchant
from feast import FeatureView, Field
from feast.types import Float64, Int64, PrimitiveFeastType, String, UnixTimestamp

from flows.transform.gold_schema import gold_tables

DAILY_FEATURE_TTL = timedelta(days=1)
PROFILE_TTL = timedelta(days=3650)

# dbt data type of a gold column -> Feast's value type (a date is served as 00:00 UTC of the day)
FEAST_TYPES: dict[str, PrimitiveFeastType] = {
    "bigint": Int64,
    "double": Float64,
    "varchar": String,
    "date": UnixTimestamp,
    "timestamp with time zone": UnixTimestamp,
}


def gold_fields(table: str) -> list[Field]:
    """The view's schema: the gold table's entity key, then its features with their descriptions."""
    gold = gold_tables()[table]
    key = gold.columns[0]
    features = [
        Field(name=c.name, dtype=FEAST_TYPES[c.data_type], description=c.description) for c in gold.features
    ]
    return [Field(name=key.name, dtype=FEAST_TYPES[key.data_type]), *features]


customer_txn_features_daily = FeatureView(
    name="customer_txn_features_daily",
    entities=[customer],
    ttl=DAILY_FEATURE_TTL,
    schema=gold_fields("customer_txn_features_daily"),
    source=customer_txn_features_daily_source,
    online=True,
    description="Customer transaction behaviour as of each day (gold.customer_txn_features_daily).",
    owner=OWNER,
    tags={"entity": "customer", "cadence": "daily", "gold_table": "customer_txn_features_daily"},
)

merchant_features_daily = FeatureView(
    name="merchant_features_daily",
    entities=[merchant],
    ttl=DAILY_FEATURE_TTL,
    schema=gold_fields("merchant_features_daily"),
    source=merchant_features_daily_source,
    online=True,
    description="Merchant volume and chargeback history as of each day (gold.merchant_features_daily).",
    owner=OWNER,
    tags={"entity": "merchant", "cadence": "daily", "gold_table": "merchant_features_daily"},
)

customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=PROFILE_TTL,
    schema=gold_fields("customer_profile"),
    source=customer_profile_source,
    online=True,
    description="Latest known customer profile (gold.customer_profile, one row per change).",
    owner=OWNER,
    tags={"entity": "customer", "cadence": "on_change", "gold_table": "customer_profile"},
)
