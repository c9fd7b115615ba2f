"""Does the pipeline stay bounded? Resource use sampled during a run, and a verdict afterwards.

A soak passes only if memory, file handles, spool size and Parquet file count stop growing once
the run has warmed up. ``ResourceSampler`` samples them in a thread every ``interval_s``: per
process role, the resident set (``VmRSS`` in ``/proc/PID/status``) and open descriptors
(``/proc/PID/fd``); per named directory, its size in bytes; and the number of Parquet files (in
the commit record, and on disk). Roles are looked up on every sample through a callable, so a
process the campaign killed and restarted is followed under its role with its new PID.

``bounded`` compares the last quarter of the samples with the second (the first is warm-up): a
metric whose median grew by more than ``growth`` (25 %) plus a small absolute slack is growing.
Medians, not peaks: a spool that fills during one injected fault and drains again is bounded; a
descriptor leaked per request shows in every later sample.

Memory of a process the campaign restarts: a process's resident set grows for its first minutes
(allocator pools fill to its working set, then level off), so a quarter that happened to hold
more young processes than another looks smaller, and the comparison measured the kill schedule,
not a leak (the soaks' ingest workers, killed every two minutes or so). With ``warm_s`` a role's
memory is sampled only while every process of it is at least that old; its descriptors always.

Replicas (the ingest workers: interchangeable processes sharing one load) are a tier, and waiting
for all of them to be warm at once fails when they are killed often: a 15-minute soak with a
worker kill every 43 s never had both workers past warm-up in its last quarter, and the verdict was
"not measured". For a role named in ``replicas`` the memory judged is ``ROLE.replica_rss_bytes``,
the mean resident set of its processes that are past warm-up, sampled whenever one of them is.
What such a campaign cannot see is a leak slower than a worker's lifetime: each kill ends it.

Only ``/proc`` is read (Linux), so nothing beyond the standard library is needed.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from qctrace.errors import QctraceError

log = logging.getLogger(__name__)

PidsByRole = Callable[[], Mapping[str, int | Iterable[int] | None]]
"""Current PIDs per role (``{"edge": 4711, "sim": [4700, 4701]}``); ``None`` while one restarts."""

DEFAULT_SLACK = {"rss_bytes": 16 << 20, "replica_rss_bytes": 16 << 20, "fds": 8, "dir_bytes": 1 << 20,
                 "parquet_files": 8, "parquet_files_on_disk": 8}
"""Absolute growth always allowed, by metric kind (the part of a metric name after its last dot)."""

MIN_SAMPLES = 8


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds since the sampler started
    values: dict[str, float]  # metric -> value; a metric that could not be read this time is absent
    pids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    ages: dict[str, float] = field(default_factory=dict)  # role -> seconds since its youngest process started


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (raises OSError when it is gone)."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0  # a zombie has no VmRSS line


def open_fds(pid: int) -> int:
    """Open file descriptors of a process (raises OSError when it is gone)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def process_age_s(pid: int) -> float:
    """Seconds since a process started (raises OSError when it is gone)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        stat = fh.read()
    started_ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22, after the (name)
    with open("/proc/uptime", encoding="ascii") as fh:
        uptime = float(fh.read().split()[0])
    return uptime - started_ticks / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants: the simulator's per-line servers are its children."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # the name in (...) may hold spaces
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def dir_bytes(path: Path) -> int:
    """Bytes in the regular files under ``path`` (0 when it does not exist); files vanishing while
    it walks (a spool segment released) are skipped."""
    total = 0
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def parquet_counts(data_dir: Path) -> dict[str, float]:
    """Parquet files the commit record lists (what readers see) and on disk under ``readings/``
    (also those retired by compaction, until their grace period ends)."""
    from ingest.commit_record import read_snapshot

    out: dict[str, float] = {}
    try:
        snap = read_snapshot(data_dir / "ingest")
        out["parquet_files"] = float(len(snap.files)) if snap is not None else 0.0
    except (OSError, ValueError, KeyError) as exc:  # being replaced right now, or damaged: next sample
        log.debug("resources.commit_record_unreadable dir=%s error=%s", data_dir, exc)
    out["parquet_files_on_disk"] = float(sum(1 for _ in (data_dir / "readings").rglob("*.parquet")))
    return out


class ResourceSampler:
    """Samples in a daemon thread from ``start()`` to ``stop()`` (or as a context manager)."""

    def __init__(self, pids: PidsByRole, *, dirs: Mapping[str, Path] | None = None, data_dir: Path | None = None,
                 interval_s: float = 5.0, warm_s: float = 0.0, replicas: Iterable[str] = ()) -> None:
        """``dirs`` are measured by size (``{"spool": .../spool}``); ``data_dir`` is a qctrace data
        directory whose Parquet files are counted; a role's memory is sampled only while all its
        processes are ``warm_s`` old, a replicated role's per warm process (see the module docstring)."""
        self.pids = pids
        self.warm_s = warm_s
        self.replicas = frozenset(replicas)
        self.dirs = dict(dirs or {})
        self.data_dir = data_dir
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def sample_once(self) -> Sample:
        values: dict[str, float] = {}
        pids: dict[str, tuple[int, ...]] = {}
        ages: dict[str, float] = {}
        for role, found in self.pids().items():
            if found is None:
                continue
            group = (found,) if isinstance(found, int) else tuple(found)
            pids[role] = group
            try:
                age = {p: process_age_s(p) for p in group}
                rss = {p: float(rss_bytes(p)) for p in group}
                values[f"{role}.fds"] = float(sum(open_fds(p) for p in group))
            except OSError:  # exited between the lookup and the read: no value for this sample
                continue
            ages[role] = min(age.values())
            warm = [rss[p] for p in group if age[p] >= self.warm_s]
            if role in self.replicas and warm:
                values[f"{role}.replica_rss_bytes"] = statistics.fmean(warm)
            elif role not in self.replicas and len(warm) == len(group):
                values[f"{role}.rss_bytes"] = sum(warm)
        for name, path in self.dirs.items():
            values[f"{name}.dir_bytes"] = float(dir_bytes(path))
        if self.data_dir is not None:
            values.update(parquet_counts(self.data_dir))
        sample = Sample(time.monotonic() - self._t0, values, pids, ages)
        with self._lock:
            self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval_s)

    def start(self) -> ResourceSampler:
        if self._thread is not None:
            raise RuntimeError("a ResourceSampler is started once")
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        """Stop sampling; returns the samples (one last one is taken, so the end of the run counts)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample_once()
        with self._lock:
            return list(self.samples)

    def __enter__(self) -> ResourceSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def save_samples(samples: list[Sample], path: Path) -> None:
    """One JSON object per sample (time, metrics, PIDs per role), so a verdict can be looked into
    afterwards: a role's memory per process lifetime, say, when it is restarted often."""
    with open(path, "w", encoding="utf-8") as fh:
        for s in samples:
            fh.write(json.dumps({"t": round(s.t, 3), "values": s.values, "pids": s.pids,
                                 "ages": {k: round(v, 1) for k, v in s.ages.items()}}) + "\n")


