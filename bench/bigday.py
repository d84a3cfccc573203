"""A big transactions day for the memory budget's measurements (issue 23 item 7).

Replicates one generated day's transactions to N rows (copy k > 0 gets txn_id suffix `_k`, so every
row is a first delivery) and copies the other sources' files of that day unchanged. Build it outside
the repository (a 20M-row day is ~1.3 GB):

    asof generate --start 2024-01-01 --end 2024-01-01 --scale bench   # ASOF_HOME=/tmp/gen
    python -m bench.bigday --from /tmp/gen/landing --day 2024-01-01 --rows 20000000 --to /tmp/big/landing
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def build(src: Path, day: str, rows: int, dst: Path) -> int:
    """Write the day under `dst`; returns the transactions rows written."""
    for source_dir in src.iterdir():
        if source_dir.name == "transactions" or not (source_dir / day).is_dir():
            continue
        target = dst / source_dir.name / day
        target.mkdir(parents=True, exist_ok=True)
        for f in (source_dir / day).iterdir():
            shutil.copy2(f, target / f.name)
    lines = (src / "transactions" / day / "transactions.csv").read_bytes().splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    split = [line.split(b",", 1) for line in body]
    out_dir = dst / "transactions" / day
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(out_dir / "transactions.csv", "wb", buffering=16 << 20) as out:
        out.write(header)
        k = 0
        while written < rows:
            suffix = b"" if k == 0 else b"_%d" % k
            take = split[: rows - written]
            out.write(b"".join(key + suffix + b"," + rest for key, rest in take))
            written += len(take)
            k += 1
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--from", dest="src", type=Path, required=True, help="a generated landing directory")
    p.add_argument("--day", required=True)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--to", dest="dst", type=Path, required=True, help="the big day's landing directory")
    a = p.parse_args()
    n = build(a.src, a.day, a.rows, a.dst)
    print(f"{n} transactions rows for {a.day} under {a.dst}")


if __name__ == "__main__":
    main()
