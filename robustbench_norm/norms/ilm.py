"""Instance-Level Meta Normalization (ILM Norm): rescaling parameters predicted from the input's statistics.

Paper: S. Jia, D.-J. Chen, H.-T. Chen, "Instance-Level Meta Normalization", CVPR 2019, section 3.
Semantics follow the authors' code (Gasoonjia/ILM-Norm, reference/layers.md §4) where the two differ.

For an input x of shape (N, C, H, W), per sample n:

1. Key features (section 3.3.1). The C channels split into D = C / 16 key groups of 16 consecutive
   channels. Group k has mean m_k and unbiased variance s_k over its 16 x H x W values.
2. Encoder (3.3.2), one Linear shared by both branches: E_m = ReLU(W_1 m), E_s = ReLU(W_1 s), W_1 of
   shape (M, D) with M = max(2, D // reduction).
3. Decoders (3.3.3): D_beta = tanh(W_2 E_m), D_gamma = sigmoid(W_3 E_s), W_2, W_3 of shape (D, M).
4. Alignment (3.3.4): each key group's output is repeated to its 16 channels (channel c reads group
   floor(c / 16)) and added to learnable per-channel offsets:
   gamma_c = D_gamma[c // 16] + weight_c  (weight initialised to 1),
   beta_c  = D_beta[c // 16]  + bias_c    (bias initialised to 0).
5. Standardisation (3.1) by the base norm over G groups of consecutive channels: G = num_groups for
   ``ilm_gn`` (default min(32, C)), G = C for ``ilm_in``, G = 1 for ``ilm_ln``:
   x_hat = (x - mean_g) / sqrt(var_g + eps), var_g unbiased.
6. Output y = x_hat * gamma + beta; gamma and beta differ per sample. No running statistics: training and
   evaluation compute the same function, and each sample is normalised independently of the batch.

Paper vs code (and our choices):

* Unbiased variances (divide by n - 1) for the key features and the standardisation, as in the code;
  the paper's eq. (3) divides by n. This is not ``F.group_norm``, which is biased.
* A group of one value (e.g. ``ilm_in`` on 1 x 1 maps) has n - 1 = 0: we divide by max(n - 1, 1), so its
  variance is 0 and x_hat = 0 instead of NaN.
* One encoder shared by both branches (the code; the paper's eq. (4) also writes one W_1). All three
  Linear maps have no bias and PyTorch's default init.
* Width rule: the code uses M = D // reduction if D >= reduction else 2 in ilm_gn, and ``>`` in ilm_in and
  ilm_ln, so at D = 16 (C = 256) ilm_gn gets M = 1 and the others M = 2, and both are non-monotonic in D.
  We use M = max(2, D // reduction) for all three: identical to both rules except for 16 <= D <= 31,
  where it keeps the fallback width 2 rather than 1.
* The code asserts num_groups % reduction == 0 in ilm_gn and C % 32 == 0 in ilm_in; neither is needed
  and neither is copied. C must be a multiple of key_group_size and (ilm_gn) of num_groups.
* Gradients flow through all statistics (nothing detached), as in the code.

Computation. The key-group and standardisation-group moments follow exactly from the (N, C) per-channel
moments (law of total variance; unbiased by n / (n - 1) afterwards), so steps 1-6 run as one fused instance
standardisation plus an affine map per (n, c), with the auto-encoder on (N, C)-sized tensors
(:func:`robustbench_norm.norms.instance_affine.instance_affine`, written-out backward). On the CPU
(contiguous float32 / float64) the whole layer is one C call each way (``ilm_forward`` / ``ilm_backward`` in
``kernels.c``, the head in double; :func:`~robustbench_norm.norms.instance_affine.fused_instance_affine`), so a
training step is a handful of ATen ops rather than the head's tens of small ops and their autograd graph. An
empty batch gives an empty output.

Shapes: input and output (N, C, H, W). Cost: O(N C H W) for the statistics and the output, plus
O(N D M) for the auto-encoder; 3 D M + 2 C parameters.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_norm.norms.instance_affine import fused_instance_affine, instance_affine
from robustbench_norm.norms.registry import register_norm

PAPER = "Jia et al., Instance-Level Meta Normalization, CVPR 2019"


class _ILMNorm(nn.Module):
    """ILM Norm around a standardisation over ``num_groups`` groups of consecutive channels."""

    def __init__(
        self, num_features: int, num_groups: int, *, key_group_size: int, reduction: int, eps: float
    ) -> None:
        super().__init__()
        for name, value in (("key_group_size", key_group_size), ("reduction", reduction)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int (>= 1), got {value!r}")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < float("inf"):
            raise ValueError(f"eps must be a positive finite float, got {eps!r}")
        if num_features % key_group_size:
            raise ValueError(
                f"num_features={num_features} is not a multiple of key_group_size={key_group_size}; "
                f"valid num_features: positive multiples of {key_group_size}"
            )
        if num_features % num_groups:
            raise ValueError(
                f"num_groups={num_groups} does not divide num_features={num_features}; valid num_groups: "
                f"{_divisors(num_features)}"
            )
        self.num_features = num_features
        self.num_groups = num_groups
        self.key_group_size = key_group_size
        self.reduction = reduction
        self.eps = float(eps)
        num_keys = num_features // key_group_size
        width = max(2, num_keys // reduction)
        self.encoder = nn.Linear(num_keys, width, bias=False)
        self.weight_decoder = nn.Linear(width, num_keys, bias=False)
        self.bias_decoder = nn.Linear(width, num_keys, bias=False)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = standardise(x) * (sigmoid-branch + weight) + (tanh-branch + bias); (N, C, H, W) -> same."""
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} expects input (N, C, H, W) with C={self.num_features}, "
                f"got shape {tuple(x.shape)}"
            )
        params = (
            self.encoder.weight, self.weight_decoder.weight, self.bias_decoder.weight, self.weight, self.bias
        )
        y = fused_instance_affine(x, "ilm", self._setup(), self._cache_size(x.shape[0]), (), params)
        if y is not None:
            return y
        return instance_affine(x, functools.partial(self._head, x.shape[2] * x.shape[3]), *params)[0]

    def _setup(self) -> tuple[int, int, int, float]:
        """(key_group_size, channels per standardisation group, encoder width, eps): the C head's arguments."""
        return self.key_group_size, self.num_features // self.num_groups, self.encoder.weight.shape[0], self.eps

    def _cache_size(self, n: int) -> int:
        """What the C head keeps per sample for its backward: key moments, encoder outputs (both branches),
        decoder outputs, standardisation-group means and reciprocal standard deviations."""
        num_keys, width = self.num_features // self.key_group_size, self.encoder.weight.shape[0]
        return n * (4 * num_keys + 2 * width + 2 * self.num_groups)

    def _head(
        self,
        count: int,
        mean_in: torch.Tensor,
        var_in: torch.Tensor,
        encoder: torch.Tensor,
        weight_decoder: torch.Tensor,
        bias_decoder: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, offset) per (n, c), y = (x - mu_in) * scale + offset, from the (N, C) instance moments
        over ``count`` = H * W values each (steps 1-6 of the module docstring)."""
        key_mean, key_var = _pooled_moments(mean_in, var_in, self.key_group_size, count)
        gamma = torch.sigmoid(F.linear(torch.relu(F.linear(key_var, encoder)), weight_decoder))
        beta = torch.tanh(F.linear(torch.relu(F.linear(key_mean, encoder)), bias_decoder))
        gamma = _per_channel(gamma, self.key_group_size) + weight
        beta = _per_channel(beta, self.key_group_size) + bias
        per_group = self.num_features // self.num_groups
        mean, var = _pooled_moments(mean_in, var_in, per_group, count)
        mean = _per_channel(mean, per_group)
        scale = gamma * _per_channel(torch.rsqrt(var + self.eps), per_group)
        return scale, beta + (mean_in - mean) * scale

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_groups={self.num_groups}, key_group_size={self.key_group_size}, "
            f"reduction={self.reduction}, eps={self.eps}"
        )


@register_norm("ilm_gn", batch_independent=True, paper=PAPER)
class ILMGroupNorm(_ILMNorm):
    """ILM Norm wrapping Group Normalization's standardisation (module docstring: formula, cost).

    Args:
        num_features: C, a multiple of key_group_size and of num_groups.
        num_groups: standardisation groups of consecutive channels; default min(32, C).
        key_group_size: channels per key group of the auto-encoder's input. Default 16.
        reduction: encoder width M = max(2, (C / key_group_size) // reduction). Default 16.
        eps: added to the unbiased variance under the square root. Default 1e-5.
    """

    def __init__(
        self,
        num_features: int,
        *,
        num_groups: int | None = None,
        key_group_size: int = 16,
        reduction: int = 16,
        eps: float = 1e-5,
    ) -> None:
        _check_num_features(num_features)
        if num_groups is None:
            num_groups = min(32, num_features)
        if not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups < 1:
            raise ValueError(f"num_groups must be a positive int dividing {num_features}, got {num_groups!r}")
        super().__init__(num_features, num_groups, key_group_size=key_group_size, reduction=reduction, eps=eps)


@register_norm("ilm_in", batch_independent=True, paper=PAPER)
class ILMInstanceNorm(_ILMNorm):
    """ILM Norm wrapping Instance Normalization's standardisation (one group per channel).

    Args: as :class:`ILMGroupNorm`, without num_groups (it is C).
    """

    def __init__(
        self, num_features: int, *, key_group_size: int = 16, reduction: int = 16, eps: float = 1e-5
    ) -> None:
        _check_num_features(num_features)
        super().__init__(
            num_features, num_features, key_group_size=key_group_size, reduction=reduction, eps=eps
        )


@register_norm("ilm_ln", batch_independent=True, paper=PAPER)
class ILMLayerNorm(_ILMNorm):
    """ILM Norm wrapping Layer Normalization's standardisation (one group of all C x H x W values).

    Args: as :class:`ILMGroupNorm`, without num_groups (it is 1).
    """

    def __init__(
        self, num_features: int, *, key_group_size: int = 16, reduction: int = 16, eps: float = 1e-5
    ) -> None:
        _check_num_features(num_features)
        super().__init__(num_features, 1, key_group_size=key_group_size, reduction=reduction, eps=eps)


def _pooled_moments(
    mean_in: torch.Tensor, var_in: torch.Tensor, size: int, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance of groups of ``size`` consecutive channels, (N, C) -> (N, C / size), from
    each channel's mean and biased variance over ``count`` values (law of total variance). A group of a
    single value has variance 0 (n - 1 clamped to 1)."""
    n, channels = mean_in.shape
    means, variances = mean_in.view(n, channels // size, size), var_in.view(n, channels // size, size)
    mean = means.mean(-1)
    biased = (variances + (means - mean[..., None]) ** 2).mean(-1)
    values = size * count
    return mean, biased * (values / max(values - 1, 1))


def _per_channel(per_group: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C / size) -> (N, C): each group's value repeated for its ``size`` consecutive channels."""
    n, groups = per_group.shape
    return per_group[:, :, None].expand(n, groups, size).reshape(n, groups * size)


def _check_num_features(num_features: object) -> None:
    if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features < 1:
        raise ValueError(f"num_features must be a positive int, got {num_features!r}")


def _divisors(number: int) -> list[int]:
    return [d for d in range(1, number + 1) if number % d == 0]
