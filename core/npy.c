#include "core/npy.h"

#include "core/fastmath.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *descr;
    size_t size;
} npy_dtype_table[] = {
    [NPY_DTYPE_F16] = {"<f2", 2}, [NPY_DTYPE_F32] = {"<f4", 4}, [NPY_DTYPE_F64] = {"<f8", 8}, [NPY_DTYPE_U8] = {"|u1", 1},
    [NPY_DTYPE_I32] = {"<i4", 4}, [NPY_DTYPE_I64] = {"<i8", 8},
};
_Static_assert(sizeof npy_dtype_table / sizeof npy_dtype_table[0] == NPY_DTYPE_COUNT, "npy dtype table size");

const char *npy_dtype_name(npy_dtype d) { return npy_dtype_table[d].descr; }
size_t npy_dtype_size(npy_dtype d) { return npy_dtype_table[d].size; }

/* Finds 'key' in the header dict and returns a pointer just after the colon. */
static const char *npy_find_key(const char *hdr, const char *key) {
    char pat[32];
    snprintf(pat, sizeof pat, "'%s'", key);
    const char *p = strstr(hdr, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ') p++;
    if (*p != ':') return NULL;
    p++;
    while (*p == ' ') p++;
    return p;
}

int npy_parse_header(const char *hdr_in, size_t len, const char *path, npy_array *out, mx_err *err) {
    char hdr[4096];
    if (len >= sizeof hdr) return mx_err_set(err, "%s: header too long (%zu bytes)", path, len);
    memcpy(hdr, hdr_in, len);
    hdr[len] = 0;
    if (memchr(hdr, 0, len)) return mx_err_set(err, "%s: header contains a NUL byte", path);

    const char *p = npy_find_key(hdr, "descr");
    if (!p || *p != '\'') return mx_err_set(err, "%s: header has no 'descr'", path);
    p++;
    const char *q = strchr(p, '\'');
    if (!q || q - p > 16) return mx_err_set(err, "%s: malformed 'descr'", path);
    char descr[20];
    memcpy(descr, p, (size_t)(q - p));
    descr[q - p] = 0;
    /* byte order: '<' little, '>' big, '=' native (little here), '|' none (bytes);
       the table spells every type little-endian ('|u1' for bytes) */
    out->big_endian = descr[0] == '>';
    if (descr[0] == '>' || descr[0] == '=') descr[0] = '<';
    if (strcmp(descr, "<u1") == 0) strcpy(descr, "|u1");
    int dt = -1;
    for (int i = 0; i < NPY_DTYPE_COUNT; i++)
        if (strcmp(descr, npy_dtype_table[i].descr) == 0) dt = i;
    if (dt < 0)
        return mx_err_set(err, "%s: unsupported dtype '%s' (supported: f2 f4 f8 u1 i4 i8, either byte order)", path,
                          descr);

    p = npy_find_key(hdr, "fortran_order");
    if (!p) return mx_err_set(err, "%s: header has no 'fortran_order'", path);
    if (strncmp(p, "True", 4) == 0) out->fortran_order = true;
    else if (strncmp(p, "False", 5) == 0) out->fortran_order = false;
    else return mx_err_set(err, "%s: malformed 'fortran_order'", path);

    p = npy_find_key(hdr, "shape");
    if (!p || *p != '(') return mx_err_set(err, "%s: header has no 'shape' tuple", path);
    p++;
    int ndim = 0;
    int64_t numel = 1, extent = 1; /* extent: product of the nonzero dimensions, which code
                                      computing block and scale counts multiplies too */
    for (;;) {
        while (*p == ' ') p++;
        if (*p == ')') break;
        if (*p < '0' || *p > '9') return mx_err_set(err, "%s: malformed 'shape'", path);
        errno = 0;
        char *end;
        long long v = strtoll(p, &end, 10);
        if (errno || v < 0) return mx_err_set(err, "%s: dimension out of range in 'shape'", path);
        if (ndim == NPY_MAX_DIMS) return mx_err_set(err, "%s: rank above %d is not supported", path, NPY_MAX_DIMS);
        out->shape[ndim++] = v;
        if (v != 0 && extent > INT64_MAX / 8 / v)
            return mx_err_set(err, "%s: shape has too many elements", path);
        numel *= v;
        if (v) extent *= v;
        p = end;
        while (*p == ' ') p++;
        if (*p == ',') p++;
        else if (*p != ')') return mx_err_set(err, "%s: malformed 'shape'", path);
    }
    out->dtype = (npy_dtype)dt;
    out->ndim = ndim;
    out->numel = numel;
    return 0;
}

static int npy_read_raw(const char *path, npy_array *out, mx_err *err) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return mx_err_set(err, "%s: cannot open: %s", path, strerror(errno));
    int rc = -1;
    char *hdr = NULL;
    unsigned char pre[10];
    if (fread(pre, 1, 8, f) != 8 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        mx_err_set(err, "%s: not a .npy file (bad magic)", path);
        goto done;
    }
    size_t hlen;
    if (pre[6] == 1) {
        if (fread(pre + 8, 1, 2, f) != 2) { mx_err_set(err, "%s: truncated header", path); goto done; }
        hlen = (size_t)pre[8] | ((size_t)pre[9] << 8);
    } else if (pre[6] == 2 || pre[6] == 3) {
        unsigned char l4[4];
        if (fread(l4, 1, 4, f) != 4) { mx_err_set(err, "%s: truncated header", path); goto done; }
        hlen = (size_t)l4[0] | ((size_t)l4[1] << 8) | ((size_t)l4[2] << 16) | ((size_t)l4[3] << 24);
    } else {
        mx_err_set(err, "%s: unsupported .npy version %d.%d", path, pre[6], pre[7]);
        goto done;
    }
    if (hlen > 1 << 20) { mx_err_set(err, "%s: header length %zu is implausible", path, hlen); goto done; }
    hdr = malloc(hlen + 1);
    if (!hdr || fread(hdr, 1, hlen, f) != hlen) { mx_err_set(err, "%s: truncated header", path); goto done; }
    if (npy_parse_header(hdr, hlen, path, out, err)) goto done;

    size_t esize = npy_dtype_size(out->dtype);
    size_t want = (size_t)out->numel * esize;
    long pos = ftell(f);
    if (fseek(f, 0, SEEK_END) != 0) { mx_err_set(err, "%s: cannot seek", path); goto done; }
    long end = ftell(f);
    if (pos < 0 || end < pos) { mx_err_set(err, "%s: cannot determine file size", path); goto done; }
    size_t have = (size_t)(end - pos);
    if (have < want) {
        mx_err_set(err, "%s: truncated data: shape needs %zu bytes, file has %zu", path, want, have);
        goto done;
    }
    if (have > want) {
        mx_err_set(err, "%s: size mismatch: shape needs %zu bytes, file has %zu", path, want, have);
        goto done;
    }
    fseek(f, pos, SEEK_SET);
    out->data = aligned_alloc(64, ((want + 63) & ~(size_t)63) + 64);
    if (!out->data) { mx_err_set(err, "%s: out of memory (%zu bytes)", path, want); goto done; }
    if (want && fread(out->data, 1, want, f) != want) { mx_err_set(err, "%s: read error", path); goto done; }
    rc = 0;
done:
    free(hdr);
    fclose(f);
    if (rc) npy_free(out);
    return rc;
}

