"""Lot transitions seen in the readings: which lot started and finished on which line, and when.

Per batch, rows are grouped by (site, line, lot) with Arrow (no Python per reading); a line whose
lot changes yields a ``LotFinished`` for the old lot and a ``LotStarted`` for the new one. Late
readings of a lot that has already finished are counted but start nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True, slots=True)
class LotStarted:
    site: str
    line: str
    lot: str
    at_ns: int


@dataclass(frozen=True, slots=True)
class LotFinished:
    site: str
    line: str
    lot: str
    at_ns: int
    readings: int
    flagged: int


@dataclass
class _Running:
    lot: str
    last_ns: int = 0
    readings: int = 0
    flagged: int = 0
    finished: set[str] = field(default_factory=set)


class LotTracker:
    def __init__(self) -> None:
        self._lines: dict[tuple[str, str], _Running] = {}

    def update(self, batch: pa.RecordBatch, flags) -> list[LotStarted | LotFinished]:
        if batch.num_rows == 0:
            return []
        groups = _lot_groups(batch, flags)
        out: list[LotStarted | LotFinished] = []
        for g in groups:
            key = (g["site"], g["line"])
            run = self._lines.get(key)
            if run is None:
                run = self._lines[key] = _Running(g["lot"])
                out.append(LotStarted(g["site"], g["line"], g["lot"], g["ts_min"]))
            elif run.lot != g["lot"] and g["lot"] not in run.finished:
                out.append(LotFinished(g["site"], g["line"], run.lot, run.last_ns, run.readings, run.flagged))
                run.finished.add(run.lot)
                run.lot, run.readings, run.flagged, run.last_ns = g["lot"], 0, 0, 0
                out.append(LotStarted(g["site"], g["line"], g["lot"], g["ts_min"]))
            if run.lot == g["lot"]:
                run.readings += g["ts_count"]
                run.flagged += g["flagged_sum"]
                run.last_ns = max(run.last_ns, g["ts_max"])
        return out


def _codes(col: pa.Array) -> tuple[np.ndarray, list]:
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    return col.indices.to_numpy(zero_copy_only=False), col.dictionary.to_pylist()


def _lot_groups(batch: pa.RecordBatch, flags) -> list[dict]:
    """Per (site, line, lot) of a batch: first and last time, readings and flagged readings, in
    order of first time. On dictionary codes with NumPy (an Arrow group-by per batch cost ~2 ms)."""
    lot = batch.column("lot")
    valid = np.asarray(lot.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if not valid.any():
        return []
    (sc, sn), (lc, ln), (oc, on) = (_codes(batch.column(c)) for c in ("site", "line", "lot"))
    sc, lc = sc.astype(np.int64)[valid], lc.astype(np.int64)[valid]
    oc = np.nan_to_num(oc.astype(np.float64), nan=0).astype(np.int64)[valid] if oc.dtype.kind == "f" else \
        oc.astype(np.int64)[valid]
    ts = batch.column("ts").cast(pa.int64()).to_numpy()[valid]
    flagged = (np.asarray(flags) != 0)[valid]
    code = (sc * len(ln) + lc) * max(len(on), 1) + oc
    uniq, inv = np.unique(code, return_inverse=True)
    tmin = np.full(len(uniq), np.iinfo(np.int64).max, dtype=np.int64)
    tmax = np.full(len(uniq), np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(tmin, inv, ts)
    np.maximum.at(tmax, inv, ts)
    count = np.bincount(inv, minlength=len(uniq))
    nflag = np.bincount(inv, weights=flagged, minlength=len(uniq)).astype(np.int64)
    out = []
    for g in np.argsort(tmin, kind="stable").tolist():
        rest, o = divmod(int(uniq[g]), max(len(on), 1))
        s, ln_ = divmod(rest, len(ln))
        out.append({"site": sn[s], "line": ln[ln_], "lot": on[o], "ts_min": int(tmin[g]), "ts_max": int(tmax[g]),
                    "ts_count": int(count[g]), "flagged_sum": int(nflag[g])})
    return out
