"""LocalNorm: Batch Normalization over K consecutive sub-batches, each with its own affine.

Yin, Schaafsma, Corporaal, Scholte, Bohte, "LocalNorm: Robust Image Classification through Dynamically
Regularized Normalization", ICANN 2021 (arXiv 1902.06550), section 3.

Formula. The batch of N samples splits into K consecutive groups of N/K samples (sample i is in group
``i // (N/K)``). For group k and channel c, mean and **biased** variance run over the (N/K, H, W) values,

    y = (x - mu_{k,c}) / sqrt(var_{k,c} + eps) * gamma_{k,c} + beta_{k,c},

with a learnable affine of shape (K, C) (one row per group, initialised to ones and zeros). There are no
running statistics: the same group statistics are computed at test time, from the test batch.

Training. N must be divisible by K; otherwise ``ValueError`` naming N and K.

Eval (the rule for any N). The batch splits with ``torch.tensor_split`` into G = min(K, N) consecutive groups
of near-equal size (the first ``N mod G`` groups hold one sample more); a batch divisible by K gives exactly the
training groups. Group j uses affine row ``(group_offset + j) mod K``. ``group_offset`` (default 0, set with
:func:`use_group_offset`) lets evaluation choose the row of a one-group batch: a single image (N = 1) is
normalised with its own per-channel spatial statistics and the affine row ``group_offset`` (the paper's
SINGLE mode; a batch of K copies of one image is SINGLE-VOTING's K groups). The test-time procedures BATCH,
SINGLE, SINGLE-VOTING and VOTING themselves are batch-construction procedures in ``robustbench_norm.evaluation``.

Conversion. :func:`convert_batchnorm_to_localnorm` turns a trained BatchNorm model into a LocalNorm model by
copying each BN's (gamma, beta) into every group row and dropping its running statistics (paper section 3.1).

Default K = 4: the paper finds 4-8 groups best (Fig. 11) and uses groups of 16 images for CIFAR (8 x 16 at
batch 128); K = 4 keeps groups of 16 at this project's batch size 64 and divides every training batch size of
the batch-size scenario down to 4. The authors' MNIST setting is K = 10 at batch 100.

Shapes: input and output ``(N, C, H, W)``; ``weight``, ``bias``: ``(K, C)``. Cost: O(NCHW), as BatchNorm.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from robustbench_norm.norms.registry import register_norm
from robustbench_norm.norms.standard import check_eps, check_input_2d, check_num_features


def _check_num_groups(num_groups: int) -> None:
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive int (number of sub-batches K), got {num_groups!r}")


def _normalize_equal_groups(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """Normalise ``x`` (N, C, H, W) split into ``len(weight)`` equal consecutive groups, row k for group k."""
    n, c, h, w = x.shape
    groups = weight.shape[0]
    xg = x.reshape(groups, n // groups, c, h * w)
    var, mean = torch.var_mean(xg, dim=(1, 3), correction=0, keepdim=True)
    y = (xg - mean) * torch.rsqrt(var + eps)
    y = y * weight[:, None, :, None] + bias[:, None, :, None]
    return y.reshape(n, c, h, w)


@register_norm(
    "localnorm",
    batch_stats_at_test=True,
    batch_independent=False,
    eval_modes=("batch", "single", "single_voting", "voting"),
    paper="Yin et al., LocalNorm: Robust Image Classification through Dynamically Regularized "
    "Normalization, ICANN 2021",
)
class LocalNorm(nn.Module):
    """LocalNorm (Yin et al., 2021): BatchNorm per group of N/K consecutive samples, affine per group.

    ``y = (x - mu_{k,c}) / sqrt(var_{k,c} + eps) * weight[k, c] + bias[k, c]`` with the mean and biased
    variance of channel c over the (N/K, H, W) values of group k; no running statistics, so train and eval
    compute the same thing. Training needs N divisible by K (``ValueError`` otherwise). Eval accepts any N:
    ``min(K, N)`` near-equal consecutive groups (``torch.tensor_split``), group j with affine row
    ``(group_offset + j) mod K``. See the module docstring for the paper, defaults and test-time modes.

    Shapes: input and output ``(N, C, H, W)``; ``weight``, ``bias``: ``(K, C)``. Cost: O(NCHW).
    """

    def __init__(self, num_features: int, *, num_groups: int = 4, eps: float = 1e-5) -> None:
        super().__init__()
        check_num_features(num_features)
        _check_num_groups(num_groups)
        check_eps(eps)
        self.num_features = num_features
        self.num_groups = num_groups
        self.eps = eps
        self.group_offset = 0
        self.weight = nn.Parameter(torch.ones(num_groups, num_features))
        self.bias = nn.Parameter(torch.zeros(num_groups, num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_2d(x, self.num_features, type(self).__name__)
        n = x.shape[0]
        if self.training and n % self.num_groups:
            raise ValueError(
                f"LocalNorm in training needs a batch divisible by num_groups: got batch N={n} and "
                f"K={self.num_groups}; valid batches: multiples of {self.num_groups}"
            )
        groups = max(1, min(self.num_groups, n))
        weight = self.weight.roll(-self.group_offset, dims=0)[:groups]
        bias = self.bias.roll(-self.group_offset, dims=0)[:groups]
        size, larger = divmod(n, groups)  # the first `larger` groups hold size + 1 samples
        if larger == 0:
            return _normalize_equal_groups(x, weight, bias, self.eps)
        split = larger * (size + 1)
        head = _normalize_equal_groups(x[:split], weight[:larger], bias[:larger], self.eps)
        tail = _normalize_equal_groups(x[split:], weight[larger:], bias[larger:], self.eps)
        return torch.cat([head, tail])

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_groups={self.num_groups}, eps={self.eps}, group_offset={self.group_offset}"


@contextmanager
def use_group_offset(model: nn.Module, offset: int) -> Iterator[list[LocalNorm]]:
    """Inside the block, group j of every :class:`LocalNorm` of ``model`` uses affine row ``(offset + j) mod K``.

    ``offset`` must lie in [0, K) for every layer (``ValueError`` otherwise). The previous offsets come back
    after the block. Yields the LocalNorm layers (empty if the model has none).
    """
    layers = [m for m in model.modules() if isinstance(m, LocalNorm)]
    for layer in layers:
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < layer.num_groups:
            raise ValueError(f"group offset {offset!r} is out of range; valid: 0..{layer.num_groups - 1}")
    previous = [layer.group_offset for layer in layers]
    for layer in layers:
        layer.group_offset = offset
    try:
        yield layers
    finally:
        for layer, old in zip(layers, previous):
            layer.group_offset = old


def _localnorm_from_batchnorm(bn: nn.BatchNorm2d, num_groups: int) -> LocalNorm:
    reference = next(iter([*bn.parameters(), *bn.buffers()]), None)
    layer = LocalNorm(bn.num_features, num_groups=num_groups, eps=bn.eps)
    if reference is not None:
        layer = layer.to(device=reference.device, dtype=reference.dtype)
    if bn.affine:
        with torch.no_grad():
            layer.weight.copy_(bn.weight.expand(num_groups, -1))
            layer.bias.copy_(bn.bias.expand(num_groups, -1))
    return layer.train(bn.training)


def convert_batchnorm_to_localnorm(model: nn.Module, num_groups: int) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` (subclasses included) of ``model`` by a :class:`LocalNorm`.

    Each LocalNorm gets the BN's eps and (gamma, beta) copied into all ``num_groups`` rows (ones and zeros if
    the BN has no affine); the running statistics are dropped, since LocalNorm always uses group statistics.
    Device, dtype and train/eval mode carry over. Children are replaced in place and ``model`` is returned; a
    model that is itself a BatchNorm2d returns a new LocalNorm (as ``nn.SyncBatchNorm.convert_sync_batchnorm``).
    """
    _check_num_groups(num_groups)
    if isinstance(model, nn.BatchNorm2d):
        return _localnorm_from_batchnorm(model, num_groups)
    for name, child in model.named_children():
        converted = convert_batchnorm_to_localnorm(child, num_groups)
        if converted is not child:
            setattr(model, name, converted)
    return model
