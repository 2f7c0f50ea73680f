/* Shared microexponents (spec section 8): microexponent edge cases, packed
 * layout, statistics, Theorem 1 as a property over random and adversarial
 * vectors, the format names and their errors, and the `mxtrain qsnr` study.
 * (Golden cases, fast path vs reference and pack/unpack over every layout:
 * test_quant.) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/mm.h"
#include "core/npy.h"
#include "core/rng.h"
#include "quant/qsnr.h"
#include "quant/quant.h"
#include "test_util.h"

static quant_format fmt(const char *name) {
    quant_format f;
    mx_err err;
    ck_assert_msg(quant_format_parse(name, &f, &err) == 0, "%s: %s", name, err.msg);
    return f;
}

/* The names: presets are BDR points with their parameters, a general name of
 * a preset's parameters is that preset, general points are interned once. */
START_TEST(test_names_and_parameters) {
    ck_assert_int_eq(fmt("bdr_m7_k16_s2_d1"), QUANT_FORMAT_MX9);
    ck_assert_int_eq(fmt("bdr_m4_k16_s2_d1"), QUANT_FORMAT_MX6);
    ck_assert_int_eq(fmt("bdr_m2_k16_s2_d1"), QUANT_FORMAT_MX4);
    quant_format a = fmt("bdr_m5_k8_s2_d2"), b = fmt("bdr_m5_k8_s2_d2");
    ck_assert_int_eq(a, b);
    ck_assert_int_ge(a, QUANT_FORMAT_COUNT);
    ck_assert_str_eq(quant_format_get(a)->name, "bdr_m5_k8_s2_d2");
    const quant_format_info *fi = quant_format_get(QUANT_FORMAT_MX6);
    ck_assert_int_eq(fi->k1, 16);
    ck_assert_int_eq(fi->k2, 2);
    ck_assert_int_eq(fi->d2, 1);
    ck_assert_int_eq(fi->bits, 5);
    /* bits per element: 1 + m + 8/k1 + d2/k2 */
    quant_spec s = quant_spec_default(QUANT_FORMAT_MX9);
    ck_assert_int_eq(s.block_cols, 16);
    ck_assert(fabs(quant_spec_bits_per_element(&s) - 9.0) < 1e-12);
    s = quant_spec_default(QUANT_FORMAT_MX4);
    ck_assert(fabs(quant_spec_bits_per_element(&s) - 4.0) < 1e-12);
    s = quant_spec_default(fmt("bdr_m7_k16_s16_d0"));
    ck_assert(fabs(quant_spec_bits_per_element(&s) - 8.5) < 1e-12);
    int r, c;
    quant_format_tile(QUANT_FORMAT_MX9, &r, &c);
    ck_assert(r == 4 && c == 4);
    quant_format_tile(fmt("bdr_m3_k12_s3_d2"), &r, &c);
    ck_assert(r == 3 && c == 4);
    quant_format_tile(fmt("bdr_m3_k7_s7_d0"), &r, &c);
    ck_assert(r == 7 && c == 1);
    /* errors name what is wrong */
    static const struct {
        const char *name, *needle;
    } bad[] = {
        {"bdr_m0_k16_s2_d1", "out of range (1..7)"}, {"bdr_m7_k1_s1_d1", "out of range (2..64)"},
        {"bdr_m7_k16_s5_d1", "must divide"},         {"bdr_m7_k16_s2_d9", "out of range (0..3)"},
        {"bdr_m7_k16_s2_d1x", "malformed"},          {"bdr_m+7_k16_s2_d1", "malformed"},
        {"bdr_", "malformed"},                       {"mx7", "unknown format"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        quant_format f;
        mx_err err;
        ck_assert_int_lt(quant_format_parse(bad[i].name, &f, &err), 0);
        ck_assert_msg(strstr(err.msg, bad[i].needle), "%s: '%s'", bad[i].name, err.msg);
    }
    /* specs: the block must hold k1 values; no scale mode */
    mx_err err;
    int64_t shape[2] = {8, 32};
    s = quant_spec_default(QUANT_FORMAT_MX9);
    s.block_cols = 32;
    ck_assert_int_lt(quant_num_blocks(&s, 2, shape, &err), 0);
    ck_assert(strstr(err.msg, "1x16"));
    s.block_rows = 2, s.block_cols = 8; /* 16 values: fine */
    ck_assert_int_eq(quant_num_blocks(&s, 2, shape, &err), 4 * 4);
    s.block_rows = s.block_cols = 8;
    ck_assert_int_lt(quant_num_blocks(&s, 2, shape, &err), 0);
    s = quant_spec_default(QUANT_FORMAT_MX6);
    s.scale = QUANT_SCALE_RCEIL;
    ck_assert_int_lt(quant_num_blocks(&s, 2, shape, &err), 0);
    ck_assert(strstr(err.msg, "scale"));
}
END_TEST

/* Section 8's arithmetic on hand-made blocks of mx9 (m 7, k1 16, k2 2, d2 1). */
START_TEST(test_microexponent_edges) {
    float x[16], y[16];
    uint8_t sc, codes[16 + 8];
    int64_t shape[1] = {16};
    quant_spec s = quant_spec_default(QUANT_FORMAT_MX9);
    /* block max 1.5 (se = 0); pair 1 lies one binade below (u = 1); pair 2 is
     * all zero (u = 0); pair 3 has one value in the max's binade (u = 0) */
    for (int i = 0; i < 16; i++) x[i] = 0.0f;
    x[0] = 1.5f;
    x[1] = 0.1f;
    x[2] = 0.75f;  /* [0.5, 1): one binade below */
    x[3] = -0.3f;
    x[6] = 1.0f;
    x[7] = 0.3f;
    x[8] = 0x1p-9f; /* pair 4: far below, u clamps at 1 */
    quant_pack(&s, x, codes, 1, shape, &sc, NULL);
    ck_assert_int_eq(sc, 127);
    const uint8_t *u = codes + 16;
    ck_assert_int_eq(u[0], 0);
    ck_assert_int_eq(u[1], 1);
    ck_assert_int_eq(u[2], 0);
    ck_assert_int_eq(u[3], 0);
    ck_assert_int_eq(u[4], 1);
    quant_fake(&s, x, y, 1, shape, &sc, NULL);
    /* u = 0: grid 2^-6; u = 1: grid 2^-7 */
    ck_assert_float_eq(y[1], roundf(0.1f * 64) / 64);
    ck_assert_float_eq(y[2], 0.75f);
    ck_assert_float_eq(y[3], -roundf(0.3f * 128) / 128);
    ck_assert_float_eq(y[7], roundf(0.3f * 64) / 64);
    ck_assert_float_eq(y[8], 0.0f); /* 2^-9 is below half of 2^-7 */
    ck_assert_int_eq(codes[3], 0x80 | 38); /* sign-magnitude: -38 / 128 */
    /* the largest magnitude: 127 / 64 at u = 0, 127 / 128 at u = 1 (a value just under 1 rounds up to 1 and clamps) */
    for (int i = 0; i < 16; i++) x[i] = 0.0f;
    x[0] = 1.999f;
    x[2] = 0.9999f;
    quant_fake(&s, x, y, 1, shape, &sc, NULL);
    ck_assert_float_eq(y[0], 127.0f / 64);
    ck_assert_float_eq(y[2], 127.0f / 128);
    /* scale clamped at -127: a block of float32 subnormals; runs below it
     * still get their microexponent from the exact exponent */
    for (int i = 0; i < 16; i++) x[i] = 0.0f;
    x[0] = 0x1p-130f;   /* floor(log2) = -130 < -127: se clamps to -127; its pair: u = min(-127 + 130, 1) = 1 */
    x[2] = 0x1.8p-129f; /* next pair: -129 -> u = min(2, 1) = 1 */
    x[4] = 0x1p-127f;   /* next pair: in se's binade, u = 0 */
    quant_pack(&s, x, codes, 1, shape, &sc, NULL);
    ck_assert_int_eq(sc, 0);
    ck_assert_int_eq(codes[16], 1);
    ck_assert_int_eq(codes[17], 1);
    ck_assert_int_eq(codes[18], 0);
    quant_fake(&s, x, y, 1, shape, &sc, NULL);
    ck_assert_float_eq(y[0], 0x1p-130f);   /* on the grid 2^(-127-1-6) */
    ck_assert_float_eq(y[2], 0x1.8p-129f);
    ck_assert_float_eq(y[4], 0x1p-127f);
    /* an all-zero block: zeros, scale code 0, microexponents 0; a NaN block: NaN, code 255 */
    memset(x, 0, sizeof x);
    quant_pack(&s, x, codes, 1, shape, &sc, NULL);
    ck_assert_int_eq(sc, 0);
    for (int i = 0; i < 24; i++) ck_assert_int_eq(codes[i], 0);
    x[5] = NAN;
    quant_fake(&s, x, y, 1, shape, &sc, NULL);
    ck_assert_int_eq(sc, 255);
    for (int i = 0; i < 16; i++) ck_assert(isnan(y[i]));
    /* d2 = 2 with runs of 4: u up to 3 */
    quant_spec s2 = quant_spec_default(fmt("bdr_m3_k8_s4_d2"));
    float z[8] = {1.0f, 0, 0, 0, 0.2f, 0.1f, 0, 0}, w[8];
    uint8_t c2[8 + 2], sc2;
    int64_t sh8[1] = {8};
    quant_pack_fake(&s2, z, c2, w, 1, sh8, &sc2, NULL);
    ck_assert_int_eq(c2[8], 0);
    ck_assert_int_eq(c2[9], 3); /* 0.2 = 1.6 * 2^-3: gap 3 */
    ck_assert_float_eq(w[4], roundf(0.2f * 32) / 32); /* grid 2^-(m - 1 + u) = 2^-5 */
}
END_TEST

/* In-pass statistics of BDR formats equal direct counts (saturation on the
 * run's grid: |x| / 2^(se - u) above max_norm). */
START_TEST(test_bdr_stats) {
    enum { R = 24, C = 48 };
    float *x = malloc(sizeof(float) * R * C), *y = malloc(sizeof(float) * R * C);
    rng r;
    rng_init(&r, 3, 0);
    for (int i = 0; i < R * C; i++) x[i] = i % 9 == 0 ? 0.0f : rng_normal(&r) * ldexpf(1.0f, (int)(rng_below(&r, 12)) - 6);
    static const char *const names[] = {"mx9", "mx6", "mx4", "bdr_m3_k12_s3_d2", "bdr_m5_k8_s8_d0"};
    for (int n = 0; n < 5; n++) {
        quant_format f = fmt(names[n]);
        const quant_format_info *fi = quant_format_get(f);
        quant_spec s = quant_spec_default(f);
        int64_t shape[2] = {R, C};
        uint8_t sc[R * C];
        uint8_t *codes = malloc((size_t)quant_codes_bytes(&s, 2, shape));
        quant_stats st;
        quant_pack_fake(&s, x, codes, y, 2, shape, sc, &st);
        int64_t nz = 0, uf = 0, sat = 0, nb = C / fi->k1;
        for (int i = 0; i < R * C; i++) {
            nz += x[i] != 0;
            uf += x[i] != 0 && y[i] == 0;
            int blk = i / fi->k1, run = i / fi->k2;
            int se = sc[blk] - 127, u = codes[R * C + run];
            sat += fabs(ldexp(x[i], -(se - u))) > fi->max_norm;
        }
        ck_assert_int_eq(nb * R, quant_num_blocks(&s, 2, shape, NULL));
        ck_assert_int_eq(st.elements, R * C);
        ck_assert_int_eq(st.nonzero, nz);
        ck_assert_int_eq(st.underflow, uf);
        ck_assert_msg(st.saturated == sat, "%s: saturated %lld, direct %lld", names[n], (long long)st.saturated,
                      (long long)sat);
        free(codes);
    }
    free(x);
    free(y);
}
END_TEST

/* The SIMD paths (which take blocks with se >= umax - 127 and read a
 * subnormal run maximum as 2^-127) against the reference on data near the
 * bottom of the float32 range, where runs' maxima are subnormal. */
START_TEST(test_tiny_blocks_fast_equals_reference) {
    enum { R = 32, C = 64 };
    float *x = malloc(sizeof(float) * R * C), *a = malloc(sizeof(float) * R * C), *b = malloc(sizeof(float) * R * C);
    rng r;
    rng_init(&r, 8, 0);
    for (int i = 0; i < R * C; i++) /* per 4 values a magnitude from 2^-149 to 2^-100 */
        x[i] = ldexpf(rng_normal(&r), -100 - (int)((i / 4 * 2654435761u) % 50));
    static const char *const names[] = {"mx9", "mx6", "mx4", "bdr_m3_k8_s2_d2", "bdr_m5_k16_s4_d3", "bdr_m7_k32_s8_d3",
                                        "bdr_m4_k16_s16_d0"};
    int64_t shape[2] = {R, C};
    for (size_t n = 0; n < sizeof names / sizeof names[0]; n++)
        for (int layout = 0; layout < 3; layout++) {
            quant_format f = fmt(names[n]);
            quant_spec s = quant_spec_default(f);
            if (layout == 1) quant_format_tile(f, &s.block_rows, &s.block_cols);
            if (layout == 2) s.axis = 0;
            quant_fake(&s, x, a, 2, shape, NULL, NULL);
            quant_fake_reference(&s, x, b, 2, shape, NULL);
            for (int i = 0; i < R * C; i++)
                ck_assert_msg(a[i] == b[i] || (isnan(a[i]) && isnan(b[i])), "%s layout %d [%d]: %a vs %a (x %a)",
                              names[n], layout, i, (double)a[i], (double)b[i], (double)x[i]);
        }
    free(x);
    free(a);
    free(b);
}
END_TEST

/* Per-vector QSNR of vector x under spec s. */
static double vec_qsnr(const quant_spec *s, const float *x, float *y, int64_t n) {
    int64_t shape[1] = {n};
    quant_fake(s, x, y, 1, shape, NULL, NULL);
    double x2 = 0, e2 = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = (double)x[i] - y[i];
        x2 += (double)x[i] * x[i];
        e2 += e * e;
    }
    return e2 == 0 ? INFINITY : 10 * log10(x2 / e2);
}

