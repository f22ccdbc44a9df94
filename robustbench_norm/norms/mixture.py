"""Mixture Normalization: BatchNorm generalised to a Gaussian mixture over each channel's activations.

Kalayeh & Shah, "Training Faster by Separating Modes of Variation in Batch-normalized Models", TPAMI 2019
(arXiv 1806.02892). No official code exists; the choices the paper leaves open are fixed below.

Model. The values of channel c over the batch (all n, h, w) follow a 1-D Gaussian mixture with K components,
priors lambda_k, means mu_k and variances v_k (one mixture per channel). The posterior of component k is

    tau_k(x) = lambda_k N(x | mu_k, v_k) / sum_j lambda_j N(x | mu_j, v_j).

Normalisation. With tau_hat_k(x_i) = tau_k(x_i) / sum_{j in batch} tau_k(x_j) and E_k[f] = sum_i tau_hat_k(x_i) f(x_i),

    x_hat = sum_k tau_k(x) / sqrt(lambda_k) * (x - E_k[x]) / sqrt(E_k[(x - E_k[x])^2] + eps),
    y     = x_hat * gamma_c + beta_c.

For K = 1 (tau = lambda = 1) this is exactly BatchNorm's training forward (biased variance).

Estimation (training). The mixture is fitted on the mini-batch by ``em_iterations`` EM steps (default 3),
started deterministically (no RNG) from the channel's batch moments: lambda_k = 1/K,
mu_k = mean + std * z_k with z_k = Phi^{-1}((k + 1/2) / K) the standard normal quantiles, v_k = variance.
Components therefore start ordered by mean, which keeps component k the "k-th lowest mode" from batch to
batch, so the running averages below average like with like. Variances are floored at ``eps`` and priors at
1e-6, so a dead (constant) channel or an empty component gives finite outputs.

Gradient. The EM-fitted mixture parameters (lambda, mu, v) are constants for backprop (stop-gradient: EM
runs under ``torch.no_grad``); the posteriors tau_k(x) and the normalising statistics E_k[x],
E_k[(x - E_k[x])^2] are differentiable functions of x, as BatchNorm's batch statistics are.

Eval. Running estimates (PyTorch-style ``momentum``, weight of the new batch) of the mixture parameters
(``running_prior``, ``running_mean``, ``running_var``) give the posteriors, and running estimates of the
normalising statistics (``running_norm_mean``, ``running_norm_var``) replace E_k[.]; the output of a sample then
does not depend on its batch. Initial values: the mixture the EM start gives for N(0, 1) data.

Shapes: input and output ``(N, C, H, W)``; ``weight``, ``bias``: ``(C,)``; mixture parameters and running
buffers: ``(C, K)``. Cost: O(NCHW * K * (em_iterations + 1)) time, O(NCHW * K) memory.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from robustbench_norm.norms.registry import register_norm
from robustbench_norm.norms.standard import (
    check_eps,
    check_input_2d,
    check_momentum,
    check_num_features,
)

MIN_PRIOR = 1e-6
"""Floor of the EM priors lambda_k, so that tau_k / sqrt(lambda_k) stays finite for an empty component."""

EM_MAX_VALUES = 8192
"""EM fits the mixture on at most this many evenly strided values per channel: a 1-D K-component mixture is
well determined by a few thousand values, the fitted parameters are stop-gradient constants, and the bound
keeps EM's cost independent of the map size (the normalisation itself always uses every value)."""


class GaussianMixture(NamedTuple):
    """One 1-D Gaussian mixture per channel: ``prior``, ``mean``, ``var`` each of shape ``(C, K)``."""

    prior: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    """(C, K) -> (K, 1, C, 1, 1), to broadcast against x (N, C, H, W) with the component axis first."""
    return t.t()[:, None, :, None, None]


