/* The formats table, names, and single-code encode/decode. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/keys.h"
#include "quant/quant_internal.h"

/* name alias mx int bits ebits p emax emin bias max_norm low(p emin bias) summary, k1 k2 d2 */
static const quant_format_info quant_formats[] = {
    [QUANT_FORMAT_FP32] = {"fp32", NULL, false, false, 32, 8, 23, 127, -126, 127, 3.4028234663852886e38f, false,
                           0, 0, 0, "IEEE float32, no quantization"},
    [QUANT_FORMAT_BF16] = {"bf16", NULL, false, false, 16, 8, 7, 127, -126, 127, 3.3895313892515355e38f, false, 0,
                           0, 0, "bfloat16, round half to even, FP32 accumulation"},
    [QUANT_FORMAT_MXINT8] = {"mxint8", NULL, true, true, 8, 0, 6, 0, 0, 0, 127.0f / 64.0f, false, 0, 0, 0,
                             "8-bit two's complement k/64, shared E8M0 scale"},
    [QUANT_FORMAT_MXFP8_E4M3] = {"mxfp8_e4m3", "mxfp8", true, false, 8, 4, 3, 8, -6, 7, 448.0f, false, 0, 0, 0,
                                 "FP8 E4M3 (OCP), shared E8M0 scale"},
    [QUANT_FORMAT_MXFP8_E5M2] = {"mxfp8_e5m2", NULL, true, false, 8, 5, 2, 15, -14, 15, 57344.0f, false, 0, 0, 0,
                                 "FP8 E5M2 (OCP), shared E8M0 scale"},
    [QUANT_FORMAT_MXFP6_E3M2] = {"mxfp6_e3m2", NULL, true, false, 6, 3, 2, 4, -2, 3, 28.0f, false, 0, 0, 0,
                                 "FP6 E3M2 (OCP), shared E8M0 scale"},
    [QUANT_FORMAT_MXFP6_E2M3] = {"mxfp6_e2m3", NULL, true, false, 6, 2, 3, 2, 0, 1, 7.5f, false, 0, 0, 0,
                                 "FP6 E2M3 (OCP), shared E8M0 scale"},
    [QUANT_FORMAT_MXFP4_E2M1] = {"mxfp4_e2m1", NULL, true, false, 4, 2, 1, 2, 0, 1, 6.0f, false, 0, 0, 0,
                                 "FP4 E2M1 (OCP), shared E8M0 scale"},
    [QUANT_FORMAT_BOOST] = {"boost", "mxfp8_e2m5", true, false, 8, 2, 5, 2, 0, 1, 7.875f, false, 0, 0, 0,
                            "E2M5 block minifloat (BOOST), MX scale rule"},
    [QUANT_FORMAT_MXSF] = {"mxsf", NULL, true, false, 8, 2, 5, 2, 0, 1, 7.875f, true, 2, -7, 8,
                           "MX-SAFE: E2M5 whose subnormal range is recoded as E3M2"},
    [QUANT_FORMAT_MXINT4] = {"mxint4", NULL, true, true, 4, 0, 2, 0, 0, 0, 7.0f / 4.0f, false, 0, 0, 0,
                             "4-bit two's complement k/4, shared E8M0 scale (microxcaling's int4)"},
    /* BDR presets: bits = 1 + m, p = m - 1, max_norm = (2^m - 1) / 2^(m-1) */
    [QUANT_FORMAT_MX9] = {"mx9", NULL, true, true, 8, 0, 6, 0, 0, 0, 127.0f / 64.0f, false, 0, 0, 0,
                          "shared microexponents: 7-bit magnitudes, 16-value blocks, 1-bit microexponent per pair",
                          16, 2, 1},
    [QUANT_FORMAT_MX6] = {"mx6", NULL, true, true, 5, 0, 3, 0, 0, 0, 15.0f / 8.0f, false, 0, 0, 0,
                          "shared microexponents: 4-bit magnitudes, 16-value blocks, 1-bit microexponent per pair",
                          16, 2, 1},
    [QUANT_FORMAT_MX4] = {"mx4", NULL, true, true, 3, 0, 1, 0, 0, 0, 3.0f / 2.0f, false, 0, 0, 0,
                          "shared microexponents: 2-bit magnitudes, 16-value blocks, 1-bit microexponent per pair",
                          16, 2, 1},
};
_Static_assert(sizeof quant_formats / sizeof quant_formats[0] == QUANT_FORMAT_COUNT, "formats table size");

