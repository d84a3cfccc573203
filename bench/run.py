"""`make bench`: every figure side by side with its alternative, in one run.

    python -m bench.run [--profile standard|quick|scaling] [--repeat N] [--home DIR]

Each measurement runs in its own process (bench/measure.py) so its peak RSS is its own; each pair
runs `--repeat` times and the median is reported with the ratio. Results: bench/RESULTS.md (table,
exact command, machine facts) and bench/runs/<utc timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


@dataclass
class Pair:
    title: str
    ours: tuple[str, dict]
    alt: tuple[str, dict] | None
    target: str
    days: int
    scale: str = "bench"
    ratio_goal: float | None = None  # ours / alt must be <= this (None: informational)
    speedup_goal: float | None = None  # alt / ours must be >= this
    seconds_goal: float | None = None  # ours must take at most this long
    rss_goal_mb: float | None = None  # ours must peak below this
    results: dict = field(default_factory=dict)


# the floor compares its gold tables with those the `backfill` measurement's fresh home keeps
FLOOR_CHECK = {"check_against": "fresh-backfill-{start}-{end}"}


def end_to_end(days: int) -> Pair:
    """asof's backfill against the hand-written floor (bench/floor.py) on the same landing files;
    the backfill is the same measurement (name and options) as the other backfill pairs', so a bench
    run measures it once."""
    return Pair(
        f"end-to-end: backfill {days} days vs hand-written DuckDB floor",
        ("backfill", {"fresh_home": True}),
        ("floor", FLOOR_CHECK),
        "backfill <= 3x the floor (issue 17)"
        if days == 30
        else "informational (issue 17: 365-day backfill <= 10 min, <= 4 GB)",
        days=days,
        ratio_goal=3.0 if days == 30 else None,
    )


def profile(name: str) -> list[Pair]:
    if name == "quick":
        return [
            Pair(
                "ingest vs pyarrow CSV->Parquet copy",
                ("ingest", {}),
                ("ingest_limit_pyarrow", {}),
                "informational (distance to the hardware floor)",
                days=3,
                scale="demo",
            ),
        ]
    pairs = [
        Pair("generate one bench day", ("generate", {}), None, "< 2 s per day", days=1),
        Pair(
            "ingest vs pyarrow CSV->Parquet copy",
            ("ingest", {}),
            ("ingest_limit_pyarrow", {}),
            "informational (distance to the hardware floor)",
            days=7,
        ),
    ]
    extra = BENCH / "pairs.json"
    if extra.exists():  # stage owners add their pairs here (transform, validation, feature store)
        for p in json.loads(extra.read_text()):
            pairs.append(
                Pair(
                    p["title"],
                    tuple(p["ours"]),
                    tuple(p["alt"]) if p.get("alt") else None,
                    p["target"],
                    p["days"],
                    p.get("scale", "bench"),
                    p.get("ratio_goal"),
                    p.get("speedup_goal"),
                )
            )
    if name in ("standard", "full"):
        pairs.append(
            Pair(
                "range backfill vs per-day loop (every stage)",
                ("backfill", {"fresh_home": True}),
                ("daily_loop", {"fresh_home": True}),
                "backfill >= 10x faster",
                days=30,
                speedup_goal=10.0,
            )
        )
        if name == "standard":  # in `full` it comes with the scaling pairs
            pairs.append(end_to_end(30))
        pairs.append(
            Pair(
                "daily run: one bench day end to end, Prefect server up: `asof run` through the warm "
                "process (`asof warm`) vs a fresh process alone",
                ("daily_one", {"warm": True}),
                ("daily_one", {}),
                "<= 15 s (issue 17)",
                days=30,  # the last day of the 30 just backfilled, so its history exists
                seconds_goal=15.0,
            )
        )
    if name in ("scaling", "full"):
        scaling = [
            Pair(
                f"scaling: backfill {n} days",
                ("backfill", {"fresh_home": True}),
                None,
                "time/day flat, RSS < 4 GB; 365 days < 15 min",
                days=n,
                rss_goal_mb=4096,
                seconds_goal=900 if n == 365 else None,
            )
            for n in (30, 90, 180, 365)
        ]
        scaling[1:1] = [end_to_end(30)]  # right after the 30-day backfill it shares
        scaling.append(end_to_end(365))
        # scaling first in `full`: the longest runs, and the figures a run cut short would miss most
        pairs = scaling if name == "scaling" else scaling + pairs
    return pairs


def run_measure(name: str, home: Path, start: dt.date, days: int, scale: str, opts: dict) -> dict:
    end = start + dt.timedelta(days=days - 1)
    cmd = [
        sys.executable,
        "-m",
        "bench.measure",
        name,
        "--home",
        str(home),
        "--start",
        start.isoformat(),
        "--end",
        end.isoformat(),
        "--scale",
        scale,
        "--extra",
        json.dumps(opts),
    ]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        return {"name": name, "error": (res.stderr or res.stdout)[-1500:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


_MEMO: dict[str, dict] = {}


def measured(what: tuple[str, dict], home: Path, start: dt.date, days: int, scale: str, repeat: int) -> dict:
    """The summarised samples of one measurement; a measurement two pairs share (e.g. our retrieval
    against two alternatives, the 30-day backfill in the scaling table) runs once per bench run."""
    name, opts = what
    key = json.dumps([name, opts, str(home), start.isoformat(), days, scale], sort_keys=True)
    if key not in _MEMO:
        _MEMO[key] = summarise([run_measure(name, home, start, days, scale, opts) for _ in range(repeat)])
    return _MEMO[key]


def ensure_data(home: Path, start: dt.date, days: int, scale: str) -> float:
    end = start + dt.timedelta(days=days - 1)
    marker = home / f".generated-{scale}-{start}-{end}"
    for m in home.glob(f".generated-{scale}-{start}-*"):  # a longer range generated earlier covers it
        with contextlib.suppress(ValueError):
            if dt.date.fromisoformat(m.name[-10:]) >= end:
                return 0.0
    t = time.perf_counter()
    out = run_measure("generate", home, start, days, scale, {})
    if "error" in out:
        raise SystemExit(f"data generation failed: {out['error']}")
    marker.touch()
    return time.perf_counter() - t


def machine() -> dict:
    mem = ""
    with contextlib.suppress(OSError, StopIteration):
        mem = next(
            line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
        )
    cpu = ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "mem": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg": os.getloadavg(),
    }


def summarise(samples: list[dict]) -> dict:
    ok = [s for s in samples if "error" not in s]
    failed = [s["error"] for s in samples if "error" in s]
    if not ok:
        return {"error": failed[-1] if failed else "failed"}
    median = statistics.median(s["seconds"] for s in ok)
    # the extra figures (rows/s, latency percentiles...) of the run closest to the median
    typical = min(ok, key=lambda s: abs(s["seconds"] - median))
    return {
        "seconds": median,
        "seconds_all": [round(s["seconds"], 3) for s in ok],
        "peak_rss_mb": max(s["peak_rss_mb"] for s in ok),
        "extra": {k: v for k, v in typical.items() if k not in ("seconds", "peak_rss_mb", "name")},
        # a repeat that failed is not averaged in, but it is not hidden either
        **({"failed_runs": len(failed), "last_error": failed[-1][-600:]} if failed else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--profile",
        default="full",
        choices=["full", "standard", "quick", "scaling"],
        help="full = standard + scaling (what `make bench` runs)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--home", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "asof-bench"))
    parser.add_argument("--start", default="2024-01-01")
    parser.add_argument(
        "--only",
        default="",
        help="run only pairs whose title contains this text (several: separate them with '|')",
    )
    args = parser.parse_args()
    start = dt.date.fromisoformat(args.start)
    command = "python -m bench.run " + shlex.join(sys.argv[1:])
    wanted = [w.strip().lower() for w in args.only.split("|")]
    pairs = [p for p in profile(args.profile) if any(w in p.title.lower() for w in wanted)]
    if any(p.alt and p.alt[0] == "floor" for p in pairs):
        # the fresh-home backfills keep their gold tables for the floor's equality check
        os.environ["ASOF_BENCH_KEEP_GOLD"] = "1"
    started = dt.datetime.now(dt.UTC)
    load_at_start = os.getloadavg()
    for p in pairs:
        home = Path(args.home) / p.scale
        home.mkdir(parents=True, exist_ok=True)
        gen = ensure_data(home, start, p.days, p.scale)
        print(
            f"== {p.title} ({p.days} days, {p.scale}){f' [generated in {gen:.1f}s]' if gen else ''}",
            flush=True,
        )
        repeat = 1 if p.days >= 30 else args.repeat
        p.results["ours"] = measured(p.ours, home, start, p.days, p.scale, repeat)
        if p.alt:
            p.results["alt"] = measured(p.alt, home, start, p.days, p.scale, repeat)
        o, a = p.results.get("ours", {}), p.results.get("alt", {})
        if "seconds" in o and "seconds" in a and o["seconds"] > 0:
            p.results["ratio"] = o["seconds"] / a["seconds"]
            p.results["speedup"] = a["seconds"] / o["seconds"]
        print(json.dumps(p.results, default=str)[:600], flush=True)
        # after every pair: a long run that is stopped still leaves what it measured
        write_results([q for q in pairs if q.results], args, command, started, load_at_start)


def _fmt_s(r: dict) -> str:
    if "error" in r:
        return "error: " + r["error"].strip().splitlines()[-1][:80]
    failed = f"; {r['failed_runs']} run(s) failed" if r.get("failed_runs") else ""
    return f"{r['seconds']:.2f} s ({r['peak_rss_mb']:.0f} MB{failed})"


def _load(avg: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(round(x, 1) for x in avg)


def _summary(r: dict | None) -> str:
    if not r:
        return "-"
    if "error" in r:
        return "error"
    return str(r.get("extra", {}).get("summary", "-")).replace("|", "/")


def _figures_table(pairs: list[Pair]) -> list[str]:
    """Measurements that report more than seconds (rows/s, latency percentiles) put a one-line
    `summary` in their output: listed under the main table, from the run closest to the median."""
    rows = [
        f"| {p.title} | {_summary(p.results.get('ours'))} | {_summary(p.results.get('alt'))} |"
        for p in pairs
        if any("summary" in (p.results.get(side) or {}).get("extra", {}) for side in ("ours", "alt"))
    ]
    if not rows:
        return []
    return [
        "Throughput and latency (run closest to the median):",
        "",
        "| measurement | asof | alternative |",
        "| --- | --- | --- |",
        *rows,
        "",
    ]


def write_results(
    pairs: list[Pair],
    args,
    command: str,
    started: dt.datetime,
    load_at_start: tuple[float, float, float] | None = None,
) -> None:
    runs_dir = BENCH / "runs"
    runs_dir.mkdir(exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    payload: dict[str, Any] = {
        "command": command,
        "started": started.isoformat(),
        "machine": {**machine(), "load_avg_at_start": load_at_start},
        "pairs": [
            {
                "title": p.title,
                "days": p.days,
                "scale": p.scale,
                "target": p.target,
                "ours": p.ours,
                "alt": p.alt,
                "results": p.results,
            }
            for p in pairs
        ],
    }
    (runs_dir / f"{args.profile}-{stamp}.json").write_text(json.dumps(payload, indent=2, default=str))
    lines = [
        f"## Profile `{args.profile}` — {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{command}` (median of {args.repeat} runs for pairs under 30 days, 1 run otherwise; "
        "each measurement in its own process; peak RSS per process).",
        "",
        f"Machine: {payload['machine']['cpus']} cores, {payload['machine']['cpu']}, "
        f"{payload['machine']['mem']}, Python {payload['machine']['python']}, "
        f"load average at start {_load(load_at_start or payload['machine']['load_avg'])}, "
        f"at end {_load(payload['machine']['load_avg'])}.",
        "",
        "| measurement | days x scale | asof | alternative | ratio (asof/alt) | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in pairs:
        o, a = p.results.get("ours", {}), p.results.get("alt")
        ratio = p.results.get("ratio")
        met = "-"
        if ratio is not None and p.ratio_goal is not None:
            met = "yes" if ratio <= p.ratio_goal else "no"
        if ratio is not None and p.speedup_goal is not None:
            met = "yes" if p.results["speedup"] >= p.speedup_goal else "no"
        if "seconds" in o and (p.seconds_goal is not None or p.rss_goal_mb is not None):
            ok = (p.seconds_goal is None or o["seconds"] <= p.seconds_goal) and (
                p.rss_goal_mb is None or o["peak_rss_mb"] < p.rss_goal_mb
            )
            met = "yes" if ok and met != "no" else "no"
        lines.append(
            f"| {p.title} | {p.days} x {p.scale} | {_fmt_s(o)} | {_fmt_s(a) if a else '-'} | "
            f"{f'{ratio:.2f}' if ratio is not None else '-'} | {p.target} | {met} |"
        )
    lines.append("")
    lines += _figures_table(pairs)
    results = BENCH / "RESULTS.md"
    header = "# Benchmark results\n\nWritten by `make bench` (bench/run.py). Newest profile run first.\n\n"
    old = results.read_text().split("\n", 4)[-1] if results.exists() else ""
    # every earlier section stays, hand-written ones (side-by-side notes) included
    old = old[old.find("## ") :] if "## " in old else ""
    if old.startswith(lines[0] + "\n"):  # this run's own section, written after an earlier pair
        nxt = old.find("\n## ", len(lines[0]))
        old = old[nxt + 1 :] if nxt >= 0 else ""
    results.write_text(header + "\n".join(lines) + "\n" + old)
    print(f"wrote {results} and {runs_dir / f'{args.profile}-{stamp}.json'}")


if __name__ == "__main__":
    main()
