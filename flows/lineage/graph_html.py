"""The picture of an impact report (`asof lineage impact ... --html FILE`): one self-contained HTML
page with an inline SVG graph, columns left to right: the landing file(s) -> the lake partitions ->
the gold tables -> their affected as-of dates -> the training sets and online views.

Why hand-drawn SVG: the page must open offline from disk (no CDN, no script), and a graph of a
few columns is simpler to lay out than to ship a layout library. Every upstream string (file
names, paths) is escaped.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

COLUMN_X = (20, 290, 560, 830, 1100)
COLUMN_TITLES = ("landing", "lake partitions", "gold tables", "as-of dates", "consumers")
BOX_W, BOX_H, GAP = 250, 38, 12
COLORS = {
    "landing": "#fde2c8",
    "bronze": "#e8d5b7",
    "silver": "#dfe7f0",
    "quarantine": "#f6c9c9",
    "gold": "#f8e08e",
    "date": "#fff6cc",
    "training": "#d3f0d3",
    "online": "#d9d2f3",
}


@dataclass
class Node:
    id: str
    column: int
    label: str
    detail: str
    kind: str
    y: int = 0


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)

    def add(self, node: Node) -> str:
        if all(n.id != node.id for n in self.nodes):
            self.nodes.append(node)
        return node.id

    def link(self, a: str, b: str) -> None:
        if (a, b) not in self.edges:
            self.edges.append((a, b))


def _date_runs(dates: list[str]) -> list[tuple[str, str]]:
    """Consecutive ISO dates grouped into (first, last) runs: 60 dates draw as one box."""
    import datetime as dt

    runs: list[list[dt.date]] = []
    for d in sorted(dt.date.fromisoformat(x) for x in dates):
        if runs and (d - runs[-1][-1]).days == 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    return [(r[0].isoformat(), r[-1].isoformat()) for r in runs]


def build_graph(report: dict[str, Any]) -> Graph:
    """The nodes and edges of an impact report (flows.lineage.impact)."""
    g = Graph()
    batch = report["batch"]
    files = sorted({f for p in report["partitions"] for f in p.get("files", [])})
    if batch.get("file"):
        files = [batch["file"]]
    if not files:
        files = [f"landing/{batch['source']}/{batch['date']}/"]
    landing = [g.add(Node(f"file:{f}", 0, f.rsplit("/", 1)[-1], f, "landing")) for f in files]
    parts: dict[str, str] = {}
    for p in report["partitions"]:
        if not p["rows"]:
            continue
        detail = f"{p['rows']} rows, version {p['version']}, {p.get('partition', '')}"
        pid = g.add(Node(f"part:{p['table']}", 1, p["table"], detail, p["layer"]))
        parts[p["layer"]] = pid
        for f in landing:
            g.link(f, pid)
    later = report.get("downstream_quarantine") or []
    if later:  # one box: a rejected batch can hold back rows of every later batch
        rows = sum(q["rows"] for q in later)
        span = f"{later[0]['batch_date']}..{later[-1]['batch_date']}"
        tables = sorted({q["table"] for q in later})
        label = f"{', '.join(tables)} (later)"
        qid = g.add(
            Node("later", 1, label, f"{rows} rows of batches {span}: {later[0]['reason']}", "quarantine")
        )
        for f in landing:
            g.link(f, qid)
    for gold in report["gold"]:
        if not gold.get("rows"):
            continue
        detail = f"{gold['rows']} rows of {gold['entities']} entities, version {gold.get('version')}"
        gid = g.add(Node(f"gold:{gold['table']}", 2, gold["table"], detail, "gold"))
        if "silver" in parts:
            g.link(parts["silver"], gid)
        for first, last in _date_runs(gold["as_of_dates"]):
            label = first if first == last else f"{first}..{last}"
            n = sum(v for d, v in gold["rows_per_date"].items() if first <= d <= last)
            did = g.add(Node(f"dates:{gold['table']}:{label}", 3, label, f"{n} affected rows", "date"))
            g.link(gid, did)
    for t in report["training_sets"]:
        tid = g.add(
            Node(
                f"train:{t['path']}:{t['registered_at']}",
                4,
                t["path"].rsplit("/", 1)[-1],
                t["path"],
                "training",
            )
        )
        for reason in t["reasons"]:
            if reason.startswith("features of "):
                table = reason.split()[2]
                for n in g.nodes:
                    if n.kind == "date" and n.id.startswith(f"dates:{table}:"):
                        g.link(n.id, tid)
            elif "silver" in parts:
                g.link(parts["silver"], tid)
    for o in report["online"]:
        if not o.get("entities_newest_row_affected"):
            continue
        served = o.get("entities_served_affected")
        detail = f"{o['entities_newest_row_affected']} entities' newest row affected" + (
            f", {served} served now" if served is not None else ""
        )
        oid = g.add(Node(f"online:{o['view']}", 4, f"online {o['view']}", detail, "online"))
        dates = [n for n in g.nodes if n.kind == "date" and n.id.startswith(f"dates:gold/{o['view']}:")]
        if dates:
            g.link(dates[-1].id, oid)
    return g


def _layout(g: Graph) -> int:
    heights = []
    for col in range(len(COLUMN_X)):
        y = 50
        for n in (n for n in g.nodes if n.column == col):
            n.y = y
            y += BOX_H + GAP
        heights.append(y)
    return max(heights) + 20


def svg(g: Graph) -> str:
    height = _layout(g)
    width = COLUMN_X[-1] + BOX_W + 20
    by_id = {n.id: n for n in g.nodes}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="impact-graph" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="impact graph">'
    ]
    for x, title in zip(COLUMN_X, COLUMN_TITLES, strict=True):
        out.append(f'<text x="{x}" y="30" class="col">{html.escape(title)}</text>')
    for a, b in g.edges:
        na, nb = by_id[a], by_id[b]
        x1, y1 = COLUMN_X[na.column] + BOX_W, na.y + BOX_H // 2
        x2, y2 = COLUMN_X[nb.column], nb.y + BOX_H // 2
        mid = (x1 + x2) // 2
        out.append(
            f'<path class="edge" data-from="{html.escape(a)}" data-to="{html.escape(b)}" '
            f'd="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}" />'
        )
    for n in g.nodes:
        x = COLUMN_X[n.column]
        label = n.label if len(n.label) <= 34 else n.label[:33] + "…"
        out.append(
            f'<g class="node {n.kind}" data-id="{html.escape(n.id)}">'
            f"<title>{html.escape(n.detail)}</title>"
            f'<rect x="{x}" y="{n.y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{COLORS[n.kind]}" />'
            f'<text x="{x + 8}" y="{n.y + 16}" class="label">{html.escape(label)}</text>'
            f'<text x="{x + 8}" y="{n.y + 31}" class="detail">{html.escape(n.detail[:44])}</text>'
            "</g>"
        )
    out.append("</svg>")
    return "\n".join(out)


def page(report: dict[str, Any]) -> str:
    """The whole HTML page: title, the graph, the recompute commands."""
    b = report["batch"]
    what = html.escape(b["file"] or f"{b['source']} batch {b['date']}")
    commands = [report["recompute"]["backfill"], *report["recompute"]["training_sets"]]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.get("notes", []))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>asof lineage impact: {what}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
svg text.col {{ font-weight: 600; font-size: 14px; }}
svg text.label {{ font-size: 12px; font-weight: 600; }}
svg text.detail {{ font-size: 10px; fill: #444; }}
svg path.edge {{ fill: none; stroke: #888; stroke-width: 1.4; }}
pre {{ background: #f4f4f4; padding: .6em; }}
</style></head>
<body>
<h1>What {what} reached</h1>
<p>Landing file &rarr; lake partitions &rarr; gold tables &rarr; affected as-of dates &rarr; training sets
and online views. Hover a box for its details.</p>
{svg(build_graph(report))}
<h2>Recompute</h2>
<pre id="commands">{html.escape(chr(10).join(commands))}</pre>
<ul>{notes}</ul>
</body></html>
"""
