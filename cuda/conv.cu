// FP32 convolutions through cuDNN (issue #16): the products whose operands
// are both float32 (the fp32 format, and MX operands that bf16 cannot hold)
// need no gather; cuDNN's implicit-GEMM kernels read x and W where they lie.
//
// Only products the spec allows: FP32 multiply-adds (CUDNN_FMA_MATH, never
// TF32), implicit- or explicit-GEMM algorithms (Winograd and FFT change the
// arithmetic, not only the order of sums), and deterministic ones (a resumed
// run repeats its steps bit for bit). cuDNN is opened with dlopen at the
// first convolution, like cuBLASLt; without it, or when no allowed algorithm
// fits a shape, cu_conv_f32 returns false and the caller gathers.
#include <cudnn.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda.h"
#include "cuda/cuda_internal.h"

#define CU_DNN_FUNCS(X)                                                                                          \
    X(cudnnGetVersion, size_t, (void))                                                                          \
    X(cudnnGetErrorString, const char *, (cudnnStatus_t))                                                       \
    X(cudnnCreate, cudnnStatus_t, (cudnnHandle_t *))                                                            \
    X(cudnnCreateTensorDescriptor, cudnnStatus_t, (cudnnTensorDescriptor_t *))                                  \
    X(cudnnSetTensor4dDescriptor, cudnnStatus_t,                                                                \
      (cudnnTensorDescriptor_t, cudnnTensorFormat_t, cudnnDataType_t, int, int, int, int))                      \
    X(cudnnCreateFilterDescriptor, cudnnStatus_t, (cudnnFilterDescriptor_t *))                                  \
    X(cudnnSetFilter4dDescriptor, cudnnStatus_t,                                                                \
      (cudnnFilterDescriptor_t, cudnnDataType_t, cudnnTensorFormat_t, int, int, int, int))                      \
    X(cudnnCreateConvolutionDescriptor, cudnnStatus_t, (cudnnConvolutionDescriptor_t *))                        \
    X(cudnnSetConvolution2dDescriptor, cudnnStatus_t,                                                           \
      (cudnnConvolutionDescriptor_t, int, int, int, int, int, int, cudnnConvolutionMode_t, cudnnDataType_t))    \
    X(cudnnSetConvolutionMathType, cudnnStatus_t, (cudnnConvolutionDescriptor_t, cudnnMathType_t))              \
    X(cudnnGetConvolutionForwardAlgorithm_v7, cudnnStatus_t,                                                    \
      (cudnnHandle_t, cudnnTensorDescriptor_t, cudnnFilterDescriptor_t, cudnnConvolutionDescriptor_t,           \
       cudnnTensorDescriptor_t, int, int *, cudnnConvolutionFwdAlgoPerf_t *))                                   \
    X(cudnnGetConvolutionBackwardDataAlgorithm_v7, cudnnStatus_t,                                               \
      (cudnnHandle_t, cudnnFilterDescriptor_t, cudnnTensorDescriptor_t, cudnnConvolutionDescriptor_t,           \
       cudnnTensorDescriptor_t, int, int *, cudnnConvolutionBwdDataAlgoPerf_t *))                               \
    X(cudnnGetConvolutionBackwardFilterAlgorithm_v7, cudnnStatus_t,                                             \
      (cudnnHandle_t, cudnnTensorDescriptor_t, cudnnTensorDescriptor_t, cudnnConvolutionDescriptor_t,           \
       cudnnFilterDescriptor_t, int, int *, cudnnConvolutionBwdFilterAlgoPerf_t *))                             \
    X(cudnnConvolutionForward, cudnnStatus_t,                                                                   \
      (cudnnHandle_t, const void *, cudnnTensorDescriptor_t, const void *, cudnnFilterDescriptor_t,             \
       const void *, cudnnConvolutionDescriptor_t, cudnnConvolutionFwdAlgo_t, void *, size_t, const void *,     \
       cudnnTensorDescriptor_t, void *))                                                                        \
    X(cudnnConvolutionBackwardData, cudnnStatus_t,                                                              \
      (cudnnHandle_t, const void *, cudnnFilterDescriptor_t, const void *, cudnnTensorDescriptor_t,             \
       const void *, cudnnConvolutionDescriptor_t, cudnnConvolutionBwdDataAlgo_t, void *, size_t, const void *, \
       cudnnTensorDescriptor_t, void *))                                                                        \
    X(cudnnConvolutionBackwardFilter, cudnnStatus_t,                                                            \
      (cudnnHandle_t, const void *, cudnnTensorDescriptor_t, const void *, cudnnTensorDescriptor_t,             \
       const void *, cudnnConvolutionDescriptor_t, cudnnConvolutionBwdFilterAlgo_t, void *, size_t,             \
       const void *, cudnnFilterDescriptor_t, void *))

