"""From payloads to ingest, and commit acknowledgements back to the edge.

Each payload is decoded (``qctrace.wire``) and handed to ``Ingest``; its ``(node, rid)`` is
acknowledged only once the rows it carried are in a durable Parquet commit: right after the next
sink commit, or at once when nothing is waiting to be committed (a redelivery whose rows were all
duplicates, or a gap record, which the ledger has already stored). An acknowledgement that is lost
costs one resend, whose rows are dropped as duplicates.

A payload that cannot be decoded is never guessed at: it is written to ``quarantine/`` with the
reason beside it, counted, and acknowledged (resending the same bytes cannot make them valid).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from ingest.pipeline import Ingest
from qctrace import wire
from qctrace.durable import atomic_write
from qctrace.errors import PayloadError

log = logging.getLogger(__name__)

Ack = Callable[[str, list[int]], None]


class Receiver:
    def __init__(self, ingest: Ingest, ack: Ack, quarantine_dir: Path,
                 holds: Callable[[str], bool] = lambda node: True) -> None:
        """``holds``: does this worker take the node's payloads now? One that was handed to another
        worker may still have payloads on their way here: they are left unacknowledged, and the
        edge resends them to the worker that holds the node."""
        self.ingest = ingest
        self.holds = holds
        self.not_held = 0
        self.ack = ack
        self.quarantine_dir = quarantine_dir
        self.quarantined = 0
        self.payloads = 0
        self._waiting: dict[str, list[int]] = {}
        ingest.on_commit.append(self._committed)

    def _committed(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for node, rids in waiting.items():
            self.ack(node, rids)

    def _quarantine(self, payload: bytes, exc: PayloadError) -> tuple[str, int] | None:
        self.quarantined += 1
        name = f"{time.time_ns()}-{self.quarantined}"
        atomic_write(self.quarantine_dir / f"{name}.bin", payload)
        atomic_write(self.quarantine_dir / f"{name}.txt", f"{exc}\n".encode())
        log.error("ingest.quarantine file=%s.bin reason=%s", name, exc)
        try:
            return wire.peek(payload)
        except PayloadError:
            return None

    async def items(self, payloads: AsyncIterator[bytes]) -> AsyncIterator[wire.Envelope]:
        """The items for ``Ingest.run``; acknowledgements follow the commits."""
        async for payload in payloads:
            self.payloads += 1
            try:
                env = wire.decode(payload)
            except PayloadError as exc:
                who = self._quarantine(payload, exc)
                if who is not None:
                    self._waiting.setdefault(who[0], []).append(who[1])
                continue
            if not self.holds(env.node):
                self.not_held += 1
                continue
            self._waiting.setdefault(env.node, []).append(env.rid)
            yield env
            if not self.ingest.sink.pending_rows:
                self._committed()
