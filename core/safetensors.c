#include "core/safetensors.h"

#include "core/fastmath.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const st_dtype_names[] = {"F32", "F16", "BF16", "I64"};
static const int st_dtype_bytes[] = {4, 2, 2, 8};
_Static_assert(sizeof st_dtype_names / sizeof st_dtype_names[0] == ST_DTYPE_COUNT, "dtype names");
_Static_assert(sizeof st_dtype_bytes / sizeof st_dtype_bytes[0] == ST_DTYPE_COUNT, "dtype sizes");

/* The format's own limit on the header (safetensors refuses more than 100 MB). */
#define ST_MAX_HEADER ((uint64_t)100 << 20)

const char *st_dtype_name(st_dtype d) { return st_dtype_names[d]; }

static uint64_t le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

void st_close(st_file *f) {
    for (int i = 0; i < f->n; i++) free(f->t[i].name);
    free(f->t);
    free(f->data);
    memset(f, 0, sizeof *f);
}

int st_find(const st_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0) return i;
    return -1;
}

/* A JSON number that is an integer in [0, 2^53]. */
static bool st_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= 9007199254740992.0) || d != floor(d)) return false;
    *out = (uint64_t)d;
    return true;
}

/* One tensor entry; -1 with the reason. */
static int st_parse_entry(const st_file *f, const cJSON *e, st_tensor *t, mx_err *err) {
    const char *p = f->path, *nm = e->string;
    if (!cJSON_IsObject(e)) return mx_err_set(err, "%s: tensor '%s': not an object", p, nm);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype"), *sh = cJSON_GetObjectItemCaseSensitive(e, "shape"),
                *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off))
        return mx_err_set(err, "%s: tensor '%s' needs \"dtype\" (a string), \"shape\" and \"data_offsets\" (arrays)", p, nm);
    int d;
    for (d = 0; d < ST_DTYPE_COUNT && strcmp(dt->valuestring, st_dtype_names[d]) != 0; d++) {}
    if (d == ST_DTYPE_COUNT)
        return mx_err_set(err, "%s: tensor '%s' has dtype %s; readable: F32, F16, BF16, I64", p, nm, dt->valuestring);
    t->dtype = (st_dtype)d;
    int nd = cJSON_GetArraySize(sh);
    if (nd > ST_MAX_DIMS) return mx_err_set(err, "%s: tensor '%s' has %d dimensions (at most %d)", p, nm, nd, ST_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    for (int i = 0; i < nd; i++) {
        uint64_t v;
        if (!st_uint(cJSON_GetArrayItem(sh, i), &v))
            return mx_err_set(err, "%s: tensor '%s': shape entries must be non-negative integers", p, nm);
        t->shape[i] = (int64_t)v;
        if (v && numel > UINT64_MAX / 8 / v) return mx_err_set(err, "%s: tensor '%s': shape too large", p, nm);
        numel *= v;
    }
    t->numel = (int64_t)numel;
    if (cJSON_GetArraySize(off) != 2 || !st_uint(cJSON_GetArrayItem(off, 0), &t->begin) ||
        !st_uint(cJSON_GetArrayItem(off, 1), &t->end))
        return mx_err_set(err, "%s: tensor '%s': data_offsets must be two non-negative integers", p, nm);
    if (t->begin > t->end || t->end > f->data_bytes)
        return mx_err_set(err, "%s: tensor '%s': data_offsets [%llu, %llu] lie outside the %llu bytes of data", p, nm,
                          (unsigned long long)t->begin, (unsigned long long)t->end,
                          (unsigned long long)f->data_bytes);
    if (t->end - t->begin != numel * (uint64_t)st_dtype_bytes[d])
        return mx_err_set(err, "%s: tensor '%s': %llu bytes of data for %llu %s values", p, nm,
                          (unsigned long long)(t->end - t->begin), (unsigned long long)numel, st_dtype_names[d]);
    return 0;
}

static int st_by_begin(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static int st_parse_header(st_file *f, const char *json, size_t len, mx_err *err) {
    const char *p = f->path;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return mx_err_set(err, "%s: the header is not a JSON object (not a safetensors file, or damaged)", p);
    }
    int rc = -1, n = cJSON_GetArraySize(root);
    f->t = mx_calloc((size_t)(n ? n : 1), sizeof *f->t);
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) {
            const cJSON *m;
            bool ok = cJSON_IsObject(e);
            cJSON_ArrayForEach(m, e) ok &= cJSON_IsString(m);
            if (!ok) {
                mx_err_set(err, "%s: __metadata__ must map names to strings", p);
                goto done;
            }
            continue;
        }
        if (st_find(f, e->string) >= 0) {
            mx_err_set(err, "%s: tensor '%s' appears twice", p, e->string);
            goto done;
        }
        st_tensor *t = &f->t[f->n];
        if (st_parse_entry(f, e, t, err)) goto done;
        t->name = mx_malloc(strlen(e->string) + 1);
        strcpy(t->name, e->string);
        f->n++;
    }
    /* no two tensors share bytes */
    st_tensor **order = mx_malloc(sizeof *order * (size_t)(f->n ? f->n : 1));
    for (int i = 0; i < f->n; i++) order[i] = &f->t[i];
    qsort(order, (size_t)f->n, sizeof *order, st_by_begin);
    rc = 0;
    for (int i = 1; i < f->n && rc == 0; i++)
        if (order[i]->begin < order[i - 1]->end)
            rc = mx_err_set(err, "%s: tensors '%s' and '%s' overlap in the data", p, order[i - 1]->name, order[i]->name);
    free(order);
