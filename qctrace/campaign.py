"""The fault campaign: the distributed pipeline under random faults, checked against ground truth.

Real processes: `qctrace sim` (OPC UA over TCP, loggers on ptys), a private Mosquitto, one or
more `qctrace edge` nodes (the plant's devices dealt out among them) and one or more `qctrace
ingest` workers sharing them (``ingest.leases``), joined by MQTT. While the plant runs, a seeded
injector picks faults at random instants: SIGKILL of an ingest worker, SIGKILL of an edge node, a
broker crash (SIGKILL) and restart. Afterwards the oracle, which is independent of ingest, compares the simulator's own
record of what it sent with Parquet: per source, readings produced, written, missing but inside a
recorded gap, missing with no explanation (must be 0) and written twice (must be 0); then the
ledger is verified. As Jepsen and SQLite do it: the faults are random, the check is exhaustive.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa

from firmware_sim.scenario import load_scenario, shipments_of, streams_of
from ingest.sink import read_dataset
from qctrace.broker import LocalBroker
from qctrace.config import load_config
from qctrace.errors import QctraceError
from qctrace.faults import Ballast, FaultUnavailable, fill_disk, mount_tmpfs, umount
from qctrace.ledger_ops import ensure_keys
from qctrace.resources import ResourceSampler, bounded, process_tree, save_samples
from qctrace.topology import Stage, Topology, edge_configs, worker_configs, write_config

RIG = "sim."
"""Resource metrics of the test rig (the simulator), not of qctrace."""
WARM_S = 60.0
"""A process's memory is judged from its second minute on (``qctrace.resources``): before, it is
still filling its allocator pools, and the campaign's kills would make young processes look lean."""

FAULTS = ("kill_ingest", "kill_edge", "crash_broker", "fill_spool_disk", "restart_plc", "unplug_logger", "skew_clock")
PROCESS_FAULTS = ("kill_ingest", "kill_edge", "crash_broker", "fill_spool_disk")
"""Injected by the campaign at random real instants; the others are scheduled inside the simulator
(at random simulated instants drawn from the seed), because only it can stop a PLC or pull a cable."""


