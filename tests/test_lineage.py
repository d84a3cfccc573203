"""Lineage end to end (docs/lineage.md): a wrong batch goes through the real flows, `asof lineage
impact` names what it reached, the batch is corrected and recomputed with the printed command, and
what changed is compared with what the report named: the gold rows (exactly), the online values
(exactly), the training sets (an affected one rebuilds differently, an unaffected one byte for
byte the same). `asof lineage trace` is checked against the gold values and the landing files."""

from __future__ import annotations

import csv
import datetime as dt
import json
import shlex
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from flows.storage import lake
from tests.test_cli import run_cli

pytestmark = pytest.mark.slow

START, END = dt.date(2024, 1, 1), dt.date(2024, 1, 10)
BAD = dt.date(2024, 1, 5)  # every amount x100 (the `cents` fault): accepted, drift is not checked yet
SCALE, SEED = "300x600", 6
FX = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27}  # dbt_project/seeds/fx_rates.csv


def _gold(table: str, key: str) -> dict[tuple[int, dt.date], tuple]:
    tbl = lake.read("gold", table)
    return {
        (r[key], r["as_of_date"]): tuple(sorted((k, str(v)) for k, v in r.items())) for r in tbl.to_pylist()
    }


def _online_sums(customers: list[int]) -> dict[int, float | None]:
    from flows.features.featurestore import online_features

    got = online_features([{"customer_id": c, "merchant_id": 1} for c in customers], service="fraud_v1")
    return dict(zip(got["customer_id"], got["amount_usd_sum_30d"], strict=True))


