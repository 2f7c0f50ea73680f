/* Forward ops. Each returns a new variable and, when gradients are on,
 * records itself on the tape; its backward lives beside it in ops_*.c.
 * Layouts: images NHWC; linear weights [out, in] (PyTorch's); conv weights
 * [out, kh, kw, in] (OHWI, so a kernel position's channels are contiguous, as
 * the GEMM's reduction axis needs; checkpoints convert to PyTorch's OIHW). */
#ifndef MX_AUTOGRAD_OPS_H
#define MX_AUTOGRAD_OPS_H

#include "autograd/graph.h"
#include "autograd/mm.h"

/* y[..., out] = x[..., in] . W^T + b;  W [out, in]; b [out] or NULL. */
ag_var *ag_linear(ag_ctx *ctx, const mm_site *site, ag_var *x, ag_var *w, ag_var *b);
/* Batched matmul: a [B, M, K] . b [B, K, N] (or b [B, N, K] with trans_b). */
ag_var *ag_matmul(ag_ctx *ctx, const mm_site *site, ag_var *a, ag_var *b, bool trans_b);
/* x [N, H, W, C], w [O, KH, KW, C], b [O] or NULL -> [N, OH, OW, O]. */
ag_var *ag_conv2d(ag_ctx *ctx, const mm_site *site, ag_var *x, ag_var *w, ag_var *b, int stride, int pad);
/* BatchNorm over N, H, W of NHWC x. Training (ctx->run.training): batch statistics,
 * running statistics updated with momentum (unbiased variance, as PyTorch). */
ag_var *ag_batchnorm2d(ag_ctx *ctx, ag_var *x, ag_var *gamma, ag_var *beta, float *running_mean, float *running_var,
                       float momentum, float eps);
/* The same followed by "+ residual" (unless NULL) and ReLU (if relu), in one
 * pass: relu(bn(x) + residual) as ResNet's blocks end. Only the output is
 * kept (the BN output and the sum are never stored); the results equal the
 * separate ops', bf16 rounding of each intermediate included. */
ag_var *ag_batchnorm2d_act(ag_ctx *ctx, ag_var *x, ag_var *gamma, ag_var *beta, float *running_mean,
                           float *running_var, float momentum, float eps, ag_var *residual, bool relu);
ag_var *ag_layernorm(ag_ctx *ctx, ag_var *x, ag_var *gamma, ag_var *beta, float eps);
ag_var *ag_relu(ag_ctx *ctx, ag_var *x);
ag_var *ag_gelu(ag_ctx *ctx, ag_var *x);      /* exact: 0.5 x (1 + erf(x / sqrt 2)) */
ag_var *ag_gelu_tanh(ag_ctx *ctx, ag_var *x); /* tanh approximation */
ag_var *ag_softmax(ag_ctx *ctx, ag_var *x);   /* over the last axis */
/* Multi-head self-attention core (timm layout): qkv [B, T, 3*D] laid out
 * [3][heads][head_dim] -> out [B, T, D]; softmax(Q K^T / sqrt(head_dim)) V.
 * Two sites: the Q K^T product and the P V product. */
ag_var *ag_attention(ag_ctx *ctx, const mm_site *site_qk, const mm_site *site_pv, ag_var *qkv, int heads);
ag_var *ag_maxpool2d(ag_ctx *ctx, ag_var *x, int kernel, int stride, int pad);
ag_var *ag_avgpool_global(ag_ctx *ctx, ag_var *x); /* [N, H, W, C] -> [N, C] */
/* a + b; b may have fewer elements and repeat over a's leading dims (a bias,
 * a position embedding [1, T, D] over [B, T, D]). */
ag_var *ag_add(ag_ctx *ctx, ag_var *a, ag_var *b);
ag_var *ag_reshape(ag_ctx *ctx, ag_var *x, int ndim, const int64_t *shape);
ag_var *ag_permute(ag_ctx *ctx, ag_var *x, const int *perm); /* out.shape[i] = x.shape[perm[i]] */
/* Concatenate along axis; a's dim 0 may be 1 and broadcast to b's (class token). */
ag_var *ag_concat(ag_ctx *ctx, ag_var *a, ag_var *b, int axis);
ag_var *ag_slice(ag_ctx *ctx, ag_var *x, int axis, int64_t start, int64_t len);
ag_var *ag_dropout(ag_ctx *ctx, ag_var *x, float p);   /* identity unless training */
ag_var *ag_drop_path(ag_ctx *ctx, ag_var *x, float p); /* per-sample (dim 0) stochastic depth */
/* Mean cross-entropy of logits [N, C] against labels, with label smoothing. */
ag_var *ag_cross_entropy(ag_ctx *ctx, ag_var *logits, const int32_t *labels, float smoothing);
ag_var *ag_mean(ag_ctx *ctx, ag_var *x);
/* p[0..n) += v on a buffer in the context's memory, outside the tape (BatchNorm's num_batches_tracked). */
void ag_buffer_add(ag_ctx *ctx, float *p, int64_t n, float v);
ag_var *ag_sum(ag_ctx *ctx, ag_var *x);

#endif
