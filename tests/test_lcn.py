"""Local Context Normalization against an independent float64 loop over pixels and windows."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustbench_norm.norms.lcn as lcn_module
from robustbench_norm.norms import build_norm, get_norm
from robustbench_norm.norms.lcn import LocalContextNorm


def loop_lcn(
    x: torch.Tensor,
    channels_per_group: int,
    window: tuple[int, int],
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The definition, pixel by pixel in float64 Python: full-size window min(p, H) x min(q, W) starting at
    clamp(r - (P - 1) // 2, 0, H - P) (likewise for columns), over the channels of the pixel's group."""
    values = x.double().tolist()
    batch, channels, height, width = x.shape
    rows, cols = min(window[0], height), min(window[1], width)
    gamma = [1.0] * channels if weight is None else weight.double().tolist()
    beta = [0.0] * channels if bias is None else bias.double().tolist()
    out = [[[[0.0] * width for _ in range(height)] for _ in range(channels)] for _ in range(batch)]
    for n in range(batch):
        for c in range(channels):
            first = c - c % channels_per_group
            for r in range(height):
                r0 = min(max(r - (rows - 1) // 2, 0), height - rows)
                for s in range(width):
                    s0 = min(max(s - (cols - 1) // 2, 0), width - cols)
                    block = [
                        values[n][k][i][j]
                        for k in range(first, first + channels_per_group)
                        for i in range(r0, r0 + rows)
                        for j in range(s0, s0 + cols)
                    ]
                    mean = sum(block) / len(block)
                    var = sum((v - mean) ** 2 for v in block) / len(block)
                    normalized = (values[n][c][r][s] - mean) / math.sqrt(var + eps)
                    out[n][c][r][s] = normalized * gamma[c] + beta[c]
    return torch.tensor(out, dtype=torch.float64)


def _torch_loop_lcn(x, channels_per_group, window, eps, weight, bias):
    """The same definition with torch ops per output pixel, so that autograd differentiates it."""
    batch, channels, height, width = x.shape
    rows, cols = min(window[0], height), min(window[1], width)
    pixels = []
    for r in range(height):
        r0 = min(max(r - (rows - 1) // 2, 0), height - rows)
        for s in range(width):
            s0 = min(max(s - (cols - 1) // 2, 0), width - cols)
            block = x[:, :, r0 : r0 + rows, s0 : s0 + cols].reshape(batch, channels // channels_per_group, -1)
            mean = block.mean(2)
            var = ((block - mean[..., None]) ** 2).mean(2)
            mean, var = mean.repeat_interleave(channels_per_group, 1), var.repeat_interleave(channels_per_group, 1)
            pixels.append((x[:, :, r, s] - mean) / torch.sqrt(var + eps) * weight + bias)
    return torch.stack(pixels, -1).view(batch, channels, height, width)


def _randomized(layer: LocalContextNorm, seed: int = 1) -> LocalContextNorm:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator, dtype=layer.bias.dtype))
    return layer


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------------------------------------------
# The definition
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "window",
    [(1, 1), (3, 3), (5, 7), (2, 4), (4, 6), (5, 9), (3, 100), (100, 2), (6, 1), (1, 5)],
)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_matches_loop_reference_small_map(window, mode):
    x = _randn(2, 4, 5, 6)
    layer = _randomized(LocalContextNorm(4, channels_per_group=2, window_size=window).double())
    layer.train(mode == "train")
    expected = loop_lcn(x, 2, window, 1e-5, layer.weight.detach(), layer.bias.detach())
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("window, channels_per_group",
                         [((5, 7), 2), ((3, 3), 1), ((8, 4), 4), ((17, 2), 2), ((9, 11), 2), ((12, 20), 1)])
def test_matches_loop_reference_17x23_map(window, channels_per_group):
    x = _randn(1, 4, 17, 23, seed=2)
    layer = _randomized(LocalContextNorm(4, channels_per_group=channels_per_group, window_size=window).double())
    expected = loop_lcn(x, channels_per_group, window, 1e-5, layer.weight.detach(), layer.bias.detach())
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("window", [(3, 3), (1, 1), (2, 4), (5, 9)])
def test_gradcheck_float64(window):
    layer = _randomized(LocalContextNorm(4, channels_per_group=2, window_size=window).double())
    x = _randn(2, 4, 5, 6).requires_grad_(True)
    params = (layer.weight, layer.bias)
    assert torch.autograd.gradcheck(
        lambda inp, w, b: torch.func.functional_call(layer, {"weight": w, "bias": b}, (inp,)), (x, *params)
    )


@pytest.mark.parametrize("shape, window", [((7, 8), (3, 4)), ((13, 14), (9, 11)), ((13, 14), (10, 2))])
def test_gradient_of_loop_definition_through_every_window_position(shape, window):
    """Backward against autograd through the loop definition, on maps with border and interior windows
    (windows of more than 8 pixels along an axis take running sums in the C kernels)."""
    x = _randn(1, 2, *shape, seed=3).requires_grad_(True)
    layer = _randomized(LocalContextNorm(2, channels_per_group=2, window_size=window).double())
    grad = _randn(1, 2, *shape, seed=4)
    (expected,) = torch.autograd.grad(_torch_loop_lcn(x, 2, window, 1e-5, layer.weight, layer.bias), x, grad)
    (actual,) = torch.autograd.grad(layer(x), x, grad)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------------------
# Reductions to the global normalizations (paper, section 3.1)
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_window_covering_the_map_is_groupnorm(dtype):
    x = _randn(3, 8, 6, 7, dtype=dtype)
    layer = _randomized(LocalContextNorm(8, channels_per_group=2, window_size=(6, 50)).to(dtype))
    expected = F.group_norm(x, 4, layer.weight, layer.bias, 1e-5)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=tol)


def test_one_channel_per_group_full_window_is_instancenorm():
    x = _randn(2, 3, 5, 4)
    layer = _randomized(LocalContextNorm(3, channels_per_group=1, window_size=5))
    expected = F.instance_norm(x, weight=layer.weight.double(), bias=layer.bias.double(), eps=1e-5)
    torch.testing.assert_close(layer.double()(x), expected, rtol=0, atol=1e-12)


def test_all_channels_in_one_group_full_window_is_layernorm():
    x = _randn(2, 6, 4, 5)
    layer = _randomized(LocalContextNorm(6, channels_per_group=6, window_size=(4, 5))).double()
    expected = F.group_norm(x, 1, layer.weight, layer.bias, 1e-5)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_window_over_all_rows_only_is_local_in_columns():
    """p >= H alone: every window spans all rows (one statistic per column window), not a GroupNorm."""
    x = _randn(1, 2, 4, 9, seed=5)
    layer = LocalContextNorm(2, channels_per_group=2, window_size=(10, 3)).double()
    torch.testing.assert_close(layer(x), loop_lcn(x, 2, (10, 3), 1e-5), rtol=0, atol=1e-9)
    assert not torch.allclose(layer(x), F.group_norm(x, 1, eps=1e-5))


# ------------------------------------------------------------------------------------------------------
# Numerics of float32 input far from zero
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("window", [(1, 1), (1, 2), (2, 1), (2, 2), (3, 3), (5, 7), (17, 23)])
def test_float32_with_offset_matches_float64_loop(window):
    x = _randn(1, 4, 17, 23, seed=6, dtype=torch.float32) + 100.0
    layer = LocalContextNorm(4, channels_per_group=2, window_size=window)
    error = (layer(x).double() - loop_lcn(x.double(), 2, window, 1e-5)).abs().max().item()
    assert error <= 1e-4


@pytest.mark.parametrize("window", [(1, 1), (1, 2), (2, 1), (2, 2), (3, 3), (1, 6), (6, 1), (9, 9), (31, 31), (80, 1)])
def test_float32_with_offset_on_a_larger_map_matches_float64(window):
    """float64 runs of the layer are checked against the loop above; here they are the reference."""
    x = _randn(2, 4, 80, 80, seed=7, dtype=torch.float32) + 100.0
    layer = LocalContextNorm(4, channels_per_group=2, window_size=window)
    error = (layer(x).double() - layer.double()(x.double())).abs().max().item()
    assert error <= 1e-4


# ------------------------------------------------------------------------------------------------------
# Properties of the implementation
# ------------------------------------------------------------------------------------------------------
def test_batch_independent():
    x = _randn(4, 4, 6, 5)
    layer = LocalContextNorm(4, channels_per_group=2, window_size=3).double()
    alone = layer(x[1:2])
    other = torch.cat([_randn(1, 4, 6, 5, seed=9) * 10, x[1:2], _randn(2, 4, 6, 5, seed=10) + 5])
    torch.testing.assert_close(layer(other)[1:2], alone, rtol=0, atol=1e-12)
    assert get_norm("lcn").batch_independent


def test_batch_is_processed_whole_and_samples_agree_with_single_runs():
    """No batch chunking: forward and backward of a batch equal those of its samples one by one."""
    x = _randn(5, 4, 9, 8).requires_grad_(True)
    layer = _randomized(LocalContextNorm(4, channels_per_group=2, window_size=(4, 3)).double())
    grad = _randn(5, 4, 9, 8, seed=11)
    whole = torch.autograd.grad(layer(x), (x, layer.weight, layer.bias), grad)
    singles = [torch.autograd.grad(layer(x[i : i + 1]), (x, layer.weight, layer.bias), grad[i : i + 1])
               for i in range(5)]
    torch.testing.assert_close(whole[0], sum(s[0] for s in singles), rtol=0, atol=1e-12)
    for i in (1, 2):
        torch.testing.assert_close(whole[i], sum(s[i] for s in singles), rtol=0, atol=1e-11)


def test_training_after_inference_mode_evaluation():
    """Issue 10 item 10: no tensors are kept across calls, so an evaluation under ``torch.inference_mode``
    (what ``predict_logits`` uses) cannot leave inference tensors behind for a later training step."""
    evaluated = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), LocalContextNorm(8, window_size=3))
    with torch.inference_mode():
        evaluated.eval()(torch.randn(4, 3, 12, 12))
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), LocalContextNorm(8, window_size=3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(4, 3, 12, 12)).square().mean()
    loss.backward()
    optimizer.step()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert not any(isinstance(v, type) and v.__name__ == "_Workspace" for v in vars(lcn_module).values())


def test_input_is_not_modified_and_layouts_agree():
    x = _randn(2, 4, 7, 6)
    kept = x.clone()
    layer = _randomized(LocalContextNorm(4, channels_per_group=2, window_size=3).double())
    y = layer(x)
    assert torch.equal(x, kept)
    torch.testing.assert_close(layer(x.to(memory_format=torch.channels_last)), y, rtol=0, atol=1e-12)


def test_without_affine():
    x = _randn(2, 4, 5, 6)
    plain = LocalContextNorm(4, window_size=3, affine=False).double()
    assert plain.weight is None and plain.bias is None and not list(plain.parameters())
    torch.testing.assert_close(plain(x), loop_lcn(x, 2, (3, 3), 1e-5), rtol=0, atol=1e-9)
    assert torch.autograd.gradcheck(plain, (x[:1, :, :4, :5].clone().requires_grad_(True),))


def test_state_dict_round_trip_and_dtype_move():
    layer = _randomized(LocalContextNorm(4, channels_per_group=2, window_size=(3, 5)))
    assert set(layer.state_dict()) == {"weight", "bias"}
    assert layer.weight.shape == layer.bias.shape == (4,)
    copy = LocalContextNorm(4, channels_per_group=2, window_size=(3, 5))
    copy.load_state_dict(layer.state_dict())
    x = _randn(2, 4, 6, 7, dtype=torch.float32)
    torch.testing.assert_close(copy(x), layer(x))
    layer64 = layer.to(torch.float64)
    assert layer64.weight.dtype == torch.float64
    expected = loop_lcn(x.double(), 2, (3, 5), 1e-5, layer64.weight.detach(), layer64.bias.detach())
    torch.testing.assert_close(layer64(x.double()), expected, rtol=0, atol=1e-9)


def test_default_window_is_the_papers_fraction_of_each_map_and_repr():
    layer = LocalContextNorm(8)
    assert layer.channels_per_group == 2 and layer.window_size is None and layer.eps == 1e-5
    assert "window_fraction=0.567" in repr(layer) and "channels_per_group=2" in repr(layer)
    # section 4.3: 127 x 127 on 224-pixel images; scaled to each map, odd, local on every map larger than 2
    assert layer.window_for(224, 224) == (127, 127)
    assert [layer.window_for(s, s)[0] for s in (28, 14, 7, 3)] == [15, 7, 3, 1]
    assert all(layer.window_for(s, s)[0] < s for s in range(3, 300))
    assert LocalContextNorm(8, window_size=[31, 15]).window_size == (31, 15)  # JSON lists from --norm-kwargs
    assert "window_size=(31, 15)" in repr(LocalContextNorm(8, window_size=[31, 15]))


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, True, "0.5"])
def test_bad_window_fraction_names_the_value(fraction):
    with pytest.raises(ValueError, match="window_fraction"):
        LocalContextNorm(8, window_fraction=fraction)


