"""Test-time adaptation of the norm layers: BN adaptation with a source prior, and Tent.

Both act on the layers of the norm under test, the modules of a model whose type is the class its
:class:`~robustbench_norm.norms.NormSpec` registers (``norm_layers``). What applies is decided per layer,
through the spec, never by class name:

``bn_adapt`` (Schneider et al., "Improving robustness against common corruptions by covariate shift
adaptation", NeurIPS 2020, section 2): every layer of the norm is a BatchNorm with running statistics,
and normalises a test batch of n samples with

    mu  = N/(N+n) * running_mean + n/(N+n) * mean_c(test batch),
    var = N/(N+n) * running_var  + n/(N+n) * var_c(test batch),
    y   = (x - mu) / sqrt(var + eps) * gamma_c + beta_c,

mean and variance over all axes but the channel axis (N, H, W). The prior strength N (``TTAConfig.
bn_adapt_prior``) says how many test samples the source statistics are worth: N = 0 is the
``test_batch_stats`` mode, N = inf the running statistics. The test variance is the biased one, as in
BatchNorm's own normalisation, so N = 0 is exactly test-batch BN; the authors' code estimates it through
PyTorch's running-variance update, which is unbiased (larger by m/(m-1), m = n*H*W values per channel).

``tent`` (Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR 2021): for every
test batch, in order, one forward pass gives logits z and the loss ``mean_i H(softmax(z_i))`` with
``H(p) = -sum_k p_k log p_k``; Adam takes ``tent_steps`` step(s) on the norm layers' affine weight and
bias only (every other parameter frozen). A layer whose spec says it normalises with running statistics
(neither ``batch_stats_at_test`` nor ``batch_independent``: BatchNorm, SwitchNorm, MixtureNorm) runs in
training mode, i.e. with the statistics of the test batch (Tent's ``configure_model``); every other module
stays in eval mode (LocalNorm then normalises with its eval-mode group statistics, the ``batch``
procedure). The reported logits of a batch are those of the forward pass used for its (last) update,
i.e. before that update, as Tent's ``forward_and_adapt`` returns them. Episodic per condition, as the
authors' CIFAR-10-C script resets the model for every corruption x severity (their ``episodic=True`` flag,
a reset before every batch, is not used there): each call adapts a deep copy of the model, online over
the call's batches, so the caller's model is never changed and a condition's result does not depend on
which conditions were evaluated before it. Non-finite logits or loss raise :class:`TentDiverged`.

A mode that does not apply raises :class:`TTANotApplicable` with the reason; :func:`tta_support` gives the
reason for every mode without raising, for the row's status.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from functools import partial
from typing import Any, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_norm.norms.registry import NormSpec, get_norm
from robustbench_norm.norms.routing import use_context
from robustbench_norm.training.hparams import TTAConfig

TTA_MODES = ("bn_adapt", "tent")


class TTANotApplicable(ValueError):
    """A test-time adaptation mode does not apply to the model's norm layers; the message says why."""


class TentDiverged(RuntimeError):
    """Tent produced non-finite logits or loss; the condition is to be recorded as diverged."""


class TentResult(NamedTuple):
    """Tent's logits (float32, (N, K), CPU, input order) and the adapted deep copy of the model."""

    logits: torch.Tensor
    model: nn.Module


# ----------------------------------------------------------------------------------------------------------
# Which layers, and which modes apply
# ----------------------------------------------------------------------------------------------------------
def norm_layers(model: nn.Module, norm: str) -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer of ``model`` built by the registered norm ``norm``, in module order.

    A layer is a module whose type is exactly the norm's factory class. Raises :class:`TTANotApplicable`
    when the factory is a function (its layers cannot be told apart) or the model has no such layer.
    """
    spec = get_norm(norm)
    if not isinstance(spec.factory, type):
        raise TTANotApplicable(
            f"norm '{spec.name}' is built by the function {spec.factory!r}, not a class, so its layers "
            "cannot be found in a model"
        )
    layers = [(name, module) for name, module in model.named_modules() if type(module) is spec.factory]
    if not layers:
        raise TTANotApplicable(f"the model has no '{spec.name}' layers ({spec.factory.__name__})")
    return layers


def uses_running_stats(spec: NormSpec) -> bool:
    """Whether the norm normalises with running statistics at test time (batch-dependent in training only)."""
    return not spec.batch_stats_at_test and not spec.batch_independent


def bn_adapt_layers(model: nn.Module, norm: str) -> list[nn.Module]:
    """The norm's layers if each is a BatchNorm with running statistics, else :class:`TTANotApplicable`."""
    spec = get_norm(norm)
    layers = norm_layers(model, norm)
    lacking = [name for name, layer in layers if not _has_running_batch_stats(layer)]
    if lacking:
        raise TTANotApplicable(
            f"bn_adapt mixes BatchNorm running statistics with test-batch statistics; '{spec.name}' layers "
            f"are not BatchNorm layers with running statistics (e.g. {lacking[0]!r})"
        )
    return [layer for _, layer in layers]


