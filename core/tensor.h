/* A small float32 tensor: up to 4 dimensions, always contiguous (views that
 * reorder axes are copies: ag_permute).
 *
 * Layout convention: row-major (C order), last axis contiguous. Images are
 * NHWC: the channel axis is innermost because it is the reduction axis of a
 * convolution's GEMM, which is where MX blocks run. Linear weights are stored
 * [in, out] internally only where a layer says so; checkpoints always use
 * PyTorch's layout.
 *
 * A tensor does not own its memory: storage comes from an arena (per-step
 * activations) or from a model's flat parameter buffer. tensor_new/free exist
 * for tools and tests. */
#ifndef MX_CORE_TENSOR_H
#define MX_CORE_TENSOR_H

#include <stdbool.h>
#include <stdint.h>

#define TENSOR_MAX_DIMS 4

typedef struct tensor {
    float *data;
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
} tensor;

/* Contiguous view of `data` with the given shape. */
tensor tensor_view(float *data, int ndim, const int64_t *shape);
tensor tensor_view2(float *data, int64_t d0, int64_t d1);
tensor tensor_view4(float *data, int64_t d0, int64_t d1, int64_t d2, int64_t d3);

int64_t tensor_numel(const tensor *t);
bool tensor_same_shape(const tensor *a, const tensor *b);
/* Reshape (same element count). */
tensor tensor_reshape(const tensor *t, int ndim, const int64_t *shape);

/* Owning allocation (64-byte aligned, zeroed) for tools and tests. */
tensor tensor_new(int ndim, const int64_t *shape);
void tensor_free(tensor *t);

#endif
