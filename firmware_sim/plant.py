"""The simulated plant: line PLC servers and pty loggers driven by one scenario, plus ground truth.

Real plants run one PLC per line, and one asyncua server process saturates at about 7,000–8,000
value changes per second here, so each line's server runs in its own process when the plant has
more than one line (``processes=None`` decides that; ``True``/``False`` force it). Loggers run in
the main process. All of them tick on one wall-clock schedule: tick *k* is emitted at
``start_at + k × tick_s / speed``.

Everything a server or a logger really sends is also appended to the ground truth, which
``write_truth`` saves as Parquet: ``readings.parquet`` (one row per reading sent) and
``labels.parquet`` (one row per injected fault and signal it acts on). A frame the line damaged is
not in the readings: no correct reader could recover it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import multiprocessing as mp
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from firmware_sim.generator import Chunk, PlantGenerator
from firmware_sim.opcua_server import LinePlcServer, ServerSecurity
from firmware_sim.scenario import Scenario, Stream, shipments_of, streams_of

log = logging.getLogger(__name__)

TRUTH_SCHEMA = pa.schema(
    [
        ("source", pa.dictionary(pa.int32(), pa.string())),
        ("sensor", pa.dictionary(pa.int32(), pa.string())),
        ("tick", pa.int64()),
        ("ts", pa.timestamp("ns", tz="UTC")),
        ("value", pa.float64()),
        ("status", pa.uint32()),
        ("lot", pa.dictionary(pa.int32(), pa.string())),
    ]
)


def dictionary_codes(names: list[str]) -> tuple[np.ndarray, pa.Array]:
    """Per-item codes into a sorted dictionary of the distinct names: build once, index per tick."""
    uniq = sorted(set(names))
    pos = {n: i for i, n in enumerate(uniq)}
    return np.array([pos[n] for n in names], dtype=np.int32), pa.array(uniq, pa.string())


class TruthColumns:
    """Ground-truth rows for a fixed set of streams; the dictionaries are built once, not per tick."""

    def __init__(self, streams: list[Stream]) -> None:
        self._src = dictionary_codes([s.source for s in streams])
        self._sen = dictionary_codes([s.sensor for s in streams])

    def batch(self, cols: np.ndarray, chunk: Chunk, rows: np.ndarray, lots: list[str],
              lot_idx: np.ndarray) -> pa.RecordBatch:
        """Rows for (tick row, column) pairs of ``chunk``; ``lot_idx`` indexes ``lots``."""
        (src_of, sources), (sen_of, sensors) = self._src, self._sen
        return pa.RecordBatch.from_arrays([
            pa.DictionaryArray.from_arrays(pa.array(src_of[cols]), sources),
            pa.DictionaryArray.from_arrays(pa.array(sen_of[cols]), sensors),
            pa.array(chunk.ticks[rows]),
            pa.array(chunk.ts[rows, cols], pa.timestamp("ns", tz="UTC")),
            pa.array(chunk.values[rows, cols]),
            pa.array(chunk.status[rows, cols]),
            pa.DictionaryArray.from_arrays(pa.array(lot_idx.astype(np.int32)), pa.array(lots or [""], pa.string())),
        ], schema=TRUTH_SCHEMA)


class LineRunner:
    """One PLC server for a set of tags (one line), ticking them; used in-process or in a child."""

    def __init__(self, scenario: Scenario, seed: int, streams: list[Stream], host: str, port: int,
                 security: ServerSecurity | None = None) -> None:
        self.scenario = scenario
        self.gen = PlantGenerator(scenario, seed, streams)
        self._truth_cols = TruthColumns(self.gen.streams)
        self.server = LinePlcServer(streams, host, port, security)
        self.truth: list[pa.RecordBatch] = []
        self._restarts = [f for f in scenario.faults if f.kind == "opcua_server_restart"
                          and any(s.line_key == f.target for s in streams)]
        self._line_keys = sorted({s.line_key for s in streams})
        self._cols_of_line = {k: np.array([c for c, s in enumerate(self.gen.streams) if s.line_key == k])
                              for k in self._line_keys}

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def produced(self) -> dict[str, int]:
        return _count(self.truth)

    async def tick(self) -> None:
        tick = self.gen.next_tick
        t_s = tick * self.scenario.plant.tick_s
        down = any(f.at_s <= t_s < f.at_s + f.duration_s for f in self._restarts)
        if down and self.server.running:
            log.info("opcua.restart down tick=%d", tick)
            await self.server.stop()
        elif not down and not self.server.running:
            log.info("opcua.restart up tick=%d", tick)
            await self.server.start()
        chunk = self.gen.generate(1)
        ts0 = int(self.gen.tick_ts(tick))
        lots: list[str] = []
        lot_of_col = np.zeros(len(self.gen.streams), dtype=np.int32)
        for k in self._line_keys:
            lot = self.gen.lot_of(k, tick)
            lot_of_col[self._cols_of_line[k]] = len(lots)
            lots.append(lot)
            if self.server.current_lot(k) != lot:
                await self.server.write_lot(k, lot, ts0)
        if not self.server.running:
            return
        cols = np.flatnonzero(chunk.emit[0])
        for n, c in enumerate(cols):
            s = self.gen.streams[c]
            await self.server.write(s.index, float(chunk.values[0, c]), int(chunk.status[0, c]), int(chunk.ts[0, c]))
            if n % 200 == 199:
                await asyncio.sleep(0)  # a real PLC answers clients while it scans its I/O
        rows = np.zeros(len(cols), dtype=np.int64)
        self.truth.append(self._truth_cols.batch(cols, chunk, rows, lots, lot_of_col[cols]))


class LoggerRunner:
    """Every shipment's logger on its own pty, in the main process."""

    def __init__(self, scenario: Scenario, seed: int, dev_dir: Path | None, baudrate: int | None) -> None:
        from firmware_sim.serial_logger import PtyLogger

        self.scenario = scenario
        streams = [s for s in streams_of(scenario) if s.kind == "serial"]
        self.gen = PlantGenerator(scenario, seed, streams)
        self._truth_cols = TruthColumns(streams)
        self.shipments = shipments_of(scenario)
        self.loggers = {sh.id: PtyLogger(sh.logger, dev_dir / sh.logger if dev_dir else None, baudrate)
                        for sh in self.shipments}
        self._cols = {sh.id: [c for c, s in enumerate(streams) if s.line == sh.id] for sh in self.shipments}
        self._frame_faults = [f for f in scenario.faults if f.kind.endswith("_frames")]
        self._disconnects = [f for f in scenario.faults if f.kind == "device_disconnect"
                             and f.target in self.loggers]
        self._rng = np.random.default_rng([seed, 0xF4A3E])
        self.truth: list[pa.RecordBatch] = []

    def ports(self) -> dict[str, str]:
        return {sid: lg.port for sid, lg in self.loggers.items()}

    def produced(self) -> dict[str, int]:
        return _count(self.truth)

    async def tick(self) -> None:
        from firmware_sim.serial_logger import damage, encode_frame

        tick = self.gen.next_tick
        t_s = tick * self.scenario.plant.tick_s
        chunk = self.gen.generate(1)
        sent_cols: list[int] = []
        lots = [sh.lot for sh in self.shipments]
        lot_idx: list[int] = []
        pace = 0.0
        for k, sh in enumerate(self.shipments):
            lg = self.loggers[sh.id]
            unplugged = any(f.target == sh.id and f.at_s <= t_s < f.at_s + f.duration_s for f in self._disconnects)
            if unplugged and lg.connected:
                # The cable is pulled between frames: give a listening reader up to 1 s to take what
                # is already on the line, so the ground truth's "sent" means "could be received".
                for _ in range(100):
                    if not lg.unread():
                        break
                    await asyncio.sleep(0.01)
                lg.disconnect()
            elif not unplugged and not lg.connected:
                lg.reconnect()
            cols = self._cols[sh.id]
            if not chunk.emit[0, cols].all():
                continue
            v = chunk.values[0, cols]
            frame = encode_frame(sh.logger, lg.seq, int(chunk.ts[0, cols[0]]) // 1_000_000, float(v[0]),
                                 float(v[1]), int(v[2]), float(v[3]))
            lg.seq += 1
            hit = next((f.kind for f in self._frame_faults if f.target == sh.id
                        and f.at_s <= t_s < f.at_s + f.duration_s), None)
            data = damage(frame, hit, self._rng) if hit else frame
            if lg.write(data) and hit in (None, "oversized_frames"):
                sent_cols.extend(cols)
                lot_idx.extend([k] * len(cols))
            pace = max(pace, lg.pacing_s(len(data)))
        if pace:
            await asyncio.sleep(pace)
        cols_a = np.asarray(sent_cols, dtype=np.int64)
        self.truth.append(self._truth_cols.batch(cols_a, chunk, np.zeros(len(cols_a), np.int64), lots,
                                      np.asarray(lot_idx, dtype=np.int32)))

    def close(self) -> None:
        for lg in self.loggers.values():
            lg.close()


