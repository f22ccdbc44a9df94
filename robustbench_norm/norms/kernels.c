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
 * (dw and db: each channel's sum over a block in SIMD lanes, added into a double per channel, returned in
 * the input dtype.)
 *
 * Both walk one sample at a time in blocks of positions whose C rows fill about BLOCK_BYTES, so the values a
 * block reads two or three times stay in the cache: each pass over the tensor reads x (and dy) from memory
 * about once. The inner loops run over positions, which are independent, so the compiler vectorises them
 * without reassociating any sum. The forward and the backward return 1 when they cannot allocate their
 * block's statistics, 0 otherwise. Every kernel exists for float and double (suffixes _f32, _f64).
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* Positions per block: the block's C rows fill about BLOCK_BYTES (half of a 512 KB L2 cache), so that they
 * stay in the cache between passes and each row is a long contiguous run (the hardware prefetcher follows
 * it); at least 16, at most the map. */
#define BLOCK_BYTES (256 * 1024)
static long positional_block(long c, size_t size, long p) {
    long block = (long)(BLOCK_BYTES / ((size_t)c * size)) / 16 * 16;
    block = block < 16 ? 16 : block;
    return block < p ? block : p;
}

#define DEFINE_POSITIONAL_NORM(T, SUFFIX, SQRT)                                                                \
    int positional_norm_forward_##SUFFIX(const T *x, const T *w, const T *b, T *y, T *mean_out, T *rstd_out,   \
                                         long n, long c, long p, double eps) {                                 \
        long block = positional_block(c, sizeof(T), p);                                                        \
        T *mean = malloc(sizeof(T) * (size_t)(2 * block)), *rstd = mean + block;                               \
        if (!mean) return 1;                                                                                   \
        for (long i = 0; i < n; ++i) {                                                                         \
            const T *xs = x + i * c * p;                                                                       \
            T *ys = y + i * c * p;                                                                             \
            for (long p0 = 0; p0 < p; p0 += block) {                                                           \
                long m = p - p0 < block ? p - p0 : block;                                                      \
                for (long j = 0; j < m; ++j) mean[j] = rstd[j] = 0;                                            \
                for (long k = 0; k < c; ++k) {                                                                 \
                    const T *row = xs + k * p + p0;                                                            \
                    for (long j = 0; j < m; ++j) mean[j] += row[j];                                            \
                }                                                                                              \
                for (long j = 0; j < m; ++j) mean[j] /= (T)c;                                                  \
                for (long k = 0; k < c; ++k) {                                                                 \
                    const T *row = xs + k * p + p0;                                                            \
                    for (long j = 0; j < m; ++j) {                                                             \
                        T d = row[j] - mean[j];                                                                \
                        rstd[j] += d * d;                                                                      \
                    }                                                                                          \
                }                                                                                              \
                for (long j = 0; j < m; ++j) rstd[j] = (T)1 / SQRT(rstd[j] / (T)c + (T)eps);                   \
                for (long k = 0; k < c; ++k) {                                                                 \
                    const T *row = xs + k * p + p0;                                                            \
                    T *out = ys + k * p + p0, wk = w[k], bk = b[k];                                            \
                    for (long j = 0; j < m; ++j) out[j] = (row[j] - mean[j]) * rstd[j] * wk + bk;              \
                }                                                                                              \
                for (long j = 0; j < m; ++j) {                                                                 \
                    mean_out[i * p + p0 + j] = mean[j];                                                        \
                    rstd_out[i * p + p0 + j] = rstd[j];                                                        \
                }                                                                                              \
            }                                                                                                  \
        }                                                                                                      \
        free(mean);                                                                                            \
        return 0;                                                                                              \
    }                                                                                                          \
                                                                                                               \
    int positional_norm_backward_##SUFFIX(const T *dy, const T *x, const T *w, const T *mean, const T *rstd,   \
                                          T *dx, T *dw_out, T *db_out, long n, long c, long p) {               \
        long block = positional_block(c, sizeof(T), p);                                                        \
        T *sum_g = malloc(sizeof(T) * (size_t)(2 * block)), *sum_gx = sum_g + block;                           \
        double *dw = calloc((size_t)(2 * c), sizeof(double)), *db = dw + c;                                    \
        if (!sum_g || !dw) {                                                                                   \
            free(sum_g);                                                                                       \
            free(dw);                                                                                          \
            return 1;                                                                                          \
        }                                                                                                      \
        for (long i = 0; i < n; ++i) {                                                                         \
            const T *dys = dy + i * c * p, *xs = x + i * c * p;                                                \
            T *dxs = dx + i * c * p;                                                                           \
            for (long p0 = 0; p0 < p; p0 += block) {                                                           \
                long m = p - p0 < block ? p - p0 : block;                                                      \
                const T *mu = mean + i * p + p0, *rs = rstd + i * p + p0;                                      \
                for (long j = 0; j < m; ++j) sum_g[j] = sum_gx[j] = 0;                                         \
                for (long k = 0; k < c; ++k) {                                                                 \
                    const T *gr = dys + k * p + p0, *xr = xs + k * p + p0;                                     \
                    T wk = w[k], dw_k = 0, db_k = 0;                                                           \
                    _Pragma("omp simd reduction(+ : dw_k, db_k)") for (long j = 0; j < m; ++j) {               \
                        T x_hat = (xr[j] - mu[j]) * rs[j];                                                     \
                        sum_g[j] += gr[j] * wk;                                                                \
                        sum_gx[j] += gr[j] * wk * x_hat;                                                       \
                        dw_k += gr[j] * x_hat;                                                                 \
                        db_k += gr[j];                                                                         \
                    }                                                                                          \
                    dw[k] += dw_k;                                                                             \
                    db[k] += db_k;                                                                             \
                }                                                                                              \
                for (long j = 0; j < m; ++j) {                                                                 \
                    sum_g[j] /= (T)c;                                                                          \
                    sum_gx[j] /= (T)c;                                                                         \
                }                                                                                              \
                for (long k = 0; k < c; ++k) {                                                                 \
                    const T *gr = dys + k * p + p0, *xr = xs + k * p + p0;                                     \
                    T *out = dxs + k * p + p0, wk = w[k];                                                      \
                    for (long j = 0; j < m; ++j) {                                                             \
                        T x_hat = (xr[j] - mu[j]) * rs[j];                                                     \
                        out[j] = rs[j] * (gr[j] * wk - sum_g[j] - x_hat * sum_gx[j]);                          \
                    }                                                                                          \
                }                                                                                              \
            }                                                                                                  \
        }                                                                                                      \
        for (long k = 0; k < c; ++k) {                                                                         \
            dw_out[k] = (T)dw[k];                                                                              \
            db_out[k] = (T)db[k];                                                                              \
        }                                                                                                      \
        free(sum_g);                                                                                           \
        free(dw);                                                                                              \
        return 0;                                                                                              \
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
 * A row is read once from memory per kernel (its second pass hits the cache). Sums run in vectors of
 * VECTOR_BYTES (GCC / Clang vector extensions; one AVX2 register), several at once (see lane_sum). */
#define VECTOR_BYTES 32
#define LANES(T) ((long)(VECTOR_BYTES / sizeof(T)))
typedef float vec_f32 __attribute__((vector_size(VECTOR_BYTES)));
typedef double vec_f64 __attribute__((vector_size(VECTOR_BYTES)));
#define DEFINE_ROW_KERNELS(T, SUFFIX)                                                                          \
    /* Sums of a row in four vectors of partial sums (independent adds: none waits for the one before),        \
     * added together at the end; the tail (length not a multiple of 4 V) in a scalar. */                      \
    static inline vec_##SUFFIX load_##SUFFIX(const T *a) {                                                     \
        vec_##SUFFIX v;                                                                                        \
        memcpy(&v, a, sizeof v);                                                                               \
        return v;                                                                                              \
    }                                                                                                          \
                                                                                                               \
    static inline T total_##SUFFIX(const vec_##SUFFIX *s) {                                                    \
        vec_##SUFFIX all = (s[0] + s[1]) + (s[2] + s[3]);                                                      \
        T sum = 0;                                                                                             \
        for (int k = 0; k < LANES(T); ++k) sum += all[k];                                                      \
        return sum;                                                                                            \
    }                                                                                                          \
                                                                                                               \
    /* sum_l a[l] */                                                                                           \
    static inline T lane_sum_##SUFFIX(const T *a, long length) {                                               \
        const long V = LANES(T);                                                                               \
        vec_##SUFFIX s[4] = {{0}};                                                                             \
        long l = 0;                                                                                            \
        for (; l + 4 * V <= length; l += 4 * V)                                                                \
            for (int k = 0; k < 4; ++k) s[k] += load_##SUFFIX(a + l + k * V);                                  \
        T tail = 0;                                                                                            \
        for (; l < length; ++l) tail += a[l];                                                                  \
        return total_##SUFFIX(s) + tail;                                                                       \
    }                                                                                                          \
                                                                                                               \
    /* sum_l (a[l] - mu)^2 */                                                                                  \
    static inline T lane_centred_squares_##SUFFIX(const T *a, T mu, long length) {                             \
        const long V = LANES(T);                                                                               \
        vec_##SUFFIX s[4] = {{0}};                                                                             \
        long l = 0;                                                                                            \
        for (; l + 4 * V <= length; l += 4 * V)                                                                \
            for (int k = 0; k < 4; ++k) {                                                                      \
                vec_##SUFFIX d = load_##SUFFIX(a + l + k * V) - mu;                                            \
                s[k] += d * d;                                                                                 \
            }                                                                                                  \
        T tail = 0;                                                                                            \
        for (; l < length; ++l) tail += (a[l] - mu) * (a[l] - mu);                                             \
        return total_##SUFFIX(s) + tail;                                                                       \
    }                                                                                                          \
                                                                                                               \
    /* sum_l g[l], and sum_l g[l] * (a[l] - mu) into *dot */                                                   \
    static inline T lane_sum_dot_##SUFFIX(const T *g, const T *a, T mu, long length, T *dot) {                 \
        const long V = LANES(T);                                                                               \
        vec_##SUFFIX s[4] = {{0}}, t[4] = {{0}};                                                               \
        long l = 0;                                                                                            \
        for (; l + 4 * V <= length; l += 4 * V)                                                                \
            for (int k = 0; k < 4; ++k) {                                                                      \
                vec_##SUFFIX gk = load_##SUFFIX(g + l + k * V);                                                \
                s[k] += gk;                                                                                    \
                t[k] += gk * (load_##SUFFIX(a + l + k * V) - mu);                                              \
            }                                                                                                  \
        T sum = 0, d = 0;                                                                                      \
        for (; l < length; ++l) {                                                                              \
            sum += g[l];                                                                                       \
            d += g[l] * (a[l] - mu);                                                                           \
        }                                                                                                      \
        *dot = total_##SUFFIX(t) + d;                                                                          \
        return total_##SUFFIX(s) + sum;                                                                        \
    }                                                                                                          \
                                                                                                               \
    int row_moments_##SUFFIX(const T *x, T *mean, T *var, long rows, long length) {                            \
        for (long r = 0; r < rows; ++r) {                                                                      \
            const T *row = x + r * length;                                                                     \
            T mu = lane_sum_##SUFFIX(row, length) / (T)length;                                                 \
            mean[r] = mu;                                                                                      \
            var[r] = lane_centred_squares_##SUFFIX(row, mu, length) / (T)length;                               \
        }                                                                                                      \
        return 0;                                                                                              \
    }                                                                                                          \
                                                                                                               \
    int row_affine_##SUFFIX(const T *x, const T *mean, const T *a, const T *b, T *y, long rows, long length) { \
        for (long r = 0; r < rows; ++r) {                                                                      \
            const T *row = x + r * length;                                                                     \
            T *out = y + r * length, mu = mean[r], ar = a[r], br = b[r];                                       \
            _Pragma("omp simd") for (long l = 0; l < length; ++l) out[l] = (row[l] - mu) * ar + br;            \
        }                                                                                                      \
        return 0;                                                                                              \
    }                                                                                                          \
                                                                                                               \
    int row_grad_sums_##SUFFIX(const T *dy, const T *x, const T *mean, T *s1, T *s2, long rows, long length) { \
        for (long r = 0; r < rows; ++r)                                                                        \
            s1[r] = lane_sum_dot_##SUFFIX(dy + r * length, x + r * length, mean[r], length, s2 + r);           \
        return 0;                                                                                              \
    }                                                                                                          \
                                                                                                               \
    int row_grad_##SUFFIX(const T *dy, const T *x, const T *mean, const T *a, const T *p, const T *q, T *dx,   \
                          long rows, long length) {                                                            \
        for (long r = 0; r < rows; ++r) {                                                                      \
            const T *g = dy + r * length, *row = x + r * length;                                               \
            T *out = dx + r * length, mu = mean[r], ar = a[r], pr = p[r], qr = q[r];                           \
            _Pragma("omp simd") for (long l = 0; l < length; ++l) out[l] = g[l] * ar + (row[l] - mu) * pr + qr; \
        }                                                                                                      \
        return 0;                                                                                              \
    }

