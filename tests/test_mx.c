/* MX through the GEMM path: each tiling quantizes exactly the operands, along
 * exactly the axes, that docs/quantization.md says; counters; statistics;
 * per-layer overrides; tiny models train under every format and tiling. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "core/gemm.h"
#include "core/rng.h"
#include "layers/model.h"
#include "test_util.h"

static float *randn(int64_t n, uint64_t seed, float scale) {
    float *x = malloc(sizeof(float) * (size_t)n);
    rng r;
    rng_init(&r, seed, 0);
    for (int64_t i = 0; i < n; i++) x[i] = scale * rng_normal(&r) * (1.0f + (float)(i % 7));
    return x;
}

/* Fake-quantized copy of a [rows, cols] matrix with the policy's settings. */
static float *q2(const mm_policy *p, quant_format f, const float *x, int64_t rows, int64_t cols, int axis) {
    quant_spec s = quant_spec_default(f);
    s.scale = p->scale;
    mm_policy_layout(p, f, &s);
    if (p->tiling != MM_TILING_2D) s.axis = axis;
    int64_t shape[2] = {rows, cols};
    float *y = malloc(sizeof(float) * (size_t)(rows * cols));
    quant_fake(&s, x, y, 2, shape, NULL, NULL);
    return y;
}

static void expect_bitwise(const float *got, const float *want, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(memcmp(&got[i], &want[i], 4) == 0, "%s[%lld]: %a vs %a", what, (long long)i, (double)got[i],
                      (double)want[i]);
}

enum { M = 16, K = 40, N = 24 };

/* A standalone site and, for a policy, the plan resolved for it. */
typedef struct one_site {
    mm_sites sites;
    mm_site site;
    mm_plan plan;
    bool has_plan;
} one_site;

static void one_site_open(one_site *o, ag_ctx *ctx, const mm_policy *p, const char *name, mm_b_role role) {
    memset(o, 0, sizeof *o);
    mm_site_declare(&o->sites, &o->site, name, role);
    o->has_plan = p != NULL;
    if (p) mm_plan_init(&o->plan, p, &o->sites);
    ctx->run.mm = p ? &o->plan : NULL;
}

static void one_site_close(one_site *o) {
    if (o->has_plan) mm_plan_free(&o->plan);
    mm_sites_free(&o->sites);
}

/* What run_linear reports besides the products. */
typedef struct run_info {
    int64_t passes, bytes_held;
    quant_stats stats[MM_ROLE_COUNT];
} run_info;

/* Runs a linear layer Y = X W^T under the policy (statistics collected); returns passes. */
static int64_t run_linear_info(const mm_policy *p, const float *x, const float *w, const float *dy, float *y,
                               float *dx, float *dw, run_info *info) {
    ag_ctx ctx;
    ag_ctx_init(&ctx, 0);
    one_site os;
    one_site_open(&os, &ctx, p, "lin", MM_B_WEIGHT);
    if (p) os.plan.collect_stats = true;
    float *xd = malloc(sizeof(float) * M * K), *wd = malloc(sizeof(float) * N * K);
    memcpy(xd, x, sizeof(float) * M * K);
    memcpy(wd, w, sizeof(float) * N * K);
    memset(dx, 0, sizeof(float) * M * K);
    memset(dw, 0, sizeof(float) * N * K);
    ag_var vx = ag_leaf(xd, dx, 2, (int64_t[]){M, K}), vw = ag_leaf(wd, dw, 2, (int64_t[]){N, K});
    ag_var *out = ag_linear(&ctx, &os.site, &vx, &vw, NULL);
    memcpy(y, out->value.data, sizeof(float) * M * N);
    ag_backward_from(&ctx, out, dy);
    run_info r = {0};
    if (p) {
        r.passes = os.plan.passes;
        r.bytes_held = os.plan.bytes_held;
        memcpy(r.stats, os.plan.stats[0], sizeof r.stats);
    }
    if (info) *info = r;
    one_site_close(&os);
    ag_ctx_free(&ctx);
    free(xd);
    free(wd);
    return r.passes;
}

static int64_t run_linear(const mm_policy *p, const float *x, const float *w, const float *dy, float *y, float *dx,
                          float *dw) {
    return run_linear_info(p, x, w, dy, y, dx, dw, NULL);
}

