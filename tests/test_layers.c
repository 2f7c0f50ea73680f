/* layers/: PyTorch names, shapes and parameter counts of the models; output
 * shapes; a full-model gradient check of a tiny residual CNN and a tiny ViT. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "layers/params.h"
#include "gradcheck.h"
#include "layers/model.h"
#include "test_util.h"

static void expect_param(const model *m, const char *name, int ndim, const int64_t *torch_shape) {
    int i = param_find(&m->params, name);
    ck_assert_msg(i >= 0, "no parameter named %s", name);
    int64_t shape[4];
    int nd = param_torch_shape(&m->params.entries[i], shape);
    ck_assert_msg(nd == ndim, "%s: rank %d, want %d", name, nd, ndim);
    for (int d = 0; d < nd; d++)
        ck_assert_msg(shape[d] == torch_shape[d], "%s: dim %d is %lld, want %lld", name, d, (long long)shape[d],
                      (long long)torch_shape[d]);
}

START_TEST(test_resnet18_names_and_count) {
    model_config c = model_config_default(MODEL_ARCH_RESNET18);
    c.num_classes = 1000;
    c.stem = MODEL_STEM_IMAGENET;
    model m;
    mx_err err;
    ck_assert_int_eq(model_build(&m, &c, &err), 0);
    ck_assert_int_eq(model_num_params(&m), 11689512); /* torchvision resnet18 */
    expect_param(&m, "conv1.weight", 4, (int64_t[]){64, 3, 7, 7});
    expect_param(&m, "bn1.running_mean", 1, (int64_t[]){64});
    expect_param(&m, "layer1.0.bn1.running_var", 1, (int64_t[]){64});
    expect_param(&m, "layer1.1.conv2.weight", 4, (int64_t[]){64, 64, 3, 3});
    expect_param(&m, "layer2.0.downsample.0.weight", 4, (int64_t[]){128, 64, 1, 1});
    expect_param(&m, "layer2.0.downsample.1.bias", 1, (int64_t[]){128});
    expect_param(&m, "layer4.1.bn2.weight", 1, (int64_t[]){512});
    expect_param(&m, "fc.weight", 2, (int64_t[]){1000, 512});
    expect_param(&m, "fc.bias", 1, (int64_t[]){1000});
    ck_assert_int_ge(param_find(&m.params, "layer3.1.bn1.num_batches_tracked"), 0);
    ck_assert_int_lt(param_find(&m.params, "layer1.0.downsample.0.weight"), 0);
    /* 62 tensors with weights/biases + 3 buffers x 20 norms: torchvision's state_dict has 122 entries */
    ck_assert_int_eq(m.params.count, 122);
    model_free(&m);
}
END_TEST

START_TEST(test_deit_tiny_names_and_count) {
    model_config c = model_config_default(MODEL_ARCH_DEIT_TINY);
    c.num_classes = 1000;
    c.img_size = 224;
    c.patch_size = 16;
    model m;
    mx_err err;
    ck_assert_int_eq(model_build(&m, &c, &err), 0);
    ck_assert_int_eq(model_num_params(&m), 5717416); /* timm deit_tiny_patch16_224 */
    expect_param(&m, "cls_token", 3, (int64_t[]){1, 1, 192});
    expect_param(&m, "pos_embed", 3, (int64_t[]){1, 197, 192});
    expect_param(&m, "patch_embed.proj.weight", 4, (int64_t[]){192, 3, 16, 16});
    expect_param(&m, "blocks.0.norm1.weight", 1, (int64_t[]){192});
    expect_param(&m, "blocks.0.attn.qkv.weight", 2, (int64_t[]){576, 192});
    expect_param(&m, "blocks.0.attn.proj.weight", 2, (int64_t[]){192, 192});
    expect_param(&m, "blocks.11.mlp.fc1.weight", 2, (int64_t[]){768, 192});
    expect_param(&m, "blocks.11.mlp.fc2.bias", 1, (int64_t[]){192});
    expect_param(&m, "norm.weight", 1, (int64_t[]){192});
    expect_param(&m, "head.weight", 2, (int64_t[]){1000, 192});
    ck_assert_int_eq(m.params.count, 152); /* timm's state_dict: 4 + 12 * 12 + 4 */
    model_free(&m);
}
END_TEST

