"""The monitoring report: one self-contained HTML page (inline CSS and SVG, no script, no network).

    write_report(path, start, end) -> path       reads `ops/metrics` and `ops/runs`
    render(rows, start, end, statuses) -> str    pure: metric rows (as `storage.read_metrics`) -> HTML
    write_flow_reports(run_days, n) -> FlowReports   what a flow run writes (below)

What a flow run writes. The served report (`reports/monitoring.html`) covers the dates present in
the lake's metrics, the newest `n` of them (`flow_report_days`), and names the older ones with the
command that reports them: it follows the lake, never the last run's range, so a small backfill of
old dates does not shrink it to the weeks around those dates. The run's own report
(`reports/runs/<first>_<last>.html`) shows the run's dates outlined in the `n` days around them, so
a run's artifact links to its dates in context even after later runs moved the served report on.

Charts (x = execution date): rows per source (silver vs quarantined), validation pass rate, volume
vs trailing median, ingestion lag, feature freshness, feature coverage, PSI per feature (heatmap and
lines), quarantined rows per rule, online/offline mismatches. Dates with a breach are shaded in every
chart (red: failure, amber: warning) and the breaching points are ringed; dates without metrics are
hatched grey. Every point and cell has a tooltip (SVG <title>) with its value and threshold.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.dates import date_range
from flows.monitoring import storage
from flows.monitoring.breaches import fmt_value
from flows.operations import runs

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
    "#d62728",
)
SEV_FILL = {"failure": "#fbd5d5", "warning": "#fdecc8", "missing": "#e9e9e9"}
W, PAD_L, PAD_R, PAD_T, PAD_B = 960, 64, 210, 16, 44

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #ddd}
p.note{color:#555;font-size:13px;margin:2px 0 8px}
.summary{display:flex;gap:18px;flex-wrap:wrap;margin:12px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:20px}.card.failure b{color:#c0392b}.card.warning b{color:#b9770e}
svg.chart{display:block;width:100%;height:auto;margin:4px 0 10px;background:#fff}
svg text{font-size:11px;fill:#333}svg .axis{stroke:#999;stroke-width:1}svg .grid{stroke:#eee}
svg .series{fill:none;stroke-width:2}svg .threshold{stroke:#c0392b;stroke-dasharray:6 4;stroke-width:1.5}
svg .breach-point{fill:none;stroke:#c0392b;stroke-width:2}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f5f5f5}tr.failure td{background:#fdecea}tr.warning td{background:#fef5e4}
.legend-swatch{display:inline-block;width:12px;height:12px;margin:0 4px -2px 10px;border-radius:2px}
"""


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = (lo - pad if lo != 0 else 0.0), hi + pad
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 12))
    return ticks