def normal_quantiles(num_components: int, *, dtype: torch.dtype = torch.float32,
                     device: torch.device | None = None) -> torch.Tensor:
    """``z_k = Phi^{-1}((k + 1/2) / K)`` for k = 0..K-1: the EM start of the component means, in std units."""
    levels = (torch.arange(num_components, dtype=torch.float64) + 0.5) / num_components
    return torch.special.ndtri(levels).to(dtype=dtype, device=device)


def initial_mixture(x: torch.Tensor, num_components: int, var_floor: float) -> GaussianMixture:
    """Deterministic EM start from the batch moments of each channel of ``x`` (N, C, H, W)."""
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    z = normal_quantiles(num_components, dtype=x.dtype, device=x.device)
    channels = x.shape[1]
    return GaussianMixture(
        prior=torch.full((channels, num_components), 1.0 / num_components, dtype=x.dtype, device=x.device),
        mean=mean[:, None] + var.sqrt()[:, None] * z,
        var=var.clamp_min(var_floor)[:, None].expand(channels, num_components).clone(),
    )


def posteriors(x: torch.Tensor, mixture: GaussianMixture) -> torch.Tensor:
    """``tau_k(x)`` for every value of ``x`` (N, C, H, W) under its channel's mixture: shape (K, N, C, H, W).

    Computed as a softmax over k of ``log lambda_k - log(v_k)/2 - (x - mu_k)^2 / (2 v_k)`` (the constant
    ``-log(2 pi)/2`` cancels), which is stable for values far from every component.
    """
    mean, var = _per_channel(mixture.mean), _per_channel(mixture.var)
    log_joint = _per_channel(mixture.prior.log() - 0.5 * mixture.var.log()) - 0.5 * (x - mean) ** 2 / var
    return torch.softmax(log_joint, dim=0)


