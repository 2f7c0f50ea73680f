// Elementwise ops, add with a repeating operand, softmax and dropout on the
// GPU (issue #16: the ops' kernels, before the tape runs on the device). The
// per-element arithmetic is autograd/ops_kernel.h's, shared with the CPU's
// ops; backward kernels accumulate into dx like the CPU's.

extern "C" {
#include "autograd/ops_kernel.h"
#include "optim/optim_kernel.h"
}
#include "cuda/cuda.h"
#include "cuda/cuda_internal.h"

static int ops_grid(int64_t n) {
    int64_t b = (n + 255) / 256;
    return (int)(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

/* A device buffer for kernels' partial sums, grown to the largest need once
 * (one stream: a call's partials are consumed before the next call writes). */
static void *ops_work(size_t bytes) {
    static void *buf;
    static size_t cap;
    if (bytes > cap) {
        cu_free(buf);
        buf = cu_malloc(bytes);
        cap = bytes;
    }
    return buf;
}

#define GRID_STRIDE(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

template <int KIND>
__device__ __forceinline__ float unary_f(float v) {
    return KIND == CU_UNARY_RELU ? ag_k_relu(v) : KIND == CU_UNARY_GELU ? ag_k_gelu(v) : ag_k_gelu_tanh(v);
}

/* relu takes its output (xy = y), the GELUs their input (xy = x) */
template <int KIND>
__device__ __forceinline__ float unary_back_f(float v, float g) {
    return KIND == CU_UNARY_RELU ? ag_k_relu_back(v, g)
                                 : g * (KIND == CU_UNARY_GELU ? ag_k_gelu_grad(v) : ag_k_gelu_tanh_grad(v));
}

/* y = f(x) (BACK: dx += f'(xy) dy), four elements per thread where aligned */
template <int KIND, bool BACK>
__global__ void k_unary(int64_t n, const float *__restrict__ xy, const float *__restrict__ dy, float *__restrict__ y) {
    int64_t n4 = ((uintptr_t)xy | (uintptr_t)dy | (uintptr_t)y) % 16 == 0 ? n / 4 : 0;
    GRID_STRIDE(i, n4) {
        float4 v = ((const float4 *)xy)[i], o;
        if (BACK) {
            float4 g = ((const float4 *)dy)[i], a = ((float4 *)y)[i];
            o = make_float4(a.x + unary_back_f<KIND>(v.x, g.x), a.y + unary_back_f<KIND>(v.y, g.y),
                            a.z + unary_back_f<KIND>(v.z, g.z), a.w + unary_back_f<KIND>(v.w, g.w));
        } else {
            o = make_float4(unary_f<KIND>(v.x), unary_f<KIND>(v.y), unary_f<KIND>(v.z), unary_f<KIND>(v.w));
        }
        ((float4 *)y)[i] = o;
    }
    GRID_STRIDE(i, n - 4 * n4) {
        int64_t e = 4 * n4 + i;
        y[e] = BACK ? y[e] + unary_back_f<KIND>(xy[e], dy[e]) : unary_f<KIND>(xy[e]);
    }
}

template <bool BACK>
static void ops_unary(cu_unary kind, int64_t n, const float *d_xy, const float *d_dy, float *d_y) {
    if (n <= 0) return;
    int g = ops_grid((n + 3) / 4);
    if (kind == CU_UNARY_RELU) k_unary<CU_UNARY_RELU, BACK><<<g, 256>>>(n, d_xy, d_dy, d_y);
    else if (kind == CU_UNARY_GELU) k_unary<CU_UNARY_GELU, BACK><<<g, 256>>>(n, d_xy, d_dy, d_y);
    else k_unary<CU_UNARY_GELU_TANH, BACK><<<g, 256>>>(n, d_xy, d_dy, d_y);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_unary(cu_unary kind, int64_t n, const float *d_x, float *d_y) {
    ops_unary<false>(kind, n, d_x, NULL, d_y);
}

extern "C" void cu_op_unary_backward(cu_unary kind, int64_t n, const float *d_xy, const float *d_dy, float *d_dx) {
    ops_unary<true>(kind, n, d_xy, d_dy, d_dx);
}

/* 16-byte aligned, a multiple of 4 long: the float4 paths */
static bool ops_vec4(int64_t n, const void *a, const void *b, const void *c) {
    return n % 4 == 0 && ((uintptr_t)a | (uintptr_t)b | (uintptr_t)c) % 16 == 0;
}

__global__ void k_add_same4(int64_t n4, const float4 *__restrict__ a, const float4 *__restrict__ b,
                            float4 *__restrict__ y) {
    GRID_STRIDE(i, n4) {
        float4 u = a[i], v = b[i];
        y[i] = make_float4(u.x + v.x, u.y + v.y, u.z + v.z, u.w + v.w);
    }
}

/* y [rows, nb] = a + b broadcast over the rows: blockIdx.y walks rows, so no
 * element needs a division */
__global__ void k_add_rows(int64_t rows, int64_t nb, const float *__restrict__ a, const float *__restrict__ b,
                           float *__restrict__ y) {
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
        for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < nb; j += (int64_t)gridDim.x * blockDim.x)
            y[r * nb + j] = a[r * nb + j] + b[j];
}

__global__ void k_accumulate(int64_t n, const float *__restrict__ src, float *__restrict__ dst) {
    GRID_STRIDE(i, n) dst[i] += src[i];
}

__global__ void k_accumulate4(int64_t n4, const float4 *__restrict__ src, float4 *__restrict__ dst) {
    GRID_STRIDE(i, n4) {
        float4 u = src[i], v = dst[i];
        dst[i] = make_float4(v.x + u.x, v.y + u.y, v.z + u.z, v.w + u.w);
    }
}

static void ops_accumulate(int64_t n, const float *d_src, float *d_dst) {
    if (ops_vec4(n, d_src, d_dst, d_dst)) k_accumulate4<<<ops_grid(n / 4), 256>>>(n / 4, (const float4 *)d_src, (float4 *)d_dst);
    else k_accumulate<<<ops_grid(n), 256>>>(n, d_src, d_dst);
}

/* db[j] += sum over the rows of dy[row, j]: one thread per column, rows in
 * order (unrolled so that the loads are in flight together) */
__global__ void k_colsum(int64_t rows, int64_t cols, const float *__restrict__ dy, float *__restrict__ db) {
    GRID_STRIDE(j, cols) {
        float s = 0.0f;
#pragma unroll 8
        for (int64_t r = 0; r < rows; r++) s += dy[r * cols + j];
        db[j] += s;
    }
}

extern "C" void cu_op_add(int64_t na, int64_t nb, const float *d_a, const float *d_b, float *d_y) {
    MX_ASSERT(nb > 0 && na % nb == 0);
    if (na == nb && ops_vec4(na, d_a, d_b, d_y)) {
        k_add_same4<<<ops_grid(na / 4), 256>>>(na / 4, (const float4 *)d_a, (const float4 *)d_b, (float4 *)d_y);
    } else {
        int64_t rows = na / nb;
        dim3 grid((unsigned)((nb + 255) / 256 < 65535 ? (nb + 255) / 256 : 65535),
                  (unsigned)(rows < 65535 ? rows : 65535));
        k_add_rows<<<grid, 256>>>(rows, nb, d_a, d_b, d_y);
    }
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_add_backward(int64_t na, int64_t nb, const float *d_dy, float *d_da, float *d_db) {
    MX_ASSERT(nb > 0 && na % nb == 0);
    if (d_da) ops_accumulate(na, d_dy, d_da);
    if (d_db && na == nb) ops_accumulate(nb, d_dy, d_db);
    else if (d_db) k_colsum<<<ops_grid(nb), 256>>>(na / nb, nb, d_dy, d_db);
    CU_CHECK_LAUNCH();
}

/* Softmax over rows of d: one warp per row (max, sum of exponentials, scale). */
__global__ void k_softmax(int64_t rows, int64_t d, float scale, const float *__restrict__ x, float *__restrict__ y) {
    int lane = threadIdx.x & 31;
    int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
        const float *xr = x + r * d;
        float *yr = y + r * d, mx = -INFINITY, sum = 0.0f;
        for (int64_t j = lane; j < d; j += 32) mx = fmaxf(mx, xr[j] * scale);
        for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        for (int64_t j = lane; j < d; j += 32) sum += (yr[j] = mx_expf(xr[j] * scale - mx));
        for (int o = 16; o; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        for (int64_t j = lane; j < d; j += 32) yr[j] /= sum;
    }
}

/* accumulate: dx += y (dy - dot); else dx = y (dy - dot) scale (dx may be dy) */
__global__ void k_softmax_back(int64_t rows, int64_t d, float scale, bool accumulate, const float *__restrict__ y,
                               const float *dy, float *dx) {
    int lane = threadIdx.x & 31;
    int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
        const float *yr = y + r * d, *gr = dy + r * d;
        float dot = 0.0f;
        for (int64_t j = lane; j < d; j += 32) dot += yr[j] * gr[j];
        for (int o = 16; o; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        for (int64_t j = lane; j < d; j += 32) {
            float v = yr[j] * (gr[j] - dot);
            if (accumulate) dx[r * d + j] += v;
            else dx[r * d + j] = v * scale;
        }
    }
}

static int rows_grid(int64_t rows) {
    int64_t b = (rows + 7) / 8; /* 8 warps of 32 per 256-thread block */
    return (int)(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

extern "C" void cu_op_softmax(int64_t rows, int64_t d, const float *d_x, float *d_y) {
    if (rows <= 0) return;
    k_softmax<<<rows_grid(rows), 256>>>(rows, d, 1.0f, d_x, d_y);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_softmax_scaled(int64_t rows, int64_t d, float scale, const float *d_x, float *d_y) {
    if (rows <= 0) return;
    k_softmax<<<rows_grid(rows), 256>>>(rows, d, scale, d_x, d_y);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_softmax_backward_scaled(int64_t rows, int64_t d, float scale, const float *d_y,
                                              const float *d_dy, float *d_dx) {
    if (rows <= 0) return;
    k_softmax_back<<<rows_grid(rows), 256>>>(rows, d, scale, false, d_y, d_dy, d_dx);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_softmax_backward(int64_t rows, int64_t d, const float *d_y, const float *d_dy, float *d_dx) {
    if (rows <= 0) return;
    k_softmax_back<<<rows_grid(rows), 256>>>(rows, d, 1.0f, true, d_y, d_dy, d_dx);
    CU_CHECK_LAUNCH();
}

/* Dropout / drop-path: y = x * scale(i), dx += dy * scale(i), the scale drawn
 * from the same Philox words as the CPU's (ag_k_drop_scale). */
__global__ void k_drop(int64_t n, uint64_t seed, uint64_t stream, float p, int64_t group, const float *__restrict__ x,
                       float *__restrict__ y, bool accumulate) {
    GRID_STRIDE(i, n) {
        float v = x[i] * ag_k_drop_scale(seed, stream, p, group, i);
        if (accumulate) y[i] += v;
        else y[i] = v;
    }
}

extern "C" void cu_op_drop(int64_t n, uint64_t seed, uint64_t stream, float p, int64_t group, const float *d_x,
                           float *d_y) {
    if (n <= 0) return;
    k_drop<<<ops_grid(n), 256>>>(n, seed, stream, p, group, d_x, d_y, false);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_drop_backward(int64_t n, uint64_t seed, uint64_t stream, float p, int64_t group,
                                    const float *d_dy, float *d_dx) {
    if (n <= 0) return;
    k_drop<<<ops_grid(n), 256>>>(n, seed, stream, p, group, d_dy, d_dx, true);
    CU_CHECK_LAUNCH();
}

/* ---------------- layernorm over the last axis ---------------- */

/* Warp sum of a double. */
__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

#define WARP_ROWS(r, rows)                                                                                     \
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < (rows);                  \
         r += (int64_t)gridDim.x * (blockDim.x / 32))

/* The CPU's arithmetic (autograd/ops_norm.c): sums in double, the rest in float. */
__global__ void k_layernorm(int64_t rows, int64_t d, float eps, const float *__restrict__ x,
                            const float *__restrict__ g, const float *__restrict__ b, float *__restrict__ y,
                            float *__restrict__ mean, float *__restrict__ rstd) {
    int lane = threadIdx.x & 31;
    WARP_ROWS(r, rows) {
        const float *xr = x + r * d;
        double s1 = 0, s2 = 0;
        for (int64_t j = lane; j < d; j += 32) s1 += xr[j];
        double m = warp_sum(s1) / (double)d;
        for (int64_t j = lane; j < d; j += 32) s2 += (xr[j] - m) * (xr[j] - m);
        float rs = (float)(1.0 / sqrt(warp_sum(s2) / (double)d + eps));
        if (lane == 0) mean[r] = (float)m, rstd[r] = rs;
        for (int64_t j = lane; j < d; j += 32) y[r * d + j] = (xr[j] - (float)m) * rs * g[j] + b[j];
    }
}

__global__ void k_layernorm_back_dx(int64_t rows, int64_t d, const float *__restrict__ x, const float *__restrict__ g,
                                    const float *__restrict__ mean, const float *__restrict__ rstd,
                                    const float *__restrict__ dy, float *__restrict__ dx) {
    int lane = threadIdx.x & 31;
    WARP_ROWS(r, rows) {
        const float *xr = x + r * d, *dr = dy + r * d;
        float m = mean[r], rs = rstd[r];
        double a = 0, bs = 0;
        for (int64_t j = lane; j < d; j += 32) {
            double dxh = (double)dr[j] * g[j];
            a += dxh;
            bs += dxh * ((xr[j] - m) * rs);
        }
        float ma = (float)(warp_sum(a) / (double)d), mb = (float)(warp_sum(bs) / (double)d);
        for (int64_t j = lane; j < d; j += 32) {
            float xhat = (xr[j] - m) * rs;
            dx[r * d + j] += rs * (dr[j] * g[j] - ma - xhat * mb);
        }
    }
}

/* dgamma[j] += sum dy xhat, dbeta[j] += sum dy, deterministically: each
 * block sums a chunk of LN_PER rows for 32 columns, 8 row lanes each taking
 * every 8th row (loads in flight together), the lanes added in order through
 * shared memory; k_chunks_total then adds the chunks, a warp per column. */
#define LN_PER 256
__global__ void __launch_bounds__(256) k_layernorm_back_part(int64_t rows, int64_t d, const float *__restrict__ x,
                                                             const float *__restrict__ mean,
                                                             const float *__restrict__ rstd,
                                                             const float *__restrict__ dy, float *__restrict__ part) {
    __shared__ float sg[8][33], sb[8][33];
    int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    int64_t j = (int64_t)blockIdx.x * 32 + tx, r0 = (int64_t)blockIdx.y * LN_PER;
    int64_t r1 = r0 + LN_PER < rows ? r0 + LN_PER : rows;
    float ag = 0, ab = 0;
    if (j < d) {
#pragma unroll 4
        for (int64_t r = r0 + ty; r < r1; r += 8) {
            float g = dy[r * d + j];
            ag += g * ((x[r * d + j] - mean[r]) * rstd[r]);
            ab += g;
        }
    }
    sg[ty][tx] = ag, sb[ty][tx] = ab;
    __syncthreads();
    if (ty == 0 && j < d) {
        float tg = 0, tb = 0;
        for (int k = 0; k < 8; k++) tg += sg[k][tx], tb += sb[k][tx];
        part[(int64_t)blockIdx.y * 2 * d + j] = tg;
        part[(int64_t)blockIdx.y * 2 * d + d + j] = tb;
    }
}

/* out[j] += the sum of nch chunks' partials (stride between chunks: ld): a
 * warp per column, lanes over chunks, then the warp's fixed shuffle order */
__global__ void k_chunks_total(int64_t cols, int64_t nch, int64_t ld, const float *__restrict__ part, float *out) {
    int lane = threadIdx.x & 31;
    WARP_ROWS(j, cols) {
        float s = 0;
        for (int64_t k = lane; k < nch; k += 32) s += part[k * ld + j];
        for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) out[j] += s;
    }
}

extern "C" void cu_op_layernorm(int64_t rows, int64_t d, float eps, const float *d_x, const float *d_gamma,
                                const float *d_beta, float *d_y, float *d_mean, float *d_rstd) {
    if (rows <= 0) return;
    k_layernorm<<<rows_grid(rows), 256>>>(rows, d, eps, d_x, d_gamma, d_beta, d_y, d_mean, d_rstd);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_layernorm_backward(int64_t rows, int64_t d, const float *d_x, const float *d_gamma,
                                         const float *d_mean, const float *d_rstd, const float *d_dy, float *d_dx,
                                         float *d_dgamma, float *d_dbeta) {
    if (rows <= 0) return;
    if (d_dx) k_layernorm_back_dx<<<rows_grid(rows), 256>>>(rows, d, d_x, d_gamma, d_mean, d_rstd, d_dy, d_dx);
    if (d_dgamma || d_dbeta) {
        int64_t nch = (rows + LN_PER - 1) / LN_PER;
        MX_ASSERT(nch < 65536);
        float *part = (float *)ops_work(sizeof(float) * (size_t)(2 * nch * d));
        dim3 grid((unsigned)((d + 31) / 32), (unsigned)nch);
        k_layernorm_back_part<<<grid, 256>>>(rows, d, d_x, d_mean, d_rstd, d_dy, part);
        if (d_dgamma) k_chunks_total<<<rows_grid(d), 256>>>(d, nch, 2 * d, part, d_dgamma);
        if (d_dbeta) k_chunks_total<<<rows_grid(d), 256>>>(d, nch, 2 * d, part + d, d_dbeta);
    }
    CU_CHECK_LAUNCH();
}

/* ---------------- cross-entropy with label smoothing ---------------- */

/* A warp per row (the CPU's arithmetic, in double): probabilities, and the
 * row's loss in row_loss[i]; k_mean_loss adds the rows in order. */
__global__ void k_cross_entropy(int64_t n, int64_t c, const float *__restrict__ logits,
                                const int32_t *__restrict__ labels, float smoothing, float *__restrict__ prob,
                                double *__restrict__ row_loss) {
    int lane = threadIdx.x & 31;
    WARP_ROWS(i, n) {
        const float *r = logits + i * c;
        double mx = -INFINITY, s = 0, sl = 0;
        for (int64_t k = lane; k < c; k += 32) mx = r[k] > mx ? r[k] : mx;
        for (int o = 16; o; o >>= 1) mx = fmax(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        for (int64_t k = lane; k < c; k += 32) {
            s += exp(r[k] - mx);
            sl += r[k];
        }
        s = warp_sum(s);
        sl = warp_sum(sl);
        double lse = mx + log(s);
        for (int64_t k = lane; k < c; k += 32) prob[i * c + k] = (float)exp(r[k] - lse);
        if (lane == 0) {
            double nll = lse - r[labels[i]], smooth = lse - sl / (double)c;
            row_loss[i] = (1.0 - smoothing) * nll + smoothing * smooth;
        }
    }
}

__global__ void k_mean_loss(int64_t n, const double *__restrict__ row_loss, float *__restrict__ loss) {
    double t = 0;
    for (int64_t i = 0; i < n; i++) t += row_loss[i];
    *loss = (float)(t / (double)n);
}

__global__ void k_cross_entropy_back(int64_t n, int64_t c, const float *__restrict__ prob,
                                     const int32_t *__restrict__ labels, float smoothing,
                                     const float *__restrict__ dloss, float *__restrict__ dx) {
    float off = smoothing / (float)c, g = *dloss / (float)n;
    GRID_STRIDE(e, n * c) {
        int64_t i = e / c, k = e - i * c;
        float target = off + (k == labels[i] ? 1.0f - smoothing : 0.0f);
        dx[e] += g * (prob[e] - target);
    }
}

extern "C" void cu_op_cross_entropy(int64_t n, int64_t c, const float *d_logits, const int32_t *d_labels,
                                    float smoothing, float *d_prob, double *d_work, float *d_loss) {
    k_cross_entropy<<<rows_grid(n), 256>>>(n, c, d_logits, d_labels, smoothing, d_prob, d_work);
    k_mean_loss<<<1, 1>>>(n, d_work, d_loss);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_cross_entropy_backward(int64_t n, int64_t c, const float *d_prob, const int32_t *d_labels,
                                             float smoothing, const float *d_dloss, float *d_dx) {
    k_cross_entropy_back<<<ops_grid(n * c), 256>>>(n, c, d_prob, d_labels, smoothing, d_dloss, d_dx);
    CU_CHECK_LAUNCH();
}

/* ---------------- optimizer updates ---------------- */

__global__ void k_adamw(int64_t n, optim_k_adamw a, float *__restrict__ p, const float *__restrict__ g,
                        float *__restrict__ m, float *__restrict__ v) {
    GRID_STRIDE(i, n) optim_k_adamw_update(&a, &p[i], &m[i], &v[i], g[i]);
}

__global__ void k_sgd(int64_t n, optim_k_sgd a, float *__restrict__ p, const float *__restrict__ g,
                      float *__restrict__ buf) {
    GRID_STRIDE(i, n) optim_k_sgd_update(&a, &p[i], &buf[i], g[i]);
}

extern "C" void cu_optim_adamw(int64_t n, const optim_k_adamw *a, float *d_p, const float *d_g, float *d_m,
                               float *d_v) {
    if (n <= 0) return;
    k_adamw<<<ops_grid(n), 256>>>(n, *a, d_p, d_g, d_m, d_v);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_optim_sgd(int64_t n, const optim_k_sgd *a, float *d_p, const float *d_g, float *d_buf) {
    if (n <= 0) return;
    k_sgd<<<ops_grid(n), 256>>>(n, *a, d_p, d_g, d_buf);
    CU_CHECK_LAUNCH();
}

/* ---------------- batchnorm2d (NHWC, per channel; fused residual add + ReLU) ----------------
 * The per-channel sums are deterministic (a resumed run must give the same
 * bits): each block sums a fixed chunk of rows into its own slot of the work
 * buffer, then one pass adds the slots in order. Sums in double, as on the CPU. */

#define BN_ROWS_PER_BLOCK 256
#define BN_MAX_CHUNKS 4096
#define BN_THREADS 256

static int64_t bn_chunks(int64_t rows) {
    int64_t ch = (rows + BN_ROWS_PER_BLOCK - 1) / BN_ROWS_PER_BLOCK;
    return ch < BN_MAX_CHUNKS ? (ch > 0 ? ch : 1) : BN_MAX_CHUNKS;
}

/* The chunks' sums (2c doubles each), their totals (2c), then the backward's
 * per-channel coefficients (3c floats, in 2c doubles' room). */
extern "C" size_t cu_bn_work_bytes(int64_t rows, int64_t c) {
    return sizeof(double) * (2 * (size_t)(bn_chunks(rows) + 2) * (size_t)c + 2);
}

/* V consecutive floats: one 16-byte access when V = 4 */
template <int V>
__device__ __forceinline__ void bn_load(const float *__restrict__ p, float *v) {
    if (V == 4) {
        float4 q = *reinterpret_cast<const float4 *>(p);
        v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    } else {
        for (int e = 0; e < V; e++) v[e] = p[e];
    }
}
template <int V>
__device__ __forceinline__ void bn_store(float *__restrict__ p, const float *v) {
    if (V == 4) *reinterpret_cast<float4 *>(p) = make_float4(v[0], v[1], v[2], v[3]);
    else
        for (int e = 0; e < V; e++) p[e] = v[e];
}

/* Sums over a chunk of rows per block: without dy s1 = x, s2 = x^2; with dy
 * s1 = g, s2 = g xhat, g = dy masked by y > 0 (relu). Each thread takes V
 * adjacent channels (16-byte loads when V = 4); with cv = c / V <= 256 the
 * block's threads are sub = 256 / cv row groups (coalesced rows; row r goes
 * to group (r - r0) % sub), added group by group at the end; wider layers
 * loop over channels. Fixed assignment: deterministic. */
template <int V>
__global__ void __launch_bounds__(BN_THREADS) k_bn_partial(int64_t rows, int64_t c, int64_t per,
                                                           const float *__restrict__ x, const float *__restrict__ dy,
                                                           const float *__restrict__ y, const float *__restrict__ mean,
                                                           const float *__restrict__ invstd, double *__restrict__ part) {
    __shared__ double s1[BN_THREADS * V], s2[BN_THREADS * V];
    int64_t r0 = (int64_t)blockIdx.x * per, r1 = r0 + per < rows ? r0 + per : rows;
    int tid = threadIdx.x, cv = (int)(c / V);
    int cw = cv <= BN_THREADS ? cv : BN_THREADS; /* vector columns per pass */
    int sub = BN_THREADS / cw;
    for (int j0 = 0; j0 < cv; j0 += cw) {
        int jv = j0 + tid % cw, g = tid / cw;
        double p1[V], p2[V];
        for (int e = 0; e < V; e++) p1[e] = p2[e] = 0;
        if (g < sub && jv < cv) {
            float m[V], is[V];
            for (int e = 0; e < V; e++) m[e] = dy ? mean[jv * V + e] : 0.0f, is[e] = dy ? invstd[jv * V + e] : 0.0f;
#pragma unroll 4
            for (int64_t r = r0 + g; r < r1; r += sub) {
                int64_t o = r * c + (int64_t)jv * V;
                float xv[V];
                bn_load<V>(x + o, xv);
                if (dy) {
                    float dv[V], yv[V];
                    bn_load<V>(dy + o, dv);
                    if (y) bn_load<V>(y + o, yv);
                    for (int e = 0; e < V; e++) {
                        double d = (!y || yv[e] > 0.0f) ? dv[e] : 0.0f;
                        p1[e] += d;
                        p2[e] += d * ((xv[e] - m[e]) * is[e]);
                    }
                } else {
                    for (int e = 0; e < V; e++) p1[e] += xv[e], p2[e] += (double)xv[e] * xv[e];
                }
            }
        }
        for (int e = 0; e < V; e++) s1[e * BN_THREADS + tid] = p1[e], s2[e * BN_THREADS + tid] = p2[e];
        __syncthreads();
        if (tid < cw && j0 + tid < cv)
            for (int e = 0; e < V; e++) {
                double t1 = 0, t2 = 0;
                for (int k = 0; k < sub; k++) t1 += s1[e * BN_THREADS + k * cw + tid], t2 += s2[e * BN_THREADS + k * cw + tid];
                int64_t ch = (int64_t)(j0 + tid) * V + e;
                part[(int64_t)blockIdx.x * 2 * c + ch] = t1;
                part[(int64_t)blockIdx.x * 2 * c + c + ch] = t2;
            }
        __syncthreads();
    }
}

/* The chunks' sums per channel (a block per channel: strided partial sums,
 * then a fixed tree), into the pair of rows after the chunks'. */
__global__ void k_bn_total(int64_t c, int64_t nch, double *part) {
    __shared__ double s1[BN_THREADS], s2[BN_THREADS];
    int64_t j = blockIdx.x;
    int tid = threadIdx.x;
    double t1 = 0, t2 = 0;
    for (int64_t k = tid; k < nch; k += BN_THREADS) t1 += part[k * 2 * c + j], t2 += part[k * 2 * c + c + j];
    s1[tid] = t1;
    s2[tid] = t2;
    __syncthreads();
    for (int o = BN_THREADS / 2; o; o >>= 1) {
        if (tid < o) s1[tid] += s1[tid + o], s2[tid] += s2[tid + o];
        __syncthreads();
    }
    if (tid == 0) part[nch * 2 * c + j] = s1[0], part[nch * 2 * c + c + j] = s2[0];
}

/* 4 when c and every pointer allow 16-byte accesses, else 1 */
static int bn_vec(int64_t c, const void *a, const void *b, const void *d, const void *e, const void *f) {
    uintptr_t u = (uintptr_t)a | (uintptr_t)b | (uintptr_t)d | (uintptr_t)e | (uintptr_t)f;
    return c % 4 == 0 && u % 16 == 0 ? 4 : 1;
}

static double *bn_sums(int64_t rows, int64_t c, const float *x, const float *dy, const float *y,
                             const float *mean, const float *invstd, double *work) {
    int64_t nch = bn_chunks(rows), per = (rows + nch - 1) / nch;
    if (bn_vec(c, x, dy, y, NULL, NULL) == 4)
        k_bn_partial<4><<<(unsigned)nch, BN_THREADS>>>(rows, c, per, x, dy, y, mean, invstd, work);
    else
        k_bn_partial<1><<<(unsigned)nch, BN_THREADS>>>(rows, c, per, x, dy, y, mean, invstd, work);
    k_bn_total<<<(unsigned)c, BN_THREADS>>>(c, nch, work);
    CU_CHECK_LAUNCH();
    return work + nch * 2 * c;
}

/* synced: the row count summed over the ranks follows the sums (saved in rows_all for the backward) */
__global__ void k_bn_stats(int64_t rows, int64_t c, bool train, bool synced, float momentum, float eps,
                           const double *sums, float *running_mean, float *running_var, float *mean, float *invstd,
                           double *rows_all) {
    if (train && synced) rows = (int64_t)sums[2 * c];
    if (synced && blockIdx.x == 0 && threadIdx.x == 0) *rows_all = (double)rows;
    GRID_STRIDE(j, c) {
        if (train) {
            ag_k_bn_stats(sums[j], sums[c + j], rows, momentum, eps, &mean[j], &invstd[j],
                          running_mean ? &running_mean[j] : NULL, running_mean ? &running_var[j] : NULL);
        } else {
            mean[j] = running_mean[j];
            invstd[j] = ag_k_bn_eval_invstd(running_var[j], eps);
        }
    }
}

/* The channel of flat element o (c a power of two: a mask, else a division). */
__device__ __forceinline__ int64_t bn_channel(int64_t o, int64_t c, bool pow2) { return pow2 ? (o & (c - 1)) : o % c; }

/* A thread per V adjacent elements of one row (V divides c). */
template <int V>
__global__ void k_bn_apply(int64_t rows, int64_t c, bool pow2, bool relu, bool bf16, const float *__restrict__ x,
                           const float *__restrict__ mean, const float *__restrict__ invstd, const float *__restrict__ g,
                           const float *__restrict__ b, const float *__restrict__ res, float *__restrict__ y) {
    GRID_STRIDE(iv, rows * c / V) {
        int64_t o = iv * V, j = bn_channel(o, c, pow2);
        float xv[V], rv[V], out[V];
        bn_load<V>(x + o, xv);
        if (res) bn_load<V>(res + o, rv);
        for (int e = 0; e < V; e++) {
            float v = (xv[e] - mean[j + e]) * invstd[j + e] * g[j + e] + b[j + e];
            if (bf16) {
                v = ag_bf16_round(v);
                if (res) v = ag_bf16_round(v + rv[e]);
            } else if (res) {
                v = v + rv[e];
            }
            out[e] = relu ? (v > 0.0f ? v : 0.0f) : v;
        }
        bn_store<V>(y + o, out);
    }
}

extern "C" void cu_op_batchnorm(const cu_bn_args *a, const float *d_x, const float *d_gamma, const float *d_beta,
                                const float *d_res, float *d_running_mean, float *d_running_var, float *d_y,
                                float *d_mean, float *d_invstd, double *d_work) {
    double *sums = a->train ? bn_sums(a->rows, a->c, d_x, NULL, NULL, NULL, NULL, d_work) : NULL;
    if (a->train && a->synced) { /* the global batch's statistics: sums and row count over the ranks */
        double rows = (double)a->rows;
        CU_CHECK(cudaMemcpyAsync(sums + 2 * a->c, &rows, sizeof rows, cudaMemcpyHostToDevice, 0));
        cu_nccl_sum_f64(sums, 2 * a->c + 1);
    }
    k_bn_stats<<<ops_grid(a->c), 256>>>(a->rows, a->c, a->train, a->synced, a->momentum, a->eps, sums,
                                        d_running_mean, d_running_var, d_mean, d_invstd, a->d_rows_all);
    bool pow2 = (a->c & (a->c - 1)) == 0;
    if (bn_vec(a->c, d_x, d_res, d_y, NULL, NULL) == 4)
        k_bn_apply<4><<<ops_grid(a->rows * a->c / 4), 256>>>(a->rows, a->c, pow2, a->relu, a->bf16, d_x, d_mean,
                                                             d_invstd, d_gamma, d_beta, d_res, d_y);
    else
        k_bn_apply<1><<<ops_grid(a->rows * a->c), 256>>>(a->rows, a->c, pow2, a->relu, a->bf16, d_x, d_mean, d_invstd,
                                                         d_gamma, d_beta, d_res, d_y);
    CU_CHECK_LAUNCH();
}

/* The backward's per-channel coefficients, once per channel instead of per element: k1 = gamma * invstd,
 * k2 = mean of g, k3 = mean of g xhat (train; 0 in eval), each rounded to float as before. */
__global__ void k_bn_coef(int64_t rows, int64_t c, bool train, const float *__restrict__ g,
                          const float *__restrict__ invstd, const double *__restrict__ sums,
                          const double *__restrict__ rows_all, float *__restrict__ coef) {
    if (rows_all) rows = (int64_t)*rows_all;
    GRID_STRIDE(j, c) {
        coef[j] = g[j] * invstd[j];
        coef[c + j] = train ? (float)(sums[j] / (double)rows) : 0.0f;
        coef[2 * c + j] = train ? (float)(sums[c + j] / (double)rows) : 0.0f;
    }
}

template <int V>
__global__ void k_bn_back_dx(int64_t rows, int64_t c, bool pow2, const float *__restrict__ x,
                             const float *__restrict__ mean, const float *__restrict__ invstd,
                             const float *__restrict__ coef, const float *__restrict__ y, const float *__restrict__ dy,
                             float *__restrict__ dx, float *__restrict__ dres) {
    GRID_STRIDE(iv, rows * c / V) {
        int64_t o = iv * V, j = bn_channel(o, c, pow2);
        float dv[V], yv[V], d[V];
        bn_load<V>(dy + o, dv);
        if (y) bn_load<V>(y + o, yv);
        for (int e = 0; e < V; e++) d[e] = (!y || yv[e] > 0.0f) ? dv[e] : 0.0f;
        if (dres) {
            float rv[V];
            bn_load<V>(dres + o, rv);
            for (int e = 0; e < V; e++) rv[e] += d[e];
            bn_store<V>(dres + o, rv);
        }
        if (!dx) continue;
        float xv[V], gv[V];
        bn_load<V>(x + o, xv);
        bn_load<V>(dx + o, gv);
        for (int e = 0; e < V; e++) {
            float xhat = (xv[e] - mean[j + e]) * invstd[j + e];
            gv[e] += coef[j + e] * (d[e] - coef[c + j + e] - xhat * coef[2 * c + j + e]);
        }
        bn_store<V>(dx + o, gv);
    }
}

__global__ void k_bn_back_gb(int64_t c, const double *__restrict__ sums, float *dg, float *db) {
    GRID_STRIDE(j, c) {
        if (dg) dg[j] += (float)sums[c + j];
        if (db) db[j] += (float)sums[j];
    }
}

extern "C" void cu_op_batchnorm_backward(const cu_bn_args *a, const float *d_x, const float *d_gamma,
                                         const float *d_y, const float *d_mean, const float *d_invstd,
                                         const float *d_dy, float *d_dx, float *d_dgamma, float *d_dbeta,
                                         float *d_dres, double *d_work) {
    const float *ymask = a->relu ? d_y : NULL;
    double *sums = bn_sums(a->rows, a->c, d_x, d_dy, ymask, d_mean, d_invstd, d_work);
    /* dgamma and dbeta: this rank's (the gradient sums add the ranks'); dx: the global batch's sums */
    if (d_dgamma || d_dbeta) k_bn_back_gb<<<ops_grid(a->c), 256>>>(a->c, sums, d_dgamma, d_dbeta);
    if (d_dx || d_dres) {
        bool global = a->train && a->synced;
        if (global && d_dx) cu_nccl_sum_f64(sums, 2 * a->c);
        float *coef = (float *)(sums + 2 * a->c + 1);
        k_bn_coef<<<ops_grid(a->c), 256>>>(a->rows, a->c, a->train, d_gamma, d_invstd, sums,
                                           global ? a->d_rows_all : NULL, coef);
        bool pow2 = (a->c & (a->c - 1)) == 0;
        if (bn_vec(a->c, d_x, ymask, d_dy, d_dx, d_dres) == 4)
            k_bn_back_dx<4><<<ops_grid(a->rows * a->c / 4), 256>>>(a->rows, a->c, pow2, d_x, d_mean, d_invstd, coef,
                                                                   ymask, d_dy, d_dx, d_dres);
        else
            k_bn_back_dx<1><<<ops_grid(a->rows * a->c), 256>>>(a->rows, a->c, pow2, d_x, d_mean, d_invstd, coef,
                                                               ymask, d_dy, d_dx, d_dres);
    }
    CU_CHECK_LAUNCH();
}

/* ---------------- pooling (NHWC) ---------------- */

/* The CPU's rule: the first maximum of the window in (i, j) order; its flat input index saved. */
__global__ void k_maxpool(int64_t n, int64_t h, int64_t w, int64_t c, int k, int stride, int pad, int64_t oh_,
                          int64_t ow_, const float *__restrict__ x, float *__restrict__ y, int32_t *__restrict__ arg) {
    GRID_STRIDE(o, n * oh_ * ow_ * c) { /* 32-bit index math: the caller checks the sizes */
        int t = (int)o / (int)c, ch = (int)o - t * (int)c, t2 = t / (int)ow_, ow = t - t2 * (int)ow_,
            b = t2 / (int)oh_, oh = t2 - b * (int)oh_;
        int64_t bi;
        y[o] = ag_k_maxpool_window(x, b, oh, ow, ch, h, w, c, k, stride, pad, &bi);
        arg[o] = (int32_t)bi;
    }
}

/* Gathered per input element over the outputs whose windows hold it, in
 * output order: the CPU's sequential scatter, the same sums (deterministic). */
__global__ void k_maxpool_back(int64_t n, int64_t h, int64_t w, int64_t c, int k, int stride, int pad, int64_t oh_,
                               int64_t ow_, const int32_t *__restrict__ arg, const float *__restrict__ dy,
                               float *__restrict__ dx) {
    GRID_STRIDE(idx, n * h * w * c) { /* 32-bit index math: the caller checks the sizes */
        int ci = (int)c, t = (int)idx / ci, ch = (int)idx - t * ci, t2 = t / (int)w, iw = t - t2 * (int)w,
            b = t2 / (int)h, ih = t2 - b * (int)h, OH = (int)oh_, OW = (int)ow_;
        /* outputs oh with oh*stride - pad <= ih <= oh*stride - pad + k - 1 */
        int oh0 = ih + pad - k + 1, ow0 = iw + pad - k + 1;
        oh0 = oh0 > 0 ? (oh0 + stride - 1) / stride : 0;
        ow0 = ow0 > 0 ? (ow0 + stride - 1) / stride : 0;
        float acc = dx[idx];
        for (int oh = oh0; oh < OH && oh * stride - pad <= ih; oh++)
            for (int ow = ow0; ow < OW && ow * stride - pad <= iw; ow++) {
                int o = ((b * OH + oh) * OW + ow) * ci + ch;
                if (arg[o] == (int32_t)idx) acc += dy[o];
            }
        dx[idx] = acc;
    }
}

extern "C" void cu_op_maxpool(int64_t n, int64_t h, int64_t w, int64_t c, int k, int stride, int pad,
                              const float *d_x, float *d_y, int32_t *d_arg) {
    int64_t oh = (h + 2 * pad - k) / stride + 1, ow = (w + 2 * pad - k) / stride + 1;
    MX_ASSERT(n * h * w * c < INT32_MAX && n * oh * ow * c < INT32_MAX);
    k_maxpool<<<ops_grid(n * oh * ow * c), 256>>>(n, h, w, c, k, stride, pad, oh, ow, d_x, d_y, d_arg);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_maxpool_backward(int64_t n, int64_t h, int64_t w, int64_t c, int k, int stride, int pad,
                                       const int32_t *d_arg, const float *d_dy, float *d_dx) {
    int64_t oh = (h + 2 * pad - k) / stride + 1, ow = (w + 2 * pad - k) / stride + 1;
    MX_ASSERT(n * h * w * c < INT32_MAX && n * oh * ow * c < INT32_MAX);
    k_maxpool_back<<<ops_grid(n * h * w * c), 256>>>(n, h, w, c, k, stride, pad, oh, ow, d_arg, d_dy, d_dx);
    CU_CHECK_LAUNCH();
}

/* Global average: a thread per (sample, channel), positions in order as on the CPU. */
__global__ void k_avgpool(int64_t n, int64_t hw, int64_t c, const float *__restrict__ x, float *__restrict__ y) {
    GRID_STRIDE(t, n * c) {
        int64_t b = t / c, ch = t % c;
        float s = 0;
        for (int64_t p = 0; p < hw; p++) s += x[(b * hw + p) * c + ch];
        y[t] = s / (float)hw;
    }
}

__global__ void k_avgpool_back(int64_t n, int64_t hw, int64_t c, const float *__restrict__ dy, float *__restrict__ dx) {
    GRID_STRIDE(i, n * hw * c) {
        int64_t ch = i % c, b = i / (hw * c);
        dx[i] += dy[b * c + ch] / (float)hw;
    }
}

extern "C" void cu_op_avgpool_global(int64_t n, int64_t hw, int64_t c, const float *d_x, float *d_y) {
    k_avgpool<<<ops_grid(n * c), 256>>>(n, hw, c, d_x, d_y);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_avgpool_global_backward(int64_t n, int64_t hw, int64_t c, const float *d_dy, float *d_dx) {
    k_avgpool_back<<<ops_grid(n * hw * c), 256>>>(n, hw, c, d_dy, d_dx);
    CU_CHECK_LAUNCH();
}

/* ---------------- shape ops ---------------- */

/* dst (contiguous, oshape) = or += src walked with istride (ag_permute_plan);
 * index type I: 32-bit where every offset fits (the divisions per element
 * are then a few instructions, not a 64-bit routine) */
template <typename T, typename I>
__global__ void k_strided(I n, I o1, I o2, I o3, I s0, I s1, I s2, I s3, const T *__restrict__ src,
                          T *__restrict__ dst, bool add) {
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (I)gridDim.x * blockDim.x) {
        I e = i % o3, t = i / o3, c = t % o2, t2 = t / o2, b = t2 % o1, a = t2 / o1;
        T v = src[a * s0 + b * s1 + c * s2 + e * s3];
        if constexpr (sizeof(T) == sizeof(float)) dst[i] = add ? dst[i] + v : v;
        else dst[i] = v;
    }
}

template <typename T>
static void ops_strided(const int64_t *o, const int64_t *st, const T *d_src, T *d_dst, bool add) {
    int64_t n = o[0] * o[1] * o[2] * o[3], last = 0;
    if (n <= 0) return;
    for (int k = 0; k < 4; k++) last += (o[k] - 1) * st[k];
    if (n < (1ll << 30) && last < (1ll << 30))
        k_strided<T, int32_t><<<ops_grid(n), 256>>>((int32_t)n, (int32_t)o[1], (int32_t)o[2], (int32_t)o[3],
                                                    (int32_t)st[0], (int32_t)st[1], (int32_t)st[2], (int32_t)st[3],
                                                    d_src, d_dst, add);
    else
        k_strided<T, int64_t><<<ops_grid(n), 256>>>(n, o[1], o[2], o[3], st[0], st[1], st[2], st[3], d_src, d_dst, add);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_strided(const int64_t *oshape, const int64_t *istride, const float *d_src, float *d_dst,
                              bool add) {
    ops_strided(oshape, istride, d_src, d_dst, add);
}

/* concat viewed as [outer, len, inner]: y rows take a's then b's; a may repeat every a_outer rows */
__global__ void k_concat(int64_t outer, int64_t pa, int64_t pb, int64_t a_outer, const float *__restrict__ a,
                         const float *__restrict__ b, float *__restrict__ y) {
    GRID_STRIDE(i, outer * (pa + pb)) {
        int64_t o = i / (pa + pb), r = i - o * (pa + pb);
        y[i] = r < pa ? a[(o % a_outer) * pa + r] : b[o * pb + r - pa];
    }
}

/* da (a_outer x pa) += the rows of dy that took it, in row order; db += its part */
__global__ void k_concat_back_a(int64_t outer, int64_t pa, int64_t pb, int64_t a_outer, const float *__restrict__ dy,
                                float *__restrict__ da) {
    GRID_STRIDE(i, a_outer * pa) {
        int64_t ao = i / pa, r = i - ao * pa;
        float acc = da[i];
        for (int64_t o = ao; o < outer; o += a_outer) acc += dy[o * (pa + pb) + r];
        da[i] = acc;
    }
}

__global__ void k_concat_back_b(int64_t outer, int64_t pa, int64_t pb, const float *__restrict__ dy,
                                float *__restrict__ db) {
    GRID_STRIDE(i, outer * pb) {
        int64_t o = i / pb, r = i - o * pb;
        db[i] += dy[o * (pa + pb) + pa + r];
    }
}

extern "C" void cu_op_concat(int64_t outer, int64_t pa, int64_t pb, int64_t a_outer, const float *d_a,
                             const float *d_b, float *d_y) {
    k_concat<<<ops_grid(outer * (pa + pb)), 256>>>(outer, pa, pb, a_outer, d_a, d_b, d_y);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_concat_backward(int64_t outer, int64_t pa, int64_t pb, int64_t a_outer, const float *d_dy,
                                      float *d_da, float *d_db) {
    if (d_da) k_concat_back_a<<<ops_grid(a_outer * pa), 256>>>(outer, pa, pb, a_outer, d_dy, d_da);
    if (d_db) k_concat_back_b<<<ops_grid(outer * pb), 256>>>(outer, pa, pb, d_dy, d_db);
    CU_CHECK_LAUNCH();
}

/* slice [outer, len_in, inner] -> [outer, len, inner] from start; backward adds into that region */
__global__ void k_slice(int64_t outer, int64_t len_in, int64_t start, int64_t len, int64_t inner,
                        const float *__restrict__ src, float *__restrict__ dst, bool backward) {
    GRID_STRIDE(i, outer * len * inner) {
        int64_t o = i / (len * inner), r = i - o * len * inner;
        int64_t j = (o * len_in + start) * inner + r;
        if (backward) dst[j] += src[i];
        else dst[i] = src[j];
    }
}

extern "C" void cu_op_slice(int64_t outer, int64_t len_in, int64_t start, int64_t len, int64_t inner,
                            const float *d_x, float *d_y) {
    k_slice<<<ops_grid(outer * len * inner), 256>>>(outer, len_in, start, len, inner, d_x, d_y, false);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_slice_backward(int64_t outer, int64_t len_in, int64_t start, int64_t len, int64_t inner,
                                     const float *d_dy, float *d_dx) {
    k_slice<<<ops_grid(outer * len * inner), 256>>>(outer, len_in, start, len, inner, d_dy, d_dx, true);
    CU_CHECK_LAUNCH();
}

/* ---------------- attention's layouts ---------------- */

/* A block per token row (b, t) of qkv [B, T, 3, H, hd], threads over its 3D
 * columns, to or from q, k, v [B, H, T, hd]: reads (or writes) of the row
 * coalesced, each head's hd values contiguous on the other side. */
__global__ void k_qkv_split(int64_t b, int64_t t, int h, int hd, const float *__restrict__ qkv,
                            float *__restrict__ q, float *__restrict__ k, float *__restrict__ v) {
    int D = h * hd;
    for (int64_t row = blockIdx.x; row < b * t; row += gridDim.x) {
        int64_t bi = row / t, ti = row - bi * t;
        const float *src = qkv + row * 3 * D;
        for (int e = threadIdx.x; e < 3 * D; e += blockDim.x) {
            int part = e / D, rem = e - part * D, hi = rem / hd, i = rem - hi * hd;
            float *dst = part == 0 ? q : part == 1 ? k : v;
            dst[((bi * h + hi) * t + ti) * hd + i] = src[e];
        }
    }
}

__global__ void k_qkv_back(int64_t b, int64_t t, int h, int hd, const float *__restrict__ dq,
                           const float *__restrict__ dk, const float *__restrict__ dv, float *__restrict__ dqkv) {
    int D = h * hd;
    for (int64_t row = blockIdx.x; row < b * t; row += gridDim.x) {
        int64_t bi = row / t, ti = row - bi * t;
        float *dst = dqkv + row * 3 * D;
        for (int e = threadIdx.x; e < 3 * D; e += blockDim.x) {
            int part = e / D, rem = e - part * D, hi = rem / hd, i = rem - hi * hd;
            const float *src = part == 0 ? dq : part == 1 ? dk : dv;
            dst[e] += src[((bi * h + hi) * t + ti) * hd + i];
        }
    }
}

static int qkv_grid(int64_t rows) { return (int)(rows < 1048576 ? (rows > 0 ? rows : 1) : 1048576); }

extern "C" void cu_op_qkv_split(int64_t b, int64_t t, int64_t h, int64_t hd, const float *d_qkv, float *d_q,
                                float *d_k, float *d_v) {
    MX_ASSERT(3 * h * hd < (1 << 30));
    k_qkv_split<<<qkv_grid(b * t), 192>>>(b, t, (int)h, (int)hd, d_qkv, d_q, d_k, d_v);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_qkv_backward(int64_t b, int64_t t, int64_t h, int64_t hd, const float *d_dq, const float *d_dk,
                                   const float *d_dv, float *d_dqkv) {
    MX_ASSERT(3 * h * hd < (1 << 30));
    k_qkv_back<<<qkv_grid(b * t), 192>>>(b, t, (int)h, (int)hd, d_dq, d_dk, d_dv, d_dqkv);
    CU_CHECK_LAUNCH();
}

/* ---------------- small elementwise helpers ---------------- */

__global__ void k_round_bf16(int64_t n, float *y) { GRID_STRIDE(i, n) y[i] = ag_bf16_round(y[i]); }
__global__ void k_scale(int64_t n, float s, float *y) { GRID_STRIDE(i, n) y[i] *= s; }
__global__ void k_add_scalar(int64_t n, float v, float *y) { GRID_STRIDE(i, n) y[i] += v; }

extern "C" void cu_op_round_bf16(int64_t n, float *d_y) {
    if (n <= 0) return;
    k_round_bf16<<<ops_grid(n), 256>>>(n, d_y);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_scale(int64_t n, float s, float *d_y) {
    if (n <= 0) return;
    k_scale<<<ops_grid(n), 256>>>(n, s, d_y);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_add_scalar(int64_t n, float v, float *d_y) {
    if (n <= 0) return;
    k_add_scalar<<<ops_grid(n), 256>>>(n, v, d_y);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_accumulate(int64_t n, const float *d_src, float *d_dst) {
    if (n <= 0) return;
    k_accumulate<<<ops_grid(n), 256>>>(n, d_src, d_dst);
    CU_CHECK_LAUNCH();
}

/* Column sums by chunks of rows: partial sums per (chunk, column) into a
 * scratch buffer, then the chunks added in order (deterministic). */
#define COLSUM_ROWS 128
#define COLSUM_MAX_CHUNKS 512

__global__ void k_colsum_part(int64_t rows, int64_t cols, int64_t per, const float *__restrict__ x,
                              float *__restrict__ part) {
    int64_t r0 = (int64_t)blockIdx.y * per, r1 = r0 + per < rows ? r0 + per : rows;
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < cols; j += (int64_t)gridDim.x * blockDim.x) {
        float s = 0.0f;
#pragma unroll 8
        for (int64_t r = r0; r < r1; r++) s += x[r * cols + j];
        part[(int64_t)blockIdx.y * cols + j] = s;
    }
}



extern "C" void cu_op_colsum_add(int64_t rows, int64_t cols, const float *d_x, float *d_out) {
    if (rows <= 0 || cols <= 0) return;
    int64_t nch = (rows + COLSUM_ROWS - 1) / COLSUM_ROWS;
    nch = nch < COLSUM_MAX_CHUNKS ? nch : COLSUM_MAX_CHUNKS;
    int64_t per = (rows + nch - 1) / nch;
    float *work = (float *)ops_work(sizeof(float) * (size_t)(nch * cols));
    dim3 grid((unsigned)((cols + 127) / 128), (unsigned)nch);
    k_colsum_part<<<grid, 128>>>(rows, cols, per, d_x, work);
    k_chunks_total<<<rows_grid(cols), 256>>>(cols, nch, cols, work, d_out);
    CU_CHECK_LAUNCH();
}

/* ---------------- reductions ---------------- */

/* Sums over the whole GPU in a fixed order (deterministic): REDUCE_BLOCKS
 * blocks each take a contiguous share, their threads a fixed stride of it
 * and a fixed tree; one block then adds the blocks' partials the same way. */
#define REDUCE_BLOCKS 256
#define REDUCE_THREADS 512

template <int KIND> /* 0 sum, 1 sum of squares, 2 non-finite count */
__device__ __forceinline__ double reduce_term(float v) {
    return KIND == 0 ? (double)v : KIND == 1 ? (double)v * v : (isfinite(v) ? 0.0 : 1.0);
}

__device__ __forceinline__ double block_sum(double s, double *sh) {
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int o = blockDim.x / 2; o; o >>= 1) {
        if ((int)threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
        __syncthreads();
    }
    return sh[0];
}

template <int KIND>
__global__ void k_reduce_part(int64_t n, const float *__restrict__ x, double *__restrict__ part) {
    __shared__ double sh[REDUCE_THREADS];
    int64_t per = (n + gridDim.x - 1) / gridDim.x, i0 = (int64_t)blockIdx.x * per, i1 = i0 + per < n ? i0 + per : n;
    double s = 0;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) s += reduce_term<KIND>(x[i]);
    double t = block_sum(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = t;
}

__global__ void k_reduce_final(int nb, const double *__restrict__ part, double *out) {
    __shared__ double sh[REDUCE_THREADS];
    double s = 0;
    for (int i = threadIdx.x; i < nb; i += blockDim.x) s += part[i];
    double t = block_sum(s, sh);
    if (threadIdx.x == 0) *out = t;
}

template <int KIND>
static void reduce_into(int64_t n, const float *x, double *out) {
    double *part = (double *)ops_work(sizeof(double) * REDUCE_BLOCKS);
    k_reduce_part<KIND><<<REDUCE_BLOCKS, REDUCE_THREADS>>>(n, x, part);
    k_reduce_final<<<1, REDUCE_THREADS>>>(REDUCE_BLOCKS, part, out);
}

__global__ void k_to_float(const double *s, double div, float *y) { *y = (float)(*s / div); }

__global__ void k_reduce_back(int64_t n, float scale, const float *__restrict__ dy, float *__restrict__ dx) {
    float g = dy[0] * scale;
    GRID_STRIDE(i, n) dx[i] += g;
}

static double *g_reduce_out;

static double *reduce_slot(void) {
    if (!g_reduce_out) g_reduce_out = (double *)cu_malloc(sizeof(double));
    return g_reduce_out;
}

extern "C" void cu_op_reduce(int64_t n, bool mean, const float *d_x, float *d_y) {
    double *o = reduce_slot();
    reduce_into<0>(n, d_x, o);
    k_to_float<<<1, 1>>>(o, mean ? (double)n : 1.0, d_y);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_reduce_backward(int64_t n, float scale, const float *d_dy, float *d_dx) {
    if (n <= 0) return;
    k_reduce_back<<<ops_grid(n), 256>>>(n, scale, d_dy, d_dx);
    CU_CHECK_LAUNCH();
}

extern "C" double cu_sum_squares(int64_t n, const float *d_x) {
    double *o = reduce_slot(), h;
    reduce_into<1>(n, d_x, o);
    CU_CHECK_LAUNCH();
    cu_to_host(&h, o, sizeof h);
    return h;
}

extern "C" int64_t cu_count_nonfinite(int k, const int64_t *n, const float *const *d_x) {
    MX_ASSERT(k >= 1 && k <= 8);
    static double *slots;
    static int cap;
    if (k > cap) {
        cu_free(slots);
        slots = (double *)cu_malloc(sizeof(double) * (size_t)k);
        cap = k;
    }
    for (int i = 0; i < k; i++) reduce_into<2>(n[i], d_x[i], slots + i);
    CU_CHECK_LAUNCH();
    double h[8];
    cu_to_host(h, slots, sizeof(double) * (size_t)k);
    int64_t total = 0;
    for (int i = 0; i < k; i++) total += (int64_t)h[i];
    return total;
}
/* ---------------- bf16 conversions ---------------- */

__global__ void k_f32_to_bf16(int64_t n, const float *__restrict__ x, uint16_t *__restrict__ y) {
    GRID_STRIDE(i, n) {
        float r = ag_bf16_round(x[i]);
        uint32_t b;
        memcpy(&b, &r, 4);
        y[i] = (uint16_t)(b >> 16);
    }
}

__global__ void k_bf16_to_f32(int64_t n, const uint16_t *__restrict__ x, float *__restrict__ y) {
    GRID_STRIDE(i, n) {
        uint32_t b = (uint32_t)x[i] << 16;
        float v;
        memcpy(&v, &b, 4);
        y[i] = v;
    }
}

extern "C" void cu_f32_to_bf16(int64_t n, const float *d_x, uint16_t *d_y) {
    if (n <= 0) return;
    k_f32_to_bf16<<<ops_grid(n), 256>>>(n, d_x, d_y);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_bf16_to_f32(int64_t n, const uint16_t *d_x, float *d_y) {
    if (n <= 0) return;
    k_bf16_to_f32<<<ops_grid(n), 256>>>(n, d_x, d_y);
    CU_CHECK_LAUNCH();
}

/* ---------------- convolution gathers ---------------- */

/* A warp per row of the gathered matrix: the row's image and grid position
 * once, then its kernel positions' channel runs copied as V (16-byte vectors
 * when the channels allow, else single elements). Index math in 32 bits
 * per element (a row is under 2^31 elements). */
template <typename V>
__global__ void k_gather(ag_window g, int cv, bool use_tab, int64_t r0, int64_t r1, const V *__restrict__ src,
                         V *__restrict__ cols) {
    int lane = threadIdx.x & 31, kw = (int)g.kw, len = (int)(g.kh * g.kw) * cv;
    /* each column's (i, j, ch), decoded once per block: no divisions per element */
    extern __shared__ int tab[];
    if (use_tab)
        for (int e = threadIdx.x; e < len; e += blockDim.x) {
            int ij = e / cv, ch = e - ij * cv, i = ij / kw;
            tab[e] = (i << 24) | ((ij - i * kw) << 16) | ch;
        }
    __syncthreads();
    int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    for (int64_t r = r0 + (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < r1; r += warps) {
        int64_t ni = r / (g.ph * g.pw), rem = r - ni * g.ph * g.pw;
        int py = (int)(rem / g.pw), px = (int)(rem - (int64_t)py * g.pw);
        int by = py * g.stride + g.off, bx = px * g.stride + g.off;
        const V *img = src + ni * g.sh * g.sw * cv;
        V *dst = cols + (r - r0) * len;
        for (int e = lane; e < len; e += 32) {
            int i, j, ch;
            if (use_tab) {
                int t = tab[e];
                i = t >> 24, j = (t >> 16) & 255, ch = t & 65535;
            } else {
                int ij = e / cv;
                ch = e - ij * cv, i = ij / kw, j = ij - i * kw;
            }
            int sy = by + g.sgn * i, sx = bx + g.sgn * j;
            V v;
            if (sy < 0 || sy >= g.sh || sx < 0 || sx >= g.sw) memset(&v, 0, sizeof v);
            else v = img[((int64_t)sy * g.sw + sx) * cv + ch];
            dst[e] = v;
        }
    }
}

extern "C" void cu_conv_gather(const ag_window *g, int elem_bytes, const void *d_src, int64_t r0, int64_t r1,
                               void *d_cols) {
    if (r1 <= r0) return;
    MX_ASSERT(elem_bytes == 2 || elem_bytes == 4);
    MX_ASSERT(g->kh * g->kw * g->c < INT32_MAX && g->sh < INT32_MAX && g->sw < INT32_MAX);
    int64_t vec = 16 / elem_bytes; /* elements per 16-byte vector */
    int64_t cv = g->c % vec == 0 ? g->c / vec : g->c, len = g->kh * g->kw * cv;
    /* the column table (kernel offsets in 8 bits each, the channel in 16) where it fits in 48 KB */
    bool tab = g->kh < 128 && g->kw < 256 && cv < 65536 && len <= 12288;
    int grid = rows_grid(r1 - r0);
    size_t shm = tab ? sizeof(int) * (size_t)len : 0;
    if (g->c % vec == 0)
        k_gather<uint4><<<grid, 256, shm>>>(*g, (int)cv, tab, r0, r1, (const uint4 *)d_src, (uint4 *)d_cols);
    else if (elem_bytes == 2)
        k_gather<uint16_t><<<grid, 256, shm>>>(*g, (int)cv, tab, r0, r1, (const uint16_t *)d_src, (uint16_t *)d_cols);
    else
        k_gather<float><<<grid, 256, shm>>>(*g, (int)cv, tab, r0, r1, (const float *)d_src, (float *)d_cols);
    CU_CHECK_LAUNCH();
}

/* dx[(b, iy, ix), ch] += dcols[(b, oy, ox) - r0, (i, j, ch)] over the windows
 * of rows [r0, r1) that hold the pixel, in row order (the CPU's col2im
 * order): one thread per element of dx. g is the im2col window (off = -pad,
 * sgn = +1). */
__global__ void k_col2im(ag_window g, int64_t r0, int64_t r1, const float *__restrict__ dcols, float *__restrict__ dx) {
    /* 32-bit index math (the caller checks the sizes); the chunk's offsets in 64 bits */
    const int C = (int)g.c, SW = (int)g.sw, SH = (int)g.sh, PH = (int)g.ph, PW = (int)g.pw, KH = (int)g.kh,
              KW = (int)g.kw, S = g.stride, OFF = g.off;
    const int64_t K = (int64_t)KH * KW * C;
    GRID_STRIDE(idx, g.n * g.sh * g.sw * g.c) {
        int t = (int)idx / C, ch = (int)idx - t * C, t2 = t / SW, ix = t - t2 * SW, b = t2 / SH, iy = t2 - b * SH;
        /* oy with oy*stride + off <= iy <= oy*stride + off + kh - 1 */
        int ylo = iy - OFF - KH + 1, xlo = ix - OFF - KW + 1;
        int oy0 = ylo > 0 ? (ylo + S - 1) / S : 0, ox0 = xlo > 0 ? (xlo + S - 1) / S : 0;
        int64_t rb = (int64_t)b * PH * PW;
        if (rb + (oy0 * PW + ox0) >= r1 || rb + PH * PW <= r0) continue; /* no row of this chunk */
        float acc = dx[idx];
        for (int oy = oy0; oy < PH && oy * S + OFF <= iy; oy++)
            for (int ox = ox0; ox < PW && ox * S + OFF <= ix; ox++) {
                int64_t r = rb + oy * PW + ox;
                if (r < r0 || r >= r1) continue;
                int i = iy - (oy * S + OFF), j = ix - (ox * S + OFF);
                acc += dcols[(r - r0) * K + (i * KW + j) * C + ch];
            }
        dx[idx] = acc;
    }
}

extern "C" void cu_conv_col2im_add(const ag_window *g, int64_t r0, int64_t r1, const float *d_dcols, float *d_dx) {
    int64_t n = g->n * g->sh * g->sw * g->c;
    if (n <= 0 || r1 <= r0) return;
    MX_ASSERT(n < INT32_MAX);
    k_col2im<<<ops_grid(n), 256>>>(*g, r0, r1, d_dcols, d_dx);
    CU_CHECK_LAUNCH();
}

/* 2-byte elements (bf16) walked like cu_op_strided, copied */
extern "C" void cu_op_strided16(const int64_t *oshape, const int64_t *istride, const uint16_t *d_src,
                                uint16_t *d_dst) {
    ops_strided(oshape, istride, d_src, d_dst, false);
}
