"""The campaign's machine faults: a ballast that really fills a filesystem, and refusals that say why."""

from __future__ import annotations

import errno
import os

import pytest

from qctrace import faults
from qctrace.faults import FaultUnavailable, fill_disk, mount_tmpfs, tmpfs


@pytest.fixture
def small_fs(tmp_path):
    try:
        with tmpfs(tmp_path / "mnt", 256 << 10) as mnt:
            yield mnt
    except FaultUnavailable as exc:
        pytest.skip(str(exc))


def _write(path, n: int) -> None:
    with open(path, "wb") as fh:
        fh.write(b"x" * n)
        fh.flush()
        os.fsync(fh.fileno())


def test_a_filled_disk_refuses_the_next_write_and_has_room_again_after_the_ballast_goes(small_fs):
    with fill_disk(small_fs) as ballast:
        assert ballast.path.exists() and ballast.bytes > 200 << 10
        with pytest.raises(OSError) as err:
            _write(small_fs / "one-more", 100)
        assert err.value.errno == errno.ENOSPC
    assert not ballast.path.exists()
    _write(small_fs / "one-more", 100_000)


def test_a_disk_written_to_while_it_is_being_filled_is_still_filled(small_fs, monkeypatch):
    """The spool writes between the ballast's free-space reading and its allocation (the campaign
    found this): the ballast then gets less, and the disk is full all the same."""
    real = os.statvfs

    def optimistic(path):  # as if 64 KiB were still free that someone else has just taken
        st = real(path)
        more = (64 << 10) // st.f_frsize
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, st.f_bfree, st.f_bavail + more, *tuple(st)[5:]))

    monkeypatch.setattr(faults.os, "statvfs", optimistic)
    with fill_disk(small_fs):
        with pytest.raises(OSError) as err:
            _write(small_fs / "one-more", 100)
        assert err.value.errno == errno.ENOSPC


def test_keep_free_bytes_leaves_that_much_room(small_fs):
    with fill_disk(small_fs, keep_free_bytes=64 << 10):
        _write(small_fs / "fits", 32 << 10)
        with pytest.raises(OSError):
            _write(small_fs / "does-not-fit", 128 << 10)


def test_a_filesystem_too_large_to_fill_is_refused_with_the_way_out(tmp_path):
    with pytest.raises(FaultUnavailable, match=r"would take \d+ bytes of ballast .*\(mount_tmpfs\)"):
        fill_disk(tmp_path, max_ballast_bytes=1)
    assert not list(tmp_path.glob(".qctrace-ballast-*"))


def test_mounting_without_root_is_refused_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(faults.os, "geteuid", lambda: 1000)
    with pytest.raises(FaultUnavailable, match=r"needs root .* uid 1000.*skipped"):
        mount_tmpfs(tmp_path / "mnt", 1 << 20)
