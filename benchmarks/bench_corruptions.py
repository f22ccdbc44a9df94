"""Throughput of the batched torch corruptions vs the authors' way: a per-image numpy loop.

Each corruption runs on one (256, 3, 32, 32) float32 batch in [0, 1] (CIFAR-sized) at a mid-grid
severity, implemented twice:

* ``torch``      - :mod:`corruptions` (one vectorised draw for the batch from a ``torch.Generator``);
* ``numpy_loop`` - the same formula applied image by image with numpy draws, as the LocalNorm scripts
  do (``np.random.RandomState``: the legacy algorithms behind the ``np.random.*`` functions they call,
  without touching numpy's global state); output cast back to float32.

Both run on one CPU thread (``torch.set_num_threads(1)`` for the duration of each test): the numpy loop
is single-threaded, and on a shared, oversubscribed CPU torch's intra-op threads mostly wait on the
scheduler (on the 2-core dev machine at load 8, two threads made a 0.6 ms multiply take 55 ms median).

Run: ``pytest benchmarks/bench_corruptions.py -p no:cacheprovider``. Each row's ``extra_info`` holds
``images_per_second`` (batch size / mean time); rows are grouped by corruption so the two
implementations sit next to each other.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch

from corruptions import get_corruption

BATCH_SHAPE = (256, 3, 32, 32)
SEVERITY = {"agn": 1.0, "apn": 0.5, "mbn": 0.5}


def _numpy_agn(images: np.ndarray, sigma: float, rng: np.random.RandomState) -> np.ndarray:
    out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = image * (1.0 + sigma * rng.standard_normal(image.shape))
    return out


def _numpy_apn(images: np.ndarray, lam: float, rng: np.random.RandomState) -> np.ndarray:
    out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = image * (1.0 + rng.poisson(lam, image.shape))
    return out


def _numpy_mbn(images: np.ndarray, p: float, rng: np.random.RandomState) -> np.ndarray:
    out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = image * (rng.random_sample((1, *image.shape[1:])) >= p)
    return out


NUMPY_LOOPS: dict[str, Callable[[np.ndarray, float, np.random.RandomState], np.ndarray]] = {
    "agn": _numpy_agn,
    "apn": _numpy_apn,
    "mbn": _numpy_mbn,
}


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("implementation", ["torch", "numpy_loop"])
@pytest.mark.parametrize("corruption", ["agn", "apn", "mbn"])
def test_corruption_throughput(benchmark, corruption, implementation):
    images = torch.rand(BATCH_SHAPE, generator=torch.Generator().manual_seed(0))
    severity = SEVERITY[corruption]
    if implementation == "torch":
        fn, generator = get_corruption(corruption).fn, torch.Generator().manual_seed(1)

        def run():
            return fn(images, severity, generator=generator)

    else:
        loop, array, rng = NUMPY_LOOPS[corruption], images.numpy(), np.random.RandomState(1)

        def run():
            return loop(array, severity, rng)

    benchmark.group = corruption
    out = benchmark.pedantic(run, rounds=15, iterations=1, warmup_rounds=2)
    assert tuple(out.shape) == BATCH_SHAPE and out.dtype in (torch.float32, np.float32)
    benchmark.extra_info["images_per_second"] = BATCH_SHAPE[0] / benchmark.stats.stats.mean