START_TEST(test_2d_reuses_forward_copies) {
    float *x = randn(M * K, 1, 1.0f), *w = randn(N * K, 2, 0.1f), *dy = randn(M * N, 3, 1e-3f);
    float y[M * N], dx[M * K], dw[N * K];
    mm_policy p;
    mm_policy_init(&p, QUANT_FORMAT_MXSF);
    p.tiling = MM_TILING_2D;
    ck_assert_int_eq(run_linear(&p, x, w, dy, y, dx, dw), 3); /* X, W, dY: once each */
    float *xq = q2(&p, QUANT_FORMAT_MXSF, x, M, K, 0), *wq = q2(&p, QUANT_FORMAT_MXSF, w, N, K, 0),
          *dyq = q2(&p, QUANT_FORMAT_MXSF, dy, M, N, 0);
    float ry[M * N], rdx[M * K] = {0}, rdw[N * K] = {0};
    gemm_f32(false, true, M, N, K, 1.0f, xq, K, wq, K, 0.0f, ry, N);
    gemm_f32(false, false, M, K, N, 1.0f, dyq, N, wq, K, 1.0f, rdx, K); /* dX = dYq Wq: the forward's Wq */
    gemm_f32(true, false, N, K, M, 1.0f, dyq, N, xq, K, 1.0f, rdw, K);  /* dW = dYq^T Xq: the forward's Xq */
    expect_bitwise(y, ry, M * N, "y");
    expect_bitwise(dx, rdx, M * K, "dx");
    expect_bitwise(dw, rdw, N * K, "dw");
    /* held for backward: X packed (1 byte + scale per tile) and Wq as float */
    run_info info;
    run_linear_info(&p, x, w, dy, y, dx, dw, &info);
    ck_assert_int_eq(info.bytes_held, M * K + (M / 8) * (K / 8) + 4 * N * K);
    free(x); free(w); free(dy); free(xq); free(wq); free(dyq);
}
END_TEST

static void check_1d(mm_tiling tiling) {
    float *x = randn(M * K, 4, 1.0f), *w = randn(N * K, 5, 0.1f), *dy = randn(M * N, 6, 1e-3f);
    float y[M * N], dx[M * K], dw[N * K];
    mm_policy p;
    mm_policy_init(&p, QUANT_FORMAT_MXFP8_E4M3);
    p.tiling = tiling;
    p.block = 8;
    p.role_format[MM_ROLE_BWD_GRAD_DX] = p.role_format[MM_ROLE_BWD_GRAD_DW] = QUANT_FORMAT_MXFP8_E5M2;
    ck_assert_int_eq(run_linear(&p, x, w, dy, y, dx, dw), 6);
    /* forward: both operands blocked along K (the last axis of X [M,K] and W [N,K]) */
    float *xk = q2(&p, QUANT_FORMAT_MXFP8_E4M3, x, M, K, -1), *wk = q2(&p, QUANT_FORMAT_MXFP8_E4M3, w, N, K, -1);
    /* backward sources: full precision (1d) or the forward copies (1d_requant) */
    const float *xs = tiling == MM_TILING_1D ? x : xk, *ws = tiling == MM_TILING_1D ? w : wk;
    float *dy_n = q2(&p, QUANT_FORMAT_MXFP8_E5M2, dy, M, N, -1), *w_n = q2(&p, QUANT_FORMAT_MXFP8_E4M3, ws, N, K, 0);
    float *dy_m = q2(&p, QUANT_FORMAT_MXFP8_E5M2, dy, M, N, 0), *x_m = q2(&p, QUANT_FORMAT_MXFP8_E4M3, xs, M, K, 0);
    float ry[M * N], rdx[M * K] = {0}, rdw[N * K] = {0};
    gemm_f32(false, true, M, N, K, 1.0f, xk, K, wk, K, 0.0f, ry, N);
    gemm_f32(false, false, M, K, N, 1.0f, dy_n, N, w_n, K, 1.0f, rdx, K); /* reduces over N */
    gemm_f32(true, false, N, K, M, 1.0f, dy_m, N, x_m, K, 1.0f, rdw, K);  /* reduces over M */
    expect_bitwise(y, ry, M * N, "y");
    expect_bitwise(dx, rdx, M * K, "dx");
    expect_bitwise(dw, rdw, N * K, "dw");
    free(x); free(w); free(dy); free(xk); free(wk); free(dy_n); free(w_n); free(dy_m); free(x_m);
}

START_TEST(test_1d_requantizes_along_reduction_axes) { check_1d(MM_TILING_1D); }
END_TEST

START_TEST(test_1d_requant_uses_forward_copies) { check_1d(MM_TILING_1D_REQUANT); }
END_TEST

START_TEST(test_fp32_policy_is_exact) {
    float *x = randn(M * K, 7, 1.0f), *w = randn(N * K, 8, 0.1f), *dy = randn(M * N, 9, 1e-3f);
    float y1[M * N], dx1[M * K], dw1[N * K], y2[M * N], dx2[M * K], dw2[N * K];
    mm_policy p;
    mm_policy_init(&p, QUANT_FORMAT_FP32);
    for (int t = 0; t < MM_TILING_COUNT; t++) {
        p.tiling = (mm_tiling)t;
        ck_assert_int_eq(run_linear(&p, x, w, dy, y1, dx1, dw1), 0);
        run_linear(NULL, x, w, dy, y2, dx2, dw2);
        expect_bitwise(y1, y2, M * N, "y");
        expect_bitwise(dx1, dx2, M * K, "dx");
        expect_bitwise(dw1, dw2, N * K, "dw");
    }
    free(x); free(w); free(dy);
}
END_TEST

