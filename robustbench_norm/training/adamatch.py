"""AdaMatch: unsupervised domain adaptation by self-training with aligned, relatively thresholded pseudo-labels.

Berthelot, Roelofs, Sohn, Carlini, Kurakin, "AdaMatch: A Unified Approach to Semi-Supervised Learning and
Domain Adaptation", ICLR 2022 (arXiv 2106.04732). We follow the authors' reference implementation
(google-research/adamatch, ``domain_adaptation/adamatch.py``, JAX/objax), not the popular Keras port, whose
distribution alignment is a no-op (see ``shared/reference/anchors.md`` section 4).

One training step, with B labelled source images ``x_s`` (labels ``y``) and ``uratio * B`` unlabelled target
images ``x_t``; every image is used twice, weakly (w) and strongly (s) augmented, weak and strong interleaved
as in the reference (sample 0 weak, sample 0 strong, sample 1 weak, ...):

1. *Random logit interpolation.* ``z' = f(x_s)`` in training mode on the source batch alone (batch
   statistics of the source only; the pass leaves the model's buffers untouched), ``z = f([x_s, x_t])`` in
   training mode on the joint batch (this pass updates running statistics, once per step). Source logits
   ``z_s = z_joint_s + lambda * (z' - z_joint_s)``, ``lambda ~ U(0, 1)`` per logit element.
2. *Distribution alignment.* ``p_source`` = EMA (momentum 0.999) of the batch-mean softmax of the weak
   source logits, ``p_target`` = mean over the last 128 batches of the batch-mean softmax of the weak target
   logits; pseudo-label distribution ``q = normalise(softmax(z_tw) * (1e-6 + p_source) / (1e-6 + p_target))``
   (rows sum to 1, no gradient).
3. *Relative confidence threshold.* ``c_tau = tau * mean_i max_k softmax(z_sw)_ik`` (tau = 0.9);
   ``mask_i = [max_k q_ik >= c_tau]``.
4. *Loss.* ``L = 1/2 (CE(z_sw, y) + CE(z_ss, y)) + mu(t) * mean_i(mask_i CE(z_ts_i, argmax_k q_ik))`` with the
   warm-up ``mu(t) = 1/2 - 1/2 cos(pi t / 0.5)`` for training progress ``t <= 0.5``, then 1.
5. *Optimiser.* SGD with momentum 0.9, **without Nesterov** (objax ``Momentum`` default, which the reference
   uses; objax's update ``m = g + 0.9 m; w -= lr m`` is PyTorch's SGD with dampening 0); learning rate
   ``0.03 cos(arccos(0.25) t)``; weight decay ``1e-3 * 1/2 sum ||w||^2`` as SGD ``weight_decay`` (identical
   gradient), applied, like the reference (its loss sums the variables whose name ends in ``.w``), only to
   the weights of convolution and linear layers: biases and normalisation parameters are not decayed.
6. *Evaluation model.* An exponential moving average (momentum 0.999) of the model, updated after every
   step; like objax's ``ExponentialMovingAverageModule`` it averages every floating-point tensor of the
   model, buffers (BN running statistics) included; integer buffers (``num_batches_tracked``) are copied.

Augmentations (:mod:`robustbench_norm.training.augment`): weak = random translation by up to ``size // 8``
pixels with reflect padding (the reference's ``size >> 3``: 4 px at 32x32), plus horizontal flips only if
``config.weak_flip`` (the reference flips; digits must not be flipped); strong = weak + two random operations
+ cutout.

Deviations from the reference (each documented where it lives):
- the strong augmentation is RandAugment-style, not CTAugment (:mod:`robustbench_norm.training.augment`);
- the EMA model starts as a copy of the model, not at zero (objax's EMA starts at zero without bias
  correction; after the reference's 131k steps the difference is a factor 0.999**131072 ~ 1e-57, but in a
  short run a zero start would shrink every weight);
- an epoch is one pass over the source set in batches of B (the last incomplete batch is dropped), the
  target is cycled through in seeded random permutations; the reference streams both for 8 Mi images;
- images are augmented on the training device instead of in a CPU input pipeline.

With Context Normalization (paper section IV-F) the context is the domain: the source samples carry
``source_context`` and the target samples ``target_context`` in both forward passes.

Variant stated by the Context Normalization paper (section IV-F: "the Adam optimizer and a cosine decay
schedule to reduce the initial learning rate, which is initialised at 0.03"): ``config.optimizer="adam"``
replaces step 5's SGD by Adam (weight decay on the same weights, added to the gradient as an L2 term) and
``config.lr_decay="keras"`` replaces the reference's ``cos(arccos(0.25) t)`` by Keras' ``CosineDecay`` with
``alpha = lr_final_fraction`` (:func:`keras_cosine_factor`), as in the authors' notebook. Everything else is
the reference algorithm above.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from robustbench_norm.norms.routing import use_context
from robustbench_norm.training.augment import strong_augment, weak_augment
from robustbench_norm.training.hparams import AdaMatchConfig
from robustbench_norm.training.trainer import LabelledImages, TrainingDiverged

ALIGNMENT_EPS = 1e-6
"""The reference's additive constant in the distribution-alignment ratio."""

