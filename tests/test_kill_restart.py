"""Kill -9 the ingest process at 20 random instants while the simulated plant runs; restart it each
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


def test_ingest_killed_at_20_random_instants_loses_and_doubles_nothing(tmp_path):
    rng = random.Random(20261124)
    data = tmp_path / "data"
    conf = tmp_path / "qctrace.toml"
    with LocalBroker(tmp_path / "broker") as broker:
        sim = _spawn("sim", "demo", "--seed", "7", "--speed", "20", "--truth-dir", str(data / "truth"),
                     "--dev-dir", str(data / "dev"), "--control", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     text=True)
        procs = [sim]
        try:
            ready = json.loads(sim.stdout.readline())
            assert ready["event"] == "ready"
            _config(conf, data, broker.port, ready)
            ingest = _spawn("ingest", str(conf), stdout=subprocess.PIPE, text=True)
            edge = _spawn("edge", str(conf), stdout=subprocess.PIPE, text=True)
            procs += [ingest, edge]
            # both connected, subscribed and reading before the plant starts
            assert ingest.stdout.readline().startswith("ingest w1: $share/")
            assert " readers open " in edge.stdout.readline()
            sim.stdin.write("start\n")
            sim.stdin.flush()
            kills = 0
            committed_at_kill = []
            for _ in range(20):
                # a random instant in the life of a worker that is up: subscribed, maybe mid-batch,
                # mid-commit or between a commit and its acknowledgement
                time.sleep(rng.uniform(0.1, 2.0))
                os.kill(ingest.pid, signal.SIGKILL)
                ingest.wait()
                committed_at_kill.append(read_dataset(data / "readings").num_rows)
                kills += 1
                with open(tmp_path / f"ingest-{kills}.log", "w") as log:  # kept for diagnosis
                    ingest = _spawn("-v", "ingest", str(conf), stdout=subprocess.PIPE, stderr=log, text=True)
                procs.append(ingest)
                assert ingest.stdout.readline().startswith("ingest w1: $share/")
            sim.stdin.write("stop\n")
            sim.stdin.flush()
            stopped = json.loads(sim.stdout.readline())
            assert stopped["event"] == "stopped"
            produced = sum(stopped["produced"].values())
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                time.sleep(1.0)
                got = read_dataset(data / "readings").num_rows
                if got >= produced:
                    break
            time.sleep(2.0)  # a last commit and its acknowledgement
            for p in (edge, ingest):
                p.send_signal(signal.SIGTERM)
                assert p.wait(60) == 0
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            if sim.poll() is None:
                sim.kill()
    assert kills == 20
    # the kills fell while data was being committed, not all before the first commit
    assert len(set(committed_at_kill)) >= 8, committed_at_kill
    table = read_dataset(data / "readings")
    keys = pa.table({"source": source_keys(table), "seq": table.column("seq")})
    distinct = keys.group_by(["source", "seq"]).aggregate([]).num_rows
    assert table.num_rows == distinct, f"{table.num_rows - distinct} readings written twice"
    assert table.num_rows == produced, f"produced {produced}, written {table.num_rows}"
    ledger = Ledger(ledger_path(data))
    in_gaps, unexplained = audit_against_truth(data, ledger, table)
    ledger.close()
    assert unexplained == {}, f"readings missing with no gap record: {unexplained}"
    assert in_gaps == {}
    assert pc.sum(pc.is_null(table.column("lot"))).as_py() < table.num_rows
