/* Elementwise ops, softmax, dropout/drop-path, add, losses and reductions. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/ops_kernel.h"
#include "autograd/ops_util.h"
#include "core/error.h"
#include "core/fastmath.h"
#include "core/rng.h"

static ag_var *ag_unary_out(ag_ctx *ctx, ag_var *x) { return ag_new(ctx, x->value.ndim, x->value.shape); }

static ag_node *ag_record1(ag_ctx *ctx, ag_op op, ag_var *y, ag_var *x) {
    ag_var *ins[1] = {x};
    return ag_record(ctx, op, y, ins, 1);
}

/* ---------------- relu ---------------- */

ag_var *ag_relu(ag_ctx *ctx, ag_var *x) {
    ag_var *y = ag_unary_out(ctx, x);
    int64_t n = ag_numel(x);
    const float *xs = x->value.data;
    float *ys = y->value.data;
    if (ctx->gpu) cu_op_unary(CU_UNARY_RELU, n, xs, ys);
    else
#pragma omp parallel for schedule(static) if (n >= AG_PAR_MIN)
        for (int64_t i = 0; i < n; i++) ys[i] = ag_k_relu(xs[i]);
    ag_record1(ctx, AG_OP_RELU, y, x);
    return y;
}

void ag_relu_backward(ag_ctx *ctx, ag_node *n) {
    ag_var *x = n->in[0];
    int64_t cnt = ag_numel(x);
    const float *ys = n->out->value.data, *dy = n->out->grad;
    float *dx = ag_grad(ctx, x);
    if (ctx->gpu) cu_op_unary_backward(CU_UNARY_RELU, cnt, ys, dy, dx);
    else
#pragma omp parallel for schedule(static) if (cnt >= AG_PAR_MIN)
        for (int64_t i = 0; i < cnt; i++) dx[i] += ag_k_relu_back(ys[i], dy[i]);
}

/* ---------------- gelu (exact and tanh) ---------------- */

ag_var *ag_gelu(ag_ctx *ctx, ag_var *x) {
    ag_var *y = ag_unary_out(ctx, x);
    int64_t n = ag_numel(x);
    const float *xs = x->value.data;
    float *ys = y->value.data;
    if (ctx->gpu) cu_op_unary(CU_UNARY_GELU, n, xs, ys);
    else
#pragma omp parallel for schedule(static) if (n >= AG_PAR_MIN)
        for (int64_t i = 0; i < n; i++) ys[i] = ag_k_gelu(xs[i]);
    ag_record1(ctx, AG_OP_GELU, y, x);
    return y;
}

void ag_gelu_backward(ag_ctx *ctx, ag_node *n) {
    ag_var *x = n->in[0];
    int64_t cnt = ag_numel(x);
    const float *xs = x->value.data, *dy = n->out->grad;
    float *dx = ag_grad(ctx, x);
    if (ctx->gpu) cu_op_unary_backward(CU_UNARY_GELU, cnt, xs, dy, dx);
    else
#pragma omp parallel for schedule(static) if (cnt >= AG_PAR_MIN)
        for (int64_t i = 0; i < cnt; i++) dx[i] += dy[i] * ag_k_gelu_grad(xs[i]);
}

ag_var *ag_gelu_tanh(ag_ctx *ctx, ag_var *x) {
    ag_var *y = ag_unary_out(ctx, x);
    int64_t n = ag_numel(x);
    const float *xs = x->value.data;
    float *ys = y->value.data;
    if (ctx->gpu) cu_op_unary(CU_UNARY_GELU_TANH, n, xs, ys);
    else
#pragma omp parallel for schedule(static) if (n >= AG_PAR_MIN)
        for (int64_t i = 0; i < n; i++) ys[i] = ag_k_gelu_tanh(xs[i]);
    ag_record1(ctx, AG_OP_GELU_TANH, y, x);
    return y;
}

