"""Natural-image background patches cropped from the photographs shipped inside scikit-learn.

Source: ``sklearn.datasets.load_sample_images()`` (china.jpg and flower.jpg, 427x640 RGB each, no download).
The two photographs are downsampled by 2 (bilinear, antialiased) and placed side by side in one atlas. A crop is a
random square inside one photograph (side ``S`` full-resolution pixels, S ~ U(min_side, max_side) clamped to the
photograph), randomly mirrored left-right, resampled bilinearly to ``size`` x ``size``. All crops of a batch are
read with ONE ``grid_sample`` call over the atlas (the batch's sampling grids stacked along the height), so the
cost is O(count * size^2) and the atlas is never copied per crop.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from .compose import uniform

_DOWNSAMPLE = 2


@lru_cache(maxsize=1)
def _atlas() -> tuple[Tensor, Tensor, Tensor]:
    """Atlas (1, 3, H, W) float in [0, 1], each photograph's x offset (P,) and (height, width) (P, 2)."""
    from sklearn.datasets import load_sample_images

    photos = [torch.from_numpy(image.copy()).permute(2, 0, 1).to(torch.float32) / 255
              for image in load_sample_images().images]
    small = [F.interpolate(p.unsqueeze(0), scale_factor=1 / _DOWNSAMPLE, mode="bilinear", antialias=True,
                           align_corners=False) for p in photos]
    height = max(s.shape[2] for s in small)
    atlas = torch.cat([F.pad(s, (0, 0, 0, height - s.shape[2])) for s in small], dim=3)
    widths = torch.tensor([s.shape[3] for s in small])
    offsets = torch.cumsum(widths, 0) - widths
    sizes = torch.tensor([[s.shape[2], s.shape[3]] for s in small])
    return atlas.clamp_(0, 1), offsets, sizes


def natural_crops(count: int, size: int, min_side: float, max_side: float, generator: torch.Generator) -> Tensor:
    """``count`` random photograph patches as float32 (count, 3, size, size) in [0, 1]."""
    atlas, offsets, sizes = _atlas()
    source = torch.randint(len(offsets), (count,), generator=generator)
    height, width = sizes[source, 0].float(), sizes[source, 1].float()
    side = torch.minimum(uniform((count,), min_side, max_side, generator) / _DOWNSAMPLE, torch.minimum(height, width))
    left = torch.rand(count, generator=generator) * (width - side) + offsets[source].float()
    top = torch.rand(count, generator=generator) * (height - side)
    steps = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    mirror = torch.rand(count, generator=generator) < 0.5
    along = torch.where(mirror.view(-1, 1), 1 - steps.view(1, -1), steps.view(1, -1))
    xs = left.view(-1, 1) + side.view(-1, 1) * along
    ys = top.view(-1, 1) + side.view(-1, 1) * steps.view(1, -1)
    u = (2 * xs / atlas.shape[3] - 1).view(count, 1, size).expand(count, size, size)
    v = (2 * ys / atlas.shape[2] - 1).view(count, size, 1).expand(count, size, size)
    grid = torch.stack((u, v), dim=-1).reshape(1, count * size, size, 2)
    crops = F.grid_sample(atlas, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return crops.view(3, count, size, size).transpose(0, 1).contiguous()
