/* Products: linear, matmul, conv2d, attention. Each describes its product
 * and hands it to the product path (mm.h). */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/ops_util.h"
#include "core/error.h"
#include "core/fastmath.h"

/* ---------------- shared helpers ---------------- */

void ag_colsum_add(ag_ctx *ctx, const float *x, int64_t rows, int64_t cols, float *out) {
    if (ctx->gpu) {
        cu_op_colsum_add(rows, cols, x, out);
        return;
    }
    int nth = rows * cols >= AG_PAR_MIN ? omp_get_max_threads() : 1;
    float *part = arena_calloc(&ctx->ar, sizeof(float) * (size_t)(nth * cols));
#pragma omp parallel num_threads(nth)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *p = part + t * cols;
        for (int64_t r = rows * t / nt; r < rows * (t + 1) / nt; r++)
            for (int64_t c = 0; c < cols; c++) p[c] += x[r * cols + c];
    }
    for (int t = 0; t < nth; t++)
        for (int64_t c = 0; c < cols; c++) out[c] += part[t * cols + c];
}

void ag_rows_add_bias(const ag_ctx *ctx, float *y, int64_t rows, int64_t cols, const float *b) {
    if (ctx->gpu) {
        cu_op_add(rows * cols, cols, y, b, y);
        return;
    }
#pragma omp parallel for schedule(static) if (rows * cols >= AG_PAR_MIN)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) y[r * cols + c] += b[c];
}

void ag_accumulate(const ag_ctx *ctx, float *dst, const float *src, int64_t n) {
    if (ctx->gpu) {
        cu_op_accumulate(n, src, dst);
        return;
    }
#pragma omp parallel for schedule(static) if (n >= AG_PAR_MIN)
    for (int64_t i = 0; i < n; i++) dst[i] += src[i];
}

/* ---------------- linear: y = x W^T + b ---------------- */

typedef struct linear_saved {
    const mm_site *site;
    mm_saved *mm;
} linear_saved;

/* The product's saved state, when the op will be recorded. */
static mm_saved *ag_mm_saved(ag_ctx *ctx, ag_var *const *ins, int n) {
    return ag_will_record(ctx, ins, n) ? arena_calloc(&ctx->meta, sizeof(mm_saved)) : NULL;
}

ag_var *ag_linear(ag_ctx *ctx, const mm_site *site, ag_var *x, ag_var *w, ag_var *b) {
    const tensor *xv = &x->value, *wv = &w->value;
    int64_t in = wv->shape[1], out = wv->shape[0];
    MX_ASSERTF(xv->shape[xv->ndim - 1] == in, "linear %s: input width %lld, weight wants %lld", site->name,
               (long long)xv->shape[xv->ndim - 1], (long long)in);
    int64_t rows = tensor_numel(xv) / in;
    int64_t shape[TENSOR_MAX_DIMS];
    memcpy(shape, xv->shape, sizeof shape);
    shape[xv->ndim - 1] = out;
    ag_var *y = ag_new(ctx, xv->ndim, shape);
    ag_var *ins[3] = {x, w, b};
    mm_saved *sv = ag_mm_saved(ctx, ins, b ? 3 : 2);
    mm_shape sh = mm_shape_dense(rows, out, in, true);
    mm_forward(ctx, site, &sh, xv->data, wv->data, y->value.data, sv);
    if (b) ag_rows_add_bias(ctx, y->value.data, rows, out, b->value.data);
    ag_node *n = ag_record(ctx, AG_OP_LINEAR, y, ins, b ? 3 : 2);
    if (n) *(linear_saved *)ag_save(ctx, n, sizeof(linear_saved)) = (linear_saved){site, sv};
    return y;
}

void ag_linear_backward(ag_ctx *ctx, ag_node *n) {
    const linear_saved *s = n->saved;
    ag_var *x = n->in[0], *w = n->in[1], *b = n->n_in > 2 ? n->in[2] : NULL;
    int64_t in = w->value.shape[1], out = w->value.shape[0], rows = ag_numel(x) / in;
    mm_shape sh = mm_shape_dense(rows, out, in, true);
    mm_backward(ctx, s->site, &sh, s->mm, x->value.data, w->value.data, n->out->grad,
                x->requires_grad ? ag_grad(ctx, x) : NULL, w->requires_grad ? ag_grad(ctx, w) : NULL);
    if (b && b->requires_grad) ag_colsum_add(ctx, n->out->grad, rows, out, ag_grad(ctx, b));
}

