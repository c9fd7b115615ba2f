"""The deterministic signal generator: a scenario and a seed in, samples a chunk of ticks at a time.

Every stream has its own NumPy generator seeded from ``(seed, stream index)`` and ticks are
generated strictly in order, so the same scenario and seed give byte-identical samples whether the
live servers ask for one tick at a time or a replay asks for a million. Fault effects are applied
here; setpoint changes and lot changeovers are normal operation and never labelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firmware_sim.scenario import (
    BAD_NOT_CONNECTED,
    BAD_SENSOR_FAILURE,
    COLDCHAIN_FAULTS,
    DEVICE_FAULTS,
    SETPOINT_SUFFIX,
    UNCERTAIN_LAST_USABLE,
    VALUE_FAULTS,
    FaultSpec,
    Scenario,
    Stream,
    lines_of,
    shipments_of,
    streams_of,
)


@dataclass(slots=True)
class Chunk:
    """Samples for consecutive ticks: arrays shaped (ticks, streams), plus the tick numbers."""

    ticks: np.ndarray  # (T,) int64
    values: np.ndarray  # (T, S) float64, rounded to each stream's decimals
    status: np.ndarray  # (T, S) uint32 OPC UA status code
    emit: np.ndarray  # (T, S) bool: False where no sample is produced (dropout, disconnect, restart)
    ts: np.ndarray  # (T, S) int64 source timestamp in ns (the device's clock: skew shows here)


class PlantGenerator:
    """Samples of every stream for consecutive ranges of ticks; stateful, strictly sequential."""

    def __init__(self, scenario: Scenario, seed: int, streams: list[Stream] | None = None) -> None:
        """``streams`` restricts generation to a subset (one line's server process); the values of a
        stream do not depend on which other streams are generated with it."""
        self.scenario = scenario
        self.seed = seed
        self.all_streams = streams_of(scenario)
        self.streams = self.all_streams if streams is None else streams
        self._col = {s.index: c for c, s in enumerate(self.streams)}
        self._rngs = [np.random.default_rng([seed, s.index]) for s in self.streams]
        self._next_tick = 0
        self._stuck_at: dict[int, float] = {}
        self._prev_row = np.array([s.nominal for s in self.streams], dtype=np.float64)
        self.lines = {ln.key: ln for ln in lines_of(scenario)}
        self.shipments = {sh.id: sh for sh in shipments_of(scenario)}
        self.start_ns = int(scenario.plant.start.timestamp()) * 1_000_000_000
        self.tick_ns = round(scenario.plant.tick_s * 1e9)
        self.faults = [(f, self._fault_columns(f)) for f in scenario.faults]

    def _fault_columns(self, f: FaultSpec) -> list[int]:
        """Columns (in this generator's streams) a fault acts on."""
        cols = []
        for s in self.streams:
            if f.kind in COLDCHAIN_FAULTS:
                chans = ("temperature", "door_open") if f.kind == "door_open" else ("temperature",)
                hit = s.line == f.target and s.sensor in chans
            elif f.kind in VALUE_FAULTS:
                hit = f.target in (s.key, f"{s.line}/{s.sensor}") if s.kind == "serial" else f.target == s.key
            elif f.kind in DEVICE_FAULTS:
                hit = f.target == (s.line if s.kind == "serial" else s.source)
            else:
                hit = s.kind == "opcua" and f.target == s.line_key
            if hit:
                cols.append(self._col[s.index])
        return cols

    @property
    def next_tick(self) -> int:
        return self._next_tick

    def tick_ts(self, ticks: np.ndarray | int) -> np.ndarray | int:
        """Simulated true time (ns since epoch) of tick numbers."""
        return self.start_ns + np.asarray(ticks, dtype=np.int64) * self.tick_ns

    def lot_at(self, line_key: str, ticks: np.ndarray) -> np.ndarray:
        """Lot number (1-based) in production on a line at each tick."""
        ln = self.lines[line_key]
        return (np.asarray(ticks) * self.scenario.plant.tick_s // ln.lot_every_s).astype(np.int64) + 1

    def lot_name(self, line_key: str, number: int) -> str:
        return f"{self.lines[line_key].lot_prefix}{number:04d}"

    def lot_of(self, line_key: str, tick: int) -> str:
        return self.lot_name(line_key, int(self.lot_at(line_key, np.array([tick]))[0]))

    def generate(self, n_ticks: int) -> Chunk:
        """The next ``n_ticks`` ticks of every stream of this generator."""
        k0 = self._next_tick
        ticks = np.arange(k0, k0 + n_ticks, dtype=np.int64)
        t_s = ticks * self.scenario.plant.tick_s
        n_streams = len(self.streams)
        values = np.empty((n_ticks, n_streams), dtype=np.float64)
        noise = np.empty((n_ticks, n_streams), dtype=np.float64)
        for c, s in enumerate(self.streams):
            noise[:, c] = self._rngs[c].standard_normal(n_ticks)
            level = np.full(n_ticks, s.nominal)
            # the process follows a new setpoint one scan after the PLC publishes it
            lag = 0.0 if s.sensor.endswith(SETPOINT_SUFFIX) else self.scenario.plant.tick_s
            for at_s, value in s.setpoints:
                level[t_s >= at_s + lag] = value
            if s.cycle_amplitude:
                level += s.cycle_amplitude * np.sin(2 * np.pi * t_s / s.cycle_period_s)
            if s.sensor == "battery":
                level -= 1e-5 * t_s  # slow, noiseless discharge
            values[:, c] = level
        scale = np.array([s.noise for s in self.streams])
        status = np.zeros((n_ticks, n_streams), dtype=np.uint32)
        emit = np.ones((n_ticks, n_streams), dtype=np.bool_)
        ts = np.repeat(self.tick_ts(ticks)[:, None], n_streams, axis=1)
        for f, cols in self.faults:
            if not cols:
                continue
            active = (t_s >= f.at_s) & (t_s < f.at_s + f.duration_s)
            if not active.any():
                continue
            rel = (t_s[active] - f.at_s) / f.duration_s  # 0 → 1 across the fault
            for c in cols:
                self._apply(f, c, active, rel, values, noise, scale, status, emit, ts)
        values += noise * scale
        for f, cols in self.faults:  # stuck holds the *noisy* value of its first tick
            if f.kind == "stuck" and cols:
                active = (t_s >= f.at_s) & (t_s < f.at_s + f.duration_s)
                if active.any():
                    first = int(np.argmax(active))
                    for c in cols:
                        held = self._stuck_at.setdefault(c, float(values[first, c]))
                        values[active, c] = held
        for c, s in enumerate(self.streams):
            values[:, c] = np.round(values[:, c], s.decimals)
        # Uncertain_LastUsableValue: the PLC repeats the last good value it had.
        for t, c in zip(*np.nonzero(status == UNCERTAIN_LAST_USABLE), strict=True):
            values[t, c] = values[t - 1, c] if t > 0 else self._prev_row[c]
        self._prev_row = values[-1].copy() if n_ticks else self._prev_row
        values[status >= 0x80000000] = np.nan  # a Bad status carries no value (Part 4, 7.7.1)
        self._next_tick += n_ticks
        return Chunk(ticks, values, status, emit, ts)

    def _apply(self, f: FaultSpec, c: int, active: np.ndarray, rel: np.ndarray, values: np.ndarray,
               noise: np.ndarray, scale: np.ndarray, status: np.ndarray, emit: np.ndarray, ts: np.ndarray) -> None:
        s = self.streams[c]
        k = f.kind
        if k in ("spike", "level_shift"):
            values[active, c] += f.magnitude
        elif k == "drift":
            values[active, c] += f.magnitude * rel
        elif k == "out_of_spec":
            values[active, c] += f.magnitude * np.minimum(1.0, np.minimum(rel, 1.0 - rel) * 5.0 + 0.2)
        elif k == "variance_increase":
            noise[active, c] *= f.magnitude
        elif k == "door_open":
            if s.sensor == "door_open":
                values[active, c] = 1.0
            else:  # the load warms towards +magnitude within ~10 s, then holds
                secs = rel * f.duration_s
                values[active, c] += f.magnitude * np.minimum(1.0, (secs + 1) / 10.0)
        elif k == "compressor_failure":
            if s.sensor == "temperature":
                values[active, c] += f.magnitude * rel  # a slow climb, door shut
        elif k == "sensor_fault":
            status[active, c] = BAD_SENSOR_FAILURE
        elif k == "device_disconnect":
            if s.kind == "opcua":
                # As PLCs do: the last value is held as Uncertain for a moment (up to 2 s), then
                # the I/O station is declared lost and the tags go Bad.
                secs = rel * f.duration_s
                held = secs < min(2.0, f.duration_s / 2)
                idx = np.flatnonzero(active)
                status[idx[held], c] = UNCERTAIN_LAST_USABLE  # the value itself is held in generate()
                status[idx[~held], c] = BAD_NOT_CONNECTED
            else:
                emit[active, c] = False  # the logger is unplugged: nothing on the line
        elif k in ("dropout", "opcua_server_restart"):
            emit[active, c] = False
        elif k == "clock_skew":
            ts[active, c] += round(f.magnitude * 1e9)
        # stuck is applied after noise; frame faults act on the serial line, not on values.

    def custody(self) -> list[dict]:
        """Ground truth of custody: each shipment's stages, with the lot and the logger."""
        return [{"shipment": sh.id, "lot": sh.lot, "logger": sh.logger, "stage": st.stage, "location": st.location,
                 "at_ns": self.start_ns + round(st.at_s * 1e9)} for sh in self.shipments.values() for st in sh.stages]

    def labels(self) -> list[dict]:
        """Ground truth: one row per injected fault and stream it acts on, in simulated time."""
        rows = []
        for f, cols in self.faults:
            start = self.start_ns + round(f.at_s * 1e9)
            for c in cols:
                s = self.streams[c]
                ship = self.shipments.get(s.line) if s.kind == "serial" else None
                rows.append({
                    "kind": f.kind, "site": s.site, "line": s.line, "device": s.device, "sensor": s.sensor,
                    "start_ns": start, "end_ns": start + round(f.duration_s * 1e9), "magnitude": f.magnitude,
                    "shipment": ship.id if ship else None, "lot": ship.lot if ship else None,
                })
        return rows
