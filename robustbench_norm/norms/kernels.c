/* Fused CPU kernels of robustbench_norm's layers (loaded by robustbench_norm/norms/native.py through ctypes).
 *
 * Positional Normalization over x of shape (N, C, P), P = H * W, contiguous:
 *
 *   mu[n, p]   = mean_c x[n, c, p]
 *   rstd[n, p] = 1 / sqrt(mean_c (x[n, c, p] - mu[n, p])^2 + eps)          (two passes: no cancellation)
 *   y[n, c, p] = (x[n, c, p] - mu[n, p]) * rstd[n, p] * w[c] + b[c]
 *
 * backward, with x_hat = (x - mu) * rstd and g = dy * w[c]:
 *
 *   dx[n, c, p] = rstd[n, p] * (g - mean_c g - x_hat * mean_c(g * x_hat))
 *   dw[c] = sum_{n, p} dy * x_hat,   db[c] = sum_{n, p} dy
 *
 * (dw and db are summed in BLOCK lanes per channel, then the lanes in double; the backward returns 1 when
 * it cannot allocate those lanes, 0 otherwise.)
 *
 * Both walk one sample at a time in blocks of BLOCK positions, so the C x BLOCK values a block reads three
 * times stay in the cache: each pass over the tensor reads x (and dy) from memory about once. The inner
 * loops run over positions, which are independent, so the compiler vectorises them without reassociating
 * any sum. Every kernel exists for float and double (suffixes _f32, _f64).
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 256

#define DEFINE_POSITIONAL_NORM(T, SUFFIX, SQRT)                                                               \
    int positional_norm_forward_##SUFFIX(const T *x, const T *w, const T *b, T *y, T *mean_out, T *rstd_out,   \
                                         long n, long c, long p, double eps) {                                 \
        T mean[BLOCK], rstd[BLOCK];                                                                           \
        for (long i = 0; i < n; ++i) {                                                                        \
            const T *xs = x + i * c * p;                                                                      \
            T *ys = y + i * c * p;                                                                            \
            for (long p0 = 0; p0 < p; p0 += BLOCK) {                                                          \
                long m = p - p0 < BLOCK ? p - p0 : BLOCK;                                                     \
                for (long j = 0; j < m; ++j) mean[j] = rstd[j] = 0;                                           \
                for (long k = 0; k < c; ++k) {                                                                \
                    const T *row = xs + k * p + p0;                                                           \
                    for (long j = 0; j < m; ++j) mean[j] += row[j];                                           \
                }                                                                                             \
                for (long j = 0; j < m; ++j) mean[j] /= (T)c;                                                 \
                for (long k = 0; k < c; ++k) {                                                                \
                    const T *row = xs + k * p + p0;                                                           \
                    for (long j = 0; j < m; ++j) {                                                            \
                        T d = row[j] - mean[j];                                                               \
                        rstd[j] += d * d;                                                                     \
                    }                                                                                         \
                }                                                                                             \
                for (long j = 0; j < m; ++j) rstd[j] = (T)1 / SQRT(rstd[j] / (T)c + (T)eps);                  \
                for (long k = 0; k < c; ++k) {                                                                \
                    const T *row = xs + k * p + p0;                                                           \
                    T *out = ys + k * p + p0, wk = w[k], bk = b[k];                                           \
                    for (long j = 0; j < m; ++j) out[j] = (row[j] - mean[j]) * rstd[j] * wk + bk;             \
                }                                                                                             \
                for (long j = 0; j < m; ++j) {                                                                \
                    mean_out[i * p + p0 + j] = mean[j];                                                       \
                    rstd_out[i * p + p0 + j] = rstd[j];                                                       \
                }                                                                                             \
            }                                                                                                 \
        }                                                                                                     \
        return 0;                                                                                             \
    }                                                                                                         \
                                                                                                              \
    int positional_norm_backward_##SUFFIX(const T *dy, const T *x, const T *w, const T *mean, const T *rstd,  \
                                          T *dx, double *dw, double *db, long n, long c, long p) {            \
        T sum_g[BLOCK], sum_gx[BLOCK];                                                                        \
        T *dw_lanes = calloc((size_t)(c * BLOCK), sizeof(T)), *db_lanes = calloc((size_t)(c * BLOCK), sizeof(T)); \
        if (!dw_lanes || !db_lanes) {                                                                         \
            free(dw_lanes);                                                                                   \
            free(db_lanes);                                                                                   \
            return 1;                                                                                         \
        }                                                                                                     \
        for (long i = 0; i < n; ++i) {                                                                        \
            const T *dys = dy + i * c * p, *xs = x + i * c * p;                                               \
            T *dxs = dx + i * c * p;                                                                          \
            for (long p0 = 0; p0 < p; p0 += BLOCK) {                                                          \
                long m = p - p0 < BLOCK ? p - p0 : BLOCK;                                                     \
                const T *mu = mean + i * p + p0, *rs = rstd + i * p + p0;                                     \
                for (long j = 0; j < m; ++j) sum_g[j] = sum_gx[j] = 0;                                        \
                for (long k = 0; k < c; ++k) {                                                                \
                    const T *gr = dys + k * p + p0, *xr = xs + k * p + p0;                                    \
                    T wk = w[k], *dwl = dw_lanes + k * BLOCK, *dbl = db_lanes + k * BLOCK;                    \
                    for (long j = 0; j < m; ++j) {                                                            \
                        T x_hat = (xr[j] - mu[j]) * rs[j];                                                    \
                        sum_g[j] += gr[j] * wk;                                                               \
                        sum_gx[j] += gr[j] * wk * x_hat;                                                      \
                        dwl[j] += gr[j] * x_hat;                                                              \
                        dbl[j] += gr[j];                                                                      \
                    }                                                                                         \
                }                                                                                             \
                for (long j = 0; j < m; ++j) {                                                                \
                    sum_g[j] /= (T)c;                                                                         \
                    sum_gx[j] /= (T)c;                                                                        \
                }                                                                                             \
                for (long k = 0; k < c; ++k) {                                                                \
                    const T *gr = dys + k * p + p0, *xr = xs + k * p + p0;                                    \
                    T *out = dxs + k * p + p0, wk = w[k];                                                     \
                    for (long j = 0; j < m; ++j) {                                                            \
                        T x_hat = (xr[j] - mu[j]) * rs[j];                                                    \
                        out[j] = rs[j] * (gr[j] * wk - sum_g[j] - x_hat * sum_gx[j]);                         \
                    }                                                                                         \
                }                                                                                             \
            }                                                                                                 \
        }                                                                                                     \
        for (long k = 0; k < c; ++k) {                                                                        \
            double dw_k = 0, db_k = 0;                                                                        \
            for (long j = 0; j < BLOCK; ++j) {                                                                \
                dw_k += dw_lanes[k * BLOCK + j];                                                              \
                db_k += db_lanes[k * BLOCK + j];                                                              \
            }                                                                                                 \
            dw[k] = dw_k;                                                                                     \
            db[k] = db_k;                                                                                     \
        }                                                                                                     \
        free(dw_lanes);                                                                                       \
        free(db_lanes);                                                                                       \
        return 0;                                                                                             \
    }

DEFINE_POSITIONAL_NORM(float, f32, sqrtf)
DEFINE_POSITIONAL_NORM(double, f64, sqrt)

/* Row kernels of the per-instance affine layers (robustbench_norm/norms/instance_affine.py): x is (R, L),
 * contiguous, one row per (sample, channel) instance, L = H * W values each.
 *
 *   row_moments:   mean[r] = mean_l x[r, l],  var[r] = mean_l (x[r, l] - mean[r])^2          (two passes)
 *   row_affine:    y[r, l] = (x[r, l] - mean[r]) * a[r] + b[r]
 *   row_grad_sums: s1[r] = sum_l dy[r, l],  s2[r] = sum_l dy[r, l] * (x[r, l] - mean[r])
 *   row_grad:      dx[r, l] = dy[r, l] * a[r] + (x[r, l] - mean[r]) * p[r] + q[r]
 *
 * A row is read once from memory per kernel (its second pass hits the cache); sums run in SIMD lanes. */
