"""The one reading schema: every stage imports it from here and nothing redeclares a column.

A reading is a row of an Arrow record batch, never a Python object on the hot path. The
``Reading`` dataclass exists for tests, the simulator's ground truth and other cold paths that
want one row at a time; ``readings_to_batch`` / ``batch_to_readings`` convert both ways.

Identity: a reading's *source* is its device path ``site/line/device``; ``seq`` is a per-source
sequence number stamped by the edge, so ``(source, seq)`` names a reading uniquely and a replay
can always be recognised as a duplicate.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

SCHEMA_VERSION = 1
"""Bumped on any change of a column's name, type or meaning; stored in Parquet file metadata."""

_DICT = pa.dictionary(pa.int32(), pa.string())
_TS = pa.timestamp("ns", tz="UTC")

READING_SCHEMA = pa.schema(
    [
        pa.field("ts", _TS, nullable=False, metadata={"doc": "source timestamp (device clock)"}),
        pa.field("recv_ts", _TS, nullable=False, metadata={"doc": "when the edge received it"}),
        pa.field("site", _DICT, nullable=False),
        pa.field("line", _DICT, nullable=False),
        pa.field("device", _DICT, nullable=False),
        pa.field("sensor", _DICT, nullable=False),
        pa.field("value", pa.float64(), nullable=True, metadata={"doc": "engineering value"}),
        pa.field("quality", pa.uint8(), nullable=False, metadata={"doc": "Quality enum"}),
        pa.field("seq", pa.uint64(), nullable=False, metadata={"doc": "per-source sequence number"}),
        pa.field("lot", _DICT, nullable=True, metadata={"doc": "lot in production or in transit"}),
        pa.field("flags", pa.uint32(), nullable=False, metadata={"doc": "Flag bits; 0 = nothing found"}),
    ],
    metadata={"qctrace.schema_version": str(SCHEMA_VERSION)},
)

KEY_COLUMNS = ("site", "line", "device", "sensor")
"""A sensor is named by these four columns together."""

SOURCE_COLUMNS = ("site", "line", "device")
"""A source (the unit that numbers its readings with ``seq``) is named by these three."""


