"""Edge readers: OPC UA and serial, columnar batching, sequence numbers, transports."""

from edge.base import Reader, ReaderState
from edge.batcher import BatchBuilder, LotTimeline, StreamTable, fixed_lot
from edge.frames import Frame, FrameDecoder, parse_frame
from edge.opcua import OpcUaReader
from edge.sequence import SeqAllocator
from edge.serial import SerialReader
from edge.transport import InProcessTransport, Transport

__all__ = [
    "BatchBuilder",
    "Frame",
    "FrameDecoder",
    "InProcessTransport",
    "LotTimeline",
    "OpcUaReader",
    "Reader",
    "ReaderState",
    "SeqAllocator",
    "SerialReader",
    "StreamTable",
    "Transport",
    "fixed_lot",
    "parse_frame",
]