#define DEFINE_ROW_KERNELS(T, SUFFIX)                                                                          \
    int row_moments_##SUFFIX(const T *x, T *mean, T *var, long rows, long length) {                           \
        for (long r = 0; r < rows; ++r) {                                                                     \
            const T *row = x + r * length;                                                                    \
            T sum = 0, squares = 0;                                                                           \
            _Pragma("omp simd reduction(+ : sum)") for (long l = 0; l < length; ++l) sum += row[l];           \
            T mu = sum / (T)length;                                                                           \
            _Pragma("omp simd reduction(+ : squares)") for (long l = 0; l < length; ++l) {                    \
                T d = row[l] - mu;                                                                            \
                squares += d * d;                                                                             \
            }                                                                                                 \
            mean[r] = mu;                                                                                     \
            var[r] = squares / (T)length;                                                                     \
        }                                                                                                     \
        return 0;                                                                                             \
    }                                                                                                         \
                                                                                                              \
    int row_affine_##SUFFIX(const T *x, const T *mean, const T *a, const T *b, T *y, long rows, long length) { \
        for (long r = 0; r < rows; ++r) {                                                                     \
            const T *row = x + r * length;                                                                    \
            T *out = y + r * length, mu = mean[r], ar = a[r], br = b[r];                                      \
            _Pragma("omp simd") for (long l = 0; l < length; ++l) out[l] = (row[l] - mu) * ar + br;           \
        }                                                                                                     \
        return 0;                                                                                             \
    }                                                                                                         \
                                                                                                              \
    int row_grad_sums_##SUFFIX(const T *dy, const T *x, const T *mean, T *s1, T *s2, long rows, long length) { \
        for (long r = 0; r < rows; ++r) {                                                                     \
            const T *g = dy + r * length, *row = x + r * length;                                              \
            T mu = mean[r], sum = 0, dot = 0;                                                                 \
            _Pragma("omp simd reduction(+ : sum, dot)") for (long l = 0; l < length; ++l) {                   \
                sum += g[l];                                                                                  \
                dot += g[l] * (row[l] - mu);                                                                  \
            }                                                                                                 \
            s1[r] = sum;                                                                                      \
            s2[r] = dot;                                                                                      \
        }                                                                                                     \
        return 0;                                                                                             \
    }                                                                                                         \
                                                                                                              \
    int row_grad_##SUFFIX(const T *dy, const T *x, const T *mean, const T *a, const T *p, const T *q, T *dx,  \
                          long rows, long length) {                                                           \
        for (long r = 0; r < rows; ++r) {                                                                     \
            const T *g = dy + r * length, *row = x + r * length;                                              \
            T *out = dx + r * length, mu = mean[r], ar = a[r], pr = p[r], qr = q[r];                          \
            _Pragma("omp simd") for (long l = 0; l < length; ++l) out[l] = g[l] * ar + (row[l] - mu) * pr + qr; \
        }                                                                                                     \
        return 0;                                                                                             \
    }

DEFINE_ROW_KERNELS(float, f32)
DEFINE_ROW_KERNELS(double, f64)

