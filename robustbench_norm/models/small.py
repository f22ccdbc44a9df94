"""Plain convolutional nets: the quick-profile CPU net and the two paper nets (LocalNorm MNIST, CIFAR ConvNet).

In all three the norm follows every convolution (conv -> norm -> ReLU) and convolutions have no bias (the
norm's shift replaces it). Dense layers carry no norm: the papers normalise feature maps, and every norm of
the registry takes (N, C, H, W) input.
"""

from __future__ import annotations

from torch import Tensor, nn

from robustbench_norm.models.base import NormLayer, check_geometry


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int, norm_layer: NormLayer) -> nn.Sequential:
    """``kernel_size`` x ``kernel_size`` convolution (stride 1, 'same' padding, no bias) -> norm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        norm_layer(out_channels),
        nn.ReLU(inplace=True),
    )


class QuickCNN(nn.Module):
    """Small fast net for the quick profile (CPU minutes): conv16-[pool]-conv32-[pool]-conv64-GAP-linear.

    3x3 convolutions, 2x2 max pooling, global average pooling, so any image size >= 4 works. Widths are
    multiples of 16, so ILM Norm's key groups of 16 channels fit every layer. About 24 k parameters
    (in_channels=1, 10 classes); one epoch over 1,400 28x28 images trains in about a second on 2 cores.

    Shapes: (N, in_channels, S, S) -> (N, num_classes).
    """

    widths: tuple[int, int, int] = (16, 32, 64)

    def __init__(self, num_classes: int, in_channels: int, image_size: int, norm_layer: NormLayer) -> None:
        super().__init__()
        check_geometry("quick_cnn", num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                       min_image_size=4)
        w1, w2, w3 = self.widths
        self.features = nn.Sequential(
            conv_norm_act(in_channels, w1, 3, norm_layer),
            nn.MaxPool2d(2),
            conv_norm_act(w1, w2, 3, norm_layer),
            nn.MaxPool2d(2),
            conv_norm_act(w2, w3, 3, norm_layer),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(w3, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class LocalNormMNISTNet(nn.Module):
    """The MNIST net of the LocalNorm paper (Yin et al.): Input-16c-16c-32c-32c-512d-1024d-output.

    3x3 'same' convolutions 16-16, 2x2 max pool, 32-32, 2x2 max pool, then dense 512 and 1024 (ReLU) and the
    output layer. The paper does not state the pooling; we pool after each pair of convolutions (the usual
    VGG-style reading), which gives 1.36 M parameters at 28x28 and keeps an epoch of 10 k images at about
    5 s on 2 CPU cores (without pooling the first dense layer alone has 12.8 M weights and training is
    about 3x slower). The flatten size follows the image size: 32 * (S // 4)^2.

    Shapes: (N, in_channels, S, S) with S >= 4 -> (N, num_classes).
    """

    def __init__(self, num_classes: int, in_channels: int, image_size: int, norm_layer: NormLayer) -> None:
        super().__init__()
        check_geometry("localnorm_mnist", num_classes=num_classes, in_channels=in_channels,
                       image_size=image_size, min_image_size=4)
        side = image_size // 4
        self.features = nn.Sequential(
            conv_norm_act(in_channels, 16, 3, norm_layer),
            conv_norm_act(16, 16, 3, norm_layer),
            nn.MaxPool2d(2),
            conv_norm_act(16, 32, 3, norm_layer),
            conv_norm_act(32, 32, 3, norm_layer),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * side * side, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class CIFARConvNet(nn.Module):
    """CIFAR ConvNet of the Mixture/Context Normalization papers (Faye et al., Table IV).

    conv5x5 64 - maxpool3/2 - conv5x5 128 - maxpool3/2 - conv5x5 128 - maxpool3/2 - conv3x3 256 - avgpool - linear,
    each conv followed by norm and ReLU. Table IV lists the 3x3 stride-2 pools with pad 0 yet halves the map
    (32 -> 16 -> 8 -> 4): that is Caffe's/TF-'same' rounding up, so the pools use ``ceil_mode=True``. The last
    4x4 average pool is global average pooling (identical at 32x32; any image size >= 8 works). 0.92 M
    parameters with 3 input channels and 10 classes.

    Shapes: (N, in_channels, S, S) with S >= 8 -> (N, num_classes).
    """

    def __init__(self, num_classes: int, in_channels: int, image_size: int, norm_layer: NormLayer) -> None:
        super().__init__()
        check_geometry("cifar_convnet", num_classes=num_classes, in_channels=in_channels,
                       image_size=image_size, min_image_size=8)
        self.features = nn.Sequential(
            conv_norm_act(in_channels, 64, 5, norm_layer),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            conv_norm_act(64, 128, 5, norm_layer),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            conv_norm_act(128, 128, 5, norm_layer),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            conv_norm_act(128, 256, 3, norm_layer),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
