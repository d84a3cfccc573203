"""Scheduled deployments on a real Prefect server, stage timeouts and failure notifications (issue 9).

- The deployments of `prefect.yaml`, deployed with `prefect deploy --all` to a real Prefect server
  on 127.0.0.1 (the kill tests' harness server: its own PREFECT_HOME) and served by a process worker,
  exactly as `make serve` does: a `daily` run for an explicit date triggered through the REST API and
  a `backfill` triggered at the same time with the CLI command the README shows; both end Completed,
  the run records say succeeded, silver/gold hold every date, the lake equals a plain `asof backfill`
  of the range, and the artifacts link to the Data Docs and the monitoring report over HTTP. The cron
  schedule creates SCHEDULED runs at the cron's times (a frequent cron in an hour that is not now, so
  the worker of this test never starts one).
- A stage over its timeout fails its date and the run, with a clear message, instead of hanging;
  what Prefect cannot interrupt (a blocking call in a task run in a thread) is pinned down.
- A failed run calls the notification command with the run's summary as JSON on stdin; the webhook
  gets the same JSON and logs never show more of its URL than the host; the documented server-side
  Automation is valid for this Prefect.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from flows.monitoring import notify
from flows.orchestration import local_server as serve
from tests.kill_harness import REPO, date_statuses, diff, harness, snapshot

D1, D2, D3 = dt.date(2024, 1, 1), dt.date(2024, 1, 2), dt.date(2024, 1, 3)
SCALE, SEED = "200x400", 5  # the concurrency tests' landing and reference backfill: shared, cached
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


# ------------------------------------------------------------------------------ timeouts (config)


def test_stage_timeouts_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows import config, pipeline

    tasks = {
        "ingest": pipeline.ingest_source,
        "validate": pipeline.validate_dates,
        "transform": pipeline.transform_features,
        "materialize": pipeline.materialize_features,
        "monitor": pipeline.monitor_dates,
    }
    assert set(tasks) == set(config.STAGE_TIMEOUT_DEFAULTS_S)
    for stage, task in tasks.items():
        assert task.timeout_seconds == pipeline.stage_timeout(stage)
        monkeypatch.delenv(f"ASOF_TIMEOUT_{stage.upper()}_S", raising=False)
        assert pipeline.stage_timeout(stage) == config.STAGE_TIMEOUT_DEFAULTS_S[stage]
    # generous: a 31-day chunk at bench scale takes 20-40 s to transform, ~3 s per day to validate
    assert config.STAGE_TIMEOUT_DEFAULTS_S["transform"] >= 600
    assert min(config.STAGE_TIMEOUT_DEFAULTS_S.values()) >= 300
    monkeypatch.setenv("ASOF_TIMEOUT_VALIDATE_S", "12.5")
    assert pipeline.stage_timeout("validate") == 12.5
    monkeypatch.setenv("ASOF_TIMEOUT_VALIDATE_S", "0")
    assert pipeline.stage_timeout("validate") is None
    monkeypatch.setenv("ASOF_TIMEOUT_VALIDATE_S", "ten")
    with pytest.raises(ValueError, match="ASOF_TIMEOUT_VALIDATE_S"):
        pipeline.stage_timeout("validate")


# ------------------------------------------------------------------------------ notifications (unit)

RECORDER = """
import json, sys
data = sys.stdin.read()
json.loads(data)
open(sys.argv[1], "w").write(data)
"""


def _recorder(tmp_path: Path) -> tuple[str, Path]:
    """A notification command that stores its stdin in a file; the path has a space in it."""
    folder = tmp_path / "notify dir"
    folder.mkdir(exist_ok=True)
    script = folder / "record.py"
    script.write_text(RECORDER)
    out = folder / "payload.json"
    return f"{sys.executable} '{script}' '{out}'", out


def test_notify_command_gets_the_summary_on_stdin_never_through_a_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command, out = _recorder(tmp_path)
    monkeypatch.setenv("ASOF_NOTIFY_COMMAND", command)
    monkeypatch.delenv("ASOF_NOTIFY_WEBHOOK", raising=False)
    monkeypatch.chdir(tmp_path)
    evil = f"$(touch {tmp_path}/pwned); `touch {tmp_path}/pwned2` | rm -rf / ; echo"
    sent = notify.notify({"event": "asof.flow-run.failed", "message": evil})
    assert sent == {"command": True}
    assert json.loads(out.read_text()) == {"event": "asof.flow-run.failed", "message": evil}
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    # a broken command is logged, never raised
    monkeypatch.setenv("ASOF_NOTIFY_COMMAND", f"{sys.executable} -c 'raise SystemExit(3)'")
    assert notify.notify({"event": "x"}) == {"command": False}
    monkeypatch.setenv("ASOF_NOTIFY_COMMAND", str(tmp_path / "no-such-program"))
    assert notify.notify({"event": "x"}) == {"command": False}


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, dict, dict]] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, dict(self.headers), json.loads(body)))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_notify_webhook_posts_json_and_logs_only_the_host(
    caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    handler = type("Hook", (_Hook,), {"received": [], "status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hooks/T0KEN-s3cret?sig=s3cret-2"
        monkeypatch.setenv("ASOF_NOTIFY_WEBHOOK", url)
        monkeypatch.delenv("ASOF_NOTIFY_COMMAND", raising=False)
        caplog.set_level(logging.DEBUG, logger="asof.notify")
        assert notify.notify({"event": "asof.flow-run.failed", "text": "hello"}) == {"webhook": True}
        path, headers, body = handler.received[0]
        assert path == "/hooks/T0KEN-s3cret?sig=s3cret-2"
        assert headers["Content-Type"] == "application/json"
        assert body == {"event": "asof.flow-run.failed", "text": "hello"}
        handler.status = 500
        assert notify.notify({"event": "x"}) == {"webhook": False}
        monkeypatch.setenv("ASOF_NOTIFY_WEBHOOK", url.replace(str(server.server_address[1]), "1"))  # refused
        assert notify.notify({"event": "x"}) == {"webhook": False}
    finally:
        server.shutdown()
    assert "127.0.0.1" in caplog.text and "HTTP 500" in caplog.text
    assert "s3cret" not in caplog.text and "T0KEN" not in caplog.text


def test_both_flows_notify_on_failure_and_crash() -> None:
    from flows import pipeline

    for fl in (pipeline.daily_pipeline, pipeline.backfill):
        assert notify.on_flow_failure in fl.on_failure_hooks
        assert notify.on_flow_crashed in fl.on_crashed_hooks


def test_crashed_hook_sends_the_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_backend
) -> None:
    """What the worker's runner hands `on_crashed` after killing/losing the flow-run process."""
    import uuid

    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Crashed

    from flows import pipeline

    command, out = _recorder(tmp_path)
    monkeypatch.setenv("ASOF_NOTIFY_COMMAND", command)
    monkeypatch.delenv("ASOF_NOTIFY_WEBHOOK", raising=False)
    run = FlowRun(
        id=uuid.uuid4(), name="brave-otter", flow_id=uuid.uuid4(), parameters={"start": "2024-01-01"}
    )
    state = Crashed(message="Process exited with status code: -9. This indicates that the process was killed")
    notify.on_flow_crashed(pipeline.backfill, run, state)
    payload = json.loads(out.read_text())
    assert payload["event"] == "asof.flow-run.crashed" and payload["state"] == "CRASHED"
    assert payload["flow"] == "backfill" and payload["flow_run_id"] == str(run.id)
    assert payload["parameters"] == {"start": "2024-01-01"} and payload["failed_dates"] == []
    assert "status code: -9" in payload["message"] and "status code: -9" in payload["text"]


