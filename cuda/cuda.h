/* The GPU backend (optional: built when nvcc is found; MXTRAIN_HAVE_CUDA).
 *
 * A C interface over CUDA, so the rest of the code base stays C11 and knows
 * no CUDA types. Pointers named d_* are device memory. Every CUDA call is
 * checked: a failure is fatal with the file:line of the call (CU_CHECK in
 * cuda_internal.h), like MX_ASSERT; user-facing failures (no GPU when one was
 * asked for) are mx_err messages.
 *
 * The quantizer here computes exactly the CPU's bits: both use the per-element
 * arithmetic of quant/quant_kernel.h, the same layouts, the same Philox
 * streams for stochastic rounding, and no fused multiply-adds (the .cu files
 * are compiled with --fmad=false). Statistics: counts and the exponent-gap
 * histogram are exact; the QSNR sums are double sums in another order. */
#ifndef MX_CUDA_CUDA_H
#define MX_CUDA_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "core/arena.h"
#include "core/error.h"
#include "quant/quant.h"

/* Whether a GPU is usable (driver present, at least one device); how many. */
bool cu_available(void);
int cu_device_count(void);
/* Selects the GPU (0, or cu_select_device's); -1 with "no GPU is visible
 * (...)" when there is none. */
int cu_init(mx_err *err);
/* The GPU cu_init selects: `index` modulo the GPUs visible (a rank's index
 * on its machine, so the ranks of one machine take one GPU each). */
void cu_select_device(int index);
/* Runtime and driver versions and each GPU's name, memory and SM count (or
 * that none is visible), for `mxtrain version`. */
void cu_describe(FILE *f);

/* Device memory (plain cudaMalloc; never managed memory). */
void *cu_malloc(size_t bytes);
void cu_free(void *d);
void cu_to_device(void *d_dst, const void *src, size_t bytes);
void cu_to_host(void *dst, const void *d_src, size_t bytes);
void cu_copy(void *d_dst, const void *d_src, size_t bytes);
void cu_memset(void *d, int value, size_t bytes);
void cu_sync(void);
/* Device memory in use on the current GPU (total - free: ours, the context's, libraries'). */
size_t cu_mem_used(void);
/* What was in use once cu_init had made the context (the context itself, and
 * any other process's memory): cu_mem_used() - cu_mem_context() is this run's. */
size_t cu_mem_context(void);

/* Device memory for core/arena.h (arena_init_mem): the autograd context's
 * step and scratch arenas on the GPU (256-byte aligned blocks). */
extern const arena_mem cu_arena_mem;
/* Pinned host memory, and a host-to-device copy queued on the stream every
 * kernel runs on (the default stream): it returns at once, and a kernel
 * queued after it sees the data. The source must stay untouched until
 * cu_sync or a later synchronous copy. */
void *cu_host_alloc(size_t bytes);
void cu_host_free(void *p);
/* Pinned host memory as an arena_mem (the loader's batch buffers when steps run on the GPU). */
extern const arena_mem cu_pinned_mem;
void cu_to_device_async(void *d_dst, const void *src, size_t bytes);


/* The quantizer on device arrays, with quant.h's contract (shape, spec,
 * scales in block order, stats overwritten when not NULL). */
void cu_quant_fake(const quant_spec *s, const float *d_x, float *d_y, int ndim, const int64_t *shape,
                   uint8_t *d_scales, quant_stats *stats);
void cu_quant_pack(const quant_spec *s, const float *d_x, uint8_t *d_codes, int ndim, const int64_t *shape,
                   uint8_t *d_scales, quant_stats *stats);
void cu_quant_pack_fake(const quant_spec *s, const float *d_x, uint8_t *d_codes, float *d_y, int ndim,
                        const int64_t *shape, uint8_t *d_scales, quant_stats *stats);
void cu_quant_unpack(const quant_spec *s, const uint8_t *d_codes, const uint8_t *d_scales, float *d_y, int ndim,
                     const int64_t *shape);
/* Fake-quantization written as bfloat16 (the GEMM operand form). Every value
 * of an 8-bit-or-narrower MX format is exact in bf16 except below bf16's
 * smallest subnormal step (2^-133), which blocks scaled near 2^-127 reach
 * (MXSF's E3M2 subnormals); returns how many elements were not bf16-exact,
 * so a caller can keep that operand in float32 instead. */
int64_t cu_quant_fake_bf16(const quant_spec *s, const float *d_x, uint16_t *d_y, int ndim, const int64_t *shape,
                           uint8_t *d_scales, quant_stats *stats);
/* The same without its synchronization (no statistics): the inexact
 * elements are added on the device to a running tally that
 * cu_quant_inexact_take reads (a sync) and resets. A training step uses it
 * to send every operand to the tensor cores unchecked, then checks once. */