_DECAYED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                   nn.ConvTranspose3d)


@dataclass
class AdaMatchResult:
    """Result of :func:`train_adamatch`: the EMA model (use it for evaluation, as the reference does), the
    trained model itself, and one dict of mean training metrics per epoch. Both models are in eval mode."""

    ema_model: nn.Module
    model: nn.Module
    history: list[dict[str, float]]


def random_logit_interpolation(z_joint: Tensor, z_source_only: Tensor, generator: torch.Generator) -> Tensor:
    """``z_joint + lambda * (z_source_only - z_joint)`` with ``lambda ~ U(0, 1)`` drawn per element from
    ``generator`` (on the logits' device); both inputs (N, K), output (N, K), differentiable in both."""
    if z_joint.shape != z_source_only.shape:
        raise ValueError(f"logit shapes differ: joint {tuple(z_joint.shape)} vs source-only "
                         f"{tuple(z_source_only.shape)}; they must be equal")
    lam = torch.rand(z_joint.shape, generator=generator, device=z_joint.device, dtype=z_joint.dtype)
    return z_joint + lam * (z_source_only - z_joint)


def source_only_forward(model: nn.Module, images: Tensor) -> Tensor:
    """Forward ``images`` through ``model`` in its current mode, with throw-away copies of all its buffers.

    In training mode the normalisation layers use the statistics of ``images`` alone, and whatever the pass
    writes into buffers (running statistics, counters) goes to the copies: the model's own buffers are
    bit-identical afterwards. Gradients flow to the model's parameters as in a normal call. (The copies are
    swapped in with ``torch.func.functional_call``; restoring the buffers in place after the pass instead
    would invalidate tensors that autograd saved for the backward pass.)
    """
    scratch = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    return functional_call(model, scratch, (images,))


class DistributionAlignment:
    """AdaMatch's distribution alignment of target pseudo-labels to the source label distribution.

    ``p_source`` is an EMA (``momentum``) of batch-mean source class probabilities, ``p_target`` the mean of
    the last ``window`` batch-mean target class probabilities; both start uniform (the reference's
    ``init_value = 1 / num_classes``; the window starts filled with uniform entries, which the first
    ``window`` batches push out). :meth:`align` returns
    ``q_ik = r_ik / sum_j r_ij`` with ``r = probs * (1e-6 + p_source) / (1e-6 + p_target)`` (per class).
    State tensors: ``p_source`` (K,), ``target_history`` (window, K); cost O(N K) per batch.
    """

    def __init__(self, num_classes: int, *, momentum: float = 0.999, window: int = 128,
                 device: torch.device | str | None = None) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
        self.num_classes = num_classes
        self.momentum = momentum
        self.window = window
        self.p_source = torch.full((num_classes,), 1.0 / num_classes, device=device)
        self.target_history = torch.full((window, num_classes), 1.0 / num_classes, device=device)
        self._next_slot = 0

    @property
    def p_target(self) -> Tensor:
        """Mean of the last ``window`` target batch means (K,)."""
        return self.target_history.mean(dim=0)

    def _check(self, probs: Tensor, name: str) -> None:
        if probs.dim() != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(f"{name} must have shape (N, {self.num_classes}), got {tuple(probs.shape)}")

    @torch.no_grad()
    def update(self, probs_source_weak: Tensor, probs_target_weak: Tensor) -> None:
        """Fold one batch of weak-view class probabilities, source (N, K) and target (M, K), into the averages."""
        self._check(probs_source_weak, "probs_source_weak")
        self._check(probs_target_weak, "probs_target_weak")
        self.p_source.lerp_(probs_source_weak.mean(dim=0).to(self.p_source), 1.0 - self.momentum)
        self.target_history[self._next_slot] = probs_target_weak.mean(dim=0)
        self._next_slot = (self._next_slot + 1) % self.window

    @torch.no_grad()
    def align(self, probs_target_weak: Tensor) -> Tensor:
        """Aligned pseudo-label distribution (M, K), rows summing to 1, without gradient."""
        self._check(probs_target_weak, "probs_target_weak")
        ratio = (ALIGNMENT_EPS + self.p_source) / (ALIGNMENT_EPS + self.p_target)
        aligned = probs_target_weak * ratio.to(probs_target_weak)
        return aligned / aligned.sum(dim=1, keepdim=True)


