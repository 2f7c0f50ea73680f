/* core/: tensor, arena, RNG, threads, GEMM, npy. */
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/arena.h"
#include "core/fastmath.h"
#include "core/gemm.h"
#include "core/npy.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "core/tensor.h"
#include "core/threads.h"
#include "test_util.h"

/* ---- tensor ---- */

START_TEST(test_tensor_views) {
    float buf[2 * 3 * 4 * 5];
    tensor t = tensor_view4(buf, 2, 3, 4, 5);
    ck_assert_int_eq(t.ndim, 4);
    ck_assert_int_eq(tensor_numel(&t), 120);
    int64_t s2[2] = {6, 20};
    tensor r = tensor_reshape(&t, 2, s2);
    ck_assert_int_eq(r.shape[0], 6);
    ck_assert_ptr_eq(r.data, buf);
    ck_assert(!tensor_same_shape(&r, &t));
}
END_TEST

START_TEST(test_tensor_new_aligned) {
    int64_t s[3] = {3, 5, 7};
    tensor t = tensor_new(3, s);
    ck_assert_int_eq((uintptr_t)t.data % 64, 0);
    for (int i = 0; i < 105; i++) ck_assert_float_eq(t.data[i], 0.0f);
    tensor_free(&t);
}
END_TEST

/* ---- arena ---- */

START_TEST(test_arena_alignment_and_reuse) {
    arena a;
    arena_init(&a, 1024);
    void *p1 = arena_alloc(&a, 10);
    void *p2 = arena_alloc(&a, 100);
    ck_assert_int_eq((uintptr_t)p1 % 64, 0);
    ck_assert_int_eq((uintptr_t)p2 % 64, 0);
    ck_assert_ptr_ne(p1, p2);
    arena_reset(&a);
    ck_assert_ptr_eq(arena_alloc(&a, 10), p1); /* same storage after reset */
    arena_free(&a);
}
END_TEST

START_TEST(test_arena_steady_state_no_malloc) {
    arena a;
    arena_init(&a, 256);
    /* A "step" that needs more than the initial block: grows once, then never. */
    for (int step = 0; step < 5; step++) {
        for (int i = 0; i < 20; i++) {
            char *p = arena_alloc(&a, 1000);
            memset(p, i, 1000);
        }
        arena_reset(&a);
        if (step == 0) ck_assert_int_ge(a.grow_count, 2);
    }
    size_t grows = a.grow_count;
    for (int step = 0; step < 3; step++) {
        for (int i = 0; i < 20; i++) arena_alloc(&a, 1000);
        arena_reset(&a);
    }
    ck_assert_uint_eq(a.grow_count, grows);
    ck_assert_uint_ge(a.cap, 20 * 1024);
    arena_free(&a);
}
END_TEST

START_TEST(test_arena_mark_release) {
    arena a;
    arena_init(&a, 4096);
    arena_alloc(&a, 100);
    arena_mark m = arena_get_mark(&a);
    void *p = arena_alloc(&a, 200);
    arena_alloc(&a, 100000); /* overflow block */
    arena_release(&a, m);
    ck_assert_ptr_eq(arena_alloc(&a, 200), p);
    arena_reset(&a);
    ck_assert_uint_ge(a.cap, 100000); /* peak survived the release */
    arena_free(&a);
}
END_TEST

/* ---- RNG ---- */

START_TEST(test_rng_philox_known_answer) {
    /* Random123's published known-answer vectors for philox4x32_10. */
    uint32_t w[4];
    rng_philox4x32(0, 0, 0, w);
    ck_assert_uint_eq(w[0], 0x6627e8d5u);
    ck_assert_uint_eq(w[1], 0xe169c58du);
    ck_assert_uint_eq(w[2], 0xbc57ac4cu);
    ck_assert_uint_eq(w[3], 0x9b00dbd8u);
    /* counter all ones, key all ones */
    rng_philox4x32(UINT64_MAX, UINT64_MAX, UINT64_MAX, w);
    ck_assert_uint_eq(w[0], 0x408f276du);
    ck_assert_uint_eq(w[1], 0x41c83b0eu);
    ck_assert_uint_eq(w[2], 0xa20bc7c6u);
    ck_assert_uint_eq(w[3], 0x6d5451fdu);
}
END_TEST

START_TEST(test_rng_reproducible_and_independent) {
    rng a, b, c;
    rng_init(&a, 42, 7);
    rng_init(&b, 42, 7);
    rng_init(&c, 42, 8);
    int same_c = 0;
    for (int i = 0; i < 1000; i++) {
        uint32_t x = rng_next_u32(&a), y = rng_next_u32(&b), z = rng_next_u32(&c);
        ck_assert_uint_eq(x, y);
        same_c += x == z;
    }
    ck_assert_int_le(same_c, 2);
    /* random access equals sequential reading */
    rng_init(&a, 42, 7);
    for (uint64_t i = 0; i < 37; i++) ck_assert_uint_eq(rng_next_u32(&a), rng_u32_at(42, 7, i));
}
END_TEST

