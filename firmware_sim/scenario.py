"""Scenario files and the deterministic signal generator behind every simulated device.

A scenario (TOML) describes a plant: lines with a PLC and its tags, cold-chain shipments with a
logger, and labelled faults. ``PlantGenerator`` turns it into values tick by tick. Every stream has
its own NumPy generator seeded from ``(seed, stream index)``, and ticks are generated strictly in
order, so the same scenario and seed give the same values whether they are produced one tick at a
time by the live servers or a million at a time by a replay.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qctrace.errors import ConfigError

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Names become OPC UA browse names, Parquet partition paths and topic levels: keep them plain."""

FaultKind = Literal["spike", "level_shift", "drift", "stuck", "coldchain_excursion"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TagSpec(_Model):
    name: Annotated[str, Field(pattern=_NAME)]
    unit: str = ""
    nominal: float
    noise: Annotated[float, Field(ge=0)] = 0.0
    decimals: Annotated[int, Field(ge=0, le=9)] = 3


class LineSpec(_Model):
    name: Annotated[str, Field(pattern=_NAME)]
    device: Annotated[str, Field(pattern=_NAME)]
    lot_every_s: Annotated[float, Field(gt=0)] = 120.0
    lot_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,48}$")] = "LOT-"
    tags: tuple[TagSpec, ...]


class ShipmentSpec(_Model):
    id: Annotated[str, Field(pattern=_NAME)]
    lot: Annotated[str, Field(pattern=_NAME)]
    logger: Annotated[str, Field(pattern=_NAME)]
    temperature: float = 4.5
    temperature_noise: Annotated[float, Field(ge=0)] = 0.15
    humidity: float = 60.0
    humidity_noise: Annotated[float, Field(ge=0)] = 1.0


class FaultSpec(_Model):
    kind: FaultKind
    target: str = Field(description="'LINE/TAG' or 'SHIPMENT/CHANNEL'")
    at_s: Annotated[float, Field(ge=0)]
    duration_s: Annotated[float, Field(gt=0)]
    magnitude: float = 0.0


class PlantSpec(_Model):
    site: Annotated[str, Field(pattern=_NAME)]
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
    lines: tuple[LineSpec, ...] = ()
    shipments: tuple[ShipmentSpec, ...] = ()
    faults: tuple[FaultSpec, ...] = ()


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

    @property
    def key(self) -> str:
        return f"{self.site}/{self.line}/{self.device}/{self.sensor}"

    @property
    def source(self) -> str:
        return f"{self.site}/{self.line}/{self.device}"


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a shipped scenario by name (``demo``) or any scenario file by path."""
    p = Path(name_or_path)
    if p.suffix != ".toml" and not p.exists():
        res = resources.files("firmware_sim").joinpath("scenarios", f"{name_or_path}.toml")
        if not res.is_file():
            raise ConfigError(f"scenario {name_or_path!r}: no such shipped scenario and no such file")
        text, origin = res.read_text(encoding="utf-8"), f"firmware_sim/scenarios/{name_or_path}.toml"
    else:
        try:
            text, origin = p.read_text(encoding="utf-8"), str(p)
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read scenario: {exc.strerror}") from None
    try:
        scenario = Scenario.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{origin}: invalid scenario: {problems}") from None
    _check_targets(scenario, origin)
    return scenario


def streams_of(scenario: Scenario) -> list[Stream]:
    """Every signal of the plant, in a fixed order that defines each stream's seed."""
    out: list[Stream] = []
    site = scenario.plant.site
    for line in scenario.lines:
        for tag in line.tags:
            out.append(
                Stream(len(out), site, line.name, line.device, tag.name, tag.unit, tag.nominal, tag.noise,
                       tag.decimals, "opcua")
            )
    for sh in scenario.shipments:
        specs = (
            ("temperature", "degC", sh.temperature, sh.temperature_noise, 2),
            ("humidity", "%RH", sh.humidity, sh.humidity_noise, 1),
            ("door_open", "", 0.0, 0.0, 0),
            ("battery", "V", 3.60, 0.0, 3),
        )
        for name, unit, nominal, noise, dec in specs:
            out.append(Stream(len(out), COLDCHAIN_SITE, sh.id, sh.logger, name, unit, nominal, noise, dec, "serial"))
    return out