#define CU_DNN_PTR(name, ret, args) static ret(*p_##name) args;
CU_DNN_FUNCS(CU_DNN_PTR)
#undef CU_DNN_PTR

static enum { DNN_UNTRIED, DNN_OPEN, DNN_ABSENT } g_state;
static char g_why[256];
static cudnnHandle_t g_dnn;
static void *g_ws;
static size_t g_ws_bytes;
/* An algorithm needing more workspace than this is passed over. */
static const size_t g_ws_cap = (size_t)256 << 20;

#define DNN_CHECK(call)                                                                                     \
    do {                                                                                                    \
        cudnnStatus_t dnn_s_ = (call);                                                                      \
        if (dnn_s_ != CUDNN_STATUS_SUCCESS)                                                                 \
            mx_fatal(__FILE__, __LINE__, "cuDNN: %s in %s", p_cudnnGetErrorString(dnn_s_), #call);          \
    } while (0)

/* The shim (libcudnn.so.9) forwards to the sub-libraries; older layouts export from those directly. */
static void *dnn_sym(void *const *libs, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (libs[i]) {
            void *s = dlsym(libs[i], name);
            if (s) return s;
        }
    return NULL;
}

static bool dnn_open(void) {
    if (g_state != DNN_UNTRIED) return g_state == DNN_OPEN;
    g_state = DNN_ABSENT;
    void *libs[3] = {dlopen("libcudnn.so.9", RTLD_NOW | RTLD_LOCAL), NULL, NULL};
    if (!libs[0]) {
        snprintf(g_why, sizeof g_why, "cuDNN 9 not found (%s)", dlerror());
        return false;
    }
    libs[1] = dlopen("libcudnn_cnn.so.9", RTLD_NOW | RTLD_LOCAL);
    libs[2] = dlopen("libcudnn_graph.so.9", RTLD_NOW | RTLD_LOCAL);
#define CU_DNN_LOAD(name, ret, args)                                                                           \
    p_##name = (ret(*) args)dnn_sym(libs, 3, #name);                                                           \
    if (!p_##name) {                                                                                           \
        snprintf(g_why, sizeof g_why, "cuDNN lacks %s", #name);                                                \
        return false;                                                                                          \
    }
    CU_DNN_FUNCS(CU_DNN_LOAD)
#undef CU_DNN_LOAD
    if (p_cudnnGetVersion() < 90000) {
        snprintf(g_why, sizeof g_why, "cuDNN %zu is older than 9", p_cudnnGetVersion());
        return false;
    }
    if (p_cudnnCreate(&g_dnn) != CUDNN_STATUS_SUCCESS) {
        snprintf(g_why, sizeof g_why, "cudnnCreate failed");
        return false;
    }
    g_state = DNN_OPEN;
    return true;
}

extern "C" const char *cu_conv_library(void) {
    static char s[300];
    if (dnn_open()) {
        size_t v = p_cudnnGetVersion();
        snprintf(s, sizeof s, "cuDNN %zu.%zu.%zu", v / 10000, v / 100 % 100, v % 100);
    } else {
        snprintf(s, sizeof s, "none: %s", g_why);
    }
    return s;
}

/* One shape and direction: descriptors and the chosen algorithm (-1: none allowed). */
typedef struct conv_plan {
    cu_conv_dir dir;
    cu_conv_shape s;
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    int algo;
    size_t ws;
} conv_plan;

static conv_plan *g_plans;
static int g_nplans, g_capplans;

static bool fwd_allowed(cudnnConvolutionFwdAlgo_t a) {
    return a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
           a == CUDNN_CONVOLUTION_FWD_ALGO_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_DIRECT;
}
static bool dx_allowed(cudnnConvolutionBwdDataAlgo_t a) {
    return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 || a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
}
static bool dw_allowed(cudnnConvolutionBwdFilterAlgo_t a) {
    return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 || a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 ||
           a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3;
}

/* The first algorithm of cuDNN's heuristic order that is allowed, deterministic, FMA-only and within the cap. */
#define PICK(perf, n, allowed)                                                                                   \
    for (int i = 0; i < (n) && p->algo < 0; i++)                                                                 \
        if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].determinism == CUDNN_DETERMINISTIC &&               \
            perf[i].mathType == CUDNN_FMA_MATH && allowed(perf[i].algo) && perf[i].memory <= g_ws_cap)          \
            p->algo = (int)perf[i].algo, p->ws = perf[i].memory;

