"""Build an architecture by name with a registered norm in the place the norm's ``placement`` asks for.

* ``"all"``: the norm at every place the architecture has a norm, i.e. after every convolution (before
  them in the pre-activation WRN; after the patch embedding of the ViTs). Dense layers never get one.
* ``"input"`` (e.g. ``contextnorm``): the norm is applied once to the input image:
  ``nn.Sequential(input_norm=<norm>(in_channels), body=<net>)``, so ``model.input_norm`` is the layer under
  test; the body of a conv net keeps BatchNorm everywhere, a ViT body keeps only its own LayerNorms (the
  Context Normalization paper's ViT+CN-Channels and ViT+BN are a plain ViT with a norm on its input).
* ``"tokens"`` (e.g. ``contextnorm_patches``): only the ViTs, where the norm acts on the patch tokens
  (N, T, D); the rest of the ViT is unchanged.

``norm="none"`` (:data:`NO_NORM`) builds the net with no norm at its norm places (the paper's plain "ViT"
baseline); ``placement`` overrides the norm's registered placement ("input" BatchNorm is the paper's
"ViT+BN"). ``standardize=True`` puts an :class:`~robustbench_norm.models.standardize.InputStandardization`
first (``nn.Sequential(standardize=..., net=<the model above>)``), which the trainer fits to the training
images. ``norm_kwargs`` reach the layer under test unchanged (after the registry's defaults) and are checked
against its factory before any layer is built.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any, Callable

from torch import nn

from robustbench_norm.models.base import NormLayer
from robustbench_norm.models.resnet import CIFARResNet, CIFARStemResNet, WideResNet
from robustbench_norm.models.small import VGG19, CIFARConvNet, LocalNormMNISTNet, QuickCNN
from robustbench_norm.models.standardize import InputStandardization
from robustbench_norm.models.vit import ViTCN, ViTTiny
from robustbench_norm.norms import build_norm, check_kwargs, get_norm

BODY_NORM = "batchnorm"
NO_NORM = "none"
TOKEN_ARCH = "vit_tiny"
TOKEN_ARCHS: tuple[str, ...] = ("vit_cn", TOKEN_ARCH)
PLACEMENTS: tuple[str, ...] = ("all", "input", "tokens")

_ARCHS: dict[str, Callable[..., nn.Module]] = {
    "quick_cnn": QuickCNN,
    "localnorm_mnist": LocalNormMNISTNet,
    "vgg19": VGG19,
    "cifar_convnet": CIFARConvNet,
    "resnet20": partial(CIFARResNet, 20),
    "resnet32": partial(CIFARResNet, 32),
    "resnet18_cifar": partial(CIFARStemResNet, 18),
    "resnet101_cifar": partial(CIFARStemResNet, 101),
    "wrn28_2": partial(WideResNet, 28, 2),
    "vit_cn": ViTCN,
    TOKEN_ARCH: ViTTiny,
}


def list_models() -> list[str]:
    """Names of every architecture :func:`build_model` knows, sorted."""
    return sorted(_ARCHS)


def norm_factory(norm: str, **kwargs: Any) -> NormLayer:
    """``num_features -> nn.Module`` for the registered norm ``norm`` with ``kwargs`` (checked here);
    :data:`NO_NORM` gives ``nn.Identity`` (and takes no kwargs)."""
    if norm == NO_NORM:
        if kwargs:
            raise ValueError(f"norm {NO_NORM!r} takes no kwargs, got {kwargs!r}")
        return lambda num_features: nn.Identity()
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
    placement: str | None = None,
    standardize: bool = False,
) -> nn.Module:
    """The architecture ``arch`` for square ``image_size`` inputs with ``norm`` placed per its spec (or at
    ``placement``), behind an input standardisation layer if ``standardize`` (module docstring).

    Raises ``ValueError`` for an unknown arch (listing the known ones), an unknown norm, kwarg or placement,
    a "tokens" norm on an arch without patch tokens, or a geometry the arch cannot take.
    """
    if arch not in _ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known archs: {', '.join(list_models())}")
    if placement is None:
        placement = "all" if norm == NO_NORM else get_norm(norm).placement
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; valid placements: {PLACEMENTS}")
    builder = partial(_ARCHS[arch], num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    model = _placed(arch, builder, norm, norm_factory(norm, **(norm_kwargs or {})), placement, in_channels)
    if not standardize:
        return model
    return nn.Sequential(OrderedDict(standardize=InputStandardization(in_channels), net=model))


def _placed(arch: str, builder: Callable[..., nn.Module], norm: str, layer: NormLayer, placement: str,
            in_channels: int) -> nn.Module:
    if placement == "all":
        return builder(norm_layer=layer)
    body_norm = norm_factory(NO_NORM if arch in TOKEN_ARCHS else BODY_NORM)
    if placement == "input":
        return nn.Sequential(OrderedDict(input_norm=layer(in_channels), body=builder(norm_layer=body_norm)))
    if arch not in TOKEN_ARCHS:
        raise ValueError(
            f"norm {norm!r} has placement 'tokens' (patch tokens of a ViT), which arch {arch!r} lacks; "
            f"valid archs for it: {', '.join(repr(a) for a in TOKEN_ARCHS)}"
        )
    return builder(norm_layer=body_norm, token_norm_layer=layer)