@dataclass
class CampaignResult:
    seed: int
    duration_s: float
    faults: Counter = field(default_factory=Counter)
    produced: dict[str, int] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)
    in_gaps: dict[str, int] = field(default_factory=dict)
    unexplained: dict[str, int] = field(default_factory=dict)
    edges: int = 1
    workers: int = 1
    latency_ms: dict[str, float] = field(default_factory=dict)  # source time to Parquet commit, when measured
    fault_times: list[tuple[float, str]] = field(default_factory=list)  # (wall time, kind) of each fault
    duplicated: int = 0  # rows beyond one per (source, seq)
    samples_repeated: int = 0  # rows beyond one per (source, sensor, source time): one sample read twice
    gap_records: int = 0
    ledger_verified: bool = False
    ledger_message: str = ""
    skipped: list[str] = field(default_factory=list)  # faults this machine cannot inject, and why
    resources: list = field(default_factory=list)  # qctrace.resources.MetricVerdict per metric
    check_resources: bool = False  # long runs: memory, fds, spool and file count must stay bounded

    @property
    def ok(self) -> bool:
        bounded = all(v.bounded for v in self.resources if not v.metric.startswith(self.unjudged))\
            if self.check_resources else True
        return (not self.unexplained and self.duplicated == 0 and self.samples_repeated == 0 and self.ledger_verified
                and bounded)

    @property
    def unjudged(self) -> tuple[str, ...]:
        """Metrics shown, not judged: the simulator's, and each worker's memory. The workers' memory
        is judged as the tier's (``ingest.replica_rss_bytes``, the mean over warm workers): a
        worker's follows the roles it holds, and they move (the one-hour soak's "growing" worker was
        the one that had taken over compaction)."""
        return (RIG, *(f"ingest-w{i + 1}.rss_bytes" for i in range(self.workers)))

    def lines(self) -> list[str]:
        f = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        out = [f"seed {self.seed}: {self.duration_s:.0f} s, {self.edges} edge node(s), {self.workers} ingest"
               f" worker(s), faults: {f}",
               f"  {'source':<34}{'produced':>10}{'written':>10}{'in gaps':>10}{'missing':>10}"]
        cols = (self.produced, self.written, self.in_gaps, self.unexplained)
        for src in sorted(set(self.produced) | set(self.written)):
            out.append(f"  {src:<34}" + "".join(f"{c.get(src, 0):>10}" for c in cols))
        out.append(f"  {'total':<34}" + "".join(f"{sum(c.values()):>10}" for c in cols))
        out.append(f"  duplicated {self.duplicated} (by seq), {self.samples_repeated} (by sensor and source time),"
                   f" gap records {self.gap_records}, ledger "
                   + ("verified" if self.ledger_verified else f"NOT verified: {self.ledger_message}")
                   + ("  -> PASS" if self.ok else "  -> FAIL"))
        out += [f"  skipped: {s}" for s in self.skipped]
        if self.resources:
            from qctrace.resources import report_lines

            out += [f"  resources (2nd quarter of the run against the last; memory of processes at least"
                    f" {WARM_S:.0f} s old):",
                    *report_lines(self.resources, unjudged=self.unjudged),
                    f"  ({RIG}*: the simulator, the test rig, keeps its ground truth in memory: shown, not judged;"
                    " each worker's memory follows the roles it holds: the tier's is judged,"
                    " ingest.replica_rss_bytes, the mean over the workers past warm-up)"]
        if self.latency_ms:
            lm = self.latency_ms
            out.append(f"  source time to Parquet commit, {lm.get('readings', 0):,.0f} readings: p50"
                       f" {lm.get('p50', 0):,.0f} ms, p99 {lm.get('p99', 0):,.0f} ms, max {lm.get('max', 0):,.0f} ms;"
                       f" outside recorded outages p50 {lm.get('p50_outside_outages', 0):,.0f} ms, p99"
                       f" {lm.get('p99_outside_outages', 0):,.0f} ms ({lm.get('in_outages', 0):,.0f} readings"
                       " arrived late from inside an outage); from the edge's receipt p50"
                       f" {lm.get('p50_from_edge', 0):,.0f} ms, p99 {lm.get('p99_from_edge', 0):,.0f} ms")
            over = {k.removeprefix("over_goal_after_"): int(v) for k, v in lm.items()
                    if k.startswith("over_goal_after_")}
            out.append(f"  over {RECOVERED_S:.0f} s: {int(lm.get('over_goal', 0)):,} readings"
                       f" ({lm.get('over_goal', 0) / max(lm.get('readings', 1), 1):.2%}); by the fault before them: "
                       + (", ".join(f"{k} {v:,}" for k, v in sorted(over.items(), key=lambda x: -x[1])) or "-"))
            if "recovery_max_s" in lm:
                out.append(f"  back under {RECOVERED_S:.0f} s after a fault in p50 {lm['recovery_p50_s']:.1f} s, max"
                           f" {lm['recovery_max_s']:.1f} s; {lm['recovering_share']:.1%} of readings sent while"
                           f" recovering; p99 of the others {lm.get('p99_between_faults', float('nan')):,.0f} ms")
        return out


