/* Products: linear, matmul, conv2d (im2col), attention. All go through mm. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/ops_util.h"
#include "core/error.h"
#include "core/fastmath.h"
#include "core/gemm.h"

/* ---------------- shared helpers ---------------- */

void ag_colsum_add(ag_ctx *ctx, const float *x, int64_t rows, int64_t cols, float *out) {
    int nth = rows * cols >= AG_PAR_MIN ? omp_get_max_threads() : 1;
    float *part = arena_calloc(&ctx->ar, sizeof(float) * (size_t)(nth * cols));
#pragma omp parallel num_threads(nth)
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        float *p = part + t * cols;
        for (int64_t r = rows * t / nt; r < rows * (t + 1) / nt; r++)
            for (int64_t c = 0; c < cols; c++) p[c] += x[r * cols + c];
    }
    for (int t = 0; t < nth; t++)
        for (int64_t c = 0; c < cols; c++) out[c] += part[t * cols + c];
}

void ag_rows_add_bias(float *y, int64_t rows, int64_t cols, const float *b) {
#pragma omp parallel for schedule(static) if (rows * cols >= AG_PAR_MIN)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) y[r * cols + c] += b[c];
}

void ag_accumulate(float *dst, const float *src, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= AG_PAR_MIN)
    for (int64_t i = 0; i < n; i++) dst[i] += src[i];
}

/* ---------------- linear: y = x W^T + b ---------------- */

typedef struct linear_saved {
    const mm_site *site;
    mm_saved *mm;
} linear_saved;

/* The product's saved state, when the op will be recorded. */
static mm_saved *ag_mm_saved(ag_ctx *ctx, ag_var *const *ins, int n) {
    return ag_will_record(ctx, ins, n) ? arena_calloc(&ctx->ar, sizeof(mm_saved)) : NULL;
}

ag_var *ag_linear(ag_ctx *ctx, const mm_site *site, ag_var *x, ag_var *w, ag_var *b) {
    const tensor *xv = &x->value, *wv = &w->value;
    int64_t in = wv->shape[1], out = wv->shape[0];
    MX_ASSERTF(xv->shape[xv->ndim - 1] == in, "linear %s: input width %lld, weight wants %lld", site->name,
               (long long)xv->shape[xv->ndim - 1], (long long)in);
    int64_t rows = tensor_numel(xv) / in;
    int64_t shape[TENSOR_MAX_DIMS];
    memcpy(shape, xv->shape, sizeof shape);
    shape[xv->ndim - 1] = out;
    ag_var *y = ag_new(ctx, xv->ndim, shape);
    ag_var *ins[3] = {x, w, b};
    mm_saved *sv = ag_mm_saved(ctx, ins, b ? 3 : 2);
    mm_shape sh = {1, (int)rows, (int)out, (int)in, true, 0, 0, 0};
    mm_forward(ctx, site, &sh, xv->data, wv->data, y->value.data, sv);
    if (b) ag_rows_add_bias(y->value.data, rows, out, b->value.data);
    ag_node *n = ag_record(ctx, AG_OP_LINEAR, y, ins, b ? 3 : 2);
    if (n) *(linear_saved *)ag_save(ctx, n, sizeof(linear_saved)) = (linear_saved){site, sv};
    return y;
}

void ag_linear_backward(ag_ctx *ctx, ag_node *n) {
    const linear_saved *s = n->saved;
    ag_var *x = n->in[0], *w = n->in[1], *b = n->n_in > 2 ? n->in[2] : NULL;
    int64_t in = w->value.shape[1], out = w->value.shape[0], rows = ag_numel(x) / in;
    mm_shape sh = {1, (int)rows, (int)out, (int)in, true, 0, 0, 0};
    mm_backward(ctx, s->site, &sh, s->mm, x->value.data, w->value.data, n->out->grad,
                x->requires_grad ? ag_grad(ctx, x) : NULL, w->requires_grad ? ag_grad(ctx, w) : NULL);
    if (b && b->requires_grad) ag_colsum_add(ctx, n->out->grad, rows, out, ag_grad(ctx, b));
}

