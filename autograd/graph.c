#include "autograd/graph.h"
#include "autograd/mm.h"
#include "autograd/ops_util.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/timer.h"
#include "cuda/cuda.h"

void ag_ctx_init(ag_ctx *ctx, size_t arena_bytes) {
    memset(ctx, 0, sizeof *ctx);
    arena_init(&ctx->ar, arena_bytes);
    arena_init(&ctx->scratch, 0);
    arena_init(&ctx->meta, 0);
    ctx->run.grad_enabled = true;
    ctx->run.training = true;
}

void ag_ctx_use_gpu(ag_ctx *ctx) {
    MX_ASSERTF(ctx->n_bufs == 0 && ctx->n_nodes == 0, "ag_ctx_use_gpu on a context in use");
    size_t cap = ctx->ar.cap;
    arena_free(&ctx->ar);
    arena_free(&ctx->scratch);
    arena_init_mem(&ctx->ar, cap, &cu_arena_mem);
    arena_init_mem(&ctx->scratch, 0, &cu_arena_mem);
    ctx->gpu = true;
}

void *ag_mem_alloc(const ag_ctx *ctx, size_t bytes) { return ctx->gpu ? cu_malloc(bytes) : mx_aligned_alloc(bytes); }

void ag_mem_free(const ag_ctx *ctx, void *p) {
    if (ctx->gpu) cu_free(p);
    else free(p);
}

void ag_mem_zero(const ag_ctx *ctx, void *p, size_t bytes) {
    if (ctx->gpu) cu_memset(p, 0, bytes);
    else memset(p, 0, bytes);
}

void ag_mem_upload(const ag_ctx *ctx, void *dst, const void *host_src, size_t bytes) {
    if (ctx->gpu) cu_to_device(dst, host_src, bytes);
    else memcpy(dst, host_src, bytes);
}

void ag_mem_download(const ag_ctx *ctx, void *host_dst, const void *src, size_t bytes) {
    if (ctx->gpu) cu_to_host(host_dst, src, bytes);
    else memcpy(host_dst, src, bytes);
}

void ag_ctx_free(ag_ctx *ctx) {
    for (int i = 0; i < ctx->n_bufs; i++) ag_mem_free(ctx, ctx->bufs[i].p);
    free(ctx->bufs);
    arena_free(&ctx->ar);
    arena_free(&ctx->scratch);
    arena_free(&ctx->meta);
    free(ctx->nodes);
    memset(ctx, 0, sizeof *ctx);
}

/* Seconds since the profile's last mark, then a new mark (the GPU's queue drained first). */
static double ag_prof_lap(const ag_ctx *ctx) {
    if (ctx->gpu) cu_sync();
    double t = timer_now(), dt = t - ctx->prof->mark;
    ctx->prof->mark = t;
    return dt;
}

double ag_prof_start(const ag_ctx *ctx) {
    if (!ctx->prof) return 0;
    if (ctx->gpu) cu_sync();
    return timer_now();
}

void ag_prof_stop(const ag_ctx *ctx, ag_prof_part part, double t0) {
    if (!ctx->prof) return;
    if (ctx->gpu) cu_sync();
    ctx->prof->part_s[part] += timer_now() - t0;
}

void ag_ctx_reset(ag_ctx *ctx) {
    if (ctx->prof) ag_prof_lap(ctx);
    for (int i = 0; i < ctx->n_bufs; i++) ctx->bufs[i].used = false;
    arena_reset(&ctx->ar);
    arena_reset(&ctx->scratch);
    arena_reset(&ctx->meta);
    ctx->n_nodes = 0;
    ctx->rng_calls = 0;
    if (ctx->run.mm) mm_plan_new_step(ctx->run.mm);
}

ag_var *ag_new(ag_ctx *ctx, int ndim, const int64_t *shape) {
    ag_var *v = arena_alloc(&ctx->meta, sizeof *v);
    memset(v, 0, sizeof *v);
    v->value = arena_tensor(&ctx->ar, ndim, shape);
    return v;
}

ag_var ag_leaf(float *data, float *grad, int ndim, const int64_t *shape) {
    ag_var v;
    memset(&v, 0, sizeof v);
    v.value = tensor_view(data, ndim, shape);
    v.grad = grad;
    v.requires_grad = grad != NULL;
    v.is_leaf = true;
    return v;
}

int64_t ag_numel(const ag_var *v) { return tensor_numel(&v->value); }

