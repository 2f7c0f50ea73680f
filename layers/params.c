#include "layers/params.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/rng.h"
#include "cuda/cuda.h"

void param_store_init(param_store *s) { memset(s, 0, sizeof *s); }

void param_store_free(param_store *s) {
    if (s->gpu) {
        cu_free(s->d_data);
        cu_free(s->d_grad);
        cu_free(s->d_buffers);
    }
    free(s->entries);
    free(s->data);
    free(s->grad);
    free(s->buffers);
    mm_sites_free(&s->sites);
    memset(s, 0, sizeof *s);
}

int param_add(param_store *s, const char *name, int ndim, const int64_t *shape, param_kind kind,
              param_layout layout, param_init init, float init_arg) {
    MX_ASSERTF(!s->finalized, "param_add after finalize (%s)", name);
    MX_ASSERTF(param_find(s, name) < 0, "duplicate parameter name %s", name);
    MX_GROW(s->entries, s->cap, s->count + 1, 64);
    param_entry *e = &s->entries[s->count];
    memset(e, 0, sizeof *e);
    MX_ASSERTF(strlen(name) < sizeof e->name, "parameter name too long: %s", name);
    strcpy(e->name, name);
    e->ndim = ndim;
    e->numel = 1;
    for (int i = 0; i < ndim; i++) {
        e->shape[i] = shape[i];
        e->numel *= shape[i];
    }
    e->kind = kind;
    e->layout = layout;
    e->init = init;
    e->init_arg = init_arg;
    /* align each entry to 16 floats so vector loops start aligned */
    size_t *n = kind == PARAM_KIND_BUFFER ? &s->n_buffers : &s->n_trainable;
    e->offset = *n;
    *n += ((size_t)e->numel + 15) & ~(size_t)15;
    return s->count++;
}

static void param_init_values(param_entry *e, float *v, uint64_t seed, int idx) {
    rng r;
    rng_init(&r, seed, 0x9a7a0000ull + (uint64_t)idx);
    switch (e->init) {
    case PARAM_INIT_ZEROS: memset(v, 0, sizeof(float) * (size_t)e->numel); break;
    case PARAM_INIT_ONES:
        for (int64_t i = 0; i < e->numel; i++) v[i] = 1.0f;
        break;
    case PARAM_INIT_NORMAL:
        for (int64_t i = 0; i < e->numel; i++) v[i] = e->init_arg * rng_normal(&r);
        break;
    case PARAM_INIT_TRUNC_NORMAL:
        for (int64_t i = 0; i < e->numel; i++) {
            float x;
            do x = e->init_arg * rng_normal(&r);
            while (x < -2.0f || x > 2.0f);
            v[i] = x;
        }
        break;
    case PARAM_INIT_UNIFORM:
        for (int64_t i = 0; i < e->numel; i++) v[i] = e->init_arg * (2.0f * rng_uniform(&r) - 1.0f);
        break;
    case PARAM_INIT_KAIMING_FAN_OUT: {
        /* fan_out = out_channels * kernel area (torchvision's resnet) */
        int64_t fan_out = e->numel / e->shape[e->ndim - 1];
        float std = sqrtf(2.0f / (float)fan_out);
        for (int64_t i = 0; i < e->numel; i++) v[i] = std * rng_normal(&r);
        break;
    }
    }
}

void param_finalize(param_store *s, uint64_t seed) {
    MX_ASSERT(!s->finalized);
    s->data = mx_aligned_alloc(sizeof(float) * (s->n_trainable + 16));
    s->grad = mx_aligned_alloc(sizeof(float) * (s->n_trainable + 16));
    s->buffers = mx_aligned_alloc(sizeof(float) * (s->n_buffers + 16));
    memset(s->data, 0, sizeof(float) * s->n_trainable);
    memset(s->grad, 0, sizeof(float) * s->n_trainable);
    memset(s->buffers, 0, sizeof(float) * s->n_buffers);
    for (int i = 0; i < s->count; i++) {
        param_entry *e = &s->entries[i];
        if (e->kind == PARAM_KIND_BUFFER) {
            param_init_values(e, s->buffers + e->offset, seed, i);
        } else {
            e->var = ag_leaf(s->data + e->offset, s->grad + e->offset, e->ndim, e->shape);
            param_init_values(e, s->data + e->offset, seed, i);
        }
    }
    s->finalized = true;
}

