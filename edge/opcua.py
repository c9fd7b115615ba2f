"""OPC UA reader: an asyncua client subscribed to every tag of a PLC's ISA-95 address space.

Discovery walks ``Objects/<site>/<line>/<device>/<tag>`` (and each line's ``Lot`` variable), so a
reader needs only the endpoint URL. Monitored items use ``DataChangeTrigger.StatusValueTimestamp``:
a sensor that repeats the same value (stuck!) still produces a reading per sample, and a status
change alone is a reading too. Source timestamps and status codes are kept in every reading.

A lost connection is retried by asyncua's supervisor (capped exponential backoff; the session and
its subscription are transferred, or re-created). The outage becomes one ``Gap`` per source, from
the last reading before it to the first after it, so downstream knows data is missing rather than
flat.

Not yet here (see the secure-reader issue): security policies and trust lists, polling fallback
under OperationLimits, history backfill of a gap.
"""

from __future__ import annotations

import logging
import time

from asyncua import Client, Node, ua
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import DataChangeNotif, Subscription

from edge.base import Publish, Reader
from edge.batcher import BatchBuilder
from qctrace.errors import ReaderError
from qctrace.schema import Gap, Quality

log = logging.getLogger(__name__)

_NO_VALUE_YET = ua.StatusCodes.BadWaitingForInitialData


def _ns(dt) -> int:
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


