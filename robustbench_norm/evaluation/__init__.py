"""Evaluation: the test-time procedures that turn a trained model into predictions, and their calibration."""

from robustbench_norm.evaluation.calibration import (
    NUM_BINS,
    ReliabilityBins,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    save_reliability_diagram,
)
from robustbench_norm.evaluation.modes import (
    EVAL_MODES,
    VOTING_MODES,
    logits_in_batches,
    majority_vote,
    mode_logits,
    predict,
)
from robustbench_norm.evaluation.tta import (
    TTA_MODES,
    TentDiverged,
    TentResult,
    TTANotApplicable,
    adapt_tent,
    applicable_tta_modes,
    tta_hparams,
    tta_support,
    use_bn_adapt,
)

__all__ = [
    "EVAL_MODES",
    "NUM_BINS",
    "TTA_MODES",
    "VOTING_MODES",
    "ReliabilityBins",
    "TTANotApplicable",
    "TentDiverged",
    "TentResult",
    "adapt_tent",
    "applicable_tta_modes",
    "expected_calibration_error",
    "logits_in_batches",
    "majority_vote",
    "mode_logits",
    "negative_log_likelihood",
    "predict",
    "reliability_bins",
    "save_reliability_diagram",
    "tta_hparams",
    "tta_support",
    "use_bn_adapt",
]
