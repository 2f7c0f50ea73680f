/* cuda/: the GPU quantizer against the CPU's, bit for bit: every golden case
 * (../shared/golden, and ../shared/golden-bdr for the formats the build has),
 * every format x rounding x scale x layout on random tensors, edge tensors
 * (ragged shapes, Inf/NaN blocks, all-zero blocks, float32 subnormals, blocks
 * scaled near 2^-127), statistics, pack/unpack, the bf16 output and a tensor
 * over 2^31 bytes; the device arena. Without a GPU the suite prints one line
 * and exits 77, which ctest reports as skipped. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/ops_util.h"
#include "layers/model.h"
#include "optim/optim.h"
#include "core/gemm.h"
#include "core/npy.h"
#include "core/rng.h"
#include "cuda/cuda.h"
#include "quant/quant.h"
#include "test_util.h"

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Bit equality, except any NaN matches any NaN. */
static bool same(float a, float b) { return (isnan(a) && isnan(b)) || bits_of(a) == bits_of(b); }

/* (Plain loops find the first difference: a Check assertion per element
 * costs a system call.) */
static void expect_same(const float *got, const float *want, int64_t n, const char *what) {
    int64_t i = 0;
    while (i < n && same(got[i], want[i])) i++;
    if (i < n) ck_abort_msg("%s [%lld]: gpu %a, cpu %a", what, (long long)i, (double)got[i], (double)want[i]);
}

static void expect_same_bytes(const uint8_t *got, const uint8_t *want, int64_t n, const char *what) {
    int64_t i = 0;
    while (i < n && got[i] == want[i]) i++;
    if (i < n) ck_abort_msg("%s [%lld]: gpu %u, cpu %u", what, (long long)i, got[i], want[i]);
}

static bool close_sum(double g, double c) {
    if (isnan(g) || isnan(c)) return isnan(g) && isnan(c);
    if (isinf(g) || isinf(c)) return g == c;
    return fabs(g - c) <= 1e-12 * fabs(c);
}

static void expect_stats(const quant_stats *g, const quant_stats *c, const char *what) {
    ck_assert_msg(g->elements == c->elements && g->nonzero == c->nonzero && g->underflow == c->underflow &&
                      g->saturated == c->saturated,
                  "%s: counts gpu %lld/%lld/%lld/%lld cpu %lld/%lld/%lld/%lld", what, (long long)g->elements,
                  (long long)g->nonzero, (long long)g->underflow, (long long)g->saturated, (long long)c->elements,
                  (long long)c->nonzero, (long long)c->underflow, (long long)c->saturated);
    for (int i = 0; i < QUANT_GAP_BINS; i++)
        if (g->gap_hist[i] != c->gap_hist[i])
            ck_abort_msg("%s: gap %d gpu %lld cpu %lld", what, i, (long long)g->gap_hist[i], (long long)c->gap_hist[i]);
    /* double sums in another order: equal to rounding (NaN and Inf alike) */
    ck_assert_msg(close_sum(g->sum_x2, c->sum_x2), "%s: sum_x2 %.17g vs %.17g", what, g->sum_x2, c->sum_x2);
    ck_assert_msg(close_sum(g->sum_err2, c->sum_err2), "%s: sum_err2 %.17g vs %.17g", what, g->sum_err2, c->sum_err2);
}

/* Device buffers reused across checks (allocation is slow on some hosts). */
static void *dev_buf(int slot, size_t bytes) {
    static void *buf[6];
    static size_t cap[6];
    if (bytes > cap[slot]) {
        cu_free(buf[slot]);
        cap[slot] = bytes * 2;
        buf[slot] = cu_malloc(cap[slot]);
    }
    return buf[slot];
}

/* Quantizes x on both devices every way the spec allows and compares. */
static void check_spec(const quant_spec *s, const float *x, int ndim, const int64_t *shape, const char *what) {
    mx_err err;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    int64_t nb = quant_num_blocks(s, ndim, shape, &err);
    ck_assert_msg(nb >= 0, "%s: %s", what, err.msg);
    bool mx = quant_format_get(s->format)->is_mx;
    size_t fb = sizeof(float) * (size_t)(n ? n : 1);
    float *yc = malloc(fb), *yg = malloc(fb), *yu = malloc(fb);
    int64_t nc = mx ? quant_codes_bytes(s, ndim, shape) : n; /* BDR: + microexponents */
    uint8_t *sc = malloc((size_t)nb + 1), *sg = malloc((size_t)nb + 1), *cc = malloc((size_t)nc + 1),
            *cg = malloc((size_t)nc + 1);
    uint16_t *bg = malloc(sizeof(uint16_t) * (size_t)(n ? n : 1));
    float *dx = dev_buf(0, fb), *dy = dev_buf(1, fb);
    uint8_t *dsc = dev_buf(2, (size_t)nb + 1), *dcodes = dev_buf(3, (size_t)nc + 1);
    uint16_t *db = dev_buf(4, sizeof(uint16_t) * (size_t)(n ? n : 1));
    if (n) cu_to_device(dx, x, fb);
    quant_stats stc, stg;
    char w[256];
    /* fake-quant, with statistics */
    quant_fake(s, x, yc, ndim, shape, mx ? sc : NULL, &stc);
    cu_quant_fake(s, dx, dy, ndim, shape, mx ? dsc : NULL, &stg);
    cu_to_host(yg, dy, fb);
    snprintf(w, sizeof w, "%s fake", what);
    expect_same(yg, yc, n, w);
    expect_stats(&stg, &stc, w);
    if (mx) {
        cu_to_host(sg, dsc, (size_t)nb);
        snprintf(w, sizeof w, "%s scales", what);
        expect_same_bytes(sg, sc, nb, w);
    }
    /* without statistics: the other kernel variant */
    cu_quant_fake(s, dx, dy, ndim, shape, NULL, NULL);
    cu_to_host(yg, dy, fb);
    snprintf(w, sizeof w, "%s fake (no stats)", what);
    expect_same(yg, yc, n, w);
    /* bf16 output: the float value rounded to bf16, counted when inexact */
    int64_t inexact = cu_quant_fake_bf16(s, dx, db, ndim, shape, NULL, NULL), want_inexact = 0;
    cu_to_host(bg, db, sizeof(uint16_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        uint32_t b = bits_of(yc[i]);
        want_inexact += (b & 0xffffu) != 0;
        bool ok = isnan(yc[i]) ? (bg[i] & 0x7fc0u) == 0x7fc0u : (b & 0xffffu) || bg[i] == b >> 16;
        if (!ok) ck_abort_msg("%s bf16 [%lld]: %04x for %a", what, (long long)i, bg[i], (double)yc[i]);
    }
    ck_assert_msg(inexact == want_inexact, "%s: bf16 inexact %lld, want %lld", what, (long long)inexact,
                  (long long)want_inexact);
    if (mx) {
        /* packed, packed + fake, unpack */
        quant_pack(s, x, cc, ndim, shape, sc, &stc);
        cu_quant_pack(s, dx, dcodes, ndim, shape, dsc, &stg);
        cu_to_host(cg, dcodes, (size_t)nc);
        snprintf(w, sizeof w, "%s codes", what);
        expect_same_bytes(cg, cc, nc, w);
        expect_stats(&stg, &stc, w);
        cu_quant_pack_fake(s, dx, dcodes, dy, ndim, shape, dsc, NULL);
        cu_to_host(yg, dy, fb);
        snprintf(w, sizeof w, "%s pack_fake", what);
        expect_same(yg, yc, n, w);
        /* unpack: the CPU's unpack of the same codes (which equals fake-quant
         * as values; a format without a negative-zero code gives +0) */
        cu_memset(dy, 0, fb);
        cu_quant_unpack(s, dcodes, dsc, dy, ndim, shape);
        cu_to_host(yu, dy, fb);
        quant_unpack(s, cc, sc, yc, ndim, shape);
        snprintf(w, sizeof w, "%s unpack", what);
        expect_same(yu, yc, n, w);
    }
    free(yc); free(yg); free(yu); free(sc); free(sg); free(cc); free(cg); free(bg);
}

static float *random_tensor(int64_t n, uint64_t seed) {
    float *x = malloc(sizeof(float) * (size_t)(n ? n : 1));
    rng r;
    rng_init(&r, seed, 0);
    /* block magnitudes spread over many binades, some exact zeros */
    for (int64_t i = 0; i < n; i++) {
        float v = rng_normal(&r) * ldexpf(1.0f, (int)(rng_next_u32(&r) % 40) - 20);
        x[i] = rng_next_u32(&r) % 17 == 0 ? 0.0f : v;
    }
    return x;
}

/* ---------------- golden cases ---------------- */

static const char *shared_dir(void) {
    const char *d = getenv("MX_SHARED_DIR");
    return d ? d : "../../shared";
}

static void golden_dir(const char *sub) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s/cases.tsv", shared_dir(), sub);
    FILE *f = fopen(p, "r");
    if (!f) {
        fprintf(stderr, "SKIP golden cases of %s: %s not found\n", sub, p);
        return;
    }
    char line[2048];
    ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
    int ran = 0, unknown = 0;
    while (fgets(line, sizeof line, f)) {
        char name[128], input[128], format[32], round[16], scale[16], block[16], axis[16], expected[160], scales[160];
        if (sscanf(line, "%127s %127s %31s %15s %15s %15s %15s %159s %159s", name, input, format, round, scale, block,
                   axis, expected, scales) != 9)
            continue;
        mx_err err;
        quant_format fm;
        if (quant_format_parse(format, &fm, &err)) { /* a format this build does not have yet */
            unknown++;
            continue;
        }
        quant_spec s = quant_spec_default(fm);
        ck_assert_int_eq(quant_round_parse(round, &s.round, &err), 0);
        if (strcmp(scale, "-")) ck_assert_int_eq(quant_scale_parse(scale, &s.scale, &err), 0);
        if (strcmp(block, "-")) ck_assert_int_eq(quant_block_parse(block, &s.block_rows, &s.block_cols, &err), 0);
        s.axis = strcmp(axis, "-") ? atoi(axis) : -1;
        npy_array in, want;
        snprintf(p, sizeof p, "%s/%s/%s", shared_dir(), sub, input);
        ck_assert_msg(npy_read_f32(p, &in, &err) == 0, "%s", err.msg);
        snprintf(p, sizeof p, "%s/%s/%s", shared_dir(), sub, expected);
        ck_assert_msg(npy_read(p, &want, &err) == 0, "%s", err.msg);
        /* the GPU against the golden values themselves ... */
        size_t fb = sizeof(float) * (size_t)in.numel;
        float *dx = dev_buf(0, fb), *dy = dev_buf(1, fb), *y = malloc(fb);
        cu_to_device(dx, in.data, fb);
        cu_quant_fake(&s, dx, dy, in.ndim, in.shape, NULL, NULL);
        cu_to_host(y, dy, fb);
        for (int64_t i = 0; i < in.numel; i++) {
            float wv = ((float *)want.data)[i];
            if (!same(y[i], wv) && !(y[i] == 0.0f && wv == 0.0f))
                ck_abort_msg("%s [%lld]: gpu %a, golden %a", name, (long long)i, (double)y[i], (double)wv);
        }
        /* ... and every path against the CPU */
        check_spec(&s, in.data, in.ndim, in.shape, name);
        free(y);
        npy_free(&in);
        npy_free(&want);
        ran++;
    }
    fclose(f);
    fprintf(stderr, "golden %s: %d cases bit-exact on the GPU%s\n", sub, ran,
            unknown ? " (cases of formats this build lacks skipped)" : "");
    if (unknown) fprintf(stderr, "  %d cases of %s name formats this build does not have\n", unknown, sub);
}

