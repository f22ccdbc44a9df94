"""LocalNorm: Batch Normalization over K consecutive sub-batches, each with its own affine.

Yin, Schaafsma, Corporaal, Scholte, Bohte, "LocalNorm: Robust Image Classification through Dynamically
Regularized Normalization", ICANN 2021 (preprint 2019), section 3.

Formula. The batch of N samples splits into K consecutive groups of N/K samples (sample i is in group
``i // (N/K)``). For group k and channel c, mean and **biased** variance run over the (N/K, H, W) values,

    y = (x - mu_{k,c}) / sqrt(var_{k,c} + eps) * gamma_{k,c} + beta_{k,c},

with a learnable affine of shape (K, C) (one row per group, initialised to ones and zeros). There are no
running statistics: the same group statistics are computed at test time, from the test batch.

Training. N must be divisible by K; otherwise ``ValueError`` naming N and K.

Eval (the rule for any N). The batch splits with ``torch.tensor_split`` into G = min(K, N) consecutive groups
of near-equal size (the first ``N mod G`` groups hold one sample more), group j with affine row j; a batch
divisible by K gives exactly the training groups.

Test-time procedures. BATCH, SINGLE, SINGLE-VOTING and VOTING (paper section 3) live in
``robustbench_norm.evaluation``. The authors build them from replicated or tiled batches; since identical
copies in a group give that image's (or image set's) own statistics, :func:`localnorm_evaluation` lets them be
computed directly: in eval mode, statistics over consecutive groups of ``statistics_group_size`` samples
(the last group holds the remainder) and one affine row ``affine_group`` for all of them. SINGLE is
``statistics_group_size=1, affine_group=0``; SINGLE-VOTING votes over ``affine_group`` k = 0..K-1 with
``statistics_group_size=1``, VOTING likewise with ``statistics_group_size`` = the group size N/K.

Conversion. :func:`convert_batchnorm_to_localnorm` turns a trained BatchNorm model into a LocalNorm model by
copying each BN's (gamma, beta) into every group row and dropping its running statistics (paper section 3.1).

Default K = 4: the paper finds 4-8 groups best (Fig. 11) and uses groups of 16 images for CIFAR (8 x 16 at
batch 128); K = 4 keeps groups of 16 at this project's batch size 64 and divides every training batch size of
the batch-size scenario down to 4. The authors' MNIST setting is K = 10 at batch 100.

Empty batch: ``ValueError`` (a sub-batch of no samples has no statistics).

Computation. Each sub-batch moment follows from the (N, C) per-sample moments (law of total variance), so
the layer runs as one fused instance standardisation plus an affine map per (n, c)
(:func:`robustbench_norm.norms.instance_affine.instance_affine`, written-out backward): the same number of
ATen ops for any N, K, H and W, and no Python loop over sub-batches. On the CPU (float32 / float64) it is one
C call each way (``localnorm_forward`` / ``localnorm_backward`` in ``kernels.c``, the sub-batch statistics in
double; :func:`~robustbench_norm.norms.instance_affine.fused_instance_affine`).

Shapes: input and output ``(N, C, H, W)``; ``weight``, ``bias``: ``(K, C)``. Cost: O(NCHW), as BatchNorm.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_norm.norms.instance_affine import fused_instance_affine, instance_affine
from robustbench_norm.norms.registry import register_norm
from robustbench_norm.norms.standard import (
    check_eps,
    check_input_2d,
    check_num_features,
)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_num_groups(num_groups: int) -> None:
    if not _is_int(num_groups) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive int (number of sub-batches K), got {num_groups!r}")


def _sub_batch_head(
    groups: torch.Tensor, rows: torch.Tensor, eps: float
) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The :func:`instance_affine` head of LocalNorm: sample n belongs to sub-batch ``groups[n]`` (G ids),
    whose BN statistics and affine row ``rows[groups[n]]`` normalise it.

    The sub-batch mean and biased variance of channel c follow from the (N, C) instance moments:
    mu_k = mean_{n in k} m_n,  var_k = mean_{n in k} (v_n + (m_n - mu_k)^2).
    """

    def head(
        mean_in: torch.Tensor, var_in: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        members = F.one_hot(groups, len(rows)).to(mean_in.dtype).t()  # (G, N)
        average = members / members.sum(1, keepdim=True)
        group_mean = (average @ mean_in)[groups]  # (N, C)
        group_var = (average @ (var_in + (mean_in - group_mean) ** 2))[groups]
        sample_rows = rows[groups]
        scale = weight[sample_rows] * torch.rsqrt(group_var + eps)
        return scale, bias[sample_rows] + (mean_in - group_mean) * scale

    return head


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
    ``min(K, N)`` near-equal consecutive groups (``torch.tensor_split``), group j with affine row j, unless
    :func:`localnorm_evaluation` sets ``statistics_group_size`` and ``affine_group`` (see the module docstring).

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
        self.statistics_group_size: int | None = None
        self.affine_group = 0
        self.weight = nn.Parameter(torch.ones(num_groups, num_features))
        self.bias = nn.Parameter(torch.zeros(num_groups, num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_2d(x, self.num_features, type(self).__name__)
        n = x.shape[0]
        if n == 0:
            raise ValueError(f"LocalNorm needs a non-empty batch, got input of shape {tuple(x.shape)}")
        if self.training and n % self.num_groups:
            raise ValueError(
                f"LocalNorm in training needs a batch divisible by num_groups: got batch N={n} and "
                f"K={self.num_groups}; valid batches: multiples of {self.num_groups}"
            )
        groups, rows = self._assignment(n, x.device)
        params = (self.weight, self.bias)
        setup, cache_size = (len(rows), self.num_groups, float(self.eps)), (2 * self.num_features + 1) * len(rows)
        if (y := fused_instance_affine(x, "localnorm", setup, cache_size, (groups, rows), params)) is not None:
            return y
        return instance_affine(x, _sub_batch_head(groups, rows, self.eps), *params)[0]

    def _assignment(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Sub-batch id of each of the n samples and the affine row of each sub-batch (module docstring)."""
        if not self.training and self.statistics_group_size is not None:
            size = self.statistics_group_size
            groups = torch.arange(n, device=device) // size
            return groups, torch.full((-(-n // size),), self.affine_group, device=device)
        count = min(self.num_groups, n)  # equal groups in training; tensor_split's rule in eval
        size, larger = divmod(n, count)  # the first `larger` groups hold size + 1 samples
        sample = torch.arange(n, device=device)
        boundary = larger * (size + 1)
        groups = torch.where(sample < boundary, sample // (size + 1), larger + (sample - boundary) // size)
        return groups, torch.arange(count, device=device)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_groups={self.num_groups}, eps={self.eps}"


@contextmanager
def localnorm_evaluation(
    model: nn.Module, *, statistics_group_size: int, affine_group: int
) -> Iterator[list[LocalNorm]]:
    """Inside the block, every :class:`LocalNorm` of ``model`` in eval mode normalises each run of
    ``statistics_group_size`` consecutive samples with its own statistics (the last run: the remaining
    samples) and the affine row ``affine_group`` for all samples. Training mode is not affected.

    ``statistics_group_size`` must be >= 1 and ``affine_group`` in [0, K) for every layer (``ValueError``
    otherwise). The previous settings come back after the block. Yields the LocalNorm layers (empty if none).
    """
    if not _is_int(statistics_group_size) or statistics_group_size < 1:
        raise ValueError(f"statistics_group_size must be a positive int, got {statistics_group_size!r}")
    layers = [m for m in model.modules() if isinstance(m, LocalNorm)]
    for layer in layers:
        if not _is_int(affine_group) or not 0 <= affine_group < layer.num_groups:
            raise ValueError(f"affine_group {affine_group!r} is out of range; valid: 0..{layer.num_groups - 1}")
    previous = [(layer.statistics_group_size, layer.affine_group) for layer in layers]
    for layer in layers:
        layer.statistics_group_size, layer.affine_group = statistics_group_size, affine_group
    try:
        yield layers
    finally:
        for layer, (size, row) in zip(layers, previous):
            layer.statistics_group_size, layer.affine_group = size, row


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