/* ---------------- batched matmul ---------------- */

typedef struct matmul_saved {
    const mm_site *site;
    mm_shape sh;
    mm_saved *mm;
} matmul_saved;

ag_var *ag_matmul(ag_ctx *ctx, const mm_site *site, ag_var *a, ag_var *b, bool trans_b) {
    const tensor *av = &a->value, *bv = &b->value;
    MX_ASSERT(av->ndim == 3 && bv->ndim == 3 && av->shape[0] == bv->shape[0]);
    int64_t B = av->shape[0], M = av->shape[1], K = av->shape[2];
    int64_t N = trans_b ? bv->shape[1] : bv->shape[2];
    MX_ASSERTF((trans_b ? bv->shape[2] : bv->shape[1]) == K, "matmul %s: inner dimensions differ", site->name);
    int64_t shape[3] = {B, M, N};
    ag_var *y = ag_new(ctx, 3, shape);
    ag_var *ins[2] = {a, b};
    mm_saved *sv = ag_mm_saved(ctx, ins, 2);
    mm_shape sh = {(int)B, (int)M, (int)N, (int)K, trans_b, M * K, K * N, M * N};
    mm_forward(ctx, site, &sh, av->data, bv->data, y->value.data, sv);
    ag_node *n = ag_record(ctx, AG_OP_MATMUL, y, ins, 2);
    if (n) *(matmul_saved *)ag_save(ctx, n, sizeof(matmul_saved)) = (matmul_saved){site, sh, sv};
    return y;
}

void ag_matmul_backward(ag_ctx *ctx, ag_node *n) {
    const matmul_saved *s = n->saved;
    ag_var *a = n->in[0], *b = n->in[1];
    mm_backward(ctx, s->site, &s->sh, s->mm, a->value.data, b->value.data, n->out->grad,
                a->requires_grad ? ag_grad(ctx, a) : NULL, b->requires_grad ? ag_grad(ctx, b) : NULL);
}

/* ---------------- conv2d, NHWC, via im2col by chunks ----------------
 * cols[M = N*OH*OW, K = KH*KW*C]: row (n, oh, ow), columns (kh, kw, c), so a
 * kernel position's channels stay contiguous; Y[M, O] = cols . W^T is NHWC.
 * The column matrix (9x the input for a 3x3 conv) is never formed whole: each
 * product runs over chunks of rows gathered into a buffer of about 2.5 MB that
 * stays in cache while OpenBLAS packs and multiplies it. (Whole, ResNet-18's
 * first stage runs at half the GEMM rate: packing streams it from memory.)
 *   forward       Y[rows]     = cols[rows] . W^T
 *   dW            dW         += dY[rows]^T . cols[rows]
 *   dX, stride 1  a transposed convolution (below)
 *   dX, stride 2  dX         += col2im(dY[rows] . W)
 * The hooks receive operands already quantized by mm_*_custom: x along
 * channels before the gather (mm_quantize_conv_input), W and dY whole, and the
 * 1d dW product's column chunks (blocks down M) through mm_chunk_quant_rows. */

typedef struct conv_geom {
    int64_t n, h, w, c, o, kh, kw, oh, ow;
    int stride, pad;
} conv_geom;

typedef struct conv_saved {
    const mm_site *site;
    conv_geom g;
    mm_saved *mm;
} conv_saved;

static bool conv_is_pointwise(const conv_geom *g) { return g->kh == 1 && g->kw == 1 && g->stride == 1 && g->pad == 0; }

/* Rows [r0, r1) of the gather of kernel windows of an NHWC tensor src
 * [n, sh, sw, c]: row (image, py, px) of the ph x pw grid, columns (i, j, c)
 * for kernel position (i, j), reading src pixel (py*stride + off + sgn*i,
 * px*stride + off + sgn*j), zero outside. im2col of x: off = -pad, sgn = +1;
 * the transposed convolution gathers dY with off = +pad, sgn = -1. */