START_TEST(test_golden_on_gpu) {
    golden_dir("golden");
    golden_dir("golden-bdr");
}
END_TEST

/* ---------------- every format, rounding, scale, layout ---------------- */

/* The presets and some general shared-microexponent points. */
static int test_formats(quant_format *out) {
    int n = 0;
    for (int f = 0; f < QUANT_FORMAT_COUNT; f++) out[n++] = (quant_format)f;
    static const char *const general[] = {"bdr_m5_k8_s2_d2", "bdr_m3_k12_s3_d2", "bdr_m7_k32_s8_d3",
                                          "bdr_m2_k64_s16_d2"};
    for (int i = 0; i < 4; i++) {
        mx_err err;
        ck_assert_msg(quant_format_parse(general[i], &out[n++], &err) == 0, "%s", err.msg);
    }
    return n;
}

/* The b-th of nb layouts of format f: the table's for one-level formats; for
 * BDR 1 x k1, its own tile, 2 x k1/2 and again 1 x k1 (what its block must be). */
static void test_block(quant_format f, const int (*blocks)[2], int b, int *br, int *bc) {
    const quant_format_info *fi = quant_format_get(f);
    if (!fi->k1) {
        *br = blocks[b][0];
        *bc = blocks[b][1];
        return;
    }
    switch (b % 3) {
    case 0: *br = 1, *bc = fi->k1; break;
    case 1: quant_format_tile(f, br, bc); break;
    default: *br = 2, *bc = fi->k1 / 2; break;
    }
}

static void sweep_one(quant_format f, quant_round r, quant_scale sc, int br, int bc, int axis, int sh,
                      const int64_t *shape, int ndim, const float *x) {
    quant_spec s = quant_spec_default(f);
    s.round = r;
    s.scale = sc;
    s.block_rows = br;
    s.block_cols = bc;
    s.axis = axis;
    s.seed = 7;
    s.stream = 11;
    s.offset = (uint64_t)sh * 5; /* a chunk of a larger tensor */
    char w[160];
    snprintf(w, sizeof w, "%s %s %s %dx%d axis %d shape %d", quant_format_get(f)->name, quant_round_name(r),
             quant_scale_name(sc), br, bc, axis, sh);
    check_spec(&s, x, ndim, shape, w);
}

START_TEST(test_every_spec_matches_cpu) {
    /* shapes: ragged last blocks and tiles; a strided axis (COLUMNS); batched tiles */
    static const int64_t shapes[][3] = {{7, 45, 0}, {3, 37, 40}, {64, 96, 0}, {2, 9, 70}};
    static const int ndims[] = {2, 3, 2, 3};
    static const int blocks[][2] = {{1, 32}, {1, 12}, {8, 8}, {4, 4}, {1, 64}, {16, 16}, {1, 3}};
    float *xs[4];
    for (int sh = 0; sh < 4; sh++) {
        int64_t n = 1;
        for (int i = 0; i < ndims[sh]; i++) n *= shapes[sh][i];
        xs[sh] = random_tensor(n, 100 + (uint64_t)sh);
    }
    int count = 0;
    quant_format fmts[QUANT_FORMAT_COUNT + 4];
    int nf = test_formats(fmts);
    for (int fidx = 0; fidx < nf; fidx++) {
        quant_format f = fmts[fidx];
        const quant_format_info *fi = quant_format_get(f);
        /* every layout on every shape (even rounding, floor scale) ... */
        for (int b = 0; b < (fi->is_mx ? 7 : 1); b++)
            for (int sh = 0; sh < 4; sh++) {
                int br, bc;
                test_block(f, blocks, b, &br, &bc);
                for (int axis = -1; axis >= (fi->is_mx && br == 1 ? -ndims[sh] : -1); axis--, count++)
                    sweep_one(f, QUANT_ROUND_EVEN, QUANT_SCALE_FLOOR, br, bc, axis, sh, shapes[sh], ndims[sh], xs[sh]);
            }
        /* ... and every rounding x scale on a contiguous, a tiled and a strided layout */
        for (int r = 0; r < QUANT_ROUND_COUNT; r++)
            for (int sc = 0; sc < (fi->k1 ? 1 : QUANT_SCALE_COUNT); sc++) /* BDR: floor only */
                for (int lay = 0; lay < (fi->is_mx ? 3 : 1); lay++, count++) {
                    int br = lay == 1 ? 8 : 1, bc = lay == 1 ? 8 : 32;
                    if (fi->k1) test_block(f, blocks, lay == 1, &br, &bc);
                    sweep_one(f, (quant_round)r, (quant_scale)sc, br, bc, lay == 2 ? -2 : -1, 1, shapes[1], ndims[1],
                              xs[1]);
                }
    }
    for (int sh = 0; sh < 4; sh++) free(xs[sh]);
    fprintf(stderr, "%d specs x shapes: GPU = CPU bit for bit\n", count);
}
END_TEST

