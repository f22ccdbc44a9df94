"""Third-party norms through the entry-point group ``robustbench_norm.norms``, discovered for real.

The fixture lays out on disk exactly what ``pip install`` of a tiny distribution leaves in site-packages
(the package directory and its ``*.dist-info`` with METADATA and entry_points.txt) in ``tmp_path``, and
puts that directory on ``sys.path``; ``importlib.metadata`` then finds the distribution like any other.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch

from robustbench_norm.norms import (
    ENTRY_POINT_GROUP,
    build_norm,
    get_norm,
    list_norms,
    reload_plugins,
)

PACKAGE = '''
"""A third-party normalization layer."""
import torch
from torch import nn


class MyNorm(nn.Module):
    NORM_SPEC = {"batch_independent": True, "eval_modes": ["standard", "running_stats"], "paper": "Me, 2030"}

    def __init__(self, num_features, *, scale=2.0):
        super().__init__()
        self.num_features = num_features
        self.scale = scale

    def forward(self, x):
        return self.scale * x


class Shadow(nn.Module):
    """Claims a built-in name; the built-in must win."""

    def __init__(self, num_features):
        super().__init__()
'''


@contextmanager
def _installed(root: Path) -> Iterator[None]:
    """What `pip install mynormpkg` would put in site-packages, written under ``root`` and put on sys.path."""
    (root / "mynormpkg").mkdir()
    (root / "mynormpkg" / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    dist_info = root / "mynormpkg-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: mynormpkg\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nmynorm = mynormpkg:MyNorm\ncontextnorm = mynormpkg:Shadow\n"
    )
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    reload_plugins()
    try:
        yield
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("mynormpkg", None)
        importlib.invalidate_caches()
        reload_plugins()


@pytest.fixture
def installed_plugin(tmp_path: Path) -> Iterator[None]:
    with _installed(tmp_path):
        yield


def test_plugin_is_discovered_and_builds(installed_plugin: None) -> None:
    assert "mynorm" in list_norms()
    layer = build_norm("mynorm", 8)
    assert type(layer).__name__ == "MyNorm" and layer.num_features == 8
    torch.testing.assert_close(layer(torch.ones(2, 8, 3, 3)), torch.full((2, 8, 3, 3), 2.0))
    assert build_norm("MyNorm", 8, scale=3.0).scale == 3.0


def test_plugin_spec_comes_from_norm_spec(installed_plugin: None) -> None:
    spec = get_norm("mynorm")
    assert spec.source.startswith("plugin")
    assert spec.source == "plugin:mynormpkg"
    assert spec.batch_independent is True
    assert spec.eval_modes == ("standard", "running_stats")
    assert spec.paper == "Me, 2030"
    assert (spec.needs_context, spec.batch_stats_at_test, spec.placement) == (False, False, "all")


def test_plugin_kwargs_are_checked(installed_plugin: None) -> None:
    with pytest.raises(ValueError, match=r"'mynorm'.*\['bogus'\].*valid kwargs: \['scale'\]"):
        build_norm("mynorm", 8, bogus=1)


def test_builtin_name_wins_over_plugin(installed_plugin: None) -> None:
    assert get_norm("contextnorm").source == "builtin"
    assert type(build_norm("contextnorm", 3)).__name__ == "ContextNorm2d"


def test_plugin_is_gone_after_uninstall(tmp_path: Path) -> None:
    with _installed(tmp_path):
        assert "mynorm" in list_norms()
    assert "mynorm" not in list_norms()
    with pytest.raises(ValueError, match="unknown norm 'mynorm'"):
        get_norm("mynorm")
