#include "layers/model.h"

#include <string.h>

#include "layers/model_impl.h"

typedef struct model_family {
    const char *name;
    void *(*declare)(param_store *s, const model_config *c);
    ag_var *(*forward)(ag_ctx *ctx, param_store *s, void *impl, ag_var *x);
    void (*free)(void *impl);
} model_family;

static const model_family model_families[] = {
    [MODEL_ARCH_RESNET18] = {"resnet18", resnet_declare, resnet_forward, resnet_free},
    [MODEL_ARCH_RESNET] = {"resnet", resnet_declare, resnet_forward, resnet_free},
    [MODEL_ARCH_DEIT_TINY] = {"deit_tiny", vit_declare, vit_forward, vit_free},
    [MODEL_ARCH_VIT] = {"vit", vit_declare, vit_forward, vit_free},
};
_Static_assert(sizeof model_families / sizeof model_families[0] == MODEL_ARCH_COUNT, "model table size");

const char *model_arch_name(model_arch a) { return model_families[a].name; }

int model_arch_parse(const char *s, model_arch *out, mx_err *err) {
    for (int i = 0; i < MODEL_ARCH_COUNT; i++)
        if (strcmp(s, model_families[i].name) == 0) {
            *out = (model_arch)i;
            return 0;
        }
    return mx_err_set(err, "unknown model.arch '%s' (valid: resnet18, resnet, deit_tiny, vit)", s);
}

int model_stem_parse(const char *s, model_stem *out, mx_err *err) {
    if (strcmp(s, "imagenet") == 0) *out = MODEL_STEM_IMAGENET;
    else if (strcmp(s, "cifar") == 0) *out = MODEL_STEM_CIFAR;
    else return mx_err_set(err, "unknown model.stem '%s' (valid: imagenet, cifar)", s);
    return 0;
}

model_config model_config_default(model_arch a) {
    model_config c;
    memset(&c, 0, sizeof c);
    c.arch = a;
    c.num_classes = 10;
    c.in_chans = 3;
    c.stem = MODEL_STEM_CIFAR;
    for (int i = 0; i < 4; i++) {
        c.blocks[i] = 2;
        c.widths[i] = 64 << i;
    }
    c.img_size = 32;
    c.patch_size = 4;
    c.dim = 192;
    c.depth = 12;
    c.heads = 3;
    c.mlp_ratio = 4.0f;
    return c;
}

int model_build(model *m, const model_config *cfg, mx_err *err) {
    memset(m, 0, sizeof *m);
    model_config c = *cfg;
    /* the named architectures fix their topology */
    if (c.arch == MODEL_ARCH_RESNET18)
        for (int i = 0; i < 4; i++) {
            c.blocks[i] = 2;
            c.widths[i] = 64 << i;
        }
    if (c.arch == MODEL_ARCH_DEIT_TINY) {
        c.dim = 192;
        c.depth = 12;
        c.heads = 3;
        c.mlp_ratio = 4.0f;
    }
    if (c.num_classes < 1 || c.in_chans < 1) return mx_err_set(err, "model: num_classes and in_chans must be >= 1");
    if (c.arch == MODEL_ARCH_RESNET18 || c.arch == MODEL_ARCH_RESNET) {
        for (int i = 0; i < 4; i++)
            if (c.blocks[i] < 1 || c.widths[i] < 1) return mx_err_set(err, "model: resnet stages need >= 1 block and width");
    } else {
        if (c.patch_size < 1 || c.img_size < c.patch_size || c.img_size % c.patch_size)
            return mx_err_set(err, "model: img_size %d is not a multiple of patch_size %d", c.img_size, c.patch_size);
        if (c.dim < 1 || c.depth < 1 || c.heads < 1 || c.dim % c.heads)
            return mx_err_set(err, "model: dim %d must be a positive multiple of heads %d", c.dim, c.heads);
        if (c.drop_path < 0.0f || c.drop_path >= 1.0f) return mx_err_set(err, "model: drop_path must be in [0, 1)");
    }
    m->cfg = c;
    param_store_init(&m->params);
    m->impl = model_families[c.arch].declare(&m->params, &c);
    param_finalize(&m->params, c.seed);
    return 0;
}

void model_free(model *m) {
    if (m->impl) model_families[m->cfg.arch].free(m->impl);
    param_store_free(&m->params);
    memset(m, 0, sizeof *m);
}

ag_var *model_forward(ag_ctx *ctx, model *m, ag_var *x) {
    return model_families[m->cfg.arch].forward(ctx, &m->params, m->impl, x);
}

int64_t model_num_params(const model *m) {
    int64_t n = 0;
    for (int i = 0; i < m->params.count; i++)
        if (m->params.entries[i].kind != PARAM_KIND_BUFFER) n += m->params.entries[i].numel;
    return n;
}
