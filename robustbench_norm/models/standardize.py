"""Input standardisation as the model's first layer: ``y_c = (x_c - mean_c) / std_c`` per channel.

The Context Normalization paper standardises CIFAR images "with respect to the dataset's mean and standard
deviation" (section IV-C), and the authors' notebooks do it for every CIFAR experiment (per channel, from the
training set). Keeping it inside the model (two fixed buffers, no parameters) means every evaluation path
(corruptions applied to [0, 1] pixels, the LocalNorm test modes, test-time adaptation) sees exactly what
training saw, and the statistics travel with the checkpoint. The trainer sets them from the training images
(``TrainConfig.standardize``) before the first step; until then the layer is the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_CHUNK = 4096  # images per chunk when summing the statistics (bounded memory for 50k CIFAR images)


class InputStandardization(nn.Module):
    """Per-channel ``(x - mean) / std`` with fixed buffers ``mean`` and ``std`` of shape (1, C, 1, 1).

    Shapes: (N, C, H, W) -> (N, C, H, W). :meth:`fit` sets the buffers from float images; ``std`` is the
    population standard deviation (numpy's ``np.std``, as the authors' ``compute_mean_std``), floored at 1e-8.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an int >= 1, got {channels!r}")
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    @torch.no_grad()
    def fit(self, images: Tensor) -> None:
        """Set ``mean`` and ``std`` to the per-channel statistics of ``images`` (float (N, C, H, W)), computed in
        float64 chunk by chunk."""
        if images.dim() != 4 or images.shape[1] != self.mean.shape[1] or len(images) == 0:
            raise ValueError(f"images must have shape (N >= 1, {self.mean.shape[1]}, H, W), "
                             f"got {tuple(images.shape)}")
        total = torch.zeros(images.shape[1], dtype=torch.float64)
        squares = torch.zeros_like(total)
        for start in range(0, len(images), _CHUNK):
            chunk = images[start : start + _CHUNK].to(torch.float64).transpose(0, 1).flatten(1).cpu()
            total += chunk.sum(dim=1)
            squares += chunk.square().sum(dim=1)
        count = images.numel() // images.shape[1]
        mean = total / count
        std = (squares / count - mean.square()).clamp(min=0).sqrt().clamp(min=1e-8)
        self.mean.copy_(mean.view_as(self.mean))
        self.std.copy_(std.view_as(self.std))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"channels={self.mean.shape[1]}"
