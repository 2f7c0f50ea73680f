/* Helpers shared by the op implementations (not part of the public API). */
#ifndef MX_AUTOGRAD_OPS_UTIL_H
#define MX_AUTOGRAD_OPS_UTIL_H

#include <stdint.h>
#include <string.h>

#include "autograd/graph.h"
#include "autograd/ops_kernel.h"
#include "cuda/cuda.h" /* the ops' GPU versions (ctx->gpu); without CUDA, cuda/none.c */

/* Below this many elements a loop runs on one thread. */
#define AG_PAR_MIN 16384

/* out[c] += sum over rows of x[r, c], deterministic for a fixed thread count. */
void ag_colsum_add(ag_ctx *ctx, const float *x, int64_t rows, int64_t cols, float *out);
/* y[r, c] += b[c] */
void ag_rows_add_bias(const ag_ctx *ctx, float *y, int64_t rows, int64_t cols, const float *b);
/* dst += src */
void ag_accumulate(const ag_ctx *ctx, float *dst, const float *src, int64_t n);

/* quant.elementwise = bf16: rounds y[0..n) to bfloat16 (nearest, ties to even;
 * NaN stays NaN) when ctx->run.elementwise_bf16 is set; otherwise does nothing. */
void ag_round_elementwise(const ag_ctx *ctx, float *y, int64_t n);
/* (ag_bf16_round, one value rounded as ag_round_elementwise does: autograd/ops_kernel.h) */

/* Permute as a 4-D strided walk: out (contiguous, shape oshape) element
 * (a, b, c, e) reads src at a*istride[0] + ... + e*istride[3]; inverse: src
 * is the permuted tensor and out has the original axis order (the backward).
 * Shared by the CPU's permute and the GPU's. */
void ag_permute_plan(const tensor *src, const int *perm, bool inverse, int64_t *oshape, int64_t *istride);

/* Backward functions, one per op (the table is in graph_table.c). */
#define AG_BACKWARD(name) void ag_##name##_backward(ag_ctx *ctx, ag_node *n);
AG_BACKWARD(linear) AG_BACKWARD(matmul) AG_BACKWARD(conv2d) AG_BACKWARD(batchnorm2d) AG_BACKWARD(layernorm)
AG_BACKWARD(relu) AG_BACKWARD(gelu) AG_BACKWARD(gelu_tanh) AG_BACKWARD(softmax) AG_BACKWARD(attention)
AG_BACKWARD(maxpool2d) AG_BACKWARD(avgpool_global) AG_BACKWARD(add) AG_BACKWARD(reshape) AG_BACKWARD(permute)
AG_BACKWARD(concat) AG_BACKWARD(slice) AG_BACKWARD(dropout) AG_BACKWARD(drop_path) AG_BACKWARD(cross_entropy)
AG_BACKWARD(mean) AG_BACKWARD(sum)
#undef AG_BACKWARD

#endif
