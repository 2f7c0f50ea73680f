/* Model families behind model.c's table. */
#ifndef MX_LAYERS_MODEL_IMPL_H
#define MX_LAYERS_MODEL_IMPL_H

#include "layers/model.h"

void *resnet_declare(param_store *s, const model_config *c);
ag_var *resnet_forward(ag_ctx *ctx, param_store *s, void *impl, ag_var *x);
void resnet_free(void *impl);

void *vit_declare(param_store *s, const model_config *c);
ag_var *vit_forward(ag_ctx *ctx, param_store *s, void *impl, ag_var *x);
void vit_free(void *impl);

#endif
