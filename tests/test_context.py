"""Context Normalization (contextnorm, contextnorm_patches), CN+ and the context-id routing.

References are independent float64 loops over scalars: the per-context (mu, sigma^2) are rebuilt from the raw
parameter tensors with explicit sums (Algorithm 1), eq. (8) and eq. (9) are evaluated element by element.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from robustbench_norm.norms import build_norm, set_context_inference, use_context
from robustbench_norm.norms.context import (
    ContextNorm2d,
    ContextNormPatches,
    context_norm_plus,
)
from robustbench_norm.norms.routing import context_layers

EPS = 1e-5


def _randomised(layer: torch.nn.Module, seed: int = 0, mean_spread: float = 1.5) -> torch.nn.Module:
    """Give every parameter random values so that the contexts differ clearly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
        spread = mean_spread * torch.randn(layer.num_features, generator=generator)
        layer.mean_head.bias.add_(spread.to(layer.mean_head.bias))
    return layer


def _layer(kind: type, num_features: int, num_contexts: int, seed: int = 0) -> torch.nn.Module:
    layer = kind(num_features, num_contexts=num_contexts, embedding_dim=4, eps=EPS).double()
    return _randomised(layer, seed)


# ----------------------------------------------------------------------------------- loop references
def _reference_context_statistics(layer: torch.nn.Module) -> tuple[list[list[float]], list[list[float]]]:
    """Algorithm 1 by hand: alpha_r = W_r onehot(r) + b_r, mu_r = W_mu alpha_r + b_mu, s2_r = softplus(...)."""
    w_r, b_r = layer.embedder.weight.tolist(), layer.embedder.bias.tolist()
    w_mu, b_mu = layer.mean_head.weight.tolist(), layer.mean_head.bias.tolist()
    w_s, b_s = layer.var_head.weight.tolist(), layer.var_head.bias.tolist()
    num_contexts, width, features = layer.num_contexts, layer.embedding_dim, layer.num_features
    means, variances = [], []
    for r in range(num_contexts):
        onehot = [1.0 if k == r else 0.0 for k in range(num_contexts)]
        alpha = [sum(w_r[e][k] * onehot[k] for k in range(num_contexts)) + b_r[e] for e in range(width)]
        means.append([sum(w_mu[f][e] * alpha[e] for e in range(width)) + b_mu[f] for f in range(features)])
        pre = [sum(w_s[f][e] * alpha[e] for e in range(width)) + b_s[f] for f in range(features)]
        variances.append([math.log1p(math.exp(p)) for p in pre])
    return means, variances


def _reference_cn(x: torch.Tensor, ids: list[int], layer: torch.nn.Module, feature_axis: int) -> torch.Tensor:
    """Eq. (8) element by element."""
    means, variances = _reference_context_statistics(layer)
    out = torch.empty_like(x)
    for index in torch.cartesian_prod(*[torch.arange(s) for s in x.shape]).tolist():
        index = tuple(index)
        r, f = ids[index[0]], index[feature_axis]
        out[index] = (x[index].item() - means[r][f]) / math.sqrt(variances[r][f] + EPS)
    return out


