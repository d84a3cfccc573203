"""Prometheus alerting rules generated from monitoring.toml, and their promtool unit tests.

    python -m flows.monitoring.alert_rules            # rewrite monitoring/alerts.yml
    python -m flows.monitoring.alert_rules --check    # exit 1 if it is not what monitoring.toml gives

The thresholds live in monitoring.toml only; the rules file is derived from it (and checked in
review and by tests/test_prometheus_rules.py), so Prometheus and `flows.monitoring.metrics` cannot disagree
about a bound.

Per rule of monitoring.toml, one alert on the batch gauge `asof_<metric>` (flows/monitoring/
prometheus.py). A gauge carries `rule_scope`, the rule that judges it as `flows.monitoring.metrics` decided
(`""` the metric's rule, `<key>` a scope override, `none` not judged), so each alert matches one
`rule_scope` and there is no second implementation of the scope precedence here. All alerts of a
metric share one name (`Asof<Metric>`): Alertmanager routes by metric, the labels tell the scope.

The serving objective `serving_latency_p99_ms` also becomes a live alert on `asof serve`'s
histogram: the P99 over `LATENCY_WINDOW` per endpoint and feature service, held for `LATENCY_FOR`.

`unit_tests()` writes, for every alert, a promtool test that it fires on a breaching value (just
past the bound) and stays quiet at the bound itself and for a value no rule judges.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from flows.config import REPO_ROOT
from flows.monitoring import config, daily_latency, prometheus, serving

RULES_FILE = REPO_ROOT / "monitoring" / "alerts.yml"
LATENCY_METRIC = daily_latency.P99
LATENCY_WINDOW = "5m"
LATENCY_FOR = "5m"
HEADER = (
    "# Generated from monitoring.toml by `python -m flows.monitoring.alert_rules`: do not edit.\n"
    "# Thresholds change in monitoring.toml; docs/monitoring.md explains every metric.\n"
)


def alert_name(metric: str) -> str:
    return "Asof" + "".join(part.capitalize() for part in metric.split("_"))


def bound_expr(selector: str, rule: config.Rule) -> str:
    """Strict comparisons, as Rule.check: a value equal to the bound is not a breach."""
    parts = []
    if rule.min is not None:
        parts.append(f"{selector} < {rule.min:g}")
    if rule.max is not None:
        parts.append(f"{selector} > {rule.max:g}")
    return " or ".join(parts)


def judged(cfg: config.MonitorConfig) -> list[tuple[str, str, config.Rule]]:
    """(metric, rule_scope, rule) of every enabled rule on a batch gauge."""
    out = []
    for metric, rule in sorted(cfg.rules.items()):
        if metric in prometheus.LIVE_METRICS:
            continue
        if rule.enabled:
            out.append((metric, "", rule))
        for (m, key), override in sorted(cfg.scope_rules.items()):
            if m == metric and override.enabled:
                out.append((metric, key, override))
    return out


def latency_expr(quantile: float = 0.99) -> str:
    return (
        f"histogram_quantile({quantile:g}, sum by (le, endpoint, feature_service) "
        f"(rate({serving.LATENCY_METRIC}_bucket[{LATENCY_WINDOW}])))"
    )


def latency_rule(cfg: config.MonitorConfig) -> config.Rule | None:
    """The serving objective in seconds, or None when not configured. Scope overrides cannot be
    expressed on the live histogram's labels without re-implementing rule_for: refused."""
    rule = cfg.rules.get(LATENCY_METRIC)
    if any(m == LATENCY_METRIC for m, _ in cfg.scope_rules):
        raise config.MonitorConfigError(
            f"rules.{LATENCY_METRIC}.scopes: per-scope serving objectives are not supported "
            "by the Prometheus alert (one objective for every endpoint and feature service)"
        )
    if rule is None or not rule.enabled or rule.max is None or rule.min is not None:
        return None
    return config.Rule(max=rule.max / 1000, severity=rule.severity)


def batch_annotations(metric: str, key: str, rule: config.Rule, scope: str, value: str) -> dict[str, str]:
    """The alert's text; with template variables in the rules file, with values in the tests."""
    where = f" ({key} override)" if key else ""
    return {
        "summary": f"asof {metric} {scope} = {value} (breach if {rule.condition}){where}",
        "description": "Newest execution date of the last pipeline run (asof_execution_date_seconds); "
        "every date: `asof monitor`, docs/monitoring.md.",
    }


def latency_annotations(p99: str, service: str, endpoint: str, objective: float) -> dict[str, str]:
    return {
        "summary": f"asof serve P99 {p99} s over {LATENCY_WINDOW} for {service} ({endpoint}), "
        f"objective {objective:g} s",
        "description": f"Request latency of `asof serve` (histogram {serving.LATENCY_METRIC}); "
        "daily P50/P99: `asof monitor`.",
    }


