"""The fault campaign: the distributed pipeline under random faults, checked against ground truth.

Real processes: `qctrace sim` (OPC UA over TCP, loggers on ptys), a private Mosquitto, `qctrace
edge` and `qctrace ingest` joined by MQTT. While the plant runs, a seeded injector picks faults at
random instants: SIGKILL of the ingest worker, SIGKILL of the edge node, a broker crash (SIGKILL)
and restart. Afterwards the oracle, which is independent of ingest, compares the simulator's own
record of what it sent with Parquet: per source, readings produced, written, missing but inside a
recorded gap, missing with no explanation (must be 0) and written twice (must be 0); then the
ledger is verified. As Jepsen and SQLite do it: the faults are random, the check is exhaustive.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pyarrow as pa

from firmware_sim.scenario import COLDCHAIN_SITE, load_scenario, shipments_of, streams_of
from ingest.sink import read_dataset
from qctrace.broker import LocalBroker
from qctrace.errors import QctraceError

FAULTS = ("kill_ingest", "kill_edge", "crash_broker", "restart_plc", "unplug_logger")
PROCESS_FAULTS = ("kill_ingest", "kill_edge", "crash_broker")
"""Injected by the campaign at random real instants; the others are scheduled inside the simulator
(at random simulated instants drawn from the seed), because only it can stop a PLC or pull a cable."""
READY = {"ingest": "ingest w1: $share/", "edge": " readers open "}


@dataclass
class CampaignResult:
    seed: int
    duration_s: float
    faults: Counter = field(default_factory=Counter)
    produced: dict[str, int] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)
    in_gaps: dict[str, int] = field(default_factory=dict)
    unexplained: dict[str, int] = field(default_factory=dict)
    duplicated: int = 0
    gap_records: int = 0
    ledger_verified: bool = False
    ledger_message: str = ""

    @property
    def ok(self) -> bool:
        return not self.unexplained and self.duplicated == 0 and self.ledger_verified

    def lines(self) -> list[str]:
        f = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"
        out = [f"seed {self.seed}: {self.duration_s:.0f} s, faults: {f}",
               f"  {'source':<34}{'produced':>10}{'written':>10}{'in gaps':>10}{'missing':>10}"]
        cols = (self.produced, self.written, self.in_gaps, self.unexplained)
        for src in sorted(set(self.produced) | set(self.written)):
            out.append(f"  {src:<34}" + "".join(f"{c.get(src, 0):>10}" for c in cols))
        out.append(f"  {'total':<34}" + "".join(f"{sum(c.values()):>10}" for c in cols))
        out.append(f"  duplicated {self.duplicated}, gap records {self.gap_records}, ledger "
                   + ("verified" if self.ledger_verified else f"NOT verified: {self.ledger_message}")
                   + ("  -> PASS" if self.ok else "  -> FAIL"))
        return out


def _spawn(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qctrace", *args], start_new_session=True, **kw)


def _write_config(path: Path, data: Path, scenario: str, broker_port: int, ready: dict) -> None:
    endpoints = ", ".join(json.dumps(e) for e in ready["opcua"])
    serial = ""
    for sh in shipments_of(load_scenario(scenario)):
        port = ready["serial"].get(sh.id)
        if port:
            serial += (f'[[edge.serial.devices]]\nport = {json.dumps(port)}\nsite = "{COLDCHAIN_SITE}"\n'
                       f'line = {json.dumps(sh.id)}\ndevice = {json.dumps(sh.logger)}\nlot = {json.dumps(sh.lot)}\n')
    path.write_text(f"""data_dir = {json.dumps(str(data))}