/* Theorem 1: QSNR >= the bound for every vector, random or built to be
 * hard: one value dominating its block, maxima just under a power of two
 * (they round up and saturate), ties, runs sitting exactly at binade edges,
 * single nonzeros, vectors shorter than a block. */
START_TEST(test_theorem1_holds) {
    static const char *const names[] = {"mx9", "mx6", "mx4", "mxint8", "mxint4", "bdr_m7_k16_s16_d0",
                                        "bdr_m1_k2_s1_d0", "bdr_m3_k8_s2_d2", "bdr_m5_k32_s4_d3", "bdr_m2_k64_s8_d1",
                                        "bdr_m6_k12_s3_d1"};
    enum { NMAX = 256 };
    float x[NMAX], y[NMAX];
    rng r;
    rng_init(&r, 17, 0);
    int checked = 0;
    double tightest = INFINITY;
    for (size_t fi = 0; fi < sizeof names / sizeof names[0]; fi++)
        for (int rm = 0; rm < 2; rm++) {
            quant_spec s = quant_spec_default(fmt(names[fi]));
            s.round = rm ? QUANT_ROUND_AWAY : QUANT_ROUND_EVEN;
            for (int trial = 0; trial < 400; trial++) {
                int64_t n = trial % 5 == 0 ? 1 + (int64_t)rng_below(&r, 20) : 16 + (int64_t)rng_below(&r, NMAX - 16);
                int kind = trial % 8;
                for (int64_t i = 0; i < n; i++) {
                    float g = rng_normal(&r);
                    switch (kind) {
                    case 0: x[i] = g; break;
                    case 1: x[i] = i % 16 == 0 ? 1000.0f * g : g * 1e-3f; break;        /* one dominates */
                    case 2: x[i] = (i % 7 == 0 ? 0x1.fffffep0f : 0x1.fep0f) * (g < 0 ? -1 : 1) *
                                   ldexpf(1.0f, (int)rng_below(&r, 4)); break;           /* just under 2^k */
                    case 3: x[i] = (float)((int)rng_below(&r, 64) * 2 + 1) / 256.0f; break; /* ties */
                    case 4: x[i] = ldexpf(1.0f, -(int)rng_below(&r, 5)) * (1.0f + 0.01f * g); break; /* binade edges */
                    case 5: x[i] = i == n / 2 ? g : 0.0f; break;                            /* one nonzero */
                    case 6: x[i] = g * ldexpf(1.0f, (int)rng_below(&r, 30) - 15); break;    /* wide spread */
                    default: x[i] = g / sqrtf(fabsf(rng_normal(&r)) + 1e-3f); break;        /* heavy tails */
                    }
                }
                double q = vec_qsnr(&s, x, y, n), b = qsnr_theorem1_db(&s, n);
                ck_assert(isfinite(b));
                ck_assert_msg(q >= b - 1e-9, "%s %s n=%lld kind %d: QSNR %.3f below the bound %.3f", names[fi],
                              quant_round_name(s.round), (long long)n, kind, q, b);
                tightest = fmin(tightest, q - b);
                checked++;
            }
        }
    fprintf(stderr, "Theorem 1: %d vectors, smallest margin %.2f dB\n", checked, tightest);
    /* where it does not apply */
    quant_spec e4 = quant_spec_default(QUANT_FORMAT_MXFP8_E4M3), fl = quant_spec_default(QUANT_FORMAT_MX9);
    fl.round = QUANT_ROUND_FLOOR;
    ck_assert(isnan(qsnr_theorem1_db(&e4, 64)));
    ck_assert(isnan(qsnr_theorem1_db(&fl, 64)));
}
END_TEST