def tent_parameters(model: nn.Module, norm: str) -> list[nn.Parameter]:
    """Affine weight and bias of every layer of the norm (layer order), else :class:`TTANotApplicable`."""
    spec = get_norm(norm)
    layers = norm_layers(model, norm)
    lacking = [name for name, layer in layers if not _has_affine(layer)]
    if lacking:
        raise TTANotApplicable(
            f"tent updates the norm layers' affine weight and bias; {len(lacking)} of {len(layers)} "
            f"'{spec.name}' layers have none (e.g. {lacking[0]!r})"
        )
    return [p for _, layer in layers for p in (layer.weight, layer.bias)]


def tta_support(model: nn.Module, norm: str) -> dict[str, str | None]:
    """For each mode of :data:`TTA_MODES`: None if it applies to ``model``'s ``norm`` layers, else the reason."""
    checks = {"bn_adapt": bn_adapt_layers, "tent": tent_parameters}
    support: dict[str, str | None] = {}
    for mode in TTA_MODES:
        try:
            checks[mode](model, norm)
            support[mode] = None
        except TTANotApplicable as reason:
            support[mode] = str(reason)
    return support


def applicable_tta_modes(model: nn.Module, norm: str) -> list[str]:
    """The modes of :data:`TTA_MODES` that apply to ``model``'s ``norm`` layers (see :func:`tta_support`)."""
    return [mode for mode, reason in tta_support(model, norm).items() if reason is None]


def tta_hparams(mode: str, config: TTAConfig) -> dict[str, Any]:
    """The hyper-parameters of ``mode`` to record with its rows (JSON-serialisable, fixed choices included)."""
    if mode == "bn_adapt":
        return {"prior_n": config.bn_adapt_prior}
    if mode == "tent":
        return {"optimizer": "adam", "lr": config.tent_lr, "betas": list(config.tent_betas),
                "weight_decay": config.tent_weight_decay, "steps_per_batch": config.tent_steps,
                "reset": "per_condition", "logits": "before_update"}
    raise ValueError(f"unknown test-time adaptation mode {mode!r}; valid: {TTA_MODES}")


def _has_affine(layer: nn.Module) -> bool:
    return all(isinstance(getattr(layer, name, None), nn.Parameter) for name in ("weight", "bias"))


def _has_running_batch_stats(layer: nn.Module) -> bool:
    return (isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.running_mean is not None
            and layer.running_var is not None)


# ----------------------------------------------------------------------------------------------------------
# BN adaptation with a prior
# ----------------------------------------------------------------------------------------------------------
def check_prior(prior: float) -> None:
    """Raise ``ValueError`` unless the prior strength N is a number in [0, inf] (inf: running statistics)."""
    if isinstance(prior, bool) or not isinstance(prior, (int, float)) or math.isnan(prior) or prior < 0:
        raise ValueError(f"bn_adapt prior N must be a number in [0, inf], got {prior!r}")


def source_weight(prior: float, batch_size: int) -> float:
    """``N / (N + n)``: the weight of the running statistics for a test batch of n samples (1 for N = inf)."""
    return 1.0 if math.isinf(prior) else prior / (prior + batch_size)


