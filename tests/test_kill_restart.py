"""Kill -9 the ingest process at 8 random instants while the simulated plant runs; restart it each
time; then compare Parquet with the simulator's own record of what it sent.

Real processes throughout: `qctrace sim` (OPC UA over TCP, a logger on a pty), a Mosquitto broker,
`qctrace edge` and `qctrace ingest` joined by MQTT. The oracle is independent of ingest: the
simulator's ground truth. Nothing may be missing, nothing doubled.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from firmware_sim.scenario import load_scenario, shipments_of
from ingest.sink import read_dataset
from ledger import Ledger
from qctrace.app import audit_against_truth
from qctrace.broker import LocalBroker
from qctrace.ledger_ops import ledger_path
from qctrace.schema import source_keys

pytestmark = pytest.mark.e2e


def _spawn(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qctrace", *args], start_new_session=True, **kw)


def _config(path, data, broker_port: int, ready: dict) -> None:
    sh = shipments_of(load_scenario("demo"))[0]
    endpoints = ", ".join(json.dumps(e) for e in ready["opcua"])
    path.write_text(f"""
data_dir = "{data}"
[plant]
scenario = "demo"
[edge]
node = "edge1"
opcua_endpoints = [{endpoints}]
[edge.opcua]
security_policy = "None"   # the simulator's plain endpoint, on loopback, for this test only
[[edge.serial.devices]]
port = "{ready['serial'][sh.id]}"
site = "coldchain"
line = "{sh.id}"
device = "{sh.logger}"
lot = "{sh.lot}"
[mqtt]
port = {broker_port}
[spool]
resend_after_s = 3.0
[sink]
flush_age_s = 0.5
""")


def _run_with_kills(tmp_path, victim: str, kills: int, seed: int) -> tuple[int, list[int]]:
    """The plant, a broker, one edge and one ingest process; ``victim`` ("ingest" or "edge") is
    killed with SIGKILL ``kills`` times at random instants of its life and restarted each time.
    Returns what the simulator produced and the committed row count at each kill."""
    rng = random.Random(seed)
    data = tmp_path / "data"
    conf = tmp_path / "qctrace.toml"
    committed_at_kill: list[int] = []
    with LocalBroker(tmp_path / "broker") as broker:
        sim = _spawn("sim", "demo", "--seed", "7", "--speed", "20", "--truth-dir", str(data / "truth"),
                     "--dev-dir", str(data / "dev"), "--control", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     text=True)
        procs = [sim]
        try:
            ready = json.loads(sim.stdout.readline())
            assert ready["event"] == "ready"
            _config(conf, data, broker.port, ready)
            running = {}
            for name, ready_text in (("ingest", "ingest w1: $share/"), ("edge", " readers open ")):
                running[name] = _spawn(name, str(conf), stdout=subprocess.PIPE, text=True)
                procs.append(running[name])
                # connected, subscribed and reading before the plant starts
                assert ready_text in running[name].stdout.readline()
            sim.stdin.write("start\n")
            sim.stdin.flush()
            for k in range(kills):
                # a random instant in the life of a process that is up: mid-batch, mid-commit,
                # mid-append, between a commit and its acknowledgement...
                time.sleep(rng.uniform(0.1, 2.0))
                os.kill(running[victim].pid, signal.SIGKILL)
                running[victim].wait()
                committed_at_kill.append(read_dataset(data / "readings").num_rows)
                with open(tmp_path / f"{victim}-{k + 1}.log", "w") as log:  # kept for diagnosis
                    running[victim] = _spawn("-v", victim, str(conf), stdout=subprocess.PIPE, stderr=log, text=True)
                procs.append(running[victim])
                running[victim].stdout.readline()
            sim.stdin.write("stop\n")
            sim.stdin.flush()
            stopped = json.loads(sim.stdout.readline())
            assert stopped["event"] == "stopped"
            produced = sum(stopped["produced"].values())
            time.sleep(3.0)  # the last readings through the edge, a commit and its acknowledgement
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (data / "edge" / "edge1" / "spool").exists():
                spool_empty = not any(p.stat().st_size for p in (data / "edge" / "edge1" / "spool").glob("*.qsp"))
                if spool_empty or read_dataset(data / "readings").num_rows >= produced:
                    break
                time.sleep(0.5)
            for name in ("edge", "ingest"):
                running[name].send_signal(signal.SIGTERM)
                assert running[name].wait(60) == 0
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    return produced, committed_at_kill


def _audit(data) -> tuple[pa.Table, dict, dict]:
    table = read_dataset(data / "readings")
    keys = pa.table({"source": source_keys(table), "seq": table.column("seq")})
    distinct = keys.group_by(["source", "seq"]).aggregate([]).num_rows
    assert table.num_rows == distinct, f"{table.num_rows - distinct} readings written twice"
    ledger = Ledger(ledger_path(data))
    in_gaps, unexplained = audit_against_truth(data, ledger, table)
    ledger.close()
    return table, in_gaps, unexplained


def test_ingest_killed_at_8_random_instants_loses_and_doubles_nothing(tmp_path):
    """(The distributed campaign, tests/test_campaign.py, kills two workers many more times.)"""
    produced, committed_at_kill = _run_with_kills(tmp_path, "ingest", 8, seed=20261124)
    # the kills fell while data was being committed, not all before the first commit
    assert len(set(committed_at_kill)) >= 3, committed_at_kill
    table, in_gaps, unexplained = _audit(tmp_path / "data")
    assert table.num_rows == produced, f"produced {produced}, written {table.num_rows}"
    assert unexplained == {}, f"readings missing with no gap record: {unexplained}"
    assert in_gaps == {}
    assert pc.sum(pc.is_null(table.column("lot"))).as_py() < table.num_rows