typedef struct conv_window {
    int64_t n, sh, sw, c, ph, pw, kh, kw;
    int stride, off, sgn;
} conv_window;

static void conv_gather_rows(const conv_window *g, const float *src, int64_t r0, int64_t r1, float *cols) {
    int64_t K = g->kh * g->kw * g->c;
#pragma omp parallel for schedule(static) if ((r1 - r0) * K >= AG_PAR_MIN)
    for (int64_t r = r0; r < r1; r++) {
        int64_t ni = r / (g->ph * g->pw), py = (r / g->pw) % g->ph, px = r % g->pw;
        float *dst = cols + (r - r0) * K;
        for (int64_t i = 0; i < g->kh; i++) {
            int64_t sy = py * g->stride + g->off + g->sgn * i;
            for (int64_t j = 0; j < g->kw; j++, dst += g->c) {
                int64_t sx = px * g->stride + g->off + g->sgn * j;
                if (sy < 0 || sy >= g->sh || sx < 0 || sx >= g->sw) memset(dst, 0, sizeof(float) * (size_t)g->c);
                else memcpy(dst, src + ((ni * g->sh + sy) * g->sw + sx) * g->c, sizeof(float) * (size_t)g->c);
            }
        }
    }
}

static conv_window conv_im2col_window(const conv_geom *g) {
    return (conv_window){g->n, g->h, g->w, g->c, g->oh, g->ow, g->kh, g->kw, g->stride, -g->pad, 1};
}

/* Rows per chunk of a product with K columns and N outputs: about 1.25 MB of
 * columns per thread (2.5 MB on 2 threads, best on every ResNet-18 stage
 * there), so the chunk stays in cache while OpenBLAS packs it, and each
 * thread still gets a worthwhile share; at least 2N rows, since every
 * chunk's GEMM packs the N x K weight again (ResNet's last stage: 9.4 MB of
 * it). Chunk starts are multiples of align. */
static int64_t conv_chunk_rows(const ag_ctx *ctx, int64_t K, int64_t N, int64_t M, int align) {
    int64_t bytes = ctx->conv_chunk_bytes ? ctx->conv_chunk_bytes : (int64_t)(1.25 * 1024 * 1024) * omp_get_max_threads();
    int64_t r = bytes / (4 * K);
    r = r < 2 * N ? 2 * N : r;
    r = r / align * align;
    r = r < align ? align : r;
    return r < M ? r : M;
}

/* dx[rows' windows] += dcols rows [r0, r1); threads split the channels, so no
 * two write the same element. */
