// Elementwise ops, add with a repeating operand, softmax and dropout on the
// GPU (issue #16: the ops' kernels, before the tape runs on the device). The
// per-element arithmetic is autograd/ops_kernel.h's, shared with the CPU's
// ops; backward kernels accumulate into dx like the CPU's.
extern "C" {
#include "autograd/ops_kernel.h"
}
#include "cuda/cuda.h"
#include "cuda/cuda_internal.h"

static int ops_grid(int64_t n) {
    int64_t b = (n + 255) / 256;
    return (int)(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

#define GRID_STRIDE(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

__global__ void k_unary(int kind, int64_t n, const float *__restrict__ x, float *__restrict__ y) {
    GRID_STRIDE(i, n) {
        float v = x[i];
        y[i] = kind == CU_UNARY_RELU ? ag_k_relu(v) : kind == CU_UNARY_GELU ? ag_k_gelu(v) : ag_k_gelu_tanh(v);
    }
}

/* relu takes its output (xy = y), the GELUs their input (xy = x) */
__global__ void k_unary_back(int kind, int64_t n, const float *__restrict__ xy, const float *__restrict__ dy,
                             float *__restrict__ dx) {
    GRID_STRIDE(i, n) {
        float v = xy[i];
        dx[i] += kind == CU_UNARY_RELU ? ag_k_relu_back(v, dy[i])
                                       : dy[i] * (kind == CU_UNARY_GELU ? ag_k_gelu_grad(v) : ag_k_gelu_tanh_grad(v));
    }
}

extern "C" void cu_op_unary(cu_unary kind, int64_t n, const float *d_x, float *d_y) {
    if (n <= 0) return;
    k_unary<<<ops_grid(n), 256>>>((int)kind, n, d_x, d_y);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_unary_backward(cu_unary kind, int64_t n, const float *d_xy, const float *d_dy, float *d_dx) {
    if (n <= 0) return;
    k_unary_back<<<ops_grid(n), 256>>>((int)kind, n, d_xy, d_dy, d_dx);
    CU_CHECK_LAUNCH();
}

__global__ void k_add(int64_t na, int64_t nb, const float *__restrict__ a, const float *__restrict__ b,
                      float *__restrict__ y) {
    GRID_STRIDE(i, na) y[i] = a[i] + b[i % nb];
}

__global__ void k_accumulate(int64_t n, const float *__restrict__ src, float *__restrict__ dst) {
    GRID_STRIDE(i, n) dst[i] += src[i];
}

/* db[j] += sum over the rows of dy[row, j]: one thread per column, rows in order */
__global__ void k_colsum(int64_t rows, int64_t cols, const float *__restrict__ dy, float *__restrict__ db) {
    GRID_STRIDE(j, cols) {
        float s = 0.0f;
        for (int64_t r = 0; r < rows; r++) s += dy[r * cols + j];
        db[j] += s;
    }
}

extern "C" void cu_op_add(int64_t na, int64_t nb, const float *d_a, const float *d_b, float *d_y) {
    MX_ASSERT(nb > 0 && na % nb == 0);
    k_add<<<ops_grid(na), 256>>>(na, nb, d_a, d_b, d_y);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_add_backward(int64_t na, int64_t nb, const float *d_dy, float *d_da, float *d_db) {
    MX_ASSERT(nb > 0 && na % nb == 0);
    if (d_da) k_accumulate<<<ops_grid(na), 256>>>(na, d_dy, d_da);
    if (d_db && na == nb) k_accumulate<<<ops_grid(nb), 256>>>(nb, d_dy, d_db);
    else if (d_db) k_colsum<<<ops_grid(nb), 256>>>(na / nb, nb, d_dy, d_db);
    CU_CHECK_LAUNCH();
}

/* Softmax over rows of d: one warp per row (max, sum of exponentials, scale). */
__global__ void k_softmax(int64_t rows, int64_t d, const float *__restrict__ x, float *__restrict__ y) {
    int lane = threadIdx.x & 31;
    int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
        const float *xr = x + r * d;
        float *yr = y + r * d, mx = -INFINITY, sum = 0.0f;
        for (int64_t j = lane; j < d; j += 32) mx = fmaxf(mx, xr[j]);
        for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        for (int64_t j = lane; j < d; j += 32) sum += (yr[j] = mx_expf(xr[j] - mx));
        for (int o = 16; o; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        for (int64_t j = lane; j < d; j += 32) yr[j] /= sum;
    }
}

__global__ void k_softmax_back(int64_t rows, int64_t d, const float *__restrict__ y, const float *__restrict__ dy,
                               float *__restrict__ dx) {
    int lane = threadIdx.x & 31;
    int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
        const float *yr = y + r * d, *gr = dy + r * d;
        float dot = 0.0f;
        for (int64_t j = lane; j < d; j += 32) dot += yr[j] * gr[j];
        for (int o = 16; o; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        for (int64_t j = lane; j < d; j += 32) dx[r * d + j] += yr[j] * (gr[j] - dot);
    }
}

static int rows_grid(int64_t rows) {
    int64_t b = (rows + 7) / 8; /* 8 warps of 32 per 256-thread block */
    return (int)(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

extern "C" void cu_op_softmax(int64_t rows, int64_t d, const float *d_x, float *d_y) {
    if (rows <= 0) return;
    k_softmax<<<rows_grid(rows), 256>>>(rows, d, d_x, d_y);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_softmax_backward(int64_t rows, int64_t d, const float *d_y, const float *d_dy, float *d_dx) {
    if (rows <= 0) return;
    k_softmax_back<<<rows_grid(rows), 256>>>(rows, d, d_y, d_dy, d_dx);
    CU_CHECK_LAUNCH();
}

/* Dropout / drop-path: y = x * scale(i), dx += dy * scale(i), the scale drawn
 * from the same Philox words as the CPU's (ag_k_drop_scale). */
__global__ void k_drop(int64_t n, uint64_t seed, uint64_t stream, float p, int64_t group, const float *__restrict__ x,
                       float *__restrict__ y, bool accumulate) {
    GRID_STRIDE(i, n) {
        float v = x[i] * ag_k_drop_scale(seed, stream, p, group, i);
        if (accumulate) y[i] += v;
        else y[i] = v;
    }
}

extern "C" void cu_op_drop(int64_t n, uint64_t seed, uint64_t stream, float p, int64_t group, const float *d_x,
                           float *d_y) {
    if (n <= 0) return;
    k_drop<<<ops_grid(n), 256>>>(n, seed, stream, p, group, d_x, d_y, false);
    CU_CHECK_LAUNCH();
}

extern "C" void cu_op_drop_backward(int64_t n, uint64_t seed, uint64_t stream, float p, int64_t group,
                                    const float *d_dy, float *d_dx) {
    if (n <= 0) return;
    k_drop<<<ops_grid(n), 256>>>(n, seed, stream, p, group, d_dy, d_dx, true);
    CU_CHECK_LAUNCH();
}
