/* Bit helpers shared by the quantizer's translation units. */
#ifndef MX_QUANT_INTERNAL_H
#define MX_QUANT_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "quant/quant.h"

#ifdef __CUDACC__
#define QK_HD __host__ __device__
#else
#define QK_HD
#endif

QK_HD static inline uint32_t quant_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
QK_HD static inline float quant_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* 2^e for e in [-149, 127], built from bits (exact, no libm). */
QK_HD static inline float quant_pow2f(int e) {
    if (e >= -126) return quant_from_bits((uint32_t)(e + 127) << 23);
    return quant_from_bits(1u << (e + 149));
}
QK_HD static inline float quant_nanf(void) { return quant_from_bits(0x7fc00000u); }

#endif