def test_interleaved_layers_of_other_shapes_do_not_disturb_each_other():
    """Forward of one layer, forward and backward of another, then the first one's backward."""
    x, z = _randn(3, 4, 9, 8).requires_grad_(True), _randn(2, 6, 5, 7, seed=13).requires_grad_(True)
    first = _randomized(LocalContextNorm(4, channels_per_group=2, window_size=3).double())
    second = _randomized(LocalContextNorm(6, channels_per_group=3, window_size=(2, 4)).double(), seed=2)
    grad_x, grad_z = _randn(3, 4, 9, 8, seed=14), _randn(2, 6, 5, 7, seed=15)
    alone = torch.autograd.grad(first(x), x, grad_x)[0]
    y_first, y_second = first(x), second(z)
    expected_second = loop_lcn(z, 3, (2, 4), 1e-5, second.weight.detach(), second.bias.detach())
    torch.testing.assert_close(y_second, expected_second)
    torch.autograd.grad(y_second, z, grad_z)
    torch.testing.assert_close(torch.autograd.grad(y_first, x, grad_x)[0], alone, rtol=0, atol=1e-12)
    torch.testing.assert_close(y_first, loop_lcn(x, 2, (3, 3), 1e-5, first.weight.detach(), first.bias.detach()))


def test_half_precision_input_is_computed_in_float32():
    x = _randn(2, 4, 6, 7, dtype=torch.float32).to(torch.bfloat16)
    layer = _randomized(LocalContextNorm(4, channels_per_group=2, window_size=3))
    y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x.float()).to(torch.bfloat16).float(), rtol=0, atol=0)