/* The paper's study: numbers where the spec's measurement puts them. */
START_TEST(test_qsnr_study_matches_spec) {
    enum { COUNT = 3000, LEN = 1024 };
    float *x = malloc(sizeof(float) * COUNT * LEN), *y = malloc(sizeof(float) * COUNT * LEN);
    qsnr_draw(QSNR_DIST_PAPER, 0, COUNT, LEN, x);
    static const struct {
        const char *name;
        double want;
    } want[] = {{"mx9", 46.6}, {"mx6", 28.4}, {"mx4", 15.8}, {"mxfp8_e4m3", 30.5}, {"mxfp8_e5m2", 25.4},
                {"bdr_m7_k16_s16_d0", 43.0}};
    double got[6];
    for (int i = 0; i < 6; i++) {
        quant_spec s = quant_spec_default(fmt(want[i].name));
        qsnr_result r;
        qsnr_measure(&s, x, COUNT, LEN, y, &r);
        got[i] = r.mean_db;
        ck_assert_msg(fabs(r.mean_db - want[i].want) < 0.3, "%s: %.2f dB, spec %.1f", want[i].name, r.mean_db,
                      want[i].want);
        ck_assert_int_eq(r.vectors, COUNT);
        if (quant_format_is_bdr(s.format)) ck_assert(r.min_db >= r.bound_db);
    }
    ck_assert(got[0] - got[3] > 15.5 && got[0] - got[3] < 16.7); /* MX9 ~16 dB above E4M3 */
    ck_assert(got[0] - got[5] > 3.2 && got[0] - got[5] < 4.0);   /* and ~3.6 dB above plain BFP */
    ck_assert(got[1] < got[3] && got[1] > got[4]);               /* MX6 between E4M3 and E5M2 */
    /* the draws do not depend on the thread count */
    float *x1 = malloc(sizeof(float) * 64 * 256);
    qsnr_draw(QSNR_DIST_STUDENT_T3, 5, 64, 256, x1);
    for (int i = 0; i < 64 * 256; i++) ck_assert(isfinite(x1[i]));
    free(x1);
    free(x);
    free(y);
}
END_TEST