void cu_quant_fake_bf16_deferred(const quant_spec *s, const float *d_x, uint16_t *d_y, int ndim, const int64_t *shape,
                                 uint8_t *d_scales);
int64_t cu_quant_inexact_take(void);

/* Device-to-device copy bandwidth (GB/s, bytes read + written) and the
 * quantizer's throughput for `mxtrain bench quantize --device cuda`: one JSON
 * line per format on stdout. */
int cu_quant_bench(const quant_format *formats, int nformats, int64_t n, int reps);

/* GEMMs (cuBLASLt, opened at the first use; cuda/gemm.cu). Row-major like
 * core/gemm.h: C[m,n] = alpha * op(A) op(B) + beta * C with op(A) [m,k]
 * (A stored [k,m] when trans_a) and op(B) [k,n] (B stored [n,k] when
 * trans_b), `batch` products strided by stride_a/b/c elements. A and B are
 * both bf16 (tensor cores, FP32 accumulation) or both float32 (FP32, no
 * TF32); C is float32. */
typedef enum cu_gemm_type { CU_GEMM_BF16, CU_GEMM_F32 } cu_gemm_type;
typedef struct cu_gemm_desc {
    int64_t m, n, k;
    bool trans_a, trans_b;
    cu_gemm_type type;
    int batch;
    int64_t stride_a, stride_b, stride_c;
    float alpha, beta;
} cu_gemm_desc;
/* Loads cuBLASLt; -1 with a message when it cannot be found. */
int cu_gemm_open(mx_err *err);
void cu_gemm(const cu_gemm_desc *d, const void *d_a, const void *d_b, float *d_c);
/* `mxtrain bench gemm --device cuda`: bf16 and fp32 n x n x n, JSON lines. */
int cu_gemm_bench(int64_t n, int reps);

/* FP32 convolutions through cuDNN (cuda/conv.cu): x NHWC [n,h,w,c], W OHWI
 * [o,kh,kw,c], y / dy NHWC [n,oh,ow,o]; FWD writes y, DX adds to dx, DW adds
 * to dW. FP32 multiply-adds only (no TF32, Winograd or FFT), deterministic
 * algorithms. False when cuDNN cannot be loaded or offers no such algorithm
 * for the shape: the caller then gathers and multiplies with cuBLAS. */
typedef enum cu_conv_dir { CU_CONV_FWD, CU_CONV_DX, CU_CONV_DW } cu_conv_dir;
typedef struct cu_conv_shape {
    int n, h, w, c, o, kh, kw, stride, pad;
} cu_conv_shape;
bool cu_conv_f32(cu_conv_dir dir, const cu_conv_shape *s, const float *d_x, const float *d_w, const float *d_dy,
                 float *d_out);
/* "cuDNN 9.x.y", or "none: why" (mxtrain version, tests) */
const char *cu_conv_library(void);

/* Sums over GPU ranks (cuda/nccl.cu, issue #19): NCCL, opened with dlopen
 * when a run on several GPU ranks starts; one GPU per rank. Rank 0 makes the
 * id (cu_nccl_unique_id), every rank receives it (dist_bcast) and opens.
 * Gradient sums run on a stream of their own, each after what the compute
 * stream has queued when it starts, so they overlap the rest of the
 * backward; cu_nccl_sum_join makes the compute stream wait for them all.
 * A sum gives every rank the same bits (a reduce-scatter, each chunk summed
 * by one rank, then an all-gather), like dist.h's. NCCL's failures in a
 * call are fatal; a rank that died or hangs is found by cu_nccl_wait. */
#define CU_NCCL_ID_BYTES 256 /* two NCCL unique ids: the gradients' and the statistics' communicators */
int cu_nccl_unique_id(unsigned char *id, mx_err *err);
int cu_nccl_open(const unsigned char *id, int rank, int nranks, double timeout_s, mx_err *err);
bool cu_nccl_is_open(void);
void cu_nccl_close(void);
/* "NCCL 2.28.9", or "none: why" */
const char *cu_nccl_library(void);
/* The sum of d_buf over the ranks, in place, queued (returns at once). */
void cu_nccl_sum_start(float *d_buf, int64_t n);
void cu_nccl_sum_join(void);
/* A sum on the compute stream (BatchNorm's statistics under train.sync_bn). */
void cu_nccl_sum_f64(double *d_buf, int64_t n);
/* Waits until the compute stream has run everything queued, for at most
 * the timeout given to cu_nccl_open; -1 with err (the communicators
 * aborted) on a timeout or when NCCL reports another rank's failure. */
int cu_nccl_wait(mx_err *err);

/* The ops' kernels (cuda/ops.cu), on device arrays, with the CPU ops'
 * per-element arithmetic (autograd/ops_kernel.h). Backward calls accumulate
 * into dx (and db) like the CPU's. */
