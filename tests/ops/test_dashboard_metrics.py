"""Dashboard page renders are counted on the Streamlit process's /metrics (Streamlit's AppTest)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from streamlit.testing.v1 import AppTest

from qctrace.broker import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_page_renders_are_counted(tmp_path):
    port = free_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text((ROOT / "qctrace" / "demo.toml").read_text() + f"\n[metrics]\ndashboard_port = {port}\n")
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60)
    at.session_state["data_dir"] = str(tmp_path / "empty-data")
    at.session_state["config_path"] = str(cfg)
    at.session_state["user"] = {"name": "admin", "role": "admin"}
    at.run()
    at.run()
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    renders = {s.labels["page"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "qctrace_dashboard_page_renders_total"}
    assert sum(renders.values()) == 2, renders
    health = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read().decode()
    assert '"process": "dashboard"' in health and '"status": "ok"' in health
