#include "autograd/mm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/gemm.h"
#include "core/rng.h"

static const char *const mm_role_names[] = {"fwd_act", "fwd_weight", "bwd_grad_dx", "bwd_weight_dx", "bwd_grad_dw",
                                            "bwd_act_dw"};
_Static_assert(sizeof mm_role_names / sizeof mm_role_names[0] == MM_ROLE_COUNT, "role names");
static const char *const mm_tiling_names[] = {"1d", "1d_requant", "2d"};
_Static_assert(sizeof mm_tiling_names / sizeof mm_tiling_names[0] == MM_TILING_COUNT, "tiling names");

const char *mm_role_name(mm_role r) { return mm_role_names[r]; }
const char *mm_tiling_name(mm_tiling t) { return mm_tiling_names[t]; }

int mm_tiling_parse(const char *s, mm_tiling *out, mx_err *err) {
    for (int i = 0; i < MM_TILING_COUNT; i++)
        if (strcmp(s, mm_tiling_names[i]) == 0) {
            *out = (mm_tiling)i;
            return 0;
        }
    return mx_err_set(err, "unknown tiling '%s' (valid: 1d, 1d_requant, 2d)", s);
}

void mm_site_init(mm_site *site, const char *name, mm_b_role role) {
    memset(site, 0, sizeof *site);
    snprintf(site->name, sizeof site->name, "%s", name);
    site->b_role = role;
}

/* ---------------- policy ---------------- */

void mm_policy_init(mm_policy *p, quant_format format) {
    memset(p, 0, sizeof *p);
    for (int r = 0; r < MM_ROLE_COUNT; r++) p->role_format[r] = format;
    p->tiling = MM_TILING_1D;
    p->block = 32;
    p->tile_rows = p->tile_cols = 8;
    p->round = p->grad_round = QUANT_ROUND_EVEN;
    p->scale = QUANT_SCALE_FLOOR;
}

void mm_policy_free(mm_policy *p) {
    free(p->stats);
    p->stats = NULL;
    p->n_stats = p->cap_stats = 0;
}

bool mm_name_match(const char *pat, const char *name) {
    if (*pat == 0) return *name == 0;
    if (*pat == '*') return mm_name_match(pat + 1, name) || (*name && mm_name_match(pat, name + 1));
    return *name == *pat && mm_name_match(pat + 1, name + 1);
}

int mm_policy_add_keep(mm_policy *p, const char *pattern, quant_format format, mx_err *err) {
    if (p->n_keep == MM_MAX_KEEP) return mx_err_set(err, "too many per-layer overrides (at most %d)", MM_MAX_KEEP);
    if (!*pattern || strlen(pattern) >= sizeof p->keep[0].pattern)
        return mx_err_set(err, "layer pattern '%s' is empty or too long", pattern);
    strcpy(p->keep[p->n_keep].pattern, pattern);
    p->keep[p->n_keep].format = format;
    p->n_keep++;
    return 0;
}

quant_format mm_policy_format(const mm_policy *p, const char *site, mm_role role) {
    /* A rule names a layer ("conv1", "fc"); it also covers that layer's
     * sub-products ("blocks.0.attn" covers "blocks.0.attn.qk"). */
    for (int i = 0; i < p->n_keep; i++) {
        const char *pat = p->keep[i].pattern;
        if (mm_name_match(pat, site)) return p->keep[i].format;
        size_t n = strlen(pat);
        if (strncmp(pat, site, n) == 0 && site[n] == '.' && !strchr(pat, '*')) return p->keep[i].format;
    }
    return p->role_format[role];
}

void mm_policy_reset_counters(mm_policy *p) { p->passes = p->bytes_quantized = p->bytes_held = 0; }

void mm_policy_reset_stats(mm_policy *p) {
    for (int i = 0; i < p->n_stats; i++) quant_stats_clear(&p->stats[i].st);
}

