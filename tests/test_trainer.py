"""Supervised trainer: determinism, learning, divergence, contexts, drop_last, devices, prediction."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from robustbench_norm.models import build_model
from robustbench_norm.norms.routing import ContextConsumer
from robustbench_norm.training import (
    TrainConfig,
    TrainingDiverged,
    predict_logits,
    resolve_device,
    seed_everything,
    train_supervised,
)
from robustbench_norm.training import trainer as trainer_module
from robustbench_norm.training.hparams import DIGITS_MNIST_NET


@pytest.fixture(autouse=True)
def one_thread():
    """Train on one intra-op thread. On the shared 2-core machine, two OpenMP threads competing with other
    processes were measured up to 40x slower per epoch (spin-waiting); one thread stays near 1 s/epoch."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@dataclass
class Images:
    """Stand-in for ``ImageSet``: uint8 images (N, C, H, W) and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def as_float(self) -> torch.Tensor:
        return self.images.float() / 255


def separable(n: int = 48, seed: int = 0) -> Images:
    """Three classes of 1x8x8 images: class k has a bright k-th horizontal band on dim noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randint(0, 60, (n, 1, 8, 8), generator=generator)
    for k in range(3):
        images[labels == k, :, 3 * k : 3 * k + 2, :] += 180
    return Images(images.to(torch.uint8), labels)


def indexed(n: int) -> Images:
    """Images whose pixel (0, 0, 0) holds the sample's index (so a layer can tell which samples it saw)."""
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return Images(images, torch.arange(n) % 2)


class RecordingContext(ContextConsumer):
    """Test context layer: records (sample indices from pixel (0,0,0), context ids) of every call."""

    def __init__(self, num_contexts: int) -> None:
        super().__init__(num_contexts)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = self.current_context(x.shape[0])
        self.calls.append(((x[:, 0, 0, 0] * 255).round().long(), ids.clone()))
        return x


def context_model(num_contexts: int) -> nn.Module:
    return nn.Sequential(RecordingContext(num_contexts), nn.Flatten(), nn.Linear(16, 2))


def quick_model(seed: int = 0) -> nn.Module:
    seed_everything(seed)
    return build_model("quick_cnn", num_classes=3, in_channels=1, image_size=8, norm="batchnorm")


FAST = TrainConfig(epochs=2, batch_size=8, lr=0.05)


def test_same_seed_gives_identical_weights():
    data = separable()
    states = []
    for _ in range(2):
        model = quick_model(0)
        train_supervised(model, data, FAST, device=torch.device("cpu"), seed=1, progress=False)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    other = quick_model(0)
    train_supervised(other, data, FAST, device=torch.device("cpu"), seed=2, progress=False)
    assert not all(torch.equal(states[0][k], other.state_dict()[k]) for k in states[0])


