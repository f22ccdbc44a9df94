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
    """Supervised training: cross-entropy, mini-batch SGD with momentum (or Adam), cosine learning-rate decay.

    Options the paper profile needs (each off by default, so a config that does not set them trains exactly
    as before, and its cache key is unchanged: :meth:`as_dict` leaves them out while they hold their defaults):

    * ``optimizer``: ``"sgd"`` (``momentum``, ``nesterov``), ``"adam"``, ``"adamw"`` (PyTorch's decoupled
      decay, ``w -= lr * weight_decay * w``: a decay of d per step as TensorFlow Addons' AdamW applies it is
      ``weight_decay = d / lr``) or ``"rmsprop"`` (PyTorch's, with ``momentum``); ``weight_decay`` is added to
      the gradient (L2 of ``weight_decay / 2``) for every optimizer but ``"adamw"``;
    * ``schedule``: ``"cosine"``, ``"constant"``, ``"step"`` (lr times ``lr_decay`` at each epoch of
      ``milestones``) or ``"exponential"`` (lr times ``lr_decay`` every epoch);
    * ``augment``: ``"flip_crop"``: a random horizontal flip and a random crop of the image reflect-padded by
      side // 8 pixels (4 at 32x32), per sample, from a generator seeded by the training seed;
    * ``standardize``: the model's input standardisation layer is set to the training set's per-channel mean
      and standard deviation before training (see ``robustbench_norm.models.standardize``);
    * ``validation_fraction``: the last fraction of the training set (Keras' ``validation_split``) is held
      out and scored after every epoch; ``keep_best`` restores the weights of the epoch with the best
      validation accuracy at the end, ``patience`` > 0 stops after that many epochs without improvement.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    schedule: Literal["cosine", "constant", "step", "exponential"] = "cosine"
    eval_batch_size: int = 256
    nesterov: bool = False
    milestones: tuple[int, ...] = ()
    lr_decay: float = 0.1
    augment: Literal["none", "flip_crop"] = "none"
    standardize: bool = False
    validation_fraction: float = 0.0
    keep_best: bool = False
    patience: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict, without the options added after recipe version 2 while at their defaults."""
        values = asdict(self)
        return {k: v for k, v in values.items() if k not in _OPTIONAL_TRAIN_FIELDS or v != _TRAIN_DEFAULTS[k]}


_OPTIONAL_TRAIN_FIELDS = ("nesterov", "milestones", "lr_decay", "augment", "standardize", "validation_fraction",
                          "keep_best", "patience")
_TRAIN_DEFAULTS = asdict(TrainConfig())


@dataclass(frozen=True)
class AdaMatchConfig:
    """AdaMatch (Berthelot et al., ICLR 2022) with the defaults of the authors' reference implementation.

    lr decays as ``lr * cos(arccos(lr_final_fraction) * t)`` over training progress t in [0, 1]; the unlabeled
    loss weight warms up as ``1/2 - 1/2 cos(pi t / warmup_fraction)`` and stays 1 after ``warmup_fraction``;
    ``weight_decay`` is the coefficient of ``1/2 sum ||w||^2`` (identical to SGD's weight decay), applied as in
    the reference to convolution and linear weights only. ``weak_flip`` adds random horizontal flips to the
    weak augmentation: the reference flips natural images; digits must not be flipped, hence off by default.

    The Context Normalization paper's statement of its AdaMatch runs (section IV-F: "the Adam optimizer and a
    cosine decay schedule ... initialised at 0.03") is ``optimizer="adam"`` (``weight_decay`` then added to
    the gradient of the decayed weights, Adam's L2, as a Keras ``l2(weight_decay / 2)`` kernel regularizer
    does) with ``lr_decay="keras"``: ``lr * (f + (1 - f) (1 + cos(pi t)) / 2)``, f = ``lr_final_fraction``
    (Keras' ``CosineDecay(alpha=f)``, which the authors' notebook uses). Both options default to the
    reference (``"sgd"``, ``"reference"``) and stay out of :meth:`as_dict` at their defaults.
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
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr_decay: Literal["reference", "keras"] = "reference"

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict, without ``optimizer`` and ``lr_decay`` while they hold their defaults."""
        values = asdict(self)
        return {k: v for k, v in values.items()
                if k not in ("optimizer", "lr_decay") or v != _ADAMATCH_OPTION_DEFAULTS[k]}


_ADAMATCH_OPTION_DEFAULTS = {"optimizer": "sgd", "lr_decay": "reference"}


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
