/* safetensors (.safetensors): the weights format of Hugging Face and timm.
 * An 8-byte little-endian header length N, N bytes of JSON (UTF-8, maybe
 * padded with spaces) mapping each tensor's name to {"dtype", "shape",
 * "data_offsets": [begin, end]} (offsets into the data that follows; an
 * optional "__metadata__" object of strings), then the data, little-endian,
 * row-major.
 *
 * The file is untrusted: st_open checks the header length against the file,
 * the JSON, every entry's dtype, shape and offsets (inside the data, of the
 * size the shape and dtype make, not overlapping), and says in one line what
 * is wrong, naming the file and the tensor. */
#ifndef MX_CORE_SAFETENSORS_H
#define MX_CORE_SAFETENSORS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

#define ST_MAX_DIMS 8

typedef enum st_dtype { ST_DTYPE_F32, ST_DTYPE_F16, ST_DTYPE_BF16, ST_DTYPE_I64, ST_DTYPE_COUNT } st_dtype;

typedef struct st_tensor {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    uint64_t begin, end; /* byte offsets into the data */
} st_tensor;

typedef struct st_file {
    char path[512];
    st_tensor *t;
    int n;
    uint8_t *data; /* the data section, read whole */
    uint64_t data_bytes;
} st_file;

const char *st_dtype_name(st_dtype d);
/* Reads and checks a file; -1 with a message naming it. */
int st_open(const char *path, st_file *f, mx_err *err);
void st_close(st_file *f);
/* Index of a tensor by name, or -1. */
int st_find(const st_file *f, const char *name);
/* Tensor i's values as float32 (F32, F16 and BF16 exactly; I64 rounded). */
void st_read_f32(const st_file *f, int i, float *out);

/* A tensor to write: float32 values (or int64 ones, `integer`, given as floats). */
typedef struct st_item {
    const char *name;
    int ndim;
    const int64_t *shape;
    const float *data;
    bool integer;
} st_item;
/* Writes items as F32 (I64 for integer ones), atomically (a .tmp renamed). */
int st_write(const char *path, const st_item *items, int n, mx_err *err);

#endif