class OpcUaReader(Reader):
    name = "opcua"

    def __init__(self, endpoint: str, builder: BatchBuilder, publish: Publish, *, publishing_interval_ms: int = 200,
                 queue_size: int = 1000, batch_max_rows: int = 1000, batch_max_age_s: float = 0.25,
                 timeout_s: float = 10.0) -> None:
        super().__init__(builder, publish, batch_max_rows, batch_max_age_s)
        self.endpoint = endpoint
        self.publishing_interval_ms = publishing_interval_ms
        self.queue_size = queue_size
        # A busy PLC may take more than asyncua's default 1 s to answer the health probe; that is
        # not a dead connection, so probe on a slower cycle with the request timeout as its bound.
        self._client = Client(endpoint, timeout=timeout_s, watchdog_intervall=timeout_s)
        self._sub: Subscription | None = None
        self._streams: dict[ua.NodeId, int] = {}
        self._lot_scopes: dict[ua.NodeId, str] = {}
        self._last_ts: dict[int, int] = {}
        self._lost: tuple[int, str] | None = None
        self.notifications = 0
        self._client.connection_lost_callback = self._on_connection_lost

    async def _open(self) -> None:
        try:
            await self._client.connect(auto_reconnect=True)
        except (OSError, TimeoutError) as exc:
            raise ReaderError(f"{self.endpoint}: cannot connect to the OPC UA server: {exc}") from exc
        tags = await self._discover()
        if not tags:
            raise ReaderError(f"{self.endpoint}: no tags found under Objects/<site>/<line>/<device>/")
        self._sub = await self._client.create_subscription(self.publishing_interval_ms, self)
        params = []
        for i, node in enumerate(tags):
            mp = ua.MonitoringParameters(
                ClientHandle=i + 1,
                SamplingInterval=0.0,  # as fast as the server can: every write is a sample
                QueueSize=self.queue_size,
                DiscardOldest=True,
                Filter=ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValueTimestamp),
            )
            params.append(ua.MonitoredItemCreateRequest(
                ItemToMonitor=ua.ReadValueId(NodeId=node.nodeid, AttributeId=ua.AttributeIds.Value),
                MonitoringMode=ua.MonitoringMode.Reporting, RequestedParameters=mp))
        results = await self._sub.create_monitored_items(params)
        bad = [r for r in results if isinstance(r, ua.StatusCode)]
        if bad:
            raise ReaderError(f"{self.endpoint}: {len(bad)} monitored items refused, first: {bad[0]}")
        log.info("opcua.subscribed endpoint=%s tags=%d lots=%d", self.endpoint, len(self._streams),
                 len(self._lot_scopes))

    async def _discover(self) -> list[Node]:
        """Site/Line/Device/Tag objects below Objects, skipping the standard Server object (ns 0)."""
        found: list[Node] = []
        objects = self._client.nodes.objects
        for site in await objects.get_children(nodeclassmask=ua.NodeClass.Object):
            if site.nodeid.NamespaceIndex == 0:
                continue
            site_name = (await site.read_browse_name()).Name
            for line in await site.get_children(nodeclassmask=ua.NodeClass.Object):
                line_name = (await line.read_browse_name()).Name
                scope = f"{site_name}/{line_name}"
                for var in await line.get_children(nodeclassmask=ua.NodeClass.Variable):
                    if (await var.read_browse_name()).Name == "Lot":
                        self._lot_scopes[var.nodeid] = scope
                        found.append(var)
                for dev in await line.get_children(nodeclassmask=ua.NodeClass.Object):
                    dev_name = (await dev.read_browse_name()).Name
                    for tag in await dev.get_children(nodeclassmask=ua.NodeClass.Variable):
                        tag_name = (await tag.read_browse_name()).Name
                        self._streams[tag.nodeid] = self.builder.streams.add(site_name, line_name, dev_name,
                                                                             tag_name)
                        found.append(tag)
        return found

    async def _on_connection_lost(self, exc: Exception) -> None:
        if self._lost is None:
            self._lost = (time.time_ns(), f"connection to {self.endpoint} lost: {exc!r}")
            log.warning("opcua.lost endpoint=%s reason=%r", self.endpoint, exc)

    def _close_gap(self, first_ts: int) -> None:
        """The first reading after an outage: one gap record per source of this server."""
        lost_at, reason = self._lost
        self._lost = None
        st = self.builder.streams
        last: dict[str, int] = {}
        for stream in self._streams.values():  # once per outage, not per reading
            source = st.sources[st.source_of[stream]]
            last[source] = max(last.get(source, 0), self._last_ts.get(stream, 0))
        for source in sorted(last):
            start = last[source] or lost_at
            self.pending_gaps.append(Gap(source, start, max(first_ts, start), reason))
        log.warning("opcua.resumed endpoint=%s gaps=%d", self.endpoint, len(self.pending_gaps))
        self._wake.set()

    def datachange_notification(self, node: Node, val: object, data: DataChangeNotif) -> None:
        """asyncua callback, on the event loop: append one reading (no I/O, no awaits)."""
        dv = data.monitored_item.Value
        recv = time.time_ns()
        code = dv.StatusCode.value if dv.StatusCode is not None else 0
        if code == _NO_VALUE_YET:
            return  # the PLC has no sample yet: there is no reading to record
        stamp = dv.SourceTimestamp or dv.ServerTimestamp
        ts = _ns(stamp) if stamp is not None else recv
        scope = self._lot_scopes.get(node.nodeid)
        if scope is not None:
            if isinstance(val, str) and val:
                self.builder.streams.timeline(scope).set(ts, val)
            return
        stream = self._streams[node.nodeid]
        if self._last_ts.get(stream) == ts:
            return  # the same sample again (initial value after a re-subscribe), not a new reading
        if self._lost is not None and self._client.uaclient.state is UaClientState.CONNECTED:
            # Only a reading that came over the *new* connection ends the outage; notifications
            # that were already in flight when the old one died are readings, not the end of it.
            self._close_gap(ts)
        self._last_ts[stream] = ts
        self.notifications += 1
        value = float(val) if isinstance(val, int | float) else float("nan")
        self.builder.add(stream, ts, value, int(Quality.from_status_code(code)), recv)
        self._added()

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        log.warning("opcua.status_change endpoint=%s status=%s", self.endpoint, status.Status)

    async def _close(self) -> None:
        try:
            if self._sub is not None:
                await self._sub.delete()
        except (ua.UaError, OSError, TimeoutError) as exc:
            log.info("opcua.close delete_subscription_failed=%s", exc)
        finally:
            try:
                await self._client.disconnect()
            except (ua.UaError, OSError, TimeoutError, AttributeError) as exc:
                log.info("opcua.close disconnect_failed=%s", exc)
