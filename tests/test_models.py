"""Architectures: shapes, norm placement (all / input / tokens), parameter counts, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustbench_norm.models import InputStandardization, build_model, list_models, norm_factory
from robustbench_norm.models.factory import TOKEN_ARCHS
from robustbench_norm.models.pooling import MaxPool2x2
from robustbench_norm.models.resnet import ZeroPadShortcut
from robustbench_norm.norms import build_norm, register_norm

ALL_ARCHS = ("cifar_convnet", "localnorm_mnist", "quick_cnn", "resnet101_cifar", "resnet18_cifar", "resnet20",
             "resnet32", "vgg19", "vit_cn", "vit_tiny", "wrn28_2")
ARCHS = tuple(a for a in ALL_ARCHS if a != "resnet101_cifar")  # 42.5 M parameters: its own tests below


class _Recording(nn.Module):
    """Test norm: multiplies by ``scale`` and remembers the last input it saw."""

    def __init__(self, num_features: int, *, scale: float = 1.0) -> None:
        super().__init__()
        self.num_features = num_features
        self.scale = scale
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.detach().clone()
        return x * self.scale


@register_norm("test_models_input_norm", placement="input", source="test")
class InputRecording(_Recording):
    """Registered with placement "input"."""


@register_norm("test_models_token_norm", placement="tokens", source="test")
class TokenRecording(_Recording):
    """Registered with placement "tokens"."""


def geometry(arch: str) -> tuple[int, int]:
    """(in_channels, image_size): grey for the digit nets, RGB otherwise; 16x16 keeps the forwards cheap."""
    return (1, 16) if arch in ("quick_cnn", "localnorm_mnist") else (3, 16)


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_list_models_names_every_arch():
    assert list_models() == sorted(ALL_ARCHS)


@pytest.mark.parametrize("norm", ["batchnorm", "groupnorm"])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_forwards_and_backwards(arch, norm):
    channels, size = geometry(arch)
    torch.manual_seed(0)
    model = build_model(arch, num_classes=7, in_channels=channels, image_size=size, norm=norm)
    out = model(torch.rand(3, channels, size, size))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", ARCHS)
def test_other_channels_and_sizes(arch):
    size = 16 if arch == "localnorm_mnist" else 8  # its 'valid' convolutions need 16 pixels
    model = build_model(arch, num_classes=3, in_channels=2, image_size=size, norm="groupnorm").eval()
    assert model(torch.rand(2, 2, size, size)).shape == (2, 3)


@pytest.mark.parametrize(
    "arch, expected",
    # norms at every place the architecture has one: post-activation nets one per conv (resnet18_cifar: also
    # its 3 projection shortcuts); the pre-activation WRN two per block (12 blocks) + the final one; the ViTs
    # one after the patch embedding
    [("quick_cnn", 3), ("localnorm_mnist", 4), ("cifar_convnet", 4), ("resnet20", 19), ("resnet32", 31),
     ("wrn28_2", 25), ("vit_tiny", 1), ("vgg19", 16), ("resnet18_cifar", 20), ("vit_cn", 1)],
)
def test_placement_all_puts_the_norm_everywhere(arch, expected):
    channels, size = geometry(arch)
    model = build_model(arch, num_classes=10, in_channels=channels, image_size=size, norm="groupnorm")
    kind = type(build_norm("groupnorm", 16))
    assert count(model, kind) == expected
    assert count(model, nn.BatchNorm2d) == 0


def test_post_activation_nets_norm_directly_after_each_conv():
    model = build_model("resnet20", num_classes=10, in_channels=3, image_size=8, norm="groupnorm")
    order: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.GroupNorm)):
            module.register_forward_hook(lambda m, i, o: order.append(m))
    model(torch.rand(2, 3, 8, 8))
    assert len(order) == 38
    for conv, norm in zip(order[0::2], order[1::2]):
        assert isinstance(conv, nn.Conv2d) and isinstance(norm, nn.GroupNorm)
        assert norm.num_channels == conv.out_channels


def test_norm_kwargs_reach_every_layer():
    model = build_model("quick_cnn", num_classes=10, in_channels=1, image_size=28, norm="groupnorm",
                        norm_kwargs={"num_groups": 4})
    groups = [m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert groups == [4, 4, 4]


def test_norm_factory_checks_kwargs_before_building():
    with pytest.raises(ValueError, match="bogus"):
        norm_factory("groupnorm", bogus=1)
    with pytest.raises(ValueError, match="bogus"):
        build_model("quick_cnn", num_classes=10, in_channels=1, image_size=28, norm="groupnorm",
                    norm_kwargs={"bogus": 1})
    layer = norm_factory("groupnorm", num_groups=2)(8)
    assert isinstance(layer, nn.GroupNorm) and layer.num_groups == 2 and layer.num_channels == 8


@pytest.mark.parametrize("arch", ARCHS)
def test_input_placement_normalises_the_image_and_keeps_batchnorm(arch):
    channels, size = geometry(arch)
    model = build_model(arch, num_classes=10, in_channels=channels, image_size=size,
                        norm="test_models_input_norm", norm_kwargs={"scale": 0.5})
    assert isinstance(model.input_norm, InputRecording)
    assert model.input_norm.num_features == channels and model.input_norm.scale == 0.5
    assert count(model, InputRecording) == 1
    # a conv net keeps BatchNorm in its body; a ViT keeps only its LayerNorms (the CN paper's ViT+CN-Channels)
    assert (count(model.body, nn.BatchNorm2d) == 0) if arch in TOKEN_ARCHS else (count(model.body, nn.BatchNorm2d) > 0)
    x = torch.rand(2, channels, size, size)
    model.eval()
    expected = model.body(x * 0.5)
    assert torch.equal(model(x), expected)
    assert torch.equal(model.input_norm.seen, x)


def test_token_placement_sees_patch_tokens():
    model = build_model("vit_tiny", num_classes=10, in_channels=3, image_size=32,
                        norm="test_models_token_norm", norm_kwargs={"scale": 2.0})
    assert isinstance(model.token_norm, TokenRecording) and model.token_norm.num_features == 64
    assert isinstance(model.patch_norm, nn.Identity)
    assert count(model, nn.BatchNorm2d) == 0
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    seen = model.token_norm.seen
    assert seen.shape == (2, 64, 64)  # (N, T = (32 / 4)^2, D)
    patches = model.patch_embed(x)  # (N, D, 8, 8): token t is patch (t // 8, t % 8)
    assert torch.allclose(seen[:, 9], patches[:, :, 1, 1], atol=1e-6)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in TOKEN_ARCHS])
def test_token_placement_on_other_arch_raises(arch):
    channels, size = geometry(arch)
    with pytest.raises(ValueError, match=rf"{arch}.*vit_tiny"):
        build_model(arch, num_classes=10, in_channels=channels, image_size=size, norm="test_models_token_norm")


def test_unknown_arch_lists_the_known_ones():
    with pytest.raises(ValueError, match="resnet99.*cifar_convnet.*wrn28_2"):
        build_model("resnet99", num_classes=10, in_channels=3, image_size=32, norm="batchnorm")


def test_unknown_norm_raises():
    with pytest.raises(ValueError, match="no_such_norm"):
        build_model("quick_cnn", num_classes=10, in_channels=1, image_size=28, norm="no_such_norm")


@pytest.mark.parametrize(
    "arch, kwargs, match",
    [
        ("vit_tiny", {"image_size": 30}, "multiple of the patch size 4"),
        ("cifar_convnet", {"image_size": 7}, "image_size must be an int >= 8"),
        ("quick_cnn", {"num_classes": 0}, "num_classes must be an int >= 1"),
        ("resnet20", {"in_channels": 0}, "in_channels must be an int >= 1"),
    ],
)
def test_bad_geometry_raises(arch, kwargs, match):
    args = {"num_classes": 10, "in_channels": 3, "image_size": 32, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_model(arch, norm="batchnorm", **args)


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_cifar_convnet_matches_table_iv():
    model = build_model("cifar_convnet", num_classes=10, in_channels=3, image_size=32, norm="batchnorm")
    convs = 3 * 64 * 25 + 64 * 128 * 25 + 128 * 128 * 25 + 128 * 256 * 9
    assert _parameters(model) == convs + 2 * (64 + 128 + 128 + 256) + 256 * 10 + 10  # 917,834
    sizes = []
    for module in model.modules():
        if isinstance(module, (nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
            module.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
    model(torch.rand(2, 3, 32, 32))
    assert sizes == [(64, 16, 16), (128, 8, 8), (128, 4, 4), (256, 1, 1)]


def test_wrn28_2_parameter_count():
    model = build_model("wrn28_2", num_classes=10, in_channels=3, image_size=32, norm="batchnorm")
    expected, channels = 3 * 16 * 9, 16
    for width in (32, 64, 128):
        for _ in range(4):
            expected += 2 * channels + channels * width * 9 + 2 * width + width * width * 9
            expected += channels * width if channels != width else 0
            channels = width
    expected += 2 * 128 + 128 * 10 + 10
    assert _parameters(model) == expected
    assert 1.46e6 < expected < 1.48e6  # "1.47 M" in the AdaMatch / FixMatch papers


@pytest.mark.parametrize("arch, blocks, expected_millions", [("resnet20", 3, 0.27), ("resnet32", 5, 0.46)])
def test_cifar_resnet_parameter_count(arch, blocks, expected_millions):
    model = build_model(arch, num_classes=10, in_channels=3, image_size=32, norm="batchnorm")
    expected, channels = 3 * 16 * 9 + 2 * 16, 16
    for width in (16, 32, 64):
        for _ in range(blocks):
            expected += channels * width * 9 + width * width * 9 + 4 * width
            channels = width
    expected += 64 * 10 + 10
    assert _parameters(model) == expected
    assert round(expected / 1e6, 2) == expected_millions


def test_localnorm_mnist_parameter_count():
    """The authors' mnist_run.py: 'valid' convolutions with bias (28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4)."""
    model = build_model("localnorm_mnist", num_classes=10, in_channels=1, image_size=28, norm="batchnorm")
    convs = (1 * 16 * 9 + 16 * 16 * 9 + 16 * 32 * 9 + 32 * 32 * 9) + (16 + 16 + 32 + 32) + 2 * (16 + 16 + 32 + 32)
    dense = (32 * 4 * 4 * 512 + 512) + (512 * 1024 + 1024) + (1024 * 10 + 10)
    assert _parameters(model) == convs + dense


