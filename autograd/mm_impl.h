/* Between the product path's two halves: mm.c decides and quantizes,
 * mm_gemm.c forms the products (gathers, chunk loops, every BLAS call). */
#ifndef MX_AUTOGRAD_MM_IMPL_H
#define MX_AUTOGRAD_MM_IMPL_H

#include "autograd/mm.h"
#include "autograd/ops_kernel.h"

/* Quantizes pieces of A's rows for the dB product, which reduces over M: in
 * 1d, blocks run down M, so a chunk of rows starting at a multiple of the
 * block (align) is quantized exactly as the whole would be, stochastic bits
 * included. Inactive: the rows are used as they are. */
typedef struct mm_rowq {
    ag_ctx *ctx;
    const mm_site *site;
    quant_spec spec;
    bool active;
    bool counted; /* one pass for all chunks */
    int align;
    bool bf16;    /* on the BF16 units the rows may be held as bf16 (when the product's other operand is) */
} mm_rowq;

/* Rows [row0, row0 + rows) of A (cols each; batch > 1 only whole, row0 = 0),
 * quantized into the scratch arena, or a itself when inactive. */
quant_tensor mm_rowq_apply(mm_rowq *q, const float *a, int batch, int64_t row0, int64_t rows, int64_t cols);

/* The operands reach the products as quant_tensors: float32 values (the CPU,
 * fp32 operands) or bf16 values (quantized operands on the GPU). */

/* Y = A . B' */
void mm_gemm_y(ag_ctx *ctx, const mm_shape *sh, const quant_tensor *a, const quant_tensor *b, float *y);
/* dA += dY . B'^T (a conv: dX) */
void mm_gemm_da(ag_ctx *ctx, const mm_shape *sh, const quant_tensor *dy, const quant_tensor *b, float *da);
/* dB += A^T . dY with A's rows through q (A itself as given when q is inactive) */
void mm_gemm_db(ag_ctx *ctx, const mm_shape *sh, mm_rowq *q, const quant_tensor *a, const quant_tensor *dy,
                float *db);

/* A conv's im2col window of x (off = -pad, sgn = +1). */
ag_window mm_im2col_window(const mm_im2col *g);

/* ---- the GPU's half (mm_gpu.c) ---- */
/* Quantizes src with t->spec over t->shape into ar: t->values16 (bf16) when
 * every value is bf16-exact, else t->values (float32, the same bits). */
void mm_gpu_quantize(ag_ctx *ctx, quant_tensor *t, const float *src, arena *ar, quant_stats *stats);
/* An operand's values as float32 (bf16 ones widened into scratch; CPU or GPU). */
const float *mm_values_f32(ag_ctx *ctx, quant_tensor t);
void mm_gpu_y(ag_ctx *ctx, const mm_shape *sh, const quant_tensor *a, const quant_tensor *b, float *y);
void mm_gpu_da(ag_ctx *ctx, const mm_shape *sh, const quant_tensor *dy, const quant_tensor *b, float *da);
void mm_gpu_db(ag_ctx *ctx, const mm_shape *sh, mm_rowq *q, const quant_tensor *a, const quant_tensor *dy, float *db);

#endif
