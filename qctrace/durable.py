"""Writing files so that a crash or power loss leaves either the old content or the new, never half.

One way of doing it for every component that keeps state on disk: write a temporary file beside
the target, fsync it, rename it over the target, fsync the directory (the rename itself is only
durable once the directory entry is). A directory made for such files is made with ``makedirs``:
a new directory's own entry is durable only once its parent is fsynced, and without it a power
cut can take the directory, and every fsynced file in it, away.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs(path: Path) -> None:
    """``mkdir -p`` whose new directories survive power loss: each one's parent is fsynced.

    A directory that already exists costs one ``stat``. One another process creates at the same
    moment is treated as ours (its parent is fsynced again, which is harmless). A file in the way
    raises what ``mkdir -p`` would (``NotADirectoryError``, ``FileExistsError``).
    """
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    if not path.is_dir():  # a file in the way: fail as mkdir -p would
        (missing[-1] if missing else path).mkdir(exist_ok=True)
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            if not d.is_dir():
                raise
        fsync_dir(d.parent)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    makedirs(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
