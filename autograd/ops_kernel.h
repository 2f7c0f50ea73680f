/* Per-element arithmetic of the elementwise ops, shared by the CPU's op
 * implementations (ops_elem.c) and the GPU's kernels (cuda/ops.cu), so both
 * compute the same functions; each is the forward value or the derivative
 * the backward multiplies the incoming gradient by. */
#ifndef MX_AUTOGRAD_OPS_KERNEL_H
#define MX_AUTOGRAD_OPS_KERNEL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/fastmath.h"
#include "core/rng.h"

#define AG_SQRT1_2 0.70710678118654752440f
#define AG_INV_SQRT_2PI 0.39894228040143267794f
#define AG_SQRT_2_OVER_PI 0.79788456080286535588f

/* One value rounded to bfloat16 (nearest, ties to even; Inf stays, NaN
 * stays NaN, quiet), as quant.elementwise = bf16 rounds op outputs. */
MX_HD static inline float ag_bf16_round(float v) {
    uint32_t b;
    memcpy(&b, &v, 4);
    if ((b & 0x7f800000u) == 0x7f800000u) {
        if (b & 0x007fffffu) b |= 0x00400000u;
    } else {
        b += 0x7fffu + ((b >> 16) & 1u); /* may carry into the exponent: overflow to Inf is right */
    }
    b &= 0xffff0000u;
    memcpy(&v, &b, 4);
    return v;
}

MX_HD static inline float ag_k_relu(float v) { return v > 0.0f ? v : 0.0f; }
/* relu's backward from its output: the gradient passes where y > 0 (a
 * select, not a product: an Inf gradient where y = 0 gives 0, not NaN) */
MX_HD static inline float ag_k_relu_back(float y, float dy) { return y > 0.0f ? dy : 0.0f; }

/* Phi(v) = 0.5 erfc(-v / sqrt 2), from erfc of |v| so both tails keep their
 * relative precision (1 + erf(v / sqrt 2) would cancel for v << 0). */
MX_HD static inline float ag_k_gelu_cdf(float v) {
    float ec = 0.5f * mx_erfcf_pos((v < 0 ? -v : v) * AG_SQRT1_2);
    return v < 0 ? ec : 1.0f - ec;
}
MX_HD static inline float ag_k_gelu(float v) { return v * ag_k_gelu_cdf(v); }
MX_HD static inline float ag_k_gelu_grad(float v) {
    return ag_k_gelu_cdf(v) + v * (AG_INV_SQRT_2PI * mx_expf(-0.5f * v * v));
}

MX_HD static inline float ag_k_gelu_tanh(float v) {
    return 0.5f * v * (1.0f + mx_tanhf(AG_SQRT_2_OVER_PI * (v + 0.044715f * v * v * v)));
}
MX_HD static inline float ag_k_gelu_tanh_grad(float v) {
    float u = AG_SQRT_2_OVER_PI * (v + 0.044715f * v * v * v), th = mx_tanhf(u);
    float du = AG_SQRT_2_OVER_PI * (1.0f + 3.0f * 0.044715f * v * v);
    return 0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * du;
}

/* BatchNorm: a channel's batch mean and 1/std from its sums over rows (s1 =
 * sum x, s2 = sum x^2, in double), and the running statistics' update
 * (PyTorch's: unbiased variance, momentum weighting the new value). */
MX_HD static inline void ag_k_bn_stats(double s1, double s2, int64_t rows, float momentum, float eps, float *mean,
                                       float *invstd, float *running_mean, float *running_var) {
    double m = s1 / (double)rows, var = s2 / (double)rows - m * m;
    if (var < 0) var = 0;
    *mean = (float)m;
    *invstd = (float)(1.0 / sqrt(var + eps));
    if (running_mean) {
        double unbiased = rows > 1 ? var * (double)rows / (double)(rows - 1) : var;
        *running_mean = (float)((1.0 - momentum) * *running_mean + momentum * m);
        *running_var = (float)((1.0 - momentum) * *running_var + momentum * unbiased);
    }
}
MX_HD static inline float ag_k_bn_eval_invstd(float running_var, float eps) {
    return (float)(1.0 / sqrt((double)running_var + eps));
}

/* Max pooling: output (b, oh, ow, ch)'s window over NHWC x [h, w, c]: the
 * first maximum in (i, j) order and its flat index (-1: an empty window). */
MX_HD static inline float ag_k_maxpool_window(const float *x, int64_t b, int64_t oh, int64_t ow, int64_t ch, int64_t h,
                                              int64_t w, int64_t c, int k, int stride, int pad, int64_t *arg) {
    float best = -3.40282347e38f;
    int64_t bi = -1;
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++) {
            int64_t ih = oh * stride - pad + i, iw = ow * stride - pad + j;
            if (ih < 0 || ih >= h || iw < 0 || iw >= w) continue;
            int64_t idx = ((b * h + ih) * w + iw) * c + ch;
            if (bi < 0 || x[idx] > best) best = x[idx], bi = idx;
        }
    *arg = bi;
    return best;
}

/* Dropout / drop-path: element i's scale (0 or 1 / (1 - p)), from word
 * i / group of the step's stream, recomputed by the backward. */
MX_HD static inline float ag_k_drop_scale(uint64_t seed, uint64_t stream, float p, int64_t group, int64_t i) {
    float u = (float)(rng_u32_at(seed, stream, (uint64_t)(i / group)) >> 8) * (1.0f / 16777216.0f);
    return u < p ? 0.0f : 1.0f / (1.0f - p);
}

/* A convolution's gather: row (image, py, px) of a ph x pw grid over src
 * [n, sh, sw, c], columns (i, j, c) for kernel position (i, j), reading src
 * pixel (py*stride + off + sgn*i, px*stride + off + sgn*j), zero outside.
 * im2col of x: off = -pad, sgn = +1 (grid = the output); the stride-1
 * backward's transposed convolution gathers dY with off = +pad, sgn = -1. */
typedef struct ag_window {
    int64_t n, sh, sw, c, ph, pw, kh, kw;
    int stride, off, sgn;
} ag_window;

/* The src pixel (flat, times c) of row r's kernel position (i, j), or -1 outside. */
MX_HD static inline int64_t ag_k_window_pixel(const ag_window *g, int64_t r, int64_t i, int64_t j) {
    int64_t ni = r / (g->ph * g->pw), py = (r / g->pw) % g->ph, px = r % g->pw;
    int64_t sy = py * g->stride + g->off + g->sgn * i, sx = px * g->stride + g->off + g->sgn * j;
    if (sy < 0 || sy >= g->sh || sx < 0 || sx >= g->sw) return -1;
    return (ni * g->sh + sy) * g->sw + sx;
}

#endif
