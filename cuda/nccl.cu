// Sums over GPU ranks through NCCL (issue #19). NCCL is opened with dlopen
// when a multi-rank GPU run starts (a CPU run or a one-GPU run never loads
// it), like cuBLASLt and cuDNN; only its header is needed to build.
//
// Two communicators over the same ranks: one for the gradient buckets, on a
// stream of their own (so they overlap the backward's kernels), one for
// BatchNorm's statistics (train.sync_bn), on the compute stream where the
// kernels around it wait for it. One communicator shared by two streams
// could run its operations in a different order on different ranks.
#include <dlfcn.h>
#include <nccl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cuda/cuda.h"
#include "cuda/cuda_internal.h"

extern "C" {
#include "core/timer.h"
}

static_assert(CU_NCCL_ID_BYTES == 2 * sizeof(ncclUniqueId), "CU_NCCL_ID_BYTES must hold two NCCL unique ids");

#define CU_NCCL_FUNCS(X)                                                                                          \
    X(ncclGetVersion, ncclResult_t, (int *))                                                                      \
    X(ncclGetUniqueId, ncclResult_t, (ncclUniqueId *))                                                            \
    X(ncclCommInitRank, ncclResult_t, (ncclComm_t *, int, ncclUniqueId, int))                                     \
    X(ncclCommDestroy, ncclResult_t, (ncclComm_t))                                                                \
    X(ncclCommAbort, ncclResult_t, (ncclComm_t))                                                                  \
    X(ncclCommGetAsyncError, ncclResult_t, (ncclComm_t, ncclResult_t *))                                          \
    X(ncclGetErrorString, const char *, (ncclResult_t))                                                           \
    X(ncclAllReduce, ncclResult_t, (const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t,       \
                                    cudaStream_t))                                                                \
    X(ncclReduceScatter, ncclResult_t, (const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t,   \
                                        cudaStream_t))                                                            \
    X(ncclAllGather, ncclResult_t, (const void *, void *, size_t, ncclDataType_t, ncclComm_t, cudaStream_t))

#define CU_NCCL_PTR(name, ret, args) static ret(*p_##name) args;
CU_NCCL_FUNCS(CU_NCCL_PTR)
#undef CU_NCCL_PTR

static char g_library[96] = "none: not loaded yet";
static bool g_loaded;
static ncclComm_t g_grad_comm, g_stat_comm; /* gradient buckets; BatchNorm statistics */
static cudaStream_t g_stream;              /* the buckets' stream (non-blocking: no implicit sync with stream 0) */
static int g_rank, g_nranks;
static double g_timeout;
enum { EVENTS = 64 };
static cudaEvent_t g_events[EVENTS]; /* reused in turn: a wait takes the event's state when it is queued */
static int g_next_event;
static float *g_stage; /* a bucket whose length the ranks do not divide, padded */
static size_t g_stage_cap;

