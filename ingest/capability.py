"""Process capability (Cp, Cpk, Pp, Ppk) with confidence intervals, and first-pass yield.

Capability compares the specification width with the process spread (NIST/SEMATECH e-Handbook of
Statistical Methods, section 6.1.6, https://www.itl.nist.gov/div898/handbook/pmc/section1/pmc16.htm)::

    Cp  = (USL - LSL) / 6 sigma_within        Cpk = min(USL - mean, mean - LSL) / 3 sigma_within
    Pp  = (USL - LSL) / 6 sigma_overall       Ppk = min(USL - mean, mean - LSL) / 3 sigma_overall

The two sigmas answer different questions, so both are reported: *within* is the short-term
spread a stable process would show (moving range of consecutive readings / d2 = 1.128 for single
readings, or mean subgroup range R-bar / d2(n) for subgroups of n, Montgomery, *Introduction to
Statistical Quality Control*, table VI); *overall* is the sample standard deviation of everything,
shifts and drifts included. Cp much above Pp says the process could do better if it stayed put.

Confidence intervals (two-sided, level ``confidence``):

* Cp and Pp: chi-square, as in the e-Handbook 6.1.6 (and Montgomery eq. 8.19):
  ``C * sqrt(chi2(alpha/2, n-1) / (n-1)) <= C <= C * sqrt(chi2(1-alpha/2, n-1) / (n-1))``;
  n - 1 degrees of freedom also for the moving-range sigma, which slightly understates its width.
* Cpk and Ppk: Bissell's normal approximation (A. F. Bissell, "How reliable is your capability
  index?", *Applied Statistics* 39(3), 1990, pp. 331-340), as quoted in the e-Handbook 6.1.6:
  ``Cpk * (1 -/+ z(1-alpha/2) * sqrt(1 / (9 n Cpk^2) + 1 / (2 (n - 1))))``.

First-pass yield (stated here because plants define it differently): a lot passes first time when
none of its readings was flagged by any rule and none lay outside its sensor's specification
limits (nothing for a person to re-check, rework or release by exception). A lot's own figure,
``conforming_share``, is the share of its readings that were unflagged and within limits; a
line's first-pass yield is the share of its lots that passed first time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from qctrace.config import DetectConfig

D2 = {2: 1.128, 3: 1.693, 4: 2.059, 5: 2.326, 6: 2.534, 7: 2.704, 8: 2.847, 9: 2.970, 10: 3.078}
"""d2(n): mean range of n standard normal values (Montgomery, Appendix table VI)."""


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class Capability:
    n: int
    mean: float
    sigma_within: float
    sigma_overall: float
    lsl: float | None
    usl: float | None
    cp: float | None  # None: needs both limits, or no spread
    cpk: float | None
    pp: float | None
    ppk: float | None
    cp_ci: Interval | None
    cpk_ci: Interval | None
    pp_ci: Interval | None
    ppk_ci: Interval | None
    within_method: str  # "moving range / d2" or "R-bar / d2(n)"
    confidence: float


def cp_ci(c: float, n: int, confidence: float = 0.95) -> Interval:
    """Chi-square interval of Cp or Pp from ``n`` values (n - 1 degrees of freedom)."""
    a = 1 - confidence
    nu = n - 1
    return Interval(c * math.sqrt(stats.chi2.ppf(a / 2, nu) / nu), c * math.sqrt(stats.chi2.ppf(1 - a / 2, nu) / nu))


def cpk_ci(c: float, n: int, confidence: float = 0.95) -> Interval:
    """Bissell's (1990) approximate interval of Cpk or Ppk from ``n`` values."""
    z = stats.norm.ppf(1 - (1 - confidence) / 2)
    half = z * math.sqrt(1 / (9 * n * c * c) + 1 / (2 * (n - 1))) if c else math.inf
    return Interval(c * (1 - half), c * (1 + half))


