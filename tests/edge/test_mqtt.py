"""Edge → Mosquitto → ingest with commit acknowledgements, against a real broker this test starts.

Every test counts at the far end: the Parquet dataset holds each (source, seq) exactly once, and
the edge's spool is empty only because ingest acknowledged the commits over MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.forward import Forwarder
from edge.mqtt import MqttLink, MqttSource
from edge.spool import Spool
from ingest import Ingest, read_dataset
from ingest.receiver import Receiver
from qctrace import wire
from qctrace.broker import LocalBroker
from qctrace.config import MqttConfig, load_config
from qctrace.schema import batch_from_columns

T0 = 1_793_599_200 * 10**9
N_PER = 100


def batch(i: int, device: str = "plc1"):
    seqs = range(i * N_PER, (i + 1) * N_PER)
    n = len(seqs)
    return batch_from_columns({
        "ts": [T0 + s * 10**8 for s in seqs], "recv_ts": [T0] * n, "site": ["plant1"] * n, "line": ["line1"] * n,
        "device": [device] * n, "sensor": ["weight"] * n, "value": [500.0] * n, "quality": [0] * n,
        "seq": list(seqs), "lot": ["L-1"] * n,
    })


@pytest.fixture
def broker(tmp_path):
    with LocalBroker(tmp_path / "broker") as b:
        yield b


class Plant:
    """One edge node and one ingest worker, both on the loop of the test."""

    def __init__(self, tmp_path, port: int, *, resend_after_s: float = 2.0, window: int = 64,
                 receive_maximum: int = 64, node: str = "e1") -> None:
        self.cfg = MqttConfig(port=port, receive_maximum=receive_maximum, keepalive_s=5)
        self.tmp = tmp_path
        self.node = node
        self.window = window
        self.resend_after_s = resend_after_s
        self.ingest_delay_s = 0.0

    async def __aenter__(self) -> Plant:
        conf = load_config(None)
        self.ingest = Ingest(self.tmp / "data", conf.detect, conf.sink.model_copy(update={"flush_age_s": 0.2}),
                             lambda facts: None)
        self.source = await MqttSource(self.cfg, "w1").start()
        self.receiver = Receiver(self.ingest, self.source.ack, self.tmp / "data" / "quarantine")
        self.spool = Spool(self.tmp / "spool", fsync=False)
        self.link = await MqttLink(self.cfg, self.node).start()
        self.fwd = Forwarder(self.node, self.spool, self.link, window=self.window, resend_after_s=self.resend_after_s)
        self.stop = asyncio.Event()
        self.fwd_task = asyncio.create_task(self.fwd.run(self.stop))
        self.ingest_task = asyncio.create_task(self.ingest.run(self._slow(self.receiver.items(self.source.receive()))))
        return self

    async def _slow(self, items):
        async for item in items:
            if self.ingest_delay_s:
                await asyncio.sleep(self.ingest_delay_s)
            yield item

    async def settle(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while (self.spool.depth or self.fwd.inflight) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert self.spool.depth == 0, f"{self.spool.depth} records never acknowledged"

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        await self.fwd_task
        await self.link.close()
        await self.source.close()
        await self.ingest_task
        self.spool.close()

    def seqs(self) -> list[int]:
        return sorted(read_dataset(self.tmp / "data" / "readings").column("seq").to_pylist())


async def test_batches_flow_through_the_broker_and_acks_empty_the_spool(tmp_path, broker):
    async with Plant(tmp_path, broker.port) as p:
        for i in range(30):
            await p.fwd.publish(batch(i))
        await p.settle()
        assert p.link.acks_received > 0 and p.fwd.stats.acked == 30
    assert p.seqs() == list(range(30 * N_PER))


async def test_broker_killed_and_restarted_while_publishing_loses_and_doubles_nothing(tmp_path, broker):
    async with Plant(tmp_path, broker.port, resend_after_s=1.0) as p:
        for i in range(20):
            await p.fwd.publish(batch(i))
        await asyncio.sleep(0.2)
        broker.stop(hard=True)  # a crash: whatever Mosquitto had not saved is gone
        for i in range(20, 40):
            await p.fwd.publish(batch(i))  # the readers go on: the spool takes it
        await asyncio.sleep(0.5)
        broker.start()
        await p.settle(timeout_s=60)
        dupes = p.ingest.stats.duplicates
    seqs = p.seqs()
    assert seqs == list(range(40 * N_PER)), "every reading once, none missing"
    assert len(seqs) == len(set(seqs))
    assert dupes >= 0  # resends may or may not have raced the outage; either way none was written twice


async def test_a_crashed_broker_is_rejoined_within_its_first_retries_and_the_edge_resends_at_once(tmp_path, broker):
    """After a broker crash the edge reconnects within a few of its short first retries and
    resends what was in flight then, without waiting ``resend_after_s`` (here ten minutes): a
    crashed broker may have dropped what it had accepted, and the commit acknowledgements of
    what ingest committed meanwhile were lost with it. Nothing in this test announces an ingest
    worker, so only the link's own reconnect can have started the resend."""
    spool = Spool(tmp_path / "spool", fsync=False)
    link = await MqttLink(MqttConfig(port=broker.port, keepalive_s=5), "e1").start()
    fwd = Forwarder("e1", spool, link, resend_after_s=600.0)
    restored: list[float] = []
    link.on_inflight_lost = lambda: (restored.append(time.monotonic()), fwd.resend_now())
    stop = asyncio.Event()
    task = asyncio.create_task(fwd.run(stop, linger_s=0.0))
    try:
        for i in range(3):
            await fwd.publish(batch(i))  # nobody consumes: all three stay in flight, unacknowledged
        while fwd.stats.sent < 3:
            await asyncio.sleep(0.02)
        assert not restored, "the first connection is not a reconnect"
        broker.stop(hard=True)
        await asyncio.sleep(1.2)  # paho's default retries (at 1 s, then 3 s) would come 1.7 s after it is back
        broker.start()
        back = time.monotonic()
        while not restored and time.monotonic() - back < 10:
            await asyncio.sleep(0.02)
        assert restored, "the link never reconnected"
        assert restored[0] - back < 1.0, f"reconnected {restored[0] - back:.2f} s after the broker was back"
        while fwd.stats.resent < 3 and time.monotonic() - back < 10:
            await asyncio.sleep(0.02)
        assert fwd.stats.resent == 3, "what was in flight went again at once, not after resend_after_s"
    finally:
        stop.set()
        await task
        await link.close()
        spool.close()


