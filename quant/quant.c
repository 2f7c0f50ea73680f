/* Quantizer kernels. Arithmetic follows ../shared/spec/mx-formats.md:
 *
 *  scale:   se = floor(log2 amax) - emax (exact, from the exponent bits),
 *           +1 in rceil mode when amax > max_norm * 2^se, clamped to [-127, 127];
 *  element: t = x * 2^-se (exact: a power-of-two product), e = max(floor(log2|t|), emin),
 *           round |t| to a multiple of 2^(e-p), saturate at max_norm, q = t_q * 2^se.
 *
 * Round-half-even, the hot path, uses the FPU: for C = 2^(e-p+23), (|t| + C) - C
 * lands on the grid of step 2^(e-p) with IEEE round-to-nearest-even, because
 * |t| + C lies in C's binade whose ulp is exactly 2^(e-p). The other modes (and
 * the test reference) work on the 24-bit significand in integers. Either way
 * only integer/bit operations, adds and multiplies: no libm, and loops the
 * compiler vectorizes. */
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "quant/quant_kernel.h"

/* Decode tables in the scaled domain, one per MX format (built at load). */
float quant_lut[QUANT_FORMAT_COUNT][256];

/* (the kernel parameters and per-element arithmetic: quant_kernel.h) */

qk qk_make(const quant_spec *s, bool reference) {
    const quant_format_info *fi = quant_format_get(s->format);
    qk k;
    memset(&k, 0, sizeof k);
    k.format = s->format;
    k.scale = s->scale;
    static const int modes[] = {QK_EVEN_FAST, QK_AWAY, QK_FLOOR, QK_STOCH};
    k.mode = modes[s->round];
    if (reference && k.mode == QK_EVEN_FAST) k.mode = QK_EVEN_INT;
    k.p = fi->p;
    k.eminb = fi->emin + 127;
    k.bias = fi->bias;
    k.max_norm = fi->max_norm;
    if (fi->has_low) {
        k.low_p = fi->low_p;
        k.low_eminb = fi->low_emin + 127;
        k.low_bias = fi->low_bias;
        k.low_below = 0x3f800000u;
    } else {
        k.low_p = k.p;
        k.low_eminb = k.eminb;
        k.low_bias = k.bias;
    }
    k.emax = fi->emax;
    k.bits = fi->bits;
    k.is_int = fi->is_int;
    k.has_low = fi->has_low;
    k.int_scale = (float)(1 << fi->p);
    /* rceil can ask for se = 128, which E8M0 cannot hold: such a block is NaN
     * (code 255) like one holding Inf or NaN; it happens only for emax 0 */
    k.nan_above = 0x7f800000u;
    if (s->scale == QUANT_SCALE_RCEIL && fi->emax == 0) k.nan_above = quant_bits(fi->max_norm * 0x1p127f) + 1u;
    k.k1 = fi->k1;
    k.k2 = fi->k2;
    k.umax = (1 << fi->d2) - 1;
    k.seed = s->seed;
    k.stream = s->stream;
    k.offset = s->offset;
    return k;
}

static void qk_fill_random(const qk *k, uint64_t index, int n, uint32_t *u) {
    int i = 0;
    while (i < n) {
        uint32_t w[4];
        uint64_t idx = k->offset + index + (uint64_t)i;
        rng_philox4x32(k->seed, k->stream, idx >> 2, w);
        for (unsigned j = (unsigned)(idx & 3); j < 4 && i < n; j++) u[i++] = w[j];
    }
}

/* One row segment of n elements sharing one scale. */
static inline __attribute__((always_inline)) void qk_row(const qk *k, const float *x, float *y, uint8_t *codes, int n,
                                                       float inv_s, float s, int mode, int out, quant_stats *st,
                                                       int e_amax, uint64_t gidx) {
    uint32_t ubuf[256];
    for (int i0 = 0; i0 < n; i0 += 256) {
        int m = n - i0 < 256 ? n - i0 : 256;
        if (mode == QK_STOCH) qk_fill_random(k, gidx + (uint64_t)i0, m, ubuf);
        const float *xs = x + i0;
        if (!st) {
            if (out == QK_OUT_FAKE) {
                float *ys = y + i0;
                for (int i = 0; i < m; i++) ys[i] = qk_elem(k, xs[i] * inv_s, mode, mode == QK_STOCH ? ubuf[i] : 0) * s;
            } else if (!y) {
                uint8_t *cs = codes + i0;
                for (int i = 0; i < m; i++) cs[i] = qk_encode(k, qk_elem(k, xs[i] * inv_s, mode, mode == QK_STOCH ? ubuf[i] : 0));
            } else { /* packed, and the values quant_fake gives (signed zeros included) */
                uint8_t *cs = codes + i0;
                float *ys = y + i0;
                for (int i = 0; i < m; i++) {
                    float tq = qk_elem(k, xs[i] * inv_s, mode, mode == QK_STOCH ? ubuf[i] : 0);
                    cs[i] = qk_encode(k, tq);
                    ys[i] = tq * s;
                }
            }
            continue;
        }
        for (int i = 0; i < m; i++) {
            float xv = xs[i], t = xv * inv_s;
            float tq = qk_elem(k, t, mode, mode == QK_STOCH ? ubuf[i] : 0);
            float q = tq * s;
            if (y) y[i0 + i] = q;
            if (out == QK_OUT_PACK) codes[i0 + i] = qk_encode(k, tq);
            uint32_t ax = quant_bits(xv) & 0x7fffffffu;
            if (ax) {
                st->nonzero++;
                st->underflow += q == 0.0f;
                int gap = e_amax - qk_exponent(ax);
                st->gap_hist[gap < QUANT_GAP_BINS - 1 ? gap : QUANT_GAP_BINS - 1]++;
            }
            st->saturated += fabsf(t) > k->max_norm;
            double dx = xv, de = (double)xv - (double)q;
            st->sum_x2 += dx * dx;
            st->sum_err2 += de * de;
        }
    }
    if (st) st->elements += n;
}

typedef void (*qk_row_fn)(const qk *k, const float *x, float *y, uint8_t *codes, int n, float inv_s, float s,
                          quant_stats *st, int e_amax, uint64_t gidx);

#define QK_ROW_VARIANT(name, mode, out, stats)                                                              \
    static void name(const qk *k, const float *x, float *y, uint8_t *codes, int n, float inv_s, float s,    \
                     quant_stats *st, int e_amax, uint64_t gidx) {                                          \
        qk_row(k, x, y, codes, n, inv_s, s, mode, out, stats ? st : NULL, e_amax, gidx);                    \
    }
