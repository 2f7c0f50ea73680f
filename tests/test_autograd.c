/* autograd/: numerical gradient check of every op, backward accumulation,
 * determinism. Gradient checks follow Caffe's recipe: loss = sum(R * y) with
 * a fixed random R (sum(y) would hide softmax/layernorm errors), central
 * differences evaluated in double, inputs kept away from kinks, at most 64
 * sampled coordinates per tensor, |a - n| <= atol + rtol * max(|a|, |n|). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "core/npy.h"
#include "core/rng.h"
#include "gradcheck.h"
#include "test_util.h"

/* ---- cases: each builds leaves in gc->leaf[] and a forward ---- */

static ag_var *f_linear(ag_ctx *c, gc_case *g) { return ag_linear(c, &g->site, &g->leaf[0], &g->leaf[1], &g->leaf[2]); }
static ag_var *f_linear_nobias(ag_ctx *c, gc_case *g) { return ag_linear(c, &g->site, &g->leaf[0], &g->leaf[1], NULL); }
static ag_var *f_matmul(ag_ctx *c, gc_case *g) { return ag_matmul(c, &g->site, &g->leaf[0], &g->leaf[1], g->i[0]); }
static ag_var *f_conv(ag_ctx *c, gc_case *g) {
    return ag_conv2d(c, &g->site, &g->leaf[0], &g->leaf[1], g->i[2] ? &g->leaf[2] : NULL, g->i[0], g->i[1]);
}
/* relu(bn(x) + residual), training statistics; residual = leaf 3 when present */
static ag_var *f_bn_act(ag_ctx *c, gc_case *g) {
    float rm[64] = {0}, rv[64];
    for (int j = 0; j < 64; j++) rv[j] = 1.0f;
    return ag_batchnorm2d_act(c, &g->leaf[0], &g->leaf[1], &g->leaf[2], rm, rv, 0.1f, 1e-5f,
                              g->n_leaf > 3 ? &g->leaf[3] : NULL, true);
}

static ag_var *f_bn(ag_ctx *c, gc_case *g) {
    c->run.training = g->i[0];
    float rm[64], rv[64];
    memcpy(rm, g->running_mean, sizeof rm);
    memcpy(rv, g->running_var, sizeof rv);
    return ag_batchnorm2d(c, &g->leaf[0], &g->leaf[1], &g->leaf[2], rm, rv, 0.1f, 1e-5f);
}
static ag_var *f_ln(ag_ctx *c, gc_case *g) { return ag_layernorm(c, &g->leaf[0], &g->leaf[1], &g->leaf[2], 1e-5f); }
static ag_var *f_relu(ag_ctx *c, gc_case *g) { return ag_relu(c, &g->leaf[0]); }
static ag_var *f_gelu(ag_ctx *c, gc_case *g) { return ag_gelu(c, &g->leaf[0]); }
static ag_var *f_gelu_tanh(ag_ctx *c, gc_case *g) { return ag_gelu_tanh(c, &g->leaf[0]); }
static ag_var *f_softmax(ag_ctx *c, gc_case *g) { return ag_softmax(c, &g->leaf[0]); }
static ag_var *f_attention(ag_ctx *c, gc_case *g) { return ag_attention(c, &g->site, &g->site2, &g->leaf[0], g->i[0]); }
static ag_var *f_maxpool(ag_ctx *c, gc_case *g) { return ag_maxpool2d(c, &g->leaf[0], 3, 2, 1); }
static ag_var *f_avgpool(ag_ctx *c, gc_case *g) { return ag_avgpool_global(c, &g->leaf[0]); }
static ag_var *f_add(ag_ctx *c, gc_case *g) { return ag_add(c, &g->leaf[0], &g->leaf[1]); }
static ag_var *f_reshape(ag_ctx *c, gc_case *g) {
    int64_t s[2] = {6, 4};
    return ag_softmax(c, ag_reshape(c, &g->leaf[0], 2, s)); /* softmax so the layout matters */
}
static ag_var *f_permute(ag_ctx *c, gc_case *g) {
    int perm[4] = {2, 0, 3, 1};
    return ag_softmax(c, ag_permute(c, &g->leaf[0], perm));
}
static ag_var *f_concat(ag_ctx *c, gc_case *g) { return ag_concat(c, &g->leaf[0], &g->leaf[1], 1); }
static ag_var *f_slice(ag_ctx *c, gc_case *g) { return ag_slice(c, &g->leaf[0], 1, 1, 2); }
static ag_var *f_dropout(ag_ctx *c, gc_case *g) { return ag_dropout(c, &g->leaf[0], 0.3f); }
static ag_var *f_drop_path(ag_ctx *c, gc_case *g) { return ag_drop_path(c, &g->leaf[0], 0.5f); }
static ag_var *f_ce(ag_ctx *c, gc_case *g) { return ag_cross_entropy(c, &g->leaf[0], g->labels, 0.1f); }
static ag_var *f_mean(ag_ctx *c, gc_case *g) { return ag_mean(c, &g->leaf[0]); }
static ag_var *f_sum(ag_ctx *c, gc_case *g) { return ag_sum(c, &g->leaf[0]); }

