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

Cost. Window sums are formed one axis at a time on the per-pixel group sums: the H - P + 1 distinct row
windows, then the border pixels repeat the first or last one (replicate padding), and likewise over
columns. Windows of more than ``_DIRECT_WINDOW`` pixels take differences of a prefix sum (summed-area
tables, as the paper proposes), shorter ones add their shifted slices. Time and memory are O(N C H W) for
any window; per pixel and group the layer keeps (mean, 1/std) for the backward pass, as much memory as the
input when g = 2. The backward pass is written out (custom autograd function, not twice differentiable):
with a_i, b_i formed per pixel from the output gradient, the input gradient needs two adjoint window sums,
each pixel collecting the values of the outputs whose windows contain it; with clamped windows that is a
difference of prefix sums whose index saturates at the border (all border outputs share the edge window),
see :func:`_adjoint_sums`. Every step is one whole-tensor op over the batch (no loop over rows, samples or
chunks), so a forward + backward issues a fixed number of ATen ops for a given window, whatever N, H and W
(about 160 for g = 2 and a 7 x 7 window, 62 of them kernels, the rest views; GroupNorm issues 6). Nothing is
kept between calls. That is the GPU's path. On the CPU (contiguous float32 / float64) forward and backward
are one C kernel each instead (``kernels.c``, :mod:`robustbench_norm.norms.native`), one sample and group at
a time: the same formulas and the same numerics (input dtype, shifted by the group's mean, short windows
summed directly, 1 x 1 windows by the two-pass formula), with running sums instead of prefix differences
for windows of more than 8 pixels along an axis (their rounding spans the window, not the map), and the
statistics kept per window row, (N, G, H - P + 1, W), rather than per pixel.

Numerics. A single-pass variance from float32 window sums cancels catastrophically: the running sums grow
with the map, and with an offset of +100 the authors' float32 code gets the variance of small windows
wrong by orders of magnitude. Here each (sample, group) is first shifted by its mean; the per-pixel group
sums s1 = sum_c x_c and s2 = sum_c x_c^2, their window sums and the mean and variance are formed in the
input dtype. The error a prefix-sum difference carries grows with |prefix| / |window sum|, about map /
window, which is why windows of up to ``_DIRECT_WINDOW`` pixels are summed directly. A 1 x 1 window takes
its variance directly as sum_c (x_c - mu)^2 / g. For float32 input with an offset of +100 the output
agrees with a float64 evaluation of the same input to about 2e-5 (at most 1e-4) for every window tested,
1 x 1 up to the whole map, on maps up to 224 x 224. The backward window sums act on gradient terms without
an offset (the float32 input gradient agrees with the float64 one to about 1e-5 relative). float16 /
bfloat16 input is computed in float32 and the output cast back.

Differences from the authors' code (anthonymlortiz/lcn): the statistics are not detached (full gradient),
no pixel is left out (their integral image skips row 0 and column 0), odd windows are centred (theirs sit
one pixel down-right), the input is never written in place, and a window as large as the map in one
dimension stays local in the other (theirs then falls back to a GroupNorm with unbiased variance).

Shapes: input and output ``(N, C, H, W)``; ``weight`` and ``bias`` ``(C,)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from robustbench_norm.norms import native
from robustbench_norm.norms.registry import register_norm
from robustbench_norm.norms.standard import (
    check_eps,
    check_input_2d,
    check_num_features,
)

# The paper's window on ImageNet (section 4.3): p = q = 127 on 224-pixel images, as a fraction of the side.
PAPER_WINDOW_FRACTION = 127 / 224
# Groups of at most this many channels are summed channel slice by channel slice, which on the CPU is about
# 3x faster than one reduction over a short middle dimension; larger groups use one reduction (bounded ops).
_SLICE_CHANNELS = 4
# Windows up to this length are summed slice by slice; longer ones by prefix sums, whose rounding error grows
# with |prefix| / |window sum| ~ map / window (module docstring, "Numerics").
_DIRECT_WINDOW = 5
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

    @property
    def block(self) -> slice:
        """Where the window statistics sit along the axis before the border is filled: the window positions
        (a full axis: the one statistic; window 1: every pixel)."""
        if self.full:
            return slice(0, 1)
        start = self.before if self.window > 1 else 0
        return slice(start, start + self.positions)


