"""A ledger file that is not a ledger: `qctrace verify` and `trace` say so, name the file, and leave
it exactly as it was (no schema written into it, no journal files beside it)."""

from __future__ import annotations

import hashlib
import os
import sqlite3

import pytest
from click.testing import CliRunner

from qctrace.cli import cli


def _random_bytes(path) -> None:
    path.write_bytes(os.urandom(1) + bytes(range(256)) * 64)


def _other_sqlite(path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO customers (name) VALUES ('ACME')")
    con.commit()
    con.close()


def _empty_file(path) -> None:
    path.write_bytes(b"")


def _sqlite_header_then_garbage(path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + bytes(4080) + os.urandom(4096))


KINDS = {"random bytes": _random_bytes, "an unrelated SQLite database": _other_sqlite,
         "a truncated SQLite file": _sqlite_header_then_garbage}


def _state(data_dir) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in data_dir.iterdir() if p.is_file()}


@pytest.mark.parametrize("command", [["verify"], ["trace", "L1-20261102-0001"]], ids=["verify", "trace"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_not_a_ledger_is_a_clear_error_and_the_file_is_untouched(tmp_path, command, kind):
    data = tmp_path / "data"
    data.mkdir()
    KINDS[kind](data / "ledger.sqlite")
    before = _state(data)
    res = CliRunner().invoke(cli, [*command, "--data-dir", str(data)])
    assert res.exit_code != 0
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output  # a message, not a crash
    assert f"{data / 'ledger.sqlite'}: not a qctrace ledger" in res.output, res.output
    assert _state(data) == before  # same bytes, and no -wal/-shm/-journal file appeared
    if kind == "an unrelated SQLite database":
        con = sqlite3.connect(data / "ledger.sqlite")
        assert con.execute("SELECT name FROM sqlite_master").fetchall() == [("customers",)]
        con.close()


def test_an_empty_ledger_file_is_not_mistaken_for_a_good_empty_ledger(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _empty_file(data / "ledger.sqlite")
    res = CliRunner().invoke(cli, ["verify", "--data-dir", str(data)])
    assert res.exit_code != 0, res.output
    assert f"{data / 'ledger.sqlite'}: not a qctrace ledger" in res.output and "Traceback" not in res.output
    assert (data / "ledger.sqlite").read_bytes() == b""