def within_sigma(values: np.ndarray, subgroup: int = 1) -> tuple[float, str]:
    """Short-term sigma: moving range / 1.128 for single readings, R-bar / d2(n) for subgroups of n
    consecutive readings (an incomplete last subgroup is left out)."""
    if subgroup <= 1:
        if len(values) < 2:
            return math.nan, "moving range / d2"
        return float(np.mean(np.abs(np.diff(values)))) / D2[2], "moving range / d2"
    if subgroup not in D2:
        raise ValueError(f"subgroup size {subgroup}: d2 is tabulated for 2..10")
    k = len(values) // subgroup
    if k < 1:
        return math.nan, f"R-bar / d2({subgroup})"
    groups = values[: k * subgroup].reshape(k, subgroup)
    rbar = float(np.mean(groups.max(axis=1) - groups.min(axis=1)))
    return rbar / D2[subgroup], f"R-bar / d2({subgroup})"


def indices(mean: float, sigma: float, lsl: float | None, usl: float | None) -> tuple[float | None, float | None]:
    """(Cp, Cpk) for a mean and sigma; one-sided limits give Cpk alone (Cpu or Cpl)."""
    if not sigma or not math.isfinite(sigma):
        return None, None
    cp = (usl - lsl) / (6 * sigma) if lsl is not None and usl is not None else None
    sides = [(usl - mean) / (3 * sigma)] if usl is not None else []
    sides += [(mean - lsl) / (3 * sigma)] if lsl is not None else []
    return cp, (min(sides) if sides else None)


def capability(values: Sequence[float] | np.ndarray, lsl: float | None, usl: float | None, subgroup: int = 1,
               confidence: float = 0.95) -> Capability:
    """Capability of ``values`` (in time order) against the limits; NaN and infinite values are left out."""
    if lsl is None and usl is None:
        raise ValueError("capability needs at least one specification limit (lsl or usl)")
    if lsl is not None and usl is not None and lsl >= usl:
        raise ValueError(f"lsl ({lsl}) must be below usl ({usl})")
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    mean = float(np.mean(x)) if n else math.nan
    s_all = float(np.std(x, ddof=1)) if n > 1 else math.nan
    s_in, method = within_sigma(x, subgroup)
    cp, cpk = indices(mean, s_in, lsl, usl)
    pp, ppk = indices(mean, s_all, lsl, usl)
    ok = n > 2

    def ci(fn, c):
        return fn(c, n, confidence) if ok and c is not None else None

    return Capability(n, mean, s_in, s_all, lsl, usl, cp, cpk, pp, ppk, ci(cp_ci, cp), ci(cpk_ci, cpk),
                      ci(cp_ci, pp), ci(cpk_ci, ppk), method, confidence)


@dataclass(frozen=True, slots=True)
class LotYield:
    lot: str
    line: str  # site/line
    readings: int
    nonconforming: int  # flagged by any rule, or outside the sensor's specification limits
    conforming_share: float
    first_pass: bool


def lot_yield(lot: str, line: str, readings: int, nonconforming: int) -> LotYield:
    """A lot's first-pass verdict (see the module docstring for the definition)."""
    if not 0 <= nonconforming <= readings:
        raise ValueError(f"lot {lot}: {nonconforming} nonconforming of {readings} readings")
    share = (readings - nonconforming) / readings if readings else math.nan
    return LotYield(lot, line, readings, nonconforming, share, readings > 0 and nonconforming == 0)


def first_pass_yield(lots: Sequence[LotYield]) -> float:
    """Share of lots that passed first time (NaN without lots)."""
    return sum(y.first_pass for y in lots) / len(lots) if lots else math.nan


# ---------------------------------------------------------------- over the dataset

@dataclass(frozen=True, slots=True)
class CapabilityRow:
    line: str  # site/line
    sensor: str  # full key
    lot: str | None  # None: every reading of the sensor (per sensor / per line)
    cap: Capability


@dataclass(frozen=True, slots=True)
class LineCapability:
    """A line's capability is that of its weakest characteristic: sensors measure different things
    in different units, so their readings are never pooled; the line is as capable as its lowest Cpk."""

    line: str
    sensors: int
    weakest_cpk_sensor: str
    cpk: float | None
    weakest_ppk_sensor: str
    ppk: float | None


def line_capability(rows: Sequence[CapabilityRow]) -> list[LineCapability]:
    """Per line, from the per-sensor rows over all readings (``lot`` None)."""
    out = []
    for line in sorted({r.line for r in rows if r.lot is None}):
        mine = [r for r in rows if r.line == line and r.lot is None]
        by_cpk = min(mine, key=lambda r: math.inf if r.cap.cpk is None else r.cap.cpk)
        by_ppk = min(mine, key=lambda r: math.inf if r.cap.ppk is None else r.cap.ppk)
        out.append(LineCapability(line, len(mine), by_cpk.sensor, by_cpk.cap.cpk, by_ppk.sensor, by_ppk.cap.ppk))
    return out


