"""Plain-Python twins of the kernels, written for clarity rather than speed.

They keep per-sensor state in dictionaries of Python floats and walk readings one by one, so a
disagreement with ``kernels.py`` points at a Numba typing, casting or indexing slip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from qctrace.schema import Flag, Quality


@dataclass
class SensorParams:
    lsl: float
    usl: float
    lam: float
    zlim: float
    warmup: int
    rebase: int = 0


@dataclass
class EwmaState:
    mean: float = 0.0
    var: float = 0.0
    count: int = 0
    run: int = 0  # consecutive EWMA flags
    last: float = math.nan  # previous valid value


def spec_ewma_reference(sensors: list[int], values: list[float], quality: list[int],
                        params: dict[int, SensorParams], state: dict[int, EwmaState]) -> tuple[list[int], list[float]]:
    flags: list[int] = []
    zs: list[float] = []
    for s, x, q in zip(sensors, values, quality, strict=True):
        p = params[s]
        st = state.setdefault(s, EwmaState())
        if q == Quality.BAD:
            flags.append(int(Flag.BAD_QUALITY))
            zs.append(math.nan)
            continue
        if not math.isfinite(x):
            flags.append(int(Flag.NOT_FINITE))
            zs.append(math.nan)
            continue
        f = 0
        if x < p.lsl:
            f |= Flag.SPEC_LOW
        if x > p.usl:
            f |= Flag.SPEC_HIGH
        if st.count == 0:
            z = 0.0
        else:
            sd = math.sqrt(st.var)
            z = (x - st.mean) / sd if sd > 0 else 0.0
            if st.count >= p.warmup and abs(z) > p.zlim:
                f |= Flag.EWMA_Z
        flags.append(int(f))
        zs.append(z)
        repeat = x == st.last
        st.last = x
        if f & Flag.EWMA_Z:
            st.run += 1
            if p.rebase and st.run >= p.rebase:  # a sustained shift is the new normal: learn again
                st.count, st.run = 0, 0
                continue
        else:
            st.run = 0
        in_warmup = st.count < p.warmup
        if (f == 0 or in_warmup) and not repeat:  # a frozen value teaches nothing about spread
            if st.count == 0:
                st.mean, st.var = x, 0.0
            else:
                d = x - st.mean
                st.mean = st.mean + p.lam * d
                st.var = (1 - p.lam) * (st.var + d * p.lam * d)
            st.count += 1
    return flags, zs


@dataclass
class OpenEpisode:
    start: int
    last: int
    mask: int = 0
    vmin: float = math.inf
    vmax: float = -math.inf
    n: int = 0


@dataclass
class EpisodeState:
    open: dict[int, OpenEpisode] = field(default_factory=dict)


def episodes_reference(sensors: list[int], ts: list[int], flags: list[int], values: list[float],
                       state: EpisodeState) -> tuple[list[tuple], list[int]]:
    """Closed episodes as (sensor, start, end, mask, vmin, vmax, n, closing row) and the opening rows."""
    closed: list[tuple] = []
    opened: list[int] = []
    for i, (s, t, f, x) in enumerate(zip(sensors, ts, flags, values, strict=True)):
        ep = state.open.get(s)
        if f:
            if ep is None:
                ep = state.open[s] = OpenEpisode(start=t, last=t)
                opened.append(i)
            ep.last = t
            ep.mask |= f
            if math.isfinite(x):
                ep.vmin, ep.vmax = min(ep.vmin, x), max(ep.vmax, x)
            ep.n += 1
        elif ep is not None:
            del state.open[s]
            closed.append((s, ep.start, ep.last, ep.mask, ep.vmin, ep.vmax, ep.n, i))
    return closed, opened
