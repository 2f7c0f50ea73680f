/* Products of bf16-exact operands on the CPU's BF16 units (issue #18):
 * every MX value and every bf16 value is exact in bf16, so such a product can
 * multiply bf16 copies with FP32 accumulation and change nothing but the order
 * of the FP32 sums. oneDNN's matmul primitive does it (opened with dlopen at
 * the first such product, like cuBLASLt on the GPU: a CPU run that never
 * needs it does not load it); it is used only where its implementation runs
 * on real BF16 instructions, else gemm_f32 runs everything.
 *
 * The BF16 units treat subnormal inputs as zero: an operand holding a bf16
 * subnormal, or a value bf16 cannot hold, sends that call to gemm_f32. Plans
 * (descriptors and the primitive) are cached per shape; callers are the
 * product path, one thread at a time (oneDNN parallelizes inside). */
#include "core/gemm.h"

#include <dlfcn.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

#define DNNL_FUNCS(X)                                                                                           \
    X(dnnl_engine_create, (dnnl_engine_t *, dnnl_engine_kind_t, size_t))                                       \
    X(dnnl_stream_create, (dnnl_stream_t *, dnnl_engine_t, unsigned))                                          \
    X(dnnl_memory_desc_init_by_strides,                                                                        \
      (dnnl_memory_desc_t *, int, const dnnl_dims_t, dnnl_data_type_t, const dnnl_dims_t))                     \
    X(dnnl_matmul_desc_init, (dnnl_matmul_desc_t *, const dnnl_memory_desc_t *, const dnnl_memory_desc_t *,   \
                              const dnnl_memory_desc_t *, const dnnl_memory_desc_t *))                         \
    X(dnnl_primitive_attr_create, (dnnl_primitive_attr_t *))                                                   \
    X(dnnl_primitive_attr_destroy, (dnnl_primitive_attr_t))                                                    \
    X(dnnl_post_ops_create, (dnnl_post_ops_t *))                                                               \
    X(dnnl_post_ops_destroy, (dnnl_post_ops_t))                                                                \
    X(dnnl_post_ops_append_sum, (dnnl_post_ops_t, float))                                                      \
    X(dnnl_primitive_attr_set_post_ops, (dnnl_primitive_attr_t, const_dnnl_post_ops_t))                        \
    X(dnnl_primitive_desc_create, (dnnl_primitive_desc_t *, const_dnnl_op_desc_t, const_dnnl_primitive_attr_t, \
                                   dnnl_engine_t, const_dnnl_primitive_desc_t))                                \
    X(dnnl_primitive_desc_query, (const_dnnl_primitive_desc_t, dnnl_query_t, int, void *))                     \
    X(dnnl_primitive_desc_destroy, (dnnl_primitive_desc_t))                                                    \
    X(dnnl_primitive_create, (dnnl_primitive_t *, const_dnnl_primitive_desc_t))                                \
    X(dnnl_memory_create, (dnnl_memory_t *, const dnnl_memory_desc_t *, dnnl_engine_t, void *))                \
    X(dnnl_memory_set_data_handle, (dnnl_memory_t, void *))                                                    \
    X(dnnl_primitive_execute, (const_dnnl_primitive_t, dnnl_stream_t, int, const dnnl_exec_arg_t *))           \
    X(dnnl_stream_wait, (dnnl_stream_t))                                                                       \
    X(dnnl_primitive_attr_set_scratchpad_mode, (dnnl_primitive_attr_t, dnnl_scratchpad_mode_t))               \
    X(dnnl_primitive_destroy, (dnnl_primitive_t))                                                              \
    X(dnnl_memory_destroy, (dnnl_memory_t))                                                                    \
    X(dnnl_memory_desc_init_by_tag, (dnnl_memory_desc_t *, int, const dnnl_dims_t, dnnl_data_type_t,            \
                                     dnnl_format_tag_t))                                                       \
    X(dnnl_convolution_forward_desc_init,                                                                      \
      (dnnl_convolution_desc_t *, dnnl_prop_kind_t, dnnl_alg_kind_t, const dnnl_memory_desc_t *,               \
       const dnnl_memory_desc_t *, const dnnl_memory_desc_t *, const dnnl_memory_desc_t *, const dnnl_dims_t,   \
       const dnnl_dims_t, const dnnl_dims_t))                                                                  \
    X(dnnl_convolution_backward_data_desc_init,                                                                \
      (dnnl_convolution_desc_t *, dnnl_alg_kind_t, const dnnl_memory_desc_t *, const dnnl_memory_desc_t *,     \
       const dnnl_memory_desc_t *, const dnnl_dims_t, const dnnl_dims_t, const dnnl_dims_t))                   \
    X(dnnl_convolution_backward_weights_desc_init,                                                             \
      (dnnl_convolution_desc_t *, dnnl_alg_kind_t, const dnnl_memory_desc_t *, const dnnl_memory_desc_t *,     \
       const dnnl_memory_desc_t *, const dnnl_memory_desc_t *, const dnnl_dims_t, const dnnl_dims_t,           \
       const dnnl_dims_t))                                                                                     \
    X(dnnl_reorder_primitive_desc_create, (dnnl_primitive_desc_t *, const dnnl_memory_desc_t *, dnnl_engine_t,  \
                                           const dnnl_memory_desc_t *, dnnl_engine_t, const_dnnl_primitive_attr_t))