def weighted_moments(x: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Posterior mass ``sum_i tau_k(x_i)``, ``E_k[x]`` and ``E_k[(x - E_k[x])^2]`` per channel: each (C, K)."""
    mass = tau.sum(dim=(1, 3, 4)).t()
    weights = tau / _per_channel(mass.clamp_min(torch.finfo(tau.dtype).tiny))
    mean = (weights * x).sum(dim=(1, 3, 4)).t()
    var = (weights * (x - _per_channel(mean)) ** 2).sum(dim=(1, 3, 4)).t()
    return mass, mean, var


def em_sample(x: torch.Tensor, max_values: int = EM_MAX_VALUES) -> torch.Tensor:
    """At most ``max_values`` evenly strided values of each channel of ``x`` (N, C, H, W), as (M, C, 1, 1)."""
    per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
    stride = -(-per_channel.shape[1] // max_values)
    return per_channel[:, ::stride].t().reshape(-1, x.shape[1], 1, 1) if stride > 1 else x


@torch.no_grad()
def fit_mixture(x: torch.Tensor, num_components: int, iterations: int, var_floor: float) -> GaussianMixture:
    """EM fit of one K-component 1-D mixture per channel of ``x`` (N, C, H, W), from :func:`initial_mixture`.

    Each iteration: E-step ``tau = posteriors(x, mixture)``; M-step ``lambda_k = mass_k / (N H W)`` (floored at
    :data:`MIN_PRIOR`), ``mu_k = E_k[x]``, ``v_k = E_k[(x - mu_k)^2]`` (floored at ``var_floor``). No gradient.
    The fit sees at most :data:`EM_MAX_VALUES` values per channel (:func:`em_sample`).
    """
    x = em_sample(x)
    mixture = initial_mixture(x, num_components, var_floor)
    count = x.numel() // x.shape[1]
    for _ in range(iterations):
        mass, mean, var = weighted_moments(x, posteriors(x, mixture))
        mixture = GaussianMixture((mass / count).clamp_min(MIN_PRIOR), mean, var.clamp_min(var_floor))
    return mixture


def mixture_standardize(
    x: torch.Tensor, tau: torch.Tensor, prior: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float
) -> torch.Tensor:
    """``x_hat = sum_k tau_k / sqrt(lambda_k) * (x - mean_k) / sqrt(var_k + eps)`` (before the affine).

    ``x`` (N, C, H, W), ``tau`` (K, N, C, H, W), ``prior``, ``mean``, ``var`` (C, K); returns (N, C, H, W).
    """
    scale = _per_channel(prior.rsqrt() * (var + eps).rsqrt())
    return (tau * scale * (x - _per_channel(mean))).sum(dim=0)


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int (>= 1), got {value!r}")


@register_norm(
    "mixturenorm",
    batch_stats_at_test=False,
    batch_independent=False,
    paper="Kalayeh & Shah, Training Faster by Separating Modes of Variation in Batch-normalized Models, "
    "TPAMI 2019",
)
class MixtureNorm(nn.Module):
    """Mixture Normalization (Kalayeh & Shah, 2019): posterior-weighted BatchNorm over a per-channel GMM.

    ``y = gamma_c * sum_k tau_k(x) / sqrt(lambda_k) * (x - E_k[x]) / sqrt(E_k[(x - E_k[x])^2] + eps) + beta_c``.
    Training: the mixture is fitted by ``em_iterations`` EM steps on the batch (no gradient through EM) and the
    normalising statistics are posterior-weighted batch moments (with gradient); running estimates of both are
    updated with ``momentum``. Eval: the running estimates are used. ``num_components=1`` is BatchNorm.
    See the module docstring for the EM start, floors and gradient rule.

    Shapes: input and output ``(N, C, H, W)``; ``weight``, ``bias``: ``(C,)``; buffers ``running_prior``,
    ``running_mean``, ``running_var``, ``running_norm_mean``, ``running_norm_var``: ``(C, K)``.
    Cost: O(NCHW * K * (em_iterations + 1)).
    """

    def __init__(
        self,
        num_features: int,
        *,
        num_components: int = 3,
        em_iterations: int = 3,
        eps: float = 1e-5,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        check_num_features(num_features)
        _check_positive_int("num_components", num_components)
        _check_positive_int("em_iterations", em_iterations)
        check_eps(eps)
        check_momentum(momentum)
        self.num_features = num_features
        self.num_components = num_components
        self.em_iterations = em_iterations
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        shape = (num_features, num_components)
        z = normal_quantiles(num_components).expand(shape)
        self.register_buffer("running_prior", torch.full(shape, 1.0 / num_components))
        self.register_buffer("running_mean", z.clone())
        self.register_buffer("running_var", torch.ones(shape))
        self.register_buffer("running_norm_mean", z.clone())
        self.register_buffer("running_norm_var", torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_2d(x, self.num_features, type(self).__name__)
        if self.training:
            mixture = fit_mixture(x.detach(), self.num_components, self.em_iterations, self.eps)
            tau = posteriors(x, mixture)
            _, mean, var = weighted_moments(x, tau)
            self._update_running(mixture, mean.detach(), var.detach())
        else:
            mixture = GaussianMixture(self.running_prior, self.running_mean, self.running_var)
            tau = posteriors(x, mixture)
            mean, var = self.running_norm_mean, self.running_norm_var
        x_hat = mixture_standardize(x, tau, mixture.prior, mean, var, self.eps)
        return x_hat * self.weight[:, None, None] + self.bias[:, None, None]

    @torch.no_grad()
    def _update_running(self, mixture: GaussianMixture, mean: torch.Tensor, var: torch.Tensor) -> None:
        pairs = (
            (self.running_prior, mixture.prior),
            (self.running_mean, mixture.mean),
            (self.running_var, mixture.var),
            (self.running_norm_mean, mean),
            (self.running_norm_var, var),
        )
        for running, batch in pairs:
            running.lerp_(batch.to(running.dtype), self.momentum)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_components={self.num_components}, "
            f"em_iterations={self.em_iterations}, eps={self.eps}, momentum={self.momentum}"
        )
