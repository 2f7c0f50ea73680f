/* quant/: golden cases bit for bit, code tables, rounding, statistics, packing,
 * edge cases of the spec, and the `mxtrain quantize` CLI contract. */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/npy.h"
#include "core/rng.h"
#include "quant/quant.h"
#include "test_util.h"

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Bitwise equality, except NaN matches NaN and zeros compare with ==. */
static int same_value(float a, float b) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    if (a == 0.0f && b == 0.0f) return 1;
    return bits_of(a) == bits_of(b);
}

static const char *shared_dir(void) {
    const char *d = getenv("MX_SHARED_DIR");
    return d ? d : "../../shared";
}

static int golden_available(const char *set) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s/cases.tsv", shared_dir(), set);
    FILE *f = fopen(p, "r");
    if (!f) return 0;
    fclose(f);
    return 1;
}

typedef struct golden_case {
    char name[128], input[128], format[32], round[16], scale[16], block[16], expected[160], scales[160];
    int axis;
} golden_case;

static int golden_load(const char *set, golden_case *cases, int max) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s/cases.tsv", shared_dir(), set);
    FILE *f = fopen(p, "r");
    ck_assert_ptr_nonnull(f);
    char line[2048];
    int n = 0;
    ck_assert_ptr_nonnull(fgets(line, sizeof line, f)); /* header */
    while (fgets(line, sizeof line, f) && n < max) {
        golden_case *c = &cases[n];
        char axis[16];
        int got = sscanf(line, "%127s %127s %31s %15s %15s %15s %15s %159s %159s", c->name, c->input, c->format,
                         c->round, c->scale, c->block, axis, c->expected, c->scales);
        ck_assert_int_eq(got, 9);
        c->axis = strcmp(axis, "-") ? atoi(axis) : -1;
        n++;
    }
    fclose(f);
    return n;
}

static void golden_path(char *out, const char *set, const char *file) {
    snprintf(out, 1024, "%s/%s/%s", shared_dir(), set, file);
}

static quant_spec golden_spec(const golden_case *c) {
    mx_err err;
    quant_format f;
    ck_assert_msg(quant_format_parse(c->format, &f, &err) == 0, "%s", err.msg);
    quant_spec s = quant_spec_default(f);
    ck_assert_int_eq(quant_round_parse(c->round, &s.round, &err), 0);
    if (strcmp(c->scale, "-")) ck_assert_int_eq(quant_scale_parse(c->scale, &s.scale, &err), 0);
    if (strcmp(c->block, "-")) ck_assert_int_eq(quant_block_parse(c->block, &s.block_rows, &s.block_cols, &err), 0);
    s.axis = c->axis;
    return s;
}

