"""Pieces of the paper-profile scenarios: GMM contexts, the grid point chosen on validation, top-5 rows,
the AdaMatch and batch-size options of the profile."""

from __future__ import annotations

import math

import pytest
import torch

from robustbench_norm.profiles import get_profile
from robustbench_norm.results import ResultRow
from robustbench_norm.scenarios.batch_size import scaled_recipe
from robustbench_norm.scenarios.cifar_mixture import SELECTED, grid_variant, selected_on_validation
from robustbench_norm.scenarios.gmm_contexts import fit_gmm, gmm_contexts, kmeans_plus_plus
from robustbench_norm.scenarios import scoring
from robustbench_norm.training.recipes import recipe


def _clusters(n_per: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well separated clusters of 1x4x4 'images' and their cluster ids."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([0.1, 0.5, 0.9])
    ids = torch.arange(3).repeat_interleave(n_per)
    images = centres[ids].view(-1, 1, 1, 1) + 0.02 * torch.randn(3 * n_per, 1, 4, 4, generator=generator)
    return images, ids


def test_gmm_contexts_recover_separated_clusters_for_train_and_test():
    train, train_ids = _clusters()
    test, test_ids = _clusters(n_per=10, seed=1)
    got_train, got_test = gmm_contexts(train, test, k=3, seed=0)
    assert got_train.dtype == torch.int64 and got_train.shape == (180,) and got_test.shape == (30,)
    mapping = {int(t): int(g) for t, g in zip(train_ids, got_train)}
    assert len(set(mapping.values())) == 3  # one component per cluster
    assert all(mapping[int(t)] == int(g) for t, g in zip(train_ids, got_train))
    assert all(mapping[int(t)] == int(g) for t, g in zip(test_ids, got_test))
    again = gmm_contexts(train, test, k=3, seed=0)
    assert torch.equal(again[0], got_train) and torch.equal(again[1], got_test)


def test_gmm_fit_weights_sum_to_one_and_k_is_checked():
    x, _ = _clusters()
    means, variances, log_weights = fit_gmm(x.flatten(1), 3, seed=0)
    assert means.shape == variances.shape == (3, 16) and bool((variances > 0).all())
    assert math.isclose(float(log_weights.exp().sum()), 1.0, abs_tol=1e-9)
    with pytest.raises(ValueError, match="k must be an int in"):
        fit_gmm(x.flatten(1), 0, seed=0)


def test_kmeans_plus_plus_picks_distinct_rows():
    x, _ = _clusters()
    centres = kmeans_plus_plus(x.flatten(1).double(), 3, torch.Generator().manual_seed(0))
    assert len({tuple(c.tolist()) for c in centres}) == 3


def _row(variant: str, metric: str, value: float, seed: int = 0, mode: str = "cn") -> ResultRow:
    return ResultRow(scenario="cifar_mixture", profile="paper", dataset="cifar10", model="cifar_convnet",
                     norm="contextnorm", norm_kwargs={}, variant=variant, eval_mode=mode, corruption="none",
                     severity=0.0, train_batch_size=256, seed=seed, metric=metric, value=value, n_examples=10,
                     device="cpu", versions="", git_commit="", checkpoint_hash="", wall_seconds=0.0)


def test_selected_on_validation_copies_the_test_rows_of_the_best_validation_point():
    variants = [grid_variant(0.001, 1e-4), grid_variant(0.005, 1e-4)]
    assert variants == ["lr0.001_wd0.0001", "lr0.005_wd0.0001"]
    rows = [_row(variants[0], "validation_accuracy", 0.5), _row(variants[0], "accuracy", 0.40),
            _row(variants[1], "validation_accuracy", 0.6), _row(variants[1], "accuracy", 0.30),
            _row(variants[0], "validation_accuracy", 0.7, seed=1), _row(variants[0], "accuracy", 0.9, seed=1),
            _row(variants[1], "validation_accuracy", 0.7, seed=1), _row(variants[1], "accuracy", 0.1, seed=1)]
    selected = selected_on_validation(rows, variants)
    assert [(r.seed, r.variant, r.value) for r in selected] == [(0, SELECTED, 0.30), (1, SELECTED, 0.9)]


def test_top5_accuracy_row_and_its_chance():
    labels = torch.tensor([0, 0, 0, 1, 2, 3, 4, 5, 6, 7])
    test = scoring.TestSet("t", torch.zeros(10, 1, 2, 2), labels, num_classes=8, top5=True)
    assert test.chance == pytest.approx(0.3) and test.top_k_chance(5) == pytest.approx(0.7)


def test_paper_profile_settings_of_issue_13():
    paper = get_profile("paper")
    assert paper.batch_size.lr_scaling == "none" and paper.batch_size.batch_sizes == (64, 32, 16, 8, 4, 2)
    assert paper.domain_shift.variants == ("source_only", "adamatch", "adamatch_reference")
    assert paper.superclass.input_baselines == paper.blend.input_baselines == ("none", "batchnorm")
    chosen = recipe("paper", "batch_size", "groupnorm")
    assert scaled_recipe(chosen, 2, 50_000, "none").train.lr == chosen.train.lr == 0.1
    assert scaled_recipe(chosen, 2, 50_000, "linear").train.lr == pytest.approx(0.1 * 2 / 64)
    assert chosen.norm_kwargs == {"num_groups": 32} and chosen.train.milestones == (150, 250)
    ada = recipe("paper", "domain_shift", "contextnorm")
    assert (ada.adamatch.optimizer, ada.adamatch.lr_decay, ada.adamatch.lr) == ("adam", "keras", 0.03)
    assert ada.adamatch_reference.optimizer == "sgd"
    for scenario in ("blend", "superclass"):
        assert {recipe("paper", scenario, n).arch for n in ("batchnorm", "contextnorm", "contextnorm_patches")} == \
            {"vit_cn"}
    quick = get_profile("quick")
    assert quick.batch_size.lr_scaling == "linear" and quick.domain_shift.variants == ("source_only", "adamatch")
