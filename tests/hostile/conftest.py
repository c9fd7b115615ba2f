"""Helpers for the hostile-input corpus: readings in through the real edge batcher and ingest."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pytest

from edge.batcher import BatchBuilder, StreamTable, fixed_lot
from edge.sequence import SeqAllocator
from ingest.pipeline import Ingest
from qctrace.config import Config


class Plant:
    """Readings from named sensors, batched by the edge's own BatchBuilder, ingested into ``data_dir``."""

    def __init__(self, data_dir: Path, cfg: Config | None = None) -> None:
        self.data_dir = data_dir
        self.cfg = cfg or Config(data_dir=data_dir)
        self.streams = StreamTable()
        self.builder = BatchBuilder(self.streams, SeqAllocator(None))
        self.facts: list = []
        self.added = 0
        self.ingest = Ingest(data_dir, self.cfg.detect, self.cfg.sink, self.facts.extend)

    def sensor(self, *parts: str, lot: str | None = None) -> int:
        """``sensor("site/line/device/sensor")``, or the four parts apart when a part holds a '/'."""
        site, line, device, sensor = parts[0].split("/") if len(parts) == 1 else parts
        scope = f"{site}/{line}/{device}"
        s = self.streams.add(site, line, device, sensor, lot_scope=scope)
        if lot is not None:
            fixed_lot(self.streams, scope, lot)
        return s

    def add(self, stream: int, rows: Iterable[tuple[int, float]], quality: int = 0, recv_ns: int | None = None) -> None:
        """Append readings; received "now" (the edge's clock) unless ``recv_ns`` says otherwise."""
        for ts, v in rows:
            self.builder.add(stream, ts, v, quality, recv_ns)
            self.added += 1

    def ingest_all(self) -> pa.RecordBatch:
        batch = self.builder.build()
        self.ingest.process(batch)
        self.ingest.finish()
        return batch


@pytest.fixture
def plant(tmp_path) -> Plant:
    return Plant(tmp_path / "data")


@pytest.fixture
def make_plant():
    """``make_plant(data_dir)``: another Plant on a data directory (a restarted ingest, say)."""
    return Plant
