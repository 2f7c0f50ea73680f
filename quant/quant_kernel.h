/* The quantizer's per-element arithmetic, shared by the CPU kernels
 * (quant.c) and the GPU kernels (cuda/quant.cu) so that both compute the same
 * bits by construction: kernel parameters (qk), the shared exponent of a
 * block, one element's rounding and its code. Also the layouts of a spec over
 * a shape (qlayout). Internal to the quantizer. */
#ifndef MX_QUANT_KERNEL_H
#define MX_QUANT_KERNEL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "core/rng.h"
#include "quant/quant_internal.h"

#ifdef __CUDACC__
#define QK_INLINE __forceinline__
#else
#define QK_INLINE inline __attribute__((always_inline))
#endif
#ifdef __CUDA_ARCH__ /* the device pass of nvcc */
#define QK_CLZ(x) __clz((int)(x))
#else
#define QK_CLZ(x) __builtin_clz(x)
#endif

/* Rounding kernels: EVEN_FAST is production round-half-even; the others are
 * the integer path (EVEN_INT only serves as the tests' reference). */
enum { QK_EVEN_FAST, QK_EVEN_INT, QK_AWAY, QK_FLOOR, QK_STOCH };
enum { QK_OUT_FAKE, QK_OUT_PACK };

/* Kernel parameters derived once per call from the spec and the format row. */
typedef struct qk {
    quant_format format;
    quant_scale scale;
    int mode;
    int p, eminb;         /* main range: fraction bits, biased emin (emin + 127) */
    int low_p, low_eminb; /* low range (MXSF), used for |t| bits < low_below */
    uint32_t low_below;   /* 0x3f800000 (|t| < 1) for MXSF, 0 otherwise */
    int bias, low_bias;   /* encodings */
    float max_norm;
    int emax, bits;       /* the format row's, copied: a GPU kernel cannot read the host table */
    bool is_int, has_low;
    float int_scale;      /* integer grids: 2^p (k = |t_q| * int_scale) */
    uint32_t nan_above;   /* a block whose amax bits are >= this is all NaN, scale code 255 */
    int k1, k2, umax;     /* shared microexponents: block, run, largest u (2^d2 - 1); k1 = 0 otherwise */
    uint64_t seed, stream, offset;
} qk;


/* bf16 rounding of a float's bits b: b + add truncated to the upper 16 bits,
 * where add picks the mode (even: 0x7fff + bit 16, away: 0x8000, floor: 0,
 * stochastic: 16 random bits); NaN stays NaN (quiet). Branch-free, so the
 * CPU's loops vectorize. */
QK_HD static inline float qk_bf16_round(uint32_t b, uint32_t add) {
    uint32_t r = (b + add) & 0xffff0000u;
    return quant_from_bits((b & 0x7fffffffu) > 0x7f800000u ? (b | 0x00400000u) & 0xffff0000u : r);
}
QK_HD static inline uint32_t qk_bf16_even_add(uint32_t b) { return 0x7fffu + ((b >> 16) & 1u); }

/* floor(log2 |v|) from the bits of |v| (nonzero, finite), subnormals included. */
QK_HD static inline int qk_exponent(uint32_t abits) {
    int ef = (int)(abits >> 23);
    if (ef) return ef - 127;
    return (31 - QK_CLZ(abits)) - 149;
}

/* BDR: the block's scale exponent from its amax bits (finite): floor(log2
 * amax) clamped to [-127, 127], -127 (code 0) for an all-zero block. */
QK_HD static inline int qk_bdr_scale_exp(uint32_t amax) {
    if (amax == 0) return -127;
    int se = qk_exponent(amax);
    return se < -127 ? -127 : se;
}
/* BDR: a run's microexponent from its amax bits: se - floor(log2 amax_s)
 * clamped to [0, umax]; 0 for an all-zero run. */
QK_HD static inline int qk_bdr_micro(const qk *k, int se, uint32_t amax_s) {
    if (amax_s == 0) return 0;
    int u = se - qk_exponent(amax_s);
    u = u < 0 ? 0 : u;
    return u > k->umax ? k->umax : u;
}

/* Shared exponent of a block from its largest magnitude's bits (finite). */
QK_HD static inline int qk_scale_exp(const qk *k, uint32_t amax) {
    if (amax == 0) return -127; /* all-zero block: scale code 0 */
    int se = qk_exponent(amax) - k->emax;
    if (k->scale == QUANT_SCALE_RCEIL && se <= 127) {
        /* amax > max_norm * 2^se, exactly, in double (both sides exact; 2^se
         * built from bits, no libm per block) */
        uint64_t pbits = (uint64_t)(se + 1023) << 52;
        double p2;
        memcpy(&p2, &pbits, 8);
        double a = (double)quant_from_bits(amax);
        double lim = (double)k->max_norm * p2;
        if (a > lim) se++;
    }
    if (se < -127) se = -127;
    if (se > 127) se = 127;
    return se;
}

