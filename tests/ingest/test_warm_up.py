"""A worker compiles its Numba kernels before the plant starts, not on its first batches.

Each check runs in a fresh interpreter: in this one, other tests have compiled kernels already and
a missing warm-up would go unseen. (Numba's on-disk cache makes the compile fast, not absent: a
specialisation first met on a batch is compiled then, and the campaign measured 7 s of it.)
"""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path
import numba.core.registry
from qctrace.config import load_config
from qctrace.schema import batch_from_columns
import ingest, ingest.sink_kernels, ingest.detect.kernels, ingest.detect.spc, ingest.detect.robust
import ingest.detect.coldchain

mods = [ingest.sink_kernels, ingest.detect.kernels, ingest.detect.spc, ingest.detect.robust, ingest.detect.coldchain]
kernels = {f"{m.__name__}.{k}": v for m in mods for k, v in vars(m).items()
           if isinstance(v, numba.core.registry.CPUDispatcher)}
ingest.warm_up()
before = {k: len(v.signatures) for k, v in kernels.items()}
cfg = load_config(None)
data = Path(tempfile.mkdtemp())
ing = ingest.Ingest(data, cfg.detect, cfg.sink, lambda facts: None)
T, n = 1_793_836_873 * 10**9, 300
for tick in range(4):
    for line in range(3):
        ing.process(batch_from_columns({
            "ts": [T + tick * 10**9] * n, "recv_ts": [T + tick * 10**9] * n, "site": ["s"] * n,
            "line": [f"l{line}"] * n, "device": ["plc"] * n, "sensor": [f"t{i:03d}" for i in range(n)],
            "value": [float(i % 7) + tick for i in range(n)], "quality": [0] * n,
            "seq": list(range(tick * n, tick * n + n)), "lot": ["L1"] * n}), "edge1")
    ing.flush(force=True)
assert ing.sink.rows_committed == 4 * 3 * n, ing.sink.rows_committed
print(json.dumps({k: [str(s) for s in v.signatures[before[k]:]] for k, v in kernels.items() if before[k] > 0
                  or v.signatures} | {"_warmed": sorted(k for k, n in before.items() if n)}))
"""


def test_after_warm_up_the_first_batches_and_commits_compile_nothing():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    warmed = got.pop("_warmed")
    assert {"ingest.sink_kernels._partition_order", "ingest.sink_kernels._fresh_rows",
            "ingest.sink_kernels._dense_groups", "ingest.detect.kernels.spec_ewma"} <= set(warmed)
    compiled_late = {k: v for k, v in got.items() if v}
    assert compiled_late == {}, f"compiled on the first batches, not in warm_up: {compiled_late}"
