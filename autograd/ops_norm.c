/* Normalisations: batchnorm2d (NHWC, per channel) and layernorm (last axis). */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "dist/dist.h"
#include "autograd/ops.h"
#include "autograd/ops_util.h"
#include "core/error.h"

/* ---------------- batchnorm2d ---------------- */

typedef struct bn_saved {
    float *mean, *invstd; /* per channel: batch statistics (train) or running ones (eval) */
    int64_t rows, c;
    double rows_all;      /* rows over every rank (sync_bn), else rows */
    double *d_rows_all;   /* the same on the GPU (a device double the forward writes) */
    bool train, relu;     /* relu: the output went through ReLU (its mask gates dy) */
} bn_saved;

/* train.sync_bn over several ranks: the per-channel sums (s1, s2 of c each,
 * then the row count, contiguous) summed over the ranks (dist.h on the CPU,
 * NCCL on GPU ranks). */
static bool bn_synced(const ag_ctx *ctx) { return ctx->run.sync_bn; }

/* Per-channel sums over rows, in double, deterministic for a fixed thread
 * count. Without dy: s1 = sum x, s2 = sum x^2 (forward statistics). With dy:
 * s1 = sum g, s2 = sum g * xhat, xhat = (x - mean) * invstd, g = dy, or 0
 * where the ReLU output y is not positive (backward). */
static void bn_channel_sums(ag_ctx *ctx, const float *x, const float *dy, const float *y, const float *mean,
                            const float *invstd, int64_t rows, int64_t c, double *s1, double *s2) {
    int nth = rows * c >= AG_PAR_MIN ? omp_get_max_threads() : 1;
    double *part = arena_calloc(&ctx->ar, sizeof(double) * (size_t)(2 * nth * c));
#pragma omp parallel num_threads(nth)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        double *p1 = part + 2 * t * c, *p2 = p1 + c;
        for (int64_t r = rows * t / nt; r < rows * (t + 1) / nt; r++)
            for (int64_t j = 0; j < c; j++) {
                double v = x[r * c + j];
                if (dy) {
                    double d = (!y || y[r * c + j] > 0.0f) ? dy[r * c + j] : 0.0f;
                    p1[j] += d;
                    p2[j] += d * ((x[r * c + j] - mean[j]) * invstd[j]);
                } else {
                    p1[j] += v;
                    p2[j] += v * v;
                }
            }
    }
    memset(s1, 0, sizeof(double) * (size_t)c);
    memset(s2, 0, sizeof(double) * (size_t)c);
    for (int t = 0; t < nth; t++)
        for (int64_t j = 0; j < c; j++) {
            s1[j] += part[2 * t * c + j];
            s2[j] += part[(2 * t + 1) * c + j];
        }
}

/* y = relu?(bn(x) [+ res]) with the statistics given (bf16: each intermediate rounded). */
static void bn_apply(const float *xs, const float *g, const float *bt, const float *res, const float *mean,
                     const float *invstd, int64_t rows, int64_t c, bool relu, bool bf16, float *ys) {
#pragma omp parallel for schedule(static) if (rows * c >= AG_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        /* fp32: branch-free loops per case, so they vectorize */
        const float *xr = xs + r * c;
        float *yr = ys + r * c;
        if (!bf16 && !res) {
            for (int64_t j = 0; j < c; j++) {
                float v = (xr[j] - mean[j]) * invstd[j] * g[j] + bt[j];
                yr[j] = relu ? (v > 0.0f ? v : 0.0f) : v;
            }
            continue;
        }
        if (!bf16) {
            const float *rr = res + r * c;
            for (int64_t j = 0; j < c; j++) {
                float v = (xr[j] - mean[j]) * invstd[j] * g[j] + bt[j] + rr[j];
                yr[j] = relu ? (v > 0.0f ? v : 0.0f) : v;
            }
            continue;
        }
        for (int64_t j = 0; j < c; j++) {
            float v = (xs[r * c + j] - mean[j]) * invstd[j] * g[j] + bt[j];
            if (bf16) v = ag_bf16_round(v);
            if (res) v = bf16 ? ag_bf16_round(v + res[r * c + j]) : v + res[r * c + j];
            if (relu) v = v > 0.0f ? v : 0.0f;
            ys[r * c + j] = v;
        }
    }
}