/* Quantizes one element in the scaled domain; returns signed t_q. */
QK_HD static QK_INLINE float qk_elem(const qk *k, float t, int mode, uint32_t u) {
    uint32_t b = quant_bits(t), sg = b & 0x80000000u, a = b & 0x7fffffffu;
    int low = a < k->low_below;
    int pp = low ? k->low_p : k->p;
    int eb0 = low ? k->low_eminb : k->eminb;
    int ef = (int)(a >> 23);
    int eb = ef > eb0 ? ef : eb0;
    float q;
    if (mode == QK_EVEN_FAST) {
        float c = quant_from_bits((uint32_t)(eb - pp + 23) << 23);
        q = (quant_from_bits(a) + c) - c;
    } else {
        int efp = ef ? ef : 1;
        uint32_t m = (a & 0x7fffffu) | (ef ? 0x800000u : 0u);
        int dfull = eb - efp + 23 - pp; /* bits below the element grid, >= 1 */
        int d = dfull < 31 ? dfull : 31;
        uint32_t r = m >> d, rem = m & ((1u << d) - 1u), half = 1u << (d - 1);
        if (mode == QK_EVEN_INT) r += (rem > half) | ((rem == half) & (r & 1u));
        else if (mode == QK_AWAY) r += rem >= half;
        else if (mode == QK_STOCH) {
            /* floor(v + u), u = U / 2^32: round up iff rem / 2^d + U / 2^32 >= 1 */
            uint64_t rs = dfull <= 32 ? (uint64_t)rem << (32 - dfull)
                                      : (dfull - 32 < 32 ? (uint64_t)(m >> (dfull - 32)) : 0);
            r += (uint32_t)((rs + u) >> 32);
        }
        q = (float)r * quant_from_bits((uint32_t)(eb - pp) << 23);
    }
    q = q < k->max_norm ? q : k->max_norm;
    return quant_from_bits(quant_bits(q) | sg);
}

/* Code byte of an already-quantized t_q. */
QK_HD static QK_INLINE uint8_t qk_encode(const qk *k, float tq) {
    uint32_t b = quant_bits(tq), sg = b >> 31, a = b & 0x7fffffffu;
    if (k->is_int) { /* BDR: sign-magnitude; mxint: two's complement in `bits` bits */
        int v = (int)(quant_from_bits(a) * k->int_scale);
        if (k->k1) return (uint8_t)((sg << (k->bits - 1)) | (uint32_t)v);
        return (uint8_t)((uint32_t)(sg ? -v : v) & ((1u << k->bits) - 1u));
    }
    int low = a < k->low_below;
    int pp = low ? k->low_p : k->p;
    int emin = (low ? k->low_eminb : k->eminb) - 127;
    int bias = low ? k->low_bias : k->bias;
    int e = (int)(a >> 23) - 127;
    uint32_t sig = (a & 0x7fffffu) | 0x800000u;
    uint32_t normal = ((uint32_t)(e + bias) << pp) | ((sig >> (23 - pp)) & ((1u << pp) - 1u));
    int sh = 23 - pp + (emin - e); /* only meaningful below emin; clamped so the unused lane stays defined */
    sh = sh < 0 ? 0 : sh;
    uint32_t sub = sh < 32 ? sig >> sh : 0;
    uint32_t mag = a == 0 ? 0 : (e >= emin ? normal : sub);
    return (uint8_t)((sg << (k->bits - 1)) | mag);
}


typedef enum { QL_ELEMENTWISE, QL_TILES, QL_COLUMNS } ql_kind;

/* TILES: lead x [R x C] matrices cut into r x c tiles (1D blocks along a
 * contiguous axis are 1 x k tiles). COLUMNS: [outer, L, inner] with 1D blocks
 * of k along L, i.e. strided columns, processed `inner` at a time. */
typedef struct qlayout {
    ql_kind kind;
    int64_t lead, R, C, ntr, ntc;
    int r, c;
    int64_t outer, L, inner, nb;
    int k;
    int64_t nblocks, numel;
} qlayout;

