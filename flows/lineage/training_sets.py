"""The register of written training sets: `lake/ops/training_sets`, one row per file written by
`asof training-set` or `asof reproduce`.

Why a lake table and not only the manifests: a manifest lives next to its Parquet file, wherever
the user wrote it, so nothing could find "every training set that read silver transactions at
version 41" without it. Each row keeps the manifest's parameters, the Delta version of every table
read and the landing files behind the rows, which is all `asof lineage impact` needs; the manifest
path is kept for `asof reproduce`.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from flows.storage import lake

TABLE = ("ops", "training_sets")

SCHEMA = pa.schema(
    [
        pa.field("registered_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # build | reproduction
        pa.field("path", pa.string(), nullable=False),
        pa.field("manifest", pa.string(), nullable=False),
        pa.field("sha256", pa.string()),
        pa.field("rows", pa.int64()),
        pa.field("service", pa.string()),
        pa.field("start", pa.date32()),
        pa.field("end", pa.date32()),
        pa.field("label_cutoff", pa.date32()),
        pa.field("tables", pa.string()),  # JSON {"silver/transactions": version, ...}
        pa.field("landing_files", pa.string()),  # JSON [{"source", "file", "batch_date", "rows_used"}]
    ]
)


def register(manifest: dict[str, Any], manifest_file: Path) -> int:
    """Append the training set a manifest describes; returns the register's new Delta version."""
    params = manifest["parameters"]
    row = {
        "registered_at": dt.datetime.now(dt.UTC),
        "kind": "reproduction" if "reproduction" in manifest else "build",
        "path": manifest["output"]["path"],
        "manifest": str(Path(manifest_file).resolve()),
        "sha256": manifest["output"].get("sha256"),
        "rows": manifest["output"].get("rows"),
        "service": params.get("service"),
        "start": dt.date.fromisoformat(params["start"]),
        "end": dt.date.fromisoformat(params["end"]),
        "label_cutoff": dt.date.fromisoformat(params["label_cutoff"]),
        "tables": json.dumps({k: int(v["version"]) for k, v in sorted(manifest["tables"].items())}),
        "landing_files": json.dumps(
            [
                {k: f.get(k) for k in ("source", "file", "batch_date", "rows_used")}
                for f in manifest.get("landing_files") or []
            ]
        ),
    }
    data = pa.Table.from_pylist([row], schema=SCHEMA)
    return lake.append(*TABLE, data, schema=SCHEMA)


def registered() -> list[dict[str, Any]]:
    """Every registered training set, oldest first, with `tables` and `landing_files` decoded. A
    path written several times appears once per write: each write read its own versions."""
    if not lake.exists(*TABLE):
        return []
    rows = lake.read_rows(*TABLE)
    for r in rows:
        r["tables"] = json.loads(r["tables"] or "{}")
        r["landing_files"] = json.loads(r["landing_files"] or "[]")
    return sorted(rows, key=lambda r: r["registered_at"])


def rebuild_command(entry: dict[str, Any]) -> str:
    """The command that builds the same training set again from the tables as they are now."""
    import shlex

    return (
        f"asof training-set --start {entry['start']} --end {entry['end']} --service {entry['service']} "
        f"--label-cutoff {entry['label_cutoff']} --out {shlex.quote(entry['path'])}"
    )
