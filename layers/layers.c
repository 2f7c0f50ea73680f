#include "layers/layers.h"

#include <math.h>
#include <stdio.h>

#include "core/error.h"

static void layer_name(char *out, size_t n, const char *prefix, const char *leaf) {
    int k = snprintf(out, n, "%s.%s", prefix, leaf);
    MX_ASSERT(k > 0 && (size_t)k < n);
}

/* ---------------- conv2d ---------------- */

void conv2d_layer_declare(conv2d_layer *l, param_store *s, const char *name, int in, int out, int k, int stride,
                          int pad, bool bias, layer_init init) {
    char n[128];
    int64_t wshape[4] = {out, k, k, in}, bshape[1] = {out};
    float bound = 1.0f / sqrtf((float)(in * k * k));
    layer_name(n, sizeof n, name, "weight");
    l->w = init == LAYER_INIT_KAIMING_OUT
               ? param_add(s, n, 4, wshape, PARAM_KIND_WEIGHT, PARAM_LAYOUT_OHWI, PARAM_INIT_KAIMING_FAN_OUT, 0)
               : param_add(s, n, 4, wshape, PARAM_KIND_WEIGHT, PARAM_LAYOUT_OHWI, PARAM_INIT_UNIFORM, bound);
    l->b = -1;
    if (bias) {
        layer_name(n, sizeof n, name, "bias");
        l->b = param_add(s, n, 1, bshape, PARAM_KIND_NO_DECAY, PARAM_LAYOUT_SAME,
                         init == LAYER_INIT_TORCH_DEFAULT ? PARAM_INIT_UNIFORM : PARAM_INIT_ZEROS, bound);
    }
    l->stride = stride;
    l->pad = pad;
    mm_site_declare(&s->sites, &l->site, name, MM_B_WEIGHT);
}

ag_var *conv2d_layer_forward(ag_ctx *ctx, param_store *s, conv2d_layer *l, ag_var *x) {
    return ag_conv2d(ctx, &l->site, x, param_var(s, l->w), l->b >= 0 ? param_var(s, l->b) : NULL, l->stride, l->pad);
}

/* ---------------- linear ---------------- */

void linear_layer_declare(linear_layer *l, param_store *s, const char *name, int in, int out, bool bias,
                          layer_init init) {
    char n[128];
    int64_t wshape[2] = {out, in}, bshape[1] = {out};
    float bound = 1.0f / sqrtf((float)in);
    layer_name(n, sizeof n, name, "weight");
    l->w = init == LAYER_INIT_TRUNC_NORMAL
               ? param_add(s, n, 2, wshape, PARAM_KIND_WEIGHT, PARAM_LAYOUT_SAME, PARAM_INIT_TRUNC_NORMAL, 0.02f)
               : param_add(s, n, 2, wshape, PARAM_KIND_WEIGHT, PARAM_LAYOUT_SAME, PARAM_INIT_UNIFORM, bound);
    l->b = -1;
    if (bias) {
        layer_name(n, sizeof n, name, "bias");
        l->b = param_add(s, n, 1, bshape, PARAM_KIND_NO_DECAY, PARAM_LAYOUT_SAME,
                         init == LAYER_INIT_TRUNC_NORMAL ? PARAM_INIT_ZEROS : PARAM_INIT_UNIFORM, bound);
    }
    mm_site_declare(&s->sites, &l->site, name, MM_B_WEIGHT);
}

ag_var *linear_layer_forward(ag_ctx *ctx, param_store *s, linear_layer *l, ag_var *x) {
    return ag_linear(ctx, &l->site, x, param_var(s, l->w), l->b >= 0 ? param_var(s, l->b) : NULL);
}

/* ---------------- batchnorm2d ---------------- */

void batchnorm2d_layer_declare(batchnorm2d_layer *l, param_store *s, const char *name, int c) {
    char n[128];
    int64_t shape[1] = {c}, one[1] = {1};
    layer_name(n, sizeof n, name, "weight");
    l->w = param_add(s, n, 1, shape, PARAM_KIND_NO_DECAY, PARAM_LAYOUT_SAME, PARAM_INIT_ONES, 0);
    layer_name(n, sizeof n, name, "bias");
    l->b = param_add(s, n, 1, shape, PARAM_KIND_NO_DECAY, PARAM_LAYOUT_SAME, PARAM_INIT_ZEROS, 0);
    layer_name(n, sizeof n, name, "running_mean");
    l->running_mean = param_add(s, n, 1, shape, PARAM_KIND_BUFFER, PARAM_LAYOUT_SAME, PARAM_INIT_ZEROS, 0);
    layer_name(n, sizeof n, name, "running_var");
    l->running_var = param_add(s, n, 1, shape, PARAM_KIND_BUFFER, PARAM_LAYOUT_SAME, PARAM_INIT_ONES, 0);
    layer_name(n, sizeof n, name, "num_batches_tracked");
    l->num_batches_tracked = param_add(s, n, 0, one, PARAM_KIND_BUFFER, PARAM_LAYOUT_SAME, PARAM_INIT_ZEROS, 0);
    s->entries[l->num_batches_tracked].is_integer = true;
    l->momentum = 0.1f;
    l->eps = 1e-5f;
}

ag_var *batchnorm2d_layer_forward(ag_ctx *ctx, param_store *s, batchnorm2d_layer *l, ag_var *x) {
    return batchnorm2d_layer_forward_act(ctx, s, l, x, NULL, false);
}

ag_var *batchnorm2d_layer_forward_act(ag_ctx *ctx, param_store *s, batchnorm2d_layer *l, ag_var *x, ag_var *residual,
                                      bool relu) {
    if (ctx->run.training) ag_buffer_add(ctx, param_step_data(s, l->num_batches_tracked), 1, 1.0f);
    return ag_batchnorm2d_act(ctx, x, param_var(s, l->w), param_var(s, l->b), param_step_data(s, l->running_mean),
                              param_step_data(s, l->running_var), l->momentum, l->eps, residual, relu);
}

/* ---------------- layernorm ---------------- */

void layernorm_layer_declare(layernorm_layer *l, param_store *s, const char *name, int d, float eps) {
    char n[128];
    int64_t shape[1] = {d};
    layer_name(n, sizeof n, name, "weight");
    l->w = param_add(s, n, 1, shape, PARAM_KIND_NO_DECAY, PARAM_LAYOUT_SAME, PARAM_INIT_ONES, 0);
    layer_name(n, sizeof n, name, "bias");
    l->b = param_add(s, n, 1, shape, PARAM_KIND_NO_DECAY, PARAM_LAYOUT_SAME, PARAM_INIT_ZEROS, 0);
    l->eps = eps;
}

ag_var *layernorm_layer_forward(ag_ctx *ctx, param_store *s, layernorm_layer *l, ag_var *x) {
    return ag_layernorm(ctx, x, param_var(s, l->w), param_var(s, l->b), l->eps);
}