/* Checks fast path, reference path and pack/unpack of every case of a golden set. */
static void golden_check_set(const char *set, int min_cases) {
    if (!golden_available(set)) {
        fprintf(stderr, "SKIP golden cases: %s/%s not found\n", shared_dir(), set);
        return;
    }
    golden_case cases[128];
    int n = golden_load(set, cases, 128);
    ck_assert_int_ge(n, min_cases);
    for (int ci = 0; ci < n; ci++) {
        golden_case *c = &cases[ci];
        quant_spec s = golden_spec(c);
        char p[1024];
        npy_array in, want, want_sc;
        mx_err err;
        golden_path(p, set, c->input);
        ck_assert_msg(npy_read_f32(p, &in, &err) == 0, "%s", err.msg);
        golden_path(p, set, c->expected);
        ck_assert_msg(npy_read(p, &want, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(want.dtype, NPY_DTYPE_F32);
        ck_assert_int_eq(want.numel, in.numel);
        bool mx = quant_format_get(s.format)->is_mx;
        int64_t nb = quant_num_blocks(&s, in.ndim, in.shape, &err);
        ck_assert_int_ge(nb, 0);
        float *y = malloc(sizeof(float) * (size_t)in.numel), *yr = malloc(sizeof(float) * (size_t)in.numel);
        uint8_t *sc = malloc((size_t)nb + 1), *scr = malloc((size_t)nb + 1);
        quant_fake(&s, in.data, y, in.ndim, in.shape, mx ? sc : NULL, NULL);
        quant_fake_reference(&s, in.data, yr, in.ndim, in.shape, mx ? scr : NULL);
        const float *w = want.data;
        int bad = 0, bad_ref = 0;
        int64_t first = -1;
        for (int64_t i = 0; i < in.numel; i++) {
            if (!same_value(y[i], w[i])) {
                if (first < 0) first = i;
                bad++;
            }
            bad_ref += !same_value(yr[i], w[i]);
        }
        ck_assert_msg(bad == 0, "%s: %d of %lld elements differ; first at %lld: x=%a got %a want %a", c->name, bad,
                      (long long)in.numel, (long long)first, (double)((float *)in.data)[first], (double)y[first],
                      (double)w[first]);
        ck_assert_msg(bad_ref == 0, "%s: reference path: %d elements differ", c->name, bad_ref);
        if (mx) {
            golden_path(p, set, c->scales);
            ck_assert_msg(npy_read(p, &want_sc, &err) == 0, "%s", err.msg);
            ck_assert_int_eq(want_sc.dtype, NPY_DTYPE_U8);
            ck_assert_int_eq(want_sc.numel, nb);
            int64_t sshape[NPY_MAX_DIMS];
            int sdim = quant_scales_shape(&s, in.ndim, in.shape, sshape);
            ck_assert_int_eq(sdim, want_sc.ndim);
            for (int d = 0; d < sdim; d++) ck_assert_int_eq(sshape[d], want_sc.shape[d]);
            ck_assert_msg(memcmp(sc, want_sc.data, (size_t)nb) == 0, "%s: scale codes differ", c->name);
            ck_assert_msg(memcmp(scr, want_sc.data, (size_t)nb) == 0, "%s: reference scale codes differ", c->name);
            /* packed storage decodes to the fake-quant output, bit for bit */
            int64_t ncodes = quant_codes_bytes(&s, in.ndim, in.shape);
            uint8_t *codes = malloc((size_t)ncodes), *codes2 = malloc((size_t)ncodes), *sc2 = malloc((size_t)nb + 1);
            float *yu = malloc(sizeof(float) * (size_t)in.numel), *yf = malloc(sizeof(float) * (size_t)in.numel);
            quant_pack(&s, in.data, codes, in.ndim, in.shape, sc2, NULL);
            ck_assert_int_eq(memcmp(sc2, sc, (size_t)nb), 0);
            quant_unpack(&s, codes, sc2, yu, in.ndim, in.shape);
            for (int64_t i = 0; i < in.numel; i++)
                ck_assert_msg(same_value(yu[i], y[i]),
                              "%s: unpack(pack) differs at %lld: %a vs %a", c->name, (long long)i, (double)yu[i],
                              (double)y[i]);
            /* pack and fake in one pass: the same codes (microexponents too) and values */
            quant_pack_fake(&s, in.data, codes2, yf, in.ndim, in.shape, sc2, NULL);
            ck_assert_msg(memcmp(codes, codes2, (size_t)ncodes) == 0, "%s: pack_fake codes differ", c->name);
            for (int64_t i = 0; i < in.numel; i++) ck_assert(same_value(yf[i], y[i]));
            free(codes2);
            free(yf);
            free(codes);
            free(sc2);
            free(yu);
            npy_free(&want_sc);
        }
        /* in place gives the same result */
        quant_fake(&s, in.data, in.data, in.ndim, in.shape, NULL, NULL);
        for (int64_t i = 0; i < in.numel; i++) ck_assert(same_value(((float *)in.data)[i], y[i]));
        free(y);
        free(yr);
        free(sc);
        free(scr);
        npy_free(&in);
        npy_free(&want);
    }
}

START_TEST(test_golden_cases) { golden_check_set("golden", 40); }
END_TEST

/* ../shared/golden-bdr: mxint4, mx9, mx6, mx4 and general bdr_... formats. */
START_TEST(test_golden_bdr_cases) { golden_check_set("golden-bdr", 20); }
END_TEST


/* Every code decodes, encodes back to itself, and positive codes order
 * monotonically (strictly increasing values). */
START_TEST(test_codes_roundtrip_and_monotonic) {
    for (int f = 0; f < QUANT_FORMAT_COUNT; f++) {
        const quant_format_info *fi = quant_format_get((quant_format)f);
        if (!fi->is_mx) continue;
        int ncodes = 1 << fi->bits, half = ncodes / 2;
        float prev = -1.0f;
        for (int c = 0; c < ncodes; c++) {
            if (fi->is_int && !fi->k1 && c == half) continue; /* -2^(bits-1): never produced */
            if (f == QUANT_FORMAT_MXFP8_E4M3 && (c & 0x7f) == 0x7f) {
                ck_assert(isnan(quant_decode((quant_format)f, (uint8_t)c)));
                continue; /* NaN code: never produced */
            }
            if (f == QUANT_FORMAT_MXFP8_E5M2 && (c & 0x7c) == 0x7c) {
                ck_assert(!isfinite(quant_decode((quant_format)f, (uint8_t)c)));
                continue; /* Inf/NaN codes: never produced */
            }
            float v = quant_decode((quant_format)f, (uint8_t)c);
            ck_assert_msg(!isnan(v) && fabsf(v) <= fi->max_norm, "%s code %d -> %g", fi->name, c, (double)v);
            uint8_t back = quant_encode((quant_format)f, v);
            ck_assert_msg(back == c, "%s: code 0x%02x -> %a -> 0x%02x", fi->name, c, (double)v, back);
            int positive = c < half;
            if (positive) {
                ck_assert_msg(v > prev || (c == 0 && v == 0.0f), "%s not monotonic at code %d", fi->name, c);
                prev = v;
            }
        }
        /* the largest positive code is max_norm */
        ck_assert_float_eq(prev, fi->max_norm);
    }
}
END_TEST

/* MXSF: E3M2 below 1 and E2M5 from 1 join without gap or overlap, and values
 * just under 1 that round up land on E2M5's smallest normal. */
START_TEST(test_mxsf_ranges_join) {
    float top_low = quant_decode(QUANT_FORMAT_MXSF, 0x1f), bottom_high = quant_decode(QUANT_FORMAT_MXSF, 0x20);
    ck_assert_float_eq(top_low, 0.875f);
    ck_assert_float_eq(bottom_high, 1.0f);
    /* E3M2 grid just below 1 is 1/8 apart: 0.875 + 1/8 = 1 exactly: no gap */
    ck_assert_float_eq(top_low + 0.125f, bottom_high);
    /* no code decodes into (0.875, 1) and none twice */
    for (int c = 0; c < 128; c++) {
        float v = quant_decode(QUANT_FORMAT_MXSF, (uint8_t)c);
        ck_assert(!(v > 0.875f && v < 1.0f));
        for (int d = 0; d < c; d++) ck_assert(quant_decode(QUANT_FORMAT_MXSF, (uint8_t)d) != v);
    }
    /* quantize a block whose max is 4 (scale 2^0): 0.99 -> 1.0, 0.93 -> 0.875, 0.9375 (tie) -> 1.0 (even) */
    float x[32] = {4.0f, 0.99f, 0.93f, 0.9375f, 0.005f, 1.0f / 512, 1.0f / 1024, 0.0f}, y[32];
    int64_t shape[1] = {32};
    quant_spec s = quant_spec_default(QUANT_FORMAT_MXSF);
    uint8_t sc;
    quant_fake(&s, x, y, 1, shape, &sc, NULL);
    ck_assert_int_eq(sc, 127);
    ck_assert_float_eq(y[1], 1.0f);
    ck_assert_float_eq(y[2], 0.875f);
    ck_assert_float_eq(y[3], 1.0f);
    ck_assert_float_eq(y[4], 0.005859375f);   /* 0.005 is below E3M2's emin 2^-7: grid 2^-9, 2.56 -> 3 */
    ck_assert_float_eq(y[5], 1.0f / 512);     /* 2^-9 = smallest subnormal 2^-7 * 1/4 */
    ck_assert_float_eq(y[6], 0.0f);           /* 2^-10: half of the smallest: ties to even (0) */
}
END_TEST

/* Every preset format and some general BDR points (blocks not a multiple of
 * 8, runs of 1, 3, 8, 16 and the whole block, d2 0..3). */
static int all_formats(quant_format *out) {
    int n = 0;
    for (int f = 0; f < QUANT_FORMAT_COUNT; f++) out[n++] = (quant_format)f;
    static const char *const general[] = {"bdr_m5_k8_s2_d2", "bdr_m3_k12_s3_d2", "bdr_m7_k32_s8_d3",
                                          "bdr_m6_k64_s16_d1", "bdr_m1_k2_s1_d0",  "bdr_m4_k16_s16_d0",
                                          "bdr_m2_k24_s4_d3"};
    for (size_t i = 0; i < sizeof general / sizeof general[0]; i++) {
        mx_err err;
        ck_assert_msg(quant_format_parse(general[i], &out[n++], &err) == 0, "%s", err.msg);
    }
    return n;
}

/* A spec of format f in layout 0 (1D blocks along the last axis), 1 (2D
 * tiles: 8x8, or the BDR format's own tile) or 2 (1D blocks down axis 0). */
static quant_spec layout_spec(quant_format f, int layout) {
    quant_spec s = quant_spec_default(f);
    if (layout == 1) {
        if (quant_format_is_bdr(f)) quant_format_tile(f, &s.block_rows, &s.block_cols);
        else s.block_rows = s.block_cols = 8;
    }
    if (layout == 2) s.axis = 0;
    return s;
}

static float *random_data(int64_t n, uint64_t seed, float spread) {
    float *x = malloc(sizeof(float) * (size_t)n);
    rng r;
    rng_init(&r, seed, 0);
    for (int64_t i = 0; i < n; i++) x[i] = rng_normal(&r) * powf(2.0f, spread * (rng_uniform(&r) - 0.5f));
    return x;
}

/* The FPU fast path equals the integer reference for every format. */
START_TEST(test_fast_path_matches_reference) {
    int64_t shape[2] = {64, 96};
    float *x = random_data(64 * 96, 5, 40.0f);
    float *a = malloc(sizeof(float) * 64 * 96), *b = malloc(sizeof(float) * 64 * 96);
    quant_format fmts[QUANT_FORMAT_COUNT + 16];
    int nf = all_formats(fmts);
    for (int fi = 0; fi < nf; fi++)
        for (int sm = 0; sm < QUANT_SCALE_COUNT; sm++)
            for (int tile = 0; tile < 3; tile++) { /* blocks along rows, tiles, blocks down columns */
                quant_format f = fmts[fi];
                if (quant_format_is_bdr(f) && sm != QUANT_SCALE_FLOOR) continue;
                quant_spec s = layout_spec(f, tile);
                s.scale = (quant_scale)sm;
                quant_fake(&s, x, a, 2, shape, NULL, NULL);
                quant_fake_reference(&s, x, b, 2, shape, NULL);
                for (int i = 0; i < 64 * 96; i++)
                    ck_assert_msg(same_value(a[i], b[i]), "%s: %a vs %a", quant_format_get((quant_format)f)->name,
                                  (double)a[i], (double)b[i]);
                /* the portable kernel (SIMD off) gives the same bits */
                setenv("MXTRAIN_NO_SIMD", "1", 1);
                quant_fake(&s, x, b, 2, shape, NULL, NULL);
                unsetenv("MXTRAIN_NO_SIMD");
                for (int i = 0; i < 64 * 96; i++) ck_assert(same_value(a[i], b[i]));
            }
    free(x);
    free(a);
    free(b);
}
END_TEST

/* quant_pack_fake gives quant_pack's codes and scales and quant_fake's values
 * in one pass: every format, tiles and columns, SIMD on and off, with
 * statistics, non-finite blocks and ragged edges. */
START_TEST(test_pack_fake_one_pass) {
    enum { R = 40, C = 44 };
    int64_t shape[2] = {R, C};
    float *x = random_data(R * C, 9, 30.0f);
    x[5] = INFINITY;
    float *a = malloc(sizeof(float) * R * C), *b = malloc(sizeof(float) * R * C);
    uint8_t ca[2 * R * C], cb[2 * R * C], sa[R * C], sb[R * C];
    quant_format fmts[QUANT_FORMAT_COUNT + 16];
    int nf = all_formats(fmts);
    for (int fi = 0; fi < nf; fi++) {
        quant_format f = fmts[fi];
        if (!quant_format_get(f)->is_mx) continue;
        for (int layout = 0; layout < 3; layout++)
            for (int simd = 0; simd < 2; simd++)
                for (int stats = 0; stats < 2; stats++) {
                    quant_spec s = layout_spec(f, layout);
                    if (!simd) setenv("MXTRAIN_NO_SIMD", "1", 1);
                    quant_stats st;
                    quant_pack_fake(&s, x, ca, a, 2, shape, sa, stats ? &st : NULL);
                    quant_pack(&s, x, cb, 2, shape, sb, NULL);
                    quant_fake(&s, x, b, 2, shape, NULL, NULL);
                    unsetenv("MXTRAIN_NO_SIMD");
                    int64_t nb = quant_num_blocks(&s, 2, shape, NULL), ncodes = quant_codes_bytes(&s, 2, shape);
                    ck_assert_int_le(ncodes, 2 * R * C);
                    ck_assert_int_eq(memcmp(ca, cb, (size_t)ncodes), 0);
                    ck_assert_int_eq(memcmp(sa, sb, (size_t)nb), 0);
                    for (int i = 0; i < R * C; i++)
                        ck_assert_msg(same_value(a[i], b[i]), "%s layout %d simd %d: [%d] %a vs %a",
                                      quant_format_get(f)->name, layout, simd, i, (double)a[i],
                                      (double)b[i]);
                }
    }
    free(x);
    free(a);
    free(b);
}
END_TEST


/* quant_fake_bf16: where it runs (1), every value is quant_fake's float's
 * upper half with a zero lower half, and a normal bf16 or zero; every format,
 * scale mode, the three layouts (2d: 8x8 and 32x32 tiles), with blocks
 * scaled down to 2^-130 (MXSF's and E4M3's small steps fall below bf16's
 * normals there: 0, never a wrong value) and a NaN block (0). Rounding other
 * than round-half-even and shared-microexponent formats have no such pass
 * (-1); neither has a tile that does not divide the columns. */
START_TEST(test_fake_bf16_one_pass) {
    enum { R = 64, C = 96, N = R * C };
    int64_t shape[2] = {R, C};
    float *x = random_data(N, 11, 30.0f), *y = malloc(sizeof(float) * N);
    uint16_t *y16 = malloc(sizeof(uint16_t) * N);
    quant_format fmts[QUANT_FORMAT_COUNT + 16];
    int nf = all_formats(fmts), ran = 0, refused_tiny = 0;
    for (int fi = 0; fi < nf; fi++)
        for (int sm = 0; sm < QUANT_SCALE_COUNT; sm++)
            for (int layout = 0; layout < 4; layout++)
                for (int tiny = 0; tiny < 3; tiny++) { /* 0: as drawn; 1: scaled to ~2^-125; 2: a NaN */
                    quant_format f = fmts[fi];
                    if (!quant_format_get(f)->is_mx || (quant_format_is_bdr(f) && sm != QUANT_SCALE_FLOOR)) continue;
                    quant_spec s = layout_spec(f, layout < 3 ? layout : 1);
                    if (layout == 3 && !quant_format_is_bdr(f)) s.block_rows = s.block_cols = 32;
                    s.scale = (quant_scale)sm;
                    float *xi = malloc(sizeof(float) * N);
                    for (int i = 0; i < N; i++) xi[i] = tiny == 1 ? ldexpf(x[i], -125) : x[i];
                    if (tiny == 2) xi[77] = NAN;
                    int r = quant_fake_bf16(&s, xi, y16, 2, shape);
                    if (quant_format_is_bdr(f)) ck_assert_int_eq(r, -1);
                    if (tiny == 2) ck_assert_int_le(r, 0);
                    if (r == 1) {
                        ran++;
                        quant_fake(&s, xi, y, 2, shape, NULL, NULL);
                        for (int i = 0; i < N; i++) {
                            uint32_t u;
                            memcpy(&u, &y[i], 4);
                            ck_assert_msg((u & 0xffffu) == 0 && u >> 16 == y16[i] && ((u & 0x7f800000u) || !(u & 0x7fffffffu)),
                                          "%s layout %d scale %d tiny %d: [%d] %a vs bf16 %04x",
                                          quant_format_get(f)->name, layout, sm, tiny, i, (double)y[i], y16[i]);
                        }
                    }
                    if (tiny == 1 && r == 0) refused_tiny++;
                    free(xi);
                }
    quant_spec st = layout_spec(QUANT_FORMAT_MXFP8_E4M3, 0);
    st.round = QUANT_ROUND_STOCHASTIC;
    ck_assert_int_eq(quant_fake_bf16(&st, x, y16, 2, shape), -1);
    fprintf(stderr, "  bf16 one-pass quantization: %d cases ran and matched, %d refused tiny scales\n", ran, refused_tiny);
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) {
        ck_assert_int_gt(ran, 50);
        ck_assert_int_gt(refused_tiny, 0);
    }
#endif
    free(x), free(y), free(y16);
}
END_TEST

/* Stochastic rounding: unbiased (mean error within 4 standard errors of 0
 * over 10^6 draws) and reproducible for a seed, whatever the thread count. */
START_TEST(test_stochastic_unbiased_and_reproducible) {
    const int64_t n = 1000000;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n), *z = malloc(sizeof(float) * n);
    quant_format fmts[QUANT_FORMAT_COUNT + 16];
    int nf = all_formats(fmts);
    for (int fi = 0; fi < nf; fi++) {
        quant_format f = fmts[fi];
        const quant_format_info *info = quant_format_get(f);
        /* (one magnitude bit, bdr_m1: a block's own maximum saturates above 2^se, so rounding is biased there) */
        if (!info->is_mx || (info->k1 && info->p == 0)) continue;
        /* blocks of 32: one value 4.0 pins the scale, the rest is a fixed
         * off-grid value, so every draw has the same expectation */
        for (int64_t i = 0; i < n; i++) x[i] = (i % 32 == 0) ? 4.0f : 0.3f;
        quant_spec s = quant_spec_default(f);
        s.round = QUANT_ROUND_STOCHASTIC;
        s.seed = 99;
        int64_t shape[1] = {n};
        quant_fake(&s, x, y, 1, shape, NULL, NULL);
        double sum = 0, sum2 = 0;
        int64_t m = 0;
        for (int64_t i = 0; i < n; i++) {
            if (i % 32 == 0) continue;
            double e = (double)y[i] - 0.3;
            sum += e;
            sum2 += e * e;
            m++;
        }
        double mean = sum / m, sd = sqrt(sum2 / m - mean * mean), se = sd / sqrt((double)m);
        ck_assert_msg(sd > 0, "%s: stochastic rounding did not vary", quant_format_get(f)->name);
        ck_assert_msg(fabs(mean) <= 4 * se, "%s: mean error %g, 4 SE %g", quant_format_get(f)->name,
                      mean, 4 * se);
        /* same seed, different thread count: same bits; other seed: different */
        omp_set_num_threads(1);
        quant_fake(&s, x, z, 1, shape, NULL, NULL);
        omp_set_num_threads(2);
        ck_assert_int_eq(memcmp(y, z, sizeof(float) * n), 0);
        s.seed = 100;
        quant_fake(&s, x, z, 1, shape, NULL, NULL);
        ck_assert_int_ne(memcmp(y, z, sizeof(float) * n), 0);
    }
    free(x);
    free(y);
    free(z);
}
END_TEST

