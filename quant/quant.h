/* The MX quantizer: every format, rounding and scale mode of
 * ../shared/spec/mx-formats.md, bit for bit.
 *
 * A quant_spec says how to quantize; the functions below apply it to a
 * contiguous float32 array of any shape:
 *   - 1D blocks of k elements along one axis (ragged last block padded with zeros),
 *   - 2D tiles of r x c over the last two axes.
 * Scale codes (E8M0, one byte per block) are written in block order: for 1D,
 * the input's shape with the blocked axis replaced by its number of blocks; for
 * 2D, leading dims x row tiles x column tiles.
 *
 * Two representations: fake-quant (dequantized float32, in place allowed) and
 * packed (one code byte per element in the format's bit encoding plus the
 * scale bytes); quant_unpack(quant_pack(x)) == quant_fake(x) bit for bit.
 * Statistics are gathered in the same pass when a quant_stats is passed. */
#ifndef MX_QUANT_QUANT_H
#define MX_QUANT_QUANT_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/keys.h"

typedef enum quant_format {
    QUANT_FORMAT_FP32,
    QUANT_FORMAT_BF16,
    QUANT_FORMAT_MXINT8,
    QUANT_FORMAT_MXFP8_E4M3,
    QUANT_FORMAT_MXFP8_E5M2,
    QUANT_FORMAT_MXFP6_E3M2,
    QUANT_FORMAT_MXFP6_E2M3,
    QUANT_FORMAT_MXFP4_E2M1,
    QUANT_FORMAT_BOOST,
    QUANT_FORMAT_MXSF,
    QUANT_FORMAT_MXINT4,
    QUANT_FORMAT_MX9, /* shared microexponents (section 8): bdr_m7_k16_s2_d1 */
    QUANT_FORMAT_MX6, /* bdr_m4_k16_s2_d1 */
    QUANT_FORMAT_MX4, /* bdr_m2_k16_s2_d1 */
    QUANT_FORMAT_COUNT /* the presets; general bdr_... formats get ids from here on as they are named */
} quant_format;

/* Ids of general BDR formats named at run time (quant_format_parse) follow the presets. */
#define QUANT_FORMAT_MAX_GENERAL 512
#define QUANT_FORMAT_MAX (QUANT_FORMAT_COUNT + QUANT_FORMAT_MAX_GENERAL)

typedef enum quant_round {
    QUANT_ROUND_EVEN,
    QUANT_ROUND_AWAY,
    QUANT_ROUND_FLOOR,
    QUANT_ROUND_STOCHASTIC,
    QUANT_ROUND_COUNT
} quant_round;

typedef enum quant_scale { QUANT_SCALE_FLOOR, QUANT_SCALE_RCEIL, QUANT_SCALE_COUNT } quant_scale;

/* One row of the formats table. Element values are described in the scaled
 * domain t = x / 2^se: p fraction bits, smallest normal exponent emin,
 * saturation at max_norm. A format with a low range (MXSF) uses the low
 * parameters for |t| < 2^low_below.
 *
 * Shared-microexponent (BDR) formats have k1 > 0: blocks of k1 values share
 * the 8-bit scale (emax 0), runs of k2 share a d2-bit microexponent u, and an
 * element is sign + m = p + 1 magnitude bits on the integer grid 2^-(p+u)
 * (is_int, sign-magnitude codes). */
typedef struct quant_format_info {
    const char *name;
    const char *alias;   /* NULL if none */
    bool is_mx;          /* block-scaled (false for fp32, bf16) */
    bool is_int;         /* two's complement elements (mxint8) */
    int bits;            /* bits per element code */
    int ebits;           /* exponent field width (0 for int) */
    int p;               /* fraction bits */
    int emax;            /* exponent of the largest binade, used by the scale rule */
    int emin;            /* smallest normal exponent (subnormals keep it) */
    int bias;            /* exponent bias of the encoding */
    float max_norm;
    bool has_low;        /* MXSF: low range below |t| = 1 */
    int low_p, low_emin, low_bias;
    const char *summary;
    int k1, k2, d2;      /* shared microexponents; k1 == 0 for one-level formats */
} quant_format_info;

