"""A fifth source from files alone (issue 18, docs/adding-a-source.md).

In a copy of the project, the `refunds` contract of docs/adding-a-source.md is added, the generated
files are rebuilt, the copy's simulator writes the four demo sources (byte-identical to the
repository's), refunds are delivered next to them, and the dates are backfilled through the real
CLI (Prefect, Delta, GE, dbt, Feast). Nothing under `flows/` differs from the repository's: the
test checks that too. Refunds then land in bronze, are split into silver and quarantine by their
own suites (row and batch level), have Data Docs pages, and show in `asof status`,
`asof quarantine list` and the monitoring report.
"""

from __future__ import annotations

import csv
import datetime as dt
import filecmp
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest
import yaml

from flows.storage import lake

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
COPIED = ("flows", "expectations", "dbt_project", "feature_repo", "monitoring", "docs")
COPIED_FILES = ("monitoring.toml", "pyproject.toml")
START, END = dt.date(2024, 1, 1), dt.date(2024, 1, 4)
BAD_DAY, REJECTED_DAY = dt.date(2024, 1, 3), dt.date(2024, 1, 4)
HEADER = ["refund_id", "txn_id", "amount", "refund_time", "reason"]


def documented_contract() -> str:
    """The refunds contract exactly as docs/adding-a-source.md shows it."""
    doc = (REPO / "docs" / "adding-a-source.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if "source: refunds" in b]
    assert len(blocks) == 1, "docs/adding-a-source.md shows one refunds contract"
    return blocks[0]


def copy_project(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "target", "logs", ".pytest_cache")
    for name in COPIED:
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    for name in COPIED_FILES:
        shutil.copy2(REPO / name, dest / name)
    return dest


def run(project: Path, home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """A command in the copy: its own `flows` package first on the path, the data root `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASOF_", "PREFECT_API_URL"))}
    env |= {"ASOF_HOME": str(home), "PYTHONPATH": str(project), "PREFECT_HOME": str(home / "prefect")}
    res = subprocess.run(
        [sys.executable, *args], cwd=project, env=env, capture_output=True, text=True, timeout=900
    )
    if check:
        assert res.returncode == 0, (args, res.stdout[-3000:], res.stderr[-3000:])
    return res


def transactions_of(home: Path, day: dt.date) -> list[dict[str, str]]:
    with (home / "landing" / "transactions" / day.isoformat() / "transactions.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def deliver_refunds(home: Path) -> dict[dt.date, int]:
    """Refunds of the day's transactions; BAD_DAY adds three rows a row rule quarantines,
    REJECTED_DAY's file lacks the `reason` column (the batch is rejected whole)."""
    delivered: dict[dt.date, int] = {}
    reasons = ("customer_request", "fraud", "duplicate_charge", "other")
    for n_day, day in enumerate([START + dt.timedelta(days=i) for i in range((END - START).days + 1)]):
        txns = transactions_of(home, day)[::40]
        rows = [
            {
                "refund_id": f"r{day:%Y%m%d}{i:04d}",
                "txn_id": t["txn_id"],
                "amount": t["amount"],
                "refund_time": f"{day.isoformat()}T23:00:00Z",
                "reason": reasons[(i + n_day) % len(reasons)],
            }
            for i, t in enumerate(txns)
        ]
        if day == BAD_DAY:
            rows += [
                {**rows[0], "refund_id": "r_unknown_txn", "txn_id": "t_never_sold"},
                {**rows[1], "refund_id": "r_future", "refund_time": f"{day + dt.timedelta(days=2)}T01:00Z"},
                dict(rows[2]),  # the same refund delivered twice in one batch
            ]
        header = [h for h in HEADER if day != REJECTED_DAY or h != "reason"]
        folder = home / "landing" / "refunds" / day.isoformat()
        folder.mkdir(parents=True)
        with (folder / "refunds.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        delivered[day] = len(rows)
    return delivered


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory):
    from flows.upstream import simulate

    root = tmp_path_factory.mktemp("add_a_source")
    project = copy_project(root / "project")
    home = root / "home"
    (project / "expectations" / "contracts" / "refunds.yml").write_text(documented_contract())
    built = run(project, home, "expectations/build_suites.py")
    # the copy's simulator, with five contracts, still plays the four demo sources, byte for byte
    days = ("--start", START.isoformat(), "--end", END.isoformat())
    run(project, home, "-m", "flows.cli.main", "generate", *days, "--scale", "300x600", "--seed", "6")
    simulate.generate(root / "reference", START, END, simulate.parse_scale("300x600"), seed=6)
    generated = sorted(p.relative_to(home / "landing") for p in (home / "landing").rglob("*") if p.is_file())
    assert generated == sorted(
        p.relative_to(root / "reference") for p in (root / "reference").rglob("*") if p.is_file()
    )
    for rel in generated:
        assert (home / "landing" / rel).read_bytes() == (root / "reference" / rel).read_bytes(), rel
    delivered = deliver_refunds(home)
    backfill = run(project, home, "-m", "flows.cli.main", "backfill", *days, check=False)
    return project, home, delivered, built, backfill


def test_nothing_under_flows_changed(backfilled):
    project = backfilled[0]
    cmp = filecmp.dircmp(REPO / "flows", project / "flows", ignore=["__pycache__"])

    def differences(c: filecmp.dircmp) -> list[str]:
        out = c.left_only + c.right_only + c.diff_files
        return out + [d for sub in c.subdirs.values() for d in differences(sub)]

    assert differences(cmp) == []


def test_the_contract_generates_suites_and_dbt_source(backfilled):
    project, _, _, built, _ = backfilled
    assert "expectations/expectations/refunds/rows.json" in built.stdout
    assert (project / "expectations" / "checkpoints" / "refunds.batches.json").exists()
    sources = yaml.safe_load(
        (project / "dbt_project" / "models" / "staging" / "silver" / "_silver__sources.yml").read_text()
    )
    tables = {t["name"]: t for t in sources["sources"][0]["tables"]}
    assert [c["name"] for c in tables["refunds"]["columns"]][:5] == HEADER
    order = run(project, backfilled[1], "-c", "from flows.sources import SOURCE_NAMES; print(*SOURCE_NAMES)")
    assert order.stdout.split() == ["merchants", "customers", "transactions", "chargebacks", "refunds"]


def test_refunds_land_in_bronze_and_are_validated(backfilled, monkeypatch):
    _, home, delivered, _, backfill = backfilled
    # the last date's refunds batch is rejected: the backfill reports it and stops there
    assert backfill.returncode != 0 and "rejected" in (backfill.stdout + backfill.stderr)
    monkeypatch.setenv("ASOF_HOME", str(home))
    monkeypatch.delenv("ASOF_LAKE_URI", raising=False)
    bronze = lake.read("bronze", "refunds")
    silver = lake.read("silver", "refunds")
    quarantine = lake.read("quarantine", "refunds")

    def per_day(tbl) -> dict[dt.date, int]:
        return {v["values"]: v["counts"] for v in pc.value_counts(tbl["_batch_date"]).to_pylist()}

    assert per_day(bronze) == delivered
    for day, n in delivered.items():  # conservation: bronze = silver + quarantine
        assert per_day(silver).get(day, 0) + per_day(quarantine).get(day, 0) == n
    assert str(silver.schema.field("refund_time").type) == "timestamp[us, tz=UTC]"
    assert str(silver.schema.field("amount").type) == "double"

    reasons = {
        (r["_batch_date"], r["refund_id"]): set(r["_reasons"])
        for r in quarantine.select(["_batch_date", "refund_id", "_reasons"]).to_pylist()
    }
    bad = {k[1]: v for k, v in reasons.items() if k[0] == BAD_DAY}
    assert bad["r_unknown_txn"] == {"unknown_transaction"}
    assert bad["r_future"] == {"future_refund_time"}
    assert [v for v in bad.values() if "duplicate" in v] == [{"duplicate"}]
    assert per_day(silver)[BAD_DAY] == delivered[BAD_DAY] - 3
    rejected = [v for k, v in reasons.items() if k[0] == REJECTED_DAY]
    assert len(rejected) == delivered[REJECTED_DAY]
    assert all("batch_rejected:contract_broken" in v for v in rejected)


def test_refunds_have_data_docs_pages(backfilled):
    home = backfilled[1]
    text = [p.read_text(errors="replace") for p in (home / "docs").rglob("*.html")]
    for suite in ("refunds.rows", "refunds.batches"):
        assert any(suite in page for page in text), f"no Data Docs page of {suite}"


def test_refunds_show_in_status_quarantine_and_monitoring(backfilled):
    project, home, _, _, _ = backfilled
    days = ("--start", START.isoformat(), "--end", END.isoformat())
    status = run(project, home, "-m", "flows.cli.main", "status", *days)
    assert status.stdout.count("refunds") >= (END - START).days + 1
    listed = run(project, home, "-m", "flows.cli.main", "quarantine", "list", "--source", "refunds")
    expected = ("unknown_transaction", "future_refund_time", "duplicate", "batch_rejected:contract_broken")
    for reason in expected:
        assert reason in listed.stdout, listed.stdout
    report = home / "report.html"
    run(
        project,
        home,
        *("-m", "flows.cli.main", "monitor", *days, "--recompute", "--html", str(report)),
        check=False,  # exit 1 when a threshold is breached (the rejected batch is one)
    )
    html = report.read_text()
    assert "refunds" in html and "refunds:unknown_transaction" in html