static void conv_col2im_add_rows(const conv_geom *g, const float *dcols, int64_t r0, int64_t r1, float *dx) {
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

typedef struct conv_job {
    ag_ctx *ctx;
    const conv_geom *g;
    float *dx;
} conv_job;

static void conv_y(void *user, const float *xq, const float *wq, float *y) {
    const conv_job *job = user;
    const conv_geom *g = job->g;
    int64_t M = g->n * g->oh * g->ow, K = g->kh * g->kw * g->c;
    if (conv_is_pointwise(g)) {
        gemm_f32(false, true, (int)M, (int)g->o, (int)K, 1.0f, xq, (int)K, wq, (int)K, 0.0f, y, (int)g->o);
        return;
    }
    arena_mark mark = arena_get_mark(&job->ctx->scratch);
    int64_t rows = conv_chunk_rows(job->ctx, K, g->o, M, 1);
    float *cols = arena_alloc(&job->ctx->scratch, sizeof(float) * (size_t)(rows * K));
    conv_window win = conv_im2col_window(g);
    for (int64_t r0 = 0; r0 < M; r0 += rows) {
        int64_t r1 = r0 + rows < M ? r0 + rows : M;
        conv_gather_rows(&win, xq, r0, r1, cols);
        gemm_f32(false, true, (int)(r1 - r0), (int)g->o, (int)K, 1.0f, cols, (int)K, wq, (int)K, 0.0f,
                 y + r0 * g->o, (int)g->o);
    }
    arena_release(&job->ctx->scratch, mark);
}

/* dX. Stride 1 as a transposed convolution,
 *   dX[(n,y,x), c] += sum_(i,j,o) dY[n, y+pad-i, x+pad-j, o] W[o,i,j,c]:
 * a gather of dY and one GEMM reducing over KH*KW*O per chunk, where
 * dcols = dY . W followed by col2im would zero, accumulate and scatter 9x the
 * input with a GEMM reducing over O alone. */
static void conv_da(void *user, const float *dyq, const float *wq) {
    const conv_job *job = user;
    const conv_geom *g = job->g;
    ag_ctx *ctx = job->ctx;
    int64_t M = g->n * g->oh * g->ow, K = g->kh * g->kw * g->c;
    if (conv_is_pointwise(g)) {
        gemm_f32(false, false, (int)M, (int)K, (int)g->o, 1.0f, dyq, (int)g->o, wq, (int)K, 1.0f, job->dx, (int)K);
        return;
    }
    arena_mark mark = arena_get_mark(&ctx->scratch);
    if (g->stride == 1) {
        int64_t KO = g->kh * g->kw * g->o, P = g->n * g->h * g->w;
        float *wt = arena_alloc(&ctx->scratch, sizeof(float) * (size_t)(KO * g->c));
        for (int64_t o = 0; o < g->o; o++) /* W [O, KH, KW, C] -> W' [(KH, KW, O), C] */
            for (int64_t ij = 0; ij < g->kh * g->kw; ij++)
                memcpy(wt + (ij * g->o + o) * g->c, wq + (o * g->kh * g->kw + ij) * g->c,
                       sizeof(float) * (size_t)g->c);
        int64_t rows = conv_chunk_rows(ctx, KO, g->c, P, 1);
        float *cols = arena_alloc(&ctx->scratch, sizeof(float) * (size_t)(rows * KO));
        conv_window win = {g->n, g->oh, g->ow, g->o, g->h, g->w, g->kh, g->kw, 1, g->pad, -1};
        for (int64_t r0 = 0; r0 < P; r0 += rows) {
            int64_t r1 = r0 + rows < P ? r0 + rows : P;
            conv_gather_rows(&win, dyq, r0, r1, cols);
            gemm_f32(false, false, (int)(r1 - r0), (int)g->c, (int)KO, 1.0f, cols, (int)KO, wt, (int)g->c, 1.0f,
                     job->dx + r0 * g->c, (int)g->c);
        }
    } else {
        int64_t rows = conv_chunk_rows(job->ctx, K, g->o, M, 1);
        float *dcols = arena_alloc(&ctx->scratch, sizeof(float) * (size_t)(rows * K));
        for (int64_t r0 = 0; r0 < M; r0 += rows) {
            int64_t r1 = r0 + rows < M ? r0 + rows : M;
            gemm_f32(false, false, (int)(r1 - r0), (int)K, (int)g->o, 1.0f, dyq + r0 * g->o, (int)g->o, wq, (int)K,
                     0.0f, dcols, (int)K);
            conv_col2im_add_rows(g, dcols, r0, r1, job->dx);
        }
    }
    arena_release(&ctx->scratch, mark);
}

/* dW += dY^T . cols, by chunks of rows (quantized per chunk in 1d). */
static void conv_db(void *user, mm_chunk_quant *q, const float *x, const float *dyq, float *dw) {
    const conv_job *job = user;
    const conv_geom *g = job->g;
    ag_ctx *ctx = job->ctx;
    int64_t M = g->n * g->oh * g->ow, K = g->kh * g->kw * g->c;
    arena_mark mark = arena_get_mark(&ctx->scratch);
    if (conv_is_pointwise(g)) {
        const float *xq = mm_chunk_quant_rows(q, x, M, K);
        gemm_f32(true, false, (int)g->o, (int)K, (int)M, 1.0f, dyq, (int)g->o, xq, (int)K, 1.0f, dw, (int)K);
        arena_release(&ctx->scratch, mark);
        return;
    }
    int64_t rows = conv_chunk_rows(ctx, K, g->o, M, q->align);
    float *cols = arena_alloc(&ctx->scratch, sizeof(float) * (size_t)(rows * K));
    conv_window win = conv_im2col_window(g);
    for (int64_t r0 = 0; r0 < M; r0 += rows) {
        int64_t r1 = r0 + rows < M ? r0 + rows : M;
        conv_gather_rows(&win, x, r0, r1, cols);
        arena_mark chunk = arena_get_mark(&ctx->scratch);
        const float *cq = mm_chunk_quant_rows(q, cols, r1 - r0, K);
        gemm_f32(true, false, (int)g->o, (int)K, (int)(r1 - r0), 1.0f, dyq + r0 * g->o, (int)g->o, cq, (int)K, 1.0f,
                 dw, (int)K);
        arena_release(&ctx->scratch, chunk);
    }
    arena_release(&ctx->scratch, mark);
}

ag_var *ag_conv2d(ag_ctx *ctx, const mm_site *site, ag_var *x, ag_var *w, ag_var *b, int stride, int pad) {
    const tensor *xv = &x->value, *wv = &w->value;
    MX_ASSERTF(xv->ndim == 4 && wv->ndim == 4 && wv->shape[3] == xv->shape[3],
               "conv %s: want x [N,H,W,C] and w [O,KH,KW,C] with matching C", site->name);
    conv_geom g = {xv->shape[0], xv->shape[1], xv->shape[2], xv->shape[3], wv->shape[0], wv->shape[1], wv->shape[2],
                   0, 0, stride, pad};
    g.oh = (g.h + 2 * pad - g.kh) / stride + 1;
    g.ow = (g.w + 2 * pad - g.kw) / stride + 1;
    MX_ASSERTF(g.oh > 0 && g.ow > 0, "conv %s: kernel larger than the padded input", site->name);
    int64_t M = g.n * g.oh * g.ow, K = g.kh * g.kw * g.c;
    int64_t shape[4] = {g.n, g.oh, g.ow, g.o};
    ag_var *y = ag_new(ctx, 4, shape);
    ag_var *ins[3] = {x, w, b};
    mm_saved *sv = ag_mm_saved(ctx, ins, b ? 3 : 2);
    arena_mark mark = arena_get_mark(&ctx->scratch);
    /* MX: the NHWC activation is quantized before im2col (blocks along channels) */
    const float *xin = mm_quantize_conv_input(ctx, site, xv->data, g.n * g.h * g.w, g.c, sv);
    mm_shape sh = {1, (int)M, (int)g.o, (int)K, true, 0, 0, 0};
    conv_job job = {ctx, &g, NULL};
    mm_forward_custom(ctx, site, &sh, xin, wv->data, y->value.data, sv, &(mm_custom){conv_y, NULL, NULL, &job});
    arena_release(&ctx->scratch, mark);
    if (b) ag_rows_add_bias(y->value.data, M, g.o, b->value.data);
    ag_node *n = ag_record(ctx, AG_OP_CONV2D, y, ins, b ? 3 : 2);
    if (n) *(conv_saved *)ag_save(ctx, n, sizeof(conv_saved)) = (conv_saved){site, g, sv};
    return y;
}

void ag_conv2d_backward(ag_ctx *ctx, ag_node *n) {
    const conv_saved *s = n->saved;
    const conv_geom *g = &s->g;
    ag_var *x = n->in[0], *w = n->in[1], *b = n->n_in > 2 ? n->in[2] : NULL;
    int64_t M = g->n * g->oh * g->ow, K = g->kh * g->kw * g->c;
    const float *dy = n->out->grad;
    float *dx = x->requires_grad ? ag_grad(ctx, x) : NULL;
    float *dw = w->requires_grad ? ag_grad(ctx, w) : NULL;
    mm_shape sh = {1, (int)M, (int)g->o, (int)K, true, 0, 0, 0};
    arena_mark mark = arena_get_mark(&ctx->scratch);
    /* the activation the dW product gathers: the forward's quantized copy or x */
    const float *xin = mm_conv_input_for_backward(ctx, s->site, s->mm, x->value.data, g->n * g->h * g->w, g->c);
    conv_job job = {ctx, g, dx};
    mm_backward_custom(ctx, s->site, &sh, s->mm, xin, w->value.data, dy, dx != NULL, dw,
                       &(mm_custom){NULL, conv_da, conv_db, &job});
    arena_release(&ctx->scratch, mark);
    if (b && b->requires_grad) ag_colsum_add(ctx, dy, M, g->o, ag_grad(ctx, b));
}

/* ---------------- multi-head self-attention core ----------------
 * qkv [B, T, 3, H, hd] -> q, k, v [B, H, T, hd] (contiguous copies);
 * S = Q K^T (batch B*H), P = softmax(S * scale), O = P V;
 * out [B, T, H, hd] = O transposed. Saves q, k, v, P. */

typedef struct attn_saved {
    const mm_site *site_qk, *site_pv;
    int64_t B, T, H, hd;
    float *q, *k, *v, *p;
    mm_saved *mm_qk, *mm_pv;
} attn_saved;

ag_var *ag_attention(ag_ctx *ctx, const mm_site *site_qk, const mm_site *site_pv, ag_var *qkv, int heads) {
    const tensor *xv = &qkv->value;
    MX_ASSERT(xv->ndim == 3 && xv->shape[2] % (3 * heads) == 0);
    int64_t B = xv->shape[0], T = xv->shape[1], D = xv->shape[2] / 3, H = heads, hd = D / heads;
    size_t per = (size_t)(B * H * T * hd);
    float *q = arena_alloc(&ctx->ar, sizeof(float) * per), *k = arena_alloc(&ctx->ar, sizeof(float) * per),
          *v = arena_alloc(&ctx->ar, sizeof(float) * per);
    float *p = arena_alloc(&ctx->ar, sizeof(float) * (size_t)(B * H * T * T));
    const float *src = xv->data;
#pragma omp parallel for collapse(2) schedule(static) if (per >= AG_PAR_MIN)
    for (int64_t bi = 0; bi < B; bi++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++) {
                const float *row = src + (bi * T + t) * 3 * D + h * hd;
                size_t dst = (size_t)(((bi * H + h) * T + t) * hd);
                memcpy(q + dst, row, sizeof(float) * (size_t)hd);
                memcpy(k + dst, row + D, sizeof(float) * (size_t)hd);
                memcpy(v + dst, row + 2 * D, sizeof(float) * (size_t)hd);
            }
    ag_var *ins[1] = {qkv};
    mm_saved *sv_qk = ag_mm_saved(ctx, ins, 1), *sv_pv = ag_mm_saved(ctx, ins, 1);
    mm_shape qk = {(int)(B * H), (int)T, (int)T, (int)hd, true, T * hd, T * hd, T * T};
    mm_forward(ctx, site_qk, &qk, q, k, p, sv_qk);
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for schedule(static) if (B * H * T * T >= AG_PAR_MIN)
    for (int64_t r = 0; r < B * H * T; r++) {
        float *row = p + r * T, mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < T; j++) {
            row[j] *= scale;
            mx = row[j] > mx ? row[j] : mx;
        }
        for (int64_t j = 0; j < T; j++) {
            row[j] = mx_expf(row[j] - mx);
            sum += row[j];
        }
        for (int64_t j = 0; j < T; j++) row[j] /= sum;
    }
    ag_round_elementwise(ctx, p, B * H * T * T);
    float *o = arena_alloc(&ctx->ar, sizeof(float) * per);
    mm_shape pv = {(int)(B * H), (int)T, (int)hd, (int)T, false, T * T, T * hd, T * hd};
    mm_forward(ctx, site_pv, &pv, p, v, o, sv_pv);
    int64_t shape[3] = {B, T, D};
    ag_var *y = ag_new(ctx, 3, shape);
#pragma omp parallel for collapse(2) schedule(static) if (per >= AG_PAR_MIN)
    for (int64_t bi = 0; bi < B; bi++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++)
                memcpy(y->value.data + (bi * T + t) * D + h * hd, o + ((bi * H + h) * T + t) * hd,
                       sizeof(float) * (size_t)hd);
    ag_node *n = ag_record(ctx, AG_OP_ATTENTION, y, ins, 1);
    if (n) *(attn_saved *)ag_save(ctx, n, sizeof(attn_saved)) = (attn_saved){site_qk, site_pv, B, T, H, hd, q, k, v, p,
                                                                          sv_qk, sv_pv};
    return y;
}

