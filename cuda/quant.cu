// The quantizer on the GPU. Per-element arithmetic is quant/quant_kernel.h's,
// shared with the CPU; this file only maps blocks and elements to threads.
//
//   TILES   (r x c tiles, and 1D blocks along a contiguous axis as 1 x k
//           tiles): a group of G threads (a power of two <= 32, lanes of one
//           warp) per tile, each holding its share of the tile in registers
//           between the amax pass and the quantize pass; float4 accesses when
//           the tile's columns and the rows allow.
//   COLUMNS (1D blocks along a strided axis): one thread per column of a
//           block; neighbouring threads read neighbouring columns.
//   ELEMENTWISE (bf16, fp32): one thread per element.
//
// Statistics are gathered per thread, combined per thread block in shared
// memory and added to one device record per call.
#include <cuda_bf16.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "core/rng.h"
#include "core/timer.h"
#include "quant/quant_kernel.h"
#include "core/json.h"
}
#include "cuda/cuda.h"
#include "cuda/cuda_internal.h"

enum { OUT_FAKE, OUT_PACK, OUT_PACK_FAKE, OUT_FAKE_BF16 };

__constant__ float d_lut[QUANT_FORMAT_COUNT][256];

/* One call's statistics on the device (plus the bf16-inexact count). */
struct cu_stats {
    unsigned long long nonzero, underflow, saturated, inexact;
    double sum_x2, sum_err2;
    unsigned long long gap[QUANT_GAP_BINS];
};

/* A thread's running statistics. */
struct lstats {
    unsigned long long nonzero, underflow, saturated, inexact;
    double x2, e2;
};

static cu_stats *g_stats;    /* device record of one call, allocated once */
static cu_stats *g_deferred; /* a running bf16-inexact tally (cu_quant_fake_bf16_deferred) */
static cu_stats *g_rec;      /* where the launches write: one of the two */
static bool g_lut_ready;

static void cu_quant_setup(void) {
    if (!g_lut_ready) {
        CU_CHECK(cudaMemcpyToSymbol(d_lut, quant_lut, sizeof quant_lut));
        g_stats = (cu_stats *)cu_malloc(sizeof(cu_stats));
        g_deferred = (cu_stats *)cu_malloc(sizeof(cu_stats));
        CU_CHECK(cudaMemset(g_deferred, 0, sizeof(cu_stats)));
        g_lut_ready = true;
    }
}

static int cu_grid(int64_t work, int threads) {
    static int sms;
    if (!sms) {
        int dev;
        CU_CHECK(cudaGetDevice(&dev));
        CU_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    }
    int64_t b = (work + threads - 1) / threads, cap = (int64_t)sms * 16;
    return (int)(b < cap ? (b > 0 ? b : 1) : cap);
}

/* bf16 bits of a float (nearest, ties to even; NaN stays quiet NaN), counting inexact ones. */
__device__ __forceinline__ uint16_t to_bf16(float v, unsigned long long *inexact) {
    uint32_t b = quant_bits(v);
    *inexact += (b & 0xffffu) != 0;
    return (uint16_t)(quant_bits(qk_bf16_round(b, qk_bf16_even_add(b))) >> 16);
}

/* What one element produces: its value (float or bf16 bits) and code. */
struct qout {
    float v;
    uint16_t b;
    uint8_t c;
};

/* One element: exactly the CPU's qk_row body. gidx: its linear index. */
template <int MODE, int OUT, bool ST>
__device__ __forceinline__ qout cu_elem(const qk &k, float xv, float inv_s, float s, int e_amax, uint64_t gidx,
                                        lstats &ls, unsigned *sh_gap) {
    uint32_t u = MODE == QK_STOCH ? rng_u32_at(k.seed, k.stream, k.offset + gidx) : 0u;
    float t = xv * inv_s;
    float tq = qk_elem(&k, t, MODE, u);
    float q = tq * s;
    qout r = {q, 0, 0};
    if (OUT == OUT_FAKE_BF16) r.b = to_bf16(q, &ls.inexact);
    if (OUT == OUT_PACK || OUT == OUT_PACK_FAKE) {
        r.c = qk_encode(&k, tq); /* and r.v = q: pack_fake's values are quant_fake's */
    }
    if (ST) {
        uint32_t ax = quant_bits(xv) & 0x7fffffffu;
        if (ax) {
            ls.nonzero++;
            ls.underflow += q == 0.0f;
            int gap = e_amax - qk_exponent(ax);
            atomicAdd(&sh_gap[gap < QUANT_GAP_BINS - 1 ? gap : QUANT_GAP_BINS - 1], 1u);
        }
        ls.saturated += fabsf(t) > k.max_norm;
        double dx = xv, de = (double)xv - (double)q;
        ls.x2 += dx * dx;
        ls.e2 += de * de;
    }
    return r;
}

/* An element of a block (tile) with Inf or NaN: NaN, code 0 (the CPU's rule). */
template <bool ST>
__device__ __forceinline__ qout cu_elem_nonfinite(float xv, lstats &ls) {
    if (ST) ls.nonzero += xv != 0.0f;
    qout r = {quant_nanf(), 0x7fc0u, 0};
    return r;
}

/* Stores VEC outputs at element o. */
template <int OUT, int VEC>
__device__ __forceinline__ void cu_store(const qout *r, void *y, uint8_t *codes, int64_t o) {
    if (VEC == 4) {
        if (OUT == OUT_FAKE || OUT == OUT_PACK_FAKE)
            *(float4 *)((float *)y + o) = make_float4(r[0].v, r[1].v, r[2].v, r[3].v);
        if (OUT == OUT_FAKE_BF16) *(ushort4 *)((uint16_t *)y + o) = make_ushort4(r[0].b, r[1].b, r[2].b, r[3].b);
        if (OUT == OUT_PACK || OUT == OUT_PACK_FAKE) *(uchar4 *)(codes + o) = make_uchar4(r[0].c, r[1].c, r[2].c, r[3].c);
    } else {
        if (OUT == OUT_FAKE || OUT == OUT_PACK_FAKE) ((float *)y)[o] = r[0].v;
        if (OUT == OUT_FAKE_BF16) ((uint16_t *)y)[o] = r[0].b;
        if (OUT == OUT_PACK || OUT == OUT_PACK_FAKE) codes[o] = r[0].c;
    }
}

