"""Run every benchmark and write ``bench/RESULTS.md``: one row per figure with its goal, the figure,
the baseline measured in the same run, the ratio, and the machine.

Runs alone: ``python bench/results.py [--only detect,sink] [--quick]``. Each benchmark runs as its
own process (``python bench/NAME.py``) and is read from the JSON object on its last line; a
benchmark that fails is listed with its error instead of its figures, and the others still run.
``--quick`` passes ``--quick`` to every benchmark (a smoke run: its figures are not the goals').
The last line of output is one JSON object: goals met, goals missed, benchmarks failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Goal:
    bench: str
    figure: str  # key in the benchmark's JSON
    goal: str  # as the issue states it
    met: Callable[[float], bool] | None = None
    baseline: str | None = None  # key of the baseline measured in the same run
    ratio: str | None = None  # key of the ratio to it


GOALS = [
    Goal("detect", "numba_readings_per_s", ">= 30,000,000 readings/s", lambda v: v >= 30e6,
         "python_reference_readings_per_s", "ratio_vs_python"),
    Goal("detect", "batch_1000_p99_ms", "small-batch latency (ms)", None, None, None),
    Goal("ledger", "append_events_per_s", ">= 50,000 events/s", lambda v: v >= 50_000,
         "raw_sqlite_insert_events_per_s", "append_ratio_vs_raw_insert"),
    Goal("ledger", "append_ratio_vs_raw_insert", ">= 0.5 of a raw insert", lambda v: v >= 0.5, None, None),
    Goal("ledger", "trace_p95_ms", "trace in milliseconds", lambda v: v < 10, None, None),
    Goal("sink", "sink_readings_per_s", ">= 2,000,000 readings/s", lambda v: v >= 2e6,
         "write_table_readings_per_s", "ratio_vs_write_table"),
    Goal("sink", "ratio_vs_write_table", ">= 0.7 of write_table", lambda v: v >= 0.7, None, None),
    Goal("sink", "bytes_per_reading", "<= 15 bytes/reading", lambda v: v <= 15, None, None),
    Goal("query", "lot_query_ms", "< 100 ms for one lot of 50 M readings", lambda v: v < 100, "lot_baseline_ms", None),
    Goal("query", "flagged_by_line_day_ms", "< 500 ms over 50 M readings", lambda v: v < 500, "flagged_baseline_ms",
         None),
    Goal("transport", "readings_per_s", ">= 1,000,000 readings/s, nothing lost", lambda v: v >= 1e6,
         "raw_paho_qos1_readings_per_s", "ratio_vs_raw_paho"),
    Goal("transport", "lost_readings", "0", lambda v: v == 0, None, None),
    Goal("edge_opcua", "notifications_per_s", "10,000 tags at 1 s (~10,000/s)", lambda v: v >= 9_900,
         "baseline_asyncua_notifications_per_s", None),
    Goal("edge_opcua", "lag_end_p99_ms", "no growing lag over the run", None, "lag_start_p99_ms", None),
    Goal("edge_opcua", "reader_cpu_pct", "CPU % of one core", None, "baseline_asyncua_cpu_pct",
         "cpu_ratio_vs_asyncua_handler"),
    Goal("dashboard", "slowest_page_s", "< 2 s per page on 50 M readings", lambda v: v < 2, "baseline_bare_page_s",
         None),
    Goal("alarms", "worst_line_avg_alarms_per_10min", "<= 1 per 10 min (EEMUA 191)", lambda v: v <= 1, None, None),
    Goal("alarms", "worst_line_peak_alarms_per_10min", "< 10 per 10 min (EEMUA 191)", lambda v: v < 10, None, None),
    Goal("distributed", "latency_p99_ms", "< 2 s source time to commit, 10,000 tags at 1 Hz, faults injected",
         lambda v: v < 2000, None, None),
    Goal("distributed", "latency_p99_between_faults_ms", "context: p99 of the readings not sent while recovering"
         " from a fault", None, None, None),
    Goal("distributed", "recovery_to_under_2s_max_s", "context: slowest return under 2 s after a fault (s)", None,
         None, None),
    Goal("distributed", "latency_from_edge_receipt_p99_ms", "context: p99 from the edge's receipt to commit", None,
         None, None),
    Goal("distributed", "campaign_readings_per_s", "sustains 10,000 tags at 1 Hz (2 edges, 2 workers)",
         lambda v: v >= 9_900, None, None),
    Goal("distributed", "campaign_missing", "0 missing outside a gap record", lambda v: v == 0, None, None),
    Goal("distributed", "campaign_duplicated", "0 duplicated", lambda v: v == 0, None, None),
    Goal("distributed", "campaign_samples_repeated", "0 samples read twice (by sensor and source time)",
         lambda v: v == 0, None, None),
    Goal("distributed", "readings_per_s_2_workers", "throughput with 2 ingest workers (readings/s)", None,
         "readings_per_s_1_worker", "ratio_2_vs_1_workers"),
]


def run(name: str, quick: bool) -> tuple[dict | None, str, float]:
    t = time.monotonic()
    script = HERE / f"{name}.py"
    quick = quick and "--quick" in script.read_text()  # those without a short mode run in full
    cmd = [sys.executable, str(script), *(["--quick"] if quick else [])]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    took = time.monotonic() - t
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()
        return None, tail[-1] if tail else f"exit {r.returncode}", took
    try:
        return json.loads(r.stdout.strip().splitlines()[-1]), "", took
    except (ValueError, IndexError) as exc:
        return None, f"no JSON on the last line ({exc})", took


def _fmt(v: object) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int | float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated benchmark names (default: every one)")
    ap.add_argument("--quick", action="store_true", help="smoke-run every benchmark in its short mode")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--keep", action="store_true",
                    help="with --only: keep the other benchmarks' figures from the existing RESULTS.md")
    args = ap.parse_args()
    names = sorted(p.stem for p in HERE.glob("*.py") if p.stem != "results" and "__main__" in p.read_text())
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    results: dict[str, tuple[dict | None, str, float]] = kept(args.out) if args.keep and args.only else {}
    met = missed = 0
    for n in names:
        print(f"== {n}", flush=True)
        results[n] = run(n, args.quick)
        fig, err, took = results[n]
        print(f"   {took:.0f} s " + (f"FAILED: {err}" if fig is None else json.dumps(fig)[:300]), flush=True)
        met, missed = write(results, args.out, args.quick,  # after each one: a long run leaves what it has
                            f"Only {', '.join(names)} re-run at this date; the other figures are kept from the earlier"
                            " run that wrote this file." if args.keep and args.only else "")
    failed = sum(1 for f, _, _ in results.values() if f is None)
    print(json.dumps({"benchmarks": len(results), "benchmarks_failed": failed, "goals_met": met,
                      "goals_missed": missed, "results": str(args.out)}))


def kept(out: Path) -> dict[str, tuple[dict | None, str, float]]:
    """The figures an earlier run wrote to ``out`` ("Every figure"), to re-run only some benchmarks."""
    import re

    found: dict[str, tuple[dict | None, str, float]] = {}
    if out.exists():
        for m in re.finditer(r"^- \*\*(\w+)\*\* \((\d+) s\): `(.*)`$", out.read_text(), re.M):
            found[m.group(1)] = (json.loads(m.group(3)), "", float(m.group(2)))
    return found


def write(results: dict[str, tuple[dict | None, str, float]], out: Path, quick: bool,
          note: str = "") -> tuple[int, int]:
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [f"# Benchmark results{' (quick smoke run: not the goals figures)' if quick else ''}", "",
             f"Written by `make bench` (`python bench/results.py`) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC;"
             f" machine: {machine}. Each benchmark measured its baseline in the same run. {note}".rstrip(), "",
             "| benchmark | figure | goal | measured | baseline | ratio | met |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    met = missed = 0
    for g in GOALS:
        if g.bench not in results:
            continue
        fig, err, _ = results[g.bench]
        if fig is None:
            lines.append(f"| {g.bench} | {g.figure} | {g.goal} | failed: {err} | | | |")
            continue
        v = fig.get(g.figure)
        ok = "" if g.met is None or v is None else ("yes" if g.met(v) else "**no**")
        met += ok == "yes"
        missed += ok == "**no**"
        base = f"{_fmt(fig.get(g.baseline))} ({g.baseline})" if g.baseline else ""
        ratio = _fmt(fig.get(g.ratio)) if g.ratio else ""
        lines.append(f"| {g.bench} | {g.figure} | {g.goal} | {_fmt(v)} | {base} | {ratio} | {ok} |")
    lines += ["", "## Every figure", ""]
    for n, (fig, err, took) in results.items():
        lines.append(f"- **{n}** ({took:.0f} s): " + (f"failed: {err}" if fig is None else
                                                     "`" + json.dumps(fig) + "`"))
    out.write_text("\n".join(lines) + "\n")
    return met, missed


if __name__ == "__main__":
    main()
