"""Tests of the standard layers (norms/standard.py) against float64 loop evaluations of their formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_norm.norms import build_norm, get_norm
from robustbench_norm.norms.standard import (
    BatchNorm,
    BatchNormTestStats,
    GroupNorm,
    default_num_groups,
    use_test_batch_stats,
)
from tests.reference_loops import (
    loop_batchnorm_running,
    loop_batchnorm_train,
    loop_channel_moments,
    loop_groupnorm,
    loop_instancenorm,
    loop_layernorm,
    loop_positionalnorm,
)

EPS = 1e-5
ALL = ["batchnorm", "batchnorm_test_stats", "groupnorm", "instancenorm", "layernorm", "positionalnorm"]
INDEPENDENT = ["groupnorm", "instancenorm", "layernorm", "positionalnorm"]


def _input(shape=(4, 8, 3, 3), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 2.0 + 0.5


def _randomize(module: nn.Module, seed: int = 1) -> nn.Module:
    """Scales in [0.5, 1.5), shifts ~ N(0, 1): a wrong affine index cannot hide behind ones and zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.rand if name == "weight" else torch.randn
            p.copy_(noise(p.shape, generator=g, dtype=p.dtype) + (0.5 if name == "weight" else 0.0))
    return module


def _build(name: str, channels: int = 8, **kwargs) -> nn.Module:
    return _randomize(build_norm(name, channels, **kwargs).double())


@pytest.mark.parametrize(
    "name, spec",
    [
        ("bn", (False, False, ("running_stats", "test_batch_stats"))),
        ("batchnorm_test_stats", (True, False, ("test_batch_stats",))),
        ("gn", (False, True, ("standard",))),
        ("in", (False, True, ("standard",))),
        ("ln", (False, True, ("standard",))),
        ("pn", (False, True, ("standard",))),
    ],
)
def test_registry_specs(name, spec):
    s = get_norm(name)
    assert (s.batch_stats_at_test, s.batch_independent, s.eval_modes) == spec
    assert s.paper


