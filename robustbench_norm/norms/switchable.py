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
``var_weight``: ``(3,)``. Cost: O(NCHW), about two BatchNorms.
"""

from __future__ import annotations

import torch
from torch import nn

from robustbench_norm.norms.registry import register_norm
from robustbench_norm.norms.standard import (
    check_eps,
    check_input_2d,
    check_momentum,
    check_num_features,
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
    ``(3,)``; buffers ``running_mean``, ``running_var``: ``(C,)``. Cost: O(NCHW).
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
        var_in, mean_in = torch.var_mean(x, dim=(2, 3), correction=0)  # (N, C)
        mean_ln = mean_in.mean(1, keepdim=True)  # (N, 1)
        var_ln = (var_in + (mean_in - mean_ln) ** 2).mean(1, keepdim=True)
        if self.training:
            mean_bn = mean_in.mean(0)  # (C,)
            var_bn = (var_in + (mean_in - mean_bn) ** 2).mean(0)
            with torch.no_grad():
                self.running_mean.lerp_(mean_bn.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(var_bn.detach().to(self.running_var.dtype), self.momentum)
        else:
            mean_bn, var_bn = self.running_mean, self.running_var
        wm = torch.softmax(self.mean_weight, dim=0)
        wv = torch.softmax(self.var_weight, dim=0)
        mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn
        var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn
        x_hat = (x - mean[:, :, None, None]) * torch.rsqrt(var[:, :, None, None] + self.eps)
        return x_hat * self.weight[:, None, None] + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
