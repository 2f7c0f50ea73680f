/* The product path's GEMMs on the GPU: the same products as mm_gemm.c forms
 * on the CPU, over operands mm.c quantized with the same specs, multiplied
 * with cuBLASLt (cuda/gemm.cu): bf16 tensor cores with FP32 accumulation
 * when both operands are held as bf16 (every MX value and bf16 value is
 * exact there), else FP32 GEMMs on float values (fp32 operands, or blocks
 * scaled so low that bf16 cannot hold them). Convolutions gather im2col
 * rows explicitly (cu_conv_gather) by chunks, as the CPU does, and multiply
 * them with cuBLAS: the gathered operand is exactly the CPU's column matrix
 * (for dW in 1d, quantized down M), which cuDNN would not let us quantize,
 * and cuDNN's bf16 convolutions write bf16 outputs. Two float32 operands may
 * go to cuDNN instead (train.gpu_conv = cudnn; cu_conv_f32). */
#include "autograd/mm_impl.h"
#include "core/gemm.h"
#include "autograd/ops_util.h"
#include "core/error.h"

void mm_gpu_quantize(ag_ctx *ctx, quant_tensor *t, const float *src, arena *ar, quant_stats *stats) {
    int64_t n = quant_tensor_numel(t);
    mx_err err;
    int64_t nb = quant_num_blocks(&t->spec, t->ndim, t->shape, &err);
    MX_ASSERTF(nb >= 0, "quantize: %s", err.msg);
    uint8_t *scales = arena_alloc(&ctx->scratch, (size_t)(nb ? nb : 1));
    uint16_t *y16 = arena_alloc(ar, sizeof(uint16_t) * (size_t)n);
    t->values = NULL;
    t->values16 = NULL;
    if (ctx->run.gpu_unchecked_bf16 && !stats) { /* checked once after the step (ag_run) */
        cu_quant_fake_bf16_deferred(&t->spec, src, y16, t->ndim, t->shape, scales);
        t->values16 = y16;
        return;
    }
    if (cu_quant_fake_bf16(&t->spec, src, y16, t->ndim, t->shape, scales, stats) == 0) {
        t->values16 = y16;
        return;
    }
    /* some value is below bf16's range: the same quantization as float32 */
    float *y = arena_alloc(ar, sizeof(float) * (size_t)n);
    cu_quant_fake(&t->spec, src, y, t->ndim, t->shape, scales, NULL);
    t->values = y;
}

const float *mm_values_f32(ag_ctx *ctx, quant_tensor t) {
    if (t.values) return t.values;
    MX_ASSERT(t.values16);
    int64_t n = quant_tensor_numel(&t);
    float *y = arena_alloc(&ctx->scratch, sizeof(float) * (size_t)n);
    if (ctx->gpu) cu_bf16_to_f32(n, t.values16, y);
    else gemm_bf16_widen(t.values16, n, y);
    return y;
}

/* The two operands of one GEMM in a common type: both bf16, else both float32. */
typedef struct gpu_pair {
    const void *a, *b;
    cu_gemm_type type;
    int elem; /* bytes per element */
} gpu_pair;

static gpu_pair gpu_pair_of(ag_ctx *ctx, const quant_tensor *a, const quant_tensor *b) {
    if (a->values16 && b->values16 && !ctx->run.gpu_fp32_gemm) return (gpu_pair){a->values16, b->values16, CU_GEMM_BF16, 2};
    return (gpu_pair){mm_values_f32(ctx, *a), mm_values_f32(ctx, *b), CU_GEMM_F32, 4};
}

static void gpu_gemm(int64_t m, int64_t n, int64_t k, bool ta, bool tb, const gpu_pair *p, const void *a,
                     const void *b, float *c, float beta, int batch, int64_t sa, int64_t sb, int64_t sc) {
    cu_gemm_desc d = {m, n, k, ta, tb, p->type, batch, sa, sb, sc, 1.0f, beta};
    cu_gemm(&d, a, b, c);
}

/* Rows per chunk of a gathered matrix with K columns of elem bytes:
 * run.conv_chunk_bytes of columns (train.gpu_chunk_mb; 512 MB when unset:
 * the whole matrix for most layers), starting at multiples of align. */
static int64_t gpu_chunk_rows(const ag_ctx *ctx, int64_t K, int elem, int64_t M, int align) {
    int64_t bytes = ctx->run.conv_chunk_bytes ? ctx->run.conv_chunk_bytes : (int64_t)512 << 20;
    int64_t r = bytes / (elem * K) / align * align;
    r = r < align ? align : r;
    return r < M ? r : M;
}

