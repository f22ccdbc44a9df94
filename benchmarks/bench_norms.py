"""Speed of the normalization layers: forward + backward of one float32 batch (pytest-benchmark).

Two groups of rows:

* ``lcn-vs-groupnorm``: :class:`~robustbench_norm.norms.lcn.LocalContextNorm` (2 channels per group) at
  windows 7, 31, 127 and 255 against GroupNorm with the same grouping (32 groups) on (8, 64, 128, 128).
  Targets: LCN at most 4x GroupNorm at every window (stretch 3x), and time(255) / time(7) at most 1.2,
  i.e. the cost does not grow with the window. Each LCN row's ``extra_info`` holds ``vs_groupnorm`` (its
  mean time over GroupNorm's) and the 255 row ``vs_window_7``, filled when those rows ran before it in the
  same session (they are parametrized first).
* ``all-norms``: every norm in :func:`~robustbench_norm.norms.list_norms` with its default kwargs on
  (8, 64, 128, 128); ``localnorm`` gets ``num_groups=4`` (divides the batch), norms that need context ids
  run inside ``use_context`` with id 0 for every sample, and token norms (placement ``"tokens"``) get
  (8, 256, 64) patch tokens. A norm whose ``build_norm`` raises is skipped with the error as the reason.

One step is ``torch.autograd.grad`` of the output (with a fixed random output gradient) with respect to
the input and the layer's parameters, so no gradient accumulates between rounds. Torch keeps its default
intra-op threads (one per core); ``conftest.py`` sets passive OpenMP waiting unless the environment chooses
(see there why). On a shared machine the figures are noisy: compare rows of one run.

Run: ``pytest benchmarks/bench_norms.py -p no:cacheprovider --benchmark-only``
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import pytest
import torch
from torch import nn

from robustbench_norm.norms import build_norm, get_norm, list_norms, use_context
from robustbench_norm.norms.lcn import LocalContextNorm

MAP_SHAPE = (8, 64, 128, 128)
TOKEN_SHAPE = (8, 256, 64)
LCN_WINDOWS = (7, 31, 127, 255)
NORM_KWARGS: dict[str, dict[str, Any]] = {"localnorm": {"num_groups": 4}}
PEDANTIC = {"rounds": 3, "warmup_rounds": 1, "iterations": 1}

_mean_seconds: dict[str, float] = {}


def _step(layer: nn.Module, x: torch.Tensor) -> Callable[[], tuple[torch.Tensor, ...]]:
    """One forward + backward of ``layer`` on ``x`` (gradients w.r.t. the input and the parameters)."""
    x = x.detach().requires_grad_(True)
    inputs = [x, *(p for p in layer.parameters() if p.requires_grad)]
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))

    def run() -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad(layer(x), inputs, grad)

    return run


def _input(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("layer_name", ["groupnorm", *(f"lcn-{w}" for w in LCN_WINDOWS)])
def test_lcn_vs_groupnorm(benchmark, layer_name: str) -> None:
    channels = MAP_SHAPE[1]
    if layer_name == "groupnorm":
        layer: nn.Module = nn.GroupNorm(channels // 2, channels)
    else:
        layer = LocalContextNorm(channels, channels_per_group=2, window_size=int(layer_name.split("-")[1]))
    benchmark.group = "lcn-vs-groupnorm"
    grads = benchmark.pedantic(_step(layer, _input(MAP_SHAPE)), **PEDANTIC)
    assert grads[0].shape == MAP_SHAPE
    if benchmark.stats is None:  # --benchmark-disable: the step ran once, untimed
        return
    mean = benchmark.stats.stats.mean
    _mean_seconds[layer_name] = mean
    if layer_name != "groupnorm" and "groupnorm" in _mean_seconds:
        benchmark.extra_info["vs_groupnorm"] = round(mean / _mean_seconds["groupnorm"], 2)
    if layer_name == "lcn-255" and "lcn-7" in _mean_seconds:
        benchmark.extra_info["vs_window_7"] = round(mean / _mean_seconds["lcn-7"], 2)


@pytest.mark.parametrize("name", list_norms())
def test_every_norm(benchmark, name: str) -> None:
    spec = get_norm(name)
    tokens = spec.placement == "tokens"
    shape = TOKEN_SHAPE if tokens else MAP_SHAPE
    try:
        layer = build_norm(name, shape[-1] if tokens else shape[1], **NORM_KWARGS.get(name, {}))
    except Exception as error:  # noqa: BLE001 - any build failure is reported as the skip reason
        pytest.skip(f"build_norm({name!r}) raised {type(error).__name__}: {error}")
    ids = torch.zeros(shape[0], dtype=torch.long)
    step = _step(layer, _input(shape))

    def run() -> tuple[torch.Tensor, ...]:
        with use_context(layer, ids) if spec.needs_context else nullcontext():
            return step()

    benchmark.group = "all-norms"
    grads = benchmark.pedantic(run, **PEDANTIC)
    assert grads[0].shape == shape
