"""Training sets (contract §8): columns, labels by cutoff, point-in-time features, manifest, and
bit-for-bit reproduction after later runs rewrote the tables."""

from __future__ import annotations

import datetime as dt
import json
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import feature_store_home
from tests.synthetic_gold import (
    Silver,
    add_chargebacks,
    add_transactions,
    day_ts,
    expected_asof,
    gold_from_silver,
    make_silver,
    write_gold,
    write_silver,
)

START, END = dt.date(2024, 1, 1), dt.date(2024, 2, 10)
MORE_END = dt.date(2024, 2, 15)
T1, T2 = dt.date(2024, 1, 15), dt.date(2024, 2, 5)
LATE = "late-cb"  # chargeback delivered in batch 2024-02-12, after the first build
EARLY = "early-cb"  # chargeback delivered in batch 2024-02-03


@pytest.fixture(scope="module")
def lake_data(tmp_path_factory):
    with feature_store_home(tmp_path_factory.mktemp("training_home")) as home:
        silver = make_silver(START, END, customers=150, merchants=20, txns_per_day=60, seed=5)
        late_at = day_ts(dt.date(2024, 1, 20)) + dt.timedelta(hours=3)
        early_at = day_ts(dt.date(2024, 1, 25)) + dt.timedelta(hours=4)
        silver = add_transactions(
            silver,
            [
                (LATE, 7, 3, 900.0, late_at, dt.date(2024, 1, 20)),
                (EARLY, 8, 4, 800.0, early_at, dt.date(2024, 1, 25)),
            ],
        )
        silver = add_chargebacks(silver, [(EARLY, day_ts(dt.date(2024, 2, 3)), dt.date(2024, 2, 3))])
        write_silver(silver)
        gold = gold_from_silver(silver, START, END)
        write_gold(gold, START, END)
        yield {"home": home, "silver": silver, "gold": gold}


def _label(table: pa.Table, txn_id: str) -> bool:
    return table.filter(pc.equal(table["txn_id"], txn_id))["is_fraud"].to_pylist()[0]


def test_training_set_contents_and_labels(lake_data, tmp_path):
    from flows.features.training import build_training_set, manifest_path

    out = tmp_path / "train.parquet"
    manifest = build_training_set(T1, T2, "fraud_v2", out)
    table = pq.read_table(out)

    assert table.column_names[:5] == ["txn_id", "customer_id", "merchant_id", "event_timestamp", "is_fraud"]
    assert table.column_names[5:] == manifest["feast"]["features"]
    assert len(table.column_names) == 5 + 16
    assert table.schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
    assert table.schema.metadata is None or b"pandas" not in table.schema.metadata

    # entity rows: every silver transaction with event_time in [T1, T2 + 1 day)
    txns = lake_data["silver"].transactions
    lo, hi = day_ts(T1), day_ts(T2 + dt.timedelta(days=1))
    in_range = txns.filter(pc.and_(pc.greater_equal(txns["event_time"], lo), pc.less(txns["event_time"], hi)))
    assert sorted(table["txn_id"].to_pylist()) == sorted(in_range["txn_id"].to_pylist())
    keys = list(zip(table["event_timestamp"].to_pylist(), table["txn_id"].to_pylist(), strict=True))
    assert keys == sorted(keys)

    # labels: default cutoff = latest ingested batch (2024-02-10): the late chargeback is unknown
    assert manifest["parameters"]["label_cutoff"] == END.isoformat()
    assert manifest["parameters"]["label_cutoff_source"] == "latest ingested batch date"
    assert _label(table, EARLY) is True
    assert _label(table, LATE) is False

    # features are the point-in-time gold rows
    ts = table["event_timestamp"].to_pylist()
    for view, key, features, ttl in [
        (
            "customer_txn_features_daily",
            "customer_id",
            ["txn_count_30d", "amount_usd_max_7d"],
            dt.timedelta(days=1),
        ),
        ("merchant_features_daily", "merchant_id", ["merchant_chargeback_count_90d"], dt.timedelta(days=1)),
        ("customer_profile", "customer_id", ["kyc_level", "signup_date"], dt.timedelta(days=3650)),
    ]:
        want = expected_asof(lake_data["gold"][view], key, features, table[key].to_pylist(), ts, ttl)
        for f in features:
            assert table[f].to_pylist() == want[f], f

    # an earlier cutoff hides the early chargeback too
    early = build_training_set(T1, T2, "fraud_v1", tmp_path / "v1.parquet", label_cutoff=dt.date(2024, 2, 1))
    v1 = pq.read_table(tmp_path / "v1.parquet")
    assert _label(v1, EARLY) is False
    assert v1.column_names[5:] == early["feast"]["features"] and len(v1.column_names) == 5 + 9
    assert early["parameters"]["label_cutoff_source"] == "given"

    # the manifest: chain of custody
    m = json.loads(manifest_path(out).read_text())
    assert manifest_path(out).name == "train.manifest.json"
    assert set(m["tables"]) == {
        "silver/transactions",
        "silver/chargebacks",
        "gold/customer_txn_features_daily",
        "gold/merchant_features_daily",
        "gold/customer_profile",
    }
    assert all(isinstance(t["version"], int) for t in m["tables"].values())
    assert m["output"]["rows"] == table.num_rows and len(m["output"]["sha256"]) == 64
    assert m["parameters"] == {
        "start": T1.isoformat(),
        "end": T2.isoformat(),
        "service": "fraud_v2",
        "label_cutoff": END.isoformat(),
        "label_cutoff_source": "latest ingested batch date",
    }
    for section in ("dbt", "great_expectations"):
        assert "sha256" in m[section]
    assert len(m["feast"]["definitions_sha256"]) == 64 and len(m["feast"]["service_sha256"]) == 64
    assert "git_commit" in m["code"]
    files = {f["file"] for f in m["landing_files"]}
    assert any(f.startswith("landing/transactions/") for f in files)
    assert any(f.startswith("landing/chargebacks/") for f in files)
    assert sum(f["rows_used"] for f in m["landing_files"] if f["source"] == "transactions") == table.num_rows


