"""A full disk reports as one line, "no space left on <path>" (issue 23 item 7): recognized from
the error chain (errno 28, delta-rs's wrapped text) or from the disk itself when the error that
surfaced was another (the Prefect server answering 500); then a real `asof run` on a small tmpfs
(root only): stderr ends with that line, no Python traceback, the run record (or status) says it,
and once there is space again a rerun leaves every table equal to an undisturbed run's."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.storage import diskfull


def _wrapped(inner: BaseException, outer: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


def test_an_enospc_anywhere_in_the_chain_names_its_file(monkeypatch) -> None:
    monkeypatch.setattr(diskfull, "full_disk", lambda paths=None: None)
    err = OSError(errno.ENOSPC, "No space left on device", "/mnt/x/lake/bronze/t/part-0.parquet")
    assert diskfull.failure_message(err) == "no space left on /mnt/x/lake/bronze/t/part-0.parquet"
    outer = _wrapped(err, RuntimeError("Generic DeltaError: write failed"))
    assert diskfull.failure_message(outer) == "no space left on /mnt/x/lake/bronze/t/part-0.parquet"


def test_a_wrapped_message_names_the_home(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(diskfull, "full_disk", lambda paths=None: None)
    monkeypatch.setenv("ASOF_HOME", str(tmp_path))
    err = Exception("Failed to write object: No space left on device (os error 28)")
    assert diskfull.failure_message(err) == f"no space left on {tmp_path.resolve()}"


def test_another_error_on_a_full_disk_is_the_full_disk(monkeypatch) -> None:
    """What surfaces is often not the ENOSPC (the Prefect server 500s): the disk decides."""
    monkeypatch.setattr(diskfull, "full_disk", lambda paths=None: Path("/mnt/x"))
    assert diskfull.failure_message(RuntimeError("Server error '500 Internal Server Error'")) == (
        "no space left on /mnt/x"
    )


def test_other_errors_are_unchanged(monkeypatch) -> None:
    monkeypatch.setattr(diskfull, "full_disk", lambda paths=None: None)
    assert diskfull.failure_message(ValueError("bad date")) == "ValueError: bad date"


def test_full_disk_measures_the_disk(tmp_path: Path) -> None:
    assert diskfull.full_disk([tmp_path / "not" / "yet"]) is None  # a roomy disk, a path to come


# ------------------------------------------------------------------ a real full disk (tmpfs)


@contextlib.contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_on_a_full_disk_says_so_in_one_line(tmp_path: Path) -> None:
    from tests.kill_harness import asof_home, diff, harness, snapshot

    day = dt.date(2024, 1, 1)
    h = harness()
    landing = h.landing(day, day, "200x400", 5)
    with _tmpfs(tmp_path / "home", "64m") as home:
        shutil.copytree(landing, home / "landing")
        # leave too little for the lake: the landing files fit, bronze does not
        ballast = home / "ballast"
        with ballast.open("wb") as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * (1 << 16))
                fh.flush()
        free = shutil.disk_usage(home).free
        ballast.write_bytes(ballast.read_bytes()[: max(0, ballast.stat().st_size - (64 << 10))])
        assert shutil.disk_usage(home).free > free
        run = h.asof(home, "run", "--date", day.isoformat())
        out = run.output()
        assert run.rc not in (0, None), out[-3000:]
        assert "Logging error" not in out and "Traceback" not in out, out[-3000:]
        errors = [line for line in out.splitlines() if line.startswith("asof: error:")]
        assert errors and f"no space left on {home}" in errors[-1], out[-3000:]
        from flows.operations import runs

        with asof_home(home):  # what the run recorded (or, when no record fit, what status says)
            records = runs.latest(day, day)
        assert records and all(r["status"] != "succeeded" for r in records if r["stage"] != "run")
        assert any("no space left on" in r["message"] for r in records), records

        ballast.unlink()  # space again: rerunning the date gives the lake of an undisturbed run
        rerun = h.asof(home, "run", "--date", day.isoformat())
        assert rerun.rc == 0, rerun.output()[-3000:]
        _, reference = h.reference(landing, "run", "--date", day.isoformat())
        assert diff(reference, snapshot(home)) == ""
