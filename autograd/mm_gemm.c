/* The products of the product path: dense (batched) GEMMs and convolutions
 * by chunks of im2col rows. The only code that calls core/gemm.h.
 *
 * Convolution, A = im2col(x): cols[M = N*OH*OW, K = KH*KW*C], row (n, oh, ow),
 * columns (kh, kw, c), so a kernel position's channels stay contiguous;
 * Y[M, O] = cols . W^T is NHWC. The column matrix (9x the input for a 3x3
 * conv) is never formed whole: each product runs over chunks of rows gathered
 * into a buffer that stays in cache while OpenBLAS packs and multiplies it.
 * (Whole, ResNet-18's first stage runs at half the GEMM rate: packing streams
 * it from memory.)
 *   forward       Y[rows]     = cols[rows] . W^T
 *   dW            dW         += dY[rows]^T . cols[rows]   (1d: chunks quantized down M)
 *   dX, stride 1  a transposed convolution (below)
 *   dX, stride 2  dX         += col2im(dY[rows] . W) */
#include <omp.h>
#include <string.h>

#include "autograd/mm_impl.h"
#include "autograd/ops_util.h"
#include "core/error.h"
#include "core/gemm.h"

/* The GEMMs of one product, batched (a batch of products is one oneDNN
 * call), on float32 operands: gemm_f32's or oneDNN's f32 matmul, or
 * gemm_bf16_f32's when both are quantized (their values are bf16) and the
 * run allows the BF16 units; or on operands held as bf16 (mm_gemm_in16). */
typedef void (*mm_gemm_fn)(const gemm_batch *bt, bool ta, bool tb, int m, int n, int k, const void *a, int lda,
                           const void *b, int ldb, float beta, float *c, int ldc);
