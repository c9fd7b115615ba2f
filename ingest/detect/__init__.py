"""The anomaly core: Numba kernels, their plain-Python references and NumPy baselines, and the ``Detector``.

The small public API other tools drive::

    det = Detector(DetectConfig(...))       # or build_detector(config_path)
    scores = det.score(batch)               # an Arrow RecordBatch of READING_SCHEMA
    scores.flags, scores.scores["cusum"]    # uint32 flags and float64 scores per row
    explain(int(scores.flags[i]), {k: v[i] for k, v in scores.scores.items()})
"""

from __future__ import annotations

from pathlib import Path

from ingest.detect.detector import Detector, Scores
from ingest.detect.explain import explain
from qctrace.config import DetectConfig

__all__ = ["DetectConfig", "Detector", "Scores", "build_detector", "explain", "warm_up"]


def build_detector(config_path: Path | str | None = None) -> Detector:
    """A detector configured from a qctrace TOML file (``None``: the shipped defaults)."""
    from qctrace.config import load_config

    return Detector(load_config(config_path).detect)


def warm_up() -> None:
    """Compile (or load from Numba's cache) every kernel with the exact argument types the detector
    uses, by scoring a two-row batch, so the first real batch does not pay for it."""
    from ingest.detect import kernels
    from qctrace.schema import batch_from_columns

    kernels.warm_up()
    t = 1_793_599_200 * 10**9
    batch = batch_from_columns({
        "ts": [t, t + 10**9], "recv_ts": [t, t], "site": ["w"] * 2, "line": ["w"] * 2, "device": ["w"] * 2,
        "sensor": ["w", "w_sp"], "value": [1.0, 1.0], "quality": [0, 0], "seq": [0, 1], "lot": ["w", "w"]})
    Detector(DetectConfig(rebaseline_on_lot=True)).score(batch)
