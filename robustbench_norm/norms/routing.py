"""How per-sample context ids reach the context layers of a model, without changing ``forward``.

A context layer (Context Normalization and its variants) subclasses :class:`ContextConsumer`. The caller
hands the ids of one batch to every such layer of a model for the duration of a ``with`` block::

    with use_context(model, context_ids):      # context_ids: LongTensor of shape (N,), values in [0, R)
        logits = model(images)

Outside the block the layers hold no ids, and calling them raises an error that says how to pass them,
so a forgotten context can never silently fall back to some default context. Blocks nest: the inner
block's ids apply inside it and the outer ids come back after it.

:func:`set_context_inference` chooses how the layers normalise in eval mode: ``"cn"`` uses the given
context's parameters, ``"cn+"`` the posterior-weighted mixture over all contexts (paper eq. 9).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

CONTEXT_INFERENCE_MODES: tuple[str, ...] = ("cn", "cn+")
_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class ContextConsumer(nn.Module):
    """Base class of layers that read a per-sample context id."""

    def __init__(self, num_contexts: int) -> None:
        super().__init__()
        if not isinstance(num_contexts, int) or isinstance(num_contexts, bool) or num_contexts < 1:
            raise ValueError(f"num_contexts must be a positive int, got {num_contexts!r}")
        self.num_contexts = num_contexts
        self.context_ids: torch.Tensor | None = None
        self.inference = "cn"

    def current_context(self, batch_size: int) -> torch.Tensor:
        """The ids of the current batch, checked against the batch size and the number of contexts."""
        if self.context_ids is None:
            raise RuntimeError(
                f"{type(self).__name__} needs per-sample context ids: call the model inside "
                "`with robustbench_norm.norms.use_context(model, ids):`"
            )
        return check_context_ids(self.context_ids, batch_size, self.num_contexts)


def check_context_ids(ids: object, batch_size: int, num_contexts: int) -> torch.Tensor:
    """``ids`` if it is an integer tensor of shape ``(batch_size,)`` with values in ``[0, num_contexts)``.

    Otherwise a ``ValueError`` naming the dtype, the shape or the out-of-range values.
    """
    if not isinstance(ids, torch.Tensor) or ids.dtype not in _INTEGER_DTYPES:
        found = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"context ids must be an integer tensor (torch.long), got {found}")
    if ids.shape != (batch_size,):
        raise ValueError(f"context ids have shape {tuple(ids.shape)}, expected ({batch_size},)")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_contexts):
        raise ValueError(
            f"context ids must lie in [0, {num_contexts}), got values in [{int(ids.min())}, {int(ids.max())}]"
        )
    return ids


def context_layers(model: nn.Module) -> list[ContextConsumer]:
    """Every context layer of ``model`` (empty if it has none)."""
    return [m for m in model.modules() if isinstance(m, ContextConsumer)]


@contextmanager
def use_context(model: nn.Module, context_ids: torch.Tensor | None) -> Iterator[None]:
    """Give ``context_ids`` (shape ``(N,)``, int64) to every context layer of ``model`` inside the block."""
    layers = context_layers(model)
    previous = [layer.context_ids for layer in layers]
    for layer in layers:
        layer.context_ids = context_ids
    try:
        yield
    finally:
        for layer, ids in zip(layers, previous):
            layer.context_ids = ids


def set_context_inference(model: nn.Module, mode: str) -> None:
    """Choose CN (``"cn"``) or CN+ (``"cn+"``) normalisation for the eval mode of every context layer."""
    if mode not in CONTEXT_INFERENCE_MODES:
        raise ValueError(f"unknown context inference mode {mode!r}; valid: {CONTEXT_INFERENCE_MODES}")
    for layer in context_layers(model):
        layer.inference = mode
