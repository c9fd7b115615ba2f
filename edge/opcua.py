"""OPC UA reader: an asyncua client reading the tags of a PLC's ISA-95 address space.

Discovery walks ``Objects/<site>/<line>/<device>/<tag>`` (and each line's ``Lot`` variable); the
configuration may narrow it to NodeIds or ``site/line/device/tag`` patterns. By default the reader
subscribes (monitored items with ``DataChangeTrigger.StatusValueTimestamp``: a stuck sensor still
produces a reading per sample, a status change alone is a reading); ``mode = "poll"`` reads
instead. Either way every multi-node call is split by the server's OperationLimits. Source
timestamp, server timestamp (when the source gave none) and status code are kept.

Security is explicit (``edge/opcua_pki.py``): a configured policy and mode or nothing, a trust list
for server certificates, credentials from the environment or a 0600 file.

Hot path: publish responses are handled straight from the session's publish loop
(``_on_publish``), one loop over the decoded items appending to column lists; asyncua's own
Subscription class would create an asyncio task and three objects per notification, which is
most of a core at 10,000 tags/s.

Outages: asyncua's supervisor reconnects with our jittered backoff (``edge/opcua_client.py``);
then the subscription is re-created and, where the server keeps history, the outage window is
read back with HistoryRead and those readings emitted. One ``Gap`` per source still records the
whole outage (from the last reading before it to the first live one after it) and its reason
says how many readings were backfilled, so downstream knows both that the link was down and that
the data in between came from the server's history; readings the history did not hold are
simply absent inside the gap.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asyncua import ua
from asyncua.client.client import _first_cert_from_chain

from edge.backoff import exponential_backoff
from edge.base import Publish, Reader
from edge.batcher import BatchBuilder
from edge.opcua_client import BoundedClient
from edge.opcua_ops import OperationLimits, chunks, read_history, read_operation_limits, read_values
from edge.opcua_pki import POLICY_CLASSES, TrustList, ensure_client_certificate, pick_endpoint, read_password
from qctrace.config import OpcUaClientConfig
from qctrace.durable import atomic_write
from qctrace.errors import ConfigError, ReaderError, ServerUnreachable
from qctrace.schema import Gap, Outage, Quality

log = logging.getLogger(__name__)

_NO_VALUE_YET = ua.StatusCodes.BadWaitingForInitialData
_QUALITY = (int(Quality.GOOD), int(Quality.UNCERTAIN), int(Quality.BAD), int(Quality.BAD))  # by severity bits
_LOGIN_REFUSED = {ua.StatusCodes.BadUserAccessDenied, ua.StatusCodes.BadIdentityTokenInvalid,
                  ua.StatusCodes.BadIdentityTokenRejected}
_LINK_ERRORS = (OSError, TimeoutError, ConnectionError, ua.UaError)
_LOT = -1
_DEFAULT_OPTS = OpcUaClientConfig()  # secure: Basic256Sha256 SignAndEncrypt

_GONE_MID_OPEN = (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ua.uaerrors.BadConnectionClosed,
                  ua.uaerrors.BadSessionClosed, ua.uaerrors.BadSessionIdInvalid, ua.uaerrors.BadServerHalted,
                  ua.uaerrors.BadShutdown, ua.uaerrors.BadTimeout, ua.uaerrors.BadRequestTimeout,
                  ua.uaerrors.BadCommunicationError, ua.uaerrors.BadSecureChannelClosed,
                  ua.uaerrors.BadServerNotConnected, ua.uaerrors.BadTooManySessions)
"""What a server that went away, restarted or is overloaded answers after the connection was made."""


@dataclass
class _Outage:
    """One outage, from the lost connection until its gap is recorded: kept across resumes that
    break half-way (the one-hour soak lost ticks when a resume timed out after values flowed and
    the next one took the outage's start afresh, after them). By node, as an interrupted open
    browses again and handles may change."""

    before: dict[ua.NodeId, int]  # each tag's last time when the connection was lost: the gap starts there
    taken: dict[ua.NodeId, list[tuple[int, int]]] = field(default_factory=dict)  # live ranges of broken resumes
    attempt: tuple[list[ua.NodeId], list[int]] | None = None  # the resume under way: nodes, first value of each


def _load_sent(path: Path | None) -> dict[str, int]:
    """The last run's record of samples spooled, by NodeId; unreadable or absent: none."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_bytes())
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}


