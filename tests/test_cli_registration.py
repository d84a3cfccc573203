"""CLI registration and exit codes: every subcommand is always listed, a missing or broken package
is one clear line when its command is used, help stays light, and exit codes follow exception types
(flows/cli/usage.py)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from flows.cli import usage
from flows.cli.monitor import MonitorArgumentError
from flows.cli.usage import MissingDependency, Refused

REPO = Path(__file__).resolve().parent.parent
ASOF = [sys.executable, "-m", "flows.cli.main"]
COMMANDS = (
    "generate",
    "run",
    "backfill",
    "status",
    "docs",
    "training-set",
    "reproduce",
    "serve",
    "verify",
    "monitor",
    "quarantine",
    "lineage",
    "warm",
)
HEAVY = ("great_expectations", "dbt", "feast", "pandas", "duckdb", "pyarrow", "yaml")


def run_cli(home: Path, *args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ASOF_HOME": str(home), "COLUMNS": "200"}
    env.pop("ASOF_DEBUG", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run([*ASOF, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=180)


def listed(help_text: str) -> set[str]:
    """Command names in the rows of a rich help screen's Commands panel."""
    return set(re.findall(r"^│ ([a-z][a-z-]*)\s", help_text, flags=re.MULTILINE))


def _main(argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    from flows.cli import main as cli

    monkeypatch.setattr(sys, "argv", ["asof", *argv])
    monkeypatch.delenv("ASOF_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    code = exit_.value.code
    return (code if isinstance(code, int) else 0 if code is None else 1), capsys.readouterr().err


# ---------------------------------------------------------------- registration


def test_help_lists_every_subcommand(tmp_path: Path) -> None:
    from flows.cli.main import app

    assert set(typer.main.get_command(app).commands) == set(COMMANDS)
    res = run_cli(tmp_path, "--help")
    assert res.returncode == 0, res.stderr
    assert listed(res.stdout) == set(COMMANDS), res.stdout
    sub = run_cli(tmp_path, "quarantine", "--help")
    assert sub.returncode == 0 and listed(sub.stdout) == {"list", "show", "release"}, sub.stdout


def test_every_command_reports_a_failed_import() -> None:
    """Every leaf command is wrapped, with the label the user typed."""
    from flows.cli import main as cli

    def leaves(group, path):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from leaves(cmd, [*path, name])
            else:
                yield [*path, name], cmd.callback

    found = {" ".join(p): cb for p, cb in leaves(typer.main.get_command(cli.app), ["asof"])}
    assert "asof quarantine release" in found and "asof monitor" in found
    for label, callback in found.items():
        assert getattr(callback, "asof_guarded", False), label


BROKEN = {
    "raises": ('raise ImportError("simulated broken install")\n', "simulated broken install"),
    "missing": ("import asof_absent_dependency\n", "No module named 'asof_absent_dependency'"),
}
USES_DELTALAKE = {
    "monitor": ["monitor"],
    "quarantine list": ["quarantine", "list"],
    "training-set": [
        "training-set",
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-02",
        "--service",
        "fraud_v1",
        "--out",
        "OUT/x.parquet",
    ],
}


@pytest.mark.parametrize("how", sorted(BROKEN))
def test_a_broken_package_is_one_clear_line_and_its_commands_stay_listed(tmp_path: Path, how: str) -> None:
    """A `deltalake` first on PYTHONPATH whose import fails, as a broken install would: `asof --help`
    still lists the commands that need it; using one prints one line naming the command and the
    package, exit 3, no traceback."""
    body, cause = BROKEN[how]
    fake = tmp_path / "site"
    (fake / "deltalake").mkdir(parents=True)
    (fake / "deltalake" / "__init__.py").write_text(body)
    home = tmp_path / "home"
    home.mkdir()

    shown = run_cli(home, "--help", pythonpath=fake)
    assert shown.returncode == 0, shown.stderr
    assert {"monitor", "quarantine", "training-set"} <= listed(shown.stdout), shown.stdout

    for label, argv in USES_DELTALAKE.items():
        res = run_cli(home, *[a.replace("OUT", str(tmp_path)) for a in argv], pythonpath=fake)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.returncode == 3, (label, res.stdout, res.stderr)
        assert lines == [f"asof: error: asof {label} needs the 'deltalake' package: {cause}"], res.stderr
        assert res.stdout == ""
    assert not (tmp_path / "x.parquet").exists()


def test_a_missing_package_in_process(monkeypatch, capsys, home: Path) -> None:
    """`asof serve` with feast unimportable (None in sys.modules is how Python spells "not there")."""
    monkeypatch.setitem(sys.modules, "feast", None)
    monkeypatch.setitem(sys.modules, "feast.feature_server", None)
    code, err = _main(["serve", "--port", "6566"], capsys, monkeypatch)
    assert code == 3
    assert err.splitlines() == [
        "asof: error: asof serve needs the 'feast' package: "
        "import of feast.feature_server halted; None in sys.modules"
    ]


def test_an_import_error_of_asof_itself_stays_a_bug(monkeypatch, capsys) -> None:
    """A failed import of one of asof's own modules is a bug, not an installation problem: it is
    not reported as a missing package (exit 1, the error as it is)."""
    app = typer.Typer()

    @app.command()
    def broken() -> None:
        import flows.no_such_module  # noqa: F401

    @app.command()
    def other() -> None:
        pass

    usage.guard_commands(app)
    monkeypatch.setattr(sys, "argv", ["asof", "broken"])
    monkeypatch.delenv("ASOF_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        usage.run(app)
    assert exit_.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        "asof: error: ModuleNotFoundError: No module named 'flows.no_such_module'"
    ]


PROBE = """
import json, sys
argv, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.argv = ["asof", *argv]
from flows.cli import main as cli
try:
    cli.main()
except SystemExit as exc:
    code = exc.code
print("PROBE", json.dumps({"code": code, "heavy": sorted(n for n in heavy if n in sys.modules)}))
"""


def _probe(argv: list[str], heavy: list[str], home: Path) -> tuple[dict, subprocess.CompletedProcess]:
    """`asof *argv` in a fresh interpreter: its exit code and which of the modules `heavy` it loaded."""
    res = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(heavy)],
        capture_output=True,
        text=True,
        env={**os.environ, "ASOF_HOME": str(home)},
        cwd=REPO,
        timeout=180,
    )
    [line] = [ln for ln in res.stdout.splitlines() if ln.startswith("PROBE ")]
    return json.loads(line.removeprefix("PROBE ")), res


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["status", "--help"], ["monitor", "--help"], ["quarantine", "list", "--help"]],
    ids=" ".join,
)
def test_help_imports_nothing_heavy(tmp_path: Path, argv: list[str]) -> None:
    got, res = _probe(argv, list(HEAVY), tmp_path)
    assert got == {"code": 0, "heavy": []}, res.stderr


