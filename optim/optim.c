/* AdamW and SGD with PyTorch's semantics (torch.optim, single-tensor path). */
#include "optim/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const optim_kind_names[OPTIM_KIND_COUNT] = {"adamw", "sgd"};
static const char *const optim_schedule_names[OPTIM_SCHEDULE_COUNT] = {"constant", "cosine", "step"};

const char *optim_kind_name(optim_kind k) { return (unsigned)k < OPTIM_KIND_COUNT ? optim_kind_names[k] : "?"; }
const char *optim_schedule_name(optim_schedule s) {
    return (unsigned)s < OPTIM_SCHEDULE_COUNT ? optim_schedule_names[s] : "?";
}

int optim_kind_parse(const char *s, optim_kind *out, mx_err *err) {
    for (int i = 0; i < OPTIM_KIND_COUNT; i++)
        if (strcmp(s, optim_kind_names[i]) == 0) return *out = (optim_kind)i, 0;
    return mx_err_set(err, "unknown optimizer '%s' (valid: adamw, sgd)", s);
}

int optim_schedule_parse(const char *s, optim_schedule *out, mx_err *err) {
    for (int i = 0; i < OPTIM_SCHEDULE_COUNT; i++)
        if (strcmp(s, optim_schedule_names[i]) == 0) return *out = (optim_schedule)i, 0;
    return mx_err_set(err, "unknown schedule '%s' (valid: constant, cosine, step)", s);
}

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
}

void optim_free(optimizer *o) {
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
    float *g = p->grad;
    int64_t n = (int64_t)p->n_trainable;
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; i++) g[i] *= coef;
}

/* torch.optim.AdamW: p *= 1 - lr wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps). */
static void adamw_update(optimizer *o, float *p, const float *g, float *m, float *v, int64_t n, float lr, float wd) {
    const optim_config *c = &o->cfg;
    double t = (double)o->step;
    float b1 = (float)c->beta1, b2 = (float)c->beta2, eps = (float)c->eps;
    float bc1 = (float)(1.0 - pow(c->beta1, t)), bc2_sqrt = (float)sqrt(1.0 - pow(c->beta2, t));
    float step_size = lr / bc1, decay = 1.0f - lr * wd;
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i];
        p[i] *= decay;
        m[i] = m[i] * b1 + gi * (1.0f - b1);
        v[i] = v[i] * b2 + gi * gi * (1.0f - b2);
        p[i] -= step_size * (m[i] / (sqrtf(v[i]) / bc2_sqrt + eps));
    }
}

/* torch.optim.SGD: g += wd p; buf = g (first step) or mu buf + g; g = g + mu buf
 * (Nesterov) or buf; p -= lr g. */
static void sgd_update(optimizer *o, float *p, const float *g, float *buf, int64_t n, float lr, float wd) {
    float mu = (float)o->cfg.momentum;
    bool first = o->step == 1, nesterov = o->cfg.nesterov; /* the buffer starts as the first gradient */
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i] + wd * p[i];
        if (mu != 0.0f) {
            buf[i] = first ? gi : mu * buf[i] + gi;
            gi = nesterov ? gi + mu * buf[i] : buf[i];
        }
        p[i] -= lr * gi;
    }
}

void optim_step(optimizer *o, double lr) {
    param_store *ps = o->params;
    o->step++;
    for (int e = 0; e < ps->count; e++) {
        const param_entry *pe = &ps->entries[e];
        if (pe->kind == PARAM_KIND_BUFFER) continue;
        float wd = pe->kind == PARAM_KIND_WEIGHT ? (float)o->cfg.weight_decay : 0.0f;
        size_t off = pe->offset;
        if (o->cfg.kind == OPTIM_KIND_ADAMW)
            adamw_update(o, ps->data + off, ps->grad + off, o->m + off, o->v + off, pe->numel, (float)lr, wd);
        else
            sgd_update(o, ps->data + off, ps->grad + off, o->m + off, pe->numel, (float)lr, wd);
    }
}