__device__ __forceinline__ void cu_stats_flush_all(lstats &ls, unsigned *sh_gap, cu_stats *g);

/* Zeroes the thread block's gap histogram (statistics only). */
template <bool ST>
__device__ __forceinline__ void cu_stats_begin(unsigned *sh_gap) {
    if (ST) {
        for (int i = threadIdx.x; i < QUANT_GAP_BINS; i += blockDim.x) sh_gap[i] = 0;
        __syncthreads();
    }
}

/* Block-wide sum of the threads' statistics into the call's record. */
template <bool ST>
__device__ __forceinline__ void cu_stats_flush(lstats &ls, unsigned *sh_gap, cu_stats *g) {
    /* the bf16-inexact count is kept with or without statistics */
    for (int off = 16; off; off >>= 1) ls.inexact += __shfl_xor_sync(0xffffffffu, ls.inexact, off);
    if ((threadIdx.x & 31) == 0 && ls.inexact) atomicAdd(&g->inexact, ls.inexact);
    if (ST) cu_stats_flush_all(ls, sh_gap, g);
}

/* The statistics' part of cu_stats_flush. */
__device__ __forceinline__ void cu_stats_flush_all(lstats &ls, unsigned *sh_gap, cu_stats *g) {
    for (int off = 16; off; off >>= 1) {
        ls.nonzero += __shfl_xor_sync(0xffffffffu, ls.nonzero, off);
        ls.underflow += __shfl_xor_sync(0xffffffffu, ls.underflow, off);
        ls.saturated += __shfl_xor_sync(0xffffffffu, ls.saturated, off);
        ls.x2 += __shfl_xor_sync(0xffffffffu, ls.x2, off);
        ls.e2 += __shfl_xor_sync(0xffffffffu, ls.e2, off);
    }
    if ((threadIdx.x & 31) == 0) {
        atomicAdd(&g->nonzero, ls.nonzero);
        atomicAdd(&g->underflow, ls.underflow);
        atomicAdd(&g->saturated, ls.saturated);
        atomicAdd(&g->sum_x2, ls.x2);
        atomicAdd(&g->sum_err2, ls.e2);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < QUANT_GAP_BINS; i += blockDim.x)
        if (sh_gap[i]) atomicAdd(&g->gap[i], (unsigned long long)sh_gap[i]);
}

/* ---------------- TILES ---------------- */

struct tiles_args {
    int64_t lead, R, C, ntr, ntc, nblocks;
    int r, c;
    int G;       /* threads per tile */
    int per;     /* chunks per thread (held in registers) */
};

#define CU_MAX_PER 4 /* chunks of VEC elements a thread holds */

template <int MODE, int OUT, bool ST, int VEC>
__global__ void __launch_bounds__(256) k_tiles(qk k, tiles_args a, const float *__restrict__ x, void *y,
                                               uint8_t *codes, uint8_t *scales, cu_stats *g) {
    __shared__ unsigned sh_gap[QUANT_GAP_BINS];
    cu_stats_begin<ST>(sh_gap);
    lstats ls = {0, 0, 0, 0, 0.0, 0.0};
    const int G = a.G, lane = threadIdx.x & (G - 1);
    const unsigned gmask = (G == 32 ? 0xffffffffu : ((1u << G) - 1u) << ((threadIdx.x & 31) & ~(G - 1)));
    const int64_t groups = (int64_t)gridDim.x * (blockDim.x / G);
    const int chunks_per_row = a.c / VEC, nchunks = a.r * chunks_per_row;
    const int64_t per_lead = a.ntr * a.ntc;
    const bool narrow = a.nblocks < ((int64_t)1 << 31); /* 32-bit divisions are several times cheaper */
    for (int64_t t = (int64_t)blockIdx.x * (blockDim.x / G) + threadIdx.x / G; t < a.nblocks; t += groups) {
        int64_t li, tr, tc;
        if (narrow) {
            uint32_t t32 = (uint32_t)t, pl = (uint32_t)per_lead, nc = (uint32_t)a.ntc;
            uint32_t l32 = t32 / pl, r32 = t32 - l32 * pl, q32 = r32 / nc;
            li = l32, tr = q32, tc = r32 - q32 * nc;
        } else {
            li = t / per_lead;
            int64_t rem = t - li * per_lead;
            tr = rem / a.ntc;
            tc = rem - tr * a.ntc;
        }
        int64_t row0 = tr * a.r, col0 = tc * a.c;
        int64_t base = li * a.R * a.C + row0 * a.C + col0;
        float v[CU_MAX_PER][VEC];
        int64_t off[CU_MAX_PER];
        bool in[CU_MAX_PER];
        uint32_t amax = 0;
#pragma unroll
        for (int p = 0; p < CU_MAX_PER; p++) {
            int ch = lane + p * G;
            int i = ch / chunks_per_row, j = (ch - i * chunks_per_row) * VEC;
            in[p] = p < a.per && ch < nchunks && row0 + i < a.R && col0 + j < a.C;
            off[p] = base + (int64_t)i * a.C + j;
            if (in[p]) {
                if (VEC == 4) {
                    float4 f = *(const float4 *)(x + off[p]);
                    v[p][0] = f.x, v[p][1] = f.y, v[p][2] = f.z, v[p][3] = f.w;
                } else {
                    v[p][0] = x[off[p]];
                }
#pragma unroll
                for (int e = 0; e < VEC; e++) {
                    uint32_t ab = quant_bits(v[p][e]) & 0x7fffffffu;
                    amax = ab > amax ? ab : amax;
                }
            }
        }
        /* the rest of a tile too large for registers: read twice */
        for (int ch = lane + a.per * G; ch < nchunks; ch += G) {
            int i = ch / chunks_per_row, j = (ch - i * chunks_per_row) * VEC;
            if (row0 + i >= a.R || col0 + j >= a.C) continue;
            for (int e = 0; e < VEC; e++) {
                uint32_t ab = quant_bits(x[base + (int64_t)i * a.C + j + e]) & 0x7fffffffu;
                amax = ab > amax ? ab : amax;
            }
        }
        for (int sh = G / 2; sh; sh >>= 1) {
            uint32_t o2 = __shfl_xor_sync(gmask, amax, sh, G);
            amax = o2 > amax ? o2 : amax;
        }
        bool nonfinite = amax >= k.nan_above;
        int se = nonfinite ? 0 : qk_scale_exp(&k, amax);
        if (scales && lane == 0) scales[t] = nonfinite ? 255 : (uint8_t)(se + 127);
        float s = quant_pow2f(se), inv_s = quant_pow2f(-se);
        int e_amax = amax ? qk_exponent(amax) : 0;
#pragma unroll
        for (int p = 0; p < CU_MAX_PER; p++) {
            if (!in[p]) continue;
            qout r[VEC];
#pragma unroll
            for (int e = 0; e < VEC; e++)
                r[e] = nonfinite ? cu_elem_nonfinite<ST>(v[p][e], ls)
                                 : cu_elem<MODE, OUT, ST>(k, v[p][e], inv_s, s, e_amax, (uint64_t)(off[p] + e), ls,
                                                          sh_gap);
            cu_store<OUT, VEC>(r, y, codes, off[p]);
        }
        for (int ch = lane + a.per * G; ch < nchunks; ch += G) {
            int i = ch / chunks_per_row, j = (ch - i * chunks_per_row) * VEC;
            if (row0 + i >= a.R || col0 + j >= a.C) continue;
            for (int e = 0; e < VEC; e++) {
                int64_t o = base + (int64_t)i * a.C + j + e;
                qout r = nonfinite ? cu_elem_nonfinite<ST>(x[o], ls)
                                   : cu_elem<MODE, OUT, ST>(k, x[o], inv_s, s, e_amax, (uint64_t)o, ls, sh_gap);
                cu_store<OUT, 1>(&r, y, codes, o);
            }
        }
    }
    cu_stats_flush<ST>(ls, sh_gap, g);
}

