/* A model's parameters: one contiguous float buffer for trainable values, one
 * for their gradients (zeroing is one memset; optimizers are flat loops), and
 * one for buffers (BatchNorm running statistics). Every entry carries its
 * PyTorch state_dict name and shape; internal layouts that differ from
 * PyTorch's (conv weights are OHWI here, OIHW there) are converted on the way
 * to and from checkpoints. */
#ifndef MX_LAYERS_PARAMS_H
#define MX_LAYERS_PARAMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autograd/mm.h"

typedef enum param_kind {
    PARAM_KIND_WEIGHT,   /* trainable, weight decay applies */
    PARAM_KIND_NO_DECAY, /* trainable, no weight decay: biases, norms, cls_token, pos_embed */
    PARAM_KIND_BUFFER,   /* not trainable: running statistics, counters */
    PARAM_KIND_COUNT
} param_kind;

typedef enum param_layout {
    PARAM_LAYOUT_SAME, /* internal layout = PyTorch's */
    PARAM_LAYOUT_OHWI, /* conv weight: internal [O, KH, KW, I], PyTorch [O, I, KH, KW] */
    PARAM_LAYOUT_COUNT
} param_layout;

typedef enum param_init {
    PARAM_INIT_ZEROS,
    PARAM_INIT_ONES,
    PARAM_INIT_NORMAL,         /* N(0, a^2) */
    PARAM_INIT_TRUNC_NORMAL,   /* N(0, a^2) truncated to [-2, 2] (timm's absolute bounds) */
    PARAM_INIT_UNIFORM,        /* U(-a, a) */
    PARAM_INIT_KAIMING_FAN_OUT /* N(0, 2 / fan_out): torchvision's convs */
} param_init;

typedef struct param_entry {
    char name[96];
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS]; /* internal */
    int64_t numel;
    param_kind kind;
    param_layout layout;
    param_init init;
    float init_arg;
    bool is_integer; /* stored as int64 in checkpoints (num_batches_tracked) */
    size_t offset;   /* into data/grad (trainable) or buffers */
    ag_var var;      /* trainable: a leaf over data/grad */
} param_entry;

typedef struct param_store {
    param_entry *entries;
    int count;
    int64_t cap;
    float *data, *grad;   /* trainable values and gradients */
    size_t n_trainable;
    float *buffers;
    size_t n_buffers;
    bool finalized;
    mm_sites sites;       /* the model's product sites (mm_site_declare), ids in declaration order */
    /* On the GPU (param_store_to_gpu): device copies the steps use (the vars
     * point there); data/grad/buffers above stay the host copies that
     * checkpoints read and write, synchronised by upload/download. */
    bool gpu;
    float *d_data, *d_grad, *d_buffers;
} param_store;

void param_store_init(param_store *s);
void param_store_free(param_store *s);
/* Declares a parameter (before finalize); returns its index. */
int param_add(param_store *s, const char *name, int ndim, const int64_t *shape, param_kind kind,
              param_layout layout, param_init init, float init_arg);
/* Allocates the buffers and initialises every entry from the seed. */
void param_finalize(param_store *s, uint64_t seed);
ag_var *param_var(param_store *s, int idx);
float *param_data(param_store *s, int idx); /* host values (trainable or buffer) */
float *param_step_data(param_store *s, int idx); /* the values the step uses: device ones on the GPU */
/* Moves the step's copies to the GPU (cu_init done): device buffers made
 * from the host values, vars pointed at them. */
void param_store_to_gpu(param_store *s);
/* On the GPU: host values and buffers to the device (after a load), and
 * back (before a save; grads too when asked). No-ops on the CPU. */
void param_store_upload(param_store *s);
void param_store_download(param_store *s, bool grads);
int param_find(const param_store *s, const char *name); /* -1 if absent */
/* PyTorch's shape of an entry; returns its rank. */
int param_torch_shape(const param_entry *e, int64_t *shape);
/* Copies between internal layout and PyTorch layout. */
void param_to_torch(const param_entry *e, const float *internal, float *torch);
void param_from_torch(const param_entry *e, const float *torch, float *internal);
void param_zero_grad(param_store *s); /* the step's gradients (device ones on the GPU) */

#endif