def relative_confidence_mask(probs_source_weak: Tensor, pseudo_probs: Tensor,
                             confidence: float) -> tuple[Tensor, Tensor]:
    """AdaMatch's relative threshold: ``c_tau = confidence * mean_i max_k probs_source_weak_ik`` (scalar
    tensor) and the boolean mask ``max_k pseudo_probs_ik >= c_tau`` (M,). Inputs (N, K) and (M, K)."""
    if not 0.0 <= confidence <= 1.0:
        raise ValueError(f"confidence must lie in [0, 1], got {confidence!r}")
    threshold = confidence * probs_source_weak.detach().amax(dim=1).mean()
    return pseudo_probs.amax(dim=1) >= threshold, threshold


def pseudo_label_loss(z_target_strong: Tensor, pseudo_probs: Tensor, mask: Tensor) -> Tensor:
    """``mean_i mask_i CE(z_target_strong_i, argmax_k pseudo_probs_ik)``: hard pseudo-labels, averaged over
    all M target samples (masked ones count as zero, as the reference). Inputs (M, K), (M, K), (M,)."""
    losses = F.cross_entropy(z_target_strong, pseudo_probs.argmax(dim=1), reduction="none")
    return (losses * mask.to(losses.dtype)).mean()


def _check_progress(progress: float) -> None:
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must lie in [0, 1], got {progress!r}")


def unlabeled_weight(progress: float, warmup_fraction: float) -> float:
    """Unlabelled-loss weight: ``1/2 - 1/2 cos(pi t / warmup_fraction)`` for ``t <= warmup_fraction``, then 1
    (the reference's ``ScheduleCosPhases(1, [(0.5, 1), (1, 1)], start_value=0)``)."""
    _check_progress(progress)
    if not 0.0 < warmup_fraction <= 1.0:
        raise ValueError(f"warmup_fraction must lie in (0, 1], got {warmup_fraction!r}")
    if progress >= warmup_fraction:
        return 1.0
    return 0.5 - 0.5 * math.cos(math.pi * progress / warmup_fraction)


def keras_cosine_factor(progress: float, final_fraction: float) -> float:
    """Learning-rate factor of Keras' ``CosineDecay(alpha=final_fraction)``:
    ``final_fraction + (1 - final_fraction) (1 + cos(pi t)) / 2``: 1 at t = 0, ``final_fraction`` at t = 1."""
    _check_progress(progress)
    if not 0.0 <= final_fraction <= 1.0:
        raise ValueError(f"final_fraction must lie in [0, 1], got {final_fraction!r}")
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_lr_factor(progress: float, final_fraction: float) -> float:
    """Learning-rate factor ``cos(arccos(final_fraction) t)``: 1 at t = 0, ``final_fraction`` at t = 1
    (the reference's ``ScheduleCos``)."""
    _check_progress(progress)
    if not 0.0 <= final_fraction <= 1.0:
        raise ValueError(f"final_fraction must lie in [0, 1], got {final_fraction!r}")
    return math.cos(math.acos(final_fraction) * progress)