/* ---------------- COLUMNS ---------------- */

struct cols_args {
    int64_t outer, L, inner, nb;
    int k;
};

template <int MODE, int OUT, bool ST>
__global__ void __launch_bounds__(256) k_columns(qk k, cols_args a, const float *__restrict__ x, void *y,
                                                 uint8_t *codes, uint8_t *scales, cu_stats *g) {
    __shared__ unsigned sh_gap[QUANT_GAP_BINS];
    cu_stats_begin<ST>(sh_gap);
    lstats ls = {0, 0, 0, 0, 0.0, 0.0};
    const int64_t total = a.outer * a.nb * a.inner;
    for (int64_t w = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; w < total; w += (int64_t)gridDim.x * blockDim.x) {
        /* w = (o, b, j): scale index w, in block order */
        int64_t o = w / (a.nb * a.inner), rem = w - o * a.nb * a.inner, b = rem / a.inner, j = rem - b * a.inner;
        int rows = (int)(a.L - b * a.k < a.k ? a.L - b * a.k : a.k);
        int64_t base = o * a.L * a.inner + b * a.k * a.inner + j;
        uint32_t amax = 0;
        for (int i = 0; i < rows; i++) {
            uint32_t ab = quant_bits(x[base + i * a.inner]) & 0x7fffffffu;
            amax = ab > amax ? ab : amax;
        }
        bool nonfinite = amax >= k.nan_above;
        int se = nonfinite ? 0 : qk_scale_exp(&k, amax);
        if (scales) scales[w] = nonfinite ? 255 : (uint8_t)(se + 127);
        float s = quant_pow2f(se), inv_s = quant_pow2f(-se);
        int e_amax = amax ? qk_exponent(amax) : 0;
        for (int i = 0; i < rows; i++) {
            int64_t off = base + i * a.inner;
            qout r = nonfinite ? cu_elem_nonfinite<ST>(x[off], ls)
                               : cu_elem<MODE, OUT, ST>(k, x[off], inv_s, s, e_amax, (uint64_t)off, ls, sh_gap);
            cu_store<OUT, 1>(&r, y, codes, off);
        }
    }
    cu_stats_flush<ST>(ls, sh_gap, g);
}

/* ---------------- ELEMENTWISE (bf16, fp32) ---------------- */

/* One element of bf16 / fp32 "quantization": the CPU's rule (qk_bf16_round). */
__device__ __forceinline__ float cu_round_elem(int mode, bool bf16, uint64_t seed, uint64_t stream, uint64_t idx,
                                               float xv) {
    if (!bf16) return xv;
    uint32_t b = quant_bits(xv);
    uint32_t add = mode == QUANT_ROUND_EVEN    ? qk_bf16_even_add(b)
                   : mode == QUANT_ROUND_AWAY  ? 0x8000u
                   : mode == QUANT_ROUND_FLOOR ? 0u
                                               : rng_u32_at(seed, stream, idx) >> 16;
    return qk_bf16_round(b, add);
}

template <bool ST>
__device__ __forceinline__ void cu_round_stats(float xv, float q, lstats &ls) {
    if (!ST) return;
    double xd = xv, qd = q;
    ls.nonzero += xd != 0.0;
    ls.underflow += xd != 0.0 && qd == 0.0;
    ls.saturated += isinf(q) && !isinf(xv);
    ls.x2 += xd * xd;
    ls.e2 += (xd - qd) * (xd - qd);
}