/* Local Context Normalization (robustbench_norm/norms/lcn.py) over x (N, C, H, W), contiguous, in G groups of
 * g = C / G channels, with the clamped P x Q window of lcn.py (start = clamp(i - (P - 1) / 2, 0, H - P)).
 *
 * Forward, per sample and group: shift the group's values by their mean c0 (rounded to the input dtype, so
 * x - c0 is exact for values near it), form the per-pixel channel sums of x - c0 and (x - c0)^2 in double,
 * their summed-area tables (as the paper proposes) and, per pixel, mu' = S1 / m and
 * var = max(S2 / m - mu'^2, 0) in double (m = g P Q); keep mu' (the mean minus c0), 1 / sqrt(var + eps)
 * and c0 for the backward pass; y = (x - c0 - mu') * rstd * w + b.
 *
 * Backward: per pixel i, a_i = rstd_i / m * sum_group g_hat and b_i = rstd_i^2 / m * sum_group g_hat * x_hat
 * (g_hat = dy * w); their adjoint window sums (each pixel collects the outputs whose windows contain it, an
 * interval of outputs along each axis, again from summed-area tables) give
 *   dx_k = g_hat_k * rstd_k - adj(a - b * mu')_k - (x_k - c0) * adj(b)_k.
 * dw and db are summed in double.
 *
 * Summed-area tables are built column prefix first (vectorised across columns) and then row prefix with the
 * rows in the inner loop (independent chains), so no long serial chain of additions limits them. Both
 * functions return 1 when they cannot allocate their per-map work space, 0 otherwise. */
static long window_start(long i, long size, long window) {
    long start = i - (window - 1) / 2;
    return start < 0 ? 0 : start > size - window ? size - window : start;
}

/* The outputs [lo, hi) whose clamped windows contain pixel q. */
static void adjoint_range(long q, long size, long window, long *lo, long *hi) {
    long before = (window - 1) / 2;
    *lo = q - window + 1 <= 0 ? 0 : q - window + 1 + before;
    *hi = (q >= size - window ? size - 1 : q + before) + 1;
}

/* Summed-area tables of two maps at once: v holds (h, w) pairs (the two maps interleaved), t gets (h + 1, w + 1)
 * pairs, t[r][j] = sum of v over rows < r and cols < j, for each map. */
static void summed_area2(const double *v, double *t, long h, long w) {
    long s = 2 * (w + 1);
    for (long j = 0; j < s; ++j) t[j] = 0;
    for (long r = 0; r < h; ++r) {
        double *out = t + (r + 1) * s;
        const double *above = t + r * s, *in = v + r * 2 * w;
        out[0] = out[1] = 0;
        for (long j = 0; j < 2 * w; ++j) out[j + 2] = above[j + 2] + in[j];
    }
    for (long j = 1; j < w; ++j)
        for (long r = 1; r <= h; ++r) {
            t[r * s + 2 * j + 2] += t[r * s + 2 * j];
            t[r * s + 2 * j + 3] += t[r * s + 2 * j + 1];
        }
}

/* The run [*first, *last) of columns around the middle along which lo[j] - j and hi[j] - j stay constant (the
 * windows that slide with the pixel); *shift_lo and *shift_hi get those constants. */
static void sliding_run(const long *lo, const long *hi, long w, long *first, long *last, long *shift_lo,
                        long *shift_hi) {
    long mid = w / 2, a = mid, b = mid + 1;
    *shift_lo = lo[mid] - mid;
    *shift_hi = hi[mid] - mid;
    while (a > 0 && lo[a - 1] - (a - 1) == *shift_lo && hi[a - 1] - (a - 1) == *shift_hi) --a;
    while (b < w && lo[b] - b == *shift_lo && hi[b] - b == *shift_hi) ++b;
    *first = a;
    *last = b;
}

/* Column windows of one row band of the two maps behind the paired table t (width w): out1[j], out2[j] = sums
 * over rows [r0, r1) and cols [lo[j], hi[j]); run = (first, last, shift_lo, shift_hi) from sliding_run, whose
 * columns take contiguous (vectorised) differences. row is scratch of 2 (w + 1) doubles. */
static void box_row2(const double *t, long w, long r0, long r1, const long *lo, const long *hi, const long *run,
                     double *row, double *out1, double *out2) {
    const double *top = t + r0 * 2 * (w + 1), *bottom = t + r1 * 2 * (w + 1);
    double *row1 = row, *row2 = row + w + 1;
    for (long j = 0; j <= w; ++j) {
        row1[j] = bottom[2 * j] - top[2 * j];
        row2[j] = bottom[2 * j + 1] - top[2 * j + 1];
    }
    long first = run[0], last = run[1], dl = run[2], dh = run[3];
    for (long j = 0; j < first; ++j) {
        out1[j] = row1[hi[j]] - row1[lo[j]];
        out2[j] = row2[hi[j]] - row2[lo[j]];
    }
    for (long j = first; j < last; ++j) {
        out1[j] = row1[j + dh] - row1[j + dl];
        out2[j] = row2[j + dh] - row2[j + dl];
    }
    for (long j = last; j < w; ++j) {
        out1[j] = row1[hi[j]] - row1[lo[j]];
        out2[j] = row2[hi[j]] - row2[lo[j]];
    }
}

