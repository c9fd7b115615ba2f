"""The contract every rule family follows, so the detector can drive, checkpoint and test them alike.

A rule family (``spc.py``, ``robust.py``, ``coldchain.py``) is a set of related rules with shared
per-sensor state. It provides three implementations of the same semantics:

* ``kernel``: ``@njit(cache=True, nogil=True)``, the one the detector runs;
* ``reference``: plain Python loops over lists, written for clarity (the oracle in tests);
* ``vectorised``: the best NumPy formulation (no Numba), the baseline ``bench/detect.py`` compares with.

All three take the batch in arrival order and update state in place::

    kernel(idx, ts, values, flags, *scores, *params, *state)          # arrays, in the declared order
    reference(idx, ts, values, flags, scores, params, state)          # lists; dicts of lists by name
    vectorised(idx, ts, values, flags, scores, params, state)         # arrays; dicts of arrays by name

``idx`` int64 sensor index per row, ``ts`` int64 source time in ns, ``values`` float64. ``flags``
uint32 arrives holding what earlier families found; a row with ``SKIP`` bits (Bad quality, NaN or
±inf) is neither judged nor allowed to move state. A family only ORs its own bits into ``flags``,
and writes one float64 per row into each of its ``scores`` (NaN where not judged). Timestamps may
go backwards or repeat (late or duplicated readings): each family states what it does then, and
never divides by a non-positive interval.

``params`` are per-sensor settings from configuration (``Field.default`` when unset); ``state``
is per-sensor and checkpointed with the data; a ``Field`` with ``width > 1`` is a 2-D array
``[sensors, width]``. ``rebaseline`` names the state fields and values that restart learning when a
lot changes over or a setpoint moves (where configured).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from qctrace.schema import Flag

SKIP = np.uint32(Flag.BAD_QUALITY | Flag.NOT_FINITE)


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    dtype: type
    default: float | int | bool
    width: int = 1

    def alloc(self, n: int) -> np.ndarray:
        shape = (n,) if self.width == 1 else (n, self.width)
        return np.full(shape, self.default, dtype=self.dtype)


@dataclass(frozen=True)
class RuleFamily:
    name: str
    bits: int  # the Flag bits this family may set
    params: tuple[Field, ...]
    state: tuple[Field, ...]
    scores: tuple[str, ...]
    kernel: Callable[..., None]
    reference: Callable[..., None]
    vectorised: Callable[..., None]
    rebaseline: Mapping[str, float | int] = field(default_factory=dict)

    def alloc(self, n: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Fresh (params, state) arrays for ``n`` sensors."""
        return ({f.name: f.alloc(n) for f in self.params}, {f.name: f.alloc(n) for f in self.state})

    def run(self, idx: np.ndarray, ts: np.ndarray, values: np.ndarray, flags: np.ndarray,
            params: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the kernel over a batch; returns the score arrays by name."""
        scores = {s: np.empty(len(idx), dtype=np.float64) for s in self.scores}
        self.kernel(idx, ts, values, flags, *scores.values(), *(params[f.name] for f in self.params),
                    *(state[f.name] for f in self.state))
        return scores