static const char *gpu_at(const void *p, int64_t elems, int elem) { return (const char *)p + elems * elem; }

/* A float32 pair's convolution through cuDNN; false: gather instead. */
static bool gpu_cudnn(const ag_ctx *ctx, const mm_shape *sh, const gpu_pair *p, cu_conv_dir dir, const float *x,
                      const float *w, const float *dy, float *out) {
    if (p->type != CU_GEMM_F32 || !ctx->run.gpu_conv_cudnn) return false;
    const mm_im2col *g = &sh->g;
    cu_conv_shape cs = {(int)g->n, (int)g->h, (int)g->w, (int)g->c, sh->n, (int)g->kh, (int)g->kw, g->stride, g->pad};
    return cu_conv_f32(dir, &cs, x, w, dy, out);
}

/* ---------------- forward ---------------- */

void mm_gpu_y(ag_ctx *ctx, const mm_shape *sh, const quant_tensor *a, const quant_tensor *b, float *y) {
    arena_mark mark = arena_get_mark(&ctx->scratch);
    gpu_pair p = gpu_pair_of(ctx, a, b);
    if (!sh->im2col) {
        gpu_gemm(sh->m, sh->n, sh->k, false, sh->b_trans, &p, p.a, p.b, y, 0.0f, sh->batch, sh->stride_a,
                 sh->stride_b, sh->stride_y);
    } else if (!gpu_cudnn(ctx, sh, &p, CU_CONV_FWD, p.a, p.b, NULL, y)) {
        int64_t M = sh->m, K = sh->k, O = sh->n;
        int64_t rows = gpu_chunk_rows(ctx, K, p.elem, M, 1);
        void *cols = arena_alloc(&ctx->scratch, (size_t)(rows * K * p.elem));
        ag_window win = mm_im2col_window(&sh->g);
        for (int64_t r0 = 0; r0 < M; r0 += rows) {
            int64_t r1 = r0 + rows < M ? r0 + rows : M;
            cu_conv_gather(&win, p.elem, p.a, r0, r1, cols);
            gpu_gemm(r1 - r0, O, K, false, true, &p, cols, p.b, y + r0 * O, 0.0f, 1, 0, 0, 0);
        }
    }
    arena_release(&ctx->scratch, mark);
}

/* ---------------- dA ---------------- */

/* dX of a convolution, as the CPU forms it: stride 1 as a transposed
 * convolution (gather dY, multiply by W rearranged [(KH, KW, O), C]); other
 * strides dcols = dY . W, then col2im. */
static void gpu_conv_dx(ag_ctx *ctx, const mm_shape *sh, const gpu_pair *p, float *dx) {
    const mm_im2col *g = &sh->g;
    int64_t M = sh->m, K = sh->k, O = sh->n, KK = g->kh * g->kw;
    if (g->stride == 1) {
        int64_t KO = KK * O, P = g->n * g->h * g->w;
        void *wt = arena_alloc(&ctx->scratch, (size_t)(KO * g->c * p->elem));
        int64_t oshape[4] = {1, KK, O, g->c}, istride[4] = {0, g->c, KK * g->c, 1}; /* [O, KK, C] -> [KK, O, C] */
        if (p->elem == 2) cu_op_strided16(oshape, istride, p->b, wt);
        else cu_op_strided(oshape, istride, p->b, wt, false);
        int64_t rows = gpu_chunk_rows(ctx, KO, p->elem, P, 1);
        void *cols = arena_alloc(&ctx->scratch, (size_t)(rows * KO * p->elem));
        ag_window win = {g->n, g->oh, g->ow, O, g->h, g->w, g->kh, g->kw, 1, g->pad, -1};
        for (int64_t r0 = 0; r0 < P; r0 += rows) {
            int64_t r1 = r0 + rows < P ? r0 + rows : P;
            cu_conv_gather(&win, p->elem, p->a, r0, r1, cols);
            gpu_gemm(r1 - r0, g->c, KO, false, false, p, cols, wt, dx + r0 * g->c, 1.0f, 1, 0, 0, 0);
        }
        return;
    }
    int64_t rows = gpu_chunk_rows(ctx, K, 4, M, 1);
    float *dcols = arena_alloc(&ctx->scratch, sizeof(float) * (size_t)(rows * K));
    ag_window win = mm_im2col_window(g);
    for (int64_t r0 = 0; r0 < M; r0 += rows) {
        int64_t r1 = r0 + rows < M ? r0 + rows : M;
        gpu_gemm(r1 - r0, K, O, false, false, p, gpu_at(p->a, r0 * O, p->elem), p->b, dcols, 0.0f, 1, 0, 0, 0);
        cu_conv_col2im_add(&win, r0, r1, dcols, dx);
    }
}

