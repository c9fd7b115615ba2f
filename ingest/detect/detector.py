"""The detector: sensors registered on first sight, parameters and state in NumPy arrays.

``Detector.score(batch)`` maps each row to a sensor index with one dictionary encode per batch
(no Python per reading), runs the kernels over the whole batch and returns the ``flags`` and
z-scores. ``Detector.flag(batch)`` returns the batch with its ``flags`` column filled in.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.detect import kernels
from qctrace.config import DetectConfig
from qctrace.schema import READING_SCHEMA, check_batch, sensor_keys

_FLAGS_AT = READING_SCHEMA.get_field_index("flags")


class Detector:
    def __init__(self, config: DetectConfig, capacity: int = 64) -> None:
        self.config = config
        self.keys: list[str] = []
        self._index: dict[str, int] = {}
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        old = getattr(self, "lsl", None)
        n = 0 if old is None else len(self.keys)

        def grow(name: str, dtype, fill) -> None:
            arr = np.full(capacity, fill, dtype=dtype)
            if old is not None:
                arr[:n] = getattr(self, name)[:n]
            setattr(self, name, arr)

        grow("lsl", np.float64, -np.inf)
        grow("usl", np.float64, np.inf)
        grow("lam", np.float64, 0.1)
        grow("zlim", np.float64, np.inf)
        grow("warmup", np.int64, 1)
        grow("rebase", np.int64, 0)
        grow("run", np.int64, 0)
        grow("mean", np.float64, 0.0)
        grow("var", np.float64, 0.0)
        grow("count", np.int64, 0)

    def sensor_index(self, key: str) -> int:
        i = self._index.get(key)
        if i is not None:
            return i
        i = len(self.keys)
        if i >= len(self.lsl):
            self._alloc(2 * len(self.lsl))
        (self.lsl[i], self.usl[i], self.lam[i], self.zlim[i], self.warmup[i],
         self.rebase[i]) = self.config.for_sensor(key)
        self.keys.append(key)
        self._index[key] = i
        return i

    def indices(self, batch: pa.RecordBatch) -> np.ndarray:
        """Sensor index per row (int64)."""
        enc = pc.dictionary_encode(sensor_keys(batch))
        mapping = np.array([self.sensor_index(k) for k in enc.dictionary.to_pylist()], dtype=np.int64)
        codes = enc.indices.to_numpy(zero_copy_only=False)
        return mapping[codes] if len(codes) else np.empty(0, dtype=np.int64)

    def score(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sensor index, flags uint32, z float64) per row; updates the detector's state."""
        check_batch(batch)
        idx = self.indices(batch)
        values = kernels.readonly(batch.column("value").to_numpy(zero_copy_only=False))
        quality = kernels.readonly(batch.column("quality").to_numpy(zero_copy_only=False))
        flags = np.zeros(len(idx), dtype=np.uint32)
        z = np.zeros(len(idx), dtype=np.float64)
        kernels.spec_ewma(idx, values, quality, self.lsl, self.usl, self.lam, self.zlim, self.warmup, self.rebase,
                          self.mean, self.var, self.count, self.run, flags, z)
        return idx, flags, z

    def flag(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, np.ndarray, np.ndarray]:
        """The batch with ``flags`` set, plus sensor indices and z-scores."""
        idx, flags, z = self.score(batch)
        return batch.set_column(_FLAGS_AT, READING_SCHEMA.field("flags"), pa.array(flags)), idx, z