def test_reproduce_after_tables_changed(lake_data, tmp_path):
    from flows.features.training import build_training_set, reproduce, sha256_file
    from flows.storage import lake

    out = tmp_path / "train.parquet"
    first = build_training_set(T1, T2, "fraud_v2", out)

    # Five more days arrive (with the late chargeback), gold is recomputed for the last days,
    # an old batch gains a released transaction, and an old gold day is corrected.
    more = make_silver(
        END + dt.timedelta(days=1),
        MORE_END,
        customers=150,
        merchants=20,
        txns_per_day=60,
        seed=9,
        txn_prefix="n",
    )
    more = add_chargebacks(more, [(LATE, day_ts(dt.date(2024, 2, 12)), dt.date(2024, 2, 12))])
    write_silver(more)
    released = add_transactions(
        Silver(more.transactions.slice(0, 0), more.chargebacks.slice(0, 0)),
        [
            (
                "released-1",
                9,
                2,
                50.0,
                day_ts(dt.date(2024, 1, 30)) + dt.timedelta(hours=1),
                dt.date(2024, 1, 30),
            )
        ],
    )
    old_batch = lake.read(
        "silver", "transactions", filter=lake.date_filter("_batch_date", [dt.date(2024, 1, 30)])
    )
    lake.replace(
        "silver",
        "transactions",
        pa.concat_tables([old_batch, released.transactions.cast(old_batch.schema)]),
        lake.date_predicate("_batch_date", dt.date(2024, 1, 30)),
    )
    everything = Silver(lake.read("silver", "transactions"), lake.read("silver", "chargebacks"))
    since = dt.date(2024, 1, 25)
    gold = gold_from_silver(everything, START, MORE_END)
    gold = {
        k: t.filter(pc.greater_equal(t["as_of_date"], pa.scalar(since, pa.date32()))) for k, t in gold.items()
    }
    write_gold(gold, since, MORE_END)

    fresh = build_training_set(T1, T2, "fraud_v2", tmp_path / "fresh.parquet")
    assert fresh["output"]["sha256"] != first["output"]["sha256"]  # the world did change
    fresh_table = pq.read_table(tmp_path / "fresh.parquet")
    assert _label(fresh_table, LATE) is True  # known now
    assert "released-1" in fresh_table["txn_id"].to_pylist()
    assert all(fresh["tables"][k]["version"] > first["tables"][k]["version"] for k in fresh["tables"])

    again = reproduce(out.with_name("train.manifest.json"), tmp_path / "again.parquet")
    assert again["reproduction"]["identical"] is True
    assert sha256_file(tmp_path / "again.parquet") == first["output"]["sha256"]
    assert (tmp_path / "again.parquet").read_bytes() == out.read_bytes()
    assert again["tables"] == first["tables"]
    assert (tmp_path / "again.manifest.json").exists()


