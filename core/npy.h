/* NumPy .npy files (format versions 1.0, 2.0, 3.0), any rank up to
 * NPY_MAX_DIMS. Reads float16, float32, float64, uint8, int32, int64, little-
 * or big-endian, C or Fortran order (np.save(W.T) writes Fortran order), and
 * hands back native-endian data in C order: the same logical array NumPy
 * sees. Writes float32, uint8, int32, int64 (little endian, C order). Files
 * are untrusted: every malformed case is an error naming the file, never a
 * crash. */
#ifndef MX_CORE_NPY_H
#define MX_CORE_NPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define NPY_MAX_DIMS 16

typedef enum npy_dtype {
    NPY_DTYPE_F16,
    NPY_DTYPE_F32,
    NPY_DTYPE_F64,
    NPY_DTYPE_U8,
    NPY_DTYPE_I32,
    NPY_DTYPE_I64,
    NPY_DTYPE_COUNT
} npy_dtype;

typedef struct npy_array {
    npy_dtype dtype;
    int ndim;
    int64_t shape[NPY_MAX_DIMS];
    int64_t numel;
    bool fortran_order; /* as stored in the header; data is always C order after a read */
    bool big_endian;    /* as stored in the header; data is always native after a read */
    void *data;         /* 64-byte aligned, owned */
} npy_array;

const char *npy_dtype_name(npy_dtype d); /* "<f4", ... */
size_t npy_dtype_size(npy_dtype d);

int npy_read(const char *path, npy_array *out, mx_err *err);
/* Reads and converts to float32 (float16 exactly, float64 rounded; other dtypes are an error). */
int npy_read_f32(const char *path, npy_array *out, mx_err *err);
/* Writes to path.tmp then renames, so a failed write never leaves a torn file. */
int npy_write(const char *path, const npy_array *a, mx_err *err);
/* Convenience: wrap existing data (not owned) for npy_write. */
npy_array npy_wrap(npy_dtype dtype, int ndim, const int64_t *shape, void *data);
void npy_free(npy_array *a);

/* Parses an in-memory header (after magic and length); exposed for tests. */
int npy_parse_header(const char *hdr, size_t len, const char *path, npy_array *out, mx_err *err);

#endif
