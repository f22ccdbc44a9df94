"""The scenario library without pytest's suite: plans, runs, rows, recipes, validation splits, user models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import robustbench_norm
from robustbench_norm.convergence import Check, markdown_table
from robustbench_norm.scenarios import Session, get_scenario, plan_jobs, run_scenario
from robustbench_norm.scenarios.batch_size import scaled_recipe
from robustbench_norm.scenarios.mixture import ScenarioUnavailable, join_parts, settings_of
from robustbench_norm.training.recipes import TOKEN_ARCH, family_candidates, recipe, scaled_steps, with_epochs


@pytest.fixture
def session(tmp_path) -> Session:
    torch.set_num_threads(1)
    return Session.create("quick", device="cpu", seeds=1, epochs=1, cache_dir=tmp_path / "cache")


def test_plan_lists_jobs_without_training(session, tmp_path):
    jobs = plan_jobs(session, "noise", "batchnorm") + plan_jobs(session, "domain_shift", "batchnorm")
    assert len(jobs) == 3  # noise: one model for every corruption; domain shift: source-only and AdaMatch
    assert len({session.cache.key(job.spec) for job in jobs}) == 3
    assert not any((tmp_path / "cache").glob("*.pt"))
    assert all(job.recipe_id.startswith("v") for job in jobs)


def test_recipe_id_ignores_seed_and_device_but_not_the_schedule(session):
    first = plan_jobs(session, "blend", "groupnorm")[0]
    other_seed = plan_jobs(Session.create("quick", device="cpu", seeds=2, epochs=1), "blend", "groupnorm")[1]
    longer = plan_jobs(Session.create("quick", device="cpu", seeds=1, epochs=2), "blend", "groupnorm")[0]
    assert first.recipe_id == other_seed.recipe_id != longer.recipe_id


def test_noise_rows_carry_recipe_chance_device_and_tta(session):
    outcome = get_scenario("noise").run(session, "batchnorm", "additive_gaussian_noise")
    accuracy = [r for r in outcome.rows if r.metric == "accuracy"]
    assert {r.eval_mode for r in accuracy} == {"running_stats", "test_batch_stats", "bn_adapt", "tent"}
    assert all(r.chance == pytest.approx(0.1) and r.device == "cpu" and r.recipe.startswith("v") for r in accuracy)
    assert {r.metric for r in outcome.rows} >= {"accuracy", "prediction_entropy", "ece", "nll"}
    bn_adapt = next(r for r in accuracy if r.eval_mode == "bn_adapt")
    assert '"prior_n": 16.0' in bn_adapt.eval_kwargs
    assert len(outcome.diagrams) == 2  # clean and the middle severity, seed 0


def test_tta_not_applicable_is_a_row_status_not_a_crash(session):
    outcome = get_scenario("noise").run(session, "contextnorm", "multiplicative_bernoulli_noise")
    tent = [r for r in outcome.rows if r.eval_mode == "tent"]
    assert tent and all(math.isnan(r.value) and r.status.startswith("not applicable") for r in tent)


def test_one_context_scenarios_give_a_context_layer_one_context(session):
    job = plan_jobs(session, "noise", "contextnorm")[0]
    assert job.spec["norm_kwargs"]["num_contexts"] == 1
    assert plan_jobs(session, "domain_shift", "contextnorm")[0].spec["norm_kwargs"]["num_contexts"] == 2


def test_token_norms_run_and_are_recorded_on_the_vit(session):
    assert recipe("quick", "blend", "contextnorm_patches").arch == TOKEN_ARCH
    assert recipe("quick", "blend", "contextnorm_patches").train.optimizer == "adam"
    adamatch = recipe("quick", "domain_shift", "contextnorm_patches").adamatch
    assert (adamatch.optimizer, adamatch.lr) == ("adam", 1e-3)
    assert recipe("quick", "domain_shift", "contextnorm").adamatch.optimizer == "sgd"
    outcome = run_scenario(session, "blend", "contextnorm_patches")
    assert {r.model for r in outcome.rows} == {TOKEN_ARCH}


def test_recipes_answer_every_quick_scenario_and_reject_unknown_names():
    assert recipe("quick", "noise", "localnorm").norm_kwargs == {"num_groups": 4}
    assert recipe("quick", "noise", "groupnorm").norm_kwargs == {}
    with pytest.raises(ValueError, match="valid"):
        recipe("quick", "nosuch", "batchnorm")
    with pytest.raises(ValueError, match="valid profiles"):
        recipe("nosuch", "noise", "batchnorm")
    assert set(family_candidates("quick", "noise", "contextnorm_patches")) == {"shared", "family"}
    assert set(family_candidates("quick", "noise", "groupnorm")) == {"shared"}


def test_a_family_schedule_changes_only_its_scenario_and_compares_with_the_shared_one():
    shared, own = recipe("quick", "blend", "batchnorm"), recipe("quick", "blend", "localnorm")
    assert own.train.epochs == 2 * shared.train.epochs and own.source != "shared"
    assert recipe("quick", "noise", "localnorm").train == recipe("quick", "noise", "batchnorm").train
    candidates = family_candidates("quick", "blend", "localnorm")
    assert candidates["shared"].train == shared.train and candidates["family"] == own


def test_epoch_override_and_step_scaling():
    chosen = recipe("quick", "domain_shift", "batchnorm")
    assert with_epochs(chosen, 1).train.epochs == with_epochs(chosen, 1).adamatch.epochs == 1
    doubled = scaled_steps(chosen, 2)
    assert doubled.train.epochs == 2 * chosen.train.epochs and doubled.adamatch.epochs == 2 * chosen.adamatch.epochs
    with pytest.raises(ValueError, match="epochs"):
        with_epochs(chosen, 0)


def test_batch_sweep_step_floor_raises_epochs_of_large_batches_only():
    chosen = recipe("quick", "batch_size", "groupnorm")
    at = {b: scaled_recipe(chosen, b, 1400).train for b in (64, 16, 2)}
    assert at[2].epochs == chosen.train.epochs and 1400 // 2 * at[2].epochs >= chosen.min_steps
    for b in (64, 16):
        steps_per_epoch = 1400 // b
        assert steps_per_epoch * (at[b].epochs - 1) < chosen.min_steps <= steps_per_epoch * at[b].epochs
    assert at[2].lr == pytest.approx(chosen.train.lr * 2 / 64)
    doubled = scaled_steps(chosen, 2)
    assert scaled_recipe(doubled, 64, 1400).train.epochs >= 2 * at[64].epochs - 1
    assert with_epochs(chosen, 1).min_steps == 0 and scaled_recipe(with_epochs(chosen, 1), 64, 1400).train.epochs == 1
    with pytest.raises(ValueError, match="exceeds"):
        scaled_recipe(chosen, 64, 10)


def test_validation_mode_never_reads_the_test_split(session):
    from dataclasses import replace

    trial = replace(session, validation=True, _data={}, _models={})
    spec = session.profile.noise.data
    validation, full = trial.dataset(spec), session.dataset(spec)
    assert validation.test.name.endswith("/validation")
    assert len(validation.train) + len(validation.test) == len(full.train)
    pixels = {bytes(image.numpy()) for image in full.test.images}
    assert not any(bytes(image.numpy()) in pixels for image in validation.test.images[:200])


def test_a_mixture_tests_its_parts_in_one_fixed_shuffled_order(session):
    joint = join_parts(session, settings_of(session, "day_night"))
    first_batch = joint.test.contexts[:64]
    assert 0 < int(first_batch.sum()) < 64  # day and night images in one test batch
    assert torch.bincount(joint.test.contexts).tolist() == [400, 400]
    assert torch.equal(join_parts(session, settings_of(session, "day_night")).test.labels, joint.test.labels)


def test_superclass_is_unavailable_on_the_quick_profile(session):
    assert plan_jobs(session, "superclass", "batchnorm") == []
    with pytest.raises(ScenarioUnavailable, match="paper"):
        get_scenario("superclass").run(session, "batchnorm", None)


def test_release_drops_models_from_memory(session):
    get_scenario("batch_size").run(session, "groupnorm", 64)
    assert session._models
    session.release("groupnorm")
    assert not session._models


def test_evaluate_scores_a_user_model_without_training(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    rows = robustbench_norm.evaluate(model, dataset="digits", device="cpu")
    assert set(rows["variant"]) == {"user_model"} and set(rows["recipe"]) == {"unspecified"}
    assert set(rows["model"]) == {"Sequential"}
    assert rows["corruption"].nunique() == 3


def test_convergence_check_compares_the_adapted_target_only_on_request(session, monkeypatch):
    from types import SimpleNamespace

    import robustbench_norm.convergence as convergence

    def fake_run(run_session, norm, value):
        scale = run_session.recipe("domain_shift", norm).adamatch.epochs  # 2x steps -> twice the number
        rows = [SimpleNamespace(seed=0, metric="source_accuracy", value=0.9),
                SimpleNamespace(seed=0, metric="target_accuracy", value=0.01 * scale)]
        return SimpleNamespace(rows=rows)

    real = convergence.get_scenario
    monkeypatch.setattr(convergence, "get_scenario",
                        lambda name: SimpleNamespace(run=fake_run, in_distribution=real(name).in_distribution,
                                                     values=real(name).values))
    plain = convergence.check_convergence(session, ["domain_shift"], ["batchnorm"])
    assert [(c.value, c.short, c.long) for c in plain] == [("source_only", [0.9], [0.9])]
    adapted = convergence.check_convergence(session, ["domain_shift"], ["batchnorm"], settings={"adamatch"})
    assert [(c.value, c.short, c.long) for c in adapted] == [("adamatch", [0.01], [0.02])]


def test_convergence_table_flags_a_moving_number():
    checks = [Check("noise", None, "groupnorm", [0.95, 0.96], [0.98, 0.98]),
              Check("noise", None, "batchnorm", [0.98, 0.98], [0.985, 0.98])]
    table = markdown_table(checks, 2, 2, "robustbench-norm check-convergence")
    assert "| noise |  | groupnorm | 95.50 | 98.00 | +2.50 | **no** |" in table
    assert "| batchnorm | 98.00 | 98.25 | +0.25 | yes |" in table
