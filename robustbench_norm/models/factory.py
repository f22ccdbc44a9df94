"""Build an architecture by name with a registered norm in the place the norm's ``placement`` asks for.

* ``"all"``: the norm at every place the architecture has a norm, i.e. after every convolution (before
  them in the pre-activation WRN; after the patch embedding of the ViT). Dense layers never get one.
* ``"input"`` (e.g. ``contextnorm``): the net keeps BatchNorm everywhere and the requested norm is applied
  once to the input image: ``nn.Sequential(input_norm=<norm>(in_channels), body=<net with batchnorm>)``,
  so ``model.input_norm`` is the layer under test.
* ``"tokens"`` (e.g. ``contextnorm_patches``): only ``vit_tiny``, where the norm acts on the patch tokens
  (N, T, D); the rest of the ViT is unchanged.

``norm_kwargs`` reach the layer under test unchanged (after the registry's defaults) and are checked
against its factory before any layer is built.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any, Callable

from torch import nn

from robustbench_norm.models.base import NormLayer
from robustbench_norm.models.resnet import CIFARResNet, WideResNet
from robustbench_norm.models.small import CIFARConvNet, LocalNormMNISTNet, QuickCNN
from robustbench_norm.models.vit import ViTTiny
from robustbench_norm.norms import build_norm, check_kwargs, get_norm

BODY_NORM = "batchnorm"
TOKEN_ARCH = "vit_tiny"
TOKEN_ARCHS: tuple[str, ...] = (TOKEN_ARCH,)

_ARCHS: dict[str, Callable[..., nn.Module]] = {
    "quick_cnn": QuickCNN,
    "localnorm_mnist": LocalNormMNISTNet,
    "cifar_convnet": CIFARConvNet,
    "resnet20": partial(CIFARResNet, 20),
    "resnet32": partial(CIFARResNet, 32),
    "wrn28_2": partial(WideResNet, 28, 2),
    TOKEN_ARCH: ViTTiny,
}


def list_models() -> list[str]:
    """Names of every architecture :func:`build_model` knows, sorted."""
    return sorted(_ARCHS)


def norm_factory(norm: str, **kwargs: Any) -> NormLayer:
    """``num_features -> nn.Module`` for the registered norm ``norm`` with ``kwargs`` (checked here)."""
    spec = get_norm(norm)
    check_kwargs(spec.name, kwargs)
    return partial(build_norm, spec.name, **kwargs)


def build_model(
    arch: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    norm: str,
    norm_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """The architecture ``arch`` for square ``image_size`` inputs with ``norm`` placed per its spec.

    Raises ``ValueError`` for an unknown arch (listing the known ones), an unknown norm or kwarg, a
    "tokens" norm on an arch other than ``vit_tiny``, or a geometry the arch cannot take.
    """
    if arch not in _ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known archs: {', '.join(list_models())}")
    builder = partial(_ARCHS[arch], num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    placement = get_norm(norm).placement
    layer = norm_factory(norm, **(norm_kwargs or {}))
    if placement == "all":
        return builder(norm_layer=layer)
    if placement == "input":
        body = builder(norm_layer=norm_factory(BODY_NORM))
        return nn.Sequential(OrderedDict(input_norm=layer(in_channels), body=body))
    if arch != TOKEN_ARCH:
        raise ValueError(
            f"norm {norm!r} has placement 'tokens' (patch tokens of a ViT), which arch {arch!r} lacks; "
            f"valid arch for it: {TOKEN_ARCH!r}"
        )
    return builder(norm_layer=norm_factory(BODY_NORM), token_norm_layer=layer)