def run_campaign(work: Path, *, seed: int, duration_s: float, faults: tuple[str, ...] = FAULTS,
                 scenario: str = "demo", speed: float = 20.0, mean_interval_s: float = 2.0, edges: int = 1,
                 workers: int = 1, overrides: dict | None = None, measure_latency: bool = False,
                 say: Callable[[str], None] = lambda s: None) -> CampaignResult:
    """One seeded run: the plant under random faults for ``duration_s``, then the oracle.

    ``overrides`` are configuration changes for every process (dotted keys). With
    ``measure_latency`` the result has the source-time-to-commit latency of every reading (see
    ``_latency``); background compaction is then off, since it rewrites the files it is read from."""
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise QctraceError(f"campaign: unknown fault(s) {sorted(unknown)}; known: {', '.join(FAULTS)}")
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    data, logs = work / "data", work / "logs"
    logs.mkdir(exist_ok=True)
    result = CampaignResult(seed, duration_s, edges=edges, workers=workers, check_resources=duration_s >= 600)
    scenario = _with_device_faults(scenario, faults, work / "scenario.toml", rng, duration_s * speed, result.faults)
    runtime_faults = tuple(f for f in faults if f in PROCESS_FAULTS)
    with LocalBroker(work / "broker") as broker:
        cfg = load_config(None).with_overrides(**{
            "data_dir": str(data.resolve()), "plant.scenario": scenario, "plant.seed": seed, "plant.speed": speed,
            "edge.opcua.security_policy": "None",  # the simulator on loopback; the campaign tests faults, not TLS
            "mqtt.port": broker.port, "spool.resend_after_s": 3.0, "sink.flush_age_s": 0.5,
            "metrics.edge_port": 0, "metrics.ingest_port": 0, **(overrides or {}),
            **({"sink.compact_every_s": 0.0} if measure_latency else {})})
        ensure_keys(cfg)
        top = Topology(cfg, work)
        mounted: list[Path] = []
        sampler: ResourceSampler | None = None
        stages: dict[str, list[Stage]] = {"edge": [], "ingest": []}
        try:
            ready = top.start_sim()
            ecfgs = edge_configs(cfg, ready, edges)
            stages["ingest"] = top.add_workers([write_config(w, work / f"ingest-w{i + 1}.toml")
                                                for i, w in enumerate(worker_configs(cfg, workers))])
            stages["edge"] = top.add_edges([write_config(e, work / f"{e.edge.node}.toml") for e in ecfgs],
                                           [e.edge.node for e in ecfgs])
            spool1 = data / "edge" / "edge1" / "spool"
            if "fill_spool_disk" in runtime_faults:  # edge1's spool on a small filesystem of its own
                try:
                    mount_tmpfs(spool1, 64 << 20)
                    mounted.append(spool1)
                except FaultUnavailable as exc:
                    result.skipped.append(f"fill_spool_disk: {exc}")
                    runtime_faults = tuple(f for f in runtime_faults if f != "fill_spool_disk")
            for s in top.stages:
                s.start()
            sampler = ResourceSampler(
                lambda: {s.name: s.proc.pid for s in top.stages if s.running}
                | ({"sim": process_tree(top.sim.pid)} if top.sim else {})
                | ({"ingest": [s.proc.pid for s in stages["ingest"]]} if all(s.running for s in stages["ingest"])
                   else {}),
                dirs={f"spool_{e.edge.node}": data / "edge" / e.edge.node / "spool" for e in ecfgs}, data_dir=data,
                interval_s=max(1.0, duration_s / 120), warm_s=WARM_S, replicas=("ingest",)).start()
            started_wall = time.time()
            top.sim_command("start")
            t0 = time.monotonic()
            ballasts: list[tuple[float, Ballast]] = []
            while time.monotonic() - t0 < duration_s:
                time.sleep(rng.uniform(0.1, 2 * mean_interval_s))
                for due, b in [x for x in ballasts if x[0] <= time.monotonic()]:
                    b.remove()
                    ballasts.remove((due, b))
                    say(f"  {time.monotonic() - t0:6.1f} s  spool disk of edge1 has room again")
                if not runtime_faults:
                    continue
                fault = rng.choice(runtime_faults)
                result.faults[fault] += 1
                result.fault_times.append((time.time(), fault))
                if fault == "crash_broker":
                    say(f"  {time.monotonic() - t0:6.1f} s  {fault}")
                    broker.restart(hard=True, down_s=rng.uniform(0.0, 1.0))
                elif fault == "fill_spool_disk":
                    if ballasts:  # already full
                        result.faults[fault] -= 1
                        result.fault_times.pop()
                        continue
                    say(f"  {time.monotonic() - t0:6.1f} s  {fault} edge1")
                    ballasts.append((time.monotonic() + rng.uniform(2.0, 8.0), fill_disk(spool1)))
                else:
                    stage = rng.choice(stages[fault.removeprefix("kill_")])
                    say(f"  {time.monotonic() - t0:6.1f} s  {fault} {stage.name}")
                    stage.kill()
                    stage.start()
            for _, b in ballasts:
                b.remove()
            stopped = top.sim_command("stop")
            started_at = stopped.get("started_at") or started_wall
            result.produced = {k: int(v) for k, v in stopped["produced"].items()}
            _settle(data, sum(result.produced.values()), [f"edge{i + 1}" for i in range(edges)])
            for s in [*stages["edge"], *stages["ingest"]]:
                if s.stop() != 0:
                    raise QctraceError(f"campaign: {s.name} did not stop cleanly (see {logs})")
            samples = sampler.stop()
            save_samples(samples, work / "resources.jsonl")
            if len(samples) >= 8:
                result.resources = bounded(samples)
        finally:
            top.close()
            for m in mounted:
                with contextlib.suppress(FaultUnavailable):
                    umount(m)
    _audit(result, data, scenario)
    if measure_latency:
        sc = load_scenario(scenario)
        device = [(started_at + f.at_s / speed, f.kind) for f in sc.faults  # the simulator's, in wall time
                  if f.kind in ("opcua_server_restart", "device_disconnect", "clock_skew")]
        result.fault_times = sorted([*result.fault_times, *device])
        result.latency_ms = _latency(data, sc, speed, started_at, result.fault_times)
    return result