/* ---- the CLI ---- */


static char *read_text(const char *path) {
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "%s missing", path);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

START_TEST(test_qsnr_cli) {
    static char out[1 << 16];
    char args[2048];
    /* a brace sweep over all distributions */
    snprintf(args, sizeof args, "qsnr --formats 'bdr_m{6..7}_k16_s{2,8}_d1,mxfp8_e4m3' --dist all --count 200 --out %s",
             test_path("q"));
    ck_assert_msg(test_run_mxtrain(args, out, sizeof out) == 0, "%s", out);
    ck_assert(strstr(out, "### paper") && strstr(out, "### student_t3") && strstr(out, "| mx9 | 1x16 | 9 |"));
    ck_assert(strstr(out, "| bdr_m6_k16_s8_d1 |") && strstr(out, "Theorem 1"));
    const char *csv = read_text(test_path("q.csv"));
    int rows = 0;
    for (const char *p = csv; *p; p++) rows += *p == '\n';
    ck_assert_int_eq(rows, 1 + 4 * 5); /* header + 4 sets x 5 formats */
    ck_assert(strstr(csv, "laplace,mx9,1x16,9,"));
    const char *svg = read_text(test_path("q.svg"));
    ck_assert(strstr(svg, "<svg") && strstr(svg, "mx9") && strstr(svg, "</svg>"));
    /* the rows of an .npy */
    float v[4 * 64];
    for (int i = 0; i < 4 * 64; i++) v[i] = sinf((float)i * 0.37f) * (float)(1 + i % 5);
    int64_t shape[2] = {4, 64};
    npy_array a = npy_wrap(NPY_DTYPE_F32, 2, shape, v);
    mx_err err;
    ck_assert_int_eq(npy_write(test_path("w.npy"), &a, &err), 0);
    snprintf(args, sizeof args, "qsnr --npy %s --formats mx6,mxint8 --out %s", test_path("w.npy"), test_path("w"));
    ck_assert_msg(test_run_mxtrain(args, out, sizeof out) == 0, "%s", out);
    ck_assert(strstr(out, "QSNR of 4 vectors of 64 values") && strstr(out, "| mx6 | 1x16 | 6 |"));
    /* errors: one line, exit 2 */
    static const struct {
        const char *args, *needle;
    } bad[] = {
        {"qsnr --formats bdr_m7_k16_s3_d1", "must divide"},
        {"qsnr --formats 'bdr_m{1..7_k16_s2_d1'", "without"},
        {"qsnr --dist cauchy", "unknown distribution"},
        {"qsnr --length 0", "malformed --length"},
        {"qsnr --count 100000 --length 100000", "more than 2^28"},
        {"qsnr --bogus", "unexpected argument"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = test_run_mxtrain(bad[i].args, out, sizeof out);
        ck_assert_msg(rc == 2, "'%s' exited %d: %s", bad[i].args, rc, out);
        ck_assert_msg(strstr(out, bad[i].needle), "'%s': '%s' lacks '%s'", bad[i].args, out, bad[i].needle);
        ck_assert_msg(strchr(out, '\n') == out + strlen(out) - 1, "'%s': not one line: %s", bad[i].args, out);
    }
    snprintf(args, sizeof args, "qsnr --npy %s/none.npy", test_tmpdir());
    ck_assert_int_eq(test_run_mxtrain(args, out, sizeof out), 1);
    ck_assert(strstr(out, "none.npy"));
}
END_TEST

/* The product path checks a policy's block, tile and scale against every
 * BDR format it uses, and gives each format its own block by default. */
START_TEST(test_policy_checks_bdr_layouts) {
    mm_policy p;
    mx_err err;
    mm_policy_init(&p, QUANT_FORMAT_MX9);
    ck_assert_int_eq(mm_policy_check(&p, &err), 0);
    quant_spec s = quant_spec_default(QUANT_FORMAT_MX9);
    mm_policy_layout(&p, QUANT_FORMAT_MX9, &s);
    ck_assert(s.block_rows == 1 && s.block_cols == 16);
    mm_policy_layout(&p, QUANT_FORMAT_MXFP8_E4M3, &s);
    ck_assert(s.block_rows == 1 && s.block_cols == 32);
    p.tiling = MM_TILING_2D;
    mm_policy_layout(&p, QUANT_FORMAT_MX6, &s);
    ck_assert(s.block_rows == 4 && s.block_cols == 4);
    mm_policy_layout(&p, QUANT_FORMAT_MXSF, &s);
    ck_assert(s.block_rows == 8 && s.block_cols == 8);
    p.tile_rows = p.tile_cols = 8; /* an explicit 8x8 cannot hold mx6's 16 values */
    ck_assert_int_lt(mm_policy_check(&p, &err), 0);
    ck_assert_msg(strstr(err.msg, "quant.tile"), "%s", err.msg);
    p.tile_rows = 2, p.tile_cols = 8;
    ck_assert_int_eq(mm_policy_check(&p, &err), 0);
    mm_policy_init(&p, QUANT_FORMAT_MXFP8_E4M3);
    p.block = 32;
    ck_assert_int_eq(mm_policy_check(&p, &err), 0);
    ck_assert_int_eq(mm_policy_add_keep(&p, "fc", QUANT_FORMAT_MX4, &err), 0); /* a keep rule counts too */
    ck_assert_int_lt(mm_policy_check(&p, &err), 0);
    ck_assert_msg(strstr(err.msg, "mx4") && strstr(err.msg, "quant.block"), "%s", err.msg);
    mm_policy_init(&p, QUANT_FORMAT_MX9);
    p.scale = QUANT_SCALE_RCEIL;
    ck_assert_int_lt(mm_policy_check(&p, &err), 0);
}
END_TEST

/* A config whose block, tile or scale a BDR format in use cannot take fails
 * before anything is written, in train and in compare (each variant). */
START_TEST(test_config_refused_up_front) {
    static char out[1 << 14];
    char args[2048];
    const char *src = getenv("MX_SOURCE_DIR") ? getenv("MX_SOURCE_DIR") : "../..";
    static const struct {
        const char *cmd, *sets, *needle;
    } bad[] = {
        {"train", "--set quant.format=mx9 --set quant.tile=8x8", "quant.tile: format mx9 takes tiles of 16 values"},
        {"train", "--set quant.format=mx6 --set quant.tiling=1d --set quant.block=32", "quant.block: format mx6"},
        {"train", "--set quant.format=mx4 --set quant.scale=rceil", "quant.scale: format mx4 has no scale mode"},
        {"train", "--set quant.keep=fc:bdr_m3_k8_s2_d1 --set quant.tile=4x4", "bdr_m3_k8_s2_d1 takes tiles of 8"},
        {"compare", "--formats mxsf,mx6 --set quant.tile=8x8", "mx6 2d: quant.tile"},
        {"train", "--set quant.format=bdr_m3_k8_s3_d1", "must divide"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *dir = test_path("run_refused");
        snprintf(args, sizeof args, "%s %s/configs/quickstart.ini %s --set log.dir=%s%s%s", bad[i].cmd, src, bad[i].sets,
                 dir, strcmp(bad[i].cmd, "compare") ? "" : " --out ", strcmp(bad[i].cmd, "compare") ? "" : dir);
        int rc = test_run_mxtrain(args, out, sizeof out);
        ck_assert_msg(rc == 1, "'%s' exited %d: %s", args, rc, out);
        ck_assert_msg(strstr(out, bad[i].needle), "'%s': '%s' lacks '%s'", args, out, bad[i].needle);
        FILE *f = fopen(dir, "r");
        ck_assert_msg(!f, "'%s' created %s", args, dir);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("bdr");
    TCase *tc = tcase_create("bdr");
    tcase_add_test(tc, test_names_and_parameters);
    tcase_add_test(tc, test_microexponent_edges);
    tcase_add_test(tc, test_bdr_stats);
    tcase_add_test(tc, test_tiny_blocks_fast_equals_reference);
    tcase_add_test(tc, test_theorem1_holds);
    tcase_add_test(tc, test_qsnr_study_matches_spec);
    tcase_add_test(tc, test_qsnr_cli);
    tcase_add_test(tc, test_policy_checks_bdr_layouts);
    tcase_add_test(tc, test_config_refused_up_front);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