def _reference_cn_plus(x: torch.Tensor, layer: torch.nn.Module, feature_axis: int) -> torch.Tensor:
    """Eq. (9) element by element, the batch of a feature being every element with that feature index."""
    means, variances = _reference_context_statistics(layer)
    contexts = layer.num_contexts
    indices = [tuple(i) for i in torch.cartesian_prod(*[torch.arange(s) for s in x.shape]).tolist()]
    out = torch.empty_like(x)
    for f in range(x.shape[feature_axis]):
        batch = [i for i in indices if i[feature_axis] == f]
        values = [x[i].item() for i in batch]

        def density(v: float, r: int) -> float:
            var = variances[r][f] + EPS
            return math.exp(-((v - means[r][f]) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)

        tau = []
        for v in values:
            dens = [density(v, r) for r in range(contexts)]
            tau.append([d / sum(dens) for d in dens])
        centres, scales = [], []
        for r in range(contexts):
            total = sum(t[r] for t in tau)
            tau_hat = [t[r] / total for t in tau]
            m = sum(th * v for th, v in zip(tau_hat, values))
            var = sum(th * (v - m) ** 2 for th, v in zip(tau_hat, values))
            centres.append(m)
            scales.append(math.sqrt(var + EPS))
        for i, v, t in zip(batch, values, tau):
            out[i] = math.sqrt(contexts) * sum(t[r] * (v - centres[r]) / scales[r] for r in range(contexts))
    return out


# ---------------------------------------------------------------------------------------- CN, eq. (8)
def test_contextnorm_matches_loop_reference() -> None:
    layer = _layer(ContextNorm2d, num_features=3, num_contexts=3)
    x = torch.randn(4, 3, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    ids = [2, 0, 1, 2]
    with use_context(layer, torch.tensor(ids)):
        y = layer(x)
    torch.testing.assert_close(y, _reference_cn(x, ids, layer, feature_axis=1), rtol=1e-12, atol=1e-12)


def test_contextnorm_patches_matches_loop_reference() -> None:
    layer = _layer(ContextNormPatches, num_features=5, num_contexts=2)
    x = torch.randn(3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ids = [1, 0, 1]
    with use_context(layer, torch.tensor(ids)):
        y = layer(x)
    torch.testing.assert_close(y, _reference_cn(x, ids, layer, feature_axis=2), rtol=1e-12, atol=1e-12)


def test_context_statistics_match_algorithm_1() -> None:
    layer = _layer(ContextNorm2d, num_features=3, num_contexts=4)
    means, variances = _reference_context_statistics(layer)
    mean, var = layer.context_statistics()
    torch.testing.assert_close(mean, torch.tensor(means, dtype=torch.float64))
    torch.testing.assert_close(var, torch.tensor(variances, dtype=torch.float64))
    assert bool((var > 0).all())


def test_initialisation_gives_zero_mean_unit_variance_for_every_context() -> None:
    layer = ContextNorm2d(3, num_contexts=5)
    mean, var = layer.context_statistics()
    torch.testing.assert_close(mean, torch.zeros(5, 3), rtol=0, atol=0)
    torch.testing.assert_close(var, torch.ones(5, 3))
    x = torch.randn(2, 3, 4, 4)
    with use_context(layer, torch.tensor([0, 4])):
        torch.testing.assert_close(layer(x), x / math.sqrt(1 + layer.eps))


def test_cn_gradcheck_train_mode() -> None:
    layer = _layer(ContextNorm2d, num_features=2, num_contexts=3).train()
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters()]

    def run(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return functional_call(layer, dict(zip(names, params)), (x,))

    with use_context(layer, torch.tensor([0, 2, 1])):
        assert torch.autograd.gradcheck(run, (x, *params))


def test_cn_parameters_receive_gradient_at_initialisation() -> None:
    layer = ContextNorm2d(3, num_contexts=2)
    with use_context(layer, torch.tensor([0, 1])):
        layer(torch.randn(2, 3, 4, 4)).pow(3).sum().backward()
    assert layer.mean_head.weight.grad.abs().sum() > 0
    assert layer.var_head.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------- CN+, eq. (9)
@pytest.mark.parametrize(
    "kind, shape, feature_axis",
    [(ContextNorm2d, (3, 2, 2, 3), 1), (ContextNormPatches, (2, 3, 4), 2)],
)
def test_cn_plus_matches_loop_reference(kind: type, shape: tuple[int, ...], feature_axis: int) -> None:
    layer = _layer(kind, num_features=shape[feature_axis], num_contexts=3, seed=3).eval()
    set_context_inference(layer, "cn+")
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 1.5
    y = layer(x)  # CN+ needs no context ids
    torch.testing.assert_close(y, _reference_cn_plus(x, layer, feature_axis), rtol=1e-10, atol=1e-10)


def test_cn_plus_gradcheck_eval_mode() -> None:
    layer = _layer(ContextNorm2d, num_features=2, num_contexts=2, seed=5).eval()
    set_context_inference(layer, "cn+")
    x = torch.randn(2, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters()]

    def run(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return functional_call(layer, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params))


def test_cn_plus_is_finite_when_a_context_explains_nothing() -> None:
    # context 1 sits 1e4 standard deviations away: its posterior underflows to exactly 0 for every element
    x = torch.randn(4, 1, 3, 3)
    mean, var = torch.tensor([[0.0], [1e4]]), torch.ones(2, 1)
    y = context_norm_plus(x, mean, var, EPS, feature_axis=1)
    assert bool(torch.isfinite(y).all())
    # with one relevant context, CN+ reduces to sqrt(2) * batch-standardisation (biased variance)
    expected = math.sqrt(2) * (x - x.mean()) / torch.sqrt(x.var(correction=0) + EPS)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)


def test_cn_plus_uses_the_test_batch_and_cn_does_not() -> None:
    layer = _layer(ContextNorm2d, num_features=3, num_contexts=2).eval()
    x = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    ids = torch.tensor([0, 1, 1, 0])
    with use_context(layer, ids[:1]):
        cn_alone = layer(x[:1])
    with use_context(layer, ids):
        cn_batch = layer(x)
    torch.testing.assert_close(cn_alone, cn_batch[:1], rtol=0, atol=0)
    set_context_inference(layer, "cn+")
    assert not torch.allclose(layer(x[:2])[:1], layer(x)[:1])


def test_cn_plus_applies_only_in_eval_mode() -> None:
    layer = ContextNorm2d(3).train()
    set_context_inference(layer, "cn+")
    with pytest.raises(RuntimeError, match="use_context"):
        layer(torch.randn(2, 3, 2, 2))


# -------------------------------------------------------------------------- batch independence, translate
@pytest.mark.parametrize("kind, shape", [(ContextNorm2d, (5, 3, 4, 4)), (ContextNormPatches, (5, 6, 3))])
def test_cn_is_batch_independent(kind: type, shape: tuple[int, ...]) -> None:
    layer = _layer(kind, num_features=3, num_contexts=3)
    x = torch.randn(shape, dtype=torch.float64)
    ids = torch.tensor([2, 0, 1, 1, 0])
    with use_context(layer, ids):
        batch = layer(x)
    for i in range(shape[0]):
        with use_context(layer, ids[i : i + 1]):
            torch.testing.assert_close(layer(x[i : i + 1]), batch[i : i + 1], rtol=0, atol=0)


def test_translate_round_trip_and_consistency_with_cn() -> None:
    layer = _layer(ContextNorm2d, num_features=3, num_contexts=3)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    night = layer.translate(x, 0, 2)
    assert not torch.allclose(night, x)
    torch.testing.assert_close(layer.translate(night, 2, 0), x)
    # normalising the translated image in the target context == normalising the original in the source
    with use_context(layer, torch.full((4,), 2)):
        target_view = layer(night)
    with use_context(layer, torch.zeros(4, dtype=torch.long)):
        source_view = layer(x)
    torch.testing.assert_close(target_view, source_view)
    per_sample = layer.translate(x, torch.tensor([0, 1, 2, 0]), 1)
    torch.testing.assert_close(per_sample[1], x[1])  # 1 -> 1 is the identity
    torch.testing.assert_close(per_sample[2:3], layer.translate(x[2:3], 2, 1))


def test_translate_rejects_bad_contexts() -> None:
    layer = ContextNorm2d(3, num_contexts=2)
    with pytest.raises(ValueError, match=r"\[0, 2\).*\[5, 5\]"):
        layer.translate(torch.randn(2, 3, 2, 2), 0, 5)
    with pytest.raises(ValueError, match=r"shape \(3,\), expected \(2,\)"):
        layer.translate(torch.randn(2, 3, 2, 2), torch.tensor([0, 1, 1]), 0)


# ------------------------------------------------------------------------------------------ routing
def test_ids_are_required_with_a_how_to_message() -> None:
    layer = ContextNorm2d(3)
    with pytest.raises(RuntimeError, match=r"use_context\(model, ids\)"):
        layer(torch.randn(2, 3, 4, 4))
    layer.eval()  # eval in CN mode needs them too
    with pytest.raises(RuntimeError, match="use_context"):
        layer(torch.randn(2, 3, 4, 4))


def test_use_context_nests_and_restores() -> None:
    model = torch.nn.Sequential(
        ContextNorm2d(3, num_contexts=3), torch.nn.Conv2d(3, 4, 1), ContextNorm2d(4, num_contexts=3)
    )
    outer, inner = torch.tensor([0, 1]), torch.tensor([2, 2])
    with use_context(model, outer):
        assert all(layer.context_ids is outer for layer in context_layers(model))
        with use_context(model, inner):
            assert all(layer.context_ids is inner for layer in context_layers(model))
        assert all(layer.context_ids is outer for layer in context_layers(model))
    assert all(layer.context_ids is None for layer in context_layers(model))
    with pytest.raises(KeyError):
        with use_context(model, outer):
            raise KeyError("ids are restored on error too")
    assert all(layer.context_ids is None for layer in context_layers(model))


def test_bad_ids_raise_value_errors_naming_the_values() -> None:
    layer = ContextNorm2d(3, num_contexts=2)
    x = torch.randn(3, 3, 2, 2)
    with pytest.raises(ValueError, match=r"shape \(2,\), expected \(3,\)"):
        with use_context(layer, torch.tensor([0, 1])):
            layer(x)
    with pytest.raises(ValueError, match=r"\[0, 2\), got values in \[-1, 1\]"):
        with use_context(layer, torch.tensor([0, -1, 1])):
            layer(x)
    with pytest.raises(ValueError, match=r"\[0, 2\), got values in \[0, 7\]"):
        with use_context(layer, torch.tensor([0, 7, 1])):
            layer(x)
    with pytest.raises(ValueError, match="integer tensor.*float32"):
        with use_context(layer, torch.tensor([0.0, 1.0, 1.0])):
            layer(x)


def test_set_context_inference() -> None:
    model = torch.nn.Sequential(ContextNorm2d(3), ContextNorm2d(3))
    set_context_inference(model, "cn+")
    assert [layer.inference for layer in context_layers(model)] == ["cn+", "cn+"]
    with pytest.raises(ValueError, match=r"'cn\+\+'.*\('cn', 'cn\+'\)"):
        set_context_inference(model, "cn++")


# ------------------------------------------------------------------------------ validation, state, dtype
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_contexts": 0}, "num_contexts.*0"),
        ({"num_contexts": 1.5}, "num_contexts.*1.5"),
        ({"embedding_dim": 0}, "embedding_dim.*0"),
        ({"eps": 0.0}, "eps.*0.0"),
        ({"eps": -1e-5}, "eps"),
    ],
)
def test_bad_kwargs_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_norm("contextnorm", 3, **kwargs)