done:
    cJSON_Delete(root);
    return rc;
}

int st_open(const char *path, st_file *f, mx_err *err) {
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    FILE *fp = fopen(path, "rb");
    if (!fp) return mx_err_set(err, "%s: cannot open: %s", path, strerror(errno));
    uint8_t hdr[8];
    char *json = NULL;
    int rc = -1;
    if (fseek(fp, 0, SEEK_END) != 0) {
        mx_err_set(err, "%s: cannot read", path);
        goto done;
    }
    long size = ftell(fp);
    rewind(fp);
    if (size < 8 || fread(hdr, 1, 8, fp) != 8) {
        mx_err_set(err, "%s: %ld bytes: too short for a safetensors file", path, size);
        goto done;
    }
    uint64_t n = le64(hdr), rest = (uint64_t)size - 8;
    if (n > rest || n > ST_MAX_HEADER || n < 2) {
        mx_err_set(err, "%s: header length %llu does not fit the file's %ld bytes (truncated, or not safetensors)", path,
                   (unsigned long long)n, size);
        goto done;
    }
    json = mx_malloc((size_t)n + 1);
    f->data_bytes = rest - n;
    f->data = mx_malloc((size_t)(f->data_bytes ? f->data_bytes : 1));
    if (fread(json, 1, (size_t)n, fp) != (size_t)n || fread(f->data, 1, (size_t)f->data_bytes, fp) != f->data_bytes) {
        mx_err_set(err, "%s: read failed", path);
        goto done;
    }
    json[n] = 0;
    rc = st_parse_header(f, json, (size_t)n, err);
done:
    free(json);
    fclose(fp);
    if (rc) st_close(f);
    return rc;
}

void st_read_f32(const st_file *f, int i, float *out) {
    const st_tensor *t = &f->t[i];
    const uint8_t *p = f->data + t->begin;
    for (int64_t k = 0; k < t->numel; k++) {
        switch (t->dtype) {
        case ST_DTYPE_F32: memcpy(&out[k], p + 4 * k, 4); break;
        case ST_DTYPE_F16: out[k] = mx_f16_to_f32((uint16_t)(p[2 * k] | p[2 * k + 1] << 8)); break;
        case ST_DTYPE_BF16: {
            uint32_t b = (uint32_t)(p[2 * k] | p[2 * k + 1] << 8) << 16;
            memcpy(&out[k], &b, 4);
            break;
        }
        default: {
            int64_t v;
            memcpy(&v, p + 8 * k, 8);
            out[k] = (float)v;
        }
        }
    }
}

int st_write(const char *path, const st_item *items, int n, mx_err *err) {
    cJSON *root = cJSON_CreateObject();
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        cJSON *e = cJSON_AddObjectToObject(root, items[i].name);
        cJSON_AddStringToObject(e, "dtype", items[i].integer ? "I64" : "F32");
        cJSON *sh = cJSON_AddArrayToObject(e, "shape");
        int64_t numel = 1;
        for (int d = 0; d < items[i].ndim; d++) {
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)items[i].shape[d]));
            numel *= items[i].shape[d];
        }
        uint64_t bytes = (uint64_t)numel * (items[i].integer ? 8 : 4);
        cJSON *o = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)(off + bytes)));
        off += bytes;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    size_t len = strlen(json), padded = (len + 7) / 8 * 8; /* data 8-byte aligned, as the format advises */
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        free(json);
        return mx_err_set(err, "%s: cannot write: %s", tmp, strerror(errno));
    }
    uint8_t hdr[8];
    for (int i = 0; i < 8; i++) hdr[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    bool ok = fwrite(hdr, 1, 8, fp) == 8 && fwrite(json, 1, len, fp) == len;
    for (size_t i = len; i < padded && ok; i++) ok = fputc(' ', fp) != EOF;
    free(json);
    for (int i = 0; i < n && ok; i++) {
        int64_t numel = 1;
        for (int d = 0; d < items[i].ndim; d++) numel *= items[i].shape[d];
        if (!items[i].integer) { /* little-endian hosts: float32 as it lies */
            ok = fwrite(items[i].data, 4, (size_t)numel, fp) == (size_t)numel;
            continue;
        }
        for (int64_t k = 0; k < numel && ok; k++) {
            int64_t v = (int64_t)items[i].data[k];
            ok = fwrite(&v, 8, 1, fp) == 1;
        }
    }
    if (fclose(fp) != 0) ok = false;
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        return mx_err_set(err, "%s: write failed (disk full?)", path);
    }
    return 0;
}
