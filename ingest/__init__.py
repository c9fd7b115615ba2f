"""Ingest: detection, episodes, lots and the Parquet sink."""

from ingest.detect import Detector
from ingest.episodes import Episode, EpisodeTracker
from ingest.lots import LotFinished, LotStarted, LotTracker
from ingest.pipeline import Ingest, IngestStats
from ingest.sink import CommittedFile, ParquetSink, read_dataset


def warm_up() -> None:
    """Compile (or load cached) every Numba kernel a worker runs, detection's and the sink's,
    before the plant starts, not on the first batch."""
    from ingest import detect, sink_kernels

    detect.warm_up()
    sink_kernels.warm_up()


__all__ = [
    "CommittedFile",
    "Detector",
    "Episode",
    "EpisodeTracker",
    "Ingest",
    "IngestStats",
    "LotFinished",
    "LotStarted",
    "LotTracker",
    "ParquetSink",
    "read_dataset",
    "warm_up",
]