typedef enum cu_unary { CU_UNARY_RELU, CU_UNARY_GELU, CU_UNARY_GELU_TANH } cu_unary;
void cu_op_unary(cu_unary kind, int64_t n, const float *d_x, float *d_y);
/* d_xy: relu's output, the GELUs' input (what each backward reads) */
void cu_op_unary_backward(cu_unary kind, int64_t n, const float *d_xy, const float *d_dy, float *d_dx);
/* y = a + b with b (nb elements) repeating over a (na); either gradient may be NULL */
void cu_op_add(int64_t na, int64_t nb, const float *d_a, const float *d_b, float *d_y);
void cu_op_add_backward(int64_t na, int64_t nb, const float *d_dy, float *d_da, float *d_db);
/* softmax over the last axis: rows x d */
void cu_op_softmax(int64_t rows, int64_t d, const float *d_x, float *d_y);
void cu_op_softmax_backward(int64_t rows, int64_t d, const float *d_y, const float *d_dy, float *d_dx);
/* dropout (group 1) and drop-path (group = one sample's elements) */
void cu_op_drop(int64_t n, uint64_t seed, uint64_t stream, float p, int64_t group, const float *d_x, float *d_y);
void cu_op_drop_backward(int64_t n, uint64_t seed, uint64_t stream, float p, int64_t group, const float *d_dy,
                         float *d_dx);
/* layernorm over the last axis: rows x d; mean and rstd (rows each) are saved for the backward */
void cu_op_layernorm(int64_t rows, int64_t d, float eps, const float *d_x, const float *d_gamma, const float *d_beta,
                     float *d_y, float *d_mean, float *d_rstd);
/* any of dx, dgamma, dbeta may be NULL */
void cu_op_layernorm_backward(int64_t rows, int64_t d, const float *d_x, const float *d_gamma, const float *d_mean,
                              const float *d_rstd, const float *d_dy, float *d_dx, float *d_dgamma, float *d_dbeta);
/* cross-entropy of n x c logits with label smoothing: the mean loss into
 * d_loss (one float; no sync: rows' losses in d_work, n doubles, summed in
 * order), and the probabilities (n x c) the backward reads; labels are valid
 * (checked before the first step). The backward reads d(loss) from d_dloss. */
void cu_op_cross_entropy(int64_t n, int64_t c, const float *d_logits, const int32_t *d_labels, float smoothing,
                         float *d_prob, double *d_work, float *d_loss);
void cu_op_cross_entropy_backward(int64_t n, int64_t c, const float *d_prob, const int32_t *d_labels, float smoothing,
                                  const float *d_dloss, float *d_dx);
/* softmax of x * scale (attention's scores); its backward written, not
 * accumulated: dx = y * (dy - sum(y dy)) * scale (dx may be dy) */
void cu_op_softmax_scaled(int64_t rows, int64_t d, float scale, const float *d_x, float *d_y);
void cu_op_softmax_backward_scaled(int64_t rows, int64_t d, float scale, const float *d_y, const float *d_dy,
                                   float *d_dx);
/* attention's layout changes: qkv [B, T, 3, H, hd] -> q, k, v [B, H, T, hd],
 * and the gradients back (accumulated into dqkv) */
void cu_op_qkv_split(int64_t b, int64_t t, int64_t h, int64_t hd, const float *d_qkv, float *d_q, float *d_k,
                     float *d_v);
void cu_op_qkv_backward(int64_t b, int64_t t, int64_t h, int64_t hd, const float *d_dq, const float *d_dk,
                        const float *d_dv, float *d_dqkv);
/* small elementwise helpers: quant.elementwise = bf16's rounding in place,
 * y *= s, y += v, and dst += src */
void cu_op_round_bf16(int64_t n, float *d_y);
void cu_op_scale(int64_t n, float s, float *d_y);
void cu_op_add_scalar(int64_t n, float v, float *d_y);
void cu_op_accumulate(int64_t n, const float *d_src, float *d_dst);
/* out[j] += sum over rows of x[r, j] (deterministic: fixed chunks of rows, then the chunks in order) */
void cu_op_colsum_add(int64_t rows, int64_t cols, const float *d_x, float *d_out);
/* d_y[0] = sum (or mean) of x in double; backward: dx += dy[0] * scale */
void cu_op_reduce(int64_t n, bool mean, const float *d_x, float *d_y);
void cu_op_reduce_backward(int64_t n, float scale, const float *d_dy, float *d_dx);
/* sum of squares in double (a sync), and the number of non-finite values in
 * k arrays (one sync for all) */
