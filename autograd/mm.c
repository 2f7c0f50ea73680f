#include "autograd/mm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/gemm.h"
#include "core/rng.h"
#include "autograd/mm_impl.h"

static const char *const mm_role_names[] = {"fwd_act", "fwd_weight", "bwd_grad_dx", "bwd_weight_dx", "bwd_grad_dw",
                                            "bwd_act_dw"};
_Static_assert(sizeof mm_role_names / sizeof mm_role_names[0] == MM_ROLE_COUNT, "role names");
static const char *const mm_tiling_names[] = {"1d", "1d_requant", "2d"};
_Static_assert(sizeof mm_tiling_names / sizeof mm_tiling_names[0] == MM_TILING_COUNT, "tiling names");

const char *mm_role_name(mm_role r) { return mm_role_names[r]; }
const char *mm_tiling_name(mm_tiling t) { return mm_tiling_names[t]; }

MX_ENUM_OF_NAMES(mm_tiling_enum, "tiling", mm_tiling_names);

int mm_tiling_parse(const char *s, mm_tiling *out, mx_err *err) {
    int v;
    if (mx_enum_parse(&mm_tiling_enum, s, &v, err)) return -1;
    *out = (mm_tiling)v;
    return 0;
}

void mm_site_declare(mm_sites *t, mm_site *site, const char *name, mm_b_role role) {
    memset(site, 0, sizeof *site);
    int k = snprintf(site->name, sizeof site->name, "%s", name);
    MX_ASSERTF(k > 0 && (size_t)k < sizeof site->name, "site name '%s' too long", name);
    site->b_role = role;
    site->id = t->n;
    MX_GROW(t->at, t->cap, t->n + 1, 64);
    t->at[t->n++] = site;
}

void mm_sites_free(mm_sites *t) {
    free(t->at);
    memset(t, 0, sizeof *t);
}

mm_shape mm_shape_dense(int64_t m, int64_t n, int64_t k, bool b_trans) {
    MX_ASSERTF(m <= INT32_MAX && n <= INT32_MAX && k <= INT32_MAX, "product %lldx%lldx%lld too large", (long long)m,
               (long long)n, (long long)k);
    return (mm_shape){.batch = 1, .m = (int)m, .n = (int)n, .k = (int)k, .b_trans = b_trans};
}

mm_shape mm_shape_batched(int64_t batch, int64_t m, int64_t n, int64_t k, bool b_trans) {
    MX_ASSERTF(batch <= INT32_MAX, "product batch %lld too large", (long long)batch);
    mm_shape sh = mm_shape_dense(m, n, k, b_trans);
    sh.batch = (int)batch;
    sh.stride_a = m * k;
    sh.stride_b = k * n;
    sh.stride_y = m * n;
    return sh;
}

mm_shape mm_shape_conv(int64_t n, int64_t h, int64_t w, int64_t c, int64_t o, int64_t kh, int64_t kw, int stride,
                       int pad) {
    mm_im2col g = {n, h, w, c, kh, kw, (h + 2 * pad - kh) / stride + 1, (w + 2 * pad - kw) / stride + 1, stride, pad};
    mm_shape sh;
    if (kh == 1 && kw == 1 && stride == 1 && pad == 0) { /* im2col is the identity */
        sh = mm_shape_dense(n * h * w, o, c, true);
    } else {
        sh = mm_shape_dense(n * g.oh * g.ow, o, kh * kw * c, true);
        sh.im2col = true;
    }
    sh.g = g;
    return sh;
}

/* ---------------- policy and plan ---------------- */

