/* Counter-based RNG: Philox4x32-10 (Salmon et al., SC'11).
 *
 * A random word is a pure function of (seed, stream, index), so any thread can
 * draw the numbers for any element without shared state: results depend only
 * on the seed, never on thread scheduling. Streams with different ids are
 * independent (different counters under the same key). */
#ifndef MX_CORE_RNG_H
#define MX_CORE_RNG_H

#include <stdint.h>

#ifdef __CUDACC__
#define RNG_HD __host__ __device__
#else
#define RNG_HD
#endif

/* Four 32-bit words for counter (stream, block) under key seed. */
RNG_HD static inline void rng_philox4x32(uint64_t seed, uint64_t stream, uint64_t block, uint32_t out[4]) {
    uint32_t c0 = (uint32_t)block, c1 = (uint32_t)(block >> 32);
    uint32_t c2 = (uint32_t)stream, c3 = (uint32_t)(stream >> 32);
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* The index-th 32-bit word of stream `stream`. */
RNG_HD static inline uint32_t rng_u32_at(uint64_t seed, uint64_t stream, uint64_t index) {
    uint32_t w[4];
    rng_philox4x32(seed, stream, index >> 2, w);
    return w[index & 3];
}

/* Sequential reader over one stream (for loaders, init, dropout masks). */
typedef struct rng {
    uint64_t seed, stream, index;
} rng;

void rng_init(rng *r, uint64_t seed, uint64_t stream);
uint32_t rng_next_u32(rng *r);
uint64_t rng_next_u64(rng *r);
float rng_uniform(rng *r);                /* [0, 1), 24-bit resolution */
double rng_uniform_f64(rng *r);           /* [0, 1), 53-bit resolution */
float rng_normal(rng *r);                 /* N(0, 1), Box-Muller in double */
uint32_t rng_below(rng *r, uint32_t n);   /* uniform integer in [0, n), unbiased */
/* Derive a well-mixed stream id from a base and a sub id (splitmix64). */
uint64_t rng_mix(uint64_t a, uint64_t b);

#endif