def test_localnorm_nets_normalise_after_the_activation():
    """The LocalNorm authors' order: conv -> ReLU -> norm (their Keras Sequential models)."""
    for arch, channels in (("localnorm_mnist", 1), ("vgg19", 3)):
        layers = list(build_model(arch, num_classes=10, in_channels=channels, image_size=32,
                                  norm="groupnorm").features)
        assert isinstance(layers[0], nn.Conv2d) and isinstance(layers[1], nn.ReLU)
        assert isinstance(layers[2], nn.GroupNorm)


def test_vgg19_is_configuration_e():
    model = build_model("vgg19", num_classes=10, in_channels=3, image_size=32, norm="batchnorm")
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [64] * 2 + [128] * 2 + [256] * 4 + [512] * 8
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("arch, millions", [("resnet18_cifar", 11.17), ("resnet101_cifar", 42.51)])
def test_cifar_stem_resnets(arch, millions):
    """ILM section 4.1.1: ImageNet ResNets with a 3x3 stride-1 first conv and no max pool (32x32 -> 4x4)."""
    model = build_model(arch, num_classes=10, in_channels=3, image_size=32, norm="groupnorm")
    assert round(_parameters(model) / 1e6, 2) == millions
    stem = model.stem[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    maps = []
    model.head.register_forward_hook(lambda m, i, o: maps.append(tuple(i[0].shape[1:])))
    model.eval()(torch.rand(1, 3, 32, 32))
    assert maps == [(512 * (4 if arch == "resnet101_cifar" else 1), 4, 4)]


def test_vit_cn_follows_the_authors_notebook():
    """72 x 72 resize, 6 x 6 patches (144 tokens) of width 64, 8 blocks with 4 heads of key_dim 64, head
    2048 -> 1024 on the flattened tokens; about 21.7 M parameters with 100 classes."""
    model = build_model("vit_cn", num_classes=100, in_channels=3, image_size=32, norm="none")
    assert len(model.blocks) == 8 and model.pos_embed.shape == (1, 144, 64)
    assert model.blocks[0].attention.qkv.out_features == 3 * 4 * 64
    assert model.head[2].in_features == 144 * 64 and model.head[2].out_features == 2048
    assert 21.7e6 < _parameters(model) < 21.8e6
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 100)


