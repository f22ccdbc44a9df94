"""One fused kernel for the layers whose output is an affine map of x per sample and channel.

Switchable Norm, LocalNorm and the three ILM Norms all compute

    y[n, c, h, w] = (x[n, c, h, w] - m[n, c]) * scale[n, c] + offset[n, c],

where m and v are the mean and biased variance of x[n, c] over (H, W) ("instance statistics") and
``(scale, offset) = head(m, v, *params)`` is a small differentiable function on (N, C) tensors: every
statistic these layers mix (layer, group, sub-batch or batch moments) follows exactly from m and v by the
law of total variance, since every (n, c) has the same H * W values. :func:`instance_affine` evaluates this
with a constant number of whole-tensor ops, whatever N, H and W:

* forward: one instance standardisation x_hat = (x - m) / s (PyTorch's fused GroupNorm kernel with C
  groups, which also yields m and 1 / s; s = sqrt(v + tiny) with ``tiny`` the dtype's smallest normal
  number, so a constant instance gives x_hat = 0), then ``y = x_hat * (s * scale) + offset`` in place;
* backward (written out): with dL/dscale = s * sum_hw dy * x_hat and dL/doffset = sum_hw dy, autograd
  through ``head`` gives dL/dm and dL/dv, and

      dL/dx = dy * scale + (dL/dm - scale * sum_hw dy) / (H W) + dL/dv * 2 (x - m) / (H W),

  i.e. ``dy * scale + x * P + Q`` with P, Q per (n, c). GroupNorm's fused backward kernel (weight
  scale / rstd per instance) yields both sums and ``dy * scale + x * P' + Q'`` in one pass; one more pass
  adds ``x * (P - P') + (Q - Q')``.

On the CPU (contiguous float32 / float64) the whole-tensor steps are C row kernels instead
(:mod:`robustbench_norm.norms.native`): forward, the instance moments and ``y = (x - m) * scale + offset``;
backward, the sums ``sum_hw dy`` and ``sum_hw dy (x - m)`` (= dL/dscale), then
``dy * scale + (x - m) * P + (Q + P m)`` (centred, so a constant instance gives exactly ``offset`` and no
cancellation). Each reads x (and dy) once, so the layer moves about the memory of one GroupNorm;
elsewhere (CUDA) the ATen path above moves about that of two.

A layer whose head also exists in C (``kernels.c``: ILM Norm, LocalNorm, Switchable Norm) runs on the CPU as
one C call each way instead (:func:`fused_instance_affine`): ``<kernel>_forward`` computes the instance
moments, the head (in double) and y; ``<kernel>_backward`` the two sums, the head's backward and dL/dx. A
training step is then a handful of ATen ops, where the head alone is tens of small ops and their autograd
graph, which at small batches cost more than the passes over x.

Time is O(NCHW); the head costs O(NC) whatever it mixes.
float16 / bfloat16 input is computed in float32 and the output cast back. The backward pass is not twice
differentiable.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from robustbench_norm.norms import native

Head = Callable[..., tuple[Tensor, Tensor]]
"""``head(mean, var, *params) -> (scale, offset)``, all statistics and results of shape (N, C)."""

_COMPUTE_DTYPES = (torch.float32, torch.float64)


def _flat(t: Tensor) -> Tensor:
    """(N, C, H, W) -> (1, N * C, H * W): one GroupNorm "channel" per instance."""
    n, c, h, w = t.shape
    return t.view(1, n * c, h * w)


def _standardize(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(x_hat, mean, rstd) of the instances of contiguous ``x`` (N, C, H, W); mean and rstd (N, C). x_hat is
    a new tensor (not a view), so the layer's output may be modified in place (``ReLU(inplace=True)``)."""
    n, c, h, w = x.shape
    tiny = torch.finfo(x.dtype).tiny
    x_hat, mean, rstd = torch.ops.aten.native_group_norm(x, None, None, n, c, h * w, c, tiny)
    return x_hat, mean, rstd


def _variance(rstd: Tensor) -> Tensor:
    """v from rstd = 1 / sqrt(v + tiny)."""
    return (rstd.reciprocal().square() - torch.finfo(rstd.dtype).tiny).clamp_min(0.0)


def _per_map(t: Tensor) -> Tensor:
    """(N, C) -> (N, C, 1, 1)."""
    return t[:, :, None, None]