/* A free pool buffer of exactly `bytes` (activation shapes repeat), or a new one. */
static float *ag_pool_take(ag_ctx *ctx, size_t bytes) {
    for (int i = 0; i < ctx->n_bufs; i++)
        if (!ctx->bufs[i].used && ctx->bufs[i].bytes == bytes) {
            ctx->bufs[i].used = true;
            return ctx->bufs[i].p;
        }
    MX_GROW(ctx->bufs, ctx->cap_bufs, ctx->n_bufs + 1, 32);
    ag_buf *b = &ctx->bufs[ctx->n_bufs++];
    *b = (ag_buf){ag_mem_alloc(ctx, bytes), bytes, true};
    return b->p;
}

static void ag_pool_give(ag_ctx *ctx, float *p) {
    for (int i = 0; i < ctx->n_bufs; i++)
        if (ctx->bufs[i].p == p) {
            ctx->bufs[i].used = false;
            return;
        }
    MX_ASSERTF(false, "gradient buffer not from the pool");
}

size_t ag_grad_pool_bytes(const ag_ctx *ctx) {
    size_t n = 0;
    for (int i = 0; i < ctx->n_bufs; i++) n += ctx->bufs[i].bytes;
    return n;
}

float *ag_grad(ag_ctx *ctx, ag_var *v) {
    if (v->grad) return v->grad;
    size_t bytes = (size_t)ag_numel(v) * sizeof(float);
    v->grad = v->is_leaf ? arena_alloc(&ctx->ar, bytes) : ag_pool_take(ctx, bytes);
    ag_mem_zero(ctx, v->grad, bytes);
    return v->grad;
}

bool ag_will_record(const ag_ctx *ctx, ag_var *const *in, int n_in) {
    bool need = false;
    for (int i = 0; i < n_in; i++) need |= in[i] && in[i]->requires_grad;
    return ctx->run.grad_enabled && need;
}

ag_node *ag_record(ag_ctx *ctx, ag_op op, ag_var *out, ag_var *const *in, int n_in) {
    MX_ASSERT(n_in <= AG_MAX_INPUTS);
    if (ag_op_table[op].bf16_out) ag_round_elementwise(ctx, out->value.data, ag_numel(out));
    if (ctx->prof) ctx->prof->fwd_s[op] += ag_prof_lap(ctx), ctx->prof->calls[op]++;
    out->requires_grad = ag_will_record(ctx, in, n_in);
    if (!out->requires_grad) return NULL;
    MX_GROW(ctx->nodes, ctx->cap_nodes, ctx->n_nodes + 1, 256);
    ag_node *n = &ctx->nodes[ctx->n_nodes++];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->out = out;
    n->n_in = n_in;
    for (int i = 0; i < n_in; i++) n->in[i] = in[i];
    return n;
}

void *ag_save(ag_ctx *ctx, ag_node *node, size_t bytes) {
    node->saved = arena_calloc(&ctx->meta, bytes);
    return node->saved;
}

void ag_backward(ag_ctx *ctx, ag_var *loss) {
    MX_ASSERTF(ag_numel(loss) == 1, "backward needs a scalar loss");
    const float one = 1.0f;
    ag_backward_from(ctx, loss, &one);
}

void ag_backward_from(ag_ctx *ctx, ag_var *y, const float *dy) {
    MX_ASSERTF(y->requires_grad, "backward: the output does not depend on anything that needs a gradient");
    /* Intermediate gradients are taken zeroed from the pool and given back
     * once consumed, so a second backward over the same tape adds exactly the
     * same to the leaves. */
    ag_mem_upload(ctx, ag_grad(ctx, y), dy, (size_t)ag_numel(y) * sizeof(float));
    if (ctx->prof) ag_prof_lap(ctx);
    for (int i = ctx->n_nodes - 1; i >= 0; i--) {
        ag_node *n = &ctx->nodes[i];
        if (!n->out->grad) continue; /* nothing flowed here */
        ag_op_table[n->op].backward(ctx, n);
        if (ctx->prof) ctx->prof->bwd_s[n->op] += ag_prof_lap(ctx);
        if (ctx->after_node) ctx->after_node(ctx->after_user, ctx, i);
        if (!n->out->is_leaf) { /* consumed: every user of out ran its backward before */
            ag_pool_give(ctx, n->out->grad);
            n->out->grad = NULL;
        }
    }
}