START_TEST(test_rng_uniform_moments) {
    rng r;
    rng_init(&r, 1, 0);
    double s = 0, s2 = 0, n = 200000;
    for (int i = 0; i < n; i++) {
        float u = rng_uniform(&r);
        ck_assert(u >= 0.0f && u < 1.0f);
        s += u;
        s2 += (double)u * u;
    }
    ck_assert(fabs(s / n - 0.5) < 0.005);
    ck_assert(fabs(s2 / n - 1.0 / 3) < 0.005);
    double g = 0, g2 = 0;
    for (int i = 0; i < n; i++) {
        double x = rng_normal(&r);
        g += x;
        g2 += x * x;
    }
    ck_assert(fabs(g / n) < 0.01);
    ck_assert(fabs(g2 / n - 1) < 0.02);
    int hist[7] = {0};
    for (int i = 0; i < 70000; i++) hist[rng_below(&r, 7)]++;
    for (int i = 0; i < 7; i++) ck_assert(hist[i] > 9400 && hist[i] < 10600);
}
END_TEST

/* ---- threads ---- */

START_TEST(test_threads_knob) {
    threads_set(1);
    ck_assert_int_eq(threads_get(), 1);
    threads_set(0);
    ck_assert_int_eq(threads_get(), threads_available());
}
END_TEST

/* ---- GEMM ---- */

/* gemm_bf16_f32 on bf16 values equals gemm_f32 up to the order of FP32 sums (the BF16 units, where this CPU has
 * them); a value bf16 cannot hold, or a bf16 subnormal, sends the call to gemm_f32: the same bits. */
static float bf16_of(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    u &= 0xffff0000u;
    memcpy(&v, &u, 4);
    return v;
}

