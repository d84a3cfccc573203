"""`asof training-set`, `asof reproduce`, `asof serve` (SPEC sections 3 and 8).

`flows.cli` calls `register(app)`; `features_app` is the same commands as a standalone Typer app
(`python -m flows.cli_features --help`). Arguments are checked before Feast is imported (it costs
~8 s), so a typo fails fast and touches nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.dates import DateError, parse_date, parse_range

SERVICES = ("fraud_v1", "fraud_v2")


def _refuse(message: str) -> None:
    """Bad arguments: `asof` reports them as one line on stderr with exit status 2."""
    try:
        from flows.usage import Refused
    except ImportError:  # pragma: no cover - standalone use without the main CLI
        raise typer.BadParameter(message) from None
    raise Refused(message)


def _error(message: str) -> None:
    typer.echo(f"asof: error: {message}", err=True)
    raise typer.Exit(1)


def _parquet_path(out: Path, option: str) -> Path:
    if out.suffix != ".parquet":
        _refuse(f"{option}: {out} must end in .parquet")
    if out.is_dir():
        _refuse(f"{option}: {out} is a directory")
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
        _refuse(str(exc))
        return
    if service not in SERVICES:
        _refuse(f"--service: unknown feature service {service!r} (known: {', '.join(SERVICES)})")
    out = _parquet_path(out, "--out")

    from flows import lake
    from flows.training import TrainingSetError, build_training_set, manifest_path

    try:
        manifest = build_training_set(d1, d2, service, out, label_cutoff=cutoff)
    except (TrainingSetError, lake.LakeError) as exc:
        _error(str(exc))
        return
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
        _refuse(f"manifest {manifest} does not exist")
    out = _parquet_path(out, "--out")

    from flows import lake
    from flows.training import TrainingSetError, manifest_path
    from flows.training import reproduce as rebuild

    try:
        result = rebuild(manifest, out)
    except (TrainingSetError, lake.LakeError) as exc:
        _error(str(exc))
        return
    rep = result["reproduction"]
    if not rep["identical"]:
        changed = ", ".join(rep["changed_since"]) or "nothing recorded"
        _error(
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

    Uses the same store as the pipeline (SQLite, or Redis with ASOF_ONLINE_STORE=redis).
    """
    if not 0 < port < 65536:
        _refuse("--port must be 1-65535")
    if workers < 1:
        _refuse("--workers must be >= 1")
    from feast.feature_server import start_server

    from flows.featurestore import get_store

    store = get_store()
    typer.echo(f"serving feature services {', '.join(SERVICES)} on http://{host}:{port} (Ctrl-C stops)")
    start_server(
        store,
        host=host,
        port=port,
        no_access_log=not access_log,
        workers=workers,
        worker_connections=1000,
        max_requests=0,
        max_requests_jitter=0,
        keep_alive_timeout=30,
        registry_ttl_sec=60,
        tls_key_path="",
        tls_cert_path="",
        metrics=False,
    )


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


def main() -> None:
    """Standalone entry point (`python -m flows.cli_features`)."""
    import sys

    try:
        features_app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        if hasattr(exc, "show"):  # typer/click usage errors
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        typer.echo(f"asof: error: {exc}", err=True)
        sys.exit(2 if type(exc).__name__ == "Refused" else 1)


if __name__ == "__main__":
    main()
