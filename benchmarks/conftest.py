"""Benchmark session settings, applied before torch is imported.

``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets the policy. Torch keeps one intra-op thread per
core, and with libgomp's default spin-waiting every parallel region waits until all of its threads hold a
core; on a shared CPU whose other processes keep the cores busy, layers made of many ops then stall.
Measured on the 2-core dev machine, forward + backward on (8, 64, 128, 128), GroupNorm / LocalContextNorm
with a 7 x 7 window:

* idle machine:              spinning 21 / 71 ms,    passive 24 / 108 ms;
* two busy processes beside: spinning 48 / 4272 ms,  passive 44 / 124 ms.

Passive waiting keeps the rows comparable on a busy machine; on an idle one,
``OMP_WAIT_POLICY=ACTIVE pytest benchmarks/bench_norms.py ...`` measures the spinning default.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