def test_cli_refuses_bad_arguments(lake_data, tmp_path, monkeypatch, capsys):
    from flows.cli import main as cli

    def run(*argv):
        monkeypatch.setattr(sys, "argv", ["asof", *argv])
        with pytest.raises(SystemExit) as exc:
            cli.main()
        return exc.value.code, capsys.readouterr()

    code, io = run(
        "training-set",
        "--start",
        "2024-02-30",
        "--end",
        "2024-03-01",
        "--service",
        "fraud_v1",
        "--out",
        str(tmp_path / "x.parquet"),
    )
    assert code == 2 and "not a real calendar date" in io.err
    code, io = run(
        "training-set",
        "--start",
        "2024-02-01",
        "--end",
        "2024-01-01",
        "--service",
        "fraud_v1",
        "--out",
        str(tmp_path / "x.parquet"),
    )
    assert code == 2 and "before start" in io.err
    code, io = run(
        "training-set",
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-02",
        "--service",
        "nope",
        "--out",
        str(tmp_path / "x.parquet"),
    )
    assert code == 2 and "unknown feature service" in io.err
    code, io = run("reproduce", str(tmp_path / "missing.manifest.json"), "--out", str(tmp_path / "x.parquet"))
    assert code == 2
    assert not (tmp_path / "x.parquet").exists()


def test_cli_training_set_and_reproduce(lake_data, tmp_path, monkeypatch, capsys):
    from flows.cli import main as cli

    def run(*argv):
        monkeypatch.setattr(sys, "argv", ["asof", *argv])
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        return code, capsys.readouterr()

    out = tmp_path / "cli.parquet"
    code, io = run(
        "training-set",
        "--start",
        T1.isoformat(),
        "--end",
        T2.isoformat(),
        "--service",
        "fraud_v1",
        "--out",
        str(out),
        "--label-cutoff",
        "2024-02-08",
    )
    assert code == 0, io.err
    assert "sha256" in io.out and out.exists()
    code, io = run("reproduce", str(tmp_path / "cli.manifest.json"), "--out", str(tmp_path / "cli2.parquet"))
    assert code == 0, io.err
    assert "identical" in io.out
    assert out.read_bytes() == (tmp_path / "cli2.parquet").read_bytes()


def test_out_inside_the_pipelines_directories_is_refused(lake_data, tmp_path, monkeypatch, capsys):
    """`--out` (or a symlink to it, or the manifest written next to it) naming a path in the lake,
    the landing area or the feature store is refused before anything is written: it could replace
    a live data file or a Delta checkpoint (issue 23 item 3)."""
    from flows.cli import main as cli
    from flows.features.training import TrainingSetError, build_training_set

    home = lake_data["home"]
    silver_file = next((home / "lake" / "silver" / "transactions").rglob("*.parquet"))
    before = silver_file.read_bytes()
    (home / "landing").mkdir(exist_ok=True)
    link = tmp_path / "innocent"
    link.symlink_to(home / "lake" / "gold")
    targets = [
        silver_file,  # a live data file
        home / "lake" / "gold" / "customer_profile" / "_delta_log" / "x.parquet",
        home / "landing" / "t.parquet",
        home / "feast" / "t.parquet",
        link / "t.parquet",  # through a symlink
    ]
    for target in targets:
        monkeypatch.setattr(
            sys,
            "argv",
            ["asof", "training-set", "--start", "2024-01-10", "--end", "2024-01-12"]
            + ["--service", "fraud_v1", "--out", str(target)],
        )
        with pytest.raises(SystemExit) as exc:
            cli.main()
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "which the pipeline owns" in err, (target, err)
        with pytest.raises(TrainingSetError, match="which the pipeline owns"):
            build_training_set(dt.date(2024, 1, 10), dt.date(2024, 1, 12), "fraud_v1", target)
    assert silver_file.read_bytes() == before
    assert not (home / "landing" / "t.parquet").exists() and not (home / "feast" / "t.parquet").exists()
    # next to the lake is fine
    manifest = build_training_set(dt.date(2024, 1, 10), dt.date(2024, 1, 12), "fraud_v1", home / "t.parquet")
    assert manifest["output"]["rows"] > 0
