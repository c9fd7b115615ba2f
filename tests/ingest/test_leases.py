"""Node leases and the assignment of edge nodes to ingest workers."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from ingest.leases import assign, live_workers, node_leases
from ingest.sink import ParquetSink

names = st.text("abcdefgh0123456789", min_size=1, max_size=6)


@given(st.sets(names, max_size=40), st.sets(names, min_size=1, max_size=6))
def test_every_node_gets_one_worker_and_the_share_is_even(nodes, workers):
    a = assign(nodes, workers)
    assert set(a) == nodes and set(a.values()) <= workers
    counts = [sum(1 for w in a.values() if w == x) for x in workers]
    assert max(counts) - min(counts) <= 1
    assert assign(sorted(nodes, reverse=True), sorted(workers, reverse=True)) == a  # order of discovery is moot


def test_no_worker_no_assignment():
    assert assign(["e1"], []) == {}


HOLD = """
import sys, time
from pathlib import Path
from ingest.leases import node_leases
from ingest.sink import ParquetSink
d = Path(sys.argv[1])
ParquetSink(d / "readings", d / "ingest", writer="other")
leases = node_leases(d / "ingest")
assert leases.try_take("edge1")
print("held", flush=True)
time.sleep(60)
"""


def test_a_lease_is_exclusive_across_processes_and_freed_when_its_holder_dies(tmp_path):
    mine = ParquetSink(tmp_path / "readings", tmp_path / "ingest", writer="me")
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        leases = node_leases(tmp_path / "ingest")
        assert live_workers(tmp_path / "ingest", "me") == ["me", "other"]
        assert not leases.try_take("edge1") and leases.try_take("edge2")
        p.kill()
        p.wait()
        assert live_workers(tmp_path / "ingest", "me") == ["me"]
        assert leases.try_take("edge1") and leases.held == {"edge1", "edge2"}
        leases.give("edge1")
        assert not leases.holds("edge1")
    finally:
        if p.poll() is None:
            p.kill()
        mine.close()
