"""AdaMatch components (reference semantics, anchors.md section 4), the training loop, and its augmentations.

Expected values come from hand calculations or independent float64 / NumPy loops, never from the code under test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from torch import nn

from robustbench_norm.norms.routing import ContextConsumer
from robustbench_norm.training.adamatch import (
    DistributionAlignment,
    ModelEMA,
    cosine_lr_factor,
    keras_cosine_factor,
    pseudo_label_loss,
    random_logit_interpolation,
    relative_confidence_mask,
    source_only_forward,
    train_adamatch,
    unlabeled_weight,
    weight_decay_groups,
)
from robustbench_norm.training.augment import STRONG_OPS, strong_augment, weak_augment
from robustbench_norm.training.hparams import AdaMatchConfig
from robustbench_norm.training.trainer import TrainingDiverged


# ----------------------------------------------------------------------------------------------- logit interpolation
def test_random_logit_interpolation_is_elementwise_between_inputs_and_seeded():
    z_joint, z_source = torch.randn(64, 5), torch.randn(64, 5)
    z = random_logit_interpolation(z_joint, z_source, torch.Generator().manual_seed(3))
    assert z.shape == (64, 5)
    lam = ((z - z_joint) / (z_source - z_joint)).double()
    assert bool(((lam >= -1e-5) & (lam <= 1 + 1e-5)).all())
    assert lam.std(dim=1).mean() > 0.15 and lam.std(dim=0).mean() > 0.15  # one lambda per element
    assert abs(float(lam.mean()) - 0.5) < 0.1
    again = random_logit_interpolation(z_joint, z_source, torch.Generator().manual_seed(3))
    other = random_logit_interpolation(z_joint, z_source, torch.Generator().manual_seed(4))
    assert torch.equal(z, again) and not torch.equal(z, other)
    with pytest.raises(ValueError, match="shape"):
        random_logit_interpolation(z_joint, z_source[:3], torch.Generator())


# ----------------------------------------------------------------------------------------------- source-only pass
def _bn_net() -> nn.Module:
    net = nn.Sequential(nn.BatchNorm2d(3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
        net[0].bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        net[0].running_mean.copy_(torch.tensor([0.3, -1.0, 2.0]))
        net[0].running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))
    return net.train()


def _bn_train_float64(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    x = x.double()
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    w, b = bn.weight.double().view(1, -1, 1, 1), bn.bias.double().view(1, -1, 1, 1)
    return (x - mean) / torch.sqrt(var + bn.eps) * w + b


def test_source_only_forward_uses_batch_statistics_and_restores_buffers():
    net = _bn_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(6, 3, 4, 4) * 3 + 1
    out = source_only_forward(net, x)
    torch.testing.assert_close(out.double(), _bn_train_float64(x, net[0]), rtol=1e-5, atol=1e-5)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key  # running stats and num_batches_tracked untouched
    out.sum().backward()  # gradients reach the parameters
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0


def test_joint_pass_after_source_only_pass_updates_running_stats_once():
    net = _bn_net()
    old_mean, old_var = net[0].running_mean.double().clone(), net[0].running_var.double().clone()
    x_source, x_joint = torch.randn(4, 3, 4, 4), torch.randn(10, 3, 4, 4) * 2 - 1
    z_source = source_only_forward(net, x_source)
    z_joint = net(x_joint)
    x64 = x_joint.double()
    batch_mean = x64.mean(dim=(0, 2, 3))
    batch_var = x64.var(dim=(0, 2, 3), unbiased=True)  # PyTorch's running variance is unbiased
    torch.testing.assert_close(net[0].running_mean.double(), 0.9 * old_mean + 0.1 * batch_mean, rtol=1e-5,
                               atol=1e-6)
    torch.testing.assert_close(net[0].running_var.double(), 0.9 * old_var + 0.1 * batch_var, rtol=1e-5, atol=1e-6)
    assert int(net[0].num_batches_tracked) == 1
    (z_source.sum() + z_joint.sum()).backward()  # both passes stay differentiable together


# ----------------------------------------------------------------------------------------------- distribution alignment
def test_distribution_alignment_rows_sum_to_one_without_gradient():
    alignment = DistributionAlignment(4, momentum=0.9, window=5)
    alignment.update(torch.softmax(torch.randn(8, 4), 1), torch.softmax(torch.randn(24, 4) * 3, 1))
    probs = torch.softmax(torch.randn(24, 4, requires_grad=True), 1)
    q = alignment.align(probs)
    torch.testing.assert_close(q.sum(1), torch.ones(24))
    assert not q.requires_grad and bool((q >= 0).all())


def test_distribution_alignment_is_identity_when_source_and_target_distributions_agree():
    probs = torch.softmax(torch.randn(10, 3), 1)
    fresh = DistributionAlignment(3)  # both averages start uniform
    torch.testing.assert_close(fresh.align(probs), probs)
    same = DistributionAlignment(3, momentum=0.0, window=1)
    mean = torch.softmax(torch.randn(1, 3), 1)
    same.update(mean.expand(5, 3), mean.expand(7, 3))
    torch.testing.assert_close(same.align(probs), probs)


def test_distribution_alignment_hand_example():
    alignment = DistributionAlignment(2, momentum=0.0, window=1)
    alignment.update(torch.tensor([[0.9, 0.1], [0.7, 0.3]]), torch.tensor([[0.5, 0.5], [0.3, 0.7]]))
    # p_source = (0.8, 0.2), p_target = (0.4, 0.6)
    eps = 1e-6
    r0, r1 = (eps + 0.8) / (eps + 0.4), (eps + 0.2) / (eps + 0.6)
    row = (0.5 * r0, 0.5 * r1)
    expected = torch.tensor([[row[0] / sum(row), row[1] / sum(row)]], dtype=torch.float64)
    torch.testing.assert_close(alignment.align(torch.tensor([[0.5, 0.5]])).double(), expected)
    torch.testing.assert_close(expected, torch.tensor([[6 / 7, 1 / 7]], dtype=torch.float64), atol=1e-5, rtol=0)


def test_distribution_alignment_moving_average_windows():
    alignment = DistributionAlignment(2, momentum=0.5, window=3)
    means = [torch.tensor([[a, 1 - a]]) for a in (0.9, 0.6, 0.2, 0.1)]
    alignment.update(means[0], means[0])
    torch.testing.assert_close(alignment.p_target, (2 * torch.tensor([0.5, 0.5]) + means[0][0]) / 3)  # uniform fill
    torch.testing.assert_close(alignment.p_source, torch.tensor([0.7, 0.3]))  # 0.5 * uniform + 0.5 * 0.9
    for mean in means[1:]:
        alignment.update(mean, mean)
    torch.testing.assert_close(alignment.p_target, (means[1][0] + means[2][0] + means[3][0]) / 3)  # last 3 only
    expected_source = 0.5
    for a in (0.9, 0.6, 0.2, 0.1):
        expected_source = 0.5 * expected_source + 0.5 * a
    assert float(alignment.p_source[0]) == pytest.approx(expected_source)


# ----------------------------------------------------------------------------------------------- threshold and loss
def test_relative_confidence_mask_hand_example():
    source = torch.tensor([[0.9, 0.05, 0.05], [0.5, 0.3, 0.2]])  # mean max = 0.7 -> threshold 0.63
    pseudo = torch.tensor([[0.64, 0.3, 0.06], [0.62, 0.2, 0.18], [0.1, 0.1, 0.8], [0.34, 0.33, 0.33]])
    mask, threshold = relative_confidence_mask(source, pseudo, 0.9)
    assert float(threshold) == pytest.approx(0.63)
    assert mask.tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="confidence"):
        relative_confidence_mask(source, pseudo, 1.5)


def test_pseudo_label_loss_uses_hard_labels_and_averages_over_all_samples():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [1.0, 2.0, 0.0]])
    pseudo = torch.tensor([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.5, 0.3, 0.2]])  # argmax 1, 2, 0
    mask = torch.tensor([True, False, True])

    def ce(row, label):
        return -(row[label] - math.log(sum(math.exp(v) for v in row)))

    expected = (ce([2.0, 0.0, -1.0], 1) + ce([1.0, 2.0, 0.0], 0)) / 3
    assert float(pseudo_label_loss(z, pseudo, mask)) == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------------------------- schedules
def test_unlabeled_weight_warmup_values():
    values = [unlabeled_weight(t, 0.5) for t in (0.0, 0.25, 0.5, 1.0)]
    assert values == pytest.approx([0.0, 0.5, 1.0, 1.0])
    assert unlabeled_weight(0.125, 0.5) == pytest.approx(0.5 - 0.5 * math.cos(math.pi / 4))
    with pytest.raises(ValueError, match="progress"):
        unlabeled_weight(1.5, 0.5)


def test_cosine_lr_factor_values():
    assert cosine_lr_factor(0.0, 0.25) == pytest.approx(1.0)
    assert cosine_lr_factor(1.0, 0.25) == pytest.approx(0.25)
    assert cosine_lr_factor(0.5, 0.25) == pytest.approx(math.cos(math.acos(0.25) / 2))
    with pytest.raises(ValueError, match="final_fraction"):
        cosine_lr_factor(0.5, 2.0)


# ----------------------------------------------------------------------------------------------- EMA and weight decay
def test_keras_cosine_factor_values():
    """Keras' CosineDecay(alpha=0.25) of the CN authors' notebook: 0.25 + 0.75 (1 + cos(pi t)) / 2."""
    assert keras_cosine_factor(0.0, 0.25) == pytest.approx(1.0)
    assert keras_cosine_factor(0.5, 0.25) == pytest.approx(0.625)
    assert keras_cosine_factor(1.0, 0.25) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="final_fraction"):
        keras_cosine_factor(0.5, -0.1)


def test_model_ema_one_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3))
    ema = ModelEMA(model, momentum=0.9)
    old = {k: v.clone().double() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()(torch.randn(4, 2, 5, 5))  # changes running stats and num_batches_tracked
    ema.update(model)
    for key, new in model.state_dict().items():
        got = ema.module.state_dict()[key]
        if new.is_floating_point():
            torch.testing.assert_close(got.double(), 0.9 * old[key] + 0.1 * new.double(), rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(got, new), key
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_weight_decay_only_on_conv_and_linear_weights():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    decayed, free = weight_decay_groups(model, 1e-3)
    assert decayed["weight_decay"] == 1e-3 and free["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in free["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                              id(model[3].bias)}


# ----------------------------------------------------------------------------------------------- end to end
@dataclass
class TinySet:
    images: torch.Tensor
    labels: torch.Tensor
    name: str = "tiny"

    def as_float(self) -> torch.Tensor:
        return self.images.float() / 255


class RecordingContext(ContextConsumer):
    """Adds a learnable per-context bias and records the ids of every batch it sees."""

    def __init__(self, channels: int) -> None:
        super().__init__(num_contexts=2)
        self.bias = nn.Parameter(torch.zeros(2, channels))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = self.current_context(x.shape[0])
        self.seen.append(ids.clone())
        return x + self.bias[ids].view(x.shape[0], -1, 1, 1)


def _tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(RecordingContext(3), nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _tiny_sets() -> tuple[TinySet, TinySet]:
    g = torch.Generator().manual_seed(0)
    source_labels = torch.randint(0, 4, (64,), generator=g)
    source = (torch.rand(64, 3, 8, 8, generator=g) * 60 + source_labels.view(-1, 1, 1, 1) * 60).to(torch.uint8)
    target = torch.randint(0, 256, (192, 3, 8, 8), generator=g, dtype=torch.uint8)
    return TinySet(source, source_labels), TinySet(target, torch.randint(0, 4, (192,), generator=g))


_TINY_CONFIG = replace(AdaMatchConfig(), epochs=2, source_batch_size=32)


def test_train_adamatch_smoke_deterministic_with_contexts():
    source, target = _tiny_sets()
    runs = [train_adamatch(_tiny_net(), source, target, _TINY_CONFIG, device="cpu", seed=5, source_context=1,
                           target_context=0, progress=False) for _ in range(2)]
    first, second = runs
    assert len(first.history) == 2 and first.history == second.history
    for entry in first.history:
        assert all(math.isfinite(v) for v in entry.values())
    for a, b in zip(first.ema_model.state_dict().values(), second.ema_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    batch, target_batch = 32, 96
    steps = 2 * (64 // batch)
    assert int(first.model[2].num_batches_tracked) == steps  # one running-stat update per step (joint pass)
    seen = first.model[0].seen
    assert len(seen) == 2 * steps  # source-only pass + joint pass per step
    source_only, joint = seen[0::2], seen[1::2]
    assert all(ids.shape == (2 * batch,) and bool((ids == 1).all()) for ids in source_only)
    assert all(ids.shape == (2 * batch + 2 * target_batch,) and bool((ids[: 2 * batch] == 1).all())
               and bool((ids[2 * batch:] == 0).all()) for ids in joint)
    assert not first.model.training and not first.ema_model.training
    assert not torch.equal(first.ema_model[1].weight, first.model[1].weight)  # EMA lags the model


def test_paper_variant_uses_adam_and_the_keras_cosine(monkeypatch):
    """CN section IV-F: Adam with a cosine decay from 0.03 (Keras' curve); decay on conv/linear weights only."""
    source, target = _tiny_sets()
    built = []
    real_adam = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda groups, lr: built.append((groups, lr)) or real_adam(groups, lr=lr))
    config = replace(_TINY_CONFIG, epochs=1, optimizer="adam", lr_decay="keras")
    result = train_adamatch(_tiny_net(), source, target, config, device="cpu", seed=0, source_context=0,
                            target_context=1, progress=False)
    (groups, lr), = built
    assert lr == 0.03 and [g["weight_decay"] for g in groups] == [1e-3, 0.0]
    steps = 64 // 32
    expected = sum(0.03 * keras_cosine_factor(step / steps, 0.25) for step in range(steps)) / steps
    assert result.history[0]["lr"] == pytest.approx(expected)
    assert config.as_dict()["optimizer"] == "adam" and "optimizer" not in AdaMatchConfig().as_dict()
    with pytest.raises(ValueError, match="optimizer 'rmsprop' is unknown"):
        train_adamatch(_tiny_net(), source, target, replace(config, optimizer="rmsprop"), device="cpu", seed=0,
                       source_context=0, target_context=1, progress=False)


