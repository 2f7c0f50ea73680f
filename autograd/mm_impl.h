/* Between the product path's two halves: mm.c decides and quantizes,
 * mm_gemm.c forms the products (gathers, chunk loops, every BLAS call). */
#ifndef MX_AUTOGRAD_MM_IMPL_H
#define MX_AUTOGRAD_MM_IMPL_H

#include "autograd/mm.h"

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
} mm_rowq;

/* Rows [row0, row0 + rows) of A (cols each; batch > 1 only whole, row0 = 0),
 * quantized into the scratch arena, or a itself when inactive. */
const float *mm_rowq_apply(mm_rowq *q, const float *a, int batch, int64_t row0, int64_t rows, int64_t cols);

/* Y = A . B' */
void mm_gemm_y(ag_ctx *ctx, const mm_shape *sh, const float *a, const float *b, float *y);
/* dA += dY . B'^T (a conv: dX) */
void mm_gemm_da(ag_ctx *ctx, const mm_shape *sh, const float *dy, const float *b, float *da);
/* dB += A^T . dY with A's rows through q */
void mm_gemm_db(ag_ctx *ctx, const mm_shape *sh, mm_rowq *q, const float *a, const float *dy, float *db);

#endif
