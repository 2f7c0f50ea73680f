/* The formats table, names, and single-code encode/decode. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/keys.h"
#include "quant/quant_internal.h"

/* name alias mx int bits ebits p emax emin bias max_norm low(p emin bias) */
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
};
_Static_assert(sizeof quant_formats / sizeof quant_formats[0] == QUANT_FORMAT_COUNT, "formats table size");

static const char *const quant_round_names[] = {"even", "away", "floor", "stochastic"};
_Static_assert(sizeof quant_round_names / sizeof quant_round_names[0] == QUANT_ROUND_COUNT, "round names");
static const char *const quant_scale_names[] = {"floor", "rceil"};
_Static_assert(sizeof quant_scale_names / sizeof quant_scale_names[0] == QUANT_SCALE_COUNT, "scale names");

const quant_format_info *quant_format_get(quant_format f) {
    MX_ASSERT((unsigned)f < QUANT_FORMAT_COUNT);
    return &quant_formats[f];
}
const char *quant_round_name(quant_round r) { return quant_round_names[r]; }
const char *quant_scale_name(quant_scale s) { return quant_scale_names[s]; }

static const char *quant_format_name_at(int i) { return quant_formats[i].name; }
static const char *quant_format_alias_at(int i) { return quant_formats[i].alias; }
const mx_enum quant_format_enum = {"format", QUANT_FORMAT_COUNT, quant_format_name_at, quant_format_alias_at};
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
    s.block_cols = 32;
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
    if (fi->is_int) return (float)(int8_t)code / 64.0f;
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
        int k = (int)(quant_from_bits(a) * 64.0f);
        return (uint8_t)(int8_t)(sign ? -k : k);
    }
    unsigned mag;
    if (fi->has_low && a < 0x3f800000u) /* |t| < 1 */
        mag = quant_encode_float(a, fi->low_p, fi->low_bias, fi->low_emin);
    else
        mag = quant_encode_float(a, fi->p, fi->bias, fi->emin);
    return (uint8_t)((sign << (fi->bits - 1)) | mag);
}