START_TEST(test_gradcheck_ops) {
    gc_case g;
    /* linear, 3-D input */
    gc_begin(&g, "linear", f_linear);
    gc_leaf(&g, 3, (int64_t[]){2, 3, 5}, 1.0f);
    gc_leaf(&g, 2, (int64_t[]){4, 5}, 0.5f);
    gc_leaf(&g, 1, (int64_t[]){4}, 0.5f);
    gc_run(&g);
    gc_begin(&g, "linear_nobias", f_linear_nobias);
    gc_leaf(&g, 2, (int64_t[]){7, 3}, 1.0f);
    gc_leaf(&g, 2, (int64_t[]){2, 3}, 0.5f);
    gc_run(&g);
    for (int tb = 0; tb < 2; tb++) {
        gc_begin(&g, tb ? "matmul_trans_b" : "matmul", f_matmul);
        g.i[0] = tb;
        gc_leaf(&g, 3, (int64_t[]){2, 3, 4}, 1.0f);
        gc_leaf(&g, 3, tb ? (int64_t[]){2, 5, 4} : (int64_t[]){2, 4, 5}, 1.0f);
        gc_run(&g);
    }
    /* conv: 3x3 stride 1 pad 1 with bias; 3x3 stride 2 pad 1; 1x1; 1x1 stride 2;
     * stride 1 with pad 0 and with a 5x5 kernel (dX as a transposed convolution) */
    const int conv_cfg[][5] = {{3, 1, 1, 1, 3}, {3, 2, 1, 0, 3}, {1, 1, 0, 1, 1}, {1, 2, 0, 0, 1}, {3, 1, 0, 0, 3},
                               {5, 1, 2, 0, 5}};
    for (int k = 0; k < 6; k++) {
        gc_begin(&g, "conv2d", f_conv);
        int ks = conv_cfg[k][0];
        g.i[0] = conv_cfg[k][1];
        g.i[1] = conv_cfg[k][2];
        g.i[2] = conv_cfg[k][3];
        gc_leaf(&g, 4, (int64_t[]){2, 5, 6, 3}, 1.0f);
        gc_leaf(&g, 4, (int64_t[]){4, ks, ks, 3}, 0.5f);
        gc_leaf(&g, 1, (int64_t[]){4}, 0.5f);
        gc_run(&g);
    }
    for (int train = 0; train < 2; train++) {
        gc_begin(&g, train ? "batchnorm2d_train" : "batchnorm2d_eval", f_bn);
        g.i[0] = train;
        gc_leaf(&g, 4, (int64_t[]){3, 2, 3, 4}, 1.0f);
        gc_leaf(&g, 1, (int64_t[]){4}, 1.0f);
        gc_leaf(&g, 1, (int64_t[]){4}, 1.0f);
        for (int j = 0; j < 4; j++) {
            g.running_mean[j] = 0.1f * (float)j;
            g.running_var[j] = 0.5f + 0.25f * (float)j;
        }
        gc_run(&g);
    }
    gc_begin(&g, "layernorm", f_ln);
    gc_leaf(&g, 3, (int64_t[]){2, 3, 6}, 1.0f);
    gc_leaf(&g, 1, (int64_t[]){6}, 1.0f);
    gc_leaf(&g, 1, (int64_t[]){6}, 1.0f);
    gc_run(&g);
    /* fused BN (+ residual) + ReLU: gamma small and beta / residual away from
     * zero keep every ReLU input clear of the kink */
    for (int with_res = 0; with_res < 2; with_res++) {
        gc_begin(&g, with_res ? "batchnorm2d_add_relu" : "batchnorm2d_relu", f_bn_act);
        gc_leaf(&g, 4, (int64_t[]){3, 2, 3, 4}, 1.0f);
        gc_leaf(&g, 1, (int64_t[]){4}, 0.1f);
        gc_leaf(&g, 1, (int64_t[]){4}, 0.1f);
        if (with_res) {
            gc_leaf(&g, 4, (int64_t[]){3, 2, 3, 4}, 0.5f);
            gc_away_from_zero(&g, 3, 0.6f);
        } else {
            gc_away_from_zero(&g, 2, 0.6f);
        }
        gc_run(&g);
    }
    gc_begin(&g, "relu", f_relu);
    gc_leaf(&g, 2, (int64_t[]){5, 7}, 1.0f);
    gc_away_from_zero(&g, 0, 0.05f);
    gc_run(&g);
    gc_begin(&g, "gelu", f_gelu);
    gc_leaf(&g, 2, (int64_t[]){5, 7}, 2.0f);
    gc_run(&g);
    gc_begin(&g, "gelu_tanh", f_gelu_tanh);
    gc_leaf(&g, 2, (int64_t[]){5, 7}, 2.0f);
    gc_run(&g);
    gc_begin(&g, "softmax", f_softmax);
    gc_leaf(&g, 2, (int64_t[]){4, 9}, 2.0f);
    gc_run(&g);
    gc_begin(&g, "attention", f_attention);
    g.i[0] = 2;
    gc_leaf(&g, 3, (int64_t[]){2, 5, 3 * 8}, 1.0f);
    gc_run(&g);
    gc_begin(&g, "maxpool2d", f_maxpool);
    gc_leaf(&g, 4, (int64_t[]){2, 5, 6, 3}, 1.0f);
    gc_distinct(&g, 0, 0.05f);
    gc_run(&g);
    gc_begin(&g, "avgpool_global", f_avgpool);
    gc_leaf(&g, 4, (int64_t[]){2, 3, 4, 5}, 1.0f);
    gc_run(&g);
    gc_begin(&g, "add", f_add);
    gc_leaf(&g, 3, (int64_t[]){2, 3, 4}, 1.0f);
    gc_leaf(&g, 3, (int64_t[]){2, 3, 4}, 1.0f);
    gc_run(&g);
    gc_begin(&g, "add_broadcast", f_add);
    gc_leaf(&g, 3, (int64_t[]){2, 3, 4}, 1.0f);
    gc_leaf(&g, 3, (int64_t[]){1, 3, 4}, 1.0f);
    gc_run(&g);
    gc_begin(&g, "reshape", f_reshape);
    gc_leaf(&g, 3, (int64_t[]){2, 3, 4}, 1.0f);
    gc_run(&g);
    gc_begin(&g, "permute", f_permute);
    gc_leaf(&g, 4, (int64_t[]){2, 3, 4, 5}, 1.0f);
    gc_run(&g);
    gc_begin(&g, "concat_broadcast", f_concat);
    gc_leaf(&g, 3, (int64_t[]){1, 1, 4}, 1.0f);
    gc_leaf(&g, 3, (int64_t[]){3, 5, 4}, 1.0f);
    gc_run(&g);
    gc_begin(&g, "slice", f_slice);
    gc_leaf(&g, 3, (int64_t[]){2, 5, 3}, 1.0f);
    gc_run(&g);
    gc_begin(&g, "dropout", f_dropout);
    gc_leaf(&g, 2, (int64_t[]){6, 8}, 1.0f);
    gc_run(&g);
    gc_begin(&g, "drop_path", f_drop_path);
    gc_leaf(&g, 3, (int64_t[]){8, 3, 2}, 1.0f);
    gc_run(&g);
    gc_begin(&g, "cross_entropy", f_ce);
    gc_leaf(&g, 2, (int64_t[]){6, 5}, 2.0f);
    for (int i = 0; i < 6; i++) g.labels[i] = (i * 3) % 5;
    gc_run(&g);
    gc_begin(&g, "mean", f_mean);
    gc_leaf(&g, 2, (int64_t[]){3, 4}, 1.0f);
    gc_run(&g);
    gc_begin(&g, "sum", f_sum);
    gc_leaf(&g, 2, (int64_t[]){3, 4}, 1.0f);
    gc_run(&g);
    /* every op of the table was exercised */
    for (int op = 0; op < AG_OP_COUNT; op++)
        ck_assert_msg(gc_op_seen(op), "op %s has no gradient check", ag_op_table[op].name);
}
END_TEST