static void mm_stats_add(mm_policy *p, const char *site, mm_role role, quant_format f, const quant_stats *st) {
    for (int i = 0; i < p->n_stats; i++)
        if (p->stats[i].role == role && strcmp(p->stats[i].site, site) == 0) {
            p->stats[i].format = f;
            quant_stats_add(&p->stats[i].st, st);
            return;
        }
    if (p->n_stats == p->cap_stats) {
        p->cap_stats = p->cap_stats ? 2 * p->cap_stats : 64;
        p->stats = realloc(p->stats, sizeof(mm_stat) * (size_t)p->cap_stats);
        MX_ASSERT(p->stats);
    }
    mm_stat *s = &p->stats[p->n_stats++];
    snprintf(s->site, sizeof s->site, "%s", site);
    s->role = role;
    s->format = f;
    s->st = *st;
}

/* ---------------- quantizing operands ---------------- */

typedef enum { MM_AXIS_ROWS = -2, MM_AXIS_COLS = -1 } mm_axis;

static bool mm_is_grad_role(mm_role r) { return r == MM_ROLE_BWD_GRAD_DX || r == MM_ROLE_BWD_GRAD_DW; }

static quant_spec mm_spec(ag_ctx *ctx, mm_policy *p, quant_format f, mm_role role, mm_axis axis) {
    quant_spec s = quant_spec_default(f);
    s.round = mm_is_grad_role(role) ? p->grad_round : p->round;
    s.scale = p->scale;
    if (p->tiling == MM_TILING_2D) {
        s.block_rows = p->tile_rows;
        s.block_cols = p->tile_cols;
    } else {
        s.block_cols = p->block;
        s.axis = axis;
    }
    s.seed = p->seed;
    s.stream = rng_mix(ctx->step, p->calls++);
    return s;
}

/* Fake-quantizes batch x [rows, cols] into the step arena (keep: the backward
 * needs it) or the scratch arena; returns src itself for fp32. One pass,
 * counted; statistics when collected. */
static const float *mm_quant_n(ag_ctx *ctx, const mm_site *site, mm_role role, const float *src, int batch,
                               int64_t rows, int64_t cols, mm_axis axis, bool keep, bool count_pass) {
    mm_policy *p = ctx->mm;
    quant_format f = mm_policy_format(p, site->name, role);
    if (f == QUANT_FORMAT_FP32) return src;
    quant_spec s = mm_spec(ctx, p, f, role, axis);
    int64_t shape[3] = {batch, rows, cols}, n = (int64_t)batch * rows * cols;
    float *dst = arena_alloc(keep ? &ctx->ar : &ctx->scratch, sizeof(float) * (size_t)n);
    quant_stats st;
    quant_fake(&s, src, dst, 3, shape, NULL, p->collect_stats ? &st : NULL);
    if (p->collect_stats) mm_stats_add(p, site->name, role, f, &st);
    p->passes += count_pass;
    p->bytes_quantized += 4 * n;
    return dst;
}

static const float *mm_quant(ag_ctx *ctx, const mm_site *site, mm_role role, const float *src, int batch,
                             int64_t rows, int64_t cols, mm_axis axis, bool keep) {
    return mm_quant_n(ctx, site, role, src, batch, rows, cols, axis, keep, true);
}

const float *mm_chunk_quant_rows(mm_chunk_quant *q, const float *a, int64_t rows, int64_t cols) {
    if (!q->active) return a;
    const float *r = mm_quant_n(q->ctx, q->site, MM_ROLE_BWD_ACT_DW, a, 1, rows, cols, MM_AXIS_ROWS, false, !q->counted);
    q->counted = true;
    return r;
}

/* 2d forward activation: packed once (kept for the backward) and unpacked
 * for the GEMM. Falls back to a float copy for bf16/fp32. */