@pytest.mark.parametrize(
    "name, loop",
    [
        ("groupnorm", lambda x, m: loop_groupnorm(x, m.num_groups, m.weight.detach(), m.bias.detach(), EPS)),
        ("instancenorm", lambda x, m: loop_instancenorm(x, m.weight.detach(), m.bias.detach(), EPS)),
        ("layernorm", lambda x, m: loop_layernorm(x, m.weight.detach(), m.bias.detach(), EPS)),
        ("positionalnorm", lambda x, m: loop_positionalnorm(x, m.weight.detach(), m.bias.detach(), EPS)),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_batch_independent_layers_match_loops(name, loop, training):
    module = _build(name, num_groups=4) if name == "groupnorm" else _build(name)
    module.train(training)
    x = _input()
    torch.testing.assert_close(module(x), loop(x, module), rtol=1e-10, atol=1e-10)


def test_groupnorm_default_groups():
    assert build_norm("gn", 64).num_groups == 32
    assert build_norm("gn", 16).num_groups == 16
    assert [default_num_groups(c) for c in (1, 8, 32, 96, 48, 24)] == [1, 8, 32, 32, 24, 24]


@pytest.mark.parametrize("name", INDEPENDENT)
def test_batch_independence(name):
    module = _build(name)
    x = _input((5, 8, 3, 3))
    other = _input((5, 8, 3, 3), seed=7)
    alone = module(x[2:3])
    torch.testing.assert_close(module(x)[2:3], alone, rtol=1e-12, atol=1e-12)
    mixed = torch.cat([other[:2], x[2:3], other[3:]])
    torch.testing.assert_close(module(mixed)[2:3], alone, rtol=1e-12, atol=1e-12)


def test_batchnorm_train_eval_and_running_stats_match_loops():
    module = _build("bn")
    module.running_mean.copy_(torch.tensor([0.1 * i for i in range(8)], dtype=torch.float64))
    module.running_var.fill_(1.5)
    start_mean, start_var = module.running_mean.clone(), module.running_var.clone()
    x = _input()
    w, b = module.weight.detach(), module.bias.detach()
    torch.testing.assert_close(module(x), loop_batchnorm_train(x, w, b, EPS), rtol=1e-10, atol=1e-10)
    means, _, unbiased = loop_channel_moments(x)
    expected_mean = [0.9 * r + 0.1 * m for r, m in zip(start_mean.tolist(), means)]
    expected_var = [0.9 * r + 0.1 * v for r, v in zip(start_var.tolist(), unbiased)]
    torch.testing.assert_close(module.running_mean, torch.tensor(expected_mean, dtype=torch.float64))
    torch.testing.assert_close(module.running_var, torch.tensor(expected_var, dtype=torch.float64))
    module.eval()
    expected = loop_batchnorm_running(x, module.running_mean, module.running_var, w, b, EPS)
    torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-10)


def test_test_stats_batchnorm_eval_uses_test_batch_and_keeps_running_stats():
    module = _build("batchnorm_test_stats").eval()
    module.running_mean.fill_(3.0)
    module.running_var.fill_(7.0)
    x = _input()
    w, b = module.weight.detach(), module.bias.detach()
    y = module(x)
    torch.testing.assert_close(y, loop_batchnorm_train(x, w, b, EPS), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y, F.batch_norm(x, None, None, w, b, training=True, eps=EPS))
    assert torch.all(module.running_mean == 3.0) and torch.all(module.running_var == 7.0)
    assert int(module.num_batches_tracked) == 0


def test_test_stats_batchnorm_trains_like_batchnorm_and_loads_its_checkpoint():
    bn, ts = _build("bn"), _build("batchnorm_test_stats")
    ts.load_state_dict(bn.state_dict())
    x = _input()
    torch.testing.assert_close(ts(x), bn(x), rtol=0, atol=0)
    for key, value in bn.state_dict().items():
        torch.testing.assert_close(ts.state_dict()[key], value, rtol=0, atol=0)


def test_use_test_batch_stats_switches_and_restores():
    model = nn.Sequential(BatchNorm(8), nn.ReLU(), BatchNormTestStats(8)).double().eval()
    for layer in (model[0], model[2]):
        layer.running_mean.fill_(2.0)
    x = _input()
    running = model(x)
    with use_test_batch_stats(model) as layers:
        assert layers == [model[0], model[2]]
        first = F.batch_norm(x, None, None, model[0].weight, model[0].bias, training=True, eps=EPS)
        expected = F.batch_norm(first.relu(), None, None, model[2].weight, model[2].bias, training=True, eps=EPS)
        torch.testing.assert_close(model(x), expected)
    assert (model[0].test_batch_stats, model[2].test_batch_stats) == (False, True)
    torch.testing.assert_close(model(x), running)
    with use_test_batch_stats(model, enabled=False):
        assert not model[2].test_batch_stats
        layer = model[2]
        expected = loop_batchnorm_running(
            x, layer.running_mean, layer.running_var, layer.weight.detach(), layer.bias.detach(), EPS
        )
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    assert model[2].test_batch_stats


def test_use_test_batch_stats_rejects_plain_torch_batchnorm():
    model = nn.Sequential(BatchNorm(8), nn.BatchNorm2d(8))
    with pytest.raises(ValueError, match=r"\['1'\]"):
        with use_test_batch_stats(model):
            pass
    assert not model[0].test_batch_stats


@pytest.mark.parametrize(
    "name, training",
    [("batchnorm", True), ("batchnorm", False), ("batchnorm_test_stats", False)]
    + [(name, True) for name in INDEPENDENT],  # train and eval are one computation for these
)
def test_gradcheck(name, training):
    module = _build(name, channels=4).train(training)
    if name == "batchnorm" and not training:
        module.running_var.fill_(0.7)
    x = _input((4, 4, 3, 3)).requires_grad_()
    names = [n for n, _ in module.named_parameters()]
    inputs = (x, *(p.detach().clone().requires_grad_() for p in module.parameters()))

    def g(inp, *params):
        return torch.func.functional_call(module, dict(zip(names, params)), (inp,))

    assert torch.autograd.gradcheck(g, inputs, fast_mode=True)


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip(name):
    source = _build(name)
    source.train()(_input())  # moves running statistics where there are any
    target = build_norm(name, 8).double()
    target.load_state_dict(source.state_dict())
    x = _input(seed=3)
    for training in (True, False):
        source.train(training)
        target.train(training)
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_to_float64(name):
    module = build_norm(name, 8).to(torch.float64)
    y = module(_input())
    assert y.dtype == torch.float64 and y.shape == (4, 8, 3, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ALL)
def test_cuda_matches_cpu(name):
    module = _build(name).float()
    x = _input().float()
    for training in (True, False):
        module.train(training)
        cpu = module(x)
        cuda = module.cuda()(x.cuda()).cpu()
        module.cpu()
        torch.testing.assert_close(cuda, cpu, rtol=1e-4, atol=1e-4)


def test_bad_groupnorm_groups_names_value_and_choices():
    with pytest.raises(ValueError, match=r"num_groups=3.*num_features=8.*\[1, 2, 4, 8\]"):
        build_norm("groupnorm", 8, num_groups=3)
    with pytest.raises(ValueError, match="num_groups=0"):
        GroupNorm(8, num_groups=0)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kwargs, pattern", [({"eps": 0.0}, "eps.*0.0"), ({"eps": -1}, "eps.*-1")])
def test_bad_eps(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_norm(name, 8, **kwargs)


@pytest.mark.parametrize("name", ["batchnorm", "batchnorm_test_stats"])
def test_bad_momentum(name):
    with pytest.raises(ValueError, match=r"momentum.*\[0, 1\].*1.5"):
        build_norm(name, 8, momentum=1.5)


@pytest.mark.parametrize("name", ALL)
def test_bad_num_features_and_inputs(name):
    with pytest.raises(ValueError, match="num_features.*0"):
        build_norm(name, 0)
    module = build_norm(name, 8)
    with pytest.raises(ValueError, match=r"4-D.*\(4, 8, 9\)"):
        module(torch.randn(4, 8, 9))
    with pytest.raises(ValueError, match=r"C=8.*\(4, 6, 3, 3\)"):
        module(torch.randn(4, 6, 3, 3))


def test_unknown_kwarg_rejected_by_registry():
    with pytest.raises(ValueError, match="affine"):
        build_norm("batchnorm", 8, affine=False)


@pytest.mark.parametrize("training", [True, False])
def test_instancenorm_on_one_by_one_maps_raises(training):
    module = build_norm("instancenorm", 8).train(training)
    with pytest.raises(ValueError, match="spatial"):
        module(torch.randn(4, 8, 1, 1))