/* ---------------- batched matmul ---------------- */

typedef struct matmul_saved {
    const mm_site *site;
    mm_shape sh;
    mm_saved *mm;
} matmul_saved;

ag_var *ag_matmul(ag_ctx *ctx, const mm_site *site, ag_var *a, ag_var *b, bool trans_b) {
    const tensor *av = &a->value, *bv = &b->value;
    MX_ASSERT(av->ndim == 3 && bv->ndim == 3 && av->shape[0] == bv->shape[0]);
    int64_t B = av->shape[0], M = av->shape[1], K = av->shape[2];
    int64_t N = trans_b ? bv->shape[1] : bv->shape[2];
    MX_ASSERTF((trans_b ? bv->shape[2] : bv->shape[1]) == K, "matmul %s: inner dimensions differ", site->name);
    int64_t shape[3] = {B, M, N};
    ag_var *y = ag_new(ctx, 3, shape);
    ag_var *ins[2] = {a, b};
    mm_saved *sv = ag_mm_saved(ctx, ins, 2);
    mm_shape sh = mm_shape_batched(B, M, N, K, trans_b);
    mm_forward(ctx, site, &sh, av->data, bv->data, y->value.data, sv);
    ag_node *n = ag_record(ctx, AG_OP_MATMUL, y, ins, 2);
    if (n) *(matmul_saved *)ag_save(ctx, n, sizeof(matmul_saved)) = (matmul_saved){site, sh, sv};
    return y;
}

void ag_matmul_backward(ag_ctx *ctx, ag_node *n) {
    const matmul_saved *s = n->saved;
    ag_var *a = n->in[0], *b = n->in[1];
    mm_backward(ctx, s->site, &s->sh, s->mm, a->value.data, b->value.data, n->out->grad,
                a->requires_grad ? ag_grad(ctx, a) : NULL, b->requires_grad ? ag_grad(ctx, b) : NULL);
}

/* ---------------- conv2d, NHWC ----------------
 * Y [N*OH*OW, O] = im2col(x) . W^T: the product path gathers, chunks and
 * quantizes (x before the gather, blocks along channels); see mm_gemm.c. */

typedef struct conv_saved {
    const mm_site *site;
    mm_shape sh;
    mm_saved *mm;
} conv_saved;

ag_var *ag_conv2d(ag_ctx *ctx, const mm_site *site, ag_var *x, ag_var *w, ag_var *b, int stride, int pad) {
    const tensor *xv = &x->value, *wv = &w->value;
    MX_ASSERTF(xv->ndim == 4 && wv->ndim == 4 && wv->shape[3] == xv->shape[3],
               "conv %s: want x [N,H,W,C] and w [O,KH,KW,C] with matching C", site->name);
    MX_ASSERTF(xv->shape[1] + 2 * pad >= wv->shape[1] && xv->shape[2] + 2 * pad >= wv->shape[2],
               "conv %s: kernel larger than the padded input", site->name);
    mm_shape sh = mm_shape_conv(xv->shape[0], xv->shape[1], xv->shape[2], xv->shape[3], wv->shape[0], wv->shape[1],
                                wv->shape[2], stride, pad);
    int64_t shape[4] = {sh.g.n, sh.g.oh, sh.g.ow, wv->shape[0]};
    ag_var *y = ag_new(ctx, 4, shape);
    ag_var *ins[3] = {x, w, b};
    mm_saved *sv = ag_mm_saved(ctx, ins, b ? 3 : 2);
    mm_forward(ctx, site, &sh, xv->data, wv->data, y->value.data, sv);
    if (b) ag_rows_add_bias(ctx, y->value.data, sh.m, sh.n, b->value.data);
    ag_node *n = ag_record(ctx, AG_OP_CONV2D, y, ins, b ? 3 : 2);
    if (n) *(conv_saved *)ag_save(ctx, n, sizeof(conv_saved)) = (conv_saved){site, sh, sv};
    return y;
}

void ag_conv2d_backward(ag_ctx *ctx, ag_node *n) {
    const conv_saved *s = n->saved;
    ag_var *x = n->in[0], *w = n->in[1], *b = n->n_in > 2 ? n->in[2] : NULL;
    const float *dy = n->out->grad;
    mm_backward(ctx, s->site, &s->sh, s->mm, x->value.data, w->value.data, dy,
                x->requires_grad ? ag_grad(ctx, x) : NULL, w->requires_grad ? ag_grad(ctx, w) : NULL);
    if (b && b->requires_grad) ag_colsum_add(ctx, dy, s->sh.m, s->sh.n, ag_grad(ctx, b));
}

