"""Local Context Normalization (Ortiz et al., CVPR 2020): group statistics over a sliding spatial window.

Method. The C channels form G = C / g groups of ``g = channels_per_group`` consecutive channels. For sample
n, group k and pixel (r, c), mean and variance come from the g x P x Q values of group k in the window
``rows(r) x cols(c)``, with ``P = min(p, H)`` and ``Q = min(q, W)`` for a requested window (p, q)::

    mu  = (1 / m) * sum_window x,              m = g * P * Q
    var = (1 / m) * sum_window (x - mu)^2      (biased)
    y   = (x - mu) / sqrt(var + eps) * gamma_c + beta_c      (per-channel affine, shape (C,))

Window rule. The window always has the full size P x Q, centred on the pixel where the map allows; an even
window has its extra row (column) *after* the pixel (below / right), PyTorch's ``padding="same"`` split:
``rows(r) = [s, s + P)`` with ``s = clamp(r - (P - 1) // 2, 0, H - P)``, and likewise for columns. Near a
border the window is shifted inward (clamped, never truncated), so every statistic counts exactly m values.
Hence ``p >= H`` makes every window span all rows, ``p >= H and q >= W`` is exactly GroupNorm with C / g
groups, with g = 1 InstanceNorm and with g = C LayerNorm (GroupNorm with one group). Statistics are per
sample: the layer is batch independent, has no buffers, and train and eval mode compute the same.

Cost. Window sums come from prefix sums (summed-area tables, as the paper proposes), one axis at a time:
the H - P + 1 distinct row windows are differences of a prefix sum over rows, the border pixels repeat the
first or last one (replicate padding), and likewise over columns. Time and memory are O(N C H W) for any
window; per pixel and group the layer keeps (mean, 1/std) for the backward pass, as much memory as the
input when g = 2. The backward pass is written out (custom autograd function, not twice differentiable):
with a_i, b_i formed per pixel from the output gradient, the input gradient needs two adjoint window sums,
each pixel collecting the values of the outputs whose windows contain it; with clamped windows that is a
difference of prefix sums whose index saturates at the border (all border outputs share the edge window),
see :func:`_adjoint_sums`. The work runs in batch chunks of about ``_CHUNK_ELEMENTS`` input values, with
scratch buffers reused across chunks and calls (:class:`_Workspace`).

Numerics. A single-pass variance from float32 window sums cancels catastrophically: the running sums grow
with the map, and with an offset of +100 the authors' float32 code gets the variance of small windows
wrong by orders of magnitude. Here each (sample, group) is first shifted by its mean; the per-pixel group
sums s1 = sum_c x_c and s2 = sum_c x_c^2 are formed in the input dtype, and their prefix sums, window sums
and differences in float64, so the window sums carry no error from the size of the map; mean and variance
are then formed in the input dtype. A 1 x 1 window takes its variance directly as sum_c (x_c - mu)^2 / g.
For float32 input with an offset of +100 the output agrees with a float64 evaluation of the same input to
about 1e-4 for every window size tested (1 x 1 up to the whole map). The backward window sums act on
gradient terms without an offset and run in the input dtype (the float32 input gradient then agrees with
the float64 one to about 1e-5 relative). float16 / bfloat16 input is computed in float32 and the output
cast back.

Differences from the authors' code (anthonymlortiz/lcn): the statistics are not detached (full gradient),
no pixel is left out (their integral image skips row 0 and column 0), odd windows are centred (theirs sit
one pixel down-right), the input is never written in place, and a window as large as the map in one
dimension stays local in the other (theirs then falls back to a GroupNorm with unbiased variance).

Shapes: input and output ``(N, C, H, W)``; ``weight`` and ``bias`` ``(C,)``.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from robustbench_norm.norms.registry import register_norm
from robustbench_norm.norms.standard import (
    check_eps,
    check_input_2d,
    check_num_features,
)

# The paper's window on ImageNet (section 4.3): p = q = 127 on 224-pixel images, as a fraction of the side.
PAPER_WINDOW_FRACTION = 127 / 224
# Input values per batch chunk (4 MB of float32): one chunk's temporaries stay in cache.
_CHUNK_ELEMENTS = 1 << 20
# dtype of the prefix sums and window sums (module docstring, "Numerics").
_SUMS_DTYPE = torch.float64
# Input dtypes computed as they are; others (float16, bfloat16) are computed in float32.
_COMPUTE_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class _Axis:
    """Window geometry along one spatial axis: map size and window length ``min(requested, size)``."""

    size: int
    window: int

    @property
    def before(self) -> int:
        """Pixels of the window before the centre pixel ((window - 1) // 2; the extra one goes after)."""
        return (self.window - 1) // 2

    @property
    def positions(self) -> int:
        """Number of distinct window positions inside the map."""
        return self.size - self.window + 1

    @property
    def full(self) -> bool:
        """The window spans the whole axis: one statistic for the axis, kept as a broadcast dimension."""
        return self.window == self.size

    @property
    def out_size(self) -> int:
        """Length of a statistic along the axis: the map size, or 1 (broadcast) for a full window."""
        return 1 if self.full else self.size


class _Workspace:
    """Scratch buffers of one forward or backward call, kept between calls (per thread and device).

    The buffers of one batch chunk (several MB) are reused by every chunk and every later call: fresh
    allocations of that size cost a page fault per 4 KB page on each call, which on the CPU took longer
    than the arithmetic. Each named buffer grows to the largest request it has seen, so a thread holds
    about ten chunk-sized buffers (some 50 MB for 4 MB chunks) per device. Callers must not keep a buffer
    beyond the call that took it.
    """

    _local = threading.local()

    def __init__(self, like: torch.Tensor) -> None:
        self.like = like
        self.buffers: dict[tuple, torch.Tensor] = self._local.__dict__.setdefault("buffers", {})

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised contiguous buffer of ``shape`` and ``dtype``."""
        numel = math.prod(shape)
        key = (name, dtype, self.like.device)
        flat = self.buffers.get(key)
        if flat is None or flat.numel() < numel:
            flat = self.like.new_empty(numel, dtype=dtype)
            self.buffers[key] = flat
        return flat[:numel].view(shape)


def _group_sum(t: torch.Tensor, out: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``out = sum_c t[:, :, c] * weight[:, :, c]`` (weight 1 if None) over the channels (dim 2) of a group.

    Adding the channel slices is faster than a reduction over a short middle dimension.
    """
    for c in range(t.shape[2]):
        term = t.select(2, c)
        if weight is None and c == 0:
            out.copy_(term)
        elif weight is None:
            out.add_(term)
        elif c == 0:
            torch.mul(term, weight.select(2, c), out=out)
        else:
            out.addcmul_(term, weight.select(2, c))
    return out


@functools.cache
def _row_block(height: int) -> int:
    """Block length (about sqrt(height)) that needs the fewest row additions in :func:`_scan_`."""
    return min(range(1, height + 1), key=lambda b: b + height // b + height % b)


def _scan_(t: torch.Tensor, dim: int) -> torch.Tensor:
    """In-place prefix sums of (B, h, w) ``t`` along ``dim``.

    On the CPU, a scan along rows (dim 1) is done by blocks of about sqrt(h) rows: prefix sums inside each
    block, then of the block ends, then the carries, with row additions vectorised over the columns.
    PyTorch's CPU ``cumsum`` walks one column at a time there, a chain of dependent additions per column,
    and is several times slower (much slower again at power-of-two widths).
    """
    if dim == t.dim() - 1 or t.device.type != "cpu":
        return t.cumsum_(dim)
    height = t.shape[1]
    block = _row_block(height)
    count = height // block
    blocks = t.narrow(1, 0, count * block).unflatten(1, (count, block))
    for i in range(1, block):
        blocks.select(2, i).add_(blocks.select(2, i - 1))
    ends = blocks.select(2, block - 1)
    for j in range(1, count):
        ends.select(1, j).add_(ends.select(1, j - 1))
    if count > 1:
        blocks.narrow(1, 1, count - 1).narrow(2, 0, block - 1).add_(ends.narrow(1, 0, count - 1).unsqueeze(2))
    for i in range(count * block, height):
        t.select(1, i).add_(t.select(1, i - 1))
    return t


def _window_sums(s: torch.Tensor, dim: int, axis: _Axis, ws: _Workspace, name: str) -> torch.Tensor:
    """Sums over the ``axis.positions`` windows that fit inside the map, along ``dim`` of (B, h, w) ``s``:
    one prefix sum (in place, so ``s`` is overwritten) and one difference."""
    if axis.window == 1:
        return s
    if axis.full:
        return s.sum(dim, keepdim=True)
    length = axis.positions
    shape = list(s.shape)
    shape[dim] = length
    out = ws.take(name, tuple(shape), s.dtype)
    prefix = _scan_(s, dim)
    out.narrow(dim, 0, 1).copy_(prefix.narrow(dim, axis.window - 1, 1))
    torch.sub(
        prefix.narrow(dim, axis.window, length - 1),
        prefix.narrow(dim, 0, length - 1),
        out=out.narrow(dim, 1, length - 1),
    )
    return out


def _replicate(valid: torch.Tensor, rows: _Axis, cols: _Axis, out: torch.Tensor) -> torch.Tensor:
    """Statistics of every pixel from those of the window positions: the clamped windows of the border
    pixels repeat the first/last position (replicate padding). Full axes stay of length 1.
    """
    r0, c0 = (0 if rows.full else rows.before), (0 if cols.full else cols.before)
    r1, c1 = r0 + valid.shape[-2], c0 + valid.shape[-1]
    out[..., r0:r1, c0:c1].copy_(valid)
    if r0:
        out[..., :r0, c0:c1].copy_(out[..., r0 : r0 + 1, c0:c1])
    if r1 < out.shape[-2]:
        out[..., r1:, c0:c1].copy_(out[..., r1 - 1 : r1, c0:c1])
    if c0:
        out[..., :c0].copy_(out[..., c0 : c0 + 1])
    if c1 < out.shape[-1]:
        out[..., c1:].copy_(out[..., c1 - 1 : c1])
    return out


def _adjoint_sums(a: torch.Tensor, dim: int, axis: _Axis, ws: _Workspace, name: str) -> torch.Tensor:
    """Adjoint of :func:`_window_sums` followed by the replicate padding of the border pixels, along ``dim``
    of (B, h, w) ``a``: each pixel k gets the sum of ``a`` over the outputs whose window contains k. A full
    axis comes out of length 1 (the same sum for every pixel).

    Let A be the prefix sums of ``a`` (made in place, so ``a`` is overwritten), P the window and L the
    number of window positions. The outputs before position 0 and after position L - 1 share those windows
    (clamping), so pixel k collects ``A[b + k]`` (b = ``axis.before``; all outputs, the last A, when
    k >= L - 1) minus ``A[b + k - P]`` (the outputs whose window ended before k; none when k < P).
    """
    if axis.window == 1:
        return a
    if axis.full:
        return a.sum(dim, keepdim=True)
    size, window, length, before = axis.size, axis.window, axis.positions, axis.before
    out = ws.take(name, tuple(a.shape), a.dtype)
    prefix = _scan_(a, dim)
    total = prefix.narrow(dim, size - 1, 1)
    head = min(window, length - 1)
    out.narrow(dim, 0, head).copy_(prefix.narrow(dim, before, head))
    if window < length - 1:
        middle = length - 1 - window
        torch.sub(
            prefix.narrow(dim, before + window, middle),
            prefix.narrow(dim, before, middle),
            out=out.narrow(dim, window, middle),
        )
    if window > length - 1:
        out.narrow(dim, length - 1, window - length + 1).copy_(total)
    start = max(window, length - 1)
    torch.sub(
        total, prefix.narrow(dim, before + start - window, size - start), out=out.narrow(dim, start, size - start)
    )
    return out


def _chunks(batch: int, per_sample: int) -> list[tuple[int, int]]:
    """(start, stop) sample ranges of about ``_CHUNK_ELEMENTS`` values each, the largest first."""
    step = max(1, _CHUNK_ELEMENTS // max(per_sample, 1))
    return [(i, min(i + step, batch)) for i in range(0, batch, step)]


def _statistics(
    xs: torch.Tensor, rows: _Axis, cols: _Axis, eps: float, ws: _Workspace, out: torch.Tensor
) -> None:
    """Window mean and 1 / sqrt(var + eps) of the shifted input ``xs`` (n, G, g, H, W) into ``out``
    (n, 2, G, H or 1, W or 1).

    The per-pixel group sums s1 = sum_c x_c and s2 = sum_c x_c^2 are formed in the input dtype; their
    prefix sums and window sums are float64, so the window sums carry no error from the size of the map.
    A 1 x 1 window needs no window sums: its variance is formed directly as sum_c (x_c - mean)^2 / g.
    """
    n, groups, per_group, height, width = xs.shape
    planes = ws.take("planes", (n, 2, groups, height, width), xs.dtype)
    _group_sum(xs, planes[:, 0])
    if rows.window * cols.window == 1:
        mean = planes[:, 0].div_(per_group)
        deviation = ws.take("deviation", xs.shape, xs.dtype)
        torch.sub(xs, mean.unsqueeze(2), out=deviation)
        _group_sum(deviation, planes[:, 1], weight=deviation).div_(per_group).add_(eps).rsqrt_()
        out.copy_(planes)
        return
    _group_sum(xs, planes[:, 1], weight=xs)
    wide = ws.take("wide", (n * 2 * groups, height, width), _SUMS_DTYPE)
    wide.copy_(planes.view(-1, height, width))
    sums = _window_sums(_window_sums(wide, 2, cols, ws, "by_cols"), 1, rows, ws, "by_rows")
    valid = ws.take("valid", (n, 2, groups, *sums.shape[-2:]), xs.dtype)
    valid.copy_(sums.view(valid.shape)).mul_(1.0 / (per_group * rows.window * cols.window))
    valid[:, 1].addcmul_(valid[:, 0], valid[:, 0], value=-1.0).clamp_min_(0.0).add_(eps).rsqrt_()
    _replicate(valid, rows, cols, out)


def _normalize(xs: torch.Tensor, stats: torch.Tensor, ws: _Workspace) -> torch.Tensor:
    """x_hat = (xs - mean) * rstd, written over ``xs`` in one pass as ``xs * rstd - mean * rstd``."""
    mean, rstd = stats[:, 0], stats[:, 1]
    offset = torch.mul(mean, rstd, out=ws.take("offset", mean.shape, mean.dtype)).neg_()
    return torch.addcmul(offset.unsqueeze(2), xs, rstd.unsqueeze(2), out=xs)


def _input_grad(
    grad_y: torch.Tensor,
    x_hat: torch.Tensor,
    product: torch.Tensor,
    weight: torch.Tensor | None,
    stats: torch.Tensor,
    rows: _Axis,
    cols: _Axis,
    ws: _Workspace,
    out: torch.Tensor,
) -> None:
    """Write dL/dx into ``out`` for one chunk (all (n, G, g, H, W), ``product = grad_y * x_hat``;
    ``weight`` (1, G, g, 1, 1)).

    With g_hat = dL/dx_hat = grad_y * weight, m = g * P * Q and, per pixel i,
    a_i = rstd_i / m * sum_group g_hat_i and b_i = rstd_i^2 / m * sum_group g_hat_i * x_hat_i, the chain rule
    through mean and variance gives dL/dx_k = g_hat_k * rstd_k - sum_{i: k in window(i)} (a_i + b_i (x_k - mu_i)).
    With x_k = mu_k + x_hat_k / rstd_k this is ``g_hat * rstd + x_hat * S + T`` with the two adjoint window
    sums A = adj(a - b * mu) and B = adj(b):  S = -B / rstd,  T = -(A + mu * B).
    """
    n, groups, per_group, height, width = grad_y.shape
    mean, rstd = stats[:, 0], stats[:, 1]
    terms = ws.take("terms", (n, 2, groups, height, width), grad_y.dtype)
    _group_sum(grad_y, terms[:, 0], weight)
    _group_sum(product, terms[:, 1], weight)
    count = per_group * rows.window * cols.window
    scale = torch.mul(rstd, 1.0 / count, out=ws.take("scale", rstd.shape, rstd.dtype))
    terms[:, 1].mul_(scale).mul_(rstd)
    terms[:, 0].mul_(scale).addcmul_(terms[:, 1], mean, value=-1.0)
    flat = terms.view(-1, height, width)
    sums = _adjoint_sums(_adjoint_sums(flat, 2, cols, ws, "by_cols"), 1, rows, ws, "by_rows")
    adjoint = sums.view(n, 2, groups, *sums.shape[-2:])
    offset = adjoint[:, 0].addcmul_(mean, adjoint[:, 1]).neg_()
    scale_x_hat = adjoint[:, 1].div_(rstd).neg_()
    if weight is None:
        torch.mul(grad_y, rstd.unsqueeze(2), out=out)
    else:
        torch.mul(grad_y, weight, out=out).mul_(rstd.unsqueeze(2))
    out.addcmul_(x_hat, scale_x_hat.unsqueeze(2)).add_(offset.unsqueeze(2))


class _LocalContextNormFunction(torch.autograd.Function):
    """y = (x - mu) * rstd * weight + bias with window statistics; explicit, chunked backward."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        groups: int,
        rows: _Axis,
        cols: _Axis,
        eps: float,
    ) -> torch.Tensor:
        batch, channels, height, width = x.shape
        shape5 = (groups, channels // groups, height, width)
        w5 = None if weight is None else weight.view(1, *shape5[:2], 1, 1)
        b5 = None if bias is None else bias.view(1, *shape5[:2], 1, 1)
        y = torch.empty_like(x)
        shifts = x.new_empty(batch, groups, 1, 1, 1)
        stats = x.new_empty(batch, 2, groups, rows.out_size, cols.out_size)
        ws = _Workspace(x)
        for start, stop in _chunks(batch, channels * height * width):
            xv = x[start:stop].view(-1, *shape5)
            shift = torch.mean(xv, dim=(2, 3, 4), keepdim=True, out=shifts[start:stop])
            xs = torch.sub(xv, shift, out=ws.take("xs", xv.shape, x.dtype))
            _statistics(xs, rows, cols, eps, ws, stats[start:stop])
            x_hat = _normalize(xs, stats[start:stop], ws)
            out = y[start:stop].view_as(xv)
            if w5 is None:
                out.copy_(x_hat)
            else:
                torch.mul(x_hat, w5, out=out).add_(b5)
        ctx.save_for_backward(x, weight, shifts, stats)
        ctx.setup = (groups, rows, cols)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, shifts, stats = ctx.saved_tensors
        groups, rows, cols = ctx.setup
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        batch, channels, height, width = x.shape
        shape5 = (groups, channels // groups, height, width)
        w5 = None if weight is None else weight.view(1, *shape5[:2], 1, 1)
        grad_y = grad_y.contiguous()
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = x.new_zeros(shape5[:2]) if need_w else None
        grad_b = x.new_zeros(shape5[:2]) if need_b else None
        ws = _Workspace(x)
        for start, stop in _chunks(batch, channels * height * width):
            xv = x[start:stop].view(-1, *shape5)
            gy = grad_y[start:stop].view_as(xv)
            xs = torch.sub(xv, shifts[start:stop], out=ws.take("xs", xv.shape, x.dtype))
            x_hat = _normalize(xs, stats[start:stop], ws)
            product = torch.mul(gy, x_hat, out=ws.take("product", xv.shape, x.dtype))
            if need_w:
                grad_w += product.sum(dim=(0, 3, 4))
            if need_b:
                grad_b += gy.sum(dim=(0, 3, 4))
            if need_x:
                out = grad_x[start:stop].view_as(xv)
                _input_grad(gy, x_hat, product, w5, stats[start:stop], rows, cols, ws, out)
        grad_w = None if grad_w is None else grad_w.view(-1)
        grad_b = None if grad_b is None else grad_b.view(-1)
        return grad_x, grad_w, grad_b, None, None, None, None


def _window_arg(window_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(p, q) from an int or a pair of positive ints; anything else raises ValueError."""
    pair = (window_size, window_size) if isinstance(window_size, int) else window_size
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair)
    ):
        raise ValueError(
            f"window_size={window_size!r} is invalid; valid: a positive int or a pair (p, q) of positive ints"
        )
    return int(pair[0]), int(pair[1])


def _fraction_arg(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"window_fraction={fraction!r} is invalid; valid: a number in (0, 1]")
    return float(fraction)


def odd_window(fraction: float, side: int) -> int:
    """The odd integer nearest to ``fraction * side`` (ties go to the smaller), at least 1."""
    return max(1, 2 * math.ceil((fraction * side - 1) / 2 - 0.5) + 1)


@register_norm(
    "lcn",
    batch_independent=True,
    paper="Ortiz et al., Local Context Normalization, CVPR 2020",
)
class LocalContextNorm(nn.Module):
    """Local Context Normalization (Ortiz et al., CVPR 2020): group statistics over a clamped p x q window.

    ``y = (x - mu) / sqrt(var + eps) * gamma_c + beta_c``; mu and the biased var of pixel (r, c) are taken
    over the ``channels_per_group`` consecutive channels of its group and the full-size
    ``min(p, H) x min(q, W)`` window centred on (r, c) (an even window reaches one pixel further
    down / right), shifted inward at the borders so that it never leaves the map. ``p >= H`` and ``q >= W``
    is GroupNorm with ``C / channels_per_group`` groups. Batch independent; train and eval are identical.
    The module docstring gives the border rule, cost and numerics in full.

    Args:
        num_features: channels C.
        channels_per_group: g, consecutive channels sharing statistics; must divide C (g = 1: local
            InstanceNorm, g = C: local LayerNorm).
        window_size: p or (p, q) = (rows, cols), positive ints (a list from JSON works): a fixed window for
            every map. None (the default) scales the window to each map with ``window_fraction``. (The
            authors' code defaults to 227, which is GroupNorm on every map up to 227 x 227.)
        window_fraction: used when ``window_size`` is None: the window side is the odd integer nearest to
            ``window_fraction * H`` (rows) and ``window_fraction * W`` (cols), at least 1. The default
            127 / 224 is the paper's only classification setting (section 4.3: p = q = 127 on 224-pixel
            ImageNet images) scaled to each feature map, so the window is local on every map larger than 1.
        eps: added to the variance inside the square root.
        affine: learn per-channel ``weight`` (ones) and ``bias`` (zeros) of shape (C,).

    Shapes: input and output ``(N, C, H, W)``. Cost: O(NCHW) time and memory for every window size
    (prefix sums); the backward pass is written out and is not twice differentiable.
    """

    def __init__(
        self,
        num_features: int,
        *,
        channels_per_group: int = 2,
        window_size: int | tuple[int, int] | None = None,
        window_fraction: float = PAPER_WINDOW_FRACTION,
        eps: float = 1e-5,
        affine: bool = True,
    ) -> None:
        super().__init__()
        check_num_features(num_features)
        check_eps(eps)
        if (
            isinstance(channels_per_group, bool)
            or not isinstance(channels_per_group, int)
            or channels_per_group < 1
            or num_features % channels_per_group
        ):
            divisors = [d for d in range(1, num_features + 1) if num_features % d == 0]
            raise ValueError(
                f"channels_per_group={channels_per_group!r} must divide num_features={num_features}; "
                f"valid: {divisors}"
            )
        if type(affine) is not bool:
            raise ValueError(f"affine={affine!r} is invalid; valid: True or False")
        self.num_features = num_features
        self.channels_per_group = channels_per_group
        self.window_size = None if window_size is None else _window_arg(window_size)
        self.window_fraction = _fraction_arg(window_fraction)
        self.eps = float(eps)
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_2d(x, self.num_features, type(self).__name__)
        height, width = x.shape[-2:]
        if height == 0 or width == 0:
            raise ValueError(f"{type(self).__name__} needs H, W >= 1, got input of shape {tuple(x.shape)}")
        p, q = self.window_for(height, width)
        rows = _Axis(height, min(p, height))
        cols = _Axis(width, min(q, width))
        groups = self.num_features // self.channels_per_group
        setup = (groups, rows, cols, self.eps)
        if x.dtype in _COMPUTE_DTYPES:
            return _LocalContextNormFunction.apply(x.contiguous(), self.weight, self.bias, *setup)
        weight, bias = (None, None) if self.weight is None else (self.weight.float(), self.bias.float())
        return _LocalContextNormFunction.apply(x.float().contiguous(), weight, bias, *setup).to(x.dtype)

    def window_for(self, height: int, width: int) -> tuple[int, int]:
        """The requested (p, q) on an ``height`` x ``width`` map (fixed, or scaled by ``window_fraction``)."""
        if self.window_size is not None:
            return self.window_size
        return odd_window(self.window_fraction, height), odd_window(self.window_fraction, width)

    def _window_repr(self) -> str:
        if self.window_size is not None:
            return f"window_size={self.window_size}"
        return f"window_fraction={self.window_fraction:.4g}"

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, channels_per_group={self.channels_per_group}, "
            f"{self._window_repr()}, eps={self.eps}, affine={self.affine}"
        )