#define QK_ROW_MODES(out, stats, sfx)                             \
    QK_ROW_VARIANT(qk_row_even_fast##sfx, QK_EVEN_FAST, out, stats) \
    QK_ROW_VARIANT(qk_row_even_int##sfx, QK_EVEN_INT, out, stats)   \
    QK_ROW_VARIANT(qk_row_away##sfx, QK_AWAY, out, stats)           \
    QK_ROW_VARIANT(qk_row_floor##sfx, QK_FLOOR, out, stats)         \
    QK_ROW_VARIANT(qk_row_stoch##sfx, QK_STOCH, out, stats)
QK_ROW_MODES(QK_OUT_FAKE, 0, _fake)
QK_ROW_MODES(QK_OUT_FAKE, 1, _fake_st)
QK_ROW_MODES(QK_OUT_PACK, 0, _pack)
QK_ROW_MODES(QK_OUT_PACK, 1, _pack_st)

/* [out][stats][mode] */
static const qk_row_fn qk_rows[2][2][5] = {
    {{qk_row_even_fast_fake, qk_row_even_int_fake, qk_row_away_fake, qk_row_floor_fake, qk_row_stoch_fake},
     {qk_row_even_fast_fake_st, qk_row_even_int_fake_st, qk_row_away_fake_st, qk_row_floor_fake_st,
      qk_row_stoch_fake_st}},
    {{qk_row_even_fast_pack, qk_row_even_int_pack, qk_row_away_pack, qk_row_floor_pack, qk_row_stoch_pack},
     {qk_row_even_fast_pack_st, qk_row_even_int_pack_st, qk_row_away_pack_st, qk_row_floor_pack_st,
      qk_row_stoch_pack_st}},
};

/* ---- AVX2 fast path: round-half-even fake-quant of a tile whose rows are
 * multiples of 8 floats (1x32 blocks, 8x8 tiles, ...). The whole tile stays in
 * registers between the amax pass and the quantize pass. Chosen at run time;
 * the portable row kernel above gives identical bits. ---- */
#define QK_COLS 64 /* COLUMNS: columns processed together (one panel) */

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx2"))) static inline __m256 qk_vec_even(__m256 xv, __m256 inv_s, __m256 s, __m256i eb0,
                                                                 __m256i off, __m256 maxn, int has_low,
                                                                 __m256i low_below, __m256i low_eb0,
                                                                 __m256i low_off) {
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff);
    __m256 t = _mm256_mul_ps(xv, inv_s);
    __m256i ti = _mm256_castps_si256(t);
    __m256i a = _mm256_and_si256(ti, absmask);
    __m256i sg = _mm256_andnot_si256(absmask, ti);
    __m256i ef = _mm256_srli_epi32(a, 23);
    if (has_low) {
        __m256i low = _mm256_cmpgt_epi32(low_below, a);
        eb0 = _mm256_blendv_epi8(eb0, low_eb0, low);
        off = _mm256_blendv_epi8(off, low_off, low);
    }
    __m256i eb = _mm256_max_epi32(ef, eb0);
    __m256 c = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(eb, off), 23));
    __m256 q = _mm256_sub_ps(_mm256_add_ps(_mm256_castsi256_ps(a), c), c);
    q = _mm256_min_ps(q, maxn);
    return _mm256_or_ps(q, _mm256_castsi256_ps(sg)); /* signed t_q */
}

/* 8 code bytes from 8 signed t_q (mirrors qk_encode). */
__attribute__((target("avx2"))) static inline void qk_vec_encode(const qk *k, __m256 q, uint8_t *out) {
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff);
    __m256i qi = _mm256_castps_si256(q);
    __m256i a = _mm256_and_si256(qi, absmask);
    __m256i sg = _mm256_slli_epi32(_mm256_srli_epi32(qi, 31), k->bits - 1);
    __m256i mag;
    if (k->is_int) {
        __m256i v = _mm256_cvttps_epi32(_mm256_mul_ps(_mm256_castsi256_ps(a), _mm256_set1_ps(k->int_scale)));
        if (k->k1) { /* BDR: sign-magnitude */
            mag = v;
        } else { /* two's complement in `bits` bits */
            mag = _mm256_blendv_epi8(v, _mm256_sub_epi32(_mm256_setzero_si256(), v), _mm256_srai_epi32(qi, 31));
            mag = _mm256_and_si256(mag, _mm256_set1_epi32((1 << k->bits) - 1));
            sg = _mm256_setzero_si256();
        }
    } else {
        __m256i pp = _mm256_set1_epi32(k->p), emin = _mm256_set1_epi32(k->eminb - 127), bias = _mm256_set1_epi32(k->bias);
        if (k->has_low) {
            __m256i low = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)k->low_below), a);
            pp = _mm256_blendv_epi8(pp, _mm256_set1_epi32(k->low_p), low);
            emin = _mm256_blendv_epi8(emin, _mm256_set1_epi32(k->low_eminb - 127), low);
            bias = _mm256_blendv_epi8(bias, _mm256_set1_epi32(k->low_bias), low);
        }
        __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(a, 23), _mm256_set1_epi32(127));
        __m256i sig = _mm256_or_si256(_mm256_and_si256(a, _mm256_set1_epi32(0x7fffff)), _mm256_set1_epi32(0x800000));
        __m256i p23 = _mm256_sub_epi32(_mm256_set1_epi32(23), pp);
        __m256i pmask = _mm256_sub_epi32(_mm256_sllv_epi32(_mm256_set1_epi32(1), pp), _mm256_set1_epi32(1));
        __m256i normal = _mm256_or_si256(_mm256_sllv_epi32(_mm256_add_epi32(e, bias), pp),
                                         _mm256_and_si256(_mm256_srlv_epi32(sig, p23), pmask));
        __m256i sh = _mm256_max_epi32(_mm256_add_epi32(p23, _mm256_sub_epi32(emin, e)), _mm256_setzero_si256());
        __m256i sub = _mm256_srlv_epi32(sig, sh); /* shifts >= 32 give 0 */
        __m256i is_sub = _mm256_cmpgt_epi32(emin, e);
        mag = _mm256_blendv_epi8(normal, sub, is_sub);
        mag = _mm256_andnot_si256(_mm256_cmpeq_epi32(a, _mm256_setzero_si256()), mag);
    }
    __m256i code = _mm256_or_si256(sg, mag);
    /* low byte of each 32-bit lane -> 8 bytes */
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1,
                                          -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    __m256i b = _mm256_shuffle_epi8(code, pick);
    uint32_t lo = (uint32_t)_mm_cvtsi128_si32(_mm256_castsi256_si128(b));
    uint32_t hi = (uint32_t)_mm_cvtsi128_si32(_mm256_extracti128_si256(b, 1));
    uint64_t both = (uint64_t)lo | ((uint64_t)hi << 32);
    memcpy(out, &both, 8);
}

/* Returns false (and touches nothing) for a non-finite tile: the caller's
 * generic path handles it. */
/* 8 values as bf16 (their upper halves: exact where the low halves are 0, as the caller knows). */
__attribute__((target("avx2"))) static inline void qk_store_bf16(uint16_t *dst, __m256 v) {
    __m256i u = _mm256_srli_epi32(_mm256_castps_si256(v), 16);
    _mm_storeu_si128((__m128i *)dst, _mm_packus_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1)));
}

/* y16 (bf16 output, quant_fake_bf16): false also when the block's scale puts
 * its smallest step below bf16's normals (min_exp: that step's exponent in
 * the scaled domain), and nothing is written. */
__attribute__((target("avx2"))) static bool qk_tile_even_avx2(const qk *k, const float *x, float *y, uint16_t *y16,
                                                              int min_exp, uint8_t *codes, int rows, int cols,
                                                              int64_t ld, uint8_t *scale_out) {
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff);
    __m256i vmax = _mm256_setzero_si256();
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j += 8)
            vmax = _mm256_max_epu32(vmax, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i * ld + j)), absmask));
    __m128i m4 = _mm_max_epu32(_mm256_castsi256_si128(vmax), _mm256_extracti128_si256(vmax, 1));
    m4 = _mm_max_epu32(m4, _mm_shuffle_epi32(m4, 0x4e));
    m4 = _mm_max_epu32(m4, _mm_shuffle_epi32(m4, 0xb1));
    uint32_t amax = (uint32_t)_mm_cvtsi128_si32(m4);
    if (amax >= k->nan_above) return false;
    int se = qk_scale_exp(k, amax);
    if (y16 && se + min_exp < -126) return false;
    if (scale_out) *scale_out = (uint8_t)(se + 127);
    __m256 s = _mm256_set1_ps(quant_pow2f(se)), inv_s = _mm256_set1_ps(quant_pow2f(-se));
    __m256i eb0 = _mm256_set1_epi32(k->eminb), off = _mm256_set1_epi32(23 - k->p);
    __m256i low_below = _mm256_set1_epi32((int)k->low_below), low_eb0 = _mm256_set1_epi32(k->low_eminb),
            low_off = _mm256_set1_epi32(23 - k->low_p);
    __m256 maxn = _mm256_set1_ps(k->max_norm);
    int has_low = k->has_low;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j += 8) {
            __m256 xv = _mm256_loadu_ps(x + i * ld + j);
            /* the branch on has_low is loop-invariant: the compiler unswitches it */
            __m256 q = has_low ? qk_vec_even(xv, inv_s, s, eb0, off, maxn, 1, low_below, low_eb0, low_off)
                               : qk_vec_even(xv, inv_s, s, eb0, off, maxn, 0, low_below, low_eb0, low_off);
            if (y) _mm256_storeu_ps(y + i * ld + j, _mm256_mul_ps(q, s));
            if (y16) qk_store_bf16(y16 + i * ld + j, _mm256_mul_ps(q, s));
            if (codes) qk_vec_encode(k, q, codes + i * ld + j);
        }
    return true;
}