def _with_device_faults(scenario: str, faults: tuple[str, ...], path: Path, rng: random.Random, sim_s: float,
                        counts: Counter) -> str:
    """The scenario plus PLC restarts, logger unplugs and device clocks set a day off at random
    simulated instants of the run (none in its first and last tenth), as a scenario file of its
    own; or the scenario unchanged. (A day, so a skewed time never equals a real tick of the run:
    the oracle matches readings by source, sensor and time.)"""
    wanted = [f for f in faults if f in ("restart_plc", "unplug_logger", "skew_clock")]
    if not wanted:
        return scenario
    sc = load_scenario(scenario)
    p = Path(scenario)
    if p.suffix == ".toml" and p.exists():
        text = p.read_text()
    else:
        text = resources.files("firmware_sim").joinpath("scenarios", f"{scenario}.toml").read_text()
    targets = {"restart_plc": sorted({s.line_key for s in streams_of(sc) if s.kind == "opcua"}),
               "unplug_logger": [sh.id for sh in shipments_of(sc)],
               "skew_clock": sorted({s.source for s in streams_of(sc) if s.kind == "opcua"})
               + [sh.id for sh in shipments_of(sc)]}
    kinds = {"restart_plc": "opcua_server_restart", "unplug_logger": "device_disconnect", "skew_clock": "clock_skew"}
    slot_s = 40.0  # at most one fault per 40 simulated seconds: windows never overlap
    slots = max(int(sim_s * 0.8 // slot_s), 1)
    extra = []
    for k in sorted(rng.sample(range(slots), k=max(1, slots // 2))):
        kind = rng.choice(wanted)
        if not targets[kind]:
            continue
        counts[kind] += 1
        at = sim_s * 0.1 + k * slot_s + rng.uniform(0, 10)
        extra.append(f'\n[[faults]]\nkind = "{kinds[kind]}"\ntarget = "{rng.choice(targets[kind])}"\n'
                     f"at_s = {at:.1f}\nduration_s = {rng.uniform(5, 20):.1f}\n"
                     + (f"magnitude = {rng.choice((-1, 1)) * 86400.0}\n" if kind == "skew_clock" else ""))
    path.write_text(text + "".join(extra))
    return str(path)


def _settle(data: Path, produced: int, nodes: list[str], timeout_s: float = 90.0) -> None:
    """Wait until every edge's spool is empty (everything committed) or the dataset stops growing."""
    spools = [data / "edge" / n / "spool" for n in nodes]
    deadline = time.monotonic() + timeout_s
    last, still = -1, 0
    while time.monotonic() < deadline:
        time.sleep(1.0)
        rows = read_dataset(data / "readings").num_rows
        empty = not any(p.stat().st_size for sp in spools for p in sp.glob("*.qsp"))
        if rows >= produced or (empty and rows == last):
            return
        still = still + 1 if rows == last else 0
        if still >= 15:
            return
        last = rows


RECOVERED_S = 2.0
"""Latency goal: after a fault the pipeline has recovered once readings sent reach Parquet within this."""


def recovery(sent: np.ndarray, lat: np.ndarray, fault_at: list[float], goal_s: float = RECOVERED_S,
             hold_s: int = 3) -> tuple[list[float], np.ndarray]:
    """How long after each fault the latency stayed above ``goal_s``, and which readings were sent
    while the pipeline was recovering from one.

    Readings are grouped by the second they were sent in. A fault at ``t`` is recovered from at the
    first second ``s >= t`` from which the p99 latency of ``hold_s`` consecutive seconds is within
    the goal; its recovery takes ``s - t`` (0 when the fault never showed). The readings sent in
    ``[t, s)`` are the fault's; the others are the steady state between faults."""
    if not len(sent):
        return [], np.zeros(0, dtype=bool)
    t0 = np.floor(sent.min())
    sec = (np.floor(sent) - t0).astype(np.int64)
    order = np.argsort(sec, kind="stable")
    bounds = np.searchsorted(sec[order], np.arange(sec.max() + 2))
    p99 = np.array([np.percentile(lat[order[a:b]], 99) if b > a else 0.0
                    for a, b in pairwise(bounds)])
    ok = p99 <= goal_s
    held = np.array([ok[i:i + hold_s].all() for i in range(len(ok))])
    in_fault = np.zeros(len(ok), dtype=bool)
    took = []
    for t in fault_at:
        first = max(int(np.floor(t - t0)), 0)
        if first >= len(held):
            continue
        after = np.flatnonzero(held[first:])
        end = first + (int(after[0]) if len(after) else len(held) - first)
        took.append(max(0.0, float(end + t0 - t)) if end > first else 0.0)
        in_fault[first:end] = True
    return took, in_fault[sec]


def late_by_fault(sent: np.ndarray, lat: np.ndarray, faults: list[tuple[float, str]], goal_s: float = RECOVERED_S,
                  within_s: float = 30.0) -> dict[str, int]:
    """Readings over ``goal_s``, each charged to the last fault before it was sent (its kind), or to
    ``steady`` when none came in the ``within_s`` before: which fault the p99 is paying for."""
    late = lat > goal_s
    if not late.any():
        return {}
    faults = sorted(faults)
    times = np.array([t for t, _ in faults], dtype=float)
    kinds = [k for _, k in faults] + ["steady"]
    idx = np.searchsorted(times, sent[late], side="right") - 1
    before = np.append(times, -np.inf)[idx]  # idx -1: no fault before it
    idx = np.where(sent[late] - before > within_s, len(faults), idx)
    out: dict[str, int] = {}
    for i, n in zip(*np.unique(idx, return_counts=True), strict=True):
        out[kinds[i]] = out.get(kinds[i], 0) + int(n)
    return out


def _latency(data: Path, scenario, speed: float, started_at: float, faults: list[tuple[float, str]] = ()
             ) -> dict[str, float]:
    """Source time to Parquet commit, per reading (and edge receipt to commit): a reading of
    simulated time ``ts`` left the plant at wall time ``started_at + (ts - plant start) / speed``
    (the simulator reports when tick 0 was); it was committed when its file was (the file is
    written and fsynced just before its commit record, so its mtime is the commit time to a few
    milliseconds). Readings whose device clock was skewed are left out (their ``ts`` is not when they were sent).

    Also split: readings inside a recorded outage of their source (a gap record: the edge or the
    PLC was away, and they arrived late from the PLC's history or the edge's spool) and the rest."""
    from urllib.parse import unquote

    import pyarrow.parquet as pq

    from ingest.commit_record import read_snapshot
    from ledger import Ledger
    from qctrace.app import gap_windows
    from qctrace.ledger_ops import ledger_path

    snap = read_snapshot(data / "ingest")
    with Ledger(ledger_path(data), readonly=True) as led:
        gaps = gap_windows(led)
    start_ns = int(scenario.plant.start.timestamp()) * 10**9
    lat, inside, piped, sent_at = [], [], [], []
    for f in snap.files if snap else []:
        path = data / "readings" / f.path
        mtime = path.stat().st_mtime
        site, line = (unquote(p.split("=", 1)[1]) for p in f.path.split("/")[:2])
        t = pq.read_table(path, columns=["ts", "recv_ts", "device"])
        ts = t.column("ts").cast(pa.int64()).to_numpy()
        dev = t.column("device").cast(pa.string()).to_numpy(zero_copy_only=False)
        sent = started_at + (ts - start_ns) / 1e9 / speed
        lat.append(mtime - sent)
        sent_at.append(sent)
        piped.append(mtime - t.column("recv_ts").cast(pa.int64()).to_numpy() / 1e9)
        mask = np.zeros(len(ts), dtype=bool)
        for d in np.unique(dev).tolist():
            for a, b in gaps.get(f"{site}/{line}/{d}", ()):
                mask |= (dev == d) & (ts > a) & (ts < b)  # a gap's ends are the readings either side of it
        inside.append(mask)
    if not lat:
        return {}
    a, m, e, w = np.concatenate(lat), np.concatenate(inside), np.concatenate(piped), np.concatenate(sent_at)
    keep = (a > -5) & (a < 3600)  # skewed clocks
    a, m, e, w = a[keep], m[keep], e[keep], w[keep]
    took, recovering = recovery(w, a, [t for t, _ in faults])
    out = {"p50": float(np.percentile(a, 50) * 1e3), "p99": float(np.percentile(a, 99) * 1e3),
           "max": float(a.max() * 1e3), "readings": float(len(a)), "in_outages": float(m.sum()),
           # from the edge's receipt (recv_ts, the edge's clock, the same machine here): qctrace's own
           # part, without the simulated PLCs' publishing and OPC UA on the same two cores
           "p50_from_edge": float(np.percentile(e, 50) * 1e3), "p99_from_edge": float(np.percentile(e, 99) * 1e3)}
    if took:
        out["recovery_p50_s"] = float(np.percentile(took, 50))
        out["recovery_max_s"] = float(max(took))
        out["recovering_share"] = float(recovering.mean())
        if (~recovering).any():
            out["p99_between_faults"] = float(np.percentile(a[~recovering], 99) * 1e3)
    out["over_goal"] = float((a > RECOVERED_S).sum())
    out |= {f"over_goal_after_{k}": float(n) for k, n in late_by_fault(w, a, list(faults)).items()}
    if (~m).any():
        out["p99_outside_outages"] = float(np.percentile(a[~m], 99) * 1e3)
        out["p50_outside_outages"] = float(np.percentile(a[~m], 50) * 1e3)
    return out


def samples_repeated(table: pa.Table) -> int:
    """Rows beyond one per (source, sensor, source time). A sample the edge read twice gets two
    seqs, which exactly-once by (source, seq) cannot see; the plant sends one sample per sensor and
    tick, and a skewed clock is a day off, so in a run no two samples of a sensor share a time."""
    from qctrace.schema import source_keys

    samples = pa.table({"source": source_keys(table), "sensor": table.column("sensor").cast(pa.string()),
                        "ts": table.column("ts").cast(pa.int64())})
    return table.num_rows - samples.group_by(["source", "sensor", "ts"]).aggregate([]).num_rows


def _audit(result: CampaignResult, data: Path, scenario: str) -> None:
    from ledger import Ledger, events
    from qctrace.app import audit_against_truth
    from qctrace.ledger_ops import ledger_path
    from qctrace.schema import source_keys

    table = read_dataset(data / "readings")
    keys = pa.table({"source": source_keys(table), "seq": table.column("seq")})
    result.duplicated = table.num_rows - keys.group_by(["source", "seq"]).aggregate([]).num_rows
    result.samples_repeated = samples_repeated(table)
    counts = keys.group_by(["source"]).aggregate([("seq", "count")])
    result.written = dict(zip(counts.column("source").to_pylist(), counts.column("seq_count").to_pylist(),
                              strict=True))
    ledger = Ledger(ledger_path(data))
    try:
        result.gap_records = sum(1 for _ in ledger.events(kind=events.DATA_GAP))
        plant = load_scenario(scenario).plant
        result.in_gaps, result.unexplained = audit_against_truth(
            data, ledger, table, plant_clock=(int(plant.start.timestamp()) * 10**9, round(plant.tick_s * 1e9)))
    finally:
        ledger.close()
    res = subprocess.run([sys.executable, "-m", "qctrace", "verify", "--data-dir", str(data), "--no-anchors"],
                         capture_output=True, text=True, timeout=300, check=False)
    result.ledger_verified = res.returncode == 0
    result.ledger_message = (res.stderr or res.stdout).strip().splitlines()[-1] if not result.ledger_verified else ""
