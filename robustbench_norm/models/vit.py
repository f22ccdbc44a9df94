"""Vision Transformers (Dosovitskiy et al. 2021) with a slot for a norm on the patch tokens.

Context Normalization's CN-Patches normalises the patch embeddings (Faye et al., section III); these nets
give that layer, and every 2-D norm, one place to act: right after the patch embedding. ``vit_tiny`` is the
quick profile's small ViT; ``vit_cn`` is the ViT of the Context Normalization paper's sections IV-C/IV-D as
the authors' notebook builds it (the paper gives no ViT size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


class KerasStyleAttention(nn.Module):
    """Multi-head self-attention as Keras' ``MultiHeadAttention(num_heads, key_dim)``: every head projects the
    D-wide tokens to ``key_dim`` (not D / heads), so the heads span ``heads * key_dim`` before the output
    projection back to D; softmax(QK^T / sqrt(key_dim)) with dropout on the attention weights.

    Shapes: (N, T, D) -> (N, T, D).
    """

    def __init__(self, dim: int, heads: int, key_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.key_dim, self.dropout = heads, key_dim, dropout
        self.qkv = nn.Linear(dim, 3 * heads * key_dim)
        self.out = nn.Linear(heads * key_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, _ = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, self.key_dim).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(attended.transpose(1, 2).reshape(n, t, self.heads * self.key_dim))


class _KerasViTBlock(nn.Module):
    """Pre-norm block of the Keras ViT example: x + attn(LN(x)); then + MLP(LN(.)) with GELU after *both*
    dense layers (widths 2D and D) and dropout after each. LayerNorm eps 1e-6 (Keras' value there)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attention = KerasStyleAttention(dim, heads, key_dim=dim, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * dim, dim), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTCN(nn.Module):
    """The ViT of the Context Normalization paper (Faye et al., sections IV-C and IV-D), as the authors'
    notebook ``cn_cifar100/context_normalization.ipynb`` (b-faye/Context-Normalization) builds it; the paper
    itself gives no size. That notebook adapts the Keras "image classification with ViT" example:

    * the image is resized to 72 x 72 (bilinear; the notebook's ``Resizing(72, 72)``, at training and test),
    * 6 x 6 patches (144 tokens) projected to D = 64 (a linear map of each patch = a 6x6 stride-6 conv),
    * learned position embeddings, no class token,
    * 8 pre-norm blocks with 4 heads of key_dim 64, MLP 128 -> 64 (GELU after both), dropout 0.1,
    * final LayerNorm, flatten (144 x 64), dropout 0.5, dense 2048 and 1024 (GELU, dropout 0.5 each), linear.

    Where the norm under test goes (the slot every architecture here has): ``norm_layer(64)`` on the patch map
    (N, 64, 12, 12) right after the projection, or, for a norm with placement "tokens" (CN-Patches),
    ``token_norm_layer(64)`` on the tokens (N, 144, 64); position embeddings are added after it. The
    baselines of the paper's Table VII ("ViT": standardised input only; "ViT+BN": BatchNorm on the input image)
    are built with ``norm="none"`` and with BatchNorm placed on the input (``robustbench_norm.models.factory``).
    The notebook's random rotation and zoom are not here (augmentation belongs to the trainer; the paper
    states flips and random crops). Initialisation: PyTorch's defaults (the notebook: Keras' glorot-uniform
    kernels and uniform(-0.05, 0.05) position embeddings). About 21.7 M parameters with 100 classes, 18.9 M of
    them in the first dense layer of the head.

    Shapes: (N, in_channels, S, S), any S >= 1 -> (N, num_classes).
    """

    resized = 72
    patch_size = 6
    dim = 64
    depth = 8
    heads = 4
    head_units = (2048, 1024)
    dropout = 0.1
    head_dropout = 0.5

    def __init__(
        self, num_classes: int, in_channels: int, image_size: int, norm_layer: NormLayer,
        token_norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        check_geometry("vit_cn", num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                       min_image_size=1)
        num_tokens = (self.resized // self.patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, self.dim, self.patch_size, stride=self.patch_size)
        if token_norm_layer is None:
            self.patch_norm: nn.Module = norm_layer(self.dim)
            self.token_norm: nn.Module = nn.Identity()
        else:
            self.patch_norm = nn.Identity()
            self.token_norm = token_norm_layer(self.dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, self.dim))
        nn.init.uniform_(self.pos_embed, -0.05, 0.05)
        self.blocks = nn.Sequential(*(_KerasViTBlock(self.dim, self.heads, self.dropout) for _ in range(self.depth)))
        self.final_norm = nn.LayerNorm(self.dim, eps=1e-6)
        layers: list[nn.Module] = [nn.Flatten(), nn.Dropout(self.head_dropout)]
        width = num_tokens * self.dim
        for units in self.head_units:
            layers += [nn.Linear(width, units), nn.GELU(), nn.Dropout(self.head_dropout)]
            width = units
        self.head = nn.Sequential(*layers, nn.Linear(width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, size=(self.resized, self.resized), mode="bilinear", align_corners=False)
        patches = self.patch_norm(self.patch_embed(x))
        tokens = self.token_norm(patches.flatten(2).transpose(1, 2)) + self.pos_embed
        return self.head(self.final_norm(self.blocks(tokens)))