def _ns(dt: datetime) -> int:
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC) + timedelta(microseconds=(ns % 1_000_000_000) // 1000)


class OpcUaReader(Reader):
    name = "opcua"

    def __init__(self, endpoint: str, builder: BatchBuilder, publish: Publish, *, publishing_interval_ms: int = 200,
                 queue_size: int = 1000, batch_max_rows: int = 1000, batch_max_age_s: float = 0.25,
                 timeout_s: float | None = None, opts: OpcUaClientConfig = _DEFAULT_OPTS,
                 data_dir: Path | None = None, trusted_certs: tuple[Path, ...] = (),
                 sent_path: Path | None = None) -> None:
        """``data_dir`` places the default PKI directory; ``trusted_certs`` are server certificates the
        caller vouches for on top of the trust list (the demo trusts the simulator it started);
        ``sent_path`` keeps, across restarts, each node's last sample already spooled (``_take``)."""
        super().__init__(builder, publish, batch_max_rows, batch_max_age_s)
        self.endpoint = endpoint
        self.opts = opts
        self.publishing_interval_ms = publishing_interval_ms
        self.queue_size = queue_size
        self.data_dir = data_dir
        self.trusted_certs = tuple(trusted_certs)
        self._client = BoundedClient(
            endpoint, timeout_s=timeout_s or opts.timeout_s, max_message_size=opts.max_message_size,
            max_chunk_count=opts.max_chunk_count, on_reconnected=self._on_reconnected,
            backoff=lambda: exponential_backoff(opts.backoff_initial_s, 2.0, opts.backoff_max_s, opts.backoff_jitter))
        self._client.connection_lost_callback = self._on_connection_lost
        self.limits = OperationLimits()
        # Per client handle (index = handle - 1): node, stream index (or _LOT), last source time.
        self._nodes: list[ua.NodeId] = []
        self._stream_of: list[int] = []
        self._keys: list[str] = []
        self._last_ts: list[int] = []
        self._lot_scope: dict[int, str] = {}
        self._sub_id: int | None = None
        self._lost: tuple[int, str] | None = None
        self._resuming = False
        self._outage: _Outage | None = None
        self._first_after: list[int] = []
        self._fresh = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self.notifications = 0
        self.sent_path = sent_path
        self._sent_before: dict[str, int] = _load_sent(sent_path)  # the last run's, by NodeId
        self._prior: list[int] = []  # per handle: that run's last sample, until a new one arrives
        self._sent: list[int] = []  # per handle: the last sample in a batch the forwarder took
        self._sent_saved = 0.0
        self.retry_unreachable = True  # keep trying a server that does not answer (False: raise at once)
        self.backfilled = 0
        self.read_calls = 0

    # -- opening -----------------------------------------------------------------------------

    async def _open(self) -> None:
        """Connect, read the server's limits, browse the tags, subscribe (or start polling).

        A PLC that does not answer (restarting when the edge starts) is waited for, not a reason to
        stop the edge: the gap is recorded from the last reading spooled before. So is one that goes
        away or stops answering half-way through (the campaign found a browse timing out): the open
        starts again from the connection, on the same backoff, and if its subscription had already
        delivered values, that is an outage with its marker and gap like any other
        (``_resume_after_interrupted_open``). Refusals stay final."""
        delays = exponential_backoff(0.5, 2.0, 10.0)
        resume = False
        while True:
            try:
                await self._connect()
                self.limits = await read_operation_limits(self._client)
                await self._discover()
                resume = self._resume_after_interrupted_open()
                if self.opts.mode == "subscribe":
                    await self._subscribe()
                else:
                    self._spawn(self._poll_loop())
                break
            except (ServerUnreachable, *_GONE_MID_OPEN) as exc:
                await self._close()
                self._resuming = False
                if any(self._last_ts):  # values already flowed (a subscription made before the failure)
                    await self._on_connection_lost(exc)
                unreachable = isinstance(exc, ServerUnreachable)
                if not self.retry_unreachable:
                    if unreachable:
                        raise
                    raise ServerUnreachable(f"{self.endpoint}: the OPC UA server stopped answering while the"
                                            f" reader opened it: {exc!r}") from exc
                delay = next(delays)
                if unreachable:
                    log.warning("opcua.unreachable endpoint=%s retry_in_s=%.1f error=%s", self.endpoint, delay, exc)
                else:
                    log.warning("opcua.open_interrupted endpoint=%s retry_in_s=%.1f error=%r", self.endpoint, delay,
                                exc)
                await asyncio.sleep(delay)
            except BaseException:
                await self._close()
                raise
        log.info("opcua.open endpoint=%s mode=%s security=%s/%s tags=%d limits=%s", self.endpoint, self.opts.mode,
                 self.opts.security_policy, self.opts.mode_name, len(self._nodes) - len(self._lot_scope), self.limits)
        if resume:
            self._spawn(self._finish_outage(*self._end_outage()))
        self._lost = None

    def _resume_after_interrupted_open(self) -> bool:
        """An open that failed after its subscription had delivered values is an outage like any
        other: the soak found readings missing between the values of an interrupted first attempt
        and those of the open that succeeded. False when nothing was read yet."""
        if self._lost is None or not any(self._last_ts):
            return False
        self._begin_resume()
        return True

    def _begin_resume(self) -> None:
        """Before a new subscription: note each tag's first value from now on (``_take``). The
        outage's start is taken once, at its first resume; a resume that broke after values
        flowed leaves, per tag, the live range it took, which the history read must not repeat."""
        last = dict(zip(self._nodes, self._last_ts, strict=True))
        o = self._outage
        if o is None:
            o = self._outage = _Outage(before=last)
        elif o.attempt is not None:
            for node, first in zip(*o.attempt, strict=True):
                if first and last.get(node, 0) >= first:
                    o.taken.setdefault(node, []).append((first, last[node]))
        self._first_after = [0] * len(self._nodes)
        o.attempt = (list(self._nodes), self._first_after)
        self._fresh.clear()
        self._resuming = True

    def _end_outage(self) -> tuple[list[int], list[list[tuple[int, int]]], tuple[int, str]]:
        """The resume went through: per handle, where the gap starts and what broken resumes took;
        and the outage's time and reason. A connection lost from now on is another outage."""
        o, self._outage = self._outage, None
        lost, self._lost = self._lost, None
        assert o is not None and lost is not None
        return ([o.before.get(n, 0) for n in self._nodes], [o.taken.get(n, []) for n in self._nodes], lost)

    async def _connect(self) -> None:
        o, c = self.opts, self._client
        try:
            if o.security_policy != "None":
                await self._secure()
            if o.username is not None:
                c.set_user(o.username)
                c.set_password(read_password(o, self.endpoint) or "")
            await c.connect(auto_reconnect=True)
        except ua.UaStatusCodeError as exc:
            name = ua.StatusCode(exc.code).name
            if exc.code in _LOGIN_REFUSED and o.username is None:
                raise ReaderError(f"{self.endpoint}: the server refused an anonymous login ({name}); set"
                                  " edge.opcua.username and password_env or password_file") from exc
            if exc.code in _LOGIN_REFUSED:
                where = f"environment variable {o.password_env}" if o.password_env else f"file {o.password_file}"
                raise ReaderError(f"{self.endpoint}: the server refused user {o.username!r} ({name}); check the"
                                  f" username and the password (read from the {where})") from exc
            raise ReaderError(f"{self.endpoint}: the server refused the connection: {name}") from exc
        except (OSError, TimeoutError, ConnectionError) as exc:
            raise ServerUnreachable(f"{self.endpoint}: cannot connect to the OPC UA server:"
                                    f" {c.take_refusal() or repr(exc)}") from exc
        except ua.UaError as exc:
            raise ReaderError(f"{self.endpoint}: cannot connect to the OPC UA server:"
                              f" {c.take_refusal() or repr(exc)}") from exc

    async def _secure(self) -> None:
        o, c = self.opts, self._client
        pki = o.pki_dir or (self.data_dir / "edge" / "pki" if self.data_dir is not None else None)
        if pki is None:
            raise ConfigError(f"{self.endpoint}: edge.opcua.pki_dir is not set (where the reader's certificate"
                              " and trust list live)")
        cert, key = await ensure_client_certificate(pki, o.application_uri)
        c.application_uri = o.application_uri
        trust = TrustList(o.trust_dir or pki / "trusted", pki / "rejected", self.trusted_certs)
        try:
            endpoints = await c.connect_and_get_server_endpoints()  # GetEndpoints is always allowed in clear
        except (OSError, TimeoutError, ConnectionError) as exc:
            raise ServerUnreachable(f"{self.endpoint}: cannot connect to the OPC UA server: {exc!r}") from exc
        except ua.UaError as exc:
            raise ReaderError(f"{self.endpoint}: cannot connect to the OPC UA server: {exc!r}") from exc
        ep = pick_endpoint(endpoints, o, self.endpoint)
        der = _first_cert_from_chain(ep.ServerCertificate)
        trust.check(der, self.endpoint)
        await c.set_security(POLICY_CLASSES[o.security_policy], str(cert), str(key), server_certificate=der,
                             mode=getattr(ua.MessageSecurityMode, o.mode_name))

    async def _discover(self) -> None:
        """Site/Line/Device/Tag objects below Objects (skipping the standard Server object, ns 0),
        narrowed to the configured NodeIds and patterns."""
        wanted_ids, patterns = await self._wanted()
        # Afresh on every attempt (an interrupted open is tried again): keep each node's last time.
        last = dict(zip(self._nodes, self._last_ts, strict=True))
        for col in (self._nodes, self._stream_of, self._keys, self._last_ts):
            col.clear()
        self._lot_scope.clear()
        objects = self._client.nodes.objects
        seen_ids: set[ua.NodeId] = set()
        for site in await objects.get_children(nodeclassmask=ua.NodeClass.Object):
            if site.nodeid.NamespaceIndex == 0:
                continue
            site_name = (await site.read_browse_name()).Name
            for line in await site.get_children(nodeclassmask=ua.NodeClass.Object):
                line_name = (await line.read_browse_name()).Name
                scope = f"{site_name}/{line_name}"
                for var in await line.get_children(nodeclassmask=ua.NodeClass.Variable):
                    if (await var.read_browse_name()).Name == "Lot":
                        self._lot_scope[len(self._nodes)] = scope
                        self._add(var.nodeid, _LOT, f"{scope}/Lot")
                for dev in await line.get_children(nodeclassmask=ua.NodeClass.Object):
                    dev_name = (await dev.read_browse_name()).Name
                    tags = await dev.get_children(nodeclassmask=ua.NodeClass.Variable)
                    for tag, tag_name in zip(tags, await self._browse_names(tags), strict=True):
                        key = f"{scope}/{dev_name}/{tag_name}"
                        if wanted_ids or patterns:
                            by_id = tag.nodeid in wanted_ids
                            if not by_id and not any(fnmatch.fnmatchcase(key, p) for p in patterns):
                                continue
                            seen_ids.add(tag.nodeid)
                        stream = self.builder.streams.add(site_name, line_name, dev_name, tag_name)
                        self._add(tag.nodeid, stream, key)
        missing = wanted_ids - seen_ids
        if missing:
            raise ReaderError(f"{self.endpoint}: edge.opcua.tags names NodeIds that are not tags under"
                              f" Objects/<site>/<line>/<device>/: {', '.join(sorted(map(str, missing)))}")
        self._last_ts[:] = [last.get(n, 0) for n in self._nodes]
        self._prior = [self._sent_before.get(n.to_string(), 0) for n in self._nodes]
        self._sent = list(self._prior)
        if len(self._nodes) == len(self._lot_scope):
            raise ReaderError(f"{self.endpoint}: no tags found under Objects/<site>/<line>/<device>/"
                              + (f" matching edge.opcua.tags {list(self.opts.tags)}" if self.opts.tags else ""))

    async def _browse_names(self, nodes: list) -> list[str]:
        """Browse names of many nodes in few Reads (a PLC of 1,000 tags: one call, not 1,000)."""
        names: list[str] = []
        for part in chunks([n.nodeid for n in nodes], self.limits.max_nodes_per_read):
            dvs = await self._client.uaclient.read_attributes(list(part), ua.AttributeIds.BrowseName)
            names += [dv.Value.Value.Name for dv in dvs]
        return names

    async def _wanted(self) -> tuple[set[ua.NodeId], list[str]]:
        ids: set[ua.NodeId] = set()
        patterns: list[str] = []
        for t in self.opts.tags:
            if t.startswith(("ns=", "i=", "s=", "g=", "b=")):
                ids.add(ua.NodeId.from_string(t))
            elif t.startswith("nsu="):
                uri, _, rest = t[4:].partition(";")
                try:
                    idx = await self._client.get_namespace_index(uri)
                except ValueError as exc:
                    raise ReaderError(f"{self.endpoint}: edge.opcua.tags {t!r}: the server has no namespace {uri!r}"
                                      ) from exc
                ids.add(ua.NodeId.from_string(f"ns={idx};{rest}"))
            else:
                patterns.append(t)
        return ids, patterns

    def _add(self, node: ua.NodeId, stream: int, key: str) -> None:
        self._nodes.append(node)
        self._stream_of.append(stream)
        self._keys.append(key)
        self._last_ts.append(0)

    def _item(self, h: int) -> ua.MonitoredItemCreateRequest:
        """Monitoring parameters of handle ``h``: the reader's defaults, then the last matching rule."""
        sampling, queue, deadband, kind = 0.0, self.queue_size, None, "absolute"
        for rule in self.opts.rules:
            if fnmatch.fnmatchcase(self._keys[h], rule.match):
                sampling = rule.sampling_interval_ms if rule.sampling_interval_ms is not None else sampling
                queue = rule.queue_size or queue
                if rule.deadband is not None:
                    deadband, kind = rule.deadband, rule.deadband_type
        flt = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValueTimestamp)
        if deadband is not None and self._stream_of[h] != _LOT:
            flt.DeadbandType = 1 if kind == "absolute" else 2
            flt.DeadbandValue = float(deadband)
        mp = ua.MonitoringParameters(ClientHandle=h + 1, SamplingInterval=float(sampling), QueueSize=queue,
                                     DiscardOldest=True, Filter=flt)
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=self._nodes[h], AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting, RequestedParameters=mp)

    async def _subscribe(self) -> None:
        """A new subscription and its monitored items, in calls of at most MaxMonitoredItemsPerCall."""
        session = self._client.uaclient
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=self.publishing_interval_ms, RequestedLifetimeCount=10000,
            RequestedMaxKeepAliveCount=self._client.get_keepalive_count(self.publishing_interval_ms),
            MaxNotificationsPerPublish=0, PublishingEnabled=True, Priority=0)
        res = await session.create_subscription(params, callback=self._on_publish)
        self._sub_id = res.SubscriptionId
        refused: list[str] = []
        items = [self._item(h) for h in range(len(self._nodes))]
        for part in chunks(items, self.limits.max_monitored_items_per_call):
            cp = ua.CreateMonitoredItemsParameters(SubscriptionId=self._sub_id, ItemsToCreate=list(part),
                                                   TimestampsToReturn=ua.TimestampsToReturn.Both)
            for req, r in zip(part, await session.create_monitored_items(cp), strict=True):
                if not r.StatusCode.is_good():
                    refused.append(f"{self._keys[req.RequestedParameters.ClientHandle - 1]}: {r.StatusCode.name}")
        if refused:
            raise ReaderError(f"{self.endpoint}: {len(refused)} monitored items refused, first: {refused[0]}")

    # -- the hot path ------------------------------------------------------------------------

    def _on_publish(self, result: ua.PublishResult) -> None:
        """Called by the session's publish loop for each publish response: no awaits, no I/O."""
        if result.SubscriptionId != self._sub_id:
            return  # a response of a subscription this reader already replaced
        data = result.NotificationMessage.NotificationData
        if not data:
            return
        recv = time.time_ns()
        take = self._take
        for notif in data:
            if isinstance(notif, ua.DataChangeNotification):
                for item in notif.MonitoredItems:
                    take(item.ClientHandle - 1, item.Value, recv)
            elif isinstance(notif, ua.StatusChangeNotification):
                log.warning("opcua.status_change endpoint=%s status=%s", self.endpoint, notif.Status)
        if self._resuming:
            self._fresh.set()
        self._added()

    def _take(self, h: int, dv: ua.DataValue, recv: int) -> None:
        sc = dv.StatusCode
        code = sc.value if sc is not None else 0
        if code == _NO_VALUE_YET:
            return  # the PLC has no sample yet: there is no reading to record
        stamp = dv.SourceTimestamp or dv.ServerTimestamp
        ts = _ns(stamp) if stamp is not None else recv
        if self._last_ts[h] == ts:
            return  # the same sample again (initial value after a re-subscribe, or an unchanged poll)
        variant = dv.Value
        v = variant.Value if variant is not None else None
        stream = self._stream_of[h]
        if stream == _LOT:
            if isinstance(v, str) and v:
                self.builder.streams.timeline(self._lot_scope[h]).set(ts, v)
            self._last_ts[h] = ts
            return
        if self._prior and self._prior[h]:
            prior, self._prior[h] = self._prior[h], 0
            if prior == ts:  # a tag unchanged since the last run spooled this sample: its first value now
                self._last_ts[h] = ts  # and after a re-subscribe too (the soak wrote one such sample 5 times)
                return
        if self._resuming and not self._first_after[h]:
            self._first_after[h] = ts
        self._last_ts[h] = ts
        self.notifications += 1
        self.builder.add(stream, ts, float(v) if isinstance(v, int | float) else math.nan, _QUALITY[code >> 30], recv)

    # -- what was sent ---------------------------------------------------------------------

    async def flush(self) -> None:
        """Publish as every reader does; then remember each node's last sample the forwarder took
        (in the spool once ``publish`` returns), and write that down about once a second.

        A new subscription's first value of each tag is its current one. After an edge restart, a
        tag that has not changed since is the very sample the last run spooled, and would be
        written twice under two seqs; ``_take`` drops it by this record. Only an identical source
        time is dropped, so a clock that moved cannot cost a reading; a record a second stale (the
        edge killed meanwhile) only lets such a repeat through."""
        taken = list(self._last_ts)
        await super().flush()
        if len(taken) == len(self._sent):  # the latest sample of each tag, not the greatest time
            self._sent = [t or s for t, s in zip(taken, self._sent, strict=True)]
        if self.sent_path is not None and time.monotonic() - self._sent_saved >= 1.0:
            self._save_sent()

    def _save_sent(self) -> None:
        self._sent_saved = time.monotonic()
        state = {**self._sent_before, **{n.to_string(): t for n, t in zip(self._nodes, self._sent, strict=True) if t}}
        try:
            atomic_write(self.sent_path, json.dumps(state).encode())
        except OSError as exc:  # a full disk: a repeat after a restart is all it can cost
            log.info("opcua.sent_not_saved path=%s error=%s", self.sent_path, exc.strerror or exc)

    # -- polling -----------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        interval = self.opts.poll_interval_ms / 1000
        nxt = time.monotonic()
        while True:
            try:
                dvs = await read_values(self._client, self._nodes, self.limits.max_nodes_per_read)
            except _LINK_ERRORS as exc:
                log.info("opcua.poll endpoint=%s failed=%r", self.endpoint, exc)
                await self._on_connection_lost(exc)
                await asyncio.sleep(interval)
                nxt = time.monotonic()
                continue
            self.read_calls += math.ceil(len(self._nodes) / (self.limits.max_nodes_per_read or len(self._nodes)))
            recv = time.time_ns()
            for h, dv in enumerate(dvs):
                self._take(h, dv, recv)
            if self._resuming:
                self._fresh.set()
            self._added()
            nxt += interval
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))

    # -- outages -----------------------------------------------------------------------------

    async def _on_connection_lost(self, exc: Exception) -> None:
        refusal = self._client.take_refusal()  # the reader closed it: say why, not "transport lost"
        if self._lost is None:
            self._lost = (time.time_ns(), f"connection to {self.endpoint} lost: {refusal or repr(exc)}")
            log.warning("opcua.lost endpoint=%s reason=%r", self.endpoint, refusal or exc)
            for o in self._open_outages():  # on disk now: an edge killed before the gap is recorded still records it
                await self.publish(o)

    def _open_outages(self) -> list[Outage]:
        """Per source of this server, its earliest last reading: where an outage's gap will start."""
        st = self.builder.streams
        since: dict[int, int] = {}
        for h, stream in enumerate(self._stream_of):
            if stream == _LOT or not self._last_ts[h]:
                continue
            src = st.source_of[stream]
            since[src] = min(since.get(src, self._last_ts[h]), self._last_ts[h])
        return [Outage(st.sources[src], t) for src, t in since.items()]

    async def _on_reconnected(self, reused_session: bool) -> None:
        """Run by the reconnect supervisor on a new connection: subscribe afresh, then (in a task,
        once the first live values are in) backfill the outage and record the gaps. Raising (the
        new connection broke too) sends the supervisor round again, with this outage kept."""
        self._begin_resume()
        if self._lost is None:
            refusal = self._client.take_refusal()
            self._lost = (time.time_ns(), f"connection to {self.endpoint} lost" + (f": {refusal}" if refusal else ""))
        if self.opts.mode == "subscribe":
            old, self._sub_id = self._sub_id, None
            if old is not None:
                self._client.uaclient.session._subscription_callbacks.pop(old, None)
                if reused_session:  # the server may still hold it: do not leave it publishing
                    try:
                        await self._client.uaclient.delete_subscriptions([old])
                    except _LINK_ERRORS as exc:
                        log.info("opcua.resume delete_old_subscription_failed=%r", exc)
            await self._subscribe()
        # This outage's start and reason go with its gap: a connection lost again before the gap is
        # recorded (a server that keeps misbehaving) is another outage, with its own reason.
        self._spawn(self._finish_outage(*self._end_outage()))

    async def _finish_outage(self, before: list[int], taken: list[list[tuple[int, int]]],
                             lost: tuple[int, str]) -> None:
        wait_s = max(2.0, 3 * max(self.publishing_interval_ms, self.opts.poll_interval_ms) / 1000)
        try:
            await asyncio.wait_for(self._fresh.wait(), wait_s)
        except TimeoutError:
            pass
        # Still resuming while the history is read: a tag whose first live value comes only now (its
        # monitored item made in a later call) must have it noted, or the history read would bring
        # that sample a second time (the soak found such repeats, always of a PLC's last tag).
        first_after = self._first_after
        backfilled: dict[int, int] = {}
        note = ""
        try:
            if self.opts.history_backfill:
                try:
                    backfilled, note = await self._backfill(before, first_after, taken)
                except _LINK_ERRORS as exc:
                    note = f"; history backfill failed: {exc!r}"
        finally:
            if self._first_after is first_after:  # not if another outage's resume began meanwhile
                self._resuming = False
        self._record_gaps(before, first_after, backfilled, note, lost)

    async def _backfill(self, before: list[int], first_after: list[int], taken: list[list[tuple[int, int]]]
                        ) -> tuple[dict[int, int], str]:
        """Read the outage back from the server's history; emit what it holds and was not read live
        (after the resume, or by a resume that broke). Per source count."""
        tags = [h for h in range(len(self._nodes)) if self._stream_of[h] != _LOT and before[h]]
        if not tags:
            return {}, ""
        start = min(before[h] for h in tags) + 1000
        ends = [first_after[h] for h in tags if first_after[h]]
        end = max(ends) if len(ends) == len(tags) else time.time_ns() + 365 * 86400 * 10**9
        got, refused = await read_history(self._client, [self._nodes[h] for h in tags], _dt(start), _dt(end),
                                          self.limits.max_nodes_per_history_read)
        handle = {self._nodes[h]: h for h in tags}
        recv = time.time_ns()
        st = self.builder.streams
        per_source: dict[int, int] = {}
        for node, dv in got:
            h = handle[node]
            stamp = dv.SourceTimestamp or dv.ServerTimestamp
            if stamp is None:
                continue
            ts = _ns(stamp)
            if ts <= before[h] or (first_after[h] and ts >= first_after[h]) or any(a <= ts <= b for a, b in taken[h]):
                continue
            code = dv.StatusCode.value if dv.StatusCode is not None else 0
            v = dv.Value.Value if dv.Value is not None else None
            stream = self._stream_of[h]
            self.builder.add(stream, ts, float(v) if isinstance(v, int | float) else math.nan, _QUALITY[code >> 30],
                             recv)
            if not first_after[h]:
                self._last_ts[h] = max(self._last_ts[h], ts)
            src = st.source_of[stream]
            per_source[src] = per_source.get(src, 0) + 1
        n = sum(per_source.values())
        self.backfilled += n
        self._added()
        log.info("opcua.backfill endpoint=%s readings=%d nodes_without_history=%d", self.endpoint, n, refused)
        note = f"; the server has no history for {refused} of {len(tags)} tags" if refused else ""
        return per_source, note

    def _record_gaps(self, before: list[int], first_after: list[int], backfilled: dict[int, int], note: str,
                     lost: tuple[int, str]) -> None:
        """One gap per source of this server, the reason saying how many readings the server's
        history gave back. It spans every tag's outage: from the earliest last reading before it to
        the latest first reading after it (a tag silent for a while brings an old sample as its
        first value after a re-subscribe, and must not cut the others' outage short). A device
        clock set back during the outage puts first readings before the last ones: the gap is then
        the union of both ends (a soak lost 24 ticks to a gap cut down to zero length), each the
        source time of a real reading, as the forwarder's restart gap does."""
        lost_at, reason = lost
        st = self.builder.streams
        spans: dict[int, tuple[int, int, int]] = {}  # source -> earliest end, latest end, earliest before
        for h, stream in enumerate(self._stream_of):
            if stream == _LOT:
                continue
            src = st.source_of[stream]
            lo, hi, b0 = spans.get(src, (0, 0, 0))
            for t in (before[h], first_after[h]):
                if t:
                    lo, hi = (min(lo, t) if lo else t), max(hi, t)
            spans[src] = (lo, hi, min(b0, before[h]) if b0 and before[h] else (b0 or before[h]))
        for src, (lo, hi, b0) in sorted(spans.items(), key=lambda kv: st.sources[kv[0]]):
            start = lo or lost_at
            end = max(hi or self._last_ts_of(src) or start, start)
            went_back = " (the source's first time after the outage is earlier than its last before it)" \
                if b0 and lo < b0 else ""
            self.pending_gaps.append(Gap(st.sources[src], start, end,
                                         f"{reason}; {backfilled.get(src, 0)} readings backfilled from the server's"
                                         f" history{note}{went_back}"))
            self.pending_gaps.append(Outage(st.sources[src], start, closed=True))  # once the gap is spooled
        log.warning("opcua.resumed endpoint=%s gaps=%d backfilled=%d", self.endpoint, len(spans),
                    sum(backfilled.values()))
        self._wake.set()

    def _last_ts_of(self, src: int) -> int:
        st = self.builder.streams
        return max((self._last_ts[h] for h, s in enumerate(self._stream_of) if s != _LOT and st.source_of[s] == src),
                   default=0)

    # -- closing -----------------------------------------------------------------------------

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self) -> None:
        if self.sent_path is not None and self._sent:
            self._save_sent()  # a clean stop: the next start knows every sample spooled
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # our own tasks' cancellations, collected
        try:
            if self._sub_id is not None and self._client.uaclient.has_session:
                await asyncio.wait_for(self._client.uaclient.delete_subscriptions([self._sub_id]), 2.0)
        except _LINK_ERRORS as exc:
            log.info("opcua.close delete_subscription_failed=%r", exc)
        finally:
            self._sub_id = None
            try:
                await self._client.disconnect()
            except (*_LINK_ERRORS, AttributeError) as exc:
                log.info("opcua.close disconnect_failed=%r", exc)