#define DNNL_PTR(name, args) static dnnl_status_t(*p_##name) args;
DNNL_FUNCS(DNNL_PTR)
#undef DNNL_PTR
/* the two entry points that return something else */
static const dnnl_memory_desc_t *(*p_dnnl_primitive_desc_query_md)(const_dnnl_primitive_desc_t, dnnl_query_t, int);
static size_t (*p_dnnl_memory_desc_get_size)(const dnnl_memory_desc_t *);

static enum { BF_UNTRIED, BF_ON, BF_OFF } g_state;
static char g_engine[200] = "not probed yet";
static dnnl_engine_t g_eng;
static dnnl_stream_t g_stream;
static bool g_disabled; /* gemm_bf16_set_enabled(false): tests force the FP32 engine */

typedef struct bf_plan {
    dnnl_data_type_t dt; /* of A and B: bf16 (compact copies) or f32 (the caller's matrices, strided) */
    bool ta, tb, accumulate;
    int m, n, k, lda, ldb;
    int count;                 /* products in the batch (1: the strides are 0) */
    int64_t sa, sb, sc;
    dnnl_primitive_t prim;
    dnnl_memory_t a, b, c, scratch; /* scratch: our buffer, not one oneDNN maps (and faults in) per call */
    size_t scratch_bytes;
} bf_plan;
static bf_plan *g_plans;
static int g_nplans, g_capplans;

#define DN_OK(call) ((call) == dnnl_success)

/* A plan for `count` products C[m,n] (row stride ldc = n) = op(A) op(B), A
 * and B of type dt with row strides lda, ldb (A stored [m,k], or [k,m] when
 * ta; B [k,n], or [n,k] when tb), the i-th at i times the strides sa, sb, sc
 * (sb 0: one B for every product). NULL if oneDNN will not build it and
 * `must` is false. */