#define DEFINE_LCN(T, SUFFIX, SQRT)                                                                            \
    int lcn_forward_##SUFFIX(const T *x, const T *w, const T *b, T *y, T *mean, T *rstd, T *shift, long n,     \
                             long c, long h, long wd, long groups, long P, long Q, double eps) {              \
        long hw = h * wd, g = c / groups, table = (h + 1) * (wd + 1);                                         \
        double inverse_m = 1.0 / (double)(g * P * Q);                                                         \
        double *work = malloc(sizeof(double) * (size_t)(2 * hw + 2 * table + 4 * (wd + 1)));                  \
        long *index = malloc(sizeof(long) * (size_t)(2 * (h + wd)));                                          \
        if (!work || !index) {                                                                                \
            free(work);                                                                                       \
            free(index);                                                                                      \
            return 1;                                                                                         \
        }                                                                                                     \
        double *sums = work, *t = sums + 2 * hw, *row = t + 2 * table, *o1 = row + 2 * (wd + 1), *o2 = o1 + wd + 1; \
        long *row_lo = index, *row_hi = row_lo + h, *col_lo = row_hi + h, *col_hi = col_lo + wd;              \
        for (long r = 0; r < h; ++r) row_hi[r] = (row_lo[r] = window_start(r, h, P)) + P;                     \
        for (long j = 0; j < wd; ++j) col_hi[j] = (col_lo[j] = window_start(j, wd, Q)) + Q;                   \
        long run[4];                                                                                          \
        sliding_run(col_lo, col_hi, wd, run, run + 1, run + 2, run + 3);                                      \
        for (long i = 0; i < n; ++i) {                                                                        \
            for (long k = 0; k < groups; ++k) {                                                               \
                const T *xg = x + (i * c + k * g) * hw;                                                       \
                T *mu = mean + (i * groups + k) * hw, *rs = rstd + (i * groups + k) * hw;                     \
                double total = 0;                                                                             \
                _Pragma("omp simd reduction(+ : total)") for (long p = 0; p < g * hw; ++p) total += xg[p];    \
                T c0 = (T)(total / (double)(g * hw));                                                         \
                shift[i * groups + k] = c0;                                                                   \
                for (long p = 0; p < 2 * hw; ++p) sums[p] = 0;                                                \
                for (long ch = 0; ch < g; ++ch) {                                                             \
                    const T *xr = xg + ch * hw;                                                               \
                    for (long p = 0; p < hw; ++p) {                                                           \
                        double v = (double)(xr[p] - c0);                                                      \
                        sums[2 * p] += v;                                                                     \
                        sums[2 * p + 1] += v * v;                                                             \
                    }                                                                                         \
                }                                                                                             \
                summed_area2(sums, t, h, wd);                                                                 \
                for (long r = 0; r < h; ++r) {                                                                \
                    box_row2(t, wd, row_lo[r], row_hi[r], col_lo, col_hi, run, row, o1, o2);                       \
                    for (long j = 0; j < wd; ++j) {                                                           \
                        double mean1 = o1[j] * inverse_m, var = o2[j] * inverse_m - mean1 * mean1;            \
                        mu[r * wd + j] = (T)mean1;                                                            \
                        rs[r * wd + j] = (T)1 / SQRT((T)((var > 0 ? var : 0) + eps));                         \
                    }                                                                                         \
                }                                                                                             \
                for (long ch = 0; ch < g; ++ch) {                                                             \
                    const T *xr = xg + ch * hw;                                                               \
                    T *out = y + (i * c + k * g + ch) * hw, wc = w[k * g + ch], bc = b[k * g + ch];           \
                    for (long p = 0; p < hw; ++p) out[p] = (xr[p] - c0 - mu[p]) * rs[p] * wc + bc;           \
                }                                                                                             \
            }                                                                                                 \
        }                                                                                                     \
        free(work);                                                                                           \
        free(index);                                                                                          \
        return 0;                                                                                             \
    }                                                                                                         \
                                                                                                              \
    int lcn_backward_##SUFFIX(const T *dy, const T *x, const T *w, const T *mean, const T *rstd,               \
                              const T *shift, T *dx, double *dw, double *db, long n, long c, long h, long wd,  \
                              long groups, long P, long Q) {                                                  \
        long hw = h * wd, g = c / groups, table = (h + 1) * (wd + 1);                                         \
        double inverse_m = 1.0 / (double)(g * P * Q);                                                         \
        double *work = malloc(sizeof(double) * (size_t)(2 * hw + 2 * table + 2 * (wd + 1) + 2 * wd));         \
        long *index = malloc(sizeof(long) * (size_t)(2 * (h + wd)));                                          \
        if (!work || !index) {                                                                                \
            free(work);                                                                                       \
            free(index);                                                                                      \
            return 1;                                                                                         \
        }                                                                                                     \
        double *sums = work, *t = sums + 2 * hw, *row = t + 2 * table, *oa = row + 2 * (wd + 1), *ob = oa + wd; \
        long *row_lo = index, *row_hi = row_lo + h, *col_lo = row_hi + h, *col_hi = col_lo + wd;              \
        for (long r = 0; r < h; ++r) adjoint_range(r, h, P, row_lo + r, row_hi + r);                         \
        for (long j = 0; j < wd; ++j) adjoint_range(j, wd, Q, col_lo + j, col_hi + j);                       \
        long run[4];                                                                                          \
        sliding_run(col_lo, col_hi, wd, run, run + 1, run + 2, run + 3);                                      \
        for (long i = 0; i < n; ++i) {                                                                        \
            for (long k = 0; k < groups; ++k) {                                                               \
                const T *mu = mean + (i * groups + k) * hw, *rs = rstd + (i * groups + k) * hw;               \
                T c0 = shift[i * groups + k];                                                                 \
                for (long p = 0; p < 2 * hw; ++p) sums[p] = 0;                                                \
                for (long ch = 0; ch < g; ++ch) {                                                             \
                    long at = (i * c + k * g + ch) * hw;                                                      \
                    const T *gr = dy + at, *xr = x + at;                                                      \
                    T wc = w[k * g + ch];                                                                     \
                    double sum_w = 0, sum_b = 0;                                                              \
                    _Pragma("omp simd reduction(+ : sum_w, sum_b)") for (long p = 0; p < hw; ++p) {           \
                        T x_hat = (xr[p] - c0 - mu[p]) * rs[p];                                               \
                        sums[2 * p] += gr[p] * wc;                                                            \
                        sums[2 * p + 1] += gr[p] * wc * x_hat;                                                \
                        sum_w += gr[p] * x_hat;                                                               \
                        sum_b += gr[p];                                                                       \
                    }                                                                                         \
                    dw[k * g + ch] += sum_w;                                                                  \
                    db[k * g + ch] += sum_b;                                                                  \
                }                                                                                             \
                for (long p = 0; p < hw; ++p) {                                                               \
                    double r = rs[p] * inverse_m, bv = sums[2 * p + 1] * r * rs[p];                           \
                    sums[2 * p] = sums[2 * p] * r - bv * mu[p];                                               \
                    sums[2 * p + 1] = bv;                                                                     \
                }                                                                                             \
                summed_area2(sums, t, h, wd);                                                                 \
                for (long r = 0; r < h; ++r) {                                                                \
                    box_row2(t, wd, row_lo[r], row_hi[r], col_lo, col_hi, run, row, oa, ob);                       \
                    for (long j = 0; j < wd; ++j) {                                                           \
                        sums[r * wd + j] = oa[j];                                                             \
                        sums[hw + r * wd + j] = ob[j];                                                        \
                    }                                                                                         \
                }                                                                                             \
                const double *adj_a = sums, *adj_b = sums + hw;                                               \
                for (long ch = 0; ch < g; ++ch) {                                                             \
                    long at = (i * c + k * g + ch) * hw;                                                      \
                    const T *gr = dy + at, *xr = x + at;                                                      \
                    T *out = dx + at, wc = w[k * g + ch];                                                     \
                    for (long p = 0; p < hw; ++p)                                                             \
                        out[p] = gr[p] * wc * rs[p] - (T)adj_a[p] - (xr[p] - c0) * (T)adj_b[p];              \
                }                                                                                             \
            }                                                                                                 \
        }                                                                                                     \
        free(work);                                                                                           \
        free(index);                                                                                          \
        return 0;                                                                                             \
    }