static const float *mm_pack_act(ag_ctx *ctx, const mm_site *site, const float *src, int batch, int64_t rows,
                                int64_t cols, mm_saved *sv) {
    mm_policy *p = ctx->mm;
    quant_format f = mm_policy_format(p, site->name, MM_ROLE_FWD_ACT);
    int64_t n = (int64_t)batch * rows * cols;
    if (!quant_format_get(f)->is_mx || !sv) {
        const float *q = mm_quant(ctx, site, MM_ROLE_FWD_ACT, src, batch, rows, cols, MM_AXIS_COLS, sv != NULL);
        if (sv) {
            /* an unquantized (fp32) operand may be a transient buffer (conv's
             * im2col columns): the backward then uses what the op passes */
            if (q != src) sv->aq = q;
            p->bytes_held += (f == QUANT_FORMAT_BF16 ? 2 : 4) * n;
        }
        return q;
    }
    quant_spec s = mm_spec(ctx, p, f, MM_ROLE_FWD_ACT, MM_AXIS_COLS);
    int64_t shape[3] = {batch, rows, cols};
    int64_t nb = quant_num_blocks(&s, 3, shape, NULL);
    uint8_t *codes = arena_alloc(&ctx->ar, (size_t)n), *scales = arena_alloc(&ctx->ar, (size_t)nb);
    quant_stats st;
    float *q = arena_alloc(&ctx->scratch, sizeof(float) * (size_t)n);
    quant_pack_fake(&s, src, codes, q, 3, shape, scales, p->collect_stats ? &st : NULL);
    if (p->collect_stats) mm_stats_add(p, site->name, MM_ROLE_FWD_ACT, f, &st);
    p->passes++;
    p->bytes_quantized += 4 * n;
    p->bytes_held += n + nb;
    sv->a_codes = codes;
    sv->a_scales = scales;
    sv->a_numel = n;
    return q;
}

static const float *mm_unpack_act(ag_ctx *ctx, const mm_site *site, const mm_saved *sv, int batch, int64_t rows,
                                  int64_t cols) {
    if (!sv->a_codes) return sv->aq;
    mm_policy *p = ctx->mm;
    quant_spec s = quant_spec_default(mm_policy_format(p, site->name, MM_ROLE_FWD_ACT));
    s.scale = p->scale;
    s.block_rows = p->tile_rows;
    s.block_cols = p->tile_cols;
    int64_t shape[3] = {batch, rows, cols};
    float *q = arena_alloc(&ctx->scratch, sizeof(float) * (size_t)sv->a_numel);
    quant_unpack(&s, sv->a_codes, sv->a_scales, q, 3, shape);
    return q;
}

/* ---------------- the three GEMMs ---------------- */

/* FLOPs of one product of this shape (2 per multiply-add), counted into the context. */
static void mm_count(ag_ctx *ctx, const mm_shape *sh) { ctx->flops += 2 * (int64_t)sh->batch * sh->m * sh->n * sh->k; }

static void mm_gemm_y(const mm_shape *sh, const float *a, const float *b, float *y) {
    for (int i = 0; i < sh->batch; i++)
        gemm_f32(false, sh->b_trans, sh->m, sh->n, sh->k, 1.0f, a + i * sh->stride_a, sh->k, b + i * sh->stride_b,
                 sh->b_trans ? sh->k : sh->n, 0.0f, y + i * sh->stride_y, sh->n);
}

static void mm_gemm_da(const mm_shape *sh, const float *dy, const float *b, float *da) {
    for (int i = 0; i < sh->batch; i++) /* dA[M,K] += dY[M,N] . B'^T */
        gemm_f32(false, !sh->b_trans, sh->m, sh->k, sh->n, 1.0f, dy + i * sh->stride_y, sh->n, b + i * sh->stride_b,
                 sh->b_trans ? sh->k : sh->n, 1.0f, da + i * sh->stride_a, sh->k);
}

static void mm_gemm_db(const mm_shape *sh, const float *a, const float *dy, float *db) {
    for (int i = 0; i < sh->batch; i++) {
        const float *ai = a + i * sh->stride_a, *dyi = dy + i * sh->stride_y;
        if (sh->b_trans) /* dB[N,K] += dY^T[N,M] . A[M,K] */
            gemm_f32(true, false, sh->n, sh->k, sh->m, 1.0f, dyi, sh->n, ai, sh->k, 1.0f, db + i * sh->stride_b, sh->k);
        else /* dB[K,N] += A^T[K,M] . dY[M,N] */
            gemm_f32(true, false, sh->k, sh->n, sh->m, 1.0f, ai, sh->k, dyi, sh->n, 1.0f, db + i * sh->stride_b, sh->n);
    }
}

static void mm_check_contiguous(const mm_shape *sh) {
    MX_ASSERTF(sh->batch == 1 || (sh->stride_a == (int64_t)sh->m * sh->k && sh->stride_b == (int64_t)sh->k * sh->n &&
                                  sh->stride_y == (int64_t)sh->m * sh->n),
               "quantized batched products need contiguous batches");
}

