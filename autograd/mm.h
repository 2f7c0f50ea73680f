/* The one GEMM path. Every matrix product of the model (linear, conv, both
 * attention products; forward and backward) goes through mm_forward and
 * mm_backward; nothing else calls BLAS. A product is
 *
 *     Y[M,N] = A[M,K] . B'[K,N],   B' = B (B stored [K,N]) or B^T (B stored [N,K], b_trans)
 *
 * repeated over `batch` independent matrices. A is an activation; B is a
 * weight (linear, conv) or a second activation (attention). Backward:
 *
 *     dA = dY . B'^T   (reduces over N)      dB' = A^T . dY   (reduces over M)
 *
 * With a quantization policy (ctx->mm), every operand is quantized on its way
 * into the GEMM, per role, per layer (site), with one of three tilings:
 *   1d          blocks along each product's reduction axis, re-quantized for
 *               the backward from the full-precision operands (6 passes);
 *   1d_requant  as 1d, but the backward re-quantizes the forward's dequantized
 *               copies (double rounding; only quantized copies needed);
 *   2d          r x c tiles: A, B and dY quantized once each (3 passes); the
 *               forward copies serve the backward transposed; A is kept packed.
 * See docs/quantization.md. */
#ifndef MX_AUTOGRAD_MM_H
#define MX_AUTOGRAD_MM_H

#include <stdbool.h>
#include <stdint.h>

#include "autograd/graph.h"
#include "quant/quant.h"

typedef enum mm_b_role { MM_B_WEIGHT, MM_B_ACT } mm_b_role;

typedef struct mm_site {
    char name[96];
    mm_b_role b_role;
} mm_site;

typedef struct mm_shape {
    int batch;          /* independent products (attention: batch x heads) */
    int m, n, k;
    bool b_trans;       /* B stored [N,K] */
    int64_t stride_a, stride_b, stride_y; /* elements between consecutive batch items */
} mm_shape;

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

/* Statistics of one (site, role) since the last reset. */
typedef struct mm_stat {
    char site[96];
    mm_role role;
    quant_format format;
    quant_stats st;
} mm_stat;

typedef struct mm_policy {
    quant_format role_format[MM_ROLE_COUNT];
    mm_tiling tiling;
    int block;                 /* 1D block length */
    int tile_rows, tile_cols;  /* 2D tile */
    quant_round round, grad_round;
    quant_scale scale;
    mm_keep_rule keep[MM_MAX_KEEP];
    int n_keep;
    uint64_t seed;             /* stochastic rounding */
    /* counters since mm_policy_reset_counters */
    int64_t passes, bytes_quantized, bytes_held;
    /* statistics, gathered while collect_stats is set */
    bool collect_stats;
    mm_stat *stats;
    int n_stats, cap_stats;
    uint64_t calls;            /* stream counter for stochastic rounding */
} mm_policy;

/* What a product's forward leaves for its backward (kept by the op). */
typedef struct mm_saved {
    const float *aq, *bq;       /* 1d_requant / 2d: dequantized forward copies */
    const uint8_t *a_codes, *a_scales; /* 2d: A kept packed */
    int64_t a_numel;
    bool a_prequantized;        /* conv: A was quantized before im2col */
} mm_saved;

const char *mm_role_name(mm_role r);
const char *mm_tiling_name(mm_tiling t);
int mm_tiling_parse(const char *s, mm_tiling *out, mx_err *err);

/* Every role in `format`, 1d blocks of 32, 8x8 tiles, even rounding, floor scale. */
void mm_policy_init(mm_policy *p, quant_format format);
void mm_policy_free(mm_policy *p);
/* Per-layer override: sites matching `pattern` use `format` for every role. */
int mm_policy_add_keep(mm_policy *p, const char *pattern, quant_format format, mx_err *err);
/* The format of a role at a site (keep rules first). */
quant_format mm_policy_format(const mm_policy *p, const char *site, mm_role role);
void mm_policy_reset_counters(mm_policy *p);
void mm_policy_reset_stats(mm_policy *p);
bool mm_name_match(const char *pattern, const char *name);

void mm_site_init(mm_site *site, const char *name, mm_b_role role);

/* Y = A . B' (overwrites Y). sv (may be NULL without gradients) receives what
 * the backward needs. */
void mm_forward(ag_ctx *ctx, const mm_site *site, const mm_shape *sh, const float *a, const float *b, float *y,
                mm_saved *sv);
/* dA += dY . B'^T and dB += (A^T . dY in B's layout); da or db may be NULL.
 * a and b are the full-precision operands (a: the im2col columns for conv). */
void mm_backward(ag_ctx *ctx, const mm_site *site, const mm_shape *sh, const mm_saved *sv, const float *a,
                 const float *b, const float *dy, float *da, float *db);
/* Products an op forms itself (conv: im2col by chunks of rows that stay in
 * cache, never the whole column matrix). mm_forward_custom/mm_backward_custom
 * quantize exactly as mm_forward/mm_backward and hand over the operands:
 *   y:  Y = Aq . Bq'        (aq: A as the op passed it, already quantized by
 *                            the op, e.g. mm_quantize_conv_input)
 *   da: dA += dYq . Bq'^T
 *   db: dB += Aq^T . dYq    (A in the op's own form; 1d blocks run along M, so
 *                            the op quantizes its chunks of A rows through q,
 *                            chunks starting at multiples of q->align rows)
 * da is required when want_da; db may be NULL (one GEMM over A as passed,
 * quantized whole in 1d); y is required by mm_forward_custom. */
typedef struct mm_chunk_quant {
    ag_ctx *ctx;
    const mm_site *site;
    bool active;   /* false: chunks are used as they are */
    int align;     /* chunk starts must be multiples of this many rows */
    bool counted;  /* the pass was counted (once for all chunks) */
} mm_chunk_quant;
/* A chunk of A rows [rows, cols] quantized for the dB product (scratch arena), or a itself. */
const float *mm_chunk_quant_rows(mm_chunk_quant *q, const float *a, int64_t rows, int64_t cols);

typedef struct mm_custom {
    void (*y)(void *user, const float *aq, const float *bq, float *y);
    void (*da)(void *user, const float *dyq, const float *bq);
    void (*db)(void *user, mm_chunk_quant *q, const float *a, const float *dyq, float *db);
    void *user;
} mm_custom;
void mm_forward_custom(ag_ctx *ctx, const mm_site *site, const mm_shape *sh, const float *a, const float *b, float *y,
                       mm_saved *sv, const mm_custom *cu);
void mm_backward_custom(ag_ctx *ctx, const mm_site *site, const mm_shape *sh, const mm_saved *sv, const float *a,
                        const float *b, const float *dy, bool want_da, float *db, const mm_custom *cu);

/* Convolution: quantize the NHWC activation x ([rows, c], channels last)
 * before im2col, as the forward activation role. Returns x itself when the
 * policy leaves it unquantized. Records in sv what the backward needs. */
const float *mm_quantize_conv_input(ag_ctx *ctx, const mm_site *site, const float *x, int64_t rows, int64_t c,
                                    mm_saved *sv);
/* The activation the conv backward should im2col for the dW product: the
 * forward's quantized copy (2d, 1d_requant) or the original x (1d, fp32). */
const float *mm_conv_input_for_backward(ag_ctx *ctx, const mm_site *site, const mm_saved *sv, const float *x,
                                        int64_t rows, int64_t c);

#endif