START_TEST(test_stats_and_keep_rules) {
    float *x = randn(M * K, 10, 1.0f), *w = randn(N * K, 11, 0.1f), *dy = randn(M * N, 12, 1e-6f);
    float y[M * N], dx[M * K], dw[N * K];
    mm_policy p;
    mm_policy_init(&p, QUANT_FORMAT_BOOST);
    run_info info;
    run_linear_info(&p, x, w, dy, y, dx, dw, &info);
    for (int r = 0; r < MM_ROLE_COUNT; r++) /* every role, with its operand's size */
        ck_assert_int_eq(info.stats[r].elements, r == MM_ROLE_FWD_ACT || r == MM_ROLE_BWD_ACT_DW          ? M * K
                                                 : r == MM_ROLE_FWD_WEIGHT || r == MM_ROLE_BWD_WEIGHT_DX ? N * K
                                                                                                        : M * N);
    /* fwd_act statistics equal a direct quantization of X */
    quant_spec s = quant_spec_default(QUANT_FORMAT_BOOST);
    quant_stats direct;
    float *tmp = malloc(sizeof(float) * M * K);
    quant_fake(&s, x, tmp, 2, (int64_t[]){M, K}, NULL, &direct);
    const quant_stats *st = &info.stats[MM_ROLE_FWD_ACT];
    ck_assert_int_eq(st->elements, direct.elements);
    ck_assert_int_eq(st->underflow, direct.underflow);
    ck_assert_int_eq(st->nonzero, direct.nonzero);
    for (int g = 0; g < QUANT_GAP_BINS; g++) ck_assert_int_eq(st->gap_hist[g], direct.gap_hist[g]);
    /* keep rules: by name, with wildcards, covering sub-products */
    mm_policy_init(&p, QUANT_FORMAT_MXFP4_E2M1);
    mx_err err;
    ck_assert_int_eq(mm_policy_add_keep(&p, "conv1", QUANT_FORMAT_BF16, &err), 0);
    ck_assert_int_eq(mm_policy_add_keep(&p, "blocks.*.attn.qkv", QUANT_FORMAT_MXFP8_E4M3, &err), 0);
    ck_assert_int_eq(mm_policy_add_keep(&p, "head", QUANT_FORMAT_FP32, &err), 0);
    ck_assert_int_eq(mm_policy_format(&p, "conv1", MM_ROLE_FWD_ACT), QUANT_FORMAT_BF16);
    ck_assert_int_eq(mm_policy_format(&p, "layer1.0.conv1", MM_ROLE_FWD_ACT), QUANT_FORMAT_MXFP4_E2M1);
    ck_assert_int_eq(mm_policy_format(&p, "blocks.11.attn.qkv", MM_ROLE_BWD_GRAD_DW), QUANT_FORMAT_MXFP8_E4M3);
    ck_assert_int_eq(mm_policy_format(&p, "blocks.11.attn.proj", MM_ROLE_BWD_GRAD_DW), QUANT_FORMAT_MXFP4_E2M1);
    /* a kept layer really runs in its format: fp32 "lin" gives the exact product */
    ck_assert_int_eq(mm_policy_add_keep(&p, "lin", QUANT_FORMAT_FP32, &err), 0);
    float y2[M * N], dx2[M * K], dw2[N * K];
    ck_assert_int_eq(run_linear(&p, x, w, dy, y, dx, dw), 0);
    run_linear(NULL, x, w, dy, y2, dx2, dw2);
    expect_bitwise(y, y2, M * N, "kept y");
    free(x); free(w); free(dy); free(tmp);
}
END_TEST

/* Batched products with B stored [K, N] (attention's P V): 1d blocks along K
 * are rows of B in the forward, along N for dA, along M for dB. */