def test_train_adamatch_raises_on_divergence_and_bad_arguments():
    source, target = _tiny_sets()
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    with torch.no_grad():
        net[1].bias.fill_(float("nan"))
    config = replace(_TINY_CONFIG, epochs=1)
    with pytest.raises(TrainingDiverged, match="epoch 1, step 1"):
        train_adamatch(net, source, target, config, device="cpu", seed=0, progress=False)
    with pytest.raises(ValueError, match="source_context"):
        train_adamatch(net, source, target, config, device="cpu", seed=0, source_context=0, progress=False)
    with pytest.raises(ValueError, match="at least 128"):
        train_adamatch(net, source, target, replace(config, source_batch_size=128), device="cpu", seed=0,
                       progress=False)


# ----------------------------------------------------------------------------------------------- augmentations
def test_weak_augment_is_a_reflect_padded_translation():
    height = width = 6
    image = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width) / (height * width)
    images = image.expand(64, 2, height, width).contiguous()
    out = weak_augment(images, max_shift=2, generator=torch.Generator().manual_seed(0))
    padded = np.pad(image[0, 0].numpy(), 2, mode="reflect")
    crops = {(dy, dx): padded[dy:dy + height, dx:dx + width] for dy in range(5) for dx in range(5)}
    offsets = []
    for sample in out.numpy():
        matches = [key for key, crop in crops.items() if np.array_equal(sample[0], crop)]
        assert len(matches) == 1 and np.array_equal(sample[1], sample[0])
        offsets.append(matches[0])
    assert len(set(offsets)) >= 10  # content really moves, by many different offsets


