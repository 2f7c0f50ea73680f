/* Modules: parameters with PyTorch names plus a forward built from ops.
 * A module is declared (its parameters added to a store) before the store is
 * finalized, and run after. Each forward reads top to bottom. */
#ifndef MX_LAYERS_LAYERS_H
#define MX_LAYERS_LAYERS_H

#include "autograd/ops.h"
#include "layers/params.h"

typedef struct conv2d_layer {
    int w, b; /* parameter indices; b = -1 without bias */
    int stride, pad;
    mm_site site;
} conv2d_layer;

typedef struct linear_layer {
    int w, b;
    mm_site site;
} linear_layer;

typedef struct batchnorm2d_layer {
    int w, b, running_mean, running_var, num_batches_tracked;
    float momentum, eps;
} batchnorm2d_layer;

typedef struct layernorm_layer {
    int w, b;
    float eps;
} layernorm_layer;

/* Weight init of convs and linears, by model family. */
typedef enum layer_init {
    LAYER_INIT_TORCH_DEFAULT, /* PyTorch's default: U(+-1/sqrt(fan_in)) for weight and bias */
    LAYER_INIT_KAIMING_OUT,   /* torchvision resnet convs: N(0, 2/fan_out) */
    LAYER_INIT_TRUNC_NORMAL   /* timm ViT linears: trunc normal std 0.02, bias 0 */
} layer_init;

void conv2d_layer_declare(conv2d_layer *l, param_store *s, const char *name, int in, int out, int k, int stride,
                          int pad, bool bias, layer_init init);
ag_var *conv2d_layer_forward(ag_ctx *ctx, param_store *s, conv2d_layer *l, ag_var *x);

void linear_layer_declare(linear_layer *l, param_store *s, const char *name, int in, int out, bool bias,
                          layer_init init);
ag_var *linear_layer_forward(ag_ctx *ctx, param_store *s, linear_layer *l, ag_var *x);

void batchnorm2d_layer_declare(batchnorm2d_layer *l, param_store *s, const char *name, int c);
ag_var *batchnorm2d_layer_forward(ag_ctx *ctx, param_store *s, batchnorm2d_layer *l, ag_var *x);
/* relu(bn(x) + residual), fused (see ag_batchnorm2d_act); residual may be NULL. */
ag_var *batchnorm2d_layer_forward_act(ag_ctx *ctx, param_store *s, batchnorm2d_layer *l, ag_var *x, ag_var *residual,
                                      bool relu);

void layernorm_layer_declare(layernorm_layer *l, param_store *s, const char *name, int d, float eps);
ag_var *layernorm_layer_forward(ag_ctx *ctx, param_store *s, layernorm_layer *l, ag_var *x);

#endif