/* ---------------- edge tensors ---------------- */

START_TEST(test_edge_tensors) {
    enum { N = 4096 };
    float *x = malloc(sizeof(float) * N);
    int64_t shape[2] = {64, 64};
    for (int variant = 0; variant < 5; variant++) {
        rng r;
        rng_init(&r, 5, (uint64_t)variant);
        for (int i = 0; i < N; i++) {
            float v = rng_normal(&r);
            switch (variant) {
            case 0: /* Inf and NaN in some blocks */
                x[i] = i % 97 == 0 ? INFINITY : i % 131 == 0 ? NAN : i % 151 == 0 ? -INFINITY : v;
                break;
            case 1: x[i] = (i / 32) % 3 == 0 ? 0.0f : v; break;                 /* all-zero blocks */
            case 2: x[i] = ldexpf(v, -135 - (int)(rng_next_u32(&r) % 14)); break; /* float32 subnormals */
            case 3: x[i] = ldexpf(v, -120 - (int)(rng_next_u32(&r) % 8)); break;  /* scales near 2^-127 */
            default: x[i] = ldexpf(v, 100 + (int)(rng_next_u32(&r) % 27)); break; /* near overflow */
            }
        }
        quant_format fmts[QUANT_FORMAT_COUNT + 4];
        int nf = test_formats(fmts);
        for (int f = 0; f < nf; f++)
            for (int t = 0; t < 3; t++) {
                bool bdr = quant_format_is_bdr(fmts[f]);
                quant_spec s = quant_spec_default(fmts[f]);
                if (t == 1 && bdr) quant_format_tile(fmts[f], &s.block_rows, &s.block_cols);
                else if (t == 1) s.block_rows = s.block_cols = 8;
                if (t == 2) s.axis = 0; /* down columns */
                s.scale = variant == 4 && !bdr ? QUANT_SCALE_RCEIL : QUANT_SCALE_FLOOR;
                char w[96];
                snprintf(w, sizeof w, "edge %d %s layout %d", variant, quant_format_get(s.format)->name, t);
                check_spec(&s, x, 2, shape, w);
            }
    }
    free(x);
}
END_TEST

/* MXSF blocks scaled at 2^-127 have values below bf16's subnormal step: the
 * bf16 output counts them (a caller then keeps that operand in float32). */
START_TEST(test_bf16_inexact_blocks_are_counted) {
    enum { N = 256 };
    float x[N];
    for (int i = 0; i < N; i++) x[i] = ldexpf(1.0f + (float)(i % 8) / 8.0f, -140 + (i % 5));
    quant_spec s = quant_spec_default(QUANT_FORMAT_MXSF);
    int64_t shape[1] = {N};
    float *dx = cu_malloc(sizeof x);
    uint16_t *db = cu_malloc(sizeof(uint16_t) * N);
    cu_to_device(dx, x, sizeof x);
    int64_t inexact = cu_quant_fake_bf16(&s, dx, db, 1, shape, NULL, NULL);
    ck_assert_msg(inexact > 0, "no inexact element reported for MXSF at 2^-127");
    quant_spec e4 = quant_spec_default(QUANT_FORMAT_MXFP8_E4M3);
    float y[N];
    for (int i = 0; i < N; i++) y[i] = (float)(i % 13) - 6.0f;
    cu_to_device(dx, y, sizeof y);
    ck_assert_int_eq(cu_quant_fake_bf16(&e4, dx, db, 1, shape, NULL, NULL), 0);
    check_spec(&s, x, 1, shape, "mxsf near 2^-127");
    cu_free(dx);
    cu_free(db);
}
END_TEST

/* A tensor over 2^31 bytes (64-bit indexing throughout): GPU = CPU. */
START_TEST(test_huge_tensor) {
    if (getenv("MX_CUDA_QUICK")) { /* under compute-sanitizer: too slow */
        fprintf(stderr, "SKIP test_huge_tensor: MX_CUDA_QUICK set\n");
        return;
    }
    const int64_t n = ((int64_t)1 << 29) + 96; /* 2 GiB + 384 bytes of float32 */
    float *x = malloc(sizeof(float) * (size_t)n), *yc = malloc(sizeof(float) * (size_t)n),
          *yg = malloc(sizeof(float) * (size_t)n);
    ck_assert(x && yc && yg);
    for (int64_t i = 0; i < n; i++) x[i] = (float)((i * 2654435761u) % 1000003) * 1e-3f - 500.0f;
    quant_spec s = quant_spec_default(QUANT_FORMAT_MXFP8_E4M3);
    s.round = QUANT_ROUND_STOCHASTIC; /* word indices past 2^32 too */
    int64_t shape[1] = {n};
    float *dx = cu_malloc(sizeof(float) * (size_t)n), *dy = cu_malloc(sizeof(float) * (size_t)n);
    cu_to_device(dx, x, sizeof(float) * (size_t)n);
    quant_fake(&s, x, yc, 1, shape, NULL, NULL);
    cu_quant_fake(&s, dx, dy, 1, shape, NULL, NULL);
    cu_to_host(yg, dy, sizeof(float) * (size_t)n);
    expect_same(yg, yc, n, "huge");
    cu_free(dx);
    cu_free(dy);
    free(x);
    free(yc);
    free(yg);
}
END_TEST

START_TEST(test_device_arena) {
    /* core/arena.h over device memory (the GPU context's arenas) */
    arena a;
    arena_init_mem(&a, 1024, &cu_arena_mem);
    void *p = arena_alloc(&a, 100), *q = arena_alloc(&a, 5000); /* overflows into an extra block */
    ck_assert_ptr_ne(p, q);
    ck_assert_int_eq((uintptr_t)p % 64, 0);
    cu_memset(q, 0, 5000);
    float *z = arena_calloc(&a, 64 * sizeof(float)), hz[64];
    cu_to_host(hz, z, sizeof hz);
    for (int i = 0; i < 64; i++) ck_assert(hz[i] == 0.0f);
    arena_reset(&a); /* one block of the peak from now on */
    ck_assert_int_ge(a.cap, 5120);
    ck_assert_ptr_null(a.overflow);
    size_t grows = a.grow_count;
    void *p2 = arena_alloc(&a, 100);
    arena_alloc(&a, 5000);
    ck_assert_ptr_null(a.overflow);
    ck_assert_int_eq(a.grow_count, grows);
    ck_assert_ptr_eq(p2, a.base);
    arena_free(&a);
}
END_TEST

/* ---------------- ops ---------------- */

/* Largest |g - c| / (|c| + floor) over n values. */
static double rel_err(const float *g, const float *c, int64_t n, double floor) {
    double w = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)g[i] - c[i]) / (fabs((double)c[i]) + floor);
        if (!(e <= w)) w = e; /* NaN counts as worst */
    }
    return w;
}

/* Normwise: max |g - c| / max |c|. For sums over rows (parameter gradients),
 * whose elements may cancel to near zero and whose order of FP32 adds the
 * GPU chooses freely, elementwise relative error measures the cancellation,
 * not the kernel. */
static double norm_err(const float *g, const float *c, int64_t n) {
    double w = 0, big = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)g[i] - c[i]);
        if (!(e <= w)) w = e;
        big = fmax(big, fabs((double)c[i]));
    }
    return big > 0 ? w / big : w;
}

/* Each op's forward and backward on the GPU against the CPU op itself (its
 * tape backward from a random output gradient): relative 1e-5. */