STATUS_HEAVY = ["great_expectations", "dbt", "feast", "pandas", "duckdb", "prefect"]
STATUS_HEAVY += ["pyarrow.compute", "pyarrow.dataset"]


def test_status_reads_run_records_without_heavy_imports(home: Path) -> None:
    """`asof status` over recorded dates (dates and timestamps included) imports none of the stages'
    packages, nor pandas, DuckDB, Prefect or pyarrow's compute and dataset modules (docs/scaling.md:
    the 1 s target of `asof status`)."""
    import datetime as dt

    from flows.operations import runs

    day = dt.date(2024, 1, 1)
    runs.append("r1", None, [runs.StageRecord(day, s, runs.ALL_SOURCES, "succeeded") for s in runs.STAGES])
    got, res = _probe(["status"], STATUS_HEAVY, home)
    assert got == {"code": 0, "heavy": []}, res.stderr
    assert "2024-01-01" in res.stdout and "succeeded" in res.stdout


# ---------------------------------------------------------------- exit codes


class Refused2(Refused):
    pass


class NamedRefused(Exception):
    """Not flows.cli.usage.Refused, whatever its name says: exit codes go by type."""


NamedRefused.__name__ = NamedRefused.__qualname__ = "Refused"


CASES = [
    (Refused("bad date"), 2, ["asof: error: bad date"]),
    (Refused2("bad date"), 2, ["asof: error: bad date"]),
    (MonitorArgumentError("--end needs --start"), 2, ["asof: error: --end needs --start"]),
    (typer.BadParameter("no good"), 2, ["asof: error: Invalid value: no good (see 'asof fail --help')"]),
    (
        MissingDependency("asof monitor", "xyz", ModuleNotFoundError("No module named 'xyz'", name="xyz")),
        3,
        ["asof: error: asof monitor needs the 'xyz' package: No module named 'xyz'"],
    ),
    (typer.Abort(), 130, ["asof: aborted"]),
    (typer.Exit(4), 4, []),
    (RuntimeError("boom"), 1, ["asof: error: RuntimeError: boom"]),
    (NamedRefused("looks refused"), 1, ["asof: error: Refused: looks refused"]),
]


