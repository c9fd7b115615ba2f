"""Ingest: detection, episodes, lots and the Parquet sink."""

from ingest.detect import Detector
from ingest.episodes import Episode, EpisodeTracker
from ingest.lots import LotFinished, LotStarted, LotTracker
from ingest.pipeline import Ingest, IngestStats
from ingest.sink import CommittedFile, ParquetSink, read_dataset

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
]
