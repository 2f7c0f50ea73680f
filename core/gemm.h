/* Row-major single-precision GEMM: C = alpha * op(A) op(B) + beta * C, where
 * op(X) is X or X^T. op(A) is M x K, op(B) is K x N, C is M x N; lda/ldb/ldc
 * are row strides of the stored (untransposed) matrices.
 *
 * Only the autograd GEMM path calls gemm_f32 (the MX quantization hook lives
 * there); gemm_ref_f32 is a naive double-accumulating reference for tests. */
#ifndef MX_CORE_GEMM_H
#define MX_CORE_GEMM_H

#include <stdbool.h>
#include <stdint.h>

void gemm_f32(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
              const float *b, int ldb, float beta, float *c, int ldc);

/* The same product for operands that hold bf16 values (every MX- or
 * bf16-quantized operand), on the CPU's BF16 units with FP32 accumulation
 * through oneDNN where this CPU has them (core/gemm_bf16.c), else gemm_f32.
 * A call whose operands hold a value bf16 cannot (or a bf16 subnormal, which
 * the units read as zero) runs gemm_f32. */
void gemm_bf16_f32(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                   const float *b, int ldb, float beta, float *c, int ldc);
/* Whether gemm_bf16_f32 runs on BF16 units here, and what on ("oneDNN brg:avx512_core_bf16", or "none (why)"). */
bool gemm_bf16_available(void);
const char *gemm_bf16_engine(void);
/* gemm_f32's product through oneDNN's f32 matmul; gemm_f32 where oneDNN is
 * missing or the call is one it is not given (alpha != 1, beta other than 0
 * or 1, ldc != n). The same arithmetic up to the order of FP32 sums.
 * Preferred (train.cpu_gemm = auto) where its kernels are AVX-512 ones:
 * there it beat OpenBLAS on every model measured, by 2.5x on 16 cores
 * (docs/performance.md); elsewhere OpenBLAS stays. */
void gemm_dnnl_f32(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                   const float *b, int ldb, float beta, float *c, int ldc);
bool gemm_dnnl_f32_preferred(void);
const char *gemm_dnnl_f32_engine(void);
/* Tests: false sends every gemm_bf16_f32 call to gemm_f32. */
void gemm_bf16_set_enabled(bool on);

/* bf16 values of n floats (the upper halves); false if some value is not a
 * normal bf16 or zero (then dst is incomplete). And back to float32. */
bool gemm_bf16_convert(const float *src, int64_t n, uint16_t *dst);
void gemm_bf16_widen(const uint16_t *src, int64_t n, float *dst);

/* Batched forms: `count` products of one shape, the i-th on a + i * stride_a,
 * b + i * stride_b, c + i * stride_c (elements). oneDNN runs them as one
 * batched matmul, its threads across the products (attention's 192 small
 * products per layer are one call, not 192); gemm_f32_batched loops. The
 * unbatched functions above are these with count 1. */
typedef struct gemm_batch {
    int count;
    int64_t stride_a, stride_b, stride_c;
} gemm_batch;
void gemm_f32_batched(const gemm_batch *bt, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                      const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
void gemm_bf16_f32_batched(const gemm_batch *bt, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                           const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
void gemm_dnnl_f32_batched(const gemm_batch *bt, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                           const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* FP32 convolutions through oneDNN's direct kernels (no im2col): x NHWC
 * [n,h,w,c], W OHWI [o,kh,kw,c], y / dy NHWC [n,oh,ow,o]; FWD writes y (out),
 * DX adds to dx (out; tmp: scratch of x's size), DW adds to dW (out). False
 * (nothing done) where oneDNN is missing or would run the shape on its
 * reference code: the caller then gathers and multiplies. The same products
 * as im2col's up to the order of FP32 sums (the CPU twin of cu_conv_f32). */
typedef enum gemm_conv_dir { GEMM_CONV_FWD, GEMM_CONV_DX, GEMM_CONV_DW } gemm_conv_dir;
typedef struct gemm_conv_shape {
    int n, h, w, c, o, kh, kw, stride, pad;
} gemm_conv_shape;
bool gemm_conv_dnnl_f32(gemm_conv_dir dir, const gemm_conv_shape *s, const float *x, const float *w, const float *dy,
                        float *out, float *tmp);
/* The same on the BF16 units for operands held as bf16 (quantized ones: the
 * caller has checked they are normal bf16 or zero), FP32 results; false also
 * where gemm_bf16_available() is false or oneDNN has no bf16 kernels for it. */
bool gemm_conv_dnnl_bf16(gemm_conv_dir dir, const gemm_conv_shape *s, const uint16_t *x, const uint16_t *w,
                         const uint16_t *dy, float *out, float *tmp);

/* gemm_bf16_f32_batched's product on operands already bf16 (lda, ldb their
 * row strides, strides in elements): only where gemm_bf16_available(),
 * alpha 1, beta 0 or 1, ldc = n. */
void gemm_bf16_bf16_batched(const gemm_batch *bt, bool trans_a, bool trans_b, int m, int n, int k, const uint16_t *a,
                            int lda, const uint16_t *b, int ldb, float beta, float *c, int ldc);

void gemm_ref_f32(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                  const float *b, int ldb, float beta, float *c, int ldc);

#endif