START_TEST(test_gemm_bf16_engine) {
    fprintf(stderr, "  cpu bf16 engine: %s\n", gemm_bf16_engine());
    rng r;
    rng_init(&r, 5, 0);
    const int sizes[][3] = {{7, 5, 3}, {64, 48, 129}, {130, 64, 576}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (int t = 0; t < 4; t++)
            for (int beta = 0; beta < 2; beta++)
                for (int spoil = 0; spoil < 3; spoil++) { /* 0: exact; 1: a value bf16 cannot hold; 2: a subnormal */
                    int m = sizes[s][0], n = sizes[s][1], k = sizes[s][2], ta = t & 1, tb = t >> 1;
                    int lda = (ta ? m : k) + 1, ldb = (tb ? k : n) + 2;
                    size_t na = (size_t)lda * (ta ? k : m), nb = (size_t)ldb * (tb ? n : k);
                    float *a = malloc(sizeof(float) * na), *b = malloc(sizeof(float) * nb);
                    float *c1 = malloc(sizeof(float) * (size_t)(m * n)), *c2 = malloc(sizeof(float) * (size_t)(m * n));
                    for (size_t i = 0; i < na; i++) a[i] = bf16_of(rng_normal(&r));
                    for (size_t i = 0; i < nb; i++) b[i] = bf16_of(rng_normal(&r));
                    if (spoil == 1) a[0] = 1.0f + 1.0f / 4096;
                    if (spoil == 2) b[0] = 1e-39f;
                    for (int i = 0; i < m * n; i++) c1[i] = c2[i] = beta ? rng_normal(&r) : 0.0f;
                    gemm_bf16_f32(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, (float)beta, c1, n);
                    gemm_f32(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, (float)beta, c2, n);
                    double big = 0;
                    for (int i = 0; i < m * n; i++) big = fmax(big, fabs(c2[i]));
                    for (int i = 0; i < m * n; i++) {
                        if (spoil) ck_assert_msg(c1[i] == c2[i], "fallback m%d n%d k%d: %g vs %g", m, n, k, c1[i], c2[i]);
                        else ck_assert_msg(fabs(c1[i] - c2[i]) <= 1e-5 * big, "m%d n%d k%d ta%d tb%d beta%d: %g vs %g", m,
                                           n, k, ta, tb, beta, c1[i], c2[i]);
                    }
                    free(a), free(b), free(c1), free(c2);
                }
}
END_TEST

/* train.cpu_gemm = onednn: oneDNN's f32 matmul on strided operands equals
 * sgemm up to the order of sums, for every transpose and both betas; calls it
 * is not given (alpha != 1, ldc != n) run sgemm itself. */
START_TEST(test_gemm_dnnl_f32_engine) {
    fprintf(stderr, "  cpu f32 engine (onednn): %s\n", gemm_dnnl_f32_engine());
    rng r;
    rng_init(&r, 6, 0);
    const int sizes[][3] = {{7, 5, 3}, {64, 48, 129}, {130, 64, 576}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (int t = 0; t < 4; t++)
            for (int beta = 0; beta < 2; beta++)
                for (int alpha2 = 0; alpha2 < 2; alpha2++) {
                    int m = sizes[s][0], n = sizes[s][1], k = sizes[s][2], ta = t & 1, tb = t >> 1;
                    int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1;
                    size_t na = (size_t)lda * (ta ? k : m), nb = (size_t)ldb * (tb ? n : k);
                    float *a = malloc(sizeof(float) * na), *b = malloc(sizeof(float) * nb);
                    float *c1 = malloc(sizeof(float) * (size_t)(m * n)), *c2 = malloc(sizeof(float) * (size_t)(m * n));
                    for (size_t i = 0; i < na; i++) a[i] = rng_normal(&r);
                    for (size_t i = 0; i < nb; i++) b[i] = rng_normal(&r);
                    for (int i = 0; i < m * n; i++) c1[i] = c2[i] = beta ? rng_normal(&r) : 0.0f;
                    float alpha = alpha2 ? 2.0f : 1.0f;
                    gemm_dnnl_f32(ta, tb, m, n, k, alpha, a, lda, b, ldb, (float)beta, c1, n);
                    gemm_f32(ta, tb, m, n, k, alpha, a, lda, b, ldb, (float)beta, c2, n);
                    double big = 0;
                    for (int i = 0; i < m * n; i++) big = fmax(big, fabs(c2[i]));
                    for (int i = 0; i < m * n; i++) {
                        if (alpha2) ck_assert_msg(c1[i] == c2[i], "sgemm fallback m%d n%d k%d", m, n, k);
                        else ck_assert_msg(fabs(c1[i] - c2[i]) <= 1e-5 * big, "m%d n%d k%d ta%d tb%d beta%d: %g vs %g",
                                           m, n, k, ta, tb, beta, c1[i], c2[i]);
                    }
                    free(a), free(b), free(c1), free(c2);
                }
}
END_TEST


/* The batched forms (one oneDNN matmul over every product of a batch) equal
 * gemm_f32 product by product up to the order of sums: compact batches, a B
 * shared by every product (stride 0), and products accumulating into one C
 * (stride 0: they must run one after another, as gemm_f32 does); bf16 and
 * f32 engines, every transpose, both betas. */
START_TEST(test_gemm_batched) {
    rng r;
    rng_init(&r, 8, 0);
    enum { COUNT = 5 };
    const int sizes[][3] = {{65, 65, 64}, {65, 64, 65}, {7, 5, 3}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (int t = 0; t < 4; t++)
            for (int beta = 0; beta < 2; beta++)
                for (int kind = 0; kind < 3; kind++) /* 0 compact, 1 shared B, 2 one C for all */
                    for (int bf = 0; bf < 2; bf++) {
                        int m = sizes[s][0], n = sizes[s][1], k = sizes[s][2], ta = t & 1, tb = t >> 1;
                        int lda = ta ? m : k, ldb = tb ? k : n;
                        int64_t sa = (int64_t)m * k, sb = kind == 1 ? 0 : (int64_t)k * n, sc = kind == 2 ? 0 : (int64_t)m * n;
                        size_t na = (size_t)(sa * COUNT), nb = (size_t)(kind == 1 ? k * n : sb * COUNT),
                               nc = (size_t)(kind == 2 ? m * n : sc * COUNT);
                        float *a = malloc(sizeof(float) * na), *b = malloc(sizeof(float) * nb);
                        float *c1 = malloc(sizeof(float) * nc), *c2 = malloc(sizeof(float) * nc);
                        for (size_t i = 0; i < na; i++) a[i] = bf16_of(rng_normal(&r));
                        for (size_t i = 0; i < nb; i++) b[i] = bf16_of(rng_normal(&r));
                        for (size_t i = 0; i < nc; i++) c1[i] = c2[i] = beta ? rng_normal(&r) : 0.0f;
                        gemm_batch bt = {COUNT, sa, sb, sc};
                        (bf ? gemm_bf16_f32_batched : gemm_dnnl_f32_batched)(&bt, ta, tb, m, n, k, 1.0f, a, lda, b, ldb,
                                                                             (float)beta, c1, n);
                        gemm_f32_batched(&bt, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, (float)beta, c2, n);
                        double big = 0;
                        for (size_t i = 0; i < nc; i++) big = fmax(big, fabs(c2[i]));
                        for (size_t i = 0; i < nc; i++)
                            ck_assert_msg(fabs(c1[i] - c2[i]) <= 1e-5 * big,
                                          "%s batch m%d n%d k%d ta%d tb%d beta%d kind %d: [%zu] %g vs %g",
                                          bf ? "bf16" : "f32", m, n, k, ta, tb, beta, kind, i, c1[i], c2[i]);
                        free(a), free(b), free(c1), free(c2);
                    }
}
END_TEST


/* oneDNN's direct convolutions (train.cpu_conv = auto) against a naive
 * double-precision convolution: forward, dX and dW (the last two add to what
 * their output holds), 3x3 stride 1 and 2, 1x1 stride 2, 7x7 stride 2 pad 3
 * on odd sizes; the same products up to FP32 summation order. */
static double conv_ref_at(const gemm_conv_shape *c, const float *x, const float *w, int ni, int oy, int ox, int o) {
    double s = 0;
    for (int i = 0; i < c->kh; i++)
        for (int j = 0; j < c->kw; j++) {
            int y = oy * c->stride - c->pad + i, xx = ox * c->stride - c->pad + j;
            if (y < 0 || y >= c->h || xx < 0 || xx >= c->w) continue;
            for (int ch = 0; ch < c->c; ch++)
                s += (double)x[((ni * c->h + y) * c->w + xx) * c->c + ch] * w[((o * c->kh + i) * c->kw + j) * c->c + ch];
        }
    return s;
}

/* One direction through the engine under test: bf16 converts the (bf16-valued) operands first. */
static bool conv_engine(bool bf16, gemm_conv_dir dir, const gemm_conv_shape *c, const float *x, const float *w,
                        const float *dy, size_t nx, size_t nw, size_t ny, float *out, float *tmp) {
    if (!bf16) return gemm_conv_dnnl_f32(dir, c, x, w, dy, out, tmp);
    uint16_t *x16 = malloc(2 * nx), *w16 = malloc(2 * nw), *dy16 = malloc(2 * ny);
    ck_assert(gemm_bf16_convert(x, (int64_t)nx, x16) && gemm_bf16_convert(w, (int64_t)nw, w16) &&
              gemm_bf16_convert(dy, (int64_t)ny, dy16));
    bool done = gemm_conv_dnnl_bf16(dir, c, x16, w16, dy16, out, tmp);
    free(x16), free(w16), free(dy16);
    return done;
}

/* _i == 0: the FP32 kernels; 1: the bf16 ones on bf16 values (every input rounded to bf16 first) */
START_TEST(test_conv_dnnl) {
    int bf = _i;
    const gemm_conv_shape shapes[] = {{2, 7, 9, 16, 8, 3, 3, 1, 1}, {2, 9, 7, 8, 16, 3, 3, 2, 1},
                                      {3, 8, 8, 16, 32, 1, 1, 2, 0}, {2, 15, 13, 3, 16, 7, 7, 2, 3}};
    bool engine = strncmp(gemm_dnnl_f32_engine(), "none", 4) != 0;
    int ran = 0;
    rng r;
    rng_init(&r, 9, 0);
    for (size_t q = 0; q < sizeof shapes / sizeof shapes[0]; q++) {
        const gemm_conv_shape *c = &shapes[q];
        int oh = (c->h + 2 * c->pad - c->kh) / c->stride + 1, ow = (c->w + 2 * c->pad - c->kw) / c->stride + 1;
        size_t nx = (size_t)c->n * c->h * c->w * c->c, nw = (size_t)c->o * c->kh * c->kw * c->c,
               ny = (size_t)c->n * oh * ow * c->o;
        float *x = malloc(sizeof(float) * nx), *w = malloc(sizeof(float) * nw), *dy = malloc(sizeof(float) * ny);
        float *y = malloc(sizeof(float) * ny), *dx = malloc(sizeof(float) * nx), *dw = malloc(sizeof(float) * nw);
        float *dx0 = malloc(sizeof(float) * nx), *dw0 = malloc(sizeof(float) * nw), *tmp = malloc(sizeof(float) * nx);
        for (size_t i = 0; i < nx; i++) x[i] = rng_normal(&r), dx0[i] = dx[i] = rng_normal(&r);
        for (size_t i = 0; i < nw; i++) w[i] = rng_normal(&r), dw0[i] = dw[i] = rng_normal(&r);
        for (size_t i = 0; i < ny; i++) dy[i] = rng_normal(&r);
        if (bf) {
            for (size_t i = 0; i < nx; i++) x[i] = bf16_of(x[i]);
            for (size_t i = 0; i < nw; i++) w[i] = bf16_of(w[i]);
            for (size_t i = 0; i < ny; i++) dy[i] = bf16_of(dy[i]);
        }
        bool f = conv_engine(bf, GEMM_CONV_FWD, c, x, w, dy, nx, nw, ny, y, NULL);
        bool d = conv_engine(bf, GEMM_CONV_DX, c, x, w, dy, nx, nw, ny, dx, tmp);
        bool g = conv_engine(bf, GEMM_CONV_DW, c, x, w, dy, nx, nw, ny, dw, NULL);
        ck_assert_msg(f == d && d == g, "shape %zu: oneDNN ran some directions only", q);
        if (!f) {
            fprintf(stderr, "  conv shape %zu: oneDNN has no fast kernels here (im2col runs it)\n", q);
            goto next;
        }
        ran++;
        double tol = 1e-4 * sqrt((double)c->c * c->kh * c->kw);
        for (int ni = 0; ni < c->n; ni++)
            for (int oy = 0; oy < oh; oy++)
                for (int ox = 0; ox < ow; ox++)
                    for (int o = 0; o < c->o; o++) {
                        size_t i = (((size_t)ni * oh + oy) * ow + ox) * c->o + o;
                        double want = conv_ref_at(c, x, w, ni, oy, ox, o);
                        ck_assert_msg(fabs(y[i] - want) <= tol, "shape %zu fwd [%zu]: %g vs %g", q, i, y[i], want);
                    }
        /* dX and dW from the definition: y_i = sum x w, so dx = sum dy w, dw = sum dy x */
        double *rdx = calloc(nx, sizeof(double)), *rdw = calloc(nw, sizeof(double));
        for (int ni = 0; ni < c->n; ni++)
            for (int oy = 0; oy < oh; oy++)
                for (int ox = 0; ox < ow; ox++)
                    for (int o = 0; o < c->o; o++) {
                        double gy = dy[(((size_t)ni * oh + oy) * ow + ox) * c->o + o];
                        for (int i = 0; i < c->kh; i++)
                            for (int j = 0; j < c->kw; j++) {
                                int yy = oy * c->stride - c->pad + i, xx = ox * c->stride - c->pad + j;
                                if (yy < 0 || yy >= c->h || xx < 0 || xx >= c->w) continue;
                                for (int ch = 0; ch < c->c; ch++) {
                                    size_t xi = (((size_t)ni * c->h + yy) * c->w + xx) * c->c + ch;
                                    size_t wi = (((size_t)o * c->kh + i) * c->kw + j) * c->c + ch;
                                    rdx[xi] += gy * w[wi];
                                    rdw[wi] += gy * x[xi];
                                }
                            }
                    }
        for (size_t i = 0; i < nx; i++)
            ck_assert_msg(fabs(dx[i] - (dx0[i] + rdx[i])) <= tol, "shape %zu dx [%zu]: %g vs %g", q, i, dx[i], dx0[i] + rdx[i]);
        for (size_t i = 0; i < nw; i++)
            ck_assert_msg(fabs(dw[i] - (dw0[i] + rdw[i])) <= tol * sqrt((double)c->n * oh * ow), "shape %zu dw [%zu]: %g vs %g",
                          q, i, dw[i], dw0[i] + rdw[i]);
        free(rdx), free(rdw);
    next:
        free(x), free(w), free(dy), free(y), free(dx), free(dw), free(dx0), free(dw0), free(tmp);
    }
    fprintf(stderr, "  oneDNN direct convolutions (%s): %d of 4 shapes ran and matched\n", bf ? "bf16" : "f32", ran);
    if (!bf && engine && strstr(gemm_dnnl_f32_engine(), "avx512")) ck_assert_int_eq(ran, 4);
    if (bf && gemm_bf16_available()) ck_assert_int_ge(ran, 3); /* 3 input channels may have no bf16 kernel */
}
END_TEST

START_TEST(test_gemm_matches_reference) {
    rng r;
    rng_init(&r, 3, 0);
    const int sizes[][3] = {{1, 1, 1}, {7, 5, 3}, {17, 33, 9}, {64, 31, 129}, {3, 100, 1}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                int m = sizes[s][0], n = sizes[s][1], k = sizes[s][2];
                int lda = (ta ? m : k) + 2, ldb = (tb ? k : n) + 1, ldc = n + 3;
                float *a = malloc(sizeof(float) * (size_t)lda * (ta ? k : m));
                float *b = malloc(sizeof(float) * (size_t)ldb * (tb ? n : k));
                float *c1 = malloc(sizeof(float) * (size_t)ldc * m), *c2 = malloc(sizeof(float) * (size_t)ldc * m);
                for (int i = 0; i < lda * (ta ? k : m); i++) a[i] = rng_normal(&r);
                for (int i = 0; i < ldb * (tb ? n : k); i++) b[i] = rng_normal(&r);
                for (int i = 0; i < ldc * m; i++) c1[i] = c2[i] = rng_normal(&r);
                gemm_f32(ta, tb, m, n, k, 0.5f, a, lda, b, ldb, 2.0f, c1, ldc);
                gemm_ref_f32(ta, tb, m, n, k, 0.5f, a, lda, b, ldb, 2.0f, c2, ldc);
                for (int i = 0; i < m; i++)
                    for (int j = 0; j < n; j++) {
                        float x = c1[i * ldc + j], y = c2[i * ldc + j];
                        ck_assert_msg(fabsf(x - y) <= 1e-4f * (1 + fabsf(y)), "m%d n%d k%d ta%d tb%d: %g vs %g", m, n,
                                      k, ta, tb, x, y);
                    }
                free(a);
                free(b);
                free(c1);
                free(c2);
            }
}
END_TEST

/* ---- npy ---- */

START_TEST(test_npy_roundtrip_all_dtypes_and_ranks) {
    const npy_dtype dts[] = {NPY_DTYPE_F32, NPY_DTYPE_U8, NPY_DTYPE_I32, NPY_DTYPE_I64};
    int64_t shapes[][5] = {{0}, {5}, {3, 4}, {2, 3, 4}, {2, 1, 3, 2, 2}};
    int ranks[] = {0, 1, 2, 3, 5};
    for (size_t d = 0; d < 4; d++)
        for (size_t s = 0; s < 5; s++) {
            npy_array a = npy_wrap(dts[d], ranks[s], shapes[s], NULL);
            size_t bytes = (size_t)a.numel * npy_dtype_size(dts[d]);
            unsigned char *buf = malloc(bytes + 1);
            for (size_t i = 0; i < bytes; i++) buf[i] = (unsigned char)(i * 37 + d);
            a.data = buf;
            mx_err err;
            const char *p = test_path("rt.npy");
            ck_assert_msg(npy_write(p, &a, &err) == 0, "%s", err.msg);
            npy_array b;
            ck_assert_msg(npy_read(p, &b, &err) == 0, "%s", err.msg);
            ck_assert_int_eq(b.dtype, dts[d]);
            ck_assert_int_eq(b.ndim, ranks[s]);
            for (int i = 0; i < ranks[s]; i++) ck_assert_int_eq(b.shape[i], shapes[s][i]);
            ck_assert_int_eq(memcmp(b.data, buf, bytes), 0);
            npy_free(&b);
            free(buf);
        }
}
END_TEST

/* Writes a v1.0 file with the given header dict and payload size. */
/* A raw .npy file with a given header and payload. */
static void npy_write_payload(const char *path, const char *dict, const void *payload, size_t n) {
    size_t dl = strlen(dict);
    size_t hlen = ((10 + dl + 1 + 63) & ~(size_t)63) - 10;
    unsigned char *buf = calloc(1, 10 + hlen + n);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (unsigned char)(hlen & 0xff);
    buf[9] = (unsigned char)(hlen >> 8);
    memset(buf + 10, ' ', hlen);
    memcpy(buf + 10, dict, dl);
    buf[10 + hlen - 1] = '\n';
    memcpy(buf + 10 + hlen, payload, n);
    test_write_file(path, buf, 10 + hlen + n);
    free(buf);
}

/* A raw .npy file with a given header and a zero payload of `payload` bytes. */
static void npy_write_raw(const char *path, const char *dict, size_t payload) {
    void *zeros = calloc(1, payload ? payload : 1);
    npy_write_payload(path, dict, zeros, payload);
    free(zeros);
}

static void expect_npy_error(const char *path, const char *needle) {
    npy_array a;
    mx_err err;
    ck_assert_int_ne(npy_read(path, &a, &err), 0);
    ck_assert_msg(strstr(err.msg, needle) != NULL, "message '%s' lacks '%s'", err.msg, needle);
    ck_assert_msg(strstr(err.msg, path) != NULL, "message '%s' does not name the file", err.msg);
    ck_assert_ptr_null(a.data);
}

START_TEST(test_npy_malformed_files) {
    const char *p = test_path("bad.npy");
    expect_npy_error(test_path("does-not-exist.npy"), "cannot open");
    test_write_file(p, "hello world, not numpy", 22);
    expect_npy_error(p, "bad magic");
    test_write_file(p, "\x93NUMPY", 6);
    expect_npy_error(p, "bad magic");
    test_write_file(p, "\x93NUMPY\x01\x00\x40", 9);
    expect_npy_error(p, "truncated header");
    test_write_file(p, "\x93NUMPY\x01\x00\x40\x00{'descr'", 17);
    expect_npy_error(p, "truncated header");
    test_write_file(p, "\x93NUMPY\x07\x00\x40\x00", 10);
    expect_npy_error(p, "unsupported .npy version");
    npy_write_raw(p, "{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", 16);
    expect_npy_error(p, "unsupported dtype");
    npy_write_raw(p, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 4); /* big-endian, truncated */
    expect_npy_error(p, "truncated data");
    npy_write_raw(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 20);
    expect_npy_error(p, "truncated data");
    npy_write_raw(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 28);
    expect_npy_error(p, "size mismatch");
    npy_write_raw(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }", 8);
    expect_npy_error(p, "malformed 'shape'");
    npy_write_raw(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999), }", 8);
    expect_npy_error(p, "too many elements");
    /* a zero dimension does not make huge others harmless: block counts multiply them */
    npy_write_raw(p, "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 1000000000000000000, 9223372036854775807), }", 0);
    expect_npy_error(p, "too many elements");
    npy_write_raw(p, "{'fortran_order': False, 'shape': (2,), }", 8);
    expect_npy_error(p, "no 'descr'");
    npy_write_raw(p, "{'descr': '<f4', 'shape': (2,), }", 8);
    expect_npy_error(p, "no 'fortran_order'");
}
END_TEST

/* What NumPy writes for np.save(W.T), big-endian arrays and float16: read as
 * the logical arrays NumPy sees (C order, native bytes, float32 values). */
START_TEST(test_npy_fortran_big_endian_float16) {
    const char *p = test_path("f.npy");
    mx_err err;
    npy_array a;
    /* W = [[1,2,3],[4,5,6]] (2x3); W.T (3x2) saved in Fortran order is W's bytes, row-major */
    float w[6] = {1, 2, 3, 4, 5, 6};
    npy_write_payload(p, "{'descr': '<f4', 'fortran_order': True, 'shape': (3, 2), }", w, sizeof w);
    ck_assert_msg(npy_read_f32(p, &a, &err) == 0, "%s", err.msg);
    float want_t[6] = {1, 4, 2, 5, 3, 6}; /* W.T in C order */
    ck_assert(a.ndim == 2 && a.shape[0] == 3 && a.shape[1] == 2 && memcmp(a.data, want_t, sizeof want_t) == 0);
    npy_free(&a);
    /* big-endian float32, float64 and int64 */
    uint8_t be4[8] = {0x3f, 0x80, 0, 0, 0xc0, 0x40, 0, 0}; /* 1.0, -3.0 */
    npy_write_payload(p, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", be4, 8);
    ck_assert_msg(npy_read_f32(p, &a, &err) == 0, "%s", err.msg);
    ck_assert(((float *)a.data)[0] == 1.0f && ((float *)a.data)[1] == -3.0f);
    npy_free(&a);
    uint8_t be8[8] = {0x40, 0x09, 0x21, 0xfb, 0x54, 0x44, 0x2d, 0x18}; /* pi */
    npy_write_payload(p, "{'descr': '>f8', 'fortran_order': False, 'shape': (1,), }", be8, 8);
    ck_assert_msg(npy_read_f32(p, &a, &err) == 0, "%s", err.msg);
    ck_assert(((float *)a.data)[0] == (float)3.14159265358979323846);
    npy_free(&a);
    uint8_t bi8[8] = {0, 0, 0, 0, 0, 0, 1, 2}; /* 258 */
    npy_write_payload(p, "{'descr': '>i8', 'fortran_order': False, 'shape': (1,), }", bi8, 8);
    ck_assert_msg(npy_read(p, &a, &err) == 0, "%s", err.msg);
    ck_assert(a.dtype == NPY_DTYPE_I64 && ((int64_t *)a.data)[0] == 258);
    npy_free(&a);
    /* float16, both byte orders: 1, the smallest subnormal, -Inf, 65504 */
    uint16_t h[4] = {0x3c00, 0x0001, 0xfc00, 0x7bff};
    npy_write_payload(p, "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 2), }", h, sizeof h);
    ck_assert_msg(npy_read_f32(p, &a, &err) == 0, "%s", err.msg);
    const float *v = a.data;
    ck_assert(v[0] == 1.0f && v[1] == ldexpf(1.0f, -24) && isinf(v[2]) && v[2] < 0 && v[3] == 65504.0f);
    npy_free(&a);
    uint8_t hb[4] = {0x3c, 0x00, 0xc0, 0x00}; /* 1, -2 */
    npy_write_payload(p, "{'descr': '>f2', 'fortran_order': True, 'shape': (1, 2), }", hb, 4);
    ck_assert_msg(npy_read_f32(p, &a, &err) == 0, "%s", err.msg);
    ck_assert(((float *)a.data)[0] == 1.0f && ((float *)a.data)[1] == -2.0f);
    npy_free(&a);
    /* an integer array is still not float data */
    npy_write_payload(p, "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }", bi8, 8);
    ck_assert_int_eq(npy_read_f32(p, &a, &err), -1);
    ck_assert_msg(strstr(err.msg, "expected float16, float32 or float64"), "%s", err.msg);
}
END_TEST

START_TEST(test_npy_truncation_sweep) {
    /* Every prefix of a valid file is rejected cleanly; no crash. */
    float data[12];
    for (int i = 0; i < 12; i++) data[i] = (float)i;
    int64_t shape[2] = {3, 4};
    npy_array a = npy_wrap(NPY_DTYPE_F32, 2, shape, data);
    const char *good = test_path("good.npy");
    mx_err err;
    ck_assert_int_eq(npy_write(good, &a, &err), 0);
    FILE *f = fopen(good, "rb");
    unsigned char buf[512];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    const char *p = test_path("prefix.npy");
    for (size_t len = 0; len < n; len++) {
        test_write_file(p, buf, len);
        npy_array b;
        ck_assert_int_ne(npy_read(p, &b, &err), 0);
    }
}
END_TEST

START_TEST(test_npy_float64_converts) {
    double d[3] = {1.5, -2.25, 1e-3};
    int64_t shape[1] = {3};
    const char *p = test_path("f64.npy");
    /* write float64 by hand (npy_write does not emit f8) */
    npy_write_raw(p, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", 0);
    FILE *f = fopen(p, "ab");
    fwrite(d, sizeof d[0], 3, f);
    fclose(f);
    npy_array a;
    mx_err err;
    ck_assert_msg(npy_read_f32(p, &a, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(a.dtype, NPY_DTYPE_F32);
    ck_assert_int_eq(a.shape[0], shape[0]);
    const float *x = a.data;
    ck_assert_float_eq(x[0], 1.5f);
    ck_assert_float_eq(x[1], -2.25f);
    ck_assert_float_eq(x[2], (float)1e-3);
    npy_free(&a);
    /* uint8 is not silently converted */
    unsigned char u[2] = {1, 2};
    int64_t s2[1] = {2};
    npy_array ua = npy_wrap(NPY_DTYPE_U8, 1, s2, u);
    ck_assert_int_eq(npy_write(p, &ua, &err), 0);
    ck_assert_int_ne(npy_read_f32(p, &a, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "expected float16, float32 or float64"));
}
END_TEST

/* The vectorizable exp/erfc/tanh against double-precision libm over their
 * ranges (GELU, softmax and attention use them). */
START_TEST(test_fastmath_accuracy) {
    double worst_exp = 0, worst_erfc = 0, worst_tanh = 0;
    for (int i = 0; i <= 200000; i++) {
        float x = -87.0f + 175.0f * (float)i / 200000.0f;
        double e = exp((double)x);
        worst_exp = fmax(worst_exp, fabs(mx_expf(x) - e) / e);
        float z = 9.0f * (float)i / 200000.0f;
        double c = erfc((double)z);
        worst_erfc = fmax(worst_erfc, fabs(mx_erfcf_pos(z) - c) / c);
        float u = -12.0f + 24.0f * (float)i / 200000.0f;
        worst_tanh = fmax(worst_tanh, fabs(mx_tanhf(u) - tanh((double)u)));
    }
    ck_assert_msg(worst_exp < 3e-7, "exp relative error %g", worst_exp);
    ck_assert_msg(worst_erfc < 5e-7, "erfc relative error %g", worst_erfc);
    ck_assert_msg(worst_tanh < 3e-7, "tanh absolute error %g", worst_tanh);
    ck_assert_float_eq(mx_expf(-100.0f), 0.0f);
    ck_assert_float_eq(mx_expf(0.0f), 1.0f);
    ck_assert(mx_expf(-87.0f) > 0.0f);
}
END_TEST


/* ---- safetensors ---- */

/* A file as Python's safetensors lays it out: u64 header length, the JSON
 * header padded with spaces to 8 bytes, the data. */
static const char *st_file_of(const char *name, const char *json, const void *data, size_t n, long header_len) {
    const char *p = test_path(name);
    size_t jl = strlen(json), padded = (jl + 7) / 8 * 8;
    size_t total = 8 + padded + n;
    uint8_t *buf = calloc(1, total);
    uint64_t h = header_len >= 0 ? (uint64_t)header_len : (uint64_t)padded;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(h >> (8 * i));
    memcpy(buf + 8, json, jl);
    memset(buf + 8 + jl, ' ', padded - jl);
    if (n) memcpy(buf + 8 + padded, data, n);
    test_write_file(p, buf, total);
    free(buf);
    return p;
}

START_TEST(test_safetensors_reader) {
    /* every readable dtype, the metadata block, a scalar */
    uint8_t data[16 + 6 + 4 + 8];
    float a[4] = {1.5f, -2.0f, 0.0f, 3.25f};
    uint16_t h[3] = {0x3c00, 0x0001, 0xfc00}, b[2] = {0x3f80, 0xc000};
    int64_t c = 7;
    memcpy(data, a, 16);
    memcpy(data + 16, h, 6);
    memcpy(data + 22, b, 4);
    memcpy(data + 26, &c, 8);
    const char *ok = "{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                     "\"h\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[16,22]},"
                     "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[22,26]},"
                     "\"n\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[26,34]}}";
    st_file f;
    mx_err err;
    ck_assert_msg(st_open(st_file_of("ok.safetensors", ok, data, sizeof data, -1), &f, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(f.n, 4);
    float v[4];
    int i = st_find(&f, "a");
    ck_assert_int_eq(f.t[i].ndim, 2);
    st_read_f32(&f, i, v);
    ck_assert(memcmp(v, a, 16) == 0);
    st_read_f32(&f, st_find(&f, "h"), v);
    ck_assert(v[0] == 1.0f && v[1] == ldexpf(1.0f, -24) && isinf(v[2]) && v[2] < 0);
    st_read_f32(&f, st_find(&f, "b"), v);
    ck_assert(v[0] == 1.0f && v[1] == -2.0f);
    i = st_find(&f, "n");
    ck_assert_int_eq(f.t[i].ndim, 0);
    st_read_f32(&f, i, v);
    ck_assert(v[0] == 7.0f);
    ck_assert_int_eq(st_find(&f, "__metadata__"), -1);
    st_close(&f);
    /* the writer's files read back */
    int64_t shp[2] = {2, 2}, one = 1;
    float n7 = 7.0f;
    st_item items[2] = {{"w", 2, shp, a, false}, {"count", 1, &one, &n7, true}};
    ck_assert_msg(st_write(test_path("w.safetensors"), items, 2, &err) == 0, "%s", err.msg);
    ck_assert_msg(st_open(test_path("w.safetensors"), &f, &err) == 0, "%s", err.msg);
    st_read_f32(&f, st_find(&f, "w"), v);
    ck_assert(memcmp(v, a, 16) == 0 && f.t[st_find(&f, "count")].dtype == ST_DTYPE_I64);
    st_close(&f);
    /* malformed files: one clear error each, naming the file */
    static const struct {
        const char *json, *needle;
        long header_len;
        size_t data;
    } bad[] = {
        {"not json at all", "not a JSON object", -1, 16},
        {"[1,2]", "not a JSON object", -1, 16},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", "does not fit", 1000, 16},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", "lie outside", -1, 8},   /* truncated */
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", "12 bytes of data for 4", -1, 16},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],"
         "\"data_offsets\":[4,12]}}", "overlap", -1, 16},
        {"{\"a\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}}", "dtype F64", -1, 16},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", "non-negative integers", -1, 16},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", "non-negative integers", -1, 16},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8]}}", "two non-negative integers", -1, 16},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", "lie outside", -1, 16},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"a\":{\"dtype\":\"F32\",\"shape\":[2],"
         "\"data_offsets\":[8,16]}}", "appears twice", -1, 16},
        {"{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", "needs \"dtype\"", -1, 16},
        {"{\"__metadata__\":{\"k\":3}}", "__metadata__", -1, 0},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", "shape too large", -1, 16},
    };
    uint8_t zeros[16] = {0};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        const char *p = st_file_of("bad.safetensors", bad[k].json, zeros, bad[k].data, bad[k].header_len);
        ck_assert_msg(st_open(p, &f, &err) == -1, "case %zu accepted", k);
        ck_assert_msg(strstr(err.msg, bad[k].needle) && strstr(err.msg, "bad.safetensors"), "case %zu: '%s' lacks '%s'",
                      k, err.msg, bad[k].needle);
    }
    test_write_file(test_path("short.safetensors"), "abc", 3);
    ck_assert_int_eq(st_open(test_path("short.safetensors"), &f, &err), -1);
    ck_assert_msg(strstr(err.msg, "too short"), "%s", err.msg);
    ck_assert_int_eq(st_open(test_path("absent.safetensors"), &f, &err), -1);
    ck_assert_msg(strstr(err.msg, "cannot open"), "%s", err.msg);
}
END_TEST

