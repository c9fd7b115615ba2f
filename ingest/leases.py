"""Which ingest worker takes which edge node: one holder per node, shared out evenly, handed over cleanly.

Detection state is per sensor, and a sensor's readings all come through one edge node. An MQTT 5
shared subscription deals a group's messages to its members in turn (Mosquitto has no sticky or
hashed strategy), which would split every sensor between workers. So a node has one holder at a
time:

* **Who is alive.** Each worker's sink holds ``flock`` on ``writers/<worker>.lock`` for its life
  (``ingest.sink``); a worker that dies, even by ``kill -9``, drops it with its file descriptors.
* **Who should hold what.** Every worker computes the same :func:`assign`: the nodes (learnt from
  the edges' retained birth messages) in a fixed order, dealt to the live workers in turn.
* **Who does hold it.** A lease is a ``flock`` on ``leases/<node>.lock``. A worker gives a node up
  only after it stopped reading it and committed what it had (``Ingest.release``); the next one
  takes the lease, loads the node's detector state from that commit (``Ingest.adopt``), and
  subscribes. A worker that died frees its leases at once, and its nodes carry on from their last
  commit; their edges resend everything not yet committed.

The leases need one POSIX filesystem shared by the workers, as the commit record does (the
README's production topology says what replaces both on object storage).
"""

from __future__ import annotations

import fcntl
import logging
import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)


def assign(nodes: Iterable[str], workers: Iterable[str]) -> dict[str, str]:
    """Node → worker: the nodes in a fixed pseudo-random order dealt to the sorted workers in turn,
    so every worker computes the same answer and each gets ⌊n/w⌋ or ⌈n/w⌉ nodes."""
    ws = sorted(set(workers))
    if not ws:
        return {}
    ns = sorted(set(nodes), key=lambda n: (zlib.crc32(n.encode()), n))
    return {n: ws[i % len(ws)] for i, n in enumerate(ns)}


def live_workers(state_dir: Path, me: str) -> list[str]:
    """Workers whose writer lock is held (``me`` always counts)."""
    out = {me}
    d = state_dir / "writers"
    for p in d.glob("*.lock") if d.is_dir() else ():
        name = p.name.removesuffix(".lock")
        if name == me:
            continue
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            out.add(name)
        finally:
            os.close(fd)
    return sorted(out)


class Leases:
    """The leases of one kind this process holds: ``flock`` on ``<directory>/<name>.lock``,
    released by the kernel if the process dies. Node leases live in ``<state>/leases``
    (:func:`node_leases`); roles of which one worker at a time plays each, such as background
    compaction, in ``<state>/roles``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fds: dict[str, int] = {}

    @property
    def held(self) -> set[str]:
        return set(self._fds)

    def holds(self, name: str) -> bool:
        return name in self._fds

    def try_take(self, name: str) -> bool:
        if name in self._fds:
            return True
        fd = os.open(self.dir / f"{quote(name, safe='')}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fds[name] = fd
        return True

    def give(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for name in list(self._fds):
            self.give(name)


def node_leases(state_dir: Path) -> Leases:
    return Leases(state_dir / "leases")


def role_leases(state_dir: Path) -> Leases:
    return Leases(state_dir / "roles")