def test_loss_decreases_and_the_model_learns():
    data = separable(n=60)
    model = quick_model(0)
    config = TrainConfig(epochs=6, batch_size=10, lr=0.05)
    history = train_supervised(model, data, config, device=torch.device("cpu"), seed=0, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["train_accuracy"] >= 0.9
    test = separable(n=30, seed=1)
    logits = predict_logits(model, test.as_float(), batch_size=7, device=torch.device("cpu"))
    assert (logits.argmax(1) == test.labels).float().mean() >= 0.9


def test_history_fields_and_cosine_lr():
    data = separable(n=24)
    config = TrainConfig(epochs=3, batch_size=8, lr=0.1)
    history = train_supervised(quick_model(), data, config, device=torch.device("cpu"), seed=0, progress=False)
    assert set(history[0]) == {"epoch", "loss", "train_accuracy", "seconds", "lr"}
    total = 3 * 3  # 3 steps per epoch
    for epoch, record in enumerate(history, start=1):
        last_step = epoch * 3 - 1
        assert record["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * last_step / total)))
        assert 0.0 <= record["train_accuracy"] <= 1.0 and record["seconds"] >= 0.0


def test_adam_and_constant_schedule():
    config = TrainConfig(epochs=1, batch_size=8, lr=1e-3, optimizer="adam", schedule="constant")
    history = train_supervised(quick_model(), separable(n=16), config, device=torch.device("cpu"), seed=0,
                               progress=False)
    assert history[0]["lr"] == 1e-3


@pytest.mark.parametrize(
    "field, value, match",
    [("optimizer", "lbfgs", "valid optimizers"), ("schedule", "linear", "valid schedules"),
     ("epochs", 0, "epochs must be >= 1"), ("milestones", (2,), "only read by schedule 'step'"),
     ("augment", "mixup", "valid: .*flip_crop"), ("validation_fraction", 1.0, r"validation_fraction must lie"),
     ("keep_best", True, "need a validation split"), ("patience", -1, "patience must be an int >= 0")],
)
def test_bad_config_raises(field, value, match):
    config = TrainConfig(**{**FAST.as_dict(), field: value})
    with pytest.raises(ValueError, match=match):
        train_supervised(quick_model(), separable(n=16), config, device=torch.device("cpu"), seed=0,
                         progress=False)


def test_options_at_their_defaults_leave_the_cache_key_unchanged():
    """Configs written before the paper-profile options keep their as_dict (so their recipe ids)."""
    assert set(FAST.as_dict()) == {"epochs", "batch_size", "lr", "momentum", "weight_decay", "optimizer",
                                   "schedule", "eval_batch_size"}
    assert TrainConfig(augment="flip_crop").as_dict()["augment"] == "flip_crop"


@pytest.mark.parametrize("optimizer, kind", [("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop),
                                             ("sgd", torch.optim.SGD)])
def test_paper_optimizers(optimizer, kind):
    config = TrainConfig(lr=0.01, momentum=0.9, weight_decay=0.1, optimizer=optimizer, nesterov=optimizer == "sgd")
    built = trainer_module.make_optimizer(quick_model(), config)
    assert isinstance(built, kind)
    group = built.param_groups[0]
    assert group["weight_decay"] == 0.1
    if optimizer != "adamw":
        assert group["momentum"] == 0.9
    if optimizer == "sgd":
        assert group["nesterov"]


def test_step_and_exponential_schedules():
    step = TrainConfig(lr=0.1, schedule="step", milestones=(2, 4), lr_decay=0.1)
    assert [trainer_module.scheduled_lr(step, s, 3, 18) for s in (0, 5, 6, 11, 12, 17)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    exponential = TrainConfig(lr=1e-3, schedule="exponential", lr_decay=0.9)
    assert trainer_module.scheduled_lr(exponential, 7, 3, 30) == pytest.approx(1e-3 * 0.9**2)


def test_flip_crop_augmentation_is_seeded_and_changes_training():
    def train(augment: str, seed: int = 0) -> dict[str, torch.Tensor]:
        model = quick_model(0)
        config = TrainConfig(epochs=1, batch_size=8, lr=0.05, augment=augment)
        train_supervised(model, separable(), config, device=torch.device("cpu"), seed=seed, progress=False)
        return model.state_dict()

    first, again, plain = train("flip_crop"), train("flip_crop"), train("none")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], plain[k]) for k in first)


def test_validation_split_is_the_last_fraction_and_keep_best_restores_that_epoch():
    data = separable(n=60)
    config = TrainConfig(epochs=4, batch_size=10, lr=0.05, validation_fraction=0.25, keep_best=True)
    model = quick_model(0)
    history = train_supervised(model, data, config, device=torch.device("cpu"), seed=0, progress=False)
    assert trainer_module.holdout_start(60, 0.25) == 45
    assert all(0.0 <= h["validation_accuracy"] <= 1.0 for h in history)
    best = max(range(4), key=lambda i: (history[i]["validation_accuracy"], -i))
    assert [bool(h.get("restored")) for h in history] == [i == best for i in range(4)]
    held_out = data.as_float()[45:]
    logits = predict_logits(model, held_out, batch_size=256, device=torch.device("cpu"))
    accuracy = float((logits.argmax(1) == data.labels[45:]).float().mean())
    assert accuracy == pytest.approx(history[best]["validation_accuracy"])


def test_patience_stops_early(monkeypatch):
    accuracies = iter([0.5, 0.4, 0.4, 0.9, 0.9])
    monkeypatch.setattr(trainer_module, "_accuracy", lambda *args: next(accuracies))
    config = TrainConfig(epochs=5, batch_size=8, lr=0.05, validation_fraction=0.2, patience=2)
    history = train_supervised(quick_model(), separable(), config, device=torch.device("cpu"), seed=0,
                               progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_standardize_fits_the_models_input_layer_to_the_training_images():
    seed_everything(0)
    model = build_model("quick_cnn", num_classes=3, in_channels=1, image_size=8, norm="batchnorm", standardize=True)
    data = separable(n=40)
    config = TrainConfig(epochs=1, batch_size=8, lr=0.05, standardize=True, validation_fraction=0.2)
    train_supervised(model, data, config, device=torch.device("cpu"), seed=0, progress=False)
    seen = data.as_float()[:32]
    assert model.standardize.mean.item() == pytest.approx(seen.mean().item(), abs=1e-6)
    assert model.standardize.std.item() == pytest.approx(seen.std(unbiased=False).item(), abs=1e-6)
    with pytest.raises(ValueError, match="no InputStandardization layer"):
        train_supervised(quick_model(), data, config, device=torch.device("cpu"), seed=0, progress=False)


class InfiniteLogits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)) * float("inf")


def test_non_finite_loss_raises_with_epoch_step_and_value():
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 1/6 .*loss = nan"):
        train_supervised(InfiniteLogits(), separable(), FAST, device=torch.device("cpu"), seed=0, progress=False)


class NanAtCall(nn.Module):
    """Linear model whose ``bad_call``-th forward returns NaN logits (and remembers its weights then)."""

    def __init__(self, bad_call: int) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 3)
        self.bad_call, self.calls = bad_call, 0
        self.weights_at_bad_call: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.linear(x.flatten(1))
        if self.calls == self.bad_call:
            self.weights_at_bad_call = self.linear.weight.detach().clone()
            return torch.full_like(out, float("nan"))
        return out