class Quality(enum.IntEnum):
    """OPC UA status code classes, the only quality distinction kept per reading."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2

    @classmethod
    def from_status_code(cls, code: int) -> Quality:
        """Map a 32-bit OPC UA StatusCode by its two severity bits (Part 4, 7.39)."""
        severity = (code >> 30) & 0b11
        return {0: cls.GOOD, 1: cls.UNCERTAIN}.get(severity, cls.BAD)


class Flag(enum.IntFlag):
    """Bits of the ``flags`` column, one per detection rule.

    The numbering is part of the stored data: never renumber a bit, only add new ones.
    ``NELSON_1`` … ``NELSON_8`` are Nelson's eight run rules in Nelson's own order (1984), against
    the sensor's centre line and sigma (configured, or estimated from a phase I baseline):
    1 one point beyond 3σ; 2 nine points in a row on one side of the centre; 3 six points in a row
    steadily increasing or decreasing; 4 fourteen points in a row alternating up and down; 5 two of
    three points beyond 2σ on the same side; 6 four of five points beyond 1σ on the same side;
    7 fifteen points in a row within 1σ; 8 eight points in a row beyond 1σ, on either side.
    (Western Electric's rules are 1, 5, 6 and a run of 8 on one side: rule 2 with length 8.)
    """

    NONE = 0
    SPEC_LOW = 1 << 0  # value below the lower specification limit
    SPEC_HIGH = 1 << 1  # value above the upper specification limit
    EWMA_Z = 1 << 2  # |x - EWMA mean| / EWMA sd above the limit
    BAD_QUALITY = 1 << 3  # the source said Bad; the value is not judged
    NOT_FINITE = 1 << 4  # NaN or +-inf value
    NELSON_1 = 1 << 5
    NELSON_2 = 1 << 6
    NELSON_3 = 1 << 7
    NELSON_4 = 1 << 8
    NELSON_5 = 1 << 9
    NELSON_6 = 1 << 10
    NELSON_7 = 1 << 11
    NELSON_8 = 1 << 12
    CUSUM_HIGH = 1 << 13  # upper tabular CUSUM above h·σ: a sustained upward shift or drift
    CUSUM_LOW = 1 << 14  # lower tabular CUSUM above h·σ
    RATE = 1 << 15  # |Δx/Δt| above the sensor's maximum rate of change
    SPIKE = 1 << 16  # robust outlier: |x - running median| above k scaled MADs
    STUCK = 1 << 17  # the same value N times in a row (a frozen sensor or register)
    GAP = 1 << 18  # this reading came after a silence longer than the sensor's allowed interval
    BAND_LOW = 1 << 19  # cold chain: below the product's band (temperature or humidity)
    BAND_HIGH = 1 << 20  # cold chain: above the product's band
    BUDGET = 1 << 21  # cold chain: cumulative time out of band exceeds the excursion budget
    DOOR_OPEN = 1 << 22  # cold chain: a door open longer than allowed
    STALE = 1 << 23  # timer: the sensor has been silent longer than allowed (no reading carries it)

    def rule_names(self) -> list[str]:
        """Names of the set bits, for people: ``['SPEC_HIGH', 'EWMA_Z']``."""
        return [f.name for f in Flag if f and f in self and f.name]


def flag_names(flags: int) -> str:
    """Comma-separated rule names of a flags value, ``''`` for 0."""
    return ",".join(Flag(int(flags)).rule_names())


@dataclass(frozen=True, slots=True)
class Reading:
    """One row of ``READING_SCHEMA``; for cold paths and tests only. Timestamps in ns since epoch."""

    ts: int
    recv_ts: int
    site: str
    line: str
    device: str
    sensor: str
    value: float | None
    quality: int
    seq: int
    lot: str | None = None
    flags: int = 0

    @property
    def source(self) -> str:
        return f"{self.site}/{self.line}/{self.device}"


@dataclass(frozen=True, slots=True)
class Gap:
    """A stretch of time in which a source's readings could not be collected, and why.

    Edge readers send it through the transport like a batch, so downstream knows data is missing
    rather than flat. ``start_ns`` is the source time of the last reading before the outage (or of
    the loss when none was seen), ``end_ns`` that of the first reading after it.
    """

    source: str
    start_ns: int
    end_ns: int
    reason: str


@dataclass(frozen=True, slots=True)
class Outage:
    """A reader's word to its forwarder (never sent on): ``source`` is out of reach since its reading
    at ``since_ns`` (``closed=False``), or that outage's gap record is now in the spool (``True``).

    A reader records an outage's gap only once it is over (it needs the first reading after it, and
    tries the server's history first); an edge killed meanwhile would otherwise restart its restart
    gap from readings that came *after* the outage began, and the outage's readings would be lost
    without a record. So the forwarder keeps open outages on disk and starts a restart gap at the
    earliest of them."""

    source: str
    since_ns: int
    closed: bool = False


def empty_batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=READING_SCHEMA)


def readings_to_batch(readings: Iterable[Reading]) -> pa.RecordBatch:
    """Build a record batch from row objects (cold path)."""
    cols: dict[str, list] = {name: [] for name in READING_SCHEMA.names}
    for r in readings:
        for name in READING_SCHEMA.names:
            cols[name].append(getattr(r, name))
    return batch_from_columns(cols)


def batch_from_columns(cols: dict[str, Sequence | pa.Array]) -> pa.RecordBatch:
    """Build a schema-conforming batch from plain columns (lists, NumPy or Arrow arrays).

    Missing ``flags`` default to 0 and a missing ``lot`` to null, so producers that know nothing
    of detection or lots need not invent them.
    """
    n = len(cols["ts"])
    arrays = []
    for field in READING_SCHEMA:
        col = cols.get(field.name)
        if col is None:
            if field.name == "flags":
                col = pa.array([0] * n, pa.uint32()) if n else pa.array([], pa.uint32())
            elif field.name == "lot":
                col = pa.nulls(n, pa.string())
            else:
                raise KeyError(f"batch_from_columns: column {field.name!r} is required")
        if pa.types.is_dictionary(field.type):
            arr = col if isinstance(col, pa.Array) else pa.array(col, pa.string())
            if not pa.types.is_dictionary(arr.type):
                arr = pc.dictionary_encode(arr)
            arrays.append(arr.cast(field.type))
        else:
            arrays.append(col.cast(field.type) if isinstance(col, pa.Array) else pa.array(col, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=READING_SCHEMA)


def batch_to_readings(batch: pa.RecordBatch | pa.Table) -> list[Reading]:
    """Rows of a batch as ``Reading`` objects (cold path: tests, exports of a few rows)."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    out = []
    cols = {name: table.column(name) for name in READING_SCHEMA.names}
    ts = cols["ts"].cast(pa.int64()).to_pylist()
    recv = cols["recv_ts"].cast(pa.int64()).to_pylist()
    rest = {k: cols[k].to_pylist() for k in READING_SCHEMA.names if k not in ("ts", "recv_ts")}
    for i in range(table.num_rows):
        out.append(Reading(ts=ts[i], recv_ts=recv[i], **{k: v[i] for k, v in rest.items()}))
    return out


def source_keys(batch: pa.RecordBatch | pa.Table) -> pa.Array:
    """``site/line/device`` per row, as a string array."""
    parts = [batch.column(c).cast(pa.string()) for c in SOURCE_COLUMNS]
    return pc.binary_join_element_wise(*parts, "/")


def sensor_keys(batch: pa.RecordBatch | pa.Table) -> pa.Array:
    """``site/line/device/sensor`` per row, as a string array."""
    parts = [batch.column(c).cast(pa.string()) for c in KEY_COLUMNS]
    return pc.binary_join_element_wise(*parts, "/")


def check_batch(batch: pa.RecordBatch) -> None:
    """Raise ``SchemaMismatch`` unless the batch has exactly the reading schema."""
    from qctrace.errors import SchemaMismatch

    if not batch.schema.equals(READING_SCHEMA, check_metadata=False):
        raise SchemaMismatch(expected=READING_SCHEMA, got=batch.schema)