def rules(cfg: config.MonitorConfig) -> dict[str, Any]:
    batch = []
    for metric, key, rule in judged(cfg):
        selector = f'{prometheus.metric_name(metric)}{{rule_scope="{key}"}}'
        batch.append(
            {
                "alert": alert_name(metric),
                "expr": bound_expr(selector, rule),
                "labels": {"severity": rule.severity, "metric": metric},
                "annotations": batch_annotations(metric, key, rule, "{{ $labels.scope }}", "{{ $value }}"),
            }
        )
    groups = [{"name": "asof-pipeline", "rules": batch}]
    latency = latency_rule(cfg)
    if latency is not None:
        groups.append(
            {
                "name": "asof-serving",
                "rules": [
                    {
                        "alert": alert_name(LATENCY_METRIC),
                        "expr": bound_expr(latency_expr(), latency),
                        "for": LATENCY_FOR,
                        "labels": {"severity": latency.severity, "metric": LATENCY_METRIC},
                        "annotations": latency_annotations(
                            '{{ $value | printf "%.3f" }}',
                            "{{ $labels.feature_service }}",
                            "{{ $labels.endpoint }}",
                            latency.max,
                        ),
                    }
                ],
            }
        )
    return {"groups": groups}


def render(cfg: config.MonitorConfig) -> str:
    return HEADER + yaml.safe_dump(rules(cfg), sort_keys=False, width=200)


# ------------------------------------------------------------------------------ promtool tests


def fmt(value: float) -> str:
    """A number as both promtool's series notation and Prometheus's `{{ $value }}` print it."""
    return f"{value:g}"


def past(rule: config.Rule, side: str) -> str:
    """A value just past one bound of the rule, printed the same way by Python and Go."""
    if side == "min":
        assert rule.min is not None
        return fmt(rule.min / 2 if rule.min > 0 else rule.min - 1)
    assert rule.max is not None
    return fmt(rule.max + 1 if rule.max >= 1 else rule.max + 0.1)


def batch_tests(cfg: config.MonitorConfig) -> list[dict[str, Any]]:
    tests = []
    by_metric: dict[str, list[tuple[str, config.Rule]]] = {}
    for metric, key, rule in judged(cfg):
        by_metric.setdefault(metric, []).append((key, rule))
    for metric, judged_by in by_metric.items():
        name = prometheus.metric_name(metric)
        series, expected = [], []
        for key, rule in judged_by:
            sides = [s for s in ("min", "max") if getattr(rule, s) is not None]
            for side in sides:
                scope = f"breach_{side}_{key or 'rule'}"
                value = past(rule, side)
                series.append({"series": f'{name}{{scope="{scope}",rule_scope="{key}"}}', "values": value})
                labels = {"severity": rule.severity, "metric": metric, "scope": scope}
                if key:
                    labels["rule_scope"] = key
                expected.append(
                    {
                        "exp_labels": labels,
                        "exp_annotations": batch_annotations(metric, key, rule, scope, value),
                    }
                )
                tag = f"{side}_{key or 'rule'}"
                at_bound = fmt(getattr(rule, side))
                series.append(
                    {"series": f'{name}{{scope="at_{tag}",rule_scope="{key}"}}', "values": at_bound}
                )
                # the same breaching value, but monitoring judged it by no rule (e.g. a backfill's lag)
                series.append(
                    {"series": f'{name}{{scope="unjudged_{tag}",rule_scope="none"}}', "values": value}
                )
        tests.append(
            {
                "name": f"{alert_name(metric)}: fires past each bound, quiet at it and when unjudged",
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": alert_name(metric), "exp_alerts": expected}
                ],
            }
        )
    return tests


def latency_tests(cfg: config.MonitorConfig) -> list[dict[str, Any]]:
    """One slow service (every request in the bucket just above the objective) and one fast
    (every request well below): after LATENCY_FOR only the slow one fires."""
    rule = latency_rule(cfg)
    if rule is None:
        return []
    assert rule.max is not None
    buckets = daily_latency.BUCKETS
    above = next(b for b in buckets if b > rule.max)
    below = buckets[0]
    per_minute = 60
    series = []
    for service, slow in (("slow_service", True), ("fast_service", False)):
        for le in (*buckets, float("inf")):
            hit = le >= (above if slow else below)
            values = f"0+{per_minute}x20" if hit else "0x20"
            le_text = "+Inf" if le == float("inf") else fmt(le)
            series.append(
                {
                    "series": f'{serving.LATENCY_METRIC}_bucket{{endpoint="get-online-features",'
                    f'feature_service="{service}",le="{le_text}"}}',
                    "values": values,
                }
            )
    lower = max(b for b in buckets if b < above)
    p99 = lower + (above - lower) * 0.99
    return [
        {
            "name": f"{alert_name(LATENCY_METRIC)}: a slow service fires, a fast one does not",
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": alert_name(LATENCY_METRIC), "exp_alerts": []},
                {
                    "eval_time": "15m",
                    "alertname": alert_name(LATENCY_METRIC),
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": rule.severity,
                                "metric": LATENCY_METRIC,
                                "endpoint": "get-online-features",
                                "feature_service": "slow_service",
                            },
                            "exp_annotations": latency_annotations(
                                f"{p99:.3f}", "slow_service", "get-online-features", rule.max
                            ),
                        }
                    ],
                },
            ],
        }
    ]


def unit_tests(cfg: config.MonitorConfig, rules_file: Path) -> dict[str, Any]:
    return {
        "rule_files": [str(rules_file)],
        "evaluation_interval": "1m",
        "tests": batch_tests(cfg) + latency_tests(cfg),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the rules file is out of date")
    parser.add_argument("--out", type=Path, default=RULES_FILE)
    args = parser.parse_args(argv)
    text = render(config.load_config())
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run python -m flows.monitoring.alert_rules", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
