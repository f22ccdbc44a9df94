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
1e-6, so a dead (constant) channel or an empty component gives finite outputs. Per training step, for each
channel: take at most ``EM_MAX_VALUES`` evenly strided values of the batch (all of them for small batches),
start as above, and run ``em_iterations`` rounds of E-step (posteriors tau_k of every sampled value under
the current mixture) and M-step (lambda_k = mean tau_k, mu_k = tau-weighted mean, v_k = tau-weighted
variance); then normalise *every* value of the batch with the fitted mixture.

Gradient. The EM-fitted mixture parameters (lambda, mu, v) are constants for backprop (stop-gradient: EM
runs under ``torch.no_grad``); the posteriors tau_k(x) and the normalising statistics E_k[x],
E_k[(x - E_k[x])^2] are differentiable functions of x, as BatchNorm's batch statistics are.

Eval. Running estimates (PyTorch-style ``momentum``, weight of the new batch) of the mixture parameters
(``running_prior``, ``running_mean``, ``running_var``) give the posteriors, and running estimates of the
normalising statistics (``running_norm_mean``, ``running_norm_var``) replace E_k[.]; the output of a sample then
does not depend on its batch. Initial values: the mixture the EM start gives for N(0, 1) data.

An empty batch gives an empty output and leaves the running estimates untouched; a batch whose statistics
are not finite (NaN or inf input) leaves the affected running entries untouched.