/* vec: x and y 16-byte aligned, processed 4 elements at a time */
template <bool ST>
__global__ void __launch_bounds__(256) k_elementwise(int mode, bool bf16, uint64_t seed, uint64_t stream,
                                                     uint64_t offset, int64_t n, const float *__restrict__ x, void *y,
                                                     bool y_bf16, bool vec, cu_stats *g) {
    __shared__ unsigned sh_gap[QUANT_GAP_BINS]; /* stays zero: no gaps without blocks */
    cu_stats_begin<ST>(sh_gap);
    lstats ls = {0, 0, 0, 0, 0.0, 0.0};
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t i0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, done = 0;
    if (vec) {
        const int64_t n4 = n / 4;
        for (int64_t i = i0; i < n4; i += stride) {
            float4 f = ((const float4 *)x)[i];
            float xv[4] = {f.x, f.y, f.z, f.w}, q[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                q[e] = cu_round_elem(mode, bf16, seed, stream, offset + (uint64_t)(4 * i + e), xv[e]);
                cu_round_stats<ST>(xv[e], q[e], ls);
            }
            if (y_bf16)
                ((ushort4 *)y)[i] = make_ushort4(to_bf16(q[0], &ls.inexact), to_bf16(q[1], &ls.inexact),
                                                 to_bf16(q[2], &ls.inexact), to_bf16(q[3], &ls.inexact));
            else ((float4 *)y)[i] = make_float4(q[0], q[1], q[2], q[3]);
        }
        done = n4 * 4;
    }
    for (int64_t i = done + i0; i < n; i += stride) {
        float xv = x[i], q = cu_round_elem(mode, bf16, seed, stream, offset + (uint64_t)i, xv);
        cu_round_stats<ST>(xv, q, ls);
        if (y_bf16) ((uint16_t *)y)[i] = to_bf16(q, &ls.inexact);
        else ((float *)y)[i] = q;
    }
    cu_stats_flush<ST>(ls, sh_gap, g);
}

/* ---------------- UNPACK ---------------- */

/* One element from its code and its block's scale byte (255: the block held Inf or NaN). */
__device__ __forceinline__ float cu_decode(int fmt, uint8_t code, uint8_t sc) {
    return sc == 255 ? quant_nanf() : d_lut[fmt][code] * quant_pow2f((int)sc - 127);
}

__global__ void __launch_bounds__(256) k_unpack_tiles(int fmt, tiles_args a, const uint8_t *__restrict__ codes,
                                                      const uint8_t *__restrict__ scales, float *y) {
    const int64_t rows = a.lead * a.R;
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        int64_t li = row / a.R, r = row - li * a.R;
        const uint8_t *sr = scales + li * a.ntr * a.ntc + (r / a.r) * a.ntc;
        for (int64_t j = threadIdx.x; j < a.C; j += blockDim.x) {
            y[row * a.C + j] = cu_decode(fmt, codes[row * a.C + j], sr[j / a.c]);
        }
    }
}

__global__ void __launch_bounds__(256) k_unpack_columns(int fmt, cols_args a, const uint8_t *__restrict__ codes,
                                                        const uint8_t *__restrict__ scales, float *y) {
    const int64_t rows = a.outer * a.L;
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        int64_t o = row / a.L, i = row - o * a.L;
        const uint8_t *sr = scales + o * a.nb * a.inner + (i / a.k) * a.inner;
        for (int64_t j = threadIdx.x; j < a.inner; j += blockDim.x)
            y[row * a.inner + j] = cu_decode(fmt, codes[row * a.inner + j], sr[j]);
    }
}

/* Shared-microexponent blocks: one thread per block, gathering it by
 * qk_bdr_offsets and quantizing it with the CPU's qk_bdr_quant. */
template <bool ST, bool BF16>
__global__ void __launch_bounds__(256) k_bdr(qk k, qlayout l, const float *__restrict__ x, void *y, uint8_t *codes,
                                             uint8_t *scales, cu_stats *g) {
    __shared__ unsigned sh_gap[QUANT_GAP_BINS];
    cu_stats_begin<ST>(sh_gap);
    lstats ls = {0, 0, 0, 0, 0.0, 0.0};
    int nr = k.k1 / k.k2;
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < l.nblocks;
         t += (int64_t)gridDim.x * blockDim.x) {
        int64_t off[QK_BDR_MAX];
        float xb[QK_BDR_MAX], q[QK_BDR_MAX];
        uint8_t c[QK_BDR_MAX], u[QK_BDR_MAX];
        uint64_t sat;
        qk_bdr_offsets(&l, t, k.k1, off);
        uint32_t amax = 0;
        for (int j = 0; j < k.k1; j++) {
            xb[j] = off[j] >= 0 ? x[off[j]] : 0.0f;
            uint32_t a = quant_bits(xb[j]) & 0x7fffffffu;
            amax = a > amax ? a : amax;
        }
        uint8_t sc = qk_bdr_quant(&k, xb, off, q, c, u, &sat);
        if (scales) scales[t] = sc;
        if (codes)
            for (int r = 0; r < nr; r++) codes[l.numel + t * nr + r] = u[r];
        int e_amax = amax && sc != 255 ? qk_exponent(amax) : 0;
        for (int j = 0; j < k.k1; j++) {
            if (off[j] < 0) continue;
            if (y && BF16) ((uint16_t *)y)[off[j]] = to_bf16(q[j], &ls.inexact);
            else if (y) ((float *)y)[off[j]] = q[j];
            if (codes) codes[off[j]] = c[j];
            if (!ST) continue;
            uint32_t a = quant_bits(xb[j]) & 0x7fffffffu;
            ls.nonzero += a != 0;
            if (sc == 255) continue;
            if (a) {
                ls.underflow += q[j] == 0.0f;
                int gap = e_amax - qk_exponent(a);
                atomicAdd(&sh_gap[gap < QUANT_GAP_BINS - 1 ? gap : QUANT_GAP_BINS - 1], 1u);
            }
            ls.saturated += (sat >> j) & 1;
            double dx = xb[j], de = (double)xb[j] - (double)q[j];
            ls.x2 += dx * dx;
            ls.e2 += de * de;
        }
    }
    cu_stats_flush<ST>(ls, sh_gap, g);
}