int main(void) {
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_tensor_views);
    tcase_add_test(tc, test_tensor_new_aligned);
    tcase_add_test(tc, test_arena_alignment_and_reuse);
    tcase_add_test(tc, test_arena_steady_state_no_malloc);
    tcase_add_test(tc, test_arena_mark_release);
    tcase_add_test(tc, test_rng_philox_known_answer);
    tcase_add_test(tc, test_rng_reproducible_and_independent);
    tcase_add_test(tc, test_rng_uniform_moments);
    tcase_add_test(tc, test_threads_knob);
    tcase_add_test(tc, test_gemm_matches_reference);
    tcase_add_test(tc, test_gemm_bf16_engine);
    tcase_add_test(tc, test_gemm_dnnl_f32_engine);
    tcase_add_test(tc, test_gemm_batched);
    tcase_add_loop_test(tc, test_conv_dnnl, 0, 2);
    tcase_add_test(tc, test_npy_roundtrip_all_dtypes_and_ranks);
    tcase_add_test(tc, test_npy_malformed_files);
    tcase_add_test(tc, test_npy_truncation_sweep);
    tcase_add_test(tc, test_npy_float64_converts);
    tcase_add_test(tc, test_npy_fortran_big_endian_float16);
    tcase_add_test(tc, test_fastmath_accuracy);
    tcase_add_test(tc, test_safetensors_reader);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
