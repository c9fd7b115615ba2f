"""The detector: sensors registered on first sight, parameters and state in NumPy arrays.

``Detector.score(batch)`` maps each row to a sensor index with one dictionary encode per batch
(no Python per reading), then runs the kernels over the whole batch: spec limits and EWMA first
(they also mark Bad and non-finite readings, which no later rule judges), then each rule family
(``spc``, ``robust``, ``coldchain``; see ``family.py``). It returns the flags and every rule's
per-reading scores. ``Detector.flag(batch)`` returns the batch with its ``flags`` column filled.

Re-baselining: a lot changeover (``rebaseline_on_lot``) or a change of a sensor's setpoint (the
sensor ``<key><setpoint_suffix>``, e.g. ``seal_temp_sp``) restarts that sensor's learning just
before its first reading of the new lot or at or after the new setpoint's time, so normal recipe
and lot changes raise no alarm. The batch is cut at those rows and the kernels run segment by
segment (rare: only where a reset happens).

State (every array, the sensor keys and the lot/setpoint trackers) is saved with ``save`` and
restored with ``load``: ingest stores it with each Parquet commit, so detection carries on after
a restart exactly where the committed data left it.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.detect import kernels
from ingest.detect.family import RuleFamily
from qctrace.config import DetectConfig
from qctrace.durable import atomic_write
from qctrace.errors import ConfigError
from qctrace.schema import KEY_COLUMNS as _KEY_COLUMNS
from qctrace.schema import READING_SCHEMA, Flag, check_batch, sensor_keys

_FLAGS_AT = READING_SCHEMA.get_field_index("flags")
_CORE = (("lsl", np.float64, -np.inf), ("usl", np.float64, np.inf), ("lam", np.float64, 0.1),
         ("zlim", np.float64, np.inf), ("warmup", np.int64, 1), ("rebase", np.int64, 0))
_CORE_STATE = (("run", np.int64, 0), ("mean", np.float64, 0.0), ("var", np.float64, 0.0), ("count", np.int64, 0),
               ("last", np.float64, np.nan))
_STATE_VERSION = 1


def default_families() -> tuple[RuleFamily, ...]:
    from ingest.detect import coldchain, robust, spc

    return (spc.FAMILY, robust.FAMILY, coldchain.FAMILY)


@dataclass
class Scores:
    """What the detector says about one batch: per row, the sensor index, flags and scores."""

    idx: np.ndarray
    flags: np.ndarray
    scores: dict[str, np.ndarray]

    @property
    def z(self) -> np.ndarray:
        return self.scores["ewma_z"]


def family_params(fam: RuleFamily, resolved: dict[str, Any]) -> dict[str, Any]:
    """A family's parameter values for one sensor, from its resolved configuration."""
    conv: dict[str, Any] = dict(resolved)
    nelson = resolved.get("nelson")
    if nelson is not None:
        conv["rules"] = int(sum(int(Flag.NELSON_1) << (n - 1) for n in nelson))
    if resolved.get("cusum_h") == 0:
        conv["cusum_h"] = math.inf
    if resolved.get("max_interval_s") is not None:
        conv["max_interval_ns"] = round(resolved["max_interval_s"] * 1e9)
    if resolved.get("band") is not None:
        conv["band_lo"], conv["band_hi"] = resolved["band"]
    if resolved.get("budget_min") is not None:
        conv["budget_s"] = resolved["budget_min"] * 60.0
    if resolved.get("mkt") is not None:
        conv["mkt"] = int(bool(resolved["mkt"]))
    out = {}
    for f in fam.params:
        v = conv.get(f.name)
        out[f.name] = f.default if v is None else v
    return out


_MEMOS = 32  # combined-code tables kept (see Detector.indices)