DEFINE_ROW_KERNELS(float, f32)
DEFINE_ROW_KERNELS(double, f64)

/* Running estimates (robustbench_norm/norms/standard.py, update_running_): running <- running + w (batch -
 * running), torch.lerp's formula (taken from the batch's end for w >= 0.5), only where the batch value is
 * finite. */
#define DEFINE_RUNNING_UPDATE(T, SUFFIX)                                                                       \
    static inline T running_value_##SUFFIX(T running, T batch, T w) {                                          \
        if (!isfinite(batch)) return running;                                                                  \
        return w < (T)0.5 ? running + w * (batch - running) : batch - (batch - running) * ((T)1 - w);          \
    }                                                                                                          \
                                                                                                               \
    int running_update_##SUFFIX(T *running, const T *batch, long count, double momentum) {                     \
        for (long i = 0; i < count; ++i)                                                                       \
            running[i] = running_value_##SUFFIX(running[i], batch[i], (T)momentum);                            \
        return 0;                                                                                              \
    }

DEFINE_RUNNING_UPDATE(float, f32)
DEFINE_RUNNING_UPDATE(double, f64)

/* The two ends of the backward of a fused instance-affine layer (ILM Norm, LocalNorm, Switchable Norm; see
 * robustbench_norm/norms/instance_affine.py): y = (x - m) scale + offset per instance (R = N C of them), the
 * head (scale, offset) a function of the instance moments m, v and the layer's parameters.
 *
 *   affine_backward_start:  work space: T values s = sum dy (= dL/doffset) and t = sum dy (x - m) (= dL/dscale),
 *                           computed here, and p, q (R each); zeroed doubles dL/dm, dL/dv (R each) and `extra`
 *                           more for the head (its parameters' gradients first). Returns 1 when it cannot
 *                           allocate them (nothing left allocated), 0 otherwise.
 *   affine_backward_finish: dx = dy scale + (x - m) p + q, p = 2 dL/dv / count, q = (dL/dm - scale s) / count;
 *                           the parameters' gradients (the first extra doubles, `params` tensors of sizes[k]
 *                           values one after the other) to grads[k] (T); frees the work space. */
#define DEFINE_AFFINE_BACKWARD(T, SUFFIX)                                                                      \
    static int affine_backward_start_##SUFFIX(const T *dy, const T *x, const T *m, long rows, long count,      \
                                              long extra, T **work, double **sums) {                           \
        *work = malloc(sizeof(T) * (size_t)(4 * rows));                                                        \
        *sums = calloc((size_t)(2 * rows + extra), sizeof(double));                                            \
        if (!*work || !*sums) {                                                                                \
            free(*work);                                                                                       \
            free(*sums);                                                                                       \
            return 1;                                                                                          \
        }                                                                                                      \
        row_grad_sums_##SUFFIX(dy, x, m, *work, *work + rows, rows, count);                                    \
        return 0;                                                                                              \
    }                                                                                                          \
                                                                                                               \
    static int affine_backward_finish_##SUFFIX(const T *dy, const T *x, const T *m, const T *scale, T *work,   \
                                               double *sums, T *dx, long rows, long count, long params,        \
                                               T *const *grads, const long *sizes) {                           \
        T *p = work + 2 * rows, *q = p + rows;                                                                 \
        const double *grad_m = sums, *grad_v = sums + rows, *grad_params = grad_v + rows;                      \
        for (long r = 0; r < rows; ++r) {                                                                      \
            p[r] = (T)(2 * grad_v[r] / (double)count);                                                         \
            q[r] = (T)((grad_m[r] - (double)scale[r] * (double)work[r]) / (double)count);                      \
        }                                                                                                      \
        row_grad_##SUFFIX(dy, x, m, scale, p, q, dx, rows, count);                                             \
        for (long k = 0; k < params; grad_params += sizes[k++])                                                \
            for (long i = 0; i < sizes[k]; ++i) grads[k][i] = (T)grad_params[i];                               \
        free(work);                                                                                            \
        free(sums);                                                                                            \
        return 0;                                                                                              \
    }

DEFINE_AFFINE_BACKWARD(float, f32)
DEFINE_AFFINE_BACKWARD(double, f64)

/* Pooled moments (the ILM and SwitchNorm heads): the mean and variance of n values m[k * stride] whose own
 * variances are v[k * stride] over equal counts (law of total variance), u times the biased one (u = 1, or
 * n' / (n' - 1) for the unbiased variance of the n' underlying values); and its backward, which adds into dm,
 * dv (stride apart) the gradient from d_mean, d_var. In double. */
#define DEFINE_POOLED_MOMENTS(T, SUFFIX)                                                                       \
    static void pooled_moments_##SUFFIX(const T *m, const T *v, long n, long stride, double u, double *mean,   \
                                        double *var) {                                                         \
        double sum = 0, biased = 0;                                                                            \
        for (long k = 0; k < n; ++k) sum += (double)m[k * stride];                                             \
        *mean = sum / (double)n;                                                                               \
        for (long k = 0; k < n; ++k) {                                                                         \
            double d = (double)m[k * stride] - *mean;                                                          \
            biased += (double)v[k * stride] + d * d;                                                           \
        }                                                                                                      \
        *var = biased / (double)n * u;                                                                         \
    }                                                                                                          \
                                                                                                               \
    static void pooled_moments_backward_##SUFFIX(const T *m, long n, long stride, double u, double mean,       \
                                                 double d_mean, double d_var, double *dm, double *dv) {        \
        double d_each = d_var * u / (double)n, centred_sum = 0;                                                \
        for (long k = 0; k < n; ++k) {                                                                         \
            double d = (double)m[k * stride] - mean;                                                           \
            dv[k * stride] += d_each;                                                                          \
            dm[k * stride] += 2 * d_each * d;                                                                  \
            centred_sum += d;                                                                                  \
        }                                                                                                      \
        double shift = (d_mean - 2 * d_each * centred_sum) / (double)n;                                        \
        for (long k = 0; k < n; ++k) dm[k * stride] += shift;                                                  \
    }

DEFINE_POOLED_MOMENTS(float, f32)
DEFINE_POOLED_MOMENTS(double, f64)

/* The head of ILM Norm (robustbench_norm/norms/ilm.py, steps 1-6) on the instance moments m, v (N, C) of one
 * batch: (scale, offset) per (n, c), y = (x - m) * scale + offset; and its backward. Per sample, with key
 * groups k of ks channels, standardisation groups g of pg channels, u(n) = n / max(n - 1, 1) over `count`
 * values per channel:
 *
 *   mk = mean_{c in k} m_c,  vk = u(ks count) mean_{c in k} (v_c + (m_c - mk)^2)       (likewise mg, vg)
 *   hm = W1 mk, hs = W1 vk,  gam = sigmoid(Wg relu(hs)),  bet = tanh(Wb relu(hm))      (W1: M x D, Wg, Wb: D x M)
 *   scale_c = (gam_k(c) + weight_c) / sqrt(vg(c) + eps),  offset_c = bet_k(c) + bias_c + (m_c - mg(c)) scale_c
 *
 * The forward keeps per sample (mk, vk, hm, hs, bet, gam, mg, rstd_g) in cache (4 D + 2 M + 2 G values) for
 * the backward, which takes dL/dscale and dL/doffset and returns dL/dm and dL/dv (N, C) and the parameter
 * gradients, summed over the batch into grad_w1 (M x D), grad_wg, grad_wb (D x M), grad_weight, grad_bias
 * (C), all in double; the chain rule of each step above in reverse. All math in double. */
