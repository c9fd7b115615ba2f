"""Lot transitions seen in the readings: which lot started and finished on which line, and when.

Per batch, rows are grouped by (site, line, lot) with Arrow (no Python per reading); a line whose
lot changes yields a ``LotFinished`` for the old lot and a ``LotStarted`` for the new one. Late
readings of a lot that has already finished are counted but start nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
        t = pa.table({
            "site": batch.column("site").cast(pa.string()),
            "line": batch.column("line").cast(pa.string()),
            "lot": batch.column("lot").cast(pa.string()),
            "ts": batch.column("ts").cast(pa.int64()),
            "flagged": pc.cast(pc.not_equal(pa.array(flags), 0), pa.int64()),
        })
        t = t.filter(pc.is_valid(t.column("lot")))
        groups = t.group_by(["site", "line", "lot"]).aggregate(
            [("ts", "min"), ("ts", "max"), ("ts", "count"), ("flagged", "sum")]
        ).sort_by([("ts_min", "ascending")])
        out: list[LotStarted | LotFinished] = []
        for g in groups.to_pylist():
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
