#include "train/ddp.h"

#include <stdlib.h>

#include "core/error.h"
#include "dist/dist.h"

typedef struct ddp_bucket {
    int64_t off, n;   /* elements of the flat gradient buffer */
    int ready_node;   /* the lowest tape index adding to it (-1: none this step) */
    int state;        /* 0 waiting, 1 summing, 2 done */
    dist_req *req;
} ddp_bucket;

struct ddp {
    param_store *ps;
    ddp_bucket *b;
    int nb;
    int next_poll;    /* buckets start in order of readiness; polled from here */
};

ddp *ddp_open(param_store *ps, int64_t bucket_bytes) {
    if (dist_size() <= 1) return NULL;
    ddp *d = mx_calloc(1, sizeof *d);
    d->ps = ps;
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

void ddp_close(ddp *d) {
    if (!d) return;
    free(d->b);
    free(d);
}

/* Starts bucket k's sum. */
static void ddp_start(ddp *d, int k) {
    d->b[k].req = dist_sum_start(d->ps->grad + d->b[k].off, d->b[k].n);
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
    const float *g0 = d->ps->grad, *g1 = g0 + d->ps->n_trainable;
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
    for (int k = 0; k < d->nb; k++)
        if (d->b[k].state == 1) dist_sum_wait(d->b[k].req), d->b[k].state = 2;
    float inv = 1.0f / (float)dist_size();
    float *g = d->ps->grad;
    for (size_t i = 0; i < d->ps->n_trainable; i++) g[i] *= inv;
}