def test_weak_augment_flip_only_when_asked():
    image = torch.rand(1, 1, 5, 5).expand(32, 1, 5, 5)
    unflipped = weak_augment(image, max_shift=0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(unflipped, image)
    flipped = weak_augment(image, max_shift=0, generator=torch.Generator().manual_seed(0), flip=True)
    is_flip = [torch.equal(f, image[0].flip(-1)) for f in flipped]
    is_same = [torch.equal(f, image[0]) for f in flipped]
    assert all(a or b for a, b in zip(is_flip, is_same)) and 0 < sum(is_flip) < 32


def test_augmentations_keep_shape_dtype_range_and_are_seeded():
    images = torch.rand(48, 3, 8, 8)
    for augment in (weak_augment, strong_augment):
        out = augment(images, max_shift=1, generator=torch.Generator().manual_seed(1))
        again = augment(images, max_shift=1, generator=torch.Generator().manual_seed(1))
        other = augment(images, max_shift=1, generator=torch.Generator().manual_seed(2))
        assert out.shape == images.shape and out.dtype == images.dtype
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert torch.equal(out, again) and not torch.equal(out, other)
    with pytest.raises(ValueError, match="max_shift"):
        weak_augment(images, max_shift=8, generator=torch.Generator())
    with pytest.raises(ValueError, match="float"):
        weak_augment((images * 255).to(torch.uint8), max_shift=1, generator=torch.Generator())


def test_strong_ops_hand_examples_and_cutout():
    x = torch.tensor([0.1, 0.4, 0.6, 0.9]).view(1, 1, 2, 2)
    half, pos = torch.tensor([0.5]), torch.zeros(1, 2)
    # solarize at level 0.5: threshold floor(127.9995) / 255 = 127 / 255, values >= it are inverted
    assert STRONG_OPS["solarize"](x, half, pos).flatten().tolist() == pytest.approx([0.1, 0.4, 0.4, 0.1])
    # brightness at level 0.5: factor 0.1 + 1.9 * 0.5 = 1.05
    assert STRONG_OPS["brightness"](x, half, pos).flatten().tolist() == pytest.approx([0.105, 0.42, 0.63, 0.945])
    # posterize at level 0: 1 bit, i.e. 0 below 128/255 and 128/255 above
    expected = [0.0, 0.0, 128 / 255, 128 / 255]
    assert STRONG_OPS["posterize"](x, torch.zeros(1), pos).flatten().tolist() == pytest.approx(expected)
    # the strong augmentation always ends with a grey cutout of side 1 + floor(0.499 * 8) = 4
    out = strong_augment(torch.rand(16, 3, 8, 8), max_shift=0, generator=torch.Generator().manual_seed(0))
    assert all(int((sample == 0.5).all(dim=0).sum()) >= 4 for sample in out)  # at least a clipped 2x2 corner
    for name, op in STRONG_OPS.items():
        y = op(torch.rand(5, 3, 8, 8), torch.rand(5), torch.rand(5, 2))
        assert y.shape == (5, 3, 8, 8) and bool(torch.isfinite(y).all()), name