START_TEST(test_batched_matmul_1d_axes) {
    enum { BB = 3, MM = 8, KK = 16, NN = 24 };
    float *a = randn(BB * MM * KK, 21, 1.0f), *b = randn(BB * KK * NN, 22, 0.3f), *dy = randn(BB * MM * NN, 23, 1e-2f);
    mm_policy p;
    mm_policy_init(&p, QUANT_FORMAT_MXFP8_E4M3);
    p.block = 8;
    ag_ctx ctx;
    ag_ctx_init(&ctx, 0);
    one_site os;
    one_site_open(&os, &ctx, &p, "pv", MM_B_ACT);
    float *da = calloc(BB * MM * KK, sizeof(float)), *db = calloc(BB * KK * NN, sizeof(float));
    ag_var va = ag_leaf(a, da, 3, (int64_t[]){BB, MM, KK}), vb = ag_leaf(b, db, 3, (int64_t[]){BB, KK, NN});
    ag_var *y = ag_matmul(&ctx, &os.site, &va, &vb, false);
    ag_backward_from(&ctx, y, dy);
    for (int i = 0; i < BB; i++) {
        const float *ai = a + i * MM * KK, *bi = b + i * KK * NN, *dyi = dy + i * MM * NN;
        float *aq = q2(&p, QUANT_FORMAT_MXFP8_E4M3, ai, MM, KK, -1), *bq = q2(&p, QUANT_FORMAT_MXFP8_E4M3, bi, KK, NN, 0);
        float *dy_n = q2(&p, QUANT_FORMAT_MXFP8_E4M3, dyi, MM, NN, -1), *b_n = q2(&p, QUANT_FORMAT_MXFP8_E4M3, bi, KK, NN, -1);
        float *dy_m = q2(&p, QUANT_FORMAT_MXFP8_E4M3, dyi, MM, NN, 0), *a_m = q2(&p, QUANT_FORMAT_MXFP8_E4M3, ai, MM, KK, 0);
        float ry[MM * NN], rda[MM * KK] = {0}, rdb[KK * NN] = {0};
        gemm_f32(false, false, MM, NN, KK, 1.0f, aq, KK, bq, NN, 0.0f, ry, NN);
        gemm_f32(false, true, MM, KK, NN, 1.0f, dy_n, NN, b_n, NN, 1.0f, rda, KK);
        gemm_f32(true, false, KK, NN, MM, 1.0f, a_m, KK, dy_m, NN, 1.0f, rdb, NN);
        expect_bitwise(y->value.data + i * MM * NN, ry, MM * NN, "batched y");
        expect_bitwise(da + i * MM * KK, rda, MM * KK, "batched da");
        expect_bitwise(db + i * KK * NN, rdb, KK * NN, "batched db");
        free(aq); free(bq); free(dy_n); free(b_n); free(dy_m); free(a_m);
    }
    one_site_close(&os);
    ag_ctx_free(&ctx);
    free(a); free(b); free(dy); free(da); free(db);
}
END_TEST

/* Conv: the NHWC activation is quantized before im2col (blocks along channels). */
START_TEST(test_conv_quantizes_nhwc_input) {
    const int Nb = 2, H = 5, W = 6, C = 16, O = 8;
    float *x = randn(Nb * H * W * C, 13, 1.0f), *w = randn(O * 3 * 3 * C, 14, 0.1f);
    mm_policy p;
    mm_policy_init(&p, QUANT_FORMAT_MXINT8);
    p.block = 16;
    ag_ctx ctx;
    ag_ctx_init(&ctx, 0);
    one_site os;
    one_site_open(&os, &ctx, &p, "conv", MM_B_WEIGHT);
    const mm_site *site = &os.site;
    ctx.run.grad_enabled = false;
    ag_var vx = ag_leaf(x, NULL, 4, (int64_t[]){Nb, H, W, C}), vw = ag_leaf(w, NULL, 4, (int64_t[]){O, 3, 3, C});
    ag_var *y = ag_conv2d(&ctx, site, &vx, &vw, NULL, 1, 1);
    /* reference: fp32 conv of the explicitly quantized x (along C) and w (along K = 3*3*C) */
    float *xq = q2(&p, QUANT_FORMAT_MXINT8, x, Nb * H * W, C, -1), *wq = q2(&p, QUANT_FORMAT_MXINT8, w, O, 9 * C, -1);
    ag_ctx ref;
    ag_ctx_init(&ref, 0);
    ref.run.grad_enabled = false;
    ag_var rx = ag_leaf(xq, NULL, 4, (int64_t[]){Nb, H, W, C}), rw = ag_leaf(wq, NULL, 4, (int64_t[]){O, 3, 3, C});
    ag_var *ry = ag_conv2d(&ref, site, &rx, &rw, NULL, 1, 1);
    expect_bitwise(y->value.data, ry->value.data, ag_numel(y), "conv y");
    ag_ctx_free(&ctx);
    ag_ctx_free(&ref);
    free(xq); free(wq);
    /* backward, 1d: dX (a transposed convolution) multiplies dY and W both
     * blocked along O, here a partial block of 8 in blocks of 16 */
    const int P = Nb * H * W;
    float *dy = randn(P * O, 15, 1e-3f), *dx = calloc((size_t)(P * C), sizeof(float)),
          *dw = calloc((size_t)(O * 9 * C), sizeof(float)), *rdx = calloc((size_t)(P * C), sizeof(float)),
          *rdw = calloc((size_t)(O * 9 * C), sizeof(float));
    ag_ctx_init(&ctx, 0);
    ctx.run.mm = &os.plan;
    vx = ag_leaf(x, dx, 4, (int64_t[]){Nb, H, W, C});
    vw = ag_leaf(w, dw, 4, (int64_t[]){O, 3, 3, C});
    ag_backward_from(&ctx, ag_conv2d(&ctx, site, &vx, &vw, NULL, 1, 1), dy);
    float *dyq = q2(&p, QUANT_FORMAT_MXINT8, dy, P, O, -1), *wo = q2(&p, QUANT_FORMAT_MXINT8, w, O, 9 * C, 0);
    ag_ctx_init(&ref, 0);
    rx = ag_leaf(x, rdx, 4, (int64_t[]){Nb, H, W, C});
    rw = ag_leaf(wo, rdw, 4, (int64_t[]){O, 3, 3, C});
    ag_backward_from(&ref, ag_conv2d(&ref, site, &rx, &rw, NULL, 1, 1), dyq);
    expect_bitwise(dx, rdx, P * C, "conv dx");
    one_site_close(&os);
    ag_ctx_free(&ctx);
    ag_ctx_free(&ref);
    free(x); free(w); free(dy); free(dx); free(dw); free(rdx); free(rdw); free(dyq); free(wo);
}
END_TEST