@pytest.mark.parametrize("exc, code, lines", CASES, ids=[f"{type(c[0]).__qualname__}-{c[1]}" for c in CASES])
def test_exit_code_by_exception_type(
    monkeypatch, capsys, exc: Exception, code: int, lines: list[str]
) -> None:
    app = typer.Typer()

    @app.command()
    def fail() -> None:
        raise exc

    @app.command()
    def other() -> None:
        pass

    assert usage.exit_code(exc) == code
    monkeypatch.setattr(sys, "argv", ["asof", "fail"])
    monkeypatch.delenv("ASOF_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        usage.run(app)
    assert exit_.value.code == code
    assert capsys.readouterr().err.splitlines() == lines


def test_usage_errors_exit_2_and_success_0(monkeypatch, capsys) -> None:
    app = typer.Typer()

    @app.command()
    def ok() -> None:
        pass

    @app.command()
    def other() -> None:
        pass

    for argv, code in ((["ok"], 0), (["ok", "--nope"], 2), (["nope"], 2)):
        monkeypatch.setattr(sys, "argv", ["asof", *argv])
        with pytest.raises(SystemExit) as exit_:
            usage.run(app)
        assert exit_.value.code == code, argv
        err = capsys.readouterr().err.splitlines()
        if code == 0:
            assert err == []
        else:
            assert len(err) == 1 and err[0].startswith("asof: error: "), err


def test_asof_debug_shows_the_traceback_of_failures_only(monkeypatch, capsys) -> None:
    app = typer.Typer()

    @app.command()
    def crash() -> None:
        raise RuntimeError("boom")

    @app.command()
    def refused() -> None:
        usage.refuse("bad")

    monkeypatch.setenv("ASOF_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["asof", "crash"])
    with pytest.raises(RuntimeError, match="boom"):
        usage.run(app)
    monkeypatch.setattr(sys, "argv", ["asof", "refused"])
    with pytest.raises(SystemExit) as exit_:
        usage.run(app)
    assert exit_.value.code == 2 and capsys.readouterr().err == "asof: error: bad\n"


def test_one_refusal_helper_and_no_exit_codes_by_name() -> None:
    """The cli modules refuse through flows.cli.usage.refuse and never pick an exit code by class name."""
    for path in sorted((REPO / "flows").glob("cli*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert "refuse" not in node.name, f"{path.name}: def {node.name}"
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                assert getattr(node.exc.func, "id", None) != "Refused", f"{path.name}:{node.lineno}"
            if isinstance(node, ast.Attribute) and node.attr == "__name__":
                raise AssertionError(f"{path.name}:{node.lineno}: matches a class by name")
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                names = [n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)]
                assert "ImportError" not in names, f"{path.name}:{node.lineno}: swallows ImportError"
