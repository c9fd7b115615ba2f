"""Alarm notifications where people are: MQTT (Unified Namespace), signed webhooks, e-mail.

Ingest must never wait for a broker, a web server or a mail server: ``Notifier.submit`` only puts
the transition on a bounded queue, and one background thread delivers it to every channel whose
``min_priority`` it reaches. A full queue drops (and logs) the notification, never the reading;
the ledger already holds every alarm state change, so nothing is lost that cannot be looked up.

* MQTT: ``{prefix}/{site}/{line}/alarms/{alarm id}``, QoS 1, retained, so a dashboard or an
  operator panel subscribing later sees each alarm's latest state (paho-mqtt).
* Webhook: JSON POST, ``X-Qctrace-Signature: sha256=<hex HMAC-SHA256 of the body>`` (the GitHub
  convention), retried on connection errors, 429 and 5xx with exponential backoff (tenacity).
* E-mail: plain text through SMTP, STARTTLS when offered, login when a user is configured.

Secrets (HMAC key, SMTP and MQTT passwords) come from an environment variable or a file only its
owner can read; they are never logged and never part of an error message.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import queue
import smtplib
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol

import tenacity

from ingest.alarms import Transition, iso
from qctrace.config import PRIORITIES, AlarmsConfig, EmailConfig, MqttAlarmConfig, WebhookConfig
from qctrace.errors import ConfigError, TransportError

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Qctrace-Signature"


def read_secret(env: str | None, file: Path | None, what: str) -> str | None:
    """A secret from the environment variable ``env`` or from ``file`` (which must be 0600 or stricter)."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"{what}: environment variable {env} is not set")
        return value
    if file is not None:
        try:
            st = file.stat()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read secret file {file}: {exc.strerror}") from None
        if st.st_mode & 0o077:
            raise ConfigError(f"{what}: secret file {file} is readable by others (mode {st.st_mode & 0o777:o});"
                              f" run `chmod 600 {file}`")
        return file.read_text(encoding="utf-8").strip()
    return None


def payload(t: Transition) -> dict[str, Any]:
    """What every channel sends: the event kind, when, by whom, and the alarm after the change."""
    return {"kind": f"alarm_{t.action.value}", "at": iso(t.at_ns), "by": t.by, "comment": t.comment or None,
            "alarm": t.alarm.record(t.at_ns)}


class Channel(Protocol):
    name: str
    min_priority: str

    def send(self, t: Transition) -> None: ...

    def close(self) -> None: ...


def _reaches(priority: str, min_priority: str) -> bool:
    return PRIORITIES.index(priority) <= PRIORITIES.index(min_priority)


class _Retryable(Exception):
    pass


