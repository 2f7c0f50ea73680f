/* torchvision's ResNet with BasicBlocks (resnet18 = [2, 2, 2, 2]). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layers/model_impl.h"

typedef struct basic_block {
    conv2d_layer conv1, conv2, down_conv;
    batchnorm2d_layer bn1, bn2, down_bn;
    bool has_down;
} basic_block;

typedef struct resnet {
    conv2d_layer conv1;
    batchnorm2d_layer bn1;
    bool maxpool;
    basic_block *blocks;
    int n_blocks;
    linear_layer fc;
} resnet;

void *resnet_declare(param_store *s, const model_config *c) {
    resnet *r = mx_calloc(1, sizeof *r);
    bool cifar = c->stem == MODEL_STEM_CIFAR;
    conv2d_layer_declare(&r->conv1, s, "conv1", c->in_chans, c->widths[0], cifar ? 3 : 7, cifar ? 1 : 2,
                         cifar ? 1 : 3, false, LAYER_INIT_KAIMING_OUT);
    batchnorm2d_layer_declare(&r->bn1, s, "bn1", c->widths[0]);
    r->maxpool = !cifar;
    for (int st = 0; st < 4; st++) r->n_blocks += c->blocks[st];
    r->blocks = mx_calloc((size_t)r->n_blocks, sizeof(basic_block));
    int in = c->widths[0], k = 0;
    for (int st = 0; st < 4; st++)
        for (int i = 0; i < c->blocks[st]; i++, k++) {
            basic_block *b = &r->blocks[k];
            int out = c->widths[st], stride = (st > 0 && i == 0) ? 2 : 1;
            char p[96], n[128];
            snprintf(p, sizeof p, "layer%d.%d", st + 1, i);
            snprintf(n, sizeof n, "%s.conv1", p);
            conv2d_layer_declare(&b->conv1, s, n, in, out, 3, stride, 1, false, LAYER_INIT_KAIMING_OUT);
            snprintf(n, sizeof n, "%s.bn1", p);
            batchnorm2d_layer_declare(&b->bn1, s, n, out);
            snprintf(n, sizeof n, "%s.conv2", p);
            conv2d_layer_declare(&b->conv2, s, n, out, out, 3, 1, 1, false, LAYER_INIT_KAIMING_OUT);
            snprintf(n, sizeof n, "%s.bn2", p);
            batchnorm2d_layer_declare(&b->bn2, s, n, out);
            b->has_down = stride != 1 || in != out;
            if (b->has_down) {
                snprintf(n, sizeof n, "%s.downsample.0", p);
                conv2d_layer_declare(&b->down_conv, s, n, in, out, 1, stride, 0, false, LAYER_INIT_KAIMING_OUT);
                snprintf(n, sizeof n, "%s.downsample.1", p);
                batchnorm2d_layer_declare(&b->down_bn, s, n, out);
            }
            in = out;
        }
    linear_layer_declare(&r->fc, s, "fc", in, c->num_classes, true, LAYER_INIT_TORCH_DEFAULT);
    return r;
}

static ag_var *basic_block_forward(ag_ctx *ctx, param_store *s, basic_block *b, ag_var *x) {
    /* BN, residual add and ReLU fused: one pass, and only the block's output kept */
    ag_var *h = conv2d_layer_forward(ctx, s, &b->conv1, x);
    h = batchnorm2d_layer_forward_act(ctx, s, &b->bn1, h, NULL, true);
    h = conv2d_layer_forward(ctx, s, &b->conv2, h);
    ag_var *shortcut = x;
    if (b->has_down) shortcut = batchnorm2d_layer_forward(ctx, s, &b->down_bn, conv2d_layer_forward(ctx, s, &b->down_conv, x));
    return batchnorm2d_layer_forward_act(ctx, s, &b->bn2, h, shortcut, true);
}

ag_var *resnet_forward(ag_ctx *ctx, param_store *s, void *impl, ag_var *x) {
    resnet *r = impl;
    ag_var *h = conv2d_layer_forward(ctx, s, &r->conv1, x);
    h = batchnorm2d_layer_forward_act(ctx, s, &r->bn1, h, NULL, true);
    if (r->maxpool) h = ag_maxpool2d(ctx, h, 3, 2, 1);
    for (int i = 0; i < r->n_blocks; i++) h = basic_block_forward(ctx, s, &r->blocks[i], h);
    h = ag_avgpool_global(ctx, h);
    return linear_layer_forward(ctx, s, &r->fc, h);
}

void resnet_free(void *impl) {
    resnet *r = impl;
    free(r->blocks);
    free(r);
}
