"""Cost of every registered normalization layer (plugins included), as pytest-benchmark groups (issue 14).

* one group per input shape of :data:`layer_cost.SHAPES` (small images, large maps, batch 2): a training-
  mode forward + backward of every norm in :func:`~robustbench_norm.norms.list_norms` (and LCN at fixed
  windows); each row's ``extra_info`` holds its ATen ops (all and non-view), its base norm and
  ``vs_base``, its best time over its base's best time (:data:`robustbench_norm.norms.cost.BASE_NORM`:
  LocalNorm, SwitchNorm and Mixture Norm vs BatchNorm, ILM-X vs X, PositionalNorm vs LayerNorm, LCN vs
  GroupNorm), and ``vs_batchnorm``. Base norms are parametrized first, so their times are known;
* ``quick-net training step``: one SGD step of the quick net with each norm, ``vs_batchnorm`` the ratio to
  the BatchNorm net's step (what a user pays).

Torch runs one thread for the duration of each test; best of ``ROUNDS`` rounds (``MORE_ROUNDS`` for the
shapes it names) after a warm-up, with the steady heap of ``layer_cost.steady_heap``; ratios use the best
times of one session. ``benchmarks/layer_cost.py`` measures the same steps (all rows of a shape in turn, each
round) and writes ``docs/layer-cost.md``.

Run: ``pytest benchmarks/bench_norms.py -p no:cacheprovider --benchmark-only`` (add ``-k "small"`` etc.).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from layer_cost import MORE_ROUNDS, ROUNDS, SHAPES, entries, quick_net_step, steady_heap

from robustbench_norm.norms import get_norm, list_norms
from robustbench_norm.norms.cost import BASE_NORM, cost_layer, count_ops, training_step

PEDANTIC = {"rounds": ROUNDS, "warmup_rounds": 1, "iterations": 1}
BASES = sorted(set(BASE_NORM.values()))

_best_seconds: dict[tuple[str, str], float] = {}


def _ordered(rows: list[Any]) -> list[Any]:
    """Base norms first, so that every layer's ratio finds its base's time."""
    return sorted(rows, key=lambda row: row[1] not in BASES)


LAYER_CASES = [
    pytest.param(shape_label, label, name, kwargs, id=f"{shape_label}-{label}")
    for shape_label in SHAPES
    for label, name, kwargs in _ordered(entries(shape_label, list_norms()))
]


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module", autouse=True)
def heap():
    """The steady heap of ``layer_cost.steady_heap`` for the benchmark session."""
    steady_heap()


def _record(benchmark: Any, group: str, label: str, base: str | None) -> None:
    """Keep this row's best time and put its ratios to ``base`` and to BatchNorm in ``extra_info``."""
    if benchmark.stats is None:  # --benchmark-disable: the step ran once, untimed
        return
    best = benchmark.stats.stats.min
    _best_seconds[group, label] = best
    for key, reference in (("vs_base", base), ("vs_batchnorm", "batchnorm")):
        if reference is not None and (group, reference) in _best_seconds and reference != label:
            benchmark.extra_info[key] = round(best / _best_seconds[group, reference], 2)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("shape_label, label, name, kwargs", LAYER_CASES)
def test_layer_cost(benchmark: Any, shape_label: str, label: str, name: str, kwargs: dict[str, Any]) -> None:
    shape = SHAPES[shape_label]
    try:
        layer = cost_layer(name, shape, **kwargs)
    except Exception as error:  # noqa: BLE001 - any build failure is reported as the skip reason
        pytest.skip(f"cost_layer({name!r}, {shape}) raised {type(error).__name__}: {error}")
    ops = count_ops(layer)
    group = f"{shape_label} {shape}"
    benchmark.group = group
    base = BASE_NORM.get(name)
    benchmark.extra_info.update({"ops": ops.total, "kernel_ops": ops.kernels, "base": base})
    rounds = MORE_ROUNDS.get(shape_label, ROUNDS)
    grads = benchmark.pedantic(training_step(layer), **{**PEDANTIC, "rounds": rounds})
    assert grads[0].shape == layer.shape
    _record(benchmark, group, label, base)


QUICK_NET_NORMS = sorted(
    (name for name in list_norms() if get_norm(name).placement != "tokens"), key=lambda n: n != "batchnorm"
)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", QUICK_NET_NORMS)
def test_quick_net_training_step(benchmark: Any, name: str) -> None:
    try:
        step = quick_net_step(name, "cpu")
    except Exception as error:  # noqa: BLE001 - reported as the skip reason
        pytest.skip(f"quick_cnn with {name!r} raised {type(error).__name__}: {error}")
    group = "quick-net training step"
    benchmark.group = group
    benchmark.pedantic(step, **PEDANTIC)
    _record(benchmark, group, name, "batchnorm")
