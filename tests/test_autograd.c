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
static ag_var *f_bn(ag_ctx *c, gc_case *g) {
    c->training = g->i[0];
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
    /* conv: 3x3 stride 1 pad 1 with bias; 3x3 stride 2 pad 1; 1x1; 1x1 stride 2 */
    const int conv_cfg[][5] = {{3, 1, 1, 1, 3}, {3, 2, 1, 0, 3}, {1, 1, 0, 1, 1}, {1, 2, 0, 0, 1}};
    for (int k = 0; k < 4; k++) {
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
    ctx.grad_enabled = false;
    ag_var *y = f_linear(&ctx, &g);
    ck_assert_int_eq(ctx.n_nodes, 0);
    ck_assert(!y->requires_grad);
    ctx.grad_enabled = true;
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

int main(void) {
    Suite *s = suite_create("autograd");
    TCase *tc = tcase_create("ops");
    tcase_add_test(tc, test_gradcheck_ops);
    tcase_add_test(tc, test_backward_twice_accumulates);
    tcase_add_test(tc, test_no_grad_and_steady_state);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