void ag_gelu_tanh_backward(ag_ctx *ctx, ag_node *n) {
    ag_var *x = n->in[0];
    int64_t cnt = ag_numel(x);
    const float *xs = x->value.data, *dy = n->out->grad;
    float *dx = ag_grad(ctx, x);
    if (ctx->gpu) cu_op_unary_backward(CU_UNARY_GELU_TANH, cnt, xs, dy, dx);
    else
#pragma omp parallel for schedule(static) if (cnt >= AG_PAR_MIN)
        for (int64_t i = 0; i < cnt; i++) dx[i] += dy[i] * ag_k_gelu_tanh_grad(xs[i]);
}

/* ---------------- softmax over the last axis ---------------- */

ag_var *ag_softmax(ag_ctx *ctx, ag_var *x) {
    ag_var *y = ag_unary_out(ctx, x);
    int64_t d = x->value.shape[x->value.ndim - 1], rows = ag_numel(x) / d;
    const float *xs = x->value.data;
    float *ys = y->value.data;
    if (ctx->gpu) {
        cu_op_softmax(rows, d, xs, ys);
        ag_record1(ctx, AG_OP_SOFTMAX, y, x);
        return y;
    }
#pragma omp parallel for schedule(static) if (rows * d >= AG_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = xs + r * d;
        float *yr = ys + r * d, mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < d; j++) mx = xr[j] > mx ? xr[j] : mx;
        for (int64_t j = 0; j < d; j++) sum += (yr[j] = mx_expf(xr[j] - mx));
        for (int64_t j = 0; j < d; j++) yr[j] /= sum;
    }
    ag_record1(ctx, AG_OP_SOFTMAX, y, x);
    return y;
}

void ag_softmax_backward(ag_ctx *ctx, ag_node *n) {
    ag_var *x = n->in[0];
    int64_t d = x->value.shape[x->value.ndim - 1], rows = ag_numel(x) / d;
    const float *ys = n->out->value.data, *dy = n->out->grad;
    float *dx = ag_grad(ctx, x);
    if (ctx->gpu) {
        cu_op_softmax_backward(rows, d, ys, dy, dx);
        return;
    }
#pragma omp parallel for schedule(static) if (rows * d >= AG_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = ys + r * d, *gr = dy + r * d;
        float dot = 0;
        for (int64_t j = 0; j < d; j++) dot += yr[j] * gr[j];
        for (int64_t j = 0; j < d; j++) dx[r * d + j] += yr[j] * (gr[j] - dot);
    }
}

/* ---------------- dropout and drop-path ----------------
 * Masks come from the counter-based RNG (stream = this step's call number),
 * so the backward recomputes them instead of storing them. */

typedef struct drop_saved {
    uint64_t stream;
    float p;
    int64_t group; /* elements sharing one draw: 1 (dropout) or a sample (drop-path) */
} drop_saved;

static inline float drop_scale(uint64_t seed, const drop_saved *s, int64_t i) {
    return ag_k_drop_scale(seed, s->stream, s->p, s->group, i);
}

static ag_var *ag_drop(ag_ctx *ctx, ag_var *x, float p, int64_t group, ag_op op) {
    MX_ASSERTF(p >= 0.0f && p < 1.0f, "drop probability %g out of [0, 1)", (double)p);
    if (!ctx->run.training || p == 0.0f) return x;
    ag_var *y = ag_unary_out(ctx, x);
    drop_saved s = {rng_mix(ctx->run.step, ctx->rng_calls++), p, group};
    int64_t n = ag_numel(x);
    const float *xs = x->value.data;
    float *ys = y->value.data;
    if (ctx->gpu) cu_op_drop(n, ctx->run.seed, s.stream, s.p, s.group, xs, ys);
    else
#pragma omp parallel for schedule(static) if (n >= AG_PAR_MIN)
        for (int64_t i = 0; i < n; i++) ys[i] = xs[i] * drop_scale(ctx->run.seed, &s, i);
    ag_node *node = ag_record1(ctx, op, y, x);
    if (node) *(drop_saved *)ag_save(ctx, node, sizeof s) = s;
    return y;
}

ag_var *ag_dropout(ag_ctx *ctx, ag_var *x, float p) { return ag_drop(ctx, x, p, 1, AG_OP_DROPOUT); }

ag_var *ag_drop_path(ag_ctx *ctx, ag_var *x, float p) {
    return ag_drop(ctx, x, p, ag_numel(x) / x->value.shape[0], AG_OP_DROP_PATH);
}