/* In-pass statistics equal direct counts from the inputs and outputs. */
START_TEST(test_stats_equal_direct_counts) {
    int64_t shape[2] = {40, 70};
    int64_t n = 40 * 70;
    float *x = random_data(n, 11, 60.0f), *y = malloc(sizeof(float) * n);
    for (int64_t i = 0; i < n; i += 7) x[i] = 0.0f;
    quant_format fmts[QUANT_FORMAT_COUNT + 16];
    int nf = all_formats(fmts);
    for (int f = 0; f < nf; f++)
        for (int tile = 0; tile < 2; tile++) {
            quant_spec s = layout_spec(fmts[f], tile);
            const quant_format_info *fi = quant_format_get(fmts[f]);
            if (!fi->is_mx && tile) continue;
            int64_t nb = quant_num_blocks(&s, 2, shape, NULL);
            uint8_t *sc = malloc((size_t)nb + 1);
            quant_stats st;
            quant_fake(&s, x, y, 2, shape, fi->is_mx ? sc : NULL, &st);
            int64_t nz = 0, uf = 0;
            double sx = 0, se = 0;
            for (int64_t i = 0; i < n; i++) {
                nz += x[i] != 0;
                uf += x[i] != 0 && y[i] == 0;
                sx += (double)x[i] * x[i];
                se += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
            }
            ck_assert_int_eq(st.elements, n);
            ck_assert_int_eq(st.nonzero, nz);
            ck_assert_int_eq(st.underflow, uf);
            ck_assert(fabs(st.sum_x2 - sx) <= 1e-9 * sx);
            ck_assert(fabs(st.sum_err2 - se) <= 1e-9 * se + 1e-300);
            if (fi->is_mx && !tile && !fi->k1) { /* (BDR: test_bdr_stats) */
                /* saturation and gap histogram, counted directly per 1x32 block */
                int64_t sat = 0, gaps[QUANT_GAP_BINS] = {0};
                for (int64_t r = 0; r < 40; r++)
                    for (int64_t b = 0; b < 3; b++) {
                        float amax = 0;
                        for (int64_t j = b * 32; j < 70 && j < b * 32 + 32; j++) amax = fmaxf(amax, fabsf(x[r * 70 + j]));
                        int ea, se2;
                        frexpf(amax, &ea);
                        int scale_exp = sc[r * 3 + b] - 127;
                        for (int64_t j = b * 32; j < 70 && j < b * 32 + 32; j++) {
                            float v = x[r * 70 + j];
                            sat += fabsf(ldexpf(v, -scale_exp)) > fi->max_norm;
                            if (v == 0) continue;
                            frexpf(v, &se2);
                            int g = ea - se2;
                            gaps[g < 31 ? g : 31]++;
                        }
                    }
                ck_assert_int_eq(st.saturated, sat);
                for (int i = 0; i < QUANT_GAP_BINS; i++) ck_assert_int_eq(st.gap_hist[i], gaps[i]);
            }
            free(sc);
        }
    free(x);
    free(y);
}
END_TEST

