"""Local Context Normalization (Ortiz et al., CVPR 2020): group statistics over a sliding spatial window.

Method. Split the C channels into G = C / g groups of ``g = channels_per_group`` consecutive channels. For
sample n, group k and pixel (r, c), the statistics come from the g x P x Q block of values of group k in the
window ``rows(r) x cols(c)``, with ``P = min(p, H)`` and ``Q = min(q, W)`` for a requested window (p, q)::

    mu    = (1 / m) * sum_{window} x,            m = g * P * Q
    var   = (1 / m) * sum_{window} (x - mu)^2    (biased)
    y     = (x - mu) / sqrt(var + eps) * gamma_c + beta_c

Window rule. The window always has the full size P x Q. It is centred on the pixel where the map allows,
with the extra row (column) of an even window *below* (right of) the pixel, PyTorch's ``padding="same"``
convention: ``rows(r) = [s, s + P)`` with ``s = clamp(r - (P - 1) // 2, 0, H - P)``. Near a border the window is
shifted to stay inside the map (clamped, never truncated), so every statistic counts exactly m values.
Consequences: ``p >= H`` alone makes every window span all rows, and ``p >= H, q >= W`` is exactly GroupNorm
with C / g groups; ``g = 1`` with a full window is InstanceNorm, ``g = C`` is LayerNorm (GroupNorm with one
group). Statistics are per sample, so the layer is batch independent and identical in train and eval mode.

Cost. The window sums come from summed-area tables (cumulative sums), as the paper proposes: the sums of the
H - P + 1 distinct row windows are differences of a cumulative sum over rows, the clamped border windows are
copies of the first and last one (replicate padding), and the same is done over columns. Time and memory are
O(N C H W), independent of the window. The backward pass is written out (a custom autograd function): the
adjoint of a clamped box sum is a fold of the border rows onto the first and last window (adjoint of
replicate padding) followed by a "full" box sum, again two cumulative sums. The work runs in batch chunks of
about ``_CHUNK_ELEMENTS`` values so that the temporaries stay in cache; only the output and the input
gradient are full-size allocations, as in GroupNorm.

Numerics. Single-pass variance from window sums cancels badly in float32 (the authors' code loses the
variance of small windows at an input offset of +100). Here each (sample, group) is first shifted by its
mean, and the per-pixel group sums, the summed-area tables, mean and variance are computed in float64; the
normalised output is then formed in the input dtype from the shifted input. The output of a float32 input
then agrees with a float64 evaluation of the same input to about 1e-4 for every window, 1 x 1 included.

Differences from the authors' code (anthonymlortiz/lcn): statistics are not detached (full gradient), no
pixel is left out of the statistics (their integral image skips row 0 and column 0), odd windows are centred
(theirs are shifted one pixel down-right), the input is never written in place, and windows as large as
the map in one dimension stay local in the other (theirs falls back to an unbiased-variance GroupNorm).

Shapes: input and output ``(N, C, H, W)``; ``weight`` and ``bias`` ``(C,)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from robustbench_norm.norms.registry import register_norm
from robustbench_norm.norms.standard import check_eps, check_input_2d, check_num_features

# Values per batch chunk: the temporaries of one chunk (a few MB) stay in cache.
_CHUNK_ELEMENTS = 1 << 20
_SUMS_DTYPE = torch.float64


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


def _scratch(like: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Uninitialised buffer of ``shape`` whose rows are stored with an odd stride.

    A scan over rows (``cumsum`` along dim -2) whose row stride is a power of two makes every column hit the
    same few cache sets; PyTorch's CPU scan then runs several times slower. One spare column avoids it.
    """
    spare = 1 - shape[-1] % 2
    return like.new_empty((*shape[:-1], shape[-1] + spare), dtype=dtype).narrow(-1, 0, shape[-1])


def _resized(t: torch.Tensor, dim: int, length: int) -> tuple[int, ...]:
    shape = list(t.shape)
    shape[dim] = length
    return tuple(shape)