/* A conv's output is the same with and without a tape (evaluation): the
 * columns are never quantized a second time (here 2d tiles of MXSF, which
 * would cut the 3x3xC columns differently from the NHWC input). */
START_TEST(test_conv_eval_matches_training_forward) {
    const int Nb = 2, H = 6, W = 6, C = 8, O = 16;
    float *x = randn(Nb * H * W * C, 31, 1.0f), *w = randn(O * 9 * C, 32, 0.1f);
    float *dx = calloc((size_t)(Nb * H * W * C), sizeof(float)), *dw = calloc((size_t)(O * 9 * C), sizeof(float));
    mm_policy p;
    mm_policy_init(&p, QUANT_FORMAT_MXSF);
    p.tiling = MM_TILING_2D;
    float *ys[2];
    for (int train = 0; train < 2; train++) {
        ag_ctx ctx;
        ag_ctx_init(&ctx, 0);
        one_site os;
        one_site_open(&os, &ctx, &p, "conv", MM_B_WEIGHT);
        const mm_site *site = &os.site;
        ctx.run.grad_enabled = train;
        ag_var vx = ag_leaf(x, train ? dx : NULL, 4, (int64_t[]){Nb, H, W, C}),
               vw = ag_leaf(w, train ? dw : NULL, 4, (int64_t[]){O, 3, 3, C});
        ag_var *y = ag_conv2d(&ctx, site, &vx, &vw, NULL, 1, 1);
        ys[train] = malloc(sizeof(float) * (size_t)ag_numel(y));
        memcpy(ys[train], y->value.data, sizeof(float) * (size_t)ag_numel(y));
        one_site_close(&os);
        ag_ctx_free(&ctx);
    }
    expect_bitwise(ys[0], ys[1], Nb * H * W * O, "eval y");
    free(x); free(w); free(dx); free(dw); free(ys[0]); free(ys[1]);
}
END_TEST

/* A conv computed over many small im2col chunks equals the one-chunk result
 * up to summation order: fp32, 1d (the dW columns quantized per chunk along
 * M, chunk starts on block boundaries) and 2d; stride 1 (transposed-conv dX)
 * and stride 2 (col2im dX). A chunk cut through a block would change the
 * quantized values by far more than the tolerance. */
static bool g_cpu_bf16; /* conv_run's quantized products on the BF16 engine (train.cpu_gemm = auto) */
static bool g_cpu_direct; /* conv_run's products as oneDNN's direct convolutions (train.cpu_conv = auto) */

static void conv_run(const mm_policy *p, int64_t chunk_bytes, int stride, const float *x, const float *w, const float *dy,
                     float *y, float *dx, float *dw) {
    const int Nb = 2, H = 6, W = 6, C = 8, O = 8, OH = (H - 1) / stride + 1;
    ag_ctx ctx;
    ag_ctx_init(&ctx, 0);
    one_site os;
    one_site_open(&os, &ctx, p, "conv", MM_B_WEIGHT);
    ctx.run.conv_chunk_bytes = chunk_bytes;
    ctx.run.cpu_bf16 = g_cpu_bf16;
    ctx.run.cpu_f32_dnnl = ctx.run.cpu_conv_dnnl = g_cpu_direct;
    memset(dx, 0, sizeof(float) * Nb * H * W * C);
    memset(dw, 0, sizeof(float) * O * 9 * C);
    ag_var vx = ag_leaf((float *)x, dx, 4, (int64_t[]){Nb, H, W, C}), vw = ag_leaf((float *)w, dw, 4, (int64_t[]){O, 3, 3, C});
    ag_var *out = ag_conv2d(&ctx, &os.site, &vx, &vw, NULL, stride, 1);
    memcpy(y, out->value.data, sizeof(float) * Nb * OH * OH * O);
    ag_backward_from(&ctx, out, dy);
    one_site_close(&os);
    ag_ctx_free(&ctx);
}

static void expect_close(const float *a, const float *b, int n, const char *what) {
    double big = 0;
    for (int i = 0; i < n; i++) big = fmax(big, fabs(b[i]));
    for (int i = 0; i < n; i++)
        ck_assert_msg(fabs(a[i] - b[i]) <= 1e-5 * big, "%s[%d]: %g vs %g", what, i, (double)a[i], (double)b[i]);
}

/* conv_run's two results ([0] and [1]: y, dx, dw) within expect_close. */
static void expect_conv_close(int stride, float (*y)[2 * 6 * 6 * 8], float (*dx)[2 * 6 * 6 * 8], float (*dw)[8 * 9 * 8]) {
    expect_close(y[1], y[0], 2 * (stride == 1 ? 36 : 9) * 8, "y");
    expect_close(dx[1], dx[0], 2 * 6 * 6 * 8, "dx");
    expect_close(dw[1], dw[0], 8 * 9 * 8, "dw");
}

