"""The anomaly core: Numba kernels, their plain-Python references, and the ``Detector``."""

from ingest.detect.detector import Detector

__all__ = ["Detector"]