/* Backward twice over the same tape adds exactly twice to the leaves. */
START_TEST(test_backward_twice_accumulates) {
    gc_case g;
    gc_begin(&g, "twice", f_ln);
    gc_leaf(&g, 2, (int64_t[]){4, 6}, 1.0f);
    gc_leaf(&g, 1, (int64_t[]){6}, 1.0f);
    gc_leaf(&g, 1, (int64_t[]){6}, 1.0f);
    ag_ctx ctx;
    ag_ctx_init(&ctx, 1 << 20);
    ag_var *y = ag_softmax(&ctx, f_ln(&ctx, &g));
    ag_var *loss = ag_sum(&ctx, ag_relu(&ctx, y));
    ag_backward(&ctx, loss);
    float once[24];
    memcpy(once, g.leaf[0].grad, sizeof once);
    ag_backward(&ctx, loss);
    for (int i = 0; i < 24; i++) ck_assert_float_eq(g.leaf[0].grad[i], 2.0f * once[i]);
    ag_ctx_free(&ctx);
    gc_end(&g);
}
END_TEST

/* No-grad mode records nothing; the arena is reused across steps without malloc. */
START_TEST(test_no_grad_and_steady_state) {
    gc_case g;
    gc_begin(&g, "nograd", f_linear);
    gc_leaf(&g, 2, (int64_t[]){64, 32}, 1.0f);
    gc_leaf(&g, 2, (int64_t[]){16, 32}, 1.0f);
    gc_leaf(&g, 1, (int64_t[]){16}, 1.0f);
    ag_ctx ctx;
    ag_ctx_init(&ctx, 0);
    ctx.run.grad_enabled = false;
    ag_var *y = f_linear(&ctx, &g);
    ck_assert_int_eq(ctx.n_nodes, 0);
    ck_assert(!y->requires_grad);
    ctx.run.grad_enabled = true;
    size_t grows = 0;
    for (int step = 0; step < 4; step++) {
        ag_ctx_reset(&ctx);
        ag_var *l = ag_mean(&ctx, ag_gelu(&ctx, f_linear(&ctx, &g)));
        ag_backward(&ctx, l);
        if (step == 1) grows = ctx.ar.grow_count;
    }
    ck_assert_uint_eq(ctx.ar.grow_count, grows);
    ag_ctx_free(&ctx);
    gc_end(&g);
}
END_TEST