static bf_plan *bf_plan_get(dnnl_data_type_t dt, const gemm_batch *bt, bool ta, bool tb, int m, int n, int k, int lda,
                            int ldb, int ldc, bool accumulate, bool must, const char **impl) {
    int count = bt->count;
    int64_t sa = count > 1 ? bt->stride_a : 0, sb = count > 1 ? bt->stride_b : 0, sc = count > 1 ? bt->stride_c : 0;
    for (int i = 0; i < g_nplans; i++) {
        bf_plan *p = &g_plans[i];
        if (p->dt == dt && p->ta == ta && p->tb == tb && p->m == m && p->n == n && p->k == k && p->lda == lda &&
            p->ldb == ldb && p->accumulate == accumulate && ldc == n && p->count == count && p->sa == sa &&
            p->sb == sb && p->sc == sc)
            return p->prim ? p : NULL; /* a plan oneDNN would not build is remembered too */
    }
    dnnl_memory_desc_t ad, bd, cd;
    /* batched: a leading product axis (B's of extent 1 when every product shares it) */
    int nd = count > 1 ? 3 : 2, o = nd - 2;
    dnnl_dims_t adims = {0}, astr = {0}, bdims = {0}, bstr = {0}, cdims = {0}, cstr = {0};
    if (count > 1) {
        adims[0] = count, astr[0] = sa, bdims[0] = sb ? count : 1, bstr[0] = sb ? sb : (int64_t)k * n;
        cdims[0] = count, cstr[0] = sc;
    }
    adims[o] = m, adims[o + 1] = k, astr[o] = ta ? 1 : lda, astr[o + 1] = ta ? lda : 1;
    bdims[o] = k, bdims[o + 1] = n, bstr[o] = tb ? 1 : ldb, bstr[o + 1] = tb ? ldb : 1;
    cdims[o] = m, cdims[o + 1] = n, cstr[o] = ldc, cstr[o + 1] = 1;
    dnnl_matmul_desc_t md;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;
    bf_plan p = {dt, ta, tb, accumulate, m, n, k, lda, ldb, count, sa, sb, sc, NULL, NULL, NULL, NULL, NULL, 0};
    bool ok = DN_OK(p_dnnl_memory_desc_init_by_strides(&ad, nd, adims, dt, astr)) &&
              DN_OK(p_dnnl_memory_desc_init_by_strides(&bd, nd, bdims, dt, bstr)) &&
              DN_OK(p_dnnl_memory_desc_init_by_strides(&cd, nd, cdims, dnnl_f32, cstr)) &&
              DN_OK(p_dnnl_matmul_desc_init(&md, &ad, &bd, NULL, &cd)) && DN_OK(p_dnnl_primitive_attr_create(&attr)) &&
              DN_OK(p_dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    if (ok && accumulate)
        ok = DN_OK(p_dnnl_post_ops_create(&po)) && DN_OK(p_dnnl_post_ops_append_sum(po, 1.0f)) &&
             DN_OK(p_dnnl_primitive_attr_set_post_ops(attr, po));
    ok = ok && DN_OK(p_dnnl_primitive_desc_create(&pd, &md, attr, g_eng, NULL));
    if (ok && impl) ok = DN_OK(p_dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, (void *)impl));
    ok = ok && DN_OK(p_dnnl_primitive_create(&p.prim, pd)) && DN_OK(p_dnnl_memory_create(&p.a, &ad, g_eng, NULL)) &&
         DN_OK(p_dnnl_memory_create(&p.b, &bd, g_eng, NULL)) && DN_OK(p_dnnl_memory_create(&p.c, &cd, g_eng, NULL));
    const dnnl_memory_desc_t *sd = ok ? p_dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0) : NULL;
    p.scratch_bytes = sd ? p_dnnl_memory_desc_get_size(sd) : 0;
    if (ok && p.scratch_bytes) ok = DN_OK(p_dnnl_memory_create(&p.scratch, sd, g_eng, NULL));
    if (po) p_dnnl_post_ops_destroy(po);
    if (attr) p_dnnl_primitive_attr_destroy(attr);
    if (pd) p_dnnl_primitive_desc_destroy(pd);
    MX_ASSERTF(ok || !must, "oneDNN: cannot build a %dx%dx%d %s matmul", m, n, k, dt == dnnl_bf16 ? "bf16" : "f32");
    if (!ok) {
        if (p.prim) p_dnnl_primitive_destroy(p.prim);
        if (p.a) p_dnnl_memory_destroy(p.a);
        if (p.b) p_dnnl_memory_destroy(p.b);
        if (p.c) p_dnnl_memory_destroy(p.c);
        p.prim = NULL;
    }
    if (g_nplans == g_capplans) {
        g_capplans = g_capplans ? 2 * g_capplans : 64;
        g_plans = realloc(g_plans, sizeof *g_plans * (size_t)g_capplans);
        MX_ASSERT(g_plans);
    }
    g_plans[g_nplans] = p;
    return ok ? &g_plans[g_nplans++] : (g_nplans++, NULL);
}

/* Loads oneDNN and makes its CPU engine, once; false (g_engine says why) if it cannot. */
static bool dn_load(void) {
    static int state; /* 0 untried, 1 loaded, -1 failed */
    if (state) return state > 0;
    state = -1;
#ifdef MXTRAIN_SANITIZED
    snprintf(g_engine, sizeof g_engine, "none (sanitizer build: LeakSanitizer cannot trace oneDNN's threads)");
    return false;
#endif
    void *lib = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(g_engine, sizeof g_engine, "none (oneDNN not found: %s)", dlerror());
        return false;
    }