ag_var *param_var(param_store *s, int idx) {
    MX_ASSERT(s->finalized && idx >= 0 && idx < s->count && s->entries[idx].kind != PARAM_KIND_BUFFER);
    return &s->entries[idx].var;
}

float *param_data(param_store *s, int idx) {
    MX_ASSERT(s->finalized && idx >= 0 && idx < s->count);
    param_entry *e = &s->entries[idx];
    return (e->kind == PARAM_KIND_BUFFER ? s->buffers : s->data) + e->offset;
}

float *param_step_data(param_store *s, int idx) {
    float *h = param_data(s, idx);
    if (!s->gpu) return h;
    param_entry *e = &s->entries[idx];
    return (e->kind == PARAM_KIND_BUFFER ? s->d_buffers : s->d_data) + e->offset;
}

static size_t param_bytes(size_t n) { return sizeof(float) * (n + 16); }

void param_store_to_gpu(param_store *s) {
    MX_ASSERT(s->finalized && !s->gpu);
    s->d_data = cu_malloc(param_bytes(s->n_trainable));
    s->d_grad = cu_malloc(param_bytes(s->n_trainable));
    s->d_buffers = cu_malloc(param_bytes(s->n_buffers));
    cu_memset(s->d_grad, 0, param_bytes(s->n_trainable));
    s->gpu = true;
    param_store_upload(s);
    for (int i = 0; i < s->count; i++) {
        param_entry *e = &s->entries[i];
        if (e->kind == PARAM_KIND_BUFFER) continue;
        e->var.value.data = s->d_data + e->offset;
        e->var.grad = s->d_grad + e->offset;
    }
}

void param_store_upload(param_store *s) {
    if (!s->gpu) return;
    cu_to_device(s->d_data, s->data, sizeof(float) * s->n_trainable);
    cu_to_device(s->d_buffers, s->buffers, sizeof(float) * s->n_buffers);
}

void param_store_download(param_store *s, bool grads) {
    if (!s->gpu) return;
    cu_to_host(s->data, s->d_data, sizeof(float) * s->n_trainable);
    cu_to_host(s->buffers, s->d_buffers, sizeof(float) * s->n_buffers);
    if (grads) cu_to_host(s->grad, s->d_grad, sizeof(float) * s->n_trainable);
}

int param_find(const param_store *s, const char *name) {
    for (int i = 0; i < s->count; i++)
        if (strcmp(s->entries[i].name, name) == 0) return i;
    return -1;
}

int param_torch_shape(const param_entry *e, int64_t *shape) {
    if (e->layout == PARAM_LAYOUT_OHWI) {
        shape[0] = e->shape[0];
        shape[1] = e->shape[3];
        shape[2] = e->shape[1];
        shape[3] = e->shape[2];
        return 4;
    }
    for (int i = 0; i < e->ndim; i++) shape[i] = e->shape[i];
    return e->ndim;
}

/* OHWI <-> OIHW; to_torch chooses the direction. */
static void param_convert(const param_entry *e, const float *in, float *out, bool to_torch) {
    if (e->layout != PARAM_LAYOUT_OHWI) {
        memcpy(out, in, sizeof(float) * (size_t)e->numel);
        return;
    }
    int64_t O = e->shape[0], KH = e->shape[1], KW = e->shape[2], I = e->shape[3];
    for (int64_t o = 0; o < O; o++)
        for (int64_t h = 0; h < KH; h++)
            for (int64_t w = 0; w < KW; w++)
                for (int64_t i = 0; i < I; i++) {
                    int64_t ohwi = ((o * KH + h) * KW + w) * I + i, oihw = ((o * I + i) * KH + h) * KW + w;
                    if (to_torch) out[oihw] = in[ohwi];
                    else out[ohwi] = in[oihw];
                }
}

void param_to_torch(const param_entry *e, const float *internal, float *torch) { param_convert(e, internal, torch, true); }
void param_from_torch(const param_entry *e, const float *torch, float *internal) { param_convert(e, torch, internal, false); }

void param_zero_grad(param_store *s) {
    if (s->gpu) cu_memset(s->d_grad, 0, sizeof(float) * s->n_trainable);
    else memset(s->grad, 0, sizeof(float) * s->n_trainable);
}