#define DEFINE_ILM_HEAD(T, SUFFIX)                                                                             \
    static int ilm_head_forward_##SUFFIX(const T *m, const T *v, const T *w1, const T *wg, const T *wb,        \
                                         const T *weight, const T *bias, T *scale, T *offset, double *cache,   \
                                         long n, long c, long count, long ks, long pg, long M, double eps) {   \
        long D = c / ks, G = c / pg, stride = 4 * D + 2 * M + 2 * G;                                           \
        double uk = (double)(ks * count) / (double)(ks * count > 1 ? ks * count - 1 : 1);                      \
        double ug = (double)(pg * count) / (double)(pg * count > 1 ? pg * count - 1 : 1);                      \
        for (long i = 0; i < n; ++i) {                                                                         \
            const T *mi = m + i * c, *vi = v + i * c;                                                          \
            double *mk = cache + i * stride, *vk = mk + D, *hm = vk + D, *hs = hm + M, *bet = hs + M;          \
            double *gam = bet + D, *mg = gam + D, *rg = mg + G;                                                \
            for (long d = 0; d < D; ++d)                                                                       \
                pooled_moments_##SUFFIX(mi + d * ks, vi + d * ks, ks, 1, uk, mk + d, vk + d);                  \
            for (long g = 0; g < G; ++g)                                                                       \
                pooled_moments_##SUFFIX(mi + g * pg, vi + g * pg, pg, 1, ug, mg + g, rg + g);                  \
            for (long g = 0; g < G; ++g) rg[g] = 1.0 / sqrt(rg[g] + eps);                                      \
            for (long j = 0; j < M; ++j) {                                                                     \
                double sm = 0, sv = 0;                                                                         \
                for (long d = 0; d < D; ++d) {                                                                 \
                    sm += (double)w1[j * D + d] * mk[d];                                                       \
                    sv += (double)w1[j * D + d] * vk[d];                                                       \
                }                                                                                              \
                hm[j] = sm;                                                                                    \
                hs[j] = sv;                                                                                    \
            }                                                                                                  \
            for (long d = 0; d < D; ++d) {                                                                     \
                double zb = 0, zg = 0;                                                                         \
                for (long j = 0; j < M; ++j) {                                                                 \
                    zb += (double)wb[d * M + j] * (hm[j] > 0 ? hm[j] : 0);                                     \
                    zg += (double)wg[d * M + j] * (hs[j] > 0 ? hs[j] : 0);                                     \
                }                                                                                              \
                bet[d] = tanh(zb);                                                                             \
                gam[d] = 1.0 / (1.0 + exp(-zg));                                                               \
            }                                                                                                  \
            for (long ch = 0; ch < c; ++ch) {                                                                  \
                long k = ch / ks, g = ch / pg;                                                                 \
                double s = (gam[k] + (double)weight[ch]) * rg[g];                                              \
                scale[i * c + ch] = (T)s;                                                                      \
                offset[i * c + ch] = (T)(bet[k] + (double)bias[ch] + ((double)mi[ch] - mg[g]) * s);            \
            }                                                                                                  \
        }                                                                                                      \
        return 0;                                                                                              \
    }                                                                                                          \
                                                                                                               \
    static int ilm_head_backward_##SUFFIX(const T *m, const T *w1, const T *wg, const T *wb,                   \
                                          const T *weight, const double *cache, const T *grad_scale,           \
                                          const T *grad_offset, double *grad_m, double *grad_v,                \
                                          double *grad_w1, double *grad_wg, double *grad_wb,                   \
                                          double *grad_weight, double *grad_bias, long n, long c, long count,  \
                                          long ks, long pg, long M) {                                          \
        long D = c / ks, G = c / pg, stride = 4 * D + 2 * M + 2 * G;                                           \
        double uk = (double)(ks * count) / (double)(ks * count > 1 ? ks * count - 1 : 1);                      \
        double ug = (double)(pg * count) / (double)(pg * count > 1 ? pg * count - 1 : 1);                      \
        double *work = malloc(sizeof(double) * (size_t)(4 * D + 2 * M + 2 * G));                               \
        if (!work) return 1;                                                                                   \
        double *d_bet = work, *d_gam = d_bet + D, *d_mk = d_gam + D, *d_vk = d_mk + D, *d_hm = d_vk + D;       \
        double *d_hs = d_hm + M, *d_mg = d_hs + M, *d_vg = d_mg + G;                                           \
        for (long i = 0; i < n; ++i) {                                                                         \
            const T *mi = m + i * c, *gs = grad_scale + i * c, *go = grad_offset + i * c;                      \
            double *dm = grad_m + i * c, *dv = grad_v + i * c;                                                 \
            const double *mk = cache + i * stride, *vk = mk + D, *hm = vk + D, *hs = hm + M, *bet = hs + M;    \
            const double *gam = bet + D, *mg = gam + D, *rg = mg + G;                                          \
            for (long d = 0; d < D; ++d) d_bet[d] = d_gam[d] = 0;                                              \
            for (long g = 0; g < G; ++g) d_mg[g] = d_vg[g] = 0;                                                \
            for (long ch = 0; ch < c; ++ch) {                                                                  \
                long k = ch / ks, g = ch / pg;                                                                 \
                double gamma = gam[k] + (double)weight[ch], s = gamma * rg[g], centred = (double)mi[ch] - mg[g]; \
                double d_s = (double)gs[ch] + (double)go[ch] * centred, d_gamma = d_s * rg[g];                 \
                dm[ch] = (double)go[ch] * s;                                                                   \
                dv[ch] = 0;                                                                                    \
                d_mg[g] -= (double)go[ch] * s;                                                                 \
                d_vg[g] += d_s * gamma; /* d rstd_g, turned into d vg below */                                 \
                d_bet[k] += (double)go[ch];                                                                    \
                d_gam[k] += d_gamma;                                                                           \
                grad_bias[ch] += (double)go[ch];                                                               \
                grad_weight[ch] += d_gamma;                                                                    \
            }                                                                                                  \
            for (long g = 0; g < G; ++g) d_vg[g] *= -0.5 * rg[g] * rg[g] * rg[g];                              \
            for (long g = 0; g < G; ++g)                                                                       \
                pooled_moments_backward_##SUFFIX(mi + g * pg, pg, 1, ug, mg[g], d_mg[g], d_vg[g], dm + g * pg, \
                                                 dv + g * pg);                                                 \
            for (long d = 0; d < D; ++d) {                                                                     \
                d_bet[d] *= 1 - bet[d] * bet[d];  /* now d z_beta */                                           \
                d_gam[d] *= gam[d] * (1 - gam[d]); /* now d z_gamma */                                         \
            }                                                                                                  \
            for (long j = 0; j < M; ++j) {                                                                     \
                double em = hm[j] > 0 ? hm[j] : 0, es = hs[j] > 0 ? hs[j] : 0, sm = 0, ss = 0;                 \
                for (long d = 0; d < D; ++d) {                                                                 \
                    grad_wb[d * M + j] += d_bet[d] * em;                                                       \
                    grad_wg[d * M + j] += d_gam[d] * es;                                                       \
                    sm += (double)wb[d * M + j] * d_bet[d];                                                    \
                    ss += (double)wg[d * M + j] * d_gam[d];                                                    \
                }                                                                                              \
                d_hm[j] = hm[j] > 0 ? sm : 0;                                                                  \
                d_hs[j] = hs[j] > 0 ? ss : 0;                                                                  \
            }                                                                                                  \
            for (long d = 0; d < D; ++d) {                                                                     \
                double sm = 0, sv = 0;                                                                         \
                for (long j = 0; j < M; ++j) {                                                                 \
                    grad_w1[j * D + d] += d_hm[j] * mk[d] + d_hs[j] * vk[d];                                   \
                    sm += (double)w1[j * D + d] * d_hm[j];                                                     \
                    sv += (double)w1[j * D + d] * d_hs[j];                                                     \
                }                                                                                              \
                d_mk[d] = sm;                                                                                  \
                d_vk[d] = sv;                                                                                  \
            }                                                                                                  \
            for (long d = 0; d < D; ++d)                                                                       \
                pooled_moments_backward_##SUFFIX(mi + d * ks, ks, 1, uk, mk[d], d_mk[d], d_vk[d], dm + d * ks, \
                                                 dv + d * ks);                                                 \
        }                                                                                                      \
        free(work);                                                                                            \
        return 0;                                                                                              \
    }

DEFINE_ILM_HEAD(float, f32)
DEFINE_ILM_HEAD(double, f64)

/* ILM Norm on the CPU in one call each way (robustbench_norm/norms/ilm.py, _FusedILM): the instance moments
 * (row_moments), the head above, y = (x - m) * scale + offset (row_affine); stats holds (m, v, scale, offset),
 * each (N, C). The backward: the per-instance sums of dy and dy (x - m) (row_grad_sums), the head's backward,
 * then dx = dy * scale + (x - m) * P + Q with P = 2 dL/dv / count, Q = (dL/dm - scale sum dy) / count
 * (row_grad); the parameter gradients (encoder, decoders, weight, bias, in that order, one after the other)
 * are written in the input dtype into grads. The backward returns 1 when it cannot allocate its work space. */
#define DEFINE_ILM(T, SUFFIX)                                                                                  \
    int ilm_forward_##SUFFIX(const T *x, const T *w1, const T *wg, const T *wb, const T *weight, const T *bias, \
                             T *y, T *stats, double *cache, long n, long c, long count, long ks, long pg, long M, \
                             double eps) {                                                                     \
        T *m = stats, *v = m + n * c, *scale = v + n * c, *offset = scale + n * c;                             \
        row_moments_##SUFFIX(x, m, v, n * c, count);                                                           \
        ilm_head_forward_##SUFFIX(m, v, w1, wg, wb, weight, bias, scale, offset, cache, n, c, count, ks, pg, M, eps); \
        return row_affine_##SUFFIX(x, m, scale, offset, y, n * c, count);                                      \
    }                                                                                                          \
                                                                                                               \
    int ilm_backward_##SUFFIX(const T *dy, const T *x, const T *w1, const T *wg, const T *wb, const T *weight, \
                              const T *bias, const T *stats, const double *cache, T *dx, T *dw1, T *dwg,       \
                              T *dwb, T *dweight, T *dbias, long n, long c, long count, long ks, long pg,      \
                              long M, double eps) {                                                            \
        (void)bias, (void)eps; /* the forward's arguments (the same signature each way, native.call) */        \
        long D = c / ks, rows = n * c, sizes[] = {M * D, D * M, D * M, c, c};                                  \
        T *grads[] = {dw1, dwg, dwb, dweight, dbias};                                                          \
        const T *m = stats, *scale = m + 2 * rows;                                                             \
        T *work;                                                                                               \
        double *sums;                                                                                          \
        if (affine_backward_start_##SUFFIX(dy, x, m, rows, count, M * D + 2 * D * M + 2 * c, &work, &sums))    \
            return 1;                                                                                          \
        double *grad_w1 = sums + 2 * rows, *grad_wg = grad_w1 + M * D, *grad_wb = grad_wg + D * M;             \
        if (ilm_head_backward_##SUFFIX(m, w1, wg, wb, weight, cache, work + rows, work, sums, sums + rows,     \
                                       grad_w1, grad_wg, grad_wb, grad_wb + D * M, grad_wb + D * M + c, n, c,  \
                                       count, ks, pg, M)) {                                                    \
            free(work);                                                                                        \
            free(sums);                                                                                        \
            return 1;                                                                                          \
        }                                                                                                      \
        return affine_backward_finish_##SUFFIX(dy, x, m, scale, work, sums, dx, rows, count, 5, grads, sizes); \
    }

DEFINE_ILM(float, f32)
DEFINE_ILM(double, f64)