START_TEST(test_ops_match_cpu) {
    enum { R = 37, D = 129, N = R * D };
    float *x = malloc(sizeof(float) * N), *b = malloc(sizeof(float) * D), *dy = malloc(sizeof(float) * N);
    float *dx0 = malloc(sizeof(float) * N), *hy = malloc(sizeof(float) * N), *hdx = malloc(sizeof(float) * N);
    float *hdb = malloc(sizeof(float) * D);
    rng r;
    rng_init(&r, 77, 0);
    for (int i = 0; i < N; i++) x[i] = rng_normal(&r) * 3.0f, dy[i] = rng_normal(&r), dx0[i] = rng_normal(&r);
    for (int i = 0; i < D; i++) b[i] = rng_normal(&r);
    x[0] = 0.0f, x[1] = -12.0f, x[2] = 12.0f; /* relu's kink, GELU tails */
    float *dxd = dev_buf(0, sizeof(float) * N), *dyy = dev_buf(2, sizeof(float) * N);
    float *dgd = dev_buf(3, sizeof(float) * N), *dbd = dev_buf(4, sizeof(float) * D);
    cu_to_device(dxd, x, sizeof(float) * N);
    cu_to_device(dgd, dy, sizeof(float) * N);
    int64_t shape[2] = {R, D}, bshape[1] = {D};
    static const char *const names[] = {"relu", "gelu", "gelu_tanh", "softmax", "add", "dropout", "drop_path"};
    for (int op = 0; op < 7; op++) {
        ag_ctx ctx;
        ag_ctx_init(&ctx, 0);
        ctx.run.grad_enabled = ctx.run.training = true;
        ctx.run.seed = 5;
        ctx.run.step = 3;
        float *gx = malloc(sizeof(float) * N), *gb = calloc(D, sizeof(float));
        memcpy(gx, dx0, sizeof(float) * N); /* the backward accumulates onto an existing gradient */
        ag_var xv = ag_leaf(x, gx, 2, shape), bv = ag_leaf(b, gb, 1, bshape);
        xv.requires_grad = bv.requires_grad = true;
        ag_var *y;
        uint64_t stream = rng_mix(ctx.run.step, 0); /* the first draw of the step */
        switch (op) {
        case 0: y = ag_relu(&ctx, &xv); break;
        case 1: y = ag_gelu(&ctx, &xv); break;
        case 2: y = ag_gelu_tanh(&ctx, &xv); break;
        case 3: y = ag_softmax(&ctx, &xv); break;
        case 4: y = ag_add(&ctx, &xv, &bv); break;
        case 5: y = ag_dropout(&ctx, &xv, 0.3f); break;
        default: y = ag_drop_path(&ctx, &xv, 0.4f); break;
        }
        ag_backward_from(&ctx, y, dy);
        /* the GPU */
        cu_to_device(dyy, dx0, sizeof(float) * N); /* dx starts as the same existing gradient */
        cu_memset(dbd, 0, sizeof(float) * D);
        float *dout = dev_buf(5, sizeof(float) * N);
        switch (op) {
        case 0: case 1: case 2: {
            cu_unary k = op == 0 ? CU_UNARY_RELU : op == 1 ? CU_UNARY_GELU : CU_UNARY_GELU_TANH;
            cu_op_unary(k, N, dxd, dout);
            cu_op_unary_backward(k, N, op == 0 ? dout : dxd, dgd, dyy);
            break;
        }
        case 3:
            cu_op_softmax(R, D, dxd, dout);
            cu_op_softmax_backward(R, D, dout, dgd, dyy);
            break;
        case 4:
            cu_to_device(dbd, b, sizeof(float) * D);
            cu_op_add(N, D, dxd, dbd, dout);
            cu_memset(dbd, 0, sizeof(float) * D);
            cu_op_add_backward(N, D, dgd, dyy, dbd);
            break;
        default: {
            float p = op == 5 ? 0.3f : 0.4f;
            int64_t group = op == 5 ? 1 : D;
            cu_op_drop(N, ctx.run.seed, stream, p, group, dxd, dout);
            cu_op_drop_backward(N, ctx.run.seed, stream, p, group, dgd, dyy);
            break;
        }
        }
        cu_to_host(hy, dout, sizeof(float) * N);
        cu_to_host(hdx, dyy, sizeof(float) * N);
        cu_to_host(hdb, dbd, sizeof(float) * D);
        double ey = rel_err(hy, y->value.data, N, 1e-30), edx = rel_err(hdx, gx, N, 1e-6);
        ck_assert_msg(ey <= 1e-5, "%s forward: relative error %g", names[op], ey);
        ck_assert_msg(edx <= 1e-5, "%s backward dx: relative error %g", names[op], edx);
        if (op == 4) {
            double edb = rel_err(hdb, gb, D, 1e-6);
            ck_assert_msg(edb <= 1e-5, "add backward db: relative error %g", edb);
        }
        fprintf(stderr, "op %s: forward %.2g, backward %.2g relative to the CPU\n", names[op], ey, edx);
        free(gx);
        free(gb);
        ag_ctx_free(&ctx);
    }
    free(x), free(b), free(dy), free(dx0), free(hy), free(hdx), free(hdb);
}
END_TEST

/* layernorm and cross-entropy (label smoothing) against the CPU ops, and
 * AdamW / SGD steps against the CPU optimizer on a small model's entries. */
