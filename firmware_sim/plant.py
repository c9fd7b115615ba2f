"""The simulated plant: line PLC servers and pty loggers driven by one generator, plus ground truth.

``SimulatedPlant`` is an async context manager. ``run_ticks`` advances simulated time at
``speed`` × real time; every value it puts on a server or a pty is also appended to the ground
truth, which ``write_truth`` saves as Parquet (``readings.parquet`` and ``labels.parquet``).
Ground truth lists only what was really sent: a frame the pty refused is not in it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from firmware_sim.opcua_server import LinePlcServer
from firmware_sim.scenario import PlantGenerator, Scenario
from firmware_sim.serial_logger import PtyLogger, encode_frame

log = logging.getLogger(__name__)

TRUTH_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("sensor", pa.string()),
        ("tick", pa.int64()),
        ("ts", pa.timestamp("ns", tz="UTC")),
        ("value", pa.float64()),
        ("lot", pa.string()),
    ]
)


class PlantState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class SimulatedPlant:
    def __init__(self, scenario: Scenario, seed: int, speed: float = 1.0, host: str = "127.0.0.1",
                 opcua_port: int = 0) -> None:
        self.scenario = scenario
        self.speed = speed
        self.gen = PlantGenerator(scenario, seed)
        self.opcua = LinePlcServer(scenario, self.gen.streams, host, opcua_port) if scenario.lines else None
        self.loggers: dict[str, PtyLogger] = {}
        self.state = PlantState.NEW
        self._truth: list[pa.RecordBatch] = []
        self._current_lot: dict[str, str] = {}

    async def __aenter__(self) -> SimulatedPlant:
        if self.state is not PlantState.NEW:
            raise RuntimeError("a SimulatedPlant can be started once")
        if self.opcua is not None:
            await self.opcua.start()
        for sh in self.scenario.shipments:
            self.loggers[sh.id] = PtyLogger(sh.logger)
        self.state = PlantState.RUNNING
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.state = PlantState.CLOSED
        if self.opcua is not None:
            await asyncio.shield(self.opcua.stop())
        for lg in self.loggers.values():
            lg.close()

    @property
    def endpoints(self) -> dict:
        return {
            "opcua": self.opcua.endpoint if self.opcua else None,
            "serial": {sid: lg.path for sid, lg in self.loggers.items()},
        }

    def produced(self) -> dict[str, int]:
        """Readings sent so far per source (``site/line/device``)."""
        counts: dict[str, int] = {}
        for b in self._truth:
            for src, n in zip(*np.unique(b.column("source").to_numpy(zero_copy_only=False), return_counts=True),
                              strict=True):
                counts[str(src)] = counts.get(str(src), 0) + int(n)
        return counts

    async def run_ticks(self, stop: asyncio.Event, max_ticks: int | None = None) -> int:
        """Emit ticks paced at ``tick_s / speed`` until ``stop`` is set; returns ticks emitted."""
        period = self.scenario.plant.tick_s / self.speed
        t0 = time.monotonic()
        emitted = 0
        while not stop.is_set() and (max_ticks is None or emitted < max_ticks):
            await self._emit_tick()
            emitted += 1
            delay = t0 + emitted * period - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
        return emitted

    async def _emit_tick(self) -> None:
        tick = self.gen.next_tick
        values = self.gen.generate(1)[0]
        ts = int(self.gen.tick_ts(tick))
        rows: dict[str, list] = {name: [] for name in TRUTH_SCHEMA.names}

        def record(stream, value: float, lot: str | None) -> None:
            rows["source"].append(stream.source)
            rows["sensor"].append(stream.sensor)
            rows["tick"].append(tick)
            rows["ts"].append(ts)
            rows["value"].append(value)
            rows["lot"].append(lot)

        for line in self.scenario.lines:
            lot = self.gen.lot_of(line, tick)
            if self._current_lot.get(line.name) != lot:
                self._current_lot[line.name] = lot
                await self.opcua.write_lot(line.name, lot, ts)
            for s in self.gen.streams:
                if s.kind == "opcua" and s.line == line.name:
                    await self.opcua.write(s.index, float(values[s.index]), ts)
                    record(s, float(values[s.index]), lot)
        for sh in self.scenario.shipments:
            lg = self.loggers[sh.id]
            chans = [s for s in self.gen.streams if s.line == sh.id]
            v = {s.sensor: float(values[s.index]) for s in chans}
            frame = encode_frame(sh.logger, lg.seq, ts // 1_000_000, v["temperature"], v["humidity"],
                                 int(v["door_open"]), v["battery"])
            lg.seq += 1
            if lg.write(frame):
                for s in chans:
                    record(s, v[s.sensor], sh.lot)
        self._truth.append(pa.RecordBatch.from_pydict(rows, schema=TRUTH_SCHEMA))

    def write_truth(self, out_dir: Path) -> dict[str, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        readings = pa.Table.from_batches(self._truth, schema=TRUTH_SCHEMA)
        pq.write_table(readings, out_dir / "readings.parquet")
        labels = pa.Table.from_pylist(self.gen.labels()) if self.scenario.faults else pa.table({})
        pq.write_table(labels, out_dir / "labels.parquet")
        return {"readings": out_dir / "readings.parquet", "labels": out_dir / "labels.parquet"}

