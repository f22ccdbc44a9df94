"""What a normalization layer costs: the ATen ops and the time of one training step (forward + backward).

Used by ``benchmarks/bench_norms.py`` (time, ratios to each layer's base norm, ``docs/layer-cost.md``) and
``tests/test_norm_opcount.py`` (op counts do not grow with N, H or W).

* :class:`AtenOpCounter` counts the ATen ops dispatched inside it (a ``TorchDispatchMode``), split into
  view ops (metadata only, no kernel) and the rest (each one a kernel launch on a GPU);
* :func:`cost_layer` builds any registered norm for an ``(N, C, H, W)`` shape the way a cost measurement
  needs it (token norms get ``(N, H * W, C)`` tokens, LocalNorm a sub-batch count that divides N);
* :func:`training_step` returns a closure running one forward + backward in training mode (input and
  parameter gradients by ``torch.autograd.grad``, so nothing accumulates between calls);
* :data:`BASE_NORM` names the norm each layer is compared with (issue 14).
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from robustbench_norm.norms.registry import build_norm, get_norm
from robustbench_norm.norms.routing import use_context

BASE_NORM: dict[str, str] = {
    "localnorm": "batchnorm",
    "switchnorm": "batchnorm",
    "mixturenorm": "batchnorm",
    "ilm_gn": "groupnorm",
    "ilm_in": "instancenorm",
    "ilm_ln": "layernorm",
    "positionalnorm": "layernorm",
    "lcn": "groupnorm",
}
"""The norm each layer reduces to or extends: its cost is reported as a multiple of this one's."""

LOCALNORM_GROUPS = 4
"""LocalNorm's default sub-batch count; :func:`cost_layer` lowers it to the largest divisor of N up to it."""


class AtenOpCounter(TorchDispatchMode):
    """Counts every ATen op dispatched while active (``with AtenOpCounter() as counter: ...``)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.views = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.counts[str(func.overloadpacket)] += 1
        self.views += bool(func.is_view)
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        """All ATen ops."""
        return sum(self.counts.values())

    @property
    def kernels(self) -> int:
        """Ops that are not views: each one runs a kernel (a launch on a GPU)."""
        return self.total - self.views


@dataclass(frozen=True)
class CostLayer:
    """A norm built for a cost measurement: the module, its input shape and whether it reads context ids."""

    name: str
    module: nn.Module
    shape: tuple[int, ...]
    needs_context: bool


def cost_layer(name: str, shape: tuple[int, int, int, int], **kwargs: Any) -> CostLayer:
    """The registered norm ``name`` (default kwargs, overridden by ``kwargs``) for input ``shape`` (N, C, H, W).

    Token norms (placement "tokens") get ``(N, H * W, C)`` patch tokens; LocalNorm gets the largest sub-batch
    count up to :data:`LOCALNORM_GROUPS` that divides N unless ``num_groups`` is given.
    """
    spec = get_norm(name)
    n, c, h, w = shape
    if spec.name == "localnorm" and "num_groups" not in kwargs:
        kwargs = {**kwargs, "num_groups": max(k for k in range(1, LOCALNORM_GROUPS + 1) if n % k == 0)}
    layer_shape = (n, h * w, c) if spec.placement == "tokens" else shape
    module = build_norm(spec.name, c, **kwargs).train()
    return CostLayer(spec.name, module, layer_shape, spec.needs_context)


def training_step(layer: CostLayer, *, seed: int = 0) -> Callable[[], tuple[torch.Tensor, ...]]:
    """A closure running one training-mode forward + backward of ``layer`` on a fixed random input and
    output gradient (seeded), returning the gradients of the input and of every parameter."""
    generator = torch.Generator().manual_seed(seed)
    device = next(iter(layer.module.parameters()), torch.empty(0)).device
    x = torch.randn(layer.shape, generator=generator).to(device).requires_grad_(True)
    grad = torch.randn(layer.shape, generator=generator).to(device)
    inputs = [x, *(p for p in layer.module.parameters() if p.requires_grad)]
    ids = torch.zeros(layer.shape[0], dtype=torch.long, device=device)

    def run() -> tuple[torch.Tensor, ...]:
        with use_context(layer.module, ids) if layer.needs_context else nullcontext():
            return torch.autograd.grad(layer.module(x), inputs, grad)

    return run


def count_ops(layer: CostLayer) -> AtenOpCounter:
    """The ATen ops of one training step of ``layer`` (after one step outside the counter, so that lazy
    initialisation does not count)."""
    step = training_step(layer)
    step()
    with AtenOpCounter() as counter:
        step()
    return counter