/* The fused relu(bn(x) + r) equals batchnorm2d, add and relu run
 * separately, bit for bit, forward and backward, with and without bf16
 * rounding of the intermediates. */
START_TEST(test_batchnorm_act_matches_separate_ops) {
    enum { R = 2 * 5 * 5, C = 8 };
    rng r;
    rng_init(&r, 77, 0);
    float x[R * C], res[R * C], gam[C], bet[C], dy[R * C];
    for (int i = 0; i < R * C; i++) x[i] = rng_normal(&r), res[i] = rng_normal(&r), dy[i] = rng_normal(&r);
    for (int j = 0; j < C; j++) gam[j] = 1.0f + 0.1f * rng_normal(&r), bet[j] = 0.1f * rng_normal(&r);
    int64_t xs[4] = {2, 5, 5, C}, cs[1] = {C};
    for (int bf16 = 0; bf16 < 2; bf16++) {
        float out[2][R * C], dx[2][R * C], dr[2][R * C], dg[2][C], db[2][C], rm[2][C], rv[2][C];
        for (int fused = 0; fused < 2; fused++) {
            memset(dx[fused], 0, sizeof dx[0]);
            memset(dr[fused], 0, sizeof dr[0]);
            memset(dg[fused], 0, sizeof dg[0]);
            memset(db[fused], 0, sizeof db[0]);
            for (int j = 0; j < C; j++) rm[fused][j] = 0.0f, rv[fused][j] = 1.0f;
            ag_ctx ctx;
            ag_ctx_init(&ctx, 0);
            ctx.run.elementwise_bf16 = bf16;
            ag_var vx = ag_leaf(x, dx[fused], 4, xs), vr = ag_leaf(res, dr[fused], 4, xs),
                   vg = ag_leaf(gam, dg[fused], 1, cs), vb = ag_leaf(bet, db[fused], 1, cs);
            ag_var *y = fused ? ag_batchnorm2d_act(&ctx, &vx, &vg, &vb, rm[fused], rv[fused], 0.1f, 1e-5f, &vr, true)
                              : ag_relu(&ctx, ag_add(&ctx, ag_batchnorm2d(&ctx, &vx, &vg, &vb, rm[fused], rv[fused],
                                                                          0.1f, 1e-5f),
                                                     &vr));
            memcpy(out[fused], y->value.data, sizeof out[0]);
            ag_backward_from(&ctx, y, dy);
            ag_ctx_free(&ctx);
        }
        ck_assert_int_eq(memcmp(out[0], out[1], sizeof out[0]), 0);
        ck_assert_int_eq(memcmp(dx[0], dx[1], sizeof dx[0]), 0);
        ck_assert_int_eq(memcmp(dr[0], dr[1], sizeof dr[0]), 0);
        ck_assert_int_eq(memcmp(dg[0], dg[1], sizeof dg[0]), 0);
        ck_assert_int_eq(memcmp(db[0], db[1], sizeof db[0]), 0);
        ck_assert_int_eq(memcmp(rv[0], rv[1], sizeof rv[0]), 0);
    }
}
END_TEST