START_TEST(test_norm_loss_optim_match_cpu) {
    enum { R = 45, D = 192, NC = 10 };
    rng r;
    rng_init(&r, 91, 0);
    float *x = malloc(sizeof(float) * R * D), *dy = malloc(sizeof(float) * R * D), *g = malloc(sizeof(float) * D),
          *be = malloc(sizeof(float) * D);
    for (int i = 0; i < R * D; i++) x[i] = rng_normal(&r) * 2.0f + 0.5f, dy[i] = rng_normal(&r);
    for (int i = 0; i < D; i++) g[i] = 1.0f + 0.1f * rng_normal(&r), be[i] = 0.1f * rng_normal(&r);
    /* layernorm */
    ag_ctx ctx;
    ag_ctx_init(&ctx, 0);
    ctx.run.grad_enabled = ctx.run.training = true;
    float *gx = calloc(R * D, sizeof(float)), *gg = calloc(D, sizeof(float)), *gb = calloc(D, sizeof(float));
    int64_t shape[2] = {R, D}, dshape[1] = {D};
    ag_var xv = ag_leaf(x, gx, 2, shape), gv = ag_leaf(g, gg, 1, dshape), bv = ag_leaf(be, gb, 1, dshape);
    xv.requires_grad = gv.requires_grad = bv.requires_grad = true;
    ag_var *y = ag_layernorm(&ctx, &xv, &gv, &bv, 1e-5f);
    ag_backward_from(&ctx, y, dy);
    float *dx_ = dev_buf(0, sizeof(float) * R * D), *ddy = dev_buf(1, sizeof(float) * R * D),
          *dyo = dev_buf(2, sizeof(float) * R * D), *dgx = dev_buf(3, sizeof(float) * R * D);
    float *dpar = dev_buf(4, sizeof(float) * (4 * D + 2 * R));
    float *dg = dpar, *db = dpar + D, *dgg = dpar + 2 * D, *dgb = dpar + 3 * D, *dmean = dpar + 4 * D, *drstd = dmean + R;
    cu_to_device(dx_, x, sizeof(float) * R * D);
    cu_to_device(ddy, dy, sizeof(float) * R * D);
    cu_to_device(dg, g, sizeof(float) * D);
    cu_to_device(db, be, sizeof(float) * D);
    cu_memset(dgx, 0, sizeof(float) * R * D);
    cu_memset(dgg, 0, sizeof(float) * 2 * D);
    cu_op_layernorm(R, D, 1e-5f, dx_, dg, db, dyo, dmean, drstd);
    cu_op_layernorm_backward(R, D, dx_, dg, dmean, drstd, ddy, dgx, dgg, dgb);
    float *h = malloc(sizeof(float) * R * D), *hg = malloc(sizeof(float) * 2 * D);
    cu_to_host(h, dyo, sizeof(float) * R * D);
    double e1 = rel_err(h, y->value.data, R * D, 1e-6);
    cu_to_host(h, dgx, sizeof(float) * R * D);
    double e2 = rel_err(h, gx, R * D, 1e-6);
    cu_to_host(hg, dgg, sizeof(float) * 2 * D);
    double e3 = fmax(norm_err(hg, gg, D), norm_err(hg + D, gb, D)); /* sums over the rows */
    fprintf(stderr, "layernorm: y %.2g, dx %.2g relative to the CPU, dgamma/dbeta %.2g normwise\n", e1, e2, e3);
    ck_assert_msg(e1 <= 1e-5 && e2 <= 1e-5 && e3 <= 1e-5, "layernorm differs: %g %g %g", e1, e2, e3);
    ag_ctx_free(&ctx);
    /* cross-entropy with label smoothing */
    ag_ctx_init(&ctx, 0);
    ctx.run.grad_enabled = ctx.run.training = true;
    int32_t labels[R];
    for (int i = 0; i < R; i++) labels[i] = (int32_t)rng_below(&r, NC);
    memset(gx, 0, sizeof(float) * R * NC);
    int64_t lshape[2] = {R, NC};
    ag_var lv = ag_leaf(x, gx, 2, lshape);
    lv.requires_grad = true;
    ag_var *loss = ag_cross_entropy(&ctx, &lv, labels, 0.1f);
    float one = 1.0f;
    ag_backward_from(&ctx, loss, &one);
    int32_t *dlab = dev_buf(5, sizeof labels);
    cu_to_device(dlab, labels, sizeof labels);
    cu_memset(dgx, 0, sizeof(float) * R * NC);
    double *dwork = cu_malloc(sizeof(double) * R);
    float *dloss = cu_malloc(2 * sizeof(float)), gl;
    cu_to_device(dloss + 1, &one, sizeof one);
    cu_op_cross_entropy(R, NC, dx_, dlab, 0.1f, dyo, dwork, dloss);
    cu_op_cross_entropy_backward(R, NC, dyo, dlab, 0.1f, dloss + 1, dgx);
    cu_to_host(&gl, dloss, sizeof gl);
    cu_free(dwork);
    cu_free(dloss);
    cu_to_host(h, dgx, sizeof(float) * R * NC);
    double el = fabs((double)gl - loss->value.data[0]) / fabs((double)loss->value.data[0]), ed = rel_err(h, gx, R * NC, 1e-6);
    fprintf(stderr, "cross-entropy: loss %.9g vs %.9g (%.2g), dlogits %.2g\n", gl, loss->value.data[0], el, ed);
    ck_assert_msg(el <= 1e-6 && ed <= 1e-5, "cross-entropy differs: %g %g", el, ed);
    ag_ctx_free(&ctx);
    /* optimizers: every entry of a small model, three steps */
    model_config mc = model_config_default(MODEL_ARCH_RESNET);
    mc.in_chans = 1, mc.num_classes = 4, mc.img_size = 8;
    for (int i = 0; i < 4; i++) mc.blocks[i] = 1, mc.widths[i] = 8;
    for (int kind = 0; kind < 2; kind++) {
        model m;
        mx_err err;
        ck_assert_msg(model_build(&m, &mc, &err) == 0, "%s", err.msg);
        optim_config oc = optim_config_default(kind ? OPTIM_KIND_SGD : OPTIM_KIND_ADAMW);
        oc.weight_decay = 0.05;
        if (kind) oc.momentum = 0.9, oc.nesterov = true;
        optimizer o;
        optim_init(&o, &oc, &m.params);
        param_store *ps = &m.params;
        size_t nt = ps->n_trainable;
        float *dp = cu_malloc(sizeof(float) * nt * 4), *dgr = dp + nt, *dm = dp + 2 * nt, *dv = dp + 3 * nt;
        cu_to_device(dp, ps->data, sizeof(float) * nt);
        cu_to_device(dm, o.m, sizeof(float) * nt);
        if (o.v) cu_to_device(dv, o.v, sizeof(float) * nt);
        for (int step = 0; step < 3; step++) {
            for (size_t i = 0; i < nt; i++) ps->grad[i] = rng_normal(&r) * 0.1f;
            cu_to_device(dgr, ps->grad, sizeof(float) * nt);
            optim_step(&o, 0.01);
            for (int e = 0; e < ps->count; e++) {
                const param_entry *pe = &ps->entries[e];
                if (pe->kind == PARAM_KIND_BUFFER) continue;
                float wd = pe->kind == PARAM_KIND_WEIGHT ? (float)oc.weight_decay : 0.0f;
                size_t off = pe->offset;
                if (kind == 0) {
                    optim_k_adamw a = optim_adamw_args(&o, 0.01f, wd);
                    cu_optim_adamw(pe->numel, &a, dp + off, dgr + off, dm + off, dv + off);
                } else {
                    optim_k_sgd a = optim_sgd_args(&o, 0.01f, wd);
                    cu_optim_sgd(pe->numel, &a, dp + off, dgr + off, dm + off);
                }
            }
        }
        float *hp = malloc(sizeof(float) * nt);
        cu_to_host(hp, dp, sizeof(float) * nt);
        ck_assert_msg(memcmp(hp, ps->data, sizeof(float) * nt) == 0, "%s: GPU parameters differ from the CPU's",
                      kind ? "sgd" : "adamw");
        fprintf(stderr, "%s: 3 steps of %zu parameters bit-identical to the CPU\n", kind ? "sgd (nesterov)" : "adamw", nt);
        free(hp);
        cu_free(dp);
        optim_free(&o);
        model_free(&m);
    }
    free(x), free(dy), free(g), free(be), free(gx), free(gg), free(gb), free(h), free(hg);
}
END_TEST

/* batchnorm2d (train and eval, with and without the fused residual + ReLU,
 * fp32 and bf16 elementwise) against the CPU op: y, running statistics and
 * every gradient. */
START_TEST(test_batchnorm_matches_cpu) {
    enum { ROWS = 2 * 9 * 11, C = 48, N = ROWS * C };
    rng r;
    rng_init(&r, 123, 0);
    float *x = malloc(sizeof(float) * N), *res = malloc(sizeof(float) * N), *dy = malloc(sizeof(float) * N);
    float g[C], b[C], rm0[C], rv0[C];
    for (int i = 0; i < N; i++) x[i] = rng_normal(&r) * 1.5f + 0.3f, res[i] = rng_normal(&r), dy[i] = rng_normal(&r);
    for (int j = 0; j < C; j++) g[j] = 1 + 0.2f * rng_normal(&r), b[j] = 0.1f * rng_normal(&r), rm0[j] = 0.1f * j,
                           rv0[j] = 1.0f + 0.01f * j;
    float *dxd = dev_buf(0, sizeof(float) * N), *dres = dev_buf(1, sizeof(float) * N), *ddy = dev_buf(2, sizeof(float) * N),
          *dy_out = dev_buf(3, sizeof(float) * N), *dgx = dev_buf(4, sizeof(float) * 2 * N);
    float *dgr = dgx + N;
    double *work = cu_malloc(cu_bn_work_bytes(ROWS, C));
    float *dc = cu_malloc(sizeof(float) * C * 8); /* g b rm rv mean invstd dg db */
    cu_to_device(dxd, x, sizeof(float) * N);
    cu_to_device(dres, res, sizeof(float) * N);
    cu_to_device(ddy, dy, sizeof(float) * N);
    float *h = malloc(sizeof(float) * N), hc[C * 8];
    int cases = 0;
    for (int train = 0; train < 2; train++)
        for (int fused = 0; fused < 2; fused++)
            for (int bf = 0; bf < 2; bf++) {
                ag_ctx ctx;
                ag_ctx_init(&ctx, 0);
                ctx.run.grad_enabled = true;
                ctx.run.training = train;
                ctx.run.elementwise_bf16 = bf;
                float rm[C], rv[C], gg[C] = {0}, gb[C] = {0};
                memcpy(rm, rm0, sizeof rm), memcpy(rv, rv0, sizeof rv);
                float *gx = calloc(N, sizeof(float)), *gres = calloc(N, sizeof(float));
                int64_t shape[4] = {2, 9, 11, C}, cs[1] = {C};
                ag_var xv = ag_leaf(x, gx, 4, shape), rv_ = ag_leaf(res, gres, 4, shape), gv = ag_leaf(g, gg, 1, cs),
                       bv = ag_leaf(b, gb, 1, cs);
                xv.requires_grad = rv_.requires_grad = gv.requires_grad = bv.requires_grad = true;
                ag_var *y = ag_batchnorm2d_act(&ctx, &xv, &gv, &bv, rm, rv, 0.1f, 1e-5f, fused ? &rv_ : NULL, fused);
                ag_backward_from(&ctx, y, dy);
                /* GPU */
                memcpy(hc, g, sizeof g), memcpy(hc + C, b, sizeof b), memcpy(hc + 2 * C, rm0, sizeof rm0);
                memcpy(hc + 3 * C, rv0, sizeof rv0);
                memset(hc + 4 * C, 0, sizeof(float) * 4 * C);
                cu_to_device(dc, hc, sizeof hc);
                cu_memset(dgx, 0, sizeof(float) * 2 * N);
                cu_bn_args a = {ROWS, C, 0.1f, 1e-5f, (bool)train, (bool)fused, (bool)bf, false, NULL};
                cu_op_batchnorm(&a, dxd, dc, dc + C, fused ? dres : NULL, dc + 2 * C, dc + 3 * C, dy_out, dc + 4 * C,
                                dc + 5 * C, work);
                cu_op_batchnorm_backward(&a, dxd, dc, dy_out, dc + 4 * C, dc + 5 * C, ddy, dgx, dc + 6 * C, dc + 7 * C,
                                         fused ? dgr : NULL, work);
                cu_to_host(h, dy_out, sizeof(float) * N);
                double ey = rel_err(h, y->value.data, N, 1e-6);
                cu_to_host(h, dgx, sizeof(float) * N);
                double edx = rel_err(h, gx, N, 1e-6);
                cu_to_host(hc, dc, sizeof hc);
                double erun = fmax(rel_err(hc + 2 * C, rm, C, 1e-6), rel_err(hc + 3 * C, rv, C, 1e-6));
                double egb = fmax(rel_err(hc + 6 * C, gg, C, 1e-6), rel_err(hc + 7 * C, gb, C, 1e-6));
                double eres = 0;
                if (fused) {
                    cu_to_host(h, dgr, sizeof(float) * N);
                    eres = rel_err(h, gres, N, 1e-6);
                }
                fprintf(stderr, "batchnorm %s%s%s: y %.2g, running %.2g, dx %.2g, dgamma/dbeta %.2g, dres %.2g\n",
                        train ? "train" : "eval", fused ? " +res+relu" : "", bf ? " bf16" : "", ey, erun, edx, egb, eres);
                ck_assert_msg(ey <= 1e-5 && erun <= 1e-5 && edx <= 1e-5 && egb <= 1e-5 && eres <= 1e-5,
                              "batchnorm (train %d fused %d bf16 %d) differs", train, fused, bf);
                cases++;
                free(gx), free(gres);
                ag_ctx_free(&ctx);
            }
    cu_free(work);
    cu_free(dc);
    free(x), free(res), free(dy), free(h);
    ck_assert_int_eq(cases, 8);
}
END_TEST

