/* The product path. Every matrix product of the model (linear, conv, both
 * attention products; forward and backward) goes through mm_forward and
 * mm_backward, which quantize the operands, run the chunk loops and make every
 * BLAS call (autograd/mm_gemm.c is the only code that calls core/gemm.h).
 * A product is
 *
 *     Y[M,N] = A[M,K] . B'[K,N],   B' = B (B stored [K,N]) or B^T (B stored [N,K], b_trans)
 *
 * repeated over `batch` independent matrices. A is an activation; B is a
 * weight (linear, conv) or a second activation (attention). Backward:
 *
 *     dA = dY . B'^T   (reduces over N)      dB' = A^T . dY   (reduces over M)
 *
 * An op says what it multiplies: the shapes, and for a convolution that A is
 * im2col(x) of an NHWC x (mm_shape_conv). A convolution's A is then x itself,
 * quantized before the gather (blocks along channels), and dA is dX; the
 * column matrix is never formed whole.
 *
 * With a quantization plan (ctx->run.mm), every operand is quantized on its
 * way into the GEMM, per role, per product site, with one of three tilings:
 *   1d          blocks along each product's reduction axis, re-quantized for
 *               the backward from the full-precision operands (6 passes);
 *   1d_requant  as 1d, but the backward re-quantizes the forward's dequantized
 *               copies (double rounding; only quantized copies needed);
 *   2d          r x c tiles: A, B and dY quantized once each (3 passes); the
 *               forward copies serve the backward transposed; A is kept packed.
 * See docs/quantization.md and docs/autograd.md. */
#ifndef MX_AUTOGRAD_MM_H
#define MX_AUTOGRAD_MM_H

#include <stdbool.h>
#include <stdint.h>

#include "autograd/graph.h"
#include "quant/quant.h"

typedef enum mm_b_role { MM_B_WEIGHT, MM_B_ACT } mm_b_role;

/* A product site: one layer's product (or one of attention's two). Declared
 * once at model build into the model's site table, which gives it its id. */
typedef struct mm_site {
    char name[96];
    mm_b_role b_role;
    int id; /* index in its mm_sites */
} mm_site;

typedef struct mm_sites {
    mm_site **at;
    int n;
    int64_t cap;
} mm_sites;

/* Names the site and appends it to t (site must stay where it is). */
void mm_site_declare(mm_sites *t, mm_site *site, const char *name, mm_b_role role);
void mm_sites_free(mm_sites *t);

/* A's rows as kernel windows of an NHWC tensor x [n, h, w, c] (im2col):
 * row (image, oy, ox), columns (ky, kx, c). */
typedef struct mm_im2col {
    int64_t n, h, w, c, kh, kw, oh, ow;
    int stride, pad;
} mm_im2col;

typedef struct mm_shape {
    int batch;          /* independent products (attention: batch x heads) */
    int m, n, k;
    bool b_trans;       /* B stored [N,K] */
    int64_t stride_a, stride_b, stride_y; /* elements between consecutive batch items */
    bool im2col;        /* A = im2col(x) with geometry g (batch 1) */
    mm_im2col g;
} mm_shape;

/* A dense product of one matrix (linear): A [m, k], B [n, k]. */
mm_shape mm_shape_dense(int64_t m, int64_t n, int64_t k, bool b_trans);
/* batch contiguous products: A [batch, m, k], B [batch, k, n] or [batch, n, k]. */
mm_shape mm_shape_batched(int64_t batch, int64_t m, int64_t n, int64_t k, bool b_trans);
/* Convolution of x [n, h, w, c] with W [o, kh, kw, c] (OHWI, so B [o, kh*kw*c]
 * with b_trans): Y [n*oh*ow, o]. A 1x1, stride-1, unpadded conv is a dense
 * product over x's pixels. */
mm_shape mm_shape_conv(int64_t n, int64_t h, int64_t w, int64_t c, int64_t o, int64_t kh, int64_t kw, int stride,
                       int pad);

/* Operand roles, as stats.csv names them. */
typedef enum mm_role {
    MM_ROLE_FWD_ACT,       /* A in Y = A B' */
    MM_ROLE_FWD_WEIGHT,    /* B in Y = A B' */
    MM_ROLE_BWD_GRAD_DX,   /* dY in dA = dY B'^T */
    MM_ROLE_BWD_WEIGHT_DX, /* B in dA = dY B'^T */
    MM_ROLE_BWD_GRAD_DW,   /* dY in dB' = A^T dY */
    MM_ROLE_BWD_ACT_DW,    /* A in dB' = A^T dY */
    MM_ROLE_COUNT
} mm_role;

typedef enum mm_tiling { MM_TILING_1D, MM_TILING_1D_REQUANT, MM_TILING_2D, MM_TILING_COUNT } mm_tiling;

#define MM_MAX_KEEP 16

typedef struct mm_keep_rule {
    char pattern[96];   /* layer name with '*' wildcards, e.g. "conv1", "blocks.*.attn.qkv" */
    quant_format format;
} mm_keep_rule;