DEFINE_LCN(float, f32, sqrtf)
DEFINE_LCN(double, f64, sqrt)

/* Mixture Normalization (robustbench_norm/norms/mixture.py) over x (N, C, P), contiguous, one K-component
 * mixture per channel (prior, mu, v: (C, K), fixed; EM runs in Python). For each channel, with
 * tau_k(x) = softmax_k(log prior_k - log(v_k) / 2 - (x - mu_k)^2 / (2 v_k)):
 *
 *   forward:  M_k = sum tau_k (floored at the dtype's smallest normal), m_k = sum tau_k x / M_k,
 *             s_k = sum tau_k (x - m_k)^2 / M_k (training; given m_k, s_k in eval), a_k = (prior_k (s_k + eps))^-1/2,
 *             x_hat = sum_k tau_k a_k (x - m_k),  y = x_hat w + b;
 *   backward: the formulas of mixture._input_grad (with g = dy w): per component, in training,
 *             c1_k = -a_k sum(g tau_k) / M_k and c2_k = -a_k sum(g tau_k e_k) / (2 (s_k + eps) M_k), e_k = x - m_k;
 *             T_k = (g a_k + c1_k) e_k + c2_k (e_k^2 - s_k),  E_k = g a_k + c1_k + 2 c2_k e_k
 *             (eval: T_k = g a_k e_k, E_k = g a_k); D_k = (x - mu_k) / v_k;
 *             dx = sum_k tau_k (E_k - T_k D_k) + (sum_k tau_k T_k) (sum_k tau_k D_k),
 *             dw = sum dy x_hat, db = sum dy.
 *
 * One channel at a time, in chunks of MIXTURE_CHUNK values gathered into a contiguous buffer (so every pass
 * over a chunk stays in the cache), every loop running over the values (vectorised); the posteriors are
 * recomputed for each pass over the channel (three forward in training, two backward) rather than stored;
 * the sums are taken in double. exp is evaluated by range reduction to [-ln 2 / 2, ln 2 / 2] and a Taylor
 * polynomial (degree 7 in float, 13 in double: below the dtype's rounding), written out so that the loops
 * vectorise; the softmax only exponentiates values <= 0. Both return 1 when they cannot allocate the
 * scratch buffers, 0 otherwise. */

static inline float exp_nonpositive_f32(float x) {
    x = x < -87.0f ? -87.0f : x;
    float k = __builtin_rintf(x * 1.44269504088896341f);
    float r = x - k * 0.693145751953125f - k * 1.42860682030941723212e-6f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    int bits = ((int)k + 127) << 23;
    float scale;
    __builtin_memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline double exp_nonpositive_f64(double x) {
    x = x < -708.0 ? -708.0 : x;
    double k = __builtin_rint(x * 1.44269504088896340736);
    double r = x - k * 6.93147180369123816490e-1 - k * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;
    static const double inverse_factorials[] = {1.0 / 479001600, 1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880,
                                                1.0 / 40320, 1.0 / 5040, 1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6,
                                                0.5, 1.0, 1.0};
    for (int i = 0; i < 13; ++i) p = p * r + inverse_factorials[i];
    long long bits = ((long long)k + 1023) << 52;
    double scale;
    __builtin_memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Values [start, start + m) of channel ch of x (N, C, P), in (n, p) order, copied to or from the contiguous buf. */
#define DEFINE_CHANNEL_COPY(T, SUFFIX)                                                                         \
    static void channel_gather_##SUFFIX(const T *x, long c, long p, long ch, long start, long m, T *buf) {   \
        for (long done = 0; done < m;) {                                                                      \
            long i = (start + done) / p, offset = (start + done) - i * p;                                     \
            long count = p - offset < m - done ? p - offset : m - done;                                       \
            memcpy(buf + done, x + (i * c + ch) * p + offset, sizeof(T) * (size_t)count);                     \
            done += count;                                                                                    \
        }                                                                                                     \
    }                                                                                                         \
    static void channel_scatter_##SUFFIX(T *x, long c, long p, long ch, long start, long m, const T *buf) {  \
        for (long done = 0; done < m;) {                                                                      \
            long i = (start + done) / p, offset = (start + done) - i * p;                                     \
            long count = p - offset < m - done ? p - offset : m - done;                                       \
            memcpy(x + (i * c + ch) * p + offset, buf + done, sizeof(T) * (size_t)count);                     \
            done += count;                                                                                    \
        }                                                                                                     \
    }