/* maxpool (3x3/2 pad 1: overlapping windows; 2x2/2) and global average
 * pooling against the CPU ops, forward and backward. */
START_TEST(test_pooling_matches_cpu) {
    enum { B = 3, H = 13, W = 11, C = 16, N = B * H * W * C };
    rng r;
    rng_init(&r, 5, 5);
    float *x = malloc(sizeof(float) * N), *dx0 = malloc(sizeof(float) * N), *h = malloc(sizeof(float) * N);
    for (int i = 0; i < N; i++) x[i] = (float)(int)(rng_below(&r, 9)) - 4.0f, dx0[i] = rng_normal(&r); /* ties */
    float *dxd = dev_buf(0, sizeof(float) * N), *dgx = dev_buf(1, sizeof(float) * N), *dyo = dev_buf(2, sizeof(float) * N),
          *ddy = dev_buf(3, sizeof(float) * N);
    int32_t *darg = dev_buf(4, sizeof(int32_t) * N);
    cu_to_device(dxd, x, sizeof(float) * N);
    static const int geo[3][3] = {{3, 2, 1}, {2, 2, 0}, {0, 0, 0}}; /* k, stride, pad; last: global average */
    for (int t = 0; t < 3; t++) {
        ag_ctx ctx;
        ag_ctx_init(&ctx, 0);
        ctx.run.grad_enabled = ctx.run.training = true;
        float *gx = malloc(sizeof(float) * N);
        memcpy(gx, dx0, sizeof(float) * N);
        int64_t shape[4] = {B, H, W, C};
        ag_var xv = ag_leaf(x, gx, 4, shape);
        xv.requires_grad = true;
        ag_var *y = t < 2 ? ag_maxpool2d(&ctx, &xv, geo[t][0], geo[t][1], geo[t][2]) : ag_avgpool_global(&ctx, &xv);
        int64_t ny = ag_numel(y);
        float *dy = malloc(sizeof(float) * ny);
        for (int64_t i = 0; i < ny; i++) dy[i] = rng_normal(&r);
        ag_backward_from(&ctx, y, dy);
        cu_to_device(ddy, dy, sizeof(float) * ny);
        cu_to_device(dgx, dx0, sizeof(float) * N);
        if (t < 2) {
            cu_op_maxpool(B, H, W, C, geo[t][0], geo[t][1], geo[t][2], dxd, dyo, darg);
            cu_op_maxpool_backward(B, H, W, C, geo[t][0], geo[t][1], geo[t][2], darg, ddy, dgx);
        } else {
            cu_op_avgpool_global(B, H * W, C, dxd, dyo);
            cu_op_avgpool_global_backward(B, H * W, C, ddy, dgx);
        }
        cu_to_host(h, dyo, sizeof(float) * ny);
        ck_assert_msg(memcmp(h, y->value.data, sizeof(float) * ny) == 0, "pool %d forward differs", t);
        cu_to_host(h, dgx, sizeof(float) * N);
        ck_assert_msg(memcmp(h, gx, sizeof(float) * N) == 0, "pool %d backward differs", t);
        free(gx);
        free(dy);
        ag_ctx_free(&ctx);
    }
    fprintf(stderr, "pooling: maxpool 3x3/2, 2x2/2 and global average bit-identical to the CPU\n");
    free(x), free(dx0), free(h);
}
END_TEST

/* permute (every order of a 4-D tensor), concat (plain and with a broadcast
 * first operand, the ViT's cls token) and slice against the CPU ops. */