static const char *const quant_round_names[] = {"even", "away", "floor", "stochastic"};
_Static_assert(sizeof quant_round_names / sizeof quant_round_names[0] == QUANT_ROUND_COUNT, "round names");
static const char *const quant_scale_names[] = {"floor", "rceil"};
_Static_assert(sizeof quant_scale_names / sizeof quant_scale_names[0] == QUANT_SCALE_COUNT, "scale names");

/* General BDR formats, added as they are named; never removed, so a
 * quant_format id stays valid for the process. Rows are written before the
 * count is published. */
static quant_format_info quant_general[QUANT_FORMAT_MAX_GENERAL];
static char quant_general_names[QUANT_FORMAT_MAX_GENERAL][32];
static int quant_general_count;
static pthread_mutex_t quant_general_lock = PTHREAD_MUTEX_INITIALIZER;

const quant_format_info *quant_format_get(quant_format f) {
    if ((unsigned)f < QUANT_FORMAT_COUNT) return &quant_formats[f];
    int g = (int)f - QUANT_FORMAT_COUNT;
    MX_ASSERTF(g >= 0 && g < __atomic_load_n(&quant_general_count, __ATOMIC_ACQUIRE), "format id %d", (int)f);
    return &quant_general[g];
}

bool quant_format_is_bdr(quant_format f) { return quant_format_get(f)->k1 > 0; }

int quant_format_bdr(int m, int k1, int k2, int d2, quant_format *out, mx_err *err) {
    if (m < 1 || m > 7) return mx_err_set(err, "bdr magnitude bits m%d out of range (1..7)", m);
    if (k1 < 2 || k1 > 64) return mx_err_set(err, "bdr block k%d out of range (2..64)", k1);
    if (k2 < 1 || k1 % k2) return mx_err_set(err, "bdr run s%d must divide the block k%d", k2, k1);
    if (d2 < 0 || d2 > 3) return mx_err_set(err, "bdr microexponent bits d%d out of range (0..3)", d2);
    for (int f = 0; f < QUANT_FORMAT_COUNT; f++) {
        const quant_format_info *fi = &quant_formats[f];
        if (fi->k1 == k1 && fi->k2 == k2 && fi->d2 == d2 && fi->p == m - 1) {
            *out = (quant_format)f;
            return 0;
        }
    }
    pthread_mutex_lock(&quant_general_lock);
    int n = quant_general_count, g;
    for (g = 0; g < n; g++) {
        const quant_format_info *fi = &quant_general[g];
        if (fi->k1 == k1 && fi->k2 == k2 && fi->d2 == d2 && fi->p == m - 1) break;
    }
    if (g == n) {
        if (n == QUANT_FORMAT_MAX_GENERAL) {
            pthread_mutex_unlock(&quant_general_lock);
            return mx_err_set(err, "more than %d distinct bdr formats in one run", QUANT_FORMAT_MAX_GENERAL);
        }
        snprintf(quant_general_names[n], sizeof quant_general_names[n], "bdr_m%d_k%d_s%d_d%d", m, k1, k2, d2);
        quant_general[n] = (quant_format_info){.name = quant_general_names[n], .is_mx = true, .is_int = true,
                                               .bits = 1 + m, .p = m - 1, .max_norm = (float)((1 << m) - 1) / (float)(1 << (m - 1)),
                                               .summary = "shared microexponents (general form)",
                                               .k1 = k1, .k2 = k2, .d2 = d2};
        __atomic_store_n(&quant_general_count, n + 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&quant_general_lock);
    *out = (quant_format)(QUANT_FORMAT_COUNT + g);
    return 0;
}

/* "bdr_m<M>_k<K1>_s<K2>_d<D2>", written canonically (no signs, no leading zeros). */
static int quant_format_parse_bdr(const char *s, int *out, mx_err *err) {
    if (strncmp(s, "bdr_", 4) != 0) return 1;
    int m, k1, k2, d2, used = 0;
    char canon[64];
    if (sscanf(s, "bdr_m%d_k%d_s%d_d%d%n", &m, &k1, &k2, &d2, &used) != 4 || s[used] ||
        snprintf(canon, sizeof canon, "bdr_m%d_k%d_s%d_d%d", m, k1, k2, d2) <= 0 || strcmp(canon, s) != 0)
        return mx_err_set(err, "malformed format '%s' (want bdr_m<M>_k<K1>_s<K2>_d<D2>, e.g. bdr_m7_k16_s2_d1)", s);
    quant_format f;
    if (quant_format_bdr(m, k1, k2, d2, &f, err)) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        return mx_err_set(err, "format '%s': %s", s, why);
    }
    *out = (int)f;
    return 0;
}