typedef struct quant_spec {
    quant_format format;
    quant_round round;
    quant_scale scale;
    int block_rows;      /* 1 for 1D blocks; r for r x c tiles */
    int block_cols;      /* k for 1D blocks; c for tiles */
    int axis;            /* 1D: blocked axis (negative counts from the end) */
    uint64_t seed;       /* stochastic rounding: Philox key ... */
    uint64_t stream;     /* ... and stream; element i uses word offset + i of the stream */
    uint64_t offset;     /* so a piece of a tensor (a chunk of rows) draws the bits the whole would */
} quant_spec;

/* A quantized operand: how it was quantized (spec: format, rounding, layout
 * as 1D axis + block or 2D tile) over which shape, and what is held of it:
 * packed codes and scales, the dequantized values, or both. For fp32 (no
 * quantization) values is the source itself. */
#define QUANT_TENSOR_MAX_DIMS 3
typedef struct quant_tensor {
    quant_spec spec;
    int ndim;
    int64_t shape[QUANT_TENSOR_MAX_DIMS];
    const uint8_t *codes, *scales; /* packed (both or neither) */
    const float *values;           /* dequantized, or NULL */
    const uint16_t *values16;      /* dequantized as bfloat16 (exact for MX formats): how the GPU
                                      holds its GEMM operands; values is then NULL */
} quant_tensor;

#define QUANT_GAP_BINS 32 /* exponent gaps 0..30, and 31+ */

typedef struct quant_stats {
    int64_t elements, nonzero, underflow, saturated;
    double sum_x2, sum_err2;
    int64_t gap_hist[QUANT_GAP_BINS];
} quant_stats;

/* The names of formats (from the formats table, aliases included), rounding and scale modes. */
extern const mx_enum quant_format_enum, quant_round_enum, quant_scale_enum;

const quant_format_info *quant_format_get(quant_format f);
bool quant_format_is_bdr(quant_format f);
/* The shared-microexponent format with these parameters (a preset if one
 * matches, else a general bdr_... id, created on first use); -1 with a
 * message when out of range (m 1..7, k1 2..64, k2 dividing k1, d2 0..3). */
int quant_format_bdr(int m, int k1, int k2, int d2, quant_format *out, mx_err *err);
/* Bits per element of s: element bits + 8 / block size (+ d2 / k2). */
double quant_spec_bits_per_element(const quant_spec *s);
/* The format's own 1D block (32; k1 for BDR) and 2D tile (8x8; for BDR the
 * most square r x c with r * c = k1, 4x4 for k1 = 16). */
int quant_format_block(quant_format f);
void quant_format_tile(quant_format f, int *rows, int *cols);
/* Whether s is valid for its format (BDR: a 1xk1 block or r x c tile of k1
 * values, scale floor); a message otherwise. */
int quant_spec_check(const quant_spec *s, mx_err *err);
const char *quant_round_name(quant_round r);
const char *quant_scale_name(quant_scale s);
/* Name lookups (accept aliases); return -1 and fill err if unknown. */
int quant_format_parse(const char *name, quant_format *out, mx_err *err);
int quant_round_parse(const char *name, quant_round *out, mx_err *err);
int quant_scale_parse(const char *name, quant_scale *out, mx_err *err);
/* "1x32" (1D block of 32) or "8x8" (tile). */
int quant_block_parse(const char *s, int *rows, int *cols, mx_err *err);

/* Defaults: even rounding, floor scale, the format's 1D block along the last axis. */
quant_spec quant_spec_default(quant_format f);
bool quant_spec_is_2d(const quant_spec *s);

/* Checks spec against a shape; returns the number of blocks (scale bytes),
 * or -1 with a message (axis out of range, rank too small for a tile ...).
 * fp32/bf16 have no blocks: 0. */
