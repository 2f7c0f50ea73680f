/* Per-element parameter updates, shared by the CPU's optimizer (optim.c)
 * and the GPU's (cuda/ops.cu), so both compute the same bits. The per-step
 * scalars are worked out once on the host. */
#ifndef MX_OPTIM_OPTIM_KERNEL_H
#define MX_OPTIM_OPTIM_KERNEL_H

#include <math.h>
#include <stdbool.h>

#include "core/fastmath.h" /* MX_HD */

/* AdamW (decoupled weight decay, torch.optim.AdamW's arithmetic) */
typedef struct optim_k_adamw {
    float b1, b2, eps, step_size, bc2_sqrt, decay; /* step_size = lr / (1 - b1^t); decay = 1 - lr wd */
} optim_k_adamw;

MX_HD static inline void optim_k_adamw_update(const optim_k_adamw *a, float *p, float *m, float *v, float g) {
    *p *= a->decay;
    *m = *m * a->b1 + g * (1.0f - a->b1);
    *v = *v * a->b2 + g * g * (1.0f - a->b2);
    *p -= a->step_size * (*m / (sqrtf(*v) / a->bc2_sqrt + a->eps));
}

/* torch.optim.SGD: g += wd p; buf = g (first step) or mu buf + g; g = g + mu buf
 * (Nesterov) or buf; p -= lr g. */
typedef struct optim_k_sgd {
    float lr, wd, mu;
    bool first, nesterov;
} optim_k_sgd;

MX_HD static inline void optim_k_sgd_update(const optim_k_sgd *a, float *p, float *buf, float g) {
    float gi = g + a->wd * *p;
    if (a->mu != 0.0f) {
        *buf = a->first ? gi : a->mu * *buf + gi;
        gi = a->nesterov ? gi + a->mu * *buf : *buf;
    }
    *p -= a->lr * gi;
}

#endif