/* ---------------- forward and backward ---------------- */

void mm_forward(ag_ctx *ctx, const mm_site *site, const mm_shape *sh, const float *a, const float *b, float *y,
                mm_saved *sv) {
    mm_forward_custom(ctx, site, sh, a, b, y, sv, NULL);
}

void mm_forward_custom(ag_ctx *ctx, const mm_site *site, const mm_shape *sh, const float *a, const float *b, float *y,
                       mm_saved *sv, const mm_custom *cu) {
    mm_policy *p = ctx->mm;
    if (!p) {
        mm_count(ctx, sh);
        if (cu) cu->y(cu->user, a, b, y);
        else mm_gemm_y(sh, a, b, y);
        return;
    }
    mm_check_contiguous(sh);
    arena_mark mark = arena_get_mark(&ctx->scratch);
    int64_t a_el = (int64_t)sh->batch * sh->m * sh->k, b_el = (int64_t)sh->batch * sh->k * sh->n;
    const float *aq = a;
    bool pre = cu || (sv && sv->a_prequantized); /* a custom product's A comes quantized */
    bool keep = sv && p->tiling != MM_TILING_1D; /* forward copies the backward reuses */
    if (!pre) {
        if (p->tiling == MM_TILING_2D) aq = mm_pack_act(ctx, site, a, sh->batch, sh->m, sh->k, sv);
        else aq = mm_quant(ctx, site, MM_ROLE_FWD_ACT, a, sh->batch, sh->m, sh->k, MM_AXIS_COLS, keep);
    }
    /* B's K axis: columns of B [N,K] (b_trans), rows of B [K,N] */
    const float *bq = mm_quant(ctx, site, MM_ROLE_FWD_WEIGHT, b, sh->batch, sh->b_trans ? sh->n : sh->k,
                               sh->b_trans ? sh->k : sh->n, sh->b_trans ? MM_AXIS_COLS : MM_AXIS_ROWS, keep);
    mm_count(ctx, sh);
    if (cu) cu->y(cu->user, aq, bq, y);
    else mm_gemm_y(sh, aq, bq, y);
    arena_release(&ctx->scratch, mark);
    if (!sv) return;
    switch (p->tiling) {
    case MM_TILING_1D: /* the full-precision operands are what the backward needs */
        p->bytes_held += 4 * (pre ? 0 : a_el) + 4 * b_el;
        break;
    case MM_TILING_1D_REQUANT:
        if (!pre && aq != a) sv->aq = aq; /* else a may be transient: the op passes it again */
        sv->bq = bq;
        p->bytes_held += 4 * (pre ? 0 : a_el) + 4 * b_el;
        break;
    case MM_TILING_2D:
        sv->bq = bq;
        p->bytes_held += 4 * b_el;
        break;
    default: break;
    }
}

/* mm_backward's own dA product: a plain GEMM into the caller's dA. */
typedef struct mm_plain_da {
    const mm_shape *sh;
    float *da;
} mm_plain_da;

static void mm_plain_da_fn(void *user, const float *dyq, const float *bq) {
    const mm_plain_da *d = user;
    mm_gemm_da(d->sh, dyq, bq, d->da);
}

void mm_backward(ag_ctx *ctx, const mm_site *site, const mm_shape *sh, const mm_saved *sv, const float *a,
                 const float *b, const float *dy, float *da, float *db) {
    mm_plain_da d = {sh, da};
    mm_backward_custom(ctx, site, sh, sv, a, b, dy, da != NULL, db, &(mm_custom){NULL, mm_plain_da_fn, NULL, &d});
}

/* The dB product: the op's hook, or one GEMM over A quantized whole (1d). */
static void mm_do_db(const mm_custom *cu, mm_chunk_quant *q, const mm_shape *sh, const float *a, const float *dyq,
                     float *db) {
    if (cu->db) cu->db(cu->user, q, a, dyq, db);
    else mm_gemm_db(sh, q->active ? mm_quant(q->ctx, q->site, MM_ROLE_BWD_ACT_DW, a, sh->batch, sh->m, sh->k,
                                             MM_AXIS_ROWS, false) : a, dyq, db);
}

