/* HDF5 checkpoints (spec/interfaces.md):
 *   /model/<state_dict name>   float32 in PyTorch's shape (conv OIHW); num_batches_tracked int64
 *   /optim/exp_avg, /optim/exp_avg_sq   flat optimizer state (AdamW moments; SGD momentum in exp_avg)
 *   attributes step, epoch, seed, best_acc, optim_step, optim_kind
 *   /config                    the resolved config text
 * Written to FILE.tmp and renamed, so an interrupted write never replaces a
 * good checkpoint. Reading validates every name, shape and type. */
#ifndef MX_TRAIN_CHECKPOINT_H
#define MX_TRAIN_CHECKPOINT_H

#include <stdint.h>

#include "core/error.h"
#include "layers/model.h"
#include "optim/optim.h"

typedef struct ckpt_meta {
    int64_t step;      /* optimizer steps done */
    int64_t epoch;     /* epochs completed */
    uint64_t seed;
    double best_acc;
} ckpt_meta;

int ckpt_save(const char *path, model *m, optimizer *o, const ckpt_meta *meta, const char *config_text,
              mx_err *err);
/* The two halves of ckpt_save (tests interrupt between them). A model on the
 * GPU is copied to its host copies first (param_store_download), and the
 * loads below copy what they read to the device: checkpoints are the same
 * files whichever device wrote them. */
int ckpt_write_tmp(const char *path, model *m, optimizer *o, const ckpt_meta *meta, const char *config_text,
                   mx_err *err);
int ckpt_commit(const char *path, mx_err *err);

/* Names in `what` the first parameter, buffer or optimizer moment (o may be
 * NULL) holding a NaN or Inf and returns 1; 0 when all are finite. Saving
 * refuses such a state. */
int ckpt_find_nonfinite(const model *m, const optimizer *o, char *what, size_t n);

/* Full state for --resume: weights, buffers, optimizer, metadata. */
int ckpt_load(const char *path, model *m, optimizer *o, ckpt_meta *meta, mx_err *err);
/* Weights only (--init-from, eval): group `model`, or root-level datasets when
 * there is none; every model entry must be present with PyTorch's shape
 * (num_batches_tracked may be absent) and the file may hold no other names. */
int ckpt_load_weights(const char *path, model *m, mx_err *err);
/* (a path ending in .safetensors is read as safetensors: F32, F16 or BF16
 * tensors under PyTorch names and shapes, the same checks) */
/* The weights of a checkpoint (group `model`, or root datasets), as they lie
 * (PyTorch names and layouts), into a .safetensors file (F32; integer
 * buffers I64). */
int ckpt_export_safetensors(const char *path, const char *out, mx_err *err);

#endif
