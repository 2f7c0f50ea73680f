#include "core/rng.h"

#include <math.h>

void rng_init(rng *r, uint64_t seed, uint64_t stream) {
    r->seed = seed;
    r->stream = stream;
    r->index = 0;
}

uint32_t rng_next_u32(rng *r) { return rng_u32_at(r->seed, r->stream, r->index++); }

uint64_t rng_next_u64(rng *r) {
    uint64_t lo = rng_next_u32(r);
    uint64_t hi = rng_next_u32(r);
    return lo | (hi << 32);
}

float rng_uniform(rng *r) { return (float)(rng_next_u32(r) >> 8) * (1.0f / 16777216.0f); }

double rng_uniform_f64(rng *r) { return (double)(rng_next_u64(r) >> 11) * (1.0 / 9007199254740992.0); }

float rng_normal(rng *r) {
    double u1 = rng_uniform_f64(r), u2 = rng_uniform_f64(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint32_t rng_below(rng *r, uint32_t n) {
    /* Rejection keeps the result exactly uniform. */
    uint32_t limit = (uint32_t)(-n) % n;
    for (;;) {
        uint64_t m = (uint64_t)rng_next_u32(r) * n;
        if ((uint32_t)m >= limit) return (uint32_t)(m >> 32);
    }
}

uint64_t rng_mix(uint64_t a, uint64_t b) {
    uint64_t z = a + 0x9E3779B97F4A7C15ull * (b + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
