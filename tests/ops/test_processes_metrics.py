"""Real `qctrace sim`, `qctrace edge` and `qctrace ingest` processes with Mosquitto: each serves
/metrics and /health, and `qctrace status` reads them all."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from qctrace.broker import LocalBroker, free_port


def _spawn(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qctrace", *args], start_new_session=True, **kw)


def _samples(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value  # summed over labels
    return out


def test_edge_ingest_sim_serve_metrics_and_status_reads_them(tmp_path):
    data = tmp_path / "data"
    ports = {"edge": free_port(), "ingest": free_port(), "sim": free_port()}
    urls = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
    with LocalBroker(tmp_path / "broker") as broker:
        sim = _spawn("sim", "demo", "--speed", "20", "--dev-dir", str(data / "dev"), "--control",
                     "--metrics-port", str(ports["sim"]), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs = [sim]
        try:
            ready = json.loads(sim.stdout.readline())
            conf = tmp_path / "q.toml"
            conf.write_text(f"""
data_dir = "{data}"
[edge]
node = "edge1"
opcua_endpoints = {json.dumps(ready["opcua"])}
[edge.opcua]
security_policy = "None"   # the simulator's plain endpoint, on loopback, for this test only
[mqtt]
port = {broker.port}
[sink]
flush_age_s = 0.3
[metrics]
edge_port = {ports["edge"]}
ingest_port = {ports["ingest"]}
sim_port = {ports["sim"]}
demo_port = 0
dashboard_port = 0
""")
            for name, ready_text in (("ingest", "ingest w1: $share/"), ("edge", " readers open ")):
                p = _spawn(name, str(conf), stdout=subprocess.PIPE, text=True)
                procs.append(p)
                assert ready_text in p.stdout.readline()
            sim.stdin.write("start\n")
            sim.stdin.flush()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                m = _samples(urls["ingest"])
                if m.get("qctrace_ingest_readings_committed_total", 0) >= 100:
                    break
                time.sleep(0.3)
            edge, ingest, simm = _samples(urls["edge"]), _samples(urls["ingest"]), _samples(urls["sim"])
            assert edge["qctrace_edge_readings_total"] >= ingest["qctrace_ingest_readings_committed_total"] >= 100
            assert edge["qctrace_edge_batches_acknowledged_total"] >= 1
            assert edge["qctrace_edge_broker_connected"] == 1
            assert simm["qctrace_sim_readings_produced_total"] >= edge["qctrace_edge_readings_total"]
            assert ingest["qctrace_ingest_commit_seconds_count"] >= 1
            assert ingest["qctrace_ingest_end_to_end_lag_seconds_count"] >= 1
            assert ingest["qctrace_ingest_detect_seconds_count"] >= 1
            assert ingest["qctrace_ledger_events"] >= 1

            r = subprocess.run([sys.executable, "-m", "qctrace", "status", "--config", str(conf)],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stdout + r.stderr
            rows = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:] if ln.strip()}
            assert "ok" in rows["edge"] or "degraded" in rows["edge"], r.stdout
            assert rows["ingest"].split()[2] in ("ok", "degraded"), r.stdout
            assert rows["sim"].split()[1] == "ok", r.stdout

            # The broker goes away: the edge says so in words; status still exits 0 (degraded, not down).
            broker.stop()
            time.sleep(1.5)
            h = json.loads(urllib.request.urlopen(urls["edge"] + "/health", timeout=5).read())
            assert h["status"] == "degraded"
            assert any(p.startswith("broker disconnected since ") for p in h["components"]["broker"]["problems"])
        finally:
            for p in reversed(procs):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM if p is not sim else signal.SIGKILL)
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