/* Spec section 1 edge cases. */
START_TEST(test_edge_cases) {
    int64_t shape[1] = {64};
    float x[64], y[64];
    uint8_t sc[2];
    quant_spec s = quant_spec_default(QUANT_FORMAT_MXFP8_E4M3);
    /* block 0 holds an Inf, block 1 a NaN */
    for (int i = 0; i < 64; i++) x[i] = 1.0f + i;
    x[3] = INFINITY;
    x[40] = NAN;
    quant_fake(&s, x, y, 1, shape, sc, NULL);
    for (int i = 0; i < 64; i++) ck_assert(isnan(y[i]));
    ck_assert_int_eq(sc[0], 255);
    ck_assert_int_eq(sc[1], 255);
    /* all-zero block: zeros and scale code 0 */
    memset(x, 0, sizeof x);
    x[33] = 1.0f;
    quant_fake(&s, x, y, 1, shape, sc, NULL);
    ck_assert_int_eq(sc[0], 0);
    for (int i = 0; i < 32; i++) ck_assert_float_eq(y[i], 0.0f);
    ck_assert_int_eq(sc[1], 127 - 8);
    ck_assert_float_eq(y[33], 1.0f);
    /* tiny block: se clamps to -127 (code 0); elements still quantize */
    for (int i = 0; i < 64; i++) x[i] = 0x1p-127f * (float)(i % 5); /* fp32 subnormals, amax 2^-125 */
    quant_fake(&s, x, y, 1, shape, sc, NULL);
    ck_assert_int_eq(sc[0], 0);                 /* se = -125 - 8 = -133 clamps to -127 */
    ck_assert_float_eq(y[3], 0x1.8p-126f);      /* t = 3: exact, output a float32 subnormal */
    ck_assert_float_eq(y[4], 0x1p-125f);
    for (int i = 0; i < 64; i++) x[i] = 0x1p-140f * (float)(i % 5);
    quant_fake(&s, x, y, 1, shape, sc, NULL);
    ck_assert_int_eq(sc[0], 0);
    ck_assert_float_eq(y[4], 0.0f);             /* t = 2^-11, below half of E4M3's 2^-9 grid */
    /* rceil near FLT_MAX: the scale needs se = 128, which E8M0 cannot hold: the block is NaN with code 255
     * (golden-bdr's mxint4 rceil case has such a block); floor stays finite */
    for (int i = 0; i < 64; i++) x[i] = i % 2 ? FLT_MAX : 1.0f;
    quant_spec si = quant_spec_default(QUANT_FORMAT_MXINT8);
    quant_fake(&si, x, y, 1, shape, sc, NULL);
    ck_assert(isfinite(y[1]));
    si.scale = QUANT_SCALE_RCEIL;
    quant_fake(&si, x, y, 1, shape, sc, NULL);
    ck_assert_int_eq(sc[0], 255);
    ck_assert(isnan(y[0]) && isnan(y[1]));
    x[1] = 0x1.fbp127f; /* below 127/64 * 2^127: se = 127 */
    for (int i = 3; i < 64; i += 2) x[i] = 1.0f;
    quant_fake(&si, x, y, 1, shape, sc, NULL);
    ck_assert_int_eq(sc[0], 254);
    /* rceil: amax just above max_norm * 2^se moves the scale up by one */
    quant_spec sr = quant_spec_default(QUANT_FORMAT_MXFP8_E4M3);
    for (int i = 0; i < 64; i++) x[i] = 0.5f;
    x[0] = 449.0f;
    quant_fake(&sr, x, y, 1, shape, sc, NULL);
    ck_assert_int_eq(sc[0], 127);      /* floor: se = 8 - 8 = 0 */
    ck_assert_float_eq(y[0], 448.0f);  /* saturated */
    sr.scale = QUANT_SCALE_RCEIL;
    quant_fake(&sr, x, y, 1, shape, sc, NULL);
    ck_assert_int_eq(sc[0], 128);      /* 449 > 448 * 2^0 */
    ck_assert_float_eq(y[0], 448.0f);  /* 224.5 -> 224 at scale 2 */
    /* values just below a power of two take the lower exponent (no log2f) */
    float below = nextafterf(256.0f, 0.0f);
    for (int i = 0; i < 64; i++) x[i] = below;
    quant_fake(&s, x, y, 1, shape, sc, NULL);
    ck_assert_int_eq(sc[0], 127 + 7 - 8);
}
END_TEST

