/* Shape ops (reshape, permute, concat, slice) and pooling (NHWC). */
#include <omp.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/ops_util.h"
#include "core/error.h"

/* ---------------- reshape: shares the input's storage ---------------- */

ag_var *ag_reshape(ag_ctx *ctx, ag_var *x, int ndim, const int64_t *shape) {
    ag_var *y = arena_alloc(&ctx->meta, sizeof *y);
    memset(y, 0, sizeof *y);
    y->value = tensor_reshape(&x->value, ndim, shape);
    ag_var *ins[1] = {x};
    ag_record(ctx, AG_OP_RESHAPE, y, ins, 1);
    return y;
}

void ag_reshape_backward(ag_ctx *ctx, ag_node *n) {
    ag_accumulate(ctx, ag_grad(ctx, n->in[0]), n->out->grad, ag_numel(n->in[0]));
}

/* ---------------- permute (up to 4 axes) ---------------- */

typedef struct permute_saved {
    int perm[TENSOR_MAX_DIMS];
} permute_saved;

void ag_permute_plan(const tensor *src, const int *perm, bool inverse, int64_t *oshape, int64_t *istride) {
    int nd = src->ndim;
    int64_t cstride[TENSOR_MAX_DIMS]; /* src is contiguous */
    int64_t st = 1;
    for (int i = nd - 1; i >= 0; i--) {
        cstride[i] = st;
        st *= src->shape[i];
    }
    for (int i = 0; i < TENSOR_MAX_DIMS; i++) oshape[i] = 1, istride[i] = 0;
    /* out index i walks axis perm[i] of src (forward), or src walks out (inverse) */
    int pad = TENSOR_MAX_DIMS - nd;
    if (!inverse) {
        for (int i = 0; i < nd; i++) {
            oshape[pad + i] = src->shape[perm[i]];
            istride[pad + i] = cstride[perm[i]];
        }
    } else {
        /* src is the permuted tensor; out has the original axis order */
        int64_t sstride[TENSOR_MAX_DIMS], sshape[TENSOR_MAX_DIMS];
        for (int i = 0; i < nd; i++) sstride[perm[i]] = cstride[i], sshape[perm[i]] = src->shape[i];
        for (int i = 0; i < nd; i++) {
            oshape[pad + i] = sshape[i];
            istride[pad + i] = sstride[i];
        }
    }
}

/* dst (contiguous, shape of src permuted) = permute(src); add: += instead of =. */
static void permute_copy(const ag_ctx *ctx, const tensor *src, const int *perm, float *dst, bool add, bool inverse) {
    int64_t oshape[TENSOR_MAX_DIMS], istride[TENSOR_MAX_DIMS];
    ag_permute_plan(src, perm, inverse, oshape, istride);
    if (ctx->gpu) {
        cu_op_strided(oshape, istride, src->data, dst, add);
        return;
    }
    int64_t total = oshape[0] * oshape[1] * oshape[2] * oshape[3];
#pragma omp parallel for collapse(2) schedule(static) if (total >= AG_PAR_MIN)
    for (int64_t a = 0; a < oshape[0]; a++)
        for (int64_t b = 0; b < oshape[1]; b++)
            for (int64_t c = 0; c < oshape[2]; c++) {
                const float *s = src->data + a * istride[0] + b * istride[1] + c * istride[2];
                float *d = dst + ((a * oshape[1] + b) * oshape[2] + c) * oshape[3];
                for (int64_t e = 0; e < oshape[3]; e++) {
                    if (add) d[e] += s[e * istride[3]];
                    else d[e] = s[e * istride[3]];
                }
            }
}

ag_var *ag_permute(ag_ctx *ctx, ag_var *x, const int *perm) {
    int nd = x->value.ndim;
    int64_t shape[TENSOR_MAX_DIMS];
    int seen = 0;
    for (int i = 0; i < nd; i++) {
        MX_ASSERT(perm[i] >= 0 && perm[i] < nd && !(seen & (1 << perm[i])));
        seen |= 1 << perm[i];
        shape[i] = x->value.shape[perm[i]];
    }
    ag_var *y = ag_new(ctx, nd, shape);
    permute_copy(ctx, &x->value, perm, y->value.data, false, false);
    ag_var *ins[1] = {x};
    ag_node *n = ag_record(ctx, AG_OP_PERMUTE, y, ins, 1);
    if (n) memcpy(((permute_saved *)ag_save(ctx, n, sizeof(permute_saved)))->perm, perm, sizeof(int) * (size_t)nd);
    return y;
}

void ag_permute_backward(ag_ctx *ctx, ag_node *n) {
    const permute_saved *s = n->saved;
    tensor g = tensor_view(n->out->grad, n->out->value.ndim, n->out->value.shape);
    permute_copy(ctx, &g, s->perm, ag_grad(ctx, n->in[0]), true, true);
}

/* ---------------- concat along an axis ----------------
 * Viewed as [outer, len, inner]: a and b rows interleave per outer index.
 * a's dim 0 may be 1 and broadcast (its gradient then sums over dim 0). */