def test_bad_num_features_and_inputs_raise() -> None:
    with pytest.raises(ValueError, match="num_features.*0"):
        ContextNorm2d(0)
    layer, patches = ContextNorm2d(3), ContextNormPatches(8)
    ids = torch.tensor([0, 1])
    with use_context(layer, ids), pytest.raises(ValueError, match=r"\(N, C, H, W\).*\(2, 4, 5, 5\)"):
        layer(torch.randn(2, 4, 5, 5))
    with use_context(layer, torch.tensor([0, 1])), pytest.raises(ValueError, match=r"\(2, 3, 5\)"):
        layer(torch.randn(2, 3, 5))
    with use_context(patches, torch.tensor([0, 1])), pytest.raises(ValueError, match=r"\(N, T, D\).*\(2, 8, 5\)"):
        patches(torch.randn(2, 8, 5))


def test_state_dict_round_trip() -> None:
    source = _randomised(ContextNorm2d(3, num_contexts=3, embedding_dim=6), seed=7)
    target = ContextNorm2d(3, num_contexts=3, embedding_dim=6)
    target.load_state_dict(source.state_dict())
    x, ids = torch.randn(3, 3, 4, 4), torch.tensor([2, 1, 0])
    with use_context(source, ids), use_context(target, ids):
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
    modules = ("embedder", "mean_head", "var_head")
    assert set(source.state_dict()) == {f"{m}.{p}" for m in modules for p in ("weight", "bias")}


def test_to_float64() -> None:
    layer = ContextNormPatches(4).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    with use_context(layer, torch.tensor([1, 0])):
        assert layer(torch.randn(2, 3, 4, dtype=torch.float64)).dtype == torch.float64


def test_extra_repr() -> None:
    text = repr(ContextNorm2d(3, num_contexts=4, embedding_dim=8))
    assert "3, num_contexts=4, embedding_dim=8" in text and "inference='cn'" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    layer = _randomised(ContextNorm2d(3, num_contexts=3), seed=8)
    x, ids = torch.randn(4, 3, 8, 8), torch.tensor([0, 2, 1, 1])  # ids stay on the CPU
    with use_context(layer, ids):
        expected = layer(x)
        layer.cuda()
        got = layer(x.cuda())
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-5)
    layer.eval()
    set_context_inference(layer, "cn+")
    torch.testing.assert_close(layer(x.cuda()).cpu(), layer.cpu()(x), rtol=1e-4, atol=1e-4)
