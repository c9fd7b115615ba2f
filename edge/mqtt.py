"""MQTT between edge and ingest processes (paho-mqtt, MQTT 5, QoS 1, persistent sessions).

Topic tree (a Unified Namespace under ``prefix``, ``qctrace/v1`` by default)::

    {prefix}/{site}/{line}/{node}/readings   payloads (qctrace.wire), edge → ingest
    {prefix}/_edge/{node}/state              retained birth/death: "online", or the will "offline"
    {prefix}/_ingest/{worker}/state          the same for ingest workers
    {prefix}/_ack/{node}                     ingest's commit acknowledgements (JSON list of rids)

Ingest workers read through MQTT 5 shared subscriptions, ``$share/{group}/{prefix}/+/+/{node}/readings``:
one per edge node, taken by the worker that holds the node (``ingest.leases``), so a node's
readings reach one worker at a time whatever the broker's sharing strategy (Mosquitto deals
round robin). A lone ``MqttSource`` without leases takes every node (``+`` for the node).

paho runs its network loop in a thread; everything it delivers is handed to the
asyncio loop with ``call_soon_threadsafe``. Ingest acknowledges a message to the broker (manual
ack) only when it takes it off its queue, so with MQTT 5's Receive Maximum the broker never has
more than that many messages in flight to a slow worker: the rest waits in the broker's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import stat
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.forward import Link
from qctrace.config import MqttConfig
from qctrace.errors import ConfigError, TransportError

log = logging.getLogger(__name__)


def readings_topic(cfg: MqttConfig, site_line: str, node: str) -> str:
    return f"{cfg.prefix}/{site_line}/{node}/readings"


def mqtt_password(cfg: MqttConfig) -> str | None:
    """From a 0600 file or the environment, never the TOML; the value is never logged."""
    if cfg.password_file is not None:
        path = cfg.password_file
        try:
            st = path.stat()
        except OSError as exc:
            raise ConfigError(f"mqtt.password_file {path}: {exc.strerror}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"mqtt.password_file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o});"
                              f" run: chmod 600 {path}")
        return path.read_text().rstrip("\r\n")
    return os.environ.get(cfg.password_env)


def tls_problem(cfg: MqttConfig, timeout_s: float = 3.0, alert_wait_s: float = 0.3) -> str | None:
    """Why a TLS handshake with the broker fails, in words; paho's network thread only says "no connection".

    Without a client certificate, waits ``alert_wait_s`` for a TLS 1.3 "certificate required" alert,
    which a broker that demands one sends only after the handshake looks complete to the client."""
    ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    if cfg.cert_file:
        ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
    try:
        with socket.create_connection((cfg.host, cfg.port), timeout=timeout_s) as raw, \
                ctx.wrap_socket(raw, server_hostname=cfg.host) as tls:
            if cfg.cert_file is None and alert_wait_s > 0:
                tls.settimeout(alert_wait_s)
                with contextlib.suppress(TimeoutError):
                    tls.recv(1)
            return None
    except ssl.SSLError as exc:
        why = (f"certificate verify failed: {exc.verify_message}" if isinstance(exc, ssl.SSLCertVerificationError)
               else exc.reason or str(exc))
        if "CERTIFICATE_REQUIRED" in str(why).upper():
            why = f"{why} (the broker wants a client certificate: set mqtt.cert_file and mqtt.key_file)"
        return f"TLS handshake refused: {why}" + (f" (CA file {cfg.ca_file})" if cfg.ca_file else "")
    except OSError as exc:
        return f"TLS connection failed: {exc}"


def _client(cfg: MqttConfig, client_id: str, state_topic: str, *, manual_ack: bool = False) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    if cfg.username:
        c.username_pw_set(cfg.username, mqtt_password(cfg))
    if cfg.tls:
        c.tls_set(ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                  certfile=str(cfg.cert_file) if cfg.cert_file else None,
                  keyfile=str(cfg.key_file) if cfg.key_file else None)
    c.will_set(state_topic, json.dumps({"state": "offline", "reason": "connection lost"}), qos=1, retain=True)
    c.reconnect_delay_set(min_delay=cfg.reconnect_min_s, max_delay=cfg.reconnect_max_s)
    c.max_inflight_messages_set(64)
    c.max_queued_messages_set(0)
    return c


def _connect_props(cfg: MqttConfig) -> Properties:
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = cfg.session_expiry_s
    p.ReceiveMaximum = cfg.receive_maximum
    return p


class _Connection:
    """A paho client on its own thread, connected asynchronously, reporting to the asyncio loop."""

    def __init__(self, cfg: MqttConfig, client_id: str, state_topic: str, subscriptions: list[str],
                 on_message: Callable[[mqtt.MQTTMessage], None], *, manual_ack: bool = False,
                 clean_start: bool = False) -> None:
        self.cfg = cfg
        self.state_topic = state_topic
        self.subscriptions = subscriptions  # renewed on every (re)connect: a clean session has none
        self.clean_start = clean_start
        self.on_message = on_message
        self.loop = asyncio.get_running_loop()
        self.connected = asyncio.Event()
        self.refused: str | None = None
        self._refused = asyncio.Event()  # a refusal (bad password, not authorised) ends start() at once
        self.connects = 0
        self.on_reconnect: Callable[[], None] | None = None  # called on the event loop after a reconnect
        self.client = _client(cfg, client_id, state_topic, manual_ack=manual_ack)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.publish_refused = 0  # PUBACKs with a failure reason (the broker's ACL: "Not authorized")
        self.last_publish_refusal = ""

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            log.error("mqtt.refused broker=%s:%d reason=%s", self.cfg.host, self.cfg.port, reason)
            self.loop.call_soon_threadsafe(self._refused.set)
            return
        self.connects += 1
        if self.connects > 1 and self.on_reconnect is not None:
            self.loop.call_soon_threadsafe(self.on_reconnect)
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        client.publish(self.state_topic, json.dumps({"state": "online", "since": time.time()}), qos=1, retain=True)
        log.info("mqtt.connected broker=%s:%d session_present=%s", self.cfg.host, self.cfg.port,
                 flags.session_present)
        self.loop.call_soon_threadsafe(self.connected.set)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        log.warning("mqtt.disconnected broker=%s:%d reason=%s", self.cfg.host, self.cfg.port, reason)
        self.loop.call_soon_threadsafe(self.connected.clear)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.on_message(msg)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if not getattr(reason, "is_failure", False):
            return
        self.publish_refused += 1
        self.last_publish_refusal = str(reason)
        n = self.publish_refused
        if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th...: loud at first, never a flood
            log.error("mqtt.publish_refused broker=%s:%d reason=%s count=%d user=%s (with the shipped ACL an edge"
                      " node's mqtt.username must be its edge.node)", self.cfg.host, self.cfg.port, reason, n,
                      self.cfg.username or "-")

    async def start(self, timeout_s: float = 10.0) -> None:
        if self.cfg.tls:  # a certificate problem never heals by retrying: say so now, not after the timeout
            problem = await asyncio.get_running_loop().run_in_executor(None, tls_problem, self.cfg)
            if problem and problem.startswith("TLS handshake"):
                raise TransportError(f"mqtt://{self.cfg.host}:{self.cfg.port}: {problem}")
        try:
            self.client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s, clean_start=self.clean_start,
                                      properties=_connect_props(self.cfg))
        except (OSError, ValueError) as exc:
            raise TransportError(f"mqtt://{self.cfg.host}:{self.cfg.port}: cannot connect: {exc}") from None
        self.client.loop_start()
        waits = [asyncio.ensure_future(self.connected.wait()), asyncio.ensure_future(self._refused.wait())]
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        if not self.connected.is_set():
            self.client.loop_stop()
            why = f"the broker refused: {self.refused}" if self.refused else "no broker answered"
            if not self.refused and self.cfg.tls:
                why = await asyncio.get_running_loop().run_in_executor(None, tls_problem, self.cfg) or why
            hint = ("check mqtt.username and its password" if self.refused else
                    "is Mosquitto running? `qctrace` starts one only for local runs")
            raise TransportError(f"mqtt://{self.cfg.host}:{self.cfg.port}: {why} within {timeout_s:g} s"
                                 f" ({hint})") from None

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=1, retain=retain)

    async def close(self) -> None:
        if self.connected.is_set():
            info = self.publish(self.state_topic, json.dumps({"state": "offline", "reason": "stopped"}), retain=True)
            await asyncio.get_running_loop().run_in_executor(None, info.wait_for_publish, 5.0)
        self.client.disconnect()
        self.client.loop_stop()


class MqttLink(Link):
    """The edge side: publishes spooled payloads, receives commit acknowledgements."""

    def __init__(self, cfg: MqttConfig, node: str) -> None:
        self.cfg = cfg
        self.node = node
        self.acks_received = 0
        self._conn: _Connection | None = None

    async def start(self) -> MqttLink:
        self._conn = _Connection(self.cfg, f"qctrace-edge-{self.node}", f"{self.cfg.prefix}/_edge/{self.node}/state",
                                 [f"{self.cfg.prefix}/_ack/{self.node}", f"{self.cfg.prefix}/_ingest/+/state"],
                                 self._on_message)
        # A broker that went away (killed, restarted, failed over) may have taken what it had
        # accepted and not yet delivered, and the acknowledgements sent meanwhile.
        self._conn.on_reconnect = self._inflight_lost
        await self._conn.start()
        return self

    def _inflight_lost(self) -> None:
        if self.on_inflight_lost is not None:
            self.on_inflight_lost()

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/state"):
            if msg.retain:  # the state as it was before we subscribed, not a worker starting now
                return
            # An ingest worker (re)started: what it held uncommitted when it died will never be
            # acknowledged, so send everything in flight again now instead of after the timeout.
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                state = json.loads(msg.payload)
                if state.get("state") == "online" and self.node in state.get("nodes", [self.node]):
                    self._conn.loop.call_soon_threadsafe(self._inflight_lost)
            return
        try:
            rids = [int(r) for r in json.loads(msg.payload)]
        except (ValueError, TypeError):
            log.error("mqtt.bad_ack topic=%s bytes=%d", msg.topic, len(msg.payload))
            return
        self.acks_received += 1
        if self.on_ack is not None:
            self._conn.loop.call_soon_threadsafe(self.on_ack, rids)

    @property
    def up(self) -> bool:
        return self._conn is not None and self._conn.connected.is_set()

    @property
    def publish_refused(self) -> int:
        return self._conn.publish_refused if self._conn is not None else 0

    async def send(self, payload: bytes, topic_hint: str) -> None:
        info = self._conn.publish(readings_topic(self.cfg, topic_hint, self.node), payload)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:  # not connected right now: the forwarder resends it later
            log.info("mqtt.publish_deferred rc=%s", info.rc)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


class MqttSource:
    """The ingest side: payloads from shared subscriptions; acknowledgements back to each edge.

    With ``by_node`` the source reads no node until told to (``take``): the worker learns the edge
    nodes from their retained birth/death state (``nodes``) and takes those it holds. Its session
    starts clean, so subscriptions of an earlier life of the worker (nodes it may no longer hold)
    are gone; what they held in flight is resent by the edges, which keep it until committed.
    """

    def __init__(self, cfg: MqttConfig, worker: str, max_queue: int = 256, by_node: bool = False) -> None:
        self.cfg = cfg
        self.worker = worker
        self.max_queue = max_queue
        self.by_node = by_node
        self.messages = 0
        self.nodes: set[str] = set()  # edge nodes that announced themselves (online or offline)
        self.nodes_changed = asyncio.Event()  # set when a node is first heard of
        self._queue: asyncio.Queue[mqtt.MQTTMessage | None] = asyncio.Queue()
        self._conn: _Connection | None = None

    def topic(self, node: str) -> str:
        return f"$share/{self.cfg.group}/{self.cfg.prefix}/+/+/{node}/readings"

    @property
    def subscription(self) -> str:
        return self.topic("{node}" if self.by_node else "+")

    @property
    def _state_prefix(self) -> str:
        return f"{self.cfg.prefix}/_edge/"

    async def start(self) -> MqttSource:
        subs = [f"{self._state_prefix}+/state"] if self.by_node else [self.topic("+")]
        # By node, the session ends with the connection (expiry 0): a worker killed with a session
        # kept keeps its shared subscriptions at the broker, which deals every other payload of
        # its nodes to that dead session until it expires. Nothing is lost by not keeping it: the
        # session starts clean anyway, and the edges resend what was in flight.
        cfg = self.cfg.model_copy(update={"session_expiry_s": 0}) if self.by_node else self.cfg
        self._conn = _Connection(cfg, f"qctrace-ingest-{self.worker}", f"{self.cfg.prefix}/_ingest/{self.worker}/state",
                                 subs, self._on_message, manual_ack=True, clean_start=self.by_node)
        await self._conn.start()
        return self

    def take(self, node: str) -> None:
        """Read ``node`` from now on, and ask its edge to resend what it has in flight now rather
        than after its resend timeout (it went to the worker that held the node before)."""
        t = self.topic(node)
        if t not in self._conn.subscriptions:
            self._conn.subscriptions.append(t)
            self._conn.client.subscribe(t, qos=1)
        self._conn.publish(f"{self.cfg.prefix}/_ingest/{self.worker}/state",
                           json.dumps({"state": "online", "since": time.time(), "nodes": [node]}))

    def drop(self, node: str) -> None:
        """Stop reading ``node`` (handed to another worker)."""
        t = self.topic(node)
        if t in self._conn.subscriptions:
            self._conn.subscriptions.remove(t)
            self._conn.client.unsubscribe(t)

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith(self._state_prefix):
            node = msg.topic[len(self._state_prefix):].rpartition("/")[0]
            self._conn.loop.call_soon_threadsafe(self._heard_of, node)
            self._conn.client.ack(msg.mid, msg.qos)
            return
        self._conn.loop.call_soon_threadsafe(self._queue.put_nowait, msg)

    def _heard_of(self, node: str) -> None:
        if node not in self.nodes:
            self.nodes.add(node)
            self.nodes_changed.set()

    def ack(self, node: str, rids: list[int]) -> None:
        """Ingest committed these records: tell their edge node so its spool can let them go."""
        self._conn.publish(f"{self.cfg.prefix}/_ack/{node}", json.dumps(rids))

    async def receive(self) -> AsyncIterator[bytes]:
        while True:
            msg = await self._queue.get()
            if msg is None:
                return
            self.messages += 1
            # Acknowledged to the broker once taken: the broker's Receive Maximum then bounds how
            # many it pushes to a worker that is behind. The edge's spool still holds the payload
            # until the commit acknowledgement, so a crash here loses nothing.
            self._conn.client.ack(msg.mid, msg.qos)
            yield msg.payload

    async def close(self) -> None:
        await self._queue.put(None)
        if self._conn is not None:
            await self._conn.close()
