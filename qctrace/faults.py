"""Faults the campaign injects into the machine itself: a full disk under a spool, on a small tmpfs.

A real ENOSPC, not a patched ``os.write``: ``mount_tmpfs`` gives a directory its own small
filesystem (root only; anyone else gets ``FaultUnavailable`` and the campaign skips the fault),
``fill_disk`` fills the filesystem holding a path with a ballast file and removes it again, so
the process under test meets the full disk through its ordinary system calls.

    with tmpfs(work / "edge-spool", 8 << 20):
        ...start the edge with its spool there...
        with fill_disk(work / "edge-spool"):
            time.sleep(20)        # the edge holds, retries and warns; nothing is lost
        ...space is back: everything continues...

``fill_disk`` refuses to write more than ``max_ballast_bytes`` (256 MiB by default): filling the
root filesystem of a shared machine by mistake would hurt everyone on it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from qctrace.errors import QctraceError

_CHUNK = 1 << 20


class FaultUnavailable(QctraceError):
    """This machine cannot inject the fault (not root, no tmpfs, a filesystem too large to fill)."""


class Ballast:
    """A file that fills a filesystem to (nearly) its last block; ``remove`` gives the room back."""

    def __init__(self, path: Path, keep_free_bytes: int = 0, max_ballast_bytes: int = 256 << 20) -> None:
        self.path = path
        self.keep_free_bytes = keep_free_bytes
        self.max_ballast_bytes = max_ballast_bytes
        self.bytes = 0

    def fill(self) -> Ballast:
        """Write the ballast. With ``keep_free_bytes = 0`` the last partial blocks are written too,
        so the very next write of anyone else on that filesystem fails with ENOSPC."""
        st = os.statvfs(self.path.parent)
        want = st.f_bavail * st.f_frsize - self.keep_free_bytes
        if want > self.max_ballast_bytes:
            raise FaultUnavailable(
                f"filling {self.path.parent} would take {want} bytes of ballast (more than"
                f" {self.max_ballast_bytes}); put the directory on a small tmpfs first (mount_tmpfs)")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if want > 0:
                try:  # all at once where the filesystem can (tmpfs, ext4, xfs)
                    os.posix_fallocate(fd, 0, want)
                    self.bytes = want
                except OSError:
                    self._write(fd, want)
            if self.keep_free_bytes == 0:
                self._write(fd, None)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self.remove()
            raise
        os.close(fd)
        return self

    def _write(self, fd: int, upto: int | None) -> None:
        """Append zeros up to ``upto`` bytes, or (``None``) until nothing fits: on ENOSPC the write
        size halves down to one byte, so the last partly used block is filled too. (ENOSPC before
        ``upto`` is no error: someone else wrote since the free space was measured, and the
        filesystem is full all the same.)"""
        os.lseek(fd, self.bytes, os.SEEK_SET)
        n = _CHUNK
        while upto is None or self.bytes < upto:
            size = n if upto is None else min(n, upto - self.bytes)
            try:
                self.bytes += os.write(fd, bytes(size))
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                if n == 1:
                    return
                n //= 2

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Ballast:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def fill_disk(path: Path, keep_free_bytes: int = 0, *, max_ballast_bytes: int = 256 << 20) -> Ballast:
    """Fill the filesystem that holds ``path`` (a directory, or a file in one) with a ballast file;
    use it as a context manager to give the room back on exit, or call ``remove()`` yourself."""
    where = path if path.is_dir() else path.parent
    return Ballast(where / f".qctrace-ballast-{os.getpid()}", keep_free_bytes, max_ballast_bytes).fill()


def mount_tmpfs(path: Path, size_bytes: int) -> None:
    """Mount a tmpfs of ``size_bytes`` on ``path`` (created if missing). Needs root."""
    if os.geteuid() != 0:
        raise FaultUnavailable(f"mounting a tmpfs on {path} needs root (running as uid {os.geteuid()});"
                               " the full-disk fault is skipped")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size_bytes)},mode=0700", "tmpfs", str(path)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise FaultUnavailable(f"cannot mount a tmpfs on {path}: {r.stderr.strip() or r.returncode}")


def umount(path: Path) -> None:
    """Unmount what ``mount_tmpfs`` mounted; lazily if a process still has files open there."""
    r = subprocess.run(["umount", str(path)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        r = subprocess.run(["umount", "-l", str(path)], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise FaultUnavailable(f"cannot unmount {path}: {r.stderr.strip() or r.returncode}")


@contextlib.contextmanager
def tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """``mount_tmpfs`` for the duration of a ``with`` block."""
    mount_tmpfs(path, size_bytes)
    try:
        yield path
    finally:
        umount(path)
