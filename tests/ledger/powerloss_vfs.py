"""A SQLite VFS shim, in ctypes, that can show at any instant what a power cut would leave on disk.

Test support code (not product code). No power can be cut here, so the shim keeps a model of the
disk beside the real one, the way SQLite's own crash-test VFS (``src/test6.c``, driven by
``crashsql`` in its test suite) does:

* It wraps the default ``unix`` VFS. Every file SQLite opens through it gets a header of ours in
  front of the real ``unix`` file object; each method is forwarded to the real one, and writes,
  truncates, syncs and deletes of files in the recorded directory are also recorded.
* Per file (per *incarnation*: a file deleted and created again under the same name is a new one)
  the model holds the content as of its last ``xSync`` and the list of writes and truncates since.
* Directory entries are durable only as of the directory's last fsync. The ``unix`` VFS fsyncs a
  directory itself (after the first sync of a journal or WAL it created, and in ``xDelete`` when
  asked to); the shim sees that by hooking the VFS's ``openDirectory`` system call
  (``xSetSystemCall``), which the VFS opens the directory with just before it fsyncs it. So the
  model learns about a directory sync from SQLite itself, not from a copy of its rules.

A *cut* (taken at random just before a recorded operation or just after a sync, or on request) writes an image of
the disk into a fresh directory: each name whose durable and current incarnations agree holds that
file; a name whose directory change was never synced holds either incarnation (or none), at
random, because the change may or may not have reached the disk. Each file holds its synced
content plus, for each write or truncate made after, one of what ``test6.c`` chooses from: done,
not done, or (writes only) garbage. The ``unix`` VFS declares SQLITE_IOCAP_POWERSAFE_OVERWRITE, so
garbage stays inside the range the write covered (a torn write never damages bytes it did not
write). The WAL-index (``-shm``) is not in the image: it is shared memory that the ``unix`` VFS
maps directly, never a file SQLite needs after a crash (the first connection rebuilds it).

What the model assumes: fsync and fdatasync make a file's content (and size) durable; a directory
fsync makes that directory's entries durable; nothing else is durable; and the order in which
unsynced changes reached the disk is arbitrary.

Install it with :func:`power_loss_vfs`: it becomes SQLite's default VFS for the process (so the
stdlib ``sqlite3`` module uses it without a ``vfs=`` URI parameter: ``_sqlite3`` links the same
``libsqlite3.so.0``) until the ``with`` block ends. The ctypes callbacks live for the rest of the
process, so a connection left open never calls freed code.
"""

from __future__ import annotations

import contextlib
import ctypes as C
import os
import random
import sqlite3  # loads libsqlite3.so.0 before we look it up
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

assert sqlite3.sqlite_version_info >= (3, 7, 6)  # xSetSystemCall and openDirectory

SQLITE_OK = 0
SQLITE_IOERR = 10

_lib = C.CDLL("libsqlite3.so.0")
_lib.sqlite3_vfs_find.restype = C.c_void_p
_lib.sqlite3_vfs_find.argtypes = [C.c_char_p]
_lib.sqlite3_vfs_register.restype = C.c_int
_lib.sqlite3_vfs_register.argtypes = [C.c_void_p, C.c_int]

