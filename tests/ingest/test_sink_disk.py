"""A full disk and a read-only directory: a clear error, nothing acknowledged upstream, nothing lost.

The real cases need a filesystem that can fill up or turn read-only under the test: a 1 MiB tmpfs
mounted for the test (possible as root, where ``chmod`` would not block writes; as another user
``chmod`` does). Where neither works those tests skip and say why. One more test runs everywhere:
it makes the OS boundary itself (``os.fsync``) fail with ENOSPC, a simulation, and checks what
ingest does with it: no acknowledgement, rows pending, committed once the disk has room.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from ingest import Ingest, read_dataset
from ingest.sink import ParquetSink
from qctrace.config import load_config
from qctrace.errors import SinkCommitError
from qctrace.schema import batch_from_columns

DAY = 1_793_577_600 * 10**9


def _batch(seqs, payload=0):
    n = len(seqs)
    rng = __import__("random").Random(seqs[0])
    return batch_from_columns({
        "ts": [DAY + q * 10**9 for q in seqs], "recv_ts": [DAY] * n, "site": ["s"] * n, "line": ["l1"] * n,
        "device": ["plc"] * n, "sensor": [f"x{q % 7}" for q in seqs],
        "value": [rng.random() for _ in seqs],  # incompressible, so a few batches fill the tmpfs
        "quality": [0] * n, "seq": list(seqs), "lot": ["LOT-1"] * n,
    })


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs of our own, or a skip saying why there is none."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the chmod test covers a read-only directory here)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _seqs(root):
    return sorted(read_dataset(root).column("seq").to_pylist())


def test_a_full_disk_is_a_clear_error_and_the_rows_commit_once_there_is_room(tiny_fs):
    sink = ParquetSink(tiny_fs / "readings", tiny_fs / "ingest")
    sink.add(sink.dedupe(_batch(range(0, 1000))))
    sink.flush()
    filler = tiny_fs / "filler"
    with open(filler, "wb") as fh:  # fill the disk to the last block
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    before = (tiny_fs / "ingest" / "commit.json").read_bytes()
    sink.add(sink.dedupe(_batch(range(1000, 6000))))
    with pytest.raises(SinkCommitError) as err:
        sink.flush()
    msg = str(err.value)
    assert "No space left on device (ENOSPC)" in msg and str(tiny_fs) in msg
    assert "5000 readings stay pending and are not acknowledged upstream; free disk space" in msg
    assert (tiny_fs / "ingest" / "commit.json").read_bytes() == before  # nothing half-committed
    assert not sink.covers("s/l1/plc", 1000, 5999) and sink.pending_rows == 5000
    assert not [p for p in (tiny_fs / "readings").rglob("*.tmp")]
    # A redelivery meanwhile is recognised: the rows are pending here, not lost and not doubled.
    assert sink.dedupe(_batch(range(1000, 1010))).num_rows == 0
    filler.unlink()
    assert sink.flush()
    assert sink.covers("s/l1/plc", 0, 5999)
    assert _seqs(tiny_fs / "readings") == list(range(6000))


def _read_only(path, on: bool):
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", f"remount,{'ro' if on else 'rw'}", str(path)], check=True)
    else:
        for p in [path, *path.rglob("*")]:
            if p.is_dir():
                p.chmod(0o555 if on else 0o755)


def test_a_read_only_directory_is_a_clear_error_and_nothing_is_lost(tmp_path, request):
    if os.geteuid() == 0:
        where = request.getfixturevalue("tiny_fs")
    else:
        where = tmp_path / "data"
        where.mkdir()
    sink = ParquetSink(where / "readings", where / "ingest")
    sink.add(sink.dedupe(_batch(range(0, 100))))
    sink.flush()
    sink.add(sink.dedupe(_batch(range(100, 200))))
    _read_only(where, True)
    try:
        with pytest.raises(SinkCommitError) as err:
            sink.flush()
        msg = str(err.value)
        assert ("Read-only file system (EROFS)" in msg and "remount read-write" in msg) or \
            ("Permission denied (EACCES)" in msg and "fix the permissions" in msg), msg
        assert str(where) in msg and "100 readings stay pending" in msg
        assert not sink.covers("s/l1/plc", 100, 199)
    finally:
        _read_only(where, False)
    assert sink.flush()
    assert _seqs(where / "readings") == list(range(200))


def test_ingest_does_not_acknowledge_a_refused_commit_and_retries_it(tmp_path, monkeypatch):
    """Simulated ENOSPC: os.fsync fails as a full disk makes it fail (no real full disk needed)."""
    cfg = load_config(None).with_overrides(**{"sink.retry_s": 0.01})
    acks: list[int] = []
    ingest = Ingest(tmp_path, cfg.detect, cfg.sink, lambda facts: None)
    ingest.on_commit.append(lambda: acks.append(ingest.sink.rows_committed))
    ingest.process(_batch(range(0, 50)))
    ingest.flush()
    assert acks == [50]
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    ingest.process(_batch(range(50, 80)))
    ingest.flush()  # logged, kept, not acknowledged
    assert acks == [50] and ingest.sink.pending_rows == 30
    assert "No space left on device (ENOSPC)" in str(ingest.commit_error)
    assert not ingest.sink.covers("s/l1/plc", 50, 79)
    with pytest.raises(SinkCommitError, match="30 readings stay pending"):
        ingest.finish()  # the end of a run does not pretend: it raises
    monkeypatch.setattr(os, "fsync", real_fsync)
    ingest.process(_batch(range(50, 80)))  # upstream's redelivery: already pending, dropped
    import time

    time.sleep(0.02)
    ingest.flush()
    assert acks == [50, 80] and ingest.commit_error is None
    assert _seqs(tmp_path / "readings") == list(range(80))