def _check_targets(scenario: Scenario, origin: str) -> None:
    known = {f"{s.line}/{s.sensor}" for s in streams_of(scenario)}
    for i, f in enumerate(scenario.faults):
        if f.target not in known:
            raise ConfigError(f"{origin}: faults.{i}.target: {f.target!r} names no tag or logger channel")


class PlantGenerator:
    """Values of every stream for consecutive ranges of ticks; stateful, strictly sequential."""

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario
        self.seed = seed
        self.streams = streams_of(scenario)
        self._rngs = [np.random.default_rng([seed, s.index]) for s in self.streams]
        self._next_tick = 0
        self._stuck_at: dict[int, float] = {}
        by_target = {f"{s.line}/{s.sensor}": s.index for s in self.streams}
        self._faults = [(by_target[f.target], f) for f in scenario.faults]
        self.start_ns = int(scenario.plant.start.timestamp() * 1e9)
        self.tick_ns = round(scenario.plant.tick_s * 1e9)

    @property
    def next_tick(self) -> int:
        return self._next_tick

    def tick_ts(self, ticks: np.ndarray | int) -> np.ndarray | int:
        """Simulated source timestamp (ns since epoch) of tick numbers."""
        return self.start_ns + np.asarray(ticks, dtype=np.int64) * self.tick_ns

    def lot_of(self, line: LineSpec, tick: int) -> str:
        n = int(tick * self.scenario.plant.tick_s // line.lot_every_s) + 1
        return f"{line.lot_prefix}{n:04d}"

    def generate(self, n_ticks: int) -> np.ndarray:
        """The next ``n_ticks`` ticks: an array (n_ticks, n_streams) of rounded values."""
        k0 = self._next_tick
        ticks = np.arange(k0, k0 + n_ticks, dtype=np.int64)
        t_s = ticks * self.scenario.plant.tick_s
        out = np.empty((n_ticks, len(self.streams)), dtype=np.float64)
        for s in self.streams:
            out[:, s.index] = s.nominal + s.noise * self._rngs[s.index].standard_normal(n_ticks)
            if s.sensor == "battery":
                out[:, s.index] = s.nominal - 1e-5 * t_s  # slow, noiseless discharge
        for idx, f in self._faults:
            active = (t_s >= f.at_s) & (t_s < f.at_s + f.duration_s)
            if not active.any():
                continue
            col = out[:, idx]
            if f.kind in ("spike", "level_shift"):
                col[active] += f.magnitude
            elif f.kind == "drift":
                col[active] += f.magnitude * (t_s[active] - f.at_s) / f.duration_s
            elif f.kind == "coldchain_excursion":
                # Door open: the load warms towards +magnitude over ~10 s, then holds.
                col[active] += f.magnitude * np.minimum(1.0, (t_s[active] - f.at_s + 1) / 10.0)
                door = next(s.index for s in self.streams if s.line == self.streams[idx].line
                            and s.sensor == "door_open")
                out[active, door] = 1.0
            elif f.kind == "stuck":
                first = int(np.argmax(active))
                held = self._stuck_at.setdefault(idx, float(col[first]))
                col[active] = held
        for s in self.streams:
            out[:, s.index] = np.round(out[:, s.index], s.decimals)
        self._next_tick += n_ticks
        return out

    def labels(self) -> list[dict]:
        """Ground truth: one row per injected fault, in simulated time."""
        rows = []
        by_index = {s.index: s for s in self.streams}
        ships = {sh.id: sh for sh in self.scenario.shipments}
        for idx, f in self._faults:
            s = by_index[idx]
            start = self.start_ns + int(f.at_s * 1e9)
            rows.append(
                {
                    "kind": f.kind,
                    "site": s.site,
                    "line": s.line,
                    "device": s.device,
                    "sensor": s.sensor,
                    "start_ns": start,
                    "end_ns": start + int(f.duration_s * 1e9),
                    "magnitude": f.magnitude,
                    "shipment": s.line if s.line in ships else None,
                    "lot": ships[s.line].lot if s.line in ships else None,
                }
            )
        return rows