/* COLUMNS panel: `rows` x w (w a multiple of 8, at most QK_COLS) with one
 * scale per column; row stride ld. Same arithmetic as the tile kernel with a
 * scale vector per 8 columns. False (nothing written) on a non-finite column. */
__attribute__((target("avx2"))) static bool qk_panel_even_avx2(const qk *k, const float *x, float *y, uint16_t *y16,
                                                               int min_exp, uint8_t *codes, int rows, int w, int64_t ld,
                                                               uint8_t *scale_out) {
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff);
    __m256i vmax[QK_COLS / 8];
    int nv = w / 8;
    for (int v = 0; v < nv; v++) vmax[v] = _mm256_setzero_si256();
    for (int i = 0; i < rows; i++)
        for (int v = 0; v < nv; v++)
            vmax[v] = _mm256_max_epu32(
                vmax[v], _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i * ld + 8 * v)), absmask));
    uint32_t amax[QK_COLS];
    float sv[QK_COLS], inv[QK_COLS];
    for (int v = 0; v < nv; v++) _mm256_storeu_si256((__m256i *)(amax + 8 * v), vmax[v]);
    for (int j = 0; j < w; j++)
        if (amax[j] >= k->nan_above) return false;
    if (y16)
        for (int j = 0; j < w; j++)
            if (qk_scale_exp(k, amax[j]) + min_exp < -126) return false;
    for (int j = 0; j < w; j++) {
        int se = qk_scale_exp(k, amax[j]);
        if (scale_out) scale_out[j] = (uint8_t)(se + 127);
        sv[j] = quant_pow2f(se);
        inv[j] = quant_pow2f(-se);
    }
    __m256i eb0 = _mm256_set1_epi32(k->eminb), off = _mm256_set1_epi32(23 - k->p);
    __m256i low_below = _mm256_set1_epi32((int)k->low_below), low_eb0 = _mm256_set1_epi32(k->low_eminb),
            low_off = _mm256_set1_epi32(23 - k->low_p);
    __m256 maxn = _mm256_set1_ps(k->max_norm);
    int has_low = k->has_low;
    for (int i = 0; i < rows; i++)
        for (int v = 0; v < nv; v++) {
            __m256 xv = _mm256_loadu_ps(x + i * ld + 8 * v), s = _mm256_loadu_ps(sv + 8 * v),
                   inv_s = _mm256_loadu_ps(inv + 8 * v);
            __m256 q = has_low ? qk_vec_even(xv, inv_s, s, eb0, off, maxn, 1, low_below, low_eb0, low_off)
                               : qk_vec_even(xv, inv_s, s, eb0, off, maxn, 0, low_below, low_eb0, low_off);
            if (y) _mm256_storeu_ps(y + i * ld + 8 * v, _mm256_mul_ps(q, s));
            if (y16) qk_store_bf16(y16 + i * ld + 8 * v, _mm256_mul_ps(q, s));
            if (codes) qk_vec_encode(k, q, codes + i * ld + 8 * v);
        }
    return true;
}

static bool qk_have_avx2(void) {
    static int have = -1;
    if (have < 0) have = __builtin_cpu_supports("avx2") ? 1 : 0;
    return have;
}
#else
static bool qk_tile_even_avx2(const qk *k, const float *x, float *y, uint16_t *y16, int min_exp, uint8_t *codes,
                              int rows, int cols, int64_t ld, uint8_t *scale_out) {
    return false;
}
static bool qk_panel_even_avx2(const qk *k, const float *x, float *y, uint16_t *y16, int min_exp, uint8_t *codes,
                               int rows, int w, int64_t ld, uint8_t *scale_out) {
    return false;
}
static bool qk_have_avx2(void) { return false; }
#endif

/* ---- shared microexponents (BDR): the block arithmetic is quant_kernel.h's ---- */
static void qk_range(int64_t n, int tid, int nth, int64_t *b, int64_t *e);

/* One block, any layout, rounding mode and statistics: the reference and the general path. */
static void qk_bdr_block(const qk *k, const qlayout *l, int64_t t, const float *x, float *y, uint8_t *codes,
                         uint8_t *scales, quant_stats *st) {
    int k1 = k->k1, nr = k1 / k->k2;
    int64_t off[QK_BDR_MAX];
    float xb[QK_BDR_MAX], q[QK_BDR_MAX];
    uint8_t c[QK_BDR_MAX], u[QK_BDR_MAX];
    uint64_t sat;
    qk_bdr_offsets(l, t, k1, off);
    for (int j = 0; j < k1; j++) xb[j] = off[j] >= 0 ? x[off[j]] : 0.0f;
    uint8_t sc = qk_bdr_quant(k, xb, off, q, c, u, &sat);
    if (scales) scales[t] = sc;
    if (codes) memcpy(codes + l->numel + t * nr, u, (size_t)nr);
    uint32_t amax = 0;
    for (int j = 0; j < k1; j++) {
        uint32_t a = quant_bits(xb[j]) & 0x7fffffffu;
        amax = a > amax ? a : amax;
    }
    int e_amax = amax && sc != 255 ? qk_exponent(amax) : 0;
    for (int j = 0; j < k1; j++) {
        if (off[j] < 0) continue;
        if (y) y[off[j]] = q[j];
        if (codes) codes[off[j]] = c[j];
        if (!st) continue;
        st->elements++;
        uint32_t a = quant_bits(xb[j]) & 0x7fffffffu;
        if (!a) continue;
        st->nonzero++;
        if (sc == 255) continue; /* a non-finite block counts elements and nonzeros only */
        st->underflow += q[j] == 0.0f;
        int gap = e_amax - qk_exponent(a);
        st->gap_hist[gap < QUANT_GAP_BINS - 1 ? gap : QUANT_GAP_BINS - 1]++;
    }
    if (st && sc != 255)
        for (int j = 0; j < k1; j++) {
            if (off[j] < 0) continue;
            st->saturated += (sat >> j) & 1;
            double dx = xb[j], de = (double)xb[j] - (double)q[j];
            st->sum_x2 += dx * dx;
            st->sum_err2 += de * de;
        }
}

#if defined(__x86_64__)
/* The per-vector part of the BDR fast paths: 8 values x (scaled by inv_s
 * with scale s and exponent vse per lane), their runs' maxima rm: rounds
 * them, stores values and codes through the callers' pointers, returns u. */
