// GPU GEMMs through cuBLASLt (issue #16's product path, first part).
//
// cuBLASLt is opened with dlopen at the first GPU GEMM, not linked: linked
// at load time it costs every CPU-only run ~150 MB of resident relocations.
// Row-major products are issued as the column-major transposed product
// (C^T = op(B)^T op(A)^T), so no data moves. bf16 operands multiply on the
// tensor cores with FP32 accumulation (CUBLAS_COMPUTE_32F); fp32 operands use
// FP32 GEMMs, never TF32. Plans (descriptors, layouts, the chosen algorithm)
// are cached per shape, so a training step's repeated shapes cost one lookup.
#include <cublasLt.h>
#include <dlfcn.h>
#include <string.h>

extern "C" {
#include "core/json.h"
#include "core/timer.h"
}
#include "cuda/cuda.h"
#include "cuda/cuda_internal.h"

/* The entry points used, resolved from the library at open. */
#define CU_LT_FUNCS(X)                                                                                           \
    X(cublasLtCreate, cublasStatus_t, (cublasLtHandle_t *))                                                     \
    X(cublasLtMatmulDescCreate, cublasStatus_t, (cublasLtMatmulDesc_t *, cublasComputeType_t, cudaDataType_t))  \
    X(cublasLtMatmulDescSetAttribute, cublasStatus_t,                                                           \
      (cublasLtMatmulDesc_t, cublasLtMatmulDescAttributes_t, const void *, size_t))                             \
    X(cublasLtMatrixLayoutCreate, cublasStatus_t,                                                               \
      (cublasLtMatrixLayout_t *, cudaDataType, uint64_t, uint64_t, int64_t))                                    \
    X(cublasLtMatrixLayoutSetAttribute, cublasStatus_t,                                                         \
      (cublasLtMatrixLayout_t, cublasLtMatrixLayoutAttribute_t, const void *, size_t))                          \
    X(cublasLtMatmulPreferenceCreate, cublasStatus_t, (cublasLtMatmulPreference_t *))                           \
    X(cublasLtMatmulPreferenceSetAttribute, cublasStatus_t,                                                     \
      (cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t, const void *, size_t))                 \
    X(cublasLtMatmulAlgoGetHeuristic, cublasStatus_t,                                                           \
      (cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,                  \
       cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatmulPreference_t, int,                         \
       cublasLtMatmulHeuristicResult_t *, int *))                                                               \
    X(cublasLtMatmul, cublasStatus_t,                                                                           \
      (cublasLtHandle_t, cublasLtMatmulDesc_t, const void *, const void *, cublasLtMatrixLayout_t, const void *, \
       cublasLtMatrixLayout_t, const void *, const void *, cublasLtMatrixLayout_t, void *,                     \
       cublasLtMatrixLayout_t, const cublasLtMatmulAlgo_t *, void *, size_t, cudaStream_t))

#define CU_LT_PTR(name, ret, args) static ret(*p_##name) args;
CU_LT_FUNCS(CU_LT_PTR)
#undef CU_LT_PTR

static cublasLtHandle_t g_lt;
static void *g_workspace;
static const size_t g_workspace_bytes = (size_t)32 << 20;