async def test_a_slow_worker_behind_a_tiny_broker_queue_loses_nothing(tmp_path):
    """Mosquitto drops QoS 1 messages for a slow subscriber once its queue is full (here 5
    messages; the default is 1000). The spool keeps each payload until ingest's commit
    acknowledgement and sends it again, so the dataset is still complete."""
    with LocalBroker(tmp_path / "broker", extra="max_queued_messages 5\n") as b:
        async with Plant(tmp_path, b.port, resend_after_s=0.7, window=60, receive_maximum=2) as p:
            p.ingest_delay_s = 0.01
            for i in range(60):
                await p.fwd.publish(batch(i))
            await p.settle(timeout_s=90)
            resent = p.fwd.stats.resent
    assert p.seqs() == list(range(60 * N_PER))
    assert resent > 0, "the broker should have dropped something for the resend to recover"


async def test_malformed_payloads_are_quarantined_and_the_rest_flows(tmp_path, broker):
    async with Plant(tmp_path, broker.port) as p:
        raw = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        raw.connect("127.0.0.1", broker.port)
        raw.loop_start()
        good = wire.encode("e1", 999, batch(0))
        for bad in (b"GET / HTTP/1.1 not a payload at all", good[:4] + bytes([2]) + good[5:], good[:80]):
            raw.publish("qctrace/v1/plant1/line1/e1/readings", bad, qos=1).wait_for_publish(5)
        raw.loop_stop()
        raw.disconnect()
        for i in range(3):
            await p.fwd.publish(batch(i))
        await p.settle()
        deadline = time.monotonic() + 10
        while p.receiver.quarantined < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    assert p.receiver.quarantined == 3
    reasons = sorted(f.read_text() for f in (tmp_path / "data" / "quarantine").glob("*.txt"))
    assert any("not a qctrace payload" in r for r in reasons)
    assert any("version 2 is not supported" in r for r in reasons)
    assert len(list((tmp_path / "data" / "quarantine").glob("*.bin"))) == 3  # the bytes are kept
    assert p.seqs() == list(range(3 * N_PER))


_EDGE = """
import asyncio, sys
from edge.mqtt import MqttLink
from qctrace.config import MqttConfig
async def main():
    await MqttLink(MqttConfig(port=int(sys.argv[1])), "dying").start()
    print("up", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


def _retained(port: int, topic: str) -> dict:
    got: list[bytes] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, u, m: got.append(m.payload)
    c.connect("127.0.0.1", port)
    c.subscribe(topic, qos=1)
    c.loop_start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    c.loop_stop()
    c.disconnect()
    assert got, f"nothing retained on {topic}"
    return json.loads(got[-1])


def test_birth_and_death_state_of_an_edge_node(broker):
    proc = subprocess.Popen([sys.executable, "-c", _EDGE, str(broker.port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        assert _retained(broker.port, "qctrace/v1/_edge/dying/state")["state"] == "online"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while _retained(broker.port, "qctrace/v1/_edge/dying/state")["state"] != "offline":
            assert time.monotonic() < deadline, "the last will never came"
            time.sleep(0.2)
    finally:
        proc.kill()


_WORKER = """
import asyncio, sys
from edge.mqtt import MqttSource
from qctrace.config import MqttConfig
async def main():
    src = await MqttSource(MqttConfig(port=int(sys.argv[1])), "doomed", by_node=True).start()
    src.take("e1")
    await asyncio.sleep(0.5)  # the subscription is in place
    print("up", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_a_killed_workers_share_of_a_node_goes_to_the_live_worker_not_to_its_ghost(broker):
    """kill -9 of an ingest worker: the broker must not keep its shared subscription (a session
    kept for an hour did, and Mosquitto dealt every other payload of the node to the dead
    worker's queue until it restarted: seconds of the node's readings stalled per kill)."""
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(broker.port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        cfg = MqttConfig(port=broker.port)
        live = await MqttSource(cfg, "live", by_node=True).start()
        live.take("e1")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        await asyncio.sleep(0.5)  # the broker has seen the connection close
        link = await MqttLink(cfg, "e1").start()
        for i in range(20):
            await link.send(f"payload {i}".encode(), "plant1/line1")
        got: list[bytes] = []

        async def take() -> None:
            async for payload in live.receive():
                got.append(payload)
                if len(got) == 20:
                    return

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(take(), 5.0)
        assert sorted(got) == sorted(f"payload {i}".encode() for i in range(20)), \
            f"the live worker got {len(got)} of 20 payloads: the rest went to the dead worker's session"
        await link.close()
        await live.close()
    finally:
        proc.kill()