class _Frame:
    """x/y scales and the common furniture (breach shading, axes, day labels) of a time chart."""

    def __init__(self, days: Sequence[dt.date], height: int, y_lo: float, y_hi: float, pad_l: int = PAD_L):
        self.days = list(days)
        self.h = height
        self.pad_l = pad_l
        self.plot_w = W - pad_l - PAD_R
        self.plot_h = height - PAD_T - PAD_B
        self.step = self.plot_w / max(len(self.days), 1)
        self.ticks = _nice_ticks(y_lo, y_hi)
        self.y_lo, self.y_hi = min(self.ticks[0], y_lo), max(self.ticks[-1], y_hi)

    def x(self, i: int) -> float:
        return self.pad_l + (i + 0.5) * self.step

    def y(self, v: float) -> float:
        span = (self.y_hi - self.y_lo) or 1.0
        v = min(max(v, self.y_lo), self.y_hi)
        return PAD_T + self.plot_h * (1 - (v - self.y_lo) / span)

    def background(self, day_sev: dict[dt.date, str], y_fmt: Callable[[float], str]) -> list[str]:
        out = []
        for i, d in enumerate(self.days):
            sev = day_sev.get(d)
            if sev:
                out.append(
                    f'<rect class="breach-day {sev}" x="{self.pad_l + i * self.step:.1f}" y="{PAD_T}" '
                    f'width="{self.step:.1f}" height="{self.plot_h}" fill="{SEV_FILL[sev]}">'
                    f"<title>{d.isoformat()}: {'no metrics' if sev == 'missing' else sev}</title></rect>"
                )
        for t in self.ticks:
            y = self.y(t)
            out.append(
                f'<line class="grid" x1="{self.pad_l}" x2="{self.pad_l + self.plot_w}" '
                f'y1="{y:.1f}" y2="{y:.1f}"/>'
            )
            out.append(
                f'<text x="{self.pad_l - 6}" y="{y + 4:.1f}" text-anchor="end">{_esc(y_fmt(t))}</text>'
            )
        base = PAD_T + self.plot_h
        out.append(
            f'<line class="axis" x1="{self.pad_l}" x2="{self.pad_l + self.plot_w}" y1="{base}" y2="{base}"/>'
        )
        out.append(f'<line class="axis" x1="{self.pad_l}" x2="{self.pad_l}" y1="{PAD_T}" y2="{base}"/>')
        every = max(1, math.ceil(len(self.days) / 14), math.ceil(44 / self.step))
        for i, d in enumerate(self.days):
            if i % every == 0 or i == len(self.days) - 1 and len(self.days) < 30:
                out.append(
                    f'<text x="{self.x(i):.1f}" y="{base + 16}" text-anchor="middle">'
                    f"{d.strftime('%m-%d')}</text>"
                )
        return out


def _legend(names: Sequence[str], colors: Sequence[str], dashed: Sequence[str] = ()) -> list[str]:
    out = []
    x = W - PAD_R + 14
    for j, (name, color) in enumerate(zip(names, colors, strict=True)):
        y = PAD_T + 8 + j * 16
        out.append(f'<rect x="{x}" y="{y - 8}" width="12" height="10" fill="{color}"/>')
        out.append(f'<text x="{x + 17}" y="{y + 1}">{_esc(name[:30])}</text>')
    for k, name in enumerate(dashed):
        y = PAD_T + 8 + (len(names) + k) * 16
        out.append(f'<line class="threshold" x1="{x}" x2="{x + 12}" y1="{y - 3}" y2="{y - 3}"/>')
        out.append(f'<text x="{x + 17}" y="{y + 1}">{_esc(name[:30])}</text>')
    return out


def _svg(cid: str, height: int, body: list[str], label: str) -> str:
    return (
        f'<svg class="chart" data-chart="{_esc(cid)}" viewBox="0 0 {W} {height}" '
        f'preserveAspectRatio="xMinYMin meet" role="img" aria-label="{_esc(label)}" '
        f'xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>"
    )


