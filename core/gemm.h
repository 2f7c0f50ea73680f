/* Row-major single-precision GEMM: C = alpha * op(A) op(B) + beta * C, where
 * op(X) is X or X^T. op(A) is M x K, op(B) is K x N, C is M x N; lda/ldb/ldc
 * are row strides of the stored (untransposed) matrices.
 *
 * Only the autograd GEMM path calls gemm_f32 (the MX quantization hook lives
 * there); gemm_ref_f32 is a naive double-accumulating reference for tests. */
#ifndef MX_CORE_GEMM_H
#define MX_CORE_GEMM_H

#include <stdbool.h>

void gemm_f32(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
              const float *b, int ldb, float beta, float *c, int ldc);

void gemm_ref_f32(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                  const float *b, int ldb, float beta, float *c, int ldc);

#endif