/* ---- shared microexponents (BDR, spec section 8), CPU and GPU ----
 * A block's k1 values (row by row for tiles, zero padded) share the scale
 * 2^se, se = floor(log2 amax); each run of k2 shares a microexponent u. An
 * element is rounded on the fixed grid 2^-p of t' = (x * 2^-se) * 2^u,
 * saturated at max_norm, and its value is (t'_q * 2^-u) * 2^se. Every product
 * is by a power of two with a representable result, so all are exact. */
#define QK_BDR_MAX 64 /* largest k1 */

/* Offsets of block t's elements in block order (row by row), -1 for padding. */
QK_HD static inline void qk_bdr_offsets(const qlayout *l, int64_t t, int k1, int64_t *off) {
    if (l->kind == QL_TILES) {
        int64_t per = l->ntr * l->ntc, li = t / per, tr = (t % per) / l->ntc, tc = t % l->ntc;
        int64_t base = li * l->R * l->C + tr * l->r * l->C + tc * l->c;
        for (int j = 0; j < k1; j++) {
            int i = j / l->c, jj = j % l->c;
            off[j] = tr * l->r + i < l->R && tc * l->c + jj < l->C ? base + i * l->C + jj : -1;
        }
    } else {
        int64_t o = t / (l->nb * l->inner), b = (t / l->inner) % l->nb, col = t % l->inner;
        int64_t base = o * l->L * l->inner + col;
        for (int j = 0; j < k1; j++) off[j] = b * l->k + j < l->L ? base + (b * l->k + j) * l->inner : -1;
    }
}

/* Quantizes one gathered block xb (padding holds 0, off[j] < 0): values q,
 * codes c and the runs' microexponents u; bit j of *sat says element j
 * saturated. Returns the scale code (255: the block held Inf or NaN). */
QK_HD static inline uint8_t qk_bdr_quant(const qk *k, const float *xb, const int64_t *off, float *q, uint8_t *c,
                                         uint8_t *u, uint64_t *sat) {
    int k1 = k->k1, k2 = k->k2;
    uint32_t amax = 0;
    for (int j = 0; j < k1; j++) {
        uint32_t a = quant_bits(xb[j]) & 0x7fffffffu;
        amax = a > amax ? a : amax;
    }
    *sat = 0;
    if (amax >= 0x7f800000u) {
        for (int j = 0; j < k1; j++) q[j] = quant_nanf(), c[j] = 0;
        for (int r = 0; r < k1 / k2; r++) u[r] = 0;
        return 255;
    }
    int se = qk_bdr_scale_exp(amax);
    float s = quant_pow2f(se), inv_s = quant_pow2f(-se);
    for (int r = 0; r < k1 / k2; r++) {
        uint32_t as = 0;
        for (int j = r * k2; j < (r + 1) * k2; j++) {
            uint32_t a = quant_bits(xb[j]) & 0x7fffffffu;
            as = a > as ? a : as;
        }
        int ur = qk_bdr_micro(k, se, as);
        u[r] = (uint8_t)ur;
        float pu = quant_pow2f(ur), iu = quant_pow2f(-ur);
        for (int j = r * k2; j < (r + 1) * k2; j++) {
            float tt = (xb[j] * inv_s) * pu;
            uint32_t rnd = k->mode == QK_STOCH && off[j] >= 0
                               ? rng_u32_at(k->seed, k->stream, k->offset + (uint64_t)off[j]) : 0u;
            float tq = qk_elem(k, tt, k->mode, rnd);
            q[j] = (tq * iu) * s;
            c[j] = qk_encode(k, tq);
            if (tt > k->max_norm || tt < -k->max_norm) *sat |= (uint64_t)1 << j;
        }
    }
    return (uint8_t)(se + 127);
}

/* The value of BDR code c with microexponent u under scale code sc (not 255). */
QK_HD static inline float qk_bdr_value(const qk *k, uint8_t c, int u, uint8_t sc) {
    float tq = (float)(c & ((1u << (k->bits - 1)) - 1u)) / k->int_scale; /* exact: a power-of-two divisor */
    if ((c >> (k->bits - 1)) & 1) tq = -tq;
    return (tq * quant_pow2f(-u)) * quant_pow2f((int)sc - 127);
}

/* The layout of spec s over shape (message and -1 when they do not fit). */
int ql_make(const quant_spec *s, int ndim, const int64_t *shape, qlayout *l, mx_err *err);
/* Kernel parameters of s (reference: the integer path for round-half-even too). */
qk qk_make(const quant_spec *s, bool reference);
/* Decode tables in the scaled domain, one per MX format: value of each code byte. */
extern float quant_lut[QUANT_FORMAT_COUNT][256];

#endif