class ModelEMA:
    """Exponential moving average of a model: ``avg <- momentum avg + (1 - momentum) current`` for every
    parameter and floating-point buffer (objax's ``ExponentialMovingAverageModule``); integer buffers are
    copied. ``module`` is the averaged model (a deep copy of the model at construction, without gradients).
    """

    def __init__(self, model: nn.Module, momentum: float) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
        self.momentum = momentum
        self.module = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model`` (same architecture as ``module``)."""
        pairs = list(zip(self.module.parameters(), model.parameters(), strict=True))
        pairs += zip(self.module.buffers(), model.buffers(), strict=True)
        for average, current in pairs:
            if average.is_floating_point():
                average.lerp_(current, 1.0 - self.momentum)
            else:
                average.copy_(current)


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the weights of convolution and linear layers get ``weight_decay``
    (the reference's ``.w`` variables), every other trainable parameter none."""
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, _DECAYED_LAYERS)}
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]


def _interleave(weak: Tensor, strong: Tensor) -> Tensor:
    """(N, ...) twice -> (2N, ...) ordered weak_0, strong_0, weak_1, ... (the reference's layout)."""
    return torch.stack((weak, strong), dim=1).flatten(0, 1)


def _forward(model: nn.Module, images: Tensor, context_ids: Tensor | None, *, source_only: bool) -> Tensor:
    call = source_only_forward if source_only else nn.Module.__call__
    if context_ids is None:
        return call(model, images)
    with use_context(model, context_ids):
        return call(model, images)


def _to_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1] (``ImageSet.as_float``), one batch at a time to save memory."""
    return images.float().div_(255.0)


def _check_image_set(name: str, data: LabelledImages, *, min_size: int) -> None:
    images, labels = data.images, data.labels
    if images.dim() != 4 or images.dtype != torch.uint8:
        raise ValueError(f"{name}.images must be uint8 of shape (N, C, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{name}.labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if images.shape[0] < min_size:
        raise ValueError(f"{name} has {images.shape[0]} images; AdaMatch needs at least {min_size} "
                         f"(one batch)")


def _check_config(config: AdaMatchConfig) -> None:
    for field in ("epochs", "source_batch_size", "uratio"):
        value = getattr(config, field)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"AdaMatchConfig.{field} must be a positive int, got {value!r}")
    for field, valid in (("optimizer", ("sgd", "adam")), ("lr_decay", ("reference", "keras"))):
        if getattr(config, field) not in valid:
            raise ValueError(f"AdaMatchConfig.{field} {getattr(config, field)!r} is unknown; valid: {valid}")


def _make_optimizer(model: nn.Module, config: AdaMatchConfig) -> torch.optim.Optimizer:
    """SGD with momentum (reference) or Adam (the CN paper), decay on convolution and linear weights only."""
    groups = weight_decay_groups(model, config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=False)


def _check_contexts(source_context: int | None, target_context: int | None) -> None:
    given = [c is not None for c in (source_context, target_context)]
    if any(given) and not all(given):
        raise ValueError(f"give both source_context and target_context or neither, got "
                         f"source_context={source_context!r}, target_context={target_context!r}")
    for name, value in (("source_context", source_context), ("target_context", target_context)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")


def _target_indices(size: int, count: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless batches of ``count`` indices into ``size`` items: consecutive seeded random permutations."""
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while pending.numel() < count:
            pending = torch.cat([pending, torch.randperm(size, generator=generator)])
        yield pending[:count]
        pending = pending[count:]


