"""Capped exponential backoff with jitter, as a pure generator: easy to test, one place to tune."""

from __future__ import annotations

import random
from collections.abc import Iterator


def exponential_backoff(initial_s: float = 0.1, factor: float = 2.0, cap_s: float = 10.0, jitter: float = 0.2,
                        rng: random.Random | None = None) -> Iterator[float]:
    """Delays ``initial_s, initial_s·factor, …`` up to ``cap_s``, each scaled by ``1 ± jitter``.

    Jitter keeps many readers that lost the same device from retrying in lockstep.
    """
    rng = rng or random.Random()
    delay = initial_s
    while True:
        yield delay * (1.0 + jitter * (2.0 * rng.random() - 1.0))
        delay = min(cap_s, delay * factor)