_P = C.c_void_p
_I64 = C.c_int64
# sqlite3_io_methods, version 3 (every pointer argument as void*: the shim only forwards them)
_CLOSE = C.CFUNCTYPE(C.c_int, _P)
_READ = C.CFUNCTYPE(C.c_int, _P, _P, C.c_int, _I64)
_WRITE = C.CFUNCTYPE(C.c_int, _P, _P, C.c_int, _I64)
_TRUNCATE = C.CFUNCTYPE(C.c_int, _P, _I64)
_SYNC = C.CFUNCTYPE(C.c_int, _P, C.c_int)
_FILESIZE = C.CFUNCTYPE(C.c_int, _P, _P)
_LOCK = C.CFUNCTYPE(C.c_int, _P, C.c_int)
_CHECKLOCK = C.CFUNCTYPE(C.c_int, _P, _P)
_FCNTL = C.CFUNCTYPE(C.c_int, _P, C.c_int, _P)
_INT_OF_FILE = C.CFUNCTYPE(C.c_int, _P)
_SHMMAP = C.CFUNCTYPE(C.c_int, _P, C.c_int, C.c_int, C.c_int, _P)
_SHMLOCK = C.CFUNCTYPE(C.c_int, _P, C.c_int, C.c_int, C.c_int)
_SHMBARRIER = C.CFUNCTYPE(None, _P)
_SHMUNMAP = C.CFUNCTYPE(C.c_int, _P, C.c_int)
_FETCH = C.CFUNCTYPE(C.c_int, _P, _I64, C.c_int, _P)
_UNFETCH = C.CFUNCTYPE(C.c_int, _P, _I64, _P)
# sqlite3_vfs methods the shim implements or calls
_VOPEN = C.CFUNCTYPE(C.c_int, _P, _P, _P, C.c_int, _P)
_VDELETE = C.CFUNCTYPE(C.c_int, _P, _P, C.c_int)
_VSETSYSCALL = C.CFUNCTYPE(C.c_int, _P, C.c_char_p, _P)
_VGETSYSCALL = C.CFUNCTYPE(_P, _P, C.c_char_p)
_OPENDIR = C.CFUNCTYPE(C.c_int, C.c_char_p, _P)  # unix VFS: static int openDirectory(const char*, int*)

_IO_METHODS = [("xClose", _CLOSE), ("xRead", _READ), ("xWrite", _WRITE), ("xTruncate", _TRUNCATE),
               ("xSync", _SYNC), ("xFileSize", _FILESIZE), ("xLock", _LOCK), ("xUnlock", _LOCK),
               ("xCheckReservedLock", _CHECKLOCK), ("xFileControl", _FCNTL), ("xSectorSize", _INT_OF_FILE),
               ("xDeviceCharacteristics", _INT_OF_FILE), ("xShmMap", _SHMMAP), ("xShmLock", _SHMLOCK),
               ("xShmBarrier", _SHMBARRIER), ("xShmUnmap", _SHMUNMAP), ("xFetch", _FETCH),
               ("xUnfetch", _UNFETCH)]


class _IoMethods(C.Structure):
    _fields_ = [("iVersion", C.c_int)] + [(name, _P) for name, _ in _IO_METHODS]


class _Vfs(C.Structure):
    _fields_ = [("iVersion", C.c_int), ("szOsFile", C.c_int), ("mxPathname", C.c_int), ("pNext", _P),
                ("zName", _P), ("pAppData", _P), ("xOpen", _P), ("xDelete", _P), ("xAccess", _P),
                ("xFullPathname", _P), ("xDlOpen", _P), ("xDlError", _P), ("xDlSym", _P), ("xDlClose", _P),
                ("xRandomness", _P), ("xSleep", _P), ("xCurrentTime", _P), ("xGetLastError", _P),
                ("xCurrentTimeInt64", _P), ("xSetSystemCall", _P), ("xGetSystemCall", _P),
                ("xNextSystemCall", _P)]


_HEADER = 8  # our sqlite3_file: one pointer (pMethods); the real unix file object follows it


class _RealMethods:
    """The real file's methods as callables (one per distinct ``sqlite3_io_methods`` the VFS uses)."""

    def __init__(self, address: int) -> None:
        m = _IoMethods.from_address(address)
        if m.iVersion != 3:
            raise RuntimeError(f"unix VFS io methods version {m.iVersion}; the shim forwards version 3")
        self.present = [name for name, _ in _IO_METHODS if getattr(m, name)]  # journals have no xShm*
        for name, proto in _IO_METHODS:
            if getattr(m, name):
                setattr(self, name, proto(getattr(m, name)))


# ---------------------------------------------------------------------------------------- the model


