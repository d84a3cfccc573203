"""The gold schema is defined once, by the marts' dbt contract: the Arrow schemas the dbt stage
publishes with, Feast's fields and the test fixtures are read from it."""

from __future__ import annotations

import pyarrow as pa
import pytest

from flows.features.featurestore import load_definitions
from flows.transform.gold_schema import GoldSchemaError, gold_schemas, gold_tables
from flows.transform.lake_io import GOLD_SCHEMAS
from tests import monitor_data, synthetic_gold


def test_published_schemas_are_the_dbt_contract():
    assert gold_schemas() == GOLD_SCHEMAS
    tables = ["customer_txn_features_daily", "merchant_features_daily", "customer_profile"]
    assert list(GOLD_SCHEMAS) == tables
    # contract §7: only a window without transactions and an unknown profile value are null
    nullable = {(t, f.name) for t, s in GOLD_SCHEMAS.items() for f in s if f.nullable}
    assert nullable == {
        ("customer_txn_features_daily", "amount_usd_max_7d"),
        ("customer_profile", "country"),
        ("customer_profile", "kyc_level"),
        ("customer_profile", "signup_date"),
    }
    for schema in GOLD_SCHEMAS.values():
        assert schema.field("feature_timestamp").type == pa.timestamp("us", tz="UTC")
        assert schema.field("as_of_date").type == pa.date32()


def test_fixtures_use_the_gold_schema():
    assert synthetic_gold.GOLD_SCHEMAS == GOLD_SCHEMAS
    for name, schema in monitor_data.SCHEMAS.items():  # the same columns; nullable to inject nulls
        assert schema.names == GOLD_SCHEMAS[name].names
        assert schema.types == GOLD_SCHEMAS[name].types


def test_feast_views_have_the_gold_fields(home):
    from feast import FeatureView
    from feast.types import Float64, Int64, String, UnixTimestamp

    feast_types = {"bigint": Int64, "double": Float64, "varchar": String}
    feast_types |= {"date": UnixTimestamp, "timestamp with time zone": UnixTimestamp}
    views = {o.name: o for o in load_definitions() if isinstance(o, FeatureView)}
    assert set(views) == set(gold_tables())
    for name, table in gold_tables().items():
        view = views[name]
        assert view.tags["gold_table"] == name
        assert [e.name for e in view.entity_columns] == [table.entity]
        got = {f.name: (f.dtype, f.description) for f in view.features}
        assert got == {c.name: (feast_types[c.data_type], c.description) for c in table.features}


def test_a_mart_without_an_enforced_contract_is_refused(tmp_path):
    (tmp_path / "marts.yml").write_text(
        "models:\n  - name: m\n    config: {meta: {gold_table: m}}\n    columns:\n"
        "      - {name: id, data_type: bigint}\n"
    )
    with pytest.raises(GoldSchemaError, match="enforced"):
        gold_tables(tmp_path / "marts.yml")