/* Gradients of intermediates return to the pool as the backward passes them:
 * a chain of 20 same-shape ops needs two buffers of that shape, not 20, and
 * the next step takes the same buffers again. */
START_TEST(test_grad_pool_reuses_buffers) {
    const int64_t n = 1000;
    float *x = malloc(sizeof(float) * n), *dx = calloc(n, sizeof(float));
    for (int64_t i = 0; i < n; i++) x[i] = (float)(i % 7) - 2.5f;
    ag_ctx ctx;
    ag_ctx_init(&ctx, 0);
    size_t bytes = 0;
    for (int step = 0; step < 3; step++) {
        ag_ctx_reset(&ctx);
        ag_var vx = ag_leaf(x, dx, 1, &n);
        ag_var *h = &vx;
        for (int k = 0; k < 20; k++) h = k % 2 ? ag_relu(&ctx, h) : ag_add(&ctx, h, &vx);
        ag_backward(&ctx, ag_sum(&ctx, h));
        if (step == 0) bytes = ag_grad_pool_bytes(&ctx);
        ck_assert_uint_eq(ag_grad_pool_bytes(&ctx), bytes);
    }
    ck_assert_uint_le(bytes, 2 * n * sizeof(float) + 64);
    ck_assert_float_gt(dx[3], 0.0f); /* x = 0.5 stays positive: something flowed back */
    ag_ctx_free(&ctx);
    free(x);
    free(dx);
}
END_TEST


/* ---- PyTorch fixtures (tests/fixtures, written by gen_torch_fixtures.py) ---- */

static double fx_worst_rel;
static char fx_worst_where[128];

static npy_array fx_load(const char *cas, const char *name) {
    const char *src = getenv("MX_SOURCE_DIR");
    char p[1024];
    snprintf(p, sizeof p, "%s/tests/fixtures/%s/%s.npy", src ? src : "../..", cas, name);
    npy_array a;
    mx_err err;
    ck_assert_msg(npy_read(p, &a, &err) == 0, "%s", err.msg);
    return a;
}

/* A leaf over a fixture array (with a zeroed gradient buffer). */
static ag_var fx_leaf(npy_array *a) {
    int64_t shape[TENSOR_MAX_DIMS];
    for (int i = 0; i < a->ndim; i++) shape[i] = a->shape[i];
    return ag_leaf(a->data, calloc((size_t)a->numel, sizeof(float)), a->ndim, shape);
}