/* ---------------- multi-head self-attention core ----------------
 * qkv [B, T, 3, H, hd] -> q, k, v [B, H, T, hd] (contiguous copies);
 * S = Q K^T (batch B*H), P = softmax(S * scale), O = P V;
 * out [B, T, H, hd] = O transposed. Saves q, k, v, P. */

typedef struct attn_saved {
    const mm_site *site_qk, *site_pv;
    int64_t B, T, H, hd;
    float *q, *k, *v, *p;
    mm_saved *mm_qk, *mm_pv;
} attn_saved;

/* The copies around the two products: tokens [B, T, H, hd] to heads
 * [B, H, T, hd] (to_heads), or back. Output [B, a, b, hd] reads src with
 * strides {T H hd, hd, a hd, 1} either way. */
static void attn_relayout(const ag_ctx *ctx, int64_t B, int64_t T, int64_t H, int64_t hd, const float *src, float *dst,
                          bool to_heads) {
    int64_t a = to_heads ? H : T, b = to_heads ? T : H;
    int64_t oshape[4] = {B, a, b, hd}, istride[4] = {T * H * hd, hd, a * hd, 1};
    if (ctx->gpu) {
        cu_op_strided(oshape, istride, src, dst, false);
        return;
    }
#pragma omp parallel for collapse(2) schedule(static) if (B * T * H * hd >= AG_PAR_MIN)
    for (int64_t bi = 0; bi < B; bi++)
        for (int64_t x = 0; x < a; x++)
            for (int64_t y = 0; y < b; y++)
                memcpy(dst + ((bi * a + x) * b + y) * hd, src + bi * istride[0] + x * hd + y * a * hd,
                       sizeof(float) * (size_t)hd);
}

ag_var *ag_attention(ag_ctx *ctx, const mm_site *site_qk, const mm_site *site_pv, ag_var *qkv, int heads) {
    const tensor *xv = &qkv->value;
    MX_ASSERT(xv->ndim == 3 && xv->shape[2] % (3 * heads) == 0);
    int64_t B = xv->shape[0], T = xv->shape[1], D = xv->shape[2] / 3, H = heads, hd = D / heads;
    size_t per = (size_t)(B * H * T * hd);
    float *q = arena_alloc(&ctx->ar, sizeof(float) * per), *k = arena_alloc(&ctx->ar, sizeof(float) * per),
          *v = arena_alloc(&ctx->ar, sizeof(float) * per);
    float *p = arena_alloc(&ctx->ar, sizeof(float) * (size_t)(B * H * T * T));
    const float *src = xv->data;
    if (ctx->gpu) {
        cu_op_qkv_split(B, T, H, hd, src, q, k, v);
    } else {
#pragma omp parallel for collapse(2) schedule(static) if (per >= AG_PAR_MIN)
        for (int64_t bi = 0; bi < B; bi++)
            for (int64_t t = 0; t < T; t++)
                for (int64_t h = 0; h < H; h++) {
                    const float *row = src + (bi * T + t) * 3 * D + h * hd;
                    size_t dst = (size_t)(((bi * H + h) * T + t) * hd);
                    memcpy(q + dst, row, sizeof(float) * (size_t)hd);
                    memcpy(k + dst, row + D, sizeof(float) * (size_t)hd);
                    memcpy(v + dst, row + 2 * D, sizeof(float) * (size_t)hd);
                }
    }
    ag_var *ins[1] = {qkv};
    mm_saved *sv_qk = ag_mm_saved(ctx, ins, 1), *sv_pv = ag_mm_saved(ctx, ins, 1);
    mm_shape qk = mm_shape_batched(B * H, T, T, hd, true);
    mm_forward(ctx, site_qk, &qk, q, k, p, sv_qk);
    const float scale = 1.0f / sqrtf((float)hd);
    if (ctx->gpu) {
        cu_op_softmax_scaled(B * H * T, T, scale, p, p);
    } else {
#pragma omp parallel for schedule(static) if (B * H * T * T >= AG_PAR_MIN)
        for (int64_t r = 0; r < B * H * T; r++) {
            float *row = p + r * T, mx = -INFINITY, sum = 0;
            for (int64_t j = 0; j < T; j++) {
                row[j] *= scale;
                mx = row[j] > mx ? row[j] : mx;
            }
            for (int64_t j = 0; j < T; j++) {
                row[j] = mx_expf(row[j] - mx);
                sum += row[j];
            }
            for (int64_t j = 0; j < T; j++) row[j] /= sum;
        }
    }
    ag_round_elementwise(ctx, p, B * H * T * T);
    float *o = arena_alloc(&ctx->ar, sizeof(float) * per);
    mm_shape pv = mm_shape_batched(B * H, T, hd, T, false);
    mm_forward(ctx, site_pv, &pv, p, v, o, sv_pv);
    int64_t shape[3] = {B, T, D};
    ag_var *y = ag_new(ctx, 3, shape);
    attn_relayout(ctx, B, T, H, hd, o, y->value.data, false);
    ag_node *n = ag_record(ctx, AG_OP_ATTENTION, y, ins, 1);
    if (n) *(attn_saved *)ag_save(ctx, n, sizeof(attn_saved)) = (attn_saved){site_qk, site_pv, B, T, H, hd, q, k, v, p,
                                                                          sv_qk, sv_pv};
    return y;
}

