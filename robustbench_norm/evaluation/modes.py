"""Test-time evaluation modes: how a trained model is asked for predictions.

A norm's :class:`~robustbench_norm.norms.NormSpec` lists the modes that apply to it:

``standard`` / ``running_stats`` / ``cn``
    one eval-mode forward per batch (``cn``: each sample's own context id).
``test_batch_stats``
    BatchNorm normalises with the statistics of the test batch instead of its running statistics
    (AdaBN-style; the batch is ``batch_size`` consecutive test images).
``cn+``
    Context Normalization's posterior-weighted mixture over all contexts (paper eq. 9); needs no ids.
``batch``, ``single``, ``single_voting``, ``voting``
    LocalNorm's four procedures (Yin et al., section 3), written as what they compute rather than as the
    authors' replicate-and-tile batches (identical copies in a group give that image's own statistics):

    * ``batch``: batches of the training batch size; each of the K consecutive groups is normalised with
      its own statistics and its own (gamma_k, beta_k);
    * ``single``: every image normalised with its own statistics and group 0's affine;
    * ``single_voting``: as ``single`` once per group k = 0..K-1, majority vote over the K predictions;
    * ``voting``: statistics over sets of ``group size`` consecutive test images, once per group's
      affine, majority vote over the K predictions.
``bn_adapt``, ``tent``
    test-time adaptation of the norm layers (:mod:`robustbench_norm.evaluation.tta`): BatchNorm with a
    prior-weighted mix of running and test-batch statistics (Schneider et al. 2020), and Tent's entropy
    minimisation on the norm's affine parameters (Wang et al. 2021). They need the norm's name (``norm=``)
    and take their hyper-parameters from a :class:`~robustbench_norm.training.hparams.TTAConfig` (``tta=``).

Votes break ties towards the lowest class index, as ``argmax`` over a vote histogram does.
:func:`mode_logits` gives the logits behind the predictions of every mode except the two voting ones.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch
from torch import nn

from robustbench_norm.evaluation.tta import TTA_MODES, adapt_tent, use_bn_adapt
from robustbench_norm.norms.localnorm import LocalNorm, localnorm_evaluation
from robustbench_norm.norms.routing import set_context_inference, use_context
from robustbench_norm.norms.standard import use_test_batch_stats
from robustbench_norm.training.hparams import TTAConfig

LOCALNORM_MODES = ("batch", "single", "single_voting", "voting")
VOTING_MODES = ("single_voting", "voting")
PLAIN_MODES = ("standard", "running_stats", "cn")
EVAL_MODES = (*PLAIN_MODES, "test_batch_stats", "cn+", *LOCALNORM_MODES, *TTA_MODES)


@torch.inference_mode()
def logits_in_batches(model: nn.Module, images: torch.Tensor, *, batch_size: int, device: torch.device,
                      contexts: torch.Tensor | None = None) -> torch.Tensor:
    """Eval-mode logits for ``images`` (float, (N, C, H, W)) in consecutive batches of ``batch_size``."""
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device)
        ids = None if contexts is None else contexts[start:start + batch_size].to(device)
        with use_context(model, ids):
            outputs.append(model(batch).float().cpu())
    return torch.cat(outputs)


def predict(model: nn.Module, images: torch.Tensor, *, mode: str, batch_size: int, device: torch.device,
            contexts: torch.Tensor | None = None, norm: str | None = None,
            tta: TTAConfig | None = None) -> torch.Tensor:
    """Predicted classes (int64, (N,)) of ``images`` under the test-time ``mode``.

    ``norm`` (the model's norm name) is required by the TTA modes, ``tta`` configures them (default
    ``TTAConfig()``); both are ignored by the other modes.
    """
    _check_mode(mode)
    if mode in VOTING_MODES:
        return _localnorm_vote(model, images, mode=mode, batch_size=batch_size, device=device)
    return mode_logits(model, images, mode=mode, batch_size=batch_size, device=device, contexts=contexts,
                       norm=norm, tta=tta).argmax(dim=1)


def mode_logits(model: nn.Module, images: torch.Tensor, *, mode: str, batch_size: int, device: torch.device,
                contexts: torch.Tensor | None = None, norm: str | None = None,
                tta: TTAConfig | None = None) -> torch.Tensor:
    """Logits (float32, (N, K), CPU) of ``images`` under ``mode``, whose argmax :func:`predict` returns.

    Every mode but the voting ones (``single_voting``, ``voting``: a majority of K predictions, no logits).
    TTA modes need ``norm`` and raise :class:`~robustbench_norm.evaluation.tta.TTANotApplicable` when they do
    not apply, ``tent`` :class:`~robustbench_norm.evaluation.tta.TentDiverged` on non-finite logits.
    """
    _check_mode(mode)
    if mode in VOTING_MODES:
        with_logits = [m for m in EVAL_MODES if m not in VOTING_MODES]
        raise ValueError(f"mode {mode!r} predicts by majority vote and has no logits; modes with logits: "
                         f"{with_logits}")
    if mode in TTA_MODES:
        return _tta_logits(model, images, mode=mode, batch_size=batch_size, device=device, contexts=contexts,
                           norm=norm, tta=TTAConfig() if tta is None else tta)
    if mode in LOCALNORM_MODES:
        _localnorm_layers(model)
    with _mode_switches(model, mode):
        return logits_in_batches(model, images, batch_size=batch_size, device=device,
                                 contexts=None if mode == "cn+" else contexts)


def _check_mode(mode: str) -> None:
    if mode not in EVAL_MODES:
        raise ValueError(f"unknown evaluation mode {mode!r}; valid modes: {EVAL_MODES}")


def _tta_logits(model: nn.Module, images: torch.Tensor, *, mode: str, batch_size: int, device: torch.device,
                contexts: torch.Tensor | None, norm: str | None, tta: TTAConfig) -> torch.Tensor:
    if norm is None:
        raise ValueError(f"mode {mode!r} adapts the layers of the model's norm: pass norm=<its registered name>")
    if mode == "tent":
        return adapt_tent(model, images, norm=norm, config=tta, batch_size=batch_size, device=device,
                          contexts=contexts).logits
    with use_bn_adapt(model, norm, tta.bn_adapt_prior):
        return logits_in_batches(model, images, batch_size=batch_size, device=device, contexts=contexts)


@contextmanager
def _mode_switches(model: nn.Module, mode: str) -> Iterator[None]:
    with ExitStack() as stack:
        if mode == "test_batch_stats":
            stack.enter_context(use_test_batch_stats(model))
        if mode == "cn+":
            set_context_inference(model, "cn+")
            stack.callback(set_context_inference, model, "cn")
        if mode == "single":
            stack.enter_context(localnorm_evaluation(model, statistics_group_size=1, affine_group=0))
        yield


def _localnorm_layers(model: nn.Module) -> list[LocalNorm]:
    layers = [m for m in model.modules() if isinstance(m, LocalNorm)]
    if not layers:
        raise ValueError("LocalNorm evaluation modes need a model with LocalNorm layers")
    return layers


def _localnorm_vote(model: nn.Module, images: torch.Tensor, *, mode: str, batch_size: int,
                    device: torch.device) -> torch.Tensor:
    num_groups = _localnorm_layers(model)[0].num_groups
    group_size = 1 if mode == "single_voting" else max(batch_size // num_groups, 1)
    chunk = group_size * max(batch_size // group_size, 1)
    votes = []
    for group in range(num_groups):
        with localnorm_evaluation(model, statistics_group_size=group_size, affine_group=group):
            votes.append(logits_in_batches(model, images, batch_size=chunk, device=device).argmax(dim=1))
    return majority_vote(torch.stack(votes, dim=1))


def majority_vote(votes: torch.Tensor) -> torch.Tensor:
    """Row-wise majority of ``votes`` (N, V) int64; ties go to the lowest class index."""
    histogram = torch.zeros(votes.shape[0], int(votes.max()) + 1, dtype=torch.long)
    histogram.scatter_add_(1, votes, torch.ones_like(votes))
    return histogram.argmax(dim=1)
