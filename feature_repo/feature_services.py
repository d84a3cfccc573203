"""Feature services: the versioned feature sets models are trained and served with.

Each service logs what it serves into its own lake table (`ops/feature_log_<service>`) when
`asof serve` runs with feature logging on (flows/features/feature_logging.py); monitoring compares those
logs with offline retrieval."""

from __future__ import annotations

from data_sources import OWNER
from feast import FeatureService
from feast.feature_logging import LoggingConfig
from features import customer_profile, customer_txn_features_daily, merchant_features_daily

from flows.features.feast_log_destination import LakeLoggingDestination
from flows.features.feature_logging import log_table


def served_log(service: str) -> LoggingConfig:
    return LoggingConfig(destination=LakeLoggingDestination(table=log_table(service)), sample_rate=1.0)


fraud_v1 = FeatureService(
    name="fraud_v1",
    features=[customer_txn_features_daily],
    description="Fraud model v1: customer transaction behaviour.",
    owner=OWNER,
    tags={"model": "fraud", "version": "1"},
    logging_config=served_log("fraud_v1"),
)

fraud_v2 = FeatureService(
    name="fraud_v2",
    features=[customer_txn_features_daily, merchant_features_daily, customer_profile],
    description="Fraud model v2: v1 + merchant history + customer profile.",
    owner=OWNER,
    tags={"model": "fraud", "version": "2"},
    logging_config=served_log("fraud_v2"),
)
