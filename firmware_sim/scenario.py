"""Scenario files and the deterministic signal generator behind every simulated device.

A scenario (TOML) describes a plant: sites → lines → devices → tags, each tag with its unit,
nominal value, noise, cycle and setpoint schedule, each line with its lot changeovers; cold-chain
shipments, each with a logger moving through custody stages; and labelled faults. Any list entry
may carry ``count = N`` with ``{i}`` in its name to stand for N numbered copies, which is how the
10,000-tag plant fits in a page.

``PlantGenerator`` turns a scenario into samples, a chunk of ticks at a time. Every stream has its
own NumPy generator seeded from ``(seed, stream index)`` and ticks are generated strictly in order,
so the same scenario and seed give byte-identical samples whether the live servers ask for one tick
at a time or a replay asks for a million. Setpoint changes and lot changeovers are normal
operation: they are never labelled as faults.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qctrace.errors import ConfigError

_NAME = r"^[A-Za-z0-9{][A-Za-z0-9_.:{}-]{0,63}$"
"""Names (before ``{i}`` expansion) become OPC UA browse names, Parquet partition paths and topic
levels; after expansion they must be plain."""
_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# OPC UA status codes a real PLC reports (Part 4 / Part 8), as plain numbers: no asyncua import here.
GOOD = 0
UNCERTAIN_LAST_USABLE = 0x40900000
BAD_SENSOR_FAILURE = 0x808C0000
BAD_NOT_CONNECTED = 0x808A0000

ValueFault = Literal["spike", "level_shift", "drift", "variance_increase", "stuck", "out_of_spec", "dropout",
                     "sensor_fault", "door_open", "compressor_failure"]
DeviceFault = Literal["clock_skew", "device_disconnect", "corrupt_frames", "partial_frames", "oversized_frames"]
LineFault = Literal["opcua_server_restart"]
FaultKind = ValueFault | DeviceFault | LineFault

VALUE_FAULTS: tuple[str, ...] = ValueFault.__args__
DEVICE_FAULTS: tuple[str, ...] = DeviceFault.__args__
SERIAL_ONLY = ("corrupt_frames", "partial_frames", "oversized_frames", "door_open", "compressor_failure")
OPCUA_ONLY = ("dropout", "sensor_fault")  # a logger frame carries every channel and no status
COLDCHAIN_FAULTS = ("door_open", "compressor_failure")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Setpoint(_Model):
    at_s: Annotated[float, Field(ge=0)]
    value: float


class TagSpec(_Model):
    name: Annotated[str, Field(pattern=_NAME)]
    count: Annotated[int, Field(ge=1)] = 1
    unit: str = ""
    nominal: float
    noise: Annotated[float, Field(ge=0)] = 0.0
    decimals: Annotated[int, Field(ge=0, le=9)] = 3
    eu_range: tuple[float, float] | None = None
    cycle_amplitude: float = 0.0
    cycle_period_s: Annotated[float, Field(gt=0)] = 60.0
    setpoints: tuple[Setpoint, ...] = ()


class DeviceSpec(_Model):
    name: Annotated[str, Field(pattern=_NAME)]
    count: Annotated[int, Field(ge=1)] = 1
    tags: tuple[TagSpec, ...]


class LineSpec(_Model):
    name: Annotated[str, Field(pattern=_NAME)]
    count: Annotated[int, Field(ge=1)] = 1
    lot_every_s: Annotated[float, Field(gt=0)] = 120.0
    lot_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.{}:-]{1,48}$")] = "LOT-"
    devices: tuple[DeviceSpec, ...]


class SiteSpec(_Model):
    name: Annotated[str, Field(pattern=_NAME)]
    lines: tuple[LineSpec, ...] = ()


Stage = Literal["packing", "truck", "distribution_centre", "store"]


class StageSpec(_Model):
    stage: Stage
    at_s: Annotated[float, Field(ge=0)]
    location: str


class ShipmentSpec(_Model):
    id: Annotated[str, Field(pattern=_NAME)]
    count: Annotated[int, Field(ge=1)] = 1
    lot: Annotated[str, Field(pattern=_NAME)]
    logger: Annotated[str, Field(pattern=_NAME)]
    temperature: float = 4.5
    temperature_noise: Annotated[float, Field(ge=0)] = 0.15
    humidity: float = 60.0
    humidity_noise: Annotated[float, Field(ge=0)] = 1.0
    band: tuple[float, float] = (2.0, 8.0)
    stages: tuple[StageSpec, ...] = ()


class FaultSpec(_Model):
    kind: FaultKind
    target: str = Field(description="SITE/LINE/DEVICE/TAG, SITE/LINE/DEVICE, SITE/LINE, SHIPMENT/CHANNEL or SHIPMENT")
    at_s: Annotated[float, Field(ge=0)]
    duration_s: Annotated[float, Field(gt=0)]
    magnitude: float = 0.0


class PlantSpec(_Model):
    start: datetime
    tick_s: Annotated[float, Field(gt=0)] = 1.0

    @field_validator("start")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("start needs a time zone, e.g. 2026-11-02T06:00:00Z")
        return v


class Scenario(_Model):
    plant: PlantSpec
    sites: tuple[SiteSpec, ...] = ()
    shipments: tuple[ShipmentSpec, ...] = ()
    faults: tuple[FaultSpec, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> Scenario:
        seen: set[str] = set()
        for s in streams_of(self):
            for part in (s.site, s.line, s.device, s.sensor):
                if not _PLAIN.match(part):
                    raise ValueError(f"{part!r} (in {s.key}) is not a plain name: letters, digits, _ . - only")
            if s.key in seen:
                raise ValueError(f"two signals are named {s.key}")
            seen.add(s.key)
        return self


LOGGER_CHANNELS = ("temperature", "humidity", "door_open", "battery")
"""What every cold-chain logger reports in each frame, in frame order."""

COLDCHAIN_SITE = "coldchain"
"""Site name under which shipments' loggers report: line = shipment id, device = logger id."""