/* 1D blocks along an inner axis equal 1D blocks along the last axis of the
 * transposed array; ragged edges are padded. */
START_TEST(test_axis_and_ragged_blocks) {
    const int64_t A = 3, L = 45, B = 7;
    int64_t shape[3] = {A, L, B}, tshape[3] = {A, B, L};
    float *x = random_data(A * L * B, 21, 30.0f), *xt = malloc(sizeof(float) * A * L * B);
    float *y = malloc(sizeof(float) * A * L * B), *yt = malloc(sizeof(float) * A * L * B);
    for (int64_t a = 0; a < A; a++)
        for (int64_t l = 0; l < L; l++)
            for (int64_t b = 0; b < B; b++) xt[(a * B + b) * L + l] = x[(a * L + l) * B + b];
    quant_spec s = quant_spec_default(QUANT_FORMAT_MXSF);
    s.block_cols = 16;
    s.axis = 1;
    uint8_t sc[3 * 3 * 7], sct[3 * 7 * 3];
    ck_assert_int_eq(quant_num_blocks(&s, 3, shape, NULL), 3 * 3 * 7);
    quant_fake(&s, x, y, 3, shape, sc, NULL);
    s.axis = -1;
    quant_fake(&s, xt, yt, 3, tshape, sct, NULL);
    for (int64_t a = 0; a < A; a++)
        for (int64_t l = 0; l < L; l++)
            for (int64_t b = 0; b < B; b++) ck_assert(same_value(y[(a * L + l) * B + b], yt[(a * B + b) * L + l]));
    for (int64_t a = 0; a < A; a++)
        for (int64_t nb = 0; nb < 3; nb++)
            for (int64_t b = 0; b < B; b++) ck_assert_int_eq(sc[(a * 3 + nb) * B + b], sct[(a * B + b) * 3 + nb]);
    /* pack/unpack along the inner axis too */
    uint8_t *codes = malloc((size_t)(A * L * B)), sc2[63];
    s.axis = 1;
    quant_pack(&s, x, codes, 3, shape, sc2, NULL);
    quant_unpack(&s, codes, sc2, yt, 3, shape);
    for (int64_t i = 0; i < A * L * B; i++) ck_assert(same_value(yt[i], y[i]));
    /* errors: axis out of range, tile on rank 1 */
    mx_err err;
    s.axis = 3;
    ck_assert_int_lt(quant_num_blocks(&s, 3, shape, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "axis"));
    s.axis = -1;
    s.block_rows = 8;
    s.block_cols = 8;
    ck_assert_int_lt(quant_num_blocks(&s, 1, shape, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "rank"));
    free(x);
    free(xt);
    free(y);
    free(yt);
    free(codes);
}
END_TEST

