"""One validated, frozen configuration object, loaded once from TOML and passed down.

No other module reads files or the environment for settings. Errors name the file and the key,
and TOML syntax errors the line and column, so a user can fix them without reading code.
"""

from __future__ import annotations

import fnmatch
import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qctrace.errors import ConfigError


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PlantConfig(_Frozen):
    """The simulated plant the demo runs against."""

    scenario: str = Field("demo", description="scenario name shipped in firmware_sim/scenarios, or a path")
    seed: int = 7
    speed: Annotated[float, Field(gt=0, le=1000)] = 10.0
    host: str = "127.0.0.1"
    opcua_port: Annotated[int, Field(ge=0, le=65535)] = 0  # 0 = pick a free port


class EdgeConfig(_Frozen):
    batch_max_rows: Annotated[int, Field(ge=1)] = 1000
    batch_max_age_s: Annotated[float, Field(gt=0)] = 0.25
    publishing_interval_ms: Annotated[int, Field(ge=10)] = 200
    queue_size: Annotated[int, Field(ge=1)] = 1000
    serial_baudrate: int = 115200


class SensorRule(_Frozen):
    """Detection settings for the sensors whose key ``site/line/device/sensor`` matches ``match``."""

    match: str
    lsl: float = -math.inf
    usl: float = math.inf
    ewma_lambda: Annotated[float | None, Field(gt=0, le=1)] = None
    ewma_z: Annotated[float | None, Field(gt=0)] = None
    warmup: Annotated[int | None, Field(ge=1)] = None
    rebaseline_after: Annotated[int | None, Field(ge=0)] = None

    @model_validator(mode="after")
    def _limits_ordered(self) -> SensorRule:
        if self.lsl >= self.usl:
            raise ValueError(f"lsl ({self.lsl}) must be below usl ({self.usl}) for match={self.match!r}")
        return self


class DetectConfig(_Frozen):
    ewma_lambda: Annotated[float, Field(gt=0, le=1)] = 0.1
    ewma_z: Annotated[float, Field(gt=0)] = 5.0
    warmup: Annotated[int, Field(ge=1)] = 30
    rebaseline_after: Annotated[int, Field(ge=0)] = 120
    """After this many consecutive EWMA-flagged readings the shift is taken as the new normal and
    the baseline is learnt again (0 = never): one episode per step change, not an endless alarm."""
    sensors: tuple[SensorRule, ...] = ()

    def for_sensor(self, key: str) -> tuple[float, float, float, float, int, int]:
        """(lsl, usl, lambda, z, warmup, rebaseline_after) for a sensor key; the last matching rule wins."""
        lsl, usl, lam, z = -math.inf, math.inf, self.ewma_lambda, self.ewma_z
        warm, rebase = self.warmup, self.rebaseline_after
        for rule in self.sensors:
            if fnmatch.fnmatchcase(key, rule.match):
                lsl, usl = rule.lsl, rule.usl
                lam = rule.ewma_lambda if rule.ewma_lambda is not None else lam
                z = rule.ewma_z if rule.ewma_z is not None else z
                warm = rule.warmup if rule.warmup is not None else warm
                rebase = rule.rebaseline_after if rule.rebaseline_after is not None else rebase
        return lsl, usl, lam, z, warm, rebase


class SinkConfig(_Frozen):
    flush_rows: Annotated[int, Field(ge=1)] = 200_000
    flush_age_s: Annotated[float, Field(gt=0)] = 1.0


class DashboardConfig(_Frozen):
    port: Annotated[int, Field(ge=1, le=65535)] = 8501
    address: str = "localhost"


class AnchorConfig(_Frozen):
    """Where checkpoint roots are anchored. Empty ``rpc_url``: eth-tester's in-process chain, kept
    under DATA_DIR/chain (no network, nothing to install). Otherwise any Ethereum JSON-RPC node; the
    account's private key is read from the environment variable named by ``private_key_env``, never
    from this file."""

    rpc_url: str = ""
    private_key_env: str = "QCTRACE_ANCHOR_KEY"
    timeout_s: Annotated[float, Field(gt=0)] = 30.0


class LedgerConfig(_Frozen):
    key_name: str = Field("qctrace.local/ledger", pattern=r"^[^\s+]+$",
                          description="signing key name, also the checkpoints' origin line")
    checkpoint_every: Annotated[int, Field(ge=0)] = 1000  # sign a checkpoint after this many new events (0 = never)
    anchor: AnchorConfig = AnchorConfig()


class Config(_Frozen):
    data_dir: Path = Path("demo-data")
    plant: PlantConfig = PlantConfig()
    edge: EdgeConfig = EdgeConfig()
    detect: DetectConfig = DetectConfig()
    sink: SinkConfig = SinkConfig()
    dashboard: DashboardConfig = DashboardConfig()
    ledger: LedgerConfig = LedgerConfig()

    def with_overrides(self, **changes: Any) -> Config:
        """A copy with top-level or dotted (``plant.seed``) fields replaced, validated again."""
        data = self.model_dump()
        for dotted, value in changes.items():
            if value is None:
                continue
            node = data
            *parents, leaf = dotted.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
        return _validate(data, "<overrides>")


def _validate(data: dict[str, Any], origin: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<top>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{origin}: invalid configuration: {problems}") from None


def load_config(path: Path | str | None = None) -> Config:
    """Load and validate a TOML file; ``None`` gives the shipped demo configuration."""
    if path is None:
        text = resources.files("qctrace").joinpath("demo.toml").read_text(encoding="utf-8")
        origin = "qctrace/demo.toml"
    else:
        p = Path(path)
        origin = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{origin}: configuration file not found") from None
        except OSError as exc:
            raise ConfigError(f"{origin}: cannot read configuration: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None
    return _validate(data, origin)
