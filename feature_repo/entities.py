"""Entities: the join keys of the feature views."""

from __future__ import annotations

from data_sources import OWNER
from feast import Entity, ValueType

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.INT64,
    description="A card holder (customer_id of the transactions and customers sources).",
    owner=OWNER,
    tags={"domain": "payments", "pii": "false"},
)

merchant = Entity(
    name="merchant",
    join_keys=["merchant_id"],
    value_type=ValueType.INT64,
    description="An acquiring merchant (merchant_id of the transactions and merchants sources).",
    owner=OWNER,
    tags={"domain": "payments", "pii": "false"},
)