/* Shared-microexponent 1D blocks along a contiguous axis, k1 a power of two
 * <= 32: k1 consecutive lanes hold one block, one element each (coalesced),
 * and find its scale and the runs' microexponents with shuffles; the element
 * arithmetic is qk_elem on the run-shifted value, as in qk_bdr_quant. */
template <int MODE, bool ST, bool BF16>
__global__ void __launch_bounds__(256) k_bdr_rows(qk k, qlayout l, const float *__restrict__ x, void *y,
                                                  uint8_t *codes, uint8_t *scales, cu_stats *g) {
    __shared__ unsigned sh_gap[QUANT_GAP_BINS];
    cu_stats_begin<ST>(sh_gap);
    lstats ls = {0, 0, 0, 0, 0.0, 0.0};
    const int k1 = k.k1, k2 = k.k2, nr = k1 / k2;
    const int64_t total = l.nblocks * k1, stride = (int64_t)gridDim.x * blockDim.x;
    /* every lane of a warp runs every iteration (the shuffles need them all) */
    const int64_t rounds = (total + stride - 1) / stride;
    const int lk1 = __ffs(k1) - 1; /* k1 is a power of two */
    const bool small = l.nblocks < ((int64_t)1 << 31); /* 32-bit divisions (64-bit ones dominate otherwise) */
    enum { U = 4 };                                     /* loads in flight per thread (latency) */
    const int64_t w0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (int64_t it = 0; it < rounds; it += U) {
        float xv[U];
        int64_t off[U], blk[U];
        bool in[U];
#pragma unroll
        for (int uu = 0; uu < U; uu++) {
            int64_t w = w0 + (it + uu) * stride, t = w >> lk1, row, tc;
            if (small) {
                uint32_t t32 = (uint32_t)t, n32 = (uint32_t)l.ntc, r32 = t32 / n32;
                row = r32, tc = t32 - r32 * n32;
            } else {
                row = t / l.ntc, tc = t - row * l.ntc;
            }
            int64_t col = tc * k1 + (w & (k1 - 1));
            blk[uu] = w < total ? t : -1;
            in[uu] = w < total && col < l.C;
            off[uu] = row * l.C + col;
            xv[uu] = in[uu] ? x[off[uu]] : 0.0f;
        }
#pragma unroll
        for (int uu = 0; uu < U; uu++) {
            if (it + uu >= rounds) break; /* uniform: every lane has the same rounds */
            int j = (int)((w0 + (it + uu) * stride) & (k1 - 1));
            uint32_t a = quant_bits(xv[uu]) & 0x7fffffffu, amax = a, as = a;
            for (int sh = 1; sh < k1; sh <<= 1) {
                uint32_t v = __shfl_xor_sync(0xffffffffu, amax, sh);
                amax = v > amax ? v : amax;
                if (sh < k2) as = amax; /* the run's max: the first log2(k2) steps */
            }
            if (k2 == 1) as = a;
            if (blk[uu] < 0) continue;
            int64_t t = blk[uu], o = off[uu];
            bool nonfinite = amax >= 0x7f800000u;
            int se = nonfinite ? 0 : qk_bdr_scale_exp(amax);
            int u = nonfinite ? 0 : qk_bdr_micro(&k, se, as);
            if (scales && j == 0) scales[t] = nonfinite ? 255 : (uint8_t)(se + 127);
            if (codes && j % k2 == 0) codes[l.numel + t * nr + j / k2] = (uint8_t)u;
            if (!in[uu]) continue;
            float q, tt = 0;
            uint8_t c = 0;
            if (nonfinite) {
                q = quant_nanf();
            } else {
                tt = (xv[uu] * quant_pow2f(-se)) * quant_pow2f(u);
                uint32_t rnd = MODE == QK_STOCH ? rng_u32_at(k.seed, k.stream, k.offset + (uint64_t)o) : 0u;
                float tq = qk_elem(&k, tt, MODE, rnd);
                q = (tq * quant_pow2f(-u)) * quant_pow2f(se);
                c = qk_encode(&k, tq);
            }
            if (y && BF16) ((uint16_t *)y)[o] = to_bf16(q, &ls.inexact);
            else if (y) ((float *)y)[o] = q;
            if (codes) codes[o] = c;
            if (!ST) continue;
            ls.nonzero += a != 0;
            if (nonfinite) continue;
            if (a) {
                ls.underflow += q == 0.0f;
                int gap = qk_exponent(amax) - qk_exponent(a);
                atomicAdd(&sh_gap[gap < QUANT_GAP_BINS - 1 ? gap : QUANT_GAP_BINS - 1], 1u);
            }
            ls.saturated += fabsf(tt) > k.max_norm;
            double dx = xv[uu], de = (double)xv[uu] - (double)q;
            ls.x2 += dx * dx;
            ls.e2 += de * de;
        }
    }
    cu_stats_flush<ST>(ls, sh_gap, g);
}

__global__ void __launch_bounds__(256) k_unpack_bdr(qk k, qlayout l, const uint8_t *__restrict__ codes,
                                                    const uint8_t *__restrict__ scales, float *y) {
    int nr = k.k1 / k.k2;
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < l.nblocks;
         t += (int64_t)gridDim.x * blockDim.x) {
        int64_t off[QK_BDR_MAX];
        qk_bdr_offsets(&l, t, k.k1, off);
        const uint8_t *ue = codes + l.numel + t * nr;
        for (int j = 0; j < k.k1; j++)
            if (off[j] >= 0)
                y[off[j]] = scales[t] == 255 ? quant_nanf() : qk_bdr_value(&k, codes[off[j]], ue[j / k.k2], scales[t]);
    }
}