@dataclass(frozen=True, slots=True)
class Stream:
    """One simulated signal: a PLC tag or a logger channel."""

    index: int
    site: str
    line: str
    device: str
    sensor: str
    unit: str
    nominal: float
    noise: float
    decimals: int
    kind: Literal["opcua", "serial"]
    eu_low: float
    eu_high: float
    cycle_amplitude: float = 0.0
    cycle_period_s: float = 60.0
    setpoints: tuple[tuple[float, float], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.site}/{self.line}/{self.device}/{self.sensor}"

    @property
    def source(self) -> str:
        return f"{self.site}/{self.line}/{self.device}"

    @property
    def line_key(self) -> str:
        return f"{self.site}/{self.line}"


@dataclass(frozen=True, slots=True)
class Line:
    """A line after expanding ``count``: its lot schedule, in site/line terms."""

    site: str
    name: str
    lot_every_s: float
    lot_prefix: str

    @property
    def key(self) -> str:
        return f"{self.site}/{self.name}"


@dataclass(frozen=True, slots=True)
class Shipment:
    id: str
    lot: str
    logger: str
    band: tuple[float, float]
    stages: tuple[StageSpec, ...]


def _expand(name: str, count: int) -> list[str]:
    if count == 1 and "{i" not in name:
        return [name]
    if "{i" not in name:
        raise ConfigError(f"{name!r}: count = {count} needs {{i}} in the name, e.g. '{name}-{{i:03d}}'")
    return [name.format(i=i) for i in range(count)]


def lines_of(scenario: Scenario) -> list[Line]:
    return [Line(site.name, ln, line.lot_every_s, line.lot_prefix.format(i=k))
            for site in scenario.sites for line in site.lines
            for k, ln in enumerate(_expand(line.name, line.count))]


def shipments_of(scenario: Scenario) -> list[Shipment]:
    out = []
    for sh in scenario.shipments:
        for k, sid in enumerate(_expand(sh.id, sh.count)):
            out.append(Shipment(sid, sh.lot.format(i=k), sh.logger.format(i=k), sh.band, sh.stages))
    return out


