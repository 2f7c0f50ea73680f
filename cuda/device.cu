// Device selection, description, memory and the device step arena.
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda.h"
#include "cuda/cuda_internal.h"

extern "C" {

bool cu_available(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no driver" error */
        return false;
    }
    return n > 0;
}

int cu_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) cudaGetLastError(), n = 0;
    return n;
}

static size_t g_mem_context; /* device memory in use once the context was up (cu_init) */
static int g_device_index;

void cu_select_device(int index) { g_device_index = index > 0 ? index : 0; }

int cu_init(mx_err *err) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        cudaGetLastError();
        return mx_err_set(err, "no GPU is visible (%s); use --device cpu",
                          e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device");
    }
    CU_CHECK(cudaSetDevice(g_device_index % n));
    CU_CHECK(cudaFree(0)); /* creates the context now, so what it takes can be told apart */
    g_mem_context = cu_mem_used();
    return 0;
}

size_t cu_mem_context(void) { return g_mem_context; }

void cu_describe(FILE *f) {
    int rt = 0, drv = 0;
    cudaRuntimeGetVersion(&rt);
    cudaDriverGetVersion(&drv);
    fprintf(f, "cuda: runtime %d.%d (static), driver %s", rt / 1000, (rt % 1000) / 10, drv ? "" : "none");
    if (drv) fprintf(f, "%d.%d", drv / 1000, (drv % 1000) / 10);
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        cudaGetLastError();
        fprintf(f, "; no GPU is visible\n");
        return;
    }
    fprintf(f, "; %d GPU%s\n", n, n > 1 ? "s" : "");
    for (int i = 0; i < n; i++) {
        cudaDeviceProp p;
        CU_CHECK(cudaGetDeviceProperties(&p, i));
        fprintf(f, "gpu %d: %s, %.1f GiB, %d SMs, compute capability %d.%d\n", i, p.name,
                (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), p.multiProcessorCount, p.major, p.minor);
    }
    fprintf(f, "fp32 convolutions: %s\n", cu_conv_library());
    fprintf(f, "gpu ranks' sums: %s\n", cu_nccl_library());
}

void *cu_malloc(size_t bytes) {
    void *d = NULL;
    cudaError_t e = cudaMalloc(&d, bytes ? bytes : 1);
    if (e != cudaSuccess) mx_fatal(__FILE__, __LINE__, "out of GPU memory allocating %zu bytes (%s)", bytes,
                                   cudaGetErrorString(e));
    return d;
}

void cu_free(void *d) {
    if (d) CU_CHECK(cudaFree(d));
}

void cu_to_device(void *d_dst, const void *src, size_t bytes) {
    CU_CHECK(cudaMemcpy(d_dst, src, bytes, cudaMemcpyHostToDevice));
}
void cu_to_host(void *dst, const void *d_src, size_t bytes) {
    CU_CHECK(cudaMemcpy(dst, d_src, bytes, cudaMemcpyDeviceToHost));
}
void cu_copy(void *d_dst, const void *d_src, size_t bytes) {
    CU_CHECK(cudaMemcpy(d_dst, d_src, bytes, cudaMemcpyDeviceToDevice));
}
void cu_memset(void *d, int value, size_t bytes) { CU_CHECK(cudaMemsetAsync(d, value, bytes)); }

void *cu_host_alloc(size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaMallocHost(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) mx_fatal(__FILE__, __LINE__, "cannot pin %zu bytes of host memory (%s)", bytes,
                                   cudaGetErrorString(e));
    return p;
}

void cu_host_free(void *p) {
    if (p) CU_CHECK(cudaFreeHost(p));
}

void cu_to_device_async(void *d_dst, const void *src, size_t bytes) {
    CU_CHECK(cudaMemcpyAsync(d_dst, src, bytes, cudaMemcpyHostToDevice, 0));
}

static void cu_zero(void *d, size_t bytes) { cu_memset(d, 0, bytes); }
const arena_mem cu_arena_mem = {cu_malloc, cu_free, cu_zero};

static void host_zero(void *p, size_t bytes) { memset(p, 0, bytes); }
const arena_mem cu_pinned_mem = {cu_host_alloc, cu_host_free, host_zero};
void cu_sync(void) { CU_CHECK(cudaDeviceSynchronize()); }

size_t cu_mem_used(void) {
    size_t fr = 0, total = 0;
    CU_CHECK(cudaMemGetInfo(&fr, &total));
    return total - fr;
}

}  // extern "C"