#define LT_CHECK(call)                                                                                      \
    do {                                                                                                    \
        cublasStatus_t lt_s_ = (call);                                                                      \
        if (lt_s_ != CUBLAS_STATUS_SUCCESS) mx_fatal(__FILE__, __LINE__, "cuBLASLt status %d in %s", (int)lt_s_, #call); \
    } while (0)

extern "C" int cu_gemm_open(mx_err *err) {
    if (g_lt) return 0;
    static const char *const names[] = {"libcublasLt.so.13", "libcublasLt.so", "/usr/local/cuda/lib64/libcublasLt.so"};
    void *lib = NULL;
    for (int i = 0; i < 3 && !lib; i++) lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!lib) return mx_err_set(err, "cannot load cuBLASLt (libcublasLt.so: %s); is the CUDA toolkit's lib64 on the "
                                     "library path?", dlerror());
#define CU_LT_LOAD(name, ret, args)                                                                            \
    p_##name = (ret(*) args)dlsym(lib, #name);                                                                 \
    if (!p_##name) return mx_err_set(err, "cuBLASLt lacks %s", #name);
    CU_LT_FUNCS(CU_LT_LOAD)
#undef CU_LT_LOAD
    LT_CHECK(p_cublasLtCreate(&g_lt));
    g_workspace = cu_malloc(g_workspace_bytes);
    return 0;
}

/* A cached plan: the descriptors and algorithm of one product shape. */
typedef struct gemm_plan {
    cu_gemm_desc key;
    unsigned align; /* bytes every pointer is aligned to (the algorithm was chosen for it) */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} gemm_plan;

static gemm_plan *g_plans;
static int g_nplans, g_capplans;

static bool gemm_same(const cu_gemm_desc *a, const cu_gemm_desc *b) {
    return a->m == b->m && a->n == b->n && a->k == b->k && a->trans_a == b->trans_a && a->trans_b == b->trans_b &&
           a->type == b->type && a->batch == b->batch && a->stride_a == b->stride_a && a->stride_b == b->stride_b &&
           a->stride_c == b->stride_c;
}

static cublasLtMatrixLayout_t gemm_layout(cudaDataType t, int64_t rows, int64_t cols, int64_t ld, int batch,
                                          int64_t stride) {
    cublasLtMatrixLayout_t l;
    LT_CHECK(p_cublasLtMatrixLayoutCreate(&l, t, (uint64_t)rows, (uint64_t)cols, ld));
    if (batch > 1) {
        int32_t b = batch;
        LT_CHECK(p_cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &b, sizeof b));
        LT_CHECK(p_cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                    sizeof stride));
    }
    return l;
}

/* The largest power of two up to 256 dividing every address: rows of a
 * chunk start anywhere, and cuBLASLt's fastest kernels assume 256 unless told. */
static unsigned gemm_align(const void *a, const void *b, const void *c) {
    uintptr_t x = (uintptr_t)a | (uintptr_t)b | (uintptr_t)c | 256;
    return (unsigned)(x & (~x + 1));
}

static const gemm_plan *gemm_plan_get(const cu_gemm_desc *d, unsigned align) {
    for (int i = 0; i < g_nplans; i++)
        if (g_plans[i].align == align && gemm_same(&g_plans[i].key, d)) return &g_plans[i];
    if (g_nplans == g_capplans) {
        g_capplans = g_capplans ? 2 * g_capplans : 64;
        g_plans = (gemm_plan *)realloc(g_plans, sizeof *g_plans * (size_t)g_capplans);
        if (!g_plans) mx_fatal(__FILE__, __LINE__, "out of memory");
    }
    gemm_plan *p = &g_plans[g_nplans];
    p->key = *d;
    p->align = align;
    cudaDataType tab = d->type == CU_GEMM_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    LT_CHECK(p_cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F)); /* FP32 accumulation, no TF32 */
    /* column-major C^T [n, m] = op(B)^T [n, k] op(A)^T [k, m] */
    cublasOperation_t ta = d->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, tb = d->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    LT_CHECK(p_cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT_CHECK(p_cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    /* B row-major [k, n] is column-major [n, k] (ld n); transposed, [n, k] row-major is [k, n] (ld k) */
    p->la = d->trans_b ? gemm_layout(tab, d->k, d->n, d->k, d->batch, d->stride_b)
                       : gemm_layout(tab, d->n, d->k, d->n, d->batch, d->stride_b);
    p->lb = d->trans_a ? gemm_layout(tab, d->m, d->k, d->m, d->batch, d->stride_a)
                       : gemm_layout(tab, d->k, d->m, d->k, d->batch, d->stride_a);
    p->lc = gemm_layout(CUDA_R_32F, d->n, d->m, d->n, d->batch, d->stride_c);
    cublasLtMatmulPreference_t pref;
    LT_CHECK(p_cublasLtMatmulPreferenceCreate(&pref));
    LT_CHECK(p_cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &g_workspace_bytes, sizeof g_workspace_bytes));
    uint32_t al = align;
    static const cublasLtMatmulPreferenceAttributes_t aligns[] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; i++) LT_CHECK(p_cublasLtMatmulPreferenceSetAttribute(pref, aligns[i], &al, sizeof al));
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    LT_CHECK(p_cublasLtMatmulAlgoGetHeuristic(g_lt, p->op, p->la, p->lb, p->lc, p->lc, pref, 1, &res, &found));
    if (found < 1)
        mx_fatal(__FILE__, __LINE__, "cuBLASLt has no algorithm for a %lldx%lldx%lld product",
                 (long long)d->m, (long long)d->n, (long long)d->k);
    p->algo = res.algo;
    g_nplans++;
    return p;
}