static void ag_drop_backward(ag_ctx *ctx, ag_node *n) {
    const drop_saved *s = n->saved;
    ag_var *x = n->in[0];
    int64_t cnt = ag_numel(x);
    const float *dy = n->out->grad;
    float *dx = ag_grad(ctx, x);
    if (ctx->gpu) cu_op_drop_backward(cnt, ctx->run.seed, s->stream, s->p, s->group, dy, dx);
    else
#pragma omp parallel for schedule(static) if (cnt >= AG_PAR_MIN)
        for (int64_t i = 0; i < cnt; i++) dx[i] += dy[i] * drop_scale(ctx->run.seed, s, i);
}

void ag_dropout_backward(ag_ctx *ctx, ag_node *n) { ag_drop_backward(ctx, n); }
void ag_drop_path_backward(ag_ctx *ctx, ag_node *n) { ag_drop_backward(ctx, n); }

/* ---------------- add (with b repeating over a's leading dims) ---------------- */

ag_var *ag_add(ag_ctx *ctx, ag_var *a, ag_var *b) {
    int64_t na = ag_numel(a), nb = ag_numel(b);
    MX_ASSERTF(nb > 0 && na % nb == 0, "add: %lld elements do not repeat over %lld", (long long)nb, (long long)na);
    ag_var *y = ag_unary_out(ctx, a);
    const float *as = a->value.data, *bs = b->value.data;
    float *ys = y->value.data;
    if (ctx->gpu) cu_op_add(na, nb, as, bs, ys);
    else
#pragma omp parallel for schedule(static) if (na >= AG_PAR_MIN)
        for (int64_t i = 0; i < na; i++) ys[i] = as[i] + bs[i % nb];
    ag_var *ins[2] = {a, b};
    ag_record(ctx, AG_OP_ADD, y, ins, 2);
    return y;
}

void ag_add_backward(ag_ctx *ctx, ag_node *n) {
    ag_var *a = n->in[0], *b = n->in[1];
    int64_t na = ag_numel(a), nb = ag_numel(b);
    const float *dy = n->out->grad;
    if (a->requires_grad) ag_accumulate(ctx, ag_grad(ctx, a), dy, na);
    if (b->requires_grad) {
        if (na == nb) ag_accumulate(ctx, ag_grad(ctx, b), dy, nb);
        else ag_colsum_add(ctx, dy, na / nb, nb, ag_grad(ctx, b));
    }
}

/* ---------------- cross-entropy with label smoothing ----------------
 * loss = mean_i [ -(1-e) log p[i, y_i] - (e/C) sum_c log p[i, c] ];
 * dlogits = (softmax - target) / N, target = (1-e) onehot + e/C. */

typedef struct ce_saved {
    float *prob;
    const int32_t *labels;
    float smoothing;
} ce_saved;

