/* AdamW and SGD with PyTorch's semantics (torch.optim, single-tensor path). */
#include "optim/optim.h"

#include "cuda/cuda.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const optim_kind_names[OPTIM_KIND_COUNT] = {"adamw", "sgd"};
static const char *const optim_schedule_names[OPTIM_SCHEDULE_COUNT] = {"constant", "cosine", "step"};

MX_ENUM_OF_NAMES(optim_kind_enum, "optimizer", optim_kind_names);
MX_ENUM_OF_NAMES(optim_schedule_enum, "schedule", optim_schedule_names);

const char *optim_kind_name(optim_kind k) { return (unsigned)k < OPTIM_KIND_COUNT ? optim_kind_names[k] : "?"; }

int optim_kind_parse(const char *s, optim_kind *out, mx_err *err) {
    int v;
    if (mx_enum_parse(&optim_kind_enum, s, &v, err)) return -1;
    *out = (optim_kind)v;
    return 0;
}

#define OK(...) KEY_NUM(optim_config, __VA_ARGS__)
#define BIG 1e18
static const key_def optim_keys[] = {
    KEY_ENUMV(optim_config, "name", kind, "adamw", &optim_kind_enum, "the optimizer (PyTorch semantics)"),
    OK("lr", DOUBLE, lr, "0.001", 0, 1e6, "peak learning rate"),
    OK("weight_decay", DOUBLE, weight_decay, "0.05", 0, 1e3,
       "weight decay (AdamW: decoupled; SGD: L2); applies to weights of rank >= 2 only, never to biases, norm "
       "parameters, `cls_token`, `pos_embed`"),
    OK("beta1", DOUBLE, beta1, "0.9", 0, 0.999999, "AdamW beta1"),
    OK("beta2", DOUBLE, beta2, "0.999", 0, 0.99999999, "AdamW beta2"),
    OK("eps", DOUBLE, eps, "1e-8", 0, 1, "AdamW epsilon (outside the square root)"),
    OK("momentum", DOUBLE, momentum, "0.9", 0, 0.999999, "SGD momentum (0 = none)"),
    KEY_BOOLV(optim_config, "nesterov", nesterov, "false", "SGD Nesterov momentum"),
    KEY_ENUMV(optim_config, "schedule", schedule, "cosine", &optim_schedule_enum,
              "`cosine` (to min_lr at the last step), `step` (x gamma every step_size steps), `constant`; all after "
              "warmup"),
    OK("warmup_steps", I64, warmup_steps, "0", 0, BIG, "linear warmup steps"),
    OK("min_lr", DOUBLE, min_lr, "0", 0, 1e6, "cosine floor"),
    OK("step_size", I64, step_size, "1000", 1, BIG, "step schedule: steps between decays"),
    OK("gamma", DOUBLE, gamma, "0.1", 0, 1, "step schedule: decay factor"),
    OK("clip_grad_norm", DOUBLE, clip_grad_norm, "0", 0, 1e9, "clip gradients to this global L2 norm; 0 = off"),
};
#undef OK
#undef BIG
const key_table optim_key_table = KEY_TABLE("optim", optim_keys);

optim_config optim_config_default(optim_kind k) {
    optim_config c = {0};
    c.kind = k;
    c.lr = k == OPTIM_KIND_ADAMW ? 1e-3 : 0.1;
    c.weight_decay = k == OPTIM_KIND_ADAMW ? 0.01 : 0.0;
    c.beta1 = 0.9;
    c.beta2 = 0.999;
    c.eps = 1e-8;
    c.momentum = k == OPTIM_KIND_SGD ? 0.9 : 0.0;
    c.schedule = OPTIM_SCHEDULE_CONSTANT;
    c.step_size = 1000;
    c.gamma = 0.1;
    return c;
}

static size_t optim_bytes(const optimizer *o) { return sizeof(float) * (o->n ? o->n : 1); }

static void optim_to_gpu(optimizer *o) {
    MX_ASSERT(o->params->gpu && !o->d_m);
    o->d_m = cu_malloc(optim_bytes(o));
    o->d_v = cu_malloc(optim_bytes(o));
    optim_upload(o);
}

void optim_upload(optimizer *o) {
    if (!o->d_m) return;
    cu_to_device(o->d_m, o->m, optim_bytes(o));
    cu_to_device(o->d_v, o->v, optim_bytes(o));
}

void optim_download(optimizer *o) {
    if (!o->d_m) return;
    cu_to_host(o->m, o->d_m, optim_bytes(o));
    cu_to_host(o->v, o->d_v, optim_bytes(o));
}

void optim_init(optimizer *o, const optim_config *cfg, param_store *params) {
    MX_ASSERT(params->finalized);
    memset(o, 0, sizeof *o);
    o->cfg = *cfg;
    o->params = params;
    o->n = params->n_trainable;
    size_t bytes = sizeof(float) * (o->n ? o->n : 1);
    o->m = mx_aligned_alloc(bytes);
    o->v = mx_aligned_alloc(bytes);
    memset(o->m, 0, bytes);
    memset(o->v, 0, bytes);
    if (params->gpu) optim_to_gpu(o);
}