class Detector:
    def __init__(self, config: DetectConfig, capacity: int = 64,
                 families: Sequence[RuleFamily] | None = None) -> None:
        self.config = config
        self.families = tuple(default_families() if families is None else families)
        self.keys: list[str] = []
        self._index: dict[str, int] = {}
        self._n_alloc = 0
        self.core: dict[str, np.ndarray] = {}
        self.params: dict[str, dict[str, np.ndarray]] = {}
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.on_lot = np.zeros(0, dtype=np.bool_)
        self.setpoint_of = np.zeros(0, dtype=np.int64)  # sensor -> index of the sensor it is the setpoint of
        self.lot_code = np.zeros(0, dtype=np.int64)  # last lot seen per sensor (code into self.lots)
        self.sp_value = np.zeros(0, dtype=np.float64)  # last setpoint value seen per setpoint sensor
        self.lots: dict[str, int] = {}
        self._alloc(capacity)

    # ------------------------------------------------------------ sensors

    def _alloc(self, capacity: int) -> None:
        n = len(self.keys)

        def grow(old: np.ndarray | None, fresh: np.ndarray) -> np.ndarray:
            if old is not None:
                fresh[:n] = old[:n]
            return fresh

        for name, dtype, fill in (*_CORE, *_CORE_STATE):
            self.core[name] = grow(self.core.get(name), np.full(capacity, fill, dtype=dtype))
        for fam in self.families:
            p, s = fam.alloc(capacity)
            self.params[fam.name] = {k: grow(self.params.get(fam.name, {}).get(k), v) for k, v in p.items()}
            self.state[fam.name] = {k: grow(self.state.get(fam.name, {}).get(k), v) for k, v in s.items()}
        self.on_lot = grow(self.on_lot if len(self.on_lot) else None, np.zeros(capacity, np.bool_))
        self.setpoint_of = grow(self.setpoint_of if len(self.setpoint_of) else None, np.full(capacity, -1, np.int64))
        self.lot_code = grow(self.lot_code if len(self.lot_code) else None, np.full(capacity, -1, np.int64))
        self.sp_value = grow(self.sp_value if len(self.sp_value) else None, np.full(capacity, np.nan))
        self._n_alloc = capacity

    def sensor_index(self, key: str) -> int:
        i = self._index.get(key)
        if i is not None:
            return i
        i = len(self.keys)
        if i >= self._n_alloc:
            self._alloc(2 * self._n_alloc)
        r = self.config.resolve(key)
        c = self.core
        c["lsl"][i], c["usl"][i], c["lam"][i], c["zlim"][i], c["warmup"][i], c["rebase"][i] = \
            self.config.for_sensor(key)
        for fam in self.families:
            for name, v in family_params(fam, r).items():
                self.params[fam.name][name][i] = v
        self.on_lot[i] = bool(r.get("rebaseline_on_lot"))
        self.keys.append(key)
        self._index[key] = i
        suffix = r.get("setpoint_suffix") or ""
        if suffix:
            if key.endswith(suffix) and key[: -len(suffix)] in self._index:  # a setpoint after its sensor
                self.setpoint_of[i] = self._index[key[: -len(suffix)]]
            elif key + suffix in self._index:  # a sensor after its setpoint
                self.setpoint_of[self._index[key + suffix]] = i
        return i

    _MEMO_MAX = 1 << 22

    def indices(self, batch: pa.RecordBatch) -> np.ndarray:
        """Sensor index per row (int64).

        Rows are mapped through their four dictionary codes combined into one integer. An edge
        node's batches share the same dictionaries batch after batch, so the combined-code table
        is kept while they stay equal: a batch then costs one gather, not a string per row (this
        was a quarter of ingest's time at 10,000-reading batches). One table per set of
        dictionaries, for the last ``_MEMOS`` sets: one per edge node a worker holds.
        """
        cols = [batch.column(c) for c in _KEY_COLUMNS]
        dicts = [c.dictionary for c in cols]
        sizes = [len(d) for d in dicts]
        space = math.prod(sizes)
        if batch.num_rows == 0:
            return np.empty(0, dtype=np.int64)
        if space > self._MEMO_MAX:
            enc = pc.dictionary_encode(sensor_keys(batch))
            mapping = np.array([self.sensor_index(k) for k in enc.dictionary.to_pylist()], dtype=np.int64)
            return mapping[enc.indices.to_numpy(zero_copy_only=False)]
        memos = getattr(self, "_memo", None) or []
        for j, (d0, t0) in enumerate(memos):
            if len(t0) == space and all(a.equals(b) for a, b in zip(d0, dicts, strict=True)):
                memo = memos.pop(j)
                break
        else:
            memo = (dicts, np.full(space, -1, dtype=np.int64))
        memos.insert(0, memo)  # most recent first: a worker holding several edge nodes alternates between them
        self._memo = memos[:_MEMOS]
        table = memo[1]
        codes = [c.indices.to_numpy(zero_copy_only=False).astype(np.int64) for c in cols]
        combined = ((codes[0] * sizes[1] + codes[1]) * sizes[2] + codes[2]) * sizes[3] + codes[3]
        out = table[combined]
        if (out < 0).any():
            names = [d.to_pylist() for d in dicts]
            for k in np.unique(combined[out < 0]).tolist():
                rest, sensor = divmod(k, sizes[3])
                rest, device = divmod(rest, sizes[2])
                site, line = divmod(rest, sizes[1])
                table[k] = self.sensor_index(f"{names[0][site]}/{names[1][line]}/{names[2][device]}/{names[3][sensor]}")
            out = table[combined]
        return out

    # ------------------------------------------------------------ scoring

    def score(self, batch: pa.RecordBatch) -> Scores:
        """Flags and scores per row; updates the detector's state."""
        check_batch(batch)
        idx = self.indices(batch)
        ts = kernels.readonly(batch.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False))
        values = kernels.readonly(batch.column("value").to_numpy(zero_copy_only=False))
        quality = kernels.readonly(batch.column("quality").to_numpy(zero_copy_only=False))
        n = len(idx)
        flags = np.zeros(n, dtype=np.uint32)
        scores = {"ewma_z": np.zeros(n, dtype=np.float64)}
        for fam in self.families:
            for s in fam.scores:
                scores[s] = np.empty(n, dtype=np.float64)
        resets = self._resets(batch, idx, ts, values)
        bounds = sorted({0, n, *resets})
        for a, b in itertools.pairwise(bounds):
            for s in resets.get(a, ()):
                self.rebaseline(s)
            self._run(idx[a:b], ts[a:b], values[a:b], quality[a:b], flags[a:b], {k: v[a:b] for k, v in scores.items()})
        return Scores(idx, flags, scores)

    def _run(self, idx, ts, values, quality, flags, scores) -> None:
        c = self.core
        kernels.spec_ewma(idx, values, quality, c["lsl"], c["usl"], c["lam"], c["zlim"], c["warmup"], c["rebase"],
                          c["mean"], c["var"], c["count"], c["run"], c["last"], flags, scores["ewma_z"])
        for fam in self.families:
            p, st = self.params[fam.name], self.state[fam.name]
            fam.kernel(idx, ts, values, flags, *(scores[s] for s in fam.scores), *(p[f.name] for f in fam.params),
                       *(st[f.name] for f in fam.state))

    def rebaseline(self, s: int) -> None:
        """Restart sensor ``s``'s learning (EWMA and every family's baseline); limits and budgets stay."""
        self.core["count"][s] = 0
        self.core["run"][s] = 0
        for fam in self.families:
            for name, value in fam.rebaseline.items():
                self.state[fam.name][name][s] = value

    def _resets(self, batch: pa.RecordBatch, idx: np.ndarray, ts: np.ndarray,
                values: np.ndarray) -> dict[int, list[int]]:
        """Rows before which a sensor re-baselines: its first row of a new lot, or its first row at or
        after a setpoint change. Python loops only over lot changes and setpoint rows (rare)."""
        out: dict[int, list[int]] = {}
        if not len(idx):
            return out
        lots = batch.column("lot")
        if self.on_lot[: len(self.keys)].any() and lots.null_count < len(lots):
            enc = pc.dictionary_encode(lots.cast(pa.string()))
            names = enc.dictionary.to_pylist()
            mapping = np.array([self.lots.setdefault(x, len(self.lots)) for x in names], dtype=np.int64)
            codes = enc.indices.to_numpy(zero_copy_only=False)
            valid = ~np.asarray(pc.is_null(enc.indices).to_numpy(zero_copy_only=False))
            lot_rows = np.where(valid, mapping[np.where(valid, codes, 0)] if len(mapping) else -1, -1).astype(np.int64)
            changed = np.zeros(len(idx), dtype=np.uint8)
            if kernels.lot_changes(idx, lot_rows, self.on_lot, self.lot_code, changed):
                for i in np.nonzero(changed)[0]:
                    out.setdefault(int(i), []).append(int(idx[i]))
        sp_rows = np.nonzero(self.setpoint_of[idx] >= 0)[0]
        for i in sp_rows:
            sp, x = idx[i], values[i]
            if not math.isfinite(x) or x == self.sp_value[sp]:
                continue
            first = math.isnan(self.sp_value[sp])
            self.sp_value[sp] = x
            if first:
                continue
            target = self.setpoint_of[sp]
            later = np.nonzero((idx == target) & (ts >= ts[i]))[0]
            at = int(later[0]) if len(later) else None
            if at is None:  # the sensor's next reading is in a later batch: reset now
                self.rebaseline(int(target))
            else:
                out.setdefault(at, []).append(int(target))
        return out

    def flag(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, np.ndarray, np.ndarray]:
        """The batch with ``flags`` set, plus sensor indices and EWMA z-scores."""
        sc = self.score(batch)
        return batch.set_column(_FLAGS_AT, READING_SCHEMA.field("flags"), pa.array(sc.flags)), sc.idx, sc.z

    def stale(self, now_ns: int | np.ndarray) -> list[int]:
        """Indices of sensors silent longer than allowed at ``now_ns`` (a timer calls this; no reading
        is needed), one time for all or one per sensor. The threshold is the GAP rule's, so the
        reading that ends the silence is GAP."""
        from ingest.detect import robust

        fam = next((f for f in self.families if f.name == robust.FAMILY.name), None)
        if fam is None:
            return []
        st, p = self.state[fam.name], self.params[fam.name]
        return [int(i) for i in robust.stale(now_ns, st["last_ts"], robust.expected_interval_ns(p, st),
                                             p["gap_factor"], len(self.keys))]

    def last_seen_all(self) -> np.ndarray:
        """Source time of every sensor's newest reading (``robust.NEVER`` where none was heard)."""
        from ingest.detect import robust

        if robust.FAMILY.name not in self.state:
            return np.full(len(self.keys), robust.NEVER, np.int64)
        return np.asarray(self.state[robust.FAMILY.name]["last_ts"][: len(self.keys)], np.int64)

    # ------------------------------------------------------------ checkpoint

    def state_dict(self, sensors: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The learnt state of ``sensors`` (indices; default all): what a restart, or another ingest
        worker taking these sensors over, needs to carry on where this one stopped."""
        idx = np.arange(len(self.keys)) if sensors is None else np.asarray(sensors, dtype=np.int64)
        out: dict[str, np.ndarray] = {"version": np.array([_STATE_VERSION]),
                                      "keys": np.array([self.keys[i] for i in idx.tolist()], dtype=str),
                                      "lots": np.array(list(self.lots), dtype=str)}
        for name, arr in self.core.items():
            if name in dict((c[0], 1) for c in _CORE_STATE):
                out[f"core.{name}"] = arr[idx]
        for fam in self.families:
            for name, arr in self.state[fam.name].items():
                out[f"{fam.name}.{name}"] = arr[idx]
        out["lot_code"] = self.lot_code[idx]
        out["sp_value"] = self.sp_value[idx]
        return out

    def load_state(self, d: dict[str, np.ndarray], keep: Callable[[str], bool] | None = None) -> None:
        """Restore a ``state_dict`` (only the sensors ``keep`` accepts, default all) into this
        detector, which may already hold other sensors: sensors are registered (parameters come
        from the current configuration), then their learnt state is put back."""
        self._memo = None  # combined-code table of the old index
        if int(d["version"][0]) != _STATE_VERSION:
            raise ConfigError(f"detector state version {int(d['version'][0])} is not {_STATE_VERSION}")
        keys = [str(k) for k in d["keys"].tolist()]
        rows = np.array([j for j, k in enumerate(keys) if keep is None or keep(k)], dtype=np.int64)
        if len(rows) == 0:
            return
        idx = np.array([self.sensor_index(keys[j]) for j in rows.tolist()], dtype=np.int64)
        lot_map = np.array([self.lots.setdefault(str(x), len(self.lots)) for x in d["lots"].tolist()] + [-1],
                           dtype=np.int64)
        for name, arr in d.items():
            fam, _, field = name.partition(".")
            if fam == "core":
                self.core[field][idx] = arr[rows]
            elif field and fam in self.state and field in self.state[fam]:
                self.state[fam][field][idx] = arr[rows]
        codes = d["lot_code"][rows]
        self.lot_code[idx] = lot_map[np.where(codes < 0, len(lot_map) - 1, codes)]
        self.sp_value[idx] = d["sp_value"][rows]

    def save(self, path: Path) -> None:
        """Write the state atomically (temporary file, fsync, rename)."""
        buf = io.BytesIO()
        np.savez(buf, **self.state_dict())
        atomic_write(path, buf.getvalue())

    def load(self, path: Path, keep: Callable[[str], bool] | None = None) -> None:
        with np.load(path, allow_pickle=False) as z:
            self.load_state({k: z[k] for k in z.files}, keep)