/* Reorders Fortran-order data (first index fastest) into C order. */
static void npy_fortran_to_c(npy_array *a) {
    size_t es = npy_dtype_size(a->dtype);
    char *src = a->data, *dst = aligned_alloc(64, (((size_t)a->numel * es + 63) & ~(size_t)63) + 64);
    MX_ASSERT(dst);
    int64_t idx[NPY_MAX_DIMS] = {0};
    for (int64_t c = 0; c < a->numel; c++) {
        int64_t f = 0, mul = 1;
        for (int d = 0; d < a->ndim; d++) {
            f += idx[d] * mul;
            mul *= a->shape[d];
        }
        memcpy(dst + (size_t)c * es, src + (size_t)f * es, es);
        for (int d = a->ndim - 1; d >= 0; d--) {
            if (++idx[d] < a->shape[d]) break;
            idx[d] = 0;
        }
    }
    free(a->data);
    a->data = dst;
}

/* Big-endian elements to native (little-endian hosts). */
static void npy_swap_bytes(npy_array *a) {
    size_t es = npy_dtype_size(a->dtype);
    uint8_t *p = a->data;
    for (int64_t i = 0; i < a->numel; i++, p += es)
        for (size_t k = 0; k < es / 2; k++) {
            uint8_t t = p[k];
            p[k] = p[es - 1 - k];
            p[es - 1 - k] = t;
        }
}