def line_chart(
    cid: str,
    days: Sequence[dt.date],
    series: Sequence[tuple[str, Sequence[float | None], Sequence[bool]]],
    day_sev: dict[dt.date, str],
    thresholds: Sequence[tuple[float, str]] = (),
    y_range: tuple[float | None, float | None] = (None, None),
    y_fmt: Callable[[float], str] = fmt_value,
    height: int = 250,
    label: str = "",
) -> str:
    """Lines over days: series = (name, value per day (None = gap), breached per day)."""
    values = [v for _, vals, _ in series for v in vals if v is not None and math.isfinite(v)]
    values += [t for t, _ in thresholds]
    lo = y_range[0] if y_range[0] is not None else (min(values) if values else 0.0)
    hi = y_range[1] if y_range[1] is not None else (max(values) if values else 1.0)
    if y_range[0] is None and lo > 0 and lo < (hi - lo):
        lo = 0.0
    f = _Frame(days, height, lo, hi)
    body = f.background(day_sev, y_fmt)
    for t, name in thresholds:
        y = f.y(t)
        body.append(
            f'<line class="threshold" x1="{f.pad_l}" x2="{f.pad_l + f.plot_w}" y1="{y:.1f}" y2="{y:.1f}">'
            f"<title>{_esc(name)}: {_esc(fmt_value(t))}</title></line>"
        )
    colors = [PALETTE[j % len(PALETTE)] for j in range(len(series))]
    for (name, vals, breached), color in zip(series, colors, strict=True):
        d_parts: list[str] = []
        pen_down = False
        points = []
        for i, v in enumerate(vals):
            if v is None or not math.isfinite(v):
                pen_down = False
                continue
            x, y = f.x(i), f.y(v)
            d_parts.append(f"{'L' if pen_down else 'M'}{x:.1f},{y:.1f}")
            pen_down = True
            tip = f"{name} {days[i].isoformat()}: {fmt_value(v)}" + (" (breach)" if breached[i] else "")
            points.append(
                f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="2.6" fill="{color}">'
                f"<title>{_esc(tip)}</title></circle>"
            )
            if breached[i]:
                points.append(
                    f'<circle class="breach-point" cx="{x:.1f}" cy="{y:.1f}" r="6">'
                    f"<title>{_esc(tip)}</title></circle>"
                )
        if d_parts:
            body.append(
                f'<path class="series" data-series="{_esc(name)}" stroke="{color}" d="{" ".join(d_parts)}"/>'
            )
        body += points
    if not any(v is not None for _, vals, _ in series for v in vals):
        body.append(
            f'<text class="empty" x="{f.pad_l + f.plot_w / 2:.1f}" y="{PAD_T + f.plot_h / 2:.1f}" '
            'text-anchor="middle">no values in this range</text>'
        )
    body += _legend([s[0] for s in series], colors, [n for _, n in thresholds][:3])
    return _svg(cid, height, body, label or cid)


def bar_chart(
    cid: str,
    days: Sequence[dt.date],
    stacks: Sequence[tuple[str, Sequence[float | None], str]],
    day_sev: dict[dt.date, str],
    height: int = 170,
    label: str = "",
) -> str:
    """Stacked bars per day: stacks = (name, value per day, colour)."""
    totals = [sum((vals[i] or 0) for _, vals, _ in stacks) for i in range(len(days))]
    f = _Frame(days, height, 0.0, max(totals, default=0.0) or 1.0)
    body = f.background(day_sev, fmt_value)
    bar_w = max(1.0, f.step * 0.7)
    for i, d in enumerate(days):
        base = 0.0
        for name, vals, color in stacks:
            v = vals[i]
            if not v:
                continue
            y_top, y_bot = f.y(base + v), f.y(base)
            body.append(
                f'<rect class="bar" x="{f.x(i) - bar_w / 2:.1f}" y="{y_top:.1f}" width="{bar_w:.1f}" '
                f'height="{max(y_bot - y_top, 0.5):.1f}" fill="{color}">'
                f"<title>{_esc(f'{d.isoformat()} {name}: {fmt_value(v)}')}</title></rect>"
            )
            base += v
    body += _legend([s[0] for s in stacks], [s[2] for s in stacks])
    return _svg(cid, height, body, label or cid)


def _psi_color(v: float | None, threshold: float) -> str:
    if v is None:
        return "#f4f4f4"
    if v > threshold:
        return "#d62728"
    if v > threshold / 2:
        return "#f5b041"
    return "#a9dfbf" if v > threshold / 10 else "#d5f5e3"


