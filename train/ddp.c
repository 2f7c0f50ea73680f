#include "train/ddp.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/error.h"
#include "cuda/cuda.h"
#include "dist/dist.h"

typedef struct ddp_bucket {
    int64_t off, n;   /* elements of the flat gradient buffer */
    int ready_node;   /* the lowest tape index adding to it (-1: none this step) */
    int state;        /* 0 waiting, 1 summing, 2 done */
    dist_req *req;
} ddp_bucket;

struct ddp {
    param_store *ps;
    bool gpu;         /* sums over NCCL (cu_nccl_*) of ps->d_grad, queued; else dist.h's of ps->grad */
    float *grad;      /* the flat gradient buffer the sums run over */
    ddp_bucket *b;
    int nb;
    int64_t started;  /* elements whose sums were started (tests: every bucket once per step) */
};

/* GPU ranks: rank 0 makes NCCL's id, every rank receives it and joins. */
static int ddp_open_nccl(double timeout_s, mx_err *err) {
    if (cu_nccl_is_open()) return 0;
    unsigned char msg[CU_NCCL_ID_BYTES + 1] = {0}; /* the id, then whether rank 0 could make one */
    mx_err e0 = {0};
    if (dist_rank() == 0) msg[CU_NCCL_ID_BYTES] = cu_nccl_unique_id(msg, &e0) == 0;
    dist_bcast(msg, sizeof msg);
    if (!msg[CU_NCCL_ID_BYTES])
        return mx_err_set(err, "train.device = cuda on %d ranks: %s", dist_size(),
                          dist_rank() == 0 ? e0.msg : "rank 0 could not start NCCL");
    if (cu_nccl_open(msg, dist_rank(), dist_size(), timeout_s, err)) return -1;
    return 0;
}

ddp *ddp_open_world(param_store *ps, int64_t bucket_bytes, double timeout_s, mx_err *err) {
    if (ps->gpu && ddp_open_nccl(timeout_s, err)) return NULL;
    ddp *d = mx_calloc(1, sizeof *d);
    d->ps = ps;
    d->gpu = ps->gpu;
    d->grad = ps->gpu ? ps->d_grad : ps->grad;
    int64_t per = bucket_bytes / (int64_t)sizeof(float), n = (int64_t)ps->n_trainable;
    per = per > 0 ? per : 1;
    d->nb = (int)((n + per - 1) / per);
    d->b = mx_calloc((size_t)(d->nb ? d->nb : 1), sizeof *d->b);
    for (int i = 0; i < d->nb; i++) {
        d->b[i].off = i * per;
        d->b[i].n = n - i * per < per ? n - i * per : per;
    }
    return d;
}

int ddp_open(param_store *ps, int64_t bucket_bytes, double timeout_s, ddp **out, mx_err *err) {
    *out = NULL;
    if (dist_size() <= 1) return 0;
    *out = ddp_open_world(ps, bucket_bytes, timeout_s, err);
    return *out ? 0 : -1;
}

int64_t ddp_elements_started(const ddp *d) { return d ? d->started : 0; }

void ddp_close(ddp *d) {
    if (!d) return;
    free(d->b);
    free(d);
}

/* Starts bucket k's sum (on the GPU queued after the kernels queued so far, which wrote it). */
static void ddp_start(ddp *d, int k) {
    d->started += d->b[k].n;
    if (d->gpu) {
        cu_nccl_sum_start(d->grad + d->b[k].off, d->b[k].n);
        d->b[k].state = 2; /* stream-ordered: cu_nccl_sum_join waits for it */
        return;
    }
    d->b[k].req = dist_sum_start(d->grad + d->b[k].off, d->b[k].n);
    d->b[k].state = 1;
}

/* Advances every sum in flight (MPI moves a non-blocking collective on only inside MPI calls). */
static void ddp_poll(ddp *d) {
    for (int k = 0; k < d->nb; k++)
        if (d->b[k].state == 1 && dist_sum_test(d->b[k].req)) d->b[k].state = 2, d->b[k].req = NULL;
}

static void ddp_after_node(void *user, const ag_ctx *ctx, int i) {
    ddp *d = user;
    (void)ctx;
    for (int k = 0; k < d->nb; k++)
        if (d->b[k].state == 0 && d->b[k].ready_node == i) ddp_start(d, k);
    ddp_poll(d);
}

void ddp_begin(ddp *d, ag_ctx *ctx) {
    if (!d) return;
    const float *g0 = d->grad, *g1 = g0 + d->ps->n_trainable;
    int64_t per = d->nb ? d->b[0].n : 1;
    for (int k = 0; k < d->nb; k++) d->b[k].ready_node = -1, d->b[k].state = 0, d->b[k].req = NULL;
    /* every node that adds to a parameter's gradient: the bucket waits for the earliest of them */
    for (int i = ctx->n_nodes - 1; i >= 0; i--) {
        const ag_node *n = &ctx->nodes[i];
        for (int j = 0; j < n->n_in; j++) {
            const ag_var *v = n->in[j];
            if (!v || !v->is_leaf || !v->grad || v->grad < g0 || v->grad >= g1) continue;
            int64_t o0 = v->grad - g0, o1 = o0 + ag_numel(v) - 1;
            for (int64_t k = o0 / per; k <= o1 / per && k < d->nb; k++) d->b[k].ready_node = i;
        }
    }
    ctx->after_node = ddp_after_node;
    ctx->after_user = d;
}

void ddp_end(ddp *d, ag_ctx *ctx) {
    if (!d) return;
    ctx->after_node = NULL;
    ctx->after_user = NULL;
    for (int k = 0; k < d->nb; k++) /* parameters no node reached this step (their gradient is zero) */
        if (d->b[k].state == 0) ddp_start(d, k);
    float inv = 1.0f / (float)dist_size();
    if (d->gpu) {
        cu_nccl_sum_join();
        cu_op_scale((int64_t)d->ps->n_trainable, inv, d->grad);
        mx_err err;
        if (cu_nccl_wait(&err)) { /* the step's wait, with a timeout (the loss is read next) */
            fprintf(stderr, "mxtrain: %s; stopping every rank\n", err.msg);
            dist_abort(1);
        }
        return;
    }
    for (int k = 0; k < d->nb; k++)
        if (d->b[k].state == 1) dist_sum_wait(d->b[k].req), d->b[k].state = 2;
    float *g = d->grad;
    for (size_t i = 0; i < d->ps->n_trainable; i++) g[i] *= inv;
}