def _fork_rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def train_adamatch(
    model: nn.Module,
    source: LabelledImages,
    target: LabelledImages,
    config: AdaMatchConfig,
    *,
    device: torch.device | str,
    seed: int,
    source_context: int | None = None,
    target_context: int | None = None,
    progress: bool = True,
) -> AdaMatchResult:
    """Train ``model`` (in place) with AdaMatch on labelled ``source`` and unlabelled ``target``.

    ``source``/``target``: ``ImageSet``-like objects with ``images`` uint8 (N, C, H, W) and ``labels`` int64
    (N,) (the target's labels never enter the loss: they are read only to log the accuracy of the
    pseudo-labels per epoch), same (C, H, W). ``config.epochs`` passes over the source set in
    batches of ``config.source_batch_size``, each with ``uratio`` times as many target images. Context ids
    (both or neither; for models with context layers) go to every forward pass: ``source_context`` for
    source samples, ``target_context`` for target samples. Everything random (sampling, augmentation, logit
    interpolation and, through a forked global RNG, dropout) follows ``seed``: on CPU a seed gives
    bit-identical results. Raises :class:`TrainingDiverged` on a non-finite loss.
    """
    _check_config(config)
    _check_contexts(source_context, target_context)
    _check_image_set("source", source, min_size=config.source_batch_size)
    _check_image_set("target", target, min_size=1)
    if source.images.shape[1:] != target.images.shape[1:]:
        raise ValueError(f"source images {tuple(source.images.shape[1:])} and target images "
                         f"{tuple(target.images.shape[1:])} must have the same (C, H, W)")
    device = torch.device(device)
    with torch.random.fork_rng(devices=_fork_rng_devices(device)):
        torch.manual_seed(seed)
        trainer = _AdaMatchTrainer(model, source, target, config, device, seed, source_context, target_context)
        history = trainer.run(progress)
    model.eval()
    trainer.ema.module.eval()
    return AdaMatchResult(ema_model=trainer.ema.module, model=model, history=history)


