"""Training sets with a manifest, and their bit-for-bit reproduction (contract sections 3 and 8).

`build_training_set(start, end, service, out)`:

- entity rows: silver transactions with `event_time` in [start, end + 1 day) (one row per txn_id);
- label `is_fraud`: the transaction has a silver chargeback with `_batch_date <= label_cutoff`
  (default: the latest ingested batch date, recorded in the manifest);
- features: `FeatureStore.get_historical_features(features=<feature service>)` through the
  project's offline store, every feature under its own name;
- columns: txn_id, customer_id, merchant_id, event_timestamp, is_fraud, features; rows ordered by
  (event_timestamp, txn_id); parquet written deterministically (fixed options, no pandas or
  timestamp metadata), so the same inputs give the same bytes.

Every table is read at one Delta version, fixed when the build starts (so a build is a consistent
snapshot even while the pipeline writes) and recorded in `FILE.manifest.json` together with the
dbt model / GE suite / Feast definition hashes, the landing files behind the rows, the git commit,
the parameters, the row count and the output's sha256. `reproduce(manifest, out)` reads exactly
those versions (Delta time travel) and checks that the bytes are identical.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flows.config import REPO_ROOT, settings
from flows.dates import day_start_utc, parse_date, parse_range
from flows.lineage import training_sets
from flows.lineage.openlineage_events import observed
from flows.storage import lake

MANIFEST_VERSION = 1
TS = pa.timestamp("us", tz="UTC")
ENTITY_COLUMNS = ["txn_id", "customer_id", "merchant_id", "event_timestamp", "is_fraud"]
SILVER_TABLES = ("silver/transactions", "silver/chargebacks")
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "row_group_size": 256 * 1024,
    "use_dictionary": True,
    "write_statistics": True,
    "version": "2.6",
    "data_page_version": "1.0",
}


class TrainingSetError(RuntimeError):
    pass


def manifest_path(out: Path) -> Path:
    """FILE.parquet -> FILE.manifest.json (next to it)."""
    out = Path(out)
    return out.with_name((out.stem if out.suffix == ".parquet" else out.name) + ".manifest.json")


# ------------------------------------------------------------------ public API


def build_training_set(
    start: dt.date | str,
    end: dt.date | str,
    service: str,
    out: Path | str,
    label_cutoff: dt.date | str | None = None,
) -> dict[str, Any]:
    """Write the training set to `out` and its manifest next to it; return the manifest."""
    from flows.features import featurestore

    d1, d2 = parse_range(start, end)
    cutoff = parse_date(label_cutoff, "label cutoff") if label_cutoff is not None else None
    if service not in featurestore.SERVICES:
        raise TrainingSetError(
            f"unknown feature service {service!r} (known: {', '.join(featurestore.SERVICES)})"
        )
    store = featurestore.get_store()
    tables = _tables_for(store, service)
    versions = {}
    for key in tables:
        layer, name = key.split("/")
        v = lake.version(layer, name)
        if v is None:
            raise TrainingSetError(f"Delta table {key} does not exist yet: run the pipeline first")
        versions[key] = v
    cutoff_source = "given"
    if cutoff is None:
        cutoff = _latest_batch_date(versions)
        cutoff_source = "latest ingested batch date"
    params = {
        "start": d1.isoformat(),
        "end": d2.isoformat(),
        "service": service,
        "label_cutoff": cutoff.isoformat(),
        "label_cutoff_source": cutoff_source,
    }
    refs = feature_refs(store, service)
    build = lambda: _build(store, params, versions, refs, Path(out), reproduced_from=None)  # noqa: E731
    return observed("training_set", [d1, d2], build)


def reproduce(manifest: Path | str, out: Path | str) -> dict[str, Any]:
    """Rebuild the training set of `manifest` from the recorded table versions into `out`.

    Returns the new manifest, with `reproduction.identical` telling whether the bytes match. The
    features are the recorded `view:feature` references (not the service's current list), so a
    service that gained features since still reproduces; a changed view definition (ttl, source)
    is reported in `reproduction.changed_since`.
    """
    from flows.features import featurestore

    manifest = Path(manifest)
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise TrainingSetError(f"cannot read manifest {manifest}: {exc}") from None
    if recorded.get("kind") != "asof.training_set" or recorded.get("manifest_version") != MANIFEST_VERSION:
        raise TrainingSetError(
            f"{manifest} is not an asof training-set manifest (version {MANIFEST_VERSION})"
        )
    params = recorded["parameters"]
    versions = {key: int(info["version"]) for key, info in recorded["tables"].items()}
    refs = recorded["feast"]["feature_refs"]
    store = featurestore.get_store()
    return _build(store, params, versions, refs, Path(out), reproduced_from=(manifest, recorded))


# ------------------------------------------------------------------ the build


def _tables_for(store, service: str) -> list[str]:
    from flows.features import feast_offline, featurestore

    keys = list(SILVER_TABLES)
    for fv in featurestore.service_views(store, service):
        key = feast_offline.table_key(fv.batch_source)
        if key not in keys:
            keys.append(key)
    return keys


def _connect():
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    return con


def _latest_batch_date(versions: dict[str, int]) -> dt.date:
    con = _connect()
    try:
        days = []
        for key in SILVER_TABLES:
            layer, name = key.split("/")
            con.register("t", lake.dataset(layer, name, version=versions[key]))
            days.append(con.execute("SELECT max(_batch_date) FROM t").fetchall()[0][0])
            con.unregister("t")
    finally:
        con.close()
    days = [d for d in days if d is not None]
    if not days:
        raise TrainingSetError("silver holds no batches yet: nothing to build a training set from")
    return max(days)


def _entity_rows(params: dict[str, Any], versions: dict[str, int]) -> tuple[pa.Table, pa.Table]:
    """Entity rows with labels, and the lineage (landing files) of the rows used."""
    d1, d2 = parse_range(params["start"], params["end"])
    cutoff = parse_date(params["label_cutoff"], "label cutoff")
    lo, hi = day_start_utc(d1), day_start_utc(d2 + dt.timedelta(days=1))
    con = _connect()
    try:
        con.register("txns", lake.dataset("silver", "transactions", version=versions["silver/transactions"]))
        con.register("cbs", lake.dataset("silver", "chargebacks", version=versions["silver/chargebacks"]))
        con.execute(
            """
            CREATE TEMP TABLE ent AS
            SELECT txn_id, customer_id, merchant_id, event_time AS event_timestamp, _source_file, _batch_date
            FROM txns
            WHERE event_time >= ?::TIMESTAMPTZ AND event_time < ?::TIMESTAMPTZ
            QUALIFY row_number() OVER (PARTITION BY txn_id ORDER BY _batch_date, _row_number) = 1
            """,
            [lo, hi],
        )
        con.execute(
            """
            CREATE TEMP TABLE lab AS
            SELECT txn_id, min(_source_file) AS _source_file, min(_batch_date) AS _batch_date
            FROM cbs WHERE _batch_date <= ?::DATE AND txn_id IN (SELECT txn_id FROM ent)
            GROUP BY txn_id
            """,
            [cutoff],
        )
        rows = con.sql(
            """
            SELECT e.txn_id, e.customer_id, e.merchant_id, e.event_timestamp,
                   l.txn_id IS NOT NULL AS is_fraud
            FROM ent e LEFT JOIN lab l USING (txn_id)
            ORDER BY e.event_timestamp, e.txn_id
            """
        ).to_arrow_table()
        lineage = con.sql(
            """
            SELECT 'transactions' AS source, _source_file AS file, min(_batch_date) AS batch_date,
                   count(*) AS rows_used FROM ent GROUP BY ALL
            UNION ALL
            SELECT 'chargebacks', _source_file, min(_batch_date), count(*) FROM lab GROUP BY ALL
            ORDER BY source, file
            """
        ).to_arrow_table()
    finally:
        con.close()
    return rows, lineage


def feature_refs(store, service: str) -> list[str]:
    """`view:feature` references of a feature service, in its order."""
    fs = store.get_feature_service(service)
    return [f"{p.name_to_use()}:{f.name}" for p in fs.feature_view_projections for f in p.features]


def _features(store, refs: list[str], rows: pa.Table, versions: dict[str, int]) -> pa.Table:
    from flows.features import feast_offline

    gold_pins = {k: v for k, v in versions.items() if k not in SILVER_TABLES}
    entity_df = rows.select(["txn_id", "customer_id", "merchant_id", "event_timestamp"]).to_pandas()
    with feast_offline.pinned_versions(gold_pins):
        job = store.get_historical_features(entity_df=entity_df, features=refs)
    used = getattr(job, "table_versions", None)
    if used is not None and used != gold_pins:
        raise TrainingSetError(f"offline store read {used}, expected {gold_pins}")
    result = job.to_arrow()
    names = [ref.split(":", 1)[1] for ref in refs]
    if result.num_rows != rows.num_rows or not result["txn_id"].cast(pa.string()).equals(
        rows["txn_id"].cast(pa.string())
    ):
        raise TrainingSetError("the offline store did not return the entity rows in order")
    columns = {
        "txn_id": rows["txn_id"].cast(pa.string()),
        "customer_id": rows["customer_id"].cast(pa.int64()),
        "merchant_id": rows["merchant_id"].cast(pa.int64()),
        "event_timestamp": rows["event_timestamp"].cast(TS),
        "is_fraud": rows["is_fraud"].cast(pa.bool_()),
    }
    for name in names:
        columns[name] = result[name]
    return pa.table(columns)


def _write_parquet(table: pa.Table, out: Path) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    table = table.replace_schema_metadata(None)
    table = pa.Table.from_batches(table.combine_chunks().to_batches(), schema=table.schema)
    pq.write_table(table, tmp, **PARQUET_OPTIONS)
    os.replace(tmp, out)
    return sha256_file(out)


def _build(
    store,
    params: dict[str, Any],
    versions: dict[str, int],
    refs: list[str],
    out: Path,
    reproduced_from: tuple[Path, dict] | None,
) -> dict[str, Any]:
    for path in (out, manifest_path(out)):
        root = settings().pipeline_root_of(path)
        if root is not None:
            raise TrainingSetError(f"{path} is inside {root}, which the pipeline owns: write it elsewhere")
    t0 = time.monotonic()
    rows, lineage = _entity_rows(params, versions)
    try:
        table = _features(store, refs, rows, versions)
    except lake.LakeError as exc:
        raise TrainingSetError(f"{exc} (a vacuum may have removed the files of that version)") from None
    sha = _write_parquet(table, out)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "kind": "asof.training_set",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "output": {
            "path": str(out.resolve()),
            "sha256": sha,
            "bytes": out.stat().st_size,
            "rows": table.num_rows,
            "columns": table.column_names,
            "positives": int(pc.sum(table["is_fraud"]).as_py() or 0) if table.num_rows else 0,
        },
        "parameters": params,
        "tables": {
            key: {"version": v, "uri": lake.uri(*key.split("/"))} for key, v in sorted(versions.items())
        },
        "feast": {**_feast_lineage(store, params["service"]), "feature_refs": refs},
        "dbt": dbt_fingerprint(),
        "great_expectations": ge_fingerprint(),
        "landing_files": _landing_lineage(lineage),
        "code": {"git_commit": git_commit(), "software": _versions()},
        "seconds": round(time.monotonic() - t0, 3),
    }
    if reproduced_from is not None:
        src_path, recorded = reproduced_from
        manifest["reproduction"] = {
            "manifest": str(src_path.resolve()),
            "expected_sha256": recorded["output"]["sha256"],
            "identical": sha == recorded["output"]["sha256"],
            "changed_since": _changed(recorded, manifest),
        }
    manifest_path(out).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    training_sets.register(manifest, manifest_path(out))  # what `asof lineage impact` finds
    return manifest


def _changed(recorded: dict, now: dict) -> list[str]:
    """Which recorded fingerprints differ now (informational: the data comes from the versions)."""
    changed = []
    checks = {
        "feast definitions": ("feast", "definitions_sha256"),
        "feast feature service": ("feast", "service_sha256"),
        "offline store ttl bound": ("feast", "ttl_lower_bound"),
        "dbt": ("dbt", "sha256"),
        "great expectations": ("great_expectations", "sha256"),
        "git commit": ("code", "git_commit"),
    }
    for label, (section, key) in checks.items():
        if recorded.get(section, {}).get(key) != now.get(section, {}).get(key):
            changed.append(label)
    return changed


# ------------------------------------------------------------------ fingerprints


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _hash_files(root: Path, files: list[Path]) -> tuple[str, dict[str, str]]:
    per_file = {str(p.relative_to(root)): sha256_file(p) for p in sorted(files)}
    h = hashlib.sha256()
    for name, digest in per_file.items():
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest(), per_file


def _feast_lineage(store, service: str) -> dict[str, Any]:
    from flows.features import feast_offline, featurestore

    fs = store.get_feature_service(service)
    views = {}
    for fv in featurestore.service_views(store, service):
        spec = fv.to_proto().spec
        spec.ClearField("batch_source")  # holds an ASOF_HOME-dependent path; the table is recorded below
        views[fv.name] = {
            "source": feast_offline.table_key(fv.batch_source),
            "ttl_seconds": fv.ttl.total_seconds() if fv.ttl else None,
            "features": [f.name for f in fv.features],
            "spec_sha256": hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest(),
        }
    fs_spec = fs.to_proto().spec
    service_hash = hashlib.sha256(
        fs_spec.SerializeToString(deterministic=True) + json.dumps(views, sort_keys=True).encode()
    ).hexdigest()
    return {
        "project": store.project,
        "service": service,
        "features": featurestore.service_feature_names(store, service),
        "feature_views": views,
        "service_sha256": service_hash,
        "definitions_sha256": featurestore.definitions_sha256(),
        "offline_store": store.config.offline_store.type,
        "ttl_lower_bound": getattr(store.config.offline_store, "ttl_lower_bound", None),
    }


def dbt_fingerprint(project: Path | None = None) -> dict[str, Any]:
    """Hash of the dbt project: compiled manifest node checksums if present, else the source files."""
    project = project or (REPO_ROOT / "dbt_project")
    if not project.exists():
        return {"method": "absent", "sha256": None}
    compiled = project / "target" / "manifest.json"
    if compiled.exists():
        try:
            nodes = json.loads(compiled.read_text()).get("nodes", {})
            items = sorted(
                (uid, (node.get("checksum") or {}).get("checksum", ""))
                for uid, node in nodes.items()
                if node.get("resource_type") in ("model", "seed", "snapshot", "test")
            )
            if items:
                digest = hashlib.sha256("\n".join(f"{u}\0{c}" for u, c in items).encode()).hexdigest()
                return {"method": "compiled manifest node checksums", "sha256": digest, "nodes": len(items)}
        except (OSError, ValueError):
            pass
    files = [
        p
        for sub in ("models", "seeds", "macros", "snapshots")
        for p in (project / sub).rglob("*")
        if p.is_file() and p.suffix in (".sql", ".yml", ".yaml", ".csv", ".py", ".md")
    ]
    files += [p for p in (project / "dbt_project.yml",) if p.exists()]
    digest, per_file = _hash_files(project, files)
    return {
        "method": "source files (models, seeds, macros, dbt_project.yml)",
        "sha256": digest,
        "files": per_file,
    }


def ge_fingerprint(root: Path | None = None) -> dict[str, Any]:
    """Hashes of the Great Expectations suites (and data contracts) under expectations/."""
    root = root or (REPO_ROOT / "expectations")
    if not root.exists():
        return {"method": "absent", "sha256": None}
    files = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and "uncommitted" not in p.relative_to(root).parts
        and p.suffix in (".json", ".yml", ".yaml")
        and (
            "expectations" in p.relative_to(root).parts[:-1]
            or "contracts" in p.relative_to(root).parts[:-1]
            or "checkpoints" in p.relative_to(root).parts[:-1]
        )
    ]
    method = "suites, contracts and checkpoints"
    if not files:
        files = [
            p
            for p in root.rglob("*")
            if p.is_file()
            and "uncommitted" not in p.relative_to(root).parts
            and p.suffix in (".json", ".yml", ".yaml")
        ]
        method = "all configuration files"
    digest, per_file = _hash_files(root, files)
    return {"method": method, "sha256": digest, "suites": per_file}


def _landing_lineage(lineage: pa.Table) -> list[dict[str, Any]]:
    home = settings().home
    out = []
    for row in lineage.to_pylist():
        entry = {
            "source": row["source"],
            "file": row["file"],
            "batch_date": row["batch_date"].isoformat() if row["batch_date"] else None,
            "rows_used": row["rows_used"],
        }
        path = Path(row["file"]) if row["file"] else None
        if path is not None and not path.is_absolute():
            path = home / path
        entry["sha256"] = sha256_file(path) if path is not None and path.is_file() else None
        out.append(entry)
    return out


def git_commit() -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = res.stdout.strip()
    return commit if res.returncode == 0 and commit else None


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("feast", "duckdb", "pyarrow", "deltalake", "pandas"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out
