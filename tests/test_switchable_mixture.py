"""Tests of Switchable Norm (norms/switchable.py) and Mixture Norm (norms/mixture.py) against float64 loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustbench_norm.norms import build_norm, get_norm
from robustbench_norm.norms.mixture import (
    MIN_PRIOR,
    GaussianMixture,
    MixtureNorm,
    fit_mixture,
    mixture_normalize,
    posteriors,
    weighted_moments,
)
from robustbench_norm.norms.switchable import SwitchNorm
from tests.reference_loops import (
    loop_fit_mixture,
    loop_mixture_moments,
    loop_mixturenorm,
    loop_switchnorm,
)

EPS = 1e-5
F64 = torch.float64


def _input(shape=(4, 4, 3, 3), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=F64) * 1.5 + 0.3


def _bimodal(shape=(4, 2, 3, 3), seed=0) -> torch.Tensor:
    """Two well separated modes per channel, so EM has something to find."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=F64) * 0.5
    return x + 3.0 * (torch.rand(shape, generator=g, dtype=F64) < 0.4)


def _randomize(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight.copy_(torch.rand(module.weight.shape, generator=g, dtype=F64) + 0.5)
        module.bias.copy_(torch.randn(module.bias.shape, generator=g, dtype=F64))
    return module


def _switchnorm(channels=4) -> SwitchNorm:
    layer = _randomize(SwitchNorm(channels).double())
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([0.3, -0.5, 1.1]))
        layer.var_weight.copy_(torch.tensor([-0.2, 0.9, 0.1]))
    return layer


def _params(layer):
    return [p.detach() for p in (layer.mean_weight, layer.var_weight, layer.weight, layer.bias)]


def _gradcheck_module(module, x) -> bool:
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def f(inp, *ps):
        return torch.func.functional_call(module, dict(zip(names, ps)), (inp,))

    return torch.autograd.gradcheck(f, (x.requires_grad_(), *params))


# ----------------------------------------------------------------------------------------------------------
# Switchable Normalization
# ----------------------------------------------------------------------------------------------------------
def test_switchnorm_registry_spec():
    spec = get_norm("switchnorm")
    assert not spec.batch_independent and not spec.batch_stats_at_test and spec.eval_modes == ("standard",)


def test_switchnorm_train_and_running_stats_match_loop():
    layer = _switchnorm()
    with torch.no_grad():
        layer.running_mean.fill_(0.2)
        layer.running_var.fill_(1.3)
    x = _input()
    expected, bn_mean, bn_var = loop_switchnorm(x, *_params(layer), EPS)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.running_mean, torch.tensor([0.9 * 0.2 + 0.1 * m for m in bn_mean], dtype=F64))
    torch.testing.assert_close(layer.running_var, torch.tensor([0.9 * 1.3 + 0.1 * v for v in bn_var], dtype=F64))


def test_switchnorm_eval_matches_loop_with_running_stats():
    layer = _switchnorm().eval()
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.1, -0.4, 0.7, 0.0]))
        layer.running_var.copy_(torch.tensor([0.5, 2.0, 1.0, 3.0]))
    x = _input()
    running = (layer.running_mean.tolist(), layer.running_var.tolist())
    expected, _, _ = loop_switchnorm(x, *_params(layer), EPS, running=running)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    assert layer.running_mean.tolist() == running[0]


def test_switchnorm_one_by_one_spatial_is_finite():
    layer = SwitchNorm(8)
    x = torch.randn(4, 8, 1, 1, requires_grad=True)
    y = layer(x)
    y.square().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    assert torch.isfinite(layer.running_var).all()
    assert torch.isfinite(layer.eval()(x)).all()


@pytest.mark.parametrize("training", [True, False])
def test_switchnorm_gradcheck(training):
    layer = _switchnorm().train(training)
    assert _gradcheck_module(layer, _input())


# ----------------------------------------------------------------------------------------------------------
# Mixture Normalization
# ----------------------------------------------------------------------------------------------------------
def test_mixturenorm_registry_spec():
    spec = get_norm("mixturenorm")
    assert not spec.batch_independent and not spec.batch_stats_at_test
    layer = build_norm("mixturenorm", 4)
    assert (layer.num_components, layer.em_iterations) == (3, 3)


