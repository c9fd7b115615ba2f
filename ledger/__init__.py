"""The provenance ledger: canonical events, SHA-256 hash chain, verification and lot queries."""

from ledger import events
from ledger.store import GENESIS, Ledger, StoredEvent, VerifyReport

__all__ = ["GENESIS", "Ledger", "StoredEvent", "VerifyReport", "events"]