int64_t quant_num_blocks(const quant_spec *s, int ndim, const int64_t *shape, mx_err *err);
/* Bytes of packed codes: one per element, then (BDR) one microexponent byte
 * per run of k2, in block order, the k1 / k2 runs of a block together. */
int64_t quant_codes_bytes(const quant_spec *s, int ndim, const int64_t *shape);
/* Shape of the scale array (see top of file); returns its rank. */
int quant_scales_shape(const quant_spec *s, int ndim, const int64_t *shape, int64_t *out_shape);

/* Fake quantization. y may equal x. scales (may be NULL) receives one E8M0
 * byte per block; stats (may be NULL) is overwritten with this call's counts.
 * The spec must be valid for the shape (checked by assertion). */
void quant_fake(const quant_spec *s, const float *x, float *y, int ndim, const int64_t *shape, uint8_t *scales,
                quant_stats *stats);
/* quant_fake's values written as bfloat16 (the upper halves of its floats),
 * for products on BF16 units, in one pass: 1 when done (every value is then
 * a normal bf16 or zero, so bit for bit quant_fake's); 0 where some block's
 * scale puts values below bf16's normals (or holds Inf/NaN), and -1 where
 * this spec has no such pass (rounding other than round-half-even, shared
 * microexponents, layouts the vector kernels do not cover, no AVX2): y is
 * then incomplete and the caller quantizes as float32. */
int quant_fake_bf16(const quant_spec *s, const float *x, uint16_t *y, int ndim, const int64_t *shape);
/* Packed storage: codes[i] is element i's code byte; scales as above.
 * Not defined for fp32 (assertion). bf16 packs to nothing: use fake-quant. */
void quant_pack(const quant_spec *s, const float *x, uint8_t *codes, int ndim, const int64_t *shape,
                uint8_t *scales, quant_stats *stats);
/* quant_pack and quant_fake in one pass: codes, scales and y, which equals
 * quant_fake's bit for bit (signed zeros too: unpacking mxint8 codes gives +0). */
void quant_pack_fake(const quant_spec *s, const float *x, uint8_t *codes, float *y, int ndim, const int64_t *shape,
                     uint8_t *scales, quant_stats *stats);
void quant_unpack(const quant_spec *s, const uint8_t *codes, const uint8_t *scales, float *y, int ndim,
                  const int64_t *shape);

/* The values of a quantized operand into y: a copy of t->values, or its codes unpacked. */
void quant_tensor_values(const quant_tensor *t, float *y);
int64_t quant_tensor_numel(const quant_tensor *t);

/* Decoding and encoding of single element codes in the scaled domain (for
 * tests and docs): value of code c; code of an already-quantized value t. */
float quant_decode(quant_format f, uint8_t code);
uint8_t quant_encode(quant_format f, float t);

/* The integer reference path for every rounding mode, element by element
 * (slow; tests check the fast paths against it). */
void quant_fake_reference(const quant_spec *s, const float *x, float *y, int ndim, const int64_t *shape,
                          uint8_t *scales);

void quant_stats_clear(quant_stats *st);
void quant_stats_add(quant_stats *acc, const quant_stats *st);
double quant_stats_underflow_ratio(const quant_stats *st);
double quant_stats_saturation_ratio(const quant_stats *st);
double quant_stats_qsnr_db(const quant_stats *st);
/* The smallest exponent gap (block maximum's exponent minus the element's, as
 * gap_hist counts it) at which even the largest value of that exponent
 * quantizes to zero under the format's default spec: where its underflow
 * begins. QUANT_GAP_BINS when no gap up to the histogram's last underflows
 * (bf16, fp32). Measured with the quantizer itself. */
int quant_underflow_gap(quant_format f);

/* In-process benchmark: fake-quant, pack and memcpy GB/s on n elements; one
 * JSON line per format on stdout. Returns 0. */
int quant_bench(const quant_format *formats, int nformats, int64_t n, int reps);

#endif