typedef struct concat_saved {
    int64_t outer, la, lb, inner;
    bool a_broadcast;
} concat_saved;

ag_var *ag_concat(ag_ctx *ctx, ag_var *a, ag_var *b, int axis) {
    const tensor *av = &a->value, *bv = &b->value;
    MX_ASSERT(av->ndim == bv->ndim && axis > 0 && axis < av->ndim);
    bool bc = av->shape[0] == 1 && bv->shape[0] > 1;
    int64_t shape[TENSOR_MAX_DIMS];
    for (int i = 0; i < av->ndim; i++) {
        MX_ASSERTF(i == axis || i == 0 || av->shape[i] == bv->shape[i], "concat: shapes differ off the axis");
        shape[i] = bv->shape[i];
    }
    MX_ASSERT(bc || av->shape[0] == bv->shape[0]);
    shape[axis] = av->shape[axis] + bv->shape[axis];
    concat_saved s = {1, av->shape[axis], bv->shape[axis], 1, bc};
    for (int i = 0; i < axis; i++) s.outer *= shape[i];
    for (int i = axis + 1; i < av->ndim; i++) s.inner *= shape[i];
    ag_var *y = ag_new(ctx, av->ndim, shape);
    int64_t per_a = s.la * s.inner, per_b = s.lb * s.inner, a_outer = s.outer / (bc ? bv->shape[0] : 1);
    if (ctx->gpu) cu_op_concat(s.outer, per_a, per_b, a_outer, av->data, bv->data, y->value.data);
    else
        for (int64_t o = 0; o < s.outer; o++) {
        float *d = y->value.data + o * (per_a + per_b);
        memcpy(d, av->data + (o % a_outer) * per_a, sizeof(float) * (size_t)per_a);
        memcpy(d + per_a, bv->data + o * per_b, sizeof(float) * (size_t)per_b);
    }
    ag_var *ins[2] = {a, b};
    ag_node *n = ag_record(ctx, AG_OP_CONCAT, y, ins, 2);
    if (n) *(concat_saved *)ag_save(ctx, n, sizeof s) = s;
    return y;
}

void ag_concat_backward(ag_ctx *ctx, ag_node *n) {
    const concat_saved *s = n->saved;
    ag_var *a = n->in[0], *b = n->in[1];
    int64_t per_a = s->la * s->inner, per_b = s->lb * s->inner;
    int64_t a_outer = ag_numel(a) / per_a;
    const float *dy = n->out->grad;
    float *da = a->requires_grad ? ag_grad(ctx, a) : NULL, *db = b->requires_grad ? ag_grad(ctx, b) : NULL;
    if (ctx->gpu) {
        cu_op_concat_backward(s->outer, per_a, per_b, a_outer, dy, da, db);
        return;
    }
    for (int64_t o = 0; o < s->outer; o++) {
        const float *g = dy + o * (per_a + per_b);
        if (da) ag_accumulate(ctx, da + (o % a_outer) * per_a, g, per_a);
        if (db) ag_accumulate(ctx, db + o * per_b, g + per_a, per_b);
    }
}

/* ---------------- slice along an axis ---------------- */

typedef struct slice_saved {
    int64_t outer, len_in, start, len, inner;
} slice_saved;

ag_var *ag_slice(ag_ctx *ctx, ag_var *x, int axis, int64_t start, int64_t len) {
    const tensor *xv = &x->value;
    MX_ASSERT(axis >= 0 && axis < xv->ndim && start >= 0 && len > 0 && start + len <= xv->shape[axis]);
    slice_saved s = {1, xv->shape[axis], start, len, 1};
    for (int i = 0; i < axis; i++) s.outer *= xv->shape[i];
    for (int i = axis + 1; i < xv->ndim; i++) s.inner *= xv->shape[i];
    int64_t shape[TENSOR_MAX_DIMS];
    memcpy(shape, xv->shape, sizeof shape);
    shape[axis] = len;
    ag_var *y = ag_new(ctx, xv->ndim, shape);
    if (ctx->gpu) cu_op_slice(s.outer, s.len_in, start, len, s.inner, xv->data, y->value.data);
    else
        for (int64_t o = 0; o < s.outer; o++)
            memcpy(y->value.data + o * len * s.inner, xv->data + (o * s.len_in + start) * s.inner,
               sizeof(float) * (size_t)(len * s.inner));
    ag_var *ins[1] = {x};
    ag_node *n = ag_record(ctx, AG_OP_SLICE, y, ins, 1);
    if (n) *(slice_saved *)ag_save(ctx, n, sizeof s) = s;
    return y;
}

void ag_slice_backward(ag_ctx *ctx, ag_node *n) {
    const slice_saved *s = n->saved;
    float *dx = ag_grad(ctx, n->in[0]);
    if (ctx->gpu) {
        cu_op_slice_backward(s->outer, s->len_in, s->start, s->len, s->inner, n->out->grad, dx);
        return;
    }
    for (int64_t o = 0; o < s->outer; o++)
        ag_accumulate(ctx, dx + (o * s->len_in + s->start) * s->inner, n->out->grad + o * s->len * s->inner,
                      s->len * s->inner);
}

