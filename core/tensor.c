#include "core/tensor.h"

#include <stdlib.h>
#include <string.h>

#include "core/error.h"

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

bool tensor_same_shape(const tensor *a, const tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

tensor tensor_reshape(const tensor *t, int ndim, const int64_t *shape) {
    tensor r = tensor_view(t->data, ndim, shape);
    MX_ASSERTF(tensor_numel(&r) == tensor_numel(t), "reshape changes element count (%lld -> %lld)",
               (long long)tensor_numel(t), (long long)tensor_numel(&r));
    return r;
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
