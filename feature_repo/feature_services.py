"""Feature services: the versioned feature sets models are trained and served with."""

from __future__ import annotations

from data_sources import OWNER
from feast import FeatureService
from features import customer_profile, customer_txn_features_daily, merchant_features_daily

fraud_v1 = FeatureService(
    name="fraud_v1",
    features=[customer_txn_features_daily],
    description="Fraud model v1: customer transaction behaviour.",
    owner=OWNER,
    tags={"model": "fraud", "version": "1"},
)

fraud_v2 = FeatureService(
    name="fraud_v2",
    features=[customer_txn_features_daily, merchant_features_daily, customer_profile],
    description="Fraud model v2: v1 + merchant history + customer profile.",
    owner=OWNER,
    tags={"model": "fraud", "version": "2"},
)