#define DNNL_LOAD(name, args)                                                                                  \
    p_##name = (dnnl_status_t(*) args)dlsym(lib, #name);                                                       \
    if (!p_##name) {                                                                                           \
        snprintf(g_engine, sizeof g_engine, "none (oneDNN lacks %s)", #name);                                   \
        return false;                                                                                          \
    }
    DNNL_FUNCS(DNNL_LOAD)
#undef DNNL_LOAD
    p_dnnl_primitive_desc_query_md =
        (const dnnl_memory_desc_t *(*)(const_dnnl_primitive_desc_t, dnnl_query_t, int))dlsym(lib, "dnnl_primitive_desc_query_md");
    p_dnnl_memory_desc_get_size = (size_t(*)(const dnnl_memory_desc_t *))dlsym(lib, "dnnl_memory_desc_get_size");
    if (!p_dnnl_primitive_desc_query_md || !p_dnnl_memory_desc_get_size) {
        snprintf(g_engine, sizeof g_engine, "none (oneDNN lacks the scratchpad queries)");
        return false;
    }
    if (!DN_OK(p_dnnl_engine_create(&g_eng, dnnl_cpu, 0)) ||
        !DN_OK(p_dnnl_stream_create(&g_stream, g_eng, dnnl_stream_default_flags))) {
        snprintf(g_engine, sizeof g_engine, "none (oneDNN has no CPU engine)");
        return false;
    }
    state = 1;
    return true;
}

/* oneDNN, kept for bf16 products only if its bf16 matmul runs on BF16 instructions here. */
static bool bf_open(void) {
    if (g_state != BF_UNTRIED) return g_state == BF_ON;
    g_state = BF_OFF;
    if (!dn_load()) return false;
    const char *impl = NULL;
    bf_plan_get(dnnl_bf16, &(gemm_batch){1, 0, 0, 0}, false, true, 64, 64, 64, 64, 64, 64, false, true, &impl);
    if (!impl || !strstr(impl, "bf16") || strstr(impl, "ref")) { /* emulated: slower than FP32 */
        snprintf(g_engine, sizeof g_engine, "none (oneDNN's bf16 matmul here is '%s', not BF16 units)",
                 impl ? impl : "?");
        return false;
    }
    snprintf(g_engine, sizeof g_engine, "oneDNN %s", impl);
    g_state = BF_ON;
    return true;
}

const char *gemm_bf16_engine(void) {
    bf_open();
    return g_engine;
}

bool gemm_bf16_available(void) { return !g_disabled && bf_open(); }

void gemm_bf16_set_enabled(bool on) { g_disabled = !on; }

/* `count` matrices of rows x cols (row stride ld, the i-th at src + i *
 * stride) into compact bf16 copies, one after the other; false if some value
 * is not a normal bf16 or zero. */
static bool to_bf16(const float *src, int count, int64_t stride, int rows, int cols, int ld, uint16_t *dst) {
    int bad = 0;
    int64_t all = (int64_t)count * rows;
#pragma omp parallel for schedule(static) reduction(| : bad) if (all * cols >= 65536)
    for (int64_t q = 0; q < all; q++) {
        int64_t i = q / rows, r = q % rows;
        const uint32_t *s = (const uint32_t *)(src + i * stride + r * ld);
        uint16_t *d = dst + q * cols;
        uint32_t acc = 0;
        for (int c = 0; c < cols; c++) {
            uint32_t u = s[c];
            uint32_t e = u & 0x7f800000u;
            /* low half set: not bf16; exponent 0 with a mantissa: a subnormal the BF16 units read as zero */
            acc |= (u & 0xffffu) | ((e == 0 && (u & 0x007f0000u)) ? 1u : 0u);
            d[c] = (uint16_t)(u >> 16);
        }
        bad |= acc != 0;
    }
    return !bad;
}

static uint16_t *bf_buffer(int which, size_t n) {
    static uint16_t *buf[2];
    static size_t cap[2];
    if (n > cap[which]) {
        free(buf[which]);
        buf[which] = mx_malloc(sizeof(uint16_t) * n);
        cap[which] = n;
    }
    return buf[which];
}

static void dn_execute(bf_plan *p, const void *a, const void *b, float *c, int m, int n, int k);

/* A batch oneDNN is not given as one matmul: products overlapping in C (accumulated one after another) */
static bool batch_ok(const gemm_batch *bt) { return bt->count <= 1 || (bt->stride_a != 0 && bt->stride_c != 0); }