def test_divergence_later_names_epoch_and_step_and_skips_the_update():
    model = NanAtCall(bad_call=9)  # 6 steps per epoch: epoch 2, step 3
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 3/6 \(global step 9\): loss = nan"):
        train_supervised(model, separable(), FAST, device=torch.device("cpu"), seed=0, progress=False)
    assert torch.equal(model.linear.weight, model.weights_at_bad_call)
    assert issubclass(TrainingDiverged, RuntimeError)


def test_contexts_reach_the_context_layer_aligned_with_samples():
    data = indexed(12)
    contexts = torch.tensor([0, 1, 2, 0, 1, 2, 2, 2, 1, 1, 0, 0])
    model = context_model(num_contexts=3)
    config = TrainConfig(epochs=2, batch_size=4, lr=0.01)
    train_supervised(model, data, config, device=torch.device("cpu"), seed=0, contexts=contexts, progress=False)
    layer = model[0]
    assert len(layer.calls) == 6
    for samples, ids in layer.calls:
        assert torch.equal(ids, contexts[samples])
    layer.calls.clear()
    predict_logits(model, data.as_float(), batch_size=5, device=torch.device("cpu"), contexts=contexts)
    assert [len(s) for s, _ in layer.calls] == [5, 5, 2]
    for samples, ids in layer.calls:
        assert torch.equal(ids, contexts[samples])
    assert torch.equal(torch.cat([s for s, _ in layer.calls]), torch.arange(12))


def test_context_ids_must_align_with_the_data():
    with pytest.raises(ValueError, match=r"int64 tensor of shape \(12,\)"):
        train_supervised(context_model(3), indexed(12), FAST, device=torch.device("cpu"), seed=0,
                         contexts=torch.zeros(11, dtype=torch.long), progress=False)


def test_drop_last_gives_full_batches_only():
    data = indexed(10)
    model = context_model(num_contexts=1)
    config = TrainConfig(epochs=3, batch_size=4, lr=0.01)
    history = train_supervised(model, data, config, device=torch.device("cpu"), seed=0,
                               contexts=torch.zeros(10, dtype=torch.long), progress=False)
    calls = model[0].calls
    assert len(calls) == 3 * 2 and all(len(samples) == 4 for samples, _ in calls)
    for epoch in range(3):
        seen = torch.cat([samples for samples, _ in calls[2 * epoch : 2 * epoch + 2]])
        assert len(set(seen.tolist())) == 8  # 8 distinct samples, 2 left out this epoch
    assert len(history) == 3


def test_batch_size_larger_than_data_raises():
    with pytest.raises(ValueError, match=r"batch_size 11 must lie in \[1, 10\]"):
        train_supervised(context_model(1), indexed(10), TrainConfig(batch_size=11), device=torch.device("cpu"),
                         seed=0, progress=False)


def test_predict_logits_matches_eval_forward_and_restores_mode():
    model = quick_model()
    train_supervised(model, separable(n=16), FAST, device=torch.device("cpu"), seed=0, progress=False)
    model.train()
    x = separable(n=13, seed=3).as_float()
    logits = predict_logits(model, x, batch_size=5, device=torch.device("cpu"))
    assert model.training
    model.eval()
    with torch.no_grad():
        expected = model(x)
    assert logits.shape == (13, 3) and logits.device.type == "cpu"
    assert torch.allclose(logits, expected, atol=1e-6)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(trainer_module.torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(trainer_module.torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"'tpu'.*\('auto', 'cpu', 'cuda'\)"):
        resolve_device("tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trains_on_cuda():
    model = quick_model()
    device = torch.device("cuda")
    history = train_supervised(model, separable(), FAST, device=device, seed=0, progress=False)
    assert len(history) == 2
    assert predict_logits(model, separable().as_float(), batch_size=16, device=device).device.type == "cpu"


@pytest.mark.slow
def test_localnorm_mnist_net_learns_digits():
    """The issue's goal: the LocalNorm paper's MNIST net with BatchNorm reaches >= 95% on embedded digits."""
    data = pytest.importorskip("robustbench_norm.data")
    if not hasattr(data, "load_dataset"):
        pytest.skip("robustbench_norm.data.load_dataset is not available yet")
    bundle = data.load_dataset("digits")
    seed_everything(0)
    model = build_model("localnorm_mnist", num_classes=bundle.num_classes, in_channels=bundle.channels,
                        image_size=bundle.image_size, norm="batchnorm")
    start = time.perf_counter()
    train_supervised(model, bundle.train, DIGITS_MNIST_NET, device=torch.device("cpu"), seed=0, progress=False)
    seconds = time.perf_counter() - start
    logits = predict_logits(model, bundle.test.as_float(), batch_size=DIGITS_MNIST_NET.eval_batch_size,
                            device=torch.device("cpu"))
    accuracy = (logits.argmax(1) == bundle.test.labels).float().mean().item()
    print(f"localnorm_mnist + batchnorm on digits: test accuracy {accuracy:.4f}, training {seconds:.1f} s")
    assert accuracy >= 0.95
