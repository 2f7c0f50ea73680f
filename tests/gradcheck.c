#include "gradcheck.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"

static bool gc_seen[AG_OP_COUNT];

bool gc_op_seen(int op) { return gc_seen[op]; }

void gc_begin(gc_case *g, const char *name, gc_forward_fn f) {
    memset(g, 0, sizeof *g);
    g->name = name;
    g->forward = f;
    g->h = 1e-2f;
    g->atol = 2e-3f;
    g->rtol = 2e-2f;
    g->seed = 1;
    mm_site_declare(&g->sites, &g->site, name, MM_B_WEIGHT);
    mm_site_declare(&g->sites, &g->site2, name, MM_B_ACT);
}

ag_var *gc_leaf(gc_case *g, int ndim, const int64_t *shape, float scale) {
    ag_var *v = &g->leaf[g->n_leaf];
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *d = malloc(sizeof(float) * (size_t)n), *gr = calloc((size_t)n, sizeof(float));
    rng r;
    rng_init(&r, 77 + (uint64_t)g->n_leaf, (uint64_t)g->seed);
    for (int64_t i = 0; i < n; i++) d[i] = scale * rng_normal(&r);
    *v = ag_leaf(d, gr, ndim, shape);
    g->n_leaf++;
    return v;
}

void gc_borrow(gc_case *g, ag_var *v) {
    g->borrowed[g->n_leaf] = true;
    g->leaf[g->n_leaf++] = *v;
}

void gc_away_from_zero(gc_case *g, int k, float margin) {
    ag_var *v = &g->leaf[k];
    for (int64_t i = 0; i < ag_numel(v); i++) {
        float *x = &v->value.data[i];
        if (fabsf(*x) < margin) *x = *x < 0 ? -margin - fabsf(*x) : margin + fabsf(*x);
    }
}

void gc_distinct(gc_case *g, int k, float gap) {
    ag_var *v = &g->leaf[k];
    int64_t n = ag_numel(v);
    /* a shuffled grid: values -n/2*gap .. n/2*gap */
    rng r;
    rng_init(&r, 5, 5);
    for (int64_t i = 0; i < n; i++) v->value.data[i] = ((float)i - (float)n / 2) * gap;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = rng_below(&r, (uint32_t)(i + 1));
        float t = v->value.data[i];
        v->value.data[i] = v->value.data[j];
        v->value.data[j] = t;
    }
}

/* sum(R * y) in double */
static double gc_loss(ag_ctx *ctx, gc_case *g, const float *R, int64_t *ny) {
    ag_ctx_reset(ctx);
    bool ge = ctx->run.grad_enabled;
    ctx->run.grad_enabled = false;
    ag_var *y = g->forward(ctx, g);
    ctx->run.grad_enabled = ge;
    double s = 0;
    for (int64_t i = 0; i < ag_numel(y); i++) s += (double)R[i] * y->value.data[i];
    if (ny) *ny = ag_numel(y);
    return s;
}

/* (L(x + h) - L(x - h)) / 2h for coordinate i of leaf v */
static double gc_central(ag_ctx *ctx, gc_case *g, const float *R, ag_var *v, int64_t i, float h) {
    float orig = v->value.data[i];
    v->value.data[i] = orig + h;
    double lp = gc_loss(ctx, g, R, NULL);
    v->value.data[i] = orig - h;
    double lm = gc_loss(ctx, g, R, NULL);
    v->value.data[i] = orig;
    return (lp - lm) / (2.0 * (double)h);
}

void gc_run(gc_case *g) {
    ag_ctx ctx;
    ag_ctx_init(&ctx, 1 << 20);
    ctx.run.seed = 1234;
    /* analytic */
    ag_ctx_reset(&ctx);
    ag_var *y = g->forward(&ctx, g);
    for (int i = 0; i < ctx.n_nodes; i++) gc_seen[ctx.nodes[i].op] = true;
    int64_t ny = ag_numel(y);
    float *R = malloc(sizeof(float) * (size_t)ny);
    rng r;
    rng_init(&r, 999, 0);
    for (int64_t i = 0; i < ny; i++) R[i] = rng_normal(&r);
    for (int k = 0; k < g->n_leaf; k++) memset(g->leaf[k].grad, 0, sizeof(float) * (size_t)ag_numel(&g->leaf[k]));
    ag_backward_from(&ctx, y, R);
    for (int k = 0; k < g->n_leaf; k++) {
        ag_var *v = &g->leaf[k];
        int64_t n = ag_numel(v);
        int64_t nsample = n < 64 ? n : 64;
        for (int64_t t = 0; t < nsample; t++) {
            int64_t i = n <= 64 ? t : (int64_t)rng_below(&r, (uint32_t)n);
            double ana = v->grad[i], num = 0, best = INFINITY;
            float h = g->h;
            for (int s = 0; s < (g->multi_h ? 4 : 1); s++, h /= 3.0f) {
                double est = gc_central(&ctx, g, R, v, i, h);
                if (g->richardson) est = (4.0 * gc_central(&ctx, g, R, v, i, 0.5f * h) - est) / 3.0;
                if (fabs(est - ana) < best) {
                    best = fabs(est - ana);
                    num = est;
                }
            }
            double mag = fmax(fabs(num), fabs(ana));
            ck_assert_msg(fabs(ana - num) <= g->atol + g->rtol * mag,
                          "%s: leaf %d index %lld: analytic %.6g numerical %.6g", g->name, k, (long long)i, ana,
                          num);
        }
    }
    free(R);
    ag_ctx_free(&ctx);
    gc_end(g);
}

void gc_end(gc_case *g) {
    for (int k = 0; k < g->n_leaf; k++) {
        if (g->borrowed[k]) continue;
        free(g->leaf[k].value.data);
        free(g->leaf[k].grad);
    }
    g->n_leaf = 0;
    mm_sites_free(&g->sites);
}