void gemm_bf16_f32_batched(const gemm_batch *bt, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                           const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    if (m == 0 || n == 0 || bt->count == 0) return;
    if (g_disabled || alpha != 1.0f || (beta != 0.0f && beta != 1.0f) || k == 0 || ldc != n || !batch_ok(bt) ||
        !bf_open()) {
        gemm_f32_batched(bt, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    int nb = bt->count > 1 && bt->stride_b == 0 ? 1 : bt->count; /* B's copies */
    uint16_t *a16 = bf_buffer(0, (size_t)bt->count * m * k), *b16 = bf_buffer(1, (size_t)nb * k * n);
    bool exact = trans_a ? to_bf16(a, bt->count, bt->stride_a, k, m, lda, a16)
                         : to_bf16(a, bt->count, bt->stride_a, m, k, lda, a16);
    exact = exact && (trans_b ? to_bf16(b, nb, bt->stride_b, n, k, ldb, b16) : to_bf16(b, nb, bt->stride_b, k, n, ldb, b16));
    gemm_batch cb = {bt->count, (int64_t)m * k, nb > 1 ? (int64_t)k * n : 0, bt->stride_c};
    bf_plan *p = exact ? bf_plan_get(dnnl_bf16, &cb, trans_a, trans_b, m, n, k, trans_a ? m : k, trans_b ? k : n, ldc,
                                     beta != 0.0f, bt->count == 1, NULL)
                       : NULL;
    if (!p) {
        gemm_f32_batched(bt, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    dn_execute(p, a16, b16, c, m, n, k);
}

bool gemm_bf16_convert(const float *src, int64_t n, uint16_t *dst) {
    const int64_t cols = 4096; /* to_bf16's rows: its parallel grain */
    bool ok = n / cols == 0 || to_bf16(src, 1, 0, (int)(n / cols), (int)cols, (int)cols, dst);
    if (ok && n % cols) ok = to_bf16(src + n / cols * cols, 1, 0, 1, (int)(n % cols), (int)(n % cols), dst + n / cols * cols);
    return ok;
}

void gemm_bf16_widen(const uint16_t *src, int64_t n, float *dst) {
#pragma omp parallel for schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)src[i] << 16;
        memcpy(&dst[i], &u, 4);
    }
}

void gemm_bf16_bf16_batched(const gemm_batch *bt, bool trans_a, bool trans_b, int m, int n, int k, const uint16_t *a,
                            int lda, const uint16_t *b, int ldb, float beta, float *c, int ldc) {
    if (m == 0 || n == 0 || bt->count == 0) return;
    MX_ASSERTF(bf_open() && !g_disabled && (beta == 0.0f || beta == 1.0f) && ldc == n && k > 0,
               "gemm_bf16_bf16_batched: not available or not given this call");
    bf_plan *p = batch_ok(bt) ? bf_plan_get(dnnl_bf16, bt, trans_a, trans_b, m, n, k, lda, ldb, ldc, beta != 0.0f,
                                            bt->count == 1, NULL)
                              : NULL;
    if (p) {
        dn_execute(p, a, b, c, m, n, k);
        return;
    }
    for (int i = 0; i < bt->count; i++) /* products accumulating into one C, one after another */
        dn_execute(bf_plan_get(dnnl_bf16, &(gemm_batch){1, 0, 0, 0}, trans_a, trans_b, m, n, k, lda, ldb, ldc,
                               beta != 0.0f, true, NULL),
                   a + i * bt->stride_a, b + i * bt->stride_b, c + i * bt->stride_c, m, n, k);
}

void gemm_bf16_f32(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                   const float *b, int ldb, float beta, float *c, int ldc) {
    gemm_bf16_f32_batched(&(gemm_batch){1, 0, 0, 0}, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* Runs plan p on A, B, C (its scratchpad in one buffer of ours, grown once to the largest need). */
static void dn_execute(bf_plan *p, const void *a, const void *b, float *c, int m, int n, int k) {
    bool ok = DN_OK(p_dnnl_memory_set_data_handle(p->a, (void *)a)) &&
              DN_OK(p_dnnl_memory_set_data_handle(p->b, (void *)b)) &&
              DN_OK(p_dnnl_memory_set_data_handle(p->c, c));
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, p->a}, {DNNL_ARG_WEIGHTS, p->b}, {DNNL_ARG_DST, p->c}, {0, NULL}};
    int nargs = 3;
    if (p->scratch) {
        static void *buf;
        static size_t cap;
        if (p->scratch_bytes > cap) { /* grows to the largest plan's need, once */
            free(buf);
            buf = mx_aligned_alloc(p->scratch_bytes);
            cap = p->scratch_bytes;
        }
        ok = ok && DN_OK(p_dnnl_memory_set_data_handle(p->scratch, buf));
        args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, p->scratch};
    }
    ok = ok && DN_OK(p_dnnl_primitive_execute(p->prim, g_stream, nargs, args)) && DN_OK(p_dnnl_stream_wait(g_stream));
    MX_ASSERTF(ok, "oneDNN: a %dx%dx%d matmul failed", m, n, k);
}

const char *gemm_dnnl_f32_engine(void) {
    static char desc[200];
    if (!dn_load()) return g_engine;
    if (!desc[0]) { /* probed once: a cached plan does not report its implementation again */
        const char *impl = NULL;
        bf_plan_get(dnnl_f32, &(gemm_batch){1, 0, 0, 0}, false, true, 64, 64, 64, 64, 64, 64, false, true, &impl);
        snprintf(desc, sizeof desc, "oneDNN %s", impl ? impl : "?");
    }
    return desc;
}

bool gemm_dnnl_f32_preferred(void) {
    static int pref = -1;
    if (pref < 0) pref = dn_load() && strstr(gemm_dnnl_f32_engine(), "avx512") != NULL;
    return pref;
}

void gemm_dnnl_f32_batched(const gemm_batch *bt, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                           const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    if (m == 0 || n == 0 || bt->count == 0) return;
    bf_plan *p = NULL;
    if (alpha == 1.0f && (beta == 0.0f || beta == 1.0f) && k != 0 && ldc == n && batch_ok(bt) && dn_load())
        p = bf_plan_get(dnnl_f32, bt, trans_a, trans_b, m, n, k, lda, ldb, ldc, beta != 0.0f, bt->count == 1, NULL);
    if (!p) {
        gemm_f32_batched(bt, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    dn_execute(p, a, b, c, m, n, k);
}

void gemm_dnnl_f32(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                   const float *b, int ldb, float beta, float *c, int ldc) {
    gemm_dnnl_f32_batched(&(gemm_batch){1, 0, 0, 0}, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* ---------------- convolutions (NHWC, no im2col) ---------------- */

/* One direction of one convolution shape: the primitive, and the reorder
 * between our OHWI weights and the layout its kernels want (plain OHWI
 * would send oneDNN to its reference code). bf16: the operands (x, W, dY)
 * are bf16 copies, the results (y, dX, dW) float32. */
typedef struct cv_plan {
    gemm_conv_dir dir;
    bool bf16;
    gemm_conv_shape sh;
    dnnl_primitive_t prim, reorder;     /* reorder: W to the kernels' layout (FWD, DX), or dW back, added (DW) */
    dnnl_memory_t x, dy, out, w_user, w_prim; /* w_prim: the weights (or dW) in the kernels' layout, ours */
    void *w_buf;
    bool ok;
} cv_plan;
static cv_plan *g_cv;
static int g_ncv, g_capcv;

static int cv_out(int in, int k, int stride, int pad) { return (in + 2 * pad - k) / stride + 1; }

static cv_plan *cv_plan_get(gemm_conv_dir dir, bool bf16, const gemm_conv_shape *c) {
    for (int i = 0; i < g_ncv; i++)
        if (g_cv[i].dir == dir && g_cv[i].bf16 == bf16 && memcmp(&g_cv[i].sh, c, sizeof *c) == 0)
            return g_cv[i].ok ? &g_cv[i] : NULL;
    cv_plan p = {.dir = dir, .bf16 = bf16, .sh = *c};
    int oh = cv_out(c->h, c->kh, c->stride, c->pad), ow = cv_out(c->w, c->kw, c->stride, c->pad);
    dnnl_dims_t xd = {c->n, c->c, c->h, c->w}, wd = {c->o, c->c, c->kh, c->kw}, yd = {c->n, c->o, oh, ow};
    dnnl_dims_t st = {c->stride, c->stride}, pl = {c->pad, c->pad};
    dnnl_dims_t pr = {(oh - 1) * c->stride + c->kh - c->h - c->pad, (ow - 1) * c->stride + c->kw - c->w - c->pad};
    /* operands in `in`, results in float32 */
    dnnl_data_type_t in = bf16 ? dnnl_bf16 : dnnl_f32;
    dnnl_memory_desc_t xm, xr, wany, wres, wuser, ym, yr;
    dnnl_convolution_desc_t fd, bd;
    dnnl_primitive_desc_t fpd = NULL, pd = NULL, rpd = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    bool ok = DN_OK(p_dnnl_memory_desc_init_by_tag(&xm, 4, xd, in, dnnl_nhwc)) &&
              DN_OK(p_dnnl_memory_desc_init_by_tag(&xr, 4, xd, dnnl_f32, dnnl_nhwc)) &&
              DN_OK(p_dnnl_memory_desc_init_by_tag(&wany, 4, wd, in, dnnl_format_tag_any)) &&
              DN_OK(p_dnnl_memory_desc_init_by_tag(&wres, 4, wd, dnnl_f32, dnnl_format_tag_any)) &&
              DN_OK(p_dnnl_memory_desc_init_by_tag(&wuser, 4, wd, dir == GEMM_CONV_DW ? dnnl_f32 : in, dnnl_ohwi)) &&
              DN_OK(p_dnnl_memory_desc_init_by_tag(&ym, 4, yd, in, dnnl_nhwc)) &&
              DN_OK(p_dnnl_memory_desc_init_by_tag(&yr, 4, yd, dnnl_f32, dnnl_nhwc)) &&
              DN_OK(p_dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct, &xm,
                                                         &wany, NULL, &yr, st, pl, pr)) &&
              DN_OK(p_dnnl_primitive_desc_create(&fpd, &fd, NULL, g_eng, NULL));
    if (ok && dir == GEMM_CONV_DX)
        ok = DN_OK(p_dnnl_convolution_backward_data_desc_init(&bd, dnnl_convolution_direct, &xr, &wany, &ym, st, pl,
                                                              pr)) &&
             DN_OK(p_dnnl_primitive_desc_create(&pd, &bd, NULL, g_eng, fpd));
    if (ok && dir == GEMM_CONV_DW)
        ok = DN_OK(p_dnnl_convolution_backward_weights_desc_init(&bd, dnnl_convolution_direct, &xm, &wres, NULL, &ym,
                                                                 st, pl, pr)) &&
             DN_OK(p_dnnl_primitive_desc_create(&pd, &bd, NULL, g_eng, fpd));
    if (ok && dir == GEMM_CONV_FWD) pd = fpd, fpd = NULL;
    const char *impl = NULL;
    ok = ok && DN_OK(p_dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, (void *)&impl)) && impl &&
         !strstr(impl, "ref") && (!bf16 || strstr(impl, "bf16")); /* reference or emulated code: our im2col is faster */
    const dnnl_memory_desc_t *wp =
        ok ? p_dnnl_primitive_desc_query_md(pd, dir == GEMM_CONV_DW ? dnnl_query_diff_weights_md : dnnl_query_weights_md, 0)
           : NULL;
    ok = ok && wp && DN_OK(p_dnnl_primitive_create(&p.prim, pd));
    if (ok && dir == GEMM_CONV_DW) /* dW in the kernels' layout, reordered into ours and added */
        ok = DN_OK(p_dnnl_primitive_attr_create(&attr)) && DN_OK(p_dnnl_post_ops_create(&po)) &&
             DN_OK(p_dnnl_post_ops_append_sum(po, 1.0f)) && DN_OK(p_dnnl_primitive_attr_set_post_ops(attr, po)) &&
             DN_OK(p_dnnl_reorder_primitive_desc_create(&rpd, wp, g_eng, &wuser, g_eng, attr));
    else if (ok)
        ok = DN_OK(p_dnnl_reorder_primitive_desc_create(&rpd, &wuser, g_eng, wp, g_eng, NULL));
    ok = ok && DN_OK(p_dnnl_primitive_create(&p.reorder, rpd));
    if (ok) {
        p.w_buf = mx_aligned_alloc(p_dnnl_memory_desc_get_size(wp));
        ok = DN_OK(p_dnnl_memory_create(&p.x, &xm, g_eng, NULL)) && DN_OK(p_dnnl_memory_create(&p.dy, &ym, g_eng, NULL)) &&
             DN_OK(p_dnnl_memory_create(&p.out, dir == GEMM_CONV_DX ? &xr : &yr, g_eng, NULL)) &&
             DN_OK(p_dnnl_memory_create(&p.w_user, &wuser, g_eng, NULL)) &&
             DN_OK(p_dnnl_memory_create(&p.w_prim, wp, g_eng, p.w_buf));
    }
    if (po) p_dnnl_post_ops_destroy(po);
    if (attr) p_dnnl_primitive_attr_destroy(attr);
    if (rpd) p_dnnl_primitive_desc_destroy(rpd);
    if (pd) p_dnnl_primitive_desc_destroy(pd);
    if (fpd) p_dnnl_primitive_desc_destroy(fpd);
    p.ok = ok; /* a shape oneDNN will not run fast is remembered too: im2col for it */
    if (g_ncv == g_capcv) {
        g_capcv = g_capcv ? 2 * g_capcv : 32;
        g_cv = realloc(g_cv, sizeof *g_cv * (size_t)g_capcv);
        MX_ASSERT(g_cv);
    }
    g_cv[g_ncv++] = p;
    return ok ? &g_cv[g_ncv - 1] : NULL;
}

/* Runs plan p on its operands: float32, or bf16 for a bf16 plan. */
static void conv_run(cv_plan *p, const gemm_conv_shape *c, const void *xs, const void *ws, const void *dys, float *out,
                     float *tmp) {
    gemm_conv_dir dir = p->dir;
    bool ok = true;
    if (dir != GEMM_CONV_DW) { /* our OHWI weights into the kernels' layout */
        ok = DN_OK(p_dnnl_memory_set_data_handle(p->w_user, (void *)ws));
        dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, p->w_user}, {DNNL_ARG_TO, p->w_prim}};
        ok = ok && DN_OK(p_dnnl_primitive_execute(p->reorder, g_stream, 2, r));
    }
    if (dir == GEMM_CONV_FWD) {
        ok = ok && DN_OK(p_dnnl_memory_set_data_handle(p->x, (void *)xs)) && DN_OK(p_dnnl_memory_set_data_handle(p->out, out));
        dnnl_exec_arg_t a[3] = {{DNNL_ARG_SRC, p->x}, {DNNL_ARG_WEIGHTS, p->w_prim}, {DNNL_ARG_DST, p->out}};
        ok = ok && DN_OK(p_dnnl_primitive_execute(p->prim, g_stream, 3, a));
    } else if (dir == GEMM_CONV_DX) { /* written to tmp, then added: oneDNN's backward overwrites */
        ok = ok && DN_OK(p_dnnl_memory_set_data_handle(p->dy, (void *)dys)) && DN_OK(p_dnnl_memory_set_data_handle(p->out, tmp));
        dnnl_exec_arg_t a[3] = {{DNNL_ARG_DIFF_DST, p->dy}, {DNNL_ARG_WEIGHTS, p->w_prim}, {DNNL_ARG_DIFF_SRC, p->out}};
        ok = ok && DN_OK(p_dnnl_primitive_execute(p->prim, g_stream, 3, a)) && DN_OK(p_dnnl_stream_wait(g_stream));
        int64_t n = (int64_t)c->n * c->h * c->w * c->c;
#pragma omp parallel for schedule(static) if (n >= 65536)
        for (int64_t i = 0; i < n; i++) out[i] += tmp[i];
    } else {
        ok = ok && DN_OK(p_dnnl_memory_set_data_handle(p->x, (void *)xs)) && DN_OK(p_dnnl_memory_set_data_handle(p->dy, (void *)dys));
        dnnl_exec_arg_t a[3] = {{DNNL_ARG_SRC, p->x}, {DNNL_ARG_DIFF_DST, p->dy}, {DNNL_ARG_DIFF_WEIGHTS, p->w_prim}};
        ok = ok && DN_OK(p_dnnl_primitive_execute(p->prim, g_stream, 3, a));
        ok = ok && DN_OK(p_dnnl_memory_set_data_handle(p->w_user, out)); /* dW += the result, in OHWI */
        dnnl_exec_arg_t r[2] = {{DNNL_ARG_FROM, p->w_prim}, {DNNL_ARG_TO, p->w_user}};
        ok = ok && DN_OK(p_dnnl_primitive_execute(p->reorder, g_stream, 2, r));
    }
    ok = ok && DN_OK(p_dnnl_stream_wait(g_stream));
    MX_ASSERTF(ok, "oneDNN: a convolution (direction %d) failed", (int)dir);
}

bool gemm_conv_dnnl_f32(gemm_conv_dir dir, const gemm_conv_shape *c, const float *x, const float *w, const float *dy,
                        float *out, float *tmp) {
    cv_plan *p = dn_load() ? cv_plan_get(dir, false, c) : NULL;
    if (p) conv_run(p, c, x, w, dy, out, tmp);
    return p != NULL;
}

bool gemm_conv_dnnl_bf16(gemm_conv_dir dir, const gemm_conv_shape *c, const uint16_t *x, const uint16_t *w,
                         const uint16_t *dy, float *out, float *tmp) {
    cv_plan *p = gemm_bf16_available() ? cv_plan_get(dir, true, c) : NULL;
    if (p) conv_run(p, c, x, w, dy, out, tmp);
    return p != NULL;
}