void ag_attention_backward(ag_ctx *ctx, ag_node *n) {
    const attn_saved *s = n->saved;
    int64_t B = s->B, T = s->T, H = s->H, hd = s->hd, D = H * hd;
    size_t per = (size_t)(B * H * T * hd);
    float *dqkv = ag_grad(ctx, n->in[0]); /* before the mark: it outlives this call */
    arena_mark mark = arena_get_mark(&ctx->ar);
    float *d_o = arena_alloc(&ctx->ar, sizeof(float) * per);
    attn_relayout(ctx, B, T, H, hd, n->out->grad, d_o, true);
    float *dp = arena_calloc(&ctx->ar, sizeof(float) * (size_t)(B * H * T * T));
    float *dq = arena_calloc(&ctx->ar, sizeof(float) * per), *dk = arena_calloc(&ctx->ar, sizeof(float) * per),
          *dv = arena_calloc(&ctx->ar, sizeof(float) * per);
    mm_shape pv = mm_shape_batched(B * H, T, hd, T, false);
    mm_backward(ctx, s->site_pv, &pv, s->mm_pv, s->p, s->v, d_o, dp, dv);
    /* dS = P * (dP - rowsum(dP * P)) * scale, in place in dp */
    const float scale = 1.0f / sqrtf((float)hd);
    if (ctx->gpu) {
        cu_op_softmax_backward_scaled(B * H * T, T, scale, s->p, dp, dp);
    } else {
#pragma omp parallel for schedule(static) if (B * H * T * T >= AG_PAR_MIN)
        for (int64_t r = 0; r < B * H * T; r++) {
            const float *pr = s->p + r * T;
            float *g = dp + r * T, dot = 0;
            for (int64_t j = 0; j < T; j++) dot += g[j] * pr[j];
            for (int64_t j = 0; j < T; j++) g[j] = pr[j] * (g[j] - dot) * scale;
        }
    }
    mm_shape qk = mm_shape_batched(B * H, T, T, hd, true);
    mm_backward(ctx, s->site_qk, &qk, s->mm_qk, s->q, s->k, dp, dq, dk);
    if (ctx->gpu) {
        cu_op_qkv_backward(B, T, H, hd, dq, dk, dv, dqkv);
    } else {
#pragma omp parallel for collapse(2) schedule(static) if (per >= AG_PAR_MIN)
        for (int64_t bi = 0; bi < B; bi++)
            for (int64_t t = 0; t < T; t++)
                for (int64_t h = 0; h < H; h++) {
                    float *row = dqkv + (bi * T + t) * 3 * D + h * hd;
                    size_t off = (size_t)(((bi * H + h) * T + t) * hd);
                    for (int64_t i = 0; i < hd; i++) {
                        row[i] += dq[off + i];
                        row[D + i] += dk[off + i];
                        row[2 * D + i] += dv[off + i];
                    }
                }
    }
    arena_release(&ctx->ar, mark);
}

void ag_round_elementwise(const ag_ctx *ctx, float *y, int64_t n) {
    if (!ctx->run.elementwise_bf16) return;
    if (ctx->gpu) {
        cu_op_round_bf16(n, y);
        return;
    }
#pragma omp parallel for schedule(static) if (n >= AG_PAR_MIN)
    for (int64_t i = 0; i < n; i++) y[i] = ag_bf16_round(y[i]);
}
