/* timm's VisionTransformer as DeiT uses it: patch embedding, class token,
 * learned position embedding, pre-norm blocks (attention + MLP with exact
 * GELU), final norm, head on the class token. */
#include <stdio.h>
#include <stdlib.h>

#include "layers/model_impl.h"

typedef struct vit_block {
    layernorm_layer norm1, norm2;
    linear_layer qkv, proj, fc1, fc2;
    mm_site attn_qk, attn_pv;
    int heads;
    float drop_path;
} vit_block;

typedef struct vit {
    conv2d_layer patch_embed;
    int cls_token, pos_embed;
    vit_block *blocks;
    int depth, dim, tokens;
    layernorm_layer norm;
    linear_layer head;
} vit;

void *vit_declare(param_store *s, const model_config *c) {
    vit *v = mx_calloc(1, sizeof *v);
    int D = c->dim, grid = c->img_size / c->patch_size;
    v->dim = D;
    v->depth = c->depth;
    v->tokens = grid * grid + 1;
    conv2d_layer_declare(&v->patch_embed, s, "patch_embed.proj", c->in_chans, D, c->patch_size, c->patch_size, 0,
                         true, LAYER_INIT_TORCH_DEFAULT);
    int64_t cls_shape[3] = {1, 1, D}, pos_shape[3] = {1, v->tokens, D};
    v->cls_token = param_add(s, "cls_token", 3, cls_shape, PARAM_KIND_NO_DECAY, PARAM_LAYOUT_SAME, PARAM_INIT_NORMAL, 1e-6f);
    v->pos_embed = param_add(s, "pos_embed", 3, pos_shape, PARAM_KIND_NO_DECAY, PARAM_LAYOUT_SAME,
                             PARAM_INIT_TRUNC_NORMAL, 0.02f);
    v->blocks = mx_calloc((size_t)c->depth, sizeof(vit_block));
    int hidden = (int)((float)D * c->mlp_ratio);
    for (int i = 0; i < c->depth; i++) {
        vit_block *b = &v->blocks[i];
        char n[128];
#define VIT_NAME(leaf) (snprintf(n, sizeof n, "blocks.%d." leaf, i), n)
        layernorm_layer_declare(&b->norm1, s, VIT_NAME("norm1"), D, 1e-6f);
        linear_layer_declare(&b->qkv, s, VIT_NAME("attn.qkv"), D, 3 * D, true, LAYER_INIT_TRUNC_NORMAL);
        mm_site_declare(&s->sites, &b->attn_qk, VIT_NAME("attn.qk"), MM_B_ACT);
        mm_site_declare(&s->sites, &b->attn_pv, VIT_NAME("attn.pv"), MM_B_ACT);
        linear_layer_declare(&b->proj, s, VIT_NAME("attn.proj"), D, D, true, LAYER_INIT_TRUNC_NORMAL);
        layernorm_layer_declare(&b->norm2, s, VIT_NAME("norm2"), D, 1e-6f);
        linear_layer_declare(&b->fc1, s, VIT_NAME("mlp.fc1"), D, hidden, true, LAYER_INIT_TRUNC_NORMAL);
        linear_layer_declare(&b->fc2, s, VIT_NAME("mlp.fc2"), hidden, D, true, LAYER_INIT_TRUNC_NORMAL);
#undef VIT_NAME
        b->heads = c->heads;
        /* stochastic depth rate grows linearly with depth, as in timm */
        b->drop_path = c->depth > 1 ? c->drop_path * (float)i / (float)(c->depth - 1) : 0.0f;
    }
    layernorm_layer_declare(&v->norm, s, "norm", D, 1e-6f);
    linear_layer_declare(&v->head, s, "head", D, c->num_classes, true, LAYER_INIT_TRUNC_NORMAL);
    return v;
}

static ag_var *vit_block_forward(ag_ctx *ctx, param_store *s, vit_block *b, ag_var *x) {
    ag_var *h = layernorm_layer_forward(ctx, s, &b->norm1, x);
    h = linear_layer_forward(ctx, s, &b->qkv, h);
    h = ag_attention(ctx, &b->attn_qk, &b->attn_pv, h, b->heads);
    h = linear_layer_forward(ctx, s, &b->proj, h);
    x = ag_add(ctx, x, ag_drop_path(ctx, h, b->drop_path));
    h = layernorm_layer_forward(ctx, s, &b->norm2, x);
    h = ag_gelu(ctx, linear_layer_forward(ctx, s, &b->fc1, h));
    h = linear_layer_forward(ctx, s, &b->fc2, h);
    return ag_add(ctx, x, ag_drop_path(ctx, h, b->drop_path));
}

ag_var *vit_forward(ag_ctx *ctx, param_store *s, void *impl, ag_var *x) {
    vit *v = impl;
    int64_t B = x->value.shape[0];
    ag_var *h = conv2d_layer_forward(ctx, s, &v->patch_embed, x); /* [B, gh, gw, D] */
    int64_t tok_shape[3] = {B, v->tokens - 1, v->dim};
    h = ag_reshape(ctx, h, 3, tok_shape);
    h = ag_concat(ctx, param_var(s, v->cls_token), h, 1);        /* [B, T, D] */
    h = ag_add(ctx, h, param_var(s, v->pos_embed));
    for (int i = 0; i < v->depth; i++) h = vit_block_forward(ctx, s, &v->blocks[i], h);
    h = layernorm_layer_forward(ctx, s, &v->norm, h);
    h = ag_slice(ctx, h, 1, 0, 1);                               /* class token */
    int64_t flat[2] = {B, v->dim};
    h = ag_reshape(ctx, h, 2, flat);
    return linear_layer_forward(ctx, s, &v->head, h);
}

void vit_free(void *impl) {
    vit *v = impl;
    free(v->blocks);
    free(v);
}
