"""Scoring detection against labelled faults: recall, precision, delay and false alarms on normal changes.

Kept apart from ``bench/quality.py`` so the arithmetic can be unit-tested on hand-made labels and
alarms (a benchmark whose scoring is wrong is worse than none), and reused by other benches.

Definitions (all times in ns, one sensor = its ``site/line/device/sensor`` key):

* An *alarm episode* is a maximal run of consecutive flagged events of one sensor, in time order
  (events: its readings, plus timer alarms such as STALE). An unflagged reading ends it.
* A fault (one ``Label.fault`` id; it may name several sensors, e.g. a door opening labels the door
  and the temperature channel) is *detected* when an episode on one of its sensors overlaps
  ``[start, end + tolerance]``. Its *delay* is the first such alarm time minus the fault's start,
  where an episode already running at the start counts from the start (delay 0).
* An episode is *true* when it overlaps ``[start - tolerance, end + tolerance]`` of some label of
  its own sensor. Precision = true / all, overall and per rule family (an episode belongs to every
  family whose bits it raised). Per fault kind, true episodes count for the kinds they overlap and
  a false one for the kind of the nearest label on its sensor (the usual source: ringing after a
  shift, a drift re-baselined too late), so a kind's precision says what detecting it costs.
* A false episode that starts within ``change_window`` after a normal change (recipe setpoint,
  lot changeover) affecting its sensor is a *normal-change false alarm*; the goal is none. As a
  control, those starting within the same window *before* a change are counted too (``before``):
  a detector that ignores changes gets about as many before as after, by chance alone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

_FAMILY_OF_NAME = (("SPEC_", "spec"), ("EWMA", "ewma"), ("NELSON_", "nelson"), ("CUSUM_", "cusum"),
                   ("BAND_", "coldchain"), ("BUDGET", "coldchain"), ("DOOR_", "coldchain"),
                   ("BAD_QUALITY", "quality"), ("NOT_FINITE", "quality"))


@dataclass(frozen=True, slots=True)
class Label:
    """One labelled fault acting on one sensor (a fault on several sensors has several labels)."""

    fault: int
    kind: str
    sensor: str
    start_ns: int
    end_ns: int


@dataclass(frozen=True, slots=True)
class AlarmEpisode:
    sensor: str
    start_ns: int
    end_ns: int
    flags: int  # OR of the flags of its events


@dataclass(frozen=True, slots=True)
class NormalChange:
    """A normal-operation event (never labelled): a setpoint change or a lot changeover."""

    kind: str
    t_ns: int
    sensors: frozenset[str]


def rule_families(flags: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Bit mask per rule family from ``(name, bit)`` pairs, e.g. ``((f.name, f.value) for f in Flag)``.

    Taking the names rather than a fixed table keeps the bench working when new ``Flag`` bits land:
    a bit of no known family becomes a family of its own, named in lower case."""
    out: dict[str, int] = {}
    for name, bit in flags:
        if not bit or not name:
            continue
        fam = next((f for prefix, f in _FAMILY_OF_NAME if name.startswith(prefix)), name.lower())
        out[fam] = out.get(fam, 0) | int(bit)
    return out


def episodes(sensor: np.ndarray, ts: np.ndarray, flags: np.ndarray, keys: Sequence[str],
             mask: int = 0xFFFFFFFF) -> list[AlarmEpisode]:
    """Alarm episodes from events: ``sensor`` (index into ``keys``), ``ts`` and ``flags`` per event, in
    arrival order. Events are ordered per sensor by time, ties by arrival; only ``mask`` bits count."""
    sensor = np.asarray(sensor, dtype=np.int64)
    ts = np.asarray(ts, dtype=np.int64)
    flags = np.asarray(flags, dtype=np.uint32) & np.uint32(mask)
    n = len(sensor)
    if n == 0:
        return []
    order = np.lexsort((np.arange(n), ts, sensor))
    s, t, f = sensor[order], ts[order], flags[order]
    on = f != 0
    new_sensor = np.ones(n, dtype=np.bool_)
    new_sensor[1:] = s[1:] != s[:-1]
    prev_on = np.zeros(n, dtype=np.bool_)
    prev_on[1:] = on[:-1]
    starts = np.flatnonzero(on & (new_sensor | ~prev_on))
    if not len(starts):
        return []
    next_on = np.zeros(n, dtype=np.bool_)
    next_on[:-1] = on[1:]
    next_new = np.ones(n, dtype=np.bool_)
    next_new[:-1] = new_sensor[1:]
    ends = np.flatnonzero(on & (next_new | ~next_on))
    masks = np.bitwise_or.reduceat(f, starts)  # runs are contiguous, so reduceat over starts is exact
    return [AlarmEpisode(keys[int(s[a])], int(t[a]), int(t[b]), int(m))
            for a, b, m in zip(starts, ends, masks, strict=True)]


