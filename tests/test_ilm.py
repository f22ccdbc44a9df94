"""ILM Norm (ilm_gn, ilm_in, ilm_ln) against an independent float64 loop evaluation (reference/layers.md §4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from robustbench_norm.norms import build_norm
from robustbench_norm.norms.ilm import ILMGroupNorm, ILMInstanceNorm, ILMLayerNorm

EPS = 1e-5


def _randomised(layer: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return layer


def _mean_and_unbiased_var(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)


def _matvec(matrix: list[list[float]], vector: list[float]) -> list[float]:
    return [sum(row[j] * vector[j] for j in range(len(vector))) for row in matrix]


def _reference_ilm(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Key stats -> shared encoder -> sigmoid / tanh decoders -> offsets -> unbiased group standardisation."""
    n_samples, channels, height, width = x.shape
    key, groups = layer.key_group_size, layer.num_groups
    per_group = channels // groups
    w1, w_gamma, w_beta = (m.weight.tolist() for m in (layer.encoder, layer.weight_decoder, layer.bias_decoder))
    offsets_w, offsets_b = layer.weight.tolist(), layer.bias.tolist()
    values = x.tolist()
    out = torch.empty_like(x)
    for n in range(n_samples):

        def block(first: int, count: int) -> list[float]:
            chosen = range(first, first + count)
            return [values[n][c][h][w] for c in chosen for h in range(height) for w in range(width)]

        stats = [_mean_and_unbiased_var(block(k * key, key)) for k in range(channels // key)]
        e_mean = [max(0.0, v) for v in _matvec(w1, [m for m, _ in stats])]
        e_var = [max(0.0, v) for v in _matvec(w1, [s for _, s in stats])]
        d_gamma = [1 / (1 + math.exp(-v)) for v in _matvec(w_gamma, e_var)]
        d_beta = [math.tanh(v) for v in _matvec(w_beta, e_mean)]
        for g in range(groups):
            mean, var = _mean_and_unbiased_var(block(g * per_group, per_group))
            for c in range(g * per_group, (g + 1) * per_group):
                gamma = d_gamma[c // key] + offsets_w[c]
                beta = d_beta[c // key] + offsets_b[c]
                for h in range(height):
                    for w in range(width):
                        x_hat = (values[n][c][h][w] - mean) / math.sqrt(var + EPS)
                        out[n, c, h, w] = x_hat * gamma + beta
    return out


def _variants() -> list[tuple[str, dict]]:
    return [
        ("ilm_gn", {}),  # num_groups = min(32, 32) = 32
        ("ilm_gn", {"num_groups": 4}),
        ("ilm_in", {}),
        ("ilm_ln", {}),
        ("ilm_gn", {"num_groups": 2, "key_group_size": 4, "reduction": 2}),  # D = 8, M = 4
    ]


@pytest.mark.parametrize("name, kwargs", _variants())
def test_matches_loop_reference(name: str, kwargs: dict) -> None:
    layer = _randomised(build_norm(name, 32, eps=EPS, **kwargs).double(), seed=1)
    x = torch.randn(2, 32, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2 + 1
    torch.testing.assert_close(layer(x), _reference_ilm(layer, x), rtol=1e-11, atol=1e-11)


def test_matches_loop_reference_at_default_initialisation() -> None:
    layer = ILMGroupNorm(48, num_groups=6).double()
    x = torch.randn(2, 48, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _reference_ilm(layer, x), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("name", ["ilm_gn", "ilm_in", "ilm_ln"])
def test_gradcheck(name: str) -> None:
    layer = _randomised(build_norm(name, 32, num_groups=8) if name == "ilm_gn" else build_norm(name, 32), seed=3)
    layer = layer.double()
    x = torch.randn(2, 32, 2, 2, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters()]

    def run(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return functional_call(layer, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params))


@pytest.mark.parametrize(
    "name, kwargs, base",
    [
        ("ilm_gn", {"num_groups": 8}, lambda x, eps: F.group_norm(x, 8, eps=eps)),
        ("ilm_in", {}, lambda x, eps: F.instance_norm(x, eps=eps)),
        ("ilm_ln", {}, lambda x, eps: F.layer_norm(x, x.shape[1:], eps=eps)),
    ],
)
def test_standardisation_equals_unbiased_base_norm(name: str, kwargs: dict, base) -> None:
    """With the auto-encoder silenced (gamma = 1, beta = 0) ILM is its base norm with unbiased variance.

    PyTorch's norms are biased: (x - m) / sqrt(n/(n-1) v_b + eps) = sqrt((n-1)/n) * norm(x, eps (n-1)/n).
    """
    layer = build_norm(name, 32, **kwargs).double()
    with torch.no_grad():
        layer.encoder.weight.zero_()  # E = 0: sigmoid branch 0.5, tanh branch 0
        layer.weight.fill_(0.5)
        layer.bias.zero_()
    x = torch.randn(3, 32, 4, 3, dtype=torch.float64) * 3 - 2
    n = x[0].numel() // layer.num_groups
    expected = math.sqrt((n - 1) / n) * base(x, EPS * (n - 1) / n)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_instance_norm_on_one_by_one_maps_is_finite() -> None:
    layer = _randomised(ILMInstanceNorm(16), seed=4)
    x = torch.randn(3, 16, 1, 1, requires_grad=True)
    y = layer(x)
    assert bool(torch.isfinite(y).all())
    # a single value per group standardises to 0, so the output is beta (tanh branch + offset)
    key_means = x.detach().reshape(3, 1, 16).mean(-1)
    beta = torch.tanh(layer.bias_decoder(torch.relu(layer.encoder(key_means)))) + layer.bias
    torch.testing.assert_close(y.detach()[:, :, 0, 0], beta.detach().expand(3, 16))
    y.sum().backward()
    assert bool(torch.isfinite(x.grad).all())


@pytest.mark.parametrize("name", ["ilm_gn", "ilm_in", "ilm_ln"])
def test_batch_independent_and_same_in_train_and_eval(name: str) -> None:
    layer = _randomised(build_norm(name, 32), seed=5).double()
    x = torch.randn(4, 32, 3, 3, dtype=torch.float64)
    batch = layer(x)
    for i in range(4):
        torch.testing.assert_close(layer(x[i : i + 1]), batch[i : i + 1], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(layer.eval()(x), batch, rtol=0, atol=0)


@pytest.mark.parametrize(
    "channels, reduction, width",
    [(16, 16, 2), (64, 16, 2), (256, 16, 2), (512, 16, 2), (1024, 16, 4), (2048, 16, 8), (64, 2, 2), (128, 2, 4)],
)
def test_encoder_width_rule(channels: int, reduction: int, width: int) -> None:
    layer = ILMLayerNorm(channels, reduction=reduction)
    assert layer.encoder.weight.shape == (width, channels // 16)
    assert layer.weight_decoder.weight.shape == layer.bias_decoder.weight.shape == (channels // 16, width)


def test_parameters_and_initialisation() -> None:
    layer = ILMGroupNorm(64)
    assert layer.num_groups == 32
    assert ILMGroupNorm(16).num_groups == 16
    assert set(dict(layer.named_parameters())) == {
        "encoder.weight", "weight_decoder.weight", "bias_decoder.weight", "weight", "bias"
    }
    assert torch.equal(layer.weight, torch.ones(64)) and torch.equal(layer.bias, torch.zeros(64))
    assert ILMInstanceNorm(32).num_groups == 32 and ILMLayerNorm(32).num_groups == 1


@pytest.mark.parametrize("name", ["ilm_gn", "ilm_in", "ilm_ln"])
def test_channels_not_multiple_of_key_group_raise(name: str) -> None:
    with pytest.raises(ValueError, match=r"num_features=24.*key_group_size=16"):
        build_norm(name, 24)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("ilm_gn", {"num_groups": 5}, r"num_groups=5 .*32.*\[1, 2, 4, 8, 16, 32\]"),
        ("ilm_gn", {"num_groups": 0}, "num_groups.*0"),
        ("ilm_in", {"key_group_size": 0}, "key_group_size.*0"),
        ("ilm_ln", {"reduction": 0}, "reduction.*0"),
        ("ilm_ln", {"eps": -1.0}, "eps.*-1.0"),
        ("ilm_in", {"num_groups": 4}, r"unknown kwarg.*num_groups.*valid kwargs"),
    ],
)
def test_bad_kwargs_raise(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_norm(name, 32, **kwargs)


def test_bad_input_raises() -> None:
    layer = ILMGroupNorm(32)
    with pytest.raises(ValueError, match=r"C=32.*\(2, 16, 4, 4\)"):
        layer(torch.randn(2, 16, 4, 4))
    with pytest.raises(ValueError, match=r"\(2, 32, 4\)"):
        layer(torch.randn(2, 32, 4))


def test_state_dict_round_trip_and_float64() -> None:
    source = _randomised(ILMGroupNorm(32, num_groups=4), seed=6)
    target = ILMGroupNorm(32, num_groups=4)
    target.load_state_dict(source.state_dict())
    x = torch.randn(2, 32, 3, 3)
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
    assert target.to(torch.float64)(x.double()).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["ilm_gn", "ilm_in", "ilm_ln"])
def test_cuda_matches_cpu(name: str) -> None:
    layer = _randomised(build_norm(name, 32), seed=7)
    x = torch.randn(4, 32, 8, 8)
    expected = layer(x)
    torch.testing.assert_close(layer.cuda()(x.cuda()).cpu(), expected, rtol=1e-4, atol=1e-4)