def heatmap(
    cid: str,
    days: Sequence[dt.date],
    rows: Sequence[tuple[str, Sequence[float | None], Sequence[bool]]],
    color: Callable[[float | None], str],
    day_sev: dict[dt.date, str],
    label: str = "",
    legend: Sequence[tuple[str, str]] = (),
    tip: Callable[[str, dt.date, float | None], str] | None = None,
) -> str:
    pad_l = 290
    cell_h = 16
    height = PAD_T + cell_h * max(len(rows), 1) + PAD_B
    f = _Frame(days, height, 0, 1, pad_l=pad_l)
    body: list[str] = []
    for i, d in enumerate(days):
        sev = day_sev.get(d)
        if sev:
            body.append(
                f'<rect class="breach-day {sev}" x="{pad_l + i * f.step:.1f}" y="{PAD_T - 4}" '
                f'width="{f.step:.1f}" height="{cell_h * len(rows) + 8}" fill="{SEV_FILL[sev]}"/>'
            )
    for r, (name, vals, breached) in enumerate(rows):
        y = PAD_T + r * cell_h
        body.append(f'<text x="{pad_l - 6}" y="{y + 12}" text-anchor="end">{_esc(name)}</text>')
        for i, v in enumerate(vals):
            text = (
                tip(name, days[i], v)
                if tip
                else f"{name} {days[i].isoformat()}: {fmt_value(v)}" + (" (breach)" if breached[i] else "")
            )
            stroke = ' stroke="#7b241c" stroke-width="2"' if breached[i] else ""
            body.append(
                f'<rect class="cell" x="{pad_l + i * f.step + 0.5:.1f}" y="{y + 1}" '
                f'width="{max(f.step - 1, 0.5):.1f}" height="{cell_h - 2}" fill="{color(v)}"{stroke}>'
                f"<title>{_esc(text)}</title></rect>"
            )
    base = PAD_T + cell_h * len(rows)
    every = max(1, math.ceil(len(days) / 14), math.ceil(44 / f.step))
    for i, d in enumerate(days):
        if i % every == 0:
            body.append(
                f'<text x="{f.x(i):.1f}" y="{base + 16}" text-anchor="middle">{d.strftime("%m-%d")}</text>'
            )
    x = W - PAD_R + 14
    for j, (name, c) in enumerate(legend):
        body.append(f'<rect x="{x}" y="{PAD_T + j * 16}" width="12" height="10" fill="{c}"/>')
        body.append(f'<text x="{x + 17}" y="{PAD_T + j * 16 + 9}">{_esc(name)}</text>')
    return _svg(cid, height, body, label or cid)


# ------------------------------------------------------------------------------------- the page


class _Metrics:
    def __init__(self, rows: Sequence[dict[str, Any]], days: Sequence[dt.date]):
        self.days = list(days)
        self.index = {d: i for i, d in enumerate(self.days)}
        self.by_key: dict[tuple[str, str], dict[dt.date, dict]] = defaultdict(dict)
        for r in rows:
            if r["execution_date"] in self.index:
                self.by_key[(r["metric"], r["scope"])][r["execution_date"]] = r

    def scopes(self, metric: str) -> list[str]:
        return sorted({s for m, s in self.by_key if m == metric})

    def values(self, metric: str, scope: str) -> list[float | None]:
        got = self.by_key.get((metric, scope), {})
        return [got[d]["value"] if d in got else None for d in self.days]

    def breached(self, metric: str, scope: str) -> list[bool]:
        got = self.by_key.get((metric, scope), {})
        return [bool(got[d]["breached"]) if d in got else False for d in self.days]

    def threshold(self, metric: str, scope: str | None = None) -> tuple[float | None, str | None]:
        for (m, s), per_day in self.by_key.items():
            if m == metric and (scope is None or s == scope):
                for r in per_day.values():
                    if r.get("condition"):
                        return r["threshold"], r["condition"]
        return None, None

    def series(self, metric: str, scopes: Sequence[str] | None = None) -> list[tuple[str, list, list]]:
        scopes = list(scopes or self.scopes(metric))
        return [(_short(s, scopes), self.values(metric, s), self.breached(metric, s)) for s in scopes]


def _short(scope: str, scopes: Sequence[str]) -> str:
    """`view.feature` -> `feature` when no other view has a feature of that name."""
    if "." not in scope:
        return scope
    tail = scope.split(".", 1)[1]
    clash = sum(1 for s in scopes if s.split(".", 1)[-1] == tail)
    return tail if clash == 1 else scope