/* |got - want| <= 1e-4 * |want| + 1e-5, elementwise; records the worst relative
 * error among elements of at least 1% of the tensor's largest magnitude. */
static void fx_compare(const char *cas, const char *what, const float *got, const char *want_name) {
    npy_array w = fx_load(cas, want_name);
    const float *want = w.data;
    double wmax = 0;
    for (int64_t i = 0; i < w.numel; i++) wmax = fmax(wmax, fabs(want[i]));
    for (int64_t i = 0; i < w.numel; i++) {
        double d = fabs((double)got[i] - want[i]);
        ck_assert_msg(d <= 1e-4 * fabs(want[i]) + 1e-5, "%s %s[%lld]: got %.8g, PyTorch %.8g", cas, what,
                      (long long)i, (double)got[i], (double)want[i]);
        if (fabs(want[i]) >= 0.01 * wmax && d / fabs(want[i]) > fx_worst_rel) {
            fx_worst_rel = d / fabs(want[i]);
            snprintf(fx_worst_where, sizeof fx_worst_where, "%s %s", cas, what);
        }
    }
    npy_free(&w);
}

static void fx_backward(ag_ctx *ctx, const char *cas, ag_var *y) {
    npy_array dy = fx_load(cas, "dy");
    ck_assert_int_eq(dy.numel, ag_numel(y));
    fx_compare(cas, "y", y->value.data, "y");
    ag_backward_from(ctx, y, dy.data);
    npy_free(&dy);
}

