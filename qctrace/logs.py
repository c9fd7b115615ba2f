"""Log output: plain text for people, one JSON object per line for log shippers (``--log-format json``).

Our messages already read ``event key=value key=value`` (``mqtt.connected broker=h:1883
session_present=False``); the JSON form keeps the message and lifts the event and each field
into keys, so Loki/Elastic can filter on ``event`` or ``broker`` without a parsing rule.

Secrets: every handler gets a filter that masks the values of secret-looking environment
variables (passwords, keys, tokens), so even a message that echoes a library's exception text
cannot put a password in a log file. It is a second line of defence; no qctrace message logs one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
from typing import Any

_FIELD = re.compile(r"(?:^|\s)([A-Za-z_][\w.]*)=(.*?)(?=\s[A-Za-z_][\w.]*=|$)", re.S)
_EVENT = re.compile(r"^([a-z_][\w]*\.[\w.]+)(?:\s|$)")
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|HMAC|PRIVATE_KEY|API_KEY", re.I)
_RESERVED = {"ts", "level", "logger", "message", "event", "exc"}
MASK = "***"


def fields_of(message: str) -> dict[str, Any]:
    """``event`` (the leading dotted word) and the ``key=value`` pairs of one of our log messages."""
    out: dict[str, Any] = {}
    m = _EVENT.match(message)
    if m:
        out["event"] = m.group(1)
    for key, value in _FIELD.findall(message):
        out[key if key not in _RESERVED else f"field_{key}"] = value.strip()
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        obj: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "message": message,
        }
        obj.update(fields_of(message))
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables (long enough not to mask ordinary words)."""
    env = os.environ if environ is None else environ
    return sorted({v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 6}, key=len, reverse=True)


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self.secrets = secrets if secrets is not None else secret_values()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = message
        for s in self.secrets:
            masked = masked.replace(s, MASK)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def configure(level: int, fmt: str = "text", stream: Any = None) -> logging.Handler | None:
    """The root handler for a CLI run: text or JSON lines on stderr, secrets masked.

    Like ``logging.basicConfig``, it leaves a root logger that someone else already configured
    (pytest's capture, an embedding application) alone, and returns None then."""
    root = logging.getLogger()
    if any(not getattr(h, "_qctrace", False) for h in root.handlers):
        return None
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._qctrace = True  # type: ignore[attr-defined]
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(RedactSecrets())
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