START_TEST(test_conv_chunks_match_whole) {
    enum { NX = 2 * 6 * 6 * 8, NW = 8 * 9 * 8 };
    float *x = randn(NX, 41, 1.0f), *w = randn(NW, 42, 0.1f), *dy = randn(NX, 43, 1e-3f);
    float y[2][NX], dx[2][NX], dw[2][NW];
    /* variants: fp32, 1d, 2d, 1d with stochastic rounding (chunks draw the bits the whole would) */
    for (int variant = 0; variant < 4; variant++)
        for (int stride = 1; stride <= 2; stride++) {
            mm_policy p;
            mm_policy_init(&p, variant == 2 ? QUANT_FORMAT_MXSF : QUANT_FORMAT_MXFP8_E4M3);
            p.block = 12; /* chunks of 2N = 16 rows would cut blocks of 12 unless aligned */
            p.tiling = variant == 2 ? MM_TILING_2D : MM_TILING_1D;
            if (variant == 3) p.round = p.grad_round = QUANT_ROUND_STOCHASTIC;
            for (int chunked = 0; chunked < 2; chunked++) /* 1 byte: the smallest chunks */
                conv_run(variant ? &p : NULL, chunked ? 1 : 0, stride, x, w, dy, y[chunked], dx[chunked], dw[chunked]);
            expect_conv_close(stride, y, dx, dw);
        }
    free(x); free(w); free(dy);
}
END_TEST

/* conv_run with engine 0 and engine 1 (set_engine picks one) within
 * expect_close, for each policy (NULL: fp32) at both strides. */
static void expect_engines_agree(uint64_t seed, const mm_policy *const *pols, int npol, void (*set_engine)(int e)) {
    enum { NX = 2 * 6 * 6 * 8, NW = 8 * 9 * 8 };
    float *x = randn(NX, seed, 1.0f), *w = randn(NW, seed + 1, 0.1f), *dy = randn(NX, seed + 2, 1e-3f);
    float y[2][NX], dx[2][NX], dw[2][NW];
    for (int v = 0; v < npol; v++)
        for (int stride = 1; stride <= 2; stride++) {
            for (int e = 0; e < 2; e++) {
                set_engine(e);
                conv_run(pols[v], 0, stride, x, w, dy, y[e], dx[e], dw[e]);
            }
            g_cpu_bf16 = g_cpu_direct = false;
            expect_conv_close(stride, y, dx, dw);
        }
    free(x); free(w); free(dy);
}

static mm_policy conv_policy(quant_format f, mm_tiling t) {
    mm_policy p;
    mm_policy_init(&p, f);
    p.tiling = t;
    return p;
}

static void engine_bf16(int e) { g_cpu_bf16 = e == 1; }
static void engine_direct(int e) { g_cpu_bf16 = gemm_bf16_available(), g_cpu_direct = e == 1; }

/* The BF16 engine and FP32 GEMMs form the same convolution products (forward, dX at both strides, dW in 1d and
 * 2d) up to the order of FP32 sums; without BF16 units both are gemm_f32. */
START_TEST(test_bf16_engine_matches_fp32) {
    mm_policy p[3] = {conv_policy(QUANT_FORMAT_MXFP8_E4M3, MM_TILING_1D), conv_policy(QUANT_FORMAT_MXSF, MM_TILING_2D),
                      conv_policy(QUANT_FORMAT_BF16, MM_TILING_1D)};
    const mm_policy *pols[3] = {&p[0], &p[1], &p[2]};
    expect_engines_agree(51, pols, 3, engine_bf16);
}
END_TEST

/* oneDNN's direct convolutions (train.cpu_conv = auto) form the products the
 * gathers do, up to the order of FP32 sums: fp32 (its f32 kernels), 1d (bf16
 * kernels for y and dX; dW still gathers its row-quantized columns) and 2d
 * (bf16 kernels for all three, on the forward's quantized x), both strides. */
START_TEST(test_direct_conv_matches_gather) {
    mm_policy p[2] = {conv_policy(QUANT_FORMAT_MXFP8_E4M3, MM_TILING_1D), conv_policy(QUANT_FORMAT_MXSF, MM_TILING_2D)};
    const mm_policy *pols[3] = {NULL, &p[0], &p[1]};
    expect_engines_agree(61, pols, 3, engine_direct);
}
END_TEST

/* Stochastic rounding draws from streams keyed by (seed, step, site, role):
 * two products run in the other order, or on one thread instead of several,
 * quantize every operand to the same bits; another step draws other bits. */
