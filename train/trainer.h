/* Training and evaluation driven by a config (mxtrain train / eval / compare /
 * bench step). A session holds what a step needs: model, quantization plan and the
 * autograd context; the trainer adds data, optimizer, run directory,
 * checkpoints, metrics, statistics and the report. */
#ifndef MX_TRAIN_TRAINER_H
#define MX_TRAIN_TRAINER_H

#include <stdbool.h>
#include <stdint.h>

#include "autograd/graph.h"
#include "autograd/mm.h"
#include "datasets/datasets.h"
#include "layers/model.h"
#include "optim/optim.h"
#include "train/config.h"

typedef struct session {
    const config *cfg;
    model_config mc;
    model m;
    mm_plan plan;      /* the quant.* policy resolved for the model's sites */
    bool has_plan;     /* some operand is quantized */
    ag_ctx ctx;
    float label_smoothing;
    float *d_buffers_before;  /* GPU: the buffers before a step, for its checked rerun */
    int64_t rechecked_steps;  /* GPU: steps run again because an operand was not bf16-exact */
    struct ddp *ddp;          /* several ranks: the gradient sums (train/ddp.h); NULL alone */
} session;

int session_open(session *s, const config *cfg, mx_err *err);
void session_close(session *s);
/* Forward + backward on a batch of normalised NHWC images; gradients in
 * s->m.params.grad (zeroed first). Returns the loss. */
double session_forward_backward(session *s, const float *images, const int32_t *labels, int count, int side,
                                int chans, uint64_t step);
/* Gives the loader pinned batch buffers when the session runs on the GPU (its
 * batches' copies are then queued without a wait); nothing on the CPU. */
void session_adopt_loader(const session *s, loader *l);
/* One pass over an evaluation loader (no gradients). */
typedef struct eval_result {
    double loss;       /* mean cross-entropy */
    double top1, top5; /* fractions of samples whose label is the first / among the five highest logits */
    int64_t samples;
    float *logits;     /* optional (caller's, samples x classes): every sample's logits in loader order */
    bool stats;        /* in: collect the quantization plan's per-site statistics over the pass */
} eval_result;
int session_evaluate(session *s, loader *l, eval_result *res, mx_err *err);

/* A checkpoint's weights in a session over the config's evaluation split,
 * in batches of `batch` (eval, eval --formats, probe). Closed by
 * ckpt_session_close, also after a failed open. */
typedef struct ckpt_session {
    session s;
    dataset ds;
    loader *l;
    bool s_open;
} ckpt_session;
int ckpt_session_open(ckpt_session *cs, const config *c, const char *ckpt, int batch, mx_err *err);
void ckpt_session_close(ckpt_session *cs);

typedef struct train_opts {
    const char *resume_dir; /* continue the run in this directory */
    const char *init_from;  /* load weights only */
} train_opts;

typedef struct train_result {
    int64_t steps;
    double final_acc, best_acc, final_loss, final_eval_loss;
    double mean_grad_underflow;  /* NAN without statistics */
    double median_step_s;        /* NAN when no step ran in this process */
    int64_t passes_per_step, bytes_quantized_per_step, bytes_held;
    double seconds;              /* this process's */
    double wall_s;               /* the whole run's, earlier processes included (resumes) */
    bool interrupted;
} train_result;

/* Exit statuses beyond 0/1: interrupted by SIGINT after saving. */
#define TRAIN_EXIT_INTERRUPTED 130

/* Returns 0, TRAIN_EXIT_INTERRUPTED, or -1 with err set (non-finite stop included). */
int trainer_run(config *cfg, const train_opts *opts, train_result *res, mx_err *err);

/* A split's data against the model, before any step: channels, labels below
 * model.num_classes, and for a ViT the side its patch grid was built for. */
int trainer_check_data(const dataset *ds, int side, const model_config *mc, mx_err *err);

/* Creates dir and its parents (mkdir -p). */
int make_dirs(const char *dir, mx_err *err);

#endif