@dataclass(eq=False)
class Incarnation:
    """One file's life between its creation and its deletion."""

    path: str
    durable: bytearray  # content as of the last xSync
    pending: list[tuple[int, bytes | None]] = field(default_factory=list)  # (offset, data) or (size, None)

    def live(self) -> bytes:
        out = bytearray(self.durable)
        for at, data in self.pending:
            _apply(out, at, data)
        return bytes(out)


def _apply(buf: bytearray, at: int, data: bytes | None) -> None:
    if data is None:  # truncate (or extend with zeros) to ``at`` bytes
        del buf[at:]
        buf.extend(bytes(at - len(buf)))
        return
    if len(buf) < at:
        buf.extend(bytes(at - len(buf)))
    buf[at:at + len(data)] = data


@dataclass
class Image:
    """A disk as a power cut at operation ``op`` left it, written under ``path``."""

    path: Path
    op: int
    tag: Any  # what the test said had been acknowledged when the cut was taken


@dataclass
class _Open:
    real_file: int  # address of the real unix file object
    real: _RealMethods
    inc: Incarnation | None  # None: not under the recorded directory


class Recorder:
    """The model of one directory's files, and the cuts taken of it."""

    def __init__(self, root: Path, images: Path, seed: int, cut_probability: float = 0.0,
                 on_cut: Callable[[Path], None] | None = None) -> None:
        self.root = os.path.realpath(root)
        self.images_dir = images
        self.rng = random.Random(seed)
        self.cut_probability = cut_probability
        self.on_cut = on_cut
        self.tag: Any = None
        self.ops = 0
        self.syncs = 0
        self.dir_syncs = 0
        self.images: list[Image] = []
        self.live: dict[str, Incarnation] = {}  # name -> incarnation, as the directory is now
        self.durable_names: dict[str, Incarnation] = {}  # name -> incarnation, as of the last directory sync
        self.errors: list[BaseException] = []

    def tracks(self, path: str | None) -> bool:
        return path is not None and os.path.dirname(path) == self.root

    # -------------------------------------------------------------- events from the shim

    def opened(self, path: str, existed: bool) -> Incarnation:
        inc = self.live.get(path)
        if inc is not None and existed:
            return inc
        if existed:  # there before recording began: take it as durable
            with open(path, "rb") as fh:
                inc = Incarnation(path, bytearray(fh.read()))
            self.durable_names[path] = inc
        else:
            inc = Incarnation(path, bytearray())
        self.live[path] = inc
        return inc

    def before_change(self) -> None:
        self.ops += 1
        self._maybe_cut()

    def _maybe_cut(self) -> None:
        if self.cut_probability and self.rng.random() < self.cut_probability:
            self.cut()

    def wrote(self, inc: Incarnation, at: int, data: bytes) -> None:
        inc.pending.append((at, data))

    def truncated(self, inc: Incarnation, size: int) -> None:
        inc.pending.append((size, None))

    def synced(self, inc: Incarnation) -> None:
        self.syncs += 1
        for at, data in inc.pending:
            _apply(inc.durable, at, data)
        inc.pending.clear()
        self._maybe_cut()  # also just after a sync: a commit durable, its caller not yet told

    def deleted(self, path: str) -> None:
        self.live.pop(path, None)

    def directory_synced(self, directory: str) -> None:
        if os.path.realpath(directory) != self.root:
            return
        self.dir_syncs += 1
        self.durable_names = dict(self.live)

    # -------------------------------------------------------------- cuts

    def cut(self) -> Image:
        """Write the disk as a power cut now would leave it into a new directory; return it."""
        out = self.images_dir / f"cut-{len(self.images):03d}-op{self.ops}"
        out.mkdir(parents=True)
        rng = self.rng
        for name in sorted(set(self.durable_names) | set(self.live)):
            was, now = self.durable_names.get(name), self.live.get(name)
            inc = was if was is now else rng.choice([was, now])
            if inc is None:
                continue
            (out / os.path.basename(name)).write_bytes(_torn(inc, rng))
        if self.on_cut is not None:  # the test adds what lives outside SQLite's files
            self.on_cut(out)
        img = Image(out, self.ops, self.tag)
        self.images.append(img)
        return img

    def mismatches(self) -> list[str]:
        """Files whose modelled current content differs from the real file (the shim missed a change)."""
        bad = []
        for name, inc in self.live.items():
            real = Path(name).read_bytes() if os.path.exists(name) else None
            if real != inc.live():
                bad.append(f"{name}: model {len(inc.live())} bytes, disk {None if real is None else len(real)}")
        return bad