Shapes: input and output ``(N, C, H, W)``; ``weight``, ``bias``: ``(C,)``; mixture parameters and running
buffers: ``(C, K)``. Cost: O(NCHW * K) time for the normalisation, plus O(C * EM_MAX_VALUES * K *
em_iterations) for EM. On the CPU (contiguous float32 / float64) EM, forward and backward are one C kernel
each (``kernels.c``, :mod:`robustbench_norm.norms.native`): one channel at a time, its posteriors computed
once (in chunks that stay in the cache, the training moments summed in the same pass); a forward that needs a
gradient keeps them for the backward (K values per input value, as the ATen path keeps its K posterior
tensors). Elsewhere (GPU) a custom autograd function over K separate (N, C, H, W) posteriors with a
written-out backward: about 20 K passes over the batch forward and 20 K backward.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from robustbench_norm.norms import native
from robustbench_norm.norms.registry import register_norm
from robustbench_norm.norms.standard import (
    check_eps,
    check_input_2d,
    check_momentum,
    check_num_features,
    update_running_,
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
    """Deterministic EM start from the batch moments of each channel of ``x`` (N, C, H, W) (two passes: the
    mean, then the mean square about it; ``torch.var_mean``'s CPU kernel took 10x as long)."""
    mean = x.mean(dim=(0, 2, 3))
    var = (x - _channel_map(mean)).square().mean(dim=(0, 2, 3))
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
    """At most ``max_values`` evenly strided values of each channel of ``x`` (N, C, H, W), laid out as
    (1, C, 1, M) so that EM's reductions over the values run along the contiguous last axis."""
    n, c = x.shape[:2]
    maps = x.reshape(n, c, -1)
    stride = max(1, -(-(n * maps.shape[2]) // max_values))
    if maps.shape[2] % stride == 0:  # the same values, without copying the whole batch first
        return maps[:, :, ::stride].transpose(0, 1).reshape(c, -1).contiguous()[None, :, None, :]
    return maps.transpose(0, 1).reshape(c, -1)[:, ::stride].contiguous()[None, :, None, :]


@torch.no_grad()
def fit_mixture(x: torch.Tensor, num_components: int, iterations: int, var_floor: float) -> GaussianMixture:
    """EM fit of one K-component 1-D mixture per channel of ``x`` (N, C, H, W), from :func:`initial_mixture`.

    Each iteration: E-step ``tau = posteriors(x, mixture)``; M-step ``lambda_k = mass_k / (N H W)`` (floored at
    :data:`MIN_PRIOR`), ``mu_k = E_k[x]``, ``v_k = E_k[(x - mu_k)^2]`` (floored at ``var_floor``). No gradient.
    The fit sees at most :data:`EM_MAX_VALUES` values per channel (:func:`em_sample`).
    """
    x = em_sample(x)
    count = x.numel() // x.shape[1]
    if (library := native.kernels(x)) is not None:  # start and iterations as one C kernel (kernels.c)
        mixture = GaussianMixture(*x.new_empty(3, x.shape[1], num_components))
        z = normal_quantiles(num_components, dtype=x.dtype)
        if native.call(library, "mixture_em", x.dtype, x, x.shape[1], count, num_components, iterations,
                       float(var_floor), MIN_PRIOR, torch.finfo(x.dtype).tiny, z, *mixture):
            raise MemoryError("mixture_em could not allocate its scratch buffers")
        return mixture
    mixture = initial_mixture(x, num_components, var_floor)
    for _ in range(iterations):
        mass, mean, var = weighted_moments(x, posteriors(x, mixture))
        mixture = GaussianMixture((mass / count).clamp_min(MIN_PRIOR), mean, var.clamp_min(var_floor))
    return mixture


def _channel_map(t: torch.Tensor) -> torch.Tensor:
    """(C,) -> (1, C, 1, 1), to broadcast against x (N, C, H, W)."""
    return t.view(1, -1, 1, 1)


def _column(t: torch.Tensor, k: int) -> torch.Tensor:
    """Component k of a (C, K) tensor, shaped (1, C, 1, 1)."""
    return _channel_map(t[:, k])


def _component_posteriors(x: torch.Tensor, mixture: GaussianMixture, scratch: torch.Tensor) -> list[torch.Tensor]:
    """:func:`posteriors` as K separate (N, C, H, W) tensors (no (K, N, C, H, W) temporaries); ``scratch``
    (like ``x``) is overwritten."""
    const = mixture.prior.log() - 0.5 * mixture.var.log()
    inverse = -0.5 / mixture.var
    logits = [
        torch.sub(x, _column(mixture.mean, k)).square_().mul_(_column(inverse, k)).add_(_column(const, k))
        for k in range(mixture.mean.shape[1])
    ]
    if len(logits) == 1:
        return [logits[0].fill_(1.0)]
    top = torch.maximum(logits[0], logits[1], out=scratch)
    for logit in logits[2:]:
        torch.maximum(top, logit, out=top)
    for logit in logits:
        logit.sub_(top).exp_()
    total = torch.add(logits[0], logits[1], out=scratch)
    for logit in logits[2:]:
        total.add_(logit)
    return [logit.div_(total) for logit in logits]


def _component_moments(
    x: torch.Tensor, tau: list[torch.Tensor], scratch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`weighted_moments` from K separate posteriors: mass, E_k[x], E_k[(x - E_k[x])^2], each (C, K);
    ``scratch`` (like ``x``) is overwritten."""
    masses, means, variances = [], [], []
    for tau_k in tau:
        mass = tau_k.sum((0, 2, 3)).clamp_min_(torch.finfo(tau_k.dtype).tiny)
        mean = torch.mul(tau_k, x, out=scratch).sum((0, 2, 3)).div_(mass)
        deviation = torch.sub(x, _channel_map(mean), out=scratch).square_().mul_(tau_k)
        masses.append(mass)
        means.append(mean)
        variances.append(deviation.sum((0, 2, 3)).div_(mass))
    return torch.stack(masses, 1), torch.stack(means, 1), torch.stack(variances, 1)


class _MixtureNormFunction(torch.autograd.Function):
    """``y = gamma * sum_k tau_k(x) * a_k * (x - m_k) + beta`` with a_k = (lambda_k (s_k + eps))^(-1/2);
    (m_k, s_k) the posterior-weighted batch moments (training) or given constants (eval). Returns
    (y, m, s); the mixture is a constant. Backward written out (:func:`_input_grad`)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        mixture: GaussianMixture,
        moments: tuple[torch.Tensor, torch.Tensor] | None,
        eps: float,
        keep: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.library = native.kernels(x, weight, bias, *mixture, *(moments or ()))
        if ctx.library is not None:
            y, mass, mean, var, kept = _native_forward(ctx.library, x, weight, bias, mixture, moments, eps, keep)
            ctx.save_for_backward(x, weight)
            ctx.kept = kept  # the posteriors: the layer's own buffer, read by the backward only
            ctx.constants = (mixture, mass, mean, var, None, eps)
            ctx.mark_non_differentiable(mean, var)
            return y, mean, var
        scratch = torch.empty_like(x)
        tau = _component_posteriors(x, mixture, scratch)
        mass, mean, var = _component_moments(x, tau, scratch) if moments is None else (None, *moments)
        scale = (mixture.prior * (var + eps)).rsqrt()
        x_hat = torch.empty_like(x)
        for k, tau_k in enumerate(tau):
            term = torch.sub(x, _column(mean, k), out=scratch).mul_(_column(scale, k))
            if k == 0:
                torch.mul(term, tau_k, out=x_hat)
            else:
                x_hat.addcmul_(term, tau_k)
        y = torch.mul(x_hat, _channel_map(weight), out=scratch).add_(_channel_map(bias))
        ctx.save_for_backward(x, weight, x_hat, *tau)
        ctx.constants = (mixture, mass, mean, var, scale, eps)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor, _mean: torch.Tensor, _var: torch.Tensor) -> tuple:
        if ctx.library is not None:
            return (*_native_backward(ctx, grad_y.contiguous()), None, None, None, None)
        x, weight, x_hat, *tau = ctx.saved_tensors
        mixture, mass, mean, var, scale, eps = ctx.constants
        grad_y = grad_y.contiguous()
        grad_weight = torch.mul(grad_y, x_hat).sum((0, 2, 3))
        grad_bias = grad_y.sum((0, 2, 3))
        grad_x = None
        if ctx.needs_input_grad[0]:
            g = grad_y * _channel_map(weight)
            grad_x = _input_grad(x, g, tau, mixture, mass, mean, var, scale, eps)
        return grad_x, grad_weight, grad_bias, None, None, None, None


def _native_forward(
    library: Any,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mixture: GaussianMixture,
    moments: tuple[torch.Tensor, torch.Tensor] | None,
    eps: float,
    keep: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, posterior masses (training) or None, m, s, posteriors) from the C kernel (``kernels.c``, same
    formulas); the posteriors (C, K, N H W) are kept for the backward when ``keep``, else an empty tensor."""
    n, c, h, w = x.shape
    components = mixture.mean.shape[1]
    y = torch.empty_like(x)
    kept = x.new_empty((c, components, n * h * w) if keep else (0,))
    if moments is None:
        mean, var, mass = (x.new_empty(c, components) for _ in range(3))
    else:
        (mean, var), mass = moments, x.new_empty(c, components)
    if native.call(library, "mixture_forward", x.dtype, x, weight, bias, *mixture, mean, var, mass,
                   int(moments is None), y, kept, int(keep), n, c, h * w, components, float(eps),
                   torch.finfo(x.dtype).tiny):
        raise MemoryError("mixture_forward could not allocate its per-channel scratch")
    return y, mass if moments is None else None, mean, var, kept


def _native_backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dL/dx, dL/dweight, dL/dbias) from the C kernel (the formulas of :func:`_input_grad`)."""
    x, weight = ctx.saved_tensors
    mixture, mass, mean, var, _, eps = ctx.constants
    n, c, h, w = x.shape
    grad_x = torch.empty_like(x)
    grad_weight, grad_bias = (torch.zeros(c, dtype=torch.float64) for _ in range(2))
    training = mass is not None
    if native.call(ctx.library, "mixture_backward", x.dtype, grad_y, x, weight, *mixture, mean, var,
                   mass if training else mean, int(training), ctx.kept, grad_x, grad_weight, grad_bias, n, c,
                   h * w, mixture.mean.shape[1], float(eps)):
        raise MemoryError("mixture_backward could not allocate its per-channel scratch")
    return grad_x, grad_weight.to(x.dtype), grad_bias.to(x.dtype)


def mixture_normalize(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mixture: GaussianMixture,
    moments: tuple[torch.Tensor, torch.Tensor] | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``y = gamma * sum_k tau_k(x) / sqrt(lambda_k) * (x - m_k) / sqrt(s_k + eps) + beta`` for a fixed
    ``mixture``, with (m_k, s_k) = ``moments`` or, if None, the posterior-weighted batch moments E_k[x] and
    E_k[(x - E_k[x])^2]. Returns (y, m, s); y is differentiable in x, weight and bias (m, s are not)."""
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias))  # a backward will run
    return _MixtureNormFunction.apply(x, weight, bias, mixture, moments, eps, keep)


def _input_grad(
    x: torch.Tensor,
    g: torch.Tensor,
    tau: list[torch.Tensor],
    mixture: GaussianMixture,
    mass: torch.Tensor | None,
    mean: torch.Tensor,
    var: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """dL/dx for g = dL/dx_hat. With e_k = x - m_k and, in training (``mass`` given), the gradients of the
    batch moments G^m_k = -a_k sum g tau_k and G^s_k = -a_k sum(g tau_k e_k) / (2 (s_k + eps)):

        T_k = g a_k e_k + (G^m_k e_k + G^s_k (e_k^2 - s_k)) / M_k          (dL/dtau_k)
        dL/dx = sum_k tau_k [g a_k + (G^m_k + 2 G^s_k e_k) / M_k - T_k D_k] + T D,

    with D_k = (x - mu_k) / v_k (mu_k, v_k the mixture's means and variances), T = sum_k tau_k T_k and
    D = sum_k tau_k D_k (the softmax), M_k the posterior masses. In eval the moments are constants and
    the G terms vanish. One pass over k, with three accumulators and three scratch tensors.
    """
    grad_x, total, spread = torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x)
    e, t, tmp = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    for k, tau_k in enumerate(tau):
        torch.sub(x, _column(mean, k), out=e)
        torch.mul(g, _column(scale, k), out=t)  # g a_k
        if mass is not None:
            gathered = torch.mul(g, tau_k, out=tmp).sum((0, 2, 3))
            spread_sum = tmp.mul_(e).sum((0, 2, 3))
            c1 = _channel_map(-scale[:, k] * gathered / mass[:, k])  # G^m_k / M_k
            c2 = _channel_map(-0.5 * scale[:, k] * spread_sum / ((var[:, k] + eps) * mass[:, k]))  # G^s_k / M_k
            t.add_(c1).mul_(e).add_(torch.mul(e, e, out=tmp).sub_(_column(var, k)).mul_(c2))  # T_k
            e.mul_(2.0 * c2).add_(c1).addcmul_(g, _column(scale, k))  # g a_k + (G^m_k + 2 G^s_k e_k) / M_k
        else:
            t.mul_(e)  # T_k = g a_k e_k
            torch.mul(g, _column(scale, k), out=e)
        total.addcmul_(t, tau_k)
        d = torch.sub(x, _column(mixture.mean, k), out=tmp).div_(_column(mixture.var, k))  # D_k
        spread.addcmul_(tau_k, d)
        grad_x.addcmul_(tau_k, e.sub_(t.mul_(d)))
    return grad_x.addcmul_(total, spread)


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
    Cost: O(NCHW * K) plus EM on at most ``EM_MAX_VALUES`` values per channel (module docstring).
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
        if x.shape[0] == 0:
            return x.clone()  # an empty batch: nothing to normalise, running estimates untouched
        if self.training:
            mixture = fit_mixture(x.detach(), self.num_components, self.em_iterations, self.eps)
            moments = None
        else:
            mixture = GaussianMixture(self.running_prior, self.running_mean, self.running_var)
            moments = (self.running_norm_mean, self.running_norm_var)
        y, mean, var = mixture_normalize(x, self.weight, self.bias, mixture, moments, self.eps)
        if self.training:
            self._update_running(mixture, mean, var)
        return y

    def _update_running(self, mixture: GaussianMixture, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Running estimates move toward the batch's (entries whose batch value is not finite stay)."""
        pairs = (
            (self.running_prior, mixture.prior),
            (self.running_mean, mixture.mean),
            (self.running_var, mixture.var),
            (self.running_norm_mean, mean),
            (self.running_norm_var, var),
        )
        for running, batch in pairs:
            update_running_(running, batch, self.momentum)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_components={self.num_components}, "
            f"em_iterations={self.em_iterations}, eps={self.eps}, momentum={self.momentum}"
        )