DEFINE_CHANNEL_COPY(float, f32)
DEFINE_CHANNEL_COPY(double, f64)

#define MIXTURE_CHUNK 1024

#define DEFINE_MIXTURE(T, SUFFIX, LOG, SQRT)                                                                   \
    /* Values [start, start + m) of channel ch (in (n, p) order) into xs, their posteriors into                \
     * tau[k * MIXTURE_CHUNK + l]; top is scratch. */                                                         \
    static void mixture_chunk_##SUFFIX(const T *x, long c, long p, long ch, long K, long start, long m,       \
                                       const T *log_const, const T *mu, const T *half_inv_v, T *xs, T *tau,   \
                                       T *top) {                                                              \
        channel_gather_##SUFFIX(x, c, p, ch, start, m, xs);                                                   \
        for (long k = 0; k < K; ++k) {                                                                        \
            T *t = tau + k * MIXTURE_CHUNK;                                                                   \
            for (long l = 0; l < m; ++l) {                                                                    \
                T d = xs[l] - mu[k];                                                                          \
                t[l] = log_const[k] - d * d * half_inv_v[k];                                                  \
                top[l] = k == 0 || t[l] > top[l] ? t[l] : top[l];                                             \
            }                                                                                                 \
        }                                                                                                     \
        T total[MIXTURE_CHUNK];                                                                               \
        for (long l = 0; l < m; ++l) total[l] = 0;                                                            \
        for (long k = 0; k < K; ++k) {                                                                        \
            T *t = tau + k * MIXTURE_CHUNK;                                                                   \
            for (long l = 0; l < m; ++l) total[l] += (t[l] = exp_nonpositive_##SUFFIX(t[l] - top[l]));        \
        }                                                                                                     \
        for (long l = 0; l < m; ++l) total[l] = (T)1 / total[l];                                              \
        for (long k = 0; k < K; ++k)                                                                          \
            for (long l = 0; l < m; ++l) tau[k * MIXTURE_CHUNK + l] *= total[l];                              \
    }                                                                                                         \
                                                                                                              \
    /* Per-component constants of channel ch's mixture. */                                                    \
    static void mixture_setup_##SUFFIX(const T *prior, const T *mean, const T *var, long ch, long K,          \
                                       T *log_const, T *mu, T *half_inv_v) {                                  \
        for (long k = 0; k < K; ++k) {                                                                        \
            log_const[k] = LOG(prior[ch * K + k]) - (T)0.5 * LOG(var[ch * K + k]);                            \
            mu[k] = mean[ch * K + k];                                                                         \
            half_inv_v[k] = (T)0.5 / var[ch * K + k];                                                         \
        }                                                                                                     \
    }                                                                                                         \
                                                                                                              \
    /* Posterior mass (raw), mean and variance of each component over all L = n p values of channel ch: the \
     * M-step's statistics and the training forward's normalising moments, at [ch * K + k]. sums is scratch   \
     * of 3 K doubles. */                                                                                     \
    static void mixture_moments_##SUFFIX(const T *x, long n, long c, long p, long ch, long K, const T *log_const, \
                                         const T *mu, const T *half_inv_v, double tiny, T *xs, T *tau, T *top,  \
                                         double *sums, T *mass_out, T *mean_out, T *var_out) {                 \
        long L = n * p;                                                                                       \
        double *mass = sums, *first = mass + K, *second = first + K;                                          \
        for (long k = 0; k < 3 * K; ++k) sums[k] = 0;                                                         \
        for (long start = 0; start < L; start += MIXTURE_CHUNK) {                                             \
            long m = L - start < MIXTURE_CHUNK ? L - start : MIXTURE_CHUNK;                                   \
            mixture_chunk_##SUFFIX(x, c, p, ch, K, start, m, log_const, mu, half_inv_v, xs, tau, top);        \
            for (long k = 0; k < K; ++k) {                                                                    \
                const T *t = tau + k * MIXTURE_CHUNK;                                                         \
                double mass_k = 0, first_k = 0;                                                               \
                _Pragma("omp simd reduction(+ : mass_k, first_k)") for (long l = 0; l < m; ++l) {             \
                    mass_k += t[l];                                                                           \
                    first_k += t[l] * xs[l];                                                                  \
                }                                                                                             \
                mass[k] += mass_k;                                                                            \
                first[k] += first_k;                                                                          \
            }                                                                                                 \
        }                                                                                                     \
        for (long k = 0; k < K; ++k) {                                                                        \
            mass_out[ch * K + k] = (T)mass[k];                                                                \
            mass[k] = mass[k] > tiny ? mass[k] : tiny;                                                        \
            mean_out[ch * K + k] = (T)(first[k] / mass[k]);                                                   \
        }                                                                                                     \
        for (long start = 0; start < L; start += MIXTURE_CHUNK) {                                             \
            long m = L - start < MIXTURE_CHUNK ? L - start : MIXTURE_CHUNK;                                   \
            mixture_chunk_##SUFFIX(x, c, p, ch, K, start, m, log_const, mu, half_inv_v, xs, tau, top);        \
            for (long k = 0; k < K; ++k) {                                                                    \
                const T *t = tau + k * MIXTURE_CHUNK;                                                         \
                T m_k = mean_out[ch * K + k];                                                                 \
                double second_k = 0;                                                                          \
                _Pragma("omp simd reduction(+ : second_k)") for (long l = 0; l < m; ++l) {                    \
                    T d = xs[l] - m_k;                                                                        \
                    second_k += t[l] * d * d;                                                                 \
                }                                                                                             \
                second[k] += second_k;                                                                        \
            }                                                                                                 \
        }                                                                                                     \
        for (long k = 0; k < K; ++k) var_out[ch * K + k] = (T)(second[k] / mass[k]);                          \
    }                                                                                                         \
                                                                                                              \
    /* EM on samples (C, M) (mixture.fit_mixture after its start): per iteration the moments above, then      \
     * prior = max(mass / M, min_prior), mean, var = max(var, var_floor); prior, mean, var updated in place. */ \
    int mixture_em_##SUFFIX(const T *samples, long c, long m, long K, long iterations, double var_floor,      \
                            double min_prior, double tiny, T *prior, T *mean, T *var) {                       \
        T *work = malloc(sizeof(T) * (size_t)((K + 2) * MIXTURE_CHUNK + 3 * K));                              \
        double *sums = malloc(sizeof(double) * (size_t)(3 * K));                                              \
        if (!work || !sums) {                                                                                 \
            free(work);                                                                                       \
            free(sums);                                                                                       \
            return 1;                                                                                         \
        }                                                                                                     \
        T *tau = work, *xs = tau + K * MIXTURE_CHUNK, *top = xs + MIXTURE_CHUNK, *log_const = top + MIXTURE_CHUNK; \
        T *mu = log_const + K, *half_inv_v = mu + K;                                                          \
        for (long it = 0; it < iterations; ++it) {                                                            \
            for (long ch = 0; ch < c; ++ch) {                                                                 \
                mixture_setup_##SUFFIX(prior, mean, var, ch, K, log_const, mu, half_inv_v);                   \
                mixture_moments_##SUFFIX(samples, 1, c, m, ch, K, log_const, mu, half_inv_v, tiny, xs, tau, top, \
                                         sums, prior, mean, var);                                             \
                for (long k = 0; k < K; ++k) {                                                                \
                    T share = prior[ch * K + k] / (T)m, floor_v = (T)var_floor;                               \
                    prior[ch * K + k] = share > (T)min_prior ? share : (T)min_prior;                          \
                    var[ch * K + k] = var[ch * K + k] > floor_v ? var[ch * K + k] : floor_v;                  \
                }                                                                                             \
            }                                                                                                 \
        }                                                                                                     \
        free(work);                                                                                           \
        free(sums);                                                                                           \
        return 0;                                                                                             \
    }                                                                                                         \
                                                                                                              \
    int mixture_forward_##SUFFIX(const T *x, const T *w, const T *b, const T *prior, const T *mean,          \
                                 const T *var, T *norm_mean, T *norm_var, T *mass_out, int training, T *y,    \
                                 long n, long c, long p, long K, double eps, double tiny) {                   \
        long L = n * p;                                                                                       \
        T *work = malloc(sizeof(T) * (size_t)((3 * K + 3) * MIXTURE_CHUNK));                                  \
        double *sums = malloc(sizeof(double) * (size_t)(3 * K));                                              \
        if (!work || !sums) {                                                                                 \
            free(work);                                                                                       \
            free(sums);                                                                                       \
            return 1;                                                                                         \
        }                                                                                                     \
        T *tau = work, *xs = tau + K * MIXTURE_CHUNK, *top = xs + MIXTURE_CHUNK, *x_hat = top + MIXTURE_CHUNK; \
        T *log_const = x_hat + MIXTURE_CHUNK, *mu = log_const + K, *half_inv_v = mu + K;                     \
        for (long ch = 0; ch < c; ++ch) {                                                                     \
            mixture_setup_##SUFFIX(prior, mean, var, ch, K, log_const, mu, half_inv_v);                       \
            if (training) {                                                                                   \
                mixture_moments_##SUFFIX(x, n, c, p, ch, K, log_const, mu, half_inv_v, tiny, xs, tau, top, sums, \
                                         mass_out, norm_mean, norm_var);                                      \
                for (long k = 0; k < K; ++k)                                                                  \
                    mass_out[ch * K + k] = mass_out[ch * K + k] > (T)tiny ? mass_out[ch * K + k] : (T)tiny;   \
            }                                                                                                 \
            T wc = w[ch], bc = b[ch];                                                                         \
            for (long start = 0; start < L; start += MIXTURE_CHUNK) {                                         \
                long m = L - start < MIXTURE_CHUNK ? L - start : MIXTURE_CHUNK;                               \
                mixture_chunk_##SUFFIX(x, c, p, ch, K, start, m, log_const, mu, half_inv_v, xs, tau, top);    \
                for (long l = 0; l < m; ++l) x_hat[l] = 0;                                                    \
                for (long k = 0; k < K; ++k) {                                                                \
                    const T *t = tau + k * MIXTURE_CHUNK;                                                     \
                    T m_k = norm_mean[ch * K + k];                                                            \
                    T scale = (T)1 / SQRT(prior[ch * K + k] * (norm_var[ch * K + k] + (T)eps));               \
                    for (long l = 0; l < m; ++l) x_hat[l] += t[l] * scale * (xs[l] - m_k);                    \
                }                                                                                             \
                for (long l = 0; l < m; ++l) x_hat[l] = x_hat[l] * wc + bc;                                   \
                channel_scatter_##SUFFIX(y, c, p, ch, start, m, x_hat);                                       \
            }                                                                                                 \
        }                                                                                                     \
        free(work);                                                                                           \
        free(sums);                                                                                           \
        return 0;                                                                                             \
    }                                                                                                         \
                                                                                                              \
    int mixture_backward_##SUFFIX(const T *dy, const T *x, const T *w, const T *prior, const T *mean,        \
                                  const T *var, const T *norm_mean, const T *norm_var, const T *mass,        \
                                  int training, T *dx, double *dw, double *db, long n, long c, long p, long K, \
                                  double eps) {                                                               \
        long L = n * p;                                                                                       \
        T *work = malloc(sizeof(T) * (size_t)((K + 7) * MIXTURE_CHUNK + 8 * K));                              \
        double *sums = malloc(sizeof(double) * (size_t)(2 * K));                                              \
        if (!work || !sums) {                                                                                 \
            free(work);                                                                                       \
            free(sums);                                                                                       \
            return 1;                                                                                         \
        }                                                                                                     \
        T *tau = work, *xs = tau + K * MIXTURE_CHUNK, *top = xs + MIXTURE_CHUNK, *gs = top + MIXTURE_CHUNK;   \
        T *sum = gs + MIXTURE_CHUNK, *total_t = sum + MIXTURE_CHUNK, *total_d = total_t + MIXTURE_CHUNK;      \
        T *x_hat = total_d + MIXTURE_CHUNK, *log_const = x_hat + MIXTURE_CHUNK, *mu = log_const + K;          \
        T *half_inv_v = mu + K, *scale = half_inv_v + K, *c1 = scale + K, *c2 = c1 + K, *m_k = c2 + K;        \
        T *s_k = m_k + K;                                                                                     \
        double *gathered = sums, *spread = gathered + K;                                                      \
        for (long ch = 0; ch < c; ++ch) {                                                                     \
            mixture_setup_##SUFFIX(prior, mean, var, ch, K, log_const, mu, half_inv_v);                       \
            T wc = w[ch];                                                                                     \
            double sum_w = 0, sum_b = 0;                                                                      \
            for (long k = 0; k < K; ++k) {                                                                    \
                m_k[k] = norm_mean[ch * K + k];                                                               \
                s_k[k] = norm_var[ch * K + k];                                                                \
                scale[k] = (T)1 / SQRT(prior[ch * K + k] * (s_k[k] + (T)eps));                                \
                gathered[k] = spread[k] = 0;                                                                  \
            }                                                                                                 \
            for (long start = 0; start < L; start += MIXTURE_CHUNK) {                                         \
                long m = L - start < MIXTURE_CHUNK ? L - start : MIXTURE_CHUNK;                               \
                mixture_chunk_##SUFFIX(x, c, p, ch, K, start, m, log_const, mu, half_inv_v, xs, tau, top);    \
                channel_gather_##SUFFIX(dy, c, p, ch, start, m, gs);                                          \
                for (long l = 0; l < m; ++l) x_hat[l] = 0;                                                    \
                for (long k = 0; k < K; ++k) {                                                                \
                    const T *t = tau + k * MIXTURE_CHUNK;                                                     \
                    double gathered_k = 0, spread_k = 0;                                                      \
                    _Pragma("omp simd reduction(+ : gathered_k, spread_k)") for (long l = 0; l < m; ++l) {    \
                        T e = xs[l] - m_k[k], gt = gs[l] * wc * t[l];                                         \
                        x_hat[l] += t[l] * scale[k] * e;                                                      \
                        gathered_k += gt;                                                                     \
                        spread_k += gt * e;                                                                    \
                    }                                                                                         \
                    gathered[k] += gathered_k;                                                                \
                    spread[k] += spread_k;                                                                    \
                }                                                                                             \
                _Pragma("omp simd reduction(+ : sum_w, sum_b)") for (long l = 0; l < m; ++l) {                \
                    sum_w += gs[l] * x_hat[l];                                                                \
                    sum_b += gs[l];                                                                           \
                }                                                                                             \
            }                                                                                                 \
            dw[ch] = sum_w;                                                                                   \
            db[ch] = sum_b;                                                                                   \
            for (long k = 0; k < K; ++k) {                                                                    \
                c1[k] = training ? (T)(-scale[k] * gathered[k] / mass[ch * K + k]) : 0;                       \
                c2[k] = training ? (T)(-0.5 * scale[k] * spread[k] / ((s_k[k] + eps) * mass[ch * K + k])) : 0; \
            }                                                                                                 \
            for (long start = 0; start < L; start += MIXTURE_CHUNK) {                                         \
                long m = L - start < MIXTURE_CHUNK ? L - start : MIXTURE_CHUNK;                               \
                mixture_chunk_##SUFFIX(x, c, p, ch, K, start, m, log_const, mu, half_inv_v, xs, tau, top);    \
                channel_gather_##SUFFIX(dy, c, p, ch, start, m, gs);                                          \
                for (long l = 0; l < m; ++l) sum[l] = total_t[l] = total_d[l] = 0;                            \
                for (long k = 0; k < K; ++k) {                                                                \
                    const T *t = tau + k * MIXTURE_CHUNK;                                                     \
                    T inverse_v = 2 * half_inv_v[k];                                                          \
                    for (long l = 0; l < m; ++l) {                                                            \
                        T e = xs[l] - m_k[k], ga = gs[l] * wc * scale[k];                                     \
                        T t_k = (ga + c1[k]) * e + c2[k] * (e * e - s_k[k]), e_k = ga + c1[k] + 2 * c2[k] * e; \
                        T d_k = (xs[l] - mu[k]) * inverse_v;                                                  \
                        sum[l] += t[l] * (e_k - t_k * d_k);                                                   \
                        total_t[l] += t[l] * t_k;                                                             \
                        total_d[l] += t[l] * d_k;                                                             \
                    }                                                                                         \
                }                                                                                             \
                for (long l = 0; l < m; ++l) sum[l] += total_t[l] * total_d[l];                               \
                channel_scatter_##SUFFIX(dx, c, p, ch, start, m, sum);                                        \
            }                                                                                                 \
        }                                                                                                     \
        free(work);                                                                                           \
        free(sums);                                                                                           \
        return 0;                                                                                             \
    }

DEFINE_MIXTURE(float, f32, logf, sqrtf)
DEFINE_MIXTURE(double, f64, log, sqrt)