def _bn_adapt_forward(layer: nn.modules.batchnorm._BatchNorm, prior: float, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm with the prior-weighted mix of running and test-batch statistics (module docstring)."""
    if x.dim() < 2 or x.shape[1] != layer.num_features:
        raise ValueError(f"bn_adapt expects input (N, {layer.num_features}, ...), got shape {tuple(x.shape)}")
    batch_var, batch_mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=0)
    weight = source_weight(prior, x.shape[0])
    mean = weight * layer.running_mean + (1.0 - weight) * batch_mean
    var = weight * layer.running_var + (1.0 - weight) * batch_var
    return F.batch_norm(x, mean, var, layer.weight, layer.bias, training=False, momentum=0.0, eps=layer.eps)


@contextmanager
def use_bn_adapt(model: nn.Module, norm: str, prior: float) -> Iterator[list[nn.Module]]:
    """Inside the block, every ``norm`` layer of ``model`` normalises with the bn_adapt statistics, prior N.

    The layers' forward is replaced for the block only (parameters and buffers are never written); the
    model's train/eval mode does not matter. Raises :class:`TTANotApplicable` (see :func:`bn_adapt_layers`)
    or ``ValueError`` for a bad prior. Yields the switched layers.
    """
    check_prior(prior)
    layers = bn_adapt_layers(model, norm)
    for layer in layers:
        layer.forward = partial(_bn_adapt_forward, layer, prior)
    try:
        yield layers
    finally:
        for layer in layers:
            del layer.forward


# ----------------------------------------------------------------------------------------------------------
# Tent
# ----------------------------------------------------------------------------------------------------------
def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``H(softmax(z_i)) = -sum_k p_ik log p_ik`` per row of ``logits`` (N, K): shape (N,), in nats."""
    log_p = logits.log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def check_tent_config(config: TTAConfig) -> None:
    """Raise ``ValueError`` naming the first Tent hyper-parameter of ``config`` that is out of range."""
    if not config.tent_lr > 0 or math.isinf(config.tent_lr):
        raise ValueError(f"tent_lr must be a positive finite float, got {config.tent_lr!r}")
    if len(config.tent_betas) != 2 or not all(0 <= beta < 1 for beta in config.tent_betas):
        raise ValueError(f"tent_betas must be two floats in [0, 1), got {config.tent_betas!r}")
    if not config.tent_weight_decay >= 0:
        raise ValueError(f"tent_weight_decay must be >= 0, got {config.tent_weight_decay!r}")
    if isinstance(config.tent_steps, bool) or not isinstance(config.tent_steps, int) or config.tent_steps < 1:
        raise ValueError(f"tent_steps must be an int >= 1, got {config.tent_steps!r}")


def configure_tent(model: nn.Module, norm: str) -> list[nn.Parameter]:
    """Set ``model`` up for Tent in place; returns the parameters to optimise (the norm's affine).

    Everything is frozen and in eval mode except the ``norm`` layers' weight and bias (trainable) and the
    layers of a norm that uses running statistics (training mode: test-batch statistics).
    """
    parameters = tent_parameters(model, norm)
    model.eval().requires_grad_(False)
    for parameter in parameters:
        parameter.requires_grad_(True)
    if uses_running_stats(get_norm(norm)):
        for _, layer in norm_layers(model, norm):
            layer.train()
    return parameters


def adapt_tent(model: nn.Module, images: torch.Tensor, *, norm: str, config: TTAConfig, batch_size: int,
               device: torch.device, contexts: torch.Tensor | None = None) -> TentResult:
    """Tent over ``images`` (float, (N, C, H, W)) in consecutive batches of ``batch_size``, on a deep copy.

    ``model`` is left untouched. Returns the logits of every image (module docstring: which forward) and
    the adapted copy, whose training-mode layers have also folded the test batches into their running
    buffers (never read during Tent). Raises :class:`TTANotApplicable`, :class:`TentDiverged` (naming the
    batch) or ``ValueError`` for bad arguments.
    """
    check_tent_config(config)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if len(images) == 0:
        raise ValueError("Tent got no images (N = 0); pass at least one")
    adapted = copy.deepcopy(model).to(device)
    parameters = configure_tent(adapted, norm)
    optimizer = torch.optim.Adam(parameters, lr=config.tent_lr, betas=config.tent_betas,
                                 weight_decay=config.tent_weight_decay)
    outputs = []
    with torch.inference_mode(False), torch.enable_grad():
        for index, start in enumerate(range(0, len(images), batch_size)):
            batch = images[start:start + batch_size].to(device).clone()
            ids = None if contexts is None else contexts[start:start + batch_size].to(device)
            with use_context(adapted, ids):
                logits = _tent_steps(adapted, optimizer, batch, config.tent_steps, index)
            outputs.append(logits.float().cpu())
    return TentResult(torch.cat(outputs), adapted)


def _tent_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor, steps: int,
                index: int) -> torch.Tensor:
    """``steps`` entropy-minimisation steps on one batch; the logits of the last forward (before its step)."""
    for _ in range(steps):
        logits = model(batch)
        loss = softmax_entropy(logits).mean()
        if not (torch.isfinite(logits).all() and torch.isfinite(loss)):
            raise TentDiverged(f"Tent diverged: non-finite logits or entropy at test batch {index}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return logits.detach()
