/* The QSNR study of "With Shared Microexponents" (seed paper 002) as a
 * library: vectors drawn from named distributions, quantized with a spec,
 * their signal-to-quantization-noise ratios, and the paper's Theorem 1 lower
 * bound. `mxtrain qsnr` (train/cmd_qsnr.c) is its command. */
#ifndef MX_QUANT_QSNR_H
#define MX_QUANT_QSNR_H

#include <stdint.h>

#include "quant/quant.h"

typedef enum qsnr_dist {
    QSNR_DIST_PAPER,      /* N(0, sigma^2) with sigma ~ |N(0, 1)| drawn per vector (the paper's) */
    QSNR_DIST_NORMAL,     /* N(0, 1) */
    QSNR_DIST_LAPLACE,    /* Laplace(0, 1) */
    QSNR_DIST_STUDENT_T3, /* Student-t, 3 degrees of freedom (heavy tails) */
    QSNR_DIST_COUNT
} qsnr_dist;

extern const mx_enum qsnr_dist_enum;

/* count vectors of length values into x (row-major); vector r draws from its
 * own stream of seed, so the data do not depend on thread count. */
void qsnr_draw(qsnr_dist d, uint64_t seed, int64_t count, int64_t length, float *x);

typedef struct qsnr_result {
    double bits;       /* bits per element of the spec */
    double mean_db;    /* mean over vectors of each vector's QSNR (vectors quantized exactly left out) */
    double min_db;     /* the worst vector's */
    double tensor_db;  /* QSNR of all vectors as one tensor */
    double bound_db;   /* Theorem 1's bound for vectors of this length; NAN where it does not apply */
    int64_t vectors, exact; /* vectors measured; of them quantized without error */
} qsnr_result;

/* Quantizes the count x length vectors x (1D blocks of s along each vector)
 * into scratch (count * length floats) and measures them. */
void qsnr_measure(const quant_spec *s, const float *x, int64_t count, int64_t length, float *scratch,
                  qsnr_result *r);

/* Theorem 1: for any vector of n values quantized with an integer-grid block
 * format (BDR: m, k1, k2, d2; mxint: m = bits - 1, k2 = k1 = the block, d2 =
 * 0) with round-to-nearest, QSNR >= 6.02 m + 10 log10(2^(2b) / (min(n, k1) +
 * (2^(2b) - 1) k2)), b = 2^d2 - 1. NAN for other formats or for
 * rounding that is not to nearest. */
double qsnr_theorem1_db(const quant_spec *s, int64_t n);

#endif
