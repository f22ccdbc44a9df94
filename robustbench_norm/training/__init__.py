"""Training: hyper-parameters (``hparams``), the supervised trainer, AdaMatch and the checkpoint cache."""

from robustbench_norm.training.cache import (
    RECIPE_VERSION,
    CacheResult,
    CheckpointCache,
    CorruptCheckpointWarning,
    MismatchedCheckpointWarning,
    RejectedCheckpointWarning,
)
from robustbench_norm.training.hparams import AdaMatchConfig, TrainConfig
from robustbench_norm.training.trainer import (
    TrainingDiverged,
    predict_logits,
    resolve_device,
    seed_everything,
    train_supervised,
)

__all__ = [
    "RECIPE_VERSION",
    "AdaMatchConfig",
    "CacheResult",
    "CheckpointCache",
    "CorruptCheckpointWarning",
    "MismatchedCheckpointWarning",
    "RejectedCheckpointWarning",
    "TrainConfig",
    "TrainingDiverged",
    "predict_logits",
    "resolve_device",
    "seed_everything",
    "train_supervised",
]
