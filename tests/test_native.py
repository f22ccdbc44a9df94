"""The fused C kernels (``robustbench_norm/norms/native.py``) compute what the layers' ATen paths compute.

The reference tests of each layer (float64 loops, gradcheck, goldens) run on whichever path the machine
has; here both paths run on the same inputs, with an offset of +100 (where cancellation would show), in
float64 and float32, so the ATen path (the one a GPU runs) stays checked on a machine with a compiler.
"""

from __future__ import annotations

import pytest
import torch

from robustbench_norm.norms import build_norm, native
from robustbench_norm.norms.localnorm import localnorm_evaluation
from robustbench_norm.norms.standard import update_running_

LAYERS = [
    ("positionalnorm", {}),
    ("lcn", {"window_size": 1}),
    ("lcn", {"window_size": 3}),
    ("lcn", {"window_size": (4, 7)}),
    ("lcn", {}),
    ("lcn", {"window_size": 100}),
    ("lcn", {"channels_per_group": 8, "window_size": 5}),
    ("lcn", {"affine": False, "window_size": 5}),
    ("ilm_gn", {}),
    ("ilm_in", {}),
    ("ilm_ln", {}),
    ("switchnorm", {}),
    ("localnorm", {}),
    ("mixturenorm", {}),
    ("mixturenorm", {"num_components": 1}),
]