def limits_of(detect: DetectConfig, key: str) -> tuple[float | None, float | None]:
    """A sensor's specification limits: lsl/usl, else a cold-chain band; (None, None) when it has none."""
    r = detect.resolve(key)
    lsl, usl = r.get("lsl"), r.get("usl")
    if lsl is None and usl is None and r.get("band") is not None:
        lsl, usl = r["band"]
    return lsl, usl


def capability_rows(root: Path, detect: DetectConfig, lot: str | None = None, per_lot: bool = True,
                    confidence: float = 0.95) -> list[CapabilityRow]:
    """Capability of every sensor with specification limits: over all its readings (lot None) and,
    with ``per_lot``, per lot. ``lot`` restricts both to one lot. Good-quality, finite readings only."""
    from ingest.query import query

    t = query(root, """
        SELECT site || '/' || line AS line_key, site || '/' || line || '/' || device || '/' || sensor AS sensor_key,
               lot, value FROM {SOURCE}
        WHERE quality = 0 AND isfinite(value) AND ($lot IS NULL OR lot = $lot)
        ORDER BY sensor_key, ts""", {"lot": lot}, lot=lot)
    if t.num_rows == 0:
        return []
    keys = np.array(t.column("sensor_key").to_pylist(), dtype=object)
    lines = t.column("line_key").to_pylist()
    lots = np.array(t.column("lot").to_pylist(), dtype=object)
    vals = t.column("value").to_numpy()
    out: list[CapabilityRow] = []
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(keys)
        key = keys[start]
        lsl, usl = limits_of(detect, key)
        if lsl is None and usl is None:
            continue
        v, lv = vals[start:end], lots[start:end]
        if lot is None:
            out.append(CapabilityRow(lines[start], key, None, capability(v, lsl, usl, confidence=confidence)))
        if per_lot or lot is not None:
            for name in dict.fromkeys(x for x in lv.tolist() if x is not None):
                sel = lv == name
                if sel.sum() > 2:
                    out.append(CapabilityRow(lines[start], key, name,
                                             capability(v[sel], lsl, usl, confidence=confidence)))
    return out


def lot_yields(root: Path, detect: DetectConfig, lot: str | None = None) -> list[LotYield]:
    """First-pass verdict of every lot (or of ``lot``) from its readings' flags and its sensors' limits."""
    from ingest.query import query

    t = query(root, """
        SELECT lot, site || '/' || line AS line_key,
               site || '/' || line || '/' || device || '/' || sensor AS sensor_key,
               count(*) AS readings, count(*) FILTER (WHERE flags <> 0) AS flagged,
               min(value) FILTER (WHERE flags = 0) AS lo, max(value) FILTER (WHERE flags = 0) AS hi
        FROM {SOURCE} WHERE lot IS NOT NULL AND ($lot IS NULL OR lot = $lot) GROUP BY ALL""", {"lot": lot}, lot=lot)
    per: dict[tuple[str, str], list[int]] = {}
    for r in t.to_pylist():
        lsl, usl = limits_of(detect, r["sensor_key"])
        lo = -math.inf if lsl is None else lsl
        hi = math.inf if usl is None else usl
        out_of_spec = 0
        if r["lo"] is not None and (r["lo"] < lo or r["hi"] > hi):  # rare: the detector flags what it judges
            out_of_spec = query(root, """
                SELECT count(*) AS n FROM {SOURCE} WHERE lot = $lot AND flags = 0
                  AND site || '/' || line || '/' || device || '/' || sensor = $key AND (value < $lo OR value > $hi)""",
                                {"lot": r["lot"], "key": r["sensor_key"], "lo": lo, "hi": hi},
                                lot=r["lot"]).column("n")[0].as_py()
        acc = per.setdefault((r["lot"], r["line_key"]), [0, 0])
        acc[0] += r["readings"]
        acc[1] += r["flagged"] + out_of_spec
    return [lot_yield(lt, ln, n, bad) for (lt, ln), (n, bad) in sorted(per.items())]
