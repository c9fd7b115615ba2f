"""The hash chain detects and locates any change: a byte in the file, a deletion, a reordering."""

from __future__ import annotations

import hashlib
import itertools
import sqlite3

import pytest

from ledger import GENESIS, Ledger, events
from ledger.merkle import leaf_hash, root_of
from qctrace.errors import ChainBroken, InvalidEvent, LedgerError, LedgerIntegrityError

T0 = 1_793_599_200 * 10**9
GTIN = "0614141.107346"


def _fill(path, n=20) -> list:
    with Ledger(path) as led:
        evs = []
        for i in range(n):
            evs.append(events.lot_produced(f"LOT-{i:04d}", GTIN, "plant1", "line1", T0 + i * 10**9))
        return led.append_many(evs)


def test_appended_events_chain_from_genesis_and_verify(tmp_path):
    stored = _fill(tmp_path / "l.sqlite", 5)
    assert stored[0].hash == hashlib.sha256(GENESIS + stored[0].body).digest()
    assert all(b.hash == hashlib.sha256(a.hash + b.body).digest() for a, b in itertools.pairwise(stored))
    with Ledger(tmp_path / "l.sqlite", readonly=True) as led:
        report = led.scan()
        assert report.events == 5 and report.head == stored[-1].hash.hex()
        assert report.root == root_of([leaf_hash(e.body) for e in stored])
        assert [e.lot for e in led.events(lot="LOT-0003")] == ["LOT-0003"]


def test_one_flipped_byte_in_the_ledger_file_is_detected_and_located(tmp_path):
    path = tmp_path / "l.sqlite"
    _fill(path)
    raw = bytearray(path.read_bytes())
    # Event #7's body holds its lot id; change one byte of it inside the file itself.
    at = raw.index(b'lgtin:0614141.107346.LOT-0007"') + len(b'lgtin:0614141.107346.LOT-00')
    raw[at] = ord("9")
    path.write_bytes(bytes(raw))
    with Ledger(path, readonly=True) as led, pytest.raises(LedgerIntegrityError) as exc:
        led.scan()
    assert exc.value.index == 7
    assert "event #7" in str(exc.value) and "content changed" in str(exc.value)


def test_a_deleted_event_is_detected(tmp_path):
    path = tmp_path / "l.sqlite"
    _fill(path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM events WHERE idx = 4")
    with Ledger(path, readonly=True) as led, pytest.raises(ChainBroken, match="event #4 is missing"):
        led.scan()


def test_swapped_events_are_detected(tmp_path):
    path = tmp_path / "l.sqlite"
    _fill(path)
    with sqlite3.connect(path) as db:
        a = db.execute("SELECT kind, lot, event_time, body, hash, leaf FROM events WHERE idx=3").fetchone()
        b = db.execute("SELECT kind, lot, event_time, body, hash, leaf FROM events WHERE idx=4").fetchone()
        db.execute("UPDATE events SET kind=?, lot=?, event_time=?, body=?, hash=?, leaf=? WHERE idx=3", b)
        db.execute("UPDATE events SET kind=?, lot=?, event_time=?, body=?, hash=?, leaf=? WHERE idx=4", a)
    with Ledger(path, readonly=True) as led, pytest.raises(ChainBroken) as exc:
        led.scan()
    assert exc.value.index == 3


def test_editing_an_index_column_cannot_mislead_a_trace(tmp_path):
    path = tmp_path / "l.sqlite"
    _fill(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE events SET lot = 'LOT-9999' WHERE idx = 2")
    with Ledger(path, readonly=True) as led, pytest.raises(LedgerIntegrityError, match="event #2: index columns"):
        led.scan()


def test_an_invalid_event_writes_nothing(tmp_path):
    path = tmp_path / "l.sqlite"
    _fill(path, 3)
    with Ledger(path) as led:
        good = events.lot_produced("LOT-A", GTIN, "p", "l", T0)
        with pytest.raises(InvalidEvent, match="canonical-JSON"):
            led.append_many([good, {**good, "qctrace:qc": {"v": float("nan")}}])
        with pytest.raises(InvalidEvent, match="is not one of the EPCIS 2\\.0 event types"):
            led.append({"lot": "x"})
        with pytest.raises(InvalidEvent, match="missing action"):
            led.append_many([good, {k: v for k, v in good.items() if k != "action"}])
        with pytest.raises(InvalidEvent, match="eventTime"):
            led.append({**good, "eventTime": "yesterday"})
        assert len(led) == 3
        led.scan()


def test_a_file_that_is_not_a_ledger_is_refused_clearly(tmp_path):
    p = tmp_path / "l.sqlite"
    p.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(LedgerError, match="not a qctrace ledger"):
        Ledger(p)


def test_editing_the_trace_index_is_detected(tmp_path):
    path = tmp_path / "l.sqlite"
    with Ledger(path) as led:
        led.append_many([events.lot_produced("IN-1", "0614141.200018", "p", "l", T0),
                         events.lot_produced("OUT-1", GTIN, "p", "l", T0 + 1,
                                             inputs=[events.lot_class("IN-1", "0614141.200018")])])
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM links WHERE src LIKE '%IN-1'")  # would hide OUT-1 from a recall of IN-1
    with Ledger(path, readonly=True) as led, pytest.raises(LedgerIntegrityError, match="event #1: trace index links"):
        led.scan()


def test_appends_from_several_processes_interleave_into_one_valid_chain(tmp_path):
    import multiprocessing as mp

    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_from, args=(path, w, 100)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with Ledger(path, readonly=True) as led:
        assert led.scan().events == 400
        assert len(led.lots()) == 400


def _append_from(path, worker: int, n: int) -> None:
    with Ledger(path) as led:
        for i in range(0, n, 5):
            led.append_many([events.lot_produced(f"W{worker}-{i + k:04d}", GTIN, "p", "l", T0 + i + k)
                             for k in range(5)])
