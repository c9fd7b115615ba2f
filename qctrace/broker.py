"""A private Mosquitto broker for local runs and tests, started from the shipped configuration.

Used only when nothing listens where the configuration points: a plant's own broker is never
replaced. The broker is a real ``mosquitto`` process (Debian package ``mosquitto``); it runs in
its own session and is stopped with the process that started it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from importlib import resources
from pathlib import Path

from qctrace.certs import Pki
from qctrace.errors import TransportError

log = logging.getLogger(__name__)


def listening(host: str, port: int, timeout_s: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout_s):
        return True
    return False


def acl_text(prefix: str = "qctrace/v1") -> str:
    """The shipped ACL (qctrace/deploy/mosquitto.acl) for another topic prefix."""
    shipped = resources.files("qctrace").joinpath("deploy/mosquitto.acl").read_text()
    return shipped.replace("qctrace/v1/", f"{prefix}/")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and Path(cand).exists():
            return cand
    raise TransportError("the mosquitto broker is not installed (Debian/Ubuntu: apt-get install mosquitto;"
                         " `make test` installs it)")


class LocalBroker:
    """``mosquitto -c <generated conf>`` on ``host:port``, with its persistence under ``state_dir``."""

    def __init__(self, state_dir: Path, port: int | None = None, host: str = "127.0.0.1",
                 extra: str = "", *, tls: Pki | None = None, require_certificate: bool = False,
                 users: dict[str, str] | None = None, acl_prefix: str | None = None) -> None:
        """``tls``: listen with TLS only (server certificate and CA from ``tls``); ``users``: username →
        password, anonymous refused; ``acl_prefix``: enforce the shipped ACL for that topic prefix."""
        self.state_dir = state_dir
        self.host = host
        self.port = port or free_port(host)
        self.extra = extra
        self.tls = tls
        self.require_certificate = require_certificate
        self.users = users
        self.acl_prefix = acl_prefix
        self.proc: subprocess.Popen | None = None

    def _security_conf(self) -> str:
        # As root Mosquitto drops to user "mosquitto", who cannot read private (0600/0700) key, password
        # and ACL files under a root-owned directory; a private local broker keeps the starting user.
        lines = ["user root"] if os.geteuid() == 0 and (self.tls or self.users is not None) else []
        if self.tls is not None:
            lines += [f"cafile {self.tls.ca.cert}", f"certfile {self.tls.server.cert}",
                      f"keyfile {self.tls.server.key}", "tls_version tlsv1.2"]
            if self.require_certificate:
                lines += ["require_certificate true"]
        if self.users is not None:
            pw = self.state_dir / "passwd"
            pw.write_text("")
            pw.chmod(0o600)
            for user, password in self.users.items():
                subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b", str(pw),
                                user, password], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        if self.acl_prefix is not None:
            acl = self.state_dir / "acl"
            acl.write_text(acl_text(self.acl_prefix))
            lines += [f"acl_file {acl}"]
        return "\n".join(lines) + "\n"

    @property
    def conf_path(self) -> Path:
        return self.state_dir / "mosquitto.conf"

    def _write_conf(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        shipped = resources.files("qctrace").joinpath("deploy/mosquitto.conf").read_text()
        self.conf_path.write_text(
            f"{shipped}\nlistener {self.port} {self.host}\npersistence_location {self.state_dir}/\n"
            f"log_dest file {self.state_dir}/mosquitto.log\n{self._security_conf()}{self.extra}\n")

    def start(self, timeout_s: float = 10.0) -> LocalBroker:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self._write_conf()
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf_path)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not listening(self.host, self.port, 0.2):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise TransportError(f"mosquitto exited on start (port {self.port}): {err.strip()[-500:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TransportError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout_s} s")
            time.sleep(0.05)
        log.info("broker.started port=%d pid=%d", self.port, self.proc.pid)
        return self

    def stop(self, hard: bool = False) -> None:
        """SIGTERM (Mosquitto saves its persistent state) or, ``hard``, SIGKILL (a crash)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self, hard: bool = False, down_s: float = 0.0) -> None:
        self.stop(hard)
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
