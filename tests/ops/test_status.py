"""`qctrace status` against real /health endpoints and a real data directory."""

from __future__ import annotations

import asyncio
import json

from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from edge.spool import Spool
from ingest import Ingest
from qctrace.cli import cli
from qctrace.config import load_config
from qctrace.metrics import DEGRADED, DOWN, Health, MetricsServer
from qctrace.schema import batch_from_columns

T0 = 1_793_599_200 * 10**9


def test_status_table_and_exit_code(tmp_path):
    ok, bad = Health("edge e1"), Health("ingest w1")
    ok.add("spool", lambda: [(DEGRADED, "spool oldest record 312 s old (40 records waiting)")])
    bad.add("sink", lambda: [(DOWN, "commits failing: no space left on device")])
    with MetricsServer(CollectorRegistry(), ok, port=0) as s1, MetricsServer(CollectorRegistry(), bad, port=0) as s2:
        r = CliRunner().invoke(cli, ["status", "--url", s1.url, "--url", s2.url])
        assert r.exit_code == 1, r.output  # ingest says down
        lines = r.output.splitlines()
        edge = next(ln for ln in lines if ln.startswith("edge e1"))
        assert "degraded" in edge and "spool: spool oldest record 312 s old" in edge
        ingest = next(ln for ln in lines if ln.startswith("ingest w1"))
        assert "down" in ingest and "commits failing: no space left on device" in ingest

        r = CliRunner().invoke(cli, ["status", "--url", s1.url, "--json"])
        assert r.exit_code == 0, r.output  # degraded is not down
        assert json.loads(r.output)["processes"][0]["status"] == "degraded"


def test_status_unreachable_url_is_down(tmp_path):
    from qctrace.broker import free_port
    url = f"http://127.0.0.1:{free_port()}"
    r = CliRunner().invoke(cli, ["status", "--url", url, "--data-dir", str(tmp_path)])
    assert r.exit_code == 1
    assert "not running" in r.output and "no answer" in r.output and "nothing answers" in r.output


def test_status_data_dir_view_when_nothing_runs(tmp_path):
    conf = load_config(None)
    data = tmp_path / "data"
    ingest = Ingest(data, conf.detect, conf.sink, lambda facts: None)
    n = 20
    ingest.process(batch_from_columns({
        "ts": [T0 + i for i in range(n)], "recv_ts": [T0] * n, "site": ["p"] * n, "line": ["l"] * n,
        "device": ["d"] * n, "sensor": ["s"] * n, "value": [1.0] * n, "quality": [0] * n, "seq": list(range(n)),
        "lot": ["L"] * n}))
    ingest.finish()
    spool = Spool(data / "edge" / "e7" / "spool", fsync=False)

    async def put():
        spool.append(lambda rid: b"x" * 1000)
    asyncio.run(put())
    spool.close()
    cfg = tmp_path / "c.toml"
    ports = "".join(f"{p}_port = 0\n" for p in ("demo", "edge", "ingest", "sim", "dashboard"))
    cfg.write_text(f'data_dir = "{data}"\n[metrics]\n{ports}')
    r = CliRunner().invoke(cli, ["status", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "last commit:" in r.output and "s ago" in r.output.split("last commit:")[1].splitlines()[0]
    assert "spool e7:" in r.output and "1 segment(s)" in r.output
    assert "ledger:           none yet" in r.output