#define NCCL_CHECK(call)                                                                                          \
    do {                                                                                                          \
        ncclResult_t nc_r_ = (call);                                                                              \
        if (nc_r_ != ncclSuccess)                                                                                 \
            mx_fatal(__FILE__, __LINE__, "NCCL error %d (%s) in %s", (int)nc_r_, p_ncclGetErrorString(nc_r_), #call); \
    } while (0)

static int nccl_load(mx_err *err) {
    if (g_loaded) return 0;
    static const char *const names[] = {"libnccl.so.2", "libnccl.so", "/usr/local/cuda/lib64/libnccl.so.2"};
    void *lib = NULL;
    for (int i = 0; i < 3 && !lib; i++) lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(g_library, sizeof g_library, "none: libnccl.so.2 cannot be loaded");
        return mx_err_set(err, "cannot load NCCL (libnccl.so.2: %s); is the CUDA toolkit's lib64 on the library path?",
                          dlerror());
    }
#define CU_NCCL_LOAD(name, ret, args)                                                                             \
    p_##name = (ret(*) args)dlsym(lib, #name);                                                                    \
    if (!p_##name) return mx_err_set(err, "NCCL (libnccl.so.2) lacks %s", #name);
    CU_NCCL_FUNCS(CU_NCCL_LOAD)
#undef CU_NCCL_LOAD
    int v = 0;
    p_ncclGetVersion(&v);
    snprintf(g_library, sizeof g_library, "NCCL %d.%d.%d", v / 10000, v / 100 % 100, v % 100);
    g_loaded = true;
    return 0;
}

extern "C" const char *cu_nccl_library(void) {
    mx_err e;
    nccl_load(&e);
    return g_library;
}

extern "C" int cu_nccl_unique_id(unsigned char *id, mx_err *err) {
    if (nccl_load(err)) return -1;
    ncclUniqueId u[2];
    for (int i = 0; i < 2; i++) {
        ncclResult_t r = p_ncclGetUniqueId(&u[i]);
        if (r != ncclSuccess) return mx_err_set(err, "NCCL: ncclGetUniqueId: %s", p_ncclGetErrorString(r));
    }
    memcpy(id, u, sizeof u);
    return 0;
}

extern "C" int cu_nccl_open(const unsigned char *id, int rank, int nranks, double timeout_s, mx_err *err) {
    if (nccl_load(err)) return -1;
    if (g_grad_comm) return mx_err_set(err, "NCCL: a communicator is open already");
    ncclUniqueId u[2];
    memcpy(u, id, sizeof u);
    ncclComm_t *comms[2] = {&g_grad_comm, &g_stat_comm};
    for (int i = 0; i < 2; i++) {
        ncclResult_t r = p_ncclCommInitRank(comms[i], nranks, u[i], rank);
        if (r != ncclSuccess) {
            if (i) p_ncclCommDestroy(g_grad_comm), g_grad_comm = NULL;
            return mx_err_set(err, "NCCL: rank %d of %d cannot join the GPUs' communicator: %s", rank, nranks,
                              p_ncclGetErrorString(r));
        }
    }
    CU_CHECK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
    for (int i = 0; i < EVENTS; i++) CU_CHECK(cudaEventCreateWithFlags(&g_events[i], cudaEventDisableTiming));
    g_rank = rank, g_nranks = nranks, g_timeout = timeout_s > 0 ? timeout_s : 300;
    return 0;
}

extern "C" bool cu_nccl_is_open(void) { return g_grad_comm != NULL; }

extern "C" void cu_nccl_close(void) {
    if (!g_grad_comm) return;
    CU_CHECK(cudaDeviceSynchronize());
    p_ncclCommDestroy(g_grad_comm);
    p_ncclCommDestroy(g_stat_comm);
    g_grad_comm = g_stat_comm = NULL;
    for (int i = 0; i < EVENTS; i++) cudaEventDestroy(g_events[i]);
    cudaStreamDestroy(g_stream);
    if (g_stage) cu_free(g_stage);
    g_stage = NULL, g_stage_cap = 0;
}

/* `after` waits for everything queued on `before` so far. */
static void stream_after(cudaStream_t after, cudaStream_t before) {
    cudaEvent_t e = g_events[g_next_event++ % EVENTS];
    CU_CHECK(cudaEventRecord(e, before));
    CU_CHECK(cudaStreamWaitEvent(after, e, 0));
}

extern "C" void cu_nccl_sum_start(float *d_buf, int64_t n) {
    MX_ASSERTF(g_grad_comm, "cu_nccl_sum_start before cu_nccl_open");
    if (n <= 0) return;
    stream_after(g_stream, 0); /* the backward kernels that wrote the bucket */
    /* each chunk summed by its owning rank, then gathered: every rank gets the same bits */
    size_t chunk = (size_t)(n + g_nranks - 1) / (size_t)g_nranks;
    float *buf = d_buf;
    if (chunk * (size_t)g_nranks != (size_t)n) {
        size_t need = sizeof(float) * chunk * (size_t)g_nranks;
        if (need > g_stage_cap) {
            CU_CHECK(cudaStreamSynchronize(g_stream)); /* the old stage may be in use (first steps only) */
            if (g_stage) cu_free(g_stage);
            g_stage = (float *)cu_malloc(need), g_stage_cap = need;
        }
        buf = g_stage;
        CU_CHECK(cudaMemcpyAsync(buf, d_buf, sizeof(float) * (size_t)n, cudaMemcpyDeviceToDevice, g_stream));
        CU_CHECK(cudaMemsetAsync(buf + n, 0, need - sizeof(float) * (size_t)n, g_stream));
    }
    float *mine = buf + chunk * (size_t)g_rank;
    NCCL_CHECK(p_ncclReduceScatter(buf, mine, chunk, ncclFloat32, ncclSum, g_grad_comm, g_stream));
    NCCL_CHECK(p_ncclAllGather(mine, buf, chunk, ncclFloat32, g_grad_comm, g_stream));
    if (buf != d_buf)
        CU_CHECK(cudaMemcpyAsync(d_buf, buf, sizeof(float) * (size_t)n, cudaMemcpyDeviceToDevice, g_stream));
}

extern "C" void cu_nccl_sum_join(void) {
    if (g_grad_comm) stream_after(0, g_stream);
}

extern "C" void cu_nccl_sum_f64(double *d_buf, int64_t n) {
    MX_ASSERTF(g_stat_comm, "cu_nccl_sum_f64 before cu_nccl_open");
    if (n > 0) NCCL_CHECK(p_ncclAllReduce(d_buf, d_buf, (size_t)n, ncclFloat64, ncclSum, g_stat_comm, 0));
}

extern "C" int cu_nccl_wait(mx_err *err) {
    if (!g_grad_comm) return 0;
    cudaEvent_t e = g_events[g_next_event++ % EVENTS];
    CU_CHECK(cudaEventRecord(e, 0));
    double t0 = timer_now();
    for (;;) {
        cudaError_t q = cudaEventQuery(e);
        if (q == cudaSuccess) return 0;
        if (q != cudaErrorNotReady) CU_CHECK(q);
        ncclResult_t a = ncclSuccess, b = ncclSuccess;
        p_ncclCommGetAsyncError(g_grad_comm, &a);
        p_ncclCommGetAsyncError(g_stat_comm, &b);
        bool late = timer_now() - t0 > g_timeout;
        if (a != ncclSuccess || b != ncclSuccess || late) {
            /* the kernels would wait for the missing rank forever: abort them, then say so */
            p_ncclCommAbort(g_grad_comm);
            p_ncclCommAbort(g_stat_comm);
            g_grad_comm = g_stat_comm = NULL;
            if (late)
                return mx_err_set(err, "rank %d of %d: the GPUs' sums waited %.0f s for the other ranks (one died or "
                                  "hangs; train.dist_timeout_s)", g_rank, g_nranks, g_timeout);
            return mx_err_set(err, "rank %d of %d: NCCL: %s (another rank ended?)", g_rank, g_nranks,
                              p_ncclGetErrorString(a != ncclSuccess ? a : b));
        }
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
}