__attribute__((target("avx2"))) static inline __attribute__((always_inline)) __m256i
qk_bdr_vec(const qk *k, __m256 xv, __m256i rm, __m256 s, __m256 inv_s, __m256i vse, __m256 *q_out, __m256 *y_out) {
    const __m256i zero = _mm256_setzero_si256(), c127 = _mm256_set1_epi32(127);
    const __m256i eb0 = _mm256_set1_epi32(k->eminb), off = _mm256_set1_epi32(23 - k->p);
    /* floor(log2 amax_run) from the exponent field; a subnormal run max reads
     * as -127, which gives the same clamped u because the fast paths take only
     * blocks with se >= umax - 127 (qk_bdr_amax_ok) */
    __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(rm, 23), c127);
    __m256i u = _mm256_min_epi32(_mm256_max_epi32(_mm256_sub_epi32(vse, e), zero), _mm256_set1_epi32(k->umax));
    u = _mm256_andnot_si256(_mm256_cmpeq_epi32(rm, zero), u);
    __m256 pu = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(u, c127), 23));
    __m256 iu = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_sub_epi32(c127, u), 23));
    *q_out = qk_vec_even(_mm256_mul_ps(xv, inv_s), pu, s, eb0, off, _mm256_set1_ps(k->max_norm), 0, zero, eb0, off);
    *y_out = _mm256_mul_ps(_mm256_mul_ps(*q_out, iu), s);
    return u;
}

/* Scale of blocks whose amax bits are am (per lane): s = 2^se, 1/s, se. The
 * fast paths take amax 0 or one in [2^(umax-126), 2^127) only (qk_bdr_amax_ok). */
__attribute__((target("avx2"))) static inline __attribute__((always_inline)) void
qk_bdr_scale_vec(__m256i am, __m256 *s, __m256 *inv_s, __m256i *vse) {
    __m256i ef = _mm256_srli_epi32(am, 23); /* se + 127 (0 for an all-zero block: se = -127, code 0) */
    *s = _mm256_castsi256_ps(_mm256_slli_epi32(ef, 23));
    *inv_s = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_sub_epi32(_mm256_set1_epi32(254), ef), 23));
    *vse = _mm256_sub_epi32(ef, _mm256_set1_epi32(127));
}
static inline bool qk_bdr_amax_ok(const qk *k, uint32_t amax) {
    return amax == 0 || (amax >= (uint32_t)(1 + k->umax) << 23 && amax < 0x7f000000u);
}

/* Vector v (8 values in block order) of a tile at b with row stride ld and
 * c columns: c a multiple of 8 (a piece of one row) or 4 (two half rows). */
__attribute__((target("avx2"))) static inline __attribute__((always_inline)) __m256 qk_tile_ld(const float *b, int64_t ld,
                                                                                              int c, int v) {
    if (c == 4) return _mm256_loadu2_m128(b + (2 * v + 1) * ld, b + 2 * v * ld);
    return _mm256_loadu_ps(b + (8 * v / c) * ld + 8 * v % c);
}
__attribute__((target("avx2"))) static inline __attribute__((always_inline)) void qk_tile_st(float *b, int64_t ld, int c,
                                                                                            int v, __m256 y) {
    if (c == 4) _mm256_storeu2_m128(b + (2 * v + 1) * ld, b + 2 * v * ld, y);
    else _mm256_storeu_ps(b + (8 * v / c) * ld + 8 * v % c, y);
}

/* nblk consecutive tiles of one band (r x c, r * c = k1 a multiple of 8; 1D
 * blocks along a contiguous axis are 1 x k1 tiles) with runs of k2 (1, 2, 4
 * or a multiple of 8), round half to even: the same bits as qk_bdr_block,
 * each tile in registers and its scale found in vector registers. Stops
 * before a tile whose amax the fast path does not take (tiny, huge,
 * non-finite: the general path does) and returns how many it did. */
__attribute__((target("avx2"))) static inline __attribute__((always_inline)) int64_t
qk_bdr_span_body(const qk *k, const float *x, int64_t ld, int c, float *y, uint8_t *codes, uint8_t *ue, uint8_t *scales,
                 int64_t nblk, int k1, int k2) {
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff), zero = _mm256_setzero_si256();
    const int nv = k1 / 8, nr = k1 / k2;
    for (int64_t b = 0; b < nblk; b++) {
        const float *xb = x + b * c;
        __m256 xv[QK_BDR_MAX / 8];
        __m256i a[QK_BDR_MAX / 8], rm[QK_BDR_MAX / 8];
        __m256i vmax = zero;
        for (int v = 0; v < nv; v++) {
            xv[v] = qk_tile_ld(xb, ld, c, v);
            a[v] = _mm256_and_si256(_mm256_castps_si256(xv[v]), absmask);
            vmax = _mm256_max_epu32(vmax, a[v]);
        }
        /* amax in every lane */
        vmax = _mm256_max_epu32(vmax, _mm256_permute2x128_si256(vmax, vmax, 0x01));
        vmax = _mm256_max_epu32(vmax, _mm256_shuffle_epi32(vmax, 0x4e));
        vmax = _mm256_max_epu32(vmax, _mm256_shuffle_epi32(vmax, 0xb1));
        uint32_t amax = (uint32_t)_mm_cvtsi128_si32(_mm256_castsi256_si128(vmax));
        if (!qk_bdr_amax_ok(k, amax)) return b;
        if (scales) scales[b] = (uint8_t)(amax >> 23);
        __m256 s, inv_s;
        __m256i vse;
        qk_bdr_scale_vec(vmax, &s, &inv_s, &vse);
        /* each lane gets its run's max */
        for (int v = 0; v < nv; v++) {
            __m256i r = a[v];
            if (k2 >= 2) r = _mm256_max_epu32(r, _mm256_shuffle_epi32(r, 0xb1));
            if (k2 >= 4) r = _mm256_max_epu32(r, _mm256_shuffle_epi32(r, 0x4e));
            if (k2 >= 8) r = _mm256_max_epu32(r, _mm256_permute2x128_si256(r, r, 0x01));
            rm[v] = r;
        }
        for (int g = 0; k2 > 8 && g < nv; g += k2 / 8) {
            __m256i m = rm[g];
            for (int v = g + 1; v < g + k2 / 8; v++) m = _mm256_max_epu32(m, rm[v]);
            for (int v = g; v < g + k2 / 8; v++) rm[v] = m;
        }
        for (int v = 0; v < nv; v++) {
            __m256 q, yv;
            __m256i u = qk_bdr_vec(k, xv[v], rm[v], s, inv_s, vse, &q, &yv);
            if (y) qk_tile_st(y + b * c, ld, c, v, yv);
            if (codes) {
                uint8_t cb[8];
                qk_vec_encode(k, q, cb);
                uint8_t *cp = codes + b * c;
                if (c == 4) {
                    memcpy(cp + 2 * v * ld, cb, 4);
                    memcpy(cp + (2 * v + 1) * ld, cb + 4, 4);
                } else {
                    memcpy(cp + (8 * v / c) * ld + 8 * v % c, cb, 8);
                }
            }
            if (ue) { /* the first lane of each run (k2 < 8), or of the vector that starts a run */
                int32_t ul[8];
                _mm256_storeu_si256((__m256i *)ul, u);
                uint8_t *ub = ue + b * nr;
                if (k2 < 8)
                    for (int i = 0; i < 8 / k2; i++) ub[v * (8 / k2) + i] = (uint8_t)ul[i * k2];
                else if (v % (k2 / 8) == 0)
                    ub[v / (k2 / 8)] = (uint8_t)ul[0];
            }
        }
    }
    return nblk;
}

/* Variants with constants (the presets' k1 16, k2 2; fake-quant only, no
 * codes) so that loops unroll and dead stores vanish; any other. */
#define QK_BDR_SPAN(name, K1, K2, CODES)                                                                          \
    __attribute__((target("avx2"))) static int64_t name(const qk *k, const float *x, int64_t ld, int c, float *y, \
                                                        uint8_t *codes, uint8_t *ue, uint8_t *scales, int64_t n) { \
        return qk_bdr_span_body(k, x, ld, c, y, CODES ? codes : NULL, CODES ? ue : NULL, scales, n, K1, K2);        \
    }
