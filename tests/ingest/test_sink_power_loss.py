"""Simulated power loss on the sink: the dataset holds exactly the commits that returned, never a
record naming a file that is not there in full.

No real power can be cut here, so the test keeps a model of the disk beside the real one (as the
spool's power-loss test does), fed by the real calls: ``os.fsync`` is wrapped, and on a file it
takes the file's content as durable, on a directory it takes the directory's entries (names and
inodes) as durable. Everything else the sink and ``atomic_write`` do (write, mkdir, rename,
unlink) happens on the real disk and is durable only once a later fsync says so. The model assumes
no more than POSIX promises: file data after an fsync of the file, a directory entry after an
fsync of its directory (a new directory's own entry after an fsync of its parent).

At random instants (just before or after any fsync, rename, mkdir or unlink, from the sink's
thread or its I/O helper thread, and after each commit) the test writes the disk as a power cut
would leave it into a fresh directory: from the data directory down, each directory holds its
durable entries, except that a name changed since (created, renamed over, removed) holds either
its old or its new state, at random, because the change may or may not have reached the disk;
each file holds its durable content plus a random prefix of anything appended to it since (a torn
write). The real ``ParquetSink`` then opens that copy, recovers on its own, and ``read_dataset``
must return exactly the rows of the commits whose ``flush`` had returned (or those plus the one in
flight, which may have reached its commit point), and every file the record names must be there
with the SHA-256 the record states.

Negative controls: the same run where the sink skips one of its fsyncs (the partition directory,
the temporary Parquet file, or the commit record's temporary file) must be caught.
"""

from __future__ import annotations

import os
import random
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

import ingest.commit_record as commit_record_mod
import ingest.sink as sink_mod
from ingest.sink import ParquetSink, read_dataset
from qctrace.durable import fsync_dir, sha256_file
from qctrace.errors import QctraceError
from qctrace.schema import batch_from_columns

DAY_NS = 86_400 * 10**9
DAY0 = 1_793_577_600 * 10**9  # 2026-11-02T00:00:00Z


File = tuple[int, int]  # (inode, generation): an inode number the filesystem reuses is a new file
Entries = dict[str, tuple[File, bool]]  # name -> (file, is a directory)


