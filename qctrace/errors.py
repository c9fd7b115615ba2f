"""The error tree. Every error says what failed, where, and what to do about it.

::

    QctraceError
    ├── ConfigError                 bad or missing configuration (names file and key)
    ├── SchemaMismatch              a batch that is not READING_SCHEMA
    ├── ReaderError                 an edge reader cannot read its device
    │   └── ReaderTimeout
    ├── FrameError                  one serial frame rejected (counted, never a reading)
    ├── PayloadError                an edge→ingest message that is not a valid payload (quarantined)
    ├── SpoolError                  the edge's durable spool cannot take or give back records
    │   └── SpoolFull               at its size limit under the "block" policy
    ├── TransportError              the broker link failed in a way retrying will not fix
    ├── SinkCommitError             the Parquet sink could not commit; upstream must not ack
    ├── AlarmError                  an unknown alarm id, or a state change the alarm's state does not allow
    └── LedgerError
        ├── InvalidEvent            an event refused on append (nothing written)
        ├── AnchorError             the chain to anchor on cannot be reached or refused the anchor
        └── LedgerIntegrityError    verification failed: carries the first bad event
            ├── ChainBroken         hash chain: an event changed, deleted, inserted or reordered
            ├── RootMismatch        Merkle root/proof does not match (carries expected vs computed)
            ├── BadSignature        a checkpoint signature does not verify, or its key is unknown
            ├── RolledBack          the ledger is shorter than a checkpoint that was signed
            ├── AnchorMismatch      an anchored root differs from its checkpoint, or the anchor is gone
            └── DataFileChanged     a Parquet file differs from the hash the ledger recorded

Verification raises and never returns ``False``: a caller cannot forget to check.
"""

from __future__ import annotations

from typing import Any


class QctraceError(Exception):
    """Base of every error qctrace raises on purpose; the CLI turns it into a message and exit code."""

    exit_code = 1


class ConfigError(QctraceError):
    exit_code = 2


class SchemaMismatch(QctraceError):
    def __init__(self, expected: Any, got: Any) -> None:
        self.expected = expected
        self.got = got
        super().__init__(
            "record batch does not match the reading schema (qctrace.schema.READING_SCHEMA);"
            f" build batches with qctrace.schema.batch_from_columns.\nexpected:\n{expected}\ngot:\n{got}"
        )


class ReaderError(QctraceError):
    pass


class ReaderTimeout(ReaderError):
    pass


class ServerUnreachable(ReaderError):
    """Nothing answered at the device's address (refused, reset, timed out): it may be restarting,
    so a reader keeps trying; a refusal that retrying cannot cure (trust, login) is a ReaderError."""


class FrameError(QctraceError):
    """A serial frame failed a check. ``reason`` is a short machine-readable tag for counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"bad frame ({reason}){': ' + detail if detail else ''}")


class PayloadError(QctraceError):
    """A message between edge and ingest that is not a valid qctrace payload."""


class SpoolError(QctraceError):
    """The edge's durable spool cannot take or give back records."""


class SpoolFull(SpoolError):
    """The spool is at its size limit and its policy is to block."""


class TransportError(QctraceError):
    """The link to the broker or the next hop failed in a way retrying will not fix."""


class SnapshotGone(QctraceError):
    """A query found files of the committed dataset missing on every fresh snapshot it took."""


class SinkCommitError(QctraceError):
    pass


class AlarmError(QctraceError):
    """An unknown alarm id, or an operator action its current state does not allow."""


class LedgerError(QctraceError):
    pass


class LedgerIntegrityError(LedgerError):
    """Verification failed. ``index`` is the 0-based position of the first bad event (or None)."""

    exit_code = 3

    def __init__(self, message: str, index: int | None = None, expected: str = "", computed: str = "") -> None:
        self.index = index
        self.expected = expected
        self.computed = computed
        super().__init__(message)


class ChainBroken(LedgerIntegrityError):
    pass


class RootMismatch(LedgerIntegrityError):
    pass


class BadSignature(LedgerIntegrityError):
    pass


class RolledBack(LedgerIntegrityError):
    pass


class AnchorMismatch(LedgerIntegrityError):
    pass


class DataFileChanged(LedgerIntegrityError):
    pass


class InvalidEvent(LedgerError):
    """An event was refused on append; nothing of its batch was written."""


class AnchorError(LedgerError):
    pass