/* The heads of LocalNorm (robustbench_norm/norms/localnorm.py) and Switchable Norm (switchable.py) on the
 * instance moments m, v (N, C) of a batch: (scale, offset) per (n, c) with y = (x - m) * scale + offset, the
 * statistics they mix following from m and v by the law of total variance; each layer one C call each way
 * (instance moments, head, affine map; gradient sums, head backward, input gradient), the head in double.
 *
 * LocalNorm: sample i is in sub-batch group[i] (G sub-batches, each non-empty) with affine row row[group[i]]
 * of weight, bias (K, C). Per sub-batch g and channel c, over its |g| samples,
 *
 *   mu_gc = mean_i m_ic,  var_gc = mean_i (v_ic + (m_ic - mu_gc)^2),  r_gc = 1 / sqrt(var_gc + eps),
 *   scale_ic = weight_kc r_gc,  offset_ic = bias_kc + (m_ic - mu_gc) scale_ic      (k = row[g]).
 *
 * The cache keeps mu, r (G, C) and |g| (G). The backward takes dL/dscale (s) and dL/doffset (o) per (i, c):
 * with t = s + o (m - mu) (scale enters offset too), dL/dweight_kc += t r, dL/dbias_kc += o,
 * dL/dvar_gc = sum_i -t weight_kc r^3 / 2, dL/dmu_gc = -sum_i o scale - 2 dL/dvar sum_i (m - mu) / |g|, and
 * dL/dm_ic = o scale + (dL/dmu + 2 dL/dvar (m - mu)) / |g|, dL/dv_ic = dL/dvar / |g|.
 *
 * Switchable Norm: with softmax weights wm, wv of (IN, LN, BN) and the LN moments over the channels of a
 * sample, the BN moments over the samples of a channel (training) or the running estimates (eval),
 *
 *   mu_ic = wm0 m_ic + wm1 mu_ln_i + wm2 mu_bn_c,  var_ic = wv0 v_ic + wv1 var_ln_i + wv2 var_bn_c,
 *   scale_ic = weight_c / sqrt(var_ic + eps),  offset_ic = bias_c + (m_ic - mu_ic) scale_ic.
 *
 * In training the forward also updates the running estimates, running += momentum (batch - running), where
 * the batch value is finite. The cache keeps wm, wv (3 each), mu_ln, var_ln (N), mu_bn, var_bn (C), mu and
 * r = 1 / sqrt(var + eps) (N, C). */
#define DEFINE_SUBBATCH_HEADS(T, SUFFIX)                                                                       \
    int localnorm_forward_##SUFFIX(const T *x, const long *group, const long *row, const T *weight,            \
                                   const T *bias, T *y, T *stats, double *cache, long n, long c, long count,   \
                                   long G, long K, double eps) {                                               \
        T *m = stats, *v = m + n * c, *scale = v + n * c, *offset = scale + n * c;                             \
        double *mu = cache, *r = mu + G * c, *size = r + G * c;                                                \
        (void)K;                                                                                               \
        row_moments_##SUFFIX(x, m, v, n * c, count);                                                           \
        memset(cache, 0, sizeof(double) * (size_t)(2 * G * c + G));                                            \
        for (long i = 0; i < n; ++i) {                                                                         \
            size[group[i]] += 1;                                                                               \
            for (long j = 0; j < c; ++j) mu[group[i] * c + j] += (double)m[i * c + j];                         \
        }                                                                                                      \
        for (long g = 0; g < G; ++g)                                                                           \
            for (long j = 0; j < c; ++j) mu[g * c + j] /= size[g];                                             \
        for (long i = 0; i < n; ++i)                                                                           \
            for (long j = 0; j < c; ++j) {                                                                     \
                double d = (double)m[i * c + j] - mu[group[i] * c + j];                                        \
                r[group[i] * c + j] += (double)v[i * c + j] + d * d;                                           \
            }                                                                                                  \
        for (long g = 0; g < G; ++g)                                                                           \
            for (long j = 0; j < c; ++j) r[g * c + j] = 1.0 / sqrt(r[g * c + j] / size[g] + eps);              \
        for (long i = 0; i < n; ++i) {                                                                         \
            long g = group[i], k = row[g];                                                                     \
            for (long j = 0; j < c; ++j) {                                                                     \
                double s = (double)weight[k * c + j] * r[g * c + j];                                           \
                scale[i * c + j] = (T)s;                                                                       \
                offset[i * c + j] = (T)((double)bias[k * c + j] + ((double)m[i * c + j] - mu[g * c + j]) * s); \
            }                                                                                                  \
        }                                                                                                      \
        return row_affine_##SUFFIX(x, m, scale, offset, y, n * c, count);                                      \
    }                                                                                                          \
                                                                                                               \
    int localnorm_backward_##SUFFIX(const T *dy, const T *x, const long *group, const long *row,               \
                                    const T *weight, const T *bias, const T *stats, const double *cache,       \
                                    T *dx, T *dweight, T *dbias, long n, long c, long count, long G, long K,   \
                                    double eps) {                                                              \
        (void)bias, (void)eps; /* the forward's arguments (the same signature each way, native.call) */        \
        long rows = n * c, params = 2 * K * c, sizes[] = {K * c, K * c};                                       \
        T *grads[] = {dweight, dbias};                                                                         \
        const T *m = stats, *scale = m + 2 * rows;                                                             \
        const double *mu = cache, *r = mu + G * c, *size = r + G * c;                                          \
        T *work;                                                                                               \
        double *sums;                                                                                          \
        if (affine_backward_start_##SUFFIX(dy, x, m, rows, count, params + 3 * G * c, &work, &sums)) return 1; \
        const T *grad_sum = work, *grad_centred = work + rows;                                                 \
        double *grad_m = sums, *grad_v = grad_m + rows, *grad_weight = grad_v + rows;                          \
        double *grad_bias = grad_weight + K * c, *d_var = grad_bias + K * c, *d_mu = d_var + G * c;            \
        double *centred_sum = d_mu + G * c;                                                                    \
        for (long i = 0; i < n; ++i) {                                                                         \
            long g = group[i], k = row[g];                                                                     \
            for (long j = 0; j < c; ++j) {                                                                     \
                long ij = i * c + j, gj = g * c + j, kj = k * c + j;                                           \
                double d = (double)m[ij] - mu[gj], o = (double)grad_sum[ij], rg = r[gj];                       \
                double t = (double)grad_centred[ij] + o * d, s = (double)weight[kj] * rg;                      \
                grad_weight[kj] += t * rg;                                                                     \
                grad_bias[kj] += o;                                                                            \
                d_var[gj] -= 0.5 * t * (double)weight[kj] * rg * rg * rg;                                      \
                d_mu[gj] -= o * s;                                                                             \
                centred_sum[gj] += d;                                                                          \
                grad_m[ij] = o * s;                                                                            \
            }                                                                                                  \
        }                                                                                                      \
        for (long i = 0; i < n; ++i) {                                                                         \
            long g = group[i];                                                                                 \
            for (long j = 0; j < c; ++j) {                                                                     \
                long ij = i * c + j, gj = g * c + j;                                                           \
                double d_mu_all = d_mu[gj] - 2 * d_var[gj] * centred_sum[gj] / size[g];                        \
                grad_m[ij] += (d_mu_all + 2 * d_var[gj] * ((double)m[ij] - mu[gj])) / size[g];                 \
                grad_v[ij] = d_var[gj] / size[g];                                                              \
            }                                                                                                  \
        }                                                                                                      \
        return affine_backward_finish_##SUFFIX(dy, x, m, scale, work, sums, dx, rows, count, 2, grads, sizes); \
    }                                                                                                          \
                                                                                                               \
    static void softmax3_##SUFFIX(const T *logits, double *w) {                                                \
        double top = fmax(fmax((double)logits[0], (double)logits[1]), (double)logits[2]), total = 0;           \
        for (int z = 0; z < 3; ++z) total += w[z] = exp((double)logits[z] - top);                              \
        for (int z = 0; z < 3; ++z) w[z] /= total;                                                             \
    }                                                                                                          \
                                                                                                               \
    int switchnorm_forward_##SUFFIX(const T *x, T *running_mean, T *running_var, const T *mean_weight,         \
                                    const T *var_weight, const T *weight, const T *bias, T *y, T *stats,       \
                                    double *cache, long n, long c, long count, long training, double momentum, \
                                    double eps) {                                                              \
        T *m = stats, *v = m + n * c, *scale = v + n * c, *offset = scale + n * c;                             \
        double *wm = cache, *wv = wm + 3, *mu_ln = wv + 3, *var_ln = mu_ln + n, *mu_bn = var_ln + n;           \
        double *var_bn = mu_bn + c, *mu = var_bn + c, *r = mu + n * c;                                         \
        row_moments_##SUFFIX(x, m, v, n * c, count);                                                           \
        softmax3_##SUFFIX(mean_weight, wm);                                                                    \
        softmax3_##SUFFIX(var_weight, wv);                                                                     \
        for (long i = 0; i < n; ++i)                                                                           \
            pooled_moments_##SUFFIX(m + i * c, v + i * c, c, 1, 1, mu_ln + i, var_ln + i);                     \
        for (long j = 0; j < c; ++j) {                                                                         \
            if (training) {                                                                                    \
                pooled_moments_##SUFFIX(m + j, v + j, n, c, 1, mu_bn + j, var_bn + j);                         \
                running_mean[j] = running_value_##SUFFIX(running_mean[j], (T)mu_bn[j], (T)momentum);           \
                running_var[j] = running_value_##SUFFIX(running_var[j], (T)var_bn[j], (T)momentum);            \
            } else {                                                                                           \
                mu_bn[j] = (double)running_mean[j];                                                            \
                var_bn[j] = (double)running_var[j];                                                            \
            }                                                                                                  \
        }                                                                                                      \
        for (long i = 0; i < n; ++i)                                                                           \
            for (long j = 0; j < c; ++j) {                                                                     \
                long ij = i * c + j;                                                                           \
                mu[ij] = wm[0] * (double)m[ij] + wm[1] * mu_ln[i] + wm[2] * mu_bn[j];                          \
                r[ij] = 1.0 / sqrt(wv[0] * (double)v[ij] + wv[1] * var_ln[i] + wv[2] * var_bn[j] + eps);       \
                double s = (double)weight[j] * r[ij];                                                          \
                scale[ij] = (T)s;                                                                              \
                offset[ij] = (T)((double)bias[j] + ((double)m[ij] - mu[ij]) * s);                              \
            }                                                                                                  \
        return row_affine_##SUFFIX(x, m, scale, offset, y, n * c, count);                                      \
    }                                                                                                          \
                                                                                                               \
    int switchnorm_backward_##SUFFIX(const T *dy, const T *x, const T *running_mean, const T *running_var,     \
                                     const T *mean_weight, const T *var_weight, const T *weight,               \
                                     const T *bias, const T *stats, const double *cache, T *dx,                \
                                     T *dmean_weight, T *dvar_weight, T *dweight, T *dbias, long n, long c,    \
                                     long count, long training, double momentum, double eps) {                 \
        (void)running_mean, (void)running_var, (void)mean_weight, (void)var_weight, (void)bias;                \
        (void)momentum, (void)eps; /* the forward's arguments (the same signature each way, native.call) */    \
        long rows = n * c, extra = 6 + 2 * c + 2 * (n + c), sizes[] = {3, 3, c, c};                            \
        T *grads[] = {dmean_weight, dvar_weight, dweight, dbias};                                              \
        const T *m = stats, *v = m + rows, *scale = v + rows;                                                  \
        const double *wm = cache, *wv = wm + 3, *mu_ln = wv + 3, *var_ln = mu_ln + n, *mu_bn = var_ln + n;     \
        const double *var_bn = mu_bn + c, *mu = var_bn + c, *r = mu + rows;                                    \
        T *work;                                                                                               \
        double *sums;                                                                                          \
        if (affine_backward_start_##SUFFIX(dy, x, m, rows, count, extra, &work, &sums)) return 1;              \
        const T *grad_sum = work, *grad_centred = work + rows;                                                 \
        double *dm = sums, *dv = dm + rows, *d_wm = dv + rows, *d_wv = d_wm + 3, *grad_weight = d_wv + 3;      \
        double *grad_bias = grad_weight + c, *d_mu_ln = grad_bias + c, *d_var_ln = d_mu_ln + n;                \
        double *d_mu_bn = d_var_ln + n, *d_var_bn = d_mu_bn + c;                                               \
        for (long i = 0; i < n; ++i)                                                                           \
            for (long j = 0; j < c; ++j) {                                                                     \
                long ij = i * c + j;                                                                           \
                double o = (double)grad_sum[ij], s = (double)weight[j] * r[ij];                                \
                double t = (double)grad_centred[ij] + o * ((double)m[ij] - mu[ij]);                            \
                double d_var = -0.5 * t * (double)weight[j] * r[ij] * r[ij] * r[ij], d_mean = -o * s;          \
                grad_weight[j] += t * r[ij];                                                                   \
                grad_bias[j] += o;                                                                             \
                d_wm[0] += d_mean * (double)m[ij];                                                             \
                d_wm[1] += d_mean * mu_ln[i];                                                                  \
                d_wm[2] += d_mean * mu_bn[j];                                                                  \
                d_wv[0] += d_var * (double)v[ij];                                                              \
                d_wv[1] += d_var * var_ln[i];                                                                  \
                d_wv[2] += d_var * var_bn[j];                                                                  \
                dm[ij] = o * s + wm[0] * d_mean;                                                               \
                dv[ij] = wv[0] * d_var;                                                                        \
                d_mu_ln[i] += wm[1] * d_mean;                                                                  \
                d_var_ln[i] += wv[1] * d_var;                                                                  \
                d_mu_bn[j] += wm[2] * d_mean;                                                                  \
                d_var_bn[j] += wv[2] * d_var;                                                                  \
            }                                                                                                  \
        for (long i = 0; i < n; ++i)                                                                           \
            pooled_moments_backward_##SUFFIX(m + i * c, c, 1, 1, mu_ln[i], d_mu_ln[i], d_var_ln[i],            \
                                             dm + i * c, dv + i * c);                                          \
        for (long j = 0; training && j < c; ++j)                                                               \
            pooled_moments_backward_##SUFFIX(m + j, n, c, 1, mu_bn[j], d_mu_bn[j], d_var_bn[j], dm + j,        \
                                             dv + j);                                                          \
        double dot_m = wm[0] * d_wm[0] + wm[1] * d_wm[1] + wm[2] * d_wm[2];                                    \
        double dot_v = wv[0] * d_wv[0] + wv[1] * d_wv[1] + wv[2] * d_wv[2];                                    \
        for (int z = 0; z < 3; ++z) { /* through the softmaxes to the logits */                                \
            d_wm[z] = wm[z] * (d_wm[z] - dot_m);                                                               \
            d_wv[z] = wv[z] * (d_wv[z] - dot_v);                                                               \
        }                                                                                                      \
        return affine_backward_finish_##SUFFIX(dy, x, m, scale, work, sums, dx, rows, count, 4, grads, sizes); \
    }                                                                                                          \