int64_t optim_count_nonfinite_gpu(const optimizer *o) {
    if (!o->d_m) return 0;
    const param_store *ps = o->params;
    int64_t n[4] = {(int64_t)ps->n_trainable, (int64_t)ps->n_buffers, (int64_t)o->n, (int64_t)o->n};
    const float *const p[4] = {ps->d_data, ps->d_buffers, o->d_m, o->d_v};
    return cu_count_nonfinite(4, n, p);
}

void optim_free(optimizer *o) {
    if (o->d_m) {
        cu_free(o->d_m);
        cu_free(o->d_v);
    }
    free(o->m);
    free(o->v);
    memset(o, 0, sizeof *o);
}

double optim_lr_at(const optim_config *c, int64_t t) {
    if (t < c->warmup_steps) return c->lr * (double)(t + 1) / (double)c->warmup_steps;
    int64_t u = t - c->warmup_steps;
    switch (c->schedule) {
    case OPTIM_SCHEDULE_COSINE: {
        int64_t span = c->total_steps - c->warmup_steps;
        if (span <= 0 || u >= span) return c->min_lr;
        return c->min_lr + (c->lr - c->min_lr) * 0.5 * (1.0 + cos(M_PI * (double)u / (double)span));
    }
    case OPTIM_SCHEDULE_STEP: return c->lr * pow(c->gamma, (double)(u / (c->step_size > 0 ? c->step_size : 1)));
    default: return c->lr;
    }
}

double optim_grad_norm(const param_store *p) {
    if (p->gpu) return sqrt(cu_sum_squares((int64_t)p->n_trainable, p->d_grad));
    double s = 0;
    const float *g = p->grad;
    int64_t n = (int64_t)p->n_trainable;
#pragma omp parallel for reduction(+ : s) schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    return sqrt(s);
}

void optim_clip_grad_norm(param_store *p, double norm, double max_norm) {
    if (max_norm <= 0) return;
    float coef = (float)(max_norm / (norm + 1e-6));
    if (!(coef < 1.0f)) return;
    if (p->gpu) {
        cu_op_scale((int64_t)p->n_trainable, coef, p->d_grad);
        return;
    }
    float *g = p->grad;
    int64_t n = (int64_t)p->n_trainable;
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; i++) g[i] *= coef;
}

/* torch.optim.AdamW: p *= 1 - lr wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps). */
optim_k_adamw optim_adamw_args(const optimizer *o, float lr, float wd) {
    const optim_config *c = &o->cfg;
    double t = (double)o->step;
    float bc1 = (float)(1.0 - pow(c->beta1, t));
    return (optim_k_adamw){(float)c->beta1, (float)c->beta2, (float)c->eps, lr / bc1,
                           (float)sqrt(1.0 - pow(c->beta2, t)), 1.0f - lr * wd};
}

optim_k_sgd optim_sgd_args(const optimizer *o, float lr, float wd) {
    /* the buffer starts as the first gradient */
    return (optim_k_sgd){lr, wd, (float)o->cfg.momentum, o->step == 1, o->cfg.nesterov};
}

static void adamw_update(optimizer *o, float *p, const float *g, float *m, float *v, int64_t n, float lr, float wd) {
    optim_k_adamw a = optim_adamw_args(o, lr, wd);
    if (o->d_m) {
        cu_optim_adamw(n, &a, p, g, m, v);
        return;
    }
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; i++) optim_k_adamw_update(&a, &p[i], &m[i], &v[i], g[i]);
}

static void sgd_update(optimizer *o, float *p, const float *g, float *buf, int64_t n, float lr, float wd) {
    optim_k_sgd a = optim_sgd_args(o, lr, wd);
    if (o->d_m) {
        cu_optim_sgd(n, &a, p, g, buf);
        return;
    }
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; i++) optim_k_sgd_update(&a, &p[i], &buf[i], g[i]);
}

void optim_step(optimizer *o, double lr) {
    param_store *ps = o->params;
    o->step++;
    for (int e = 0; e < ps->count; e++) {
        const param_entry *pe = &ps->entries[e];
        if (pe->kind == PARAM_KIND_BUFFER) continue;
        float wd = pe->kind == PARAM_KIND_WEIGHT ? (float)o->cfg.weight_decay : 0.0f;
        size_t off = pe->offset;
        bool gpu = o->d_m != NULL; /* the step's copies */
        float *p = (gpu ? ps->d_data : ps->data) + off, *g = (gpu ? ps->d_grad : ps->grad) + off;
        float *m = (gpu ? o->d_m : o->m) + off, *v = (gpu ? o->d_v : o->v) + off;
        if (o->cfg.kind == OPTIM_KIND_ADAMW) adamw_update(o, p, g, m, v, pe->numel, (float)lr, wd);
        else sgd_update(o, p, g, m, pe->numel, (float)lr, wd);
    }
}