def _count(batches: list[pa.RecordBatch]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for b in batches:
        if b.num_rows:
            for d in b.column("source").value_counts().to_pylist():
                counts[d["values"]] = counts.get(d["values"], 0) + d["counts"]
    return counts


async def _paced(tick, stop: asyncio.Event, start_at: float, period: float, max_ticks: int | None) -> int:
    """Call ``tick`` for tick k at wall time ``start_at + k × period`` until stopped."""
    k = 0
    while not stop.is_set() and (max_ticks is None or k < max_ticks):
        delay = start_at + k * period - time.time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                break
        else:
            await asyncio.sleep(0)  # behind schedule: still let readers and servers run
        await tick()
        k += 1
    return k


# ---- one line server per process -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ChildSpec:
    scenario_json: str
    seed: int
    line_key: str
    host: str
    port: int
    security: ServerSecurity | None
    truth_path: str


def _child_main(spec: _ChildSpec, conn: Connection) -> None:  # pragma: no cover - runs in a child process
    # A spawned child starts with logging unconfigured: keep asyncua's per-request chatter out of
    # the terminal, as the CLI does in the parent.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    asyncio.run(_child(spec, conn))


async def _child(spec: _ChildSpec, conn: Connection) -> None:  # pragma: no cover - runs in a child process
    scenario = Scenario.model_validate_json(spec.scenario_json)
    gen = PlantGenerator(scenario, spec.seed)
    streams = [s for s in gen.all_streams if s.kind == "opcua" and s.line_key == spec.line_key]
    runner = LineRunner(scenario, spec.seed, streams, spec.host, spec.port, spec.security)
    await runner.start()
    conn.send(("ready", runner.endpoint))
    msg = await asyncio.to_thread(conn.recv)
    if msg[0] == "start":
        _, start_at, period, max_ticks = msg
        stop = asyncio.Event()
        task = asyncio.create_task(_paced(runner.tick, stop, start_at, period, max_ticks))
        watcher = asyncio.create_task(asyncio.to_thread(conn.recv))
        await asyncio.wait([task, watcher], return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        done, _ = await asyncio.wait([task], timeout=5.0)
        if not done:  # a scan stuck on a write: say where, then end it
            log.error("sim.child stuck line=%s stack=%s", spec.line_key, task.get_stack())
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if runner.truth:
            pq.write_table(pa.Table.from_batches(runner.truth, TRUTH_SCHEMA), spec.truth_path)
        conn.send(("stopped", runner.produced()))
        # Keep serving until told to quit, so clients can drain what is in flight.
        last = watcher.result()[0] if watcher.done() else (await watcher)[0]
        while last != "quit":
            last = (await asyncio.to_thread(conn.recv))[0]
    await runner.stop()


class PlantState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class SimulatedPlant:
    """The whole plant as one async context manager."""

    def __init__(self, scenario: Scenario, seed: int, speed: float = 1.0, host: str = "127.0.0.1",
                 opcua_port: int = 0, processes: bool | None = None, dev_dir: Path | None = None,
                 security: ServerSecurity | None = None, baudrate: int | None = None,
                 work_dir: Path | None = None) -> None:
        self.scenario = scenario
        self.seed = seed
        self.speed = speed
        self.host = host
        self.base_port = opcua_port
        self.security = security
        gen = PlantGenerator(scenario, seed)
        self.labels = gen.labels()
        self.custody = gen.custody()
        self._line_streams: dict[str, list[Stream]] = {}
        for s in gen.all_streams:
            if s.kind == "opcua":
                self._line_streams.setdefault(s.line_key, []).append(s)
        self.processes = len(self._line_streams) > 1 if processes is None else processes
        self.loggers = LoggerRunner(scenario, seed, dev_dir, baudrate) if scenario.shipments else None
        self._runners: list[LineRunner] = []
        self._children: list[tuple[mp.Process, Connection, Path]] = []
        self._work_dir = work_dir
        self._truth_parts: list[Path] = []
        self._produced: dict[str, int] = {}
        self.opcua_endpoints: list[str] = []
        self.state = PlantState.NEW

    async def __aenter__(self) -> SimulatedPlant:
        if self.state is not PlantState.NEW:
            raise RuntimeError("a SimulatedPlant can be started once")
        ports = iter(range(self.base_port, self.base_port + len(self._line_streams))) if self.base_port else None
        if self.processes:
            import tempfile

            work = (self._work_dir or Path(tempfile.mkdtemp(prefix="qctrace-sim-"))) / ".line-truth"
            work.mkdir(parents=True, exist_ok=True)
            ctx = mp.get_context("spawn")
            js = self.scenario.model_dump_json()
            for i, key in enumerate(self._line_streams):
                parent, child = ctx.Pipe()
                truth = work / f"truth-line-{i}.parquet"
                p = ctx.Process(target=_child_main, daemon=True, args=(
                    _ChildSpec(js, self.seed, key, self.host, next(ports) if ports else 0, self.security, str(truth)),
                    child))
                p.start()
                self._children.append((p, parent, truth))
            for p, conn, _ in self._children:
                msg = await asyncio.to_thread(_recv, conn, p, 60.0)
                self.opcua_endpoints.append(msg[1])
        else:
            for streams in self._line_streams.values():
                r = LineRunner(self.scenario, self.seed, streams, self.host, next(ports) if ports else 0,
                               self.security)
                await r.start()
                self._runners.append(r)
                self.opcua_endpoints.append(r.endpoint)
        self.state = PlantState.RUNNING
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.state = PlantState.CLOSED
        for r in self._runners:
            await asyncio.shield(r.stop())
        for p, conn, _ in self._children:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(("quit",))
            await asyncio.to_thread(p.join, 10)
            if p.is_alive():
                p.kill()
        if self.loggers is not None:
            self.loggers.close()

    @property
    def endpoints(self) -> dict:
        return {"opcua": list(self.opcua_endpoints), "serial": self.loggers.ports() if self.loggers else {}}

    def produced(self) -> dict[str, int]:
        """Readings sent so far per source (``site/line/device``)."""
        out = dict(self._produced)
        for part in [*self._runners, *([self.loggers] if self.loggers else [])]:
            for k, v in part.produced().items():
                out[k] = out.get(k, 0) + v
        return out

    async def run_ticks(self, stop: asyncio.Event, max_ticks: int | None = None) -> int:
        """Emit ticks paced at ``tick_s / speed`` until ``stop`` is set or ``max_ticks`` are done."""
        period = self.scenario.plant.tick_s / self.speed
        start_at = time.time() + (0.3 if self._children else 0.0)
        self.started_at = start_at  # wall time of tick 0: what end-to-end latency is measured from
        for _, conn, _ in self._children:
            conn.send(("start", start_at, period, max_ticks))

        async def tick() -> None:
            for r in self._runners:
                await r.tick()
            if self.loggers is not None:
                await self.loggers.tick()

        n = await _paced(tick, stop, start_at, period, max_ticks)
        for p, conn, truth in self._children:
            if max_ticks is None:
                conn.send(("stop",))
            msg = await asyncio.to_thread(_recv, conn, p, 120.0)
            for k, v in msg[1].items():
                self._produced[k] = self._produced.get(k, 0) + v
            if truth.exists():
                self._truth_parts.append(truth)
        return n

    def write_truth(self, out_dir: Path) -> dict[str, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        tables = [pq.read_table(p) for p in self._truth_parts]
        for part in [*self._runners, *([self.loggers] if self.loggers else [])]:
            if part.truth:
                tables.append(pa.Table.from_batches(part.truth, TRUTH_SCHEMA))
        readings = pa.concat_tables([t.cast(TRUTH_SCHEMA) for t in tables]).unify_dictionaries() if tables \
            else TRUTH_SCHEMA.empty_table()
        pq.write_table(readings, out_dir / "readings.parquet")
        for part in self._truth_parts:  # merged: the per-process parts are no longer needed
            part.unlink(missing_ok=True)
        pq.write_table(labels_table(self.labels), out_dir / "labels.parquet")
        pq.write_table(custody_table(self.custody), out_dir / "custody.parquet")
        return {"readings": out_dir / "readings.parquet", "labels": out_dir / "labels.parquet",
                "custody": out_dir / "custody.parquet"}


LABELS_SCHEMA = pa.schema([("kind", pa.string()), ("site", pa.string()), ("line", pa.string()),
                           ("device", pa.string()), ("sensor", pa.string()), ("start_ns", pa.int64()),
                           ("end_ns", pa.int64()), ("magnitude", pa.float64()), ("shipment", pa.string()),
                           ("lot", pa.string())])


def labels_table(labels: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(labels, schema=LABELS_SCHEMA)


CUSTODY_SCHEMA = pa.schema([("shipment", pa.string()), ("lot", pa.string()), ("logger", pa.string()),
                            ("stage", pa.string()), ("location", pa.string()), ("at_ns", pa.int64())])


def custody_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=CUSTODY_SCHEMA)


def _recv(conn: Connection, proc: mp.Process, timeout_s: float):
    if not conn.poll(timeout_s):
        raise RuntimeError(f"simulator line process {proc.pid} did not answer within {timeout_s:g} s"
                           f" (alive={proc.is_alive()}, exitcode={proc.exitcode})")
    return conn.recv()
