"""Switchable Normalization: a learned softmax mixture of instance, layer and batch statistics.

Luo, Ren, Peng, Zhang, Li, "Differentiable Learning-to-Normalize via Switchable Normalization", ICLR 2019.

Formula. With per-sample, per-channel statistics over (H, W), mu_in[n,c] and var_in[n,c], the layer and
batch statistics follow from them exactly (law of total variance, equal counts per (n, c)):

    mu_ln[n]  = mean_c mu_in[n,c],   var_ln[n] = mean_c (var_in[n,c] + (mu_in[n,c] - mu_ln[n])^2)
    mu_bn[c]  = mean_n mu_in[n,c],   var_bn[c] = mean_n (var_in[n,c] + (mu_in[n,c] - mu_bn[c])^2)
    mu  = sum_z softmax(mean_weight)_z mu_z,   var = sum_z softmax(var_weight)_z var_z,   z in (in, ln, bn)
    y   = (x - mu) / sqrt(var + eps) * gamma_c + beta_c

Two separate softmaxes over three logits each (initialised to ones, so 1/3 each), per-channel affine.

Train/eval. Training uses the batch's mu_bn, var_bn and updates running estimates PyTorch-style,
``running <- (1 - momentum) * running + momentum * batch`` (momentum = weight of the new batch, default 0.1);
eval replaces mu_bn, var_bn by them. ``running_mean`` starts at 0 and ``running_var`` at 1, as in BatchNorm.
``running_var`` stores var_bn exactly as used in training (biased).

Departures from the authors' PyTorch code (reference/layers.md 5.1), all deliberate:
* **biased** instance variance. The reference uses the unbiased one, which is NaN on a 1x1 map (one value,
  n - 1 = 0; their issue #5) and makes var_ln, var_bn neither biased nor unbiased estimates. The biased
  variance of one value is 0, so 1x1 maps (e.g. after global pooling) give finite outputs: var_in = 0 and
  var_ln, var_bn come from the spread across channels and samples;
* PyTorch-style momentum 0.1, where the reference uses Keras-style 0.9 (weight of the **old** value);
* running_var initialised to 1, where the reference initialises it to 0.

Shapes: input and output ``(N, C, H, W)``; ``weight``, ``bias``, running buffers ``(C,)``; ``mean_weight``,
``var_weight``: ``(3,)``. Cost: O(NCHW): one fused instance standardisation plus an affine map per (n, c), with
the mixing done on (N, C) tensors (:func:`robustbench_norm.norms.instance_affine.instance_affine`, written-out
backward); on the CPU (float32 / float64, running buffers of the input's dtype) one C call each way
(``switchnorm_forward`` / ``switchnorm_backward`` in ``kernels.c``, the mixing in double, the running estimates
updated in the forward; :func:`~robustbench_norm.norms.instance_affine.fused_instance_affine`). An empty batch
gives an empty output and leaves the running estimates untouched; a batch whose statistics are not finite (NaN
or inf input) leaves the affected running entries untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from robustbench_norm.norms.instance_affine import fused_instance_affine, instance_affine
from robustbench_norm.norms.registry import register_norm
from robustbench_norm.norms.standard import (
    check_eps,
    check_input_2d,
    check_momentum,
    check_num_features,
    update_running_,
)


@register_norm(
    "switchnorm",
    batch_stats_at_test=False,
    batch_independent=False,
    paper="Luo et al., Differentiable Learning-to-Normalize via Switchable Normalization, ICLR 2019",
)
class SwitchNorm(nn.Module):
    """Switchable Normalization (Luo et al., 2019): softmax-weighted IN, LN and BN mean and variance.

    ``y = (x - sum_z w^m_z mu_z) / sqrt(sum_z w^v_z var_z + eps) * gamma_c + beta_c`` over z in (IN, LN, BN),
    ``w^m = softmax(mean_weight)``, ``w^v = softmax(var_weight)``, all variances biased. BN terms: batch
    statistics in training (running estimates updated with PyTorch-style ``momentum``), running estimates
    in eval. See the module docstring for the statistics and the departures from the reference code
    (biased IN variance, so a 1x1 map gives no NaN).

    Shapes: input and output ``(N, C, H, W)``; ``weight``, ``bias``: ``(C,)``; ``mean_weight``, ``var_weight``:
    ``(3,)``; buffers ``running_mean``, ``running_var``: ``(C,)``. Cost: O(NCHW) (module docstring).
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        check_num_features(num_features)
        check_eps(eps)
        check_momentum(momentum)
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.mean_weight = nn.Parameter(torch.ones(3))
        self.var_weight = nn.Parameter(torch.ones(3))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_2d(x, self.num_features, type(self).__name__)
        params = (self.mean_weight, self.var_weight, self.weight, self.bias)
        n, c = x.shape[:2]
        setup = (int(self.training), float(self.momentum), float(self.eps))
        cache_size = 6 + 2 * (n + c) + 2 * n * c  # softmax weights, LN and BN moments, mixed mean and rstd
        running = (self.running_mean, self.running_var)  # updated in place by the C forward in training
        if (y := fused_instance_affine(x, "switchnorm", setup, cache_size, running, params)) is not None:
            return y
        y, mean_in, var_in = instance_affine(x, self._head, *params)
        if self.training and x.shape[0] > 0:
            mean_bn, var_bn = _batch_moments(mean_in, var_in)
            update_running_(self.running_mean, mean_bn, self.momentum)
            update_running_(self.running_var, var_bn, self.momentum)
        return y

    def _head(
        self,
        mean_in: torch.Tensor,
        var_in: torch.Tensor,
        mean_weight: torch.Tensor,
        var_weight: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, offset) per (n, c) with y = (x - mu_in) * scale + offset, from the (N, C) IN moments."""
        mean_ln = mean_in.mean(1, keepdim=True)  # (N, 1)
        var_ln = (var_in + (mean_in - mean_ln) ** 2).mean(1, keepdim=True)
        if self.training:
            mean_bn, var_bn = _batch_moments(mean_in, var_in)
        else:
            mean_bn, var_bn = self.running_mean.to(mean_in.dtype), self.running_var.to(var_in.dtype)
        wm = torch.softmax(mean_weight, dim=0)
        wv = torch.softmax(var_weight, dim=0)
        mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
        var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
        scale = weight * torch.rsqrt(var + self.eps)
        return scale, bias + (mean_in - mean) * scale

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


def _batch_moments(mean_in: torch.Tensor, var_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BN mean and biased variance per channel (C,) from the (N, C) IN moments (law of total variance)."""
    mean_bn = mean_in.mean(0)
    return mean_bn, (var_in + (mean_in - mean_bn) ** 2).mean(0)
