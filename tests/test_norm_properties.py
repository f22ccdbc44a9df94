"""Property test of every registered norm (issue 10, item 3 and "Done when").

Every norm in the registry (built-ins, installed plugins and a plugin-style norm registered here with
``source="test"``) on an empty batch, a batch of one, NaN and inf inputs, and float16 / bfloat16 / float64:
the output is correct or the error is a ``ValueError`` that names the problem, and running statistics never
become non-finite. Inputs are (N, C, H, W) maps, (N, T, D) tokens for placement "tokens"; context norms get
context id 0 for every sample.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from robustbench_norm.norms import build_norm, get_norm, list_norms, register_norm, use_context
from robustbench_norm.norms.standard import update_running_

CHANNELS = 32  # ILM's key groups (16 channels) and GroupNorm's default 32 groups fit
SIDE = 4
TEST_NORM = "test_properties_norm"


@register_norm(TEST_NORM, source="test", paper="test plugin")
class CentringNorm(nn.Module):
    """A plugin-style norm: y = x - mean_c, batch means in training (running means updated where finite)."""

    def __init__(self, num_features: int, *, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x - self.running_mean[:, None, None].to(x.dtype)
        if x.shape[0] == 0:
            return x.clone()
        mean = x.mean((0, 2, 3))
        update_running_(self.running_mean, mean, self.momentum)
        return x - mean[:, None, None]


NAMES = [name for name in list_norms() if get_norm(name).source != "test"] + [TEST_NORM]
HALF_TOLERANCE = {torch.float16: 0.05, torch.bfloat16: 0.25}


def _layer(name: str) -> nn.Module:
    kwargs = {"num_groups": 1} if name == "localnorm" else {}
    torch.manual_seed(0)
    return build_norm(name, CHANNELS, **kwargs)


def _input(name: str, batch: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    tokens = get_norm(name).placement == "tokens"
    shape = (batch, SIDE * SIDE, CHANNELS) if tokens else (batch, CHANNELS, SIDE, SIDE)
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5).to(dtype)


def _run(name: str, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    ids = torch.zeros(x.shape[0], dtype=torch.long)
    with use_context(layer, ids) if get_norm(name).needs_context else nullcontext():
        return layer(x)


def _run_or_value_error(name: str, layer: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The output, or None when the layer refused the input with a ValueError naming it (any other
    exception fails the test)."""
    try:
        return _run(name, layer, x)
    except ValueError as error:
        assert str(error), f"{name}: empty ValueError message"
        return None


def _assert_buffers_finite(name: str, layer: nn.Module) -> None:
    for buffer_name, buffer in layer.named_buffers():
        if buffer.is_floating_point():
            assert torch.isfinite(buffer).all(), f"{name}: buffer {buffer_name} became non-finite"


def _buffers(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in layer.named_buffers()}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
def test_empty_batch(name: str, training: bool) -> None:
    layer = _layer(name).train(training)
    before = _buffers(layer)
    y = _run_or_value_error(name, layer, _input(name, 0))
    if y is not None:
        assert y.shape == _input(name, 0).shape
    for key, value in layer.named_buffers():
        if value.is_floating_point():
            assert torch.equal(value, before[key]), f"{name}: an empty batch changed {key}"


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
def test_batch_of_one(name: str, training: bool) -> None:
    layer = _layer(name).train(training)
    x = _input(name, 1)
    y = _run_or_value_error(name, layer, x)
    if y is not None:
        assert y.shape == x.shape and torch.isfinite(y).all()
    _assert_buffers_finite(name, layer)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("name", NAMES)
def test_nan_and_inf_inputs_never_reach_the_running_statistics(name: str, bad: float) -> None:
    """A training batch with a bad value: later evaluations on clean data stay finite, and a batch-
    independent norm keeps the clean samples' outputs."""
    layer = _layer(name).train()
    x = _input(name, 4)
    x[0].view(-1)[3] = bad
    y = _run_or_value_error(name, layer, x)
    _assert_buffers_finite(name, layer)
    clean = _input(name, 4, seed=1)
    assert torch.isfinite(_run(name, layer.eval(), clean)).all()
    if y is not None and get_norm(name).batch_independent:
        expected = _run(name, layer.train(), x[1:])
        torch.testing.assert_close(y[1:], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
def test_output_may_be_modified_in_place(name: str, training: bool) -> None:
    """A net may apply ``ReLU(inplace=True)`` to a norm's output and still backpropagate through it."""
    layer = _layer(name).train(training)
    x = _input(name, 4).requires_grad_(True)
    y = _run(name, layer, x)
    torch.relu_(y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
def test_dtypes(name: str, training: bool, dtype: torch.dtype) -> None:
    """The layer and its input in ``dtype`` agree with the same layer in float64 (float32 for float64)."""
    layer = _layer(name).train(training)
    reference_dtype = torch.float32 if dtype == torch.float64 else torch.float64
    reference = copy.deepcopy(layer).to(reference_dtype)
    x = _input(name, 4)
    y = _run_or_value_error(name, layer.to(dtype), x.to(dtype))
    _assert_buffers_finite(name, layer)
    if y is None:
        return
    assert y.dtype == dtype and y.shape == x.shape
    expected = _run(name, reference, x.to(reference_dtype)).double()
    tolerance = HALF_TOLERANCE.get(dtype, 1e-4)
    torch.testing.assert_close(y.double(), expected, rtol=tolerance, atol=tolerance)
