"""Context Normalization (CN): per-context mean and variance learned from a context id.

Paper: B. Faye, M.-C. Lebbah, H. Azzag et al., "Context Normalization Layer with Applications",
ICDM Workshops 2023 (arXiv 2303.07651), section III, eq. (8), (9) and Algorithms 1-3.

Every sample i carries a context id r in {0, ..., T-1} (a domain, a superclass, day or night). CN treats
the contexts as the components of a Gaussian mixture whose parameters are learned by backpropagation
instead of EM (Algorithm 1)::

    alpha_r   = W_r onehot(r) + b_r                 identifier embedding, width E = embedding_dim
    mu_r      = W_mu alpha_r + b_mu                 mean, one value per feature
    sigma_r^2 = softplus(W_s alpha_r + b_s)         variance, one positive value per feature
    CN:  y_i  = (x_i - mu_r) / sqrt(sigma_r^2 + eps)                                      eq. (8)

Two placements share this math. ``contextnorm`` (CN-Channels) takes images (N, C, H, W) and holds one
(mu, sigma^2) per channel, broadcast over H x W; it sits on the input image (placement "input").
``contextnorm_patches`` (CN-Patches) takes ViT patch tokens (N, T, D) and holds one value per feature D,
broadcast over the tokens (placement "tokens").

CN+ (eq. 9, Algorithm 3) is an inference procedure, active in eval mode after
``set_context_inference(model, "cn+")``. It needs no context ids: each element x (one value of one
feature) gets the posterior tau_r(x) = N(x | mu_r, s_r) / sum_j N(x | mu_j, s_j) with uniform priors
1/T, and the batch B (all values of that feature: N x H x W, or N x T) is normalised Mixture-Norm style::

    tau_hat_r(x_i) = tau_r(x_i) / sum_{j in B} tau_r(x_j)
    m_r  = sum_{j in B} tau_hat_r(x_j) x_j,      v_r = sum_{j in B} tau_hat_r(x_j) (x_j - m_r)^2
    CN+: y_i = sqrt(T) sum_r tau_r(x_i) (x_i - m_r) / sqrt(v_r + eps)                     eq. (9)

E_B[tau_hat . f] of the paper is read as the tau_hat-weighted average above (tau_hat sums to 1 over B,
as in Kalayeh and Shah's Mixture Normalization). CN+ therefore uses statistics of the test batch: a layer
in CN+ mode is batch-dependent at test time, while CN (training, and eval in "cn" mode) is not.

Choices where the paper is silent (the authors' released code differs; see reference/layers.md §3.1):

* Positivity: sigma^2 = softplus(head). The paper's head is affine with no positivity; the released code
  predicts log sigma and uses exp. Softplus keeps sigma^2 > 0 without exp's overflow and steep gradients.
* Normaliser: sqrt(sigma^2 + eps) as in eq. (8); the released code divides by (sigma + 1e-3).
* No affine (gamma, beta) after normalisation, as in the paper and the released code.
* Initialisation: the embedder has PyTorch's default Linear init; both heads have zero weights, the mean
  head a zero bias and the variance head the bias softplus^-1(1). At start every context has mu = 0 and
  sigma^2 = 1, so the layer is the identity up to 1/sqrt(1 + eps); the heads' weights receive gradient
  alpha_r at once and the contexts separate from the first step.
* Embedding width: E = 32 by default. mu_r is affine in onehot(r) through a rank-E map, so any table of
  per-context means (and variance pre-activations) is reachable iff E >= min(T - 1, F); 32 covers up to
  33 contexts, e.g. CIFAR-100's 20 superclasses, at any width.
* In CN+ the context Gaussians have variance sigma_r^2 + eps (the scale eq. (8) divides by), so the
  densities stay finite; posteriors and tau_hat are computed in log space (no 0/0 for a context that
  explains no element of the batch).

Context ids reach the layer through :func:`robustbench_norm.norms.routing.use_context` (a ``with`` block
around the forward call); a forward in CN mode without ids raises. ``translate`` maps an input from one
context to another (the paper's day -> night rendering).

Cost: CN is O(N F S) for N samples, F features and S positions (H W or T), plus O(T E F) for the
per-context table. CN+ is O(T N F S) time and memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_norm.norms.registry import register_norm
from robustbench_norm.norms.routing import ContextConsumer, check_context_ids

PAPER = "Faye et al., Context Normalization Layer with Applications, ICDM-W 2023 (arXiv 2303.07651)"
_SOFTPLUS_INVERSE_OF_ONE = math.log(math.expm1(1.0))


class _ContextNorm(ContextConsumer):
    """Shared CN / CN+ math; subclasses fix the input layout (rank and feature axis)."""

    input_rank: int
    feature_axis: int
    layout: str

    def __init__(
        self, num_features: int, *, num_contexts: int = 2, embedding_dim: int = 32, eps: float = 1e-5
    ) -> None:
        _check_positive_int("num_features", num_features)
        _check_positive_int("num_contexts", num_contexts)
        _check_positive_int("embedding_dim", embedding_dim)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < math.inf:
            raise ValueError(f"eps must be a positive finite float, got {eps!r}")
        super().__init__(num_contexts)
        self.num_features = num_features
        self.embedding_dim = embedding_dim
        self.eps = float(eps)
        self.embedder = nn.Linear(num_contexts, embedding_dim)
        self.mean_head = nn.Linear(embedding_dim, num_features)
        self.var_head = nn.Linear(embedding_dim, num_features)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default-init embedder; heads giving mu_r = 0 and sigma_r^2 = 1 for every context."""
        self.embedder.reset_parameters()
        nn.init.zeros_(self.mean_head.weight)
        nn.init.zeros_(self.mean_head.bias)
        nn.init.zeros_(self.var_head.weight)
        nn.init.constant_(self.var_head.bias, _SOFTPLUS_INVERSE_OF_ONE)

    def context_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, sigma^2) of every context, each of shape (num_contexts, num_features) (Algorithm 1)."""
        alpha = self.embedder.weight.t() + self.embedder.bias  # row r = W_r onehot(r) + b_r
        return self.mean_head(alpha), F.softplus(self.var_head(alpha))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CN (eq. 8) with the ids of :func:`use_context`; CN+ (eq. 9) in eval mode when inference is "cn+"."""
        self._check_input(x)
        mean, var = self.context_statistics()
        if not self.training and self.inference == "cn+":
            return context_norm_plus(x, mean, var, self.eps, self.feature_axis)
        ids = self.current_context(x.shape[0]).to(mean.device)
        return (x - self._per_sample(mean, ids)) * torch.rsqrt(self._per_sample(var, ids) + self.eps)

    def translate(
        self, x: torch.Tensor, source_context: int | torch.Tensor, target_context: int | torch.Tensor
    ) -> torch.Tensor:
        """Re-render ``x`` from the source context in the target one (the paper's day -> night images).

        x' = (x - mu_s) / sqrt(sigma_s^2 + eps) * sqrt(sigma_t^2 + eps) + mu_t: normalise with the
        source context's parameters, de-normalise with the target's. Each context is an int (the whole
        batch) or an integer tensor of shape (N,). Translating back with the roles swapped returns x.
        """
        self._check_input(x)
        mean, var = self.context_statistics()
        source = self._as_ids(source_context, x.shape[0], mean.device)
        target = self._as_ids(target_context, x.shape[0], mean.device)
        std_source = torch.sqrt(self._per_sample(var, source) + self.eps)
        std_target = torch.sqrt(self._per_sample(var, target) + self.eps)
        return (x - self._per_sample(mean, source)) / std_source * std_target + self._per_sample(mean, target)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_contexts={self.num_contexts}, embedding_dim={self.embedding_dim}, "
            f"eps={self.eps}, inference={self.inference!r}"
        )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.input_rank or x.shape[self.feature_axis] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} expects input {self.layout} with {self.num_features} features on "
                f"axis {self.feature_axis}, got shape {tuple(x.shape)}"
            )

    def _per_sample(self, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``table[ids]`` shaped to broadcast against the input."""
        shape = [ids.shape[0]] + [1] * (self.input_rank - 1)
        shape[self.feature_axis] = self.num_features
        return table[ids].view(shape)

    def _as_ids(self, context: int | torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
        if isinstance(context, int) and not isinstance(context, bool):
            context = torch.full((batch_size,), context, dtype=torch.long)
        return check_context_ids(context, batch_size, self.num_contexts).to(device)


@register_norm(
    "contextnorm",
    placement="input",
    needs_context=True,
    batch_independent=True,
    eval_modes=("cn", "cn+"),
    paper=PAPER,
)
class ContextNorm2d(_ContextNorm):
    """CN-Channels: Context Normalization of an image's channels.

    Input and output (N, C, H, W); mu_r and sigma_r^2 are vectors of size C broadcast over H x W.
    See the module docstring for the formulas, CN+, initialisation and cost.

    Args:
        num_features: C, the number of channels.
        num_contexts: T, the number of contexts (ids lie in [0, T)). Default 2.
        embedding_dim: E, width of the context embedding alpha_r. Default 32.
        eps: added to sigma^2 under the square root. Default 1e-5.
    """

    input_rank = 4
    feature_axis = 1
    layout = "(N, C, H, W)"


@register_norm(
    "contextnorm_patches",
    placement="tokens",
    needs_context=True,
    batch_independent=True,
    eval_modes=("cn", "cn+"),
    paper=PAPER,
)
class ContextNormPatches(_ContextNorm):
    """CN-Patches: Context Normalization of ViT patch tokens, per feature.

    Input and output (N, T, D); mu_r and sigma_r^2 are vectors of size D broadcast over the T tokens.
    See the module docstring for the formulas, CN+, initialisation and cost.

    Args:
        num_features: D, the token width.
        num_contexts: the number of contexts (ids lie in [0, num_contexts)). Default 2.
        embedding_dim: E, width of the context embedding alpha_r. Default 32.
        eps: added to sigma^2 under the square root. Default 1e-5.
    """

    input_rank = 3
    feature_axis = 2
    layout = "(N, T, D)"


def context_norm_plus(
    x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float, feature_axis: int
) -> torch.Tensor:
    """CN+ (eq. 9): posterior-weighted Mixture-Norm of ``x`` over all contexts, uniform priors.

    ``mean`` and ``var`` (T, F) are the contexts' learned (mu_r, sigma_r^2); F is the size of
    ``x``'s ``feature_axis``, and every other axis of ``x`` forms the batch B of each feature.
    """
    num_contexts, num_features = mean.shape
    shape = [num_contexts] + [1] * x.dim()
    shape[1 + feature_axis] = num_features
    mu, scale2 = mean.view(shape), (var + eps).view(shape)
    xs = x.unsqueeze(0)  # (T, *x.shape): one copy of the batch per context
    log_density = -0.5 * (torch.log(2 * math.pi * scale2) + (xs - mu) ** 2 / scale2)
    log_tau = torch.log_softmax(log_density, dim=0)  # uniform priors 1/T cancel
    batch_dims = [d for d in range(1, xs.dim()) if d != 1 + feature_axis]
    tau_hat = torch.exp(log_tau - torch.logsumexp(log_tau, dim=batch_dims, keepdim=True))
    centred = xs - (tau_hat * xs).sum(batch_dims, keepdim=True)
    weighted_var = (tau_hat * centred**2).sum(batch_dims, keepdim=True)
    normalised = centred * torch.rsqrt(weighted_var + eps)
    return math.sqrt(num_contexts) * (log_tau.exp() * normalised).sum(0)


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int (>= 1), got {value!r}")
