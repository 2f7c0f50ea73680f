#include "core/tensor.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"

static void tensor_set_contiguous_strides(tensor *t) {
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        t->stride[i] = s;
        s *= t->shape[i];
    }
}

tensor tensor_view(float *data, int ndim, const int64_t *shape) {
    MX_ASSERTF(ndim >= 1 && ndim <= TENSOR_MAX_DIMS, "tensor rank %d out of 1..%d", ndim, TENSOR_MAX_DIMS);
    tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        MX_ASSERTF(shape[i] >= 0, "negative dimension %lld", (long long)shape[i]);
        t.shape[i] = shape[i];
    }
    tensor_set_contiguous_strides(&t);
    return t;
}

tensor tensor_view2(float *data, int64_t d0, int64_t d1) {
    int64_t s[2] = {d0, d1};
    return tensor_view(data, 2, s);
}

tensor tensor_view4(float *data, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    int64_t s[4] = {d0, d1, d2, d3};
    return tensor_view(data, 4, s);
}

int64_t tensor_numel(const tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

bool tensor_is_contiguous(const tensor *t) {
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != s) return false;
        s *= t->shape[i];
    }
    return true;
}

bool tensor_same_shape(const tensor *a, const tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

tensor tensor_reshape(const tensor *t, int ndim, const int64_t *shape) {
    MX_ASSERT(tensor_is_contiguous(t));
    tensor r = tensor_view(t->data, ndim, shape);
    MX_ASSERTF(tensor_numel(&r) == tensor_numel(t), "reshape changes element count (%lld -> %lld)",
               (long long)tensor_numel(t), (long long)tensor_numel(&r));
    return r;
}

tensor tensor_transpose(const tensor *t, int a, int b) {
    MX_ASSERT(a >= 0 && a < t->ndim && b >= 0 && b < t->ndim);
    tensor r = *t;
    r.shape[a] = t->shape[b];
    r.shape[b] = t->shape[a];
    r.stride[a] = t->stride[b];
    r.stride[b] = t->stride[a];
    return r;
}

int64_t tensor_offset(const tensor *t, const int64_t *idx) {
    int64_t off = 0;
    for (int i = 0; i < t->ndim; i++) {
        MX_ASSERT(idx[i] >= 0 && idx[i] < t->shape[i]);
        off += idx[i] * t->stride[i];
    }
    return off;
}

void tensor_copy_contiguous(float *dst, const tensor *src) {
    int64_t shape[TENSOR_MAX_DIMS] = {1, 1, 1, 1}, stride[TENSOR_MAX_DIMS] = {0, 0, 0, 0};
    int pad = TENSOR_MAX_DIMS - src->ndim;
    for (int i = 0; i < src->ndim; i++) {
        shape[pad + i] = src->shape[i];
        stride[pad + i] = src->stride[i];
    }
    int64_t k = 0;
    for (int64_t a = 0; a < shape[0]; a++)
        for (int64_t b = 0; b < shape[1]; b++)
            for (int64_t c = 0; c < shape[2]; c++) {
                const float *row = src->data + a * stride[0] + b * stride[1] + c * stride[2];
                for (int64_t d = 0; d < shape[3]; d++) dst[k++] = row[d * stride[3]];
            }
}

tensor tensor_new(int ndim, const int64_t *shape) {
    tensor t = tensor_view(NULL, ndim, shape);
    size_t bytes = (size_t)tensor_numel(&t) * sizeof(float);
    t.data = mx_aligned_alloc(bytes);
    memset(t.data, 0, bytes);
    return t;
}

void tensor_free(tensor *t) {
    free(t->data);
    t->data = NULL;
}
