/* Branch-free float exp, erfc and tanh for the elementwise hot loops (GELU,
 * softmax, attention): plain arithmetic and bit operations, so the loops that
 * call them vectorize, with no libm call per element.
 *
 * mx_expf: relative error below 2e-7 for x in [-87.3, 88.7]; 0 below, clamped
 * above. Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then the degree-7
 * Taylor polynomial of e^r (truncation 5e-9) and 2^n from bits.
 * mx_erfcf_pos: erfc(z) for z >= 0 with relative error below 5e-7 for z <= 9
 * (Numerical Recipes' erfcc Chebyshev fit, 1.2e-7, times two mx_expf), so
 * the GELU's far negative tail keeps its relative precision.
 * mx_tanhf: absolute error about 1e-7. */
#ifndef MX_CORE_FASTMATH_H
#define MX_CORE_FASTMATH_H

#include <stdint.h>
#include <string.h>

/* Host and device: the GPU's elementwise kernels (cuda/ops.cu) compute the
 * same functions. */
#ifdef __CUDACC__
#define MX_HD __host__ __device__
#else
#define MX_HD
#endif

/* IEEE binary16 to float32, exactly (subnormals, Inf, NaN): float16 .npy
 * arrays and safetensors tensors. */
MX_HD static inline float mx_f16_to_f32(uint16_t h) {
    uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 31u, m = h & 1023u, b;
    float v;
    if (e == 31) b = s | 0x7f800000u | m << 13;
    else if (e) b = s | (e + 112) << 23 | m << 13;
    else { /* zero or subnormal: m * 2^-24, exact in float32 */
        v = (float)m * 5.9604644775390625e-8f;
        memcpy(&b, &v, 4);
        b |= s;
    }
    memcpy(&v, &b, 4);
    return v;
}

MX_HD static inline float mx_expf(float x) {
    float xc = x < -87.33f ? -87.33f : (x > 88.72f ? 88.72f : x);
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = xc - n * 0.693145751953125f;
    r = r - n * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, 4);
    return x < -87.33f ? 0.0f : p * s;
}

MX_HD static inline float mx_erfcf_pos(float z) {
    float t = 1.0f / (1.0f + 0.5f * z);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    /* e^(p - z^2) with z^2 = zh^2 + rest, zh = z cut to 12 significant bits
     * so zh^2 is exact: a rounded z^2 near 81 would be off by 4e-6, and so
     * would the result, relatively */
    uint32_t zb;
    memcpy(&zb, &z, 4);
    zb &= 0xfffff000u;
    float zh;
    memcpy(&zh, &zb, 4);
    float zl = z - zh;
    return t * mx_expf(-(zh * zh)) * mx_expf(p - (2.0f * zh + zl) * zl);
}

MX_HD static inline float mx_tanhf(float u) {
    float a = u < 0 ? -u : u;
    float th = 1.0f - 2.0f / (mx_expf(2.0f * (a < 20.0f ? a : 20.0f)) + 1.0f);
    return u < 0 ? -th : th;
}

#endif