def _torn(inc: Incarnation, rng: random.Random) -> bytes:
    """Synced content, then each later write or truncate done, not done, or (writes) garbage, as test6.c."""
    out = bytearray(inc.durable)
    for at, data in inc.pending:
        r = rng.randrange(8)
        if r < 3:
            _apply(out, at, data)
        elif r < 6 or data is None:
            continue
        else:  # garbage over part of the written range, nothing outside it (powersafe overwrite)
            a = rng.randrange(len(data))
            b = rng.randrange(a, len(data)) + 1
            _apply(out, at + a, rng.randbytes(b - a))
    return bytes(out)


# ---------------------------------------------------------------------------------------- the shim


def _guard(rc_on_error: int | None) -> Callable:
    """Never let an exception cross into C (ctypes would return 0, i.e. SQLITE_OK): record it, fail the call."""

    def wrap(fn: Callable) -> Callable:
        def guarded(self: _Shim, *args: Any) -> Any:
            try:
                return fn(self, *args)
            except BaseException as exc:  # reported by the test through Recorder.errors
                if self.recorder is not None:
                    self.recorder.errors.append(exc)
                return rc_on_error
        return guarded
    return wrap


class _Shim:
    """The registered VFS ("qctrace_powerloss") and its io methods; one per process, never freed."""

    NAME = b"qctrace_powerloss"

    def __init__(self) -> None:
        self.real_vfs_ptr = _lib.sqlite3_vfs_find(b"unix")
        if not self.real_vfs_ptr:
            raise RuntimeError("no 'unix' VFS in libsqlite3.so.0")
        real = _Vfs.from_address(self.real_vfs_ptr)
        self.real_open = _VOPEN(real.xOpen)
        self.real_delete = _VDELETE(real.xDelete)
        self.set_syscall = _VSETSYSCALL(real.xSetSystemCall)
        orig = _VGETSYSCALL(real.xGetSystemCall)(self.real_vfs_ptr, b"openDirectory")
        if not orig:
            raise RuntimeError("this SQLite's unix VFS has no openDirectory system call to hook")
        self.real_open_directory = _OPENDIR(orig)
        self.recorder: Recorder | None = None
        self.files: dict[int, _Open] = {}
        self.real_methods: dict[int, _RealMethods] = {}
        self.lock = threading.RLock()

        self._callbacks: dict[str, Any] = {}  # every ctypes callback, kept alive
        for name, proto in _IO_METHODS:
            self._callbacks[name] = proto(getattr(self, f"_{name}"))
        self.methods: dict[int, _IoMethods] = {}  # real io methods address -> ours, with the same NULLs
        self.vfs = _Vfs.from_buffer_copy(real)  # xAccess, xFullPathname, ... stay the unix ones
        self._name = C.create_string_buffer(self.NAME)
        self.vfs.zName = C.addressof(self._name)
        self.vfs.pNext = None
        self.vfs.szOsFile = _HEADER + ((real.szOsFile + 7) // 8) * 8
        for name, proto in (("xOpen", _VOPEN), ("xDelete", _VDELETE)):
            cb = self._callbacks[name] = proto(getattr(self, f"_v{name}"))
            setattr(self.vfs, name, C.cast(cb, _P).value)
        self.open_directory_hook = _OPENDIR(self._open_directory)
        rc = _lib.sqlite3_vfs_register(C.addressof(self.vfs), 0)
        if rc != SQLITE_OK:
            raise RuntimeError(f"sqlite3_vfs_register: {rc}")

    # -------------------------------------------------------------- VFS methods

    @_guard(SQLITE_IOERR)
    def _vxOpen(self, vfs: int, zname: int | None, pfile: int, flags: int, pout: int | None) -> int:
        path = os.path.realpath(C.string_at(zname).decode()) if zname else None
        existed = path is not None and os.path.exists(path)
        real_file = pfile + _HEADER
        C.c_void_p.from_address(pfile).value = None  # until the real file is open: no xClose for SQLite to call
        rc = self.real_open(self.real_vfs_ptr, zname, real_file, flags, pout)
        methods = C.c_void_p.from_address(real_file).value
        if not methods:  # the real open failed before it needed a close
            return rc
        with self.lock:
            real = self.real_methods.get(methods)
            if real is None:
                real = self.real_methods[methods] = _RealMethods(methods)
                ours = self.methods[methods] = _IoMethods(iVersion=3)
                for name in real.present:
                    setattr(ours, name, C.cast(self._callbacks[name], _P).value)
            rec = self.recorder
            inc = rec.opened(path, existed) if rc == SQLITE_OK and rec and rec.tracks(path) else None
            self.files[pfile] = _Open(real_file, real, inc)
        C.c_void_p.from_address(pfile).value = C.addressof(self.methods[methods])
        return rc

    @_guard(SQLITE_IOERR)
    def _vxDelete(self, vfs: int, zname: int, sync_dir: int) -> int:
        path = os.path.realpath(C.string_at(zname).decode())
        rec = self.recorder
        tracked = rec is not None and rec.tracks(path)
        if tracked:
            rec.before_change()
            rec.deleted(path)  # before the call: with sync_dir the VFS syncs the directory inside it
        return self.real_delete(self.real_vfs_ptr, zname, sync_dir)

    @_guard(-1)
    def _open_directory(self, zpath: bytes, pfd: int) -> int:
        rec = self.recorder
        if rec is not None:  # the unix VFS opens a directory only to fsync it (unixSync, unixDelete)
            rec.directory_synced(os.path.dirname(os.path.realpath(zpath.decode())))
        return self.real_open_directory(zpath, pfd)

    # -------------------------------------------------------------- io methods

    def _f(self, pfile: int) -> _Open:
        return self.files[pfile]

    @_guard(SQLITE_IOERR)
    def _xClose(self, pfile: int) -> int:
        f = self.files.pop(pfile)
        return f.real.xClose(f.real_file)

    @_guard(SQLITE_IOERR)
    def _xRead(self, pfile: int, buf: int, amt: int, off: int) -> int:
        f = self._f(pfile)
        return f.real.xRead(f.real_file, buf, amt, off)

    @_guard(SQLITE_IOERR)
    def _xWrite(self, pfile: int, buf: int, amt: int, off: int) -> int:
        f = self._f(pfile)
        if f.inc is None:
            return f.real.xWrite(f.real_file, buf, amt, off)
        with self.lock:
            self.recorder.before_change()
            rc = f.real.xWrite(f.real_file, buf, amt, off)
            if rc == SQLITE_OK:
                self.recorder.wrote(f.inc, off, C.string_at(buf, amt))
            return rc

    @_guard(SQLITE_IOERR)
    def _xTruncate(self, pfile: int, size: int) -> int:
        f = self._f(pfile)
        if f.inc is None:
            return f.real.xTruncate(f.real_file, size)
        with self.lock:
            self.recorder.before_change()
            rc = f.real.xTruncate(f.real_file, size)
            if rc == SQLITE_OK:
                self.recorder.truncated(f.inc, size)
            return rc

    @_guard(SQLITE_IOERR)
    def _xSync(self, pfile: int, flags: int) -> int:
        f = self._f(pfile)
        if f.inc is None:
            return f.real.xSync(f.real_file, flags)
        with self.lock:
            self.recorder.before_change()
            rc = f.real.xSync(f.real_file, flags)
            if rc == SQLITE_OK:
                self.recorder.synced(f.inc)
            return rc

    @_guard(SQLITE_IOERR)
    def _xFileSize(self, pfile: int, psize: int) -> int:
        f = self._f(pfile)
        return f.real.xFileSize(f.real_file, psize)

    @_guard(SQLITE_IOERR)
    def _xLock(self, pfile: int, level: int) -> int:
        f = self._f(pfile)
        return f.real.xLock(f.real_file, level)

    @_guard(SQLITE_IOERR)
    def _xUnlock(self, pfile: int, level: int) -> int:
        f = self._f(pfile)
        return f.real.xUnlock(f.real_file, level)

    @_guard(SQLITE_IOERR)
    def _xCheckReservedLock(self, pfile: int, pout: int) -> int:
        f = self._f(pfile)
        return f.real.xCheckReservedLock(f.real_file, pout)

    @_guard(SQLITE_IOERR)
    def _xFileControl(self, pfile: int, op: int, arg: int | None) -> int:
        f = self._f(pfile)
        return f.real.xFileControl(f.real_file, op, arg)

    @_guard(4096)
    def _xSectorSize(self, pfile: int) -> int:
        f = self._f(pfile)
        return f.real.xSectorSize(f.real_file)

    @_guard(0)
    def _xDeviceCharacteristics(self, pfile: int) -> int:
        f = self._f(pfile)
        return f.real.xDeviceCharacteristics(f.real_file)

    @_guard(SQLITE_IOERR)
    def _xShmMap(self, pfile: int, page: int, size: int, extend: int, pp: int) -> int:
        f = self._f(pfile)
        return f.real.xShmMap(f.real_file, page, size, extend, pp)

    @_guard(SQLITE_IOERR)
    def _xShmLock(self, pfile: int, offset: int, n: int, flags: int) -> int:
        f = self._f(pfile)
        return f.real.xShmLock(f.real_file, offset, n, flags)

    @_guard(None)
    def _xShmBarrier(self, pfile: int) -> None:
        f = self._f(pfile)
        f.real.xShmBarrier(f.real_file)

    @_guard(SQLITE_IOERR)
    def _xShmUnmap(self, pfile: int, delete: int) -> int:
        f = self._f(pfile)
        return f.real.xShmUnmap(f.real_file, delete)

    @_guard(SQLITE_IOERR)
    def _xFetch(self, pfile: int, off: int, amt: int, pp: int) -> int:
        f = self._f(pfile)
        return f.real.xFetch(f.real_file, off, amt, pp)

    @_guard(SQLITE_IOERR)
    def _xUnfetch(self, pfile: int, off: int, p: int | None) -> int:
        f = self._f(pfile)
        return f.real.xUnfetch(f.real_file, off, p)

    # -------------------------------------------------------------- install

    def activate(self, recorder: Recorder) -> None:
        self.recorder = recorder
        rc = self.set_syscall(self.real_vfs_ptr, b"openDirectory", C.cast(self.open_directory_hook, _P).value)
        if rc != SQLITE_OK:
            raise RuntimeError(f"xSetSystemCall(openDirectory): {rc}")
        _lib.sqlite3_vfs_register(C.addressof(self.vfs), 1)  # the default from now on

    def deactivate(self) -> None:
        _lib.sqlite3_vfs_register(self.real_vfs_ptr, 1)  # unix is the default again
        self.set_syscall(self.real_vfs_ptr, b"openDirectory", None)  # back to the VFS's own
        self.recorder = None


_SHIM: _Shim | None = None


@contextlib.contextmanager
def power_loss_vfs(recorder: Recorder) -> Iterator[Recorder]:
    """Make the shim SQLite's default VFS, recording ``recorder.root``, for the ``with`` block.

    Connections opened inside the block should be closed inside it: files opened while it was
    active stay forwarded (and tracked) afterwards, but their directory syncs are no longer seen.
    """
    global _SHIM
    if _SHIM is None:
        _SHIM = _Shim()
    _SHIM.activate(recorder)
    try:
        yield recorder
    finally:
        _SHIM.deactivate()