[plant]
scenario = {json.dumps(scenario)}
[edge]
node = "edge1"
opcua_endpoints = [{endpoints}]
[edge.opcua]
security_policy = "None"   # the simulator's plain endpoint on loopback; the campaign tests faults, not TLS
{serial}[mqtt]
port = {broker_port}
[spool]
resend_after_s = 3.0
[sink]
flush_age_s = 0.5
""")


class _Stage:
    """One restartable process of the pipeline, its output kept for diagnosis."""

    def __init__(self, name: str, conf: Path, logs: Path) -> None:
        self.name = name
        self.conf = conf
        self.logs = logs
        self.starts = 0
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        self.starts += 1
        with open(self.logs / f"{self.name}-{self.starts}.log", "w") as log:
            self.proc = _spawn("-v", self.name, str(self.conf), stdout=subprocess.PIPE, stderr=log, text=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise QctraceError(f"campaign: {self.name} exited while starting (see {self.logs})")
            if READY[self.name] in line:
                return
        raise QctraceError(f"campaign: {self.name} did not start within {timeout_s} s")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return 0 if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def run_campaign(work: Path, *, seed: int, duration_s: float, faults: tuple[str, ...] = FAULTS,
                 scenario: str = "demo", speed: float = 20.0, mean_interval_s: float = 2.0,
                 say: Callable[[str], None] = lambda s: None) -> CampaignResult:
    """One seeded run: the plant under random faults for ``duration_s``, then the oracle."""
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise QctraceError(f"campaign: unknown fault(s) {sorted(unknown)}; known: {', '.join(FAULTS)}")
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    data, conf, logs = work / "data", work / "qctrace.toml", work / "logs"
    logs.mkdir(exist_ok=True)
    result = CampaignResult(seed, duration_s)
    scenario = _with_device_faults(scenario, faults, work / "scenario.toml", rng, duration_s * speed, result.faults)
    runtime_faults = tuple(f for f in faults if f in PROCESS_FAULTS)
    with LocalBroker(work / "broker") as broker:
        sim = _spawn("sim", scenario, "--seed", str(seed), "--speed", str(speed), "--truth-dir",
                     str(data / "truth"), "--dev-dir", str(data / "dev"), "--control", stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True)
        stages = {n: _Stage(n, conf, logs) for n in ("ingest", "edge")}
        try:
            ready = json.loads(sim.stdout.readline())
            _write_config(conf, data, scenario, broker.port, ready)
            for s in stages.values():
                s.start()
            sim.stdin.write("start\n")
            sim.stdin.flush()
            t0 = time.monotonic()
            while time.monotonic() - t0 < duration_s:
                time.sleep(rng.uniform(0.1, 2 * mean_interval_s))
                if not runtime_faults:
                    continue
                fault = rng.choice(runtime_faults)
                result.faults[fault] += 1
                say(f"  {time.monotonic() - t0:6.1f} s  {fault}")
                if fault == "crash_broker":
                    broker.restart(hard=True, down_s=rng.uniform(0.0, 1.0))
                else:
                    stage = stages[fault.removeprefix("kill_")]
                    stage.kill()
                    stage.start()
            sim.stdin.write("stop\n")
            sim.stdin.flush()
            stopped = json.loads(sim.stdout.readline())
            result.produced = {k: int(v) for k, v in stopped["produced"].items()}
            _settle(data, sum(result.produced.values()))
            for name in ("edge", "ingest"):
                if stages[name].stop() != 0:
                    raise QctraceError(f"campaign: {name} did not stop cleanly (see {logs})")
        finally:
            for s in stages.values():
                if s.proc is not None and s.proc.poll() is None:
                    s.proc.kill()
                    s.proc.wait()
            with contextlib.suppress(BrokenPipeError, OSError):
                sim.stdin.write("quit\n")
                sim.stdin.flush()
            try:
                sim.wait(30)
            except subprocess.TimeoutExpired:
                sim.kill()
    _audit(result, data)
    return result


def _with_device_faults(scenario: str, faults: tuple[str, ...], path: Path, rng: random.Random, sim_s: float,
                        counts: Counter) -> str:
    """The scenario plus PLC restarts and logger unplugs at random simulated instants of the run
    (none in its first and last tenth), as a scenario file of its own; or the scenario unchanged."""
    wanted = [f for f in faults if f in ("restart_plc", "unplug_logger")]
    if not wanted:
        return scenario
    sc = load_scenario(scenario)
    p = Path(scenario)
    if p.suffix == ".toml" and p.exists():
        text = p.read_text()
    else:
        text = resources.files("firmware_sim").joinpath("scenarios", f"{scenario}.toml").read_text()
    targets = {"restart_plc": sorted({s.line_key for s in streams_of(sc) if s.kind == "opcua"}),
               "unplug_logger": [sh.id for sh in shipments_of(sc)]}
    kinds = {"restart_plc": "opcua_server_restart", "unplug_logger": "device_disconnect"}
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
                     f"at_s = {at:.1f}\nduration_s = {rng.uniform(5, 20):.1f}\n")
    path.write_text(text + "".join(extra))
    return str(path)


def _settle(data: Path, produced: int, timeout_s: float = 90.0) -> None:
    """Wait until the edge's spool is empty (everything committed) or the dataset stops growing."""
    spool = data / "edge" / "edge1" / "spool"
    deadline = time.monotonic() + timeout_s
    last, still = -1, 0
    while time.monotonic() < deadline:
        time.sleep(1.0)
        rows = read_dataset(data / "readings").num_rows
        empty = not any(p.stat().st_size for p in spool.glob("*.qsp"))
        if rows >= produced or (empty and rows == last):
            return
        still = still + 1 if rows == last else 0
        if still >= 15:
            return
        last = rows


def _audit(result: CampaignResult, data: Path) -> None:
    from ledger import Ledger, events
    from qctrace.app import audit_against_truth
    from qctrace.ledger_ops import ledger_path
    from qctrace.schema import source_keys

    table = read_dataset(data / "readings")
    keys = pa.table({"source": source_keys(table), "seq": table.column("seq")})
    result.duplicated = table.num_rows - keys.group_by(["source", "seq"]).aggregate([]).num_rows
    counts = keys.group_by(["source"]).aggregate([("seq", "count")])
    result.written = dict(zip(counts.column("source").to_pylist(), counts.column("seq_count").to_pylist(),
                              strict=True))
    ledger = Ledger(ledger_path(data))
    try:
        result.gap_records = sum(1 for _ in ledger.events(kind=events.DATA_GAP))
        result.in_gaps, result.unexplained = audit_against_truth(data, ledger, table)
    finally:
        ledger.close()
    res = subprocess.run([sys.executable, "-m", "qctrace", "verify", "--data-dir", str(data), "--no-anchors"],
                         capture_output=True, text=True, timeout=300, check=False)
    result.ledger_verified = res.returncode == 0
    result.ledger_message = (res.stderr or res.stdout).strip().splitlines()[-1] if not result.ledger_verified else ""