class _InstanceAffine(torch.autograd.Function):
    """y = (x - m) * scale + offset, (scale, offset) = head(m, v, *params); returns (y, m, v)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, head: Head, *params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        ctx.library = native.kernels(x)
        if ctx.library is not None:
            mean, var = _native_moments(ctx.library, x)
        else:
            x_hat, mean, rstd = _standardize(x)
            var = _variance(rstd)
        needs = (True, True, *ctx.needs_input_grad[2:])
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(need) for t, need in zip((mean, var, *params), needs)]
            scale, offset = head(*leaves)
        if ctx.library is not None:
            y = _native_affine(ctx.library, x, mean, scale.detach(), offset.detach())
            ctx.save_for_backward(x, mean)
        else:
            y = x_hat.mul_(_per_map(scale.detach() / rstd)).add_(_per_map(offset.detach()))
            ctx.save_for_backward(x, mean, rstd)
        ctx.graph = (leaves, scale, offset)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor, _mean: Tensor, _var: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.library is not None:
            return _native_backward(ctx, grad_y.contiguous())
        x, mean, rstd = ctx.saved_tensors
        leaves, scale, offset = ctx.graph
        n, c, h, w = x.shape
        grad_y = grad_y.contiguous()
        need_x = ctx.needs_input_grad[0]
        # GroupNorm's backward kernel on the instances, with weight scale / rstd: it returns
        # scale * dy + c2 * x + c3 (c2, c3 GroupNorm's own terms, corrected below), sum_hw dy * x_hat and sum_hw dy.
        weight = (scale.detach() / rstd).flatten()
        grad_x, grad_x_hat_dot, grad_sum = torch.ops.aten.native_group_norm_backward(
            _flat(grad_y), _flat(x), mean.view(1, -1), rstd.view(1, -1), weight, 1, n * c, h * w, n * c,
            [need_x, True, True],
        )
        grad_x_hat_dot, grad_sum = grad_x_hat_dot.view(n, c), grad_sum.view(n, c)
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        grads = iter(torch.autograd.grad(
            (scale, offset), wanted, (grad_x_hat_dot / rstd, grad_sum), allow_unused=True, retain_graph=True
        ))
        found = [next(grads) if leaf.requires_grad else None for leaf in leaves]
        grad_params = found[2:]
        if need_x:
            grad_mean, grad_var = (g if g is not None else torch.zeros_like(mean) for g in found[:2])
            count = h * w
            scale = scale.detach()
            p = grad_var * (2.0 / count)
            q = (grad_mean - scale * grad_sum) / count - p * mean
            kernel_c2 = -scale * rstd * grad_x_hat_dot / count
            kernel_c3 = -kernel_c2 * mean - scale * grad_sum / count
            grad_x = grad_x.view(x.shape).addcmul_(x, _per_map(p - kernel_c2)).add_(_per_map(q - kernel_c3))
        return (grad_x, None, *grad_params)


def _native_moments(library: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of each instance of contiguous ``x`` (N, C, H, W), each (N, C) (C kernel)."""
    n, c, h, w = x.shape
    mean, var = x.new_empty(n, c), x.new_empty(n, c)
    native.call(library, "row_moments", x.dtype, x, mean, var, n * c, h * w)
    return mean, var


def _native_affine(library: Any, x: Tensor, mean: Tensor, scale: Tensor, offset: Tensor) -> Tensor:
    """``(x - mean) * scale + offset`` per instance (C kernel)."""
    n, c, h, w = x.shape
    y = torch.empty_like(x)
    native.call(library, "row_affine", x.dtype, x, mean, scale.contiguous(), offset.contiguous(), y, n * c, h * w)
    return y


def _native_backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
    """The backward of :class:`_InstanceAffine` with two C row kernels: the per-instance sums of dy and
    dy * (x - m), then ``dL/dx = dy * scale + (x - m) * P + Q'`` (module docstring, with Q' = Q + P m)."""
    x, mean = ctx.saved_tensors
    leaves, scale, offset = ctx.graph
    n, c, h, w = x.shape
    count = h * w
    grad_sum, grad_centred = x.new_empty(n, c), x.new_empty(n, c)
    native.call(ctx.library, "row_grad_sums", x.dtype, grad_y, x, mean, grad_sum, grad_centred, n * c, count)
    wanted = [leaf for leaf in leaves if leaf.requires_grad]
    grads = iter(torch.autograd.grad((scale, offset), wanted, (grad_centred, grad_sum), allow_unused=True,
                                     retain_graph=True))
    found = [next(grads) if leaf.requires_grad else None for leaf in leaves]
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_mean, grad_var = (g if g is not None else torch.zeros_like(mean) for g in found[:2])
        scale = scale.detach()
        p = grad_var * (2.0 / count)
        q = (grad_mean - scale * grad_sum) / count
        grad_x = torch.empty_like(x)
        native.call(ctx.library, "row_grad", x.dtype, grad_y, x, mean, scale.contiguous(), p.contiguous(),
                    q.contiguous(), grad_x, n * c, count)
    return (grad_x, None, *found[2:])