/* ---------------- maxpool2d (NHWC) ---------------- */

typedef struct pool_saved {
    int32_t *argmax; /* flat input index of each output's maximum */
    int kernel, stride, pad;
} pool_saved;

ag_var *ag_maxpool2d(ag_ctx *ctx, ag_var *x, int kernel, int stride, int pad) {
    const tensor *xv = &x->value;
    MX_ASSERT(xv->ndim == 4);
    int64_t N = xv->shape[0], H = xv->shape[1], W = xv->shape[2], C = xv->shape[3];
    int64_t OH = (H + 2 * pad - kernel) / stride + 1, OW = (W + 2 * pad - kernel) / stride + 1;
    int64_t shape[4] = {N, OH, OW, C};
    ag_var *y = ag_new(ctx, 4, shape);
    int32_t *arg = arena_alloc(&ctx->ar, sizeof(int32_t) * (size_t)(N * OH * OW * C));
    MX_ASSERT(N * H * W * C < INT32_MAX);
    if (ctx->gpu) cu_op_maxpool(N, H, W, C, kernel, stride, pad, xv->data, y->value.data, arg);
    else
#pragma omp parallel for collapse(2) schedule(static) if (N * OH * OW * C >= AG_PAR_MIN)
    for (int64_t n = 0; n < N; n++)
        for (int64_t oh = 0; oh < OH; oh++)
            for (int64_t ow = 0; ow < OW; ow++)
                for (int64_t c = 0; c < C; c++) {
                    int64_t o = ((n * OH + oh) * OW + ow) * C + c, bi;
                    y->value.data[o] = ag_k_maxpool_window(xv->data, n, oh, ow, c, H, W, C, kernel, stride, pad, &bi);
                    arg[o] = (int32_t)bi;
                }
    ag_var *ins[1] = {x};
    ag_node *nd = ag_record(ctx, AG_OP_MAXPOOL2D, y, ins, 1);
    if (nd) *(pool_saved *)ag_save(ctx, nd, sizeof(pool_saved)) = (pool_saved){arg, kernel, stride, pad};
    return y;
}

void ag_maxpool2d_backward(ag_ctx *ctx, ag_node *n) {
    const pool_saved *s = n->saved;
    float *dx = ag_grad(ctx, n->in[0]);
    int64_t cnt = ag_numel(n->out);
    if (ctx->gpu) {
        const int64_t *xs = n->in[0]->value.shape;
        cu_op_maxpool_backward(xs[0], xs[1], xs[2], xs[3], s->kernel, s->stride, s->pad, s->argmax, n->out->grad, dx);
        return;
    }
    /* windows overlap (3x3/2): sequential scatter keeps it deterministic */
    for (int64_t o = 0; o < cnt; o++) dx[s->argmax[o]] += n->out->grad[o];
}

/* ---------------- global average pool: [N, H, W, C] -> [N, C] ---------------- */

ag_var *ag_avgpool_global(ag_ctx *ctx, ag_var *x) {
    const tensor *xv = &x->value;
    MX_ASSERT(xv->ndim == 4);
    int64_t N = xv->shape[0], HW = xv->shape[1] * xv->shape[2], C = xv->shape[3];
    int64_t shape[2] = {N, C};
    ag_var *y = ag_new(ctx, 2, shape);
    if (ctx->gpu) cu_op_avgpool_global(N, HW, C, xv->data, y->value.data);
    else
#pragma omp parallel for schedule(static) if (N * HW * C >= AG_PAR_MIN)
        for (int64_t n = 0; n < N; n++) {
        float *d = y->value.data + n * C;
        for (int64_t c = 0; c < C; c++) d[c] = 0;
        for (int64_t p = 0; p < HW; p++)
            for (int64_t c = 0; c < C; c++) d[c] += xv->data[(n * HW + p) * C + c];
        for (int64_t c = 0; c < C; c++) d[c] /= (float)HW;
    }
    ag_var *ins[1] = {x};
    ag_record(ctx, AG_OP_AVGPOOL_GLOBAL, y, ins, 1);
    return y;
}

void ag_avgpool_global_backward(ag_ctx *ctx, ag_node *n) {
    ag_var *x = n->in[0];
    int64_t N = x->value.shape[0], HW = x->value.shape[1] * x->value.shape[2], C = x->value.shape[3];
    float *dx = ag_grad(ctx, x);
    const float *dy = n->out->grad;
    if (ctx->gpu) {
        cu_op_avgpool_global_backward(N, HW, C, dy, dx);
        return;
    }
#pragma omp parallel for schedule(static) if (N * HW * C >= AG_PAR_MIN)
    for (int64_t i = 0; i < N; i++)
        for (int64_t p = 0; p < HW; p++)
            for (int64_t c = 0; c < C; c++) dx[(i * HW + p) * C + c] += dy[i * C + c] / (float)HW;
}
