"""`asof training-set`, `asof reproduce`, `asof serve` (contract sections 3 and 8).

`flows.cli.main` calls `register(app)`; `features_app` is the same commands as a standalone Typer app
(`python -m flows.cli.features --help`). Arguments are checked before Feast is imported (it costs
~8 s), so a typo fails fast and touches nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli import usage
from flows.cli.usage import fail, refuse
from flows.dates import DateError, parse_date, parse_range

SERVICES = ("fraud_v1", "fraud_v2")


def _parquet_path(out: Path, option: str) -> Path:
    if out.suffix != ".parquet":
        refuse(f"{option}: {out} must end in .parquet")
    if out.is_dir():
        refuse(f"{option}: {out} is a directory")
    from flows.config import settings
    from flows.features.training import manifest_path

    for path in (out, manifest_path(out)):
        root = settings().pipeline_root_of(path)
        if root is not None:
            refuse(f"{option}: {path} is inside {root}, which the pipeline owns: write it elsewhere")
    return out


def training_set(
    start: Annotated[str, typer.Option(help="First event date (YYYY-MM-DD), inclusive.")],
    end: Annotated[str, typer.Option(help="Last event date (YYYY-MM-DD), inclusive.")],
    service: Annotated[str, typer.Option(help="Feature service: fraud_v1 or fraud_v2.")],
    out: Annotated[Path, typer.Option(help="Output FILE.parquet; FILE.manifest.json is written next to it.")],
    label_cutoff: Annotated[
        str | None,
        typer.Option(help="Chargebacks known by this batch date count as fraud (default: latest batch)."),
    ] = None,
) -> None:
    """Build a point-in-time-correct training set (transactions from START to END) and its manifest."""
    try:
        d1, d2 = parse_range(start, end)
        cutoff = parse_date(label_cutoff, "label cutoff") if label_cutoff else None
    except DateError as exc:
        refuse(str(exc))
    if service not in SERVICES:
        refuse(f"--service: unknown feature service {service!r} (known: {', '.join(SERVICES)})")
    out = _parquet_path(out, "--out")

    from flows.features.training import TrainingSetError, build_training_set, manifest_path
    from flows.storage import lake

    try:
        manifest = build_training_set(d1, d2, service, out, label_cutoff=cutoff)
    except (TrainingSetError, lake.LakeError) as exc:
        fail(str(exc))
    o = manifest["output"]
    typer.echo(
        f"wrote {o['rows']} rows ({o['positives']} fraud) x {len(o['columns'])} columns to {out}\n"
        f"  sha256   {o['sha256']}\n"
        f"  manifest {manifest_path(out)}\n"
        f"  label cutoff {manifest['parameters']['label_cutoff']} "
        f"({manifest['parameters']['label_cutoff_source']})"
    )


def reproduce(
    manifest: Annotated[Path, typer.Argument(help="A FILE.manifest.json written by `asof training-set`.")],
    out: Annotated[Path, typer.Option(help="Where to write the rebuilt FILE.parquet.")],
) -> None:
    """Rebuild a training set bit for bit from the table versions in its manifest."""
    if not manifest.is_file():
        refuse(f"manifest {manifest} does not exist")
    out = _parquet_path(out, "--out")

    from flows.features.training import TrainingSetError, manifest_path
    from flows.features.training import reproduce as rebuild
    from flows.storage import lake

    try:
        result = rebuild(manifest, out)
    except (TrainingSetError, lake.LakeError) as exc:
        fail(str(exc))
    rep = result["reproduction"]
    if not rep["identical"]:
        changed = ", ".join(rep["changed_since"]) or "nothing recorded"
        fail(
            f"{out} differs from the original (sha256 {result['output']['sha256']} != "
            f"{rep['expected_sha256']}; changed since: {changed})"
        )
    typer.echo(
        f"identical: {out} sha256 {result['output']['sha256']} ({result['output']['rows']} rows)\n"
        f"  manifest {manifest_path(out)}"
    )


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind (default loopback only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the HTTP feature server.")] = 6566,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """Serve online features over HTTP (Feast feature server; POST /get-online-features).

    Uses the same store as the pipeline (SQLite, or Redis with ASOF_ONLINE_STORE=redis). GET /metrics
    on the same port is for Prometheus: request latency per endpoint and feature service.
    """
    if not 0 < port < 65536:
        refuse("--port must be 1-65535")
    if workers < 1:
        refuse("--workers must be >= 1")
    from flows.features import feature_server

    feature_server.prepare_metrics(workers)  # before Feast imports prometheus_client
    import feast.feature_server  # noqa: F401 - the server's own dependency, named if missing

    from flows.features.featurestore import get_store

    store = get_store()
    typer.echo(
        f"serving feature services {', '.join(SERVICES)} on http://{host}:{port} "
        f"(metrics: /metrics; Ctrl-C stops)"
    )
    feature_server.run(store, host=host, port=port, workers=workers, access_log=access_log)


def register(app: typer.Typer) -> None:
    """Add the commands to the `asof` app."""
    app.command("training-set")(training_set)
    app.command("reproduce")(reproduce)
    app.command("serve")(serve)


features_app = typer.Typer(
    name="asof-features",
    help="Training sets, reproduction and online serving of the asof feature store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
register(features_app)
usage.guard_commands(features_app)


def main() -> None:
    """Standalone entry point (`python -m flows.cli.features`)."""
    usage.run(features_app)


if __name__ == "__main__":
    main()