QK_BDR_SPAN(qk_bdr_span_16_2_fake, 16, 2, 0)
QK_BDR_SPAN(qk_bdr_span_16_2_pack, 16, 2, 1)
QK_BDR_SPAN(qk_bdr_span_any_fake, k->k1, k->k2, 0)
QK_BDR_SPAN(qk_bdr_span_any_pack, k->k1, k->k2, 1)
#undef QK_BDR_SPAN
typedef int64_t (*qk_bdr_span_fn)(const qk *k, const float *x, int64_t ld, int c, float *y, uint8_t *codes,
                                  uint8_t *ue, uint8_t *scales, int64_t nblk);
static qk_bdr_span_fn qk_bdr_span_pick(const qk *k, bool codes) {
    if (k->k1 == 16 && k->k2 == 2) return codes ? qk_bdr_span_16_2_pack : qk_bdr_span_16_2_fake;
    return codes ? qk_bdr_span_any_pack : qk_bdr_span_any_fake;
}

/* COLUMNS: 8 neighbouring columns of one block row (k1 values down each,
 * row stride ld): each lane is its own block, so the scale, the runs' maxima
 * and the microexponents are lane-wise. scales/ue: the 8 blocks' entries
 * (consecutive scales; runs nr apart). False (nothing written) when a
 * column's amax is one the fast path does not take. */
__attribute__((target("avx2"))) static bool qk_bdr_cols_avx2(const qk *k, const float *x, int64_t ld, float *y,
                                                             uint8_t *codes, uint8_t *ue, uint8_t *scales) {
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff);
    int k1 = k->k1, k2 = k->k2, nr = k1 / k2;
    __m256i vmax = _mm256_setzero_si256();
    for (int i = 0; i < k1; i++)
        vmax = _mm256_max_epu32(vmax, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i * ld)), absmask));
    uint32_t am[8];
    _mm256_storeu_si256((__m256i *)am, vmax);
    for (int j = 0; j < 8; j++)
        if (!qk_bdr_amax_ok(k, am[j])) return false;
    if (scales)
        for (int j = 0; j < 8; j++) scales[j] = (uint8_t)(am[j] >> 23);
    __m256 s, inv_s;
    __m256i vse;
    qk_bdr_scale_vec(vmax, &s, &inv_s, &vse);
    for (int r = 0; r < nr; r++) {
        __m256i rm = _mm256_setzero_si256();
        for (int i = r * k2; i < (r + 1) * k2; i++)
            rm = _mm256_max_epu32(rm, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i * ld)), absmask));
        __m256i u = _mm256_setzero_si256();
        for (int i = r * k2; i < (r + 1) * k2; i++) {
            __m256 q, yv;
            u = qk_bdr_vec(k, _mm256_loadu_ps(x + i * ld), rm, s, inv_s, vse, &q, &yv);
            if (y) _mm256_storeu_ps(y + i * ld, yv);
            if (codes) qk_vec_encode(k, q, codes + i * ld);
        }
        if (ue) {
            int32_t ul[8];
            _mm256_storeu_si256((__m256i *)ul, u);
            for (int j = 0; j < 8; j++) ue[j * nr + r] = (uint8_t)ul[j];
        }
    }
    return true;
}
#else
typedef int64_t (*qk_bdr_span_fn)(const qk *k, const float *x, int64_t ld, int c, float *y, uint8_t *codes,
                                  uint8_t *ue, uint8_t *scales, int64_t nblk);
static qk_bdr_span_fn qk_bdr_span_pick(const qk *k, bool codes) { return NULL; }
static bool qk_bdr_cols_avx2(const qk *k, const float *x, int64_t ld, float *y, uint8_t *codes, uint8_t *ue,
                             uint8_t *scales) {
    return false;
}
#endif

static void qk_run_bdr(const qk *k, const qlayout *l, const float *x, float *y, uint8_t *codes, uint8_t *scales,
                       quant_stats *st_out, int nth) {
    MX_ASSERT(k->k1 <= QK_BDR_MAX);
    int nr = k->k1 / k->k2;
    bool simd = qk_have_avx2() && !getenv("MXTRAIN_NO_SIMD") && !st_out && k->mode == QK_EVEN_FAST &&
                (k->k2 <= 4 || k->k2 % 8 == 0) && k->k1 % 8 == 0;
    /* tiles (and 1D blocks along a contiguous axis) whose rows load as vectors */
    qk_bdr_span_fn span = simd && l->kind == QL_TILES && (l->c % 8 == 0 || l->c == 4) ? qk_bdr_span_pick(k, codes != NULL) : NULL;
    bool cols = simd && l->kind == QL_COLUMNS;
    quant_stats *part = st_out ? mx_calloc((size_t)nth, sizeof *part) : NULL;
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        quant_stats *st = part ? &part[tid] : NULL;
        int64_t t0, t1;
        qk_range(l->nblocks, tid, nt, &t0, &t1);
        for (int64_t t = t0; t < t1;) {
            if (span) { /* the full tiles left in block t's band */
                int64_t per = l->ntr * l->ntc, li = t / per, tr = (t % per) / l->ntc, tc = t % l->ntc;
                int64_t full = l->C / l->c, n = tc < full && (tr + 1) * l->r <= l->R ? full - tc : 0;
                n = n < t1 - t ? n : t1 - t;
                int64_t o = li * l->R * l->C + tr * l->r * l->C + tc * l->c;
                int64_t done = n ? span(k, x + o, l->C, l->c, y ? y + o : NULL, codes ? codes + o : NULL,
                                        codes ? codes + l->numel + t * nr : NULL, scales ? scales + t : NULL, n)
                                 : 0;
                t += done;
                if (done == n && n) continue; /* the next band (or the ragged tile) */
                if (t >= t1) break;
            } else if (cols) { /* 8 columns of one block row at a time, blocks in full */
                int64_t o = t / (l->nb * l->inner), b = (t / l->inner) % l->nb, col = t % l->inner;
                if (col + 8 <= l->inner && (b + 1) * l->k <= l->L && t + 8 <= t1) {
                    int64_t base = o * l->L * l->inner + b * l->k * l->inner + col;
                    if (qk_bdr_cols_avx2(k, x + base, l->inner, y ? y + base : NULL, codes ? codes + base : NULL,
                                         codes ? codes + l->numel + t * nr : NULL, scales ? scales + t : NULL)) {
                        t += 8;
                        continue;
                    }
                }
            }
            qk_bdr_block(k, l, t, x, y, codes, scales, st);
            t++;
        }
    }
    if (part) {
        for (int i = 0; i < nth; i++) quant_stats_add(st_out, &part[i]);
        free(part);
    }
}

static void qk_unpack_bdr(const qk *k, const qlayout *l, const uint8_t *codes, const uint8_t *scales, float *y,
                          int nth) {
    int k1 = k->k1, k2 = k->k2, nr = k1 / k2;
#pragma omp parallel for num_threads(nth) schedule(static) if (nth > 1)
    for (int64_t t = 0; t < l->nblocks; t++) {
        int64_t off[QK_BDR_MAX];
        qk_bdr_offsets(l, t, k1, off);
        const uint8_t *ue = codes + l->numel + t * nr;
        for (int j = 0; j < k1; j++)
            if (off[j] >= 0) y[off[j]] = scales[t] == 255 ? quant_nanf() : qk_bdr_value(k, codes[off[j]], ue[j / k2], scales[t]);
    }
}

/* ---- layouts ---- */

