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
whose K divides the batch size never meets a batch it cannot split. No augmentation is applied: the images
go in as ``ImageSet.as_float()`` gives them (float32 in [0, 1]).
"""

from __future__ import annotations

import math
import random
import time
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustbench_norm.norms.routing import use_context
from robustbench_norm.training.hparams import TrainConfig

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


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


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with (non-Nesterov) momentum or Adam, L2 weight decay on every parameter."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; valid optimizers: ('sgd', 'adam')")


def _check_schedule(config: TrainConfig) -> None:
    if config.schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {config.schedule!r}; valid schedules: ('cosine', 'constant')")
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")


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
    has ``N // batch_size`` steps. Metrics: ``epoch`` (1-based), ``loss`` (mean over steps),
    ``train_accuracy`` (on the training batches, in train mode), ``seconds``, ``lr`` (of the last step).

    Raises ``ValueError`` if ``batch_size`` exceeds the number of examples, and :class:`TrainingDiverged`
    (before the update) when a step's loss is not finite.
    """
    num_examples = len(data.labels)
    if not 1 <= config.batch_size <= num_examples:
        raise ValueError(
            f"batch_size {config.batch_size} must lie in [1, {num_examples}] (the number of training examples)"
        )
    _check_schedule(config)
    _check_contexts(contexts, num_examples)
    model.to(device).train()
    optimizer = make_optimizer(model, config)
    seed_everything(seed)
    images, labels = data.as_float(), data.labels
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = num_examples // config.batch_size
    total_steps = config.epochs * steps_per_epoch
    history: list[dict[str, Any]] = []
    bar = tqdm(total=total_steps, disable=not progress, desc="train", unit="step", leave=False)
    step = 0
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(num_examples, generator=generator)
        loss_sum, correct = 0.0, 0
        for batch in range(steps_per_epoch):
            index = order[batch * config.batch_size : (batch + 1) * config.batch_size]
            lr = config.lr if config.schedule == "constant" else cosine_lr(config.lr, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = images[index].to(device), labels[index].to(device)
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
        history.append(
            {
                "epoch": epoch,
                "loss": loss_sum / steps_per_epoch,
                "train_accuracy": correct / (steps_per_epoch * config.batch_size),
                "seconds": time.perf_counter() - start,
                "lr": lr,
            }
        )
    bar.close()
    return history


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
