"""Supervised training and batched prediction.

Training minimises the cross-entropy with mini-batch SGD + momentum (or Adam) and, by default, a cosine
learning-rate decay per step, ``lr_t = lr * (1 + cos(pi * t / T)) / 2`` for step t = 0..T-1 of T. Shuffling
draws from a ``torch.Generator`` seeded by ``seed``, and training starts with :func:`seed_everything(seed)
<seed_everything>` so that any randomness inside the model is fixed too. The initial weights are the
caller's: call :func:`seed_everything` before building the model. Then, on the CPU, the same seeds give
bit-identical weights. CUDA kernels are not all deterministic, which is why the checkpoint cache keys on the
device type.

Every training batch is full (the last incomplete batch of an epoch is dropped): batch-dependent norms
(BatchNorm, LocalNorm's K groups, Mixture Norm) then always see ``batch_size`` samples, and a LocalNorm
whose K divides the batch size never meets a batch it cannot split. By default no augmentation is applied:
the images go in as ``ImageSet.as_float()`` gives them (float32 in [0, 1]).

Options of :class:`TrainConfig` (all off by default; the paper profile's recipes use them): AdamW and
RMSprop, step and exponential schedules, flip + crop augmentation (its own generator, seeded by ``seed``, so
the other random streams are those of a run without it), fitting the model's input standardisation to the
training images, and a held-out validation split (the last ``validation_fraction`` of the data, as Keras'
``validation_split``) scored after every epoch, with early stopping and best-epoch restore.
"""

from __future__ import annotations

import copy
import math
import random
import time
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustbench_norm.models.standardize import InputStandardization
from robustbench_norm.norms.routing import use_context
from robustbench_norm.training.augment import weak_augment
from robustbench_norm.training.hparams import TrainConfig

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES: tuple[str, ...] = ("cosine", "constant", "step", "exponential")
AUGMENTATIONS: tuple[str, ...] = ("none", "flip_crop")


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class LabelledImages(Protocol):
    """What training reads from a data set (an ``ImageSet``): uint8 images (N, C, H, W), int64 labels (N,)."""

    images: Tensor
    labels: Tensor

    def as_float(self) -> Tensor: ...


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"cuda"``; CUDA must be available if asked for."""
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; valid devices: {DEVICES}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global random generators (all CUDA devices included)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """Cosine decay from ``base_lr`` at step 0 towards 0 at ``total_steps``."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def scheduled_lr(config: TrainConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The learning rate of global step ``step`` (0-based) under ``config.schedule``.

    ``cosine``: :func:`cosine_lr` per step; ``constant``: ``lr``; ``step``: ``lr * lr_decay^m`` with m the
    number of ``milestones`` (epochs, 0-based epoch index e >= milestone) passed; ``exponential``:
    ``lr * lr_decay^e`` for epoch e.
    """
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "cosine":
        return cosine_lr(config.lr, step, total_steps)
    epoch = step // steps_per_epoch
    if config.schedule == "step":
        return config.lr * config.lr_decay ** sum(epoch >= milestone for milestone in config.milestones)
    return config.lr * config.lr_decay**epoch


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (Nesterov if ``config.nesterov``), Adam or RMSprop (with ``momentum``), L2 weight
    decay on every parameter; or AdamW with decoupled decay ``lr * weight_decay`` per step."""
    params, lr, decay = model.parameters(), config.lr, config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=decay, nesterov=config.nesterov)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=config.momentum, weight_decay=decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; valid optimizers: {OPTIMIZERS}")


def _check_schedule(config: TrainConfig) -> None:
    if config.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {config.schedule!r}; valid schedules: {SCHEDULES}")
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")
    if config.milestones and config.schedule != "step":
        raise ValueError(f"milestones {config.milestones!r} are only read by schedule 'step', got schedule "
                         f"{config.schedule!r}")
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in config.milestones):
        raise ValueError(f"milestones must be epochs >= 1 (ints), got {config.milestones!r}")


def _check_options(config: TrainConfig) -> None:
    if config.augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {config.augment!r}; valid: {AUGMENTATIONS}")
    if not 0.0 <= config.validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must lie in [0, 1), got {config.validation_fraction!r}")
    if isinstance(config.patience, bool) or not isinstance(config.patience, int) or config.patience < 0:
        raise ValueError(f"patience must be an int >= 0 (0: no early stopping), got {config.patience!r}")
    if (config.keep_best or config.patience) and config.validation_fraction == 0:
        raise ValueError(f"keep_best={config.keep_best} and patience={config.patience} need a validation split; "
                         f"set validation_fraction in (0, 1)")


def holdout_start(num_examples: int, fraction: float) -> int:
    """Index where the held-out validation part starts: ``int(N * (1 - fraction))`` (Keras' ``validation_split``
    takes the last fraction of the data, before any shuffling); ``N`` when ``fraction`` is 0."""
    return int(num_examples * (1.0 - fraction))


def fit_input_standardization(model: nn.Module, images: Tensor) -> None:
    """Set every :class:`InputStandardization` layer of ``model`` to the per-channel statistics of ``images``
    (float (N, C, H, W)); ``ValueError`` if the model has none."""
    layers = [m for m in model.modules() if isinstance(m, InputStandardization)]
    if not layers:
        raise ValueError("TrainConfig.standardize is set but the model has no InputStandardization layer; "
                         "build it with build_model(..., standardize=True)")
    for layer in layers:
        layer.fit(images)


def _check_contexts(contexts: Tensor | None, num_examples: int) -> None:
    if contexts is None:
        return
    if contexts.dtype != torch.int64 or contexts.shape != (num_examples,):
        raise ValueError(
            f"contexts must be an int64 tensor of shape ({num_examples},) aligned with the data, "
            f"got {contexts.dtype} {tuple(contexts.shape)}"
        )


