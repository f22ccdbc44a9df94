"""Architectures that take a norm factory (``norm_layer: int -> nn.Module``), built by name.

``build_model("resnet20", num_classes=10, in_channels=3, image_size=32, norm="groupnorm")`` places the
registered norm where its spec's ``placement`` says (see :mod:`robustbench_norm.models.factory`).
"""

from robustbench_norm.models.base import NormLayer
from robustbench_norm.models.factory import NO_NORM, build_model, list_models, norm_factory
from robustbench_norm.models.resnet import CIFARResNet, CIFARStemResNet, WideResNet
from robustbench_norm.models.small import VGG19, CIFARConvNet, LocalNormMNISTNet, QuickCNN
from robustbench_norm.models.standardize import InputStandardization
from robustbench_norm.models.vit import ViTCN, ViTTiny

__all__ = [
    "NO_NORM",
    "VGG19",
    "CIFARConvNet",
    "CIFARResNet",
    "CIFARStemResNet",
    "InputStandardization",
    "LocalNormMNISTNet",
    "NormLayer",
    "QuickCNN",
    "ViTCN",
    "ViTTiny",
    "WideResNet",
    "build_model",
    "list_models",
    "norm_factory",
]
