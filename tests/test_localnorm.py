"""Tests of LocalNorm (norms/localnorm.py) against float64 loop evaluations and BatchNorm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_norm.norms import build_norm, get_norm
from robustbench_norm.norms.localnorm import (
    LocalNorm,
    convert_batchnorm_to_localnorm,
    localnorm_evaluation,
)
from robustbench_norm.norms.standard import BatchNorm
from tests.reference_loops import loop_localnorm

EPS = 1e-5


def _input(shape=(8, 3, 3, 3), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 1.5 - 0.7


def _layer(channels=3, num_groups=4, seed=1) -> LocalNorm:
    layer = LocalNorm(channels, num_groups=num_groups).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=g, dtype=torch.float64) + 0.5)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=torch.float64))
    return layer


def _loop(x, layer, sizes, rows):
    return loop_localnorm(x, sizes, rows, layer.weight.detach(), layer.bias.detach(), EPS)


def test_registry_spec_and_defaults():
    spec = get_norm("localnorm")
    assert spec.batch_stats_at_test and not spec.batch_independent
    assert spec.eval_modes == ("batch", "single", "single_voting", "voting")
    layer = build_norm("localnorm", 5)
    assert layer.num_groups == 4 and layer.weight.shape == (4, 5) and not list(layer.buffers())


@pytest.mark.parametrize("training", [True, False])
def test_matches_loop_for_even_batches(training):
    layer = _layer().train(training)
    x = _input()
    torch.testing.assert_close(layer(x), _loop(x, layer, [2, 2, 2, 2], [0, 1, 2, 3]), rtol=1e-10, atol=1e-10)


def test_one_group_is_batchnorm_training_forward():
    layer = _layer(num_groups=1)
    x = _input()
    expected = F.batch_norm(x, None, None, layer.weight[0], layer.bias[0], training=True, eps=EPS)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.eval()(x), expected)


def test_each_group_is_batchnorm_of_its_sub_batch_with_its_row():
    layer = _layer()
    x = _input()
    y = layer(x)
    for k in range(4):
        part = x[2 * k : 2 * k + 2]
        expected = F.batch_norm(part, None, None, layer.weight[k], layer.bias[k], training=True, eps=EPS)
        torch.testing.assert_close(y[2 * k : 2 * k + 2], expected)


def test_uneven_training_batch_raises_naming_n_and_k():
    layer = _layer()
    with pytest.raises(ValueError, match=r"N=6.*K=4"):
        layer(_input((6, 3, 3, 3)))


@pytest.mark.parametrize(
    "batch, sizes",
    [(6, [2, 2, 1, 1]), (10, [3, 3, 2, 2]), (3, [1, 1, 1]), (1, [1]), (9, [3, 2, 2, 2])],
)
def test_eval_rule_for_any_batch(batch, sizes):
    layer = _layer().eval()
    x = _input((batch, 3, 3, 3))
    assert [len(t) for t in torch.tensor_split(torch.arange(batch), min(4, batch))] == sizes
    expected = _loop(x, layer, sizes, list(range(len(sizes))))
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("group_size, sizes", [(1, [1, 1, 1, 1, 1]), (2, [2, 2, 1]), (5, [5]), (7, [5])])
@pytest.mark.parametrize("row", [0, 3])
def test_localnorm_evaluation_matches_loop(group_size, sizes, row):
    layer = _layer().eval()
    x = _input((5, 3, 3, 3))
    with localnorm_evaluation(nn.Sequential(layer), statistics_group_size=group_size, affine_group=row) as layers:
        assert layers == [layer]
        y = layer(x)
    expected = _loop(x, layer, sizes, [row] * len(sizes))
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)


def test_localnorm_evaluation_equals_the_authors_replicated_and_tiled_batches():
    """SINGLE: K*2 copies of one image, group k; VOTING: a set of 2 images tiled K times, group k."""
    layer = _layer().eval()
    x = _input((6, 3, 3, 3))
    for k in range(4):
        with localnorm_evaluation(layer, statistics_group_size=1, affine_group=k):
            single = layer(x)
        with localnorm_evaluation(layer, statistics_group_size=2, affine_group=k):
            voting = layer(x)
        for i in range(6):
            replicated = layer(x[i : i + 1].expand(8, -1, -1, -1).contiguous())
            torch.testing.assert_close(single[i], replicated[2 * k])
        for start in (0, 2, 4):
            tiled = layer(x[start : start + 2].repeat(4, 1, 1, 1))
            torch.testing.assert_close(voting[start : start + 2], tiled[2 * k : 2 * k + 2])


def test_localnorm_evaluation_restores_and_leaves_training_alone():
    layer = _layer()
    x = _input()
    train_output = layer(x)
    with localnorm_evaluation(layer, statistics_group_size=1, affine_group=2):
        torch.testing.assert_close(layer(x), train_output, rtol=0, atol=0)
    assert (layer.statistics_group_size, layer.affine_group) == (None, 0)
    torch.testing.assert_close(layer.eval()(x), train_output, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"statistics_group_size": 0, "affine_group": 0}, "statistics_group_size.*0"),
        ({"statistics_group_size": 2.0, "affine_group": 0}, "statistics_group_size.*2.0"),
        ({"statistics_group_size": 1, "affine_group": 4}, r"affine_group 4.*0\.\.3"),
        ({"statistics_group_size": 1, "affine_group": -1}, r"affine_group -1.*0\.\.3"),
    ],
)
def test_localnorm_evaluation_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        with localnorm_evaluation(_layer(), **kwargs):
            pass


@pytest.mark.parametrize("batch, training", [(8, True), (6, False)])
def test_gradcheck(batch, training):
    layer = _layer().train(training)
    x = _input((batch, 3, 2, 2)).requires_grad_()
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()

    def f(inp, w, b):
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (inp,))

    assert torch.autograd.gradcheck(f, (x, weight, bias))


def _bn_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNorm(4, eps=1e-3), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    return model.double()


def test_convert_batchnorm_to_localnorm():
    model = _bn_model()
    x = _input((8, 3, 5, 5))
    bn_train_output = model(x)
    originals = [(m.weight.detach().clone(), m.bias.detach().clone(), m.eps) for m in (model[1], model[4])]
    model.eval()
    converted = convert_batchnorm_to_localnorm(model, num_groups=2)
    assert converted is model
    for index, (weight, bias, eps) in zip((1, 4), originals):
        layer = model[index]
        assert isinstance(layer, LocalNorm) and layer.num_groups == 2 and layer.eps == eps
        assert layer.weight.dtype == torch.float64 and not layer.training
        assert not list(layer.buffers())
        torch.testing.assert_close(layer.weight.detach(), weight.expand(2, -1), rtol=0, atol=0)
        torch.testing.assert_close(layer.bias.detach(), bias.expand(2, -1), rtol=0, atol=0)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    one_group = convert_batchnorm_to_localnorm(_bn_model(), num_groups=1)
    torch.testing.assert_close(one_group(x), bn_train_output)


def test_convert_a_bare_batchnorm_and_bad_groups():
    bn = nn.BatchNorm2d(3)
    layer = convert_batchnorm_to_localnorm(bn, 4)
    assert isinstance(layer, LocalNorm) and layer.weight.shape == (4, 3)
    with pytest.raises(ValueError, match="num_groups.*0"):
        convert_batchnorm_to_localnorm(nn.Sequential(), 0)


def test_state_dict_round_trip_and_float64():
    source = _layer()
    target = LocalNorm(3).to(torch.float64)
    target.load_state_dict(source.state_dict())
    assert set(source.state_dict()) == {"weight", "bias"}
    x = _input()
    y = target(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, source(x), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    layer = _layer().float().eval()
    x = _input((6, 3, 3, 3)).float()
    cpu = layer(x)
    torch.testing.assert_close(layer.cuda()(x.cuda()).cpu(), cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_bad_num_groups_names_value(bad):
    with pytest.raises(ValueError, match=rf"num_groups.*{bad}"):
        build_norm("localnorm", 4, num_groups=bad)


def test_bad_inputs_and_eps():
    with pytest.raises(ValueError, match="eps.*0"):
        LocalNorm(4, eps=0)
    layer = LocalNorm(4)
    with pytest.raises(ValueError, match="4-D"):
        layer(torch.randn(4, 4))
    with pytest.raises(ValueError, match="C=4"):
        layer(torch.randn(4, 5, 2, 2))
    with pytest.raises(ValueError, match="non-empty"):
        layer.eval()(torch.randn(0, 4, 2, 2))
