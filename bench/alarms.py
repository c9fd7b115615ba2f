"""Alarm rates against EEMUA 191, and what flood control saves, on the simulator's scenarios.

Each scenario is replayed to Parquet without real time (``firmware_sim.replay``), fed in arrival
order to the detector (configured as ``bench/quality.py`` configures it: the products' bands and
the cyclic signals' limits, every other setting default), its flags grouped into episodes by
ingest's own ``EpisodeTracker``, and the episodes turned into alarms by ``ingest.alarms.AlarmEngine``
with the default ``[alarms]`` settings. Counted per line (a production line, or a shipment in
the cold chain: one operator's area) in 10-minute windows over the scenario's span:

* the baseline in the same run: one alarm per flagged reading (no episodes) and one per episode
  (no flood control);
* alarms raised with flood control (chattering merged, related alarms on a line grouped).

EEMUA 191 (3rd ed., table 6 / ISA-18.2 section 16.5): an operator can handle on average at most
about one alarm per 10 minutes ("very likely to be acceptable"), and fewer than 10 alarms in any
10 minutes (above that is a flood).

Runs alone: ``python bench/alarms.py [--scenarios demo,faults,quality,coldchain] [--quick]``;
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.quality import make_detector, quality_config
from firmware_sim.replay import replay
from firmware_sim.scenario import load_scenario
from ingest.alarms import Action, AlarmEngine, Condition
from ingest.episodes import EpisodeTracker
from qctrace.config import AlarmsConfig

WINDOW_NS = 600 * 1_000_000_000
EEMUA_AVG = 1.0  # alarms per 10 min per operator, on average
EEMUA_PEAK = 10  # alarms in any 10 min: this many or more is a flood

TOLERANCE_S = 120.0
"""An alarm within this long of a labelled fault on its line (before its start or after its end) answers it."""

TICKS = {"demo": 600, "faults": 1800, "quality": 9000, "coldchain": 720}
"""Scenario spans replayed (ticks): each covers its labelled faults."""


def _line(key: str) -> str:
    return "/".join(key.split("/")[:2])


def rates(times_by_line: dict[str, list[int]], start_ns: int, end_ns: int, lines: list[str]) -> dict:
    """Average and peak count per 10-minute window, per line and at worst over lines."""
    n_win = max(1, -(-(end_ns - start_ns) // WINDOW_NS))
    per = {}
    for ln in lines:
        t = np.asarray(times_by_line.get(ln, []), dtype=np.int64)
        counts = np.bincount(np.clip((t - start_ns) // WINDOW_NS, 0, n_win - 1), minlength=n_win) if len(t) \
            else np.zeros(n_win, dtype=np.int64)
        per[ln] = {"total": int(counts.sum()), "avg_per_10min": round(float(counts.mean()), 3),
                   "peak_per_10min": int(counts.max())}
    return {"lines": per, "windows": n_win,
            "worst_avg_per_10min": max((v["avg_per_10min"] for v in per.values()), default=0.0),
            "worst_peak_per_10min": max((v["peak_per_10min"] for v in per.values()), default=0)}


def run_scenario(name: str, seed: int, ticks: int, batch_rows: int, workdir: Path, cfg: AlarmsConfig) -> dict:
    scenario = load_scenario(name)
    t0 = time.perf_counter()
    res = replay(scenario, seed, workdir / name, ticks)
    table = pq.read_table(res.readings_path)
    table = table.take(pc.sort_indices(table, [("recv_ts", "ascending")]))
    det = make_detector(quality_config(scenario))
    tracker = EpisodeTracker()
    engine = AlarmEngine(cfg)
    flagged_times: dict[str, list[int]] = {}
    episode_times: dict[str, list[int]] = {}
    alarm_times: dict[str, list[int]] = {}
    priorities: Counter = Counter()
    spans: dict[str, list[int]] = {}  # alarm id -> [line, raised, cleared]
    lines = sorted({f"{s}/{ln}" for s, ln in zip(table.column("site").to_pylist(), table.column("line").to_pylist(),
                                                 strict=True)})
    t_alarm = 0.0

    def take(transitions) -> None:
        for t in transitions:
            if t.action is Action.RAISE:
                alarm_times.setdefault(_line(t.alarm.sensor), []).append(t.alarm.raised_ns)
                priorities[t.alarm.priority] += 1
                spans[t.alarm.id] = [_line(t.alarm.sensor), t.alarm.raised_ns, t.alarm.raised_ns]
            elif t.action is Action.CLEAR:
                spans[t.alarm.id][2] = t.at_ns

    for batch in table.combine_chunks().to_batches(max_chunksize=batch_rows):
        out, idx, _ = det.flag(batch)
        flags = out.column("flags").to_numpy(zero_copy_only=False)
        hit = np.flatnonzero(flags)
        if len(hit):
            ts = out.column("ts").cast(pa.int64()).to_numpy()[hit]
            for i, t in zip(idx[hit].tolist(), ts.tolist(), strict=True):
                flagged_times.setdefault(_line(det.keys[i]), []).append(t)
        eps = tracker.update(idx, out, flags, det.keys)
        for e in eps:
            episode_times.setdefault(_line(e.sensor), []).append(e.start_ns)
        t1 = time.perf_counter()
        take(engine.observe([*map(Condition.of_episode, eps), *map(Condition.of_opening, tracker.opened)]))
        t_alarm += time.perf_counter() - t1
    last = tracker.close_all(det.keys)
    for e in last:
        episode_times.setdefault(_line(e.sensor), []).append(e.start_ns)
    take(engine.observe(Condition.of_episode(e) for e in last))
    take(engine.flush())
    ts_all = table.column("ts").cast(pa.int64())
    start_ns, end_ns = pc.min(ts_all).as_py(), pc.max(ts_all).as_py() + 1
    labels = pq.read_table(res.labels_path).to_pylist()
    faults: dict[str, list[tuple[int, int]]] = {}
    for lb in labels:
        faults.setdefault(f"{lb['site']}/{lb['line']}", []).append((lb["start_ns"], lb["end_ns"]))
    tol = round(TOLERANCE_S * 1e9)
    nuisance: dict[str, list[int]] = {}
    for ln, raised, cleared in spans.values():
        if not any(a - tol <= cleared and raised <= b + tol for a, b in faults.get(ln, ())):
            nuisance.setdefault(ln, []).append(raised)
    n_eps = sum(map(len, episode_times.values()))
    n_alarms = sum(map(len, alarm_times.values()))
    st = engine.stats
    return {
        "scenario": name, "seed": seed, "readings": res.readings, "lines": len(lines),
        "span_min": round((end_ns - start_ns) / 60e9, 1), "seconds": round(time.perf_counter() - t0, 2),
        "alarm_engine_conditions_per_s": round(st.conditions / t_alarm) if t_alarm else None,
        "flagged_readings": sum(map(len, flagged_times.values())), "episodes": n_eps, "alarms": n_alarms,
        "flood_reduction_ratio_vs_episodes": round(1 - n_alarms / n_eps, 3) if n_eps else 0.0,
        "chatter_merged": st.chatter_merged, "grouped": st.grouped, "priorities": dict(priorities),
        "per_reading": rates(flagged_times, start_ns, end_ns, lines),
        "per_episode": rates(episode_times, start_ns, end_ns, lines),
        "with_flood_control": rates(alarm_times, start_ns, end_ns, lines),
        "labelled_faults": len({(lb["kind"], lb["site"], lb["line"], lb["start_ns"]) for lb in labels}),
        "nuisance_alarms": sum(map(len, nuisance.values())),
        "nuisance": rates(nuisance, start_ns, end_ns, lines),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="demo,faults,quality,coldchain", help="comma-separated scenario names")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1000, help="readings per detector batch")
    ap.add_argument("--quick", action="store_true", help="the demo scenario's first 5 simulated minutes (smoke run)")
    args = ap.parse_args()
    names = ["demo"] if args.quick else [s for s in args.scenarios.split(",") if s]
    cfg = AlarmsConfig()
    results = []
    with tempfile.TemporaryDirectory(prefix="qctrace-alarms-") as tmp:
        for name in names:
            ticks = 300 if args.quick else TICKS.get(name, 3600)
            r = run_scenario(name, args.seed, ticks, args.batch, Path(tmp), cfg)
            results.append(r)
            fc = r["with_flood_control"]
            print(f"{name}: {r['readings']:,} readings over {r['span_min']} min on {r['lines']} lines:"
                  f" {r['flagged_readings']:,} flagged readings, {r['episodes']} episodes -> {r['alarms']} alarms"
                  f" ({r['chatter_merged']} chattering merged, {r['grouped']} grouped); worst line"
                  f" avg {fc['worst_avg_per_10min']}/10 min, peak {fc['worst_peak_per_10min']}/10 min"
                  f" (per episode: avg {r['per_episode']['worst_avg_per_10min']}, peak"
                  f" {r['per_episode']['worst_peak_per_10min']}); priorities {r['priorities']};"
                  f" {r['labelled_faults']} labelled faults, {r['nuisance_alarms']} alarms near none of them"
                  f" (worst line avg {r['nuisance']['worst_avg_per_10min']}, peak"
                  f" {r['nuisance']['worst_peak_per_10min']}/10 min)", flush=True)
            for ln, v in fc["lines"].items():
                print(f"  {ln:<28} alarms {v['total']:>4}  avg {v['avg_per_10min']:>6}/10 min"
                      f"  peak {v['peak_per_10min']:>3}/10 min", flush=True)
    worst_avg = max(r["with_flood_control"]["worst_avg_per_10min"] for r in results)
    worst_peak = max(r["with_flood_control"]["worst_peak_per_10min"] for r in results)
    eps = sum(r["episodes"] for r in results)
    alarms = sum(r["alarms"] for r in results)
    summary = {
        "bench": "alarms", "scenarios": names, "quick": args.quick,
        "episodes": eps, "alarms": alarms,
        "flood_reduction_ratio_vs_episodes": round(1 - alarms / eps, 3) if eps else 0.0,
        "worst_line_avg_alarms_per_10min": worst_avg, "worst_line_peak_alarms_per_10min": worst_peak,
        "worst_line_avg_episodes_per_10min": max(r["per_episode"]["worst_avg_per_10min"] for r in results),
        "worst_line_peak_episodes_per_10min": max(r["per_episode"]["worst_peak_per_10min"] for r in results),
        "worst_line_peak_flagged_readings_per_10min": max(r["per_reading"]["worst_peak_per_10min"] for r in results),
        "eemua_avg_met": worst_avg <= EEMUA_AVG, "eemua_peak_met": worst_peak < EEMUA_PEAK,
        "labelled_faults": sum(r["labelled_faults"] for r in results),
        "nuisance_alarms": sum(r["nuisance_alarms"] for r in results),
        "worst_line_avg_nuisance_alarms_per_10min": max(r["nuisance"]["worst_avg_per_10min"] for r in results),
        "worst_line_peak_nuisance_alarms_per_10min": max(r["nuisance"]["worst_peak_per_10min"] for r in results),
        "per_scenario": {r["scenario"]: {k: r[k] for k in ("episodes", "alarms", "flood_reduction_ratio_vs_episodes",
                                                            "span_min", "lines", "priorities", "labelled_faults",
                                                            "nuisance_alarms")}
                         | {"worst_avg_per_10min": r["with_flood_control"]["worst_avg_per_10min"],
                            "worst_peak_per_10min": r["with_flood_control"]["worst_peak_per_10min"]}
                         for r in results},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