@pytest.mark.parametrize("components, iterations", [(2, 3), (3, 2)])
def test_fit_mixture_matches_loop_em(components, iterations):
    x = _bimodal()
    fitted = fit_mixture(x, components, iterations, EPS)
    prior, mean, var = loop_fit_mixture(x, components, iterations, EPS, MIN_PRIOR)
    torch.testing.assert_close(fitted.prior, torch.tensor(prior, dtype=F64), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fitted.mean, torch.tensor(mean, dtype=F64), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fitted.var, torch.tensor(var, dtype=F64), rtol=1e-9, atol=1e-12)


def test_fit_mixture_separates_two_modes():
    g = torch.Generator().manual_seed(5)
    x = torch.cat([torch.randn(200, generator=g, dtype=F64) * 0.3, torch.randn(100, generator=g, dtype=F64) * 0.3 + 4])
    fitted = fit_mixture(x.reshape(3, 1, 10, 10), 2, 10, EPS)
    torch.testing.assert_close(fitted.mean[0], torch.tensor([0.0, 4.0], dtype=F64), rtol=0, atol=0.15)
    torch.testing.assert_close(fitted.prior[0], torch.tensor([2 / 3, 1 / 3], dtype=F64), rtol=0, atol=0.02)


def test_mixturenorm_train_eval_and_running_buffers_match_loops():
    layer = _randomize(MixtureNorm(2, num_components=2, em_iterations=2).double())
    x = _bimodal()
    prior, mean, var = loop_fit_mixture(x, 2, 2, EPS, MIN_PRIOR)
    norm_mean, norm_var = loop_mixture_moments(x, prior, mean, var)
    w, b = layer.weight.detach(), layer.bias.detach()
    expected = loop_mixturenorm(x, prior, mean, var, norm_mean, norm_var, w, b, EPS)
    start = {name: buf.clone() for name, buf in layer.named_buffers()}
    torch.testing.assert_close(layer(x), expected, rtol=1e-9, atol=1e-9)
    batch = {"running_prior": prior, "running_mean": mean, "running_var": var,
             "running_norm_mean": norm_mean, "running_norm_var": norm_var}
    for name, value in batch.items():
        expected_buffer = 0.9 * start[name] + 0.1 * torch.tensor(value, dtype=F64)
        torch.testing.assert_close(getattr(layer, name), expected_buffer, rtol=1e-9, atol=1e-12)
    layer.eval()
    x_test = _bimodal(seed=4)
    run = [getattr(layer, n).tolist() for n in batch]
    expected_eval = loop_mixturenorm(x_test, *run, w, b, EPS)
    torch.testing.assert_close(layer(x_test), expected_eval, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer(x_test[1:2]), expected_eval[1:2], rtol=1e-12, atol=1e-12)


def test_mixturenorm_one_component_is_batchnorm_in_training():
    layer = _randomize(MixtureNorm(4, num_components=1).double())
    x = _input().requires_grad_()
    y = layer(x)
    x_bn = x.detach().clone().requires_grad_()
    w, b = layer.weight.detach().clone().requires_grad_(), layer.bias.detach().clone().requires_grad_()
    expected = F.batch_norm(x_bn, None, None, w, b, training=True, eps=EPS)
    torch.testing.assert_close(y, expected)
    g = torch.randn_like(y)
    y.backward(g)
    expected.backward(g)
    torch.testing.assert_close(x.grad, x_bn.grad)
    torch.testing.assert_close(layer.weight.grad, w.grad)


def _reference_normalize(inp, weight, bias, mixture, moments):
    """The layer's formula through autograd: posteriors, posterior-weighted moments, mixture standardisation."""
    tau = posteriors(inp, mixture)
    mean, var = weighted_moments(inp, tau)[1:] if moments is None else moments
    scale = (mixture.prior * (var + EPS)).rsqrt().t()[:, None, :, None, None]
    x_hat = (tau * scale * (inp - mean.t()[:, None, :, None, None])).sum(0)
    return x_hat * weight[:, None, None] + bias[:, None, None]


@pytest.mark.parametrize("training", [True, False])
def test_mixture_normalize_matches_autograd_of_the_formula(training):
    """The written-out backward against autograd through the formula, for a fixed mixture."""
    x = _bimodal((4, 2, 3, 3))
    mixture = fit_mixture(x, 3, 2, EPS)
    fixed = (torch.tensor([[0.1, 1.0, 2.9]] * 2, dtype=F64), torch.full((2, 3), 0.4, dtype=F64))
    moments = None if training else fixed
    weight = (torch.rand(2, dtype=F64) + 0.5).requires_grad_()
    bias = torch.randn(2, dtype=F64).requires_grad_()
    grad = torch.randn(4, 2, 3, 3, dtype=F64)
    inputs = (x.clone().requires_grad_(), weight, bias)
    y = mixture_normalize(*inputs, mixture, moments, EPS)[0]
    reference_inputs = tuple(t.detach().clone().requires_grad_() for t in inputs)
    expected = _reference_normalize(*reference_inputs, mixture, moments)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    ours = torch.autograd.grad(y, inputs, grad)
    for mine, theirs in zip(ours, torch.autograd.grad(expected, reference_inputs, grad)):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-10)