static ag_var *random_images(ag_ctx *ctx, int n, int hw, int c, uint64_t seed) {
    int64_t shape[4] = {n, hw, hw, c};
    ag_var *x = ag_new(ctx, 4, shape);
    rng r;
    rng_init(&r, seed, 0);
    for (int64_t i = 0; i < ag_numel(x); i++) x->value.data[i] = rng_normal(&r);
    return x;
}

START_TEST(test_models_forward_backward_shapes) {
    const model_arch archs[2] = {MODEL_ARCH_RESNET18, MODEL_ARCH_DEIT_TINY};
    for (int a = 0; a < 2; a++) {
        model_config c = model_config_default(archs[a]);
        model m;
        mx_err err;
        ck_assert_int_eq(model_build(&m, &c, &err), 0);
        ag_ctx ctx;
        ag_ctx_init(&ctx, 0);
        ag_var *x = random_images(&ctx, 2, 32, 3, 1);
        ag_var *logits = model_forward(&ctx, &m, x);
        ck_assert_int_eq(logits->value.ndim, 2);
        ck_assert_int_eq(logits->value.shape[0], 2);
        ck_assert_int_eq(logits->value.shape[1], 10);
        int32_t labels[2] = {3, 7};
        ag_var *loss = ag_cross_entropy(&ctx, logits, labels, 0.0f);
        ck_assert(isfinite(loss->value.data[0]));
        ck_assert(fabsf(loss->value.data[0] - logf(10.0f)) < 2.0f);
        ag_backward(&ctx, loss);
        double gn = 0;
        for (size_t i = 0; i < m.params.n_trainable; i++) gn += (double)m.params.grad[i] * m.params.grad[i];
        ck_assert(gn > 0 && isfinite(gn));
        ag_ctx_free(&ctx);
        model_free(&m);
    }
}
END_TEST

/* ---- full-model gradient checks ---- */

static ag_var *f_model(ag_ctx *ctx, gc_case *g) {
    model *m = g->user;
    /* BatchNorm with batch statistics is checked op by op and against
     * PyTorch; here it runs on running statistics, so the model is smooth
     * enough for central differences to check the composition: residual
     * wiring, layouts, shared inputs, the class token path. */
    ctx->run.training = false;
    return model_forward(ctx, m, &g->leaf[0]);
}

/* Well-conditioned random weights: N(0, 0.5^2), norm scales 1 + N(0, 0.1^2),
 * running variances in [0.5, 1.5]. (Initial weights would make the class
 * token row nearly constant, where LayerNorm is extremely curved.) */
static void model_randomize(model *m, uint64_t seed) {
    rng r;
    rng_init(&r, seed, 0);
    for (int i = 0; i < m->params.count; i++) {
        param_entry *e = &m->params.entries[i];
        float *v = param_data(&m->params, i);
        bool norm_scale = strstr(e->name, "norm") || strstr(e->name, "bn") || strstr(e->name, "downsample.1");
        for (int64_t j = 0; j < e->numel; j++) {
            if (strstr(e->name, "running_var")) v[j] = 0.5f + rng_uniform(&r);
            else if (e->is_integer) v[j] = 0;
            else if (norm_scale && strstr(e->name, ".weight")) v[j] = 1.0f + 0.1f * rng_normal(&r);
            else v[j] = 0.5f * rng_normal(&r);
        }
    }
}

/* h = 1e-2 with Richardson extrapolation: measured convergence (h from 3e-2
 * down to 5e-4) shows float32 rounding noise of ~1e-5 in the loss below
 * h ~ 1e-3, and curvature error above it. */
static void model_gradcheck(model *m, int img, int chans, const char *const *names, int n_names, float h,
                            bool richardson, bool multi_h) {
    gc_case g;
    gc_begin(&g, model_arch_name(m->cfg.arch), f_model);
    g.user = m;
    g.h = h;
    g.richardson = richardson;
    g.multi_h = multi_h;
    gc_leaf(&g, 4, (int64_t[]){4, img, img, chans}, 1.0f);
    for (int i = 0; i < n_names; i++) {
        int idx = param_find(&m->params, names[i]);
        ck_assert_msg(idx >= 0, "%s", names[i]);
        gc_borrow(&g, param_var(&m->params, idx));
    }
    gc_run(&g);
}

