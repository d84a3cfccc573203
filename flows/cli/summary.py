"""The end-of-demo summary: what ran, how many rows each layer holds, and where to look next."""

from __future__ import annotations

import argparse

from flows.config import settings
from flows.dates import parse_range
from flows.operations import runs
from flows.sources import SOURCE_NAMES
from flows.storage import lake


def _count(layer: str, table: str) -> int | None:
    return lake.dataset(layer, table).count_rows() if lake.exists(layer, table) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--start", required=True)
    parser.add_argument("--end", required=True)
    args = parser.parse_args()
    d1, d2 = parse_range(args.start, args.end)
    s = settings()
    status = runs.date_status(runs.latest(d1, d2))
    counts: dict[str, int] = {}
    for word in status.values():
        counts[word] = counts.get(word, 0) + 1
    print()
    print(f"asof demo: {d1}..{d2} under {s.home}")
    print("dates: " + (", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none recorded"))
    print(f"{'source':<14}{'bronze':>10}{'silver':>10}{'quarantine':>12}")
    for src in SOURCE_NAMES:
        row = [_count(layer, src) for layer in ("bronze", "silver", "quarantine")]
        print(
            f"{src:<14}"
            + "".join(f"{'-' if v is None else v:>{w}}" for v, w in zip(row, (10, 10, 12), strict=True))
        )
    gold = lake.list_tables("gold")
    for t in gold:
        print(f"gold/{t:<40}{_count('gold', t):>10} rows")
    print()
    print("where to look:")
    print(f"  landing files     {s.landing}/<source>/<date>/")
    print(f"  Delta tables      {s.lake_uri}/{{bronze,silver,quarantine,gold,ops}}/<table>")
    print("  per-date status   .venv/bin/asof status --start", d1, "--end", d2)
    print("  validation docs   .venv/bin/asof docs --serve   (http://127.0.0.1:<port>/)")
    print("  quarantined rows  .venv/bin/asof quarantine list")
    print(
        "  training set      .venv/bin/asof training-set --start",
        d1,
        "--end",
        d2,
        "--service fraud_v2 --out training.parquet",
    )


if __name__ == "__main__":
    main()
