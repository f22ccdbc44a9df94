"""Tests of the test-time adaptation modes (evaluation/tta.py) and their place in evaluation/modes.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from robustbench_norm.evaluation import (
    TTANotApplicable,
    TentDiverged,
    adapt_tent,
    applicable_tta_modes,
    mode_logits,
    predict,
    tta_hparams,
    tta_support,
    use_bn_adapt,
)
from robustbench_norm.evaluation.tta import norm_layers, softmax_entropy, source_weight
from robustbench_norm.models import build_model
from robustbench_norm.norms import get_norm, list_norms
from robustbench_norm.norms.standard import BatchNorm
from robustbench_norm.training.hparams import TTAConfig

CPU = torch.device("cpu")
CONFIG = TTAConfig()


def _images(n: int = 10, seed: int = 0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g) * 1.5 + shift


def _model(norm: str = "batchnorm", **norm_kwargs) -> nn.Module:
    """quick_cnn (vit_tiny for token norms) whose running statistics have seen a few training batches."""
    torch.manual_seed(0)
    arch = "vit_tiny" if get_norm(norm).placement == "tokens" else "quick_cnn"
    model = build_model(arch, num_classes=3, in_channels=3, image_size=8, norm=norm, norm_kwargs=norm_kwargs)
    if not get_norm(norm).needs_context:
        model.train()
        with torch.no_grad():
            for seed in range(3):
                model(_images(8, seed=100 + seed))
    return model.eval()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


def _assert_same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    current = model.state_dict()
    assert current.keys() == state.keys()
    for name, value in state.items():
        assert torch.equal(current[name], value), name


# ----------------------------------------------------------------------------------------------------------
# bn_adapt
# ----------------------------------------------------------------------------------------------------------
def test_bn_adapt_with_prior_zero_is_test_batch_statistics() -> None:
    model, images = _model(), _images()
    adapted = mode_logits(model, images, mode="bn_adapt", batch_size=4, device=CPU, norm="batchnorm",
                          tta=TTAConfig(bn_adapt_prior=0))
    test_batch = mode_logits(model, images, mode="test_batch_stats", batch_size=4, device=CPU)
    torch.testing.assert_close(adapted, test_batch, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prior", [math.inf, 1e12])
def test_bn_adapt_with_infinite_prior_is_running_statistics(prior: float) -> None:
    model, images = _model(), _images(shift=2.0)
    adapted = mode_logits(model, images, mode="bn_adapt", batch_size=4, device=CPU, norm="batchnorm",
                          tta=TTAConfig(bn_adapt_prior=prior))
    running = mode_logits(model, images, mode="running_stats", batch_size=4, device=CPU)
    torch.testing.assert_close(adapted, running, rtol=1e-5, atol=1e-5)


def test_bn_adapt_layer_matches_the_formula_in_float64() -> None:
    """N = 16, n = 4: mu = 16/20 running + 4/20 batch mean, var likewise with the biased batch variance."""
    torch.manual_seed(3)
    layer = BatchNorm(5).double()
    with torch.no_grad():
        layer.running_mean.copy_(torch.randn(5))
        layer.running_var.copy_(torch.rand(5) + 0.5)
        layer.weight.copy_(torch.rand(5) + 0.5)
        layer.bias.copy_(torch.randn(5))
    model = nn.Sequential(layer).eval()
    x = torch.randn(4, 5, 3, 3, dtype=torch.float64) * 2 + 1
    batch_var, batch_mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    mean = 0.8 * layer.running_mean + 0.2 * batch_mean
    var = 0.8 * layer.running_var + 0.2 * batch_var
    expected = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + layer.eps)
    expected = expected * layer.weight[:, None, None] + layer.bias[:, None, None]
    with use_bn_adapt(model, "batchnorm", prior=16):
        output = model(x)
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    assert source_weight(16, 4) == 0.8 and source_weight(math.inf, 4) == 1.0 and source_weight(0, 4) == 0.0


def test_bn_adapt_restores_the_layers_and_writes_nothing() -> None:
    model, images = _model(), _images()
    state = _state(model)
    before = mode_logits(model, images, mode="running_stats", batch_size=4, device=CPU)
    predict(model, images, mode="bn_adapt", batch_size=4, device=CPU, norm="batchnorm")
    _assert_same_state(model, state)
    assert all("forward" not in vars(layer) for _, layer in norm_layers(model, "batchnorm"))
    torch.testing.assert_close(mode_logits(model, images, mode="running_stats", batch_size=4, device=CPU), before,
                               rtol=0, atol=0)


@pytest.mark.parametrize("prior", [-1.0, math.nan, "16", True])
def test_bn_adapt_rejects_a_bad_prior(prior: object) -> None:
    with pytest.raises(ValueError, match="prior N must be a number in"):
        with use_bn_adapt(_model(), "batchnorm", prior=prior):
            pass


def test_bn_adapt_is_not_offered_for_a_norm_without_running_statistics() -> None:
    model = _model("groupnorm")
    reason = tta_support(model, "groupnorm")["bn_adapt"]
    assert reason is not None and "not BatchNorm layers with running statistics" in reason
    with pytest.raises(TTANotApplicable, match="groupnorm"):
        predict(model, _images(), mode="bn_adapt", batch_size=4, device=CPU, norm="groupnorm")


# ----------------------------------------------------------------------------------------------------------
# tent
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2])
def test_tent_takes_the_configured_optimizer_steps_per_batch(steps: int) -> None:
    calls = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: calls.append(opt))
    try:
        adapt_tent(_model(), _images(10), norm="batchnorm", config=TTAConfig(tent_steps=steps), batch_size=4,
                   device=CPU)
    finally:
        handle.remove()
    assert len(calls) == 3 * steps  # batches of 4, 4 and 2
    assert all(isinstance(opt, torch.optim.Adam) for opt in calls)
    assert calls[0].defaults["lr"] == 1e-3 and calls[0].defaults["betas"] == (0.9, 0.999)


@pytest.mark.parametrize("norm", list_norms())
def test_tent_changes_only_the_affine_parameters_of_the_norm(norm: str) -> None:
    model = _model(norm)
    if "tent" not in applicable_tta_modes(model, norm):
        assert tta_support(model, norm)["tent"]  # a reason, not a crash (contextnorm: no affine)
        return
    state = _state(model)
    result = adapt_tent(model, _images(10), norm=norm, config=CONFIG, batch_size=4, device=CPU)
    affine = {f"{name}.{p}" for name, _ in norm_layers(result.model, norm) for p in ("weight", "bias")}
    original = dict(model.named_parameters())
    changed = {name for name, p in result.model.named_parameters() if not torch.equal(p, original[name])}
    assert changed == affine  # every affine parameter moves, nothing else does
    _assert_same_state(model, state)


def test_tent_leaves_the_cached_model_untouched() -> None:
    model = _model()
    state = _state(model)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    predict(model, _images(), mode="tent", batch_size=4, device=CPU, norm="batchnorm")
    _assert_same_state(model, state)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert not model.training and all(not m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_tent_result_does_not_depend_on_the_order_of_conditions() -> None:
    model = _model()
    conditions = {"clean": _images(seed=1), "shifted": _images(seed=2, shift=1.5)}

    def run(order: list[str]) -> dict[str, torch.Tensor]:
        return {name: mode_logits(model, conditions[name], mode="tent", batch_size=4, device=CPU,
                                  norm="batchnorm") for name in order}

    forward, backward = run(["clean", "shifted"]), run(["shifted", "clean"])
    for name in conditions:
        assert torch.equal(forward[name], backward[name])


def test_tent_reports_the_logits_of_the_forward_before_each_update() -> None:
    """Batch 0 sees the trained weights with test-batch statistics; later batches see the updated affine."""
    model, images = _model(), _images(8)
    tent = mode_logits(model, images, mode="tent", batch_size=4, device=CPU, norm="batchnorm")
    test_batch = mode_logits(model, images, mode="test_batch_stats", batch_size=4, device=CPU)
    torch.testing.assert_close(tent[:4], test_batch[:4], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(tent[4:], test_batch[4:], rtol=0, atol=1e-6)


def test_tent_lowers_the_entropy_of_a_repeated_batch() -> None:
    batch = _images(4, seed=5)
    logits = mode_logits(_model(), batch.repeat(20, 1, 1, 1), mode="tent", batch_size=4, device=CPU,
                         norm="batchnorm", tta=TTAConfig(tent_lr=1e-2))
    first, last = softmax_entropy(logits[:4]).mean(), softmax_entropy(logits[-4:]).mean()
    assert last < first


def test_tent_raises_diverged_on_nan_logits_and_keeps_the_model() -> None:
    model = _model()
    with torch.no_grad():
        model.features[0][1].weight[0] = math.nan
    state = _state(model)
    with pytest.raises(TentDiverged, match="test batch 0"):
        predict(model, _images(), mode="tent", batch_size=4, device=CPU, norm="batchnorm")
    for name, value in model.state_dict().items():
        assert torch.equal(value.nan_to_num(), state[name].nan_to_num()), name


@pytest.mark.parametrize("norm, kwargs", [("contextnorm", {}), ("lcn", {"affine": False})])
def test_tent_is_not_offered_for_a_norm_without_affine(norm: str, kwargs: dict) -> None:
    model = _model(norm, **kwargs)
    reason = tta_support(model, norm)["tent"]
    assert reason is not None and "affine weight and bias" in reason and norm in reason
    assert "tent" not in applicable_tta_modes(model, norm)
    with pytest.raises(TTANotApplicable, match="affine"):
        predict(model, _images(), mode="tent", batch_size=4, device=CPU, norm=norm,
                contexts=torch.zeros(10, dtype=torch.long))


def test_a_model_without_the_named_norm_has_no_tta_modes() -> None:
    support = tta_support(_model("groupnorm"), "batchnorm")
    assert all("has no 'batchnorm' layers" in reason for reason in support.values())


@pytest.mark.parametrize("config, message", [
    (TTAConfig(tent_lr=0.0), "tent_lr"),
    (TTAConfig(tent_betas=(0.9, 1.0)), "tent_betas"),
    (TTAConfig(tent_weight_decay=-1.0), "tent_weight_decay"),
    (TTAConfig(tent_steps=0), "tent_steps"),
])
def test_tent_rejects_bad_hyper_parameters(config: TTAConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        adapt_tent(_model(), _images(), norm="batchnorm", config=config, batch_size=4, device=CPU)


# ----------------------------------------------------------------------------------------------------------
# modes.py integration
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["bn_adapt", "tent"])
def test_tta_modes_need_the_norm_name(mode: str) -> None:
    with pytest.raises(ValueError, match="pass norm="):
        predict(_model(), _images(), mode=mode, batch_size=4, device=CPU)


@pytest.mark.parametrize("norm, mode", [("batchnorm", "running_stats"), ("batchnorm", "test_batch_stats"),
                                        ("batchnorm", "bn_adapt"), ("batchnorm", "tent"),
                                        ("localnorm", "batch"), ("localnorm", "single")])
def test_predict_is_the_argmax_of_mode_logits(norm: str, mode: str) -> None:
    model, images = _model(norm), _images()
    logits = mode_logits(model, images, mode=mode, batch_size=4, device=CPU, norm=norm)
    assert logits.shape == (10, 3) and logits.dtype == torch.float32
    assert torch.equal(predict(model, images, mode=mode, batch_size=4, device=CPU, norm=norm),
                       logits.argmax(dim=1))


def test_voting_modes_have_no_logits() -> None:
    with pytest.raises(ValueError, match="majority vote and has no logits"):
        mode_logits(_model("localnorm"), _images(), mode="voting", batch_size=4, device=CPU)


def test_tta_hparams_record_the_configuration() -> None:
    assert tta_hparams("bn_adapt", CONFIG) == {"prior_n": 16.0}
    assert tta_hparams("tent", CONFIG) == {"optimizer": "adam", "lr": 1e-3, "betas": [0.9, 0.999],
                                           "weight_decay": 0.0, "steps_per_batch": 1, "reset": "per_condition",
                                           "logits": "before_update"}
    with pytest.raises(ValueError, match="valid: \\('bn_adapt', 'tent'\\)"):
        tta_hparams("standard", CONFIG)
