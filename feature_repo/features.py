"""Feature views over the gold tables.

Daily views have a ttl of one day: their rows are published at as_of_date + 1 day 00:00 UTC, so at
any instant the row of the previous as-of day is the only one that may be served. An entity without
a newer row (a customer inactive for 30 days has none) reads null, never a stale value. Profile rows
are only written when the profile changes, so that view keeps a long ttl.
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
from feast.types import Float64, Int64, String, UnixTimestamp

DAILY_FEATURE_TTL = timedelta(days=1)
PROFILE_TTL = timedelta(days=3650)

customer_txn_features_daily = FeatureView(
    name="customer_txn_features_daily",
    entities=[customer],
    ttl=DAILY_FEATURE_TTL,
    schema=[
        Field(name="customer_id", dtype=Int64),
        Field(name="txn_count_1d", dtype=Int64, description="Transactions in the as-of day."),
        Field(name="txn_count_7d", dtype=Int64, description="Transactions in the trailing 7 days."),
        Field(name="txn_count_30d", dtype=Int64, description="Transactions in the trailing 30 days."),
        Field(name="amount_usd_sum_7d", dtype=Float64, description="USD amount, trailing 7 days."),
        Field(name="amount_usd_sum_30d", dtype=Float64, description="USD amount, trailing 30 days."),
        Field(name="amount_usd_avg_30d", dtype=Float64, description="Mean USD amount, trailing 30 days."),
        Field(
            name="amount_usd_max_7d",
            dtype=Float64,
            description="Largest USD amount in the trailing 7 days (null if none).",
        ),
        Field(name="distinct_merchants_30d", dtype=Int64, description="Distinct merchants, 30 days."),
        Field(
            name="seconds_since_last_txn",
            dtype=Int64,
            description="Seconds from the latest known transaction to the feature timestamp.",
        ),
    ],
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
    schema=[
        Field(name="merchant_id", dtype=Int64),
        Field(name="merchant_txn_count_7d", dtype=Int64, description="Transactions, trailing 7 days."),
        Field(name="merchant_txn_count_90d", dtype=Int64, description="Transactions, trailing 90 days."),
        Field(
            name="merchant_chargeback_count_90d",
            dtype=Int64,
            description="Chargebacks known by the as-of day on the 90-day transactions.",
        ),
        Field(
            name="merchant_chargeback_rate_90d",
            dtype=Float64,
            description="merchant_chargeback_count_90d / merchant_txn_count_90d.",
        ),
    ],
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
    schema=[
        Field(name="customer_id", dtype=Int64),
        Field(name="country", dtype=String, description="ISO-3166 alpha-2 country of the customer."),
        Field(name="kyc_level", dtype=Int64, description="Know-your-customer level, 0-3."),
        Field(name="signup_date", dtype=UnixTimestamp, description="Signup date (a date, 00:00 UTC)."),
    ],
    source=customer_profile_source,
    online=True,
    description="Latest known customer profile (gold.customer_profile, one row per change).",
    owner=OWNER,
    tags={"entity": "customer", "cadence": "on_change", "gold_table": "customer_profile"},
)
