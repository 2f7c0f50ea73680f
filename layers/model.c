#include "layers/model.h"

#include <string.h>

#include "core/keys.h"

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

static const char *model_arch_name_at(int i) { return model_families[i].name; }
const mx_enum model_arch_enum = {"model.arch", MODEL_ARCH_COUNT, model_arch_name_at, NULL, NULL, NULL};
static const char *const model_stem_names[] = {[MODEL_STEM_IMAGENET] = "imagenet", [MODEL_STEM_CIFAR] = "cifar"};
_Static_assert(sizeof model_stem_names / sizeof model_stem_names[0] == MODEL_STEM_COUNT, "stem names");
MX_ENUM_OF_NAMES(model_stem_enum, "model.stem", model_stem_names);

int model_arch_parse(const char *s, model_arch *out, mx_err *err) {
    int v;
    if (mx_enum_parse(&model_arch_enum, s, &v, err)) return -1;
    *out = (model_arch)v;
    return 0;
}

/* "a,b,c,d": four positive integers */
static int model_parse_int4(const char *v, int *out, mx_err *err) {
    double d[4];
    int n;
    if (key_parse_list(v, d, 4, 4, true, &n, err)) return -1;
    for (int i = 0; i < 4; i++) out[i] = (int)d[i];
    return 0;
}
static int model_parse_blocks(const char *v, void *cfg, mx_err *err) {
    return model_parse_int4(v, ((model_config *)cfg)->blocks, err);
}
static int model_parse_widths(const char *v, void *cfg, mx_err *err) {
    return model_parse_int4(v, ((model_config *)cfg)->widths, err);
}

#define MK(...) KEY_NUM(model_config, __VA_ARGS__)
static const key_def model_keys[] = {
    KEY_ENUMV(model_config, "arch", arch, "resnet18", &model_arch_enum,
              "`resnet18` (torchvision), `resnet` (blocks/widths below), `deit_tiny` (timm), `vit` (dim/depth/heads "
              "below)"),
    MK("num_classes", INT, num_classes, "10", 2, 100000, "classes of the classifier head"),
    MK("in_chans", INT, in_chans, "3", 1, 4, "input channels (1 for Fashion-MNIST/MNIST)"),
    KEY_ENUMV(model_config, "stem", stem, "cifar", &model_stem_enum,
              "ResNet stem: `imagenet` (7x7/2 conv + max-pool) or `cifar` (3x3/1 conv, no pool)"),
    KEY_CUSTOMV("blocks", "2,2,2,2", model_parse_blocks, "`resnet`: BasicBlocks per stage (4 positive integers)"),
    KEY_CUSTOMV("widths", "64,128,256,512", model_parse_widths, "`resnet`: channels per stage (4 positive integers)"),
    MK("img_size", INT, img_size, "32", 4, 4096,
       "ViT input side (the patch grid is img_size / patch_size); also the decode size of imagefolder/synthetic data"),
    MK("patch_size", INT, patch_size, "4", 1, 1024, "ViT patch side"),
    MK("dim", INT, dim, "192", 8, 65536, "`vit`: embedding width"),
    MK("depth", INT, depth, "12", 1, 1024, "`vit`: transformer blocks"),
    MK("heads", INT, heads, "3", 1, 1024, "`vit`: attention heads (dim must divide)"),
    MK("mlp_ratio", FLOAT, mlp_ratio, "4", 0.25, 64, "ViT MLP hidden width / dim"),
    MK("drop_path", FLOAT, drop_path, "0", 0, 0.99, "ViT stochastic depth rate (linear over blocks)"),
};
#undef MK
const key_table model_key_table = KEY_TABLE("model", model_keys);

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
