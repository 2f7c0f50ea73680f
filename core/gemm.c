#include "core/gemm.h"

#include <cblas.h>

#include "core/error.h"

void gemm_f32(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
              const float *b, int ldb, float beta, float *c, int ldc) {
    MX_ASSERT(m >= 0 && n >= 0 && k >= 0);
    if (m == 0 || n == 0) return;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, m, n, k,
                alpha, a, lda, b, ldb, beta, c, ldc);
}

void gemm_f32_batched(const gemm_batch *bt, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                      const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    for (int i = 0; i < bt->count; i++)
        gemm_f32(trans_a, trans_b, m, n, k, alpha, a + i * bt->stride_a, lda, b + i * bt->stride_b, ldb, beta,
                 c + i * bt->stride_c, ldc);
}

void gemm_ref_f32(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                  const float *b, int ldb, float beta, float *c, int ldc) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int p = 0; p < k; p++) {
                float av = trans_a ? a[(long)p * lda + i] : a[(long)i * lda + p];
                float bv = trans_b ? b[(long)j * ldb + p] : b[(long)p * ldb + j];
                s += (double)av * bv;
            }
            float prev = beta == 0.0f ? 0.0f : beta * c[(long)i * ldc + j];
            c[(long)i * ldc + j] = (float)(alpha * s) + prev;
        }
}