START_TEST(test_shape_ops_match_cpu) {
    enum { A = 3, B = 5, C = 4, D = 7, N = A * B * C * D };
    rng r;
    rng_init(&r, 8, 8);
    float *x = malloc(sizeof(float) * N), *x2 = malloc(sizeof(float) * N), *dx0 = malloc(sizeof(float) * N),
          *dy = malloc(sizeof(float) * 2 * N), *h = malloc(sizeof(float) * 2 * N);
    for (int i = 0; i < N; i++) x[i] = rng_normal(&r), x2[i] = rng_normal(&r), dx0[i] = rng_normal(&r);
    for (int i = 0; i < 2 * N; i++) dy[i] = rng_normal(&r);
    float *dxd = dev_buf(0, sizeof(float) * N), *dx2 = dev_buf(1, sizeof(float) * N), *dyo = dev_buf(2, sizeof(float) * 2 * N),
          *ddy = dev_buf(3, sizeof(float) * 2 * N), *dga = dev_buf(4, sizeof(float) * 2 * N);
    float *dgb = dga + N;
    cu_to_device(dxd, x, sizeof(float) * N);
    cu_to_device(dx2, x2, sizeof(float) * N);
    cu_to_device(ddy, dy, sizeof(float) * 2 * N);
    int64_t shape[4] = {A, B, C, D};
    int checked = 0;
    /* every permutation of 4 axes */
    int perm[4] = {0, 1, 2, 3};
    for (int p = 0; p < 24; p++) {
        int rest[4] = {0, 1, 2, 3}, q = p;
        for (int i = 0; i < 4; i++) { /* the p-th permutation (factorial base) */
            int f = 1;
            for (int k = 1; k < 4 - i; k++) f *= k;
            int idx = q / f;
            q %= f;
            perm[i] = rest[idx];
            for (int k = idx; k < 3 - i; k++) rest[k] = rest[k + 1];
        }
        ag_ctx ctx;
        ag_ctx_init(&ctx, 0);
        ctx.run.grad_enabled = true;
        float *gx = malloc(sizeof(float) * N);
        memcpy(gx, dx0, sizeof(float) * N);
        ag_var xv = ag_leaf(x, gx, 4, shape);
        xv.requires_grad = true;
        ag_var *y = ag_permute(&ctx, &xv, perm);
        ag_backward_from(&ctx, y, dy);
        int64_t os[4], is[4];
        ag_permute_plan(&xv.value, perm, false, os, is);
        cu_op_strided(os, is, dxd, dyo, false);
        tensor gy = tensor_view(ddy, 4, y->value.shape);
        ag_permute_plan(&gy, perm, true, os, is);
        cu_to_device(dga, dx0, sizeof(float) * N);
        cu_op_strided(os, is, ddy, dga, true);
        cu_to_host(h, dyo, sizeof(float) * N);
        ck_assert_msg(memcmp(h, y->value.data, sizeof(float) * N) == 0, "permute %d%d%d%d forward", perm[0], perm[1],
                      perm[2], perm[3]);
        cu_to_host(h, dga, sizeof(float) * N);
        ck_assert_msg(memcmp(h, gx, sizeof(float) * N) == 0, "permute %d%d%d%d backward", perm[0], perm[1], perm[2],
                      perm[3]);
        checked++;
        free(gx);
        ag_ctx_free(&ctx);
    }
    /* concat along axis 1, plain and with a broadcast [1, 1, C*D] first operand */
    for (int bc = 0; bc < 2; bc++) {
        ag_ctx ctx;
        ag_ctx_init(&ctx, 0);
        ctx.run.grad_enabled = true;
        float *ga = calloc(N, sizeof(float)), *gb = calloc(N, sizeof(float));
        int64_t sa[3] = {bc ? 1 : A, bc ? 1 : B, C * D}, sb[3] = {A, B, C * D};
        ag_var av = ag_leaf(x, ga, 3, sa), bv = ag_leaf(x2, gb, 3, sb);
        av.requires_grad = bv.requires_grad = true;
        ag_var *y = ag_concat(&ctx, &av, &bv, 1);
        ag_backward_from(&ctx, y, dy);
        int64_t outer = A, pa = sa[1] * C * D, pb = B * C * D, a_outer = bc ? 1 : A;
        cu_op_concat(outer, pa, pb, a_outer, dxd, dx2, dyo);
        cu_memset(dga, 0, sizeof(float) * 2 * N);
        cu_op_concat_backward(outer, pa, pb, a_outer, ddy, dga, dgb);
        int64_t ny = ag_numel(y);
        cu_to_host(h, dyo, sizeof(float) * ny);
        ck_assert_msg(memcmp(h, y->value.data, sizeof(float) * ny) == 0, "concat %d forward", bc);
        cu_to_host(h, dga, sizeof(float) * 2 * N);
        ck_assert_msg(memcmp(h, ga, sizeof(float) * (size_t)ag_numel(&av)) == 0, "concat %d da", bc);
        ck_assert_msg(memcmp(h + N, gb, sizeof(float) * N) == 0, "concat %d db", bc);
        checked++;
        free(ga), free(gb);
        ag_ctx_free(&ctx);
    }
    /* slice along each axis */
    for (int axis = 0; axis < 4; axis++) {
        ag_ctx ctx;
        ag_ctx_init(&ctx, 0);
        ctx.run.grad_enabled = true;
        float *gx = malloc(sizeof(float) * N);
        memcpy(gx, dx0, sizeof(float) * N);
        ag_var xv = ag_leaf(x, gx, 4, shape);
        xv.requires_grad = true;
        int64_t start = 1, len = shape[axis] - 2;
        ag_var *y = ag_slice(&ctx, &xv, axis, start, len);
        ag_backward_from(&ctx, y, dy);
        int64_t outer = 1, inner = 1;
        for (int i = 0; i < axis; i++) outer *= shape[i];
        for (int i = axis + 1; i < 4; i++) inner *= shape[i];
        cu_op_slice(outer, shape[axis], start, len, inner, dxd, dyo);
        cu_to_device(dga, dx0, sizeof(float) * N);
        cu_op_slice_backward(outer, shape[axis], start, len, inner, ddy, dga);
        int64_t ny = ag_numel(y);
        cu_to_host(h, dyo, sizeof(float) * ny);
        ck_assert_msg(memcmp(h, y->value.data, sizeof(float) * ny) == 0, "slice axis %d forward", axis);
        cu_to_host(h, dga, sizeof(float) * N);
        ck_assert_msg(memcmp(h, gx, sizeof(float) * N) == 0, "slice axis %d backward", axis);
        checked++;
        free(gx);
        ag_ctx_free(&ctx);
    }
    fprintf(stderr, "shape ops: %d cases (24 permutations, 2 concats, 4 slices) bit-identical to the CPU\n", checked);
    free(x), free(x2), free(dx0), free(dy), free(h);
}
END_TEST


/* ---------------- GEMMs ---------------- */

static float quant_from_bits_t(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint16_t bf16_bits(float v) { return (uint16_t)(bits_of(v) >> 16); }

/* cuBLASLt products against the CPU's sgemm: bf16 operands (exact values, so
 * each product is exact and only the FP32 summation order differs) and
 * float32 ones (no TF32: relative error of FP32 sums only), every transpose,
 * batched, beta 0 and 1, odd sizes. */
START_TEST(test_gemm_matches_cpu) {
    mx_err err;
    ck_assert_msg(cu_gemm_open(&err) == 0, "%s", err.msg);
    static const int shapes[][4] = {{1, 1, 1, 1}, {7, 5, 3, 1}, {64, 48, 96, 1}, {33, 17, 129, 3}, {129, 65, 257, 2},
                                    {256, 384, 512, 1}};
    int checked = 0;
    double worst = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int combo = 0; combo < 4; combo++)
            for (int type = 0; type < 2; type++)
                for (int acc = 0; acc < 2; acc++) {
                    int m = shapes[si][0], n = shapes[si][1], k = shapes[si][2], batch = shapes[si][3];
                    bool ta = combo & 1, tb = combo & 2, bf = type == 0;
                    size_t na = (size_t)m * k, nb = (size_t)k * n, nc = (size_t)m * n;
                    float *a = malloc(sizeof(float) * na * batch), *b = malloc(sizeof(float) * nb * batch),
                          *c = malloc(sizeof(float) * nc * batch), *ref = malloc(sizeof(float) * nc * batch),
                          *bound = malloc(sizeof(float) * nc * batch), *got = malloc(sizeof(float) * nc * batch);
                    float *aa = malloc(sizeof(float) * na * batch), *ab = malloc(sizeof(float) * nb * batch);
                    rng r;
                    rng_init(&r, 40 + si, (uint64_t)(combo * 4 + type * 2 + acc));
                    for (size_t i = 0; i < na * batch; i++) a[i] = rng_normal(&r) * ldexpf(1.0f, (int)(i % 7) - 3);
                    for (size_t i = 0; i < nb * batch; i++) b[i] = rng_normal(&r);
                    for (size_t i = 0; i < nc * batch; i++) c[i] = acc ? rng_normal(&r) : 0.0f;
                    if (bf) { /* values bf16 holds exactly */
                        for (size_t i = 0; i < na * batch; i++) a[i] = quant_from_bits_t((uint32_t)bf16_bits(a[i]) << 16);
                        for (size_t i = 0; i < nb * batch; i++) b[i] = quant_from_bits_t((uint32_t)bf16_bits(b[i]) << 16);
                    }
                    for (size_t i = 0; i < na * batch; i++) aa[i] = fabsf(a[i]);
                    for (size_t i = 0; i < nb * batch; i++) ab[i] = fabsf(b[i]);
                    int lda = ta ? m : k, ldb = tb ? k : n;
                    for (int q = 0; q < batch; q++) {
                        memcpy(ref + q * nc, c + q * nc, sizeof(float) * nc);
                        gemm_f32(ta, tb, m, n, k, 1.0f, a + q * na, lda, b + q * nb, ldb, acc ? 1.0f : 0.0f,
                                 ref + q * nc, n);
                        gemm_f32(ta, tb, m, n, k, 1.0f, aa + q * na, lda, ab + q * nb, ldb, 0.0f, bound + q * nc, n);
                    }
                    size_t es = bf ? 2 : 4;
                    void *da = dev_buf(0, es * na * batch), *db = dev_buf(1, es * nb * batch);
                    float *dc = dev_buf(2, sizeof(float) * nc * batch);
                    if (bf) {
                        uint16_t *ha = malloc(2 * na * batch), *hb = malloc(2 * nb * batch);
                        for (size_t i = 0; i < na * batch; i++) ha[i] = bf16_bits(a[i]);
                        for (size_t i = 0; i < nb * batch; i++) hb[i] = bf16_bits(b[i]);
                        cu_to_device(da, ha, 2 * na * batch);
                        cu_to_device(db, hb, 2 * nb * batch);
                        free(ha), free(hb);
                    } else {
                        cu_to_device(da, a, 4 * na * batch);
                        cu_to_device(db, b, 4 * nb * batch);
                    }
                    cu_to_device(dc, c, sizeof(float) * nc * batch);
                    cu_gemm_desc d = {m, n, k, ta, tb, bf ? CU_GEMM_BF16 : CU_GEMM_F32, batch, (int64_t)na,
                                      (int64_t)nb, (int64_t)nc, 1.0f, acc ? 1.0f : 0.0f};
                    cu_gemm(&d, da, db, dc);
                    cu_to_host(got, dc, sizeof(float) * nc * batch);
                    int bad = 0;
                    for (size_t i = 0; i < nc * batch; i++) {
                        double tol = 1e-5 * ((double)bound[i] + (acc ? fabs((double)c[i]) : 0.0)) + 1e-30;
                        double e = fabs((double)got[i] - (double)ref[i]) / tol;
                        worst = e > worst ? e : worst;
                        bad += e > 1.0;
                    }
                    ck_assert_msg(bad == 0, "%dx%dx%d batch %d trans %d%d %s beta %d: %d of %zu beyond 1e-5", m, n, k,
                                  batch, ta, tb, bf ? "bf16" : "fp32", acc, bad, nc * batch);
                    checked++;
                    free(a), free(b), free(c), free(ref), free(bound), free(got), free(aa), free(ab);
                }
    fprintf(stderr, "GEMMs: %d products equal the CPU's within FP32 summation (worst %.3f of the 1e-5 bound)\n",
            checked, worst);
}
END_TEST