def test_empty_batch():
    layer = LocalContextNorm(4, window_size=3)
    x = torch.zeros(0, 4, 5, 5, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x = _randn(3, 8, 20, 24, dtype=torch.float32)
    layer = _randomized(LocalContextNorm(8, channels_per_group=2, window_size=(5, 7)))
    grad = _randn(3, 8, 20, 24, seed=12, dtype=torch.float32)
    cpu = torch.autograd.grad(layer(x.requires_grad_(True)), x, grad)[0]
    layer_cuda, x_cuda = copy.deepcopy(layer).cuda(), x.detach().cuda().requires_grad_(True)
    y_cuda = layer_cuda(x_cuda)  # (.cuda() moves in place: the CPU layer must stay a separate module)
    torch.testing.assert_close(y_cuda.cpu(), layer(x.detach()), rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.autograd.grad(y_cuda, x_cuda, grad.cuda())[0].cpu(), cpu, rtol=0, atol=1e-3)


# ------------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, named, valid",
    [
        ({"channels_per_group": 3}, "channels_per_group=3", "valid: [1, 2, 4, 8]"),
        ({"channels_per_group": 0}, "channels_per_group=0", "valid: [1, 2, 4, 8]"),
        ({"window_size": 0}, "window_size=0", "positive int"),
        ({"window_size": -3}, "window_size=-3", "positive int"),
        ({"window_size": (3, 0)}, "window_size=(3, 0)", "positive int"),
        ({"window_size": 2.5}, "window_size=2.5", "positive int"),
        ({"window_size": (3,)}, "window_size=(3,)", "pair (p, q)"),
        ({"window_size": "7"}, "window_size='7'", "positive int"),
        ({"window_size": True}, "window_size=True", "positive int"),
        ({"eps": 0.0}, "0.0", "positive"),
        ({"affine": 1}, "affine=1", "True or False"),
    ],
)
def test_bad_kwargs_raise_value_error_naming_the_value(kwargs, named, valid):
    with pytest.raises(ValueError) as info:
        LocalContextNorm(8, **kwargs)
    assert named in str(info.value) and valid in str(info.value)


def test_channels_per_group_error_lists_the_divisors():
    with pytest.raises(ValueError, match=r"valid: \[1, 2, 3, 6\]"):
        LocalContextNorm(6, channels_per_group=4)


@pytest.mark.parametrize("shape", [(2, 4, 5), (2, 3, 5, 5), (2, 4, 0, 5)])
def test_bad_input_raises_value_error(shape):
    with pytest.raises(ValueError, match="LocalContextNorm"):
        LocalContextNorm(4, window_size=3)(torch.zeros(shape))


def test_registry():
    layer = build_norm("lcn", 8, channels_per_group=2, window_size=(3, 5))
    assert isinstance(layer, LocalContextNorm) and layer.window_size == (3, 5)
    assert layer(torch.randn(2, 8, 6, 6)).shape == (2, 8, 6, 6)
    with pytest.raises(ValueError, match="num_groups"):
        build_norm("lcn", 8, num_groups=4)
    spec = get_norm("lcn")
    assert spec.placement == "all" and not spec.needs_context and "Ortiz" in spec.paper