START_TEST(test_pytorch_fixtures) {
    ag_ctx ctx;
    ag_ctx_init(&ctx, 1 << 20);
    mm_sites sites = {0};
    mm_site site, site2;
    mm_site_declare(&sites, &site, "fixture", MM_B_WEIGHT);
    mm_site_declare(&sites, &site2, "fixture2", MM_B_ACT);
    /* conv2d, stride 1 (with bias) and stride 2 */
    const char *convs[2] = {"conv2d_s1", "conv2d_s2"};
    for (int k = 0; k < 2; k++) {
        ag_ctx_reset(&ctx);
        npy_array x = fx_load(convs[k], "x"), w = fx_load(convs[k], "w");
        ag_var vx = fx_leaf(&x), vw = fx_leaf(&w), vb;
        npy_array b = {0};
        if (k == 0) {
            b = fx_load(convs[k], "b");
            vb = fx_leaf(&b);
        }
        ag_var *y = ag_conv2d(&ctx, &site, &vx, &vw, k == 0 ? &vb : NULL, k == 0 ? 1 : 2, 1);
        fx_backward(&ctx, convs[k], y);
        fx_compare(convs[k], "dx", vx.grad, "dx");
        fx_compare(convs[k], "dw", vw.grad, "dw");
        free(vx.grad);
        free(vw.grad);
        npy_free(&x);
        npy_free(&w);
        if (k == 0) {
            fx_compare(convs[k], "db", vb.grad, "db");
            free(vb.grad);
            npy_free(&b);
        }
    }
    /* batchnorm2d, train and eval (running statistics too) */
    const char *bns[2] = {"batchnorm2d_train", "batchnorm2d_eval"};
    for (int k = 0; k < 2; k++) {
        ag_ctx_reset(&ctx);
        ctx.run.training = k == 0;
        npy_array x = fx_load(bns[k], "x"), g = fx_load(bns[k], "gamma"), b = fx_load(bns[k], "beta");
        npy_array rm = fx_load(bns[k], "running_mean"), rv = fx_load(bns[k], "running_var");
        ag_var vx = fx_leaf(&x), vg = fx_leaf(&g), vb = fx_leaf(&b);
        ag_var *y = ag_batchnorm2d(&ctx, &vx, &vg, &vb, rm.data, rv.data, 0.1f, 1e-5f);
        fx_backward(&ctx, bns[k], y);
        fx_compare(bns[k], "dx", vx.grad, "dx");
        fx_compare(bns[k], "dgamma", vg.grad, "dgamma");
        fx_compare(bns[k], "dbeta", vb.grad, "dbeta");
        fx_compare(bns[k], "running_mean", rm.data, "running_mean_after");
        fx_compare(bns[k], "running_var", rv.data, "running_var_after");
        free(vx.grad); free(vg.grad); free(vb.grad);
        npy_free(&x); npy_free(&g); npy_free(&b); npy_free(&rm); npy_free(&rv);
    }
    ctx.run.training = true;
    {
        ag_ctx_reset(&ctx);
        npy_array x = fx_load("layernorm", "x"), g = fx_load("layernorm", "gamma"), b = fx_load("layernorm", "beta");
        ag_var vx = fx_leaf(&x), vg = fx_leaf(&g), vb = fx_leaf(&b);
        ag_var *y = ag_layernorm(&ctx, &vx, &vg, &vb, 1e-6f);
        fx_backward(&ctx, "layernorm", y);
        fx_compare("layernorm", "dx", vx.grad, "dx");
        fx_compare("layernorm", "dgamma", vg.grad, "dgamma");
        fx_compare("layernorm", "dbeta", vb.grad, "dbeta");
        free(vx.grad); free(vg.grad); free(vb.grad);
        npy_free(&x); npy_free(&g); npy_free(&b);
    }
    const char *gelus[2] = {"gelu", "gelu_tanh"};
    for (int k = 0; k < 2; k++) {
        ag_ctx_reset(&ctx);
        npy_array x = fx_load(gelus[k], "x");
        ag_var vx = fx_leaf(&x);
        ag_var *y = k == 0 ? ag_gelu(&ctx, &vx) : ag_gelu_tanh(&ctx, &vx);
        fx_backward(&ctx, gelus[k], y);
        fx_compare(gelus[k], "dx", vx.grad, "dx");
        free(vx.grad);
        npy_free(&x);
    }
    {
        ag_ctx_reset(&ctx);
        npy_array x = fx_load("linear", "x"), w = fx_load("linear", "w"), b = fx_load("linear", "b");
        ag_var vx = fx_leaf(&x), vw = fx_leaf(&w), vb = fx_leaf(&b);
        ag_var *y = ag_linear(&ctx, &site, &vx, &vw, &vb);
        fx_backward(&ctx, "linear", y);
        fx_compare("linear", "dx", vx.grad, "dx");
        fx_compare("linear", "dw", vw.grad, "dw");
        fx_compare("linear", "db", vb.grad, "db");
        free(vx.grad); free(vw.grad); free(vb.grad);
        npy_free(&x); npy_free(&w); npy_free(&b);
    }
    {
        ag_ctx_reset(&ctx);
        npy_array qkv = fx_load("attention", "qkv"), heads = fx_load("attention", "heads");
        ag_var vq = fx_leaf(&qkv);
        ag_var *y = ag_attention(&ctx, &site, &site2, &vq, ((int32_t *)heads.data)[0]);
        fx_backward(&ctx, "attention", y);
        fx_compare("attention", "dqkv", vq.grad, "dqkv");
        free(vq.grad);
        npy_free(&qkv); npy_free(&heads);
    }
    {
        ag_ctx_reset(&ctx);
        npy_array lg = fx_load("cross_entropy", "logits"), lb = fx_load("cross_entropy", "labels"),
                  sm = fx_load("cross_entropy", "smoothing");
        ag_var vl = fx_leaf(&lg);
        ag_var *loss = ag_cross_entropy(&ctx, &vl, lb.data, ((float *)sm.data)[0]);
        fx_compare("cross_entropy", "loss", loss->value.data, "loss");
        ag_backward(&ctx, loss);
        fx_compare("cross_entropy", "dlogits", vl.grad, "dlogits");
        free(vl.grad);
        npy_free(&lg); npy_free(&lb); npy_free(&sm);
    }
    fprintf(stderr, "PyTorch fixtures: worst relative error %.3g (%s)\n", fx_worst_rel, fx_worst_where);
    ag_ctx_free(&ctx);
    mm_sites_free(&sites);
}
END_TEST

int main(void) {
    Suite *s = suite_create("autograd");
    TCase *tc = tcase_create("ops");
    tcase_add_test(tc, test_gradcheck_ops);
    tcase_add_test(tc, test_backward_twice_accumulates);
    tcase_add_test(tc, test_no_grad_and_steady_state);
    tcase_add_test(tc, test_grad_pool_reuses_buffers);
    tcase_add_test(tc, test_batchnorm_act_matches_separate_ops);
    tcase_add_test(tc, test_pytorch_fixtures);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
