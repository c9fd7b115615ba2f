"""OPC UA service calls split by the server's OperationLimits, and the history read of an outage.

A server states how many nodes it accepts per call (``Server/ServerCapabilities/OperationLimits``);
a request above that is refused whole (``BadTooManyOperations``), so every multi-node call the
reader makes goes through ``chunks`` with the matching limit (0 = the server states no limit).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from asyncua import Client, ua

log = logging.getLogger(__name__)
T = TypeVar("T")

_LIMIT_IDS = {
    "max_nodes_per_read": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
    "max_monitored_items_per_call": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
    "max_nodes_per_history_read": ua.ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerHistoryReadData,
}


@dataclass(frozen=True, slots=True)
class OperationLimits:
    max_nodes_per_read: int = 0
    max_monitored_items_per_call: int = 0
    max_nodes_per_history_read: int = 0


async def read_operation_limits(client: Client) -> OperationLimits:
    """The limits the server advertises; a limit it does not state (or cannot read) is 0 = none."""
    # One node per Read: the limits are not known yet, and a server may allow as little as one.
    dvs = [(await client.uaclient.read_attributes([ua.NodeId(i)], ua.AttributeIds.Value))[0]
           for i in _LIMIT_IDS.values()]
    vals = {}
    for name, dv in zip(_LIMIT_IDS, dvs, strict=True):
        ok = dv.StatusCode is None or dv.StatusCode.is_good()
        v = dv.Value.Value if ok and dv.Value is not None else 0
        vals[name] = int(v) if isinstance(v, int) else 0
    return OperationLimits(**vals)


def chunks(items: Sequence[T], limit: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``limit`` (all at once when limit is 0)."""
    step = limit if limit > 0 else max(1, len(items))
    for i in range(0, len(items), step):
        yield items[i:i + step]


async def read_values(client: Client, nodes: Sequence[ua.NodeId], limit: int) -> list[ua.DataValue]:
    """Value attributes with source and server timestamps, in Read calls of at most ``limit`` nodes."""
    out: list[ua.DataValue] = []
    for part in chunks(nodes, limit):
        params = ua.ReadParameters()
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        params.NodesToRead = [ua.ReadValueId(NodeId=n, AttributeId=ua.AttributeIds.Value) for n in part]
        out.extend(await client.uaclient.read(params))
    return out


async def read_history(client: Client, nodes: Sequence[ua.NodeId], start: datetime, end: datetime, limit: int
                       ) -> tuple[list[tuple[ua.NodeId, ua.DataValue]], int]:
    """Raw history of ``nodes`` between ``start`` and ``end`` (inclusive), in HistoryRead calls of at
    most ``limit`` nodes, following continuation points. Returns the values and how many nodes the
    server gave no history for (not historized, or history not supported)."""
    details = ua.ReadRawModifiedDetails(IsReadModified=False, StartTime=start, EndTime=end, NumValuesPerNode=0,
                                        ReturnBounds=False)
    got: list[tuple[ua.NodeId, ua.DataValue]] = []
    refused = 0
    pending: list[tuple[ua.NodeId, bytes | None]] = [(n, None) for n in nodes]
    while pending:
        again: list[tuple[ua.NodeId, bytes | None]] = []
        for part in chunks(pending, limit):
            params = ua.HistoryReadParameters(
                HistoryReadDetails=details, TimestampsToReturn=ua.TimestampsToReturn.Both,
                NodesToRead=[ua.HistoryReadValueId(NodeId=n, ContinuationPoint=c) for n, c in part])
            for (node, _), res in zip(part, await client.uaclient.history_read(params), strict=True):
                if not res.StatusCode.is_good():
                    refused += 1
                    continue
                got.extend((node, dv) for dv in res.HistoryData.DataValues or ())
                if res.ContinuationPoint:
                    again.append((node, res.ContinuationPoint))
        pending = again
    return got, refused