class WebhookChannel:
    def __init__(self, cfg: WebhookConfig) -> None:
        self.cfg = cfg
        self.name = f"webhook {cfg.url}"
        self.min_priority = cfg.min_priority
        self._key = read_secret(cfg.secret_env, cfg.secret_file, f"webhook {cfg.url} secret")
        self.attempts = 0  # total HTTP attempts made (for tests and metrics)

    def sign(self, body: bytes) -> str:
        assert self._key is not None
        return "sha256=" + hmac.new(self._key.encode(), body, hashlib.sha256).hexdigest()

    def send(self, t: Transition) -> None:
        body = json.dumps(payload(t), separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "qctrace-alarms",
                   "X-Qctrace-Event": f"alarm_{t.action.value}"}
        if self._key is not None:
            headers[SIGNATURE_HEADER] = self.sign(body)
        retry = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.cfg.attempts),
            wait=tenacity.wait_exponential(multiplier=self.cfg.backoff_s, max=30),
            retry=tenacity.retry_if_exception_type(_Retryable), reraise=True)
        try:
            for attempt in retry:
                with attempt:
                    self._post(body, headers)
        except _Retryable as exc:
            raise TransportError(f"{self.name}: gave up after {self.cfg.attempts} attempts: {exc}") from None

    def _post(self, body: bytes, headers: dict[str, str]) -> None:
        self.attempts += 1
        req = urllib.request.Request(self.cfg.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:  # the config allows http(s) URLs only
                resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(f"HTTP {exc.code}") from None
            raise TransportError(f"{self.name}: refused with HTTP {exc.code} (not retried)") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise _Retryable(str(getattr(exc, "reason", exc))) from None

    def close(self) -> None:
        pass


class EmailChannel:
    def __init__(self, cfg: EmailConfig) -> None:
        self.cfg = cfg
        self.name = f"email {cfg.host}:{cfg.port}"
        self.min_priority = cfg.min_priority
        self._password = read_secret(cfg.password_env, cfg.password_file, f"SMTP {cfg.host} password")

    def message(self, t: Transition) -> EmailMessage:
        a = t.alarm
        msg = EmailMessage()
        msg["From"] = self.cfg.sender
        msg["To"] = ", ".join(self.cfg.to)
        msg["Subject"] = f"[qctrace {a.priority.upper()}] alarm {t.action.value}: {a.rule} on {a.sensor}"
        lines = [a.message, "", f"alarm id:  {a.id}", f"state:     {a.state(t.at_ns).value}",
                 f"changed:   {t.action.value} at {iso(t.at_ns)} by {t.by}", f"raised:    {iso(a.raised_ns)}"]
        if t.comment:
            lines.append(f"comment:   {t.comment}")
        lines += ["", f"Acknowledge: qctrace alarms ack {a.id} --by YOUR_NAME"]
        msg.set_content("\n".join(lines))
        return msg

    def send(self, t: Transition) -> None:
        try:
            with smtplib.SMTP(self.cfg.host, self.cfg.port, timeout=self.cfg.timeout_s) as smtp:
                smtp.ehlo()
                if self.cfg.starttls and smtp.has_extn("starttls"):
                    smtp.starttls()
                    smtp.ehlo()
                if self.cfg.username:
                    smtp.login(self.cfg.username, self._password or "")
                smtp.send_message(self.message(t))
        except (smtplib.SMTPException, OSError) as exc:
            raise TransportError(f"{self.name}: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        pass


class MqttChannel:
    def __init__(self, cfg: MqttAlarmConfig) -> None:
        import paho.mqtt.client as mqtt

        self.cfg = cfg
        self.name = f"mqtt {cfg.host}:{cfg.port}"
        self.min_priority = cfg.min_priority
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"qctrace-alarms-{os.getpid()}",
                                   protocol=mqtt.MQTTv5)
        if cfg.username:
            self._client.username_pw_set(cfg.username, read_secret(cfg.password_env, cfg.password_file,
                                                                   f"MQTT {cfg.host} password"))
        self._connected = threading.Event()
        self._client.on_connect = lambda c, u, f, rc, p=None: self._connected.set() if not rc.is_failure else None
        self._client.on_disconnect = lambda c, u, f, rc, p=None: self._connected.clear()
        self._client.reconnect_delay_set(1, 30)
        self._client.connect_async(cfg.host, cfg.port, keepalive=30)
        self._client.loop_start()

    def topic(self, t: Transition) -> str:
        a = t.alarm
        return f"{self.cfg.prefix}/{a.site}/{a.line or '_'}/alarms/{a.id}"

    def send(self, t: Transition) -> None:
        if not self._connected.wait(10):
            raise TransportError(f"{self.name}: not connected to the broker (retrying in the background)")
        try:
            info = self._client.publish(self.topic(t), json.dumps(payload(t), separators=(",", ":")), qos=1,
                                        retain=True)  # a name with + or # in it is refused as a topic here
            info.wait_for_publish(timeout=10)
        except (RuntimeError, ValueError) as exc:
            raise TransportError(f"{self.name}: {exc}") from None
        if not info.is_published():
            raise TransportError(f"{self.name}: not acknowledged by the broker within 10 s")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@dataclass
class NotifyStats:
    sent: int = 0
    failed: int = 0
    dropped: int = 0


class Notifier:
    """A bounded queue and one worker thread delivering alarm transitions to the channels."""

    _STOP = object()

    def __init__(self, channels: list[Channel], maxsize: int = 10_000) -> None:
        self.channels = channels
        self.stats = NotifyStats()
        self._q: queue.Queue = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._run, name="qctrace-notify", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, cfg: AlarmsConfig) -> Notifier | None:
        """The configured channels, or None when there are none. Secret problems are raised here, at start."""
        channels: list[Channel] = [WebhookChannel(w) for w in cfg.webhooks]
        if cfg.email is not None:
            channels.append(EmailChannel(cfg.email))
        if cfg.mqtt.enabled:
            channels.append(MqttChannel(cfg.mqtt))
        return cls(channels, cfg.notify_queue) if channels else None

    def submit(self, t: Transition) -> None:
        """Never blocks: a full queue drops the notification (the ledger has the change anyway)."""
        try:
            self._q.put_nowait(t)
        except queue.Full:
            self.stats.dropped += 1
            log.warning("notify.dropped id=%s action=%s queue_full=%d", t.alarm.id, t.action.value, self._q.maxsize)

    def _run(self) -> None:
        while True:
            t = self._q.get()
            if t is self._STOP:
                return
            for ch in self.channels:
                if not _reaches(t.alarm.priority, ch.min_priority):
                    continue
                try:
                    ch.send(t)
                    self.stats.sent += 1
                except TransportError as exc:
                    self.stats.failed += 1
                    log.warning("notify.failed channel=%s id=%s error=%s", ch.name, t.alarm.id, exc)

    def close(self, timeout_s: float = 30.0) -> None:
        """Deliver what is queued (for at most ``timeout_s``), then stop."""
        with contextlib.suppress(queue.Full):
            self._q.put(self._STOP, timeout=timeout_s)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("notify.close_timeout pending=%d", self._q.qsize())
        for ch in self.channels:
            ch.close()
