"""SKAB (Skoltech Anomaly Benchmark) with SKAB's own protocol, for the qctrace detector.

The data (GPL-3.0) is read where it lies (``--skab-dir``) and never copied. The protocol is the one in
the data's README: in each of the 34 fault files the first 400 rows are the training part, and only
they may set limits; the rest is the test part. Scored point by point on all test parts pooled:
F1 = TP / (TP + (FP + FN) / 2), FAR = FP / (FP + TN) × 100, MAR = FN / (FN + TP) × 100.

How the detector is set from a training part, per sensor: centre = mean, sigma = standard deviation
(for the control-chart rules), spec limits = mean ± k·sd, and the stuck rule's run length at least
twice the longest run of identical values seen in training (SKAB's flow meter is quantised and
repeats values for a long time in normal operation). Only settings the current ``SensorRule``
knows are passed, so the bench runs against the detector as it is. The training rows are fed to
the detector first (its EWMA and phase I estimates learn from them, which the protocol allows);
only test rows are scored. A row is anomalous when any of its 8 sensors' readings has a counted
flag: by default every value rule, i.e. every bit but GAP and STALE (timing rules; SKAB's rows
are a regular 1 Hz).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from qctrace.config import DetectConfig, SensorRule
from qctrace.schema import Flag, Quality, batch_from_columns

TRAIN_ROWS = 400
GROUPS = ("valve1", "valve2", "other")

LEADERBOARD: tuple[tuple[str, float, float, float], ...] = (
    ("Conv-AE", 0.78, 13.55, 28.02),
    ("MSET", 0.78, 39.73, 14.13),
    ("T²+Q", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92),
    ("T²", 0.66, 19.21, 42.6),
    ("LSTM-VAE", 0.56, 9.13, 55.03),
    ("Isolation forest", 0.29, 2.56, 82.89),
)
"""SKAB's published outlier-detection leaderboard (F1, FAR %, MAR %), from the data's README."""

TIMING_BITS = int(Flag.GAP | Flag.STALE)


@dataclass(frozen=True, slots=True)
class SkabFile:
    name: str  # e.g. "valve1/3"
    ts_ns: np.ndarray  # (rows,) int64
    values: np.ndarray  # (rows, sensors) float64
    sensors: tuple[str, ...]
    anomaly: np.ndarray  # (rows,) bool


@dataclass(frozen=True, slots=True)
class Confusion:
    tp: int
    fp: int
    fn: int
    tn: int

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)


def fault_files(root: Path) -> list[Path]:
    """The 34 fault files (``anomaly-free`` is not part of the protocol), in a stable order."""
    out: list[Path] = []
    for g in GROUPS:
        out += sorted((root / g).glob("*.csv"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    return out


def load_file(path: Path) -> SkabFile:
    """One ``;``-separated SKAB file: timestamps, the 8 sensors (names made plain) and the labels."""
    t = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=";"))
    names = [c for c in t.column_names if c not in ("datetime", "anomaly", "changepoint")]
    values = np.column_stack([t.column(c).cast(pa.float64()).to_numpy() for c in names])
    ts = t.column("datetime").cast(pa.timestamp("ns")).cast(pa.int64()).to_numpy()
    plain = tuple(re.sub(r"[^A-Za-z0-9_.-]", "_", c) for c in names)
    return SkabFile(f"{path.parent.name}/{path.stem}", ts, values, plain,
                    t.column("anomaly").to_numpy().astype(np.float64) > 0.5)


def _longest_run(x: np.ndarray) -> int:
    """Longest run of identical consecutive values."""
    if not len(x):
        return 0
    change = np.flatnonzero(np.diff(x) != 0)
    bounds = np.concatenate([[-1], change, [len(x) - 1]])
    return int(np.diff(bounds).max())


def train_rules(f: SkabFile, k: float, prefix: str, train_rows: int = TRAIN_ROWS) -> tuple[SensorRule, ...]:
    """Per-sensor settings from the training part only (see the module docstring)."""
    fields = SensorRule.model_fields
    train = f.values[:train_rows]
    rules = []
    for j, name in enumerate(f.sensors):
        x = train[:, j]
        mean, sd = float(np.mean(x)), float(np.std(x, ddof=1))
        sd = sd if sd > 0 else max(abs(mean) * 1e-6, 1e-9)
        r: dict[str, object] = {"match": f"{prefix}/{name}", "lsl": mean - k * sd, "usl": mean + k * sd,
                                "centre": mean, "sigma": sd}
        if "stuck_n" in fields:
            default = DetectConfig.model_fields["stuck_n"].default if "stuck_n" in DetectConfig.model_fields else 30
            r["stuck_n"] = max(int(default or 0), 2 * _longest_run(x))
        rules.append(SensorRule.model_validate({key: v for key, v in r.items() if key in fields}))
    return tuple(rules)


def to_batch(f: SkabFile, rows: slice, site: str, line: str, device: str = "testbed") -> pa.RecordBatch:
    """Rows of a file as readings, row-major (a row's 8 sensors share its timestamp)."""
    vals = f.values[rows]
    n, m = vals.shape
    ts = pa.array(np.repeat(f.ts_ns[rows], m), pa.timestamp("ns", tz="UTC"))
    return batch_from_columns({
        "ts": ts, "recv_ts": ts, "site": [site] * (n * m), "line": [line] * (n * m), "device": [device] * (n * m),
        "sensor": list(f.sensors) * n, "value": pa.array(vals.reshape(-1)),
        "quality": pa.array(np.full(n * m, Quality.GOOD, np.uint8)), "seq": pa.array(np.arange(n * m, dtype=np.uint64)),
    })


def row_flags(f: SkabFile, detector_factory: Callable[[DetectConfig], object], k: float,
              train_rows: int = TRAIN_ROWS) -> np.ndarray:
    """OR of the flags of each test row's sensors, after feeding the training rows."""
    site, line = "skab", f.name.replace("/", "-")
    det = detector_factory(DetectConfig(sensors=train_rules(f, k, f"{site}/{line}/testbed", train_rows)))
    det.flag(to_batch(f, slice(0, train_rows), site, line))  # type: ignore[attr-defined]
    out, _, _ = det.flag(to_batch(f, slice(train_rows, None), site, line))  # type: ignore[attr-defined]
    flags = out.column("flags").to_numpy(zero_copy_only=False)
    return np.bitwise_or.reduce(flags.reshape(-1, len(f.sensors)), axis=1)


def confusion(pred: np.ndarray, truth: np.ndarray) -> Confusion:
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    return Confusion(int(np.sum(pred & truth)), int(np.sum(pred & ~truth)), int(np.sum(~pred & truth)),
                     int(np.sum(~pred & ~truth)))


def metrics(c: Confusion) -> dict[str, float | None]:
    """F1, FAR % and MAR % exactly as SKAB's README defines them (``None`` where undefined)."""
    f1_den = c.tp + (c.fp + c.fn) / 2
    return {
        "f1": c.tp / f1_den if f1_den else None,
        "far_pct": 100.0 * c.fp / (c.fp + c.tn) if c.fp + c.tn else None,
        "mar_pct": 100.0 * c.fn / (c.fn + c.tp) if c.fn + c.tp else None,
    }


def evaluate(root: Path, detector_factory: Callable[[DetectConfig], object], k: float,
             masks: dict[str, int], progress: Callable[[str], None] | None = None) -> dict:
    """Pooled SKAB figures for each named flag mask (a row counts when it has any bit of the mask)."""
    files = fault_files(root)
    pooled = {name: Confusion(0, 0, 0, 0) for name in masks}
    truth_all = []
    for p in files:
        f = load_file(p)
        flags = row_flags(f, detector_factory, k)
        truth = f.anomaly[TRAIN_ROWS:]
        truth_all.append(truth)
        for name, mask in masks.items():
            pooled[name] = pooled[name] + confusion((flags & np.uint32(mask)) != 0, truth)
        if progress is not None:
            progress(f"skab {f.name}: {len(truth)} test rows")
    truth = np.concatenate(truth_all) if truth_all else np.zeros(0, bool)
    every = confusion(np.ones(len(truth), bool), truth)
    return {
        "files": len(files), "test_rows": len(truth), "anomalous_rows": int(truth.sum()), "k": k,
        "by_mask": {name: {**metrics(c), "tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn} for name, c in pooled.items()},
        "flag_every_row": metrics(every),
    }


def leaderboard_lines(ours: Sequence[tuple[str, dict]]) -> list[str]:
    """Our rows next to the published ones, sorted by F1."""
    rows = [(n, f1, far, mar, "") for n, f1, far, mar in LEADERBOARD]
    rows += [(n, m["f1"] or 0.0, m["far_pct"] or 0.0, m["mar_pct"] or 0.0, "  <- qctrace") for n, m in ours]
    rows.sort(key=lambda r: -r[1])
    out = [f"{'method':<34} {'F1':>5} {'FAR %':>7} {'MAR %':>7}"]
    out += [f"{n:<34} {f1:5.2f} {far:7.2f} {mar:7.2f}{mark}" for n, f1, far, mar, mark in rows]
    return out
