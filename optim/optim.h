/* Optimizers over a model's flat parameter buffer: AdamW and SGD (momentum,
 * Nesterov) with PyTorch's exact update rules, learning-rate schedules
 * evaluated per step, and clipping by global gradient norm.
 *
 * State (Adam's moments, SGD's momentum buffer) lives in flat buffers of the
 * same length as param_store.data, so an update is one loop per parameter
 * entry; the entry only decides the weight decay (PARAM_KIND_NO_DECAY: none). */
#ifndef MX_OPTIM_OPTIM_H
#define MX_OPTIM_OPTIM_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/keys.h"
#include "layers/params.h"
#include "optim/optim_kernel.h"

typedef enum optim_kind { OPTIM_KIND_ADAMW, OPTIM_KIND_SGD, OPTIM_KIND_COUNT } optim_kind;

typedef enum optim_schedule {
    OPTIM_SCHEDULE_CONSTANT, /* lr (after warmup) */
    OPTIM_SCHEDULE_COSINE,   /* min_lr + (lr - min_lr) (1 + cos(pi t / T)) / 2 after warmup */
    OPTIM_SCHEDULE_STEP,     /* lr * gamma^floor(t / step_size) after warmup */
    OPTIM_SCHEDULE_COUNT
} optim_schedule;

typedef struct optim_config {
    optim_kind kind;
    double lr, weight_decay;
    double beta1, beta2, eps; /* AdamW */
    double momentum;          /* SGD; 0 = plain SGD */
    bool nesterov;
    optim_schedule schedule;
    int64_t warmup_steps;     /* linear from lr/warmup to lr over the first warmup steps */
    int64_t total_steps;      /* cosine: the step at which min_lr is reached */
    double min_lr;
    int64_t step_size;        /* step schedule */
    double gamma;
    double clip_grad_norm;    /* 0 = off */
} optim_config;

typedef struct optimizer {
    optim_config cfg;
    param_store *params;
    float *m, *v;     /* AdamW moments / SGD momentum buffer (m); n_trainable each */
    size_t n;
    int64_t step;     /* updates done */
    float *d_m, *d_v; /* on the GPU (params->gpu, optim_to_gpu): the state the steps update;
                         m and v stay the host copies checkpoints use */
} optimizer;

extern const mx_enum optim_kind_enum, optim_schedule_enum;
/* The [optim] keys of a config file, over optim_config (total_steps comes from the run). */
extern const key_table optim_key_table;
const char *optim_kind_name(optim_kind k);
int optim_kind_parse(const char *s, optim_kind *out, mx_err *err);

/* PyTorch's defaults: AdamW lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight
 * decay 0.01; constant schedule; no clipping. */
optim_config optim_config_default(optim_kind k);

void optim_init(optimizer *o, const optim_config *cfg, param_store *params);
/* The per-step scalars of the element updates (optim_kernel.h) at o's current
 * step (optim_step increments it first), for an entry with weight decay wd. */
optim_k_adamw optim_adamw_args(const optimizer *o, float lr, float wd);
optim_k_sgd optim_sgd_args(const optimizer *o, float lr, float wd);
void optim_free(optimizer *o);
/* With the parameters on the GPU (optim_init then makes device state):
 * upload/download copy the state (after a load, before a save). No-ops on the CPU. */
void optim_upload(optimizer *o);
void optim_download(optimizer *o);
/* Non-finite values in the parameters, buffers and state on the GPU (a
 * sync; 0 on the CPU, where ckpt_find_nonfinite scans the host copies). */
int64_t optim_count_nonfinite_gpu(const optimizer *o);
/* The learning rate of update number t (0-based). */
double optim_lr_at(const optim_config *cfg, int64_t t);
/* sqrt(sum of squared gradients), accumulated in double. These three run
 * where the parameters are (the GPU: params->gpu). */
double optim_grad_norm(const param_store *params);
/* Scales gradients so their global norm is at most max_norm (PyTorch's
 * clip_grad_norm_: factor max_norm / (norm + 1e-6) when it is below 1). */
void optim_clip_grad_norm(param_store *params, double norm, double max_norm);
/* One update with learning rate lr from the gradients in params->grad. */
void optim_step(optimizer *o, double lr);

#endif