/* ---------------- dispatch ---------------- */

/* Threads per tile and chunks per thread for a tile of n chunks: as many
 * chunks per thread as registers allow (loads in flight before the first
 * use: the kernel is bound by memory latency otherwise), then threads. */
static void tiles_shape(int nchunks, int *G, int *per) {
    int g = 1;
    while (g * 2 * CU_MAX_PER <= nchunks && g < 32) g *= 2;
    int p = (nchunks + g - 1) / g;
    *G = g;
    *per = p < CU_MAX_PER ? p : CU_MAX_PER;
}

template <int MODE, int OUT, bool ST>
static void launch_layout(const qk &k, const qlayout &l, const float *x, void *y, uint8_t *codes, uint8_t *scales) {
    const int threads = 256;
    if (l.kind == QL_TILES) {
        bool vec = l.c % 4 == 0 && l.C % 4 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)y % 16 == 0 &&
                   (uintptr_t)codes % 4 == 0;
        tiles_args a = {l.lead, l.R, l.C, l.ntr, l.ntc, l.nblocks, l.r, l.c, 1, 1};
        tiles_shape(l.r * (vec ? l.c / 4 : l.c), &a.G, &a.per);
        int grid = cu_grid(l.nblocks * a.G, threads);
        if (vec) k_tiles<MODE, OUT, ST, 4><<<grid, threads>>>(k, a, x, y, codes, scales, g_rec);
        else k_tiles<MODE, OUT, ST, 1><<<grid, threads>>>(k, a, x, y, codes, scales, g_rec);
    } else {
        cols_args a = {l.outer, l.L, l.inner, l.nb, l.k};
        k_columns<MODE, OUT, ST><<<cu_grid(l.nblocks, threads), threads>>>(k, a, x, y, codes, scales, g_rec);
    }
    CU_CHECK_LAUNCH();
}

template <int OUT, bool ST>
static void launch_mode(const qk &k, const qlayout &l, const float *x, void *y, uint8_t *codes, uint8_t *scales) {
    switch (k.mode) {
    case QK_EVEN_FAST:
    case QK_EVEN_INT: launch_layout<QK_EVEN_FAST, OUT, ST>(k, l, x, y, codes, scales); break;
    case QK_AWAY: launch_layout<QK_AWAY, OUT, ST>(k, l, x, y, codes, scales); break;
    case QK_FLOOR: launch_layout<QK_FLOOR, OUT, ST>(k, l, x, y, codes, scales); break;
    default: launch_layout<QK_STOCH, OUT, ST>(k, l, x, y, codes, scales); break;
    }
}

template <int OUT>
static void launch_out(bool st, const qk &k, const qlayout &l, const float *x, void *y, uint8_t *codes,
                       uint8_t *scales) {
    if (st) launch_mode<OUT, true>(k, l, x, y, codes, scales);
    else launch_mode<OUT, false>(k, l, x, y, codes, scales);
}

/* Shared-microexponent blocks: k1 lanes per block where blocks are contiguous
 * power-of-two runs no longer than a warp, a thread per block otherwise. */
template <bool ST, bool BF16>
static void launch_bdr_t(const qk &k, const qlayout &l, const float *x, void *y, uint8_t *codes, uint8_t *scales) {
    bool rows = l.kind == QL_TILES && l.r == 1 && k.k1 <= 32 && (k.k1 & (k.k1 - 1)) == 0 && (k.k2 & (k.k2 - 1)) == 0;
    int grid = cu_grid(l.nblocks * k.k1, 256);
    if (!rows) k_bdr<ST, BF16><<<cu_grid(l.nblocks, 256), 256>>>(k, l, x, y, codes, scales, g_rec);
    else if (k.mode == QK_EVEN_FAST || k.mode == QK_EVEN_INT)
        k_bdr_rows<QK_EVEN_FAST, ST, BF16><<<grid, 256>>>(k, l, x, y, codes, scales, g_rec);
    else if (k.mode == QK_AWAY) k_bdr_rows<QK_AWAY, ST, BF16><<<grid, 256>>>(k, l, x, y, codes, scales, g_rec);
    else if (k.mode == QK_FLOOR) k_bdr_rows<QK_FLOOR, ST, BF16><<<grid, 256>>>(k, l, x, y, codes, scales, g_rec);
    else k_bdr_rows<QK_STOCH, ST, BF16><<<grid, 256>>>(k, l, x, y, codes, scales, g_rec);
    CU_CHECK_LAUNCH();
}

static void launch_bdr(bool st, bool bf16, const qk &k, const qlayout &l, const float *x, void *y, uint8_t *codes,
                       uint8_t *scales) {
    if (st && bf16) launch_bdr_t<true, true>(k, l, x, y, codes, scales);
    else if (st) launch_bdr_t<true, false>(k, l, x, y, codes, scales);
    else if (bf16) launch_bdr_t<false, true>(k, l, x, y, codes, scales);
    else launch_bdr_t<false, false>(k, l, x, y, codes, scales);
}