def test_mixture_normalisation_gradcheck_with_fixed_mixture():
    """The train-mode map x -> y for a fixed (stop-gradient) mixture, parameters included."""
    x = _bimodal((4, 2, 2, 2))
    mixture = fit_mixture(x, 3, 2, EPS)
    weight = (torch.rand(2, dtype=F64) + 0.5).requires_grad_()
    bias = torch.randn(2, dtype=F64).requires_grad_()

    def f(inp, w, b):
        return mixture_normalize(inp, w, b, mixture, None, EPS)[0]

    assert torch.autograd.gradcheck(f, (x.requires_grad_(), weight, bias))


def test_mixturenorm_layer_gradcheck_in_eval():
    layer = _randomize(MixtureNorm(2, num_components=3).double())
    layer(_bimodal(seed=2))  # running estimates from one batch
    assert _gradcheck_module(layer.eval(), _bimodal((4, 2, 2, 2), seed=3))


def test_mixturenorm_gradient_stops_at_the_mixture_parameters():
    layer = MixtureNorm(2, num_components=2).double()
    x = _bimodal().requires_grad_()
    layer(x).sum().backward()
    mixture = fit_mixture(x.detach(), 2, 3, EPS)
    xf = x.detach().clone().requires_grad_()
    _reference_normalize(xf, layer.weight.detach(), layer.bias.detach(), mixture, None).sum().backward()
    torch.testing.assert_close(x.grad, xf.grad)


def test_mixturenorm_dead_channel_and_empty_component_are_finite():
    layer = MixtureNorm(2, num_components=3)
    x = torch.zeros(4, 2, 3, 3)
    x[:, 1] = torch.randn(4, 3, 3)
    x.requires_grad_()
    y = layer(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(b).all() for b in layer.buffers())
    assert torch.isfinite(layer.eval()(x)).all()


def test_mixture_is_named_tuple_of_channel_by_component():
    mixture = fit_mixture(_input(), 3, 1, EPS)
    assert isinstance(mixture, GaussianMixture) and mixture.prior.shape == (4, 3)
    torch.testing.assert_close(mixture.prior.sum(1), torch.ones(4, dtype=F64))


# ----------------------------------------------------------------------------------------------------------
# Both
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["switchnorm", "mixturenorm"])
def test_state_dict_round_trip_and_float64(name):
    source = _randomize(build_norm(name, 4).double())
    source(_input())  # moves the running estimates
    target = build_norm(name, 4).to(torch.float64)
    target.load_state_dict(source.state_dict())
    x = _input(seed=3)
    for training in (False, True):
        source.train(training)
        target.train(training)
        y = target(x)
        assert y.dtype == torch.float64
        torch.testing.assert_close(y, source(x), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["switchnorm", "mixturenorm"])
def test_cuda_matches_cpu(name):
    module = _randomize(build_norm(name, 4).double()).float()
    x = _input().float()
    for training in (True, False):
        module.train(training)
        cpu = module(x)
        cuda = module.cuda()(x.cuda()).cpu()
        module.cpu()
        torch.testing.assert_close(cuda, cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name, kwargs, pattern",
    [
        ("switchnorm", {"eps": 0.0}, "eps.*0.0"),
        ("switchnorm", {"momentum": 1.5}, r"momentum.*\[0, 1\].*1.5"),
        ("mixturenorm", {"num_components": 0}, r"num_components.*>= 1.*0"),
        ("mixturenorm", {"num_components": 2.0}, r"num_components.*2.0"),
        ("mixturenorm", {"em_iterations": 0}, r"em_iterations.*0"),
        ("mixturenorm", {"momentum": -0.1}, r"momentum.*-0.1"),
        ("mixturenorm", {"eps": -1.0}, r"eps.*-1.0"),
    ],
)
def test_bad_kwargs_name_value(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_norm(name, 4, **kwargs)


@pytest.mark.parametrize("name", ["switchnorm", "mixturenorm"])
def test_bad_inputs(name):
    module = build_norm(name, 4)
    with pytest.raises(ValueError, match="4-D"):
        module(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="C=4"):
        module(torch.randn(2, 3, 2, 2))