def streams_of(scenario: Scenario) -> list[Stream]:
    """Every signal of the plant, in a fixed order that defines each stream's seed."""
    out: list[Stream] = []
    for site in scenario.sites:
        for line in site.lines:
            for ln in _expand(line.name, line.count):
                for dev in line.devices:
                    for dn in _expand(dev.name, dev.count):
                        for tag in dev.tags:
                            lo, hi = tag.eu_range or (tag.nominal - 0.5 * abs(tag.nominal) - 10 * tag.noise,
                                                      tag.nominal + 0.5 * abs(tag.nominal) + 10 * tag.noise)
                            for tn in _expand(tag.name, tag.count):
                                out.append(Stream(len(out), site.name, ln, dn, tn, tag.unit, tag.nominal, tag.noise,
                                                  tag.decimals, "opcua", lo, hi, tag.cycle_amplitude,
                                                  tag.cycle_period_s, tuple((s.at_s, s.value) for s in tag.setpoints)))
    for sh_spec in scenario.shipments:
        for k, sid in enumerate(_expand(sh_spec.id, sh_spec.count)):
            logger = sh_spec.logger.format(i=k)
            specs = (
                ("temperature", "degC", sh_spec.temperature, sh_spec.temperature_noise, 2, -80.0, 120.0),
                ("humidity", "%RH", sh_spec.humidity, sh_spec.humidity_noise, 1, 0.0, 100.0),
                ("door_open", "", 0.0, 0.0, 0, 0.0, 1.0),
                ("battery", "V", 3.60, 0.0, 3, 0.0, 10.0),
            )
            for name, unit, nominal, noise, dec, lo, hi in specs:
                out.append(Stream(len(out), COLDCHAIN_SITE, sid, logger, name, unit, nominal, noise, dec, "serial",
                                  lo, hi))
    return out


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a shipped scenario by name (``demo``) or any scenario file by path."""
    p = Path(name_or_path)
    if p.suffix != ".toml" and not p.exists():
        res = resources.files("firmware_sim").joinpath("scenarios", f"{name_or_path}.toml")
        if not res.is_file():
            shipped = sorted(x.name.removesuffix(".toml") for x in
                             resources.files("firmware_sim").joinpath("scenarios").iterdir()
                             if x.name.endswith(".toml"))
            raise ConfigError(f"scenario {name_or_path!r}: no such shipped scenario ({', '.join(shipped)})"
                              " and no such file")
        text, origin = res.read_text(encoding="utf-8"), f"firmware_sim/scenarios/{name_or_path}.toml"
    else:
        try:
            text, origin = p.read_text(encoding="utf-8"), str(p)
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read scenario: {exc.strerror}") from None
    return parse_scenario(text, origin)


def parse_scenario(text: str, origin: str = "<scenario>") -> Scenario:
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{origin}: invalid scenario: {problems}") from None
    _check_targets(scenario, origin)
    return scenario


def _check_targets(scenario: Scenario, origin: str) -> None:
    streams = streams_of(scenario)
    tags = {s.key for s in streams if s.kind == "opcua"}
    channels = {f"{s.line}/{s.sensor}" for s in streams if s.kind == "serial"}
    devices = {s.source for s in streams if s.kind == "opcua"}
    loggers = {s.line for s in streams if s.kind == "serial"}
    lines = {ln.key for ln in lines_of(scenario)}
    for i, f in enumerate(scenario.faults):
        where = f"{origin}: faults.{i}"
        if f.kind in COLDCHAIN_FAULTS:
            ok = f.target in loggers
            want = "a shipment id"
        elif f.kind in SERIAL_ONLY:
            ok = f.target in loggers
            want = "a shipment id (serial frames)"
        elif f.kind in OPCUA_ONLY:
            ok = f.target in tags
            want = "SITE/LINE/DEVICE/TAG (a PLC tag)"
        elif f.kind in VALUE_FAULTS:
            ok = f.target in tags or f.target in channels
            want = "SITE/LINE/DEVICE/TAG or SHIPMENT/CHANNEL"
        elif f.kind in DEVICE_FAULTS:
            ok = f.target in devices or f.target in loggers
            want = "SITE/LINE/DEVICE or a shipment id"
        else:
            ok = f.target in lines
            want = "SITE/LINE"
        if not ok:
            raise ConfigError(f"{where}.target: {f.target!r} is not {want} of this scenario ({f.kind})")


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
            for at_s, value in s.setpoints:
                level[t_s >= at_s] = value
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
