"""Columnar batch building shared by every reader: streams, lots, sequence numbers.

Readers append plain scalars to column lists (the only per-reading Python work they do) and
``BatchBuilder.build`` turns them into one ``READING_SCHEMA`` batch with NumPy: dictionary columns
from stream indices, a lot per row from each line's lot timeline (by source timestamp, so a reading
taken just before a changeover keeps the old lot even if it arrives after), and ``seq`` stamped per
source in arrival order from a ``SeqAllocator``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from edge.sequence import SeqAllocator
from qctrace.schema import READING_SCHEMA

log = logging.getLogger(__name__)

_MIN_TS = np.iinfo(np.int64).min
_MAX_TS = np.iinfo(np.int64).max


@dataclass(slots=True)
class LotTimeline:
    """Which lot was current on a line (or in a shipment) from which source timestamp on."""

    starts: list[int] = field(default_factory=list)
    lots: list[str] = field(default_factory=list)

    def set(self, ts_ns: int, lot: str) -> None:
        if self.lots and self.lots[-1] == lot:
            return
        if self.starts and ts_ns < self.starts[-1]:
            # Out-of-order changeover notification: keep the timeline sorted.
            i = int(np.searchsorted(self.starts, ts_ns, side="right"))
            self.starts.insert(i, ts_ns)
            self.lots.insert(i, lot)
            return
        self.starts.append(ts_ns)
        self.lots.append(lot)


class StreamTable:
    """Known streams (one per sensor) and the sources and lot timelines they belong to."""

    def __init__(self) -> None:
        self.keys: list[tuple[str, str, str, str]] = []
        self._index: dict[tuple[str, str, str, str], int] = {}
        self.sources: list[str] = []
        self._source_index: dict[str, int] = {}
        self.source_of: list[int] = []
        self.timelines: list[LotTimeline] = []
        self._timeline_index: dict[str, int] = {}
        self.timeline_of: list[int] = []

    def add(self, site: str, line: str, device: str, sensor: str, lot_scope: str | None = None) -> int:
        """Register a sensor; ``lot_scope`` names the lot timeline it follows (default: its line)."""
        key = (site, line, device, sensor)
        if key in self._index:
            return self._index[key]
        source = f"{site}/{line}/{device}"
        if source not in self._source_index:
            self._source_index[source] = len(self.sources)
            self.sources.append(source)
        scope = lot_scope or f"{site}/{line}"
        if scope not in self._timeline_index:
            self._timeline_index[scope] = len(self.timelines)
            self.timelines.append(LotTimeline())
        idx = len(self.keys)
        self.keys.append(key)
        self._index[key] = idx
        self.source_of.append(self._source_index[source])
        self.timeline_of.append(self._timeline_index[scope])
        return idx

    def timeline(self, scope: str) -> LotTimeline:
        return self.timelines[self._timeline_index[scope]]


class BatchBuilder:
    """Accumulates readings as columns; ``build`` returns a schema batch and starts afresh."""

    def __init__(self, streams: StreamTable, seqs: SeqAllocator) -> None:
        self.streams = streams
        self.seqs = seqs
        self.emitted_per_source: dict[str, int] = {}
        self.rejected_ts = 0  # readings refused: a source time outside timestamp[ns]'s range
        self._reset()

    def _reset(self) -> None:
        self._stream: list[int] = []
        self._ts: list[int] = []
        self._recv: list[int] = []
        self._value: list[float] = []
        self._quality: list[int] = []
        self.first_added = 0.0

    def __len__(self) -> int:
        return len(self._ts)

    def add(self, stream: int, ts_ns: int, value: float, quality: int, recv_ns: int | None = None) -> None:
        if not self._ts:
            self.first_added = time.monotonic()
        self._stream.append(stream)
        self._ts.append(ts_ns)
        self._recv.append(time.time_ns() if recv_ns is None else recv_ns)
        self._value.append(value)
        self._quality.append(quality)

    def received_per_source(self) -> dict[str, int]:
        """Readings received per source: already built into batches plus still buffered."""
        out = dict(self.emitted_per_source)
        if self._stream:
            src = np.asarray(self.streams.source_of, dtype=np.int32)[np.asarray(self._stream, dtype=np.int32)]
            for s, n in zip(*np.unique(src, return_counts=True), strict=True):
                name = self.streams.sources[s]
                out[name] = out.get(name, 0) + int(n)
        return out

    def build(self) -> pa.RecordBatch | None:
        if not self._ts:
            return None
        try:
            ts = np.asarray(self._ts, dtype=np.int64)
        except OverflowError:  # a device time outside timestamp[ns] (before 1677, after 2262): no reading
            self._drop_unrepresentable()
            if not self._ts:
                return None
            ts = np.asarray(self._ts, dtype=np.int64)
        st = self.streams
        stream = np.asarray(self._stream, dtype=np.int32)
        n = len(ts)
        cols: list[pa.Array] = [
            pa.array(ts, pa.timestamp("ns", tz="UTC")),
            pa.array(np.asarray(self._recv, dtype=np.int64), pa.timestamp("ns", tz="UTC")),
        ]
        for part in range(4):
            names = [k[part] for k in st.keys]
            uniq, inverse = np.unique(np.asarray(names, dtype=object), return_inverse=True)
            cols.append(pa.DictionaryArray.from_arrays(pa.array(inverse[stream].astype(np.int32)),
                                                       pa.array(uniq.tolist(), pa.string())))
        cols.append(pa.array(np.asarray(self._value, dtype=np.float64)))
        cols.append(pa.array(np.asarray(self._quality, dtype=np.uint8)))
        cols.append(pa.array(self._stamp_seq(stream), pa.uint64()))
        cols.append(self._lots(stream, ts))
        cols.append(pa.array(np.zeros(n, dtype=np.uint32)))
        self._reset()
        return pa.RecordBatch.from_arrays(cols, schema=READING_SCHEMA)

    def _drop_unrepresentable(self) -> None:
        """Refuse readings whose source time no nanosecond timestamp can hold (an OPC UA "no time"
        DateTime of 1601, a clock gone wild): counted in ``rejected_ts`` and logged, never a crash
        that would lose the good readings of the same batch."""
        ok = [_MIN_TS <= t <= _MAX_TS for t in self._ts]
        keep = [i for i, good in enumerate(ok) if good]
        bad = sorted({"/".join(self.streams.keys[s]) for s, good in zip(self._stream, ok, strict=True) if not good})
        self.rejected_ts += len(ok) - len(keep)
        log.warning("batch.rejected_timestamps n=%d sensors=%s", len(ok) - len(keep), ",".join(bad))
        for name in ("_stream", "_ts", "_recv", "_value", "_quality"):
            col = getattr(self, name)
            setattr(self, name, [col[i] for i in keep])

    def _stamp_seq(self, stream: np.ndarray) -> np.ndarray:
        src = np.asarray(self.streams.source_of, dtype=np.int32)[stream]
        seq = np.empty(len(src), dtype=np.uint64)
        for s in np.unique(src):
            rows = np.flatnonzero(src == s)
            name = self.streams.sources[s]
            first = self.seqs.take(name, len(rows))
            seq[rows] = np.arange(first, first + len(rows), dtype=np.uint64)
            self.emitted_per_source[name] = self.emitted_per_source.get(name, 0) + len(rows)
        return seq

    def _lots(self, stream: np.ndarray, ts: np.ndarray) -> pa.Array:
        tl_of = np.asarray(self.streams.timeline_of, dtype=np.int32)[stream]
        names: list[str] = []
        out = np.full(len(ts), -1, dtype=np.int32)
        for t in np.unique(tl_of):
            tl = self.streams.timelines[t]
            if not tl.lots:
                continue
            rows = np.flatnonzero(tl_of == t)
            pos = np.searchsorted(np.asarray(tl.starts, dtype=np.int64), ts[rows], side="right") - 1
            known = pos >= 0
            out[rows[known]] = pos[known] + len(names)
            names.extend(tl.lots)
        mask = out < 0
        indices = pa.array(np.where(mask, 0, out), pa.int32(), mask=mask)
        dictionary = pa.array(names or [""], pa.string())
        return pa.DictionaryArray.from_arrays(indices, dictionary)


def fixed_lot(streams: StreamTable, scope: str, lot: str) -> None:
    """A lot that holds for all time in a scope, e.g. the lot a shipment's logger travels with."""
    streams.timeline(scope).set(_MIN_TS, lot)
