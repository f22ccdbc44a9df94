"""The one place for training hyper-parameters (DomainBed's convention).

Scenario profiles (``robustbench_norm.profiles``) pick values from here or override a few fields with
``dataclasses.replace``; no other module hard-codes a learning rate, a batch size or a schedule. Every field
is part of the checkpoint-cache key, so changing one retrains.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class TrainConfig:
    """Supervised training: cross-entropy, mini-batch SGD with momentum (or Adam), cosine learning-rate decay."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: Literal["sgd", "adam"] = "sgd"
    schedule: Literal["cosine", "constant"] = "cosine"
    eval_batch_size: int = 256

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AdaMatchConfig:
    """AdaMatch (Berthelot et al., ICLR 2022) with the defaults of the authors' reference implementation.

    lr decays as ``lr * cos(arccos(lr_final_fraction) * t)`` over training progress t in [0, 1]; the unlabeled
    loss weight warms up as ``1/2 - 1/2 cos(pi t / warmup_fraction)`` and stays 1 after ``warmup_fraction``;
    ``weight_decay`` is the coefficient of ``1/2 sum ||w||^2`` (identical to SGD's weight decay), applied as in
    the reference to convolution and linear weights only. ``weak_flip`` adds random horizontal flips to the
    weak augmentation: the reference flips natural images; digits must not be flipped, hence off by default.
    """

    epochs: int = 10
    source_batch_size: int = 64
    uratio: int = 3
    lr: float = 0.03
    lr_final_fraction: float = 0.25
    momentum: float = 0.9
    weight_decay: float = 1e-3
    confidence: float = 0.9
    ema_momentum: float = 0.999
    source_distribution_momentum: float = 0.999
    target_distribution_window: int = 128
    warmup_fraction: float = 0.5
    eval_batch_size: int = 256
    weak_flip: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DIGITS_MNIST_NET = TrainConfig(epochs=8, batch_size=50, lr=0.05)
"""The LocalNorm paper's MNIST net (``localnorm_mnist``) on the embedded ``digits`` (1,437 training images).

Batch 50 rather than the paper's 100 gives twice the steps per epoch on this small set: 8 epochs (224 steps)
reach 98-99% test accuracy with BatchNorm (seeds 0-3) in about 4 s on 2 CPU cores.
"""


@dataclass(frozen=True)
class TTAConfig:
    """Test-time adaptation of the norm layers (``robustbench_norm.evaluation.tta``).

    ``bn_adapt`` (Schneider et al., NeurIPS 2020): BatchNorm normalises with ``N/(N+n)`` source (running) plus
    ``n/(N+n)`` test-batch statistics, n the test batch size and N = ``bn_adapt_prior`` (0: test-batch
    statistics, ``inf``: running statistics). ``tent`` (Wang et al., ICLR 2021, the authors' CIFAR-10-C
    configuration): Adam with ``tent_lr``, ``tent_betas`` and ``tent_weight_decay`` on the norm layers' affine
    weight and bias, ``tent_steps`` step(s) per test batch, episodic: every condition starts from the trained
    weights (the model is deep-copied per call), so no condition sees another's adaptation.
    """

    bn_adapt_prior: float = 16.0
    tent_lr: float = 1e-3
    tent_betas: tuple[float, float] = (0.9, 0.999)
    tent_weight_decay: float = 0.0
    tent_steps: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