DEFINE_SUBBATCH_HEADS(float, f32)
DEFINE_SUBBATCH_HEADS(double, f64)

/* Local Context Normalization (robustbench_norm/norms/lcn.py) over x (N, C, H, W), contiguous, in G groups of
 * g = C / G channels, with the clamped P x Q window of lcn.py: the window of pixel r starts at clamp(r - bp,
 * 0, H - P), bp = (P - 1) / 2, so the pixels of an axis share its L = H - P + 1 distinct windows. The
 * statistics are kept per window row: mean and rstd have shape (N, G, L_r, W), entry (s, j) that of the
 * window of column j in window row s (the border columns repeat the edge windows).
 *
 * Forward, per sample and group, in the input dtype (as the ATen path): shift the group's values by their
 * mean c0 (a shift only: it is kept and used as it is, so its rounding does not matter); form the per-pixel
 * channel sums s1 of x - c0 and s2 of (x - c0)^2; sum them over the windows, one axis at a time: windows of
 * up to 8 pixels along an axis directly (no rounding carries from window to window, where few values per
 * window can leave the variance a small fraction of their mean square), longer ones by running sums (down the
 * rows vectorised across the columns, along the rows eight rows at a time), whose rounding spans the window's
 * axis, not the map. Per window, mu' = S1 / m (the mean minus c0) and rstd = 1 / sqrt(max(S2 / m - mu'^2, 0)
 * + eps), m = g P Q; a 1 x 1 window takes its variance directly as sum_c (x_c - c0 - mu')^2 / g. Every pixel
 * takes the statistics of its window: y = (x - c0 - mu') * rstd * w + b.
 *
 * Backward: per pixel i, a_i = rstd_i / m * sum_group g_hat and b_i = rstd_i^2 / m * sum_group g_hat * x_hat
 * (g_hat = dy * w). Pixel k needs the adjoint window sums, over the outputs whose windows contain k: the
 * outputs that share a window are first added into it (L_r x L_c sums); then pixel k adds the windows that
 * start at most Q - 1 columns (P - 1 rows) before it: the same window sums along the rows, over the windows
 * padded with zeros, then a running sum down the rows. Then
 *   dx_k = g_hat_k * rstd_k - adj(a - b * mu')_k - (x_k - c0) * adj(b)_k,
 * and dw, db are summed in double. Every pass is one loop over the map or over a row (vectorised). Both
 * functions return 1 when they cannot allocate their per-map work space, 0 otherwise. */

/* One case of window_sums: K terms. */
#define WINDOW_SUMS_CASE(T, K)                                                                                 \
    case K:                                                                                                    \
        for (long j = 0; j < count; ++j) {                                                                     \
            T sum = m[j];                                                                                      \
            for (long t = 1; t < K; ++t) sum += m[j + t * stride];                                             \
            out[j] = sum;                                                                                      \
        }                                                                                                      \
        break;

#define DEFINE_WINDOW_SUMS(T, SUFFIX)                                                                          \
    /* out[j] = sum_{t < K} m[j + t * stride] for j < count, K = 1 .. 8 (the short windows): one pass, the     \
     * terms added in registers (K is a constant in each case, so the loop over j is vectorised). With rows of \
     * stride values stored one after the other, stride = 1 sums along the rows and stride = the row length    \
     * down the columns; an output is exact to rounding wherever its window stays inside the map (elsewhere it \
     * holds sums across rows or maps, which the caller ignores). */                                           \
    static void window_sums_##SUFFIX(const T *m, long count, long K, long stride, T *out) {                    \
        switch (K) {                                                                                           \
            WINDOW_SUMS_CASE(T, 1) WINDOW_SUMS_CASE(T, 2) WINDOW_SUMS_CASE(T, 3) WINDOW_SUMS_CASE(T, 4)        \
            WINDOW_SUMS_CASE(T, 5) WINDOW_SUMS_CASE(T, 6) WINDOW_SUMS_CASE(T, 7) WINDOW_SUMS_CASE(T, 8)        \
        }                                                                                                      \
    }                                                                                                          \
                                                                                                               \
    /* out[r * wd + j] = sum_{t < Q} v[r * wd + j + t] for j < wd - Q + 1 and r < rows: running sums along the \
     * rows, eight rows at a time (independent chains, so the adds overlap). */                                \
    static void row_running_sums_##SUFFIX(const T *v, long rows, long wd, long Q, T *out) {                    \
        long lc = wd - Q + 1;                                                                                  \
        for (long r0 = 0; r0 < rows; r0 += 8) {                                                                \
            long nr = rows - r0 < 8 ? rows - r0 : 8;                                                           \
            T acc[8] = {0};                                                                                    \
            for (long i = 0; i < nr; ++i) {                                                                    \
                const T *row = v + (r0 + i) * wd;                                                              \
                T sum = 0;                                                                                     \
                for (long t = 0; t < Q; ++t) sum += row[t];                                                    \
                acc[i] = sum;                                                                                  \
                out[(r0 + i) * wd] = sum;                                                                      \
            }                                                                                                  \
            if (nr == 8)                                                                                       \
                for (long j = 1; j < lc; ++j)                                                                  \
                    for (long i = 0; i < 8; ++i) {                                                             \
                        const T *row = v + (r0 + i) * wd;                                                      \
                        acc[i] += row[j + Q - 1] - row[j - 1];                                                 \
                        out[(r0 + i) * wd + j] = acc[i];                                                       \
                    }                                                                                          \
            else                                                                                               \
                for (long j = 1; j < lc; ++j)                                                                  \
                    for (long i = 0; i < nr; ++i) {                                                            \
                        const T *row = v + (r0 + i) * wd;                                                      \
                        acc[i] += row[j + Q - 1] - row[j - 1];                                                 \
                        out[(r0 + i) * wd + j] = acc[i];                                                       \
                    }                                                                                          \
        }                                                                                                      \
    }                                                                                                          \
                                                                                                               \
    /* out[r] = sum of the rows in[s] that exist (0 <= s < rows) with s in [r + first - P + 1, r + first], for \
     * r in [0, count): a running sum down rows of width values (in: row stride stride; out: contiguous),      \
     * vectorised across the columns. first = P - 1, count = rows - P + 1: the windows inside the rows         \
     * (forward); first = 0, count = rows + P - 1: the zero-padded ones (adjoint). */                          \
    static void running_rows_##SUFFIX(const T *in, long stride, long rows, long width, long P, long first,     \
                                      long count, T *out) {                                                    \
        for (long j = 0; j < width; ++j) out[j] = 0;                                                           \
        for (long s = first - P + 1 < 0 ? 0 : first - P + 1; s <= first && s < rows; ++s)                      \
            for (long j = 0; j < width; ++j) out[j] += in[s * stride + j];                                     \
        for (long r = 1; r < count; ++r) {                                                                     \
            long top = r + first;                                                                              \
            const T *prev = out + (r - 1) * width, *add = in + top * stride, *sub = in + (top - P) * stride;   \
            T *o = out + r * width;                                                                            \
            if (top < rows && top >= P)                                                                        \
                for (long j = 0; j < width; ++j) o[j] = prev[j] + add[j] - sub[j];                             \
            else if (top < rows)                                                                               \
                for (long j = 0; j < width; ++j) o[j] = prev[j] + add[j];                                      \
            else if (top >= P)                                                                                 \
                for (long j = 0; j < width; ++j) o[j] = prev[j] - sub[j];                                      \
            else                                                                                               \
                memcpy(o, prev, sizeof(T) * (size_t)width);                                                    \
        }                                                                                                      \
    }                                                                                                          \
                                                                                                               \
    /* Adds every pixel of v (h x wd) into the window its clamped window starts at (the rows before the first  \
     * window fold into window row 0, those after the last into row L_r - 1; likewise the columns) and writes  \
     * window row s to out[s * pw + Q - 1 ...], pw = wd + Q - 1: between Q - 1 zeros on each side, which the   \
     * caller set, the padded row whose window sums are the adjoint sums of the row. bands: 2 wd values of     \
     * scratch (the folded first and last window rows). */                                                     \
    static void fold_map_##SUFFIX(const T *v, long h, long wd, long P, long Q, T *bands, T *out) {             \
        long lr = h - P + 1, lc = wd - Q + 1, bp = (P - 1) / 2, bq = (Q - 1) / 2, pw = wd + Q - 1;             \
        T *top = bands, *bottom = bands + wd;                                                                  \
        memcpy(top, v, sizeof(T) * (size_t)wd);                                                                \
        for (long r = 1; r < (lr == 1 ? h : bp + 1); ++r)                                                      \
            for (long j = 0; j < wd; ++j) top[j] += v[r * wd + j];                                             \
        if (lr > 1) {                                                                                          \
            memcpy(bottom, v + (bp + lr - 1) * wd, sizeof(T) * (size_t)wd);                                    \
            for (long r = bp + lr; r < h; ++r)                                                                 \
                for (long j = 0; j < wd; ++j) bottom[j] += v[r * wd + j];                                      \
        }                                                                                                      \
        for (long s = 0; s < lr; ++s) {                                                                        \
            const T *row = s == 0 ? top : s == lr - 1 ? bottom : v + (s + bp) * wd;                            \
            T *o = out + s * pw + Q - 1, left = 0, right = 0;                                                  \
            memcpy(o, row + bq, sizeof(T) * (size_t)lc);                                                       \
            for (long j = 0; j < bq; ++j) left += row[j];                                                      \
            for (long j = bq + lc; j < wd; ++j) right += row[j];                                               \
            o[0] += left;                                                                                      \
            o[lc - 1] += right;                                                                                \
        }                                                                                                      \
    }                                                                                                          \
                                                                                                               \
    /* The per-pixel rows (h x wd) of the per-window-row statistics stats (L_r x wd): rows [bp, bp + L_r) are  \
     * stats itself, the rows above repeat its first row and those below its last. */                          \
    static void spread_rows_##SUFFIX(const T *stats, long h, long wd, long P, T *out) {                        \
        long lr = h - P + 1, bp = (P - 1) / 2;                                                                 \
        for (long r = 0; r < bp; ++r) memcpy(out + r * wd, stats, sizeof(T) * (size_t)wd);                     \
        memcpy(out + bp * wd, stats, sizeof(T) * (size_t)(lr * wd));                                           \
        for (long r = bp + lr; r < h; ++r) memcpy(out + r * wd, stats + (lr - 1) * wd, sizeof(T) * (size_t)wd); \
    }                                                                                                          \
                                                                                                               \
    /* Mean of count values, summed in 32 lanes of T. */                                                       \
    static T group_mean_##SUFFIX(const T *x, long count) {                                                     \
        T lanes[32] = {0}, total = 0;                                                                          \
        long full = count - count % 32;                                                                        \
        for (long p = 0; p < full; p += 32)                                                                    \
            for (long l = 0; l < 32; ++l) lanes[l] += x[p + l];                                                \
        for (long p = full; p < count; ++p) total += x[p];                                                     \
        for (long l = 0; l < 32; ++l) total += lanes[l];                                                       \
        return total / (T)count;                                                                               \
    }