class _FusedInstanceAffine(torch.autograd.Function):
    """y = (x - m) * scale + offset with the head in C, one call each way: ``<kernel>_forward(x, *aux, *params,
    y, stats, cache, N, C, H * W, *setup)`` and ``<kernel>_backward(dy, x, *aux, *params, stats, cache, dx,
    *grads, N, C, H * W, *setup)``; stats holds m, v, scale, offset (4, N, C), the cache what the head keeps
    for its backward (float64), grads one tensor per parameter (its shape)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, library: Any, kernel: str, setup: tuple[int | float, ...], cache_size: int,
                aux: tuple[Tensor, ...], *params: Tensor) -> Tensor:
        n, c, h, w = x.shape
        stats, cache, y = x.new_empty(4, n, c), torch.empty(cache_size, dtype=torch.float64), torch.empty_like(x)
        native.call(library, f"{kernel}_forward", x.dtype, x, *aux, *params, y, stats, cache, n, c, h * w, *setup)
        ctx.library, ctx.kernel, ctx.setup, ctx.aux = library, kernel, setup, aux
        ctx.stats, ctx.cache = stats, cache  # the layer's own buffers: no version check needed
        ctx.save_for_backward(x, *params)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, *params = ctx.saved_tensors
        n, c, h, w = x.shape
        grad_x, grads = torch.empty_like(x), [torch.empty_like(p) for p in params]
        if native.call(ctx.library, f"{ctx.kernel}_backward", x.dtype, grad_y.contiguous(), x, *ctx.aux, *params,
                       ctx.stats, ctx.cache, grad_x, *grads, n, c, h * w, *ctx.setup):
            raise MemoryError(f"{ctx.kernel}_backward could not allocate its work space")
        needs = ctx.needs_input_grad  # x, five arguments that are not tensors, then the parameters
        return (grad_x if needs[0] else None, *(None,) * 5, *(g if need else None for g, need in zip(grads, needs[6:])))


def fused_instance_affine(x: Tensor, kernel: str, setup: tuple[int | float, ...], cache_size: int,
                          aux: tuple[Tensor, ...], params: tuple[Tensor, ...]) -> Tensor | None:
    """y of a layer whose head is the C kernel pair ``kernel`` (see :class:`_FusedInstanceAffine`), or None
    where the kernels do not apply (not a non-empty float32 / float64 CPU batch of non-empty maps, kernels
    unavailable, or an ``aux`` tensor that is neither int64 nor of x's dtype): the caller then runs
    :func:`instance_affine`.

    ``params`` (cast to x's dtype; contiguous, as parameters are, or the kernels do not apply) get gradients;
    ``aux`` are read as they are (sample assignments, running estimates, which the forward may update in
    place); ``setup`` are the ints and floats after N, C and H * W; ``cache_size`` the float64 values the head
    keeps for its backward.
    """
    if not x.shape[0] or not x.shape[2] * x.shape[3] or x.dtype not in _COMPUTE_DTYPES:
        return None
    xc = x.contiguous()
    cast = params if all(p.dtype == x.dtype for p in params) else tuple(p.to(x.dtype) for p in params)
    if any(t.dtype not in (torch.int64, x.dtype) or not t.is_cpu or not t.is_contiguous() for t in aux):
        return None
    if (library := native.kernels(xc, *cast)) is None:
        return None
    return _FusedInstanceAffine.apply(xc, library, kernel, setup, cache_size, aux, *cast)


def instance_affine(x: Tensor, head: Head, *params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``y = (x - m) * scale + offset`` with ``(scale, offset) = head(m, v, *params)``; returns (y, m, v).

    ``x`` is (N, C, H, W) with H * W >= 1; m and v (returned detached, for running estimates) are the mean
    and biased variance of each x[n, c] over (H, W), shape (N, C), in the compute dtype (float32 for
    float16 / bfloat16 input). ``head`` must be a differentiable function of its arguments made of ops on
    (N, C)-sized tensors; ``params`` are the tensors (parameters) it reads, passed here so that they get
    gradients. y has the dtype of x. An empty batch (N = 0) gives an empty y, m and v without calling
    ``head``.
    """
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"instance statistics need H, W >= 1, got input of shape {tuple(x.shape)}")
    dtype = x.dtype if x.dtype in _COMPUTE_DTYPES else torch.float32
    xc = x.to(dtype).contiguous()
    params = tuple(p.to(dtype) for p in params)
    if x.shape[0] == 0:
        empty = xc.new_zeros(0, x.shape[1])
        return x.clone(), empty, empty
    if torch.is_grad_enabled() and (xc.requires_grad or any(p.requires_grad for p in params)):
        y, mean, var = _InstanceAffine.apply(xc, head, *params)
    elif (library := native.kernels(xc)) is not None:
        mean, var = _native_moments(library, xc)
        scale, offset = head(mean, var, *params)
        y = _native_affine(library, xc, mean, scale, offset)
    else:
        x_hat, mean, rstd = _standardize(xc)
        var = _variance(rstd)
        scale, offset = head(mean, var, *params)
        y = x_hat.mul_(_per_map(scale / rstd)).add_(_per_map(offset))
    return y.to(x.dtype), mean, var