void mm_backward_custom(ag_ctx *ctx, const mm_site *site, const mm_shape *sh, const mm_saved *sv, const float *a,
                        const float *b, const float *dy, bool da, float *db, const mm_custom *cu) {
    mm_policy *p = ctx->mm;
    mm_chunk_quant q = {ctx, site, false, p ? p->block : 1, false};
    if (!p) {
        if (da) mm_count(ctx, sh), cu->da(cu->user, dy, b);
        if (db) mm_count(ctx, sh), mm_do_db(cu, &q, sh, a, dy, db);
        return;
    }
    mm_check_contiguous(sh);
    const int B = sh->batch;
    arena_mark mark = arena_get_mark(&ctx->scratch);
    if (p->tiling == MM_TILING_2D) {
        /* one quantization of dY serves both products; A and B are the forward's copies */
        const float *dyq = mm_quant(ctx, site, MM_ROLE_BWD_GRAD_DX, dy, B, sh->m, sh->n, MM_AXIS_COLS, false);
        const float *aq = sv->a_prequantized ? a : mm_unpack_act(ctx, site, sv, B, sh->m, sh->k);
        if (da) mm_count(ctx, sh), cu->da(cu->user, dyq, sv->bq ? sv->bq : b);
        if (db) mm_count(ctx, sh), mm_do_db(cu, &q, sh, aq ? aq : a, dyq, db);
        arena_release(&ctx->scratch, mark);
        return;
    }
    bool requant = p->tiling == MM_TILING_1D_REQUANT;
    const float *src_a = (requant && !sv->a_prequantized && sv->aq) ? sv->aq : a;
    const float *src_b = (requant && sv->bq) ? sv->bq : b;
    if (da) { /* reduces over N */
        const float *dyq = mm_quant(ctx, site, MM_ROLE_BWD_GRAD_DX, dy, B, sh->m, sh->n, MM_AXIS_COLS, false);
        const float *bq = mm_quant(ctx, site, MM_ROLE_BWD_WEIGHT_DX, src_b, B, sh->b_trans ? sh->n : sh->k,
                                   sh->b_trans ? sh->k : sh->n, sh->b_trans ? MM_AXIS_ROWS : MM_AXIS_COLS, false);
        mm_count(ctx, sh);
        cu->da(cu->user, dyq, bq);
    }
    if (db) { /* reduces over M: A's blocks run along M, quantized whole or by chunks */
        const float *dyq = mm_quant(ctx, site, MM_ROLE_BWD_GRAD_DW, dy, B, sh->m, sh->n, MM_AXIS_ROWS, false);
        q.active = true;
        mm_count(ctx, sh);
        mm_do_db(cu, &q, sh, src_a, dyq, db);
    }
    arena_release(&ctx->scratch, mark);
}

/* ---------------- convolution input ---------------- */

const float *mm_quantize_conv_input(ag_ctx *ctx, const mm_site *site, const float *x, int64_t rows, int64_t c,
                                    mm_saved *sv) {
    mm_policy *p = ctx->mm;
    if (!p || mm_policy_format(p, site->name, MM_ROLE_FWD_ACT) == QUANT_FORMAT_FP32) return x;
    const float *xq;
    if (p->tiling == MM_TILING_2D) {
        xq = mm_pack_act(ctx, site, x, 1, rows, c, sv); /* tiles: 8 pixels x 8 channels */
    } else {
        /* blocks along channels; kept when the backward re-quantizes it */
        xq = mm_quant(ctx, site, MM_ROLE_FWD_ACT, x, 1, rows, c, MM_AXIS_COLS,
                      sv && p->tiling == MM_TILING_1D_REQUANT);
        if (sv && p->tiling == MM_TILING_1D_REQUANT) sv->aq = xq;
        if (sv) p->bytes_held += 4 * rows * c;
    }
    if (sv) sv->a_prequantized = true;
    return xq;
}

const float *mm_conv_input_for_backward(ag_ctx *ctx, const mm_site *site, const mm_saved *sv, const float *x,
                                        int64_t rows, int64_t c) {
    mm_policy *p = ctx->mm;
    if (!p || !sv->a_prequantized || p->tiling == MM_TILING_1D) return x;
    if (p->tiling == MM_TILING_2D) return mm_unpack_act(ctx, site, sv, 1, rows, c);
    return sv->aq;
}