DEFINE_WINDOW_SUMS(float, f32)
DEFINE_WINDOW_SUMS(double, f64)

#define DEFINE_LCN(T, SUFFIX, SQRT)                                                                            \
    /* The per-window mean (minus c0) and rstd of one sample and group into cm, cr (L_r x wd, border columns   \
     * repeated), from the shifted values of its g channels at xg. work: 6 h wd values of scratch. */          \
    static void window_statistics_##SUFFIX(const T *xg, T c0, long g, long h, long wd, long P, long Q, double eps, \
                                           T *work, T *cm, T *cr) {                                            \
        long hw = h * wd, lr = h - P + 1, lc = wd - Q + 1, bq = (Q - 1) / 2;                                   \
        T inverse_m = (T)(1.0 / (double)(g * P * Q));                                                          \
        T *s = work, *v = s + 2 * hw, *u = v + 2 * hw;                                                         \
        for (long p = 0; p < hw; ++p) {                                                                        \
            T d = xg[p] - c0;                                                                                  \
            s[p] = d;                                                                                          \
            s[hw + p] = d * d;                                                                                 \
        }                                                                                                      \
        for (long ch = 1; ch < g; ++ch)                                                                        \
            for (long p = 0; p < hw; ++p) {                                                                    \
                T d = xg[ch * hw + p] - c0;                                                                    \
                s[p] += d;                                                                                     \
                s[hw + p] += d * d;                                                                            \
            }                                                                                                  \
        if (P * Q == 1) {                                                                                      \
            for (long p = 0; p < hw; ++p) {                                                                    \
                T m1 = s[p] * inverse_m, var = 0;                                                              \
                for (long ch = 0; ch < g; ++ch) {                                                              \
                    T e = xg[ch * hw + p] - c0 - m1;                                                           \
                    var += e * e;                                                                              \
                }                                                                                              \
                cm[p] = m1;                                                                                    \
                cr[p] = (T)1 / SQRT(var * inverse_m + (T)eps);                                                 \
            }                                                                                                  \
            return;                                                                                            \
        }                                                                                                      \
        if (P > 8) {                                                                                           \
            running_rows_##SUFFIX(s, wd, h, wd, P, P - 1, lr, v);                                              \
            running_rows_##SUFFIX(s + hw, wd, h, wd, P, P - 1, lr, v + hw);                                    \
        } else {                                                                                               \
            window_sums_##SUFFIX(s, 2 * hw - (P - 1) * wd, P, wd, v);                                          \
        }                                                                                                      \
        if (Q > 8) {                                                                                           \
            row_running_sums_##SUFFIX(v, lr, wd, Q, u);                                                        \
            row_running_sums_##SUFFIX(v + hw, lr, wd, Q, u + hw);                                              \
        } else {                                                                                               \
            window_sums_##SUFFIX(v, 2 * hw - (Q - 1), Q, 1, u);                                                \
        }                                                                                                      \
        /* window (r, j) lands in column bq + j; the columns past the last window get values across rows,      \
         * which the border columns then overwrite */                                                          \
        for (long p = 0; p < lr * wd - bq; ++p) {                                                              \
            T m1 = u[p] * inverse_m, var = u[hw + p] * inverse_m - m1 * m1;                                    \
            cm[bq + p] = m1;                                                                                   \
            cr[bq + p] = (T)1 / SQRT((var > 0 ? var : 0) + (T)eps);                                            \
        }                                                                                                      \
        for (long r = 0; r < lr; ++r) {                                                                        \
            T *mr = cm + r * wd, *rr = cr + r * wd;                                                            \
            for (long j = 0; j < bq; ++j) {                                                                    \
                mr[j] = mr[bq];                                                                                \
                rr[j] = rr[bq];                                                                                \
            }                                                                                                  \
            for (long j = bq + lc; j < wd; ++j) {                                                              \
                mr[j] = mr[bq + lc - 1];                                                                       \
                rr[j] = rr[bq + lc - 1];                                                                       \
            }                                                                                                  \
        }                                                                                                      \
    }                                                                                                          \
                                                                                                               \
    int lcn_forward_##SUFFIX(const T *x, const T *w, const T *b, T *y, T *mean, T *rstd, T *shift, long n,     \
                             long c, long h, long wd, long groups, long P, long Q, double eps) {               \
        long hw = h * wd, g = c / groups, ls = (h - P + 1) * wd;                                               \
        T *work = malloc(sizeof(T) * (size_t)(8 * hw));                                                        \
        if (!work) return 1;                                                                                   \
        T *mu = work + 6 * hw, *rs = mu + hw;                                                                  \
        for (long m = 0; m < n * groups; ++m) {                                                                \
            long k = m % groups, first = (m / groups * c + k * g) * hw;                                        \
            T c0 = shift[m] = group_mean_##SUFFIX(x + first, g * hw);                                          \
            window_statistics_##SUFFIX(x + first, c0, g, h, wd, P, Q, eps, work, mean + m * ls, rstd + m * ls); \
            spread_rows_##SUFFIX(mean + m * ls, h, wd, P, mu);                                                 \
            spread_rows_##SUFFIX(rstd + m * ls, h, wd, P, rs);                                                 \
            for (long ch = 0; ch < g; ++ch) {                                                                  \
                const T *xr = x + first + ch * hw;                                                             \
                T *out = y + first + ch * hw, wc = w[k * g + ch], bc = b[k * g + ch];                          \
                for (long p = 0; p < hw; ++p) out[p] = (xr[p] - c0 - mu[p]) * rs[p] * wc + bc;                 \
            }                                                                                                  \
        }                                                                                                      \
        free(work);                                                                                            \
        return 0;                                                                                              \
    }                                                                                                          \
                                                                                                               \
    int lcn_backward_##SUFFIX(const T *dy, const T *x, const T *w, const T *mean, const T *rstd,               \
                              const T *shift, T *dx, double *dw, double *db, long n, long c, long h, long wd,  \
                              long groups, long P, long Q) {                                                   \
        long hw = h * wd, g = c / groups, lr = h - P + 1, ls = lr * wd, pw = wd + Q - 1, padded = 2 * lr * pw; \
        T inverse_m = (T)(1.0 / (double)(g * P * Q));                                                          \
        T *work = calloc((size_t)(6 * hw + 2 * padded + 2 * wd), sizeof(T)); /* zeros around the padded rows */ \
        if (!work) return 1;                                                                                   \
        T *mu = work, *rs = mu + hw, *t = rs + hw, *adj = t + 2 * hw, *pad = adj + 2 * hw, *sums = pad + padded; \
        T *bands = sums + padded;                                                                              \
        for (long m = 0; m < n * groups; ++m) {                                                                \
            long k = m % groups, first = (m / groups * c + k * g) * hw;                                        \
            const T *xg = x + first, *dyg = dy + first;                                                        \
            T c0 = shift[m];                                                                                   \
            spread_rows_##SUFFIX(mean + m * ls, h, wd, P, mu);                                                 \
            spread_rows_##SUFFIX(rstd + m * ls, h, wd, P, rs);                                                 \
            for (long ch = 0; ch < g; ++ch) {                                                                  \
                const T *gr = dyg + ch * hw, *xr = xg + ch * hw;                                               \
                T wc = w[k * g + ch], keep = ch ? 1 : 0; /* the first channel overwrites t */                  \
                double sum_w = 0, sum_b = 0;                                                                   \
                _Pragma("omp simd reduction(+ : sum_w, sum_b)") for (long p = 0; p < hw; ++p) {                \
                    T x_hat = (xr[p] - c0 - mu[p]) * rs[p];                                                    \
                    t[p] = t[p] * keep + gr[p] * wc;                                                           \
                    t[hw + p] = t[hw + p] * keep + gr[p] * wc * x_hat;                                         \
                    sum_w += gr[p] * x_hat;                                                                    \
                    sum_b += gr[p];                                                                            \
                }                                                                                              \
                dw[k * g + ch] += sum_w;                                                                       \
                db[k * g + ch] += sum_b;                                                                       \
            }                                                                                                  \
            for (long p = 0; p < hw; ++p) {                                                                    \
                T scale = rs[p] * inverse_m, bv = t[hw + p] * scale * rs[p];                                   \
                t[p] = t[p] * scale - bv * mu[p];                                                              \
                t[hw + p] = bv;                                                                                \
            }                                                                                                  \
            fold_map_##SUFFIX(t, h, wd, P, Q, bands, pad);                                                     \
            fold_map_##SUFFIX(t + hw, h, wd, P, Q, bands, pad + lr * pw);                                      \
            if (Q > 8)                                                                                         \
                row_running_sums_##SUFFIX(pad, 2 * lr, pw, Q, sums);                                           \
            else                                                                                               \
                window_sums_##SUFFIX(pad, padded - (Q - 1), Q, 1, sums);                                       \
            running_rows_##SUFFIX(sums, pw, lr, wd, P, 0, h, adj);                                             \
            running_rows_##SUFFIX(sums + lr * pw, pw, lr, wd, P, 0, h, adj + hw);                              \
            for (long ch = 0; ch < g; ++ch) {                                                                  \
                const T *gr = dyg + ch * hw, *xr = xg + ch * hw;                                               \
                T *out = dx + first + ch * hw, wc = w[k * g + ch];                                             \
                for (long p = 0; p < hw; ++p) out[p] = gr[p] * wc * rs[p] - adj[p] - (xr[p] - c0) * adj[hw + p]; \
            }                                                                                                  \
        }                                                                                                      \
        free(work);                                                                                            \
        return 0;                                                                                              \
    }

