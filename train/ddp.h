/* Data-parallel gradients (issue #19), as PyTorch DDP does them: the flat
 * gradient buffer in buckets of consecutive parameters, each bucket's sum over
 * the ranks started as soon as the backward has run every node that adds to
 * it (parameters come last-used-first out of the backward), so the sums
 * overlap the rest of the backward; then the sum is divided by the number of
 * ranks (each rank's loss is the mean over its shard: the mean of the means
 * is the global batch's mean). Identical bits on every rank (dist.h). */
#ifndef MX_TRAIN_DDP_H
#define MX_TRAIN_DDP_H

#include "autograd/graph.h"
#include "layers/params.h"

typedef struct ddp ddp;

/* Buckets of about bucket_bytes over ps's gradients (host ones summed by
 * dist.h, device ones by NCCL: its communicator is opened here); *out NULL
 * with one rank. -1 with err when NCCL cannot start. */
int ddp_open(param_store *ps, int64_t bucket_bytes, double timeout_s, ddp **out, mx_err *err);
/* The same with any rank count, one included (tests drive the sums' code
 * path on one GPU with it); NULL with err on failure. */
ddp *ddp_open_world(param_store *ps, int64_t bucket_bytes, double timeout_s, mx_err *err);
/* Elements whose sums this ddp started, over its life (every bucket once a step). */
int64_t ddp_elements_started(const ddp *d);
void ddp_close(ddp *d);
/* Before ag_backward, the tape recorded: hooks the context. */
void ddp_begin(ddp *d, ag_ctx *ctx);
/* After ag_backward: the remaining sums, awaited; the mean in ps->grad. */
void ddp_end(ddp *d, ag_ctx *ctx);

#endif
