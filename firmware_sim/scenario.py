"""Scenario files and the deterministic signal generator behind every simulated device.

A scenario (TOML) describes a plant: sites → lines → devices → tags, each tag with its unit,
nominal value, noise, cycle and setpoint schedule, each line with its lot changeovers; cold-chain
shipments, each with a logger moving through custody stages; and labelled faults. Any list entry
may carry ``count = N`` with ``{i}`` in its name to stand for N numbered copies, which is how the
10,000-tag plant fits in a page.

``firmware_sim.generator.PlantGenerator`` turns a scenario into samples.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

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


_GTIN = r"^\d{6,12}\.\d{0,7}$"  # '<company prefix>.<indicator + item reference>', 13 digits and a dot
DEFAULT_GTIN = "0614141.000000"


class InputSpec(_Model):
    """A material a line consumes: each of its lots (from one supplier) feeds ``lots_per_input`` line lots."""

    material: str
    supplier: str
    gtin: Annotated[str, Field(pattern=_GTIN, min_length=14, max_length=14)] = DEFAULT_GTIN
    lot_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.{}:-]{1,16}$")]
    lots_per_input: Annotated[int, Field(ge=1)] = 3
    quantity: Annotated[float | None, Field(gt=0)] = None  # received per input lot
    uom: str = "EA"  # UN/ECE Recommendation 20 code: EA each, KGM kilogram, LTR litre


class LineSpec(_Model):
    name: Annotated[str, Field(pattern=_NAME)]
    count: Annotated[int, Field(ge=1)] = 1
    lot_every_s: Annotated[float, Field(gt=0)] = 120.0
    # a lot number is the prefix and 4 digits, and GS1 allows 20 characters
    lot_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.{}:-]{1,16}$")] = "LOT-"
    product: str = "product"
    gtin: Annotated[str, Field(pattern=_GTIN, min_length=14, max_length=14)] = DEFAULT_GTIN
    units_per_lot: Annotated[int | None, Field(ge=1)] = None  # what a lot holds, for traceability records
    inputs: tuple[InputSpec, ...] = ()
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
    customer: str | None = None  # who receives the shipment at its last stage


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


SETPOINT_SUFFIX = "_sp"

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
    product: str = "product"
    gtin: str = DEFAULT_GTIN
    inputs: tuple[InputSpec, ...] = ()
    devices: tuple[str, ...] = ()
    units_per_lot: int | None = None

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
    customer: str | None = None


def _expand(name: str, count: int) -> list[str]:
    if count == 1 and "{i" not in name:
        return [name]
    if "{i" not in name:
        raise ConfigError(f"{name!r}: count = {count} needs {{i}} in the name, e.g. '{name}-{{i:03d}}'")
    return [name.format(i=i) for i in range(count)]


def lines_of(scenario: Scenario) -> list[Line]:
    return [Line(site.name, ln, line.lot_every_s, line.lot_prefix.format(i=k), line.product, line.gtin,
                 line.inputs, tuple(d for dev in line.devices for d in _expand(dev.name, dev.count)),
                 line.units_per_lot)
            for site in scenario.sites for line in site.lines
            for k, ln in enumerate(_expand(line.name, line.count))]


def shipments_of(scenario: Scenario) -> list[Shipment]:
    out = []
    for sh in scenario.shipments:
        for k, sid in enumerate(_expand(sh.id, sh.count)):
            out.append(Shipment(sid, sh.lot.format(i=k), sh.logger.format(i=k), sh.band, sh.stages,
                                sh.customer.format(i=k) if sh.customer else None))
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
    # A PLC publishes a recipe tag's setpoint next to its process value ("<tag>_sp"), so a detector
    # can tell a recipe change from a fault. Appended last: earlier streams keep their seeds.
    for s in [s for s in out if s.setpoints and s.kind == "opcua"]:
        out.append(Stream(len(out), s.site, s.line, s.device, f"{s.sensor}{SETPOINT_SUFFIX}", s.unit, s.nominal, 0.0,
                          s.decimals, "opcua", s.eu_low, s.eu_high, 0.0, s.cycle_period_s, s.setpoints))
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