DEFINE_LCN(float, f32, sqrtf)
DEFINE_LCN(double, f64, sqrt)

/* Mixture Normalization (robustbench_norm/norms/mixture.py) over x (N, C, P), contiguous, one K-component
 * mixture per channel (prior, mu, v: (C, K); mixture_em fits them, forward and backward hold them fixed).
 * With tau_k(x) = softmax_k(log prior_k - log(v_k) / 2 - (x - mu_k)^2 / (2 v_k)):
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
 * One channel at a time: its values are gathered into a contiguous buffer and their posteriors computed once,
 * a chunk of MIXTURE_CHUNK values at a time (so the chunk's passes stay in the cache; in training the chunk's
 * moments are summed in the same pass), and kept for the channel's output pass; a forward whose result needs
 * a gradient keeps every posterior (`kept`, (C, K, N P), as the ATen path keeps its K posterior tensors) for
 * the backward, which reads them instead of computing them again. Every loop runs over the values
 * (vectorised); the sums are taken in double. exp is evaluated by range
 * reduction to [-ln 2 / 2, ln 2 / 2] and a Taylor polynomial (degree 7 in float, 13 in double: below the
 * dtype's rounding), written out so that the loops vectorise; the softmax only exponentiates values <= 0, and
 * a posterior below e^-64 of the largest is taken as 0 (far below the dtype's rounding, and it keeps
 * subnormal numbers, slow on some CPUs, out of the sums). All return 1 when they cannot allocate their
 * scratch buffers, 0 otherwise. */

static inline float exp_nonpositive_f32(float x) {
    float z = x < -64.0f ? -64.0f : x;
    float k = (z * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest: 1.5 * 2^23 */
    float r = z - k * 0.693145751953125f - k * 1.42860682030941723212e-6f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    int bits = ((int)k + 127) << 23;
    float scale;
    __builtin_memcpy(&scale, &bits, sizeof scale);
    return x < -64.0f ? 0.0f : p * scale;
}

static inline double exp_nonpositive_f64(double x) {
    double z = x < -64.0 ? -64.0 : x;
    double k = (z * 1.44269504088896340736 + 6755399441055744.0) - 6755399441055744.0; /* 1.5 * 2^52 */
    double r = z - k * 6.93147180369123816490e-1 - k * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;
    static const double inverse_factorials[] = {1.0 / 479001600, 1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880,
                                                1.0 / 40320, 1.0 / 5040, 1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6,
                                                0.5, 1.0, 1.0};
    for (int i = 0; i < 13; ++i) p = p * r + inverse_factorials[i];
    long long bits = ((long long)k + 1023) << 52;
    double scale;
    __builtin_memcpy(&scale, &bits, sizeof scale);
    return x < -64.0 ? 0.0 : p * scale;
}

/* Values [start, start + m) of channel ch of x (N, C, P), in (n, p) order, copied to or from the contiguous buf. */
#define DEFINE_CHANNEL_COPY(T, SUFFIX)                                                                         \
    static void channel_gather_##SUFFIX(const T *x, long c, long p, long ch, long start, long m, T *buf) {   \
        for (long done = 0; done < m;) {                                                                       \
            long i = (start + done) / p, offset = (start + done) - i * p;                                      \
            long count = p - offset < m - done ? p - offset : m - done;                                        \
            memcpy(buf + done, x + (i * c + ch) * p + offset, sizeof(T) * (size_t)count);                      \
            done += count;                                                                                     \
        }                                                                                                      \
    }                                                                                                          \
    static void channel_scatter_##SUFFIX(T *x, long c, long p, long ch, long start, long m, const T *buf) {  \
        for (long done = 0; done < m;) {                                                                       \
            long i = (start + done) / p, offset = (start + done) - i * p;                                      \
            long count = p - offset < m - done ? p - offset : m - done;                                        \
            memcpy(x + (i * c + ch) * p + offset, buf + done, sizeof(T) * (size_t)count);                      \
            done += count;                                                                                     \
        }                                                                                                      \
    }

DEFINE_CHANNEL_COPY(float, f32)
DEFINE_CHANNEL_COPY(double, f64)

#define MIXTURE_CHUNK 1024