void ag_attention_backward(ag_ctx *ctx, ag_node *n) {
    const attn_saved *s = n->saved;
    int64_t B = s->B, T = s->T, H = s->H, hd = s->hd, D = H * hd;
    size_t per = (size_t)(B * H * T * hd);
    float *dqkv = ag_grad(ctx, n->in[0]); /* before the mark: it outlives this call */
    arena_mark mark = arena_get_mark(&ctx->ar);
    float *dout = n->out->grad;
    float *d_o = arena_alloc(&ctx->ar, sizeof(float) * per);
#pragma omp parallel for collapse(2) schedule(static) if (per >= AG_PAR_MIN)
    for (int64_t bi = 0; bi < B; bi++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++)
                memcpy(d_o + ((bi * H + h) * T + t) * hd, dout + (bi * T + t) * D + h * hd,
                       sizeof(float) * (size_t)hd);
    float *dp = arena_calloc(&ctx->ar, sizeof(float) * (size_t)(B * H * T * T));
    float *dq = arena_calloc(&ctx->ar, sizeof(float) * per), *dk = arena_calloc(&ctx->ar, sizeof(float) * per),
          *dv = arena_calloc(&ctx->ar, sizeof(float) * per);
    mm_shape pv = {(int)(B * H), (int)T, (int)hd, (int)T, false, T * T, T * hd, T * hd};
    mm_backward(ctx, s->site_pv, &pv, s->mm_pv, s->p, s->v, d_o, dp, dv);
    /* dS = P * (dP - rowsum(dP * P)) * scale, in place in dp */
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for schedule(static) if (B * H * T * T >= AG_PAR_MIN)
    for (int64_t r = 0; r < B * H * T; r++) {
        const float *pr = s->p + r * T;
        float *g = dp + r * T, dot = 0;
        for (int64_t j = 0; j < T; j++) dot += g[j] * pr[j];
        for (int64_t j = 0; j < T; j++) g[j] = pr[j] * (g[j] - dot) * scale;
    }
    mm_shape qk = {(int)(B * H), (int)T, (int)T, (int)hd, true, T * hd, T * hd, T * T};
    mm_backward(ctx, s->site_qk, &qk, s->mm_qk, s->q, s->k, dp, dq, dk);
#pragma omp parallel for collapse(2) schedule(static) if (per >= AG_PAR_MIN)
    for (int64_t bi = 0; bi < B; bi++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++) {
                float *row = dqkv + (bi * T + t) * 3 * D + h * hd;
                size_t off = (size_t)(((bi * H + h) * T + t) * hd);
                for (int64_t i = 0; i < hd; i++) {
                    row[i] += dq[off + i];
                    row[D + i] += dk[off + i];
                    row[2 * D + i] += dv[off + i];
                }
            }
    arena_release(&ctx->ar, mark);
}


void ag_round_elementwise(const ag_ctx *ctx, float *y, int64_t n) {
    if (!ctx->elementwise_bf16) return;
#pragma omp parallel for schedule(static) if (n >= AG_PAR_MIN)
    for (int64_t i = 0; i < n; i++) y[i] = ag_bf16_round(y[i]);
}