/* NCCL's code path on one GPU (one rank: the sums are copies, so every result
 * must keep its bits): a float sum whose length the rank count would not
 * divide on several ranks, in place, on the sums' own stream, then joined and
 * awaited; and BatchNorm with synced statistics (train.sync_bn: the sums and
 * the row count go through NCCL between the kernels) against the unsynced
 * kernels. Where NCCL cannot be loaded the test fails: the device has it. */
START_TEST(test_nccl_one_rank) {
    mx_err err = {0};
    unsigned char id[CU_NCCL_ID_BYTES];
    ck_assert_msg(cu_nccl_unique_id(id, &err) == 0, "%s", err.msg);
    ck_assert_msg(cu_nccl_open(id, 0, 1, 60, &err) == 0, "%s", err.msg);
    fprintf(stderr, "nccl: %s\n", cu_nccl_library());
    enum { N = 1000003 };
    float *x = random_tensor(N, 9), *h = malloc(sizeof(float) * N);
    float *dx = dev_buf(0, sizeof(float) * N);
    cu_to_device(dx, x, sizeof(float) * N);
    cu_nccl_sum_start(dx, N);
    cu_nccl_sum_start(dx + 17, 5); /* a second, overlapping one, queued after the first */
    cu_nccl_sum_join();
    ck_assert_msg(cu_nccl_wait(&err) == 0, "%s", err.msg);
    cu_to_host(h, dx, sizeof(float) * N);
    expect_same(h, x, N, "a sum over one rank");
    double d[7] = {1, -2.5, 3e300, 4, 5, 6, 7}, dh[7];
    double *dd = dev_buf(1, sizeof d);
    cu_to_device(dd, d, sizeof d);
    cu_nccl_sum_f64(dd, 7);
    cu_to_host(dh, dd, sizeof d);
    ck_assert_msg(memcmp(d, dh, sizeof d) == 0, "a double sum over one rank changed its values");

    enum { ROWS = 3 * 7 * 5, C = 24, NB = ROWS * C };
    float *bx = random_tensor(NB, 10), *bdy = random_tensor(NB, 11), *bres = random_tensor(NB, 12);
    float params[4 * C];
    for (int j = 0; j < C; j++) params[j] = 1.0f + 0.01f * (float)j, params[C + j] = 0.1f * (float)j,
                                params[2 * C + j] = 0.0f, params[3 * C + j] = 1.0f;
    float *out[2][6];
    for (int synced = 0; synced < 2; synced++) {
        float *b = dev_buf(2, sizeof(float) * (size_t)(4 * NB + 8 * C));
        float *dxb = b, *dy = b + NB, *res = b + 2 * NB, *y = b + 3 * NB, *pc = b + 4 * NB; /* g, beta, rm, rv, mean, invstd, dg, db */
        float *ddx = dev_buf(3, sizeof(float) * 2 * NB), *dres = ddx + NB;
        double *work = dev_buf(4, cu_bn_work_bytes(ROWS, C)), *rows_all = dev_buf(5, sizeof(double));
        cu_to_device(dxb, bx, sizeof(float) * NB), cu_to_device(dy, bdy, sizeof(float) * NB);
        cu_to_device(res, bres, sizeof(float) * NB), cu_to_device(pc, params, sizeof params);
        cu_memset(pc + 4 * C, 0, sizeof(float) * 4 * C), cu_memset(ddx, 0, sizeof(float) * 2 * NB);
        cu_bn_args a = {ROWS, C, 0.1f, 1e-5f, true, true, false, synced == 1, synced ? rows_all : NULL};
        cu_op_batchnorm(&a, dxb, pc, pc + C, res, pc + 2 * C, pc + 3 * C, y, pc + 4 * C, pc + 5 * C, work);
        cu_op_batchnorm_backward(&a, dxb, pc, y, pc + 4 * C, pc + 5 * C, dy, ddx, pc + 6 * C, pc + 7 * C, dres, work);
        float *ptrs[6] = {y, ddx, dres, pc + 2 * C, pc + 6 * C, pc + 7 * C};
        int64_t lens[6] = {NB, NB, NB, 2 * C, C, C};
        for (int k = 0; k < 6; k++) {
            out[synced][k] = malloc(sizeof(float) * (size_t)lens[k]);
            cu_to_host(out[synced][k], ptrs[k], sizeof(float) * (size_t)lens[k]);
        }
        if (synced) {
            double r;
            cu_to_host(&r, rows_all, sizeof r);
            ck_assert_msg(r == ROWS, "synced batchnorm saved %g rows, want %d", r, ROWS);
        }
    }
    static const char *const what[6] = {"y", "dx", "dres", "running stats", "dgamma", "dbeta"};
    int64_t lens[6] = {NB, NB, NB, 2 * C, C, C};
    for (int k = 0; k < 6; k++) {
        expect_same(out[1][k], out[0][k], lens[k], what[k]);
        free(out[0][k]), free(out[1][k]);
    }
    cu_nccl_close();
    ck_assert(!cu_nccl_is_open());
    free(x), free(h), free(bx), free(bdy), free(bres);
}
END_TEST

int main(void) {
    if (!cu_available()) {
        printf("test_cuda: no GPU is visible: skipped (runs on the accelerator machine)\n");
        return 77;
    }
    mx_err err;
    if (cu_init(&err)) {
        fprintf(stderr, "test_cuda: %s\n", err.msg);
        return 1;
    }
    /* CUDA does not survive fork(): the tests run in this process */
    setenv("CK_FORK", "no", 1);
    Suite *s = suite_create("cuda");
    TCase *tc = tcase_create("quant");
    tcase_add_test(tc, test_golden_on_gpu);
    tcase_add_test(tc, test_every_spec_matches_cpu);
    tcase_add_test(tc, test_edge_tensors);
    tcase_add_test(tc, test_bf16_inexact_blocks_are_counted);
    tcase_add_test(tc, test_huge_tensor);
    tcase_add_test(tc, test_device_arena);
    tcase_add_test(tc, test_gemm_matches_cpu);
    tcase_add_test(tc, test_ops_match_cpu);
    tcase_add_test(tc, test_norm_loss_optim_match_cpu);
    tcase_add_test(tc, test_batchnorm_matches_cpu);
    tcase_add_test(tc, test_pooling_matches_cpu);
    tcase_add_test(tc, test_shape_ops_match_cpu);
    tcase_add_test(tc, test_nccl_one_rank);
    tcase_set_timeout(tc, 600);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