extern "C" void cu_gemm(const cu_gemm_desc *d, const void *d_a, const void *d_b, float *d_c) {
    if (!g_lt) { /* opened at the first product (callers that can report it call cu_gemm_open first) */
        mx_err err;
        if (cu_gemm_open(&err)) mx_fatal(__FILE__, __LINE__, "%s", err.msg);
    }
    MX_ASSERT(d->m > 0 && d->n > 0 && d->k > 0 && d->batch >= 1);
    const gemm_plan *p = gemm_plan_get(d, gemm_align(d_a, d_b, d_c));
    LT_CHECK(p_cublasLtMatmul(g_lt, p->op, &d->alpha, d_b, p->la, d_a, p->lb, &d->beta, d_c, p->lc, d_c, p->lc,
                              &p->algo, g_workspace, g_workspace_bytes, 0));
}

/* ---------------- benchmark ---------------- */

extern "C" int cu_gemm_bench(int64_t n, int reps) {
    mx_err err;
    if (cu_gemm_open(&err)) {
        fprintf(stderr, "mxtrain bench gemm: %s\n", err.msg);
        return 1;
    }
    size_t nn = (size_t)n * (size_t)n;
    float *a = (float *)cu_malloc(nn * 4), *b = (float *)cu_malloc(nn * 4), *c = (float *)cu_malloc(nn * 4);
    cu_memset(a, 0, nn * 4);
    cu_memset(b, 0, nn * 4);
    cudaEvent_t e0, e1;
    CU_CHECK(cudaEventCreate(&e0));
    CU_CHECK(cudaEventCreate(&e1));
    static const char *const names[] = {"bf16", "fp32"};
    for (int t = 0; t < 2; t++) {
        cu_gemm_desc d = {n, n, n, false, true, t == 0 ? CU_GEMM_BF16 : CU_GEMM_F32, 1, 0, 0, 0, 1.0f, 0.0f};
        cu_gemm(&d, a, b, c); /* plan and warm-up */
        float *ms = (float *)malloc(sizeof(float) * (size_t)reps);
        for (int r = 0; r < reps; r++) {
            CU_CHECK(cudaEventRecord(e0));
            cu_gemm(&d, a, b, c);
            CU_CHECK(cudaEventRecord(e1));
            CU_CHECK(cudaEventSynchronize(e1));
            CU_CHECK(cudaEventElapsedTime(&ms[r], e0, e1));
        }
        double *s = (double *)malloc(sizeof(double) * (size_t)reps);
        for (int r = 0; r < reps; r++) s[r] = ms[r] * 1e-3;
        double med = timer_median(s, reps);
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "bench", "gemm");
        cJSON_AddStringToObject(j, "device", "cuda");
        cJSON_AddStringToObject(j, "type", names[t]);
        cJSON_AddNumberToObject(j, "n", (double)n);
        cJSON_AddNumberToObject(j, "reps", reps);
        mx_json_number(j, "median_ms", med * 1e3, 3);
        mx_json_number(j, "tflop_per_s", 2.0 * (double)n * n * n / med / 1e12, 1);
        mx_json_print(j);
        free(ms);
        free(s);
    }
    CU_CHECK(cudaEventDestroy(e0));
    CU_CHECK(cudaEventDestroy(e1));
    cu_free(a);
    cu_free(b);
    cu_free(c);
    return 0;
}