int ql_make(const quant_spec *s, int ndim, const int64_t *shape, qlayout *l, mx_err *err) {
    memset(l, 0, sizeof *l);
    l->numel = 1;
    for (int i = 0; i < ndim; i++) l->numel *= shape[i];
    const quant_format_info *fi = quant_format_get(s->format);
    if (!fi->is_mx) {
        l->kind = QL_ELEMENTWISE;
        return 0;
    }
    if (s->block_rows < 1 || s->block_cols < 1)
        return mx_err_set(err, "block %dx%d must be positive", s->block_rows, s->block_cols);
    if (quant_spec_check(s, err)) return -1;
    if (s->block_rows > 1) {
        if (ndim < 2) return mx_err_set(err, "a %dx%d tile needs an array of rank >= 2, got rank %d", s->block_rows,
                                        s->block_cols, ndim);
        l->kind = QL_TILES;
        l->lead = 1;
        for (int i = 0; i < ndim - 2; i++) l->lead *= shape[i];
        l->R = shape[ndim - 2];
        l->C = shape[ndim - 1];
        l->r = s->block_rows;
        l->c = s->block_cols;
        l->ntr = (l->R + l->r - 1) / l->r;
        l->ntc = (l->C + l->c - 1) / l->c;
        l->nblocks = l->lead * l->ntr * l->ntc;
        return 0;
    }
    if (ndim < 1) return mx_err_set(err, "1D blocks need an array of rank >= 1");
    int axis = s->axis < 0 ? s->axis + ndim : s->axis;
    if (axis < 0 || axis >= ndim) return mx_err_set(err, "axis %d out of range for rank %d", s->axis, ndim);
    l->outer = 1;
    l->inner = 1;
    for (int i = 0; i < axis; i++) l->outer *= shape[i];
    for (int i = axis + 1; i < ndim; i++) l->inner *= shape[i];
    l->L = shape[axis];
    l->k = s->block_cols;
    l->nb = (l->L + l->k - 1) / l->k;
    l->nblocks = l->outer * l->nb * l->inner;
    if (l->inner == 1) { /* contiguous blocks: rows of length L cut into 1 x k tiles */
        l->kind = QL_TILES;
        l->lead = 1;
        l->R = l->outer;
        l->C = l->L;
        l->r = 1;
        l->c = l->k;
        l->ntr = l->R;
        l->ntc = l->nb;
    } else {
        l->kind = QL_COLUMNS;
    }
    return 0;
}

int64_t quant_num_blocks(const quant_spec *s, int ndim, const int64_t *shape, mx_err *err) {
    qlayout l;
    if (ql_make(s, ndim, shape, &l, err)) return -1;
    return l.nblocks;
}

int64_t quant_codes_bytes(const quant_spec *s, int ndim, const int64_t *shape) {
    qlayout l;
    mx_err err;
    MX_ASSERTF(ql_make(s, ndim, shape, &l, &err) == 0, "%s", err.msg);
    const quant_format_info *fi = quant_format_get(s->format);
    return l.numel + (fi->k1 ? l.nblocks * (fi->k1 / fi->k2) : 0);
}

int quant_scales_shape(const quant_spec *s, int ndim, const int64_t *shape, int64_t *out) {
    qlayout l;
    mx_err err;
    MX_ASSERTF(ql_make(s, ndim, shape, &l, &err) == 0, "%s", err.msg);
    if (l.kind == QL_ELEMENTWISE) return 0;
    if (quant_spec_is_2d(s)) {
        for (int i = 0; i < ndim - 2; i++) out[i] = shape[i];
        out[ndim - 2] = l.ntr;
        out[ndim - 1] = l.ntc;
        return ndim;
    }
    int axis = s->axis < 0 ? s->axis + ndim : s->axis;
    for (int i = 0; i < ndim; i++) out[i] = i == axis ? l.nb : shape[i];
    return ndim;
}

/* Static partition of [0, n) for thread tid of nth. */
static void qk_range(int64_t n, int tid, int nth, int64_t *b, int64_t *e) {
    int64_t q = n / nth, r = n % nth;
    *b = tid * q + (tid < r ? tid : r);
    *e = *b + q + (tid < r ? 1 : 0);
}

static inline void qk_tile_next(const qlayout *l, int64_t *li, int64_t *tr, int64_t *tc) {
    if (++*tc < l->ntc) return;
    *tc = 0;
    if (++*tr < l->ntr) return;
    *tr = 0;
    ++*li;
}

/* TILES: each thread takes a contiguous range of tiles in block order. */
static void qk_run_tiles(const qk *k, const qlayout *l, const float *x, float *y, uint8_t *codes, uint8_t *scales,
                         quant_stats *st_out, qk_row_fn row, int nth) {
    bool avx2 = qk_have_avx2() && !getenv("MXTRAIN_NO_SIMD");
    quant_stats *part = st_out ? mx_calloc((size_t)nth, sizeof *part) : NULL;
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        quant_stats *st = part ? &part[tid] : NULL;
        int64_t t0, t1;
        qk_range(l->nblocks, tid, nt, &t0, &t1);
        int64_t per_lead = l->ntr * l->ntc;
        /* tile coordinates, advanced incrementally (no divisions per tile) */
        int64_t li = t0 / per_lead, tr = (t0 % per_lead) / l->ntc, tc = t0 % l->ntc;
        bool fast = avx2 && !st && k->mode == QK_EVEN_FAST && l->c % 8 == 0;
        for (int64_t t = t0; t < t1; t++, qk_tile_next(l, &li, &tr, &tc)) {
            int rows = (int)(l->R - tr * l->r < l->r ? l->R - tr * l->r : l->r);
            int cols = (int)(l->C - tc * l->c < l->c ? l->C - tc * l->c : l->c);
            int64_t off = li * l->R * l->C + tr * l->r * l->C + tc * l->c;
            if (fast && cols == l->c &&
                qk_tile_even_avx2(k, x + off, y ? y + off : NULL, NULL, 0, codes ? codes + off : NULL, rows, cols, l->C,
                                  scales ? scales + t : NULL))
                continue;
            uint32_t amax = 0;
            for (int i = 0; i < rows; i++) {
                const float *xr = x + off + i * l->C;
                for (int j = 0; j < cols; j++) {
                    uint32_t a = quant_bits(xr[j]) & 0x7fffffffu;
                    amax = a > amax ? a : amax;
                }
            }
            if (amax >= k->nan_above) { /* Inf or NaN in the block (or an rceil scale past 2^127): all NaN, code 255 */
                for (int i = 0; i < rows; i++) {
                    if (y) for (int j = 0; j < cols; j++) y[off + i * l->C + j] = quant_nanf();
                    if (codes) memset(codes + off + i * l->C, 0, (size_t)cols);
                    if (st) {
                        st->elements += cols;
                        for (int j = 0; j < cols; j++) st->nonzero += x[off + i * l->C + j] != 0.0f;
                    }
                }
                if (scales) scales[t] = 255;
                continue;
            }
            int se = qk_scale_exp(k, amax);
            if (scales) scales[t] = (uint8_t)(se + 127);
            float s = quant_pow2f(se), inv_s = quant_pow2f(-se);
            int e_amax = amax ? qk_exponent(amax) : 0;
            for (int i = 0; i < rows; i++) {
                int64_t o = off + i * l->C;
                row(k, x + o, y ? y + o : NULL, codes ? codes + o : NULL, cols, inv_s, s, st, e_amax, (uint64_t)o);
            }
        }
    }
    if (part) {
        for (int i = 0; i < nth; i++) quant_stats_add(st_out, &part[i]);
        free(part);
    }
}

/* COLUMNS: blocks of k along L for each of `inner` columns; a chunk of up to
 * QK_COLS columns shares the k x chunk panel, so amax and quantization run
 * along contiguous memory. */
