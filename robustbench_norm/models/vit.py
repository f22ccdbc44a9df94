"""A small Vision Transformer (Dosovitskiy et al. 2021) with a slot for a norm on the patch tokens.

Context Normalization's CN-Patches normalises the patch embeddings (Faye et al., section III); this net
gives that layer, and every 2-D norm, one place to act: right after the patch embedding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustbench_norm.models.base import NormLayer, check_geometry


class ViTTiny(nn.Module):
    """ViT with patch 4, width 64, depth 4, 4 heads, MLP 128 (GELU), pre-norm blocks, class token.

    Patch embedding: a 4x4 stride-4 convolution to (N, 64, S/4, S/4). Then exactly one norm on the patch
    embeddings, before the class token and the learned position embeddings are added:

    * ``token_norm_layer`` given (a norm with placement "tokens", e.g. ``contextnorm_patches``): it sees
      the tokens, shape (N, T, 64) with T = (S/4)^2;
    * otherwise ``norm_layer(64)`` sees the patch map (N, 64, S/4, S/4), like the norm after any conv.

    The transformer blocks keep their own LayerNorms (part of the architecture, not the norm under test),
    as does the final LayerNorm before the linear head on the class token. No dropout. About 0.14 M
    parameters at 32x32 RGB with 10 classes.

    Shapes: (N, in_channels, S, S) with S a multiple of 4 -> (N, num_classes).
    """

    patch_size = 4
    dim = 64
    depth = 4
    heads = 4
    mlp_dim = 128

    def __init__(
        self, num_classes: int, in_channels: int, image_size: int, norm_layer: NormLayer,
        token_norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        check_geometry("vit_tiny", num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                       min_image_size=self.patch_size)
        if image_size % self.patch_size:
            raise ValueError(f"vit_tiny: image_size must be a multiple of the patch size {self.patch_size}, "
                             f"got {image_size}")
        num_tokens = (image_size // self.patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, self.dim, self.patch_size, stride=self.patch_size, bias=False)
        if token_norm_layer is None:
            self.patch_norm: nn.Module = norm_layer(self.dim)
            self.token_norm: nn.Module = nn.Identity()
        else:
            self.patch_norm = nn.Identity()
            self.token_norm = token_norm_layer(self.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + 1, self.dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                self.dim, self.heads, dim_feedforward=self.mlp_dim, dropout=0.0, activation="gelu",
                batch_first=True, norm_first=True,
            )
            for _ in range(self.depth)
        )
        self.final_norm = nn.LayerNorm(self.dim)
        self.head = nn.Linear(self.dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        patches = self.patch_norm(self.patch_embed(x))
        tokens = self.token_norm(patches.flatten(2).transpose(1, 2))
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.final_norm(tokens[:, 0]))
