"""LCN is local in every profile: no scenario's net runs an LCN layer that is GroupNorm on every map.

LCN with a window at least as large as the map is exactly GroupNorm (the paper's remark, and the authors'
default 227 x 227 window on every map up to that size). For each profile and each of its scenarios the test
builds the recipe's net with ``lcn`` (the recipe's kwargs included), forwards one batch of the scenario's
image geometry and checks, on every LCN call, that the window is smaller than the map in both directions
whenever the map is larger than 2 x 2 pixels. The paper profile reads the tiny real-format files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustbench_norm.models import build_model
from robustbench_norm.norms.lcn import LocalContextNorm
from robustbench_norm.profiles import PROFILES, DataSpec
from robustbench_norm.scenarios import SCENARIOS, Session, available
from robustbench_norm.training.recipes import recipe
from tests.real_format_files import patch_cifar_checksums, patch_svhn_checksums, write_tiny_real_data


def first_data(settings) -> DataSpec:
    """The (first) data set a scenario trains on: every settings class names it one of these ways."""
    for name in ("data", "source"):
        if hasattr(settings, name):
            return getattr(settings, name)
    return (settings.parts if hasattr(settings, "parts") else settings.datasets)[0]


def lcn_maps(model: torch.nn.Module, channels: int, size: int) -> list[tuple[int, int, int, int]]:
    """(H, W, p, q) of every LCN call in one eval forward of a (2, channels, size, size) batch."""
    seen = []

    def record(layer, inputs, _output):
        height, width = inputs[0].shape[-2:]
        seen.append((height, width, *layer.window_for(height, width)))

    for module in model.modules():
        if isinstance(module, LocalContextNorm):
            module.register_forward_hook(record)
    with torch.no_grad():
        model.eval()(torch.rand(2, channels, size, size))
    return seen


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> dict[str, Session]:
    data = tmp_path_factory.mktemp("tiny_real_data")
    write_tiny_real_data(data)
    patch = pytest.MonkeyPatch()
    patch_svhn_checksums(patch, data)
    patch_cifar_checksums(patch, data, hundred=False)
    patch_cifar_checksums(patch, data, hundred=True)
    yield {profile: Session.create(profile, device="cpu", seeds=1, data_dir=data if profile == "paper" else None)
           for profile in PROFILES}
    patch.undo()


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("profile", PROFILES)
def test_lcn_window_is_smaller_than_every_map(sessions, profile: str, scenario: str):
    session = sessions[profile]
    if not available(session, scenario):
        pytest.skip(f"{scenario} is not part of profile {profile}")
    chosen = recipe(profile, scenario, "lcn")
    bundle = session.dataset(first_data(getattr(session.profile, scenario)))
    model = build_model(chosen.arch, num_classes=bundle.num_classes, in_channels=bundle.channels,
                        image_size=bundle.image_size, norm="lcn", norm_kwargs=chosen.norm_kwargs)
    seen = lcn_maps(model, bundle.channels, bundle.image_size)
    larger = [(h, w, p, q) for h, w, p, q in seen if h > 2 and w > 2]
    assert larger, f"{profile}/{scenario}: {chosen.arch} has no LCN layer on a map larger than 2x2 ({seen})"
    global_maps = [(h, w, p, q) for h, w, p, q in larger if p >= h or q >= w]
    assert not global_maps, (f"{profile}/{scenario}: LCN on {chosen.arch} with {chosen.norm_kwargs} is GroupNorm "
                             f"on maps (H, W, p, q) = {global_maps}")


def test_a_window_as_large_as_the_map_is_caught():
    """The check itself: the authors' default window (227) on the paper's CIFAR nets is GroupNorm everywhere."""
    model = build_model("cifar_convnet", num_classes=10, in_channels=3, image_size=32, norm="lcn",
                        norm_kwargs={"window_size": 227})
    assert all(p >= h and q >= w for h, w, p, q in lcn_maps(model, 3, 32))


def test_paper_classification_nets_use_32_channels_per_group():
    """LCN section 4.3 (ImageNet classification): 32 channels per group, wherever the net's widths allow."""
    for scenario in ("batch_size", "noise_cifar10", "cifar_mixture", "blend", "superclass"):
        assert recipe("paper", scenario, "lcn").norm_kwargs == {"channels_per_group": 32}