static const conv_plan *conv_plan_get(cu_conv_dir dir, const cu_conv_shape *s) {
    for (int i = 0; i < g_nplans; i++)
        if (g_plans[i].dir == dir && !memcmp(&g_plans[i].s, s, sizeof *s)) return &g_plans[i];
    if (g_nplans == g_capplans) {
        g_capplans = g_capplans ? 2 * g_capplans : 64;
        g_plans = (conv_plan *)realloc(g_plans, sizeof *g_plans * (size_t)g_capplans);
        if (!g_plans) mx_fatal(__FILE__, __LINE__, "out of memory");
    }
    conv_plan *p = &g_plans[g_nplans++];
    memset(p, 0, sizeof *p);
    p->dir = dir;
    p->s = *s;
    p->algo = -1;
    int oh = (s->h + 2 * s->pad - s->kh) / s->stride + 1, ow = (s->w + 2 * s->pad - s->kw) / s->stride + 1;
    DNN_CHECK(p_cudnnCreateTensorDescriptor(&p->x));
    DNN_CHECK(p_cudnnCreateTensorDescriptor(&p->y));
    DNN_CHECK(p_cudnnCreateFilterDescriptor(&p->w));
    DNN_CHECK(p_cudnnCreateConvolutionDescriptor(&p->conv));
    DNN_CHECK(p_cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, s->n, s->c, s->h, s->w));
    DNN_CHECK(p_cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, s->n, s->o, oh, ow));
    DNN_CHECK(p_cudnnSetFilter4dDescriptor(p->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, s->o, s->c, s->kh, s->kw));
    DNN_CHECK(p_cudnnSetConvolution2dDescriptor(p->conv, s->pad, s->pad, s->stride, s->stride, 1, 1,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    DNN_CHECK(p_cudnnSetConvolutionMathType(p->conv, CUDNN_FMA_MATH));
    enum { MAXA = 16 };
    int n = 0;
    if (dir == CU_CONV_FWD) {
        cudnnConvolutionFwdAlgoPerf_t perf[MAXA];
        if (p_cudnnGetConvolutionForwardAlgorithm_v7(g_dnn, p->x, p->w, p->conv, p->y, MAXA, &n, perf) ==
            CUDNN_STATUS_SUCCESS) {
            PICK(perf, n, fwd_allowed)
        }
    } else if (dir == CU_CONV_DX) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[MAXA];
        if (p_cudnnGetConvolutionBackwardDataAlgorithm_v7(g_dnn, p->w, p->y, p->conv, p->x, MAXA, &n, perf) ==
            CUDNN_STATUS_SUCCESS) {
            PICK(perf, n, dx_allowed)
        }
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[MAXA];
        if (p_cudnnGetConvolutionBackwardFilterAlgorithm_v7(g_dnn, p->x, p->y, p->conv, p->w, MAXA, &n, perf) ==
            CUDNN_STATUS_SUCCESS) {
            PICK(perf, n, dw_allowed)
        }
    }
    if (p->algo >= 0 && p->ws > g_ws_bytes) { /* grows rarely: at a new shape's first step */
        if (g_ws) cu_free(g_ws);
        g_ws = cu_malloc(p->ws);
        g_ws_bytes = p->ws;
    }
    return p;
}
#undef PICK

extern "C" bool cu_conv_f32(cu_conv_dir dir, const cu_conv_shape *s, const float *d_x, const float *d_w,
                            const float *d_dy, float *d_out) {
    if (!dnn_open()) return false;
    const conv_plan *p = conv_plan_get(dir, s);
    if (p->algo < 0) return false;
    const float one = 1.0f, zero = 0.0f;
    if (dir == CU_CONV_FWD) /* y = conv(x, w) */
        DNN_CHECK(p_cudnnConvolutionForward(g_dnn, &one, p->x, d_x, p->w, d_w, p->conv,
                                            (cudnnConvolutionFwdAlgo_t)p->algo, g_ws, p->ws, &zero, p->y, d_out));
    else if (dir == CU_CONV_DX) /* dx += conv_transpose(dy, w) */
        DNN_CHECK(p_cudnnConvolutionBackwardData(g_dnn, &one, p->w, d_w, p->y, d_dy, p->conv,
                                                 (cudnnConvolutionBwdDataAlgo_t)p->algo, g_ws, p->ws, &one, p->x,
                                                 d_out));
    else /* dw += x (*) dy */
        DNN_CHECK(p_cudnnConvolutionBackwardFilter(g_dnn, &one, p->x, d_x, p->y, d_dy, p->conv,
                                                   (cudnnConvolutionBwdFilterAlgo_t)p->algo, g_ws, p->ws, &one,
                                                   p->w, d_out));
    return true;
}