@dataclass(frozen=True, slots=True)
class MetricVerdict:
    metric: str
    first: float
    peak: float
    last: float
    early: float  # median over the second quarter of the run
    late: float  # median over the last quarter
    limit: float  # what ``late`` may reach: early × (1 + growth) + slack
    bounded: bool
    note: str = ""

    def line(self) -> str:
        """One line of the campaign report."""
        f = _fmt_bytes if self.metric.endswith("_bytes") else _fmt_count
        verdict = "bounded" if self.bounded else f"GROWING{': ' + self.note if self.note else ''}"
        return (f"  {self.metric:<32} first {f(self.first):>9}  peak {f(self.peak):>9}  last {f(self.last):>9}"
                f"  (2nd quarter {f(self.early)}, last quarter {f(self.late)}, limit {f(self.limit)})  {verdict}")


def bounded(samples: list[Sample], *, growth: float = 0.25,
            slack: Mapping[str, float] | None = None) -> list[MetricVerdict]:
    """Per metric: did it stop growing after warm-up? See the module docstring for the rule."""
    if len(samples) < MIN_SAMPLES:
        raise QctraceError(f"resources: {len(samples)} samples are too few for a verdict (at least {MIN_SAMPLES});"
                           " sample more often (interval_s) or run longer")
    allowed = {**DEFAULT_SLACK, **(slack or {})}
    n = len(samples)
    second = samples[n // 4: n // 2]
    last_quarter = samples[n - n // 4:]
    metrics = sorted({m for s in samples for m in s.values})
    out = []
    for m in metrics:
        series = [s.values[m] for s in samples if m in s.values]
        early = [s.values[m] for s in second if m in s.values]
        late = [s.values[m] for s in last_quarter if m in s.values]
        kind = m.rsplit(".", 1)[-1]
        if not early or not late:
            out.append(MetricVerdict(m, series[0], max(series), series[-1], float("nan"), float("nan"), float("nan"),
                                     False, "not measured in the second or the last quarter"))
            continue
        e, la = statistics.median(early), statistics.median(late)
        limit = e * (1.0 + growth) + allowed.get(kind, 0.0)
        out.append(MetricVerdict(m, series[0], max(series), series[-1], e, la, limit, la <= limit))
    return out


def report_lines(verdicts: list[MetricVerdict], unjudged: tuple[str, ...] = ()) -> list[str]:
    """The campaign report's resource table, one line per metric, and a summary line (which leaves
    out the metrics whose names start with one of ``unjudged``)."""
    growing = [v.metric for v in verdicts if not v.bounded and not v.metric.startswith(unjudged)]
    return [*(v.line() for v in verdicts),
            "  resources: " + ("bounded" if not growing else f"GROWING: {', '.join(growing)}")]


def _fmt_bytes(v: float) -> str:
    if v != v:  # NaN
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(v) >= size:
            return f"{v / size:.1f} {unit}"
    return f"{v:.0f} B"


def _fmt_count(v: float) -> str:
    return "-" if v != v else f"{v:.0f}"