class Disk:
    """What survives a power cut, as of now: durable file contents and durable directory entries."""

    def __init__(self, root: Path, images: Path) -> None:
        self.root = root
        self.images = images
        self.rng = random.Random(0)  # what the cut images hold
        self.when: dict[str, random.Random] = {}  # per thread: whether to cut here (repeatable per thread)
        self.seed = 0
        self.cut_probability = 0.0
        self.generation: dict[int, int] = {}  # inode -> files that had it and are gone
        self.content: dict[File, bytes] = {}  # file -> content as of its last fsync
        self.entries: dict[File, Entries] = {self._file(root.stat().st_ino): {}}  # dir -> entries at its last fsync
        self.lock = threading.RLock()
        self.cutting = False
        self.tag = 0  # commits returned so far
        self.cuts: list[tuple[Path, int, str]] = []  # (image, commits returned, where)

    def _file(self, ino: int) -> File:
        return ino, self.generation.get(ino, 0)

    def _scan(self, path: Path) -> Entries:
        try:
            return {e.name: (self._file(e.inode()), e.is_dir(follow_symlinks=False)) for e in os.scandir(path)}
        except FileNotFoundError:
            return {}

    # -------------------------------------------------------------- what the code under test does

    def fsynced(self, fd: int) -> None:
        st = os.fstat(fd)
        with self.lock:
            if stat.S_ISDIR(st.st_mode):
                self.entries[self._file(st.st_ino)] = self._scan(Path(os.readlink(f"/proc/self/fd/{fd}")))
            else:
                with open(f"/proc/self/fd/{fd}", "rb") as fh:
                    self.content[self._file(st.st_ino)] = fh.read()

    def removing(self, path: str | os.PathLike) -> int | None:
        """The inode that dies if ``path`` is unlinked or renamed over (its last name), else None."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        return st.st_ino if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 else None

    def removed(self, ino: int | None) -> None:
        if ino is not None:
            with self.lock:
                self.generation[ino] = self.generation.get(ino, 0) + 1

    # -------------------------------------------------------------- cuts

    def maybe_cut(self, where: str) -> None:
        if not self.cut_probability or self.cutting:
            return
        name = threading.current_thread().name
        rng = self.when.get(name)
        if rng is None:
            rng = self.when[name] = random.Random(f"{self.seed}/{name}")
        if rng.random() < self.cut_probability:
            self.cut(where)

    def cut(self, where: str) -> None:
        with self.lock:
            self.cutting = True
            try:
                out = self.images / f"cut-{len(self.cuts):03d}"
                out.mkdir(parents=True)
                live = {self._file(p.stat().st_ino): p for p in self.root.rglob("*") if p.is_file()}
                self._build(self._file(self.root.stat().st_ino), self.root, out, live)
                self.cuts.append((out, self.tag, where))
            finally:
                self.cutting = False

    def _build(self, d: File, live_dir: Path, out: Path, live: dict[File, Path]) -> None:
        durable = self.entries.get(d, {})
        now = self._scan(live_dir) if live_dir.is_dir() and self._file(live_dir.stat().st_ino) == d else {}
        for name in sorted(set(durable) | set(now)):
            was, cur = durable.get(name), now.get(name)
            entry = was if was == cur else self.rng.choice([was, cur])  # an unsynced change: done or not
            if entry is None:
                continue
            f, is_dir = entry
            if is_dir:
                (out / name).mkdir()
                self._build(f, live_dir / name, out / name, live)
                continue
            kept = self.content.get(f, b"")
            data = live[f].read_bytes() if f in live else kept
            tail = data[len(kept):] if data.startswith(kept) else b""
            (out / name).write_bytes(kept + tail[: self.rng.randint(0, len(tail))])


@pytest.fixture
def disk(tmp_path, monkeypatch):
    """The model disk over ``tmp_path/data``, fed by every fsync, with cuts around every change."""
    root = tmp_path / "data"
    root.mkdir()
    d = Disk(root, tmp_path / "images")
    real = {name: getattr(os, name) for name in ("fsync", "replace", "mkdir", "unlink")}

    def fsync(fd):
        d.maybe_cut("before an fsync")
        real["fsync"](fd)
        d.fsynced(fd)
        d.maybe_cut("after an fsync")

    def replace(src, dst, **kw):
        d.maybe_cut("before a rename")
        dying = d.removing(dst)
        real["replace"](src, dst, **kw)
        d.removed(dying)
        d.maybe_cut("after a rename")

    def unlink(path, **kw):
        d.maybe_cut("before an unlink")
        dying = d.removing(path)
        real["unlink"](path, **kw)
        d.removed(dying)
        d.maybe_cut("after an unlink")

    def mkdir(path, *args, **kw):
        d.maybe_cut("before a mkdir")
        real["mkdir"](path, *args, **kw)
        d.maybe_cut("after a mkdir")

    for name, fn in (("fsync", fsync), ("replace", replace), ("unlink", unlink), ("mkdir", mkdir)):
        monkeypatch.setattr(os, name, fn)
    return d


# ------------------------------------------------------------------ the workload


def _readings(rng: random.Random, commit: int, seq0: dict[str, int]) -> pa.RecordBatch:
    """One batch of readings: two lines, dates moving on every few commits (new partitions)."""
    rows: dict[str, list] = {c: [] for c in ("ts", "recv_ts", "site", "line", "device", "sensor", "value", "quality",
                                             "seq", "lot")}
    day = DAY0 + (commit // 3) * DAY_NS
    for line in rng.sample(["l1", "l2"], rng.randint(1, 2)):
        for _ in range(rng.randint(5, 40)):
            seq = seq0[line] = seq0[line] + 1
            for col, v in (("ts", day + seq * 10**6), ("recv_ts", day), ("site", "s"), ("line", line),
                           ("device", "plc"), ("sensor", f"x{seq % 5}"), ("value", rng.random()), ("quality", 0),
                           ("seq", seq), ("lot", f"LOT-{commit // 4}")):
                rows[col].append(v)
    return batch_from_columns(rows)


def _key(table: pa.Table) -> list[tuple]:
    cols = [table.column(c).cast(pa.string()).to_pylist() if c == "line" else table.column(c).to_pylist()
            for c in ("line", "seq", "ts", "value")]
    return sorted(zip(*cols, strict=True))


@dataclass
class Run:
    commits: list[pa.Table]  # the rows of each commit that returned, in order


def _run(disk: Disk, seed: int, commits: int = 24) -> Run:
    rng = random.Random(seed)
    disk.seed, disk.rng = seed, random.Random(seed)
    disk.cut_probability = 0.04
    seq0 = {"l1": 0, "l2": 0}
    done: list[pa.Table] = []
    sink = ParquetSink(disk.root / "readings", disk.root / "ingest", flush_rows=10**9)
    try:
        for c in range(commits):
            batch = _readings(rng, c, seq0)
            sink.add(sink.dedupe(batch))
            sink.flush(extra={"detectors": {"node": f"state-{c}.json"}})
            done.append(pa.Table.from_batches([batch]))
            disk.tag = len(done)
            disk.maybe_cut("after a commit returned")
    finally:
        sink.close()
    disk.cut("at the end")
    disk.cut_probability = 0.0  # checking the images cuts nothing
    return Run(done)


def _problem(image: Path, tag: int, where: str, run: Run) -> str | None:
    at = f"cut {where} (after {tag} commits returned), image {image.name}"
    try:
        sink = ParquetSink(image / "readings", image / "ingest")
    except (QctraceError, OSError, ValueError) as exc:
        return f"{at}: the dataset does not open: {type(exc).__name__}: {exc}"
    try:
        for f in sink.files:
            path = image / "readings" / f.path
            if not path.is_file():
                return f"{at}: the commit record names {f.path}, which is missing"
            if sha256_file(path) != f.sha256:
                return f"{at}: the commit record names {f.path}, which is not there in full"
        got = _key(read_dataset(image / "readings", image / "ingest"))
        extra = sink.extra
    finally:
        sink.close()
    for n in (tag, tag + 1):  # the commits that returned, or those and the one in flight
        if n <= len(run.commits) and got == (_key(pa.concat_tables(run.commits[:n])) if n else []):
            want = {"detectors": {"node": f"state-{n - 1}.json"}} if n else {}
            return None if extra == want else f"{at}: the record's extra is {extra}, its commit's was {want}"
    acked = _key(pa.concat_tables(run.commits[:tag])) if tag else []
    lost = len(set(acked) - set(got))
    return f"{at}: holds {len(got)} readings, {len(acked)} were committed ({lost} of them missing)"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_after_a_power_cut_the_dataset_holds_exactly_the_commits_that_returned(disk, seed):
    run = _run(disk, seed)
    assert len(disk.cuts) >= 15, "too few cuts to mean anything"
    problems = [p for image, tag, where in disk.cuts if (p := _problem(image, tag, where, run)) is not None]
    assert problems == [], "\n".join(problems)


def _write_without_fsync(tmp: Path, buf: pa.Buffer) -> None:
    with open(tmp, "wb") as fh:
        fh.write(buf)


def _atomic_write_without_fsync(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


@pytest.mark.parametrize(("skip", "module", "name", "fake", "found"), [
    ("partition directory fsync", sink_mod, "fsync_dir", lambda path: None, "which is missing"),
    ("Parquet file fsync", sink_mod, "write_durably", _write_without_fsync, "which is not there in full"),
    ("commit record fsync", commit_record_mod, "atomic_write", _atomic_write_without_fsync, "does not open"),
    ("new directory's parent fsync", sink_mod, "makedirs", lambda path: path.mkdir(parents=True, exist_ok=True),
     "which is missing"),
])
def test_a_sink_that_skips_an_fsync_is_caught(disk, monkeypatch, skip, module, name, fake, found):
    monkeypatch.setattr(module, name, fake)
    run = _run(disk, 1, commits=12)
    first = next((p for image, tag, where in disk.cuts if (p := _problem(image, tag, where, run)) is not None), None)
    assert first is not None, f"skipping the {skip} went unnoticed"
    assert found in first