def test_documented_automations_are_valid_for_this_prefect() -> None:
    """The YAML in docs/deployments.md is what `prefect automation create --from-file` accepts."""
    import yaml
    from prefect.events.schemas.automations import AutomationCore, Posture

    text = (REPO / "docs" / "deployments.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "automations:" in b)
    automations = [AutomationCore.model_validate(a) for a in yaml.safe_load(block)["automations"]]
    by_name = {a.name: a for a in automations}
    failed, stuck = by_name["asof-run-failed-or-crashed"], by_name["asof-run-stuck"]
    assert failed.trigger.posture == Posture.Reactive
    assert failed.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert stuck.trigger.posture == Posture.Proactive and stuck.trigger.within == dt.timedelta(hours=3)
    # the runs carry the tag the automations select on
    tags = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert all("asof" in d["tags"] for d in tags)


# ------------------------------------------------------------------------------ artifact server (unit)


def test_artifact_server_serves_docs_and_reports_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    (home / "docs" / "index.html").write_text("<html>docs</html>")
    (home / "reports").mkdir()
    (home / "reports" / "monitoring.html").write_text("<html>report</html>")
    (home / "lake").mkdir()
    (home / "lake" / "secret.txt").write_text("lake")
    server, base = serve.start_artifact_server(home)
    try:
        assert base.startswith("http://127.0.0.1:")
        assert serve.artifact_env(base) == {
            "ASOF_DOCS_URL": base + "docs/",
            "ASOF_REPORTS_URL": base + "reports/",
        }

        def get(path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(base + path, timeout=5) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, ""

        assert get("docs/index.html") == (200, "<html>docs</html>")
        assert get("reports/monitoring.html") == (200, "<html>report</html>")
        assert get("")[0] == 200 and "docs/index.html" in get("")[1]
        for path in ("lake/secret.txt", "docs/../lake/secret.txt", "docs/%2e%2e/lake/secret.txt", "x"):
            assert get(path)[0] == 404, path
    finally:
        server.shutdown()


# ------------------------------------------------------------------------------ timeouts (enforced)


@pytest.fixture
def one_day(home: Path) -> Path:
    from flows.upstream import simulate

    simulate.generate(home / "landing", D1, D1, simulate.parse_scale(SCALE), seed=SEED)
    return home


def _hang_in_python(*_args: Any) -> None:
    """A stage stuck in Python code (polling for something that never comes)."""
    while True:
        time.sleep(0.05)


def _hang_blocking(*_args: Any, **_kwargs: Any) -> None:
    """A stage stuck in one blocking call."""
    time.sleep(600)


@pytest.mark.slow
# method=thread: pytest-timeout's default SIGALRM handler would make Prefect fall back to its
# thread watcher for main-thread tasks; the worker and the CLI have no handler, so Prefect uses an alarm.
@pytest.mark.timeout(300, method="thread")
@pytest.mark.parametrize("stage", ["ingest", "validate"])
def test_a_stage_over_its_timeout_fails_the_run_and_notifies(
    stage: str, one_day: Path, prefect_backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ingest runs in the task runner's threads (hung in Python code: interrupted at the next
    bytecode); validate runs in the flow's main thread (hung in a blocking sleep: interrupted by
    SIGALRM). Either way the date fails within seconds, says why, and the run fails and notifies."""
    from flows import pipeline
    from flows.operations import runs

    if stage == "ingest":
        monkeypatch.setattr(pipeline, "ingest_dates", _hang_in_python)
        monkeypatch.setattr(
            pipeline, "ingest_source", pipeline.ingest_source.with_options(timeout_seconds=1, retries=0)
        )
    else:
        monkeypatch.setattr("flows.validation.stage.validate_dates", _hang_blocking)
        monkeypatch.setattr(
            pipeline, "validate_dates", pipeline.validate_dates.with_options(timeout_seconds=1, retries=0)
        )
    command, out = _recorder(tmp_path)
    monkeypatch.setenv("ASOF_NOTIFY_COMMAND", command)
    monkeypatch.delenv("ASOF_NOTIFY_WEBHOOK", raising=False)
    t0 = time.monotonic()
    state = pipeline.daily_pipeline(execution_date=D1.isoformat(), return_state=True)
    elapsed = time.monotonic() - t0
    assert elapsed < 90, f"the {stage} timeout did not stop the stage ({elapsed:.0f} s)"
    assert state.is_failed(), (state, state.message)

    records = [r for r in runs.latest(D1, D1) if r["stage"] == stage]
    assert records and all(r["status"] == "failed" for r in records), records
    assert all("TaskRunTimeoutError" in r["message"] and "timed out" in r["message"] for r in records)
    assert runs.date_status(runs.latest(D1, D1)) == {D1: "failed"}

    payload = json.loads(out.read_text())
    assert payload["event"] == "asof.flow-run.failed"
    assert payload["flow"] == "daily-pipeline" and payload["state"] == "FAILED"
    assert payload["flow_run_id"] == str(state.state_details.flow_run_id)
    assert payload["parameters"] == {"execution_date": D1.isoformat()}
    assert [d["date"] for d in payload["failed_dates"]] == [D1.isoformat()]
    assert "timed out" in payload["failed_dates"][0]["message"]
    assert payload["failed_dates"][0]["stages"][stage] == "failed"
    assert payload["message"] and payload["text"].startswith("asof daily-pipeline run ")
    assert f"first {D1} (failed: " in payload["text"] and payload["ui_url"] in payload["text"]


@pytest.mark.timeout(120)
def test_a_thread_task_blocked_in_one_call_times_out_only_when_the_call_returns(prefect_backend) -> None:
    """What Prefect 3.8 cannot do, pinned so a change is noticed: a task run in a thread (ingest is
    submitted) gets its timeout as an exception injected at its next Python bytecode, so one
    blocking call (sleep, socket read, a C extension) runs to its end first; then it is TimedOut."""
    from prefect import flow, task

    @task(timeout_seconds=0.5, retries=0)
    def blocked(seconds: float) -> str:
        time.sleep(seconds)
        return "returned"

    @flow
    def probe() -> tuple[str, str, float]:
        t0 = time.monotonic()
        fut = blocked.submit(3.0)
        fut.wait()
        return fut.state.type.value, fut.state.name, time.monotonic() - t0

    state_type, name, elapsed = probe()
    assert (state_type, name) == ("FAILED", "TimedOut")
    assert elapsed >= 3.0, elapsed  # not interrupted: the sleep ran to its end


# ------------------------------------------------------------------------------ deployments (server)


class Api:
    """The Prefect REST API of one server, called explicitly (the test process's own Prefect
    settings may point at another backend)."""

    def __init__(self, port: int) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}/api", timeout=30)

    def get(self, path: str) -> Any:
        resp = self.http.get(path)
        resp.raise_for_status()
        return resp.json()

    def post(self, path: str, body: dict) -> Any:
        resp = self.http.post(path, json=body)
        resp.raise_for_status()
        return resp.json()

    def delete(self, path: str) -> None:
        self.http.delete(path)

    def logs(self, flow_run_id: str) -> str:
        rows = self.post(
            "/logs/filter",
            {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200},
        )
        return "\n".join(f"{r['level']} {r['message']}" for r in rows)

    def wait(self, flow_run_id: str, worker_log: Path, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.get(f"/flow_runs/{flow_run_id}")
            if run["state"]["type"] in TERMINAL:
                return run
            time.sleep(1)
        raise AssertionError(
            f"flow run {flow_run_id} not finished after {timeout_s:.0f} s "
            f"(state {run['state']['type']}); worker log:\n{_tail(worker_log)}"
        )

    def artifacts(self, flow_run_id: str) -> dict[str, dict]:
        rows = self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
        return {r["key"]: r for r in rows if r.get("key")}


def _tail(path: Path, n: int = 6000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


def _check_completed(api: Api, run: dict, worker_log: Path) -> None:
    assert run["state"]["type"] == "COMPLETED", (
        f"{run['name']}: {run['state']['type']} {run['state'].get('message')}\n"
        f"flow run logs:\n{api.logs(run['id'])}\nworker log:\n{_tail(worker_log)}"
    )


def _partition_rows(home: Path, layer: str, table: str, column: str, day: dt.date) -> int:
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    data = DeltaTable(str(home / "lake" / layer / table)).to_pyarrow_table(columns=[column])
    return int(pc.sum(pc.equal(data[column], day)).as_py() or 0)


def _check_links(api: Api, flow_run_id: str, base: str, days: list[dt.date]) -> list[str]:
    """The run summary table, the report linking the validation pages of the dates the run
    processed and the monitoring report, and the Data Docs link: all served over HTTP by the
    artifact server, and all there. Returns the dates the run processed (not skipped)."""
    arts = api.artifacts(flow_run_id)
    assert {"asof-run-summary", "asof-run-report", "asof-data-docs"} <= set(arts), sorted(arts)
    table = arts["asof-run-summary"]["data"]
    table = json.loads(table) if isinstance(table, str) else table
    assert [r["date"] for r in table] == [d.isoformat() for d in days]
    assert {r["status"] for r in table} <= {"succeeded", "skipped"}, table
    ran = [r["date"] for r in table if r["status"] == "succeeded"]
    assert ran, table
    report = arts["asof-run-report"]["data"]
    assert f"({base}docs/index.html)" in arts["asof-data-docs"]["data"]
    assert f"({base}reports/monitoring.html)" in report
    for day in ran:
        assert re.search(rf"- {day} \(succeeded\): \[", report), report
    pages = [u for u in re.findall(r"\]\((http[^)]+)\)", report) if "/validations/" in u]
    assert len(pages) >= len(ran), report
    for url in [base + "docs/index.html", base + "reports/monitoring.html", *pages]:
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200 and resp.read(), url
    return ran


def _scheduled_runs(api: Api, deployment_id: str, after: dt.datetime) -> list[dict]:
    return api.post(
        "/flow_runs/filter",
        {
            "deployments": {"id": {"any_": [deployment_id]}},
            "flow_runs": {"expected_start_time": {"after_": after.isoformat()}},
            "sort": "EXPECTED_START_TIME_ASC",
            "limit": 20,
        },
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_deployments_run_on_a_real_server_with_schedule_and_artifacts(tmp_path: Path) -> None:
    """`daily` for D1 (REST API) and `backfill` D1..D3 (CLI) triggered together, as a manual
    backfill started while the scheduled run works: the pipeline lock queues one behind the other,
    and whichever goes first, every date ends succeeded once and the lake equals one `asof backfill`
    (the backfill skips D1 if the daily run did it; the daily run redoes D1 identically if not)."""
    h = harness()  # a Prefect server on 127.0.0.1 with its own PREFECT_HOME (shared with kill tests)
    landing = h.landing(D1, D3, SCALE, SEED)
    home = h.new_home("deployments", landing)
    # every minute of an hour that starts 1-2 h from now: frequent, yet never due during this test
    now = dt.datetime.now(dt.UTC)
    first = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=2)
    cron = f"* {first.hour} * * *"
    artifacts_server, base = serve.start_artifact_server(home)
    env = {
        **h.env,
        **serve.artifact_env(base),
        "ASOF_HOME": str(home),
        "ASOF_REPO": str(REPO),
        "ASOF_DAILY_CRON": cron,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    api = Api(h.port)
    worker = None
    worker_log = tmp_path / "worker.log"
    deployments: list[str] = []
    try:
        serve.deploy(env)  # `prefect work-pool create` + `prefect deploy --all`, from the repo root
        daily = api.get("/deployments/name/daily-pipeline/daily")
        backfill = api.get("/deployments/name/backfill/backfill")
        deployments = [daily["id"], backfill["id"]]
        assert daily["work_pool_name"] == backfill["work_pool_name"] == serve.POOL
        assert [s["schedule"].get("cron") for s in daily["schedules"]] == [cron]
        assert daily["schedules"][0]["schedule"]["timezone"] == "UTC"
        assert backfill["schedules"] == []
        assert backfill["parameters"] == {"force": False, "continue_on_failure": False}
        assert daily["job_variables"]["env"]["ASOF_HOME"] == str(home)

        worker = serve.start_worker(env, worker_log)
        t0 = time.monotonic()
        run = api.post(
            f"/deployments/{daily['id']}/create_flow_run", {"parameters": {"execution_date": D1.isoformat()}}
        )
        # the backfill, triggered the way the README (and `make serve`) says
        res = serve.prefect(
            env, "deployment", "run", "backfill/backfill", "-p", f"start={D1}", "-p", f"end={D3}"
        )
        found = re.search(r"UUID:\s*([0-9a-f-]{36})", res.stdout)
        assert found, res.stdout
        backfill_run_id = found.group(1)

        # The scheduler created SCHEDULED runs at the cron's times (the deployment-update scheduler
        # loop runs every 5 s), without parameters: each derives its date from its scheduled start.
        deadline = time.monotonic() + 60
        scheduled: list[dict] = []
        while time.monotonic() < deadline and len(scheduled) < 3:
            scheduled = _scheduled_runs(api, daily["id"], first - dt.timedelta(seconds=1))
            time.sleep(1)
        expected = [first + dt.timedelta(minutes=i) for i in range(3)]
        starts = [dt.datetime.fromisoformat(r["expected_start_time"]) for r in scheduled[:3]]
        assert starts == expected, (cron, starts)
        for r in scheduled:
            assert r["state"]["type"] == "SCHEDULED" and r["auto_scheduled"], r
            assert r["parameters"] == {}

        done_daily = api.wait(run["id"], worker_log, timeout_s=400)
        _check_completed(api, done_daily, worker_log)
        done_backfill = api.wait(backfill_run_id, worker_log, timeout_s=400)
        _check_completed(api, done_backfill, worker_log)
        elapsed = time.monotonic() - t0
        assert done_daily["parameters"] == {"execution_date": D1.isoformat()}
        assert done_backfill["parameters"] == {
            "start": D1.isoformat(),
            "end": D3.isoformat(),
            "force": False,
            "continue_on_failure": False,
        }

        assert date_statuses(home, D1, D3) == {D1: "succeeded", D2: "succeeded", D3: "succeeded"}
        for day in (D1, D2, D3):
            assert _partition_rows(home, "silver", "transactions", "_batch_date", day) > 0, day
            for table in ("customer_txn_features_daily", "merchant_features_daily"):
                assert _partition_rows(home, "gold", table, "as_of_date", day) > 0, (table, day)
        assert _check_links(api, run["id"], base, [D1]) == [D1.isoformat()]
        ran = _check_links(api, backfill_run_id, base, [D1, D2, D3])
        assert ran[-2:] == [D2.isoformat(), D3.isoformat()]
        print(f"daily + backfill deployment runs: {elapsed:.0f} s from trigger to both Completed")
    finally:
        serve.stop(worker)
        for dep in deployments:  # the server lives on for the kill tests: no schedule left behind
            api.delete(f"/deployments/{dep}")
        artifacts_server.shutdown()

    # Run by the worker, the two runs made the same lake as one CLI backfill of the range.
    _ref_home, expected_snap = h.reference(landing, "backfill", "--start", str(D1), "--end", str(D3))
    assert diff(expected_snap, snapshot(home)) == ""


# ------------------------------------------------------------------------------ make serve


def _read_until(proc: Any, marker: str, timeout_s: float, seen: list[str]) -> None:
    """Collect `proc`'s stdout lines into `seen` until one contains `marker` (a reader thread: a
    blocking readline must not outlive the deadline)."""

    def pump() -> None:
        for line in proc.stdout:
            seen.append(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(marker in line for line in seen):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"no {marker!r} from make serve within {timeout_s:.0f} s:\n{''.join(seen)}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_make_serve_brings_everything_up_on_loopback_and_ctrl_c_stops_it_all(tmp_path: Path) -> None:
    """What `make serve` runs (`python -m flows.orchestration.local_server`), on free ports and its
    own ASOF_HOME: the
    server answers with its UI pointed at this API (not 4200), both deployments exist, a worker
    polls the pool, the artifact server answers, every listening socket is on 127.0.0.1; Ctrl-C
    (SIGINT) ends it with status 0 and leaves no server, worker or open port behind."""
    port, docs_port = serve.free_port(), serve.free_port()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ASOF_"))}
    env.update({"ASOF_HOME": str(home), "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.orchestration.local_server",
            "--port",
            str(port),
            "--docs-port",
            str(docs_port),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen: list[str] = []
    children: list[psutil.Process] = []
    try:
        _read_until(proc, "worker started", 300, seen)
        api = Api(port)
        assert api.get("/health") is True
        ui = httpx.get(f"http://127.0.0.1:{port}/ui-settings").json()  # what the UI's JS calls
        assert ui["api_url"] == f"http://127.0.0.1:{port}/api", ui
        page = httpx.get(f"http://127.0.0.1:{port}/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert api.get("/deployments/name/daily-pipeline/daily")["work_pool_name"] == serve.POOL
        assert api.get("/deployments/name/backfill/backfill")["work_pool_name"] == serve.POOL
        deadline = time.monotonic() + 60
        workers: list[dict] = []
        while time.monotonic() < deadline and not workers:
            workers = api.post(f"/work_pools/{serve.POOL}/workers/filter", {})
            time.sleep(1)
        assert workers, "no worker polled the pool"
        with urllib.request.urlopen(f"http://127.0.0.1:{docs_port}/", timeout=10) as resp:
            assert resp.status == 200 and b"Data Docs" in resp.read()
        children = psutil.Process(proc.pid).children(recursive=True)
        listening = {
            c.laddr.ip
            for p in [psutil.Process(proc.pid), *children]
            for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening and listening <= {"127.0.0.1"}, listening

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=90) == 0, "".join(seen)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "stopping worker and server" in "".join(seen)
    _gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [(p.pid, p.name()) for p in alive]
    for p in (port, docs_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", p)) != 0, f"port {p} still open after Ctrl-C"
