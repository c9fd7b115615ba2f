"""The provenance ledger: EPCIS 2.0 events in canonical JSON, a SHA-256 hash chain, an RFC 9162
Merkle tree with signed checkpoints and on-chain anchors, verification, trace and exports."""

from ledger import events
from ledger.store import GENESIS, Ledger, ScanReport, StoredEvent

__all__ = ["GENESIS", "Ledger", "ScanReport", "StoredEvent", "events"]