ag_var *ag_cross_entropy(ag_ctx *ctx, ag_var *logits, const int32_t *labels, float smoothing) {
    MX_ASSERT(logits->value.ndim == 2);
    int64_t N = logits->value.shape[0], C = logits->value.shape[1];
    float *prob = arena_alloc(&ctx->ar, sizeof(float) * (size_t)(N * C));
    double *row_loss = arena_alloc(&ctx->ar, sizeof(double) * (size_t)N);
    const float *ls = logits->value.data;
    int64_t one = 1;
    ag_var *y = ag_new(ctx, 1, &one);
    const int32_t *lab = labels;
    if (ctx->gpu) { /* labels come from the host: checked there, copied with the step's data */
        for (int64_t i = 0; i < N; i++)
            MX_ASSERTF(labels[i] >= 0 && labels[i] < C, "label %d out of range [0, %lld)", labels[i], (long long)C);
        int32_t *d = arena_alloc(&ctx->ar, sizeof(int32_t) * (size_t)N);
        cu_to_device_async(d, labels, sizeof(int32_t) * (size_t)N);
        lab = d;
        cu_op_cross_entropy(N, C, ls, lab, smoothing, prob, row_loss, y->value.data);
    } else {
#pragma omp parallel for schedule(static) if (N * C >= AG_PAR_MIN)
        for (int64_t i = 0; i < N; i++) {
            MX_ASSERTF(labels[i] >= 0 && labels[i] < C, "label %d out of range [0, %lld)", labels[i], (long long)C);
            const float *r = ls + i * C;
            double mx = -INFINITY, sum = 0, sum_logit = 0;
            for (int64_t c = 0; c < C; c++) mx = r[c] > mx ? r[c] : mx;
            for (int64_t c = 0; c < C; c++) {
                sum += exp(r[c] - mx);
                sum_logit += r[c];
            }
            double lse = mx + log(sum);
            for (int64_t c = 0; c < C; c++) prob[i * C + c] = (float)exp(r[c] - lse);
            double nll = lse - r[labels[i]], smooth = lse - sum_logit / (double)C;
            row_loss[i] = (1.0 - smoothing) * nll + smoothing * smooth;
        }
        double total = 0;
        for (int64_t i = 0; i < N; i++) total += row_loss[i];
        y->value.data[0] = (float)(total / (double)N);
    }
    ag_node *n = ag_record1(ctx, AG_OP_CROSS_ENTROPY, y, logits);
    if (n) {
        ce_saved *s = ag_save(ctx, n, sizeof *s);
        *s = (ce_saved){prob, lab, smoothing};
    }
    return y;
}

void ag_cross_entropy_backward(ag_ctx *ctx, ag_node *n) {
    const ce_saved *s = n->saved;
    ag_var *x = n->in[0];
    int64_t N = x->value.shape[0], C = x->value.shape[1];
    float *dx = ag_grad(ctx, x);
    if (ctx->gpu) {
        cu_op_cross_entropy_backward(N, C, s->prob, s->labels, s->smoothing, n->out->grad, dx);
        return;
    }
    float g = n->out->grad[0] / (float)N, off = s->smoothing / (float)C;
    for (int64_t i = 0; i < N; i++)
        for (int64_t c = 0; c < C; c++) {
            float target = off + (c == s->labels[i] ? 1.0f - s->smoothing : 0.0f);
            dx[i * C + c] += g * (s->prob[i * C + c] - target);
        }
}

/* ---------------- mean and sum to a scalar ---------------- */

static ag_var *ag_reduce(ag_ctx *ctx, ag_var *x, ag_op op) {
    int64_t n = ag_numel(x), one = 1;
    ag_var *y = ag_new(ctx, 1, &one);
    if (ctx->gpu) {
        cu_op_reduce(n, op == AG_OP_MEAN, x->value.data, y->value.data);
    } else {
        double s = 0;
        for (int64_t i = 0; i < n; i++) s += x->value.data[i];
        y->value.data[0] = (float)(op == AG_OP_MEAN ? s / (double)n : s);
    }
    ag_record1(ctx, op, y, x);
    return y;
}

ag_var *ag_mean(ag_ctx *ctx, ag_var *x) { return ag_reduce(ctx, x, AG_OP_MEAN); }
ag_var *ag_sum(ag_ctx *ctx, ag_var *x) { return ag_reduce(ctx, x, AG_OP_SUM); }

static void ag_reduce_backward(ag_ctx *ctx, ag_node *n, float scale) {
    ag_var *x = n->in[0];
    int64_t cnt = ag_numel(x);
    float *dx = ag_grad(ctx, x);
    if (ctx->gpu) {
        cu_op_reduce_backward(cnt, scale, n->out->grad, dx);
        return;
    }
    float g = n->out->grad[0] * scale;
    for (int64_t i = 0; i < cnt; i++) dx[i] += g;
}

void ag_mean_backward(ag_ctx *ctx, ag_node *n) { ag_reduce_backward(ctx, n, 1.0f / (float)ag_numel(n->in[0])); }
void ag_sum_backward(ag_ctx *ctx, ag_node *n) { ag_reduce_backward(ctx, n, 1.0f); }

void ag_buffer_add(ag_ctx *ctx, float *p, int64_t n, float v) {
    if (ctx->gpu) cu_op_add_scalar(n, v, p);
    else
        for (int64_t i = 0; i < n; i++) p[i] += v;
}