static void qk_run_columns(const qk *k, const qlayout *l, const float *x, float *y, uint8_t *codes, uint8_t *scales,
                           quant_stats *st_out, qk_row_fn row, int nth) {
    int64_t nchunk = (l->inner + QK_COLS - 1) / QK_COLS;
    int64_t total = l->outer * l->nb * nchunk;
    quant_stats *part = st_out ? mx_calloc((size_t)nth, sizeof *part) : NULL;
    bool fast = qk_have_avx2() && !getenv("MXTRAIN_NO_SIMD") && !st_out && k->mode == QK_EVEN_FAST;
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        quant_stats *st = part ? &part[tid] : NULL;
        int64_t t0, t1;
        qk_range(total, tid, nt, &t0, &t1);
        for (int64_t t = t0; t < t1; t++) {
            int64_t o = t / (l->nb * nchunk), rem = t % (l->nb * nchunk), b = rem / nchunk, ch = rem % nchunk;
            int64_t j0 = ch * QK_COLS;
            int w = (int)(l->inner - j0 < QK_COLS ? l->inner - j0 : QK_COLS);
            int rows = (int)(l->L - b * l->k < l->k ? l->L - b * l->k : l->k);
            int64_t base = o * l->L * l->inner + b * l->k * l->inner + j0;
            uint8_t *sc0 = scales ? scales + o * l->nb * l->inner + b * l->inner + j0 : NULL;
            if (fast && w % 8 == 0 &&
                qk_panel_even_avx2(k, x + base, y ? y + base : NULL, NULL, 0, codes ? codes + base : NULL, rows, w,
                                   l->inner, sc0))
                continue;
            uint32_t amax[QK_COLS];
            memset(amax, 0, sizeof amax);
            for (int i = 0; i < rows; i++) {
                const float *xr = x + base + i * l->inner;
                for (int j = 0; j < w; j++) {
                    uint32_t a = quant_bits(xr[j]) & 0x7fffffffu;
                    amax[j] = a > amax[j] ? a : amax[j];
                }
            }
            uint8_t *sc = sc0;
            for (int j = 0; j < w; j++) {
                /* one column of one block: `rows` elements, stride inner */
                float s = 0, inv_s = 0;
                int e_amax = 0;
                bool nonfinite = amax[j] >= k->nan_above;
                if (!nonfinite) {
                    int se = qk_scale_exp(k, amax[j]);
                    if (sc) sc[j] = (uint8_t)(se + 127);
                    s = quant_pow2f(se);
                    inv_s = quant_pow2f(-se);
                    e_amax = amax[j] ? qk_exponent(amax[j]) : 0;
                } else if (sc) {
                    sc[j] = 255;
                }
                for (int i = 0; i < rows; i++) {
                    int64_t off = base + i * l->inner + j;
                    if (nonfinite) {
                        if (y) y[off] = quant_nanf();
                        if (codes) codes[off] = 0;
                        if (st) {
                            st->elements++;
                            st->nonzero += x[off] != 0.0f;
                        }
                    } else {
                        row(k, x + off, y ? y + off : NULL, codes ? codes + off : NULL, 1, inv_s, s, st, e_amax,
                            (uint64_t)off);
                    }
                }
            }
        }
    }
    if (part) {
        for (int i = 0; i < nth; i++) quant_stats_add(st_out, &part[i]);
        free(part);
    }
}

/* bf16 / fp32: elementwise. */
static void qk_run_elementwise(const quant_spec *s, const float *x, float *y, int64_t n, quant_stats *st_out,
                               int nth) {
    quant_stats *part = st_out ? mx_calloc((size_t)nth, sizeof *part) : NULL;
    int mode = s->round;
    bool bf16 = s->format == QUANT_FORMAT_BF16;
#pragma omp parallel num_threads(nth) if (nth > 1)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t i0, i1;
        qk_range(n, tid, nt, &i0, &i1);
        if (bf16) {
            /* branch-free per mode so the loops vectorize; NaN is kept quiet */
            uint64_t seed = s->seed, stream = s->stream, off = s->offset;
#define QK_BF16_LOOP(add)                                                     \
    for (int64_t i = i0; i < i1; i++) {                                        \
        uint32_t b = quant_bits(x[i]);                                         \
        y[i] = qk_bf16_round(b, (add));                                        \
    }
            if (mode == QUANT_ROUND_EVEN) QK_BF16_LOOP(qk_bf16_even_add(b))
            else if (mode == QUANT_ROUND_AWAY) QK_BF16_LOOP(0x8000u)
            else if (mode == QUANT_ROUND_FLOOR) QK_BF16_LOOP(0u)
            else QK_BF16_LOOP(rng_u32_at(seed, stream, off + (uint64_t)i) >> 16)
#undef QK_BF16_LOOP
        } else if (y != x) {
            memcpy(y + i0, x + i0, (size_t)(i1 - i0) * sizeof(float));
        }
        if (part) {
            quant_stats *st = &part[tid];
            for (int64_t i = i0; i < i1; i++) {
                double xv = x == y ? (double)y[i] : (double)x[i];
                double q = y[i];
                st->nonzero += xv != 0.0;
                st->underflow += xv != 0.0 && q == 0.0;
                st->saturated += isinf(q) && !isinf(xv);
                st->sum_x2 += xv * xv;
                st->sum_err2 += (xv - q) * (xv - q);
            }
            st->elements += i1 - i0;
        }
    }
    if (part) {
        for (int i = 0; i < nth; i++) quant_stats_add(st_out, &part[i]);
        free(part);
    }
}

/* Threads: one per ~32K elements, at most the knob's setting. */
static int qk_threads(int64_t numel) {
    int nth = omp_get_max_threads();
    int64_t want = numel / 32768 + 1;
    return want < nth ? (int)want : nth;
}

static void quant_run(const quant_spec *s, const float *x, float *y, uint8_t *codes, int ndim, const int64_t *shape,
                      uint8_t *scales, quant_stats *stats, bool reference) {
    qlayout l;
    mx_err err;
    MX_ASSERTF(ql_make(s, ndim, shape, &l, &err) == 0, "quantize: %s", err.msg);
    if (stats) quant_stats_clear(stats);
    if (l.numel == 0) return;
    int nth = qk_threads(l.numel);
    if (l.kind == QL_ELEMENTWISE) {
        MX_ASSERTF(!codes, "format %s has no packed form", quant_format_get(s->format)->name);
        qk_run_elementwise(s, x, y, l.numel, stats, nth);
        return;
    }
    qk k = qk_make(s, reference);
    if (k.k1) {
        qk_run_bdr(&k, &l, x, y, codes, scales, stats, nth);
        return;
    }
    qk_row_fn row = qk_rows[codes ? 1 : 0][stats ? 1 : 0][k.mode];
    if (l.kind == QL_TILES) qk_run_tiles(&k, &l, x, y, codes, scales, stats, row, nth);
    else qk_run_columns(&k, &l, x, y, codes, scales, stats, row, nth);
}

/* The scaled domain's smallest nonzero magnitude's exponent (the subnormal
 * step, or an integer grid's 2^-p); bf16 holds a block's values exactly when
 * the scale puts it at 2^-126 or above and the grid has at most 7 fraction
 * bits. INT_MIN where the format's values are not all bf16 grid points. */
static int qk_min_exp(const qk *k) {
    if (k->p > 7 || (k->has_low && k->low_p > 7)) return INT_MIN;
    if (k->is_int) return -k->p;
    int m = k->eminb - 127 - k->p;
    if (k->has_low && k->low_eminb - 127 - k->low_p < m) m = k->low_eminb - 127 - k->low_p;
    return m;
}