def _thresholds(m: _Metrics, metric: str) -> list[tuple[float, str]]:
    out: list[tuple[float, str]] = []
    seen = set()
    for (mm, _s), per_day in m.by_key.items():
        if mm != metric:
            continue
        for r in per_day.values():
            cond = r.get("condition")
            if not cond or cond in seen:
                continue
            seen.add(cond)
            if cond.startswith("outside ["):
                lo, hi = cond[len("outside [") : -1].split(", ")
                out += [(float(lo), f"breach if < {lo}"), (float(hi), f"breach if > {hi}")]
            elif r["threshold"] is not None:
                out.append((float(r["threshold"]), f"breach if {cond}"))
    return out[:4]


def _pct(v: float) -> str:
    return f"{v * 100:.3g}%"


def render(
    rows: Sequence[dict[str, Any]],
    start: dt.date,
    end: dt.date,
    statuses: dict[dt.date, str] | None = None,
    title: str = "asof monitoring",
    marked: Sequence[dt.date] = (),
    notes: Sequence[str] = (),
) -> str:
    """The report for [start, end] from metric rows (dicts as `storage.read_metrics` returns).

    `marked`: the days of the run the report is for (a row of their own in the day strip);
    `notes`: lines (HTML) shown under the title, e.g. where the dates before `start` are."""
    days = list(date_range(start, end))
    statuses = statuses or {}
    marked_set = set(marked)
    m = _Metrics(rows, days)
    monitored = {r["execution_date"] for r in rows if start <= r["execution_date"] <= end}
    breaches = sorted(
        (r for r in rows if r["breached"] and start <= r["execution_date"] <= end),
        key=lambda r: (r["execution_date"], r["severity"] != "failure", r["metric"], r["scope"]),
    )
    day_sev: dict[dt.date, str] = {}
    for d in days:
        if d not in monitored:
            day_sev[d] = "missing"
    for r in breaches:
        d = r["execution_date"]
        if day_sev.get(d) != "failure":
            day_sev[d] = "failure" if r["severity"] == "failure" else "warning"
    n_fail = sum(1 for v in day_sev.values() if v == "failure")
    n_warn = sum(1 for v in day_sev.values() if v == "warning")
    n_missing = sum(1 for v in day_sev.values() if v == "missing")

    parts: list[str] = []
    add = parts.append
    add(f"<h1>{_esc(title)}</h1>")
    add(
        f'<p class="note">{start.isoformat()} .. {end.isoformat()} · generated '
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} · thresholds from monitoring.toml · "
        "shaded days breached a threshold (red: failure, amber: warning; grey: no metrics)</p>"
    )
    if marked_set:
        first, last = min(marked_set), max(marked_set)
        add(
            f'<p class="note run-range">this run: <b>{first.isoformat()} .. {last.isoformat()}</b> '
            f"({len(marked_set)} date(s), outlined in blue in the day strip)</p>"
        )
    for note in notes:
        add(f'<p class="note">{note}</p>')
    add('<div class="summary">')
    add(f'<div class="card"><b>{len(days)}</b>days</div>')
    add(f'<div class="card"><b>{len(monitored)}</b>days with metrics</div>')
    add(f'<div class="card failure"><b>{n_fail}</b>days with a failure</div>')
    add(f'<div class="card warning"><b>{n_warn}</b>days with warnings only</div>')
    add(f'<div class="card"><b>{n_missing}</b>days without metrics</div>')
    add(f'<div class="card"><b>{len(breaches)}</b>breaches</div>')
    add("</div>")

    # status strip: one cell per day, coloured by the worst breach
    codes = {"ok": 0.0, "warning": 1.0, "failure": 2.0, "missing": -1.0, "this run": 3.0}
    names = {v: k for k, v in codes.items()}
    strip_colors = {0.0: "#58d68d", 1.0: "#f5b041", 2.0: "#d62728", -1.0: "#cccccc", 3.0: "#1f5fbf"}
    per_day_count: dict[dt.date, int] = defaultdict(int)
    for r in breaches:
        per_day_count[r["execution_date"]] += 1
    status_row = [statuses.get(d, "") for d in days]

    def strip_tip(name: str, d: dt.date, v: float | None) -> str:
        if name == "this run":
            return f"{d.isoformat()}: {'processed by this run' if d in marked_set else 'not in this run'}"
        word = names.get(v if v is not None else -1.0, "")
        text = f"{d.isoformat()}: {'no metrics' if word == 'missing' else word}"
        if per_day_count.get(d):
            text += f", {per_day_count[d]} breach(es)"
        if statuses.get(d):
            text += f"; pipeline {statuses[d]}"
        return text

    add("<h2>Days</h2>")
    strip = [("worst severity", [codes[day_sev.get(d, "ok")] for d in days], [False] * len(days))]
    if marked_set:
        strip.append(
            ("this run", [codes["this run"] if d in marked_set else None for d in days], [False] * len(days))
        )
    add(
        heatmap(
            "days",
            days,
            strip,
            lambda v: "#ffffff" if v is None else strip_colors.get(v, "#cccccc"),
            {},
            label="breaches per day",
            legend=[
                ("ok", "#58d68d"),
                ("warning", "#f5b041"),
                ("failure", "#d62728"),
                ("no metrics", "#cccccc"),
                *([("this run", strip_colors[codes["this run"]])] if marked_set else []),
            ],
            tip=strip_tip,
        )
    )
    if any(status_row):
        counts: dict[str, int] = defaultdict(int)
        for s in status_row:
            if s:
                counts[s] += 1
        add(
            '<p class="note">pipeline status per date: '
            + ", ".join(f"{_esc(k)} {v}" for k, v in sorted(counts.items()))
            + "</p>"
        )

    add("<h2>Alerts</h2>")
    if not breaches:
        add('<p class="note">No threshold breached in this range.</p>')
    else:
        add("<table><tr><th>date</th><th>severity</th><th>metric</th><th>scope</th><th>value</th>"
            "<th>breach if</th><th>detail</th></tr>")  # fmt: skip
        for r in breaches[:500]:
            det = r.get("details") or {}
            add(
                f'<tr class="{_esc(r["severity"])}"><td>{r["execution_date"].isoformat()}</td>'
                f"<td>{_esc(r['severity'])}</td><td>{_esc(r['metric'])}</td><td>{_esc(r['scope'])}</td>"
                f"<td>{_esc('missing' if r['value'] is None else fmt_value(r['value']))}</td>"
                f"<td>{_esc(r['condition'])}</td><td>{_esc(str(det.get('summary', ''))[:300])}</td></tr>"
            )
        add("</table>")
        if len(breaches) > 500:
            add(f'<p class="note">... {len(breaches) - 500} more.</p>')

    add("<h2>Rows per source</h2>")
    add('<p class="note">rows that reached silver and rows quarantined, per batch (rows landed when '
        "validation did not run)</p>")  # fmt: skip
    sources = sorted(set(m.scopes("rows_landed")) | set(m.scopes("rows_silver")))
    for source in sources:
        silver = m.values("rows_silver", source)
        quarantined = m.values("rows_quarantined", source)
        landed = m.values("rows_landed", source)
        unvalidated = [
            (ld if (s is None and q is None) else None)
            for ld, s, q in zip(landed, silver, quarantined, strict=True)
        ]
        add(f'<p class="note"><b>{_esc(source)}</b></p>')
        add(
            bar_chart(
                f"rows-{source}",
                days,
                [
                    ("silver", silver, "#52be80"),
                    ("quarantined", quarantined, "#e74c3c"),
                    ("landed, not validated", unvalidated, "#aab7b8"),
                ],  # fmt: skip
                day_sev,
                label=f"rows per batch: {source}",
            )
        )

    def section(title: str, metric: str, note: str, **kw) -> None:
        series = m.series(metric)
        if not series:
            return
        add(f"<h2>{_esc(title)}</h2>")
        add(f'<p class="note">{note}</p>')
        add(line_chart(metric, days, series, day_sev, _thresholds(m, metric), label=title, **kw))

    section(
        "Validation pass rate",
        "validation_pass_rate",
        "rows that reached silver / rows in bronze, per source",
        y_range=(None, 1.0),
        y_fmt=_pct,
    )
    section(
        "Volume vs trailing median", "volume_ratio", "rows landed / median of the trailing delivered batches"
    )
    section(
        "Ingestion lag (hours)",
        "ingest_lag_hours",
        "newest landing file's arrival after the end of the execution date; only alerted on for live "
        "runs (ingested within the configured window), not for backfills",
    )
    section(
        "Feature freshness (hours)",
        "freshness_hours",
        "age of the newest feature row of each view at the end of the execution date (D+1 00:00 UTC)",
        y_range=(0.0, None),
    )
    section(
        "Feature coverage",
        "coverage",
        "share of the day's active entities with every feature of the service non-null",
        y_range=(None, 1.0),
        y_fmt=_pct,
    )
    section(
        "Online serving latency P99 (ms)",
        "serving_latency_p99_ms",
        "slowest 1% of asof serve's requests of the UTC day, per endpoint and feature service "
        "(docs/monitoring.md); no line: nothing was served that day",
        y_range=(0.0, None),
    )
    section(
        "Online serving latency P50 (ms)",
        "serving_latency_p50_ms",
        "median request of the UTC day, per endpoint and feature service",
        y_range=(0.0, None),
    )

    psi_scopes = m.scopes("psi")
    if psi_scopes:
        thr, _cond = m.threshold("psi")
        thr = thr if thr is not None else 0.2
        add("<h2>Feature drift (PSI)</h2>")
        add(
            '<p class="note">population stability index of each feature of the day vs the trailing '
            "reference window (reference deciles, fixed per day; grey = not computed: warm-up or too "
            "few rows)</p>"
        )
        add(
            heatmap(
                "psi-heatmap",
                days,
                m.series("psi"),
                lambda v: _psi_color(v, thr),
                day_sev,
                label="PSI per feature",
                legend=[
                    (f"< {thr / 10:g}", "#d5f5e3"),
                    (f"< {thr / 2:g}", "#a9dfbf"),
                    (f"<= {thr:g}", "#f5b041"),
                    (f"> {thr:g}", "#d62728"),
                    ("not computed", "#f4f4f4"),
                ],
            )
        )
        computed = [s for s in psi_scopes if any(v is not None for v in m.values("psi", s))]
        if computed:
            add(
                line_chart(
                    "psi",
                    days,
                    m.series("psi", computed),
                    day_sev,
                    _thresholds(m, "psi"),
                    y_range=(0.0, None),
                    height=300,
                    label="PSI per feature over time",
                )
            )

    q_scopes = m.scopes("quarantined_rows")
    if q_scopes:
        add("<h2>Quarantined rows per rule</h2>")
        add('<p class="note">rows quarantined per source and reason (a row counts once per reason)</p>')
        top = max((v or 0) for s in q_scopes for v in m.values("quarantined_rows", s)) or 1

        def q_color(v: float | None) -> str:
            if not v:
                return "#f4f4f4"
            a = 0.15 + 0.85 * math.log1p(v) / math.log1p(top)
            return f"rgba(192,57,43,{a:.2f})"

        add(
            heatmap(
                "quarantine", days, m.series("quarantined_rows"), q_color, day_sev, label="quarantined rows"
            )
        )

    section(
        "Online / offline mismatches",
        "online_mismatch_rate",
        "share of sampled entities whose online values differ from their latest gold row",
        y_range=(0.0, None),
        y_fmt=_pct,
    )

    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)} {start.isoformat()}..{end.isoformat()}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report(
    path: Path,
    start: dt.date,
    end: dt.date,
    title: str = "asof monitoring",
    marked: Sequence[dt.date] = (),
    notes: Sequence[str] = (),
    statuses: dict[dt.date, str] | None = None,
) -> Path:
    """The report of [start, end] at `path`; `statuses` (runs.date_status of runs.latest for these
    dates or more) when the caller has them already."""
    rows = storage.read_metrics(start, end)
    if statuses is None:
        statuses = pipeline_statuses(start, end)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(rows, start, end, statuses, title, marked, notes), encoding="utf-8")
    tmp.replace(path)
    return path