double cu_sum_squares(int64_t n, const float *d_x);
int64_t cu_count_nonfinite(int k, const int64_t *n, const float *const *d_x);
/* bfloat16 <-> float32 (to bf16: nearest even; exact for MX values) */
void cu_f32_to_bf16(int64_t n, const float *d_x, uint16_t *d_y);
void cu_bf16_to_f32(int64_t n, const uint16_t *d_x, float *d_y);
/* The convolution's gathers (autograd/ops_kernel.h's ag_window): rows
 * [r0, r1) of kernel windows of src into cols (elements of 2 bytes, bf16,
 * or 4, float32), and dx += col2im(dcols) of an im2col window for dcols'
 * rows [r0, r1) (each input element adds its kernel positions in row
 * order, the CPU's: deterministic). */
struct ag_window;
void cu_conv_gather(const struct ag_window *g, int elem_bytes, const void *d_src, int64_t r0, int64_t r1,
                    void *d_cols);
void cu_conv_col2im_add(const struct ag_window *g, int64_t r0, int64_t r1, const float *d_dcols, float *d_dx);
/* cu_op_strided's copy for 2-byte (bf16) elements */
void cu_op_strided16(const int64_t *oshape, const int64_t *istride, const uint16_t *d_src, uint16_t *d_dst);
/* batchnorm2d over NHWC rows x c (training: batch statistics, running ones
 * updated; eval: running ones), with an optional residual added before the
 * optional ReLU; bf16: quant.elementwise = bf16's rounding. mean/invstd (c
 * each) are saved for the backward; work: cu_bn_work_bytes. The backward
 * needs y only with relu; any gradient pointer may be NULL. synced
 * (train.sync_bn on GPU ranks): the statistics and the backward's sums over
 * every rank's rows (cu_nccl_sum_f64); d_rows_all (one device double) gets
 * the forward's global row count, which its backward reads. */
typedef struct cu_bn_args {
    int64_t rows, c;
    float momentum, eps;
    bool train, relu, bf16, synced;
    double *d_rows_all;
} cu_bn_args;
size_t cu_bn_work_bytes(int64_t rows, int64_t c);
void cu_op_batchnorm(const cu_bn_args *a, const float *d_x, const float *d_gamma, const float *d_beta,
                     const float *d_res, float *d_running_mean, float *d_running_var, float *d_y, float *d_mean,
                     float *d_invstd, double *d_work);
void cu_op_batchnorm_backward(const cu_bn_args *a, const float *d_x, const float *d_gamma, const float *d_y,
                              const float *d_mean, const float *d_invstd, const float *d_dy, float *d_dx,
                              float *d_dgamma, float *d_dbeta, float *d_dres, double *d_work);
/* pooling over NHWC: k x k max pooling (argmax: flat input index per output,
 * for the backward; deterministic, the CPU's sums) and global average */
void cu_op_maxpool(int64_t n, int64_t h, int64_t w, int64_t c, int k, int stride, int pad, const float *d_x,
                   float *d_y, int32_t *d_arg);
void cu_op_maxpool_backward(int64_t n, int64_t h, int64_t w, int64_t c, int k, int stride, int pad,
                            const int32_t *d_arg, const float *d_dy, float *d_dx);
void cu_op_avgpool_global(int64_t n, int64_t hw, int64_t c, const float *d_x, float *d_y);
void cu_op_avgpool_global_backward(int64_t n, int64_t hw, int64_t c, const float *d_dy, float *d_dx);
/* shape ops: a 4-D strided copy (or add) for permute (ag_permute_plan gives
 * oshape/istride), concat of [outer, la|lb, inner] rows (pa = la*inner, pb =
 * lb*inner; a repeats every a_outer rows), slice along [outer, len_in, inner] */
void cu_op_strided(const int64_t *oshape, const int64_t *istride, const float *d_src, float *d_dst, bool add);
void cu_op_concat(int64_t outer, int64_t pa, int64_t pb, int64_t a_outer, const float *d_a, const float *d_b,
                  float *d_y);
void cu_op_concat_backward(int64_t outer, int64_t pa, int64_t pb, int64_t a_outer, const float *d_dy, float *d_da,
                           float *d_db);
void cu_op_slice(int64_t outer, int64_t len_in, int64_t start, int64_t len, int64_t inner, const float *d_x,
                 float *d_y);
void cu_op_slice_backward(int64_t outer, int64_t len_in, int64_t start, int64_t len, int64_t inner,
                          const float *d_dy, float *d_dx);
/* one entry's parameter update (the per-step scalars from optim_adamw_args / optim_sgd_args) */
struct optim_k_adamw;
struct optim_k_sgd;
void cu_optim_adamw(int64_t n, const struct optim_k_adamw *a, float *d_p, const float *d_g, float *d_m, float *d_v);
void cu_optim_sgd(int64_t n, const struct optim_k_sgd *a, float *d_p, const float *d_g, float *d_buf);

#ifdef __cplusplus
}
#endif

#endif