/* 2D tiles: a tile and its transpose quantize identically (what makes the
 * forward copy reusable in the backward pass). */
START_TEST(test_tiles_transpose_invariant) {
    const int64_t R = 20, C = 27;
    int64_t shape[2] = {R, C}, tshape[2] = {C, R};
    float *x = random_data(R * C, 31, 50.0f), *xt = malloc(sizeof(float) * R * C);
    float *y = malloc(sizeof(float) * R * C), *yt = malloc(sizeof(float) * R * C);
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < C; j++) xt[j * R + i] = x[i * C + j];
    quant_spec s = quant_spec_default(QUANT_FORMAT_MXFP8_E5M2);
    s.block_rows = s.block_cols = 8;
    quant_fake(&s, x, y, 2, shape, NULL, NULL);
    quant_fake(&s, xt, yt, 2, tshape, NULL, NULL);
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < C; j++) ck_assert(same_value(y[i * C + j], yt[j * R + i]));
    free(x);
    free(xt);
    free(y);
    free(yt);
}
END_TEST

START_TEST(test_bf16_edges) {
    int64_t shape[1] = {6};
    float x[6] = {FLT_MAX, NAN, -INFINITY, 1.00390625f /* 1 + 2^-8: tie */, 1.01171875f, 0x1p-149f}, y[6];
    quant_spec s = quant_spec_default(QUANT_FORMAT_BF16);
    quant_fake(&s, x, y, 1, shape, NULL, NULL);
    ck_assert(isinf(y[0]) && y[0] > 0); /* overflow after rounding */
    ck_assert(isnan(y[1]));
    ck_assert(isinf(y[2]) && y[2] < 0);
    ck_assert_float_eq(y[3], 1.0f);         /* half to even */
    ck_assert_float_eq(y[4], 1.015625f);    /* 1 + 3*2^-8 -> 1 + 4*2^-8 */
    s.round = QUANT_ROUND_AWAY;
    quant_fake(&s, x, y, 1, shape, NULL, NULL);
    ck_assert_float_eq(y[3], 1.0078125f);
}
END_TEST