double quant_spec_bits_per_element(const quant_spec *s) {
    const quant_format_info *fi = quant_format_get(s->format);
    if (!fi->is_mx) return fi->bits;
    double bits = fi->bits + 8.0 / ((double)s->block_rows * s->block_cols);
    if (fi->k1) bits += (double)fi->d2 / fi->k2;
    return bits;
}

int quant_format_block(quant_format f) {
    const quant_format_info *fi = quant_format_get(f);
    return fi->k1 ? fi->k1 : 32;
}

void quant_format_tile(quant_format f, int *rows, int *cols) {
    const quant_format_info *fi = quant_format_get(f);
    if (!fi->k1) {
        *rows = *cols = 8;
        return;
    }
    int r = 1;
    for (int d = 2; d * d <= fi->k1; d++)
        if (fi->k1 % d == 0) r = d;
    if (r == 1) r = fi->k1; /* a prime block: a column tile */
    *rows = r;
    *cols = fi->k1 / r;
}

int quant_spec_check(const quant_spec *s, mx_err *err) {
    const quant_format_info *fi = quant_format_get(s->format);
    if (!fi->k1) return 0;
    if (s->scale != QUANT_SCALE_FLOOR)
        return mx_err_set(err, "format %s has no scale mode (its scale is floor(log2 amax)): the scale mode must be floor",
                          fi->name);
    if (s->block_rows * s->block_cols != fi->k1) {
        if (s->block_rows == 1)
            return mx_err_set(err, "format %s takes 1D blocks of %d values (1x%d), not 1x%d", fi->name, fi->k1,
                              fi->k1, s->block_cols);
        int tr, tc;
        quant_format_tile(s->format, &tr, &tc);
        return mx_err_set(err, "format %s takes tiles of %d values (r x c = %d, e.g. %dx%d), not %dx%d", fi->name,
                          fi->k1, fi->k1, tr, tc, s->block_rows, s->block_cols);
    }
    return 0;
}
const char *quant_round_name(quant_round r) { return quant_round_names[r]; }
const char *quant_scale_name(quant_scale s) { return quant_scale_names[s]; }

static const char *quant_format_name_at(int i) { return quant_format_get((quant_format)i)->name; }
static const char *quant_format_alias_at(int i) { return i < QUANT_FORMAT_COUNT ? quant_formats[i].alias : NULL; }
const mx_enum quant_format_enum = {"format", QUANT_FORMAT_COUNT, quant_format_name_at, quant_format_alias_at,
                                   quant_format_parse_bdr, "bdr_m<M>_k<K1>_s<K2>_d<D2>"};
MX_ENUM_OF_NAMES(quant_round_enum, "rounding", quant_round_names);
MX_ENUM_OF_NAMES(quant_scale_enum, "scale mode", quant_scale_names);

int quant_format_parse(const char *name, quant_format *out, mx_err *err) {
    int v;
    if (mx_enum_parse(&quant_format_enum, name, &v, err)) return -1;
    *out = (quant_format)v;
    return 0;
}

int quant_round_parse(const char *name, quant_round *out, mx_err *err) {
    int v;
    if (mx_enum_parse(&quant_round_enum, name, &v, err)) return -1;
    *out = (quant_round)v;
    return 0;
}

int quant_scale_parse(const char *name, quant_scale *out, mx_err *err) {
    int v;
    if (mx_enum_parse(&quant_scale_enum, name, &v, err)) return -1;
    *out = (quant_scale)v;
    return 0;
}

int quant_block_parse(const char *s, int *rows, int *cols, mx_err *err) {
    char *end;
    long r = strtol(s, &end, 10);
    if (end == s || (*end != 'x' && *end != 'X')) goto bad;
    const char *c_str = end + 1;
    long c = strtol(c_str, &end, 10);
    if (end == c_str || *end || r < 1 || c < 1 || r > 4096 || c > 4096) goto bad;
    *rows = (int)r;
    *cols = (int)c;
    return 0;
bad:
    return mx_err_set(err, "malformed block '%s' (want 1xK for 1D blocks or RxC for tiles, e.g. 1x32 or 8x8)", s);
}

