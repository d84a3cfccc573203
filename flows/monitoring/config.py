"""monitoring.toml: the thresholds of every metric, their severities, and what is monitored.

Read once per call of `load_config` (`ASOF_MONITORING_CONFIG` points elsewhere than the repository's
file). A rule names a metric and optionally a scope (`source`, `view.feature`, `source:rule`); the most
specific rule that matches a scope applies (`MonitorConfig.rule_for`).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.config import settings

SEVERITIES = ("warning", "failure")
KNOWN_METRICS = (
    "date_status",
    "rows_landed",
    "batch_delivered",
    "rows_silver",
    "rows_quarantined",
    "validation_pass_rate",
    "quarantined_rows",
    "volume_ratio",
    "ingest_lag_hours",
    "freshness_hours",
    "coverage",
    "psi",
    "online_mismatch_rate",
    "monitor_error",
    "serving_requests",
    "serving_latency_p50_ms",
    "serving_latency_p99_ms",
    "logged_mismatch_rate",
)
ALL_SCOPE = "*"
FRESHNESS_LOOKBACK_DAYS = 400


class MonitorConfigError(ValueError):
    pass


# ------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class Rule:
    """Breach when value < min or value > max."""

    min: float | None = None
    max: float | None = None
    severity: str = "warning"
    enabled: bool = True

    @property
    def condition(self) -> str:
        if self.min is not None and self.max is not None:
            return f"outside [{self.min:g}, {self.max:g}]"
        if self.min is not None:
            return f"< {self.min:g}"
        return f"> {self.max:g}"

    def check(self, value: float) -> tuple[bool, float | None]:
        """(breached, the bound that applies: the one breached, else the lower one)."""
        if self.min is not None and value < self.min:
            return True, self.min
        if self.max is not None and value > self.max:
            return True, self.max
        return False, self.min if self.min is not None else self.max


@dataclass(frozen=True)
class ViewConfig:
    name: str
    entity: str
    cadence: str = "daily"
    psi: bool = True
    warmup_days: int = 0


@dataclass(frozen=True)
class MonitorConfig:
    rules: dict[str, Rule]
    scope_rules: dict[tuple[str, str], Rule]
    views: dict[str, ViewConfig]
    services: dict[str, list[str]]
    psi_reference_days: int = 28
    psi_min_reference_days: int = 7
    psi_bins: int = 10
    psi_epsilon: float = 1e-4
    psi_min_rows: int = 50
    psi_max_reference_rows: int = 200_000
    volume_sources: tuple[str, ...] = ("transactions",)
    volume_trailing_days: int = 7
    volume_min_history: int = 3
    lag_live_window_hours: float = 48.0
    online_enabled: bool = True
    online_sample_size: int = 50
    online_check: str = "last"
    online_rel_tol: float = 1e-6
    report_default_days: int = 30
    flow_report_days: int = 60
    source: str = ""

    def rule_for(self, metric: str, scope: str) -> Rule | None:
        """The scope's own rule if configured (exact scope, then each part of `view.feature` /
        `source:rule`), else the metric's rule."""
        candidates = [scope, *[p for p in re.split(r"[.:]", scope) if p and p != scope]]
        for cand in candidates:
            rule = self.scope_rules.get((metric, cand))
            if rule is not None:
                return rule if rule.enabled else None
        rule = self.rules.get(metric)
        return rule if rule is not None and rule.enabled else None

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "") -> MonitorConfig:
        def rule(d: dict, where: str, base: Rule | None = None) -> Rule:
            unknown = set(d) - {"min", "max", "severity", "enabled", "scopes", "description"}
            if unknown:
                raise MonitorConfigError(f"{where}: unknown keys {sorted(unknown)}")
            lo = d.get("min", base.min if base and "max" not in d else None)
            hi = d.get("max", base.max if base and "min" not in d else None)
            sev = d.get("severity", base.severity if base else "warning")
            if sev not in SEVERITIES:
                raise MonitorConfigError(f"{where}: severity must be one of {SEVERITIES}, got {sev!r}")
            enabled = bool(d.get("enabled", True))
            if enabled and lo is None and hi is None:
                raise MonitorConfigError(f"{where}: a rule needs min, max or both")
            for name, v in (("min", lo), ("max", hi)):
                if v is not None and not isinstance(v, int | float):
                    raise MonitorConfigError(f"{where}: {name} must be a number, got {v!r}")
            return Rule(
                min=None if lo is None else float(lo),
                max=None if hi is None else float(hi),
                severity=sev,
                enabled=enabled,
            )

        rules: dict[str, Rule] = {}
        scope_rules: dict[tuple[str, str], Rule] = {}
        for metric, d in (raw.get("rules") or {}).items():
            if metric not in KNOWN_METRICS:
                raise MonitorConfigError(
                    f"rules.{metric}: unknown metric (known: {', '.join(KNOWN_METRICS)})"
                )
            base = rule(d, f"rules.{metric}")
            rules[metric] = base
            for scope, sd in (d.get("scopes") or {}).items():
                scope_rules[(metric, scope)] = rule(sd, f"rules.{metric}.scopes.{scope}", base)
        views: dict[str, ViewConfig] = {}
        for name, d in (raw.get("views") or {}).items():
            if "entity" not in d:
                raise MonitorConfigError(f"views.{name}: entity (the join key column) is required")
            views[name] = ViewConfig(
                name=name,
                entity=d["entity"],
                cadence=d.get("cadence", "daily"),
                psi=bool(d.get("psi", True)),
                warmup_days=int(d.get("warmup_days", 0)),
            )
        services = {k: list(v) for k, v in (raw.get("services") or {}).items()}
        for svc, vs in services.items():
            missing = [v for v in vs if v not in views]
            if missing:
                raise MonitorConfigError(f"services.{svc}: views {missing} are not under [views]")
        psi = raw.get("psi") or {}
        vol = raw.get("volume") or {}
        lag = raw.get("lag") or {}
        onl = raw.get("online") or {}
        rep = raw.get("report") or {}
        if onl.get("check", "last") not in ("last", "every"):
            raise MonitorConfigError("online.check must be 'last' or 'every'")
        cfg = cls(
            rules=rules,
            scope_rules=scope_rules,
            views=views,
            services=services,
            psi_reference_days=int(psi.get("reference_days", 28)),
            psi_min_reference_days=int(psi.get("min_reference_days", 7)),
            psi_bins=int(psi.get("bins", 10)),
            psi_epsilon=float(psi.get("epsilon", 1e-4)),
            psi_min_rows=int(psi.get("min_rows", 50)),
            psi_max_reference_rows=int(psi.get("max_reference_rows", 200_000)),
            volume_sources=tuple(vol.get("sources", ("transactions",))),
            volume_trailing_days=int(vol.get("trailing_days", 7)),
            volume_min_history=int(vol.get("min_history", 3)),
            lag_live_window_hours=float(lag.get("live_window_hours", 48)),
            online_enabled=bool(onl.get("enabled", True)),
            online_sample_size=int(onl.get("sample_size", 50)),
            online_check=onl.get("check", "last"),
            online_rel_tol=float(onl.get("rel_tol", 1e-6)),
            report_default_days=int(rep.get("default_days", 30)),
            flow_report_days=int(rep.get("flow_report_days", 60)),
            source=source,
        )
        if cfg.psi_bins < 2 or cfg.psi_reference_days < 1 or not 0 < cfg.psi_epsilon < 0.1:
            raise MonitorConfigError("psi: bins >= 2, reference_days >= 1 and 0 < epsilon < 0.1 are required")
        return cfg


def config_path() -> Path:
    return settings().monitoring_config


def raw_config(path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise MonitorConfigError(f"monitoring configuration {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise MonitorConfigError(f"{path}: {exc}") from None


def load_config(path: Path | None = None) -> MonitorConfig:
    path = path or config_path()
    return MonitorConfig.from_dict(raw_config(path), source=str(path))