def train_supervised(
    model: nn.Module,
    data: LabelledImages,
    config: TrainConfig,
    *,
    device: torch.device,
    seed: int,
    contexts: Tensor | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train ``model`` in place on ``data`` for ``config.epochs`` epochs; return one metrics dict per epoch.

    ``contexts`` (int64, shape (N,), aligned with ``data``) gives each sample's context id; the ids of each
    batch reach the model's context layers through :func:`robustbench_norm.norms.use_context`. Each epoch
    has ``N // batch_size`` steps (N after holding out ``config.validation_fraction``). Metrics: ``epoch``
    (1-based), ``loss`` (mean over steps), ``train_accuracy`` (on the training batches, in train mode),
    ``seconds``, ``lr`` (of the last step); with a validation split also ``validation_accuracy`` (eval mode),
    and ``restored: True`` on the epoch whose weights ``keep_best`` put back.

    Raises ``ValueError`` if ``batch_size`` exceeds the number of examples, and :class:`TrainingDiverged`
    (before the update) when a step's loss is not finite.
    """
    _check_schedule(config)
    _check_options(config)
    _check_contexts(contexts, len(data.labels))
    images, labels = data.as_float(), data.labels
    split = holdout_start(len(labels), config.validation_fraction)
    held_out = (images[split:], labels[split:], None if contexts is None else contexts[split:])
    images, labels = images[:split], labels[:split]
    contexts = None if contexts is None else contexts[:split]
    num_examples = len(labels)
    if not 1 <= config.batch_size <= num_examples:
        raise ValueError(
            f"batch_size {config.batch_size} must lie in [1, {num_examples}] (the number of training examples"
            + (f" after holding out validation_fraction={config.validation_fraction}" if split < len(data.labels)
               else "") + ")"
        )
    if config.validation_fraction and split == len(data.labels):
        raise ValueError(f"validation_fraction={config.validation_fraction} holds out no example of "
                         f"{len(data.labels)}; raise it or set it to 0")
    model.to(device).train()
    if config.standardize:
        fit_input_standardization(model, images)
    optimizer = make_optimizer(model, config)
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    augmenter = torch.Generator(device=device).manual_seed(seed) if config.augment != "none" else None
    steps_per_epoch = num_examples // config.batch_size
    total_steps = config.epochs * steps_per_epoch
    history: list[dict[str, Any]] = []
    best = _BestEpoch()
    bar = tqdm(total=total_steps, disable=not progress, desc="train", unit="step", leave=False)
    step = 0
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(num_examples, generator=generator)
        loss_sum, correct = 0.0, 0
        for batch in range(steps_per_epoch):
            index = order[batch * config.batch_size : (batch + 1) * config.batch_size]
            lr = scheduled_lr(config, step, steps_per_epoch, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = images[index].to(device), labels[index].to(device)
            if augmenter is not None:
                x = weak_augment(x, max_shift=x.shape[-1] // 8, generator=augmenter, flip=True)
            ids = None if contexts is None else contexts[index].to(device)
            with use_context(model, ids):
                logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                bar.close()
                raise TrainingDiverged(
                    f"training diverged at epoch {epoch}, step {batch + 1}/{steps_per_epoch} "
                    f"(global step {step + 1}): loss = {loss_value}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss_value
            correct += int((logits.argmax(dim=1) == y).sum())
            step += 1
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{loss_value:.3f}")
        entry = {
            "epoch": epoch,
            "loss": loss_sum / steps_per_epoch,
            "train_accuracy": correct / (steps_per_epoch * config.batch_size),
            "seconds": time.perf_counter() - start,
            "lr": lr,
        }
        if split < len(data.labels):
            entry["validation_accuracy"] = _accuracy(model, held_out, config.eval_batch_size, device)
            best.update(model, epoch, entry["validation_accuracy"])
        history.append(entry)
        if config.patience and epoch - best.epoch >= config.patience:
            break
    bar.close()
    if config.keep_best:
        model.load_state_dict(best.state)
        history[best.epoch - 1]["restored"] = True
    return history


class _BestEpoch:
    """The epoch with the highest validation accuracy so far (the first one on ties) and its weights."""

    def __init__(self) -> None:
        self.epoch, self.accuracy, self.state = 0, -math.inf, None

    def update(self, model: nn.Module, epoch: int, accuracy: float) -> None:
        if accuracy > self.accuracy:
            self.epoch, self.accuracy = epoch, accuracy
            self.state = copy.deepcopy(model.state_dict())


def _accuracy(model: nn.Module, held_out: tuple[Tensor, Tensor, Tensor | None], batch_size: int,
              device: torch.device) -> float:
    images, labels, contexts = held_out
    logits = predict_logits(model, images, batch_size=batch_size, device=device, contexts=contexts)
    return float((logits.argmax(dim=1) == labels).float().mean())


def predict_logits(
    model: nn.Module,
    images: Tensor,
    *,
    batch_size: int,
    device: torch.device,
    contexts: Tensor | None = None,
) -> Tensor:
    """Logits (N, num_classes) on the CPU for float ``images`` (N, C, H, W), in eval mode, in order.

    Batches are consecutive slices of ``batch_size`` (the last one may be smaller); ``contexts`` (int64,
    (N,)) are passed per batch as in training. The model's train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(images) == 0:
        raise ValueError("predict_logits got no images (N = 0); pass at least one")
    _check_contexts(contexts, len(images))
    was_training = model.training
    model.to(device).eval()
    outputs = []
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                x = images[start : start + batch_size].to(device)
                ids = None if contexts is None else contexts[start : start + batch_size].to(device)
                with use_context(model, ids):
                    outputs.append(model(x).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs)