static void mm_gemm_openblas(const gemm_batch *bt, bool ta, bool tb, int m, int n, int k, const void *a, int lda,
                             const void *b, int ldb, float beta, float *c, int ldc) {
    gemm_f32_batched(bt, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}
static void mm_gemm_dnnl(const gemm_batch *bt, bool ta, bool tb, int m, int n, int k, const void *a, int lda,
                         const void *b, int ldb, float beta, float *c, int ldc) {
    gemm_dnnl_f32_batched(bt, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}
static void mm_gemm_bf16(const gemm_batch *bt, bool ta, bool tb, int m, int n, int k, const void *a, int lda,
                         const void *b, int ldb, float beta, float *c, int ldc) {
    gemm_bf16_f32_batched(bt, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}
static void mm_gemm_in16(const gemm_batch *bt, bool ta, bool tb, int m, int n, int k, const void *a, int lda,
                         const void *b, int ldb, float beta, float *c, int ldc) {
    gemm_bf16_bf16_batched(bt, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc);
}
static const gemm_batch mm_one = {1, 0, 0, 0};

static mm_gemm_fn mm_cpu_gemm(const ag_ctx *ctx, quant_format fa, quant_format fb) {
    if (ctx->run.cpu_bf16 && fa != QUANT_FORMAT_FP32 && fb != QUANT_FORMAT_FP32) return mm_gemm_bf16;
    return ctx->run.cpu_f32_dnnl ? mm_gemm_dnnl : mm_gemm_openblas;
}

/* An operand's float32 values (bf16 ones widened into scratch, for the gathers). */
static const float *mm_cpu_values(ag_ctx *ctx, const quant_tensor *t) { return mm_values_f32(ctx, *t); }

/* ---------------- dense ---------------- */

static void dense_y(mm_gemm_fn gemm, const mm_shape *sh, const void *a, const void *b, float *y) {
    gemm_batch bt = {sh->batch, sh->stride_a, sh->stride_b, sh->stride_y};
    gemm(&bt, false, sh->b_trans, sh->m, sh->n, sh->k, a, sh->k, b, sh->b_trans ? sh->k : sh->n, 0.0f, y, sh->n);
}

static void dense_da(mm_gemm_fn gemm, const mm_shape *sh, const void *dy, const void *b, float *da) {
    gemm_batch bt = {sh->batch, sh->stride_y, sh->stride_b, sh->stride_a}; /* dA[M,K] += dY[M,N] . B'^T */
    gemm(&bt, false, !sh->b_trans, sh->m, sh->k, sh->n, dy, sh->n, b, sh->b_trans ? sh->k : sh->n, 1.0f, da, sh->k);
}

/* rows m of A and dY (each of `bt`'s products), lda/ldy their row strides */
static void dense_db1(mm_gemm_fn gemm, const gemm_batch *bt, const mm_shape *sh, int m, const void *a, const void *dy,
                      float *db) {
    if (sh->b_trans) { /* dB[N,K] += dY^T[N,M] . A[M,K] */
        gemm_batch t = {bt->count, bt->stride_b, bt->stride_a, bt->stride_c};
        gemm(&t, true, false, sh->n, sh->k, m, dy, sh->n, a, sh->k, 1.0f, db, sh->k);
    } else { /* dB[K,N] += A^T[K,M] . dY[M,N] */
        gemm(bt, true, false, sh->k, sh->n, m, a, sh->k, dy, sh->n, 1.0f, db, sh->n);
    }
}

/* ---------------- im2col by chunks ---------------- */

/* Rows [r0, r1) of the gather of kernel windows g (ag_window) of src. */
static void conv_gather_rows(const ag_window *g, const float *src, int64_t r0, int64_t r1, float *cols) {
    int64_t K = g->kh * g->kw * g->c;
#pragma omp parallel for schedule(static) if ((r1 - r0) * K >= AG_PAR_MIN)
    for (int64_t r = r0; r < r1; r++) {
        float *dst = cols + (r - r0) * K;
        for (int64_t i = 0; i < g->kh; i++)
            for (int64_t j = 0; j < g->kw; j++, dst += g->c) {
                int64_t px = ag_k_window_pixel(g, r, i, j);
                if (px < 0) memset(dst, 0, sizeof(float) * (size_t)g->c);
                else memcpy(dst, src + px * g->c, sizeof(float) * (size_t)g->c);
            }
    }
}

ag_window mm_im2col_window(const mm_im2col *g) {
    return (ag_window){g->n, g->h, g->w, g->c, g->oh, g->ow, g->kh, g->kw, g->stride, -g->pad, 1};
}

/* Rows per chunk of a product with K columns and N outputs: about 1.25 MB of
 * columns per thread (2.5 MB on 2 threads, best on every ResNet-18 stage
 * there), so the chunk stays in cache while OpenBLAS packs it, and each
 * thread still gets a worthwhile share; at least 2N rows, since every
 * chunk's GEMM packs the N x K weight again (ResNet's last stage: 9.4 MB of
 * it). Chunk starts are multiples of align. */
static int64_t conv_chunk_rows(const ag_ctx *ctx, int64_t K, int64_t N, int64_t M, int align) {
    int64_t bytes = ctx->run.conv_chunk_bytes ? ctx->run.conv_chunk_bytes
                                              : (int64_t)(1.25 * 1024 * 1024) * omp_get_max_threads();
    int64_t r = bytes / (4 * K);
    r = r < 2 * N ? 2 * N : r;
    r = r / align * align;
    r = r < align ? align : r;
    return r < M ? r : M;
}

/* dx[rows' windows] += dcols rows [r0, r1); threads split the channels, so no
 * two write the same element. */
static void conv_col2im_add_rows(const mm_im2col *g, const float *dcols, int64_t r0, int64_t r1, float *dx) {
    int64_t K = g->kh * g->kw * g->c;
#pragma omp parallel if ((r1 - r0) * K >= AG_PAR_MIN)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t c0 = g->c * t / nt, c1 = g->c * (t + 1) / nt;
        for (int64_t r = r0; r < r1; r++) {
            int64_t ni = r / (g->oh * g->ow), oh = (r / g->ow) % g->oh, ow = r % g->ow;
            const float *src = dcols + (r - r0) * K;
            for (int64_t i = 0; i < g->kh; i++) {
                int64_t ih = oh * g->stride - g->pad + i;
                for (int64_t j = 0; j < g->kw; j++, src += g->c) {
                    int64_t iw = ow * g->stride - g->pad + j;
                    if (ih < 0 || ih >= g->h || iw < 0 || iw >= g->w) continue;
                    float *d = dx + ((ni * g->h + ih) * g->w + iw) * g->c;
                    for (int64_t c = c0; c < c1; c++) d[c] += src[c];
                }
            }
        }
    }
}

static void conv_y(ag_ctx *ctx, mm_gemm_fn gemm, const mm_shape *sh, const float *x, const float *w, float *y) {
    const mm_im2col *g = &sh->g;
    int64_t M = sh->m, K = sh->k, O = sh->n;
    arena_mark mark = arena_get_mark(&ctx->scratch);
    int64_t rows = conv_chunk_rows(ctx, K, O, M, 1);
    float *cols = arena_alloc(&ctx->scratch, sizeof(float) * (size_t)(rows * K));
    ag_window win = mm_im2col_window(g);
    for (int64_t r0 = 0; r0 < M; r0 += rows) {
        int64_t r1 = r0 + rows < M ? r0 + rows : M;
        double t0 = ag_prof_start(ctx);
        conv_gather_rows(&win, x, r0, r1, cols);
        ag_prof_stop(ctx, AG_PROF_GATHER, t0);
        gemm(&mm_one, false, true, (int)(r1 - r0), (int)O, (int)K, cols, (int)K, w, (int)K, 0.0f, y + r0 * O, (int)O);
    }
    arena_release(&ctx->scratch, mark);
}

/* dX. Stride 1 as a transposed convolution,
 *   dX[(n,y,x), c] += sum_(i,j,o) dY[n, y+pad-i, x+pad-j, o] W[o,i,j,c]:
 * a gather of dY and one GEMM reducing over KH*KW*O per chunk, where
 * dcols = dY . W followed by col2im would zero, accumulate and scatter 9x the
 * input with a GEMM reducing over O alone. */
static void conv_dx(ag_ctx *ctx, mm_gemm_fn gemm, const mm_shape *sh, const float *dy, const float *w, float *dx) {
    const mm_im2col *g = &sh->g;
    int64_t M = sh->m, K = sh->k, O = sh->n;
    arena_mark mark = arena_get_mark(&ctx->scratch);
    if (g->stride == 1) {
        int64_t KO = g->kh * g->kw * O, P = g->n * g->h * g->w;
        float *wt = arena_alloc(&ctx->scratch, sizeof(float) * (size_t)(KO * g->c));
        for (int64_t o = 0; o < O; o++) /* W [O, KH, KW, C] -> W' [(KH, KW, O), C] */
            for (int64_t ij = 0; ij < g->kh * g->kw; ij++)
                memcpy(wt + (ij * O + o) * g->c, w + (o * g->kh * g->kw + ij) * g->c, sizeof(float) * (size_t)g->c);
        int64_t rows = conv_chunk_rows(ctx, KO, g->c, P, 1);
        float *cols = arena_alloc(&ctx->scratch, sizeof(float) * (size_t)(rows * KO));
        ag_window win = {g->n, g->oh, g->ow, O, g->h, g->w, g->kh, g->kw, 1, g->pad, -1};
        for (int64_t r0 = 0; r0 < P; r0 += rows) {
            int64_t r1 = r0 + rows < P ? r0 + rows : P;
            double t0 = ag_prof_start(ctx);
            conv_gather_rows(&win, dy, r0, r1, cols);
            ag_prof_stop(ctx, AG_PROF_GATHER, t0);
            gemm(&mm_one, false, false, (int)(r1 - r0), (int)g->c, (int)KO, cols, (int)KO, wt, (int)g->c, 1.0f,
                 dx + r0 * g->c, (int)g->c);
        }
    } else {
        int64_t rows = conv_chunk_rows(ctx, K, O, M, 1);
        float *dcols = arena_alloc(&ctx->scratch, sizeof(float) * (size_t)(rows * K));
        for (int64_t r0 = 0; r0 < M; r0 += rows) {
            int64_t r1 = r0 + rows < M ? r0 + rows : M;
            gemm(&mm_one, false, false, (int)(r1 - r0), (int)K, (int)O, dy + r0 * O, (int)O, w, (int)K, 0.0f, dcols,
                 (int)K);
            double t0 = ag_prof_start(ctx);
            conv_col2im_add_rows(g, dcols, r0, r1, dx);
            ag_prof_stop(ctx, AG_PROF_GATHER, t0);
        }
    }
    arena_release(&ctx->scratch, mark);
}

/* dW += dY^T . cols, by chunks of rows (each quantized through q). */
static void conv_dw(ag_ctx *ctx, mm_gemm_fn gemm, const mm_shape *sh, mm_rowq *q, const float *x,
                    const quant_tensor *dy, float *dw) {
    int64_t M = sh->m, K = sh->k, N = sh->n;
    arena_mark mark = arena_get_mark(&ctx->scratch);
    /* dY held as bf16 (the BF16 units) meets chunks quantized to bf16 as well; otherwise float32 */
    const uint16_t *dy16 = q->active ? dy->values16 : NULL;
    const float *dyf = dy16 ? NULL : mm_cpu_values(ctx, dy);
    q->bf16 = dy16 != NULL;
    int64_t rows = conv_chunk_rows(ctx, K, N, M, q->align);
    float *cols = arena_alloc(&ctx->scratch, sizeof(float) * (size_t)(rows * K));
    ag_window win = mm_im2col_window(&sh->g);
    for (int64_t r0 = 0; r0 < M; r0 += rows) {
        int64_t r1 = r0 + rows < M ? r0 + rows : M;
        double t0 = ag_prof_start(ctx);
        conv_gather_rows(&win, x, r0, r1, cols);
        ag_prof_stop(ctx, AG_PROF_GATHER, t0);
        arena_mark chunk = arena_get_mark(&ctx->scratch);
        quant_tensor cq = mm_rowq_apply(q, cols, 1, r0, r1 - r0, K);
        if (dy16 && cq.values16) {
            dense_db1(mm_gemm_in16, &mm_one, sh, (int)(r1 - r0), cq.values16, dy16 + r0 * N, dw);
        } else {
            const float *d = dyf ? dyf + r0 * N : NULL;
            if (!d) { /* a chunk bf16 cannot hold (rare): these rows of dY widened */
                float *w = arena_alloc(&ctx->scratch, sizeof(float) * (size_t)((r1 - r0) * N));
                gemm_bf16_widen(dy16 + r0 * N, (r1 - r0) * N, w);
                d = w;
            }
            dense_db1(gemm, &mm_one, sh, (int)(r1 - r0), mm_cpu_values(ctx, &cq), d, dw);
        }
        arena_release(&ctx->scratch, chunk);
    }
    arena_release(&ctx->scratch, mark);
}

/* ---------------- oneDNN's direct convolutions ---------------- */

/* Convolutions whose products run on oneDNN (FP32 operands on its f32
 * engine, operands held as bf16 on the BF16 units; train.cpu_conv = auto)
 * run as its direct kernels: no im2col gathers (27% of ResNet-18's step on
 * 16 cores). The quantized operands are tensors of x's, W's and dY's shapes
 * (quantized before any gather), so the kernels multiply exactly what the
 * gathered products would. in16: the operands are bf16, else float32. False:
 * this call gathers as before. */
static bool conv_dnnl(ag_ctx *ctx, mm_gemm_fn gemm, bool in16, gemm_conv_dir dir, const mm_shape *sh, const void *x,
                      const void *w, const void *dy, float *out) {
    if (!ctx->run.cpu_conv_dnnl || !(in16 || gemm == mm_gemm_dnnl)) return false;
    const mm_im2col *g = &sh->g;
    gemm_conv_shape c = {(int)g->n, (int)g->h, (int)g->w, (int)g->c, sh->n, (int)g->kh, (int)g->kw, g->stride, g->pad};
    arena_mark mark = arena_get_mark(&ctx->scratch);
    float *tmp = dir == GEMM_CONV_DX ? arena_alloc(&ctx->scratch, sizeof(float) * (size_t)(g->n * g->h * g->w * g->c))
                                     : NULL;
    bool done = in16 ? gemm_conv_dnnl_bf16(dir, &c, x, w, dy, out, tmp) : gemm_conv_dnnl_f32(dir, &c, x, w, dy, out, tmp);
    arena_release(&ctx->scratch, mark);
    return done;
}

/* ---------------- entry points ---------------- */


/* Both operands held as bf16 (mm.c on the BF16 units): products read them as they are. */
static bool mm_pair16(const quant_tensor *a, const quant_tensor *b) { return a->values16 && b->values16; }

void mm_gemm_y(ag_ctx *ctx, const mm_shape *sh, const quant_tensor *a, const quant_tensor *b, float *y) {
    mm_gemm_fn gemm = mm_cpu_gemm(ctx, a->spec.format, b->spec.format);
    double t0 = ag_prof_start(ctx);
    arena_mark mark = arena_get_mark(&ctx->scratch);
    if (ctx->gpu) mm_gpu_y(ctx, sh, a, b, y);
    else if (mm_pair16(a, b) && !sh->im2col) dense_y(mm_gemm_in16, sh, a->values16, b->values16, y);
    else if (!sh->im2col) dense_y(gemm, sh, mm_cpu_values(ctx, a), mm_cpu_values(ctx, b), y);
    else if (!(mm_pair16(a, b) ? conv_dnnl(ctx, gemm, true, GEMM_CONV_FWD, sh, a->values16, b->values16, NULL, y)
                               : conv_dnnl(ctx, gemm, false, GEMM_CONV_FWD, sh, mm_cpu_values(ctx, a),
                                           mm_cpu_values(ctx, b), NULL, y)))
        conv_y(ctx, gemm, sh, mm_cpu_values(ctx, a), mm_cpu_values(ctx, b), y);
    arena_release(&ctx->scratch, mark);
    ag_prof_stop(ctx, AG_PROF_PRODUCT, t0);
}

void mm_gemm_da(ag_ctx *ctx, const mm_shape *sh, const quant_tensor *dy, const quant_tensor *b, float *da) {
    mm_gemm_fn gemm = mm_cpu_gemm(ctx, dy->spec.format, b->spec.format);
    double t0 = ag_prof_start(ctx);
    arena_mark mark = arena_get_mark(&ctx->scratch);
    if (ctx->gpu) mm_gpu_da(ctx, sh, dy, b, da);
    else if (mm_pair16(dy, b) && !sh->im2col) dense_da(mm_gemm_in16, sh, dy->values16, b->values16, da);
    else if (!sh->im2col) dense_da(gemm, sh, mm_cpu_values(ctx, dy), mm_cpu_values(ctx, b), da);
    else if (!(mm_pair16(dy, b) ? conv_dnnl(ctx, gemm, true, GEMM_CONV_DX, sh, NULL, b->values16, dy->values16, da)
                                : conv_dnnl(ctx, gemm, false, GEMM_CONV_DX, sh, NULL, mm_cpu_values(ctx, b),
                                            mm_cpu_values(ctx, dy), da)))
        conv_dx(ctx, gemm, sh, mm_cpu_values(ctx, dy), mm_cpu_values(ctx, b), da);
    arena_release(&ctx->scratch, mark);
    ag_prof_stop(ctx, AG_PROF_PRODUCT, t0);
}

static void mm_gemm_db_run(ag_ctx *ctx, const mm_shape *sh, mm_rowq *q, const quant_tensor *a, const quant_tensor *dy,
                           float *db) {
    if (ctx->gpu) {
        mm_gpu_db(ctx, sh, q, a, dy, db);
        return;
    }
    /* A as the product sees it: through q when q quantizes its rows */
    mm_gemm_fn gemm = mm_cpu_gemm(ctx, q->active ? q->spec.format : a->spec.format, dy->spec.format);
    arena_mark mark = arena_get_mark(&ctx->scratch);
    if (sh->im2col) { /* A's rows quantized by chunks (1d) exist only gathered */
        bool done = !q->active && (mm_pair16(a, dy) ? conv_dnnl(ctx, gemm, true, GEMM_CONV_DW, sh, a->values16, NULL,
                                                                dy->values16, db)
                                                    : conv_dnnl(ctx, gemm, false, GEMM_CONV_DW, sh, mm_cpu_values(ctx, a),
                                                                NULL, mm_cpu_values(ctx, dy), db));
        if (!done) conv_dw(ctx, gemm, sh, q, mm_cpu_values(ctx, a), dy, db);
    } else {
        q->bf16 = true; /* whole rows: bf16 like dY where the BF16 units run */
        quant_tensor aq = q->active ? mm_rowq_apply(q, mm_cpu_values(ctx, a), sh->batch, 0, sh->m, sh->k) : *a;
        gemm_batch bt = {sh->batch, sh->stride_a, sh->stride_y, sh->stride_b}; /* (A, dY, dB) of each product */
        if (mm_pair16(&aq, dy)) dense_db1(mm_gemm_in16, &bt, sh, sh->m, aq.values16, dy->values16, db);
        else dense_db1(gemm, &bt, sh, sh->m, mm_cpu_values(ctx, &aq), mm_cpu_values(ctx, dy), db);
    }
    arena_release(&ctx->scratch, mark);
}

void mm_gemm_db(ag_ctx *ctx, const mm_shape *sh, mm_rowq *q, const quant_tensor *a, const quant_tensor *dy,
                float *db) {
    double t0 = ag_prof_start(ctx);
    mm_gemm_db_run(ctx, sh, q, a, dy, db);
    ag_prof_stop(ctx, AG_PROF_PRODUCT, t0);
}
