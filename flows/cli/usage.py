"""How every `asof` command refuses, fails and exits.

It lives apart from `flows/cli/main.py` so the classes are the same objects whether the CLI runs as the
`asof` console script or as `python -m flows.cli.main` (where cli.py is `__main__`), and so the standalone
apps (`python -m flows.cli.features`, `python -m flows.cli.monitor`) report errors the same way.

Exit status, chosen by exception type in `EXIT_CODES` (the first row the exception is an instance of):

    0    done
    1    the command failed (a date, a check or the reproduction failed; a malformed ASOF_* value;
         an unexpected error)
    2    bad usage: a refused argument or an unknown option; nothing ran, nothing was written
    3    the command needs a package that is missing or broken in this environment
    130  aborted (Ctrl-C)

Code 3 is apart from 1 so that a scheduler can tell "fix the installation" from "the data failed".
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import typer
from typer.main import get_command_name

from flows.cli.terminal import printable
from flows.config import ConfigError, settings, warn_unknown_variables
from flows.dates import DateError, parse_date

try:  # typer >= 0.2x raises the errors of the click it vendors
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - older typer raises click's own
    from click.exceptions import ClickException, UsageError


class Refused(Exception):
    """Bad input: reported as one line on stderr with exit status 2, before anything runs."""


class MissingDependency(Exception):
    """A command's import failed at use time. Commands import their heavy dependencies in their
    bodies so `asof --help` stays fast, so this is where a missing or broken package surfaces; it
    names the command and the package instead of showing a traceback."""

    def __init__(self, command: str, package: str, cause: ImportError) -> None:
        super().__init__(f"{command} needs the {package!r} package: {cause}")
        self.command = command
        self.package = package


def refuse(message: str) -> NoReturn:
    """Bad arguments: one line on stderr, exit status 2 (the chained cause would only repeat it)."""
    raise Refused(message) from None


def date_argument(value: str, what: str) -> dt.date:
    """A command-line date (YYYY-MM-DD), or a refusal naming the option (`what`) and the value."""
    try:
        return parse_date(value, what)
    except DateError as exc:
        refuse(str(exc))


def fail(message: str, code: int = 1) -> NoReturn:
    """A failure the command has already explained: one line on stderr, then exit `code`."""
    typer.echo(f"asof: error: {printable(message)}", err=True)
    raise typer.Exit(code)


# ---------------------------------------------------------------- exit codes


def _error(exc: BaseException) -> str:
    return f"asof: error: {exc}"


def _click_error(exc: BaseException) -> str | None:
    message = exc.format_message()  # type: ignore[attr-defined]
    if not message:  # `asof` alone: the help it asked for is already on the screen
        return None
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"asof: error: {message}{hint}"


def _unexpected(exc: BaseException) -> str:
    from flows.storage.diskfull import failure_message  # a full disk: "no space left on <path>"

    return f"asof: error: {failure_message(exc)}"


@dataclass(frozen=True)
class ExitRule:
    error: type[BaseException]
    code: int | None  # None: the exception carries its own (typer.Exit)
    line: Callable[[BaseException], str | None]  # the line for stderr, if any
    debug_reraise: bool = False  # with ASOF_DEBUG set, show the traceback instead


EXIT_CODES: tuple[ExitRule, ...] = (
    ExitRule(typer.Exit, None, lambda _: None),  # the command has said why already
    ExitRule(Refused, 2, _error),
    ExitRule(UsageError, 2, _click_error),
    ExitRule(MissingDependency, 3, _error, debug_reraise=True),
    ExitRule(ConfigError, 1, _error, debug_reraise=True),  # the message names the variable
    ExitRule(typer.Abort, 130, lambda _: "asof: aborted"),
    ExitRule(ClickException, 1, _click_error),
    ExitRule(Exception, 1, _unexpected, debug_reraise=True),
)


def exit_rule(exc: BaseException) -> ExitRule:
    for rule in EXIT_CODES:
        if isinstance(exc, rule.error):
            return rule
    return EXIT_CODES[-1]


def exit_code(exc: BaseException) -> int:
    rule = exit_rule(exc)
    return rule.code if rule.code is not None else getattr(exc, "exit_code", 1)


def _debug() -> bool:
    try:
        return settings().debug
    except ConfigError:  # ASOF_DEBUG set to something else than a flag: it was meant to be on
        return True


def run(app: typer.Typer) -> NoReturn:
    """Run `app` on sys.argv and exit: errors become one line on stderr, never a traceback.

    Unknown `ASOF_*` names are reported first (on stderr, so `--json` output stays parseable)."""
    warn_unknown_variables()
    # A log handler that cannot write (a full disk, the Prefect API answering 500) must not bury
    # the command's one error line under a "--- Logging error ---" traceback per log record.
    logging.raiseExceptions = False
    try:
        # With standalone_mode=False click *returns* the code of a typer.Exit instead of raising.
        code = app(standalone_mode=False)
    except Exception as exc:
        rule = exit_rule(exc)
        if rule.debug_reraise and _debug():
            raise
        line = rule.line(exc)
        if line:  # errors quote file names, headers and values: escape what a terminal would run
            typer.echo(printable(line), err=True)
        sys.exit(exit_code(exc))
    sys.exit(code if isinstance(code, int) else 0)


# ---------------------------------------------------------------- the end of the process


def skip_interpreter_teardown() -> Callable[[int], None]:
    """End the `asof` process without Python's teardown, once the command and every exit handler ran.

    After a pipeline command, the interpreter spent 2-6 s freeing the modules and objects of GE, dbt,
    Feast and Prefect one by one (measured: the time from the last exit handler to the end of the
    process, 30-day demo backfill, load 3-5; 0.1 s with `os._exit`); nothing of it is
    observable: every file the command wrote is closed, the Delta commits are done. What still runs
    at a normal exit runs here too, in the same order: non-daemon threads are joined first (the
    interpreter does that before any exit handler), then every exit handler registered after this
    call (Prefect's log and event drains, the temporary server's stop), then this one: logging
    flushed and closed (its handler was registered earlier, so it would run after this one),
    stdout and stderr flushed, and the process ends with the command's exit status.

    Returns `done(code)`: call it with the exit status when the command ended through `sys.exit`;
    without that call (an uncaught exception, a Ctrl-C) the process ends the ordinary way. Only
    for the console script's own process (`flows.cli.main.main`): never in a process that goes on
    (a test runner calling the app).
    """
    import atexit
    import contextlib
    import os

    status: list[int] = []

    def end() -> None:
        if not status:
            return
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed or broken pipe: nothing left to say
                stream.flush()
        os._exit(status[0])

    atexit.register(end)
    return status.append


# ---------------------------------------------------------------- missing dependencies


def _failed_package(exc: ImportError) -> str | None:
    """The package asof imported when the import failed: the outermost module body of someone
    else's package on the traceback (deltalake, when deltalake's own import of a missing module
    failed), else the module the error names. None when it is asof's own module: a bug, which should
    surface as one."""
    bodies = [f for f, _ in traceback.walk_tb(exc.__traceback__) if f.f_code.co_name == "<module>"]
    for name in [*(f.f_globals.get("__name__") or "" for f in bodies), exc.name or ""]:
        top = name.partition(".")[0]
        if top and top not in ("flows", "__main__"):
            return top
    return None


def _guarded(label: str, callback: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(callback, "asof_guarded", False):
        return callback

    @functools.wraps(callback)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except ImportError as exc:
            package = _failed_package(exc)
            if package is None:
                raise
            raise MissingDependency(label, package, exc) from exc

    command.asof_guarded = True  # type: ignore[attr-defined]
    return command


def guard_commands(app: typer.Typer, prefix: str = "asof") -> typer.Typer:
    """Make every command of `app` (sub-apps included) report a failed import as MissingDependency.

    Commands are registered unconditionally and import nothing heavy until they run, so a broken
    package cannot hide a command; this turns it into one line naming the command when it is used.
    """
    for info in app.registered_commands:
        if info.callback is not None:
            name = info.name or get_command_name(info.callback.__name__)
            info.callback = _guarded(f"{prefix} {name}", info.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            name = group.name if isinstance(group.name, str) else None
            guard_commands(group.typer_instance, f"{prefix} {name}" if name else prefix)
    return app