ag_var *ag_batchnorm2d(ag_ctx *ctx, ag_var *x, ag_var *gamma, ag_var *beta, float *running_mean, float *running_var,
                       float momentum, float eps) {
    return ag_batchnorm2d_act(ctx, x, gamma, beta, running_mean, running_var, momentum, eps, NULL, false);
}

ag_var *ag_batchnorm2d_act(ag_ctx *ctx, ag_var *x, ag_var *gamma, ag_var *beta, float *running_mean,
                           float *running_var, float momentum, float eps, ag_var *residual, bool relu) {
    int64_t c = x->value.shape[x->value.ndim - 1], rows = ag_numel(x) / c;
    MX_ASSERTF(!residual || ag_numel(residual) == rows * c, "batchnorm2d: residual has %lld elements, want %lld",
               residual ? (long long)ag_numel(residual) : 0LL, (long long)(rows * c));
    ag_var *y = ag_new(ctx, x->value.ndim, x->value.shape);
    float *mean = arena_alloc(&ctx->ar, sizeof(float) * (size_t)c), *invstd = arena_alloc(&ctx->ar, sizeof(float) * (size_t)c);
    bool bf16 = ctx->run.elementwise_bf16;
    double rows_all = (double)rows;
    double *d_rows_all = NULL;
    if (ctx->gpu) {
        bool synced = ctx->run.training && bn_synced(ctx);
        if (synced) d_rows_all = arena_alloc(&ctx->ar, sizeof(double));
        cu_bn_args a = {rows, c, momentum, eps, ctx->run.training, relu, bf16, synced, d_rows_all};
        arena_mark m = arena_get_mark(&ctx->scratch);
        double *work = arena_alloc(&ctx->scratch, cu_bn_work_bytes(rows, c));
        cu_op_batchnorm(&a, x->value.data, gamma->value.data, beta->value.data, residual ? residual->value.data : NULL,
                        running_mean, running_var, y->value.data, mean, invstd, work);
        arena_release(&ctx->scratch, m);
    } else if (ctx->run.training) {
        double *s1 = arena_alloc(&ctx->ar, sizeof(double) * (size_t)(2 * c + 1)), *s2 = s1 + c;
        bn_channel_sums(ctx, x->value.data, NULL, NULL, NULL, NULL, rows, c, s1, s2);
        s2[c] = (double)rows;
        if (bn_synced(ctx)) dist_sum_f64(s1, 2 * c + 1); /* the global batch's statistics */
        rows_all = s2[c];
        for (int64_t j = 0; j < c; j++)
            ag_k_bn_stats(s1[j], s2[j], (int64_t)rows_all, momentum, eps, &mean[j], &invstd[j],
                          running_mean ? &running_mean[j] : NULL, running_mean ? &running_var[j] : NULL);
    } else {
        for (int64_t j = 0; j < c; j++) {
            mean[j] = running_mean[j];
            invstd[j] = ag_k_bn_eval_invstd(running_var[j], eps);
        }
    }
    if (!ctx->gpu) bn_apply(x->value.data, gamma->value.data, beta->value.data, residual ? residual->value.data : NULL,
                            mean, invstd, rows, c, relu, bf16, y->value.data);
    ag_var *ins[4] = {x, gamma, beta, residual};
    ag_node *n = ag_record(ctx, AG_OP_BATCHNORM2D, y, ins, residual ? 4 : 3);
    if (n) {
        bn_saved *s = ag_save(ctx, n, sizeof *s);
        *s = (bn_saved){mean, invstd, rows, c, rows_all, d_rows_all, ctx->run.training, relu};
    }
    return y;
}

