"""Residual nets: the CIFAR ResNets of He et al. (resnet20, resnet32), the ImageNet ResNets with the CIFAR stem
of the ILM Norm paper (resnet18_cifar, resnet101_cifar) and WideResNet-28-2 as used by AdaMatch.

All take ``norm_layer`` and call it at every place the original has a BatchNorm.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from robustbench_norm.models.base import NormLayer, check_geometry

LEAKY_SLOPE = 0.1


def he_conv(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, negative_slope: float = 0.0
) -> nn.Conv2d:
    """Bias-free convolution ('same' padding for odd kernels) with Kaiming-normal (fan-out) weights.

    ``negative_slope`` is that of the (leaky) ReLU the weights feed. Init is done here, per conv, so that
    no architecture-wide init loop ever touches the parameters inside a norm layer.
    """
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, a=negative_slope, mode="fan_out", nonlinearity="leaky_relu")
    return conv


class ZeroPadShortcut(nn.Module):
    """He et al.'s option-A shortcut: subsample by ``stride``, append zero channels up to ``out_channels``.

    Shapes: (N, C, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride)). No parameters.
    """

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - x.shape[1]))

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Post-activation residual block: relu(norm(conv(relu(norm(conv(x))))) + shortcut(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1 = he_conv(in_channels, out_channels, 3, stride)
        self.norm1 = norm_layer(out_channels)
        self.conv2 = he_conv(out_channels, out_channels, 3)
        self.norm2 = norm_layer(out_channels)
        change = stride != 1 or in_channels != out_channels
        self.shortcut = ZeroPadShortcut(out_channels, stride) if change else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CIFARResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR (He et al. 2016, section 4.2): resnet20 is n=3, resnet32 is n=5.

    conv3x3 16 -> 3 stages of n basic blocks with 16, 32, 64 channels (stride 2 at the start of stages 2 and
    3) -> global average pool -> linear. Shortcuts are option A (identity, or subsample + zero channels when
    the shape changes), as in the paper's CIFAR experiments, so every convolution is a 3x3 one followed by
    the norm: 0.27 M (resnet20) and 0.46 M (resnet32) parameters. Convolutions use Kaiming-normal (fan-out) init.

    Shapes: (N, in_channels, S, S) -> (N, num_classes), any S >= 1.
    """

    widths: tuple[int, int, int] = (16, 32, 64)

    def __init__(
        self, depth: int, num_classes: int, in_channels: int, image_size: int, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, ...), got {depth}")
        check_geometry(f"resnet{depth}", num_classes=num_classes, in_channels=in_channels,
                       image_size=image_size, min_image_size=1)
        blocks_per_stage = (depth - 2) // 6
        self.stem = nn.Sequential(he_conv(in_channels, 16, 3), norm_layer(16), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        channels = 16
        for stage, width in enumerate(self.widths):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(BasicBlock(channels, width, stride, norm_layer))
                channels = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


class WideBasicBlock(nn.Module):
    """Pre-activation wide block of FixMatch/AdaMatch's WRN (leaky ReLU, slope 0.1).

    ``a = lrelu(norm1(x))``; the shortcut input is ``a`` if ``activate_before_residual`` else ``x``;
    ``out = conv2(lrelu(norm2(conv1(a)))) + shortcut``, where the shortcut is a 1x1 convolution (with the
    block's stride) when the channel count changes and the identity otherwise.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer,
        activate_before_residual: bool,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(in_channels)
        self.conv1 = he_conv(in_channels, out_channels, 3, stride, negative_slope=LEAKY_SLOPE)
        self.norm2 = norm_layer(out_channels)
        self.conv2 = he_conv(out_channels, out_channels, 3, negative_slope=LEAKY_SLOPE)
        self.activate_before_residual = activate_before_residual
        self.shortcut = (
            he_conv(in_channels, out_channels, 1, stride, negative_slope=LEAKY_SLOPE)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        activated = F.leaky_relu(self.norm1(x), LEAKY_SLOPE)
        residual_input = activated if self.activate_before_residual else x
        out = self.conv2(F.leaky_relu(self.norm2(self.conv1(activated)), LEAKY_SLOPE))
        return self.shortcut(residual_input) + out


class WideResNet(nn.Module):
    """WideResNet-depth-k in the form FixMatch and AdaMatch use (WRN-28-2: 1.47 M parameters for 10 classes).

    conv3x3 16 -> 3 groups of (depth - 4) / 6 pre-activation wide blocks with 16k, 32k, 64k channels (stride 2
    at the start of groups 2 and 3; the first block of group 1 activates before its shortcut) -> norm ->
    leaky ReLU (0.1) -> global average pool -> linear. Kaiming-normal conv init, Xavier-normal linear init,
    zero linear bias. The reference's BatchNorm momentum (0.001) is a property of the norm layer, not of the
    net: a registered norm keeps its own defaults.

    Shapes: (N, in_channels, S, S) -> (N, num_classes), any S >= 1.
    """

    def __init__(
        self, depth: int, widen_factor: int, num_classes: int, in_channels: int, image_size: int,
        norm_layer: NormLayer,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 28, ...), got {depth}")
        check_geometry(f"wrn{depth}_{widen_factor}", num_classes=num_classes, in_channels=in_channels,
                       image_size=image_size, min_image_size=1)
        blocks_per_group = (depth - 4) // 6
        self.stem = he_conv(in_channels, 16, 3, negative_slope=LEAKY_SLOPE)
        layers: list[nn.Module] = []
        channels = 16
        for group in range(3):
            width = 16 * widen_factor * 2**group
            for index in range(blocks_per_group):
                stride = 2 if group > 0 and index == 0 else 1
                first = group == 0 and index == 0
                layers.append(WideBasicBlock(channels, width, stride, norm_layer, activate_before_residual=first))
                channels = width
        self.groups = nn.Sequential(*layers)
        self.final_norm = norm_layer(channels)
        classifier = nn.Linear(channels, num_classes)
        nn.init.xavier_normal_(classifier.weight)
        nn.init.zeros_(classifier.bias)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), classifier)

    def forward(self, x: Tensor) -> Tensor:
        out = self.groups(self.stem(x))
        return self.head(F.leaky_relu(self.final_norm(out), LEAKY_SLOPE))


class ProjectionShortcut(nn.Sequential):
    """He et al.'s option-B shortcut: 1x1 convolution with the block's stride, then the norm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__(he_conv(in_channels, out_channels, 1, stride), norm_layer(out_channels))


class ImageNetBasicBlock(nn.Module):
    """ResNet-18/34 block: relu(norm(conv3x3(relu(norm(conv3x3(x))))) + shortcut(x)), projection shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1 = he_conv(in_channels, width, 3, stride)
        self.norm1 = norm_layer(width)
        self.conv2 = he_conv(width, width, 3)
        self.norm2 = norm_layer(width)
        change = stride != 1 or in_channels != width
        self.shortcut = ProjectionShortcut(in_channels, width, stride, norm_layer) if change else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet-50/101 block: 1x1 (width) -> 3x3 (width, stride) -> 1x1 (4 width), each followed by the norm,
    ReLU between, projection shortcut when the shape changes (torchvision's "ResNet v1.5" stride placement)."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = he_conv(in_channels, width, 1)
        self.norm1 = norm_layer(width)
        self.conv2 = he_conv(width, width, 3, stride)
        self.norm2 = norm_layer(width)
        self.conv3 = he_conv(width, out_channels, 1)
        self.norm3 = norm_layer(out_channels)
        change = stride != 1 or in_channels != out_channels
        self.shortcut = ProjectionShortcut(in_channels, out_channels, stride, norm_layer) if change else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = F.relu(self.norm2(self.conv2(out)))
        return F.relu(self.norm3(self.conv3(out)) + self.shortcut(x))


class CIFARStemResNet(nn.Module):
    """The ImageNet ResNets (He et al. 2016, Table 1) adapted to CIFAR as in the ILM Norm paper (Jia et al.,
    section 4.1.1): the first convolution becomes "3x3, stride 1, padding 1", the max pooling is removed and the
    final average pooling covers the 4x4 map (global average pooling here: identical at 32x32).

    conv3x3 64 -> norm -> ReLU -> 4 stages of ``blocks`` blocks with widths 64, 128, 256, 512 (stride 2 at the
    start of stages 2-4) -> global average pool -> linear. Depth 18: basic blocks (2, 2, 2, 2), 11.2 M
    parameters; depth 101: bottlenecks (3, 4, 23, 3), 42.5 M parameters (10 classes). Every convolution,
    shortcut projections included, is followed by the norm (as in the ILM authors' ResNets). Convolutions use
    Kaiming-normal (fan-out) init (the paper draws all weights from a standard normal, which we do not copy).

    Shapes: (N, in_channels, S, S) -> (N, num_classes), any S >= 1.
    """

    configurations: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
        18: (ImageNetBasicBlock, (2, 2, 2, 2)),
        101: (Bottleneck, (3, 4, 23, 3)),
    }
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)

    def __init__(
        self, depth: int, num_classes: int, in_channels: int, image_size: int, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        if depth not in self.configurations:
            raise ValueError(f"CIFAR-stem ResNet depth {depth!r} is not available; "
                             f"valid: {sorted(self.configurations)}")
        check_geometry(f"resnet{depth}_cifar", num_classes=num_classes, in_channels=in_channels,
                       image_size=image_size, min_image_size=1)
        block, counts = self.configurations[depth]
        self.stem = nn.Sequential(he_conv(in_channels, 64, 3), norm_layer(64), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        channels = 64
        for stage, (width, count) in enumerate(zip(self.widths, counts)):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(block(channels, width, stride, norm_layer))
                channels = width * block.expansion
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))