int quant_fake_bf16(const quant_spec *s, const float *x, uint16_t *y, int ndim, const int64_t *shape) {
    qlayout l;
    mx_err err;
    MX_ASSERTF(ql_make(s, ndim, shape, &l, &err) == 0, "quantize: %s", err.msg);
    if (l.numel == 0) return 1;
    if (l.kind == QL_ELEMENTWISE || !qk_have_avx2() || getenv("MXTRAIN_NO_SIMD")) return -1;
    qk k = qk_make(s, false);
    int min_exp = qk_min_exp(&k);
    if (k.k1 || k.mode != QK_EVEN_FAST || min_exp == INT_MIN) return -1;
    bool tiles = l.kind == QL_TILES;
    if (tiles ? l.c % 8 != 0 || l.C % l.c != 0 : l.inner % 8 != 0) return -1;
    int64_t nchunk = tiles ? 1 : (l.inner + QK_COLS - 1) / QK_COLS;
    int64_t total = tiles ? l.nblocks : l.outer * l.nb * nchunk;
    int bad = 0, nth = qk_threads(l.numel);
#pragma omp parallel num_threads(nth) if (nth > 1) reduction(| : bad)
    {
        int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t t0, t1;
        qk_range(total, tid, nt, &t0, &t1);
        int64_t per_lead = l.ntr * l.ntc;
        for (int64_t t = t0; t < t1 && !bad; t++) {
            if (tiles) {
                int64_t li = t / per_lead, tr = (t % per_lead) / l.ntc, tc = t % l.ntc;
                int rows = (int)(l.R - tr * l.r < l.r ? l.R - tr * l.r : l.r);
                int64_t off = li * l.R * l.C + tr * l.r * l.C + tc * l.c;
                bad |= !qk_tile_even_avx2(&k, x + off, NULL, y + off, min_exp, NULL, rows, l.c, l.C, NULL);
            } else {
                int64_t o = t / (l.nb * nchunk), rem = t % (l.nb * nchunk), b = rem / nchunk, ch = rem % nchunk;
                int64_t j0 = ch * QK_COLS;
                int w = (int)(l.inner - j0 < QK_COLS ? l.inner - j0 : QK_COLS);
                int rows = (int)(l.L - b * l.k < l.k ? l.L - b * l.k : l.k);
                int64_t base = o * l.L * l.inner + b * l.k * l.inner + j0;
                bad |= !qk_panel_even_avx2(&k, x + base, NULL, y + base, min_exp, NULL, rows, w, l.inner, NULL);
            }
        }
    }
    return bad ? 0 : 1;
}

void quant_fake(const quant_spec *s, const float *x, float *y, int ndim, const int64_t *shape, uint8_t *scales,
                quant_stats *stats) {
    quant_run(s, x, y, NULL, ndim, shape, scales, stats, false);
}

void quant_fake_reference(const quant_spec *s, const float *x, float *y, int ndim, const int64_t *shape,
                          uint8_t *scales) {
    quant_run(s, x, y, NULL, ndim, shape, scales, NULL, true);
}

void quant_pack_fake(const quant_spec *s, const float *x, uint8_t *codes, float *y, int ndim, const int64_t *shape,
                     uint8_t *scales, quant_stats *stats) {
    MX_ASSERT(codes && y && scales && quant_format_get(s->format)->is_mx);
    quant_run(s, x, y, codes, ndim, shape, scales, stats, false);
}

void quant_pack(const quant_spec *s, const float *x, uint8_t *codes, int ndim, const int64_t *shape, uint8_t *scales,
                quant_stats *stats) {
    MX_ASSERT(codes && scales && quant_format_get(s->format)->is_mx);
    quant_run(s, x, NULL, codes, ndim, shape, scales, stats, false);
}

__attribute__((constructor)) static void quant_lut_init(void) {
    for (int f = 0; f < QUANT_FORMAT_COUNT; f++) {
        const quant_format_info *fi = quant_format_get((quant_format)f);
        if (!fi->is_mx) continue;
        for (int c = 0; c < 256; c++)
            quant_lut[f][c] = c < (1 << fi->bits) ? quant_decode((quant_format)f, (uint8_t)c) : quant_nanf();
    }
}

void quant_unpack(const quant_spec *s, const uint8_t *codes, const uint8_t *scales, float *y, int ndim,
                  const int64_t *shape) {
    qlayout l;
    mx_err err;
    MX_ASSERTF(ql_make(s, ndim, shape, &l, &err) == 0, "unpack: %s", err.msg);
    MX_ASSERT(l.kind != QL_ELEMENTWISE);
    int nth = qk_threads(l.numel);
    if (quant_format_is_bdr(s->format)) {
        qk k = qk_make(s, false);
        qk_unpack_bdr(&k, &l, codes, scales, y, nth);
        return;
    }
    const float *lut = quant_lut[s->format];
    /* Scale index of each element, by layout; elements are independent. */
#pragma omp parallel for num_threads(nth) schedule(static) if (nth > 1)
    for (int64_t row = 0; row < (l.kind == QL_TILES ? l.lead * l.R : l.outer * l.L); row++) {
        int64_t width = l.kind == QL_TILES ? l.C : l.inner;
        const uint8_t *cr = codes + row * width;
        float *yr = y + row * width;
        if (l.kind == QL_TILES) { /* one scale per c columns */
            int64_t li = row / l.R, r = row % l.R;
            const uint8_t *sr = scales + li * l.ntr * l.ntc + (r / l.r) * l.ntc;
            for (int64_t tc = 0; tc < l.ntc; tc++) {
                int64_t j0 = tc * l.c, j1 = j0 + l.c < width ? j0 + l.c : width;
                if (sr[tc] == 255) {
                    for (int64_t j = j0; j < j1; j++) yr[j] = quant_nanf();
                    continue;
                }
                float sc = quant_pow2f((int)sr[tc] - 127);
                for (int64_t j = j0; j < j1; j++) yr[j] = lut[cr[j]] * sc;
            }
        } else { /* one scale per column */
            int64_t o = row / l.L, i = row % l.L;
            const uint8_t *sr = scales + o * l.nb * l.inner + (i / l.k) * l.inner;
            for (int64_t j = 0; j < width; j++)
                yr[j] = sr[j] == 255 ? quant_nanf() : lut[cr[j]] * quant_pow2f((int)sr[j] - 127);
        }
    }
}

int64_t quant_tensor_numel(const quant_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

void quant_tensor_values(const quant_tensor *t, float *y) {
    if (t->values) memcpy(y, t->values, sizeof(float) * (size_t)quant_tensor_numel(t));
    else quant_unpack(&t->spec, t->codes, t->scales, y, t->ndim, t->shape);
}

void quant_stats_clear(quant_stats *st) { memset(st, 0, sizeof *st); }

void quant_stats_add(quant_stats *acc, const quant_stats *st) {
    acc->elements += st->elements;
    acc->nonzero += st->nonzero;
    acc->underflow += st->underflow;
    acc->saturated += st->saturated;
    acc->sum_x2 += st->sum_x2;
    acc->sum_err2 += st->sum_err2;
    for (int i = 0; i < QUANT_GAP_BINS; i++) acc->gap_hist[i] += st->gap_hist[i];
}

double quant_stats_underflow_ratio(const quant_stats *st) {
    return st->nonzero ? (double)st->underflow / (double)st->nonzero : 0.0;
}

double quant_stats_saturation_ratio(const quant_stats *st) {
    return st->elements ? (double)st->saturated / (double)st->elements : 0.0;
}

double quant_stats_qsnr_db(const quant_stats *st) {
    if (st->sum_err2 == 0.0) return INFINITY;
    return 10.0 * log10(st->sum_x2 / st->sum_err2);
}

int quant_underflow_gap(quant_format f) {
    quant_spec s = quant_spec_default(f);
    int64_t shape[1] = {32};
    float x[32], y[32];
    uint8_t scales[8];
    for (int g = 1; g < QUANT_GAP_BINS; g++) {
        for (int i = 0; i < 32; i++) x[i] = 0.0f;
        x[0] = 1.0f;
        x[1] = ldexpf(1.99f, -g); /* the largest value of exponent -g */
        quant_fake(&s, x, y, 1, shape, quant_format_get(f)->is_mx ? scales : NULL, NULL);
        if (y[1] == 0.0f) return g;
    }
    return QUANT_GAP_BINS;
}
