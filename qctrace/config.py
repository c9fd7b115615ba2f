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
from typing import Annotated, Any, Literal

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


class OpcUaTagRule(_Frozen):
    """Monitoring settings for the tags whose ``site/line/device/tag`` matches ``match`` (fnmatch;
    the last matching rule wins). Unset fields keep the reader's defaults."""

    match: str
    sampling_interval_ms: Annotated[float, Field(ge=0)] | None = None  # 0 = every change the server sees
    queue_size: Annotated[int, Field(ge=1)] | None = None
    deadband: Annotated[float, Field(ge=0)] | None = None
    deadband_type: Literal["absolute", "percent"] = "absolute"


OPCUA_POLICIES = ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
_DEPRECATED_POLICIES = {"Basic128Rsa15": "RSA-PKCS#1 v1.5 and SHA-1", "Basic256": "SHA-1"}


class _LogsIn(_Frozen):
    """A section that logs in somewhere: the secret comes from the environment or a 0600 file, never the TOML."""

    @model_validator(mode="before")
    @classmethod
    def _no_password_here(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise ValueError("a password never goes in the configuration file: set password_env (the name of an"
                             " environment variable) or password_file (a file readable only by you, mode 0600)")
        return data


class OpcUaClientConfig(_LogsIn):
    """How edge readers talk to OPC UA servers: security, trust, limits, polling fallback.

    Secure by default: Basic256Sha256 SignAndEncrypt with a client certificate made on first run in
    ``pki_dir`` and a trust list of server certificates in ``trust_dir``. ``security_policy = "None"``
    is the only way to talk in clear; a reader never falls back to it. Passwords come from an
    environment variable or a 0600 file, never from this file."""

    security_policy: str = "Basic256Sha256"
    security_mode: Literal["Sign", "SignAndEncrypt", "None"] | None = None  # None: SignAndEncrypt (or None/None)
    pki_dir: Path | None = None  # None: DATA_DIR/edge/pki
    trust_dir: Path | None = None  # None: PKI_DIR/trusted
    application_uri: str = "urn:qctrace:edge"
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    max_message_size: Annotated[int, Field(ge=8192, le=1 << 30)] = 16 << 20
    max_chunk_count: Annotated[int, Field(ge=1, le=1 << 16)] = 1024
    timeout_s: Annotated[float, Field(gt=0)] = 10.0
    mode: Literal["subscribe", "poll"] = "subscribe"
    poll_interval_ms: Annotated[int, Field(ge=10)] = 1000
    tags: tuple[str, ...] = ()  # NodeIds ("ns=2;s=…", "nsu=URI;s=…") or site/line/device/tag patterns; () = all
    rules: tuple[OpcUaTagRule, ...] = ()
    backoff_initial_s: Annotated[float, Field(gt=0)] = 0.5
    backoff_max_s: Annotated[float, Field(gt=0)] = 30.0
    backoff_jitter: Annotated[float, Field(ge=0, lt=1)] = 0.2
    history_backfill: bool = True


    @model_validator(mode="after")
    def _check(self) -> OpcUaClientConfig:
        p = self.security_policy
        if p in _DEPRECATED_POLICIES:
            raise ValueError(f"security_policy {p!r} is deprecated by the OPC Foundation ({_DEPRECATED_POLICIES[p]})"
                             f" and refused; use one of {', '.join(OPCUA_POLICIES)}")
        if p != "None" and p not in OPCUA_POLICIES:
            raise ValueError(f"security_policy {p!r} is unknown; use one of {', '.join(OPCUA_POLICIES)},"
                             " or \"None\" to talk without security")
        if (p == "None") != (self.security_mode in (None, "None") if p == "None" else self.security_mode == "None"):
            raise ValueError(f"security_mode {self.security_mode!r} does not go with security_policy {p!r}:"
                             " no security needs both set to \"None\"")
        if self.username is None and (self.password_env or self.password_file):
            raise ValueError("password_env/password_file given without a username")
        if self.username is not None and bool(self.password_env) == bool(self.password_file):
            raise ValueError(f"username {self.username!r} needs exactly one of password_env or password_file")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be at least backoff_initial_s")
        return self

    @property
    def mode_name(self) -> str:
        """The message security mode asked for: SignAndEncrypt unless said otherwise."""
        if self.security_policy == "None":
            return "None"
        return self.security_mode or "SignAndEncrypt"


class ModbusRegister(_Frozen):
    """One value in a Modbus unit's register map: where it is, how it is encoded, what it means.

    ``value = raw * scale + offset``; a float32 spans two registers, high word first unless
    ``word_order = "little"`` (many loggers swap them: check the manual)."""

    sensor: str = Field(pattern=r"^[^/\x00-\x1f]+$", description="sensor name (last part of the key)")
    address: Annotated[int, Field(ge=0, le=65535)]
    table: Literal["holding", "input"] = "holding"
    type: Literal["int16", "uint16", "float32"] = "uint16"
    word_order: Literal["big", "little"] = "big"
    scale: float = 1.0
    offset: float = 0.0

    @property
    def width(self) -> int:
        return 2 if self.type == "float32" else 1

    @model_validator(mode="after")
    def _fits(self) -> ModbusRegister:
        if self.address + self.width > 65536:
            raise ValueError(f"{self.sensor}: a {self.type} at {self.address} runs past register 65535")
        if not math.isfinite(self.scale) or self.scale == 0 or not math.isfinite(self.offset):
            raise ValueError(f"{self.sensor}: scale must be finite and non-zero, offset finite")
        return self


class ModbusUnit(_Frozen):
    """One Modbus slave on the line (RS-485 carries up to 247): its id and its register map."""

    unit_id: Annotated[int, Field(ge=1, le=247)]
    device: str = Field(pattern=r"^[^/\x00-\x1f]+$")
    registers: tuple[ModbusRegister, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _no_overlap(self) -> ModbusUnit:
        seen: dict[tuple[str, int], str] = {}
        for r in self.registers:
            for a in range(r.address, r.address + r.width):
                other = seen.setdefault((r.table, a), r.sensor)
                if other != r.sensor:
                    raise ValueError(f"unit {self.unit_id}: {r.sensor} and {other} both use {r.table} register {a}")
        names = [r.sensor for r in self.registers]
        if len(set(names)) != len(names):
            raise ValueError(f"unit {self.unit_id}: a sensor name appears twice in its register map")
        return self


class SerialDevice(_Frozen):
    """One serial port: a framed-protocol logger (firmware_sim/PROTOCOL.md) or a Modbus RTU line.

    Name the port by a stable path (``/dev/serial/by-id/…``) so a replugged adapter is found again."""

    port: str
    protocol: Literal["framed", "modbus"] = "framed"
    site: str = Field(pattern=r"^[^/\x00-\x1f]+$")
    line: str = Field(pattern=r"^[^/\x00-\x1f]+$")
    baudrate: Annotated[int, Field(ge=300, le=4_000_000)] = 115200
    # framed: the logger id expected on the port, and the lot (shipment) it travels with
    device: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    lot: str | None = None
    # modbus: the units polled on the line and how
    units: tuple[ModbusUnit, ...] = ()
    poll_interval_s: Annotated[float, Field(gt=0)] = 1.0
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    max_registers_per_read: Annotated[int, Field(ge=1, le=125)] = 125  # 125 is Modbus's own limit
    unit_down_after: Annotated[int, Field(ge=1)] = 3  # failed polls in a row before a unit is "away"

    @model_validator(mode="after")
    def _protocol_fields(self) -> SerialDevice:
        if self.protocol == "framed" and self.device is None:
            raise ValueError(f"{self.port}: a framed logger needs device = its logger id")
        if self.protocol == "modbus":
            if not self.units:
                raise ValueError(f"{self.port}: a modbus line needs at least one [[...units]] entry")
            ids = [u.unit_id for u in self.units]
            if len(set(ids)) != len(ids):
                raise ValueError(f"{self.port}: a unit_id appears twice on one line")
        return self


class SerialConfig(_Frozen):
    """Serial devices: the framed logger protocol and Modbus RTU, and how a lost device is retried."""

    devices: tuple[SerialDevice, ...] = ()
    reopen_initial_s: Annotated[float, Field(gt=0)] = 0.05
    reopen_cap_s: Annotated[float, Field(gt=0)] = 2.0
    warn_interval_s: Annotated[float, Field(gt=0)] = 10.0  # bad frames are summed into one warning this often


class EdgeConfig(_Frozen):
    node: str = Field("edge1", pattern=r"^[A-Za-z0-9_.-]+$", description="this edge node's id: spool and topics")
    transport: Literal["inprocess", "mqtt"] = "inprocess"
    opcua_endpoints: tuple[str, ...] = ()  # `qctrace edge`: the servers to read (the demo uses its simulator's)
    opcua: OpcUaClientConfig = OpcUaClientConfig()
    serial: SerialConfig = SerialConfig()
    batch_max_rows: Annotated[int, Field(ge=1)] = 1000
    batch_max_age_s: Annotated[float, Field(gt=0)] = 0.25
    publishing_interval_ms: Annotated[int, Field(ge=10)] = 200
    queue_size: Annotated[int, Field(ge=1)] = 1000
    serial_baudrate: int = 115200


class RuleParams(_Frozen):
    """Every detection setting; ``None`` means "inherit" (from the sensor type's defaults, then the
    ``[detect]`` defaults). Units are the sensor's own unless the name says otherwise."""

    # spec limits and EWMA z-score
    lsl: float | None = None
    usl: float | None = None
    ewma_lambda: Annotated[float | None, Field(gt=0, le=1)] = None
    ewma_z: Annotated[float | None, Field(gt=0)] = None
    warmup: Annotated[int | None, Field(ge=1)] = None
    rebaseline_after: Annotated[int | None, Field(ge=0)] = None
    # control chart: Nelson run rules and tabular CUSUM against a centre line and sigma
    centre: float | None = None  # unset: estimated in phase I
    sigma: Annotated[float | None, Field(gt=0)] = None
    phase1_n: Annotated[int | None, Field(ge=2)] = None
    nelson: tuple[Annotated[int, Field(ge=1, le=8)], ...] | None = None  # rule numbers on; () = none
    cusum_k: Annotated[float | None, Field(ge=0)] = None
    cusum_h: Annotated[float | None, Field(ge=0)] = None  # 0 = off
    cusum_cap: Annotated[float | None, Field(ge=0)] = None  # the CUSUM is clamped at cusum_cap * h
    # robust rules
    max_rate: Annotated[float | None, Field(gt=0)] = None  # units per second
    spike_k: Annotated[float | None, Field(gt=0)] = None
    spike_accept: Annotated[int | None, Field(ge=0)] = None  # spikes in a row that make a new level
    stuck_n: Annotated[int | None, Field(ge=0)] = None  # 0 = off
    max_interval_s: Annotated[float | None, Field(gt=0)] = None  # unset: learnt from the data
    gap_factor: Annotated[float | None, Field(gt=1)] = None
    # cold chain
    band: tuple[float, float] | None = None  # the product's band, e.g. [2.0, 8.0] degC
    budget_min: Annotated[float | None, Field(ge=0)] = None  # cumulative minutes out of band allowed
    mkt: bool | None = None  # accumulate mean kinetic temperature (USP <1079.2>)
    delta_h: Annotated[float | None, Field(gt=0)] = None  # J/mol, default 83144
    door_max_s: Annotated[float | None, Field(ge=0)] = None
    # re-baselining
    rebaseline_on_lot: bool | None = None  # a lot changeover restarts the baseline
    setpoint_suffix: str | None = None  # a sensor "<key><suffix>" is this sensor's setpoint

    @model_validator(mode="after")
    def _limits_ordered(self) -> RuleParams:
        if self.lsl is not None and self.usl is not None and self.lsl >= self.usl:
            raise ValueError(f"lsl ({self.lsl}) must be below usl ({self.usl})")
        if self.band is not None and self.band[0] >= self.band[1]:
            raise ValueError(f"band {list(self.band)}: the low end must be below the high end")
        return self


class SensorRule(RuleParams):
    """Settings for the sensors whose key ``site/line/device/sensor`` matches ``match`` (fnmatch)."""

    match: str


SENSOR_TYPES: dict[str, dict[str, Any]] = {
    # A binary switch: runs, trends and z-scores mean nothing; only how long it stays open.
    "door_open": {"ewma_z": math.inf, "nelson": (), "cusum_h": 0.0, "spike_k": math.inf, "stuck_n": 0,
                  "door_max_s": 60.0, "rebaseline_on_lot": False},
    # A cold-chain temperature: judged against the product's band and budget; MKT accumulated.
    "temperature": {"mkt": True, "rebaseline_on_lot": False, "stuck_n": 600},
    "humidity": {"rebaseline_on_lot": False, "stuck_n": 0},
    # A slowly discharging battery: a trend is expected, never an anomaly.
    "battery": {"ewma_z": math.inf, "nelson": (), "cusum_h": 0.0, "spike_k": math.inf, "stuck_n": 0,
                "rebaseline_on_lot": False},
    # Counters are integers that repeat: no stuck rule, no run rules.
    "*_count": {"stuck_n": 0},
    # A setpoint is a recipe value, constant between changes.
    "*_sp": {"ewma_z": math.inf, "nelson": (), "cusum_h": 0.0, "spike_k": math.inf, "stuck_n": 0},
}
"""Built-in defaults by sensor name (the last part of the key; fnmatch patterns), applied before
``[[detect.sensors]]``; any of them can be overridden there."""


class DetectConfig(_Frozen):
    """Detection defaults for every sensor; ``[[detect.sensors]]`` rules refine them (later wins)."""

    # lambda 0.05 keeps the EWMA variance estimate steady enough that z > 6 is rare in control
    # (with 0.1 and z 5 a 1 Hz sensor raised a false alarm every few hours on noise alone)
    ewma_lambda: Annotated[float, Field(gt=0, le=1)] = 0.05
    ewma_z: Annotated[float, Field(gt=0)] = 6.0
    warmup: Annotated[int, Field(ge=1)] = 60
    rebaseline_after: Annotated[int, Field(ge=0)] = 120
    """After this many consecutive EWMA-flagged readings the shift is taken as the new normal and
    the baseline is learnt again (0 = never): one episode per step change, not an endless alarm."""
    phase1_n: Annotated[int, Field(ge=2)] = 300  # 5 minutes at 1 Hz: centre and sigma within ~6 % of the truth
    nelson: tuple[Annotated[int, Field(ge=1, le=8)], ...] = ()
    """Nelson run rules are off by default: on a raw 1 Hz signal even rule 1 (3 sigma) fires once
    per ~370 in-control readings, ten times an hour per sensor. Turn them on per sensor for
    subgrouped or slow quality data (e.g. one weight per filled unit averaged per minute)."""
    cusum_k: Annotated[float, Field(ge=0)] = 0.5
    cusum_h: Annotated[float, Field(ge=0)] = 12.0  # in-control run length of weeks at 1 Hz, even with phase I estimates
    spike_k: Annotated[float, Field(gt=0)] = 8.0
    spike_accept: Annotated[int, Field(ge=0)] = 10
    """One-sided outliers in a row that make a new level for the spike rule's running median. A
    longer wait moves the median to a brief shift and then flags the return as spikes for as long
    (measured: shift precision 0.99 at 10, 0.68 at 60); a shift itself is the EWMA's and CUSUM's."""
    stuck_n: Annotated[int, Field(ge=0)] = 30
    gap_factor: Annotated[float, Field(gt=1)] = 5.0
    delta_h: Annotated[float, Field(gt=0)] = 83144.0
    rebaseline_on_lot: bool = False  # set per sensor where a lot changeover changes the process
    setpoint_suffix: str = "_sp"
    types: bool = True  # apply SENSOR_TYPES
    sensors: tuple[SensorRule, ...] = ()

    def resolve(self, key: str) -> dict[str, Any]:
        """Every setting for one sensor: defaults, then its type's, then matching rules in order."""
        out: dict[str, Any] = {name: getattr(self, name) for name in RuleParams.model_fields
                               if name in DetectConfig.model_fields}
        name = key.rsplit("/", 1)[-1]
        if self.types:
            for pattern, values in SENSOR_TYPES.items():
                if fnmatch.fnmatchcase(name, pattern):
                    out.update(values)
        for rule in self.sensors:
            if fnmatch.fnmatchcase(key, rule.match):
                out.update({k: v for k, v in rule.model_dump(exclude={"match"}).items() if v is not None})
        return out

    def for_sensor(self, key: str) -> tuple[float, float, float, float, int, int]:
        """(lsl, usl, lambda, z, warmup, rebaseline_after) for a sensor key."""
        r = self.resolve(key)
        lsl = r.get("lsl")
        usl = r.get("usl")
        return (-math.inf if lsl is None else lsl, math.inf if usl is None else usl, r["ewma_lambda"], r["ewma_z"],
                r["warmup"], r["rebaseline_after"])


class SinkConfig(_Frozen):
    """The Parquet sink, its compaction and its retention."""

    flush_rows: Annotated[int, Field(ge=1)] = 200_000
    flush_age_s: Annotated[float, Field(gt=0)] = 1.0
    row_group_rows: Annotated[int, Field(ge=1024)] = 1 << 17
    compact_every_s: Annotated[float, Field(ge=0)] = 60.0  # ingest's background compaction (0 = none)
    compact_min_files: Annotated[int, Field(ge=2)] = 4  # small files in a partition before they are merged
    compact_target_rows: Annotated[int, Field(ge=1000)] = 2_000_000  # a merged file's size; smaller than half is small
    retired_grace_s: Annotated[float, Field(ge=0)] = 300.0
    """How long a file replaced by compaction or dropped by retention stays on disk, so a reader
    holding an older snapshot of the commit record still finds it (ingest/commit_record.py)."""
    retention_days: Annotated[int | None, Field(ge=1)] = None  # None: keep everything
    retry_s: Annotated[float, Field(gt=0)] = 5.0  # wait before retrying a commit the disk refused


class MqttConfig(_LogsIn):
    """The MQTT transport between edge and ingest processes (MQTT 5, QoS 1, persistent sessions).

    Topics form a Unified Namespace: ``{prefix}/{site}/{line}/{node}/readings`` carries payloads,
    ``{prefix}/_edge/{node}/state`` the retained birth/death state (the will says "offline"),
    ``{prefix}/_ack/{node}`` ingest's commit acknowledgements. Ingest workers share the load through
    the shared subscription ``$share/{group}/...``. The password, when any, comes from the
    environment variable named by ``password_env``, never from this file."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    prefix: str = Field("qctrace/v1", pattern=r"^[^#+$][^#+]*[^/#+]$")
    group: str = Field("qctrace-ingest", pattern=r"^[A-Za-z0-9_.-]+$")
    username: str = ""
    password_env: str = "QCTRACE_MQTT_PASSWORD"
    password_file: Path | None = None  # mode 0600; wins over password_env when set
    tls: bool = False  # verify the broker's certificate against ca_file (or the system CAs)
    ca_file: Path | None = None
    cert_file: Path | None = None  # client certificate, optional (with key_file)
    key_file: Path | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    session_expiry_s: Annotated[int, Field(ge=0)] = 3600
    """How long the broker keeps an edge's session (its acknowledgement subscription) after the
    connection drops. Ingest workers sharing nodes always use 0: a dead worker's kept session
    would keep receiving its share of its nodes' payloads."""
    receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 64
    """Messages a worker may hold unacknowledged: ingest's flow control toward the broker."""
    reconnect_min_s: Annotated[float, Field(gt=0, le=60)] = 0.1
    """First wait before reconnecting to a broker that went away; doubles on each failure up to
    ``reconnect_max_s`` and starts again after a connection. A restarted broker is usually back
    within a second: a first wait of 1 s (paho's default) and then 2 s would leave every reading
    of those seconds waiting, where a few tries a second cost the broker nothing."""
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 2.0


    @model_validator(mode="after")
    def _check_reconnect(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> MqttConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (a client certificate needs its key)")
        if not self.tls and (self.ca_file or self.cert_file):
            raise ValueError("ca_file/cert_file given but tls = false: set tls = true")
        return self


class MetricsConfig(_Frozen):
    """Prometheus /metrics and JSON /health per long-running process; a port of 0 turns it off.

    The thresholds decide when /health says "degraded" instead of "ok"."""

    host: str = "127.0.0.1"
    edge_port: Annotated[int, Field(ge=0, le=65535)] = 9101
    ingest_port: Annotated[int, Field(ge=0, le=65535)] = 9102
    sim_port: Annotated[int, Field(ge=0, le=65535)] = 9103
    demo_port: Annotated[int, Field(ge=0, le=65535)] = 9100
    dashboard_port: Annotated[int, Field(ge=0, le=65535)] = 9104
    spool_age_warn_s: Annotated[float, Field(gt=0)] = 120.0
    commit_stale_s: Annotated[float, Field(gt=0)] = 30.0


class SpoolConfig(_Frozen):
    """The edge's durable store-and-forward spool (DATA_DIR/edge/spool by default)."""

    max_mb: Annotated[float, Field(gt=0)] = 1024.0
    segment_mb: Annotated[float, Field(gt=0)] = 16.0
    policy: Literal["block", "drop_oldest"] = "block"
    """When full: ``block`` slows the readers until ingest catches up; ``drop_oldest`` drops the oldest
    segment and sends loss markers naming exactly which sequence numbers were dropped."""
    fsync: bool = True
    window: Annotated[int, Field(ge=1)] = 64  # records sent and not yet committed by ingest
    resend_after_s: Annotated[float, Field(gt=0)] = 15.0

    @model_validator(mode="after")
    def _segment_fits(self) -> SpoolConfig:
        if self.segment_mb > self.max_mb:
            raise ValueError(f"segment_mb ({self.segment_mb}) must not exceed max_mb ({self.max_mb})")
        return self


PRIORITIES = ("critical", "high", "medium", "low")
"""Alarm priorities, most urgent first (EEMUA 191 suggests about 5 % / 15 % / 80 % of alarms from high to low)."""

Priority = Literal["critical", "high", "medium", "low"]


class AlarmSensorRule(_Frozen):
    """Alarm settings for the sensors whose key ``site/line/device/sensor`` matches ``match`` (fnmatch)."""

    match: str
    enabled: bool = True  # False: these sensors' episodes stay in the ledger but raise no alarm
    priority: Priority | None = None  # every rule on these sensors
    priorities: dict[str, Priority] = {}  # per rule, over ``priority``


class MqttAlarmConfig(_Frozen):
    """Alarms published to the Unified Namespace: ``{prefix}/{site}/{line}/alarms/{alarm id}``, QoS 1."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    prefix: str = "qctrace/v1"
    username: str | None = None
    password_env: str | None = None  # name of the environment variable holding the password
    password_file: Path | None = None  # or a file only its owner can read (0600)
    min_priority: Priority = "low"


class WebhookConfig(_Frozen):
    """A JSON POST per alarm state change, signed ``X-Qctrace-Signature: sha256=<hex HMAC-SHA256 of the body>``."""

    url: str = Field(pattern=r"^https?://")
    secret_env: str | None = None  # the HMAC key: an environment variable ...
    secret_file: Path | None = None  # ... or a 0600 file; neither: unsigned
    min_priority: Priority = "low"
    timeout_s: Annotated[float, Field(gt=0)] = 5.0
    attempts: Annotated[int, Field(ge=1, le=20)] = 5
    backoff_s: Annotated[float, Field(ge=0)] = 0.5  # first retry wait; doubles each time, capped at 30 s


class EmailConfig(_Frozen):
    """Mail through an SMTP server (STARTTLS when the server offers it and ``starttls`` is on)."""

    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 25
    sender: str = "qctrace@localhost"
    to: tuple[str, ...] = Field(min_length=1)
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    starttls: bool = True
    timeout_s: Annotated[float, Field(gt=0)] = 10.0
    min_priority: Priority = "high"


DEFAULT_PRIORITIES: dict[str, Priority] = {
    "excursion": "critical", "door": "high", "spec": "high", "gap": "medium", "stuck": "medium", "cusum": "medium",
    "quality": "medium", "ewma": "low", "spike": "low", "nelson": "low", "rate": "low"}


class AlarmsConfig(_Frozen):
    """Alarm management (ISA-18.2 states, flood control) and notification channels.

    Priority comes from the rule (``priorities``), refined per sensor by ``[[alarms.sensors]]``.
    Flood control: ``on_delay_s`` per rule (shorter episodes raise nothing), ``off_delay_s`` (an
    episode of the same sensor and rule back within it continues the alarm: chattering stays one
    alarm), ``group_window_s`` (episodes on one line within it of an alarm join that alarm).
    """

    enabled: bool = True
    priorities: dict[str, Priority] = DEFAULT_PRIORITIES
    sensors: tuple[AlarmSensorRule, ...] = ()
    on_delay_s: dict[str, Annotated[float, Field(ge=0)]] = {}
    off_delay_s: Annotated[float, Field(ge=0)] = 60.0
    group_window_s: Annotated[float, Field(ge=0)] = 120.0
    shelve_max_s: Annotated[float, Field(gt=0)] = 12 * 3600.0  # ISA-18.2: shelving is always time-limited
    mqtt: MqttAlarmConfig = MqttAlarmConfig()
    webhooks: tuple[WebhookConfig, ...] = ()
    email: EmailConfig | None = None
    notify_queue: Annotated[int, Field(ge=1)] = 10_000  # notifications waiting beyond this are dropped (logged)

    @model_validator(mode="after")
    def _known_rules(self) -> AlarmsConfig:
        named = [*self.priorities, *self.on_delay_s, *(r for s in self.sensors for r in s.priorities)]
        unknown = sorted(set(named) - set(DEFAULT_PRIORITIES))
        if unknown:
            raise ValueError(f"unknown alarm rule(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_PRIORITIES)}")
        return self


class DashboardUser(_Frozen):
    """One local dashboard user. Only a hash of the password is kept: ``qctrace users hash-password``
    makes one (scrypt, a random salt per hash), so a leaked configuration file does not leak passwords."""

    role: Literal["technician", "compliance", "admin"]
    password_hash: str = Field(pattern=r"^scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$",
                               description="scrypt$N$r$p$salt$hash, from `qctrace users hash-password`")


class AuthConfig(_Frozen):
    """Dashboard users and roles. ``[dashboard.auth.users.NAME]`` tables, each with ``role`` and
    ``password_hash``; no users means nobody can log in (the page says how to add one). OIDC through
    Streamlit's ``st.login`` is the production option (README)."""

    users: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9._@-]{1,64}$")], DashboardUser] = {}


class DashboardConfig(_Frozen):
    auth: AuthConfig = AuthConfig()
    port: Annotated[int, Field(ge=1, le=65535)] = 8501
    address: str = "localhost"


class AnchorConfig(_Frozen):
    """Where checkpoint roots are anchored, and how each one is driven to exactly one final anchor.

    Empty ``rpc_url``: eth-tester's in-process chain, kept under DATA_DIR/chain (no network, nothing
    to install). Otherwise any Ethereum JSON-RPC node; the account's private key is read from the
    environment variable named by ``private_key_env``, never from this file.

    A receipt is recorded only once its block has ``confirmations`` blocks on top: before that a
    reorganisation can still drop it. Unset, that is 6 on a node (about 72 s on Ethereum mainnet;
    set more on a chain whose reorganisations run deeper) and 1 on the in-process chain, which
    cannot reorganise and mines the confirming block itself. ``chain_id``, when set, is the chain
    the node must be: a node of any other chain (a test-net URL in production, or the reverse) is
    refused before anything is signed.
    A transaction not mined ``stuck_after_s`` after it was signed is replaced (same nonce, fees
    +12.5 %); 180 s is many blocks on any chain, so it only fires when the fee is really too low.
    ``auto``: ingest anchors every new checkpoint in a background thread (a down node never slows
    ingest; anchors catch up when it is back). ``poll_s`` is how often the anchorer asks the node
    about a transaction in flight; after a failure it waits twice as long each time, up to
    ``retry_max_s``. ``wait_s`` bounds how long ``qctrace anchor`` waits for finality.
    """

    rpc_url: str = ""
    private_key_env: str = "QCTRACE_ANCHOR_KEY"
    timeout_s: Annotated[float, Field(gt=0)] = 30.0  # each JSON-RPC request
    chain_id: Annotated[int, Field(gt=0)] | None = None  # None: whatever the node reports
    confirmations: Annotated[int, Field(ge=0, le=1000)] | None = None  # None: 6 on a node, 1 in-process
    stuck_after_s: Annotated[float, Field(gt=0)] = 180.0
    auto: bool = True
    poll_s: Annotated[float, Field(gt=0)] = 2.0
    retry_max_s: Annotated[float, Field(gt=0)] = 60.0
    wait_s: Annotated[float, Field(gt=0)] = 900.0


class LedgerConfig(_Frozen):
    key_name: str = Field("qctrace.local/ledger", pattern=r"^[^\s+]+$",
                          description="signing key name, also the checkpoints' origin line")
    checkpoint_every: Annotated[int, Field(ge=0)] = 1000  # sign a checkpoint after this many new events (0 = never)
    anchor: AnchorConfig = AnchorConfig()


class RunConfig(_Frozen):
    """`qctrace run`: the processes one machine runs (see qctrace.topology and the README's
    production topology). The defaults run the simulated plant through two edge nodes and two
    ingest workers with a private broker, needing nothing installed but Mosquitto."""

    simulator: bool = True  # start the simulated plant ([plant]) and deal its devices out among the edges
    edges: Annotated[int, Field(ge=1, le=64)] = 2  # edge node processes, with the simulator
    edge_configs: tuple[Path, ...] = ()  # without the simulator: one configuration file per edge node
    workers: Annotated[int, Field(ge=1, le=64)] = 2  # ingest worker processes sharing the edge nodes
    broker: Literal["local", "external"] = "local"  # local: a private Mosquitto; external: the one [mqtt] names


class Config(_Frozen):
    data_dir: Path = Path("demo-data")
    plant: PlantConfig = PlantConfig()
    edge: EdgeConfig = EdgeConfig()
    detect: DetectConfig = DetectConfig()
    sink: SinkConfig = SinkConfig()
    dashboard: DashboardConfig = DashboardConfig()
    ledger: LedgerConfig = LedgerConfig()
    mqtt: MqttConfig = MqttConfig()
    spool: SpoolConfig = SpoolConfig()
    alarms: AlarmsConfig = AlarmsConfig()
    metrics: MetricsConfig = MetricsConfig()
    run: RunConfig = RunConfig()

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


def _validate(data: dict[str, Any], origin: str, text: str | None = None) -> Config:
    """Validate; each problem names its key and, when the TOML ``text`` is known, its line."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        from qctrace.toml_lines import key_lines, line_of

        lines = key_lines(text) if text is not None else {}
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "<top>"
            line = line_of(lines, err["loc"])
            problems.append(f"{key}{f' (line {line})' if line else ''}: {err['msg']}")
        raise ConfigError(f"{origin}: invalid configuration: {'; '.join(problems)}") from None


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
        except UnicodeDecodeError as exc:
            line = p.read_bytes()[: exc.start].count(b"\n") + 1
            raise ConfigError(f"{origin}: not a UTF-8 text file (byte {exc.start}, line {line}): is this the"
                              " configuration?") from None
        except FileNotFoundError:
            raise ConfigError(f"{origin}: configuration file not found") from None
        except OSError as exc:
            raise ConfigError(f"{origin}: cannot read configuration: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None
    return _validate(data, origin, text)