/* Runs one quantization; returns the bf16-inexact count (OUT_FAKE_BF16). */
static int64_t cu_quant_run(const quant_spec *s, const float *x, void *y, uint8_t *codes, int ndim,
                            const int64_t *shape, uint8_t *scales, quant_stats *stats, int out, bool deferred = false) {
    qlayout l;
    mx_err err;
    MX_ASSERTF(ql_make(s, ndim, shape, &l, &err) == 0, "quantize: %s", err.msg);
    if (stats) quant_stats_clear(stats);
    if (l.numel == 0) return 0;
    cu_quant_setup();
    /* the device record is read back (a synchronization) only when asked for */
    bool readback = stats || (out == OUT_FAKE_BF16 && !deferred);
    g_rec = deferred ? g_deferred : g_stats;
    if (readback) CU_CHECK(cudaMemsetAsync(g_stats, 0, sizeof(cu_stats)));
    if (l.kind == QL_ELEMENTWISE) {
        MX_ASSERTF(out == OUT_FAKE || out == OUT_FAKE_BF16, "format %s has no packed form",
                   quant_format_get(s->format)->name);
        bool bf16 = s->format == QUANT_FORMAT_BF16, yb = out == OUT_FAKE_BF16;
        bool vec = (uintptr_t)x % 16 == 0 && (uintptr_t)y % 16 == 0;
        int grid = cu_grid(vec ? l.numel / 4 + 1 : l.numel, 256);
        if (stats)
            k_elementwise<true><<<grid, 256>>>(s->round, bf16, s->seed, s->stream, s->offset, l.numel, x, y, yb, vec,
                                               g_rec);
        else
            k_elementwise<false><<<grid, 256>>>(s->round, bf16, s->seed, s->stream, s->offset, l.numel, x, y, yb,
                                                vec, g_rec);
        CU_CHECK_LAUNCH();
    } else {
        qk k = qk_make(s, false);
        bool st = stats != NULL;
        if (k.k1) { /* shared microexponents */
            launch_bdr(st, out == OUT_FAKE_BF16, k, l, x, out == OUT_PACK ? NULL : y, codes, scales);
        } else {
            switch (out) {
            case OUT_FAKE: launch_out<OUT_FAKE>(st, k, l, x, y, NULL, scales); break;
            case OUT_PACK: launch_out<OUT_PACK>(st, k, l, x, NULL, codes, scales); break;
            case OUT_PACK_FAKE: launch_out<OUT_PACK_FAKE>(st, k, l, x, y, codes, scales); break;
            default: launch_out<OUT_FAKE_BF16>(st, k, l, x, y, NULL, scales); break;
            }
        }
    }
    if (!readback) return 0;
    cu_stats h;
    CU_CHECK(cudaMemcpy(&h, g_stats, sizeof h, cudaMemcpyDeviceToHost));
    if (stats) {
        stats->elements = l.numel;
        stats->nonzero = (int64_t)h.nonzero;
        stats->underflow = (int64_t)h.underflow;
        stats->saturated = (int64_t)h.saturated;
        stats->sum_x2 = h.sum_x2;
        stats->sum_err2 = h.sum_err2;
        for (int i = 0; i < QUANT_GAP_BINS; i++) stats->gap_hist[i] = (int64_t)h.gap[i];
    }
    return (int64_t)h.inexact;
}