def _valid_sums(s: torch.Tensor, dim: int, axis: _Axis) -> torch.Tensor:
    """Sums of the ``axis.positions`` windows that fit inside the map along ``dim`` of (B, h, w) ``s``.

    One prefix sum (in place: ``s`` is overwritten) and one difference. The column pass (dim 2) writes a
    buffer with an odd row stride, because the row pass scans it next.
    """
    if axis.window == 1:
        return s
    if axis.full:
        return s.sum(dim, keepdim=True)
    if dim == 1 and s.stride(1) % 2 == 0:
        s = _scratch(s, s.shape, s.dtype).copy_(s)
    prefix = s.cumsum_(dim)
    length = axis.positions
    shape = _resized(s, dim, length)
    out = _scratch(s, shape, s.dtype) if dim == 2 else s.new_empty(shape)
    out.narrow(dim, 0, 1).copy_(prefix.narrow(dim, axis.window - 1, 1))
    torch.sub(
        prefix.narrow(dim, axis.window, length - 1),
        prefix.narrow(dim, 0, length - 1),
        out=out.narrow(dim, 1, length - 1),
    )
    return out


def _replicate(valid: torch.Tensor, rows: _Axis, cols: _Axis) -> torch.Tensor:
    """Statistics of every pixel from those of the window positions: the clamped windows of the border
    pixels repeat the first/last position (replicate padding). Full axes stay of length 1.
    """
    out = valid.new_empty((*valid.shape[:-2], rows.out_size, cols.out_size))
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


def _adjoint_sums(a: torch.Tensor, dim: int, axis: _Axis) -> torch.Tensor:
    """Adjoint of one axis of the clamped-window sum on (B, h, w) ``a``: each pixel k gets the sum of ``a``
    over the outputs whose window contains k. A full axis comes out of length 1 (the same sum everywhere).

    The border outputs share the first (last) window position, so they are first folded onto it (the
    adjoint of replicate padding), giving f of length L = positions. Pixel k lies in the windows of the
    positions j in [k - window + 1, k] within [0, L); with F the prefix sums of f that is
    ``F[min(k, L - 1)] - F[k - window]`` (the second term only for k >= window).
    """
    if axis.window == 1:
        return a
    if axis.full:
        return a.sum(dim, keepdim=True)
    length, size = axis.positions, axis.size
    after = size - length - axis.before
    folded = _scratch(a, _resized(a, dim, length), a.dtype).copy_(a.narrow(dim, axis.before, length))
    if axis.before:
        folded.narrow(dim, 0, 1).add_(a.narrow(dim, 0, axis.before).sum(dim, keepdim=True))
    if after:
        folded.narrow(dim, length - 1, 1).add_(a.narrow(dim, size - after, after).sum(dim, keepdim=True))
    prefix = folded.cumsum_(dim)
    out = a.new_empty(_resized(a, dim, size))
    out.narrow(dim, 0, length).copy_(prefix)
    out.narrow(dim, length, size - length).copy_(prefix.narrow(dim, length - 1, 1))
    out.narrow(dim, axis.window, length - 1).sub_(prefix.narrow(dim, 0, length - 1))
    return out


