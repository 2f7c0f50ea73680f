/* Models: torchvision's ResNet and timm's ViT/DeiT, with PyTorch's
 * state_dict names, built from a model_config. Input images are NHWC. */
#ifndef MX_LAYERS_MODEL_H
#define MX_LAYERS_MODEL_H

#include "core/error.h"
#include "core/keys.h"
#include "layers/layers.h"

typedef enum model_arch {
    MODEL_ARCH_RESNET18,  /* torchvision resnet18: BasicBlocks [2,2,2,2], widths 64..512 */
    MODEL_ARCH_RESNET,    /* same family, configurable blocks and widths */
    MODEL_ARCH_DEIT_TINY, /* timm deit_tiny_patch16_224: dim 192, depth 12, 3 heads, MLP ratio 4 */
    MODEL_ARCH_VIT,       /* same family, configurable dim/depth/heads */
    MODEL_ARCH_COUNT
} model_arch;

typedef enum model_stem { MODEL_STEM_IMAGENET, MODEL_STEM_CIFAR, MODEL_STEM_COUNT } model_stem;

typedef struct model_config {
    model_arch arch;
    int num_classes, in_chans;
    model_stem stem;       /* ResNet: imagenet (7x7/2 + maxpool) or cifar (3x3/1, no maxpool) */
    int blocks[4], widths[4]; /* ResNet stages */
    int img_size, patch_size; /* ViT geometry */
    int dim, depth, heads;
    float mlp_ratio, drop_path;
    uint64_t seed;         /* parameter initialisation */
} model_config;

typedef struct model {
    model_config cfg;
    param_store params;
    void *impl;
} model;

/* The [model] keys of a config file, over model_config (seed comes from train.seed). */
extern const key_table model_key_table;

const char *model_arch_name(model_arch a);
extern const mx_enum model_arch_enum, model_stem_enum;
int model_arch_parse(const char *s, model_arch *out, mx_err *err);
/* Defaults for an architecture (10 classes, 3 channels, cifar stem, 32x32 / patch 4). */
model_config model_config_default(model_arch a);

/* Builds and initialises the model; errors on inconsistent geometry. */
int model_build(model *m, const model_config *cfg, mx_err *err);
void model_free(model *m);
/* x [N, H, W, C] -> logits [N, num_classes]. */
ag_var *model_forward(ag_ctx *ctx, model *m, ag_var *x);
int64_t model_num_params(const model *m); /* trainable values */

#endif
