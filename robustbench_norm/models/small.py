"""Plain convolutional nets: the quick-profile CPU net and the paper nets (LocalNorm's MNIST net and VGG19,
the Context/Mixture Normalization CIFAR ConvNet).

In the quick net and the CIFAR ConvNet the norm follows every convolution (conv -> norm -> ReLU) and
convolutions have no bias (the norm's shift replaces it); the LocalNorm nets follow their authors' code
(conv with bias -> ReLU -> norm). Dense layers carry no norm: the papers normalise feature maps, and every
norm of the registry takes (N, C, H, W) input.
"""

from __future__ import annotations

from torch import Tensor, nn

from robustbench_norm.models.base import NormLayer, check_geometry
from robustbench_norm.models.pooling import MaxPool2x2


def act_norm_conv(in_channels: int, out_channels: int, kernel_size: int, norm_layer: NormLayer, *,
                  padding: int) -> list[nn.Module]:
    """The LocalNorm authors' order: convolution (with bias, ``padding``) -> ReLU -> norm."""
    return [nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding), nn.ReLU(inplace=True),
            norm_layer(out_channels)]


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int, norm_layer: NormLayer) -> nn.Sequential:
    """``kernel_size`` x ``kernel_size`` convolution (stride 1, 'same' padding, no bias) -> norm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        norm_layer(out_channels),
        nn.ReLU(inplace=True),
    )


class QuickCNN(nn.Module):
    """Small fast net for the quick profile (CPU minutes): conv16-[pool]-conv32-[pool]-conv64-GAP-linear.

    3x3 convolutions, 2x2 max pooling (:class:`MaxPool2x2`), global average pooling, so any image size >= 4
    works. Widths are multiples of 16, so ILM Norm's key groups of 16 channels fit every layer. About 24 k parameters
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
            MaxPool2x2(),
            conv_norm_act(w1, w2, 3, norm_layer),
            MaxPool2x2(),
            conv_norm_act(w2, w3, 3, norm_layer),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(w3, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class LocalNormMNISTNet(nn.Module):
    """The MNIST net of the LocalNorm paper (Yin et al., section 5.1): Input-16c-16c-32c-32c-512d-1024d-output.

    The paper gives only that line; the rest is the authors' ``mnist/mnist_run.py`` (byin-cwi/LocalNorm1):
    3x3 'valid' convolutions (no padding, with bias), each followed by ReLU and *then* the norm; 2x2 max
    pooling and dropout 0.25 after each pair; dense 512 (ReLU, dropout 0.25), dense 1024 (ReLU, dropout 0.5),
    output. At 28x28: 28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4, flatten 32 x 4 x 4 = 512; 0.81 M parameters.

    Shapes: (N, in_channels, S, S) with S >= 16 -> (N, num_classes).
    """

    def __init__(self, num_classes: int, in_channels: int, image_size: int, norm_layer: NormLayer) -> None:
        super().__init__()
        check_geometry("localnorm_mnist", num_classes=num_classes, in_channels=in_channels,
                       image_size=image_size, min_image_size=16)
        side = ((image_size - 4) // 2 - 4) // 2
        self.features = nn.Sequential(
            *act_norm_conv(in_channels, 16, 3, norm_layer, padding=0),
            *act_norm_conv(16, 16, 3, norm_layer, padding=0),
            MaxPool2x2(),
            nn.Dropout(0.25),
            *act_norm_conv(16, 32, 3, norm_layer, padding=0),
            *act_norm_conv(32, 32, 3, norm_layer, padding=0),
            MaxPool2x2(),
            nn.Dropout(0.25),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * side * side, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(0.25),
            nn.Linear(512, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class VGG19(nn.Module):
    """VGG19 for CIFAR-10 as the LocalNorm paper uses it (section 5.1, Fig. 8a; Simonyan & Zisserman's
    configuration E: 2 x 64, 2 x 128, 4 x 256, 4 x 512, 4 x 512 3x3 convolutions, a 2x2 max pool after each
    group). The paper names only "VGG19"; the rest follows the authors' CIFAR-10 VGG (``cifar10/vgg_test.py``
    of byin-cwi/LocalNorm1, which itself has the 13 convolutions of a VGG16): 'same' convolutions with bias,
    each followed by ReLU and then the norm, dropout 0.3 after the first one, and a head of dense 512 (ReLU)
    and the output layer on the flattened 512 x 1 x 1 map. Pools round up (``ceil_mode``) and the map is
    averaged to 1 x 1 before the head, so any S >= 1 works (identical at 32x32). 20.3 M parameters with
    BatchNorm and 10 classes.

    Shapes: (N, in_channels, S, S) -> (N, num_classes).
    """

    groups: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))

    def __init__(self, num_classes: int, in_channels: int, image_size: int, norm_layer: NormLayer) -> None:
        super().__init__()
        check_geometry("vgg19", num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                       min_image_size=1)
        layers: list[nn.Module] = []
        channels = in_channels
        for width, count in self.groups:
            for _ in range(count):
                layers += act_norm_conv(channels, width, 3, norm_layer, padding=1)
                if len(layers) == 3:
                    layers.append(nn.Dropout(0.3))
                channels = width
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(channels, 512), nn.ReLU(inplace=True), nn.Linear(512, num_classes))

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