def pipeline_statuses(start: dt.date, end: dt.date) -> dict[dt.date, str]:
    """Each date's pipeline status. A date's status does not depend on the range asked for, so one
    call may serve several reports; each call reads every run record and checks the lake's row
    counts of its dates (~15 Delta tables opened: 0.27 s for a bench day)."""
    return runs.date_status(runs.latest(start, end))


RUNS_DIR = "runs"  # under the reports directory: one report per run range
# Run reports kept (the newest by time written): a daily schedule writes one a day, up to a few
# hundred KB each; an artifact of an older run links to a page that is gone (404), and
# `asof monitor --html` reports any range again.
RUN_REPORTS_KEPT = 120


@dataclass(frozen=True)
class FlowReports:
    """The reports a flow run wrote: the served one (the lake's newest dates) and the run's own."""

    served: Path | None
    run: Path | None


def served_window(lake_days: Sequence[dt.date], n: int) -> tuple[dt.date, dt.date] | None:
    """The served report's range: the `n` calendar days up to the newest date with metrics (fewer
    when the lake starts later). None for a lake without metrics."""
    if not lake_days:
        return None
    end = max(lake_days)
    return max(min(lake_days), end - dt.timedelta(days=n - 1)), end


def run_window(run_days: Sequence[dt.date], lake_days: Sequence[dt.date], n: int) -> tuple[dt.date, dt.date]:
    """The run's report range: `n` days centred on the run's dates, moved inside the dates the lake
    has metrics for where it can be; the run's own range when that is longer than `n`."""
    first, last = min(run_days), max(run_days)
    span = (last - first).days + 1
    if span >= n:
        return first, last
    lo, hi = min([*lake_days, first]), max([*lake_days, last])
    start = first - dt.timedelta(days=(n - span) // 2)
    start = max(lo, min(start, hi - dt.timedelta(days=n - 1)))
    end = min(max(last, start + dt.timedelta(days=n - 1)), hi)
    return min(start, first), max(end, last)


def run_report_path(reports: Path, run_days: Sequence[dt.date]) -> Path:
    return reports / RUNS_DIR / f"{min(run_days).isoformat()}_{max(run_days).isoformat()}.html"


def older_note(lake_days: Sequence[dt.date], start: dt.date) -> str | None:
    """Where the lake's dates before `start` are (HTML), or None when there are none."""
    older = [d for d in lake_days if d < start]
    if not older:
        return None
    first, last = min(older), max(older)
    return (
        f"{len(older)} earlier date(s) with metrics, {first.isoformat()} .. {last.isoformat()}, are not in "
        f"this page: <code>asof monitor --start {first.isoformat()} --end {last.isoformat()} "
        "--html FILE</code> reports them (or any range)."
    )


def write_flow_reports(
    run_days: Sequence[dt.date], n: int, reports: Path, title: str = "asof monitoring"
) -> FlowReports:
    """Write the served report and the run's own report (see the module docstring)."""
    lake_days = storage.metric_dates()
    served = run = None
    window = served_window(lake_days, n)
    run_span = run_window(run_days, lake_days, n) if run_days else None
    spans = [w for w in (window, run_span) if w is not None]
    statuses = pipeline_statuses(min(w[0] for w in spans), max(w[1] for w in spans)) if spans else {}
    if window is not None:
        note = older_note(lake_days, window[0])
        served = write_report(
            reports / "monitoring.html", *window, title=title, notes=[note] if note else [], statuses=statuses
        )
    if run_span is not None:
        start, end = run_span
        note = older_note(lake_days, start)
        run = write_report(
            run_report_path(reports, run_days),
            start,
            end,
            title=title,
            marked=run_days,
            notes=[note] if note else [],
            statuses=statuses,
        )
        prune_run_reports(reports / RUNS_DIR, RUN_REPORTS_KEPT)
    return FlowReports(served, run)


def prune_run_reports(runs_dir: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` newest run reports; returns the deleted paths."""
    pages = sorted(runs_dir.glob("*.html"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for page in pages[keep:]:
        page.unlink(missing_ok=True)
    return pages[keep:]
