"""The hash chain detects and locates any change: a byte in the file, a deletion, a reordering."""

from __future__ import annotations

import itertools
import sqlite3

import pytest

from ledger import GENESIS, Ledger, events
from qctrace.errors import ChainBroken, LedgerError, LedgerIntegrityError

T0 = 1_793_599_200 * 10**9


def _fill(path, n=20) -> list:
    with Ledger(path) as led:
        evs = []
        for i in range(n):
            evs.append(events.lot_started(f"LOT-{i:04d}", "plant1", "line1", T0 + i * 10**9))
        return led.append_many(evs)


def test_appended_events_chain_from_genesis_and_verify(tmp_path):
    stored = _fill(tmp_path / "l.sqlite", 5)
    assert stored[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(stored))
    with Ledger(tmp_path / "l.sqlite", readonly=True) as led:
        report = led.verify()
        assert report.events == 5 and report.head == stored[-1].hash.hex()
        assert [e.lot for e in led.events(lot="LOT-0003")] == ["LOT-0003"]


def test_one_flipped_byte_in_the_ledger_file_is_detected_and_located(tmp_path):
    path = tmp_path / "l.sqlite"
    _fill(path)
    raw = bytearray(path.read_bytes())
    # Event #7's body holds its lot id; change one byte of it inside the file itself.
    at = raw.index(b'"lot":"LOT-0007"') + len(b'"lot":"LOT-00')
    raw[at] = ord("9")
    path.write_bytes(bytes(raw))
    with Ledger(path, readonly=True) as led, pytest.raises(LedgerIntegrityError) as exc:
        led.verify()
    assert exc.value.index == 7
    assert "event #7" in str(exc.value) and "content changed" in str(exc.value)


def test_a_deleted_event_is_detected(tmp_path):
    path = tmp_path / "l.sqlite"
    _fill(path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM events WHERE idx = 4")
    with Ledger(path, readonly=True) as led, pytest.raises(ChainBroken, match="event #4 is missing"):
        led.verify()


def test_swapped_events_are_detected(tmp_path):
    path = tmp_path / "l.sqlite"
    _fill(path)
    with sqlite3.connect(path) as db:
        a = db.execute("SELECT kind, lot, event_time, body, prev_hash, hash FROM events WHERE idx=3").fetchone()
        b = db.execute("SELECT kind, lot, event_time, body, prev_hash, hash FROM events WHERE idx=4").fetchone()
        db.execute("UPDATE events SET kind=?, lot=?, event_time=?, body=?, prev_hash=?, hash=? WHERE idx=3", b)
        db.execute("UPDATE events SET kind=?, lot=?, event_time=?, body=?, prev_hash=?, hash=? WHERE idx=4", a)
    with Ledger(path, readonly=True) as led, pytest.raises(ChainBroken) as exc:
        led.verify()
    assert exc.value.index == 3


def test_editing_an_index_column_cannot_mislead_a_trace(tmp_path):
    path = tmp_path / "l.sqlite"
    _fill(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE events SET lot = 'LOT-9999' WHERE idx = 2")
    with Ledger(path, readonly=True) as led, pytest.raises(LedgerIntegrityError, match="event #2: index columns"):
        led.verify()


def test_an_invalid_event_writes_nothing(tmp_path):
    path = tmp_path / "l.sqlite"
    _fill(path, 3)
    with Ledger(path) as led:
        with pytest.raises(LedgerError, match="canonical-JSON"):
            led.append_many([events.lot_started("LOT-A", "p", "l", T0), {"kind": "x", "eventTime": "t",
                                                                         "v": float("nan")}])
        with pytest.raises(LedgerError, match="needs 'kind'"):
            led.append({"lot": "x"})
        assert len(led) == 3
        led.verify()


def test_a_file_that_is_not_a_ledger_is_refused_clearly(tmp_path):
    p = tmp_path / "l.sqlite"
    p.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(LedgerError, match="not a qctrace ledger"):
        Ledger(p)