/* The quantization configuration (quant.* keys), before it meets a model. */
typedef struct mm_policy {
    quant_format role_format[MM_ROLE_COUNT];
    mm_tiling tiling;
    int block;                 /* 1D block length; 0: each format's own */
    int tile_rows, tile_cols;  /* 2D tile; 0: each format's own */
    quant_round round, grad_round;
    quant_scale scale;
    mm_keep_rule keep[MM_MAX_KEEP];
    int n_keep;
    uint64_t seed;             /* stochastic rounding */
} mm_policy;

/* The [quant] keys of a config file, as read: per-role formats may be unset
 * (-1: `format`), so may grad_round (-1: `round`). mm_config_policy derives
 * the policy. */
typedef enum mm_elementwise { MM_ELEMENTWISE_FP32, MM_ELEMENTWISE_BF16, MM_ELEMENTWISE_COUNT } mm_elementwise;

typedef struct mm_config {
    quant_format format;
    int fwd_act, fwd_weight, bwd_grad, bwd_act, bwd_weight; /* quant_format, or -1 */
    mm_tiling tiling;
    int block, tile_rows, tile_cols;
    quant_round round;
    int grad_round;                                         /* quant_round, or -1 */
    quant_scale scale;
    mm_elementwise elementwise;
    mm_keep_rule keep[MM_MAX_KEEP];
    int n_keep;
} mm_config;

extern const key_table mm_key_table;
/* The policy c describes (seed: stochastic rounding's); returns whether any
 * operand is quantized at all. */
bool mm_config_policy(const mm_config *c, uint64_t seed, mm_policy *p);
/* Whether every format p uses can take p's block or tile and scale mode (a
 * shared-microexponent format has its own block size and no scale mode). */
int mm_policy_check(const mm_policy *p, mx_err *err);
/* The block or tile of format f under p into s: p's, or where p says 0 the
 * format's own (quant_format_block, quant_format_tile). */
void mm_policy_layout(const mm_policy *p, quant_format f, quant_spec *s);

/* A policy resolved for one model's sites: each site's format per role, the
 * statistics per (site, role), and the step's counters. Nothing on the step's
 * path looks at a name. */
typedef struct mm_plan {
    mm_policy policy;
    const mm_sites *sites;
    quant_format (*format)[MM_ROLE_COUNT];  /* [site id][role] */
    quant_stats (*stats)[MM_ROLE_COUNT];    /* [site id][role], since mm_plan_reset_stats */
    uint32_t (*draws)[MM_ROLE_COUNT];       /* stochastic-rounding streams drawn this step */
    bool collect_stats;
    int64_t passes, bytes_quantized, bytes_held; /* since mm_plan_reset_counters */
} mm_plan;

/* What a product's forward leaves for its backward (kept by the op): the
 * forward's quantized A and B where the tiling reuses them (values or codes
 * set), else nothing (the backward quantizes the full-precision operands). */
typedef struct mm_saved {
    quant_tensor a, b;
} mm_saved;

const char *mm_role_name(mm_role r);
const char *mm_tiling_name(mm_tiling t);
extern const mx_enum mm_tiling_enum;
int mm_tiling_parse(const char *s, mm_tiling *out, mx_err *err);

/* Every role in `format`, 1d blocks of 32, 8x8 tiles, even rounding, floor scale. */
void mm_policy_init(mm_policy *p, quant_format format);
/* Per-layer override: sites matching `pattern` use `format` for every role. */
int mm_policy_add_keep(mm_policy *p, const char *pattern, quant_format format, mx_err *err);
/* The format of a role at a site named `site` (keep rules first); used when a
 * plan is made. */
quant_format mm_policy_format(const mm_policy *p, const char *site, mm_role role);
bool mm_name_match(const char *pattern, const char *name);

/* Resolves p for the sites (a model's params.sites). */
void mm_plan_init(mm_plan *q, const mm_policy *p, const mm_sites *sites);
void mm_plan_free(mm_plan *q);
void mm_plan_reset_counters(mm_plan *q);
void mm_plan_reset_stats(mm_plan *q);
/* Stochastic-rounding streams restart each step (ag_ctx_reset calls this). */
void mm_plan_new_step(mm_plan *q);

/* Y = A . B' (overwrites Y). a: A as stored (a conv's x). sv (may be NULL
 * without gradients) receives what the backward needs. */
void mm_forward(ag_ctx *ctx, const mm_site *site, const mm_shape *sh, const float *a, const float *b, float *y,
                mm_saved *sv);
/* dA += dY . B'^T and dB += (A^T . dY in B's layout); da or db may be NULL.
 * a and b are the full-precision operands the forward got (a conv's x; da is
 * then dX). */
void mm_backward(ag_ctx *ctx, const mm_site *site, const mm_shape *sh, const mm_saved *sv, const float *a,
                 const float *b, const float *dy, float *da, float *db);

#endif