void ag_batchnorm2d_backward(ag_ctx *ctx, ag_node *n) {
    const bn_saved *s = n->saved;
    ag_var *x = n->in[0], *gamma = n->in[1], *beta = n->in[2];
    int64_t rows = s->rows, c = s->c;
    const float *xs = x->value.data, *dy = n->out->grad, *g = gamma->value.data;
    const float *ys = s->relu ? n->out->value.data : NULL; /* ReLU mask: output > 0 */
    ag_var *res = n->n_in > 3 ? n->in[3] : NULL;
    if (ctx->gpu) {
        cu_bn_args a = {rows, c, 0.0f, 0.0f, s->train, s->relu, false, s->d_rows_all != NULL, s->d_rows_all};
        float *dr = res && res->requires_grad ? ag_grad(ctx, res) : NULL;
        float *dg = gamma->requires_grad ? ag_grad(ctx, gamma) : NULL, *db = beta->requires_grad ? ag_grad(ctx, beta) : NULL;
        float *dx = x->requires_grad ? ag_grad(ctx, x) : NULL;
        arena_mark m = arena_get_mark(&ctx->scratch);
        double *work = arena_alloc(&ctx->scratch, cu_bn_work_bytes(rows, c));
        cu_op_batchnorm_backward(&a, xs, g, n->out->value.data, s->mean, s->invstd, dy, dx, dg, db, dr, work);
        arena_release(&ctx->scratch, m);
        return;
    }
    if (res && res->requires_grad) { /* the residual's gradient: dy through the ReLU */
        float *dr = ag_grad(ctx, res);
        int64_t cnt = rows * c;
#pragma omp parallel for schedule(static) if (cnt >= AG_PAR_MIN)
        for (int64_t i = 0; i < cnt; i++) dr[i] += (!ys || ys[i] > 0.0f) ? dy[i] : 0.0f;
    }
    double *sdy = arena_alloc(&ctx->ar, sizeof(double) * (size_t)(2 * c + 1)), *sdyx = sdy + c;
    bn_channel_sums(ctx, xs, dy, ys, s->mean, s->invstd, rows, c, sdy, sdyx);
    if (gamma->requires_grad) {
        float *dg = ag_grad(ctx, gamma);
        for (int64_t j = 0; j < c; j++) dg[j] += (float)sdyx[j];
    }
    if (beta->requires_grad) {
        float *db = ag_grad(ctx, beta);
        for (int64_t j = 0; j < c; j++) db[j] += (float)sdy[j];
    }
    if (!x->requires_grad) return;
    /* dgamma and dbeta above are this rank's (the gradient sum adds the ranks');
       dx needs the global batch's sums, each rank's dy being its own loss's */
    if (s->train && bn_synced(ctx)) sdyx[c] = 0, dist_sum_f64(sdy, 2 * c + 1);
    float *dx = ag_grad(ctx, x);
    float *k1 = arena_alloc(&ctx->ar, sizeof(float) * (size_t)c), *k2 = arena_alloc(&ctx->ar, sizeof(float) * (size_t)c),
          *k3 = arena_alloc(&ctx->ar, sizeof(float) * (size_t)c);
    for (int64_t j = 0; j < c; j++) {
        k1[j] = g[j] * s->invstd[j];
        /* train: dx = g*invstd * (dy - mean(dy) - xhat * mean(dy*xhat)); eval: g*invstd*dy */
        k2[j] = s->train ? (float)(sdy[j] / s->rows_all) : 0.0f;
        k3[j] = s->train ? (float)(sdyx[j] / s->rows_all) : 0.0f;
    }
#pragma omp parallel for schedule(static) if (rows * c >= AG_PAR_MIN)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < c; j++) {
            float xhat = (xs[r * c + j] - s->mean[j]) * s->invstd[j];
            float d = (!ys || ys[r * c + j] > 0.0f) ? dy[r * c + j] : 0.0f;
            dx[r * c + j] += k1[j] * (d - k2[j] - xhat * k3[j]);
        }
}

/* ---------------- layernorm over the last axis ---------------- */

typedef struct ln_saved {
    float *mean, *rstd;
    int64_t rows, d;
} ln_saved;

static void ln_forward(const float *xs, const float *g, const float *b, int64_t rows, int64_t d, float eps, float *ys,
                       float *mean, float *rstd) {
#pragma omp parallel for schedule(static) if (rows * d >= AG_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = xs + r * d;
        double s1 = 0, s2 = 0;
        for (int64_t j = 0; j < d; j++) s1 += xr[j];
        double m = s1 / (double)d;
        for (int64_t j = 0; j < d; j++) s2 += (xr[j] - m) * (xr[j] - m);
        float rs = (float)(1.0 / sqrt(s2 / (double)d + eps));
        mean[r] = (float)m;
        rstd[r] = rs;
        for (int64_t j = 0; j < d; j++) ys[r * d + j] = (xr[j] - (float)m) * rs * g[j] + b[j];
    }
}