#define DEFINE_MIXTURE(T, SUFFIX, LOG, SQRT)                                                                   \
    /* Per-component constants of channel ch's mixture. */                                                     \
    static void mixture_setup_##SUFFIX(const T *prior, const T *mean, const T *var, long ch, long K,           \
                                       T *log_const, T *mu, T *half_inv_v) {                                   \
        for (long k = 0; k < K; ++k) {                                                                         \
            log_const[k] = LOG(prior[ch * K + k]) - (T)0.5 * LOG(var[ch * K + k]);                             \
            mu[k] = mean[ch * K + k];                                                                          \
            half_inv_v[k] = (T)0.5 / var[ch * K + k];                                                          \
        }                                                                                                      \
    }                                                                                                          \
                                                                                                               \
    /* The posteriors tau[k * L + l] of the L values xs of one channel under its mixture (the constants of     \
     * mixture_setup), a chunk of MIXTURE_CHUNK values at a time, so that the chunk's passes stay in the       \
     * cache; top and total are scratch of MIXTURE_CHUNK values each. With sums (3 K doubles, zeroed here),    \
     * each chunk's posteriors are also summed while in the cache, about the component means mu (a shift       \
     * that keeps the one-pass variance free of cancellation): sum tau_k, sum tau_k (x - mu_k) and             \
     * sum tau_k (x - mu_k)^2. */                                                                              \
    static void mixture_posteriors_##SUFFIX(const T *xs, long L, long K, const T *log_const, const T *mu,      \
                                            const T *half_inv_v, T *top, T *total, T *tau, double *sums) {     \
        if (sums) memset(sums, 0, sizeof(double) * (size_t)(3 * K));                                           \
        for (long start = 0; start < L; start += MIXTURE_CHUNK) {                                              \
            long m = L - start < MIXTURE_CHUNK ? L - start : MIXTURE_CHUNK;                                    \
            const T *xc = xs + start;                                                                          \
            for (long k = 0; k < K; ++k) {                                                                     \
                T *t = tau + k * L + start;                                                                    \
                for (long l = 0; l < m; ++l) {                                                                 \
                    T d = xc[l] - mu[k];                                                                       \
                    t[l] = log_const[k] - d * d * half_inv_v[k];                                               \
                    top[l] = k == 0 || t[l] > top[l] ? t[l] : top[l];                                          \
                }                                                                                              \
            }                                                                                                  \
            for (long l = 0; l < m; ++l) total[l] = 0;                                                         \
            for (long k = 0; k < K; ++k) {                                                                     \
                T *t = tau + k * L + start;                                                                    \
                for (long l = 0; l < m; ++l) total[l] += (t[l] = exp_nonpositive_##SUFFIX(t[l] - top[l]));     \
            }                                                                                                  \
            for (long l = 0; l < m; ++l) total[l] = (T)1 / total[l];                                           \
            for (long k = 0; k < K; ++k) {                                                                     \
                T *t = tau + k * L + start;                                                                    \
                for (long l = 0; l < m; ++l) t[l] *= total[l];                                                 \
                if (!sums) continue;                                                                           \
                double mass = 0, first = 0, second = 0, shift = (double)mu[k];                                 \
                _Pragma("omp simd reduction(+ : mass, first, second)") for (long l = 0; l < m; ++l) {          \
                    double d = (double)xc[l] - shift;                                                          \
                    mass += t[l];                                                                              \
                    first += t[l] * d;                                                                         \
                    second += t[l] * d * d;                                                                    \
                }                                                                                              \
                sums[3 * k] += mass;                                                                           \
                sums[3 * k + 1] += first;                                                                      \
                sums[3 * k + 2] += second;                                                                     \
            }                                                                                                  \
        }                                                                                                      \
    }                                                                                                          \
                                                                                                               \
    /* Posterior mass (raw), mean and variance of each component from the sums of mixture_posteriors (about    \
     * mu): the M-step's statistics and the training forward's normalising moments, at [ch * K + k]. A         \
     * component of no mass (every posterior below e^-64 of the largest) gets mean 0 and variance 0. */        \
    static void mixture_moments_##SUFFIX(const double *sums, const T *mu, long K, long ch, double tiny,        \
                                         T *mass_out, T *mean_out, T *var_out) {                               \
        for (long k = 0; k < K; ++k) {                                                                         \
            double mass = sums[3 * k], clamped = mass > tiny ? mass : tiny;                                    \
            double offset = sums[3 * k + 1] / clamped, spread = sums[3 * k + 2] / clamped - offset * offset;   \
            mass_out[ch * K + k] = (T)mass;                                                                    \
            mean_out[ch * K + k] = (T)((mass * (double)mu[k] + sums[3 * k + 1]) / clamped);                    \
            var_out[ch * K + k] = (T)(spread > 0 ? spread : 0);                                                \
        }                                                                                                      \
    }                                                                                                          \
                                                                                                               \
    /* EM on samples (C, M) (mixture.fit_mixture), one channel at a time (its samples and posteriors stay in   \
     * the cache through the iterations): the start of mixture.initial_mixture from the channel's mean and     \
     * biased variance (prior 1 / K, mean + sqrt(var) z_k, max(var, var_floor)), then per iteration the        \
     * posteriors and moments above, prior = max(mass / M, min_prior), mean, var = max(var, var_floor). */     \
    int mixture_em_##SUFFIX(const T *samples, long c, long m, long K, long iterations, double var_floor,       \
                            double min_prior, double tiny, const T *z, T *prior, T *mean, T *var) {            \
        T *work = malloc(sizeof(T) * (size_t)(K * m + 2 * MIXTURE_CHUNK + 3 * K));                             \
        double sums[3 * K]; /* the posterior sums of one channel (mixture_posteriors) */                       \
        if (!work) return 1;                                                                                   \
        T *tau = work, *top = tau + K * m, *total = top + MIXTURE_CHUNK, *log_const = total + MIXTURE_CHUNK;   \
        T *mu = log_const + K, *half_inv_v = mu + K, floor_v = (T)var_floor;                                   \
        for (long ch = 0; ch < c; ++ch) {                                                                      \
            const T *xs = samples + ch * m;                                                                    \
            T start_mean, start_var;                                                                           \
            row_moments_##SUFFIX(xs, &start_mean, &start_var, 1, m);                                           \
            for (long k = 0; k < K; ++k) {                                                                     \
                prior[ch * K + k] = (T)1 / (T)K;                                                               \
                mean[ch * K + k] = start_mean + SQRT(start_var) * z[k];                                        \
                var[ch * K + k] = start_var > floor_v ? start_var : floor_v;                                   \
            }                                                                                                  \
            for (long it = 0; it < iterations; ++it) {                                                         \
                mixture_setup_##SUFFIX(prior, mean, var, ch, K, log_const, mu, half_inv_v);                    \
                mixture_posteriors_##SUFFIX(xs, m, K, log_const, mu, half_inv_v, top, total, tau, sums);       \
                mixture_moments_##SUFFIX(sums, mu, K, ch, tiny, prior, mean, var);                             \
                for (long k = 0; k < K; ++k) {                                                                 \
                    T share = prior[ch * K + k] / (T)m;                                                        \
                    prior[ch * K + k] = share > (T)min_prior ? share : (T)min_prior;                           \
                    var[ch * K + k] = var[ch * K + k] > floor_v ? var[ch * K + k] : floor_v;                   \
                }                                                                                              \
            }                                                                                                  \
        }                                                                                                      \
        free(work);                                                                                            \
        return 0;                                                                                              \
    }                                                                                                          \
                                                                                                               \
    int mixture_forward_##SUFFIX(const T *x, const T *w, const T *b, const T *prior, const T *mean,            \
                                 const T *var, T *norm_mean, T *norm_var, T *mass_out, int training, T *y,     \
                                 T *kept, int keep, long n, long c, long p, long K, double eps, double tiny) { \
        long L = n * p;                                                                                        \
        T *work = malloc(sizeof(T) * (size_t)((keep ? 0 : K * L) + L + 3 * MIXTURE_CHUNK + 3 * K));            \
        double sums[3 * K]; /* the posterior sums of one channel (mixture_posteriors) */                       \
        if (!work) return 1;                                                                                   \
        T *xs = work, *top = xs + L, *total = top + MIXTURE_CHUNK, *x_hat = total + MIXTURE_CHUNK;             \
        T *log_const = x_hat + MIXTURE_CHUNK, *mu = log_const + K, *half_inv_v = mu + K;                       \
        T *scratch = half_inv_v + K;                                                                           \
        for (long ch = 0; ch < c; ++ch) {                                                                      \
            T *tau = keep ? kept + ch * K * L : scratch;                                                       \
            mixture_setup_##SUFFIX(prior, mean, var, ch, K, log_const, mu, half_inv_v);                        \
            channel_gather_##SUFFIX(x, c, p, ch, 0, L, xs);                                                    \
            mixture_posteriors_##SUFFIX(xs, L, K, log_const, mu, half_inv_v, top, total, tau,                  \
                                        training ? sums : NULL);                                               \
            if (training) {                                                                                    \
                mixture_moments_##SUFFIX(sums, mu, K, ch, tiny, mass_out, norm_mean, norm_var);                \
                for (long k = 0; k < K; ++k)                                                                   \
                    mass_out[ch * K + k] = mass_out[ch * K + k] > (T)tiny ? mass_out[ch * K + k] : (T)tiny;    \
            }                                                                                                  \
            T wc = w[ch], bc = b[ch];                                                                          \
            for (long start = 0; start < L; start += MIXTURE_CHUNK) {                                          \
                long m = L - start < MIXTURE_CHUNK ? L - start : MIXTURE_CHUNK;                                \
                for (long l = 0; l < m; ++l) x_hat[l] = 0;                                                     \
                for (long k = 0; k < K; ++k) {                                                                 \
                    const T *t = tau + k * L + start, *xc = xs + start;                                        \
                    T m_k = norm_mean[ch * K + k];                                                             \
                    T scale = (T)1 / SQRT(prior[ch * K + k] * (norm_var[ch * K + k] + (T)eps));                \
                    for (long l = 0; l < m; ++l) x_hat[l] += t[l] * scale * (xc[l] - m_k);                     \
                }                                                                                              \
                for (long l = 0; l < m; ++l) x_hat[l] = x_hat[l] * wc + bc;                                    \
                channel_scatter_##SUFFIX(y, c, p, ch, start, m, x_hat);                                        \
            }                                                                                                  \
        }                                                                                                      \
        free(work);                                                                                            \
        return 0;                                                                                              \
    }                                                                                                          \
                                                                                                               \
    int mixture_backward_##SUFFIX(const T *dy, const T *x, const T *w, const T *prior, const T *mean,          \
                                  const T *var, const T *norm_mean, const T *norm_var, const T *mass,          \
                                  int training, const T *kept, T *dx, double *dw, double *db, long n, long c,  \
                                  long p, long K, double eps) {                                                \
        long L = n * p;                                                                                        \
        T *work = malloc(sizeof(T) * (size_t)(2 * L + 4 * MIXTURE_CHUNK + 8 * K));                             \
        double gathered[K], spread[K]; /* per component: sum g tau_k and sum g tau_k e_k of one channel */     \
        if (!work) return 1;                                                                                   \
        T *xs = work, *gs = xs + L, *sum = gs + L;                                                             \
        T *total_t = sum + MIXTURE_CHUNK, *total_d = total_t + MIXTURE_CHUNK, *x_hat = total_d + MIXTURE_CHUNK; \
        T *log_const = x_hat + MIXTURE_CHUNK, *mu = log_const + K, *half_inv_v = mu + K, *scale = half_inv_v + K; \
        T *c1 = scale + K, *c2 = c1 + K, *m_k = c2 + K, *s_k = m_k + K;                                        \
        for (long ch = 0; ch < c; ++ch) {                                                                      \
            mixture_setup_##SUFFIX(prior, mean, var, ch, K, log_const, mu, half_inv_v);                        \
            channel_gather_##SUFFIX(x, c, p, ch, 0, L, xs);                                                    \
            channel_gather_##SUFFIX(dy, c, p, ch, 0, L, gs);                                                   \
            const T *tau = kept + ch * K * L;                                                                  \
            T wc = w[ch];                                                                                      \
            double sum_w = 0, sum_b = 0;                                                                       \
            for (long k = 0; k < K; ++k) {                                                                     \
                m_k[k] = norm_mean[ch * K + k];                                                                \
                s_k[k] = norm_var[ch * K + k];                                                                 \
                scale[k] = (T)1 / SQRT(prior[ch * K + k] * (s_k[k] + (T)eps));                                 \
                gathered[k] = spread[k] = 0;                                                                   \
            }                                                                                                  \
            for (long start = 0; start < L; start += MIXTURE_CHUNK) {                                          \
                long m = L - start < MIXTURE_CHUNK ? L - start : MIXTURE_CHUNK;                                \
                const T *xc = xs + start, *gc = gs + start;                                                    \
                for (long l = 0; l < m; ++l) x_hat[l] = 0;                                                     \
                for (long k = 0; k < K; ++k) {                                                                 \
                    const T *t = tau + k * L + start;                                                          \
                    double gathered_k = 0, spread_k = 0;                                                       \
                    _Pragma("omp simd reduction(+ : gathered_k, spread_k)") for (long l = 0; l < m; ++l) {     \
                        T e = xc[l] - m_k[k], gt = gc[l] * wc * t[l];                                          \
                        x_hat[l] += t[l] * scale[k] * e;                                                       \
                        gathered_k += gt;                                                                      \
                        spread_k += gt * e;                                                                    \
                    }                                                                                          \
                    gathered[k] += gathered_k;                                                                 \
                    spread[k] += spread_k;                                                                     \
                }                                                                                              \
                _Pragma("omp simd reduction(+ : sum_w, sum_b)") for (long l = 0; l < m; ++l) {                 \
                    sum_w += gc[l] * x_hat[l];                                                                 \
                    sum_b += gc[l];                                                                            \
                }                                                                                              \
            }                                                                                                  \
            dw[ch] = sum_w;                                                                                    \
            db[ch] = sum_b;                                                                                    \
            for (long k = 0; k < K; ++k) {                                                                     \
                c1[k] = training ? (T)(-scale[k] * gathered[k] / mass[ch * K + k]) : 0;                        \
                c2[k] = training ? (T)(-0.5 * scale[k] * spread[k] / ((s_k[k] + eps) * mass[ch * K + k])) : 0; \
            }                                                                                                  \
            for (long start = 0; start < L; start += MIXTURE_CHUNK) {                                          \
                long m = L - start < MIXTURE_CHUNK ? L - start : MIXTURE_CHUNK;                                \
                const T *xc = xs + start, *gc = gs + start;                                                    \
                for (long l = 0; l < m; ++l) sum[l] = total_t[l] = total_d[l] = 0;                             \
                for (long k = 0; k < K; ++k) {                                                                 \
                    const T *t = tau + k * L + start;                                                          \
                    T inverse_v = 2 * half_inv_v[k];                                                           \
                    for (long l = 0; l < m; ++l) {                                                             \
                        T e = xc[l] - m_k[k], ga = gc[l] * wc * scale[k];                                      \
                        T t_k = (ga + c1[k]) * e + c2[k] * (e * e - s_k[k]), e_k = ga + c1[k] + 2 * c2[k] * e; \
                        T d_k = (xc[l] - mu[k]) * inverse_v;                                                   \
                        sum[l] += t[l] * (e_k - t_k * d_k);                                                    \
                        total_t[l] += t[l] * t_k;                                                              \
                        total_d[l] += t[l] * d_k;                                                              \
                    }                                                                                          \
                }                                                                                              \
                for (long l = 0; l < m; ++l) sum[l] += total_t[l] * total_d[l];                                \
                channel_scatter_##SUFFIX(dx, c, p, ch, start, m, sum);                                         \
            }                                                                                                  \
        }                                                                                                      \
        free(work);                                                                                            \
        return 0;                                                                                              \
    }

DEFINE_MIXTURE(float, f32, logf, sqrtf)
DEFINE_MIXTURE(double, f64, log, sqrt)