static void sr_run(int order, int threads, uint64_t step, const float *x, const float *w1, const float *w2,
                   const float *dy, float *out) {
    enum { NY = M * N, NX = M * K, NW = N * K };
    mm_policy p;
    mm_policy_init(&p, QUANT_FORMAT_MXFP8_E4M3);
    p.round = p.grad_round = QUANT_ROUND_STOCHASTIC;
    p.seed = 9;
    mm_sites t = {0};
    mm_site sa, sb;
    mm_site_declare(&t, &sa, "a", MM_B_WEIGHT);
    mm_site_declare(&t, &sb, "b", MM_B_WEIGHT);
    mm_plan plan;
    mm_plan_init(&plan, &p, &t);
    ag_ctx ctx;
    ag_ctx_init(&ctx, 0);
    ctx.run.mm = &plan;
    ctx.run.step = step;
    int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    float *dx = out + 2 * NY, *dw1 = dx + NX, *dw2 = dw1 + NW;
    memset(dx, 0, sizeof(float) * (NX + 2 * NW));
    ag_var vx = ag_leaf((float *)x, dx, 2, (int64_t[]){M, K}), v1 = ag_leaf((float *)w1, dw1, 2, (int64_t[]){N, K}),
           v2 = ag_leaf((float *)w2, dw2, 2, (int64_t[]){N, K});
    ag_var *ya, *yb;
    if (order == 0) {
        ya = ag_linear(&ctx, &sa, &vx, &v1, NULL);
        yb = ag_linear(&ctx, &sb, &vx, &v2, NULL);
    } else {
        yb = ag_linear(&ctx, &sb, &vx, &v2, NULL);
        ya = ag_linear(&ctx, &sa, &vx, &v1, NULL);
    }
    memcpy(out, ya->value.data, sizeof(float) * NY);
    memcpy(out + NY, yb->value.data, sizeof(float) * NY);
    /* the tape's order, and so the backward's, follows the forward's */
    ag_backward_from(&ctx, order == 0 ? ag_add(&ctx, ya, yb) : ag_add(&ctx, yb, ya), dy);
    omp_set_num_threads(saved);
    ag_ctx_free(&ctx);
    mm_plan_free(&plan);
    mm_sites_free(&t);
}

START_TEST(test_stochastic_streams_do_not_depend_on_order) {
    enum { NOUT = 2 * M * N + M * K + 2 * N * K };
    float *x = randn(M * K, 51, 1.0f), *w1 = randn(N * K, 52, 0.1f), *w2 = randn(N * K, 53, 0.1f),
          *dy = randn(M * N, 54, 1e-3f);
    static float out[4][NOUT];
    sr_run(0, 2, 3, x, w1, w2, dy, out[0]);
    sr_run(1, 2, 3, x, w1, w2, dy, out[1]);
    sr_run(0, 1, 3, x, w1, w2, dy, out[2]);
    sr_run(0, 2, 4, x, w1, w2, dy, out[3]);
    expect_bitwise(out[1], out[0], NOUT, "other order");
    expect_bitwise(out[2], out[0], NOUT, "one thread");
    int differ = 0;
    for (int i = 0; i < M * N; i++) differ += out[3][i] != out[0][i];
    ck_assert_msg(differ > M * N / 4, "step 4 drew the bits of step 3 (%d of %d outputs differ)", differ, M * N);
    free(x); free(w1); free(w2); free(dy);
}
END_TEST

/* Tiny CNN and ViT train a few SGD steps on a fixed batch under every format
 * and tiling: the loss stays finite and goes down (best loss reached against
 * the first: a tiny ViT's SGD loss oscillates step to step, so the last value
 * alone says little; the bitwise tests above check the arithmetic). */
static double train_steps(model_arch arch, quant_format f, mm_tiling t, int steps) {
    model_config c = model_config_default(arch);
    c.in_chans = 3;
    c.num_classes = 4;
    c.img_size = 16;
    c.patch_size = 4;
    c.dim = 32;
    c.depth = 2;
    c.heads = 2;
    int widths[4] = {8, 16, 16, 32};
    for (int i = 0; i < 4; i++) {
        c.blocks[i] = 1;
        c.widths[i] = widths[i];
    }
    model m;
    mx_err err;
    ck_assert_int_eq(model_build(&m, &c, &err), 0);
    mm_policy p;
    mm_policy_init(&p, f);
    p.tiling = t;
    mm_plan plan;
    mm_plan_init(&plan, &p, &m.params.sites);
    ag_ctx ctx;
    ag_ctx_init(&ctx, 0);
    ctx.run.mm = &plan;
    float *xd = randn(8 * 16 * 16 * 3, 20, 1.0f);
    int32_t labels[8] = {0, 1, 2, 3, 0, 1, 2, 3};
    double first = 0, best = 0;
    for (int s = 0; s < steps; s++) {
        ag_ctx_reset(&ctx);
        ctx.run.step = (uint64_t)s;
        param_zero_grad(&m.params);
        ag_var x = ag_leaf(xd, NULL, 4, (int64_t[]){8, 16, 16, 3});
        ag_var *loss = ag_cross_entropy(&ctx, model_forward(&ctx, &m, &x), labels, 0.0f);
        ck_assert_msg(isfinite(loss->value.data[0]), "%s %s %s: loss not finite", model_arch_name(arch),
                      quant_format_get(f)->name, mm_tiling_name(t));
        if (s == 0) first = best = loss->value.data[0];
        if (loss->value.data[0] < best) best = loss->value.data[0];
        ag_backward(&ctx, loss);
        float lr = arch == MODEL_ARCH_VIT ? 0.03f : 0.05f; /* timm init is small: SGD needs a larger step */
        for (size_t i = 0; i < m.params.n_trainable; i++) m.params.data[i] -= lr * m.params.grad[i];
    }
    ag_ctx_free(&ctx);
    mm_plan_free(&plan);
    model_free(&m);
    free(xd);
    return best / first;
}