extern "C" {

void cu_quant_fake(const quant_spec *s, const float *d_x, float *d_y, int ndim, const int64_t *shape,
                   uint8_t *d_scales, quant_stats *stats) {
    cu_quant_run(s, d_x, d_y, NULL, ndim, shape, d_scales, stats, OUT_FAKE);
}

void cu_quant_pack(const quant_spec *s, const float *d_x, uint8_t *d_codes, int ndim, const int64_t *shape,
                   uint8_t *d_scales, quant_stats *stats) {
    MX_ASSERT(d_codes && d_scales && quant_format_get(s->format)->is_mx);
    cu_quant_run(s, d_x, NULL, d_codes, ndim, shape, d_scales, stats, OUT_PACK);
}

void cu_quant_pack_fake(const quant_spec *s, const float *d_x, uint8_t *d_codes, float *d_y, int ndim,
                        const int64_t *shape, uint8_t *d_scales, quant_stats *stats) {
    MX_ASSERT(d_codes && d_y && d_scales && quant_format_get(s->format)->is_mx);
    cu_quant_run(s, d_x, d_y, d_codes, ndim, shape, d_scales, stats, OUT_PACK_FAKE);
}

int64_t cu_quant_fake_bf16(const quant_spec *s, const float *d_x, uint16_t *d_y, int ndim, const int64_t *shape,
                           uint8_t *d_scales, quant_stats *stats) {
    return cu_quant_run(s, d_x, d_y, NULL, ndim, shape, d_scales, stats, OUT_FAKE_BF16);
}

void cu_quant_fake_bf16_deferred(const quant_spec *s, const float *d_x, uint16_t *d_y, int ndim, const int64_t *shape,
                                 uint8_t *d_scales) {
    cu_quant_run(s, d_x, d_y, NULL, ndim, shape, d_scales, NULL, OUT_FAKE_BF16, true);
}

int64_t cu_quant_inexact_take(void) {
    cu_quant_setup();
    cu_stats h;
    CU_CHECK(cudaMemcpy(&h, g_deferred, sizeof h, cudaMemcpyDeviceToHost));
    CU_CHECK(cudaMemsetAsync(g_deferred, 0, sizeof(cu_stats)));
    return (int64_t)h.inexact;
}

void cu_quant_unpack(const quant_spec *s, const uint8_t *d_codes, const uint8_t *d_scales, float *d_y, int ndim,
                     const int64_t *shape) {
    qlayout l;
    mx_err err;
    MX_ASSERTF(ql_make(s, ndim, shape, &l, &err) == 0, "unpack: %s", err.msg);
    MX_ASSERT(l.kind != QL_ELEMENTWISE);
    if (l.numel == 0) return;
    cu_quant_setup();
    if (quant_format_is_bdr(s->format)) {
        k_unpack_bdr<<<cu_grid(l.nblocks, 256), 256>>>(qk_make(s, false), l, d_codes, d_scales, d_y);
    } else if (l.kind == QL_TILES) {
        tiles_args a = {l.lead, l.R, l.C, l.ntr, l.ntc, l.nblocks, l.r, l.c, 1, 1};
        k_unpack_tiles<<<cu_grid(l.lead * l.R * 256, 256), 256>>>((int)s->format, a, d_codes, d_scales, d_y);
    } else {
        cols_args a = {l.outer, l.L, l.inner, l.nb, l.k};
        k_unpack_columns<<<cu_grid(l.outer * l.L * 256, 256), 256>>>((int)s->format, a, d_codes, d_scales, d_y);
    }
    CU_CHECK_LAUNCH();
}

/* ---------------- benchmark ---------------- */

static double cu_median_ms(float *t, int n) {
    double *d = (double *)malloc(sizeof(double) * (size_t)n);
    if (!d) mx_fatal(__FILE__, __LINE__, "out of memory");
    for (int i = 0; i < n; i++) d[i] = t[i];
    double m = timer_median(d, n);
    free(d);
    return m;
}

int cu_quant_bench(const quant_format *formats, int nformats, int64_t n, int reps) {
    mx_err err;
    if (cu_init(&err)) {
        fprintf(stderr, "mxtrain bench quantize: %s\n", err.msg);
        return 1;
    }
    /* the CPU bench's data: Gaussian values with a spread of block magnitudes */
    float *h = (float *)malloc(sizeof(float) * (size_t)n);
    if (!h) mx_fatal(__FILE__, __LINE__, "out of memory");
    rng r;
    rng_init(&r, 1234, 0);
    for (int64_t i = 0; i < n; i++) h[i] = rng_normal(&r) * (float)(1 << ((i >> 5) % 16));
    float *x = (float *)cu_malloc(sizeof(float) * (size_t)n), *y = (float *)cu_malloc(sizeof(float) * (size_t)n);
    uint8_t *codes = (uint8_t *)cu_malloc((size_t)n * 2) /* BDR: + microexponents */, *scales = (uint8_t *)cu_malloc((size_t)n / 4 + 64);
    uint16_t *yb = (uint16_t *)cu_malloc(sizeof(uint16_t) * (size_t)n);
    cu_to_device(x, h, sizeof(float) * (size_t)n);
    free(h);
    float *tc = (float *)malloc(sizeof(float) * (size_t)reps * 4);
    if (!tc) mx_fatal(__FILE__, __LINE__, "out of memory");
    float *tf = tc + reps, *tp = tf + reps, *tb = tp + reps;
    cudaEvent_t ev[5];
    for (int i = 0; i < 5; i++) CU_CHECK(cudaEventCreate(&ev[i]));
    int dev;
    cudaDeviceProp prop;
    CU_CHECK(cudaGetDevice(&dev));
    CU_CHECK(cudaGetDeviceProperties(&prop, dev));
    int64_t shape[1] = {n};
    for (int f = 0; f < nformats; f++) {
        quant_spec s = quant_spec_default(formats[f]);
        bool mx = quant_format_get(formats[f])->is_mx;
        /* warm-up */
        CU_CHECK(cudaMemcpyAsync(y, x, sizeof(float) * (size_t)n, cudaMemcpyDeviceToDevice));
        cu_quant_fake(&s, x, y, 1, shape, mx ? scales : NULL, NULL);
        if (mx) cu_quant_pack(&s, x, codes, 1, shape, scales, NULL);
        for (int i = 0; i < reps; i++) {
            CU_CHECK(cudaEventRecord(ev[0]));
            CU_CHECK(cudaMemcpyAsync(y, x, sizeof(float) * (size_t)n, cudaMemcpyDeviceToDevice));
            CU_CHECK(cudaEventRecord(ev[1]));
            cu_quant_fake(&s, x, y, 1, shape, mx ? scales : NULL, NULL);
            CU_CHECK(cudaEventRecord(ev[2]));
            if (mx) cu_quant_pack(&s, x, codes, 1, shape, scales, NULL);
            CU_CHECK(cudaEventRecord(ev[3]));
            cu_quant_fake_bf16(&s, x, yb, 1, shape, mx ? scales : NULL, NULL);
            CU_CHECK(cudaEventRecord(ev[4]));
            CU_CHECK(cudaEventSynchronize(ev[4]));
            CU_CHECK(cudaEventElapsedTime(&tc[i], ev[0], ev[1]));
            CU_CHECK(cudaEventElapsedTime(&tf[i], ev[1], ev[2]));
            CU_CHECK(cudaEventElapsedTime(&tp[i], ev[2], ev[3]));
            CU_CHECK(cudaEventElapsedTime(&tb[i], ev[3], ev[4]));
        }
        double copy = 8.0 * (double)n / (cu_median_ms(tc, reps) * 1e-3) / 1e9;
        double fake = 8.0 * (double)n / (cu_median_ms(tf, reps) * 1e-3) / 1e9;
        double pack = mx ? (5.0 + 1.0 / 32) * (double)n / (cu_median_ms(tp, reps) * 1e-3) / 1e9 : 0.0;
        double bf = 6.0 * (double)n / (cu_median_ms(tb, reps) * 1e-3) / 1e9;
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "bench", "quantize");
        cJSON_AddStringToObject(j, "device", "cuda");
        cJSON_AddStringToObject(j, "gpu", prop.name);
        cJSON_AddStringToObject(j, "format", quant_format_get(formats[f])->name);
        cJSON_AddNumberToObject(j, "n", (double)n);
        cJSON_AddNumberToObject(j, "reps", reps);
        mx_json_number(j, "fake_gbps", fake, 1);
        mx_json_number(j, "pack_gbps", pack, 1);
        mx_json_number(j, "fake_bf16_gbps", bf, 1);
        mx_json_number(j, "copy_gbps", copy, 1);
        mx_json_number(j, "fake_vs_copy", fake / copy, 3);
        mx_json_number(j, "pack_vs_copy", mx ? pack / copy : 0.0, 3);
        mx_json_number(j, "fake_bf16_vs_copy", bf / copy, 3);
        mx_json_print(j);
    }
    for (int i = 0; i < 5; i++) CU_CHECK(cudaEventDestroy(ev[i]));
    free(tc);
    cu_free(x);
    cu_free(y);
    cu_free(codes);
    cu_free(scales);
    cu_free(yb);
    return 0;
}

}  // extern "C"