def _grouped(t: Tensor, groups: int) -> Tensor:
    """(N, C, H, W) -> (N, G, g, H, W) view."""
    n, c, h, w = t.shape
    return t.view(n, groups, c // groups, h, w)


def _channel_sum(t: Tensor, out: Tensor, weight: Tensor | None = None) -> Tensor:
    """``out = sum_c t[:, :, c] * weight[:, :, c]`` (weight 1 if None) over the channels (dim 2) of a group."""
    per_group = t.shape[2]
    if per_group > _SLICE_CHANNELS:
        return torch.sum(t if weight is None else t * weight, 2, out=out)
    for c in range(per_group):
        term = t.select(2, c)
        if weight is None:
            out.copy_(term) if c == 0 else out.add_(term)
        elif c == 0:
            torch.mul(term, weight.select(2, c), out=out)
        else:
            out.addcmul_(term, weight.select(2, c))
    return out


def _window_sums(s: Tensor, dim: int, axis: _Axis, out: Tensor) -> Tensor:
    """Sums over the ``axis.positions`` windows that fit inside the map, along ``dim`` of ``s``, written into
    ``out`` (length 1 for a full axis). Windows of up to ``_DIRECT_WINDOW`` pixels add their shifted slices
    (exact to rounding); longer ones take differences of one prefix sum (made in place, so ``s`` is
    overwritten), whose rounding error grows with map / window."""
    if axis.full:
        return torch.sum(s, dim, keepdim=True, out=out)
    length = axis.positions
    if axis.window <= _DIRECT_WINDOW:
        torch.add(s.narrow(dim, 0, length), s.narrow(dim, 1, length), out=out)
        for offset in range(2, axis.window):
            out.add_(s.narrow(dim, offset, length))
        return out
    prefix = s.cumsum_(dim)
    out.narrow(dim, 0, 1).copy_(prefix.narrow(dim, axis.window - 1, 1))
    torch.sub(
        prefix.narrow(dim, axis.window, length - 1),
        prefix.narrow(dim, 0, length - 1),
        out=out.narrow(dim, 1, length - 1),
    )
    return out


def _adjoint_sums(a: Tensor, dim: int, axis: _Axis, out: Tensor) -> Tensor:
    """Adjoint of :func:`_window_sums` followed by the replicate padding of the border pixels, along ``dim``
    of ``a``, written into ``out``: each pixel k gets the sum of ``a`` over the outputs whose window contains
    k. A full axis comes out of length 1 (the same sum for every pixel).

    Let A be the prefix sums of ``a`` (made in place, so ``a`` is overwritten), P the window and L the
    number of window positions. The outputs before position 0 and after position L - 1 share those windows
    (clamping), so pixel k collects ``A[b + k]`` (b = ``axis.before``; all outputs, the last A, when
    k >= L - 1) minus ``A[b + k - P]`` (the outputs whose window ended before k; none when k < P).
    """
    if axis.full:
        return torch.sum(a, dim, keepdim=True, out=out)
    size, window, length, before = axis.size, axis.window, axis.positions, axis.before
    prefix = a.cumsum_(dim)
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


def _box_sums(planes: Tensor, rows: _Axis, cols: _Axis) -> tuple[Tensor, Tensor]:
    """Window sums over rows x cols of ``planes`` (..., H, W), one axis at a time, alternating between
    ``planes`` (overwritten) and one spare buffer of its size. Returns (buffer, block view): the sums lie in
    ``buffer[..., rows.block, cols.block]``."""
    buffers = [planes, torch.empty_like(planes)]
    source = planes
    for dim, axis, region in ((-1, cols, (slice(None), cols.block)), (-2, rows, (rows.block, cols.block))):
        if axis.window == 1:
            continue
        target = buffers[1] if source is buffers[0] else buffers[0]
        block = target[..., region[0], region[1]]
        _window_sums(source[..., :, cols.block] if dim == -2 else source, dim, axis, block)
        source = target
    return source, source[..., rows.block, cols.block]


def _replicate_(buffer: Tensor, rows: _Axis, cols: _Axis) -> Tensor:
    """Fill the border of ``buffer[..., :H or 1, :W or 1]`` around the block of window statistics by
    repeating its edge rows and columns (the clamped windows of border pixels), in place; returns that view."""
    stats = buffer[..., : rows.out_size, : cols.out_size]
    r0, r1, c0, c1 = rows.block.start, rows.block.stop, cols.block.start, cols.block.stop
    if r0:
        stats[..., :r0, c0:c1].copy_(stats[..., r0 : r0 + 1, c0:c1])
    if r1 < stats.shape[-2]:
        stats[..., r1:, c0:c1].copy_(stats[..., r1 - 1 : r1, c0:c1])
    if c0:
        stats[..., :c0].copy_(stats[..., c0 : c0 + 1])
    if c1 < stats.shape[-1]:
        stats[..., c1:].copy_(stats[..., c1 - 1 : c1])
    return stats


def _statistics(xs: Tensor, rows: _Axis, cols: _Axis, eps: float) -> Tensor:
    """Window mean and 1 / sqrt(var + eps) of the shifted input ``xs`` (N, G, g, H, W), stacked as
    (2, N, G, H or 1, W or 1).

    The per-pixel group sums s1 = sum_c x_c and s2 = sum_c x_c^2 and their window sums are formed in the
    dtype of ``xs``; the border pixels then repeat the statistics of the edge windows (replicate padding).
    A 1 x 1 window needs no window sums: its variance is formed directly as sum_c (x_c - mean)^2 / g.
    """
    n, groups, per_group, height, width = xs.shape
    planes = xs.new_empty(2, n, groups, height, width)
    if rows.window * cols.window == 1:
        mean = _channel_sum(xs, planes[0]).div_(per_group)
        deviation = xs - mean.unsqueeze(2)
        _channel_sum(deviation, planes[1], weight=deviation).div_(per_group).add_(eps).rsqrt_()
        return planes
    _channel_sum(xs, planes[0])
    _channel_sum(xs, planes[1], weight=xs)
    buffer, block = _box_sums(planes, rows, cols)
    block.div_(per_group * rows.window * cols.window)
    block[1].addcmul_(block[0], block[0], value=-1.0).clamp_min_(0.0).add_(eps).rsqrt_()
    return _replicate_(buffer, rows, cols)


def _input_grad(
    grad_y: Tensor,
    x_hat: Tensor,
    product: Tensor,
    weight: Tensor | None,
    stats: Tensor,
    rows: _Axis,
    cols: _Axis,
) -> Tensor:
    """dL/dx (N, G, g, H, W), written over ``product = grad_y * x_hat``; ``weight`` (1, G, g, 1, 1).

    With g_hat = dL/dx_hat = grad_y * weight, m = g * P * Q and, per pixel i,
    a_i = rstd_i / m * sum_group g_hat_i and b_i = rstd_i^2 / m * sum_group g_hat_i * x_hat_i, the chain rule
    through mean and variance gives dL/dx_k = g_hat_k * rstd_k - sum_{i: k in window(i)} (a_i + b_i (x_k - mu_i)).
    With x_k = mu_k + x_hat_k / rstd_k this is ``g_hat * rstd + x_hat * S + T`` with the two adjoint window
    sums A = adj(a - b * mu) and B = adj(b):  S = -B / rstd,  T = -(A + mu * B).
    """
    n, groups, per_group, height, width = grad_y.shape
    mean, rstd = stats[0], stats[1]
    terms = grad_y.new_empty(2, n, groups, height, width)
    _channel_sum(grad_y, terms[0], weight)
    _channel_sum(product, terms[1], weight)
    scale = rstd / (per_group * rows.window * cols.window)
    terms[1].mul_(scale).mul_(rstd)
    terms[0].mul_(scale).addcmul_(terms[1], mean, value=-1.0)
    adjoint = terms
    if rows.window * cols.window > 1:
        spare = torch.empty_like(terms)
        by_cols = terms if cols.window == 1 else _adjoint_sums(terms, -1, cols, spare[..., : cols.out_size])
        target = terms if by_cols is not terms else spare
        by_rows = target[..., : rows.out_size, : cols.out_size]
        adjoint = by_cols if rows.window == 1 else _adjoint_sums(by_cols, -2, rows, by_rows)
    offset = adjoint[0].addcmul_(mean, adjoint[1]).neg_()
    scale_x_hat = adjoint[1].div_(rstd).neg_()
    grad_x = torch.mul(grad_y, rstd.unsqueeze(2), out=product)
    if weight is not None:
        grad_x.mul_(weight)
    return grad_x.addcmul_(x_hat, scale_x_hat.unsqueeze(2)).add_(offset.unsqueeze(2))


class _LocalContextNormFunction(torch.autograd.Function):
    """y = (x - mu) * rstd * weight + bias with window statistics; explicit backward."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        groups: int,
        rows: _Axis,
        cols: _Axis,
        eps: float,
    ) -> Tensor:
        ctx.setup = (groups, rows, cols)
        ctx.library = native.kernels(x, *_affine_or_identity(x, weight, bias))
        if ctx.library is not None:
            return _native_forward(ctx, x, weight, bias, eps)
        xv = _grouped(x, groups)
        shift = xv.mean((2, 3, 4), keepdim=True)
        y = torch.empty_like(x)  # returned as is (not a view), so it may be modified in place afterwards
        xs = torch.sub(xv, shift, out=_grouped(y, groups))
        stats = _statistics(xs, rows, cols, eps)
        mean, rstd = stats[0].unsqueeze(2), stats[1].unsqueeze(2)
        torch.addcmul(-mean * rstd, xs, rstd, out=xs)  # (x - shift - mean) * rstd in one pass
        if weight is not None:
            torch.addcmul(bias.view(1, groups, -1, 1, 1), xs, weight.view(1, groups, -1, 1, 1), out=xs)
        ctx.save_for_backward(x, weight, shift, stats)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.library is not None:
            return _native_backward(ctx, grad_y.contiguous())
        x, weight, shift, stats = ctx.saved_tensors
        groups, rows, cols = ctx.setup
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        mean, rstd = stats[0].unsqueeze(2), stats[1].unsqueeze(2)
        x_hat = torch.addcmul((mean + shift).mul_(rstd).neg_(), _grouped(x, groups), rstd)
        grad_y = _grouped(grad_y.contiguous(), groups)
        product = grad_y * x_hat
        grad_w = product.sum((0, 3, 4)).view(-1) if need_w else None
        grad_b = grad_y.sum((0, 3, 4)).view(-1) if need_b else None
        grad_x = None
        if need_x:
            w5 = None if weight is None else weight.view(1, groups, -1, 1, 1)
            grad_x = _input_grad(grad_y, x_hat, product, w5, stats, rows, cols).view(x.shape)
        return grad_x, grad_w, grad_b, None, None, None, None


def _affine_or_identity(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """(weight, bias), or ones and zeros of x's dtype for a layer without affine parameters."""
    if weight is not None:
        return weight, bias
    return x.new_ones(x.shape[1]), x.new_zeros(x.shape[1])


def _native_forward(ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """The forward pass as one C kernel (``kernels.c``); keeps the mean (minus the group's shift) and 1 / std
    of the windows of each window row, (N, G, H - P + 1, W), and the shift (N, G)."""
    groups, rows, cols = ctx.setup
    n, c, h, w = x.shape
    weight, bias = _affine_or_identity(x, weight, bias)
    y = torch.empty_like(x)
    mean, rstd = (x.new_empty(n, groups, rows.positions, w) for _ in range(2))
    shift = x.new_empty(n, groups)
    if native.call(ctx.library, "lcn_forward", x.dtype, x, weight, bias, y, mean, rstd, shift, n, c, h, w, groups,
                   rows.window, cols.window, float(eps)):
        raise MemoryError("lcn_forward could not allocate its per-map work space")
    ctx.save_for_backward(x, weight, mean, rstd, shift)
    return y


def _native_backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
    """The backward pass as one C kernel (``kernels.c``: the adjoint window sums as in :func:`_adjoint_sums`)."""
    x, weight, mean, rstd, shift = ctx.saved_tensors
    groups, rows, cols = ctx.setup
    n, c, h, w = x.shape
    grad_x = torch.empty_like(x)
    grad_w, grad_b = (torch.zeros(c, dtype=torch.float64) for _ in range(2))
    if native.call(ctx.library, "lcn_backward", x.dtype, grad_y, x, weight, mean, rstd, shift, grad_x, grad_w, grad_b,
                   n, c, h, w, groups, rows.window, cols.window):
        raise MemoryError("lcn_backward could not allocate its per-map work space")
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    return (grad_x if need_x else None, grad_w.to(x.dtype) if need_w else None,
            grad_b.to(x.dtype) if need_b else None, None, None, None, None)


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
        if x.shape[0] == 0:
            return x.clone()  # an empty batch: nothing to normalise
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
