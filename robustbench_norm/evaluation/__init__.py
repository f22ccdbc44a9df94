"""Evaluation: the test-time procedures that turn a trained model into predictions."""

from robustbench_norm.evaluation.modes import (
    EVAL_MODES,
    logits_in_batches,
    majority_vote,
    predict,
)

__all__ = ["EVAL_MODES", "logits_in_batches", "majority_vote", "predict"]