void mm_gpu_da(ag_ctx *ctx, const mm_shape *sh, const quant_tensor *dy, const quant_tensor *b, float *da) {
    arena_mark mark = arena_get_mark(&ctx->scratch);
    gpu_pair p = gpu_pair_of(ctx, dy, b);
    if (sh->im2col) {
        if (!gpu_cudnn(ctx, sh, &p, CU_CONV_DX, NULL, p.b, p.a, da)) gpu_conv_dx(ctx, sh, &p, da);
    }
    else /* dA[M,K] += dY[M,N] . B'^T */
        gpu_gemm(sh->m, sh->k, sh->n, false, !sh->b_trans, &p, p.a, p.b, da, 1.0f, sh->batch, sh->stride_y,
                 sh->stride_b, sh->stride_a);
    arena_release(&ctx->scratch, mark);
}

/* ---------------- dB ---------------- */

/* dB += A^T . dY over m rows (dense layouts: dB [N,K] when b_trans, else [K,N]) */
static void gpu_db1(const mm_shape *sh, const gpu_pair *p, int64_t m, const void *a, const void *dy, float *db,
                    int batch) {
    if (sh->b_trans) /* dB[N,K] += dY^T[N,M] . A[M,K] */
        gpu_gemm(sh->n, sh->k, m, true, false, p, dy, a, db, 1.0f, batch, sh->stride_y, sh->stride_a, sh->stride_b);
    else /* dB[K,N] += A^T[K,M] . dY[M,N] */
        gpu_gemm(sh->k, sh->n, m, true, false, p, a, dy, db, 1.0f, batch, sh->stride_a, sh->stride_y, sh->stride_b);
}

void mm_gpu_db(ag_ctx *ctx, const mm_shape *sh, mm_rowq *q, const quant_tensor *a, const quant_tensor *dy, float *db) {
    arena_mark mark = arena_get_mark(&ctx->scratch);
    if (!sh->im2col) {
        quant_tensor aq = q->active ? mm_rowq_apply(q, mm_values_f32(ctx, *a), sh->batch, 0, sh->m, sh->k) : *a;
        gpu_pair p = gpu_pair_of(ctx, &aq, dy);
        gpu_db1(sh, &p, sh->m, p.a, p.b, db, sh->batch);
        arena_release(&ctx->scratch, mark);
        return;
    }
    if (!q->active) { /* dW's A is x as quantized (or not) for the forward: a float32 pair goes to cuDNN */
        gpu_pair p = gpu_pair_of(ctx, a, dy);
        if (gpu_cudnn(ctx, sh, &p, CU_CONV_DW, p.a, NULL, p.b, db)) {
            arena_release(&ctx->scratch, mark);
            return;
        }
        arena_release(&ctx->scratch, mark);
    }
    /* dW += dY^T . cols by chunks of gathered rows (1d: each chunk quantized down M through q) */
    int64_t M = sh->m, K = sh->k;
    bool src16 = !q->active && a->values16 && dy->values16; /* 2d: gather the quantized x as it is */
    const void *src = src16 ? (const void *)a->values16 : (const void *)mm_values_f32(ctx, *a);
    int elem = src16 ? 2 : 4;
    int64_t rows = gpu_chunk_rows(ctx, K, 4, M, q->align);
    void *cols = arena_alloc(&ctx->scratch, (size_t)(rows * K * elem));
    ag_window win = mm_im2col_window(&sh->g);
    for (int64_t r0 = 0; r0 < M; r0 += rows) {
        int64_t r1 = r0 + rows < M ? r0 + rows : M;
        cu_conv_gather(&win, elem, src, r0, r1, cols);
        arena_mark chunk = arena_get_mark(&ctx->scratch);
        quant_tensor ct = {.spec = {.format = QUANT_FORMAT_FP32}, .ndim = 3, .shape = {1, r1 - r0, K}};
        if (src16) ct.values16 = cols;
        else ct.values = cols;
        if (q->active) ct = mm_rowq_apply(q, cols, 1, r0, r1 - r0, K);
        quant_tensor dyc = *dy; /* rows [r0, r1) of dY */
        dyc.shape[1] = r1 - r0;
        if (dyc.values16) dyc.values16 += r0 * sh->n;
        else dyc.values += r0 * sh->n;
        gpu_pair p = gpu_pair_of(ctx, &ct, &dyc);
        gpu_db1(sh, &p, r1 - r0, p.a, p.b, db, 1);
        arena_release(&ctx->scratch, chunk);
    }
    arena_release(&ctx->scratch, mark);
}