ag_var *ag_layernorm(ag_ctx *ctx, ag_var *x, ag_var *gamma, ag_var *beta, float eps) {
    int64_t d = x->value.shape[x->value.ndim - 1], rows = ag_numel(x) / d;
    ag_var *y = ag_new(ctx, x->value.ndim, x->value.shape);
    float *mean = arena_alloc(&ctx->ar, sizeof(float) * (size_t)rows), *rstd = arena_alloc(&ctx->ar, sizeof(float) * (size_t)rows);
    const float *xs = x->value.data, *g = gamma->value.data, *b = beta->value.data;
    float *ys = y->value.data;
    if (ctx->gpu) cu_op_layernorm(rows, d, eps, xs, g, b, ys, mean, rstd);
    else ln_forward(xs, g, b, rows, d, eps, ys, mean, rstd);
    ag_var *ins[3] = {x, gamma, beta};
    ag_node *n = ag_record(ctx, AG_OP_LAYERNORM, y, ins, 3);
    if (n) {
        ln_saved *s = ag_save(ctx, n, sizeof *s);
        *s = (ln_saved){mean, rstd, rows, d};
    }
    return y;
}

void ag_layernorm_backward(ag_ctx *ctx, ag_node *n) {
    const ln_saved *s = n->saved;
    ag_var *x = n->in[0], *gamma = n->in[1], *beta = n->in[2];
    int64_t rows = s->rows, d = s->d;
    const float *xs = x->value.data, *dy = n->out->grad, *g = gamma->value.data;
    if (ctx->gpu) {
        cu_op_layernorm_backward(rows, d, xs, g, s->mean, s->rstd, dy, x->requires_grad ? ag_grad(ctx, x) : NULL,
                                 gamma->requires_grad ? ag_grad(ctx, gamma) : NULL,
                                 beta->requires_grad ? ag_grad(ctx, beta) : NULL);
        return;
    }
    if (x->requires_grad) {
        float *dx = ag_grad(ctx, x);
#pragma omp parallel for schedule(static) if (rows * d >= AG_PAR_MIN)
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = xs + r * d, *dr = dy + r * d;
            float m = s->mean[r], rs = s->rstd[r];
            double a = 0, bsum = 0;
            for (int64_t j = 0; j < d; j++) {
                double dxh = (double)dr[j] * g[j];
                a += dxh;
                bsum += dxh * ((xr[j] - m) * rs);
            }
            float ma = (float)(a / (double)d), mb = (float)(bsum / (double)d);
            for (int64_t j = 0; j < d; j++) {
                float xhat = (xr[j] - m) * rs;
                dx[r * d + j] += rs * (dr[j] * g[j] - ma - xhat * mb);
            }
        }
    }
    if (gamma->requires_grad || beta->requires_grad) {
        int nth = rows * d >= AG_PAR_MIN ? omp_get_max_threads() : 1;
        float *part = arena_calloc(&ctx->ar, sizeof(float) * (size_t)(2 * nth * d));
#pragma omp parallel num_threads(nth)
        {
            int t = omp_get_thread_num(), nt = omp_get_num_threads();
            float *pg = part + 2 * t * d, *pb = pg + d;
            for (int64_t r = rows * t / nt; r < rows * (t + 1) / nt; r++)
                for (int64_t j = 0; j < d; j++) {
                    float xhat = (xs[r * d + j] - s->mean[r]) * s->rstd[r];
                    pg[j] += dy[r * d + j] * xhat;
                    pb[j] += dy[r * d + j];
                }
        }
        float *dg = gamma->requires_grad ? ag_grad(ctx, gamma) : NULL, *db = beta->requires_grad ? ag_grad(ctx, beta) : NULL;
        for (int t = 0; t < nth; t++)
            for (int64_t j = 0; j < d; j++) {
                if (dg) dg[j] += part[2 * t * d + j];
                if (db) db[j] += part[(2 * t + 1) * d + j];
            }
    }
}