/* quant.elementwise = bf16: each non-GEMM op's output equals the bf16
 * fake-quantization of its fp32 output; gradients pass straight through. */
START_TEST(test_elementwise_bf16) {
    enum { R = 6, C = 40 };
    float *x = randn(R * C, 77, 0.7f), *g = randn(C, 78, 1.0f), *bt = randn(C, 79, 0.1f);
    int64_t shape[2] = {R, C};
    quant_spec bf = quant_spec_default(QUANT_FORMAT_BF16);
    for (int op = 0; op < 6; op++) {
        float *outs[2];
        for (int mode = 0; mode < 2; mode++) {
            ag_ctx ctx;
            ag_ctx_init(&ctx, 0);
            ctx.run.elementwise_bf16 = mode == 1;
            ag_var vx = ag_leaf(x, NULL, 2, shape), vg = ag_leaf(g, NULL, 1, (int64_t[]){C}),
                   vb = ag_leaf(bt, NULL, 1, (int64_t[]){C});
            ag_var *y = op == 0   ? ag_relu(&ctx, &vx)
                        : op == 1 ? ag_gelu(&ctx, &vx)
                        : op == 2 ? ag_gelu_tanh(&ctx, &vx)
                        : op == 3 ? ag_softmax(&ctx, &vx)
                        : op == 4 ? ag_add(&ctx, &vx, &vb)
                                  : ag_layernorm(&ctx, &vx, &vg, &vb, 1e-5f);
            outs[mode] = malloc(sizeof(float) * R * C);
            memcpy(outs[mode], y->value.data, sizeof(float) * R * C);
            ag_ctx_free(&ctx);
        }
        float *want = malloc(sizeof(float) * R * C);
        quant_fake(&bf, outs[0], want, 2, shape, NULL, NULL);
        expect_bitwise(outs[1], want, R * C, "elementwise bf16");
        int changed = 0;
        for (int i = 0; i < R * C; i++) changed += outs[0][i] != outs[1][i];
        ck_assert_msg(changed > 0, "op %d: bf16 rounding changed nothing", op);
        free(outs[0]);
        free(outs[1]);
        free(want);
    }
    free(x);
    free(g);
    free(bt);
}
END_TEST

START_TEST(test_tiny_models_train_under_every_format_and_tiling) {
    const model_arch archs[2] = {MODEL_ARCH_RESNET, MODEL_ARCH_VIT};
    for (int a = 0; a < 2; a++)
        for (int f = 0; f < QUANT_FORMAT_COUNT; f++)
            for (int t = 0; t < MM_TILING_COUNT; t++) {
                double ratio = train_steps(archs[a], (quant_format)f, (mm_tiling)t, archs[a] == MODEL_ARCH_VIT ? 30 : 8);
                if (getenv("MX_PRINT_RATIOS"))
                    fprintf(stderr, "%s %s %s %.3f\n", model_arch_name(archs[a]),
                            quant_format_get((quant_format)f)->name, mm_tiling_name((mm_tiling)t), ratio);
                ck_assert_msg(ratio < 0.99, "%s %s %s: best loss %.3f of the first", model_arch_name(archs[a]),
                              quant_format_get((quant_format)f)->name, mm_tiling_name((mm_tiling)t), ratio);
            }
}
END_TEST

int main(void) {
    Suite *s = suite_create("mx");
    TCase *tc = tcase_create("gemm");
    tcase_add_test(tc, test_2d_reuses_forward_copies);
    tcase_add_test(tc, test_1d_requantizes_along_reduction_axes);
    tcase_add_test(tc, test_1d_requant_uses_forward_copies);
    tcase_add_test(tc, test_fp32_policy_is_exact);
    tcase_add_test(tc, test_stats_and_keep_rules);
    tcase_add_test(tc, test_batched_matmul_1d_axes);
    tcase_add_test(tc, test_conv_quantizes_nhwc_input);
    tcase_add_test(tc, test_conv_eval_matches_training_forward);
    tcase_add_test(tc, test_conv_chunks_match_whole);
    tcase_add_test(tc, test_bf16_engine_matches_fp32);
    tcase_add_test(tc, test_direct_conv_matches_gather);
    tcase_add_test(tc, test_stochastic_streams_do_not_depend_on_order);
    tcase_add_test(tc, test_elementwise_bf16);
    tcase_add_test(tc, test_tiny_models_train_under_every_format_and_tiling);
    tcase_set_timeout(tc, 300);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