def _step(name: str, kwargs: dict, x: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    """Output, input gradient and parameter gradients of one training step of a seeded layer."""
    torch.manual_seed(0)
    layer = build_norm(name, 16, **kwargs)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(torch.rand_like(parameter) - 0.5)
    layer.to(x.dtype)
    x = x.clone().requires_grad_()
    y = layer(x)
    y.backward(grad)
    return [y.detach(), x.grad, *(p.grad for p in layer.parameters())]


@pytest.fixture
def native_kernels():
    if native.kernels(torch.zeros(1)) is None:
        pytest.skip("the C kernels are not available here (no C compiler)")


@pytest.fixture
def offset_input():
    """(x, dL/dy) in float64, x with an offset of +100."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8, 16, 11, 9, generator=generator, dtype=torch.float64) * 2 + 100
    return x, torch.randn(x.shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("name, kwargs", LAYERS)
def test_float64_kernels_agree_with_the_aten_path(name, kwargs, offset_input, monkeypatch, native_kernels):
    fused = _step(name, kwargs, *offset_input)
    monkeypatch.setenv(native.DISABLE_VARIABLE, "0")
    reference = _step(name, kwargs, *offset_input)
    assert len(fused) == len(reference)
    for got, want in zip(fused, reference):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8 * want.abs().max().item())


@pytest.mark.parametrize("name, kwargs", LAYERS)
def test_float32_kernels_are_as_accurate_as_the_aten_path(name, kwargs, offset_input, monkeypatch, native_kernels):
    """Error of each float32 result against float64 (output, input and parameter gradients): the kernels' is
    at most twice the ATen path's, or within 1e-6 of the largest value."""
    exact = _step(name, kwargs, *offset_input)
    single = [t.float() for t in offset_input]
    fused = _step(name, kwargs, *single)
    monkeypatch.setenv(native.DISABLE_VARIABLE, "0")
    reference = _step(name, kwargs, *single)
    for got, want, truth in zip(fused, reference, exact):
        error, reference_error = ((t.double() - truth).abs().max().item() for t in (got, want))
        assert error <= max(2 * reference_error, 1e-6 * truth.abs().max().item())


def _eval_steps(name: str, x: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    """Three training steps (running estimates updated), then the eval output and gradients, of a seeded layer;
    the buffers at the end included."""
    torch.manual_seed(0)
    layer = build_norm(name, 16).to(x.dtype)
    for shift in (0.0, 1.0, -2.0):
        layer(x + shift)
    layer.eval()
    x = x.clone().requires_grad_()
    y = layer(x)
    y.backward(grad)
    return [y.detach(), x.grad, *(p.grad for p in layer.parameters()), *layer.buffers()]


@pytest.mark.parametrize("name", ["switchnorm", "localnorm"])
def test_running_estimates_and_eval_mode_agree_with_the_aten_path(name, offset_input, monkeypatch, native_kernels):
    fused = _eval_steps(name, *offset_input)
    monkeypatch.setenv(native.DISABLE_VARIABLE, "0")
    reference = _eval_steps(name, *offset_input)
    for got, want in zip(fused, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8 * want.abs().max().item())


@pytest.mark.parametrize("statistics_group_size, affine_group", [(1, 0), (3, 2)])
def test_localnorm_test_time_groups_agree_with_the_aten_path(statistics_group_size, affine_group, offset_input,
                                                             monkeypatch, native_kernels):
    def outputs() -> list[torch.Tensor]:
        torch.manual_seed(0)
        layer = build_norm("localnorm", 16).double().eval()
        with torch.no_grad():
            layer.weight.add_(torch.rand_like(layer.weight))
        x = offset_input[0].clone().requires_grad_()
        with localnorm_evaluation(layer, statistics_group_size=statistics_group_size, affine_group=affine_group):
            y = layer(x)
        y.backward(offset_input[1])
        return [y.detach(), x.grad, layer.weight.grad, layer.bias.grad]

    fused = outputs()
    monkeypatch.setenv(native.DISABLE_VARIABLE, "0")
    for got, want in zip(fused, outputs(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8 * want.abs().max().item())


GRADCHECK_CASES = [
    (name, kwargs, mode)
    for name, kwargs in [("positionalnorm", {}), ("lcn", {"window_size": 3}), ("ilm_gn", {}), ("switchnorm", {}),
                         ("localnorm", {})]
    for mode in ("train", "eval")
] + [("mixturenorm", {}, "eval")]  # not in training: its EM fit is a stop-gradient function of x


@pytest.mark.parametrize("name, kwargs, mode", GRADCHECK_CASES)
def test_kernels_pass_gradcheck(name, kwargs, mode, native_kernels):
    layer = build_norm(name, 16, **kwargs).double().train(mode == "train")
    x = torch.randn(4, 16, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *_: layer(x), (x, *layer.parameters()))


def test_layers_call_the_kernels_only_for_contiguous_float_cpu_input(monkeypatch, native_kernels):
    calls = []
    real = native.call
    monkeypatch.setattr(native, "call", lambda library, name, *args: calls.append(name) or real(library, name, *args))
    layer = build_norm("positionalnorm", 16)
    layer(torch.randn(2, 16, 4, 4))
    assert calls == ["positional_norm_forward"]
    layer(torch.randn(2, 16, 4, 4).to(memory_format=torch.channels_last))  # not contiguous: ATen path
    assert calls == ["positional_norm_forward"]
    monkeypatch.setenv(native.DISABLE_VARIABLE, "0")
    layer(torch.randn(2, 16, 4, 4))
    assert calls == ["positional_norm_forward"]


def test_a_failed_build_warns_and_leaves_the_aten_path(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    native._library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not be built"):
            assert native.kernels(torch.zeros(1)) is None
        x = torch.randn(2, 16, 4, 4)
        torch.testing.assert_close(build_norm("positionalnorm", 16)(x), torch.nn.functional.layer_norm(
            x.permute(0, 2, 3, 1), (16,)).permute(0, 3, 1, 2))
    finally:
        native._library.cache_clear()


def test_call_rejects_arguments_that_are_not_tensors_ints_or_floats(native_kernels):
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="got bool"):
        native.call(native.kernels(x), "row_moments", x.dtype, x, x.new_empty(2), x.new_empty(2), True, 3)


@pytest.mark.parametrize("momentum", [0.1, 0.5, 0.9])
def test_running_update_agrees_with_lerp_and_skips_non_finite_batch_values(momentum, monkeypatch, native_kernels):
    batch = torch.tensor([1.0, float("nan"), float("inf"), -3.0, float("-inf")])

    def updated() -> torch.Tensor:
        running = torch.tensor([0.5, 2.0, -1.0, 4.0, 7.0])
        update_running_(running, batch, momentum)
        return running

    fused = updated()
    assert fused[[1, 2, 4]].tolist() == [2.0, -1.0, 7.0]
    monkeypatch.setenv(native.DISABLE_VARIABLE, "0")
    torch.testing.assert_close(fused, updated(), rtol=1e-6, atol=0)