void mm_policy_init(mm_policy *p, quant_format format) {
    memset(p, 0, sizeof *p);
    for (int r = 0; r < MM_ROLE_COUNT; r++) p->role_format[r] = format;
    p->tiling = MM_TILING_1D;
    p->block = 0; /* the format's own: 32, or a BDR format's k1 */
    p->tile_rows = p->tile_cols = 0; /* the format's own: 8x8, or 4x4 for a 16-value BDR block */
    p->round = p->grad_round = QUANT_ROUND_EVEN;
    p->scale = QUANT_SCALE_FLOOR;
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

void mm_plan_init(mm_plan *q, const mm_policy *p, const mm_sites *sites) {
    memset(q, 0, sizeof *q);
    q->policy = *p;
    q->sites = sites;
    size_t n = sites->n ? (size_t)sites->n : 1;
    q->format = mx_calloc(n, sizeof *q->format);
    q->stats = mx_calloc(n, sizeof *q->stats);
    q->draws = mx_calloc(n, sizeof *q->draws);
    for (int i = 0; i < sites->n; i++)
        for (int r = 0; r < MM_ROLE_COUNT; r++) q->format[i][r] = mm_policy_format(p, sites->at[i]->name, (mm_role)r);
}

void mm_plan_free(mm_plan *q) {
    free(q->format);
    free(q->stats);
    free(q->draws);
    memset(q, 0, sizeof *q);
}

void mm_plan_reset_counters(mm_plan *q) { q->passes = q->bytes_quantized = q->bytes_held = 0; }

void mm_plan_reset_stats(mm_plan *q) {
    memset(q->stats, 0, sizeof *q->stats * (size_t)(q->sites->n ? q->sites->n : 1));
}

void mm_plan_new_step(mm_plan *q) { memset(q->draws, 0, sizeof *q->draws * (size_t)(q->sites->n ? q->sites->n : 1)); }

void mm_policy_layout(const mm_policy *p, quant_format f, quant_spec *s) {
    if (p->tiling == MM_TILING_2D) {
        s->block_rows = p->tile_rows;
        s->block_cols = p->tile_cols;
        if (!p->tile_rows) quant_format_tile(f, &s->block_rows, &s->block_cols);
    } else {
        s->block_rows = 1;
        s->block_cols = p->block ? p->block : quant_format_block(f);
    }
}

int mm_policy_check(const mm_policy *p, mx_err *err) {
    quant_format used[MM_ROLE_COUNT + MM_MAX_KEEP];
    int n = 0;
    for (int r = 0; r < MM_ROLE_COUNT; r++) used[n++] = p->role_format[r];
    for (int i = 0; i < p->n_keep; i++) used[n++] = p->keep[i].format;
    for (int i = 0; i < n; i++) {
        quant_spec s = quant_spec_default(used[i]);
        s.scale = p->scale;
        mm_policy_layout(p, used[i], &s);
        mx_err why;
        if (quant_spec_check(&s, &why)) {
            if (p->scale != QUANT_SCALE_FLOOR) return mx_err_set(err, "quant.scale: %s", why.msg);
            const char *key = p->tiling == MM_TILING_2D ? "quant.tile" : "quant.block";
            return mx_err_set(err, "%s: %s (%s = auto gives each format its own)", key, why.msg, key);
        }
    }
    return 0;
}

/* ---------------- quantizing operands ---------------- */

typedef enum { MM_AXIS_ROWS = -2, MM_AXIS_COLS = -1 } mm_axis;

/* Where a quantized operand goes: scratch (this product only), the step
 * arena (the backward reuses its values), or packed codes in the step arena
 * (values in scratch for this product). */
typedef enum { MM_STORE_SCRATCH, MM_STORE_KEEP, MM_STORE_PACKED } mm_store;

static bool mm_is_grad_role(mm_role r) { return r == MM_ROLE_BWD_GRAD_DX || r == MM_ROLE_BWD_GRAD_DW; }

/* The spec of one operand. Stochastic rounding draws stream (step, site,
 * role, n-th draw of that pair this step): the bits do not depend on the
 * order in which products run, nor on the thread count. */
static quant_spec mm_spec(ag_ctx *ctx, const mm_site *site, mm_role role, mm_axis axis) {
    mm_plan *q = ctx->run.mm;
    const mm_policy *p = &q->policy;
    MX_ASSERTF(site->id >= 0 && site->id < q->sites->n && q->sites->at[site->id] == site,
               "product site '%s' is not one of the plan's sites", site->name);
    quant_spec s = quant_spec_default(q->format[site->id][role]);
    s.round = mm_is_grad_role(role) ? p->grad_round : p->round;
    s.scale = p->scale;
    mm_policy_layout(p, s.format, &s);
    if (p->tiling != MM_TILING_2D) s.axis = axis;
    s.seed = p->seed;
    uint64_t pair = (uint64_t)site->id * MM_ROLE_COUNT + (uint64_t)role;
    s.stream = rng_mix(rng_mix(ctx->run.step, pair), q->draws[site->id][role]++);
    return s;
}

/* Counters and statistics of one quantization of n elements. */
static void mm_account(ag_ctx *ctx, const mm_site *site, mm_role role, const quant_stats *st, int64_t n, bool pass) {
    mm_plan *q = ctx->run.mm;
    if (st) quant_stats_add(&q->stats[site->id][role], st);
    q->passes += pass;
    q->bytes_quantized += 4 * n;
}

/* An operand used as it is (fp32, or no plan). */
static quant_tensor mm_full(const float *src, int batch, int64_t rows, int64_t cols) {
    return (quant_tensor){.spec = {.format = QUANT_FORMAT_FP32}, .ndim = 3, .shape = {batch, rows, cols}, .values = src};
}

/* On the CPU's BF16 units (ag_run.cpu_bf16): the quantized values held as
 * bf16 in ar, as the GPU holds them, so each GEMM reads them as they are
 * (no per-product conversion; 2d keeps them instead of packed codes, no
 * unpacking in the backward). False, nothing kept, where some value is not
 * bf16-exact (blocks scaled near 2^-127): the caller quantizes as float32. */
static bool mm_cpu_quantize_bf16(ag_ctx *ctx, quant_tensor *t, const float *src, arena *ar, quant_stats *stats) {
    int64_t n = quant_tensor_numel(t);
    if (!stats) { /* the quantizer's one-pass bf16 output where it has one */
        arena_mark m0 = arena_get_mark(ar);
        uint16_t *y16 = arena_alloc(ar, sizeof(uint16_t) * (size_t)n);
        if (quant_fake_bf16(&t->spec, src, y16, t->ndim, t->shape) == 1) {
            t->values16 = y16, t->values = NULL;
            return true;
        }
        arena_release(ar, m0);
    }
    arena_mark m = arena_get_mark(&ctx->scratch);
    float *y = arena_alloc(&ctx->scratch, sizeof(float) * (size_t)n);
    quant_fake(&t->spec, src, y, t->ndim, t->shape, NULL, stats);
    arena_mark ma = arena_get_mark(ar);
    uint16_t *y16 = arena_alloc(ar, sizeof(uint16_t) * (size_t)n);
    bool exact = gemm_bf16_convert(y, n, y16);
    if (exact) t->values16 = y16, t->values = NULL;
    if (ar == &ctx->scratch) {
        if (!exact) arena_release(ar, m);
        return exact; /* y stays below y16 in scratch until the caller's release */
    }
    if (!exact) arena_release(ar, ma);
    arena_release(&ctx->scratch, m);
    return exact;
}

/* Quantizes batch x [rows, cols] of role at site: one pass, counted, with
 * statistics when collected. fp32: the operand is src itself. On the GPU
 * the quantized values are held as bf16 (packed codes are a CPU saving). */
static quant_tensor mm_quantize(ag_ctx *ctx, const mm_site *site, mm_role role, const float *src, int batch,
                                int64_t rows, int64_t cols, mm_axis axis, mm_store store) {
    quant_tensor t = mm_full(src, batch, rows, cols);
    t.spec = mm_spec(ctx, site, role, axis);
    if (t.spec.format == QUANT_FORMAT_FP32) return t;
    int64_t n = (int64_t)batch * rows * cols;
    quant_stats st, *stp = ctx->run.mm->collect_stats ? &st : NULL;
    double t0 = ag_prof_start(ctx);
    if (ctx->gpu) {
        mm_gpu_quantize(ctx, &t, src, store == MM_STORE_SCRATCH ? &ctx->scratch : &ctx->ar, stp);
        mm_account(ctx, site, role, stp, n, true);
        ag_prof_stop(ctx, AG_PROF_QUANT, t0);
        return t;
    }
    if (ctx->run.cpu_bf16 && gemm_bf16_available() && mm_cpu_quantize_bf16(ctx, &t, src, store == MM_STORE_SCRATCH ? &ctx->scratch : &ctx->ar, stp)) {
        mm_account(ctx, site, role, stp, n, true);
        ag_prof_stop(ctx, AG_PROF_QUANT, t0);
        return t;
    }
    bool packed = store == MM_STORE_PACKED && quant_format_get(t.spec.format)->is_mx;
    float *y = arena_alloc(store == MM_STORE_SCRATCH || packed ? &ctx->scratch : &ctx->ar, sizeof(float) * (size_t)n);
    if (packed) {
        uint8_t *codes = arena_alloc(&ctx->ar, (size_t)quant_codes_bytes(&t.spec, 3, t.shape));
        uint8_t *scales = arena_alloc(&ctx->ar, (size_t)quant_num_blocks(&t.spec, 3, t.shape, NULL));
        quant_pack_fake(&t.spec, src, codes, y, 3, t.shape, scales, stp);
        t.codes = codes;
        t.scales = scales;
    } else {
        quant_fake(&t.spec, src, y, 3, t.shape, NULL, stp);
    }
    t.values = y;
    mm_account(ctx, site, role, stp, n, true);
    ag_prof_stop(ctx, AG_PROF_QUANT, t0);
    return t;
}

quant_tensor mm_rowq_apply(mm_rowq *q, const float *a, int batch, int64_t row0, int64_t rows, int64_t cols) {
    quant_tensor t = mm_full(a, batch, rows, cols);
    if (!q->active) return t;
    MX_ASSERT(batch == 1 || row0 == 0);
    t.spec = q->spec;
    t.spec.offset = (uint64_t)(row0 * cols);
    int64_t n = (int64_t)batch * rows * cols;
    quant_stats st, *stp = q->ctx->run.mm->collect_stats ? &st : NULL;
    double t0 = ag_prof_start(q->ctx);
    if (q->ctx->gpu) {
        mm_gpu_quantize(q->ctx, &t, a, &q->ctx->scratch, stp);
    } else if (!(q->bf16 && q->ctx->run.cpu_bf16 && gemm_bf16_available() && mm_cpu_quantize_bf16(q->ctx, &t, a, &q->ctx->scratch, stp))) {
        float *y = arena_alloc(&q->ctx->scratch, sizeof(float) * (size_t)n);
        quant_fake(&t.spec, a, y, 3, t.shape, NULL, stp);
        t.values = y;
    }
    mm_account(q->ctx, q->site, MM_ROLE_BWD_ACT_DW, stp, n, !q->counted);
    q->counted = true;
    ag_prof_stop(q->ctx, AG_PROF_QUANT_ROWS, t0);
    return t;
}

/* A saved operand with its values at hand (codes unpacked into scratch), or
 * the full-precision operand when nothing was saved. */
static quant_tensor mm_saved_values(ag_ctx *ctx, const quant_tensor *t, const float *full, int batch, int64_t rows,
                                    int64_t cols) {
    if (!t->values && !t->values16 && !t->codes) return mm_full(full, batch, rows, cols);
    quant_tensor v = *t;
    if (t->codes) {
        float *y = arena_alloc(&ctx->scratch, sizeof(float) * (size_t)quant_tensor_numel(t));
        quant_tensor_values(t, y);
        v.values = y;
        v.codes = v.scales = NULL;
    }
    return v;
}

/* ---------------- forward and backward ---------------- */

/* FLOPs of one product of this shape (2 per multiply-add), counted into the context. */
static void mm_count(ag_ctx *ctx, const mm_shape *sh) { ctx->flops += 2 * (int64_t)sh->batch * sh->m * sh->n * sh->k; }

static void mm_check_contiguous(const mm_shape *sh) {
    MX_ASSERTF(sh->batch == 1 || (sh->stride_a == (int64_t)sh->m * sh->k && sh->stride_b == (int64_t)sh->k * sh->n &&
                                  sh->stride_y == (int64_t)sh->m * sh->n),
               "quantized batched products need contiguous batches");
}

/* A as the op passes it: [m, k], or a conv's x [n*h*w, c] (quantized before
 * the gather, blocks along channels). */
static void mm_a_dims(const mm_shape *sh, int64_t *rows, int64_t *cols) {
    *rows = sh->im2col ? sh->g.n * sh->g.h * sh->g.w : sh->m;
    *cols = sh->im2col ? sh->g.c : sh->k;
}

void mm_forward(ag_ctx *ctx, const mm_site *site, const mm_shape *sh, const float *a, const float *b, float *y,
                mm_saved *sv) {
    mm_plan *q = ctx->run.mm;
    mm_count(ctx, sh);
    const int B = sh->batch;
    int64_t ar, ac, brows = sh->b_trans ? sh->n : sh->k, bcols = sh->b_trans ? sh->k : sh->n;
    mm_a_dims(sh, &ar, &ac);
    if (!q) {
        quant_tensor fa = mm_full(a, B, ar, ac), fb = mm_full(b, B, brows, bcols);
        mm_gemm_y(ctx, sh, &fa, &fb, y);
        return;
    }
    mm_check_contiguous(sh);
    mm_tiling tiling = q->policy.tiling;
    mm_store sa = !sv || tiling == MM_TILING_1D ? MM_STORE_SCRATCH
                  : tiling == MM_TILING_2D      ? MM_STORE_PACKED
                                                : MM_STORE_KEEP;
    mm_store sb = sv && tiling != MM_TILING_1D ? MM_STORE_KEEP : MM_STORE_SCRATCH;
    arena_mark mark = arena_get_mark(&ctx->scratch);
    quant_tensor aq = mm_quantize(ctx, site, MM_ROLE_FWD_ACT, a, B, ar, ac, MM_AXIS_COLS, sa);
    /* B's K axis: columns of B [N,K] (b_trans), rows of B [K,N] */
    quant_tensor bq = mm_quantize(ctx, site, MM_ROLE_FWD_WEIGHT, b, B, brows, bcols,
                                  sh->b_trans ? MM_AXIS_COLS : MM_AXIS_ROWS, sb);
    mm_gemm_y(ctx, sh, &aq, &bq, y);
    arena_release(&ctx->scratch, mark);
    if (!sv) return;
    int64_t a_el = B * ar * ac, b_el = (int64_t)B * sh->k * sh->n;
    if (aq.codes) aq.values = NULL; /* in scratch: the backward unpacks the codes */
    if (sa != MM_STORE_SCRATCH && aq.spec.format != QUANT_FORMAT_FP32) sv->a = aq;
    if (sb != MM_STORE_SCRATCH && bq.spec.format != QUANT_FORMAT_FP32) sv->b = bq;
    /* what the backward holds of A: codes and scales, a bf16 copy, or float32 */
    if (aq.codes) q->bytes_held += quant_codes_bytes(&aq.spec, 3, aq.shape) + quant_num_blocks(&aq.spec, 3, aq.shape, NULL);
    else q->bytes_held += (aq.values16 || (tiling == MM_TILING_2D && aq.spec.format == QUANT_FORMAT_BF16) ? 2 : 4) * a_el;
    q->bytes_held += (bq.values16 ? 2 : 4) * b_el;
}

void mm_backward(ag_ctx *ctx, const mm_site *site, const mm_shape *sh, const mm_saved *sv, const float *a,
                 const float *b, const float *dy, float *da, float *db) {
    mm_plan *q = ctx->run.mm;
    mm_rowq rq = {ctx, site, {0}, false, false, 1, false};
    const int B = sh->batch;
    int64_t ar, ac, brows = sh->b_trans ? sh->n : sh->k, bcols = sh->b_trans ? sh->k : sh->n;
    mm_a_dims(sh, &ar, &ac);
    if (!q) {
        quant_tensor fa = mm_full(a, B, ar, ac), fb = mm_full(b, B, brows, bcols), fdy = mm_full(dy, B, sh->m, sh->n);
        if (da) mm_count(ctx, sh), mm_gemm_da(ctx, sh, &fdy, &fb, da);
        if (db) mm_count(ctx, sh), mm_gemm_db(ctx, sh, &rq, &fa, &fdy, db);
        return;
    }
    mm_check_contiguous(sh);
    arena_mark mark = arena_get_mark(&ctx->scratch);
    if (q->policy.tiling == MM_TILING_2D) {
        /* one quantization of dY serves both products; A and B are the forward's copies */
        quant_tensor dyq = mm_quantize(ctx, site, MM_ROLE_BWD_GRAD_DX, dy, B, sh->m, sh->n, MM_AXIS_COLS,
                                       MM_STORE_SCRATCH);
        if (da) {
            quant_tensor bv = mm_saved_values(ctx, &sv->b, b, B, brows, bcols);
            mm_count(ctx, sh), mm_gemm_da(ctx, sh, &dyq, &bv, da);
        }
        if (db) {
            quant_tensor av = mm_saved_values(ctx, &sv->a, a, B, ar, ac);
            mm_count(ctx, sh), mm_gemm_db(ctx, sh, &rq, &av, &dyq, db);
        }
        arena_release(&ctx->scratch, mark);
        return;
    }
    bool requant = q->policy.tiling == MM_TILING_1D_REQUANT;
    /* 1d_requant quantizes the forward's quantized copies again (float32 values) */
    const float *src_a = requant ? mm_values_f32(ctx, mm_saved_values(ctx, &sv->a, a, B, ar, ac)) : a;
    const float *src_b = requant ? mm_values_f32(ctx, mm_saved_values(ctx, &sv->b, b, B, brows, bcols)) : b;
    if (da) { /* reduces over N */
        quant_tensor dyq = mm_quantize(ctx, site, MM_ROLE_BWD_GRAD_DX, dy, B, sh->m, sh->n, MM_AXIS_COLS,
                                       MM_STORE_SCRATCH);
        quant_tensor bq = mm_quantize(ctx, site, MM_ROLE_BWD_WEIGHT_DX, src_b, B, brows, bcols,
                                      sh->b_trans ? MM_AXIS_ROWS : MM_AXIS_COLS, MM_STORE_SCRATCH);
        mm_count(ctx, sh);
        mm_gemm_da(ctx, sh, &dyq, &bq, da);
    }
    if (db) { /* reduces over M: A's blocks run down M, quantized whole or by chunks of rows */
        quant_tensor dyq = mm_quantize(ctx, site, MM_ROLE_BWD_GRAD_DW, dy, B, sh->m, sh->n, MM_AXIS_ROWS,
                                       MM_STORE_SCRATCH);
        rq.spec = mm_spec(ctx, site, MM_ROLE_BWD_ACT_DW, MM_AXIS_ROWS);
        rq.active = rq.spec.format != QUANT_FORMAT_FP32;
        rq.align = rq.active ? rq.spec.block_cols : 1;
        quant_tensor fa = mm_full(src_a, B, ar, ac);
        mm_count(ctx, sh);
        mm_gemm_db(ctx, sh, &rq, &fa, &dyq, db);
    }
    arena_release(&ctx->scratch, mark);
}
