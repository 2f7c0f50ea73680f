/* The GPU backend where it is not built (no nvcc): the same interface, so
 * the modules call it without #ifdefs. cu_available() is false and cu_init
 * says why, so no context, model or command ever reaches the GPU; any other
 * call is a programming error and stops with its name. */
#include "cuda/cuda.h"

#include <stdio.h>

static MX_NORETURN void cu_none(const char *fn) {
    mx_fatal(__FILE__, __LINE__, "%s: this mxtrain was built without CUDA", fn);
}

const arena_mem cu_arena_mem = {0, 0, 0}, cu_pinned_mem = {0, 0, 0};

bool cu_available(void) { return false; }
int cu_device_count(void) { return 0; }
int cu_init(mx_err *err) { return mx_err_set(err, "this mxtrain was built without CUDA (no nvcc at build time); use --device cpu"); }
void cu_select_device(int index) { (void)index; }
int cu_nccl_unique_id(unsigned char *id, mx_err *err) { (void)id; return mx_err_set(err, "this mxtrain was built without CUDA"); }
int cu_nccl_open(const unsigned char *id, int rank, int nranks, double timeout_s, mx_err *err) { (void)id, (void)rank, (void)nranks, (void)timeout_s; return mx_err_set(err, "this mxtrain was built without CUDA"); }
bool cu_nccl_is_open(void) { return false; }
void cu_nccl_close(void) {}
const char *cu_nccl_library(void) { return "none: this mxtrain was built without CUDA"; }
void cu_nccl_sum_start(float *d_buf, int64_t n) { cu_none(__func__); }
void cu_nccl_sum_join(void) {}
void cu_nccl_sum_f64(double *d_buf, int64_t n) { cu_none(__func__); }
int cu_nccl_wait(mx_err *err) { (void)err; return 0; }
void cu_describe(FILE *f) { fprintf(f, "cuda: not built (no nvcc at build time)\n"); }
void *cu_malloc(size_t bytes) { cu_none(__func__); }
void cu_free(void *d) { cu_none(__func__); }
void cu_to_device(void *d_dst, const void *src, size_t bytes) { cu_none(__func__); }
void cu_to_host(void *dst, const void *d_src, size_t bytes) { cu_none(__func__); }
void cu_copy(void *d_dst, const void *d_src, size_t bytes) { cu_none(__func__); }
void cu_memset(void *d, int value, size_t bytes) { cu_none(__func__); }
void cu_sync(void) { cu_none(__func__); }
size_t cu_mem_used(void) { cu_none(__func__); }
size_t cu_mem_context(void) { cu_none(__func__); }
void *cu_host_alloc(size_t bytes) { cu_none(__func__); }
void cu_host_free(void *p) { cu_none(__func__); }
void cu_to_device_async(void *d_dst, const void *src, size_t bytes) { cu_none(__func__); }
void cu_quant_fake(const quant_spec *s, const float *d_x, float *d_y, int ndim, const int64_t *shape, uint8_t *d_scales, quant_stats *stats) { cu_none(__func__); }
void cu_quant_pack(const quant_spec *s, const float *d_x, uint8_t *d_codes, int ndim, const int64_t *shape, uint8_t *d_scales, quant_stats *stats) { cu_none(__func__); }
void cu_quant_pack_fake(const quant_spec *s, const float *d_x, uint8_t *d_codes, float *d_y, int ndim, const int64_t *shape, uint8_t *d_scales, quant_stats *stats) { cu_none(__func__); }
void cu_quant_unpack(const quant_spec *s, const uint8_t *d_codes, const uint8_t *d_scales, float *d_y, int ndim, const int64_t *shape) { cu_none(__func__); }
int64_t cu_quant_fake_bf16(const quant_spec *s, const float *d_x, uint16_t *d_y, int ndim, const int64_t *shape, uint8_t *d_scales, quant_stats *stats) { cu_none(__func__); }
void cu_quant_fake_bf16_deferred(const quant_spec *s, const float *d_x, uint16_t *d_y, int ndim, const int64_t *shape, uint8_t *d_scales) { cu_none(__func__); }
int64_t cu_quant_inexact_take(void) { cu_none(__func__); }
int cu_quant_bench(const quant_format *formats, int nformats, int64_t n, int reps) { cu_none(__func__); }
int cu_gemm_open(mx_err *err) { cu_none(__func__); }
void cu_gemm(const cu_gemm_desc *d, const void *d_a, const void *d_b, float *d_c) { cu_none(__func__); }
int cu_gemm_bench(int64_t n, int reps) { cu_none(__func__); }
bool cu_conv_f32(cu_conv_dir dir, const cu_conv_shape *s, const float *d_x, const float *d_w, const float *d_dy, float *d_out) { cu_none(__func__); }
const char *cu_conv_library(void) { return "none: this mxtrain was built without CUDA"; }
void cu_op_unary(cu_unary kind, int64_t n, const float *d_x, float *d_y) { cu_none(__func__); }
void cu_op_unary_backward(cu_unary kind, int64_t n, const float *d_xy, const float *d_dy, float *d_dx) { cu_none(__func__); }
void cu_op_add(int64_t na, int64_t nb, const float *d_a, const float *d_b, float *d_y) { cu_none(__func__); }
void cu_op_add_backward(int64_t na, int64_t nb, const float *d_dy, float *d_da, float *d_db) { cu_none(__func__); }
void cu_op_softmax(int64_t rows, int64_t d, const float *d_x, float *d_y) { cu_none(__func__); }
void cu_op_softmax_backward(int64_t rows, int64_t d, const float *d_y, const float *d_dy, float *d_dx) { cu_none(__func__); }
void cu_op_drop(int64_t n, uint64_t seed, uint64_t stream, float p, int64_t group, const float *d_x, float *d_y) { cu_none(__func__); }
void cu_op_drop_backward(int64_t n, uint64_t seed, uint64_t stream, float p, int64_t group, const float *d_dy, float *d_dx) { cu_none(__func__); }
void cu_op_layernorm(int64_t rows, int64_t d, float eps, const float *d_x, const float *d_gamma, const float *d_beta, float *d_y, float *d_mean, float *d_rstd) { cu_none(__func__); }
void cu_op_layernorm_backward(int64_t rows, int64_t d, const float *d_x, const float *d_gamma, const float *d_mean, const float *d_rstd, const float *d_dy, float *d_dx, float *d_dgamma, float *d_dbeta) { cu_none(__func__); }
void cu_op_cross_entropy(int64_t n, int64_t c, const float *d_logits, const int32_t *d_labels, float smoothing, float *d_prob, double *d_work, float *d_loss) { cu_none(__func__); }
void cu_op_cross_entropy_backward(int64_t n, int64_t c, const float *d_prob, const int32_t *d_labels, float smoothing, const float *d_dloss, float *d_dx) { cu_none(__func__); }
void cu_op_softmax_scaled(int64_t rows, int64_t d, float scale, const float *d_x, float *d_y) { cu_none(__func__); }
void cu_op_softmax_backward_scaled(int64_t rows, int64_t d, float scale, const float *d_y, const float *d_dy, float *d_dx) { cu_none(__func__); }
void cu_op_qkv_split(int64_t b, int64_t t, int64_t h, int64_t hd, const float *d_qkv, float *d_q, float *d_k, float *d_v) { cu_none(__func__); }
void cu_op_qkv_backward(int64_t b, int64_t t, int64_t h, int64_t hd, const float *d_dq, const float *d_dk, const float *d_dv, float *d_dqkv) { cu_none(__func__); }
void cu_op_round_bf16(int64_t n, float *d_y) { cu_none(__func__); }
void cu_op_scale(int64_t n, float s, float *d_y) { cu_none(__func__); }
void cu_op_add_scalar(int64_t n, float v, float *d_y) { cu_none(__func__); }
void cu_op_accumulate(int64_t n, const float *d_src, float *d_dst) { cu_none(__func__); }
void cu_op_colsum_add(int64_t rows, int64_t cols, const float *d_x, float *d_out) { cu_none(__func__); }
void cu_op_reduce(int64_t n, bool mean, const float *d_x, float *d_y) { cu_none(__func__); }
void cu_op_reduce_backward(int64_t n, float scale, const float *d_dy, float *d_dx) { cu_none(__func__); }
double cu_sum_squares(int64_t n, const float *d_x) { cu_none(__func__); }
int64_t cu_count_nonfinite(int k, const int64_t *n, const float *const *d_x) { cu_none(__func__); }
void cu_f32_to_bf16(int64_t n, const float *d_x, uint16_t *d_y) { cu_none(__func__); }
void cu_bf16_to_f32(int64_t n, const uint16_t *d_x, float *d_y) { cu_none(__func__); }
void cu_conv_gather(const struct ag_window *g, int elem_bytes, const void *d_src, int64_t r0, int64_t r1, void *d_cols) { cu_none(__func__); }
void cu_conv_col2im_add(const struct ag_window *g, int64_t r0, int64_t r1, const float *d_dcols, float *d_dx) { cu_none(__func__); }
void cu_op_strided16(const int64_t *oshape, const int64_t *istride, const uint16_t *d_src, uint16_t *d_dst) { cu_none(__func__); }
size_t cu_bn_work_bytes(int64_t rows, int64_t c) { cu_none(__func__); }
void cu_op_batchnorm(const cu_bn_args *a, const float *d_x, const float *d_gamma, const float *d_beta, const float *d_res, float *d_running_mean, float *d_running_var, float *d_y, float *d_mean, float *d_invstd, double *d_work) { cu_none(__func__); }
void cu_op_batchnorm_backward(const cu_bn_args *a, const float *d_x, const float *d_gamma, const float *d_y, const float *d_mean, const float *d_invstd, const float *d_dy, float *d_dx, float *d_dgamma, float *d_dbeta, float *d_dres, double *d_work) { cu_none(__func__); }
void cu_op_maxpool(int64_t n, int64_t h, int64_t w, int64_t c, int k, int stride, int pad, const float *d_x, float *d_y, int32_t *d_arg) { cu_none(__func__); }
void cu_op_maxpool_backward(int64_t n, int64_t h, int64_t w, int64_t c, int k, int stride, int pad, const int32_t *d_arg, const float *d_dy, float *d_dx) { cu_none(__func__); }
void cu_op_avgpool_global(int64_t n, int64_t hw, int64_t c, const float *d_x, float *d_y) { cu_none(__func__); }
void cu_op_avgpool_global_backward(int64_t n, int64_t hw, int64_t c, const float *d_dy, float *d_dx) { cu_none(__func__); }
void cu_op_strided(const int64_t *oshape, const int64_t *istride, const float *d_src, float *d_dst, bool add) { cu_none(__func__); }
void cu_op_concat(int64_t outer, int64_t pa, int64_t pb, int64_t a_outer, const float *d_a, const float *d_b, float *d_y) { cu_none(__func__); }
void cu_op_concat_backward(int64_t outer, int64_t pa, int64_t pb, int64_t a_outer, const float *d_dy, float *d_da, float *d_db) { cu_none(__func__); }
void cu_op_slice(int64_t outer, int64_t len_in, int64_t start, int64_t len, int64_t inner, const float *d_x, float *d_y) { cu_none(__func__); }
void cu_op_slice_backward(int64_t outer, int64_t len_in, int64_t start, int64_t len, int64_t inner, const float *d_dy, float *d_dx) { cu_none(__func__); }
void cu_optim_adamw(int64_t n, const struct optim_k_adamw *a, float *d_p, const float *d_g, float *d_m, float *d_v) { cu_none(__func__); }
void cu_optim_sgd(int64_t n, const struct optim_k_sgd *a, float *d_p, const float *d_g, float *d_buf) { cu_none(__func__); }
