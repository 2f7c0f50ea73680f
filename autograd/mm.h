/* The one GEMM path. Every matrix product of the model (linear, conv, both
 * attention products; forward and backward) goes through mm_forward and
 * mm_backward; nothing else calls BLAS. A product is
 *
 *     Y[M,N] = A[M,K] . B'[K,N],   B' = B (B stored [K,N]) or B^T (B stored [N,K], b_trans)
 *
 * repeated over `batch` independent matrices. A is an activation; B is a
 * weight (linear, conv) or a second activation (attention). Backward:
 *
 *     dA = dY . B'^T   (reduces over N)      dB' = A^T . dY   (reduces over M)
 *
 * A site names one product in the model (`layer1.0.conv1`, `blocks.3.attn.qk`)
 * and carries what the quantization policy needs to know about it. */
#ifndef MX_AUTOGRAD_MM_H
#define MX_AUTOGRAD_MM_H

#include <stdbool.h>
#include <stdint.h>

#include "autograd/graph.h"

typedef enum mm_b_role { MM_B_WEIGHT, MM_B_ACT } mm_b_role;

typedef struct mm_site {
    char name[96];
    mm_b_role b_role;
} mm_site;

typedef struct mm_shape {
    int batch;          /* independent products (attention: batch x heads) */
    int m, n, k;
    bool b_trans;       /* B stored [N,K] */
    int64_t stride_a, stride_b, stride_y; /* elements between consecutive batch items */
} mm_shape;

void mm_site_init(mm_site *site, const char *name, mm_b_role role);

/* Y = A . B' (overwrites Y). */
void mm_forward(ag_ctx *ctx, const mm_site *site, const mm_shape *sh, const float *a, const float *b, float *y);
/* dA += dY . B'^T and dB += (A^T . dY in B's layout); da or db may be NULL. */
void mm_backward(ag_ctx *ctx, const mm_site *site, const mm_shape *sh, const float *a, const float *b,
                 const float *dy, float *da, float *db);

#endif
