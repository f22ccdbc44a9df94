"""Bounded launches (issue 14): a training step of every built-in norm issues a fixed number of ATen ops.

The ops are counted with a dispatch-mode counter (:class:`robustbench_norm.norms.cost.AtenOpCounter`), so
the test is deterministic, not a timing: the same count at two different (N, H, W) means no Python loop
over samples, rows or batch chunks (on a GPU every non-view op is a kernel launch). Both CPU paths are
counted: the C kernels and the ATen ops a GPU runs (``kernel_path`` fixture).
"""

from __future__ import annotations

import pytest

from robustbench_norm.norms import get_norm, list_norms
from robustbench_norm.norms.cost import BASE_NORM, cost_layer, count_ops

BUILTINS = [name for name in list_norms() if get_norm(name).source == "builtin"]
# Two shapes with different N, H and W. LCN's default window (127/224 of each side) is then 7 x 7 and
# 11 x 9, both summed by prefix differences, so the same code path runs on both.
SMALL, LARGE = (4, 32, 12, 12), (6, 32, 20, 16)
LCN_KERNEL_LIMIT = 100


@pytest.mark.parametrize("name", BUILTINS)
def test_op_count_does_not_depend_on_batch_or_map_size(name: str, kernel_path: str) -> None:
    small, large = count_ops(cost_layer(name, SMALL)), count_ops(cost_layer(name, LARGE))
    assert small.counts == large.counts


@pytest.mark.parametrize("window", [1, 3, 7, 31])
def test_lcn_launches_a_bounded_number_of_kernels(window: int, kernel_path: str) -> None:
    """Per-row scans and batch chunks made LCN issue thousands of ops on large maps; now a fixed few."""
    counts = [count_ops(cost_layer("lcn", shape, window_size=window)) for shape in ((1, 8, 64, 64), (3, 8, 80, 72))]
    assert counts[0].counts == counts[1].counts
    assert counts[0].kernels <= LCN_KERNEL_LIMIT


def test_every_layer_with_a_base_norm_names_a_registered_one() -> None:
    assert set(BASE_NORM) <= set(BUILTINS) and set(BASE_NORM.values()) <= set(BUILTINS)