def _backfill_args(command: str) -> dict:
    """The printed `asof backfill --start D1 --end D2 --force` as the flow's parameters."""
    words = shlex.split(command)
    assert words[:2] == ["asof", "backfill"] and "--force" in words, command
    return {"start": words[words.index("--start") + 1], "end": words[words.index("--end") + 1], "force": True}


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, prefect_backend):
    """Build the lake with a wrong batch, register two training sets, ask for the impact, correct
    the batch, run the recompute command; keep what each step saw."""
    from flows import pipeline
    from flows.features import featurestore
    from flows.features.training import build_training_set
    from flows.monitoring.alerts import MonitoringFailure
    from flows.upstream import simulate

    home = tmp_path_factory.mktemp("lineage_home")
    work = tmp_path_factory.mktemp("lineage_out")
    scale = simulate.parse_scale(SCALE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASOF_HOME", str(home))
        for name in ("ASOF_LAKE_URI", "ASOF_ONLINE_STORE", "OPENLINEAGE_URL", "OPENLINEAGE_DISABLED"):
            mp.delenv(name, raising=False)
        featurestore.reset_store_cache()
        simulate.generate(
            home / "landing", START, END, scale, seed=SEED, faults=[simulate.parse_fault(f"cents@{BAD}")]
        )

        def backfill(**kw):
            try:
                return pipeline.backfill(**kw)
            except MonitoringFailure as exc:  # drift alerts on the x100 day: the data path ran
                return exc.data

        assert {r["status"] for r in backfill(start=START, end=END)} == {"succeeded"}
        affected_ts = build_training_set("2024-01-06", "2024-01-08", "fraud_v2", work / "affected.parquet")
        unaffected_ts = build_training_set(
            "2024-01-01", "2024-01-01", "fraud_v1", work / "unaffected.parquet"
        )

        customers = sorted(set(lake.read("gold", "customer_txn_features_daily")["customer_id"].to_pylist()))
        batch = lake.read("silver", "transactions", days=[BAD]).to_pylist()
        before = {
            "customer": _gold("customer_txn_features_daily", "customer_id"),
            "merchant": _gold("merchant_features_daily", "merchant_id"),
            "online": _online_sums(customers),
            "quarantined": lake.read("quarantine", "transactions", days=[BAD]).num_rows,
        }
        html = work / "impact.html"
        res = run_cli(home, "lineage", "impact", "--source", "transactions", "--date", BAD.isoformat(),
                      "--json", "--html", str(html))  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        report = json.loads(res.stdout)
        table = run_cli(home, "lineage", "impact", "--source", "transactions", "--date", BAD.isoformat())

        # the correction: the upstream re-delivers the batch without the fault, then the printed command
        landing = home / "landing" / "transactions" / BAD.isoformat() / "transactions.csv"
        wrong_bytes = landing.read_bytes()
        simulate.generate(home / "landing", BAD, BAD, scale, seed=SEED)
        assert landing.read_bytes() != wrong_bytes
        rerun = backfill(**_backfill_args(report["recompute"]["backfill"]))
        assert {r["status"] for r in rerun} == {"succeeded"}
        featurestore.reset_store_cache()
        after = {
            "customer": _gold("customer_txn_features_daily", "customer_id"),
            "merchant": _gold("merchant_features_daily", "merchant_id"),
            "online": _online_sums(customers),
        }
        yield {
            "home": home,
            "work": work,
            "report": report,
            "table": table,
            "html": html,
            "batch": batch,
            "before": before,
            "after": after,
            "training": {"affected": affected_ts, "unaffected": unaffected_ts},
        }
        featurestore.reset_store_cache()


def _brute_force(batch: list[dict], keys: set[tuple[int, dt.date]], key: str, window: int) -> set:
    """The gold rows whose window holds a row of the batch, straight from the contract: a row of
    batch D counts in as-of A when D <= A and its event day is in [A - window + 1, A]."""
    out = set()
    for entity, as_of in keys:
        for t in batch:
            day = t["event_time"].astimezone(dt.UTC).date()
            if t[key] == entity and as_of >= BAD and as_of - dt.timedelta(days=window - 1) <= day <= as_of:
                out.add((entity, as_of))
                break
    return out


def _per_date(rows: set[tuple[int, dt.date]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, day in rows:
        out[day.isoformat()] = out.get(day.isoformat(), 0) + 1
    return dict(sorted(out.items()))


def test_impact_names_the_partitions_of_the_batch(story) -> None:
    parts = {p["layer"]: p for p in story["report"]["partitions"]}
    assert parts["silver"]["rows"] == len(story["batch"]) > 0
    assert parts["quarantine"]["rows"] == story["before"]["quarantined"]
    assert parts["bronze"]["rows"] == parts["silver"]["rows"] + parts["quarantine"]["rows"]
    assert parts["silver"]["files"] == [f"landing/transactions/{BAD}/transactions.csv"]
    assert all(p["partition"] == f"_batch_date={BAD}" for p in parts.values())
    assert "silver/transactions" in story["table"].stdout and "recompute:" in story["table"].stdout


def test_impact_names_exactly_the_gold_rows_the_correction_changed(story) -> None:
    """Every customer feature row whose window held a x100 amount changes when the batch is
    corrected (its amount sums do), and no other row does: the report must name exactly those."""
    before, after, report = story["before"], story["after"], story["report"]
    gold = {g["table"]: g for g in report["gold"]}
    cust = gold["gold/customer_txn_features_daily"]
    expected = _brute_force(story["batch"], set(before["customer"]), "customer_id", 30)
    keys = before["customer"].keys() | after["customer"].keys()
    changed = {k for k in keys if before["customer"].get(k) != after["customer"].get(k)}
    assert changed == expected
    assert cust["rows_per_date"] == _per_date(expected)
    assert cust["rows"] == len(expected) and cust["as_of_dates"][0] == BAD.isoformat()
    assert cust["entities"] == len({c for c, _ in expected})
    # merchant features count transactions: the amounts changed nothing there, and the report still
    # names the rows whose 90-day window read the batch
    merch = gold["gold/merchant_features_daily"]
    assert merch["rows_per_date"] == _per_date(
        _brute_force(story["batch"], set(before["merchant"]), "merchant_id", 90)
    )
    assert before["merchant"] == after["merchant"]
    assert report["recompute"]["backfill"] == f"asof backfill --start {BAD} --end {END} --force"


def test_impact_names_the_online_values_the_correction_changed(story) -> None:
    before, after = story["before"]["online"], story["after"]["online"]
    online = {o["view"]: o for o in story["report"]["online"]}["customer_txn_features_daily"]
    changed = {c for c in before if before[c] != after[c]}
    assert online["online_store"] == "sqlite"
    assert set(online["served_entities"]) == changed and changed
    assert online["entities_served_affected"] == online["entities_newest_row_affected"] == len(changed)


def test_impact_names_the_training_sets_that_read_the_batch(story, tmp_path: Path) -> None:
    """The set whose features read affected as-of dates is listed with its rebuild command, and
    rebuilding it after the correction gives other bytes; the set that read nothing of the batch is
    not listed, and rebuilt it is byte for byte the same."""
    from flows.features.training import build_training_set

    listed = {t["path"]: t for t in story["report"]["training_sets"]}
    affected = story["training"]["affected"]
    unaffected = story["training"]["unaffected"]
    assert set(listed) == {affected["output"]["path"]}
    entry = listed[affected["output"]["path"]]
    assert entry["service"] == "fraud_v2" and entry["kind"] == "build"
    assert entry["tables"] == {k: v["version"] for k, v in affected["tables"].items()}
    assert any(r.startswith("features of gold/customer_txn_features_daily") for r in entry["reasons"])
    assert any(r.startswith("features of gold/merchant_features_daily") for r in entry["reasons"])
    words = shlex.split(entry["rebuild"])
    assert (
        words[:2] == ["asof", "training-set"]
        and words[words.index("--out") + 1] == affected["output"]["path"]
    )
    assert entry["rebuild"] in story["report"]["recompute"]["training_sets"]

    def rebuild(manifest: dict, name: str) -> str:
        p = manifest["parameters"]
        out = build_training_set(
            p["start"], p["end"], p["service"], tmp_path / name, label_cutoff=p["label_cutoff"]
        )
        return out["output"]["sha256"]

    assert rebuild(affected, "a.parquet") != affected["output"]["sha256"]
    assert rebuild(unaffected, "u.parquet") == unaffected["output"]["sha256"]
    # the rows whose customer features the correction changed are exactly the rows the report
    # says joined affected customer rows
    old = pq.read_table(affected["output"]["path"]).to_pylist()
    new = pq.read_table(tmp_path / "a.parquet").to_pylist()
    assert [r["txn_id"] for r in old] == [r["txn_id"] for r in new]
    features = ("txn_count_7d", "amount_usd_sum_7d", "amount_usd_sum_30d", "amount_usd_max_7d")
    changed = sum(any(o[f] != n[f] for f in features) for o, n in zip(old, new, strict=True))
    assert changed == entry["rows_joined_affected"]["customer_txn_features_daily"] > 0


def test_impact_of_one_landing_file_and_refusals(story) -> None:
    home = story["home"]
    file = f"landing/transactions/{BAD}/transactions.csv"
    res = run_cli(home, "lineage", "impact", "--file", file, "--json", "--no-online")
    assert res.returncode == 0, res.stderr
    one = json.loads(res.stdout)
    assert one["batch"]["file"] == f"landing/transactions/{BAD}/transactions.csv"
    assert one["online"] == [{"skipped": "--no-online"}]
    for args, needle in [
        (["--source", "transactions"], "--date"),
        (["--source", "nope", "--date", "2024-01-05"], "unknown source"),
        (["--source", "transactions", "--date", "2024-02-30"], "calendar date"),
        (["--file", "transactions/2024-01-05/x.csv"], "landing/<source>"),
        (["--file", "landing/transactions/2024-01-05/x.csv", "--date", "2024-01-05"], "--file"),
        (["--source", "transactions", "--date", "2024-01-05", "--html", "x.txt"], ".html"),
    ]:
        res = run_cli(home, "lineage", "impact", *args)
        assert res.returncode == 2 and needle in res.stderr, (args, res.stderr)
    res = run_cli(home, "lineage", "impact", "--file", f"landing/transactions/{BAD}/nothing.csv")
    assert res.returncode == 1 and "no row" in res.stderr
    res = run_cli(home, "lineage", "impact", "--source", "transactions", "--date", "2024-03-01")
    assert res.returncode == 1 and "not ingested" in res.stderr


def _landing_record(home: Path, file: str, record: int) -> dict[str, str]:
    with (home / file).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows[record - 1]


def test_trace_gold_row_lists_exactly_the_rows_it_aggregates(story) -> None:
    """A customer's 30-day features, recomputed from the traced rows, equal the gold row; each
    traced row is the record the landing file holds at the traced number."""
    home = story["home"]
    gold = lake.read("gold", "customer_txn_features_daily")
    pick = gold.filter(pc.equal(gold["as_of_date"], pa.scalar(END, gold["as_of_date"].type)))
    pick = pick.sort_by([("txn_count_30d", "descending")]).slice(0, 1).to_pylist()[0]
    res = run_cli(home, "lineage", "trace", "--table", "customer_txn_features_daily",
                  "--entity", str(pick["customer_id"]), "--as-of", END.isoformat(), "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    trace = json.loads(res.stdout)
    step = trace["steps"][0]
    assert step["table"] == "silver/transactions"
    assert step["rows"] == len(step["listed"]) == pick["txn_count_30d"]
    total = sum(r["amount"] * FX[r["currency"]] for r in step["listed"])
    assert total == pytest.approx(pick["amount_usd_sum_30d"], rel=1e-9)
    for r in step["listed"]:
        assert r["in_bronze"] and r["landing"]["file_present"]
        rec = _landing_record(home, r["landing"]["file"], r["landing"]["record"])
        assert rec["txn_id"] == r["txn_id"]
    text = run_cli(home, "lineage", "trace", "--table", "customer_txn_features_daily",
                   "--entity", str(pick["customer_id"]), "--as-of", END.isoformat())  # fmt: skip
    assert text.returncode == 0 and "record" in text.stdout and "--json lists every row" in text.stdout


def test_trace_training_row_at_the_manifest_versions(story) -> None:
    """A row of the training set built before the correction traces, at the versions its manifest
    names, to the feature values the file holds (the x100 ones) and to its landing record."""
    from flows.features.training import manifest_path

    home = story["home"]
    manifest = story["training"]["affected"]
    table = pq.read_table(manifest["output"]["path"]).to_pylist()
    row = max(table, key=lambda r: r["amount_usd_sum_30d"] or 0)
    res = run_cli(home, "lineage", "trace", "--txn-id", row["txn_id"],
                  "--manifest", str(manifest_path(Path(manifest["output"]["path"]))), "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    trace = json.loads(res.stdout)
    entity = trace["steps"][0]["listed"][0]
    rec = _landing_record(home, entity["landing"]["file"], entity["landing"]["record"])
    assert rec["txn_id"] == row["txn_id"] and entity["in_bronze"]
    features = {f["target"]["table"]: f for f in trace["features"] if "target" in f}
    cust = features["gold/customer_txn_features_daily"]
    event_day = row["event_timestamp"].date()
    assert cust["target"]["as_of_date"] == (event_day - dt.timedelta(days=1)).isoformat()
    assert cust["version"] == manifest["tables"]["gold/customer_txn_features_daily"]["version"]
    for name in ("txn_count_30d", "amount_usd_sum_30d", "distinct_merchants_30d"):
        assert cust["row"][name] == row[name], name
    assert trace["versions"] == {k: v["version"] for k, v in manifest["tables"].items()}


def test_trace_refuses_bad_arguments(story) -> None:
    home = story["home"]
    for args, needle in [
        ([], "--txn-id"),
        (["--txn-id", "x", "--table", "customer_profile"], "--txn-id"),
        (["--table", "nope", "--entity", "1", "--as-of", "2024-01-02"], "unknown gold table"),
        (["--table", "customer_profile", "--entity", "1"], "--as-of"),
        (["--txn-id", "x", "--manifest", "/nonexistent.json"], "does not exist"),
    ]:
        res = run_cli(home, "lineage", "trace", *args)
        assert res.returncode == 2 and needle in res.stderr, (args, res.stderr)
    res = run_cli(home, "lineage", "trace", "--txn-id", "no-such-txn")
    assert res.returncode == 1 and "no silver transaction" in res.stderr


def test_every_stage_run_left_openlineage_events_in_the_home(story) -> None:
    """Without OPENLINEAGE_URL the events go to $ASOF_HOME/lineage/openlineage.jsonl: a START and
    a COMPLETE per run of every stage, the training sets included."""
    events = [
        json.loads(line)
        for line in (story["home"] / "lineage" / "openlineage.jsonl").read_text().splitlines()
    ]
    runs: dict[str, list[str]] = {}
    for e in events:
        runs.setdefault(e["run"]["runId"], []).append((e["job"]["name"], e["eventType"]))
    jobs = {name for states in runs.values() for name, _ in states}
    assert {"asof.validate", "asof.transform", "asof.materialize", "asof.training_set"} <= jobs
    assert {f"asof.ingest.{s}" for s in ("merchants", "customers", "transactions", "chargebacks")} <= jobs
    for states in runs.values():
        assert [s for _, s in states] == ["START", "COMPLETE"], states


def test_impact_graph_renders_offline_in_chromium(story, browser) -> None:
    """The --html page draws the affected graph from disk with no request leaving it: a box per
    lake partition, gold table, run of as-of dates, training set and online view, joined by edges."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith("file://") else None)
    page.goto(story["html"].as_uri())
    svg = page.locator("svg#impact-graph")
    assert svg.is_visible()
    kinds = page.eval_on_selector_all("svg g.node", "els => els.map(e => e.getAttribute('class'))")
    labels = page.eval_on_selector_all("svg g.node text.label", "els => els.map(e => e.textContent)")
    report = story["report"]
    assert kinds.count("node landing") == 1 and "transactions.csv" in labels
    assert {"bronze/transactions", "silver/transactions"} <= set(labels)
    assert kinds.count("node gold") == 2 and kinds.count("node training") == len(report["training_sets"]) == 1
    assert kinds.count("node online") == 2
    dates = [g["as_of_dates"] for g in report["gold"]]
    assert f"{dates[0][0]}..{dates[0][-1]}" in labels
    edges = page.eval_on_selector_all("svg path.edge", "els => els.map(e => [e.dataset.from, e.dataset.to])")
    run = f"dates:gold/customer_txn_features_daily:{dates[0][0]}..{dates[0][-1]}"
    assert ["gold:gold/customer_txn_features_daily", run] in edges
    assert any(b.startswith("train:") for _, b in edges)
    box = page.locator("svg g.node.training rect").bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 20
    assert "asof backfill --start" in page.locator("#commands").inner_text()
    assert outside == []
    page.close()


def test_impact_of_a_rejected_batch_names_the_later_rows_it_held_back(
    tmp_path: Path, prefect_backend, monkeypatch
) -> None:
    """A transactions batch rejected as a whole (a dropped column) reaches no feature, but the
    chargebacks of its transactions in later batches are quarantined as `unknown_transaction`: the
    report lists exactly those, and after a corrected re-delivery its recompute command moves them
    to silver."""
    from flows import pipeline
    from flows.features import featurestore
    from flows.monitoring.alerts import MonitoringFailure
    from flows.upstream import simulate

    day, last = dt.date(2024, 1, 2), dt.date(2024, 1, 12)
    home = tmp_path / "home"
    scale = simulate.parse_scale(SCALE)
    fault = simulate.parse_fault(f"schema_drop_column@{day}")
    simulate.generate(home / "landing", START, last, scale, seed=SEED, faults=[fault])
    monkeypatch.setenv("ASOF_HOME", str(home))
    monkeypatch.delenv("ASOF_LAKE_URI", raising=False)
    featurestore.reset_store_cache()

    def backfill(**kw):
        try:
            return pipeline.backfill(**kw)
        except MonitoringFailure as exc:
            return exc.data

    statuses = {r["day"]: r["status"] for r in backfill(start=START, end=last, continue_on_failure=True)}
    assert statuses[day.isoformat()] == "rejected"
    res = run_cli(home, "lineage", "impact", "--source", "transactions", "--date", day.isoformat(), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert all(g["rows"] == 0 for g in report["gold"]) and report["training_sets"] == []
    assert any("no row of the batch reached silver" in n for n in report["notes"])

    with (home / "landing" / "transactions" / day.isoformat() / "transactions.csv").open(newline="") as fh:
        delivered = {r["txn_id"] for r in csv.DictReader(fh)}
    held = lake.read("quarantine", "chargebacks").to_pylist()
    expected: dict[str, int] = {}
    for r in held:
        if "unknown_transaction" in r["_reasons"] and r["txn_id"] in delivered:
            expected[r["_batch_date"].isoformat()] = expected.get(r["_batch_date"].isoformat(), 0) + 1
    assert expected, "the data must hold chargebacks of the rejected batch's transactions"
    assert {q["batch_date"]: q["rows"] for q in report["downstream_quarantine"]} == expected
    assert report["recompute"]["backfill"] == f"asof backfill --start {day} --end {last} --force"

    simulate.generate(home / "landing", day, day, scale, seed=SEED)  # the corrected re-delivery
    rerun = backfill(**_backfill_args(report["recompute"]["backfill"]))
    assert {r["status"] for r in rerun} == {"succeeded"}
    silver = lake.read("silver", "chargebacks", columns=["txn_id", "_batch_date"]).to_pylist()
    moved: dict[str, int] = {}
    for r in silver:
        if r["txn_id"] in delivered and r["_batch_date"] > day:
            moved[r["_batch_date"].isoformat()] = moved.get(r["_batch_date"].isoformat(), 0) + 1
    assert moved == expected
    featurestore.reset_store_cache()


def test_impact_of_chargebacks_and_customers_batches(story) -> None:
    """The other sources' rules, checked against the contract on the lake as it is: a chargeback
    of batch D reaches its transaction's merchant as of D .. the transaction's event day + 89; a
    customers batch reaches the profile rows of its customers as of D."""
    from flows.lineage.impact import impact

    cbs = lake.read("silver", "chargebacks").to_pylist()
    day = max({r["_batch_date"] for r in cbs}, key=lambda d: sum(r["_batch_date"] == d for r in cbs))
    txns = {r["txn_id"]: r for r in lake.read("silver", "transactions").to_pylist()}
    batch = [txns[r["txn_id"]] for r in cbs if r["_batch_date"] == day]
    merchant_keys = set(_gold("merchant_features_daily", "merchant_id"))
    expected = set()
    for m, as_of in merchant_keys:
        for t in batch:
            ev = t["event_time"].astimezone(dt.UTC).date()
            if t["merchant_id"] == m and day <= as_of <= ev + dt.timedelta(days=89):
                expected.add((m, as_of))
    report = impact("chargebacks", day, online=False)
    (merch,) = report["gold"]
    assert merch["table"] == "gold/merchant_features_daily" and merch["via"] == "silver/chargebacks"
    assert merch["rows_per_date"] == _per_date(expected) and expected

    customers = lake.read("silver", "customers", days=[BAD]).to_pylist()
    report = impact("customers", BAD, online=False)
    (profile,) = report["gold"]
    assert profile["as_of_dates"] == [BAD.isoformat()]
    assert profile["entities"] == len({c["customer_id"] for c in customers}) > 0
    assert report["recompute"]["backfill"] == f"asof backfill --start {BAD} --end {BAD} --force"


def test_trace_merchant_row_lists_its_transactions_and_chargebacks(story) -> None:
    from flows.lineage.trace import trace_gold

    gold = lake.read("gold", "merchant_features_daily").to_pylist()
    pick = max((r for r in gold if r["as_of_date"] == END), key=lambda r: r["merchant_chargeback_count_90d"])
    trace = trace_gold("merchant_features_daily", pick["merchant_id"], END)
    txns, cbs = trace["steps"]
    assert (txns["table"], cbs["table"]) == ("silver/transactions", "silver/chargebacks")
    assert txns["rows"] == pick["merchant_txn_count_90d"]
    assert cbs["rows"] == pick["merchant_chargeback_count_90d"] > 0
    assert {c["txn_id"] for c in cbs["listed"]} <= {t["txn_id"] for t in txns["listed"]}


def test_trace_shows_the_quarantined_copies_of_a_transaction(story) -> None:
    """A transaction delivered again: the trace names the accepted first delivery and the copy
    validation quarantined, each with its landing record, the copy with its reasons."""
    from flows.lineage.trace import trace_transaction

    q = lake.read("quarantine", "transactions").to_pylist()
    silver_ids = set(lake.read("silver", "transactions", columns=["txn_id"])["txn_id"].to_pylist())
    copy = next(
        r
        for r in q
        if set(r["_reasons"]) & {"duplicate", "conflicting_duplicate"} and r["txn_id"] in silver_ids
    )
    trace = trace_transaction(copy["txn_id"])
    entity, copies = trace["steps"][0], trace["steps"][1]
    assert copies["table"] == "quarantine/transactions"
    listed = {(c["landing"]["file"], c["landing"]["record"]): c["reasons"] for c in copies["listed"]}
    assert listed[(copy["_source_file"], copy["_row_number"])] == list(copy["_reasons"])
    first = entity["listed"][0]["landing"]
    assert first["batch_date"] <= copy["_batch_date"].isoformat()
    assert _landing_record(story["home"], first["file"], first["record"])["txn_id"] == copy["txn_id"]
