"""Edge readers: OPC UA and serial, columnar batching, sequence numbers, transports."""

from edge.base import Reader, ReaderState
from edge.batcher import BatchBuilder, LotTimeline, StreamTable, fixed_lot
from edge.forward import Forwarder, Link
from edge.frames import Frame, FrameDecoder, parse_frame
from edge.modbus import ModbusReader
from edge.opcua import OpcUaReader
from edge.sequence import SeqAllocator
from edge.serial import SerialReader, serial_readers
from edge.spool import Spool
from edge.transport import InProcessLink

__all__ = [
    "BatchBuilder",
    "Forwarder",
    "Frame",
    "FrameDecoder",
    "InProcessLink",
    "Link",
    "LotTimeline",
    "ModbusReader",
    "OpcUaReader",
    "Reader",
    "ReaderState",
    "SeqAllocator",
    "SerialReader",
    "Spool",
    "StreamTable",
    "fixed_lot",
    "parse_frame",
    "serial_readers",
]