def _overlaps(ep: AlarmEpisode, lo: int, hi: int) -> bool:
    return ep.start_ns <= hi and ep.end_ns >= lo


def _gap(ep: AlarmEpisode, lb: Label) -> int:
    """Time between an episode and a label window (0 if they overlap)."""
    return max(lb.start_ns - ep.end_ns, ep.start_ns - lb.end_ns, 0)


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _pct(values: Sequence[float], q: float) -> float | None:
    """Percentile (linear interpolation, NumPy's default), ``None`` for no values."""
    return float(np.percentile(values, q)) if len(values) else None


def _outside_s(ep: AlarmEpisode, windows: Sequence[tuple[int, int]]) -> float:
    """Seconds of an episode not covered by the (merged, sorted) label windows of its sensor."""
    covered = sum(max(0, min(ep.end_ns, hi) - max(ep.start_ns, lo)) for lo, hi in windows)
    return (ep.end_ns - ep.start_ns - covered) / 1e9


def _merge(windows: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(windows):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _kind_row() -> dict:
    return {"faults": 0, "detected": 0, "detected_new": 0, "delays": [], "true": 0, "false": 0}


def score(labels: Sequence[Label], eps: Sequence[AlarmEpisode], tolerance_ns: int,
          families: Mapping[str, int], changes: Sequence[NormalChange] = (), change_window_ns: int = 0,
          groups: Mapping[str, Sequence[str]] | None = None) -> dict:
    """Recall, delay and precision per fault kind (and per ``groups`` of kinds), precision per rule
    family, overall figures, and the normal-change false alarms. Delays are in seconds.

    Besides recall as defined above, ``recall_new`` counts a fault only when an episode *starts* in
    ``[start, end + tolerance]``: an alarm latched since an earlier fault tells an operator nothing
    new. ``alarm_s`` / ``false_alarm_s`` are the episodes' total duration and the part of it outside
    every label window (± tolerance) of their sensor: an endless alarm is one episode, but many
    false seconds."""
    by_sensor: dict[str, list[Label]] = defaultdict(list)
    faults: dict[int, list[Label]] = defaultdict(list)
    for lb in labels:
        by_sensor[lb.sensor].append(lb)
        faults[lb.fault].append(lb)
    windows = {k: _merge([(lb.start_ns - tolerance_ns, lb.end_ns + tolerance_ns) for lb in v])
               for k, v in by_sensor.items()}
    eps_by_sensor: dict[str, list[AlarmEpisode]] = defaultdict(list)
    for ep in eps:
        eps_by_sensor[ep.sensor].append(ep)

    # recall and delay, per fault
    kinds: dict[str, dict] = {}
    for lbs in faults.values():
        kind = lbs[0].kind
        start = min(lb.start_ns for lb in lbs)
        first = math.inf
        new = False
        for lb in lbs:
            for ep in eps_by_sensor.get(lb.sensor, ()):
                if _overlaps(ep, lb.start_ns, lb.end_ns + tolerance_ns):
                    first = min(first, max(ep.start_ns, lb.start_ns))
                    new = new or ep.start_ns >= lb.start_ns
        k = kinds.setdefault(kind, _kind_row())
        k["faults"] += 1
        k["detected_new"] += new
        if first < math.inf:
            k["detected"] += 1
            k["delays"].append((first - start) / 1e9)

    # precision, overall / per family / per kind; alarm time; normal-change false alarms
    fam_counts = {f: [0, 0, 0.0, 0.0] for f in families}  # true, all, alarm s, false alarm s
    n_true = 0
    alarm_s = false_s = 0.0
    unattributed_false = 0
    change_false: dict[str, int] = defaultdict(int)
    change_before = 0
    for ep in eps:
        near = by_sensor.get(ep.sensor, ())
        hit_kinds = {lb.kind for lb in near if _overlaps(ep, lb.start_ns - tolerance_ns, lb.end_ns + tolerance_ns)}
        true = bool(hit_kinds)
        n_true += true
        dur = (ep.end_ns - ep.start_ns) / 1e9
        out_s = _outside_s(ep, windows.get(ep.sensor, ()))
        alarm_s += dur
        false_s += out_s
        for fam, bits in families.items():
            if ep.flags & bits:
                c = fam_counts[fam]
                c[0] += true
                c[1] += 1
                c[2] += dur
                c[3] += out_s
        if true:
            for kind in hit_kinds:
                kinds.setdefault(kind, _kind_row())["true"] += 1
            continue
        if near:
            nearest = min(near, key=lambda lb: (_gap(ep, lb), lb.start_ns))
            kinds.setdefault(nearest.kind, _kind_row())["false"] += 1
        else:
            unattributed_false += 1
        mine = [ch for ch in changes if ep.sensor in ch.sensors]
        after = next((ch for ch in mine if ch.t_ns <= ep.start_ns <= ch.t_ns + change_window_ns), None)
        if after is not None:
            change_false[after.kind] += 1
        change_before += any(ch.t_ns - change_window_ns <= ep.start_ns < ch.t_ns for ch in mine)

    def row(ks: Sequence[str]) -> dict:
        parts = [kinds[k] for k in ks if k in kinds]
        n = sum(p["faults"] for p in parts)
        det = sum(p["detected"] for p in parts)
        det_new = sum(p["detected_new"] for p in parts)
        tr = sum(p["true"] for p in parts)
        fa = sum(p["false"] for p in parts)
        delays = [d for p in parts for d in p["delays"]]
        return {"faults": n, "detected": det, "recall": _ratio(det, n), "recall_new": _ratio(det_new, n),
                "episodes_true": tr, "episodes_false": fa, "precision": _ratio(tr, tr + fa),
                "delay_median_s": _pct(delays, 50), "delay_p90_s": _pct(delays, 90)}

    per_kind = {k: row([k]) for k in sorted(kinds)}
    per_group = {g: row(ks) for g, ks in (groups or {}).items()}
    all_delays = [d for p in kinds.values() for d in p["delays"]]
    n_faults = sum(p["faults"] for p in kinds.values())
    n_det = sum(p["detected"] for p in kinds.values())
    n_new = sum(p["detected_new"] for p in kinds.values())
    return {
        "per_kind": per_kind,
        "per_group": per_group,
        "per_family": {f: {"episodes": c[1], "true": c[0], "precision": _ratio(c[0], c[1]),
                           "alarm_s": round(c[2], 3), "false_alarm_s": round(c[3], 3)}
                       for f, c in fam_counts.items() if c[1]},
        "overall": {"faults": n_faults, "detected": n_det, "recall": _ratio(n_det, n_faults),
                    "recall_new": _ratio(n_new, n_faults),
                    "episodes": len(eps), "episodes_true": n_true, "precision": _ratio(n_true, len(eps)),
                    "false_unattributed": unattributed_false,
                    "alarm_s": round(alarm_s, 3), "false_alarm_s": round(false_s, 3),
                    "delay_median_s": _pct(all_delays, 50), "delay_p90_s": _pct(all_delays, 90)},
        "normal_change_false": {"total": sum(change_false.values()), **dict(sorted(change_false.items())),
                                "before": change_before},
    }
