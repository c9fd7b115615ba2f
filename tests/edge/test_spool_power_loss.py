"""Simulated power loss on the spool: only what was fsynced survives, and a write in flight is torn.

No real power can be cut here, so the test keeps its own model of the disk: a file's content is
durable as of its last fsync/fdatasync, and a directory entry as of the directory's last fsync.
At random instants the test builds the disk as a power cut would leave it (durable content, plus a
random prefix of what was written after it: a torn write) and opens the spool on that copy.
Everything ``append`` acknowledged must be there, intact; the spool must open without help.
"""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest

import edge.spool as spool_mod
import qctrace.durable as durable
from edge.spool import Spool


class Disk:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.content: dict[int, bytes] = {}  # inode -> bytes as of its last fsync
        self.names: dict[str, int] = {}  # relative name -> inode, as of the last directory fsync

    def sync_fd(self, fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return  # a directory's entries are taken by sync_dir
        with open(f"/proc/self/fd/{fd}", "rb") as fh:
            self.content[st.st_ino] = fh.read()

    def sync_dir(self, path: Path) -> None:
        for name in list(self.names):
            if (self.root / name).parent == path and not (self.root / name).exists():
                del self.names[name]
        for p in path.iterdir():
            if p.is_file():
                self.names[str(p.relative_to(self.root))] = p.stat().st_ino

    def cut(self, rng: random.Random, out: Path) -> None:
        out.mkdir(parents=True)
        for name, ino in self.names.items():
            kept = self.content.get(ino, b"")
            live = self.root / name
            now = live.read_bytes() if live.exists() and live.stat().st_ino == ino else kept
            torn = now[len(kept):] if now.startswith(kept) else b""
            (out / name).write_bytes(kept + torn[: rng.randint(0, len(torn))])


@pytest.fixture
def disk(tmp_path, monkeypatch):
    d = Disk(tmp_path / "spool")
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def fsync(fd):
        real_fsync(fd)
        d.sync_fd(fd)

    def fdatasync(fd):
        real_fdatasync(fd)
        d.sync_fd(fd)

    def fsync_dir(path):
        durable.fsync_dir.__wrapped__(path)
        d.sync_dir(Path(path))

    fsync_dir.__wrapped__ = durable.fsync_dir
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(durable, "fsync_dir", fsync_dir)
    monkeypatch.setattr(spool_mod, "fsync_dir", fsync_dir)
    return d


def payload(rid: int) -> bytes:
    return rid.to_bytes(8, "little") * (1 + rid % 40)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_after_a_power_cut_everything_acknowledged_is_there(tmp_path, disk, seed):
    rng = random.Random(seed)
    sp = Spool(tmp_path / "spool", segment_bytes=4000, max_bytes=1 << 20)
    acked: set[int] = set()
    released: set[int] = set()
    for step in range(400):
        acked.add(sp.append(payload))
        if rng.random() < 0.3:
            batch = rng.sample(sorted(acked - released), k=min(len(acked - released), rng.randint(1, 5)))
            sp.release(batch)
            released |= set(batch)
        if rng.random() < 0.05:
            sp.save_state()
        if rng.random() < 0.03:
            image = tmp_path / f"cut-{step}"
            disk.cut(rng, image)
            after = Spool(image)  # opens on its own, cutting any torn record
            held = set(after.pending())
            assert acked - released <= held, f"lost after a power cut at step {step}: {sorted(acked - released - held)}"
            for rid in held:
                assert after.read(rid) == payload(rid)
            assert after.next_rid >= max(acked - released, default=-1) + 1
            after.close()
    sp.close()