quant_spec quant_spec_default(quant_format f) {
    quant_spec s;
    memset(&s, 0, sizeof s);
    s.format = f;
    s.round = QUANT_ROUND_EVEN;
    s.scale = QUANT_SCALE_FLOOR;
    s.block_rows = 1;
    s.block_cols = quant_format_block(f);
    s.axis = -1;
    return s;
}

bool quant_spec_is_2d(const quant_spec *s) { return s->block_rows > 1; }

/* Decode in the scaled domain: a float code with p fraction bits and the
 * given bias/emin; exponent field 0 is subnormal. */
static float quant_decode_float(unsigned mag, int p, int bias, int emin) {
    unsigned exp = mag >> p, man = mag & ((1u << p) - 1);
    if (exp == 0) return (float)man * quant_pow2f(emin - p);
    return (float)((1u << p) | man) * quant_pow2f((int)exp - bias - p);
}

float quant_decode(quant_format f, uint8_t code) {
    const quant_format_info *fi = quant_format_get(f);
    MX_ASSERT(fi->is_mx);
    if (fi->is_int) { /* k / 2^p: two's complement (mxint), sign-magnitude (BDR, microexponent 0) */
        int sh = 32 - fi->bits, k;
        if (fi->k1) { /* sign-magnitude */
            float v = (float)(code & ((1u << (fi->bits - 1)) - 1)) / (float)(1 << fi->p);
            return (code >> (fi->bits - 1)) & 1 ? -v : v; /* -0 too */
        } else {
            k = (int32_t)((uint32_t)code << sh) >> sh;
        }
        return (float)k / (float)(1 << fi->p);
    }
    unsigned sign = (code >> (fi->bits - 1)) & 1;
    unsigned mag = code & ((1u << (fi->bits - 1)) - 1);
    float v;
    if (fi->has_low && (mag >> fi->p) == 0) /* MXSF: exponent bits 00 select E3M2 */
        v = quant_decode_float(mag, fi->low_p, fi->low_bias, fi->low_emin);
    else
        v = quant_decode_float(mag, fi->p, fi->bias, fi->emin);
    /* codes the quantizer never produces: E4M3's S.1111.111 is NaN; E5M2's
     * exponent 31 is Inf (mantissa 0) or NaN */
    if (f == QUANT_FORMAT_MXFP8_E4M3 && mag == 0x7f) v = quant_nanf();
    if (f == QUANT_FORMAT_MXFP8_E5M2 && (mag >> 2) == 31) v = (mag & 3) ? quant_nanf() : quant_from_bits(0x7f800000u);
    return sign ? -v : v;
}

static unsigned quant_encode_float(uint32_t abits, int p, int bias, int emin) {
    if (abits == 0) return 0;
    int e = (int)(abits >> 23) - 127;
    uint32_t sig = (abits & 0x7fffffu) | 0x800000u;
    if (e >= emin) return ((unsigned)(e + bias) << p) | ((sig >> (23 - p)) & ((1u << p) - 1));
    return sig >> (23 - p + (emin - e)); /* subnormal: exponent field 0 */
}

uint8_t quant_encode(quant_format f, float t) {
    const quant_format_info *fi = quant_format_get(f);
    MX_ASSERT(fi->is_mx);
    uint32_t b = quant_bits(t), sign = b >> 31, a = b & 0x7fffffffu;
    if (fi->is_int) {
        int k = (int)(quant_from_bits(a) * (float)(1 << fi->p));
        if (fi->k1) return (uint8_t)((sign << (fi->bits - 1)) | (unsigned)k);
        return (uint8_t)((unsigned)(sign ? -k : k) & ((1u << fi->bits) - 1));
    }
    unsigned mag;
    if (fi->has_low && a < 0x3f800000u) /* |t| < 1 */
        mag = quant_encode_float(a, fi->low_p, fi->low_bias, fi->low_emin);
    else
        mag = quant_encode_float(a, fi->p, fi->bias, fi->emin);
    return (uint8_t)((sign << (fi->bits - 1)) | mag);
}
