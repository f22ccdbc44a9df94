"""Slow float64 loop evaluations of the normalization formulas, written independently of the layers.

Plain Python over nested lists (``tensor.tolist()``) and the ``math`` module: no vectorised torch op of the
layers under test is reused, so a shared bug cannot cancel out. Shapes must be tiny.
Each function takes float64 tensors and returns a float64 tensor (or lists of floats).
"""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import NormalDist
from typing import Callable

import torch

Key = Callable[[int, int, int, int], tuple]


def _mean_biased_var(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, sum((v - mean) ** 2 for v in values) / len(values)


def _indices(x: list) -> list[tuple[int, int, int, int]]:
    return [
        (n, c, h, w)
        for n in range(len(x))
        for c in range(len(x[0]))
        for h in range(len(x[0][0]))
        for w in range(len(x[0][0][0]))
    ]


def _to_tensor(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def loop_normalize_sets(
    x: torch.Tensor,
    key: Key,
    gamma: Callable[[int, int], float],
    beta: Callable[[int, int], float],
    eps: float,
) -> torch.Tensor:
    """``(x - mean_S) / sqrt(var_S + eps) * gamma(n, c) + beta(n, c)``; S = all positions with the same key."""
    xl = x.tolist()
    sets: dict[tuple, list[float]] = defaultdict(list)
    for n, c, h, w in _indices(xl):
        sets[key(n, c, h, w)].append(xl[n][c][h][w])
    stats = {k: _mean_biased_var(v) for k, v in sets.items()}
    out = [[[[0.0] * len(xl[0][0][0]) for _ in xl[0][0]] for _ in xl[0]] for _ in xl]
    for n, c, h, w in _indices(xl):
        mean, var = stats[key(n, c, h, w)]
        out[n][c][h][w] = (xl[n][c][h][w] - mean) / math.sqrt(var + eps) * gamma(n, c) + beta(n, c)
    return _to_tensor(out)


def loop_channel_affine(weight: torch.Tensor, bias: torch.Tensor):
    """(gamma(n, c), beta(n, c)) for a per-channel affine."""
    w, b = weight.tolist(), bias.tolist()
    return (lambda n, c: w[c]), (lambda n, c: b[c])


def loop_batchnorm_train(x, weight, bias, eps) -> torch.Tensor:
    """BatchNorm training forward: statistics per channel over (N, H, W)."""
    g, b = loop_channel_affine(weight, bias)
    return loop_normalize_sets(x, lambda n, c, h, w: (c,), g, b, eps)


def loop_batchnorm_running(x, running_mean, running_var, weight, bias, eps) -> torch.Tensor:
    """BatchNorm eval forward with given running statistics."""
    xl, rm, rv, wl, bl = x.tolist(), running_mean.tolist(), running_var.tolist(), weight.tolist(), bias.tolist()
    out = [[[[(v - rm[c]) / math.sqrt(rv[c] + eps) * wl[c] + bl[c] for v in row] for row in xl[n][c]]
            for c in range(len(xl[0]))] for n in range(len(xl))]
    return _to_tensor(out)


def loop_channel_moments(x: torch.Tensor) -> tuple[list[float], list[float], list[float]]:
    """Per channel over (N, H, W): mean, biased variance, unbiased variance."""
    xl = x.tolist()
    per_channel: dict[int, list[float]] = defaultdict(list)
    for n, c, h, w in _indices(xl):
        per_channel[c].append(xl[n][c][h][w])
    means, biased, unbiased = [], [], []
    for c in sorted(per_channel):
        mean, var = _mean_biased_var(per_channel[c])
        count = len(per_channel[c])
        means.append(mean)
        biased.append(var)
        unbiased.append(var * count / (count - 1))
    return means, biased, unbiased


def loop_groupnorm(x, num_groups, weight, bias, eps) -> torch.Tensor:
    """GroupNorm: per sample, statistics over groups of C/G consecutive channels x (H, W)."""
    per_group = x.shape[1] // num_groups
    g, b = loop_channel_affine(weight, bias)
    return loop_normalize_sets(x, lambda n, c, h, w: (n, c // per_group), g, b, eps)


def loop_instancenorm(x, weight, bias, eps) -> torch.Tensor:
    """InstanceNorm: statistics per sample and channel over (H, W)."""
    g, b = loop_channel_affine(weight, bias)
    return loop_normalize_sets(x, lambda n, c, h, w: (n, c), g, b, eps)


def loop_layernorm(x, weight, bias, eps) -> torch.Tensor:
    """LayerNorm on maps: statistics per sample over (C, H, W), per-channel affine."""
    g, b = loop_channel_affine(weight, bias)
    return loop_normalize_sets(x, lambda n, c, h, w: (n,), g, b, eps)


def loop_positionalnorm(x, weight, bias, eps) -> torch.Tensor:
    """PositionalNorm: statistics per sample and position over channels, per-channel affine."""
    g, b = loop_channel_affine(weight, bias)
    return loop_normalize_sets(x, lambda n, c, h, w: (n, h, w), g, b, eps)


def loop_localnorm(x, group_sizes: list[int], rows: list[int], weight, bias, eps) -> torch.Tensor:
    """LocalNorm: consecutive groups of the given sizes; group j has BN statistics and affine row rows[j]."""
    group_of = [j for j, size in enumerate(group_sizes) for _ in range(size)]
    assert len(group_of) == x.shape[0]
    w, b = weight.tolist(), bias.tolist()
    return loop_normalize_sets(
        x,
        lambda n, c, h, ww: (group_of[n], c),
        lambda n, c: w[rows[group_of[n]]][c],
        lambda n, c: b[rows[group_of[n]]][c],
        eps,
    )


def _softmax(logits: list[float]) -> list[float]:
    exps = [math.exp(v) for v in logits]
    return [e / sum(exps) for e in exps]


def loop_switchnorm(x, mean_logits, var_logits, weight, bias, eps, running=None):
    """Switchable Norm with biased variances, each computed directly over its own set of values.

    ``running``: ``(running_mean, running_var)`` lists for eval, or None for training (batch statistics).
    Returns ``(y, bn_mean, bn_var)`` with the batch's BN statistics (lists over C).
    """
    xl = x.tolist()
    n_, c_ = len(xl), len(xl[0])
    values = {"in": defaultdict(list), "ln": defaultdict(list), "bn": defaultdict(list)}
    for n, c, h, w in _indices(xl):
        v = xl[n][c][h][w]
        values["in"][(n, c)].append(v)
        values["ln"][n].append(v)
        values["bn"][c].append(v)
    stats = {kind: {k: _mean_biased_var(vs) for k, vs in d.items()} for kind, d in values.items()}
    bn_mean = [stats["bn"][c][0] for c in range(c_)]
    bn_var = [stats["bn"][c][1] for c in range(c_)]
    if running is not None:
        bn_mean, bn_var = list(running[0]), list(running[1])
    wm, wv = _softmax(mean_logits.tolist()), _softmax(var_logits.tolist())
    gl, bl = weight.tolist(), bias.tolist()
    out = [[[[0.0] * len(xl[0][0][0]) for _ in xl[0][0]] for _ in range(c_)] for _ in range(n_)]
    for n, c, h, w in _indices(xl):
        mean = wm[0] * stats["in"][(n, c)][0] + wm[1] * stats["ln"][n][0] + wm[2] * bn_mean[c]
        var = wv[0] * stats["in"][(n, c)][1] + wv[1] * stats["ln"][n][1] + wv[2] * bn_var[c]
        out[n][c][h][w] = (xl[n][c][h][w] - mean) / math.sqrt(var + eps) * gl[c] + bl[c]
    return _to_tensor(out), [stats["bn"][c][0] for c in range(c_)], [stats["bn"][c][1] for c in range(c_)]


def _channel_values(x: torch.Tensor) -> list[list[float]]:
    xl = x.tolist()
    per_channel: list[list[float]] = [[] for _ in xl[0]]
    for n, c, h, w in _indices(xl):
        per_channel[c].append(xl[n][c][h][w])
    return per_channel


def _gaussian(v: float, mean: float, var: float) -> float:
    return math.exp(-((v - mean) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)


def _loop_posteriors(v: float, prior: list[float], mean: list[float], var: list[float]) -> list[float]:
    joint = [p * _gaussian(v, m, s) for p, m, s in zip(prior, mean, var)]
    return [j / sum(joint) for j in joint]


def loop_fit_mixture(x, num_components: int, iterations: int, var_floor: float, min_prior: float):
    """EM for one 1-D Gaussian mixture per channel, started at mean + std * Phi^-1((k + 1/2)/K).

    Returns ``(prior, mean, var)`` as lists of shape (C, K).
    """
    quantiles = [NormalDist().inv_cdf((k + 0.5) / num_components) for k in range(num_components)]
    priors, means, variances = [], [], []
    for values in _channel_values(x):
        mu, var = _mean_biased_var(values)
        prior = [1.0 / num_components] * num_components
        mean = [mu + math.sqrt(var) * z for z in quantiles]
        comp_var = [max(var, var_floor)] * num_components
        for _ in range(iterations):
            tau = [_loop_posteriors(v, prior, mean, comp_var) for v in values]
            new_prior, new_mean, new_var = [], [], []
            for k in range(num_components):
                mass = sum(t[k] for t in tau)
                m = sum(t[k] * v for t, v in zip(tau, values)) / mass
                s = sum(t[k] * (v - m) ** 2 for t, v in zip(tau, values)) / mass
                new_prior.append(max(mass / len(values), min_prior))
                new_mean.append(m)
                new_var.append(max(s, var_floor))
            prior, mean, comp_var = new_prior, new_mean, new_var
        priors.append(prior)
        means.append(mean)
        variances.append(comp_var)
    return priors, means, variances


def loop_mixture_moments(x, prior, mean, var) -> tuple[list[list[float]], list[list[float]]]:
    """Posterior-weighted batch moments E_k[x], E_k[(x - E_k[x])^2] per channel and component."""
    norm_mean, norm_var = [], []
    for c, values in enumerate(_channel_values(x)):
        tau = [_loop_posteriors(v, prior[c], mean[c], var[c]) for v in values]
        row_m, row_v = [], []
        for k in range(len(prior[c])):
            total = sum(t[k] for t in tau)
            m = sum(t[k] / total * v for t, v in zip(tau, values))
            row_m.append(m)
            row_v.append(sum(t[k] / total * (v - m) ** 2 for t, v in zip(tau, values)))
        norm_mean.append(row_m)
        norm_var.append(row_v)
    return norm_mean, norm_var


def loop_mixturenorm(x, prior, mean, var, norm_mean, norm_var, weight, bias, eps) -> torch.Tensor:
    """``gamma_c sum_k tau_k(x)/sqrt(lambda_k) (x - norm_mean_k)/sqrt(norm_var_k + eps) + beta_c``."""
    xl, gl, bl = x.tolist(), weight.tolist(), bias.tolist()
    out = [[[[0.0] * len(xl[0][0][0]) for _ in xl[0][0]] for _ in xl[0]] for _ in xl]
    for n, c, h, w in _indices(xl):
        v = xl[n][c][h][w]
        tau = _loop_posteriors(v, prior[c], mean[c], var[c])
        x_hat = sum(
            tau[k] / math.sqrt(prior[c][k]) * (v - norm_mean[c][k]) / math.sqrt(norm_var[c][k] + eps)
            for k in range(len(tau))
        )
        out[n][c][h][w] = x_hat * gl[c] + bl[c]
    return _to_tensor(out)
