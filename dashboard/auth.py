"""Who may do what on the dashboard: password hashes, roles, pages and actions (pure; no Streamlit).

Passwords are checked against scrypt hashes from the configuration (``hashlib.scrypt`` is in the
standard library, memory-hard, and needs no extra package). Permissions are a fixed table here,
not configuration: a deployment chooses who has which role, not what a role means.

Every privileged action calls ``authorize`` with a freshly loaded configuration at the moment it
runs, so removing a user or changing a role takes effect for sessions that are already open (a
logout in one browser does not end the others).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from qctrace.config import AuthConfig
from qctrace.errors import QctraceError

ROLES = ("technician", "compliance", "admin")

PAGES: dict[str, frozenset[str]] = {
    "line_quality": frozenset({"technician", "admin"}),
    "cold_chain": frozenset({"technician", "compliance", "admin"}),
    "trace": frozenset({"compliance", "admin"}),
    "ledger": frozenset({"compliance", "admin"}),
}
"""Page → roles that may open it. Technicians work the line; compliance works recalls and audits."""

ACTIONS: dict[str, frozenset[str]] = {
    "acknowledge": frozenset({"technician", "admin"}),
    "hold": frozenset({"compliance", "admin"}),
    "recall": frozenset({"compliance", "admin"}),
    "verify": frozenset({"compliance", "admin"}),
    "export": frozenset({"compliance", "admin"}),
}

# scrypt cost: N=2**14, r=8 is the interactive-login setting of the scrypt paper (~50 ms, 16 MiB).
_N, _R, _P = 1 << 14, 8, 1
_MAXMEM = 64 * 1024 * 1024


class PermissionDenied(QctraceError):
    """A session tried something its user (as configured now) may not do; nothing was changed."""

    exit_code = 4


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str


def hash_password(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64) of ``password`` with a fresh random salt."""
    if not password:
        raise ValueError("an empty password cannot be hashed: choose one")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; constant-time compare, ``False`` for a malformed hash."""
    try:
        scheme, n, r, p, salt, want = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r),
                                p=int(p), maxmem=_MAXMEM, dklen=len(base64.b64decode(want)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, base64.b64decode(want))


def login(auth: AuthConfig, name: str, password: str) -> User | None:
    """The user when name and password match the configuration, else ``None`` (never says which was wrong)."""
    entry = auth.users.get(name)
    if entry is None:
        check_password(password, _DUMMY)  # same work either way: timing does not reveal which names exist
        return None
    return User(name, entry.role) if check_password(password, entry.password_hash) else None


def can_open(user: User | None, page: str) -> bool:
    return user is not None and user.role in PAGES.get(page, frozenset())


def authorize(auth: AuthConfig, user: User | None, action: str) -> User:
    """The user as configured *now* if they may do ``action``; raises ``PermissionDenied`` otherwise.

    ``auth`` must be freshly loaded: the role a session logged in with may have been taken away.
    """
    if user is None:
        raise PermissionDenied(f"{action}: you are not logged in (log in again; nothing was changed)")
    entry = auth.users.get(user.name)
    if entry is None:
        raise PermissionDenied(f"{action}: user {user.name!r} no longer exists in the configuration;"
                               " nothing was changed")
    if entry.role not in ACTIONS.get(action, frozenset()):
        allowed = ", ".join(sorted(ACTIONS.get(action, ())))
        raise PermissionDenied(f"{action}: the {entry.role} role may not do this (needs {allowed});"
                               " nothing was changed")
    return User(user.name, entry.role)


_DUMMY = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
