"""Failure notifications: a flow run that ends Failed or Crashed tells someone.

Both pipeline flows carry `on_failure` / `on_crashed` hooks that call `notify()` with a JSON summary
of the run. Where the summary goes is configured by environment only (the worker's, or the
deployment's `job_variables.env`), so the same code pages a laptop user or a team channel:

    ASOF_NOTIFY_COMMAND    a command line, split with shlex and run *without* a shell; the summary
                           arrives as JSON on its stdin. Values from the run (messages, parameters)
                           never reach an argv or a shell, so nothing in them can be interpreted.
                           e.g. `mail -s "asof failed" oncall@example.com` or
                           `/usr/local/bin/page-oncall --team data`
    ASOF_NOTIFY_WEBHOOK    an http(s) URL; the summary is POSTed as JSON. It carries a `text` field
                           so Slack/Mattermost/Teams-style incoming webhooks show it as is. The URL
                           often embeds a token: only its host is ever logged.
    ASOF_NOTIFY_TIMEOUT_S  per channel, default 30; a slow channel must not hold the run's process.

Neither set: the hook does nothing (the run's state in the Prefect UI is the notification). A
notification that fails is logged and never changes the run's outcome. The hooks run in the flow
run's process; a process killed outright (SIGKILL, OOM, machine lost) cannot run them, which is
what a server-side Prefect Automation covers (docs/deployments.md).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shlex
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from flows.config import ConfigError, Settings, settings

_log = logging.getLogger("asof.notify")

MAX_DATES = 50  # a 2-year backfill that fails early must not produce a 700-entry message


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _dates_of(state: Any) -> list[dict]:
    """Per-date outcomes the flow produced, when the state still holds them (a monitoring failure
    keeps the flow's result in `.data`); an empty list otherwise. Never raises."""
    try:
        data = state.result(raise_on_failure=False)
    except Exception:
        return []
    data = getattr(data, "data", data)  # MonitoringFailure(..., data=[...])
    if not isinstance(data, list):
        return []
    out = []
    for r in data:
        if isinstance(r, dict) and r.get("status") not in ("succeeded", "skipped"):
            out.append(
                {
                    "date": r.get("day"),
                    "status": r.get("status"),
                    "stages": r.get("stages", {}),
                    "message": str(r.get("message", ""))[:500],
                }
            )
    return out


def _ui_url(flow_run_id: str) -> str | None:
    try:
        from prefect.utilities.urls import url_for

        return url_for("flow-run", obj_id=flow_run_id)
    except Exception:
        return None


def summary(flow: Any, flow_run: Any, state: Any) -> dict[str, Any]:
    """What a notification says: enough to triage without opening anything, and links to open."""
    state_type = getattr(getattr(state, "type", None), "value", str(getattr(state, "type", "")))
    flow_run_id = str(getattr(flow_run, "id", ""))
    start = getattr(flow_run, "expected_start_time", None)
    dates = _dates_of(state)
    payload: dict[str, Any] = {
        "event": f"asof.flow-run.{state_type.lower()}",
        "flow": getattr(flow, "name", None),
        "flow_run_id": flow_run_id,
        "flow_run_name": getattr(flow_run, "name", None),
        "deployment_id": str(flow_run.deployment_id) if getattr(flow_run, "deployment_id", None) else None,
        "state": state_type,
        "state_name": getattr(state, "name", None),
        "message": str(getattr(state, "message", "") or "")[:2000],
        "parameters": _jsonable(getattr(flow_run, "parameters", {}) or {}),
        "scheduled_start": start.isoformat() if isinstance(start, dt.datetime) else None,
        "failed_dates": dates[:MAX_DATES],
        "failed_dates_total": len(dates),
        "ui_url": _ui_url(flow_run_id) if flow_run_id else None,
        "asof_home": str(settings().home),
        "host": socket.gethostname(),
        "sent_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    # one readable line (chat webhooks show `text`): the state, the date that broke and why, a link
    first = (
        f" | {len(dates)} date(s) not succeeded, first {dates[0]['date']} "
        f"({dates[0]['status']}: {dates[0]['message'][:200]})"
        if dates
        else ""
    )
    payload["text"] = (
        f"asof {payload['flow']} run {payload['flow_run_name']} {payload['state_name'] or state_type}: "
        f"{payload['message'][:300]}{first}" + (f" {payload['ui_url']}" if payload["ui_url"] else "")
    )
    return payload


def _timeout() -> float:
    try:
        return max(1.0, settings().notify_timeout_s)
    except ConfigError:  # a notification never raises: a malformed timeout is the default
        return Settings.notify_timeout_s.default


def webhook_host(url: str) -> str:
    """The part of a webhook URL that is safe to log (tokens live in paths and query strings)."""
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "<invalid url>"


def _run_command(command: str, body: bytes, log: logging.Logger | logging.LoggerAdapter) -> bool:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        log.warning("%s is not a valid command line: %s", Settings.notify_command.name, exc)
        return False
    if not argv:
        return False
    name = os.path.basename(argv[0])  # its arguments may hold credentials: never logged
    try:
        res = subprocess.run(argv, input=body, capture_output=True, timeout=_timeout(), check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("notification command %s could not run: %s", name, type(exc).__name__)
        return False
    if res.returncode != 0:
        log.warning("notification command %s exited with status %s", name, res.returncode)
        return False
    log.info("notification sent through command %s", name)
    return True


def _post(url: str, body: bytes, log: logging.Logger | logging.LoggerAdapter) -> bool:
    host = webhook_host(url)
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        log.warning("%s must be an http(s) URL (host %s); not sent", Settings.notify_webhook.name, host)
        return False
    headers = {"Content-Type": "application/json", "User-Agent": "asof"}
    try:
        req = urllib.request.Request(url, data=body, method="POST", headers=headers)
        with urllib.request.urlopen(req, timeout=_timeout()) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        log.warning("notification webhook on %s answered HTTP %s", host, exc.code)
        return False
    except Exception as exc:  # refused, timeout, TLS, a malformed URL or reply: never the run's problem
        # the exception text can repeat the URL: only its type is logged
        log.warning("notification webhook on %s failed: %s", host, type(exc).__name__)
        return False
    log.info("notification posted to webhook on %s (HTTP %s)", host, status)
    return True


def notify(
    payload: dict[str, Any], logger: logging.Logger | logging.LoggerAdapter | None = None
) -> dict[str, bool]:
    """Send `payload` to every configured channel; returns {channel: delivered}. Never raises."""
    log = logger or _log
    body = json.dumps(payload, default=str, sort_keys=True).encode()
    sent: dict[str, bool] = {}
    s = settings()
    if s.notify_command:
        sent["command"] = _run_command(s.notify_command, body, log)
    url = s.notify_webhook
    if url:
        sent["webhook"] = _post(url, body, log)
    return sent


def _run_logger(flow: Any, flow_run: Any) -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger (its lines show in the run's Logs tab); the module logger outside
    Prefect. Hooks for a crashed run may run in the worker, with no run context."""
    try:
        from prefect.logging.loggers import flow_run_logger

        return flow_run_logger(flow_run, flow)
    except Exception:
        return _log


def _hook(flow: Any, flow_run: Any, state: Any) -> None:
    s = settings()
    if not (s.notify_command or s.notify_webhook):
        return
    log = _run_logger(flow, flow_run)
    try:
        payload = summary(flow, flow_run, state)
    except Exception as exc:  # a notification must never be what breaks
        log.warning("could not build the failure summary: %s", exc)
        payload = {"event": "asof.flow-run.failed", "flow_run_id": str(getattr(flow_run, "id", ""))}
    notify(payload, log)


def on_flow_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_failure` hook: the run ended Failed (a stage, or monitoring, failed it)."""
    _hook(flow, flow_run, state)


def on_flow_crashed(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_crashed` hook: the run's process was interrupted (signal, infrastructure)."""
    _hook(flow, flow_run, state)