class _AdaMatchTrainer:
    """State of one AdaMatch run (model, EMA, optimiser, alignment, random streams) and its steps."""

    def __init__(self, model: nn.Module, source: LabelledImages, target: LabelledImages,
                 config: AdaMatchConfig, device: torch.device, seed: int, source_context: int | None,
                 target_context: int | None) -> None:
        self.model, self.config, self.device = model.to(device).train(), config, device
        self.batch = config.source_batch_size
        self.target_batch = config.source_batch_size * config.uratio
        self.steps_per_epoch = len(source.labels) // self.batch
        self.total_steps = config.epochs * self.steps_per_epoch
        self.ema = ModelEMA(model, config.ema_momentum)
        self.optimizer = _make_optimizer(model, config)
        self.lr_factor = keras_cosine_factor if config.lr_decay == "keras" else cosine_lr_factor
        self.sampler = torch.Generator().manual_seed(2 * seed)  # indices (CPU)
        self.noise = torch.Generator(device).manual_seed(2 * seed + 1)  # augmentation, interpolation
        self.augment = {"max_shift": source.images.shape[-1] // 8,  # the reference's `size >> 3`
                        "generator": self.noise, "flip": config.weak_flip}
        self.source_images, self.source_labels = source.images.to(device), source.labels.to(device)
        self.target_images = target.images.to(device)
        self.target_labels = target.labels.to(device)  # diagnostics only (pseudo-label accuracy), never the loss
        self.target_stream = _target_indices(len(target.images), self.target_batch, self.sampler)
        self.source_ids = self.joint_ids = None
        if source_context is not None and target_context is not None:
            self.source_ids = torch.full((2 * self.batch,), source_context, dtype=torch.long, device=device)
            target_ids = torch.full((2 * self.target_batch,), target_context, dtype=torch.long, device=device)
            self.joint_ids = torch.cat([self.source_ids, target_ids])
        self.alignment: DistributionAlignment | None = None

    def run(self, progress: bool) -> list[dict[str, float]]:
        """All epochs; one dict of mean metrics per epoch."""
        history = []
        with tqdm(total=self.total_steps, disable=not progress, unit="step", leave=False) as bar:
            for epoch in range(self.config.epochs):
                bar.set_description(f"AdaMatch epoch {epoch + 1}/{self.config.epochs}")
                order = torch.randperm(len(self.source_labels), generator=self.sampler)
                sums = torch.zeros(len(_METRICS), dtype=torch.float64)
                for step, source_index in enumerate(order[: self.steps_per_epoch * self.batch].view(-1, self.batch)):
                    values = self.step(epoch * self.steps_per_epoch + step, source_index.to(self.device))
                    if not math.isfinite(values[0]):
                        raise TrainingDiverged(f"AdaMatch loss is {values[0]} at epoch {epoch + 1}, step {step + 1}")
                    sums += torch.tensor(values, dtype=torch.float64)
                    bar.update()
                means = dict(zip(_METRICS, (sums / self.steps_per_epoch).tolist()))
                history.append({"epoch": epoch + 1, **means})
                bar.set_postfix(loss=f"{means['loss']:.3f}", mask=f"{means['mask_rate']:.2f}")
        return history

    def step(self, global_step: int, source_index: Tensor) -> list[float]:
        """One optimisation step on the source batch ``source_index`` and the next target batch; returns the
        values of :data:`_METRICS`. The parameters are not updated when the loss is not finite."""
        t = global_step / self.total_steps
        lr = self.config.lr * self.lr_factor(t, self.config.lr_final_fraction)
        weight = unlabeled_weight(t, self.config.warmup_fraction)
        loss, parts = self.loss(source_index, weight)
        values = torch.stack([loss.detach(), *parts]).tolist() + [weight, lr]
        if math.isfinite(values[0]):
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.ema.update(self.model)
        return values

    def loss(self, source_index: Tensor, weight: float) -> tuple[Tensor, list[Tensor]]:
        """AdaMatch's loss on one batch, and (source loss, target loss, mask rate, threshold) detached."""
        batch, target_batch = self.batch, self.target_batch
        x_s, y = _to_float(self.source_images[source_index]), self.source_labels[source_index]
        target_index = next(self.target_stream).to(self.device)
        x_t = _to_float(self.target_images[target_index])
        sx = _interleave(weak_augment(x_s, **self.augment), strong_augment(x_s, **self.augment))
        tu = _interleave(weak_augment(x_t, **self.augment), strong_augment(x_t, **self.augment))
        z_source_only = _forward(self.model, sx, self.source_ids, source_only=True)
        z_joint = _forward(self.model, torch.cat([sx, tu]), self.joint_ids, source_only=False)
        z_sx, z_tu = z_joint.split([2 * batch, 2 * target_batch])
        z_sx = random_logit_interpolation(z_sx, z_source_only, self.noise)
        z_sw, z_ss, z_tw, z_ts = z_sx[0::2], z_sx[1::2], z_tu[0::2], z_tu[1::2]
        if self.alignment is None:
            self.alignment = _make_alignment(z_sw.shape[1], self.source_labels, self.config, self.device)
        probs_sw, probs_tw = z_sw.detach().softmax(dim=1), z_tw.detach().softmax(dim=1)
        self.alignment.update(probs_sw, probs_tw)
        pseudo = self.alignment.align(probs_tw)
        mask, threshold = relative_confidence_mask(probs_sw, pseudo, self.config.confidence)
        loss_source = 0.5 * (F.cross_entropy(z_sw, y) + F.cross_entropy(z_ss, y))
        loss_target = pseudo_label_loss(z_ts, pseudo, mask)
        hits = (pseudo.argmax(dim=1) == self.target_labels[target_index]) & mask.bool()
        pseudo_accuracy = hits.sum().to(threshold.dtype) / mask.sum().clamp(min=1).to(threshold.dtype)
        parts = [loss_source.detach(), loss_target.detach(), mask.to(threshold.dtype).mean(), threshold,
                 pseudo_accuracy]
        return loss_source + weight * loss_target, parts


_METRICS = ("loss", "loss_source", "loss_target", "mask_rate", "confidence_threshold", "pseudo_label_accuracy",
            "unlabeled_weight", "lr")
"""Per-step values averaged into each epoch's history entry (the last two are schedule values).
``pseudo_label_accuracy`` is the share of the masked (used) pseudo-labels that equal the target's true label:
a diagnostic read from the target labels, which never enter the loss."""


def _make_alignment(num_classes: int, labels: Tensor, config: AdaMatchConfig,
                    device: torch.device) -> DistributionAlignment:
    """Distribution alignment for the model's ``num_classes`` outputs, after checking the source labels."""
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"source labels must lie in [0, {num_classes}) for a model with {num_classes} "
                         f"outputs, got values in [{int(labels.min())}, {int(labels.max())}]")
    return DistributionAlignment(num_classes, momentum=config.source_distribution_momentum,
                                 window=config.target_distribution_window, device=device)