/* ---- the CLI contract ---- */

/* `mxtrain quantize ARGS` */
static int run_cli(const char *args, char *out, size_t outsz) {
    char full[3100];
    snprintf(full, sizeof full, "quantize %s", args);
    return test_run_mxtrain(full, out, outsz);
}

START_TEST(test_cli_golden_and_errors) {
    char out[4096], args[3000];
    static const struct {
        const char *set, *pick[4];
    } sets[] = {
        {"golden", {"mxsf.even.floor.8x8.axis-1", "mxfp8_e4m3.even.rceil.1x32.axis-1", "mxint8.even.floor.1x16.axis0",
                    "bf16.even"}},
        {"golden-bdr", {"mx9.even.floor.4x4.axis-1", "mx6.even.floor.1x16.axis0",
                        "bdr_m5_k8_s2_d2.even.floor.1x8.axis-1", "mxint4.even.rceil.1x32.axis-1"}},
    };
    for (int si = 0; si < 2; si++) {
        const char *set = sets[si].set;
        if (!golden_available(set)) {
            fprintf(stderr, "SKIP CLI golden cases: %s/%s not found\n", shared_dir(), set);
            continue;
        }
        golden_case cases[128];
        int n = golden_load(set, cases, 128);
        int found = 0;
        for (int k = 0; k < 4; k++)
            for (int ci = 0; ci < n; ci++) {
                golden_case *c = &cases[ci];
                if (strcmp(c->name, sets[si].pick[k])) continue;
                found++;
                char in[1024];
                golden_path(in, set, c->input);
                int mx = strcmp(c->block, "-") != 0;
                if (mx)
                    snprintf(args, sizeof args, "--format %s --round %s --scale %s --block %s --axis %d --scales-out %s %s %s",
                             c->format, c->round, c->scale, c->block, c->axis, test_path("s.npy"), in, test_path("o.npy"));
                else
                    snprintf(args, sizeof args, "--format %s --round %s %s %s", c->format, c->round, in, test_path("o.npy"));
                ck_assert_msg(run_cli(args, out, sizeof out) == 0, "%s: %s", c->name, out);
                ck_assert_msg(strstr(out, "\"qsnr_db\":") && strstr(out, "\"underflow_ratio\":") &&
                                  strstr(out, "\"elements\":"), "%s: %s", c->name, out);
                npy_array got, want;
                mx_err err;
                ck_assert(npy_read(test_path("o.npy"), &got, &err) == 0);
                golden_path(in, set, c->expected);
                ck_assert(npy_read(in, &want, &err) == 0);
                for (int64_t i = 0; i < got.numel; i++)
                    ck_assert(same_value(((float *)got.data)[i], ((float *)want.data)[i]));
                npy_free(&got);
                npy_free(&want);
                if (mx) {
                    golden_path(in, set, c->scales);
                    ck_assert(npy_read(test_path("s.npy"), &got, &err) == 0);
                    ck_assert(npy_read(in, &want, &err) == 0);
                    ck_assert_int_eq(got.ndim, want.ndim);
                    for (int d = 0; d < got.ndim; d++) ck_assert_int_eq(got.shape[d], want.shape[d]);
                    ck_assert_int_eq(memcmp(got.data, want.data, (size_t)got.numel), 0);
                    npy_free(&got);
                    npy_free(&want);
                }
            }
        ck_assert_int_eq(found, 4);
    }
    /* errors: one line on stderr, exit 1 for a bad input file, 2 for bad options */
    float v[16] = {1, 2, 3};
    int64_t s1[1] = {16};
    npy_array a = npy_wrap(NPY_DTYPE_F32, 1, s1, v);
    mx_err err;
    ck_assert_int_eq(npy_write(test_path("v.npy"), &a, &err), 0);
    unsigned char u[4] = {1, 2, 3, 4};
    int64_t s4[1] = {4};
    npy_array ua = npy_wrap(NPY_DTYPE_U8, 1, s4, u);
    ck_assert_int_eq(npy_write(test_path("u8.npy"), &ua, &err), 0);
    struct {
        const char *args, *needle;
    } bad[] = {
        {"--format mxsf %s/missing.npy %s/o.npy", "cannot open"}, /* the two file errors: exit 1 */
        {"--format mxsf %s/u8.npy %s/o.npy", "expected float16, float32 or float64"},
        {"--format mxfp9 %s/v.npy %s/o.npy", "unknown format"},
        {"--format mxsf --round up %s/v.npy %s/o.npy", "unknown rounding"},
        {"--format mxsf --scale ceil %s/v.npy %s/o.npy", "unknown scale"},
        {"--format mxsf --block 32 %s/v.npy %s/o.npy", "malformed block"},
        {"--format mxsf --axis 1 %s/v.npy %s/o.npy", "axis 1 out of range"},
        {"--format mxsf --block 8x8 %s/v.npy %s/o.npy", "rank >= 2"},
        {"--format bf16 --block 1x32 %s/v.npy %s/o.npy", "takes no block"},
        {"--format bdr_m7_k16_s3_d1 %s/v.npy %s/o.npy", "must divide the block"},
        {"--format bdr_m8_k16_s2_d1 %s/v.npy %s/o.npy", "out of range (1..7)"},
        {"--format bdr_m7_k65_s1_d1 %s/v.npy %s/o.npy", "out of range (2..64)"},
        {"--format bdr_m7_k16_s2_d4 %s/v.npy %s/o.npy", "out of range (0..3)"},
        {"--format bdr_m7_k16_s2 %s/v.npy %s/o.npy", "malformed format"},
        {"--format bdr_m07_k16_s2_d1 %s/v.npy %s/o.npy", "malformed format"},
        {"--format mx9 --block 1x32 %s/v.npy %s/o.npy", "1D blocks of 16 values (1x16), not 1x32"},
        {"--format mx6 --block 8x8 %s/v.npy %s/o.npy", "tiles of 16 values"},
        {"--format mx4 --scale rceil %s/v.npy %s/o.npy", "scale mode must be floor"},
        {"--format mxsf --bogus %s/v.npy %s/o.npy", "unknown option"},
        {"%s/v.npy %s/o.npy", "--format is required"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(args, sizeof args, bad[i].args, test_tmpdir(), test_tmpdir());
        int rc = run_cli(args, out, sizeof out), want = i < 2 ? 1 : 2;
        ck_assert_msg(rc == want, "'%s' exited %d, want %d: %s", args, rc, want, out);
        ck_assert_msg(strstr(out, bad[i].needle), "'%s': message '%s' lacks '%s'", args, out, bad[i].needle);
        ck_assert_msg(strchr(out, '\n') == out + strlen(out) - 1, "'%s': not one line: %s", args, out);
    }
    /* mxtrain --version: one line */
    ck_assert_int_eq(test_run_mxtrain("--version", out, sizeof out), 0);
    ck_assert_msg(strncmp(out, "mxtrain ", 8) == 0 && strchr(out, '\n') == out + strlen(out) - 1, "%s", out);
}
END_TEST

/* Where underflow begins, per format: an MXINT8 element keeps 7 binades below its block's
 * maximum (1.99 * 2^-8 is under half an LSB of 2^-6), E4M3 down to its subnormals (2^-9 below a
 * scale of 2^-8), bf16 none; and the gap before each threshold still keeps its largest value. */
START_TEST(test_underflow_gap) {
    ck_assert_int_eq(quant_underflow_gap(QUANT_FORMAT_MXINT8), 8);
    ck_assert_int_eq(quant_underflow_gap(QUANT_FORMAT_MXFP8_E4M3), 19);
    ck_assert_int_eq(quant_underflow_gap(QUANT_FORMAT_BF16), QUANT_GAP_BINS);
    for (int f = 0; f < QUANT_FORMAT_COUNT; f++) {
        int g = quant_underflow_gap((quant_format)f);
        ck_assert(g >= 2 && g <= QUANT_GAP_BINS);
        if (g == QUANT_GAP_BINS) continue;
        quant_spec s = quant_spec_default((quant_format)f);
        float x[32] = {1.0f, ldexpf(1.99f, -(g - 1))}, y[32];
        uint8_t sc[8];
        quant_fake(&s, x, y, 1, (int64_t[]){32}, quant_format_get((quant_format)f)->is_mx ? sc : NULL, NULL);
        ck_assert_msg(y[1] != 0.0f, "%s: gap %d already underflows", quant_format_get((quant_format)f)->name, g - 1);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("quant");
    TCase *tc = tcase_create("golden");
    tcase_add_test(tc, test_golden_cases);
    tcase_add_test(tc, test_golden_bdr_cases);
    tcase_add_test(tc, test_codes_roundtrip_and_monotonic);
    tcase_add_test(tc, test_mxsf_ranges_join);
    tcase_add_test(tc, test_fast_path_matches_reference);
    tcase_add_test(tc, test_stochastic_unbiased_and_reproducible);
    tcase_add_test(tc, test_stats_equal_direct_counts);
    tcase_add_test(tc, test_edge_cases);
    tcase_add_test(tc, test_axis_and_ragged_blocks);
    tcase_add_test(tc, test_pack_fake_one_pass);
    tcase_add_test(tc, test_fake_bf16_one_pass);
    tcase_add_test(tc, test_tiles_transpose_invariant);
    tcase_add_test(tc, test_bf16_edges);
    tcase_add_test(tc, test_underflow_gap);
    tcase_add_test(tc, test_cli_golden_and_errors);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
