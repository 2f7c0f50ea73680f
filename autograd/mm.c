#include "autograd/mm.h"

#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "core/gemm.h"

void mm_site_init(mm_site *site, const char *name, mm_b_role role) {
    memset(site, 0, sizeof *site);
    snprintf(site->name, sizeof site->name, "%s", name);
    site->b_role = role;
}

void mm_forward(ag_ctx *ctx, const mm_site *site, const mm_shape *sh, const float *a, const float *b, float *y) {
    const int m = sh->m, n = sh->n, k = sh->k;
    for (int i = 0; i < sh->batch; i++)
        gemm_f32(false, sh->b_trans, m, n, k, 1.0f, a + i * sh->stride_a, k, b + i * sh->stride_b,
                 sh->b_trans ? k : n, 0.0f, y + i * sh->stride_y, n);
}

void mm_backward(ag_ctx *ctx, const mm_site *site, const mm_shape *sh, const float *a, const float *b,
                 const float *dy, float *da, float *db) {
    const int m = sh->m, n = sh->n, k = sh->k;
    for (int i = 0; i < sh->batch; i++) {
        const float *ai = a + i * sh->stride_a, *bi = b + i * sh->stride_b, *dyi = dy + i * sh->stride_y;
        if (da) /* dA[M,K] += dY[M,N] . B'^T */
            gemm_f32(false, !sh->b_trans, m, k, n, 1.0f, dyi, n, bi, sh->b_trans ? k : n, 1.0f,
                     da + i * sh->stride_a, k);
        if (db) {
            if (sh->b_trans) /* dB[N,K] += dY^T[N,M] . A[M,K] */
                gemm_f32(true, false, n, k, m, 1.0f, dyi, n, ai, k, 1.0f, db + i * sh->stride_b, k);
            else /* dB[K,N] += A^T[K,M] . dY[M,N] */
                gemm_f32(true, false, k, n, m, 1.0f, ai, k, dyi, n, 1.0f, db + i * sh->stride_b, n);
        }
    }
}