def test_none_norm_and_placement_override_give_the_papers_vit_baselines():
    plain = build_model("vit_cn", num_classes=10, in_channels=3, image_size=32, norm="none")
    assert count(plain, nn.BatchNorm2d) == 0 and isinstance(plain.patch_norm, nn.Identity)
    with_bn = build_model("vit_cn", num_classes=10, in_channels=3, image_size=32, norm="batchnorm",
                          placement="input")
    assert isinstance(with_bn.input_norm, nn.BatchNorm2d) and count(with_bn.body, nn.BatchNorm2d) == 0
    with pytest.raises(ValueError, match="placement 'sideways'.*all"):
        build_model("vit_cn", num_classes=10, in_channels=3, image_size=32, norm="batchnorm", placement="sideways")
    with pytest.raises(ValueError, match="'none' takes no kwargs"):
        build_model("vit_cn", num_classes=10, in_channels=3, image_size=32, norm="none", norm_kwargs={"eps": 1.0})


def test_standardize_puts_a_fitted_layer_first():
    model = build_model("quick_cnn", num_classes=10, in_channels=3, image_size=8, norm="batchnorm",
                        standardize=True)
    layer = model.standardize
    assert isinstance(layer, InputStandardization) and count(model, InputStandardization) == 1
    images = torch.rand(50, 3, 8, 8) * torch.tensor([1.0, 0.5, 0.25]).view(1, 3, 1, 1)
    layer.fit(images)
    out = layer(images)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5, rtol=0)


def test_zero_pad_shortcut_against_loop():
    x = torch.randn(2, 3, 5, 5)
    out = ZeroPadShortcut(out_channels=5, stride=2)(x)
    assert out.shape == (2, 5, 3, 3)
    for n in range(2):
        for c in range(5):
            for i in range(3):
                for j in range(3):
                    expected = x[n, c, 2 * i, 2 * j] if c < 3 else 0.0
                    assert out[n, c, i, j] == expected


@pytest.mark.parametrize("shape", [(3, 4, 28, 28), (2, 3, 7, 9), (1, 1, 2, 2)])
def test_max_pool_2x2_equals_max_pool2d_in_inference_and_training(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    x[0, 0, 0, 0] = float("nan")
    pool = MaxPool2x2()
    with torch.no_grad():
        assert torch.equal(pool(x).nan_to_num(7.0), nn.functional.max_pool2d(x, 2).nan_to_num(7.0))
    x = torch.relu(torch.randn(*shape)).requires_grad_()
    reference = x.detach().clone().requires_grad_()
    pool(x).square().sum().backward()
    nn.functional.max_pool2d(reference, 2).square().sum().backward()
    assert torch.equal(x.grad, reference.grad)