int npy_read(const char *path, npy_array *out, mx_err *err) {
    if (npy_read_raw(path, out, err)) return -1;
    if (out->big_endian) npy_swap_bytes(out);
    if (out->fortran_order && out->ndim > 1) npy_fortran_to_c(out);
    return 0;
}

int npy_read_f32(const char *path, npy_array *out, mx_err *err) {
    if (npy_read(path, out, err)) return -1;
    if (out->dtype == NPY_DTYPE_F32) return 0;
    if (out->dtype == NPY_DTYPE_F16) { /* widened into a new buffer */
        const uint16_t *h = out->data;
        float *fdat = aligned_alloc(64, (((size_t)out->numel * 4 + 63) & ~(size_t)63) + 64);
        if (!fdat) {
            npy_free(out);
            return mx_err_set(err, "%s: out of memory", path);
        }
        for (int64_t i = 0; i < out->numel; i++) fdat[i] = mx_f16_to_f32(h[i]);
        free(out->data);
        out->data = fdat;
        out->dtype = NPY_DTYPE_F32;
        return 0;
    }
    if (out->dtype == NPY_DTYPE_F64) {
        const double *d = out->data;
        float *fdat = out->data; /* in place: float i is written after double i is read */
        for (int64_t i = 0; i < out->numel; i++) fdat[i] = (float)d[i];
        out->dtype = NPY_DTYPE_F32;
        return 0;
    }
    mx_err_set(err, "%s: expected float16, float32 or float64 data, got %s", path, npy_dtype_name(out->dtype));
    npy_free(out);
    return -1;
}

npy_array npy_wrap(npy_dtype dtype, int ndim, const int64_t *shape, void *data) {
    npy_array a;
    memset(&a, 0, sizeof a);
    a.dtype = dtype;
    a.ndim = ndim;
    a.numel = 1;
    for (int i = 0; i < ndim; i++) {
        a.shape[i] = shape[i];
        a.numel *= shape[i];
    }
    a.data = data;
    return a;
}

int npy_write(const char *path, const npy_array *a, mx_err *err) {
    if (a->dtype == NPY_DTYPE_F64) return mx_err_set(err, "%s: writing float64 is not supported", path);
    char dict[1024];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", npy_dtype_name(a->dtype));
    for (int i = 0; i < a->ndim; i++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%lld%s", (long long)a->shape[i],
                      a->ndim == 1 ? "," : (i + 1 < a->ndim ? ", " : ""));
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    /* pad with spaces so that magic(6)+version(2)+len(2)+header is a multiple of 64, ending in '\n' */
    size_t total = 10 + (size_t)n + 1;
    size_t padded = (total + 63) & ~(size_t)63;
    size_t hlen = padded - 10;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return mx_err_set(err, "%s: cannot create: %s", tmp, strerror(errno));
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                             (unsigned char)(hlen >> 8)};
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(dict, 1, (size_t)n, f) == (size_t)n;
    for (size_t i = (size_t)n; ok && i < hlen - 1; i++) ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF;
    size_t bytes = (size_t)a->numel * npy_dtype_size(a->dtype);
    ok = ok && (bytes == 0 || fwrite(a->data, 1, bytes, f) == bytes);
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        return mx_err_set(err, "%s: write failed: %s", path, strerror(e));
    }
    return 0;
}

void npy_free(npy_array *a) {
    free(a->data);
    a->data = NULL;
}
