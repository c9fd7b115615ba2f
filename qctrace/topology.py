"""Every process of a qctrace installation on one machine, started and kept running (`qctrace run`).

A plant that outgrows one process runs qctrace as separate processes joined by MQTT (README,
"Production topology"): edge nodes, a broker, several ingest workers sharing the edge nodes
(``ingest.leases``) and writing one Parquet dataset and one ledger. ``qctrace run CONFIG`` starts that
topology here, from the ``[run]`` table: a private Mosquitto (or the broker ``[mqtt]`` names), the
simulated plant with its devices dealt out among ``edges`` edge nodes (or one configuration file
per edge node), and ``workers`` ingest workers. A process that exits is started again with
backoff, as systemd's ``Restart=on-failure`` would; nothing is lost meanwhile, as the fault
campaign (``qctrace.campaign``), which uses the same parts, shows.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from firmware_sim.scenario import COLDCHAIN_SITE, load_scenario, shipments_of
from qctrace.config import Config, load_config
from qctrace.errors import QctraceError

Say = Callable[[str], None]


def spawn(*args: str, **kw: Any) -> subprocess.Popen:
    """``python -m qctrace ARGS`` in its own session (a kill of it never reaches us)."""
    return subprocess.Popen([sys.executable, "-m", "qctrace", *args], start_new_session=True, **kw)


class Stage:
    """One restartable process, its output kept in ``logs/<name>-<n>.log`` for diagnosis."""

    def __init__(self, name: str, args: list[str], ready: str, logs: Path) -> None:
        self.name = name
        self.args = args
        self.ready = ready  # a line the process prints once it is working
        self.logs = logs
        self.starts = 0
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        self.starts += 1
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{self.name}-{self.starts}.log", "w") as log:
            self.proc = spawn("-v", *self.args, stdout=subprocess.PIPE, stderr=log, text=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise QctraceError(f"{self.name} exited while starting (see {self.logs}/{self.name}-{self.starts}.log)")
            if self.ready in line:
                # Keep reading its reports so a full pipe never blocks it.
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                return
        raise QctraceError(f"{self.name} did not start within {timeout_s:g} s")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait (the processes shut down in the order that loses nothing)."""
        if not self.running:
            return 0 if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def write_config(cfg: Config, path: Path) -> Path:
    """``cfg`` as a TOML file another qctrace process reads (unset values left out)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(clean(cfg.model_dump(mode="json"))))
    return path


def sim_trust_dir(cfg: Config) -> Path:
    return cfg.data_dir / "sim" / "certs"


def _port(base: int, i: int) -> int:
    """Metrics ports of the i-th process of a kind: edges and workers interleave from their bases
    (9101, 9103 … and 9102, 9104 …); 0 stays off."""
    return base + 2 * i if base else 0


def worker_configs(cfg: Config, workers: int) -> list[Config]:
    """One per ingest worker, each with its own metrics port. Every worker runs the background
    compactor; its role lease lets one at a time compact (``ingest.compact.BackgroundCompactor``)."""
    return [cfg.with_overrides(**{"metrics.ingest_port": _port(cfg.metrics.ingest_port, i)})
            for i in range(workers)]


def edge_configs(cfg: Config, ready: dict, edges: int) -> list[Config]:
    """One configuration per edge node (``edge1``…): the simulator's OPC UA servers and loggers
    (its ``ready`` line) dealt out among them in turn."""
    devices: list[tuple[str, Any]] = [("opcua", e) for e in ready["opcua"]]
    for sh in shipments_of(load_scenario(cfg.plant.scenario)):
        port = ready["serial"].get(sh.id)
        if port:
            devices.append(("serial", {"port": port, "site": COLDCHAIN_SITE, "line": sh.id, "device": sh.logger,
                                       "lot": sh.lot}))
    out = []
    for i in range(edges):
        mine = devices[i::edges]
        out.append(cfg.with_overrides(**{
            "edge.node": f"edge{i + 1}", "edge.transport": "mqtt",
            "edge.opcua_endpoints": [v for k, v in mine if k == "opcua"],
            "edge.serial.devices": [v for k, v in mine if k == "serial"],
            "edge.opcua.trust_dir": str(sim_trust_dir(cfg)),
            "metrics.edge_port": _port(cfg.metrics.edge_port, i),
        }))
    return out


@dataclass
class Topology:
    """The processes of one run and how to start them again."""

    cfg: Config
    work: Path
    say: Say = lambda s: None
    sim: subprocess.Popen | None = None
    stages: list[Stage] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    _down_since: dict[str, float] = field(default_factory=dict)
    _started: float | None = None  # monotonic time of the simulator's 'start'

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    def start_sim(self) -> dict:
        """The simulated plant (``qctrace sim --control``); returns its ready line (endpoints, ports)."""
        p = self.cfg.plant
        data = self.cfg.data_dir
        self.logs.mkdir(parents=True, exist_ok=True)
        secure = () if self.cfg.edge.opcua.security_policy == "None" else (
            # The edges trust exactly the certificates of the servers we started (as the demo does).
            "--secure", "--cert-dir", str(data / "sim" / "pki"), "--publish-cert", str(sim_trust_dir(self.cfg)))
        with open(self.logs / "sim.log", "w") as log:
            self.sim = spawn("-v", "sim", p.scenario, "--seed", str(p.seed), "--speed", str(p.speed), "--truth-dir",
                             str(data / "truth"), "--dev-dir", str(data / "dev"), "--control", *secure,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        line = self.sim.stdout.readline()
        if not line:
            raise QctraceError(f"the simulated plant exited while starting (see {self.logs}/sim.log)")
        return json.loads(line)

    def sim_command(self, cmd: str, timeout_s: float | None = None) -> dict | None:
        """``start`` or ``stop`` (which answers with what the plant produced, within ``timeout_s``).

        The default wait for ``stop`` grows with the simulated time run: the plant writes its
        ground truth first, and a one-hour soak's 31 M readings took just over two minutes on
        the loaded 2-core machine, past the 120 s that used to be the limit for every run."""
        import select

        self.sim.stdin.write(cmd + "\n")
        self.sim.stdin.flush()
        if cmd == "start":
            self._started = time.monotonic()
        if cmd != "stop":
            return None
        if timeout_s is None:
            ran_s = time.monotonic() - self._started if self._started is not None else 0.0
            timeout_s = 120.0 + ran_s * self.cfg.plant.speed / 10
        ready, _, _ = select.select([self.sim.stdout], [], [], timeout_s)
        if not ready:
            raise QctraceError(f"the simulated plant did not answer 'stop' within {timeout_s:g} s"
                               f" (see {self.logs}/sim.log)")
        return json.loads(self.sim.stdout.readline())

    def add_workers(self, confs: list[Path]) -> list[Stage]:
        new = [Stage(f"ingest-w{i + 1}", ["ingest", str(c), "--worker", f"w{i + 1}"], f"ingest w{i + 1}: $share/",
                     self.logs) for i, c in enumerate(confs)]
        self.stages += new
        return new

    def add_edges(self, confs: list[Path], names: list[str]) -> list[Stage]:
        new = [Stage(n, ["edge", str(c)], " readers open ", self.logs) for n, c in zip(names, confs, strict=True)]
        self.stages += new
        return new

    def supervise(self) -> None:
        """Start again, with backoff (1, 2, 4 … 30 s), any process that exited."""
        now = time.monotonic()
        for s in self.stages:
            if s.running:
                continue
            n = self.restarts.get(s.name, 0)
            since = self._down_since.setdefault(s.name, now)
            if now - since < min(30.0, 2.0 ** n) - 1:
                continue
            code = s.proc.returncode if s.proc is not None else None
            self.say(f"  {s.name} exited ({code}); starting it again (restart {n + 1})")
            self.restarts[s.name] = n + 1
            del self._down_since[s.name]
            try:
                s.start()
            except QctraceError as exc:
                self.say(f"  {s.name}: {exc}")

    def stop_all(self) -> None:
        """Edges first (they hand their buffers to the spool and ingest commits them), then ingest."""
        for s in [x for x in self.stages if x.name.startswith("edge")]:
            s.stop()
        for s in [x for x in self.stages if not x.name.startswith("edge")]:
            s.stop()

    def close(self) -> None:
        for s in self.stages:
            if s.running:
                s.proc.kill()
                s.proc.wait()
        if self.sim is not None and self.sim.poll() is None:
            try:
                self.sim.stdin.write("quit\n")
                self.sim.stdin.flush()
                self.sim.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.sim.kill()


def run_topology(cfg: Config, duration_s: float | None = None, say: Say = lambda s: None,
                 stop: threading.Event | None = None, report_every_s: float = 10.0) -> dict:
    """Start the configured topology, keep it running until ``duration_s`` or SIGINT/SIGTERM, stop it
    in order. Returns what was produced (simulator) and committed."""
    from ingest.commit_record import read_snapshot
    from qctrace.broker import LocalBroker
    from qctrace.ledger_ops import ensure_keys

    r = cfg.run
    data = cfg.data_dir.resolve()
    cfg = cfg.with_overrides(data_dir=str(data))
    work = data / "run"
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    ensure_keys(cfg)  # before the workers start: two of them must not both create the signing key
    broker = LocalBroker(work / "broker").start() if r.broker == "local" else None
    if broker is not None:
        cfg = cfg.with_overrides(**{"mqtt.port": broker.port, "mqtt.host": "127.0.0.1"})
    top = Topology(cfg, work, say)
    out: dict = {}
    try:
        wconfs = [write_config(w, work / f"ingest-w{i + 1}.toml") for i, w in enumerate(worker_configs(cfg, r.workers))]
        if r.simulator:
            ready = top.start_sim()
            edges = edge_configs(cfg, ready, r.edges)
            confs = [write_config(e, work / f"{e.edge.node}.toml") for e in edges]
            names = [e.edge.node for e in edges]
        else:
            if not r.edge_configs:
                raise QctraceError("[run] reads no plant: set simulator = true, or list edge_configs (one"
                                   " configuration file per edge node)")
            confs = [Path(c) for c in r.edge_configs]
            names = [load_config(c).edge.node for c in confs]
        for s in top.add_workers(wconfs):
            s.start()
        for s in top.add_edges(confs, names):
            s.start()
        say(f"qctrace run: {len(names)} edge node(s) ({', '.join(names)}), {r.workers} ingest worker(s), broker "
            f"mqtt://{cfg.mqtt.host}:{cfg.mqtt.port}{' (private)' if broker else ''}, data {data}")
        if top.sim is not None:
            top.sim_command("start")
        t0 = last = time.monotonic()
        while not stop.is_set() and (duration_s is None or time.monotonic() - t0 < duration_s):
            stop.wait(1.0)
            top.supervise()
            if time.monotonic() - last >= report_every_s:
                last = time.monotonic()
                snap = read_snapshot(data / "ingest")
                say(f"  {last - t0:6.0f} s  committed {snap.rows if snap else 0} readings in"
                    f" {len(snap.files) if snap else 0} files; running "
                    + ", ".join(s.name for s in top.stages if s.running))
        if top.sim is not None:
            out["produced"] = top.sim_command("stop")["produced"]
            stop.wait(cfg.edge.batch_max_age_s + 1.0)  # the plant's last readings reach the edges
        top.stop_all()
        snap = read_snapshot(data / "ingest")
        out["committed"] = snap.rows if snap else 0
        out["restarts"] = dict(top.restarts)
        spooled = sum(p.stat().st_size for p in (data / "edge").glob("*/spool/*.qsp")) if (data / "edge").is_dir() \
            else 0
        say(f"qctrace run stopped: {out['committed']} readings committed"
            + (f" of {sum(out['produced'].values())} produced" if "produced" in out else "")
            + (f"; {spooled} bytes stay spooled for the edges' next start" if spooled else ""))
    finally:
        top.close()
        if broker is not None:
            broker.stop()
    return out
