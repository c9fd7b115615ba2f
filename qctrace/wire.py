"""The versioned binary payload that carries readings and gap records between processes.

One payload is one spool record and one MQTT message: the edge writes it to its spool before
anything else, sends the same bytes, and ingest acknowledges it by ``(node, rid)`` once the rows
are committed. Layout (all integers little-endian)::

    b"QCTW" | version u8 | kind u8 | node length u16 | node (UTF-8) | rid u64 | body

``kind`` 1 is a reading batch whose body is an Arrow IPC stream with exactly the reading schema;
kind 2 is a gap record whose body is JSON. Arrow IPC keeps the dictionary columns as they are and
decodes without copying, so a batch costs ingest one schema check. A payload that is not ours, of
a newer version, oversized or damaged raises ``PayloadError`` with what is wrong: ingest counts
and quarantines it rather than guessing.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import pyarrow as pa

from qctrace.errors import PayloadError
from qctrace.schema import READING_SCHEMA, Gap

MAGIC = b"QCTW"
VERSION = 1
KIND_BATCH = 1
KIND_GAP = 2
MAX_PAYLOAD_BYTES = 64 << 20
"""Far above a 10,000-reading batch (about 0.5 MB); anything larger is refused unread."""
MAX_BATCH_ROWS = 1_000_000

_HEAD = struct.Struct("<4sBBH")
_RID = struct.Struct("<Q")

Item = pa.RecordBatch | Gap


@dataclass(frozen=True, slots=True)
class Envelope:
    node: str  # the edge node that spooled it
    rid: int  # its record id in that node's spool: what ingest acknowledges
    item: Item


def encode(node: str, rid: int, item: Item) -> bytes:
    raw_node = node.encode()
    if isinstance(item, Gap):
        kind = KIND_GAP
        body = json.dumps({"source": item.source, "start_ns": item.start_ns, "end_ns": item.end_ns,
                           "reason": item.reason}).encode()
    else:
        kind = KIND_BATCH
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, item.schema) as w:
            w.write_batch(item)
        body = sink.getvalue().to_pybytes()
    return b"".join((_HEAD.pack(MAGIC, VERSION, kind, len(raw_node)), raw_node, _RID.pack(rid), body))


def peek(payload: bytes) -> tuple[str, int]:
    """(node, rid) of a payload, without decoding its body."""
    _kind, node, rid, _start = _header(payload)
    return node, rid


def _header(payload: bytes) -> tuple[int, str, int, int]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}")
    if len(payload) < _HEAD.size + _RID.size:
        raise PayloadError(f"payload of {len(payload)} bytes is too short to be a qctrace payload")
    magic, version, kind, n = _HEAD.unpack_from(payload)
    if magic != MAGIC:
        raise PayloadError(f"not a qctrace payload (starts with {bytes(payload[:4])!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise PayloadError(f"payload version {version} is not supported (this qctrace reads version {VERSION});"
                           " upgrade ingest before the edge")
    if kind not in (KIND_BATCH, KIND_GAP):
        raise PayloadError(f"unknown payload kind {kind}")
    start = _HEAD.size + n
    if start + _RID.size > len(payload):
        raise PayloadError("payload truncated in its header")
    try:
        node = bytes(payload[_HEAD.size:start]).decode()
    except UnicodeDecodeError:
        raise PayloadError("payload node id is not UTF-8") from None
    (rid,) = _RID.unpack_from(payload, start)
    return kind, node, rid, start + _RID.size


def decode(payload: bytes) -> Envelope:
    kind, node, rid, start = _header(payload)
    body = memoryview(payload)[start:]
    if kind == KIND_GAP:
        try:
            g = json.loads(bytes(body))
            gap = Gap(str(g["source"]), int(g["start_ns"]), int(g["end_ns"]), str(g["reason"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise PayloadError(f"gap record from {node} rid {rid} is malformed: {exc}") from None
        return Envelope(node, rid, gap)
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(body))
        if not reader.schema.equals(READING_SCHEMA, check_metadata=False):
            raise PayloadError(f"batch from {node} rid {rid} has schema {reader.schema.names},"
                               f" expected the reading schema {READING_SCHEMA.names}")
        batches = list(reader)
    except pa.ArrowException as exc:
        raise PayloadError(f"batch from {node} rid {rid} is not a readable Arrow IPC stream: {exc}") from None
    if len(batches) != 1:
        raise PayloadError(f"batch from {node} rid {rid} holds {len(batches)} record batches, expected 1")
    batch = batches[0]
    if batch.num_rows > MAX_BATCH_ROWS:
        raise PayloadError(f"batch from {node} rid {rid} has {batch.num_rows} rows (limit {MAX_BATCH_ROWS})")
    try:
        batch.validate(full=True)
    except pa.ArrowInvalid as exc:
        raise PayloadError(f"batch from {node} rid {rid} is corrupt: {exc}") from None
    return Envelope(node, rid, batch)