START_TEST(test_tiny_resnet_gradcheck) {
    model_config c = model_config_default(MODEL_ARCH_RESNET);
    c.in_chans = 2;
    c.num_classes = 5;
    int widths[4] = {4, 6, 8, 8};
    for (int i = 0; i < 4; i++) {
        c.blocks[i] = 1;
        c.widths[i] = widths[i];
    }
    c.seed = 3;
    model m;
    mx_err err;
    ck_assert_int_eq(model_build(&m, &c, &err), 0);
    /* initial (Kaiming) weights: with randomised norms the kinks of this ReLU
     * network lie closer together than any fixed step (measured) */
    const char *names[] = {"conv1.weight", "bn1.weight", "layer2.0.conv1.weight", "layer2.0.downsample.0.weight",
                           "layer4.0.bn2.bias", "fc.weight", "fc.bias"};
    model_gradcheck(&m, 8, 2, names, 7, 3e-3f, false, true);
    model_free(&m);
}
END_TEST

START_TEST(test_tiny_vit_gradcheck) {
    model_config c = model_config_default(MODEL_ARCH_VIT);
    c.in_chans = 2;
    c.num_classes = 5;
    c.img_size = 8;
    c.patch_size = 4;
    c.dim = 8;
    c.depth = 2;
    c.heads = 2;
    c.seed = 4;
    model m;
    mx_err err;
    ck_assert_int_eq(model_build(&m, &c, &err), 0);
    model_randomize(&m, 6);
    const char *names[] = {"patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.0.attn.qkv.weight",
                           "blocks.1.mlp.fc1.weight", "norm.weight", "head.bias"};
    model_gradcheck(&m, 8, 2, names, 7, 1e-2f, true, false);
    model_free(&m);
}
END_TEST

/* OHWI (internal) <-> OIHW (PyTorch) conversion of conv weights. */
START_TEST(test_param_layout_conversion) {
    param_store st;
    param_store_init(&st);
    int64_t shape[4] = {3, 2, 5, 4}; /* O, KH, KW, I */
    int w = param_add(&st, "c.weight", 4, shape, PARAM_KIND_WEIGHT, PARAM_LAYOUT_OHWI, PARAM_INIT_NORMAL, 1.0f);
    param_finalize(&st, 1);
    param_entry *e = &st.entries[w];
    int64_t ts[4];
    ck_assert_int_eq(param_torch_shape(e, ts), 4);
    ck_assert(ts[0] == 3 && ts[1] == 4 && ts[2] == 2 && ts[3] == 5);
    float torch[120], back[120];
    const float *v = param_data(&st, w);
    param_to_torch(e, v, torch);
    /* element [o=2, kh=1, kw=3, i=1] lands at PyTorch [2, 1, 1, 3] */
    ck_assert_float_eq(torch[((2 * 4 + 1) * 2 + 1) * 5 + 3], v[((2 * 2 + 1) * 5 + 3) * 4 + 1]);
    param_from_torch(e, torch, back);
    ck_assert_int_eq(memcmp(back, v, sizeof back), 0);
    param_store_free(&st);
}
END_TEST

START_TEST(test_model_config_errors) {
    model m;
    mx_err err;
    model_config c = model_config_default(MODEL_ARCH_VIT);
    c.img_size = 30;
    ck_assert_int_ne(model_build(&m, &c, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "patch_size"));
    c = model_config_default(MODEL_ARCH_VIT);
    c.heads = 5;
    ck_assert_int_ne(model_build(&m, &c, &err), 0);
    model_arch a;
    ck_assert_int_ne(model_arch_parse("resnet50", &a, &err), 0);
    ck_assert_ptr_nonnull(strstr(err.msg, "resnet18"));
}
END_TEST

int main(void) {
    Suite *s = suite_create("layers");
    TCase *tc = tcase_create("models");
    tcase_add_test(tc, test_resnet18_names_and_count);
    tcase_add_test(tc, test_deit_tiny_names_and_count);
    tcase_add_test(tc, test_models_forward_backward_shapes);
    tcase_add_test(tc, test_tiny_resnet_gradcheck);
    tcase_add_test(tc, test_tiny_vit_gradcheck);
    tcase_add_test(tc, test_param_layout_conversion);
    tcase_add_test(tc, test_model_config_errors);
    tcase_set_timeout(tc, 300);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