def _chunks(batch: int, per_sample: int) -> list[tuple[int, int]]:
    """(start, stop) sample ranges of about ``_CHUNK_ELEMENTS`` values each."""
    step = max(1, _CHUNK_ELEMENTS // max(per_sample, 1))
    return [(i, min(i + step, batch)) for i in range(0, batch, step)]


def _statistics(xs: torch.Tensor, rows: _Axis, cols: _Axis, eps: float) -> torch.Tensor:
    """Window mean and 1 / sqrt(var + eps) of the shifted input ``xs`` (n, G, g, H, W).

    Returns a (2, n, G, 1, H or 1, W or 1) tensor (mean, rstd) in the dtype of ``xs``. The per-pixel group
    sums s1 = sum_c x_c and s2 = sum_c x_c^2 are formed in the input dtype; their prefix sums and window
    sums are float64, so the window sums carry no error from the size of the map. A 1 x 1 window needs no
    window sums; its variance is formed directly as sum_c (x_c - mean)^2 / g.
    """
    n, groups, per_group, height, width = xs.shape
    if rows.window * cols.window == 1:
        mean = xs.mean(2, keepdim=True)
        var = (xs - mean).square_().mean(2, keepdim=True)
        return torch.stack((mean, var.add_(eps).rsqrt_()))
    planes = xs.new_empty(2, n, groups, height, width)
    torch.sum(xs, 2, out=planes[0])
    torch.sum(torch.square(xs), 2, out=planes[1])
    wide = planes.view(-1, height, width).to(_SUMS_DTYPE)
    sums = _valid_sums(_valid_sums(wide, 2, cols), 1, rows).to(xs.dtype)
    sums = sums.view(2, n * groups, *sums.shape[-2:])
    area = rows.window * cols.window
    stats = sums.mul_(1.0 / (area * per_group))
    stats[1].addcmul_(stats[0], stats[0], value=-1.0).clamp_min_(0.0).add_(eps).rsqrt_()
    full = _replicate(stats, rows, cols)
    return full.view(2, n, groups, 1, *full.shape[-2:])


def _normalized(xs: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """x_hat = (xs - mean) * rstd in one pass, as ``xs * rstd - mean * rstd``, written over ``xs``."""
    mean, rstd = stats[0], stats[1]
    return torch.addcmul(torch.mul(mean, rstd).neg_(), xs, rstd, out=xs)


def _input_grad(g_hat: torch.Tensor, x_hat: torch.Tensor, stats: torch.Tensor, rows: _Axis, cols: _Axis,
                out: torch.Tensor) -> None:
    """Write dL/dx into ``out`` for one chunk, given dL/dx_hat = ``g_hat`` (all (n, G, g, H, W)).

    With m = g * P * Q and, per pixel i, a_i = rstd_i / m * sum_group g_hat_i and
    b_i = rstd_i^2 / m * sum_group g_hat_i * x_hat_i, the chain rule through mean and variance gives
    dL/dx_k = g_hat_k * rstd_k - sum_{i: k in window(i)} (a_i + b_i * (x_k - mu_i)). With
    x_k = mu_k + x_hat_k / rstd_k this is ``g_hat * rstd + x_hat * S + T`` with the two adjoint window sums
    A = adj(a - b * mu) and B = adj(b):  S = -B / rstd,  T = -(A + mu * B).
    ``out`` may hold ``g_hat`` itself.
    """
    n, groups, per_group, height, width = g_hat.shape
    mean, rstd = stats[0], stats[1]
    scale = rstd / (per_group * rows.window * cols.window)
    terms = g_hat.new_empty(2, n, groups, 1, height, width)
    torch.sum(g_hat, 2, keepdim=True, out=terms[0])
    torch.sum(g_hat * x_hat, 2, keepdim=True, out=terms[1])
    terms[1].mul_(scale).mul_(rstd)
    terms[0].mul_(scale).addcmul_(terms[1], mean, value=-1.0)
    wide = terms.view(-1, height, width).to(_SUMS_DTYPE)
    adj = _adjoint_sums(_adjoint_sums(wide, 2, cols), 1, rows).to(g_hat.dtype)
    adj = adj.view(2, n, groups, 1, *adj.shape[-2:])
    scale_x_hat = torch.div(adj[1], rstd).neg_()
    offset = torch.addcmul(adj[0], mean, adj[1]).neg_()
    torch.mul(g_hat, rstd, out=out)
    out.addcmul_(x_hat, scale_x_hat).add_(offset)


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
        saved = []
        for start, stop in _chunks(batch, channels * height * width):
            xv = x[start:stop].view(-1, *shape5)
            shift = xv.mean(dim=(2, 3, 4), keepdim=True)
            xs = xv - shift
            stats = _statistics(xs, rows, cols, eps)
            x_hat = _normalized(xs, stats)
            out = y[start:stop].view_as(xv)
            if w5 is None:
                out.copy_(x_hat)
            else:
                torch.mul(x_hat, w5, out=out).add_(b5)
            saved += [shift, stats]
        ctx.save_for_backward(x, weight, *saved)
        ctx.setup = (groups, rows, cols)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, *saved = ctx.saved_tensors
        groups, rows, cols = ctx.setup
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        batch, channels, height, width = x.shape
        shape5 = (groups, channels // groups, height, width)
        w5 = None if weight is None else weight.view(1, *shape5[:2], 1, 1)
        grad_y = grad_y.contiguous()
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = x.new_zeros(channels) if need_w else None
        grad_b = x.new_zeros(channels) if need_b else None
        for i, (start, stop) in enumerate(_chunks(batch, channels * height * width)):
            shift, stats = saved[2 * i], saved[2 * i + 1]
            xv = x[start:stop].view(-1, *shape5)
            gy = grad_y[start:stop].view_as(xv)
            x_hat = _normalized(xv - shift, stats)
            if need_w:
                flat = (stop - start, channels, height * width)
                grad_w += torch.matmul(gy.reshape(*flat[:2], 1, -1), x_hat.view(*flat, 1)).sum(0).view(-1)
            if need_b:
                grad_b += gy.sum(dim=(0, 3, 4)).view(-1)
            if need_x:
                out = grad_x[start:stop].view_as(xv)
                g_hat = gy if w5 is None else torch.mul(gy, w5, out=out)
                _input_grad(g_hat, x_hat, stats, rows, cols, out)
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


@register_norm(
    "lcn",
    batch_independent=True,
    paper="Ortiz et al., Local Context Normalization, CVPR 2020",
)
class LocalContextNorm(nn.Module):
    """Local Context Normalization (Ortiz et al., CVPR 2020): group statistics over a clamped p x q window.

    ``y = (x - mu) / sqrt(var + eps) * gamma_c + beta_c`` where mu and the biased var of pixel (r, c) of
    sample n are taken over the ``channels_per_group`` consecutive channels of its group and the full-size
    ``min(p, H) x min(q, W)`` window centred on (r, c) (an even window extends one more pixel down/right),
    shifted inward at the borders so that it never leaves the map. ``p >= H`` and ``q >= W`` is GroupNorm
    with ``C / channels_per_group`` groups. Batch independent; train and eval are identical.

    Args:
        num_features: channels C.
        channels_per_group: g, consecutive channels sharing statistics; must divide C (g = 1: local
            InstanceNorm, g = C: local LayerNorm).
        window_size: p or (p, q) = (rows, cols), positive ints. The default 227 is the authors' and
            means GroupNorm on any map of at most 227 x 227.
        eps: added to the variance inside the square root.
        affine: learn per-channel ``weight`` (ones) and ``bias`` (zeros) of shape (C,).

    Shapes: input and output ``(N, C, H, W)``. Cost: O(NCHW) time and memory for any window (summed-area
    tables); statistics in float64 after a per-group shift (see the module docstring). Not twice
    differentiable.
    """

    def __init__(
        self,
        num_features: int,
        *,
        channels_per_group: int = 2,
        window_size: int | tuple[int, int] = 227,
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
        if not isinstance(affine, bool):
            raise ValueError(f"affine={affine!r} is invalid; valid: True or False")
        self.num_features = num_features
        self.channels_per_group = channels_per_group
        self.window_size = _window_arg(window_size)
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
        rows = _Axis(height, min(self.window_size[0], height))
        cols = _Axis(width, min(self.window_size[1], width))
        groups = self.num_features // self.channels_per_group
        return _LocalContextNormFunction.apply(
            x.contiguous(), self.weight, self.bias, groups, rows, cols, self.eps
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, channels_per_group={self.channels_per_group}, "
            f"window_size={self.window_size}, eps={self.eps}, affine={self.affine}"
        )
